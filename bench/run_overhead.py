"""Overhead of ``proctap run`` on a build-like workload, compared with ``strace -f`` on the same workload.

Workloads: ``compile`` (make -j2 of N tiny compile steps, ``cc -c`` of a one-function C file each: the build the
issue describes), ``make`` (make -j2 of N steps that each exec /bin/true: no work at all, so proctap's fixed start-up
and teardown weigh the most) or ``spawn`` (a shell loop starting N short processes).  Modes: the workload alone,
under ``proctap run -q`` (the automatic backend plus taskstats, the tree built and summarised), under
``strace -f -qq -e trace=process -o /dev/null``.  Runs alternate between modes; the median wall time of each mode is
printed with its overhead over the baseline.

    python3 bench/run_overhead.py                 # compile: make -j2, 2000 tiny compile steps, 5 rounds
    python3 bench/run_overhead.py --workload make
    python3 bench/run_overhead.py --workload spawn --steps 20000 --rounds 5

Run as root (taskstats needs CAP_NET_ADMIN).  The figures depend on the machine's load: other busy processes make
every monitor that sees the whole system's events (proc connector, taskstats) pay for their events too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")


def workload(kind: str, steps: int, workdir: Path) -> list[str]:
    if kind == "compile":
        objs = []
        for i in range(steps):
            (workdir / f"u{i}.c").write_text(f"int unit{i}(int x) {{ return x * {i} + 1; }}\n")
            objs.append(f"u{i}.o")
        body = [f"all: {' '.join(objs)}", "%.o: %.c\n\t@cc -O1 -c $< -o $@", "clean:\n\t@rm -f *.o"]
        (workdir / "Makefile").write_text("\n".join(body) + "\n")
        # always-make: every run compiles everything again (no up-to-date objects from the previous run)
        return ["make", "-s", "-B", "-j2", "-C", str(workdir)]
    if kind == "make":
        targets = [f"t{i}" for i in range(steps)]
        body = [f".PHONY: all {' '.join(targets)}", f"all: {' '.join(targets)}"]
        body += [f"{t}:\n\t@true {t}" for t in targets]
        (workdir / "Makefile").write_text("\n".join(body) + "\n")
        return ["make", "-s", "-j2", "-C", str(workdir)]
    script = f"i=0; while [ $i -lt {steps} ]; do /bin/true; i=$((i+1)); done"
    return ["sh", "-c", script]


def modes(cmd: list[str], strace: bool, report: Path, latency: str | None) -> dict[str, list[str]]:
    run = [sys.executable, "-m", "proctap", "run", "-q", "--json", str(report)]
    run += [] if latency is None else ["--latency", latency]
    out = {"baseline": cmd, "proctap run": [*run, "--", *cmd]}
    if strace:
        out["strace -f"] = ["strace", "-f", "-qq", "-e", "trace=process", "-o", "/dev/null", *cmd]
    return out


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys of everything it started) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("compile", "make", "spawn"), default="compile")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", help="passed to proctap run (default: its own, 0.05 s with bpf)")
    parser.add_argument("--no-strace", action="store_true", help="leave strace out (quicker)")
    parser.add_argument("--no-setup", action="store_true", help="do not install missing packages (make, gcc, strace)")
    args = parser.parse_args()
    if not args.no_setup:
        subprocess.run([str(Path(__file__).resolve().parent / "setup"), "--no-forkstat"], check=True)
    if shutil.which("make") is None and args.workload != "spawn":
        raise SystemExit("make is not installed (apt-get install make)")
    strace = shutil.which("strace") is not None
    if not strace:
        print("strace not installed (apt-get install strace): comparing without it", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": SRC}
    # measure proctap as installed, with bytecode (as scripts/install leaves it), not recompiling its sources
    subprocess.run([sys.executable, "-m", "compileall", "-q", SRC], check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="proctap-bench-run-") as tmp:
        cmd = workload(args.workload, args.steps, Path(tmp))
        report = Path(tmp) / "run.json"
        runs = modes(cmd, strace and not args.no_strace, report, args.latency)
        own_cpu: list[float] = []
        seen: list[int] = []
        names = list(runs)
        walls: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        timed(runs["baseline"], env)  # warm the caches
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # alternate which mode goes first
            for name in order:
                wall, cpu = timed(runs[name], env)
                walls[name].append(wall)
                cpus[name].append(cpu)
                if name == "proctap run":
                    doc = json.loads(report.read_text())
                    own_cpu.append(doc["proctap_cpu_s"])
                    seen.append(doc["counts"]["processes"])
    base = statistics.median(walls["baseline"])
    print(f"workload: {args.workload}, {args.steps} steps ({' '.join(cmd[:3])} ...), {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("median CPU: user+sys of the mode's whole process tree (workload, plus proctap or strace)")
    print(f"{'mode':<14} {'median wall':>12} {'overhead':>9} {'min':>8} {'max':>8} {'median CPU':>11}")
    for name in names:
        med = statistics.median(walls[name])
        over = (med / base - 1) * 100
        print(f"{name:<14} {med:>11.3f}s {over:>+8.1f}% {min(walls[name]):>7.3f}s {max(walls[name]):>7.3f}s "
              f"{statistics.median(cpus[name]):>10.3f}s")  # fmt: skip
    print(f"proctap's own CPU: median {statistics.median(own_cpu):.3f}s; processes in its tree: {sorted(set(seen))}; "
          f"events it received (whole machine) in the last run: {doc['watch_stats']['received']}")  # fmt: skip


if __name__ == "__main__":
    main()
