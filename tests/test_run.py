"""``proctap run`` against real commands on the real kernel: tree shape, nesting, statuses, accounting, reports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import proctap
from eventlog import EventLog
from proctap.backends import backend_class
from proctap.events import Exit, Fork, Lost
from proctap.run.report import format_report, run_document
from proctap.run.session import (
    RunOptions,
    RunResult,
    run,
    run_backend_options,
)
from proctap.run.tree import Outcome, ProcessNode

SRC = str(Path(__file__).resolve().parent.parent / "src")
PY = sys.executable


def run_tree(*argv: str, complete: bool = True, **kw: object) -> RunResult:
    """Run and return the result.  ``complete``: the test needs every event.  If the kernel dropped some (other
    processes on this machine storming the kernel buffer faster than we drain it), the loss must be accounted: a
    reference watcher (netlink, its own large buffer, read by a thread all along) tells which forks and exits of the
    command's processes the run missed, and the Lost counts must cover them; the test's own assertions then run on
    whatever the tree holds (see also test_lost_events_are_reported_not_hidden)."""
    if not complete:
        return run(RunOptions(argv=list(argv), **kw))  # type: ignore[arg-type]
    with proctap.watch(events="fork,exit", backend="netlink") as ref:
        reference = EventLog(ref)
        stop = threading.Event()

        def read_reference() -> None:
            while not stop.is_set():
                reference.pump()

        reader = threading.Thread(target=read_reference)
        reader.start()
        try:
            result = run(RunOptions(argv=list(argv), **kw))  # type: ignore[arg-type]
        finally:
            stop.set()
            reader.join()
        if result.tree.lost:  # a process made now: once the reference has its exit, it has all before it
            marker = os.fork()
            if marker == 0:
                os._exit(0)
            os.waitpid(marker, 0)
            reference.wait_for(reference.has_process_exit(marker), "the reference watcher to catch up")
            assert_loss_accounted(result, reference)
    return result


def assert_loss_accounted(result: RunResult, reference: EventLog) -> None:
    """The Lost records of the run cover the forks and exits of the command's processes that the tree misses."""
    assert not reference.of(Lost), "the reference watcher lost events itself: it cannot tell what the run missed"
    window = [e for e in reference.events if result.started_ns <= e.timestamp_ns <= result.finished_ns]
    ours = {result.tree.root.pid}
    for e in window:  # the command's subtree, as the reference saw it
        if isinstance(e, Fork) and not e.is_thread and e.parent_pid in ours:
            ours.add(e.pid)
    nodes = {n.pid: n for n in result.tree.nodes()}
    missing_forks = [p for p in ours if p not in nodes]
    missing_exits = [
        e.pid for e in window
        if isinstance(e, Exit) and not e.is_thread and e.pid in ours and not (e.pid in nodes and nodes[e.pid].exit_seen)
    ]  # fmt: skip
    missing = len(missing_forks) + len(missing_exits)
    counts = [r.count for r in result.tree.lost]
    assert counts, "no Lost record"
    if all(c is not None for c in counts):
        assert sum(counts) >= missing, (  # type: ignore[arg-type]
            f"the run misses {len(missing_forks)} forks and {len(missing_exits)} exits of its processes, but its "
            f"Lost records count only {sum(counts)}"  # type: ignore[arg-type]
        )


def name(node: ProcessNode) -> str | None:
    """The program's name: argv[0]'s basename, or the comm when argv came too late (/proc read after a short-lived
    process was gone: backends without kernel-side argv capture)."""
    if node.argv:
        return os.path.basename(node.argv[0])
    return node.comm


def by_name(result: RunResult, wanted: str) -> list[ProcessNode]:
    return [n for n in result.tree.nodes() if name(n) == wanted]


def assert_nesting(result: RunResult) -> None:
    """Every child starts after its parent started, and (when both ended) a waited-for child ends first."""
    for node in result.tree.nodes():
        assert node.start_ns is not None
        if node.end_ns is not None:
            assert node.end_ns >= node.start_ns
        parent = node.parent
        if parent is not None:
            assert parent.start_ns is not None
            assert node.start_ns >= parent.start_ns


