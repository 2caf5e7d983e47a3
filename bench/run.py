#!/usr/bin/env python3
"""proctap benchmark: how much of a task storm each monitor sees, and what watching costs the storm.

For every (mode, size) it runs the load generator (bench/loadgen.c) alone (the baseline) and under each monitor,
alternating (baseline, monitor A, monitor B, baseline, ...), then scores each monitor's events against the
loadgen's ground truth and prints one table.  Run as root: ``python3 bench/run.py`` (see docs/benchmark.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import forkstat
import score

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
sys.path.insert(0, str(REPO / "src"))

MODES = ("fork", "exec", "thread")
LARGE = 50_000  # sizes from here on use --repeat-large
VERDICT_ORDER = ("complete", "accounted", "accounted*", "overrun", "SILENT")  # worst last


# ---------------------------------------------------------------------------------------------------------------
# set-up


def setup(need_forkstat: bool) -> None:
    """Install what is missing (gcc, libc6-dev, forkstat) through bench/setup (and mount tracefs if needed)."""
    cmd = [str(BENCH / "setup")] + ([] if need_forkstat else ["--no-forkstat"])
    subprocess.run(cmd, check=True)


def build_loadgen() -> Path:
    """bench/build/loadgen, rebuilt when loadgen.c is newer.  Static when libc.a is there: exec is cheaper."""
    exe = BUILD / "loadgen"
    src = BENCH / "loadgen.c"
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    BUILD.mkdir(exist_ok=True)
    base = ["gcc", "-O2", "-Wall", "-pthread", "-o", str(exe), str(src)]
    if subprocess.run([*base, "-static"], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(base, check=True)
    return exe


def available_backends(names: list[str]) -> list[str]:
    from proctap.backends import backend_class
    from proctap.errors import ProctapError

    usable = []
    for name in names:
        try:
            availability = backend_class(name).probe()
        except ProctapError as exc:
            print(f"skip backend {name}: {exc}", file=sys.stderr)
            continue
        if availability:
            usable.append(name)
        else:
            print(f"skip backend {name}: {availability.reason}", file=sys.stderr)
    return usable


# ---------------------------------------------------------------------------------------------------------------
# processes


def netlink_sockets(pid: int) -> dict[str, int] | None:
    """Receive queue and drop counter of the proc-connector sockets a process holds (/proc/net/netlink: Rmem,
    Drops — the kernel's count of datagrams it could not queue, which forkstat never reports)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with suppress(OSError):
        for fd in fd_dir.iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = None
    with suppress(OSError):
        for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 10 and cols[1] == "11" and cols[9] in inodes:  # 11: NETLINK_CONNECTOR
                found = found or {"rmem": 0, "drops": 0}
                found["rmem"] += int(cols[4])
                found["drops"] += int(cols[8])
    return found


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM: the peak RSS since the process's exec (ru_maxrss would include the forked Python driver's)."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def cpu_now(pid: int) -> float | None:
    """CPU seconds (user + system) a running process has used so far, from /proc/PID/stat (clock-tick precision)."""
    with suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15
    return None


def window_cpu(pid: int, since: float | None) -> float | None:
    """CPU a process used since ``since`` (a cpu_now reading): the monitor's cost after its start-up."""
    now = cpu_now(pid)
    return None if now is None or since is None else now - since


