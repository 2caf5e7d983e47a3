"""How ``proctap run`` reports the end of each process, on every backend: the text report, the JSON document and
the HTML timeline say the same, and only what is known.

The proc backend finds changes by scanning /proc, so its Exit events come late (at the next scan) and, for a task
its parent reaped between two scans, without a status.  The command's own status is still exact (proctap reaps it),
"exit unseen" is only for an Exit that never came, and "outlived the command" only for a process seen alive after
the command was reaped.  The kernel backends must keep reporting what they always did.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from proctap.events import Exec, Exit, Fork
from proctap.run.report import format_report, run_document
from proctap.run.session import RunOptions, run
from proctap.run.timeline import render_html
from proctap.run.tree import Outcome, ProcessTree

SRC = str(Path(__file__).resolve().parent.parent / "src")
BACKENDS = ["proc", "bpf", "netlink", "tracefs"]
KERNEL_BACKENDS = ["bpf", "netlink", "tracefs"]


def proctap_run(
    tmp_path: Path, backend: str, *command: str, extra: tuple[str, ...] = ()
) -> tuple[int, list[str], dict[str, Any]]:
    """``proctap run -b BACKEND --json FILE -- COMMAND``: (exit status, report lines, JSON document)."""
    out = tmp_path / "run.json"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [sys.executable, "-m", "proctap", "run", "-b", backend, "--json", str(out), *extra, "--", *command],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("proctap run: "), proc.stderr
    return proc.returncode, lines, json.loads(out.read_text())


def process_lines(lines: list[str]) -> dict[int, str]:
    """pid -> its line in the text report's tree."""
    out = {}
    for line in lines:
        match = re.search(r"\[(\d+)\] ", line)
        if match and not line.startswith("proctap run:"):
            out[int(match.group(1))] = line
    return out


def by_program(doc: dict[str, Any], program: str) -> list[dict[str, Any]]:
    return [p for p in doc["processes"] if (p["argv"] and os.path.basename(p["argv"][0]) == program)
            or (not p["argv"] and p["comm"] == program)]  # fmt: skip


