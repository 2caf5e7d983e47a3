"""Benchmark of the proc backend (prints numbers; not a test).

    python3 tests/tools/bench_procscan.py [--extra N] [--seconds S] [--interval 100ms]

1. Scan duration with the processes of the machine plus N extra sleeping processes (median/max over 50 scans).
2. CPU used by the backend while watching for S seconds at the interval (process_time / wall time).
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
from proctap.backends.procscan import ProcScanBackend


def scan_durations(backend: ProcScanBackend, count: int = 50) -> list[float]:
    out = []
    for _ in range(count):
        begin = time.perf_counter()
        backend.scan()
        out.append(time.perf_counter() - begin)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", type=int, default=0, help="extra sleeping processes to spawn")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", default="100ms")
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
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


if __name__ == "__main__":
    main()
