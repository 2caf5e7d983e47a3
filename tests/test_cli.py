"""The command line against the real kernel: `proctap watch` runs as a subprocess while the test spawns real
processes, and the assertions are on what it printed about them.

Every watch is started, then waited for until it says on stderr that it is subscribed, before the workload runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import proctap
from eventlog import Collector
from proctap.backends import AUTO_ORDER, BACKENDS, probe_all
from proctap.events import exact_bytes

SRC = Path(proctap.__file__).resolve().parents[1]
DOCS = SRC.parent / "docs" / "cli.md"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}
ENV.pop("PROCTAP_DEBUG", None)
BACKEND = "netlink"  # the CLI is tested on one dependable backend; the backends have their own conformance tests
WAIT = 30.0  # generous bound for anything to show up; never a timing assertion
SUMMARY = re.compile(r"^proctap: (\d+\.\d+)s with backend (\w+): (\d+) events? shown(?: \(([^)]*)\))?; (.*)$")


def proctap_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "proctap", *args]


def run_proctap(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(proctap_cmd(*args), capture_output=True, text=True, env=ENV, timeout=timeout)


class LineReader:
    """Lines from a pipe as they come, with a deadline (no blocking read past it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def readline(self, deadline: float) -> str | None:
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                if self.buf:
                    self.buf += b"\n"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "surrogateescape")

    def rest(self, deadline: float) -> list[str]:
        lines = []
        while (line := self.readline(deadline)) is not None:
            lines.append(line)
        return lines