def test_pipeline_tree() -> None:
    result = run_tree("sh", "-c", "seq 1 20000 | grep 7 | wc -l >/dev/null")
    assert result.exit_status == 0
    root = result.tree.root
    assert root.outcome is Outcome.OK and root.exit_seen
    names = {name(n) for n in root.children}
    assert {"seq", "grep", "wc"} <= names, [(n.argv, n.comm) for n in root.children]
    for child in root.children:
        assert child.parent is root
        assert child.outcome is Outcome.OK
        assert child.end_ns is not None and root.end_ns is not None
        assert child.end_ns <= root.end_ns  # the shell waits for its pipeline
    assert_nesting(result)
    assert not result.tree.lost


def test_exit_status_passes_through_and_failed_child() -> None:
    script = textwrap.dedent("""
        import os, sys
        pid = os.fork()
        if pid == 0:
            os._exit(3)
        os.waitpid(pid, 0)
        sys.exit(7)
    """)
    result = run_tree(PY, "-c", script)
    assert result.exit_status == 7
    root = result.tree.root
    assert root.exit_code == 7 and root.outcome is Outcome.FAILED
    (child,) = root.children
    assert child.exit_code == 3 and child.outcome is Outcome.FAILED
    assert not child.execed  # a plain fork: it ran the parent's program
    assert child.argv == root.argv
    assert child.ppid == root.pid


def test_signal_death_is_reported_and_mapped_the_shell_way() -> None:
    result = run_tree("sh", "-c", "sleep 5 & kill -KILL $!; wait; kill -TERM $$")
    assert result.exit_status == 128 + 15
    root = result.tree.root
    assert root.outcome is Outcome.SIGNALED and root.signal == 15
    (sleeper,) = root.children  # killed as "sleep", or as the forked shell if the kill came before the exec
    assert sleeper.outcome is Outcome.SIGNALED
    assert sleeper.signal == 9 and sleeper.signal_name == "SIGKILL"


def test_core_dump_flag_is_passed_on(tmp_path: Path) -> None:
    # SIGQUIT dumps core by default; core_pattern may point anywhere, so only check what the kernel reported.
    quit_self = "import os, signal; signal.signal(signal.SIGQUIT, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGQUIT)"
    result = run_tree("sh", "-c", f"ulimit -c unlimited; cd {tmp_path}; {PY} -c '{quit_self}'; exit 0")
    (sleeper,) = result.tree.root.children
    assert sleeper.signal == 3
    assert sleeper.status is not None
    assert sleeper.core_dumped == bool(sleeper.status & 0x80)
    if any(tmp_path.glob("core*")):  # core_pattern wrote a file here: the kernel must have said so
        assert sleeper.core_dumped


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make (apt package make)")
def test_make_j2_tree(tmp_path: Path) -> None:
    targets = [f"t{i}" for i in range(8)]
    rules = "".join(f"{t}:\n\tsleep 0.02; echo {t} > {t}\n" for t in targets)
    (tmp_path / "Makefile").write_text(f"all: {' '.join(targets)}\n{rules}")
    result = run_tree("make", "-s", "-j2", "-C", str(tmp_path))
    assert result.exit_status == 0
    root = result.tree.root
    shells = [n for n in root.children if name(n) == "sh"]
    assert len(shells) == len(targets)
    for sh in shells:
        assert sh.outcome is Outcome.OK
        sleeps = [c for c in sh.children if name(c) == "sleep"]
        assert len(sleeps) == 1  # the sleep is nested under its recipe's shell
        assert sh.start_ns is not None and sleeps[0].start_ns is not None
        assert sleeps[0].start_ns >= sh.start_ns
    assert_nesting(result)
    assert all((tmp_path / t).exists() for t in targets)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make (apt package make)")
