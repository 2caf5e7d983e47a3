#!/usr/bin/env python3
"""What ``proctap top`` costs in a fork storm, next to ``proctap watch --json > /dev/null``.

A paced storm of ``--rate`` forks per second for ``--seconds`` (bench/loadgen.c in fork mode, one batch of
``--batch`` forks started every batch/rate seconds, a few batches at most running at once) runs under each monitor in
turn, and once with no storm (the monitor's idle cost: start-up, the BTF parse, the final snapshot).  For each run it
prints the monitor's CPU seconds (user + system, from wait4), what it counted and what it reported lost.  Both watch
the whole machine with the same backend; the storm's achieved rate is printed too (a loaded machine may not reach
the asked one).  Numbers only: this asserts nothing.

Run as root: ``python3 bench/top_cost.py [--rate 10000] [--seconds 10] [--repeat 1] [--backend auto]``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import build_loadgen, setup  # noqa: E402  (bench/run.py: the project's load generator, built once)

PROCTAP = [sys.executable, "-m", "proctap"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
START_TIMEOUT = 60.0


def storm(exe: Path, rate: float, seconds: float, batch: int, running: int) -> dict[str, float]:
    """``rate`` forks/s for ``seconds``: batches of ``batch`` forks (4 alive at once each), started on schedule
    while fewer than ``running`` batches run.  Returns the forks made and the time it took."""
    start = time.monotonic()
    launched = 0
    procs: list[subprocess.Popen[bytes]] = []
    late = 0
    while time.monotonic() - start < seconds:
        procs = [p for p in procs if p.poll() is None]
        due = start + launched * batch / rate
        now = time.monotonic()
        if now >= due and len(procs) < running:
            procs.append(subprocess.Popen([str(exe), "fork", str(batch), "-c", "4"], stdout=subprocess.DEVNULL))
            launched += 1
        elif now >= due:
            late += 1
            time.sleep(0.002)
        else:
            time.sleep(min(due - now, 0.01))
    for p in procs:
        p.wait()
    wall = time.monotonic() - start
    forks = launched * (batch + 1)  # each batch's loadgen is a fork too
    return {"forks": forks, "wall_s": wall, "rate": forks / wall}


def start_monitor(tool: str, backend: str, duration: float, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    out = workdir / f"{tool}.out"
    err = workdir / f"{tool}.err"
    if tool == "top":
        cmd = [*PROCTAP, "top", "--once", "--json", "--backend", backend, "--duration", f"{duration:g}"]
        ready = b"proctap: top"
    else:
        cmd = [*PROCTAP, "watch", "--json", "--stats", "--backend", backend, "--duration", f"{duration:g}"]
        ready = b"proctap: watching"
    stdout = open(out, "wb") if tool == "top" else open(os.devnull, "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=ENV)
    stdout.close()
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + START_TIMEOUT
    while ready not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stderr], [], [], left)[0]:
            proc.kill()
            raise RuntimeError(f"{tool} did not start: {seen.decode(errors='replace')}")
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"{tool} ended at start: {seen.decode(errors='replace')}")
        seen += chunk
    err.write_bytes(seen)
    return proc, out


def finish_monitor(tool: str, proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    assert proc.stderr is not None
    rest = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {"cpu_s": usage.ru_utime + usage.ru_stime, "status": proc.returncode}
    if tool == "top":
        doc = json.loads(out.read_text())
        result.update(forks=doc["totals"]["forks"], lost=doc["lost"], lost_unknown=doc["lost_unknown"])
    else:
        stats = json.loads(rest.decode().strip().splitlines()[-1])
        result.update(forks=stats["received"].get("fork", 0), lost=stats["lost"], lost_unknown=stats["lost_unknown"])
    return result


def run(tool: str, args: argparse.Namespace, exe: Path, workdir: Path, with_storm: bool) -> dict[str, Any]:
    duration = args.seconds + 1.0
    proc, out = start_monitor(tool, args.backend, duration, workdir)
    result: dict[str, Any] = {"tool": tool, "storm": None}
    try:
        if with_storm:
            result["storm"] = storm(exe, args.rate, args.seconds, args.batch, args.running)
        result.update(finish_monitor(tool, proc, out))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result


def line(r: dict[str, Any]) -> str:
    s = r["storm"]
    storm_text = f"{s['forks']:>7} forks in {s['wall_s']:5.2f}s = {s['rate']:7.0f}/s" if s else "no storm".ljust(35)
    lost = f"{r['lost']}" + (f" +{r['lost_unknown']} overruns" if r["lost_unknown"] else "")
    return f"{r['tool']:<6} {storm_text}  cpu {r['cpu_s']:6.2f}s  counted forks {r['forks']:>7}  lost {lost}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=10_000, help="forks per second to ask of the storm (10000)")
    p.add_argument("--seconds", type=float, default=10.0, help="how long the storm runs (10)")
    p.add_argument("--batch", type=int, default=1000, help="forks per loadgen batch (1000)")
    p.add_argument("--running", type=int, default=3, help="loadgen batches running at once at most (3)")
    p.add_argument("--repeat", type=int, default=1, help="storm runs per monitor, alternating (1)")
    p.add_argument("--backend", default="auto", help="the backend both monitors use (auto)")
    p.add_argument("--no-setup", action="store_true", help="do not install gcc if missing")
    p.add_argument("--json", metavar="OUT", help="also write the runs to OUT")
    args = p.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.batch <= 0 or args.running <= 0 or args.repeat <= 0:
        p.error("--rate, --seconds, --batch, --running and --repeat must be positive")
    if not args.no_setup:
        setup(need_forkstat=False)
    exe = build_loadgen()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"top_cost.{os.getpid()}"
    workdir.mkdir()
    runs = []
    print(f"# {args.rate:g} forks/s asked for {args.seconds:g}s; backend {args.backend}; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    for tool in ("top", "watch"):
        r = run(tool, args, exe, workdir, with_storm=False)
        runs.append(r)
        print(line(r), flush=True)
    for _ in range(args.repeat):
        for tool in ("top", "watch"):
            r = run(tool, args, exe, workdir, with_storm=True)
            runs.append(r)
            print(line(r), flush=True)
    for tool in ("top", "watch"):
        idle = [r["cpu_s"] for r in runs if r["tool"] == tool and r["storm"] is None]
        busy = [r for r in runs if r["tool"] == tool and r["storm"] is not None]
        extra = sum(r["cpu_s"] for r in busy) / len(busy) - idle[0]
        forks = sum(r["storm"]["forks"] for r in busy) / len(busy)
        print(f"{tool:<6} storm cost: {extra:.2f} CPU s above idle = {extra / forks * 1e6:.1f} us per storm fork")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    for f in workdir.iterdir():
        f.unlink()
    workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