class Watch:
    """A running ``proctap watch``, ready (subscribed) when the constructor returns."""

    def __init__(self, *args: str, json_mode: bool = True, backend: str | None = BACKEND) -> None:
        argv = ["watch", *(["--json"] if json_mode else []), *(["--backend", backend] if backend else []), *args]
        self.json_mode = json_mode
        self.proc = subprocess.Popen(proctap_cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = LineReader(self.proc.stdout.fileno())
        self.err = LineReader(self.proc.stderr.fileno())
        self.output: Collector[str] = Collector(self._read_lines)  # stdout lines read so far
        deadline = time.monotonic() + WAIT
        self.warnings: list[str] = []
        while (line := self.err.readline(deadline)) is not None and line.startswith("proctap: warning:"):
            self.warnings.append(line)
        self.start_line = line
        if self.start_line is None or not self.start_line.startswith("proctap: watching"):
            self.proc.kill()
            rest = self.err.rest(time.monotonic() + 5)
            raise AssertionError(f"proctap watch did not start: {self.start_line!r} {rest!r}")

    @property
    def lines(self) -> list[str]:
        return self.output.items

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def _read_lines(self, wait: float) -> list[str]:
        """The collector's source: the lines that arrive within ``wait``; fails at once when proctap has exited."""
        if self.out.eof:
            raise AssertionError(f"proctap watch ended its output; the last lines: {self.lines[-20:]}")
        lines = []
        line = self.out.readline(time.monotonic() + wait)
        while line is not None:
            lines.append(line)
            line = self.out.readline(time.monotonic())  # the rest of what one read brought
        return lines

    def wait_for(self, predicate: Callable[[Any], bool], what: str) -> Any:
        """Read output until a line (a dict in JSON mode, else the text) satisfies predicate; return it."""
        found: list[Any] = []
        checked = 0

        def done(lines: list[str]) -> bool:
            nonlocal checked
            for line in lines[checked:]:
                item = json.loads(line) if self.json_mode else line
                if predicate(item):
                    found.append(item)
                    return True
            checked = len(lines)
            return False

        self.output.until(done, f"{what} in proctap's output")
        return found[0]

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Signal it, read the rest; returns (exit status, stderr after the start line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + WAIT
        self.lines.extend(self.out.rest(deadline))
        err = "\n".join(self.err.rest(deadline))
        return self.proc.wait(WAIT), err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def watch() -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(*args: str, **kw: Any) -> Watch:
        w = Watch(*args, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def my_subtree() -> list[str]:
    """Filter to the processes this test spawns (other tests may run concurrently on the machine)."""
    return ["--pid", str(os.getpid())]


def assert_clean_summary(err: str) -> re.Match[str]:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.strip().splitlines()
    assert lines, "no summary on stderr"
    match = SUMMARY.match(lines[-1])
    assert match is not None, lines[-1]
    return match


# -- the documented JSON schema --------------------------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) is float,
    "string": lambda v: type(v) is str,
    "bool": lambda v: type(v) is bool,
    "object": lambda v: type(v) is dict,
    "list of strings": lambda v: type(v) is list and all(type(x) is str for x in v),
}


def documented_schema() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """docs/cli.md's tables: (common fields, {kind: fields}) as {field: type text}."""
    common: dict[str, str] = {}
    kinds: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    in_json = False
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            in_json = line.startswith("## NDJSON")
            current = None
        elif in_json and line.startswith("### "):
            title = line[4:].strip()
            current = common if title == "Fields of every event" else kinds.setdefault(title, {})
        elif current is not None and (m := re.match(r"\| `(\w+)` \| ([^|]+) \|", line)):
            current[m.group(1)] = m.group(2).strip()
    return common, kinds


def check_type(value: Any, spec: str) -> bool:
    base, nullable = (spec[: -len(" or null")], True) if spec.endswith(" or null") else (spec, False)
    return (nullable and value is None) or _TYPES[base](value)


def assert_schema(obj: dict[str, Any]) -> None:
    common, kinds = documented_schema()
    kind = obj["event"]
    assert kind in kinds, f"undocumented event kind {kind}"
    expected = {**common, **kinds[kind]}
    keys = set(obj) - {"raw_b64"}  # present only when a text field was not UTF-8 (documented in prose)
    assert keys == set(expected), f"{kind}: keys {sorted(obj)} != documented {sorted(expected)}"
    for name, spec in expected.items():
        assert check_type(obj[name], spec), f"{kind}.{name} = {obj[name]!r} is not {spec}"


def test_docs_schema_matches_every_event_class() -> None:
    """The documented NDJSON schema is exactly what Event.to_dict() produces, kind by kind."""
    from dataclasses import fields

    from proctap.events import EVENT_CLASSES

    common, kinds = documented_schema()
    assert set(kinds) == {k.value for k in EVENT_CLASSES}
    for kind, cls in EVENT_CLASSES.items():
        derived = {"key"} | ({"signal_name"} if kind.value == "exit" else set())
        derived |= {"errno_name"} if kind.value in ("fork_failed", "exec_failed") else set()
        names = {"event"} | {f.name for f in fields(cls) if f.name not in ("process", "where")} | derived
        assert names == set(common) | set(kinds[kind.value]), kind


# -- watch --json on real processes ----------------------------------------------------------------------------


def test_json_events_of_real_processes(watch: Callable[..., Watch]) -> None:
    w = watch(*my_subtree())
    me = os.getpid()

    three = subprocess.Popen(["sh", "-c", "exit 3"])
    three.wait()
    ex3 = w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == three.pid, "exit of sh -c 'exit 3'")
    assert (ex3["status"], ex3["exit_code"], ex3["signal"], ex3["signal_name"]) == (0x300, 3, None, None)
    assert ex3["core_dumped"] is False and ex3["is_thread"] is False
    fork = next(e for e in w.events() if e["event"] == "fork" and e["pid"] == three.pid)
    assert fork["parent_pid"] == me and fork["is_thread"] is False
    assert ex3["lifetime_ns"] is None or ex3["lifetime_ns"] > 0

    sleeper = subprocess.Popen(["sleep", "100"])
    w.wait_for(lambda e: e["event"] == "exec" and e["pid"] == sleeper.pid, "exec of sleep")
    sleeper.kill()
    sleeper.wait()
    killed = w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == sleeper.pid, "exit of the killed sleep")
    assert (killed["status"], killed["signal"], killed["signal_name"], killed["exit_code"]) == (9, 9, "SIGKILL", None)

    odd = [b"/bin/sh", b"-c", b"read x", b"odd name", b"", b"a\nb", b"\xff\xfe"]
    reader = subprocess.Popen(odd, stdin=subprocess.PIPE)
    execd = w.wait_for(lambda e: e["event"] == "exec" and e["pid"] == reader.pid, "exec with odd argv")
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait()
    assert exact_bytes(execd, "argv") == odd  # the exact bytes, from raw_b64 (docs/cli.md)
    assert execd["argv"][-1] == "\ufffd\ufffd" and set(execd["raw_b64"]) == {"argv"}
    assert execd["filename"] in ("/bin/sh", os.path.realpath("/bin/sh"))
    w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == reader.pid, "exit of the odd-argv process")

    status, err = w.stop()
    assert status == 130  # Ctrl-C
    for obj in w.events():
        assert_schema(obj)
    pids = {e["pid"] for e in w.events() if e["event"] != "lost"}
    assert {three.pid, sleeper.pid, reader.pid} <= pids
    summary = assert_clean_summary(err)
    assert int(summary.group(3)) == len(w.lines), (err, w.lines)


