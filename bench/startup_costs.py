"""The fixed costs behind ``proctap run``'s overhead, and what each bpf failed-fork hook costs every syscall.

Prints, each a median over ``--rounds`` (run as root, from the repository):

* per-syscall cost of the bpf backend's failed-fork hooks: wall time of ``dd bs=1`` copying N bytes (2N syscalls)
  alone, while a bpf backend with ``fork_failed_hook=syscalls`` is attached, and with ``raw``;
* time to close a bpf backend with each hook (the kernel's detach);
* the BTF layout: parsed from /sys/kernel/btf/vmlinux against read from the cache;
* ``proctap run -q -- true`` wall time with the bpf and the netlink backend;
* writing the ``--json`` report of a 5000-process run, indented against compact;
* per-event costs of the watcher's enrichment step (``enrich_exec`` of an Exec that carries only what the proc
  connector says, and of one whose filename the kernel gave, as tracefs) and of the JSON form (``event_dict``).

    python3 bench/startup_costs.py [--rounds 5] [--syscalls 1000000] [--only events]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

from proctap.backends.base import BackendConfig  # noqa: E402
from proctap.backends.bpf import BpfBackend  # noqa: E402
from proctap.enrich import enrich_exec  # noqa: E402
from proctap.events import EventKind, Exec, Exit, Origin, event_dict  # noqa: E402
from proctap.linux.bpf import cache  # noqa: E402
from proctap.linux.bpf.btf import VMLINUX, Btf  # noqa: E402
from proctap.linux.bpf.programs import Layout  # noqa: E402


def median_s(rounds: int, once: Callable[[], float]) -> float:
    return statistics.median(once() for _ in range(rounds))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def backend(hook: str, events: frozenset[EventKind] | None = None) -> BpfBackend:
    kinds = frozenset(EventKind) if events is None else events
    return BpfBackend(BackendConfig(events=kinds, options=(("fork_failed_hook", hook),)))


def syscall_costs(rounds: int, count: int) -> None:
    dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}"]

    def run_dd() -> float:
        return timed(lambda: subprocess.run(dd, check=True, stderr=subprocess.DEVNULL))

    results: dict[str, list[float]] = {"no watcher": [], "syscalls": [], "raw": []}
    for _ in range(rounds):  # alternate the modes, so drifts of the machine hit them alike
        results["no watcher"].append(run_dd())
        for hook in ("syscalls", "raw"):
            b = backend(hook, frozenset({EventKind.FORK_FAILED}))
            try:
                results[hook].append(run_dd())
            finally:
                b.close()
    base = statistics.median(results["no watcher"])
    print(f"dd bs=1 count={count} ({2 * count} syscalls), median of {rounds}:")
    for name, walls in results.items():
        med = statistics.median(walls)
        extra_us = (med - base) / (2 * count) * 1e6
        print(f"  {name:<11} {med:6.3f} s   {extra_us:+.3f} us per syscall")


def close_costs(rounds: int) -> None:
    print(f"closing a bpf backend (all events), median of {rounds}:")
    for hook in ("syscalls", "raw"):

        def once(hook: str = hook) -> float:
            b = backend(hook)
            return timed(b.close)

        print(f"  fork_failed_hook={hook:<9} {median_s(rounds, once) * 1000:7.1f} ms")


def layout_costs(rounds: int) -> None:
    with open(VMLINUX, "rb") as f:
        blob = f.read()
    parse = median_s(rounds, lambda: timed(lambda: Layout.from_btf(Btf(blob), os.uname().machine)))
    cache.kernel_layout.__wrapped__()  # make sure the cache file exists
    cached = median_s(rounds, lambda: timed(cache.kernel_layout.__wrapped__))
    print(f"BTF layout ({len(blob)} bytes of BTF): parsed {parse * 1000:.0f} ms, from the cache "
          f"{cached * 1000:.1f} ms (read + CRC-32 + JSON)")  # fmt: skip


def proctap(*args: str, stdout: int | None = subprocess.DEVNULL) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-m", "proctap", *args], check=True, env=env, stdout=stdout,
                   stderr=subprocess.DEVNULL)  # fmt: skip


def startup_costs(rounds: int) -> None:
    print(f"proctap run -q -- true, wall time, median of {rounds}:")
    for name in ("bpf", "netlink"):
        wall = median_s(rounds, lambda name=name: timed(lambda: proctap("run", "-q", "--backend", name, "--", "true")))
        print(f"  {name:<8} {wall:.3f} s")


def report_costs(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="proctap-bench-") as tmp:
        report = Path(tmp) / "run.json"
        loop = "i=0; while [ $i -lt 5000 ]; do /bin/true; i=$((i+1)); done"
        proctap("run", "-q", "--json", str(report), "--", "sh", "-c", loop)
        doc = json.loads(report.read_text())
    processes = doc["counts"]["processes"]
    indented = median_s(rounds, lambda: timed(lambda: json.dumps(doc, indent=1)))
    compact = median_s(rounds, lambda: timed(lambda: json.dumps(doc, separators=(",", ":"))))
    print(f"--json report of {processes} processes: indented {indented * 1000:.0f} ms, compact {compact * 1000:.0f} ms")


def event_costs(rounds: int, count: int = 20_000) -> None:
    """Microseconds per call, each the median of ``rounds`` timings of ``count`` calls on this very process."""
    pid = os.getpid()
    common = {"source": "bench", "timestamp_ns": 1, "wall_time": 1.0, "pid": pid, "tid": pid, "start_ns": 5}
    bare = Exec(**common)  # type: ignore[arg-type]
    with_file = Exec(**common, filename=sys.executable, filename_from=Origin.KERNEL, parent_pid=os.getppid())  # type: ignore[arg-type]
    full = enrich_exec(bare)
    exit_ev = Exit(**common, status=0, exit_code=0, lifetime_ns=1000, comm="python")  # type: ignore[arg-type]
    cases: list[tuple[str, Callable[[], object]]] = [
        ("enrich_exec, nothing known (netlink)", lambda: enrich_exec(bare)),
        ("enrich_exec, filename and parent known (tracefs)", lambda: enrich_exec(with_file)),
        ("event_dict of an enriched Exec", lambda: event_dict(full)),
        ("event_dict of an Exit", lambda: event_dict(exit_ev)),
    ]
    print(f"per-event costs, median of {rounds} x {count} calls:")
    for label, fn in cases:
        each = median_s(rounds, lambda fn=fn: timed(lambda: [fn() for _ in range(count)])) / count
        print(f"  {label:<50} {each * 1e6:6.1f} us")


SECTIONS = ("syscalls", "close", "layout", "startup", "report", "events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--syscalls", type=int, default=1_000_000, help="bytes dd copies one at a time")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    args = parser.parse_args()
    only = set(args.only or SECTIONS)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bpf backend needs it")
    # bytecode as an installed package has it, so start-up does not time the compiling of sources
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC)], check=True, stdout=subprocess.DEVNULL)
    sections: dict[str, Callable[[], None]] = {
        "syscalls": lambda: syscall_costs(args.rounds, args.syscalls),
        "close": lambda: close_costs(args.rounds),
        "layout": lambda: layout_costs(args.rounds),
        "startup": lambda: startup_costs(args.rounds),
        "report": lambda: report_costs(args.rounds),
        "events": lambda: event_costs(args.rounds),
    }
    for name in SECTIONS:
        if name in only:
            sections[name]()


if __name__ == "__main__":
    main()
