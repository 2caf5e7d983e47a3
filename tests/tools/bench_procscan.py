"""Benchmark of the proc backend (prints numbers; not a test).

    python3 tests/tools/bench_procscan.py [--extra N] [--seconds S] [--interval 100ms]

1. Scan duration with the processes of the machine plus N extra sleeping processes (median/max over 50 scans).
2. CPU used by the backend while watching for S seconds at the interval (process_time / wall time).
3. With --storm N: a shell runs N short `/bin/true` while the backend watches; prints how many of them it saw, the
   Lost count, and the ids the kernel allocated meanwhile (the Lost count is bounded by it).
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from proctap.backends.base import BackendConfig
from proctap.backends.proc import ProcScanBackend
from proctap.events import Fork, Lost


def scan_durations(backend: ProcScanBackend, count: int = 50) -> list[float]:
    out = []
    for _ in range(count):
        begin = time.perf_counter()
        backend.scan()
        out.append(time.perf_counter() - begin)
    return out


def last_pid() -> int:
    with open("/proc/loadavg") as f:
        return int(f.read().split()[4])


def storm(backend: ProcScanBackend, count: int) -> None:
    backend.scan()
    backend.scan()
    before = last_pid()
    shell = subprocess.Popen(["sh", "-c", f"i=0; while [ $i -lt {count} ]; do /bin/true; i=$((i+1)); done"])
    events = []
    while shell.poll() is None:
        select.select([backend], [], [], 1.0)
        events.extend(backend.read_events())
    events += backend.scan() + backend.scan()
    after = last_pid()
    seen = sum(1 for e in events if isinstance(e, Fork) and e.parent_pid == shell.pid)
    lost = sum(e.count or 0 for e in events if isinstance(e, Lost))
    print(
        f"storm of {count}: children seen={seen} lost={lost} seen+lost={seen + lost} "
        f"pids allocated meanwhile={after - before} (includes other activity)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", type=int, default=0, help="extra sleeping processes to spawn")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", default="100ms")
    parser.add_argument("--storm", type=int, default=0, help="short-lived processes to run while watching")
    args = parser.parse_args()
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(args.extra)]
    try:
        with ProcScanBackend(BackendConfig(options=(("interval", args.interval),))) as backend:
            durations = scan_durations(backend)
            stats = backend.stats()
            per_process = statistics.median(durations) / stats["processes"]
            print(
                f"processes={stats['processes']} tasks={stats['tasks']} "
                f"scan median={statistics.median(durations) * 1e3:.2f} ms max={max(durations) * 1e3:.2f} ms "
                f"per process={per_process * 1e6:.1f} us"
            )
            cpu0, wall0 = time.process_time(), time.monotonic()
            while time.monotonic() - wall0 < args.seconds:
                select.select([backend], [], [], 1.0)
                backend.read_events()
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            print(f"interval={args.interval}: backend CPU {cpu / wall * 100:.2f}% of one core over {wall:.1f} s")
            if args.storm:
                storm(backend, args.storm)
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


if __name__ == "__main__":
    main()