def test_table_output(watch: Callable[..., Watch]) -> None:
    older = subprocess.Popen(["sleep", "100"])  # started before proctap: its exit still shows ppid and command
    w = watch(*my_subtree(), json_mode=False)
    header = w.wait_for(lambda line: line.startswith("TIME"), "table header")
    assert header.split() == ["TIME", "EVENT", "PID", "PPID", "LIFETIME", "INFO", "COMMAND"]

    # The shell waits for input so that backends reading argv from /proc find it alive.
    three = subprocess.Popen(["sh", "-c", "read x; exit 3"], stdin=subprocess.PIPE)
    w.wait_for(lambda line: line.split()[1:3] == ["exec", str(three.pid)], "exec line of sh")
    three.communicate(b"go\n")
    exit_line = w.wait_for(lambda line: line.split()[1:3] == ["exit", str(three.pid)], "exit line of sh")
    sleeper = subprocess.Popen(["sleep", "100"])
    w.wait_for(lambda line: line.split()[1:3] == ["exec", str(sleeper.pid)], "exec line of sleep")
    sleeper.kill()
    sleeper.wait()
    kill_line = w.wait_for(lambda line: line.split()[1:3] == ["exit", str(sleeper.pid)], "exit line of sleep")
    older.terminate()
    older.wait()
    older_line = w.wait_for(lambda line: line.split()[1:3] == ["exit", str(older.pid)], "exit line of older sleep")
    status, err = w.stop(signal.SIGTERM)
    assert status == 143
    assert_clean_summary(err)

    me = str(os.getpid())
    fields = exit_line.split()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", fields[0])
    assert fields[3] == me  # PPID from the process table
    assert re.fullmatch(r"[\d.]+(ns|us|ms|s)", fields[4]), exit_line
    assert exit_line.endswith("exit 3           sh -c 'read x; exit 3'")
    assert kill_line.split()[3] == me and kill_line.endswith("SIGKILL          sleep 100")
    assert older_line.split()[3] == me and older_line.endswith("SIGTERM          sleep 100")
    fork_line = next(line for line in w.lines if line.split()[1:3] == ["fork", str(three.pid)])
    assert fork_line.split()[3] == me
    exec_line = next(line for line in w.lines if line.split()[1:3] == ["exec", str(three.pid)])
    assert exec_line.endswith("sh -c 'read x; exit 3'")
    # Aligned: the command column starts at the header's COMMAND offset.
    offset = header.index("COMMAND")
    for line in (exit_line, kill_line, exec_line):
        assert line[offset - 1] == " " and line[offset] != " ", line


# -- filters ---------------------------------------------------------------------------------------------------


