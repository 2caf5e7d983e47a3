"""Capture raw proc connector datagrams of a small known workload into tests/data/netlink/ (run as root).

Each file holds the datagrams as records: u32 length + bytes.  The workload's facts go to a JSON file beside them,
so the parser tests check decoded fields against what really happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from proctap.linux.cn_proc import CN_IDX_PROC, NETLINK_CONNECTOR, McastOp, build_subscribe

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "netlink")


def main() -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    sock.bind((0, CN_IDX_PROC))
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
    sock.send(build_subscribe(McastOp.LISTEN))
    facts: dict[str, int] = {"capturer": os.getpid()}
    child = os.fork()
    if child == 0:
        os._exit(3)
    os.waitpid(child, 0)
    facts["exit3"] = child
    child = os.fork()
    if child == 0:
        time.sleep(5)
        os._exit(0)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    facts["killed"] = child
    child = os.fork()
    if child == 0:
        os.execv("/bin/true", ["true"])
    os.waitpid(child, 0)
    facts["exec_true"] = child
    child = os.fork()
    if child == 0:
        with open("/proc/self/comm", "w") as f:
            f.write("proctap-capt")
        os.setsid()
        os.setgid(65534)
        os.setuid(65534)
        os._exit(0)
    os.waitpid(child, 0)
    facts["comm_sid_uid"] = child
    time.sleep(0.2)
    records = []
    sock.setblocking(False)
    while True:
        try:
            records.append(sock.recv(4096))
        except BlockingIOError:
            break
    sock.send(build_subscribe(McastOp.IGNORE))
    sock.close()
    mine = set(facts.values())
    kept = [r for r in records if len(r) >= 60 and set(struct.unpack_from("=iiii", r, 52)) & mine]
    with open(os.path.join(OUT, "workload.bin"), "wb") as f:
        for r in kept:
            f.write(struct.pack("=I", len(r)) + r)
    with open(os.path.join(OUT, "workload.json"), "w") as f:
        json.dump({**facts, "kernel": os.uname().release}, f, indent=1)
    print(f"captured {len(kept)} datagrams")


if __name__ == "__main__":
    main()