def wait_rusage(pid: int, timeout: float) -> tuple[int, Any] | None:
    """wait4 with a timeout: (wait status, rusage) or None if still running."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def lost_reasons(lost: list) -> dict[str, int | None]:
    """Reported losses summed by reason (None: some were of unknown size), to say what overflowed."""
    out: dict[str, int | None] = {}
    for count, reason, _cpu in lost:
        known = out.get(reason, 0)
        out[reason] = None if count is None or known is None else known + count
    return out


def runnable() -> int:
    """Tasks runnable on the machine right now (/proc/loadavg's 4th field, minus ourselves): how busy it is at the
    start of a run, which the load average (a decaying mean over minutes) tells late."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1


def cpu_of(usage: Any) -> float:
    return float(usage.ru_utime + usage.ru_stime)


LATE_LOSS_S = 0.3  # after the root's exit: more than a proc backend scan interval (100 ms) and its scan


def wait_drained(pid: int, out: Path, root_exit: re.Pattern[str], timeout: float) -> dict[str, int] | None:
    """Until a monitor that prints as it goes has printed the loadgen's own exit (the storm's last event), or, if
    that was lost, until it has nothing left to read: its proc-connector socket queue stays empty for a second, or
    (no such socket) its output stops growing for a second.  Waiting for the output to go quiet does not work for
    system-wide monitors: the rest of the machine keeps them printing, and a slow one never catches up."""
    deadline = time.monotonic() + timeout
    idle_since = None
    sockets = None
    offset = 0
    with open(out, "rb") as log:
        while time.monotonic() < deadline:
            sockets = netlink_sockets(pid)
            log.seek(offset)
            chunk = log.read()
            cut = chunk.rfind(b"\n") + 1
            offset += cut
            if root_exit.search(chunk[:cut].decode(errors="replace")):
                time.sleep(LATE_LOSS_S)  # the proc backend reports a scan's missed tasks at the next scan
                break
            busy = sockets["rmem"] > 0 if sockets is not None else cut > 0
            now = time.monotonic()
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= 1.0:
                break
            time.sleep(0.05)
    return sockets


class Monitor:
    """A monitor process: start(root_pid, args) once the loadgen waits for its go, stop(n) after the storm (returns
    the event columns and the monitor's costs); kill() is the clean-up for every path."""

    def __init__(self, tool: str, workdir: Path) -> None:
        self.tool = tool
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.files: list[Any] = []  # output files handed to the process

    def open_output(self, name: str) -> Any:
        handle = open(self.workdir / name, "wb")  # noqa: SIM115
        self.files.append(handle)
        return handle

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with suppress(ProcessLookupError):
                self.proc.kill()
            with suppress(ChildProcessError):
                os.waitpid(self.proc.pid, 0)
            self.proc.returncode = -9
        for handle in self.files:
            handle.close()


class ProctapMonitor(Monitor):
    def start(self, root_pid: int, args: argparse.Namespace) -> None:
        self.out = self.workdir / "events.json"
        cmd = [sys.executable, str(BENCH / "monitor.py"), self.tool.split("/", 1)[1], str(self.out)]
        cmd += ["--root", str(root_pid)]
        if not args.no_pid_filter:
            cmd += ["--pid", str(root_pid)]
        if args.latency is not None:
            cmd += ["--latency", str(args.latency)]
        if args.buffer is not None:
            cmd += ["--buffer", str(args.buffer)]
        cmd += ["--gc", args.collector_gc]
        stderr = self.open_output("monitor.stderr")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode().strip() if ready else "no answer in 60 s"
        if line != "ready":
            self.kill()
            raise RuntimeError(f"{self.tool}: {line} {(self.workdir / 'monitor.stderr').read_text()[-500:]}")

    def stop(self, n: int) -> dict[str, Any]:
        assert self.proc is not None
        sockets = netlink_sockets(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        waited = wait_rusage(self.proc.pid, 120 + n / 500)
        if waited is None:
            self.kill()
            raise RuntimeError(f"{self.tool}: did not finish draining")
        status, usage = waited
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.tool}: exit {self.proc.returncode}: {self._stderr_tail()}")
        data: dict[str, Any] = json.loads(self.out.read_text())
        data["cpu_total_s"] = cpu_of(usage)
        data["netlink_socket"] = data.get("netlink_socket") or sockets  # the monitor's own reading is the later
        return data

    def _stderr_tail(self) -> str:
        return (self.workdir / "monitor.stderr").read_text()[-500:]


class ForkstatMonitor(Monitor):
    def start(self, root_pid: int, args: argparse.Namespace) -> None:
        self.out = self.workdir / "forkstat.out"
        self.root_pid = root_pid
        stdout = self.open_output(self.out.name)
        cmd = ["forkstat", "-l", "-e", forkstat.EVENTS]
        self.proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_subscribed()
        self.cpu_ready = cpu_now(self.proc.pid)

    def _wait_subscribed(self) -> None:
        """forkstat is listening once it reports a child of ours (its own start-up line says nothing)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.Popen(["/bin/true"])
            probe.wait()
            for _ in range(20):
                time.sleep(0.01)
                if f" {probe.pid} child" in self.out.read_text(errors="replace"):
                    return
        self.kill()
        raise RuntimeError("forkstat did not start listening within 20 s")

    def stop(self, n: int) -> dict[str, Any]:
        assert self.proc is not None
        root_exit = re.compile(rf"^\S+ exit +{self.root_pid} ", re.MULTILINE)
        sockets = wait_drained(self.proc.pid, self.out, root_exit, 60 + n / 500)
        peak_kb = peak_rss_kb(self.proc.pid)
        cpu_window = window_cpu(self.proc.pid, self.cpu_ready)
        self.proc.send_signal(signal.SIGINT)
        waited = wait_rusage(self.proc.pid, 30)
        if waited is None:
            self.kill()
            raise RuntimeError("forkstat did not exit on SIGINT")
        status, usage = waited
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        cols = forkstat.parse(self.out.read_text(errors="replace"))
        return {
            **cols,
            "cpu_s": cpu_window if cpu_window is not None else cpu_of(usage),
            "cpu_total_s": cpu_of(usage),
            "rss_peak_kb": peak_kb,
            "netlink_socket": sockets,
            "stats": {"nobufs_lines": cols["nobufs"]},
        }


class Stamper(threading.Thread):
    """The reader of a monitor's output pipe: copies it into a file and notes, for every read, the file offset it
    reached and when (CLOCK_MONOTONIC ns, the clock of the events' ``timestamp_ns``).  A line arrived at the first
    read that brought its newline: :meth:`arrivals` maps each line's end to that time, for the latency figures."""

    PIPE_BYTES = 1 << 20

    def __init__(self, fd: int, out: Any) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.out = out
        self.marks: list[tuple[int, int]] = []  # (file offset after the read, monotonic ns)
        with suppress(OSError):
            import fcntl

            fcntl.fcntl(fd, 1031, self.PIPE_BYTES)  # F_SETPIPE_SZ: a writer rarely blocks on us

    def run(self) -> None:
        offset = 0
        read, now, write, flush, mark = os.read, time.monotonic_ns, self.out.write, self.out.flush, self.marks.append
        while True:
            chunk = read(self.fd, self.PIPE_BYTES)
            t = now()
            if not chunk:
                break
            write(chunk)
            flush()
            offset += len(chunk)
            mark((offset, t))
        os.close(self.fd)


def latencies(text: str, marks: list[tuple[int, int]], root: int) -> dict[str, float] | None:
    """Notification latency of the storm's events (the loadgen's own, its children's and threads'): from the
    kernel's ``timestamp_ns`` to the read that brought the line, in ms: p50, p99, max and how many."""
    found: list[int] = []
    offset = 0
    index = 0
    for line in text.splitlines(keepends=True):
        offset += len(line.encode())
        while index < len(marks) and marks[index][0] < offset:
            index += 1
        if index == len(marks):
            break
        if f'"pid":{root},' not in line and f'"parent_pid":{root},' not in line:
            continue
        ev = json.loads(line)
        if ev["event"] != "lost" and (ev["pid"] == root or ev.get("parent_pid") == root):
            found.append(marks[index][1] - ev["timestamp_ns"])
    if not found:
        return None
    found.sort()

    def pct(p: float) -> float:
        return found[min(len(found) - 1, int(p / 100 * len(found)))] / 1e6

    return {"p50_ms": pct(50), "p99_ms": pct(99), "max_ms": found[-1] / 1e6, "events": len(found)}


class CliMonitor(Monitor):
    """``proctap watch --json`` writing into a pipe, as a user would run it; a thread of the driver reads the pipe
    (stamping when each line arrives: the latency figures) into a file, parsed afterwards."""

    def start(self, root_pid: int, args: argparse.Namespace) -> None:
        self.out = self.workdir / "watch.ndjson"
        self.errors = self.workdir / "watch.stderr"
        self.root_pid = root_pid
        backend, _, variant = self.tool.split("/", 1)[1].partition(" ")
        cmd = [sys.executable, "-m", "proctap", "watch", "--json", "--threads", "-e", "fork,exec,exit", "-b", backend]
        if not args.no_pid_filter:
            cmd += ["--pid", str(root_pid)]
        if args.latency is not None:
            cmd += ["--latency", str(args.latency)]
        if args.buffer is not None:
            cmd += ["--buffer", str(args.buffer)]
        cmd += shlex.split(variant)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        stdout, stderr = self.open_output(self.out.name), self.open_output(self.errors.name)
        read_end, write_end = os.pipe()
        self.stamper = Stamper(read_end, stdout)
        self.stamper.start()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=write_end, stderr=stderr, env=env)
        finally:
            os.close(write_end)
        deadline = time.monotonic() + 60
        while "watching" not in self.errors.read_text(errors="replace"):  # its start line: subscribed
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.tool}: {self.errors.read_text(errors='replace')[-500:] or 'no start line'}")
            time.sleep(0.02)
        self.cpu_ready = cpu_now(self.proc.pid)

    def stop(self, n: int) -> dict[str, Any]:
        assert self.proc is not None
        root = self.root_pid
        root_exit = re.compile(rf'^\{{"event":"exit",.*"pid":{root},"tid":{root},.*"is_thread":false', re.MULTILINE)
        sockets = wait_drained(self.proc.pid, self.out, root_exit, 60 + n / 500)
        peak_kb = peak_rss_kb(self.proc.pid)
        cpu_window = window_cpu(self.proc.pid, self.cpu_ready)
        self.proc.send_signal(signal.SIGTERM)
        waited = wait_rusage(self.proc.pid, 30)
        if waited is None:
            self.kill()
            raise RuntimeError(f"{self.tool}: did not exit on SIGTERM")
        status, usage = waited
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode not in (0, 143):
            raise RuntimeError(f"{self.tool}: exit {self.proc.returncode}: {self.errors.read_text()[-500:]}")
        self.stamper.join(30)
        text = self.out.read_text(errors="replace")
        cols = parse_ndjson(text)
        summary = self.errors.read_text(errors="replace").strip().splitlines()
        return {
            **cols,
            "cpu_s": cpu_window if cpu_window is not None else cpu_of(usage),
            "cpu_total_s": cpu_of(usage),
            "rss_peak_kb": peak_kb,
            "netlink_socket": sockets,
            "latency": latencies(text, self.stamper.marks, self.root_pid),
            "stats": {"summary": summary[-1] if summary else ""},
        }


