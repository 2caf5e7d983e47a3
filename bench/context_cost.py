#!/usr/bin/env python3
"""What the context of issues 11 and 12 costs: a task storm watched as ``proctap watch --json`` does, in five variants.

Usage (root):  python3 bench/context_cost.py [--modes fork,exec] [--tasks 100000] [--runs 3] [--backend bpf]
               [--gc settled|default]

Each run: bench/loadgen makes N tasks (``fork``: children that exit at once; ``exec``: children that exec loadgen
itself and exit), waiting for a go so the consumer subscribes first.  The consumer, a fresh Python process, follows
exactly that subtree with a :class:`proctap.Watcher` and writes each event's NDJSON line (the CLI's renderer) to
/dev/null, until the loadgen's own exit; it tunes the garbage collector as ``proctap watch`` does
(``settle_for_storms``; ``--gc default`` leaves Python's own settings, to compare).  Variants, run alternately:

- ``plain``: ``watch --json`` (no process cache: ``cache=False``);
- ``cache``: the process cache and the parent/exec_id context of issue 11, without the context of issue 12
  (``track=True``; the lines carry the context keys, null);
- ``context``: ``watch --json --context`` (``track=True, context=True``): with ``bpf`` each fork and exec record
  carries its context block and each exec its cwd, captured in the kernel;
- ``ancestry``: ``watch --json --context --ancestry``: each line also carries the chain of ancestors (issue 11's
  figure: its cost over ``plain``);
- ``floor``: the least any process cache with context can cost in Python, for comparison: the ``plain`` watcher,
  plus per event one small tuple per process in a dict (removed at its exit and kept, without the event, among the
  last 16,384 exited), one dict lookup standing for the memoised chain of its parent, and a context text of the
  real shape (``ancestry``'s, made once from the storm's root) spliced into its line.  No Process records, no
  ``event.process``, no where, no repair: what is left is the bookkeeping and the longer lines.

Printed per run: the events seen of those that happened (fork and exit of every task, exec in exec mode: 100%
expected with bpf), the consumer's CPU per 1,000 tasks after its start-up (``mcpu/1k``), the seconds it spent in
garbage collections (``gc``), the storm's own CPU (loadgen and its children, from wait4: what watching costs the
watched), the consumer's peak RSS (including its start-up snapshot of /proc); then the medians and the ratios
context/cache (issue 12's part), context/plain and ancestry/plain (issue 11's).  A benchmark prints numbers; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "src"))

from run import build_loadgen  # noqa: E402  (bench/run.py: builds bench/build/loadgen)

VARIANTS = ("plain", "cache", "context", "ancestry", "floor")

CONSUMER = r"""
import collections, gc, json, os, resource, sys, time
import proctap
from proctap import settle_for_storms
from proctap.events import Exit, Fork, event_json
from proctap.render import JsonRenderer
backend, variant, root, settle = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "settled"
track = variant not in ("plain", "floor")
w = proctap.watch("fork,exec,exit", backend=backend, pid=root, track=track, cache=track,
                  context=variant in ("context", "ancestry"))
if settle:
    settle_for_storms()  # as proctap watch does once its watcher is set up
gc_time = {"total": 0.0, "start": 0.0}  # seconds in garbage collections


def on_gc(phase, _info):
    if phase == "start":
        gc_time["start"] = time.perf_counter()
    else:
        gc_time["total"] += time.perf_counter() - gc_time["start"]


gc.callbacks.append(on_gc)
renderer = JsonRenderer(open(os.devnull, "w"), context=w.processes if track else None,
                        ancestry=variant == "ancestry")
seen = {"fork": 0, "exec": 0, "exit": 0, "lost": 0}


class Floor:
    # the floor variant: see the module's docstring

    def __init__(self, out):
        self.out = out
        self.live, self.exited, self.order, self.chains = {}, {}, collections.deque(), {}
        cache = proctap.ProcessCache(context=True)  # the real context text of the storm's root, made once
        self.text = cache.context_json(cache.lookup(root), ancestry=True)

    def render_batch(self, pairs):
        live, exited, order, chains, text = self.live, self.exited, self.order, self.chains, self.text
        lines = []
        for ev, _ in pairs:
            cls, pid = type(ev), ev.pid
            if cls is Fork:
                parent = ev.parent_pid
                live[pid] = (ev.start_ns, parent)
            elif cls is Exit:
                rec = live.pop(pid, None)
                parent = None if rec is None else rec[1]
                exited[pid] = rec
                order.append(pid)
                if len(order) > 16384:
                    exited.pop(order.popleft(), None)
            else:
                rec = live.get(pid)
                parent = None if rec is None else rec[1]
                live[pid] = (ev.start_ns, parent, ev.timestamp_ns)
            chains.get(parent)
            line = event_json(ev)
            lines.append(f"{line[:-1]},{text}}}")
        lines.append("")
        self.out.write("\n".join(lines))
        self.out.flush()