def test_make_failure_is_passed_through(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("all:\n\tsh -c 'exit 4'\n")
    result = run_tree("make", "-s", "-C", str(tmp_path))
    assert result.exit_status == 2  # make's own status
    failed = [n for n in result.tree.nodes() if n.exit_code == 4]
    assert failed, "the recipe's exit 4 must appear in the tree"


# The daemon waits until the command (the root) has ended, then sleeps argv[1] seconds: it outlives the command
# whatever the load on the machine, without a race between sleeps.
DAEMON = textwrap.dedent("""
    import os, sys, time
    root = os.getpid()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                try:
                    with open(f"/proc/{root}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                            break
                except OSError:
                    break
                time.sleep(0.005)
            time.sleep(float(sys.argv[1]))
            os._exit(0)
        os._exit(0)
    os.wait()
""")


def _daemon(result: RunResult) -> ProcessNode:
    (middle,) = result.tree.root.children
    (daemon,) = middle.children
    return daemon


def test_daemon_outliving_the_command_is_reported() -> None:
    # the daemon sleeps far longer than any loaded machine needs to finish the run; it is killed afterwards
    result = run_tree(PY, "-c", DAEMON, "120")
    try:
        assert result.exit_status == 0
        daemon = _daemon(result)
        assert daemon.outlived_root
        assert daemon.outcome is Outcome.RUNNING
        assert result.tree.root.children[0].outcome is Outcome.OK
        text = "\n".join(format_report(result))
        assert "outlived the command" in text and "running" in text
    finally:
        for node in result.tree.nodes():
            if node is not result.tree.root and node.end_ns is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGKILL)


def test_wait_all_waits_for_the_daemon() -> None:
    result = run_tree(PY, "-c", DAEMON, "0.3", wait_all=True)
    daemon = _daemon(result)
    assert daemon.outlived_root
    assert daemon.outcome is Outcome.OK and daemon.exit_seen, (daemon, result.tree.lost)
    assert daemon.end_ns is not None and result.tree.root.end_ns is not None
    assert daemon.end_ns > result.tree.root.end_ns


def test_accounting_cpu_of_a_busy_child() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    result = run_tree("sh", "-c", f"{PY} -c '{spin}'; true")
    assert result.accounting_source == "taskstats"
    (busy,) = [n for n in result.tree.nodes() if name(n) in (os.path.basename(PY), "python3")]
    acct = busy.accounting
    assert acct is not None
    assert acct.cpu_user_us + acct.cpu_system_us >= 100_000  # it burnt 200 ms of CPU
    assert acct.peak_rss_kb is not None and acct.peak_rss_kb > 1000  # a Python interpreter
    assert acct.per_process
    root_acct = result.tree.root.accounting
    assert root_acct is not None and root_acct.voluntary_switches is not None


def test_threads_are_listed_under_their_process() -> None:
    script = textwrap.dedent("""
        import threading
        def work():
            sum(range(100000))
        ts = [threading.Thread(target=work) for _ in range(3)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    """)
    result = run_tree(PY, "-c", script, threads=True)
    root = result.tree.root
    assert len(root.threads) == 3
    for thread in root.threads:
        assert thread.tid != root.pid
        assert thread.end_ns is not None and thread.start_ns is not None and thread.end_ns >= thread.start_ns
        assert thread.accounting is not None  # each thread's own taskstats record