def parse_ndjson(text: str) -> dict[str, Any]:
    """``proctap watch --json`` output -> the scorer's event columns."""
    cols: dict[str, Any] = {name: [] for name in score.COLUMNS}
    cols["lost"] = []

    def known(value: int | None) -> int:
        return -1 if value is None else value

    for line in text.splitlines():
        ev = json.loads(line)
        kind = ev["event"]
        if kind == "fork":
            for name, value in zip(("f_tid", "f_pid", "f_ppid"), (ev["tid"], ev["pid"], ev["parent_pid"]), strict=True):
                cols[name].append(value)
            cols["f_thread"].append(int(ev["is_thread"]))
        elif kind == "exec":
            cols["e_tid"].append(ev["tid"])
            cols["e_pid"].append(ev["pid"])
            cols["e_ppid"].append(known(ev.get("parent_pid")))
        elif kind == "exit":
            cols["x_tid"].append(ev["tid"])
            cols["x_pid"].append(ev["pid"])
            cols["x_ppid"].append(known(ev.get("parent_pid")))
            cols["x_status"].append(known(ev.get("status")))
            cols["x_thread"].append(int(ev["is_thread"]))
        elif kind == "lost":
            cols["lost"].append((ev["count"], ev["reason"], ev.get("cpu")))
    return cols