def test_pid_limits_to_the_subtree(watch: Callable[..., Watch]) -> None:
    # The target already has a child before proctap starts: it counts as a descendant too.
    target = subprocess.Popen(
        ["sh", "-c", "sleep 100 & echo $!; read x; sh -c 'exit 5'; read y"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert target.stdin is not None and target.stdout is not None
    old_child = int(target.stdout.readline())
    try:
        w = watch("--pid", str(target.pid), "--events", "all")
        outsider = subprocess.Popen(["sh", "-c", "exit 6"])
        outsider.wait()
        os.kill(old_child, signal.SIGKILL)
        target.stdin.write("go\n")
        target.stdin.flush()
        grandchild_exit = w.wait_for(lambda e: e["event"] == "exit" and e.get("exit_code") == 5, "exit 5 in subtree")
        w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == old_child, "exit of the pre-existing child")
        target.stdin.write("go\n")
        target.stdin.flush()
        target.wait()
        w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == target.pid, "exit of the target")
        status, err = w.stop()
    finally:
        target.kill()
        target.wait()
    assert status == 130
    assert_clean_summary(err)
    pids = {e["pid"] for e in w.events() if e["event"] != "lost"}
    assert outsider.pid not in pids
    assert pids <= {target.pid, old_child, grandchild_exit["pid"]}, pids


def test_comm_filter(watch: Callable[..., Watch], tmp_path: Path) -> None:
    named = tmp_path / "ptcommtest"  # exec names the task after the file run: comm "ptcommtest"
    named.symlink_to(os.path.realpath("/bin/sh"))
    w = watch("--comm", "ptcommtest")
    # Both wait for input, so backends that read comm/argv from /proc find them alive.
    mine = subprocess.Popen([str(named), "-c", "read x"], stdin=subprocess.PIPE)
    other = subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE)
    w.wait_for(lambda e: e["event"] == "exec" and e["pid"] == mine.pid, "exec of ptcommtest")
    other.communicate(b"\n")
    mine.communicate(b"\n")
    w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == mine.pid, "exit of ptcommtest")
    status, _ = w.stop()
    assert status == 130
    pids = {e["pid"] for e in w.events() if e["event"] != "lost"}
    assert mine.pid in pids and other.pid not in pids


def test_events_filter(watch: Callable[..., Watch]) -> None:
    w = watch(*my_subtree(), "--events", "exit")
    child = subprocess.Popen(["sh", "-c", "exit 4"])
    child.wait()
    w.wait_for(lambda e: e["pid"] == child.pid, "exit of sh")
    w.stop()
    assert {e["event"] for e in w.events()} <= {"exit", "lost"}


@pytest.mark.parametrize("threads", [True, False])
def test_threads_flag(watch: Callable[..., Watch], threads: bool) -> None:
    w = watch(*my_subtree(), "--threads" if threads else "--no-threads")
    code = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()"
    child = subprocess.Popen([sys.executable, "-c", code])
    child.wait()
    w.wait_for(lambda e: e["event"] == "exit" and e["pid"] == child.pid and not e["is_thread"], "process exit")
    w.stop()
    mine = [e for e in w.events() if e["pid"] == child.pid and e["event"] in ("fork", "exit")]
    thread_events = [e for e in mine if e["is_thread"]]
    if threads:
        assert {e["event"] for e in thread_events} == {"fork", "exit"}
        assert all(e["tid"] != child.pid for e in thread_events)
    else:
        assert thread_events == []


def test_threads_in_the_table(watch: Callable[..., Watch]) -> None:
    w = watch(*my_subtree(), "--threads", json_mode=False)
    code = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()"
    child = subprocess.Popen([sys.executable, "-c", code])
    child.wait()
    clone = w.wait_for(lambda line: line.split()[1:3] == ["clone", str(child.pid)], "clone line")
    assert re.search(r" thread \d+ ", clone)
    w.stop()


# -- losses ----------------------------------------------------------------------------------------------------

FORK_STORM = "import os\nwhile True:\n    if os.fork() == 0:\n        os._exit(0)\n    os.wait()\n"


