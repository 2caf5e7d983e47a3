"""The floor of watching a task storm: the storm's wall time and the reader's CPU as the reader does more and more
of proctap's pipeline, next to ``cat trace_pipe`` (C, no decoding).  Issue 15's targets are judged against these.

Readers (each its own process, started before the storm; runs alternate with unwatched ones):

  cat          ``cat trace_pipe > /dev/null`` of a tracefs instance with sched_process_fork/exec/exit on
  bpf-drain    proctap's bpf programs attached; the reader moves the ring's consumer position, decodes nothing
  bpf-decode   ... and decodes every record into events (``BpfBackend.read_events``), then drops them
  api          ``proctap.watch(cache=False)``: the watcher's drain loop and enrichment step too, events dropped
  api-cache    ``proctap.watch()`` as a program gets it (the process cache fed: ``event.process``)
  watch        ``proctap watch --json --threads`` into a pipe that a thread of this script empties

The bpf readers drain every ``--latency`` seconds, as the watcher does while events flow.  The storm is
bench/loadgen.c (built by bench/run.py's set-up) with 4 tasks alive at once, as in bench/run.py.

Columns: wall x (the storm's wall time over the unwatched runs', median), CPU s/1k (the reader's CPU per 1,000 tasks
of the storm, from its start to the end of its drain), events (what the reader decoded or printed, bpf and API
readers and watch; "-" for cat and bpf-drain).

Usage (root): python3 bench/floor.py [--modes thread,fork] [--tasks 100000] [--runs 3] [--readers ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))  # measure this checkout's proctap
sys.path.insert(0, str(BENCH))

from run import build_loadgen, cpu_now, go, loadgen, wait_rusage  # noqa: E402

READERS = ("cat", "bpf-drain", "bpf-decode", "api", "api-cache", "watch")
QUIET_S = 0.3  # a reader is drained once its CPU time has not grown for this long after the storm


# -- the readers that run as a child of this script ---------------------------------------------------------------
_stop = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def reader_main(kind: str, latency: float) -> int:
    """``--reader KIND``: read until SIGTERM, then until a drain finds nothing; print how many events were read."""
    signal.signal(signal.SIGTERM, _request_stop)
    if kind in ("bpf-drain", "bpf-decode"):
        from proctap.backends.base import BackendConfig
        from proctap.backends.bpf import BpfBackend

        backend = BpfBackend(BackendConfig())
        ring = backend._ring  # the floor: below the Backend interface on purpose
        assert ring is not None

        def drain() -> int:
            if kind == "bpf-decode":
                return len(backend.read_events())
            n = sum(1 for _ in ring.records())
            ring.release()
            return n

        close = backend.close
    else:
        import proctap

        watcher = proctap.watch("fork,exec,exit", threads=True, cache=kind == "api-cache", latency=latency)

        def drain() -> int:
            return len(watcher.read(0))

        close = watcher.close
    print("ready", flush=True)
    events = 0
    while not _stop:
        time.sleep(latency)
        events += drain()
    while True:
        got = drain()
        events += got
        if not got:
            break
    close()
    print(events if kind != "bpf-drain" else "-", flush=True)
    return 0


# -- the parent: storms and readers -------------------------------------------------------------------------------
class Reader:
    """One reader process: started before the storm, stopped once drained; its CPU is measured from /proc."""

    def __init__(self, kind: str, latency: float) -> None:
        self.kind = kind
        self.latency = latency
        self.instance: Any = None
        self.pipe_thread: threading.Thread | None = None
        self.lines = 0
        self.proc = self._start()
        self.cpu_ready = cpu_now(self.proc.pid)

    def _start(self) -> subprocess.Popen[bytes]:
        if self.kind == "cat":
            from proctap.linux.tracefs.instance import Instance, find_tracefs, remove_stale_instances

            root = find_tracefs()
            if root is None:
                raise SystemExit("no tracefs: mount it at /sys/kernel/tracing")
            remove_stale_instances(root)
            self.instance = Instance(root)
            for name in ("sched_process_fork", "sched_process_exec", "sched_process_exit"):
                self.instance.enable_event("sched", name)
            pipe = os.path.join(self.instance.path, "trace_pipe")
            return subprocess.Popen(["cat", pipe], stdout=subprocess.DEVNULL)
        if self.kind == "watch":
            cmd = [sys.executable, "-m", "proctap", "watch", "--json", "--threads", "-e", "fork,exec,exit", "-b", "bpf"]
            cmd += ["--latency", str(self.latency)]
            env = {**os.environ, "PYTHONPATH": str(BENCH.parent / "src")}
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            assert proc.stderr is not None
            line = ""
            while "watching" not in line:  # its start line: subscribed
                line = proc.stderr.readline().decode(errors="replace")
                if not line:
                    raise SystemExit("proctap watch did not start")
            self.pipe_thread = threading.Thread(target=self._empty_pipe, args=(proc,), daemon=True)
            self.pipe_thread.start()
            return proc
        cmd = [sys.executable, __file__, "--reader", self.kind, "--latency", str(self.latency)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise SystemExit(f"reader {self.kind} did not start")
        return proc

    def _empty_pipe(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 20):
            self.lines += chunk.count(b"\n")

    def stop(self) -> tuple[float, str]:
        """Wait until drained; stop it; its CPU seconds since start and how many events it read."""
        pid = self.proc.pid
        last, since = cpu_now(pid), time.monotonic()
        while time.monotonic() - since < QUIET_S:
            time.sleep(0.05)
            now = cpu_now(pid)
            if now != last:
                last, since = now, time.monotonic()
        cpu = (last or 0.0) - (self.cpu_ready or 0.0)
        self.proc.send_signal(signal.SIGTERM if self.kind != "watch" else signal.SIGINT)
        events = "-"
        if self.proc.stdout is not None and self.kind not in ("watch", "cat"):
            events = self.proc.stdout.read().decode().strip() or "-"
        if wait_rusage(pid, 30) is None:
            self.proc.kill()
        if self.pipe_thread is not None:
            self.pipe_thread.join(10)
            events = str(self.lines)
        self.close()
        return cpu, events

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with suppress(ChildProcessError):
                self.proc.wait()
        if self.instance is not None:
            self.instance.remove()
            self.instance = None


def storm(exe: Path, mode: str, n: int, reader: Reader | None) -> dict[str, Any]:
    """One storm (it waits for its go, so the reader is ready first); its wall time, the reader's cost."""
    truth = Path(f"/tmp/proctap-floor-{os.getpid()}.truth")
    try:
        with loadgen(exe, mode, n, truth) as lg:  # killed on Ctrl-C
            wall, _ = go(lg)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        truth.unlink(missing_ok=True)
    result: dict[str, Any] = {"wall_s": wall}
    if reader is not None:
        result["cpu_s"], result["events"] = reader.stop()
    return result


