"""The tracefs backend's own duties against the real kernel: instance hygiene (close, SIGTERM, Ctrl-C, stale
instances of killed runs), kernel-side filters, the clock.  Event semantics are in tests/conformance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import proctap
from eventlog import EventLog, collect
from proctap.backends.base import BackendConfig
from proctap.backends.tracefs import ExitTracker, TracefsBackend
from proctap.events import EventKind, Exec, ExecFailed

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not TracefsBackend.probe(), reason="needs root and tracefs (scripts/test runs as root)"
)

ROOT = "/sys/kernel/tracing"
SRC = os.path.join(os.path.dirname(__file__), "..", "src")
WATCH_AND_WAIT = (
    "import sys, time, proctap\n"
    "w = proctap.watch(backend='tracefs')\n"
    "print(w.backend.instance_name, flush=True)\n"
    "for ev in w: pass\n"
)


def instances() -> set[str]:
    return {n for n in os.listdir(os.path.join(ROOT, "instances")) if n.startswith("proctap-")}


def start_watcher_process() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC)}
    # A shell without job control starts background commands with SIGINT ignored, and Python then keeps ignoring it:
    # give the watcher the default disposition so Ctrl-C (SIGINT) means KeyboardInterrupt whoever runs the tests.
    p = subprocess.Popen([sys.executable, "-c", WATCH_AND_WAIT], stdout=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert p.stdout is not None
    name = p.stdout.readline().strip()
    assert name.startswith(f"proctap-{p.pid}-") and name in instances()
    return p, name


def test_instance_named_after_owner_and_removed_on_close() -> None:
    with proctap.watch(backend="tracefs") as w:
        name = w.backend.instance_name  # type: ignore[attr-defined]
        assert name.startswith(f"proctap-{os.getpid()}-") and name in instances()
        with open(os.path.join(ROOT, "instances", name, "trace_clock")) as f:
            assert "[mono]" in f.read()
        with open(os.path.join(ROOT, "instances", name, "buffer_percent")) as f:
            assert f.read().strip() == "0"
    assert name not in instances()


def test_kernel_filters_and_only_the_events_needed() -> None:
    with proctap.watch(events="exec", backend="tracefs") as w:
        base = os.path.join(ROOT, "instances", w.backend.instance_name, "events")  # type: ignore[attr-defined]

        def enabled(event: str) -> bool:
            with open(os.path.join(base, event, "enable")) as f:
                return f.read().strip() == "1"

        assert enabled("sched/sched_process_exec") and enabled("task/task_newtask")
        assert enabled("sched/sched_process_exit"), "keeps the per-task state bounded"
        assert not enabled("syscalls/sys_enter_exit_group") and not enabled("syscalls/sys_exit_clone")
        assert not enabled("syscalls/sys_exit_execve"), "failed execs only when asked for"
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["true"])
        os.waitpid(pid, 0)
        seen = collect(w, lambda evs: any(e.pid == pid for e in evs), what=f"the exec of {pid}")
        assert {e.kind for e in seen} <= {EventKind.EXEC, EventKind.LOST}
        assert [e.kind for e in seen if e.pid == pid] == [EventKind.EXEC]
    with proctap.watch(events="fork_failed,exit", backend="tracefs") as w:
        base = os.path.join(ROOT, "instances", w.backend.instance_name, "events")  # type: ignore[attr-defined]
        with open(os.path.join(base, "syscalls/sys_exit_clone/filter")) as f:
            assert f.read().strip() == "ret < 0"
        with open(os.path.join(base, "signal/signal_deliver/filter")) as f:
            assert "sa_handler == 0" in f.read()
    with proctap.watch(events="exec_failed", backend="tracefs") as w:
        base = os.path.join(ROOT, "instances", w.backend.instance_name, "events")  # type: ignore[attr-defined]
        for syscall in ("execve", "execveat"):
            with open(os.path.join(base, f"syscalls/sys_exit_{syscall}/filter")) as f:
                assert f.read().strip() == "ret < 0"


def test_failed_exec_is_not_named_after_the_program_exec_d_next() -> None:
    """env tries PATH directories (two ENOENT) before the sh it runs: by the time the records are read /proc says
    "sh", which was not the caller's name at the failures, so their comm is None rather than that."""
    with TracefsBackend(BackendConfig(events=frozenset({EventKind.EXEC, EventKind.EXEC_FAILED}))) as b:
        p = subprocess.Popen(["/usr/bin/env", "PATH=/nonexistent1:/nonexistent2:/bin", "sh", "-c", "read x"],
                             stdin=subprocess.PIPE)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # sh waits in read(2): its exec is over, before anything is read
                with open(f"/proc/{p.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "S":
                        break
                time.sleep(0.01)
            events = collect(b, lambda evs: any(isinstance(e, Exec) and e.pid == p.pid and e.filename == "/bin/sh"
                                                for e in evs), what="the exec of sh")  # fmt: skip
        finally:
            assert p.stdin is not None
            p.stdin.close()
            p.wait()
    failed = [e for e in events if isinstance(e, ExecFailed) and e.pid == p.pid]
    assert [(e.errno_name, e.comm) for e in failed] == [("ENOENT", None), ("ENOENT", None)]


def test_sigterm_removes_the_instance() -> None:
    p, name = start_watcher_process()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == -signal.SIGTERM, "the process still dies of SIGTERM"
    assert name not in instances()


def test_ctrl_c_removes_the_instance() -> None:
    p, name = start_watcher_process()
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    assert name not in instances()


def test_stale_instance_of_a_killed_run_is_removed_at_next_start() -> None:
    p, name = start_watcher_process()
    p.kill()
    p.wait(timeout=30)
    assert name in instances(), "SIGKILL leaves the instance behind"
    alive, alive_name = start_watcher_process()
    try:
        assert name not in instances(), "the next start removed the dead owner's instance"
        assert alive_name in instances()
        with proctap.watch(backend="tracefs"):
            assert alive_name in instances(), "an instance whose owner lives is left alone"
    finally:
        alive.terminate()
        alive.wait(timeout=30)
    assert alive_name not in instances()


def test_reading_an_idle_backend_returns_nothing_quickly() -> None:
    with proctap.watch(events="fork_failed", backend="tracefs") as w:
        t0 = time.monotonic()
        assert all(e.kind != EventKind.FORK_FAILED or e.pid != os.getpid() for e in w.read(timeout=0.1))
        assert time.monotonic() - t0 < 5
        stats = w.stats().backend
        assert stats["cpus"] == len(os.listdir(os.path.join(ROOT, "per_cpu")))


# -- the exit-status bookkeeping (pure) -----------------------------------------------------------------------------
def test_exit_tracker_first_group_cause_wins() -> None:
    t = ExitTracker()
    t.exit_group_syscall(11, 10, 5)
    t.signal_taken(10, signal.SIGKILL)  # the other threads are zapped afterwards
    assert t.thread_exited(12, 10) == 0x500
    assert t.process_exited(11, 10) == 0x500
    assert len(t) == 0


def test_exit_tracker_sigkill_stands_for_the_fatal_signal_sent() -> None:
    t = ExitTracker()
    t.signal_sent(20, signal.SIGTERM)
    t.signal_taken(20, signal.SIGKILL)
    assert t.process_exited(20, 20) == signal.SIGTERM


def test_exit_tracker_exec_forgets_the_de_thread_kill() -> None:
    t = ExitTracker()
    t.signal_sent(30, signal.SIGTERM)  # handled by the program: it lives on
    t.signal_taken(30, signal.SIGKILL)  # de_thread() zapping the other threads
    t.exec(30)
    t.exit_group_syscall(30, 30, 0)
    assert t.process_exited(30, 30) == 0


def test_exit_tracker_leader_code_without_group_exit() -> None:
    t = ExitTracker()
    t.exit_syscall(40, 7)  # the leader's pthread_exit-like exit(7)
    assert t.thread_exited(40, 40) == 0x700
    t.exit_syscall(41, 1)
    assert t.process_exited(41, 40) == 0x700, "the process status is the leader's own code"


# -- the path of kernels without sched_process_exit.group_dead (6.1), forced on this kernel ---------------------------
def test_thread_counting_path_of_older_kernels() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "conformance"))
    from conformance_helpers import c_helper, run_python

    script = (
        "import os, threading, time\n"
        "ts = [threading.Thread(target=time.sleep, args=(0.05,)) for _ in range(3)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "ev = threading.Event()\n"
        "[threading.Thread(target=ev.wait).start() for _ in range(2)]\n"
        "time.sleep(0.1)\n"
        "os._exit(5)\n"
    )
    with proctap.watch(backend="tracefs", options=[("count_threads", "1")]) as w:
        assert w.backend._count_threads  # type: ignore[attr-defined]
        log = EventLog(w)
        p = run_python(script)
        leader_first = subprocess.Popen([c_helper(), "leader-first", "6"])
        (ex,) = log.wait_exit(p.pid)
        (ex2,) = log.wait_exit(leader_first.pid)
        assert p.wait(timeout=30) == 5 and leader_first.wait(timeout=10) == 6
    exits = log.about([p.pid], proctap.Exit)
    assert exits[-1] is ex and ex.exit_code == 5 and ex.tid == p.pid
    assert len([e for e in exits if e.is_thread]) == 5
    assert ex2.exit_code == 6 and ex2.tid == leader_first.pid
    assert len([e for e in log.about([leader_first.pid], proctap.Exit) if e.is_thread]) == 1


def test_unprivileged_user_is_told_it_needs_root() -> None:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                proctap.watch(backend="tracefs")
                message = "no error"
            except proctap.BackendUnavailable as exc:
                message = str(exc)
            os.write(w, message.encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    message = os.read(r, 1000).decode()
    os.close(r)
    assert "needs root" in message and "\n" not in message
