#!/usr/bin/env python3
"""What each part of the process cache and its context costs per event, timed outside a storm.

Usage (root):  python3 bench/cache_parts.py [--modes fork,exec] [--tasks 20000] [--rounds 5] [--backend bpf]

A storm of ``--tasks`` tasks (bench/loadgen) runs while a watcher without a process cache
(``proctap.watch(cache=False)``, the storm's subtree, context captured as ``--context`` captures it) keeps its
events.  Once the storm is over, the events are replayed the way ``proctap watch --json --context`` treats them, a
drain of 80 at a time (the size of a storm's drains at the default latency), and each part is timed per event:

- ``line``: the event's own NDJSON line (``event_json``: what plain ``watch --json`` writes);
- ``apply``: :meth:`proctap.ProcessCache.apply` and setting ``event.process`` (the record as of that event, and
  for an Exit the ended record kept for the grace period), by event kind;
- ``context``: the context members of its line (:meth:`ProcessCache.context_json`, with the ancestry).

Printed: microseconds per event of each part by kind (the best of ``--rounds`` replays, with the timer's own cost
taken off), and per task (fork: a Fork and an Exit; exec: also an Exec), with the cache's share of the line's
cost.  These are figures outside a storm: in one, with both cores busy, every part costs more (compare
``bench/context_cost.py``).  A benchmark prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

from run import build_loadgen, go, loadgen  # noqa: E402  (bench/run.py: the storm)

import proctap  # noqa: E402
from proctap.events import Event, Exit, event_json  # noqa: E402

DRAIN = 80  # events per replayed drain
_set = object.__setattr__  # as the watcher sets event.process
_now = time.perf_counter_ns


def capture(exe: Path, backend: str, mode: str, tasks: int) -> list[Event]:
    """The events of one storm of ``tasks`` tasks, as a cacheless watcher of its subtree delivered them (the storm
    runs in a thread, through run.py's :func:`loadgen` and :func:`go`, while this one reads)."""
    events: list[Event] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        loadgen(exe, mode, tasks, Path(tmp) / "truth.txt") as gen,
        proctap.watch("fork,exec,exit", backend=backend, pid=gen.pid, cache=False, context=True) as w,
    ):
        storm = threading.Thread(target=go, args=(gen,))
        storm.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            batch = w.read(timeout=1.0)
            events += batch
            if any(type(ev) is Exit and ev.pid == gen.pid and not ev.is_thread for ev in batch):
                break
        storm.join()
    return events


def timer_cost() -> int:
    """What one reading of the clock around nothing measures, in ns (taken off every timed call)."""
    return int(statistics.median(-(_now() - _now()) for _ in range(20_000)))


def replay(events: list[Event], overhead: int) -> dict[str, dict[str, int]]:
    """One replay into a fresh cache: total ns per part and event kind."""
    cache = proctap.ProcessCache(read_proc=False)
    totals: dict[str, dict[str, int]] = {"line": {}, "apply": {}, "context": {}}
    line, apply, context = totals["line"], totals["apply"], totals["context"]
    for start in range(0, len(events), DRAIN):
        drain = events[start : start + DRAIN]
        for ev in drain:
            kind = ev.kind.value
            t = _now()
            _set(ev, "process", cache.apply(ev))
            apply[kind] = apply.get(kind, 0) + _now() - t - overhead
        for ev in drain:
            kind = ev.kind.value
            t = _now()
            event_json(ev)
            line[kind] = line.get(kind, 0) + _now() - t - overhead
            t = _now()
            cache.context_json(ev.process, ancestry=True)
            context[kind] = context.get(kind, 0) + _now() - t - overhead
    return totals


def report(mode: str, events: list[Event], rounds: int) -> None:
    counts: dict[str, int] = {}
    for ev in events:
        counts[ev.kind.value] = counts.get(ev.kind.value, 0) + 1
    tasks = counts.get("fork", 0)
    overhead = timer_cost()
    runs = [replay(events, overhead) for _ in range(rounds)]
    print(f"{mode} storm: {len(events)} events ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))}); "
          f"timer {overhead} ns taken off each timed call")  # fmt: skip
    per_task: dict[str, float] = {}
    for part in ("line", "apply", "context"):
        best = {kind: min(r[part].get(kind, 0) for r in runs) for kind in counts}
        cells = "  ".join(f"{kind} {best[kind] / counts[kind] / 1000:5.2f}" for kind in sorted(counts))
        per_task[part] = sum(best.values()) / tasks / 1000
        print(f"  {part:<8} us per event: {cells}   per task {per_task[part]:5.2f} us")
    cache = per_task["apply"] + per_task["context"]
    print(f"  the cache and its context: {cache:.2f} us per task, {cache / per_task['line']:.2f}x the lines' own cost")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,exec", help="comma list of fork, exec (default: both)")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per storm (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="replays of each storm; the best counts (default 5)")
    parser.add_argument("--backend", default="bpf", help="proctap backend (default bpf)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the watcher needs it")
    exe = build_loadgen()
    proctap.settle_for_storms()  # as proctap watch runs
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  kernel {os.uname().release}  backend {args.backend}  "
          f"{args.tasks} tasks per storm, drains of {DRAIN}")  # fmt: skip
    for mode in args.modes.split(","):
        report(mode, capture(exe, args.backend, mode, args.tasks), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
