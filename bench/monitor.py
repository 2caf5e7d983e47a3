"""The proctap side of the benchmark: watch with one backend, keep the events in memory, write them at the end.

Run by bench/run.py as a separate process::

    python3 bench/monitor.py BACKEND OUT.json [--pid PID] [--root PID] [--latency S] [--buffer BYTES] [--gc ...]

Protocol: prints ``ready`` on stdout once the watcher is subscribed (the storm starts only then); on SIGTERM or
SIGINT it stops reading new batches, drains what the kernel still holds (until it has read the Exit of ``--root``,
the storm's last event, and one more batch, waited for up to ``--drain`` seconds; else until a read returns nothing
for ``--drain`` seconds) and writes OUT.json: the events about tasks, the watcher's stats and its own CPU/RSS.

The collector does the least possible per event: one ``type()`` test and a few appends to ``array('i')``
columns, so the CPU and memory measured are proctap's.  The CPU window starts when the watcher is ready and ends
when the drain is done (imports, set-up and writing the results are outside it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # measure this checkout's proctap

from score import COLUMNS

import proctap
from proctap.events import Exec, Exit, Fork, Lost

_stop = False
MAX_DRAIN_S = 60.0


def _request_stop(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def vm_kb(field: str) -> int:
    """VmRSS / VmHWM of this process (ru_maxrss would count the forked parent's pages from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def socket_counters(fd: int) -> dict[str, int] | None:
    """Rmem and Drops of our proc-connector socket in /proc/net/netlink, if ``fd`` is one (the netlink backend)."""
    inode = str(os.fstat(fd).st_ino)
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 10 and cols[9] == inode:
            return {"rmem": int(cols[4]), "drops": int(cols[8])}
    return None


def collect(watcher: proctap.Watcher, drain_s: float, root: int | None = None) -> dict[str, Any]:
    """Read until asked to stop and drained.  Columns of 32-bit ints (-1 for None) keep the collector's own
    memory at 4 bytes a field, so the monitor's peak RSS is mostly proctap's."""
    cols = {name: array("i") for name in COLUMNS}
    f_tid, f_pid, f_ppid, f_thread = (cols[c].append for c in ("f_tid", "f_pid", "f_ppid", "f_thread"))
    e_tid, e_pid, e_ppid = (cols[c].append for c in ("e_tid", "e_pid", "e_ppid"))
    x_tid, x_pid, x_ppid, x_status, x_thread = (
        cols[c].append for c in ("x_tid", "x_pid", "x_ppid", "x_status", "x_thread")
    )
    lost: list[tuple[int | None, str, int | None]] = []
    read = watcher.read
    drain_deadline = None
    last_activity = 0.0
    root_ended = False  # the root's Exit was read: everything of the storm was (the stream is in order)
    last_until = None
    while True:
        draining = _stop  # only a read started after the stop request may end the drain
        if draining and root_ended and last_until is None:
            # One more non-empty batch (or drain_s of nothing), counted like the others, then done: the proc backend
            # reports a scan's missed tasks at its next scan, one scan after the root's Exit, and a read may return
            # empty before that scan is due (a read(0) here left those Lost events out: the verdict read SILENT).
            last_until = time.monotonic() + drain_s
        batch = read(drain_s if draining else 0.1)
        if not draining or not all(type(ev) is Lost for ev in batch):
            last_activity = time.monotonic()
        for ev in batch:
            t = type(ev)
            if t is Fork:
                f_tid(ev.tid)
                f_pid(ev.pid)
                f_ppid(ev.parent_pid)
                f_thread(ev.is_thread)
            elif t is Exit:
                x_tid(ev.tid)
                x_pid(ev.pid)
                ppid = ev.parent_pid
                x_ppid(-1 if ppid is None else ppid)
                status = ev.status
                x_status(-1 if status is None else status)
                x_thread(ev.is_thread)
                if ev.pid == root and not ev.is_thread:
                    root_ended = True
            elif t is Exec:
                e_tid(ev.tid)
                e_pid(ev.pid)
                ppid = ev.parent_pid
                e_ppid(-1 if ppid is None else ppid)
            elif t is Lost:
                lost.append((ev.count, ev.reason, ev.cpu))
        if last_until is not None and (batch or time.monotonic() >= last_until):
            break
        if draining:
            # Lost events alone are quiet too (a polling backend reports the rest of the machine's missed tasks on
            # every scan, one scan late: keep reading them for drain_s).  Unfiltered, the rest of the machine never
            # lets the stream go quiet: cap the drain.
            now = time.monotonic()
            drain_deadline = drain_deadline or now + MAX_DRAIN_S
            if now - last_activity >= drain_s or now > drain_deadline:
                break
    out: dict[str, Any] = dict(cols)  # still arrays: lists of ints would cost ~10x the memory (converted later)
    out["lost"] = lost
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend")
    parser.add_argument("out")
    parser.add_argument("--pid", type=int, default=None, help="watch only this process's subtree (proctap --pid)")
    parser.add_argument("--root", type=int, default=None, help="the storm's process: its Exit ends the drain")
    parser.add_argument("--latency", type=float, default=None, help="Watcher latency (default: proctap's)")
    parser.add_argument("--buffer", type=int, default=None, help="kernel buffer bytes (default: the backend's)")
    parser.add_argument("--drain", type=float, default=0.5, help="stop after a quiet read this long once asked")
    parser.add_argument(
        "--gc",
        choices=("default", "settled"),
        default="default",
        help="Python's garbage collector settings (default), or proctap.settle_for_storms() once set up",
    )
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    kwargs: dict[str, Any] = {"pid": args.pid}
    if args.latency is not None:
        kwargs["latency"] = args.latency
    if args.buffer is not None:
        kwargs["buffer_bytes"] = args.buffer
    try:
        watcher = proctap.watch("fork,exec,exit", backend=args.backend, **kwargs)
    except proctap.ProctapError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    if args.gc == "settled":
        proctap.settle_for_storms()  # what proctap watch does, and the docs suggest to programs that read storms
    rss_ready_kb = vm_kb("VmRSS")
    cpu_ready = _cpu_seconds()
    wall_ready = time.monotonic()
    print("ready", flush=True)

    events = collect(watcher, args.drain, args.root)

    cpu = _cpu_seconds() - cpu_ready
    rss_peak_kb = vm_kb("VmHWM")
    wall = time.monotonic() - wall_ready
    stats = watcher.stats().as_dict()
    sockets = socket_counters(watcher.fileno())
    watcher.close()
    result = {
        "backend": args.backend,
        "monitor_pid": os.getpid(),
        "cpu_s": cpu,
        "wall_s": wall,
        "rss_ready_kb": rss_ready_kb,
        "rss_peak_kb": rss_peak_kb,
        "stats": stats,
        "netlink_socket": sockets,
        **{name: col.tolist() if isinstance(col, array) else col for name, col in events.items()},
    }
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
