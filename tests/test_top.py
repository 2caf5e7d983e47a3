"""``proctap top`` in a real terminal (tmux) and as a snapshot (``--once``), against real processes.

tmux runs ``proctap top`` in a pane of a known size; a workload (the script below) spawns ``/bin/true`` from named
parents; ``tmux capture-pane`` shows what the screen shows.  Waits are bounded by deadlines (never measurements):
a rate on the screen is compared with what the workload actually spawned over the same second, a count check.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import proctap
from proctap.backends import Feature, backend_class, probe_all
from proctap.linux.cgroups import CgroupPaths, cgroup2_mount, parse_mountinfo_cgroup2
from proctap.top.aggregate import Aggregator, ParentRow, Series, Sort, View
from proctap.top.screen import State, compose
from proctap.top.table import header_lines, table_lines

SRC = Path(proctap.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(SRC)}
ENV.pop("PROCTAP_DEBUG", None)
ENV.pop("NO_COLOR", None)
WAIT = float(os.environ.get("PROCTAP_TEST_TIMEOUT", "30"))
WIDTH, HEIGHT = 120, 30
BACKEND = "bpf"  # cgroup ids and failed forks: the backend that knows them all here
TRACEFS_INSTANCES = Path("/sys/kernel/tracing/instances")

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/apt-test.txt)")

# The workload: started by the test, waits for "go" on stdin (so that proctap can watch its pid first), then runs
# what its arguments say; "done" on stdout when everything it started has been reaped; exits at EOF on stdin.
WORKLOAD = r'''
import os, signal, sys, time

def name(comm):
    with open("/proc/self/comm", "w") as f:
        f.write(comm)

def spawn(path, *args):
    return os.posix_spawn(path, [os.path.basename(path), *args], os.environ)

def spawner(comm, rate, log, stop):
    """/bin/true at `rate` a second until the file `stop` exists; each spawn's CLOCK_MONOTONIC in `log`."""
    name(comm)
    times = []
    period = 1.0 / rate
    due = time.monotonic()
    out = open(log, "w")
    while not os.path.exists(stop):
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        due = max(due + period, time.monotonic() - 0.05)  # no catching up after a stall: the log says the truth
        spawn("/bin/true")
        times.append(time.monotonic())
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if len(times) >= 50:
            out.write("".join(f"{t:.6f}\n" for t in times))
            out.flush()
            times.clear()
    out.write("".join(f"{t:.6f}\n" for t in times))
    out.close()
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break

def reap_all():
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return