@contextlib.contextmanager
def fork_storm() -> Iterator[None]:
    """Forks as fast as it can until the block ends: with a tiny kernel buffer and proctap sleeping 0.5 s between
    drains, the kernel has to drop events."""
    storm = subprocess.Popen([sys.executable, "-c", FORK_STORM])
    try:
        yield
    finally:
        storm.kill()
        storm.wait()


def test_losses_are_shown_and_counted(watch: Callable[..., Watch]) -> None:
    w = watch("--buffer", "4K", "--latency", "0.5", json_mode=False)
    with fork_storm():
        lost_line = w.wait_for(lambda line: " LOST " in line, "LOST line")
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} LOST (\d+ events|events \(count unknown)", lost_line), lost_line
    status, err = w.stop()
    assert status == 130
    summary = assert_clean_summary(err)
    assert re.match(r"LOST \d+ events|LOST \d+ overruns? of unknown size", summary.group(5)), summary.group(5)


def test_losses_in_json(watch: Callable[..., Watch]) -> None:
    w = watch("--buffer", "4K", "--latency", "0.5", "--events", "exit")
    with fork_storm():
        lost = w.wait_for(lambda e: e["event"] == "lost", "lost event")
    w.stop()
    assert_schema(lost)
    assert lost["count"] is None or lost["count"] > 0
    assert lost["pid"] == 0 and lost["reason"]


# -- ending: duration, signals, pipes --------------------------------------------------------------------------


def test_duration_ends_with_a_summary() -> None:
    proc = subprocess.Popen(
        proctap_cmd("watch", "--json", "--backend", BACKEND, "--duration", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("proctap: watching") and lines[0].endswith("for 1s")
    summary = assert_clean_summary(err)
    assert float(summary.group(1)) >= 1.0
    assert summary.group(2) == BACKEND
    events = [json.loads(line) for line in out.splitlines()]
    assert int(summary.group(3)) == len(events)
    counted: dict[str, int] = {}
    for e in events:
        counted[e["event"]] = counted.get(e["event"], 0) + 1
    reported = dict(part.rsplit(" ", 1) for part in summary.group(4).split(", ")) if summary.group(4) else {}
    assert {k: int(v) for k, v in reported.items()} == counted


def test_head_closes_table_pipe_quietly() -> None:
    # No event needs to flow: proctap notices the closed pipe by polling its stdout.
    script = '"$0" -m proctap watch -q --backend "$1" | head -1; exit "${PIPESTATUS[0]}"'
    proc = subprocess.run(
        ["bash", "-c", script, sys.executable, BACKEND], capture_output=True, text=True, env=ENV, timeout=WAIT
    )
    assert proc.stdout.split() == ["TIME", "EVENT", "PID", "PPID", "LIFETIME", "INFO", "COMMAND"]
    assert proc.stderr == ""
    assert proc.returncode == 141


def test_head_closes_json_pipe_quietly() -> None:
    script = '"$0" -m proctap watch --json --backend "$1" | head -3; exit "${PIPESTATUS[0]}"'
    proc = subprocess.Popen(
        ["bash", "-c", script, sys.executable, BACKEND],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    stop = threading.Event()

    def workload() -> None:  # events for head to read, until the pipeline is done
        while not stop.is_set():
            subprocess.run(["true"])
            time.sleep(0.02)

    spawner = threading.Thread(target=workload)
    spawner.start()
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        stop.set()
        spawner.join()
    assert len(out.splitlines()) == 3
    for line in out.splitlines():
        json.loads(line)
    assert proc.returncode == 141
    err_lines = err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("proctap: watching"), err  # no traceback, no summary


# -- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["watch", "--backend", "nope"], "unknown backend 'nope'"),
        (["watch", "--pid", "abc"], "'abc' is not a process id"),
        (["watch", "--pid", "0"], "--pid"),
        (["watch", "--events", "bogus"], "unknown event type 'bogus'"),
        (["watch", "--events", ","], "no event type given"),
        (["watch", "--duration", "-1"], "--duration"),
        (["watch", "--duration", "soon"], "not a number of seconds"),
        (["watch", "--latency", "-0.5"], "--latency"),
        (["watch", "--latency", "1e12"], "at most 10 seconds"),
        (["watch", "--duration", "1e12"], "at most 1e+07 seconds"),
        (["watch", "--buffer", "99999G"], "less than 2G"),
        (["watch", "--buffer", "lots"], "not a size"),
        (["watch", "--bogus-flag"], "unrecognized arguments: --bogus-flag (see 'proctap watch --help')"),
        (["run", "--bogus-flag", "--", "true"], "(see 'proctap run --help')"),
        (["watch", "--events", "all,bogus"], "unknown event type 'bogus'"),
        (["watch", "--events", "bogus,all"], "unknown event type 'bogus'"),
        (["watch", "--comm", ""], "give a program name"),
        (["watch", "--comm", " "], "give a program name"),
        (["watch", "--duration", "0"], "more than 0"),
        (["watch", "--argv-limit", "1M"], "more than 131072 bytes"),
        (["watch", "--argv-limit", "-1"], "--argv-limit"),
        # backend options: each backend says what it accepts
        (["watch", "-b", "bpf", "-o", "foo=bar"], "backend bpf has no option 'foo': it accepts uid=N, cgroup_id=N"),
        (["watch", "-b", "netlink", "-o", "interval=50ms"], "backend netlink takes no options"),
        (["watch", "-b", "tracefs", "-o", "count_threads=maybe"], "give 1 or 0"),
        (["watch", "-b", "bpf", "-o", "uid=-1"], "uid='-1': give a whole number from 0"),
        (["watch", "-b", "bpf", "-o", "wakeup_bytes=-5"], "wakeup_bytes='-5': give a whole number 0 or more"),
        (["watch", "-b", "proc", "-o", "interval=50ms", "-o", "interval=abc"], "interval given twice"),
        (["watch", "-b", "proc", "-o", "interval=abc"], "interval='abc': give 1ms to 10s"),
        (["watch", "-o", "novalue"], "is not NAME=VALUE"),
        (["run", "-b", "netlink", "-o", "interval=5ms", "--", "true"], "backend netlink takes no options"),
        (["frobnicate"], "invalid choice"),
        (["watch", "--pid", "999999999"], "no process with pid 999999999"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: list[str], mentions: str) -> None:
    proc = run_proctap(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("proctap: error: ") and mentions in lines[0]


def test_output_write_error_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            proctap_cmd("watch", "-q", "--backend", BACKEND, "--duration", "5"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            timeout=WAIT,
        )
    assert proc.returncode == 2
    assert proc.stderr == "proctap: error: cannot write the output: No space left on device\n"


def test_warns_about_kinds_the_backend_cannot_report() -> None:
    from proctap.backends import Feature, backend_class

    assert Feature.FORK_FAILED not in backend_class(BACKEND).features  # the premise of this test
    proc = run_proctap("watch", "--backend", BACKEND, "--events", "exec,fork_failed", "--duration", "0.2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"proctap: warning: backend {BACKEND} cannot report fork_failed (see 'proctap backends')"
    assert lines[1].startswith("proctap: watching fork_failed,exec,lost with backend")


def test_quiet_keeps_warnings() -> None:
    """docs/cli.md: -q leaves nothing on stderr but warnings and errors."""
    from proctap.backends import Feature, backend_class

    assert Feature.COMM not in backend_class("bpf").features  # the premise of this test
    proc = run_proctap("watch", "-q", "--backend", "bpf", "--events", "comm", "--duration", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "proctap: warning: backend bpf cannot report comm (see 'proctap backends')\n"


def test_a_backend_option_that_names_a_yes_no_value_counts() -> None:
    """``count_threads=yes`` was silently ignored (only ``1`` counted)."""
    with proctap.watch(backend="tracefs", options={"count_threads": "yes"}) as w:
        assert w.backend.option_value("count_threads") is True
    with proctap.watch(backend="tracefs", options=["count_threads=off"]) as w:
        assert w.backend.option_value("count_threads") is False


def test_summary_counts_read_in_the_right_number() -> None:
    from proctap.cli.watch import print_summary
    from proctap.watcher import WatchStats

    stats = WatchStats("netlink", lost=1, lost_unknown=1)
    with contextlib.redirect_stderr(io := __import__("io").StringIO()):
        print_summary(stats, {"exec": 1}, 1.0)
    assert io.getvalue() == (
        "proctap: 1.00s with backend netlink: 1 event shown (exec 1); LOST 1 event + 1 overrun of unknown size\n"
    )


def test_unavailable_backend_is_one_line() -> None:
    unavailable = [name for name, avail in probe_all().items() if not avail]
    if not unavailable:
        pytest.skip("every backend works on this machine: nothing unavailable to ask for")
    proc = run_proctap("watch", "--backend", unavailable[0])
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"proctap: error: backend '{unavailable[0]}'"), proc.stderr
    assert "proctap backends" in lines[0] or "work here" in lines[0]


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_without_capabilities_works_or_says_why(backend: str) -> None:
    """As root stripped of every capability: each backend either works or fails with one line, exit 2."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed"
    cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
    cmd += proctap_cmd("watch", "--json", "-q", "--backend", backend, "--duration", "0.5")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=WAIT)
    assert "Traceback" not in proc.stderr
    if proc.returncode != 0:
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("proctap: error: "), proc.stderr


def test_no_subcommand_prints_help() -> None:
    proc = run_proctap()
    assert proc.returncode == 2 and "watch" in proc.stderr and "backends" in proc.stderr


def test_version() -> None:
    proc = run_proctap("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"proctap {proctap.__version__}"


def test_a_subcommand_imports_only_its_own_module() -> None:
    """``proctap run`` does not import top's screen and aggregator (start-up time); ``--help`` lists every one."""
    code = (
        "import sys\nfrom proctap.cli.main import main\nstatus = main(['run', '-q', '--', 'true'])\n"
        "print(status, sorted(m for m in sys.modules if m.startswith('proctap.cli.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 1)[0] == "0"
    loaded = done.stdout.split(" ", 1)[1]
    assert "proctap.cli.run" in loaded and "proctap.cli.top" not in loaded and "proctap.cli.ps" not in loaded
    listed = run_proctap("--help").stdout
    assert all(f"    {name} " in listed for name in ("watch", "top", "run", "ps", "backends")), listed


# -- backends --------------------------------------------------------------------------------------------------


def test_backends_lists_each_with_the_auto_choice() -> None:
    probed = probe_all()
    auto = next((name for name in AUTO_ORDER if probed[name]), None)
    proc = run_proctap("backends")
    assert proc.returncode == (0 if auto else 1), proc.stderr
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in proc.stdout.splitlines()}
    for name in BACKENDS:
        line = rows[name]
        assert line.startswith("*") == (name == auto)
        state = line[1:].split()[1]
        assert state == ("yes" if probed[name] else "no")
        if not probed[name]:
            assert probed[name].reason in line

    doc = json.loads(run_proctap("backends", "--json").stdout)
    assert doc["auto"] == auto
    assert [b["name"] for b in doc["backends"]] == list(BACKENDS)
    for b in doc["backends"]:
        assert b["available"] == bool(probed[b["name"]])
        assert b["auto"] == (b["name"] == auto)
        assert (b["reason"] is None) == b["available"]
        assert isinstance(b["features"], list)


def test_auto_backend_watches() -> None:
    proc = subprocess.run(
        proctap_cmd("watch", "--json", "--duration", "0.5"), capture_output=True, text=True, env=ENV, timeout=WAIT
    )
    assert proc.returncode == 0, proc.stderr
    assert_clean_summary(proc.stderr)
    for line in proc.stdout.splitlines():
        assert_schema(json.loads(line))