def make_monitor(tool: str, workdir: Path) -> Monitor:
    if tool == "forkstat":
        return ForkstatMonitor(tool, workdir)
    if tool.startswith("proctap-cli/"):
        return CliMonitor(tool, workdir)
    return ProctapMonitor(tool, workdir)


@contextmanager
def loadgen(
    exe: Path, mode: str, n: int, truth: Path, *, concurrency: int = 4, rate: float | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The storm, started and waiting for its go (:func:`go`); killed if still running at the end of the block."""
    cmd = [str(exe), mode, str(n), "-c", str(concurrency), "-t", str(truth), "-w"]
    if rate:
        cmd += ["-r", str(rate)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.kill()
            with suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            proc.returncode = -9


def go(lg: subprocess.Popen[bytes]) -> tuple[float, Any]:
    """Give the waiting storm its go and wait for its end: (its wall time in seconds, from its header; its rusage).
    RuntimeError when it failed."""
    assert lg.stdin is not None and lg.stdout is not None
    lg.stdin.write(b"g")
    lg.stdin.close()
    _, status, usage = os.wait4(lg.pid, 0)
    lg.returncode = os.waitstatus_to_exitcode(status)
    header = lg.stdout.read().decode().strip()
    if lg.returncode != 0:
        raise RuntimeError(f"loadgen failed (exit {lg.returncode}): {header}")
    _, _, _, wall_ns, _ = score.parse_header(header)
    return wall_ns / 1e9, usage


def run_once(exe: Path, tool: str, mode: str, n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One storm, watched by ``tool`` (or by nothing: tool "baseline")."""
    workdir.mkdir(parents=True)
    truth_path = workdir / "truth.txt"
    result: dict[str, Any] = {"tool": tool, "mode": mode, "n": n, "loadavg": os.getloadavg()[0], "runnable": runnable()}
    monitor = None if tool == "baseline" else make_monitor(tool, workdir)
    with loadgen(exe, mode, n, truth_path, concurrency=args.concurrency, rate=args.rate) as lg:
        try:
            if monitor is not None:
                monitor.start(lg.pid, args)
            result["load_wall_s"], usage = go(lg)
            result["load_cpu_s"] = cpu_of(usage)
            if monitor is not None:
                data = monitor.stop(n)
                truth = score.read_truth(truth_path)
                result["score"] = score.score(truth, data)
                result["monitor"] = {k: v for k, v in data.items() if not k.startswith(("f_", "e_", "x_", "lost"))}
                result["lost_reasons"] = lost_reasons(data.get("lost") or [])
        except RuntimeError as exc:
            result["error"] = str(exc)
        finally:
            if monitor is not None:
                monitor.kill()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------------------------
# summary


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]], tools: list[str], mode: str, n: int) -> list[dict[str, Any]]:
    def ok_runs(tool: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["tool"] == tool and r["mode"] == mode and r["n"] == n and "error" not in r]

    base = ok_runs("baseline")
    base_wall = median([r["load_wall_s"] for r in base])
    base_cpu = median([r["load_cpu_s"] for r in base])
    rows = [{"tool": "baseline", "mode": mode, "n": n, "runs": len(base), "wall_s": base_wall, "cpu_s": base_cpu}]
    for tool in tools:
        mine = ok_runs(tool)
        errors = [r["error"] for r in runs if r["tool"] == tool and r["mode"] == mode and r["n"] == n and "error" in r]
        row: dict[str, Any] = {"tool": tool, "mode": mode, "n": n, "runs": len(mine), "errors": errors}
        if mine:
            wall = median([r["load_wall_s"] for r in mine])
            cpu = median([r["load_cpu_s"] for r in mine])
            scores = [r["score"] for r in mine]
            mon = [r["monitor"] for r in mine]
            drops = [m["netlink_socket"]["drops"] for m in mon if m.get("netlink_socket")]
            row.update(
                wall_s=wall,
                cpu_s=cpu,
                wall_x=wall / base_wall if wall and base_wall else None,
                cpu_x=cpu / base_cpu if cpu and base_cpu else None,
                seen_pct={k: min(s["seen_pct"][k] for s in scores) for k in scores[0]["seen_pct"]},
                codes_pct=min((s["exit_codes_right_pct"] for s in scores), key=lambda v: 101 if v is None else v),
                lost=max(s["lost"] for s in scores),
                lost_unknown=max(s["lost_unknown"] for s in scores),
                missing=max(s["missing"] for s in scores),
                kernel_drops=max(drops) if drops else None,
                verdict=max((s["verdict"] for s in scores), key=VERDICT_ORDER.index),
                monitor_cpu_per_1k=statistics.median(m["cpu_s"] for m in mon) / (n / 1000),
                monitor_rss_mb=max(m["rss_peak_kb"] for m in mon) / 1024,
                latency=median_latency([m.get("latency") for m in mon]),
                loadavg=median([r["loadavg"] for r in mine]),
            )
        rows.append(row)
    return rows