mode = sys.argv[1]
name(sys.argv[2])
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
if mode == "spawners":  # spawners CGROUP_PROCS LOG_DIR: a busy and a quiet parent
    cgroup_procs, logs = sys.argv[3], sys.argv[4]
    if cgroup_procs != "-":
        with open(cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
    stop = os.path.join(logs, "stop")
    for comm, rate in (("busy-spawner", 500), ("quiet-spawner", 20)):
        if os.fork() == 0:
            try:
                spawner(comm, rate, os.path.join(logs, comm), stop)
            finally:
                os._exit(0)
elif mode == "mixed":  # the known workload of the JSON test
    for _ in range(10):
        spawn("/bin/true")
    for _ in range(3):
        spawn("/bin/sh", "-c", "exit 3")
    for _ in range(4):
        if os.fork() == 0:
            os._exit(0)
    sleepers = [spawn("/bin/sleep", "60") for _ in range(2)]
    for pid in sleepers:
        os.kill(pid, signal.SIGKILL)
    reap_all()
elif mode == "odd":  # odd PATH: run a program whose name is not UTF-8 and holds a control character
    spawn(sys.argv[3])
    reap_all()
elif mode == "failing":  # failing CGROUP_PROCS: forks fail with EAGAIN under pids.max = 3; then sh exits 3
    with open(sys.argv[3], "w") as f:
        f.write(str(os.getpid()))
    sleepers = [spawn("/bin/sleep", "60") for _ in range(2)]
    failed = 0
    for _ in range(5):
        try:
            pid = os.fork()
        except BlockingIOError:
            failed += 1
            continue
        if pid == 0:
            os._exit(0)
    for pid in sleepers:
        os.kill(pid, signal.SIGKILL)
    reap_all()
    for _ in range(2):
        spawn("/bin/sh", "-c", "exit 3")
    reap_all()
    print("failed", failed, flush=True)
print("done", flush=True)
sys.stdin.read()
'''


class Workload:
    """The workload script in its own process; ``go()`` starts it, ``close()`` ends it (and all it started)."""

    def __init__(self, tmp: Path, mode: str, comm: str, *args: str) -> None:
        script = tmp / "workload.py"
        script.write_text(WORKLOAD)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), mode, comm, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_done(self) -> list[str]:
        """Its stdout up to "done" (everything it started has been reaped)."""
        assert self.proc.stdout is not None
        lines = []
        while (line := self.proc.stdout.readline()) and line.strip() != "done":
            lines.append(line.strip())
        assert line.strip() == "done", f"the workload failed: {lines}"
        return lines

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Callable[..., Workload]]:
    started: list[Workload] = []

    def start(mode: str, comm: str, *args: str) -> Workload:
        w = Workload(tmp_path, mode, comm, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


# -- a pane ---------------------------------------------------------------------------------------------------------


class Pane:
    """``proctap top`` in a detached tmux session of its own server (its own socket): keys in, screen out.  The
    pane's shell reports proctap's exit status and whether the terminal's modes are as before, then waits."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.socket = str(tmp / "tmux.sock")
        self.status_file = tmp / "top.status"
        command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "proctap", "top", *args))
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        script = (
            f"a=$(stty -g); {'env ' + exports + ' ' if exports else ''}{command}; s=$?; b=$(stty -g); "
            f'if [ "$a" = "$b" ]; then r=restored; else r=changed; fi; echo "status=$s $r" > {self.status_file}; '
            "echo proctap-ended; exec sleep 600"
        )
        env_args = ["-e", f"PYTHONPATH={SRC}"]
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), *env_args, "sh", "-c", script)
        self.tmux("set-option", "-g", "status", "off")

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=WAIT)
        assert result.returncode == 0, f"tmux {args}: {result.stderr}"
        return result.stdout

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p").splitlines()

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def wait_screen(self, done: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + WAIT
        while True:
            lines = self.screen()
            if done(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n" + "\n".join(lines))
            time.sleep(0.1)

    def proctap_pid(self) -> int:
        shell = int(self.tmux("display-message", "-p", "#{pane_pid}").strip())
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def ended(self) -> str:
        """The pane shell's report once proctap has ended: ``status=N restored|changed``."""
        deadline = time.monotonic() + WAIT
        while not self.status_file.exists() or not self.status_file.read_text().strip():
            assert time.monotonic() < deadline, "proctap top did not end; the screen:\n" + "\n".join(self.screen())
            time.sleep(0.05)
        return self.status_file.read_text().strip()

    def alternate_screen(self) -> bool:
        return self.tmux("display-message", "-p", "#{alternate_on}").strip() == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=WAIT)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Callable[..., Pane]]:
    started: list[Pane] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Pane:
        p = Pane(tmp_path, *args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def table(lines: list[str], first_column: str) -> list[list[str]]:
    """The rows of the table on the screen (each split on runs of 2+ spaces), after its title line."""
    for i, line in enumerate(lines):
        if line.split() and line.split()[0] == first_column:
            rows = []
            for row in lines[i + 1 :]:
                if not row.strip() or row.startswith("p parent"):
                    break
                rows.append(re.split(r"\s{2,}", row.strip()))
            return [r for r in rows if len(r) >= 3]  # not the "(nothing yet)" line
    return []


def _first_row(lines: list[str], first_column: str) -> str:
    """The first row of the table, as one line."""
    return lines[next(i for i, line in enumerate(lines) if line.split()[:1] == [first_column]) + 1]


def started(lines: list[str]) -> bool:
    return bool(lines) and lines[0].startswith("proctap top")


# -- cgroups the tests make -----------------------------------------------------------------------------------------


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every mount."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, rest = right.partition(" ")
        out.append((left.split()[4], fstype, rest.split(" ")[-1]))
    return out


def _remove_cgroup(path: Path) -> None:
    """rmdir, once the kernel has let go of the tasks that died in it (it does so shortly after their exit); a
    task still in it (a test that failed early) is moved to the parent cgroup first."""
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            (path.parent / "cgroup.procs").write_text(pid)
    deadline = time.monotonic() + WAIT
    while path.exists():
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def v2_cgroup(name: str) -> Iterator[Path]:
    root = cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup2 mount here")
    path = Path(root) / name
    path.mkdir()
    try:
        yield path
    finally:
        _remove_cgroup(path)


@contextlib.contextmanager
def pids_cgroup(name: str, limit: int) -> Iterator[Path]:
    """A cgroup with ``pids.max = limit``: in the v2 hierarchy where it has the pids controller, else in the v1 pids
    hierarchy (this machine's hybrid layout binds pids to v1).  Removed afterwards, as is anything enabled for it."""
    root = cgroup2_mount()
    undo: Path | None = None
    if root is not None and "pids" in (Path(root) / "cgroup.controllers").read_text().split():
        base = Path(root)
        control = base / "cgroup.subtree_control"
        if "pids" not in control.read_text().split():
            control.write_text("+pids")
            undo = control
    else:
        v1 = [mnt for mnt, fstype, opts in _mounts() if fstype == "cgroup" and "pids" in opts.split(",")]
        if not v1:
            pytest.skip("no pids controller here (neither cgroup v2 nor v1)")
        base = Path(v1[0])
    path = base / name
    path.mkdir()
    try:
        (path / "pids.max").write_text(str(limit))
        yield path
    finally:
        _remove_cgroup(path)
        if undo is not None:
            with contextlib.suppress(OSError):
                undo.write_text("-pids")


# -- the live view ----------------------------------------------------------------------------------------------------


def _spawn_times(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def _truth_matches(shown: float, times: list[float], captured: float, lag: float) -> tuple[bool, list[float]]:
    """Whether ``shown`` (spawns per second over the second before the last redraw) is within 20% of what was
    spawned over a second ending between ``captured - lag`` (the redraw interval, the drain latency) and
    ``captured``."""
    truths = []
    end = captured
    while end >= captured - lag:
        truths.append(sum(1 for t in times if end - 1.0 < t <= end) / 1.0)
        end -= 0.02
    return any(abs(shown - truth) <= 0.2 * truth for truth in truths), [min(truths), max(truths)]


@needs_tmux
def test_live_view_shows_the_busiest_parent(pane: Callable[..., Pane], workload: Callable[..., Workload],
                                            tmp_path: Path) -> None:  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    with v2_cgroup(f"proctap-top-test-{os.getpid()}") as cgroup:
        w = workload("spawners", "top-spawners", str(cgroup / "cgroup.procs"), str(logs))
        p = pane("--backend", BACKEND, "--pid", str(w.pid), "--interval", "0.2")
        p.wait_screen(started, "the first frame")
        assert p.alternate_screen()
        w.go()
        try:
            # the busy parent first, with a rate (the 1 s window fills within a second of the start)
            def busy_first(lines: list[str]) -> bool:
                rows = table(lines, "PID")
                return bool(rows) and rows[0][1] == "busy-spawner" and float(rows[0][2]) > 0

            p.wait_screen(busy_first, "busy-spawner on the first row")
            time.sleep(1.5)  # let the 1-second window hold only the steady state (not a measurement)
            lines = p.screen()
            captured = time.monotonic()
            rows = table(lines, "PID")
            assert rows[0][1] == "busy-spawner", lines
            assert any(r[1] == "quiet-spawner" for r in rows[1:]), lines
            shown = float(rows[0][2])
            header = [line for line in lines if line.startswith("total")]
            assert header and header[0].split()[-1] == "0", lines  # nothing lost

            # by program: the children run true; by cgroup: the workload's cgroup
            p.keys("e")
            lines = p.wait_screen(lambda s: bool(table(s, "PROGRAM")), "the program view")
            programs = table(lines, "PROGRAM")
            assert programs[0][0] == "true", lines
            assert "busy-spawner" in _first_row(lines, "PROGRAM")
            p.keys("c")
            lines = p.wait_screen(lambda s: bool(table(s, "CGROUP")), "the cgroup view")
            assert table(lines, "CGROUP")[0][0] == f"/{cgroup.name}", lines

            # the filter prompt, then the help, then back
            p.keys("p", "/", "quiet", "Enter")
            lines = p.wait_screen(lambda s: "filter 'quiet'" in s[0], "the filter in the status line")
            lines = p.wait_screen(lambda s: bool(table(s, "PID")), "the filtered parent view")
            assert [r[1] for r in table(lines, "PID")] == ["quiet-spawner"], lines
            p.keys("Escape", "?")
            p.wait_screen(lambda s: any(line.startswith("Views") for line in s), "the help")
            p.keys("x")
            p.wait_screen(lambda s: bool(table(s, "PID")), "the table after the help")

            # resizing, down to a terminal too small for anything but the lost count, then back
            for width, height in ((60, 12), (40, 6), (12, 2), (WIDTH, HEIGHT)):
                p.tmux("resize-window", "-x", str(width), "-y", str(height))
                lines = p.wait_screen(lambda s, w=width: bool(s) and "lost" in "\n".join(s), f"a {width}x? frame")
                assert all(len(line) <= width for line in lines)
            p.wait_screen(lambda s: bool(table(s, "PID")), "the table at the full size again")

            p.keys("q")
            assert p.ended() == "status=0 restored"
            assert not p.alternate_screen()
        finally:
            (logs / "stop").touch()
            w.close()
    times = _spawn_times(logs / "busy-spawner")
    ok, truths = _truth_matches(shown, times, captured, lag=0.2 + 0.2)
    assert ok, f"busy-spawner's rate on the screen {shown}/s, what it spawned: {truths[0]:.0f}-{truths[1]:.0f}/s"


@needs_tmux
def test_failures_view_shows_failed_forks_and_exit_codes(pane: Callable[..., Pane], workload: Callable[..., Workload]
                                                         ) -> None:  # fmt: skip
    if Feature.FORK_FAILED not in backend_class(BACKEND).features:
        pytest.skip(f"{BACKEND} does not report failed forks")
    with pids_cgroup(f"proctap-top-test-{os.getpid()}", 3) as cgroup:
        w = workload("failing", "forker", str(cgroup / "cgroup.procs"))
        try:
            _check_failures(pane, w)
        finally:
            w.close()


def _check_failures(pane: Callable[..., Pane], w: Workload) -> None:
    p = pane("--backend", BACKEND, "--pid", str(w.pid), "--view", "failures", "--interval", "0.2")
    p.wait_screen(started, "the first frame")
    w.go()
    assert w.wait_done() == ["failed 5"]

    def both(lines: list[str]) -> bool:
        rows = table(lines, "FAILURE")
        return any(r[0] == "fork EAGAIN" for r in rows) and any(r[0] == "exit 3" for r in rows)

    lines = p.wait_screen(both, "the failed forks and the exits with code 3")
    rows = {r[0]: r for r in table(lines, "FAILURE")}
    assert rows["fork EAGAIN"][1] == f"forker ({w.pid})" and rows["fork EAGAIN"][2] == "5", lines
    assert rows["exit 3"][1] == "sh" and rows["exit 3"][2] == "2", lines
    assert rows["SIGKILL"][1] == "sleep" and rows["SIGKILL"][2] == "2", lines
    p.keys("p")
    lines = p.wait_screen(lambda s: bool(table(s, "PID")), "the parent view")
    row = table(lines, "PID")[0]
    assert row[:2] == [str(w.pid), "forker"] and "EAGAIN 5" in _first_row(lines, "PID")
    p.keys("q")
    assert p.ended() == "status=0 restored"


@needs_tmux
def test_sigterm_restores_the_terminal_and_the_kernel(pane: Callable[..., Pane]) -> None:
    backend = "tracefs"
    if not backend_class(backend).probe():
        pytest.skip(f"{backend} is not available here")
    p = pane("--backend", backend, env={"NO_COLOR": "1"})
    p.wait_screen(started, "the first frame")
    pid = p.proctap_pid()
    mine = list(TRACEFS_INSTANCES.glob(f"proctap-{pid}-*"))
    assert mine, "the tracefs instance of proctap top"
    os.kill(pid, signal.SIGTERM)
    assert p.ended() == "status=143 restored"
    assert not p.alternate_screen()
    assert not any(path.exists() for path in mine)


@needs_tmux
def test_unknown_terminal_is_one_line(pane: Callable[..., Pane], tmp_path: Path) -> None:
    p = pane("--backend", "netlink", env={"TERM": "no-such-terminal"})
    status = p.ended()
    assert status == "status=2 restored"
    lines = [line for line in p.screen() if line.strip()]
    assert lines[0].startswith("proctap: error: cannot use this terminal (TERM=no-such-terminal"), lines


# -- --once ---------------------------------------------------------------------------------------------------------


def _once(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctap", "top", "--once", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    while line.startswith("proctap: warning:"):
        line = proc.stderr.readline()
    assert line.startswith("proctap: top"), line + proc.stderr.read()
    return proc


ONCE_BACKENDS = [name for name, works in probe_all().items() if works and name in ("bpf", "netlink", "tracefs")]


@pytest.mark.parametrize("backend", ONCE_BACKENDS)
def test_once_json_counts_a_known_workload_exactly(backend: str, workload: Callable[..., Workload]) -> None:
    w = workload("mixed", "top-workload")
    proc = _once("--json", "--backend", backend, "--pid", str(w.pid), "--duration", "600", "--limit", "0")
    try:
        w.go()
        w.wait_done()
        proc.send_signal(signal.SIGINT)  # the snapshot then takes what the kernel still holds: an exact end
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    doc = json.loads(out)
    features = backend_class(backend).features
    assert doc["backend"] == backend and doc["pid"] == w.pid
    assert doc["lost"] == 0 and doc["lost_unknown"] == 0
    # 10 true, 3 sh that exit 3, 4 forks that never exec, 2 sleeps killed
    assert doc["totals"] == {"forks": 19, "execs": 15, "exits": 19, "fork_failed": 0, "threads": 0, "lost": 0}
    assert ("fork_failed" in doc["unavailable"]) == (Feature.FORK_FAILED not in features)
    (parent,) = doc["parents"]
    assert parent["pid"] == w.pid and parent["comm"] == "top-workload" and not parent["ended"]
    assert parent["children"] == 19 and parent["exits"] == 19 and parent["bad_exits"] == 5
    assert parent["statuses"] == {"exit 3": 3, "SIGKILL": 2}
    assert parent["median_lifetime_ns"] > 0
    failures = {(f["kind"], f["what"], f.get("program")): f["count"] for f in doc["failures"]}
    if Feature.EXEC_FILENAME_KERNEL in features:  # else short-lived programs may be gone before /proc is read
        assert parent["programs"] == {"true": 10, "sh": 3, "sleep": 2}
        assert failures == {("exit", "exit 3", "sh"): 3, ("exit", "SIGKILL", "sleep"): 2}
        programs = {p["program"]: p for p in doc["programs"]}
        assert programs["true"]["starts"] == 10 and programs["true"]["bad_exits"] == 0
        assert programs["sh"]["statuses"] == {"exit 3": 3}
        assert programs["[top-workload]"]["starts"] == 4  # forked, never exec'd: counted under its comm
        assert programs["true"]["parents"] == {f"top-workload ({w.pid})": 10}
    else:
        assert sum(failures.values()) == 5
    assert sum(c["forks"] for c in doc["cgroups"]) == 19
    if backend == "bpf":
        assert all(c["cgroup_id"] is not None and c["cgroup"].startswith("/") for c in doc["cgroups"])
    else:
        assert [c["cgroup"] for c in doc["cgroups"]] == ["unknown"]


def test_once_table_in_a_pipe(workload: Callable[..., Workload]) -> None:
    """Not a terminal: --once is the default, and the table is whole (nothing cut to a width)."""
    w = workload("mixed", "top-workload")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctap", "top", "--backend", "netlink", "--pid", str(w.pid), "--view", "all",
         "--duration", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        start = proc.stderr.readline()
        assert start.startswith(f"proctap: top of pid {w.pid} and its descendants with backend netlink"), start
        w.go()
        w.wait_done()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lines = out.splitlines()
    assert lines[0].startswith("proctap top: ") and "with backend netlink" in lines[0]
    totals = next(line for line in lines if line.startswith("total")).split()
    assert totals[1:] == ["19", "15", "19", "-", "0", "0"]  # netlink sees no failed forks: "-", never a false 0
    for title in ("by parent:", "by program:", "by cgroup:", "failures:"):
        assert title in lines
    parent = lines[lines.index("by parent:") + 2].split()
    assert parent[:2] == [str(w.pid), "top-workload"] and parent[4] == "19"


def test_names_that_are_not_utf8(workload: Callable[..., Workload], tmp_path: Path) -> None:
    """A program named with bytes that are not UTF-8 and an ESC: valid JSON (U+FFFD), escaped in the table."""
    odd = tmp_path / os.fsdecode(b"odd\xff\x1bname")
    shutil.copy("/bin/true", odd)
    docs = []
    for extra in (["--json"], ["--view", "program"]):
        w = workload("odd", "top-workload", str(odd))  # argv keeps the bytes (surrogate escapes)
        proc = _once(*extra, "--backend", BACKEND, "--pid", str(w.pid), "--duration", "600")
        try:
            w.go()
            w.wait_done()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=WAIT)
        finally:
            proc.kill()
        assert proc.returncode == 130, err
        docs.append(out)
    programs = {p["program"]: p["starts"] for p in json.loads(docs[0])["programs"]}
    assert programs == {"odd\ufffd\x1bname": 1}
    assert "odd\\xff\\x1bname" in docs[1] and "\x1b" not in docs[1]


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--interval", "0.01"], "--interval: '0.01' must be 0.2 to 60 seconds"),
        (["--view", "bogus"], "--view: invalid choice: 'bogus'"),
        (["--limit", "-1"], "--limit: '-1' must be 0 or more"),
        (["--pid", "0"], "positive"),
    ],
)
def test_bad_options_are_one_line(args: list[str], mentions: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proctap", "top", "--once", *args], capture_output=True, text=True, env=ENV, timeout=WAIT
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("proctap: error:"), result.stderr
    assert mentions in result.stderr


# -- the parts without a terminal -------------------------------------------------------------------------------------


def test_rates_count_the_last_window() -> None:
    """Rates over 1 s and 10 s count what arrived in their buckets, over the time really covered."""
    from proctap.top.aggregate import BUCKET_NS, Clock

    start = 1000 * 1_000_000_000
    series = Series()
    for i in range(50):  # 5 per bucket over the first second
        series.add((start + i * 20_000_000) // BUCKET_NS)
    clock = Clock(start, start + 1_000_000_000)
    assert clock.rate(series, 1) == pytest.approx(50 / 1.0, rel=0.11)
    later = Clock(start, start + 5_000_000_000)
    assert later.rate(series, 1) == 0
    assert later.rate(series, 10) == pytest.approx(50 / 5.0)
    assert series.total == 50


def test_frames_fit_every_size_and_keep_the_lost_count() -> None:
    """compose() on an aggregator fed by a real watcher: every line fits, the lost count is on every frame."""
    agg = Aggregator(time.monotonic_ns())
    with proctap.watch(backend="netlink", pid=os.getpid()) as watcher:
        subprocess.run(["/bin/true"], check=True)
        subprocess.run(["/bin/sh", "-c", "exit 3"], check=False)
        deadline = time.monotonic() + WAIT
        while agg.header(time.monotonic_ns()).totals["exits"] < 2 and time.monotonic() < deadline:
            agg.feed(watcher.read(0.1), time.monotonic_ns())
    now = time.monotonic_ns()
    for view in View:
        state = State(view=view)
        for height, width in ((1, 1), (2, 12), (3, 20), (6, 40), (12, 64), (30, 120), (50, 200)):
            frame = compose(agg, state, now, height, width, backend="netlink")
            assert len(frame) <= height and all(len(text) <= width for text, _ in frame)
            assert "lost" in " ".join(text for text, _ in frame) or width < 6
    rows = agg.rows(View.PARENT, now, sort=Sort.TOTAL)
    assert [(r.pid, r.total, r.bad) for r in rows if isinstance(r, ParentRow)] == [(os.getpid(), 2, 1)]
    for width in (None, 30, 80):
        lines = table_lines(rows, View.PARENT, width)
        assert lines[0].split()[0] == "PID"
        assert width is None or all(len(line) <= width for line in lines)
    assert header_lines(agg.header(now), 30, compact=True)[0].endswith("lost 0")


def test_keys() -> None:
    state = State()
    assert state.key(ord("e")) and state.view is View.PROGRAM
    assert state.key(9) and state.view is View.CGROUP
    assert state.key(ord("t")) and state.sort is Sort.TOTAL
    assert state.key(ord("/")) and state.prompt == ""
    for ch in "sh":
        state.key(ord(ch))
    assert state.key(ord("q")) and not state.quit  # typed into the prompt
    state.key(127)
    state.key(10)
    assert state.match == "sh" and state.prompt is None
    assert state.key(27) and state.match is None
    assert state.key(ord(" ")) and state.paused
    assert state.key(ord("?")) and state.help
    assert state.key(ord("x")) and not state.help and not state.quit
    assert not state.key(ord("Z"))
    assert state.key(ord("q")) and state.quit


def test_cgroup_paths() -> None:
    text = "41 31 0:38 / /sys/fs/cgroup/un\\040ified rw,relatime - cgroup2 cgroup2 rw\n"
    assert parse_mountinfo_cgroup2("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" + text) == (
        "/sys/fs/cgroup/un ified"
    )
    root = cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup2 mount here")
    paths = CgroupPaths(root)
    assert paths(os.stat(root).st_ino) == "/"
    with v2_cgroup(f"proctap-top-paths-{os.getpid()}") as cgroup:
        assert paths(os.stat(cgroup).st_ino) == f"/{cgroup.name}"
    assert paths(2**62) is None