def test_json_document_is_consistent() -> None:
    result = run_tree("sh", "-c", "true; (false); sh -c 'kill -9 $$'; exit 0")
    doc = json.loads(json.dumps(run_document(result)))
    assert doc["schema"] == "proctap-run" and doc["schema_version"] == 1
    procs = doc["processes"]
    assert doc["counts"]["processes"] == len(procs)
    assert procs[0]["parent"] is None and procs[0]["pid"] == result.tree.root.pid
    for p in procs[1:]:
        parent = procs[p["parent"]]
        assert p["parent"] < p["id"] and p["depth"] == parent["depth"] + 1
        assert p["ppid"] == parent["pid"]
    outcomes = sorted(p["outcome"] for p in procs)
    assert outcomes.count("signaled") == 1 and outcomes.count("failed") >= 1
    killed = next(p for p in procs if p["outcome"] == "signaled")
    assert killed["signal_name"] == "SIGKILL" and killed["exit_code"] is None


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [PY, "-m", "proctap", "run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_exit_status_report_and_files(tmp_path: Path) -> None:
    proc = _cli("--json", "out.json", "--html", "out.html", "--", "sh", "-c", "echo hi; exit 5", cwd=tmp_path)
    assert proc.returncode == 5
    assert proc.stdout == "hi\n"  # the command's output is untouched: the report goes to stderr
    assert "exit 5" in proc.stderr and "[sh]" not in proc.stderr.splitlines()[0]
    assert "START" in proc.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["exit_status"] == 5
    page = (tmp_path / "out.html").read_text()
    assert "<canvas" in page and "http://" not in page and "https://" not in page


def test_cli_signal_status_and_missing_command(tmp_path: Path) -> None:
    assert _cli("-q", "--", "sh", "-c", "kill -TERM $$", cwd=tmp_path).returncode == 143
    missing = _cli("--", "/nonexistent/program", cwd=tmp_path)
    assert missing.returncode == 127
    assert "cannot run" in missing.stderr and "Traceback" not in missing.stderr
    assert _cli("--", str(tmp_path), cwd=tmp_path).returncode == 126  # a directory: not executable


def test_cli_without_command_is_a_one_line_error(tmp_path: Path) -> None:
    proc = _cli(cwd=tmp_path)
    assert proc.returncode == 2
    assert "no command given" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_unprivileged_run_says_once_that_accounting_is_missing(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-m", "proctap", "run", "--", "sh", "-c",
         "true; exit 4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 4
    assert proc.stderr.count("CAP_NET_ADMIN (run as root)") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_lost_events_are_reported_not_hidden() -> None:
    # A tiny kernel buffer and a burst of 400 background processes: the kernel drops events, and says so.
    burst = "i=0; while [ $i -lt 400 ]; do /bin/true & i=$((i+1)); done; wait"
    result = run_tree("sh", "-c", burst, complete=False, buffer_bytes=4096, latency=0.2)
    assert result.exit_status == 0
    assert result.tree.lost, "a 400-process burst into a 4 KiB buffer must overflow it"
    doc = run_document(result)
    assert doc["lost"] and sum(rec["count"] or 0 for rec in doc["lost"]) > 0
    report = format_report(result)
    assert "events lost" in report[0]
    assert any(line.startswith("!! ") and "the tree may be incomplete" in line for line in report)
    assert result.tree.root.outcome is Outcome.OK  # the command itself is still followed (its status from waitpid)


def test_a_busy_daemon_does_not_keep_proctap_waiting() -> None:
    busy = textwrap.dedent("""
        import os, subprocess, time
        if os.fork() == 0:
            end = time.monotonic() + 120  # far past the run on any machine; killed below
            while time.monotonic() < end:
                subprocess.run(["true"])
                time.sleep(0.01)
            os._exit(0)
    """)
    result = run_tree(PY, "-c", busy, complete=False)
    (daemon,) = result.tree.root.children
    try:
        assert daemon.outlived_root
        assert daemon.outcome is Outcome.RUNNING  # proctap returned while it was still forking
        assert daemon.children  # its children so far are in the tree
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGKILL)


def test_run_asks_bpf_for_the_failed_fork_hook_that_detaches_at_once() -> None:
    bpf, netlink = backend_class("bpf"), backend_class("netlink")
    assert run_backend_options(bpf, ()) == (("fork_failed_hook", "raw"),)
    assert run_backend_options(bpf, (("uid", "0"),)) == (("uid", "0"), ("fork_failed_hook", "raw"))
    assert run_backend_options(bpf, (("fork_failed_hook", "syscalls"),)) == (("fork_failed_hook", "syscalls"),)
    assert run_backend_options(netlink, ()) == ()  # an option netlink does not take is not added