if variant == "floor":
    renderer = Floor(renderer.stream)
print("ready", flush=True)
ready = time.process_time()
done = False
while not done:
    pairs = w.read_with_info(1.0)
    renderer.render_batch(pairs)
    for ev, _ in pairs:
        kind = ev.kind.value
        if kind in seen:
            seen[kind] += 1 if kind != "lost" else (ev.count or 0)
        if kind == "exit" and ev.pid == root and not ev.is_thread:
            done = True
cpu = time.process_time() - ready
w.close()
print(json.dumps({**seen, "cpu": cpu, "gc_s": gc_time["total"],
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
"""


def one_run(loadgen: Path, backend: str, mode: str, tasks: int, variant: str, gc_mode: str) -> dict[str, Any]:
    gen = subprocess.Popen([str(loadgen), mode, str(tasks), "-w"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, backend, variant, str(gen.pid), gc_mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "ready":
        gen.kill()
        raise RuntimeError(f"the {variant} consumer did not start")
    assert gen.stdin is not None
    gen.stdin.close()  # go
    _, _status, usage = os.wait4(gen.pid, 0)
    storm_cpu = usage.ru_utime + usage.ru_stime
    line = consumer.stdout.read()  # its counts and CPU, once it saw the loadgen's exit
    consumer.wait(timeout=600)
    seen = json.loads(line.strip().splitlines()[-1]) if line.strip() else {}
    expected = {"fork": tasks + 0, "exit": tasks + 1, "exec": tasks if mode == "exec" else 0}
    got = sum(seen.get(k, 0) for k in expected)
    return {
        "mode": mode, "variant": variant, "tasks": tasks, "seen_pct": 100.0 * got / sum(expected.values()),
        "lost": seen.get("lost", 0), "mcpu_per_1k": seen.get("cpu", 0.0) / tasks * 1000,
        "storm_cpu_s": storm_cpu, "rss_mb": seen.get("rss_kb", 0) / 1024, "gc_s": seen.get("gc_s", 0.0),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,exec", help="comma list of fork, exec (default: both)")
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per storm (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant, alternating (default 3)")
    parser.add_argument("--backend", default="bpf", help="proctap backend (default bpf)")
    parser.add_argument("--json", action="store_true", help="print every run as one JSON object per line too")
    parser.add_argument(
        "--gc",
        choices=("settled", "default"),
        default="settled",
        help="the consumer's garbage collector: as proctap watch sets it (default), or Python's own",
    )
    args = parser.parse_args()
    loadgen = build_loadgen()
    results: list[dict[str, Any]] = []
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  kernel {os.uname().release}  {os.cpu_count()} CPUs  "
          f"backend {args.backend}  {args.tasks} tasks")  # fmt: skip
    for mode in args.modes.split(","):
        for run in range(args.runs):
            for variant in VARIANTS:
                r = one_run(loadgen, args.backend, mode, args.tasks, variant, args.gc)
                results.append(r)
                print(f"{mode:<5} {variant:<8} run {run + 1}: seen {r['seen_pct']:7.3f}%  lost {r['lost']}  "
                      f"mcpu/1k {r['mcpu_per_1k']:.4f}  gc {r['gc_s']:.3f}s  storm cpu {r['storm_cpu_s']:.2f}s  "
                      f"rss {r['rss_mb']:.0f} MB",
                      flush=True)  # fmt: skip
                if args.json:
                    print(json.dumps(r))
    print()
    print(f"{'mode':<5} {'variant':<8} {'seen%':>8} {'mcpu/1k':>8} {'storm cpu s':>11} {'rss MB':>7}")
    for mode in args.modes.split(","):
        med: dict[str, float] = {}
        for variant in VARIANTS:
            runs = [r for r in results if r["mode"] == mode and r["variant"] == variant]
            med[variant] = statistics.median(r["mcpu_per_1k"] for r in runs)
            print(f"{mode:<5} {variant:<8} {min(r['seen_pct'] for r in runs):8.3f} {med[variant]:8.4f} "
                  f"{statistics.median(r['storm_cpu_s'] for r in runs):11.2f} "
                  f"{statistics.median(r['rss_mb'] for r in runs):7.0f}")  # fmt: skip
        print(f"{mode:<5} context/cache {med['context'] / med['cache']:.2f}x   "
              f"context/plain {med['context'] / med['plain']:.2f}x   "
              f"ancestry/plain {med['ancestry'] / med['plain']:.2f}x   "
              f"floor/plain {med['floor'] / med['plain']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