def assert_consistent(doc: dict[str, Any], lines: list[str]) -> None:
    """What every run must satisfy, whatever the backend: the text and the JSON agree, and the flags hold."""
    procs = doc["processes"]
    root = procs[0]
    assert root["status"] == doc["root_status"]  # the command's status is exact: proctap reaped it
    assert root["outcome"] in ("ok", "failed", "signaled")
    rows = process_lines(lines)
    assert set(rows) == {p["pid"] for p in procs}
    root_end = doc["root_end_offset_ns"]
    assert root_end is not None and root["end_offset_ns"] == root_end
    for p in procs:
        row = rows[p["pid"]]
        assert ("(outlived the command)" in row) == p["outlived_root"], (row, p)
        if p["outcome"] == "unknown":
            assert p["status"] is None
            assert ("exit unseen" in row) == (not p["exit_seen"]), (row, p)
            assert ("exit ?" in row) == p["exit_seen"], (row, p)
        else:
            assert "exit unseen" not in row and "exit ?" not in row, (row, p)
        if p["outcome"] in ("ok", "failed", "signaled"):
            assert p["status"] is not None
        if p["outcome"] == "running":
            assert p["outlived_root"] and p["end_offset_ns"] is None
        elif p["id"] != 0:
            assert p["end_offset_ns"] is not None
            if not p["outlived_root"]:  # it ended before the command did
                assert p["end_offset_ns"] <= root_end, p
    counts = doc["counts"]
    assert counts["outlived_root"] == sum(p["outlived_root"] for p in procs)
    assert counts["exit_unseen"] == sum(p["outcome"] == "unknown" and not p["exit_seen"] for p in procs)
    assert counts["unknown"] == sum(p["outcome"] == "unknown" for p in procs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_plain_command_ends_with_its_status(tmp_path: Path, backend: str) -> None:
    code, lines, doc = proctap_run(tmp_path, backend, "sleep", "0.5")
    assert code == 0
    assert " -> exit 0 (exit status 0) " in lines[0], lines[0]
    assert "exit unseen" not in "\n".join(lines) and "exit ?" not in "\n".join(lines)
    assert_consistent(doc, lines)
    (root,) = doc["processes"]
    assert root["outcome"] == "ok" and root["status"] == 0 and root["exit_code"] == 0
    assert not root["outlived_root"]
    # The command lived 0.5 s: a scan saw it, the next one saw it gone; a kernel backend saw it exit (unless the
    # machine made it drop events, which the document then says).
    assert root["exit_seen"] or (backend != "proc" and doc["lost"])
    assert root["start_offset_ns"] is not None and root["start_offset_ns"] < root["end_offset_ns"]
    assert doc["counts"]["ok"] == 1 and doc["counts"]["unknown"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_child_that_ended_first_did_not_outlive_the_command(tmp_path: Path, backend: str) -> None:
    code, lines, doc = proctap_run(tmp_path, backend, "sh", "-c", "sleep 0.3; exit 2")
    assert code == 2
    assert " -> exit 2 (exit status 2) " in lines[0], lines[0]
    assert "outlived" not in "\n".join(lines)
    assert_consistent(doc, lines)
    root = doc["processes"][0]
    assert root["outcome"] == "failed" and root["exit_code"] == 2 and root["status"] == 2 << 8
    (sleep,) = by_program(doc, "sleep")  # it lived 0.3 s: every backend sees it
    assert sleep["parent"] == 0 and not sleep["outlived_root"]
    assert sleep["exit_seen"] or (backend != "proc" and doc["lost"])
    if backend in KERNEL_BACKENDS and sleep["exit_seen"]:
        assert sleep["outcome"] == "ok" and sleep["status"] == 0
    else:  # the shell reaped it between two scans: gone, its status with it (unless a scan caught the zombie)
        assert sleep["outcome"] in ("ok", "unknown")
    assert doc["counts"]["outlived_root"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_command_killed_by_a_signal(tmp_path: Path, backend: str) -> None:
    code, lines, doc = proctap_run(tmp_path, backend, "sh", "-c", "sleep 0.3; kill -TERM $$")
    assert code == 128 + signal.SIGTERM
    assert " -> SIGTERM (exit status 143) " in lines[0], lines[0]
    assert_consistent(doc, lines)
    root = doc["processes"][0]
    assert root["outcome"] == "signaled" and root["signal"] == signal.SIGTERM and root["signal_name"] == "SIGTERM"
    assert root["status"] == signal.SIGTERM and root["exit_code"] is None
    assert "SIGTERM" in process_lines(lines)[root["pid"]]
    (sleep,) = by_program(doc, "sleep")
    assert not sleep["outlived_root"]


def _kill_written_pid(pidfile: Path, program: str) -> None:
    """Kill the background process the command wrote the pid of, if it is still that program."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(program.encode()):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_child_left_running_outlived_the_command(tmp_path: Path, backend: str) -> None:
    # The shell lives long enough for a /proc scan to see its child, then leaves it running.
    pidfile = tmp_path / "bg.pid"
    try:
        code, lines, doc = proctap_run(
            tmp_path, backend, "sh", "-c", f"sleep 30 >/dev/null 2>&1 & echo $! > {pidfile}; sleep 0.3"
        )
        assert code == 0
        assert_consistent(doc, lines)
        sleeps = {p["argv"][1]: p for p in by_program(doc, "sleep")}
        long, short = sleeps["30"], sleeps["0.3"]
        assert long["outcome"] == "running" and long["outlived_root"] and long["end_offset_ns"] is None
        assert long["pid"] == int(pidfile.read_text())
        row = process_lines(lines)[long["pid"]]
        assert "running" in row and "(outlived the command)" in row
        assert not short["outlived_root"]
        assert doc["counts"]["outlived_root"] == 1 and doc["counts"]["running"] == 1
    finally:
        _kill_written_pid(pidfile, "sleep")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_command_that_leaves_its_child_at_once(tmp_path: Path, backend: str) -> None:
    pidfile = tmp_path / "bg.pid"
    try:
        code, lines, doc = proctap_run(
            tmp_path, backend, "sh", "-c", f"sleep 30 >/dev/null 2>&1 & echo $! > {pidfile}; exit 0"
        )
        assert code == 0
        assert " -> exit 0 (exit status 0) " in lines[0], lines[0]
        assert_consistent(doc, lines)
        # by pid: the child may not have exec'd sleep yet when proctap made its report (then it still runs sh)
        found = [p for p in doc["processes"] if p["pid"] == int(pidfile.read_text())]
        if backend in KERNEL_BACKENDS or found:
            # (proc: when the shell was gone before a scan saw its child, the child was already init's: not
            # followed, and the document does not claim anything about it)
            (child,) = found
            assert child["outcome"] == "running" and child["outlived_root"]
    finally:
        _kill_written_pid(pidfile, "sleep")


# A child that outlives the command by construction: it waits until proctap has reaped the command (its pid gone
# from /proc), sleeps a little, then exits 3.  The command waits long enough for a /proc scan to see its child.
OUTLIVER = textwrap.dedent("""
    import os, time
    root = os.getpid()
    if os.fork() == 0:
        os.close(1), os.close(2)
        while os.path.exists(f"/proc/{root}"):
            time.sleep(0.005)
        time.sleep(0.2)
        os._exit(3)
    time.sleep(0.3)
""")


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_all_follows_a_child_that_outlived_the_command(tmp_path: Path, backend: str) -> None:
    code, lines, doc = proctap_run(tmp_path, backend, sys.executable, "-c", OUTLIVER, extra=("--wait-all",))
    assert code == 0
    assert_consistent(doc, lines)
    root, child = doc["processes"]
    assert root["outcome"] == "ok" and not root["outlived_root"]
    assert child["outlived_root"] and child["exit_seen"]
    assert child["end_offset_ns"] > doc["root_end_offset_ns"]
    if backend == "proc":  # init reaped it between two scans, unless a scan caught the zombie
        assert child["outcome"] in ("failed", "unknown")
    else:
        assert child["outcome"] == "failed" and child["exit_code"] == 3


def test_the_timeline_page_says_the_same(tmp_path: Path) -> None:
    from test_html_timeline import open_page  # headless Chromium

    result = run(RunOptions(argv=["sh", "-c", "sleep 0.3; exit 2"], backend="proc"))
    doc = run_document(result)
    page = tmp_path / "run.html"
    page.write_text(render_html(doc))
    seen = open_page(page, tmp_path)
    assert seen["attrs"]["errors"] == "0" and seen["errors"] == "", seen
    summary = format_report(result)[0]
    assert "exit 2 (exit status 2)" in summary and "exit unseen" not in summary
    counts = doc["counts"]
    assert counts["exit_unseen"] == 0 and counts["outlived_root"] == 0
    assert (counts["unknown"] > 0) == ("status unknown" in summary)


# -- the rules on their own: a tree fed events as a scanning backend delivers them ---------------------------------
def _fork(pid: int, ppid: int, ts: int) -> Fork:
    return Fork(source="proc", timestamp_ns=ts, wall_time=0.0, pid=pid, tid=pid, start_ns=ts, parent_pid=ppid)


def _exec(pid: int, ts: int) -> Exec:
    return Exec(source="proc", timestamp_ns=ts, wall_time=0.0, pid=pid, tid=pid, start_ns=None)


def _exit(pid: int, ts: int, status: int | None = None) -> Exit:
    return Exit(source="proc", timestamp_ns=ts, wall_time=0.0, pid=pid, tid=pid, start_ns=None, status=status,
                exit_code=None if status is None else status >> 8)  # fmt: skip


def test_scan_times_a_process_gone_at_the_reap_did_not_outlive_the_root() -> None:
    tree = ProcessTree(100, 0, ("sh",), exact_times=False, boot_offset_ns=0)
    tree.feed([_fork(100, 1, 50), _fork(101, 100, 50)])
    tree.seen_dead(101, 300)  # proctap reaped the root at 300 and found 101 gone
    tree.feed([_exit(100, 350), _exit(101, 350)])  # the next scan: both gone, no status
    tree.end_root(2 << 8, 300)
    tree.finish()
    root, child = tree.root, tree.latest[101]
    assert root.outcome is Outcome.FAILED and root.status == 2 << 8 and root.exit_seen
    assert root.end_ns == 300 and root.start_ns == 0  # the reap, and the caller's start (not the scans')
    assert child.outcome is Outcome.UNKNOWN and child.exit_seen and not child.outlived_root
    assert child.end_ns == 300  # gone by the reap, although the scan noticed it later


def test_scan_times_a_process_found_alive_after_the_reap_outlived_the_root() -> None:
    tree = ProcessTree(100, 0, ("sh",), exact_times=False, boot_offset_ns=0)
    tree.feed([_fork(100, 1, 50), _fork(101, 100, 50), _fork(102, 100, 50), _fork(105, 100, 50)])
    tree.seen_alive(101, 301)  # proctap reaped the root at 300 and found 101 alive
    tree.feed([_exit(100, 350)])
    tree.end_root(0, 300)
    tree.feed([_exec(102, 350)])  # a scan after the reap saw 102 exec: alive then
    tree.feed([_fork(103, 105, 350)])  # ... and a new child of 105: alive, but 105 may be a zombie by then
    tree.feed([_fork(104, 102, 450), _exit(104, 450)])  # a zombie when first seen: not shown alive
    tree.feed([_exit(101, 450), _exit(102, 550), _exit(103, 550), _exit(105, 550)])
    tree.finish()
    assert tree.root.status == 0 and tree.root.end_ns == 300
    outlived = {pid: tree.latest[pid].outlived_root for pid in (101, 102, 103, 104, 105)}
    assert outlived == {101: True, 102: True, 103: True, 104: False, 105: False}


def test_exact_times_an_event_after_the_roots_exit_is_outliving() -> None:
    tree = ProcessTree(100, 0, ("sh",))
    tree.feed([_fork(100, 1, 10), _fork(101, 100, 20), _fork(102, 100, 30), _fork(103, 100, 30)])
    tree.feed([_exit(101, 40, 0), _exit(100, 50, 0), _exit(102, 60, 0), _fork(104, 103, 70)])
    tree.end_root(0, 80)
    tree.feed([_exit(103, 90, 0), _exit(104, 90, 0)])
    tree.finish()
    assert tree.root.start_ns == 10 and tree.root.end_ns == 50  # the kernel's times
    outlived = {pid: tree.latest[pid].outlived_root for pid in (101, 102, 103, 104)}
    assert outlived == {101: False, 102: True, 103: True, 104: True}
