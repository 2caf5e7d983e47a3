"""Capture taskstats exit datagrams from the running kernel into tests/data/taskstats_<kernel>.json (run as root).

Scenarios: a shell exiting 3, a process killed by SIGKILL, a two-thread busy process, a child that writes 1 MiB to
a file and fsyncs it.  The JSON lists each datagram (hex) with the scenario's facts the tests assert on.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from proctap.linux.taskstats import TaskstatsListener, parse_messages

THREADS = """
import threading
def spin():
    s = 0
    for i in range(2_000_000):
        s += i
ts = [threading.Thread(target=spin) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
"""
WRITER = "import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT);os.write(fd,b'x'*(1<<20));os.fsync(fd)"


def main() -> None:
    out_dir = os.path.dirname(os.path.abspath(__file__))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with TaskstatsListener() as listener:
        procs["exit3"] = subprocess.Popen(["sh", "-c", "exit 3"])
        procs["sigkill"] = subprocess.Popen(["sleep", "30"])
        time.sleep(0.05)
        procs["sigkill"].send_signal(signal.SIGKILL)
        procs["threads"] = subprocess.Popen([sys.executable, "-c", THREADS])
        target = os.path.join("/var/tmp", f"proctap-capture-{os.getpid()}")
        procs["writer"] = subprocess.Popen([sys.executable, "-c", WRITER, target])
        for proc in procs.values():
            proc.wait()
        os.unlink(target)
        time.sleep(0.2)
        datagrams = listener.read_datagrams()
    scenarios = {name: proc.pid for name, proc in procs.items()}
    wanted = set(scenarios.values())
    kept = []
    for data in datagrams:
        msgs = parse_messages(data)
        if any(m.record.tgid in wanted or m.id in wanted for m in msgs):
            kept.append(data.hex())
    path = os.path.join(out_dir, f"taskstats_{platform.release().split('-')[0]}.json")
    with open(path, "w") as f:
        json.dump({"kernel": platform.release(), "scenarios": scenarios, "datagrams": kept}, f, indent=1)
    print(f"wrote {len(kept)} datagrams to {path}")


if __name__ == "__main__":
    main()