def median_latency(found: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Each latency figure's median over the runs that measured it (the CLI's)."""
    runs = [f for f in found if f]
    if not runs:
        return None
    return {k: statistics.median(f[k] for f in runs) for k in ("p50_ms", "p99_ms", "max_ms")}


def fmt(value: Any, spec: str, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    return format(value, spec).rjust(width)


COLUMNS = (
    ("tool", 20),
    ("mode", 6),
    ("tasks", 7),
    ("runs", 4),
    ("fork%", 7),
    ("exec%", 7),
    ("exit%", 7),
    ("code%", 7),
    ("lost", 7),
    ("ovr", 4),
    ("drops", 7),
    ("verdict", 10),
    ("wall s", 7),
    ("wall x", 6),
    ("cpu s", 7),
    ("cpu x", 6),
    ("mcpu/1k", 7),
    ("rss MB", 6),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("load", 5),
)


def table_line(row: dict[str, Any]) -> str:
    seen = row.get("seen_pct", {})
    cells = [
        row["tool"].ljust(20),
        row["mode"].ljust(6),
        str(row["n"]).rjust(7),
        str(row["runs"]).rjust(4),
        fmt(seen.get("fork"), ".2f", 7),
        fmt(seen.get("exec"), ".2f", 7),
        fmt(seen.get("exit"), ".2f", 7),
        fmt(row.get("codes_pct"), ".2f", 7),
        fmt(row.get("lost"), "d", 7),
        fmt(row.get("lost_unknown"), "d", 4),
        fmt(row.get("kernel_drops"), "d", 7),
        row.get("verdict", "").ljust(10),
        fmt(row.get("wall_s"), ".2f", 7),
        fmt(row.get("wall_x"), ".2f", 6),
        fmt(row.get("cpu_s"), ".2f", 7),
        fmt(row.get("cpu_x"), ".2f", 6),
        fmt(row.get("monitor_cpu_per_1k"), ".3f", 7),
        fmt(row.get("monitor_rss_mb"), ".1f", 6),
        fmt((row.get("latency") or {}).get("p50_ms"), ".2f", 7),
        fmt((row.get("latency") or {}).get("p99_ms"), ".2f", 7),
        fmt(row.get("loadavg"), ".1f", 5),
    ]
    line = " ".join(cells)
    if row.get("errors"):
        line += f"   errors: {row['errors'][0][:120]}"
    return line


def print_table(rows: list[dict[str, Any]]) -> None:
    print(" ".join(name.rjust(width) if i > 2 else name.ljust(width) for i, (name, width) in enumerate(COLUMNS)))
    previous = None
    for row in rows:
        if previous is not None and (row["mode"], row["n"]) != previous:
            print()
        previous = (row["mode"], row["n"])
        print(table_line(row))


LEGEND = """\
fork%/exec%/exit%: share of the storm's tasks whose event the monitor delivered (worst run)
code%:   exit statuses right, among the exits seen ("-": the monitor reports no exit status)
lost:    events the monitor reported dropped (sum of Lost.count)
ovr:     overruns the monitor reported without a count
drops:   the kernel's drop counter of the monitor's proc-connector socket (/proc/net/netlink)
verdict: worst run: complete | accounted (lost >= missing events) | accounted* (lost >= tasks missing an event:
         backends that count lost tasks) | overrun (dropped, count unknown) | SILENT (missing, not reported)
         The proc backend counts every task of the machine it missed, so other activity can hide a shortfall: for
         its exact figures run the bench alone in a PID namespace, e.g.
         unshare -p -f --mount-proc python3 bench/run.py --backends proc --no-forkstat (proc only: the other
         backends report the machine's pids, not the namespace's)
