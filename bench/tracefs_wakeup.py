"""How much does watching with the tracefs backend cost a forking workload, by wake-up strategy?

Prints, per strategy, the median over runs of the workload's own CPU time (user+sys, from wait4), its wall time,
and how many of its Fork events the reader got.  The reader runs in its own process, so its CPU is not counted:
what is measured is what the watched workload pays (wake-ups run in the forking task's context).

Strategies:
  none            no tracing at all
  no-reader       the instance records, nobody reads (the cost of the tracepoints alone)
  wake-per-event  block in poll() on the epoll fd (buffer_percent 0) and drain after every wake-up
  watcher         proctap's Watcher (latency 10 ms): sleep between non-empty drains, poll only when idle
  timed           never poll: sleep 10 ms, drain, repeat
  percent25       buffer_percent 25 and poll() with a 10 ms timeout

Usage (root): python3 bench/tracefs_wakeup.py [forks] [runs]      (default: 5000 forks, 3 runs)
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import proctap
from proctap.backends.base import BackendConfig
from proctap.backends.tracefs import TracefsBackend
from proctap.events import EventKind, Fork

STORM_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        waitpid(p, NULL, 0);
    }
    return 0;
}
"""
STRATEGIES = ("none", "no-reader", "wake-per-event", "watcher", "timed", "percent25")


def build_storm(tmp: str) -> str:
    src = os.path.join(tmp, "storm.c")
    with open(src, "w") as f:
        f.write(STORM_C)
    out = os.path.join(tmp, "storm")
    subprocess.run(["gcc", "-O2", "-o", out, src], check=True)
    return out


def reader(strategy: str, ready_w: int, stop_r: int, result_w: int) -> None:
    """In a child process: watch with ``strategy`` until ``stop_r`` is readable; write the Fork count."""
    forks = 0
    stop = select.poll()
    stop.register(stop_r, select.POLLIN)
    if strategy == "watcher":
        with proctap.watch(events="fork,exit", backend="tracefs") as w:
            os.write(ready_w, b"r")
            while not stop.poll(0):
                forks += sum(isinstance(e, Fork) for e in w.read(timeout=0.1))
            forks += sum(isinstance(e, Fork) for e in w.read(timeout=0))
    else:
        backend = TracefsBackend(BackendConfig(events=frozenset({EventKind.FORK, EventKind.EXIT})))
        if strategy == "percent25":
            backend._reader.instance.write("buffer_percent", "25")
        poller = select.poll()
        poller.register(backend.fileno(), select.POLLIN)
        os.write(ready_w, b"r")
        while not stop.poll(0):
            if strategy == "wake-per-event":
                poller.poll(100)
            elif strategy == "percent25":
                poller.poll(10)
            elif strategy == "timed":
                time.sleep(0.01)
            elif strategy == "no-reader":
                time.sleep(0.1)
                continue
            forks += sum(isinstance(e, Fork) for e in backend.read_events())
        if strategy != "no-reader":
            forks += sum(isinstance(e, Fork) for e in backend.read_events())
        backend.close()
    os.write(result_w, str(forks).encode())


def one_run(strategy: str, storm: str, n: int) -> tuple[float, float, int, float]:
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    result_r, result_w = os.pipe()
    child = None
    if strategy != "none":
        child = os.fork()
        if child == 0:
            code = 1
            try:
                reader(strategy, ready_w, stop_r, result_w)
                code = 0
            finally:
                os._exit(code)
        os.read(ready_r, 1)
    t0 = time.monotonic()
    pid = subprocess.Popen([storm, str(n)]).pid
    _, _, usage = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    forks = -1
    reader_cpu = 0.0
    if child is not None:
        time.sleep(0.05)
        os.write(stop_w, b"s")
        _, _, reader_usage = os.wait4(child, 0)
        reader_cpu = reader_usage.ru_utime + reader_usage.ru_stime
        forks = int(os.read(result_r, 32) or b"-1")
    for fd in (ready_r, ready_w, stop_r, stop_w, result_r, result_w):
        os.close(fd)
    return usage.ru_utime + usage.ru_stime, wall, forks, reader_cpu


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("forks", nargs="?", type=positive, default=5000, help="forks per run (default 5000)")
    parser.add_argument("runs", nargs="?", type=positive, default=3, help="runs per strategy (default 3)")
    args = parser.parse_args()
    n, runs = args.forks, args.runs
    tmp = tempfile.mkdtemp(prefix="proctap-bench-")
    try:
        storm = build_storm(tmp)
        results: dict[str, list[tuple[float, float, int, float]]] = {s: [] for s in STRATEGIES}
        for _ in range(runs):
            for strategy in STRATEGIES:  # interleaved, so machine-load drift hits all strategies alike
                results[strategy].append(one_run(strategy, storm, n))
        load = os.getloadavg()[0]
        print(f"{n} forks (+ other tasks'), median of {runs} runs, load average {load:.1f}, {os.cpu_count()} CPUs")
        print(f"{'strategy':<16}{'workload CPU s':>15}{'x none':>8}{'wall s':>8}{'forks seen':>12}{'reader CPU s':>14}")
        base = statistics.median(r[0] for r in results["none"])
        for strategy, rows in results.items():
            cpu = statistics.median(r[0] for r in rows)
            wall = statistics.median(r[1] for r in rows)
            seen = min(r[2] for r in rows)
            rcpu = statistics.median(r[3] for r in rows)
            seen_text = str(seen) if seen >= 0 else "-"
            print(f"{strategy:<16}{cpu:>15.3f}{cpu / base:>8.2f}{wall:>8.2f}{seen_text:>12}{rcpu:>14.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
