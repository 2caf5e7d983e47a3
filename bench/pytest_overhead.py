"""What the pytest plugin's suite-wide watching costs: proctap's own tests run alternately as they are and with
``--proctap-leaks=warn --proctap-report FILE`` (the watcher follows every test's processes, a leak check after each
test, the report written at the end).  Prints the median wall time (and the CPU of pytest and all its processes) of
each mode, the ratio, and what the plugin found in the tests: the processes they left running, lost events, the
tests that started the most processes.

    python3 bench/pytest_overhead.py                       # the default subset, 3 rounds
    python3 bench/pytest_overhead.py --full --rounds 1     # the whole suite (~80 s a run; fork storms included)
    python3 bench/pytest_overhead.py --tests tests/test_text.py tests/test_run.py

The default subset (``DEFAULT_TESTS``, ~20 s a run here) mixes tests that start no process (text formatting, JSON)
with tests that run ``proctap run`` as a subprocess around real workloads (a make -j2 build, daemons, a storm that
makes it lose events): their own watchers beside the plugin's.  Run as root, as the tests are; the figures depend
on the machine's load (the modes alternate so that a change of load hits both).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ["tests/test_text.py", "tests/test_json_bytes.py", "tests/test_run.py", "tests/test_run_outputs.py"]


def run_once(tests: list[str], extra: list[str]) -> tuple[float, float, int, str, set[str]]:
    """One pytest run: (wall seconds, CPU seconds of pytest and its processes, exit status, last output line, the
    tests that failed)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *extra, *tests]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = done.stdout.strip().splitlines()
    failed = {line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1}
    return wall, cpu, done.returncode, lines[-1] if lines else done.stderr.strip()[-200:], failed


def findings(report: dict[str, Any], top: int) -> list[str]:
    tests = sum(1 for t in report["tests"] if t["kind"] == "test")
    lost = f"{report['lost']} (+{report['lost_unknown']} overruns of unknown size)"
    processes = report["counts"]["processes"]
    out = [f"backend {report['backend']}; {processes} processes in {tests} tests; lost events: {lost}"]
    leaks = [(t["name"], leak) for t in report["tests"] for leak in t["leaked"]]
    out.append(f"processes left running: {len(leaks)}")
    out.extend(f"  {name}: [{leak['pid']}] {leak['command']}" for name, leak in leaks)
    ranked = sorted(report["tests"], key=lambda t: -t["counts"]["processes"])[:top]
    out.append("tests that started the most processes:")
    out.extend(f"  {t['counts']['processes']:>6}  {t['name']}" for t in ranked if t["counts"]["processes"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", nargs="+", default=None, help="test files to run (default: DEFAULT_TESTS)")
    parser.add_argument("--full", action="store_true", help="the whole suite (tests/)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating (default 3)")
    parser.add_argument("--top", type=int, default=5, help="how many of the busiest tests to list (default 5)")
    args = parser.parse_args()
    tests = ["tests"] if args.full else (args.tests or DEFAULT_TESTS)
    with tempfile.TemporaryDirectory(prefix="proctap-pytest-bench-") as tmp:
        report_path = Path(tmp) / "report.json"
        modes = {"plain": [], "--proctap-leaks": ["--proctap-leaks=warn", "--proctap-report", str(report_path)]}
        walls: dict[str, list[float]] = {m: [] for m in modes}
        cpus: dict[str, list[float]] = {m: [] for m in modes}
        failures: dict[str, dict[str, int]] = {m: {} for m in modes}
        print(f"pytest {' '.join(tests)}: {args.rounds} rounds, modes alternating", flush=True)
        for r in range(args.rounds):
            for mode, extra in modes.items() if r % 2 == 0 else reversed(modes.items()):
                wall, cpu, status, last, failed = run_once(tests, extra)
                walls[mode].append(wall)
                cpus[mode].append(cpu)
                for test in failed:
                    failures[mode][test] = failures[mode].get(test, 0) + 1
                print(f"  round {r + 1} {mode:<16} {wall:7.2f} s wall {cpu:7.2f} s CPU  exit {status}: {last}",
                      flush=True)  # fmt: skip
        base, watched = statistics.median(walls["plain"]), statistics.median(walls["--proctap-leaks"])
        base_cpu, watched_cpu = statistics.median(cpus["plain"]), statistics.median(cpus["--proctap-leaks"])
        print(f"median wall: plain {base:.2f} s, --proctap-leaks {watched:.2f} s: ratio {watched / base:.3f} "
              f"({(watched / base - 1) * 100:+.1f}%)")  # fmt: skip
        fastest, fastest_watched = min(walls["plain"]), min(walls["--proctap-leaks"])
        print(f"fastest wall (the least disturbed run of each): plain {fastest:.2f} s, --proctap-leaks "
              f"{fastest_watched:.2f} s: ratio {fastest_watched / fastest:.3f}")  # fmt: skip
        print(f"median CPU (pytest and its processes): plain {base_cpu:.2f} s, --proctap-leaks {watched_cpu:.2f} s: "
              f"ratio {watched_cpu / base_cpu:.3f}")  # fmt: skip
        for mode, tests_failed in failures.items():
            listed = ", ".join(f"{t} ({n}/{args.rounds})" for t, n in sorted(tests_failed.items())) or "none"
            print(f"tests that failed, {mode}: {listed}")
        if report_path.exists():
            print("\n".join(findings(json.loads(report_path.read_text()), args.top)))
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTEST_ADDOPTS", None)
    sys.exit(main())
