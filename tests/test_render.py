"""The renderers are pure formatting: tested on constructed events (the CLI tests cover real kernel events)."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import pytest

from proctap.cache import Process
from proctap.events import EVENT_CLASSES, Comm, Exec, Exit, Fork, ForkFailed, Lost, decode_wait_status, exact_bytes
from proctap.render import JsonRenderer, TableRenderer
from proctap.text import format_command, format_duration, format_exit, format_lost, sanitize

WALL = 1_700_000_000.25
COMMON = {"source": "netlink", "timestamp_ns": 5_000_000_000, "wall_time": WALL}


def exit_event(status: int, **kw: object) -> Exit:
    ws = decode_wait_status(status)
    return Exit(
        **COMMON,  # type: ignore[arg-type]
        pid=kw.pop("pid", 100),  # type: ignore[arg-type]
        tid=kw.pop("tid", 100),  # type: ignore[arg-type]
        status=status,
        exit_code=ws.exit_code,
        signal=ws.signal,
        core_dumped=ws.core_dumped,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (None, ""),
        (0, "0ns"),
        (999, "999ns"),
        (850_000, "850us"),
        (1_234_567, "1.2ms"),
        (123_456_789, "123.5ms"),
        (999_960_000, "1.00s"),
        (3_400_000_000, "3.40s"),
        (59_990_000_000, "59.99s"),
        (123_000_000_000, "2m03s"),
        (3_720_000_000_000, "1h02m"),
        (273_600_000_000_000, "3d04h"),
    ],
)
def test_format_duration(ns: int | None, text: str) -> None:
    assert format_duration(ns) == text


def test_format_exit() -> None:
    assert format_exit(exit_event(3 << 8)) == "exit 3"
    assert format_exit(exit_event(0)) == "exit 0"
    assert format_exit(exit_event(signal.SIGKILL)) == "SIGKILL"
    assert format_exit(exit_event(signal.SIGSEGV | 0x80)) == "SIGSEGV (core)"
    assert format_exit(Exit(**COMMON, pid=1, tid=1)) == "?"  # type: ignore[arg-type]


def test_format_lost() -> None:
    lost = Lost(**COMMON, pid=0, tid=0, count=123, reason="netlink socket overrun", cpu=1)  # type: ignore[arg-type]
    assert format_lost(lost) == "LOST 123 events (netlink socket overrun, cpu 1)"
    unknown = Lost(**COMMON, pid=0, tid=0, count=None, reason="netlink socket overrun")  # type: ignore[arg-type]
    assert format_lost(unknown) == "LOST events (count unknown, netlink socket overrun)"


def test_format_command_quotes_and_escapes() -> None:
    assert format_command(("sleep", "10")) == "sleep 10"
    assert format_command(("sh", "-c", "exit 3")) == "sh -c 'exit 3'"
    assert format_command(("x", "")) == "x ''"
    assert format_command(("a\nb",)) == "$'a\\nb'"
    assert format_command(("\x1b[31mred",)) == "$'\\x1b[31mred'"
    undecodable = os.fsdecode(b"\xff\xfe")
    assert format_command((undecodable,)) == "$'\\xff\\xfe'"
    assert format_command(None, "kworker/0:1") == "[kworker/0:1]"
    assert format_command(None, None) == ""
    assert format_command(("a",), truncated=True) == "a ..."


def test_sanitize_keeps_printable_text() -> None:
    assert sanitize("héllo wörld") == "héllo wörld"
    assert sanitize("tab\there") == "tab\\there"


def table_lines(pairs: list[tuple[object, Process | None]], **kw: object) -> list[str]:
    out = io.StringIO()
    renderer = TableRenderer(out, **kw)  # type: ignore[arg-type]
    renderer.header()
    renderer.render_batch(pairs)  # type: ignore[arg-type]
    return out.getvalue().splitlines()


def test_table_columns_and_alignment() -> None:
    info = Process(pid=200, parent_pid=100, argv=("sh", "-c", "exit 3"), comm="sh", forked_ns=4_000_000_000)
    fork = Fork(**COMMON, pid=200, tid=200, parent_pid=100, parent_tid=100)  # type: ignore[arg-type]
    execve = Exec(  # type: ignore[arg-type]
        **COMMON, pid=200, tid=200, filename="/usr/bin/sleep", argv=("sleep", "1")
    )
    ex = exit_event(3 << 8, pid=200, tid=200, lifetime_ns=1_234_567)
    lines = table_lines([(fork, info), (execve, info), (ex, info)])
    assert lines[0].split() == ["TIME", "EVENT", "PID", "PPID", "LIFETIME", "INFO", "COMMAND"]
    assert lines[1].split()[1:] == ["fork", "200", "100", "sh", "-c", "'exit", "3'"]
    assert lines[2].split()[1:] == ["exec", "200", "100", "/usr/bin/sleep", "sleep", "1"]
    assert lines[3].split()[1:] == ["exit", "200", "100", "1.2ms", "exit", "3", "sh", "-c", "'exit", "3'"]
    # The command column starts at the same offset on every line.
    starts = {line.index("sh -c") for line in (lines[1], lines[3])} | {lines[2].index("sleep 1")}
    assert len(starts) == 1
    assert lines[0].index("COMMAND") == starts.pop()
    assert lines[1].startswith(f"{time.strftime('%H:%M:%S', time.localtime(WALL))}.250 ")


def test_table_thread_events_and_lifetime_from_table() -> None:
    info = Process(pid=300, parent_pid=1, argv=("server",), forked_ns=4_000_000_000)
    clone = Fork(**COMMON, pid=300, tid=301, parent_pid=300, is_thread=True)  # type: ignore[arg-type]
    tex = exit_event(0, pid=300, tid=301, is_thread=True)
    pex = exit_event(signal.SIGSEGV | 0x80, pid=300, tid=300)  # no lifetime_ns: from the table's fork time
    lines = table_lines([(clone, info), (tex, info), (pex, info)])
    assert lines[1].split()[1:] == ["clone", "300", "1", "thread", "301", "server"]  # PPID: the process's parent
    assert lines[2].split()[1:] == ["exit", "300", "1", "thread", "301", "exit", "0", "server"]
    assert lines[3].split()[1:] == ["exit", "300", "1", "1.00s", "SIGSEGV", "(core)", "server"]


def test_table_other_kinds() -> None:
    failed = ForkFailed(**COMMON, pid=5, tid=5, errno=11, syscall="clone3")  # type: ignore[arg-type]
    comm = Comm(**COMMON, pid=6, tid=6, comm="newname")  # type: ignore[arg-type]
    lost = Lost(**COMMON, pid=0, tid=0, count=7, reason="netlink socket overrun", cpu=1)  # type: ignore[arg-type]
    lines = table_lines([(failed, None), (comm, None), (lost, None)])
    assert lines[1].split()[1:] == ["forkfail", "5", "EAGAIN", "(clone3)", "?"]  # nothing known of the process
    assert lines[2].split()[1:] == ["comm", "6", "comm", "newname", "[newname]"]
    assert lines[3].split(" ", 1)[1] == "LOST 7 events (netlink socket overrun, cpu 1)"
    colored = table_lines([(lost, None)], color=True)[1]
    assert colored.startswith("\x1b[1;31m") and "LOST 7 events" in colored


def test_table_width_clips() -> None:
    info = Process(pid=200, parent_pid=100, argv=("x" * 300,))
    fork = Fork(**COMMON, pid=200, tid=200, parent_pid=100)  # type: ignore[arg-type]
    lines = table_lines([(fork, info)], width=80)
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].endswith("…")


def test_render_batch_is_one_write() -> None:
    class CountingStream(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            self.writes += 1
            return super().write(s)

    events = [Fork(**COMMON, pid=1000 + i, tid=1000 + i, parent_pid=1) for i in range(500)]  # type: ignore[arg-type]
    for renderer_cls in (TableRenderer, JsonRenderer):
        stream = CountingStream()
        renderer_cls(stream).render_batch([(ev, None) for ev in events])
        assert stream.writes == 1
        assert len(stream.getvalue().splitlines()) == 500


def test_json_renderer_is_to_dict() -> None:
    weird = os.fsdecode(b"arg\xff")
    events = [
        Exec(**COMMON, pid=7, tid=7, filename="/bin/echo", argv=("echo", "", weird, "a\nb")),  # type: ignore[arg-type]
        exit_event(signal.SIGKILL, pid=7, tid=7),
        Lost(**COMMON, pid=0, tid=0, count=None, reason="overrun"),  # type: ignore[arg-type]
    ]
    out = io.StringIO()
    JsonRenderer(out).render_batch([(ev, None) for ev in events])
    text = out.getvalue()
    assert text.isascii() and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 3
    for ev, line in zip(events, lines, strict=True):
        assert json.loads(line) == json.loads(json.dumps(ev.to_dict()))
    exec_obj = json.loads(lines[0])
    assert exact_bytes(exec_obj, "argv")[2] == b"arg\xff"  # type: ignore[index]
    assert json.loads(lines[1])["signal_name"] == "SIGKILL"


def _full_events() -> list[object]:
    """One event of every kind with every field set (and one with the optional ones left None)."""
    from proctap.events import Accounting, Coredump, ExecFailed, Existing, Gid, Origin, Ptrace, Sid, Uid

    base = {**COMMON, "pid": 42, "tid": 43, "start_ns": 77}
    acct = Accounting(cpu_user_us=1, cpu_system_us=2, elapsed_us=3, peak_rss_kb=4, per_process=True)
    return [
        Fork(**base, parent_pid=1, parent_tid=2, is_thread=True, clone_flags=0x10000, comm="c", uid=0, gid=0,
             cgroup_id=9),
        Fork(**COMMON, pid=5, tid=5, parent_pid=1),
        ForkFailed(**base, errno=11, clone_flags=1, syscall="clone3", comm="c"),
        Exec(**base, filename="/bin/x", argv=("x", ""), argc=2, argv_truncated=True, comm="x", parent_pid=1, uid=1,
             gid=2, cgroup_id=3, filename_from=Origin.KERNEL, argv_from=Origin.PROC, comm_from=Origin.PROC),
        exit_event(signal.SIGSEGV | 0x80, pid=42, tid=42, lifetime_ns=5, parent_pid=1, comm="x", accounting=acct),
        Comm(**base, comm="n"),
        Uid(**base, ruid=1, euid=2),
        Gid(**base, rgid=1, egid=2),
        Sid(**base),
        Ptrace(**base, tracer_pid=1, tracer_tid=1, attached=True),
        Coredump(**base, parent_pid=1, parent_tid=1),
        ExecFailed(**base, errno=2, filename="/nope", argv=("nope", "-x"), argc=2, syscall="execve", comm="sh"),
        Existing(**base, reason="snapshot", parent_pid=1, comm="c", filename="/bin/c", argv=("c",), uid=0, gid=0),
        Lost(**COMMON, pid=0, tid=0, count=3, reason="r", cpu=1),
    ]  # fmt: skip


def test_fast_event_dict_equals_to_dict() -> None:
    from proctap.events import event_dict

    events = _full_events()
    assert {type(e) for e in events} == set(EVENT_CLASSES.values())
    for ev in events:
        fast = event_dict(ev)  # type: ignore[arg-type]
        slow = ev.to_dict()  # type: ignore[attr-defined]
        assert fast == slow and list(fast) == list(slow)
        assert json.dumps(fast) == json.dumps(slow)


def test_render_events_is_render_batch_with_each_events_process() -> None:
    """What the watch loop calls: each event with ``event.process`` (None here: no cache), one write."""
    events: list[object] = _full_events()
    for renderer_cls in (TableRenderer, JsonRenderer):
        pairs, direct = io.StringIO(), io.StringIO()
        renderer_cls(pairs).render_batch([(ev, ev.process) for ev in events])  # type: ignore[attr-defined]
        renderer_cls(direct).render_events(events)  # type: ignore[arg-type]
        assert direct.getvalue() == pairs.getvalue() and direct.getvalue().count("\n") == len(events)
        empty = io.StringIO()
        renderer_cls(empty).render_events([])
        assert empty.getvalue() == ""