wall/cpu: the storm's wall time and CPU (loadgen + children), median; x = ratio to the unwatched baseline
mcpu/1k: monitor CPU seconds per 1000 tasks; rss MB: monitor peak RSS (VmHWM)
p50/p99 ms: notification latency (CLI rows): the storm's events, from the kernel's timestamp to the moment the
         reader of `proctap watch --json`'s pipe got the line (median of the runs' percentiles)
load:    the 1-minute load average at the start of the runs (median): the machine's other work"""


# ---------------------------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=LEGEND, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backends", default="all", help="comma list of proctap backends, all (the default) or none")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of fork, exec, thread (default: all)")
    p.add_argument("--sizes", default="10000,100000", help="comma list of storm sizes in tasks (default: 10000,100000)")
    p.add_argument("--repeat", type=int, default=3, help=f"runs of each tool for sizes below {LARGE} (default 3)")
    p.add_argument("--repeat-large", type=int, default=1, help=f"runs of each tool for sizes >= {LARGE} (default 1)")
    p.add_argument("--concurrency", type=int, default=4, help="children/threads alive at once in the storm (4)")
    p.add_argument(
        "--rate",
        type=float,
        default=0,
        help="pace the storm at this many tasks per second (default: as fast as it can); e.g. --rate 1000 --sizes "
        "10000 for the latency at a steady 1,000 forks/s",
    )
    p.add_argument(
        "--collector-gc",
        choices=("default", "settled"),
        default="default",
        help="the API collector's garbage collector: Python's settings (default) or proctap.settle_for_storms(), as "
        "proctap watch sets it",
    )
    p.add_argument("--cli", action="store_true", help="also measure `proctap watch --json` (the CLI) per backend")
    p.add_argument(
        "--cli-args",
        action="append",
        metavar="ARGS",
        help="with --cli: options for `proctap watch`, e.g. '--context --ancestry'; repeat to compare variants in the "
        "same alternating runs (give '' for plain watch)",
    )
    p.add_argument("--no-forkstat", action="store_true", help="do not compare with forkstat")
    p.add_argument(
        "--no-pid-filter",
        action="store_true",
        help="proctap watches the whole system (default: --pid LOADGEN, like `proctap watch --pid`)",
    )
    p.add_argument("--latency", type=float, default=None, help="proctap Watcher latency in seconds (its default)")
    p.add_argument("--buffer", type=int, default=None, help="proctap kernel buffer in bytes (default: the backend's)")
    p.add_argument("--json", metavar="OUT", help="write every run and the summary to OUT")
    p.add_argument("--keep", metavar="DIR", help="keep raw outputs (truth files, events, forkstat logs) in DIR")
    p.add_argument("--no-setup", action="store_true", help="do not install packages (gcc, forkstat) if missing")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    for mode in args.modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    return args