@contextmanager
def _uninterrupted() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main() -> int:
    try:
        return measure()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def measure() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="thread,fork", help="comma list of fork, exec, thread (thread,fork)")
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per storm (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each reader, alternating (default 3)")
    parser.add_argument("--readers", default=",".join(READERS), help=f"comma list of {', '.join(READERS)}")
    parser.add_argument("--latency", type=float, default=0.01, help="the readers' drain interval, s (0.01)")
    parser.add_argument("--reader", choices=READERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        return reader_main(args.reader, args.latency)
    if os.geteuid() != 0:
        print("error: run as root (the readers attach BPF programs and tracefs events)", file=sys.stderr)
        return 2
    readers = [r for r in args.readers.split(",") if r]
    unknown = sorted(set(readers) - set(READERS))
    if unknown:
        print(f"error: unknown readers {unknown}: choose from {', '.join(READERS)}", file=sys.stderr)
        return 2
    exe = build_loadgen()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  kernel {os.uname().release}  {os.cpu_count()} CPUs  "
          f"{args.tasks} tasks per storm, 4 alive at once, {args.runs} runs, drain every {args.latency} s")  # fmt: skip
    for mode in args.modes.split(","):
        runs: dict[str, list[dict[str, Any]]] = {"unwatched": [], **{r: [] for r in readers}}
        for _ in range(args.runs):
            for name in ["unwatched", *readers]:
                reader = None if name == "unwatched" else Reader(name, args.latency)
                try:
                    runs[name].append(storm(exe, mode, args.tasks, reader))
                finally:
                    if reader is not None:
                        with _uninterrupted():  # a second Ctrl-C must not leave the reader or its instance
                            reader.close()
        base = statistics.median(r["wall_s"] for r in runs["unwatched"])
        print(f"\n{mode} storm: unwatched wall {base:.2f} s")
        print(f"  {'reader':<12} {'wall x':>7} {'CPU s/1k':>9} {'events':>8}")
        for name in readers:
            wall = statistics.median(r["wall_s"] for r in runs[name]) / base
            cpu = statistics.median(r["cpu_s"] for r in runs[name]) / args.tasks * 1000
            print(f"  {name:<12} {wall:>7.2f} {cpu:>9.4f} {runs[name][-1]['events']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