def environment() -> dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit.stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "pid_max": int(Path("/proc/sys/kernel/pid_max").read_text()),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too: stop the monitors and the storm, print what is done


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if os.geteuid() != 0:
        print(
            "run.py: run as root (the monitors need CAP_NET_ADMIN and tracefs): sudo python3 bench/run.py",
            file=sys.stderr,
        )
        return 2
    if not args.no_setup:
        setup(not args.no_forkstat)
    exe = build_loadgen()
    from proctap.backends import AUTO_ORDER

    wanted = [b for b in args.backends.split(",") if b not in ("", "none")]
    names = list(AUTO_ORDER) if args.backends == "all" else wanted
    backends = available_backends(names)
    tools = [f"proctap/{name}" for name in backends]
    if args.cli:
        variants = args.cli_args or [""]
        tools += [f"proctap-cli/{name} {extra}".rstrip() for extra in variants for name in backends]
    if not args.no_forkstat:
        tools.append("forkstat")
    if not tools:
        print("run.py: no monitor to measure", file=sys.stderr)
        return 2
    keep_root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="proctap-bench-"))
    env = environment()
    print(
        f"# {env['date']}  kernel {env['kernel']}  {env['cpus']} CPUs  commit {env['commit']}  "
        f"concurrency {args.concurrency}",
        file=sys.stderr,
    )
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for mode in args.modes:
            for n in args.sizes:
                repeat = args.repeat_large if n >= LARGE else args.repeat
                for rep in range(repeat):
                    for tool in ["baseline", *tools]:
                        workdir = keep_root / f"{mode}-{n}-{rep}-{tool.replace('/', '-')}"
                        result = run_once(exe, tool, mode, n, args, workdir)
                        result["rep"] = rep
                        runs.append(result)
                        print(progress_line(result, time.monotonic() - started), file=sys.stderr)
                rows.extend(summarize(runs, tools, mode, n))
    except KeyboardInterrupt:
        print("interrupted: summary of the runs done so far", file=sys.stderr)
        if runs and (runs[-1]["mode"], runs[-1]["n"]) not in {(row["mode"], row["n"]) for row in rows}:
            rows.extend(summarize(runs, tools, runs[-1]["mode"], runs[-1]["n"]))
    finally:
        if not args.keep:
            shutil.rmtree(keep_root, ignore_errors=True)
    print()
    print_table(rows)
    print()
    print(LEGEND)
    if args.json:
        out = {"environment": env, "config": {k: v for k, v in vars(args).items()}, "summary": rows, "runs": runs}
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def progress_line(result: dict[str, Any], elapsed: float) -> str:
    head = f"[{elapsed:6.0f}s] {result['tool']:<20} {result['mode']:<6} {result['n']:>7}"
    if "error" in result:
        return f"{head}  ERROR {result['error']}"
    line = f"{head}  wall {result['load_wall_s']:6.2f}s cpu {result['load_cpu_s']:6.2f}s"
    if "score" in result:
        s = result["score"]
        seen = " ".join(f"{k} {v:.2f}%" for k, v in s["seen_pct"].items())
        line += f"  {seen}  lost {s['lost']}+{s['lost_unknown']}?  {s['verdict']}"
        lat = result["monitor"].get("latency")
        if lat:
            line += f"  latency p50 {lat['p50_ms']:.2f} p99 {lat['p99_ms']:.2f} max {lat['max_ms']:.1f} ms"
    line += f"  (load {result['loadavg']:.1f}, {result['runnable']} runnable)"
    return line


if __name__ == "__main__":
    sys.exit(main())
