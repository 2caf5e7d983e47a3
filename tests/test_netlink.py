"""The netlink backend against the real kernel: real processes, threads, signals and exec'd argv."""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import proctap
from eventlog import EventLog
from proctap.errors import BackendUnavailable
from proctap.events import Comm, Coredump, Event, Exec, Exit, Fork, Gid, Lost, Ptrace, Sid, Uid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root (scripts/test checks it)")


@pytest.fixture
def log():
    with proctap.watch(backend="netlink") as w:
        yield EventLog(w)


def spawn(args: list, **kw: object) -> subprocess.Popen:
    return subprocess.Popen(args, **kw)  # type: ignore[call-overload]


def test_fork_exec_exit_with_code(log: EventLog) -> None:
    p = spawn(["sh", "-c", "sleep 0.3; exit 3"])
    log.wait_for(log.has_process_exit(p.pid))
    p.wait()
    (fork,) = log.about([p.pid], Fork)
    assert fork.parent_pid == os.getpid() and fork.tid == p.pid and not fork.is_thread
    (ex,) = [e for e in log.about([p.pid], Exec)]
    assert ex.filename is not None and os.path.basename(ex.filename) in ("dash", "bash", "sh")
    assert ex.argv == ("sh", "-c", "sleep 0.3; exit 3") and ex.argv_from == "proc"
    exit_ = log.process_exit(p.pid)
    assert exit_.exit_code == 3 and exit_.signal is None and not exit_.core_dumped
    assert exit_.status == 0x300 and exit_.parent_pid == os.getpid()
    assert exit_.key == fork.key and exit_.key is not None
    assert 0.25e9 < exit_.lifetime_ns < 10e9
    # the shell's own child (sleep) is a Fork whose parent is the shell
    assert any(isinstance(e, Fork) and e.parent_pid == p.pid for e in log.events)


def test_killed_by_sigkill(log: EventLog) -> None:
    p = spawn(["sleep", "30"])
    log.wait_for(lambda ev: any(isinstance(e, Exec) and e.pid == p.pid for e in ev))
    p.kill()
    log.wait_for(log.has_process_exit(p.pid))
    p.wait()
    exit_ = log.process_exit(p.pid)
    assert exit_.signal == signal.SIGKILL and exit_.signal_name == "SIGKILL" and exit_.exit_code is None
    assert not exit_.core_dumped


def test_sigsegv_with_core_dump(log: EventLog, tmp_path) -> None:
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    p = spawn(["sh", "-c", "ulimit -c unlimited; kill -SEGV $$"], cwd=tmp_path)
    log.wait_for(log.has_process_exit(p.pid))
    p.wait()
    exit_ = log.process_exit(p.pid)
    assert exit_.signal == signal.SIGSEGV and exit_.signal_name == "SIGSEGV"
    if pattern and not pattern.startswith("|"):
        assert exit_.core_dumped
        assert [e for e in log.about([p.pid], Coredump)], "a Coredump event precedes the exit"


def test_threads_and_process_exit_after_them(log: EventLog) -> None:
    script = textwrap.dedent(
        """
        import os, threading, time
        ts = [threading.Thread(target=time.sleep, args=(0.05,)) for _ in range(3)]
        [t.start() for t in ts]; [t.join() for t in ts]
        ev = threading.Event()
        live = [threading.Thread(target=ev.wait) for _ in range(2)]
        [t.start() for t in live]
        time.sleep(0.1)
        os._exit(5)   # exit_group with two live threads
        """
    )
    p = spawn([sys.executable, "-c", script])
    log.wait_for(log.has_process_exit(p.pid))
    p.wait()
    thread_forks = [e for e in log.about([p.pid], Fork) if e.is_thread]
    assert len(thread_forks) == 5
    assert all(e.pid == p.pid and e.tid != p.pid and e.parent_pid == p.pid for e in thread_forks)
    thread_exits = [e for e in log.about([p.pid], Exit) if e.is_thread]
    assert {e.tid for e in thread_exits} == {e.tid for e in thread_forks}
    exits = [e for e in log.about([p.pid], Exit)]
    assert exits[-1].is_thread is False and exits[-1].tid == p.pid, "the process exit comes after its threads"
    assert exits[-1].exit_code == 5
    assert all(e.lifetime_ns is not None and e.lifetime_ns > 0 for e in thread_exits)


def test_exec_with_awkward_argv(log: EventLog) -> None:
    long_arg = "x" * 100_000
    args = [sys.executable.encode(), b"-c", b"import time; time.sleep(1.5)", b"", b"a b", b"\xff\xfe-not-utf8", b"",
            long_arg.encode()]  # fmt: skip
    p = spawn(args)
    log.wait_for(lambda ev: any(isinstance(e, Exec) and e.pid == p.pid for e in ev))
    (ex,) = log.about([p.pid], Exec)
    assert ex.argv is not None
    assert [os.fsencode(a) for a in ex.argv] == args
    assert ex.argc == len(args) and not ex.argv_truncated
    assert ex.filename == os.path.realpath(sys.executable)
    p.kill()
    p.wait()


def test_comm_uid_gid_sid_events(log: EventLog) -> None:
    child = os.fork()
    if child == 0:
        try:
            with open("/proc/self/comm", "w") as f:
                f.write("proctap-renamed")
            os.setsid()
            os.setgid(65534)
            os.setuid(65534)
        finally:
            os._exit(0)
    log.wait_for(log.has_process_exit(child))
    os.waitpid(child, 0)
    assert [e.comm for e in log.about([child], Comm)] == ["proctap-renamed"]
    assert [e.pid for e in log.about([child], Sid)] == [child]
    assert [(e.rgid, e.egid) for e in log.about([child], Gid)] == [(65534, 65534)]
    assert [(e.ruid, e.euid) for e in log.about([child], Uid)] == [(65534, 65534)]


def test_ptrace_attach_and_detach(log: EventLog) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    p = spawn(["sleep", "30"])
    try:
        assert libc.ptrace(16, p.pid, None, None) == 0  # PTRACE_ATTACH
        os.waitpid(p.pid, 0)
        assert libc.ptrace(17, p.pid, None, None) == 0  # PTRACE_DETACH
        log.wait_for(lambda ev: len([e for e in ev if isinstance(e, Ptrace) and e.pid == p.pid]) >= 2)
    finally:
        p.kill()
        p.wait()
    attach, detach = log.about([p.pid], Ptrace)[:2]
    assert attach.attached and attach.tracer_pid == os.getpid() and attach.tracer_tid == threading.get_native_id()
    assert not detach.attached and detach.tracer_pid == 0


def mark_cpu(log: EventLog, cpu: int) -> list[int]:
    """Fork short tasks on ``cpu`` until the exit of one is seen (on a busy machine a tiny buffer drops some)."""
    markers = []
    for _ in range(100):
        marker = os.fork()
        if marker == 0:
            os.sched_setaffinity(0, {cpu})
            os._exit(0)
        os.waitpid(marker, 0)
        markers.append(marker)
        try:
            log.wait_for(log.has_process_exit(marker), timeout=0.5)
            return markers
        except AssertionError:
            continue
    raise AssertionError(f"no marker exit seen on cpu {cpu}")


def test_loss_is_counted_exactly() -> None:
    """A tiny buffer and a reader that does not read: seen + reported lost == what the load generator did.

    Other tasks on the machine may lose events in the same window too, so a second watcher with a large buffer,
    reading all along, counts them: truth <= seen + lost <= truth + (other tasks' events in the window).  On a quiet
    machine that is an equality.
    """
    n = 400
    with proctap.watch(backend="netlink") as ref:  # its 32 MiB buffer holds the window: read it afterwards
        t0 = time.monotonic_ns()
        with proctap.watch(backend="netlink", buffer_bytes=4096) as w:
            log = EventLog(w)
            # Each CPU's counter starts at boot: its losses are countable once one of its events gave the baseline.
            for cpu in sorted(os.sched_getaffinity(0)):
                mark_cpu(log, cpu)
            gate_r, gate_w = os.pipe()
            loader = os.fork()
            if loader == 0:
                os.read(gate_r, 1)
                for i in range(n):
                    pid = os.fork()
                    if pid == 0:
                        os._exit(i % 256)
                    os.waitpid(pid, 0)
                os._exit(0)
            os.write(gate_w, b"x")
            os.waitpid(loader, 0)
            for _ in range(5):
                log.pump(timeout=0)
            # A gap shows when the next event of the same CPU arrives: make events on every CPU.
            for cpu in sorted(os.sched_getaffinity(0)):
                mark_cpu(log, cpu)
            stats = w.stats()
            t1 = max(e.timestamp_ns for e in log.events)
        reference = EventLog(ref).until(
            lambda events: any(e.timestamp_ns >= t1 for e in events[-50:]), "the reference up to the window's end"
        )
    assert not any(isinstance(e, Lost) for e in reference), [e for e in reference if isinstance(e, Lost)][:3]
    # On a busy machine PIDs wrap around fast: only the loader's lifetime counts (the reference saw its exit).
    loader_end = next(
        e.timestamp_ns for e in reference if isinstance(e, Exit) and e.pid == loader and e.timestamp_ns > t0
    )

    def in_load(e: Event) -> bool:
        return t0 <= e.timestamp_ns <= loader_end and getattr(e, "parent_pid", None) == loader

    children_forks = {e.pid for e in log.of(Fork) if in_load(e)}
    children_exits = {e.pid: e for e in log.of(Exit) if not e.is_thread and in_load(e)}
    truth = 2 * n  # one fork and one exit per child
    seen = len(children_forks) + len(children_exits)
    lost = sum(e.count for e in log.of(Lost) if e.count is not None)
    assert lost > 0, "the tiny buffer must overflow"
    assert stats.lost == lost and stats.backend["enobufs"] >= 1
    assert not [e for e in log.of(Lost) if e.count is None], "without a kernel filter every loss is counted"
    assert not [e for e in reference if isinstance(e, Lost)], "the reference watcher must not lose events"
    ref_children = {e.pid for e in reference if isinstance(e, Fork) and in_load(e)}
    assert len(ref_children) == n
    # Everything else the kernel sent in the window (the loader's own events, the markers, other tasks) may have
    # been lost too: that bounds the excess.
    others = [
        e for e in reference
        if t0 <= e.timestamp_ns <= t1 and not (isinstance(e, (Fork, Exit)) and e.pid in ref_children)
    ]  # fmt: skip
    assert truth <= seen + lost <= truth + len(others), (seen, lost, truth, len(others))
    assert all(e.exit_code is not None for e in children_exits.values())


def test_kernel_filter_when_only_exec_is_wanted() -> None:
    with proctap.watch(events="exec", backend="netlink") as w:
        assert w.backend.kernel_filter is not None
        log = EventLog(w)
        p = spawn(["sleep", "0.5"])
        log.wait_for(lambda ev: any(isinstance(e, Exec) and e.pid == p.pid for e in ev))
        p.wait()
        assert not log.of(Fork) and not log.of(Exit)


def test_fileno_select_and_iterator() -> None:
    with proctap.watch(events="fork,exit", backend="netlink") as w:
        p = spawn(["true"])
        ready, _, _ = select.select([w], [], [], 5)
        assert ready == [w]
        for ev in w:
            if isinstance(ev, Exit) and ev.pid == p.pid:
                break
        p.wait()
        stats = w.stats()
        assert stats.received.get("fork", 0) >= 1 and stats.delivered >= 2


def test_asyncio_awatch() -> None:
    async def main() -> Exit:
        async with proctap.awatch(events="exit", backend="netlink") as w:
            proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
            async for ev in w:
                if isinstance(ev, Exit) and ev.pid == proc.pid:
                    await proc.wait()
                    return ev
        raise AssertionError("unreachable")

    ev = asyncio.run(asyncio.wait_for(main(), 10))
    assert ev.exit_code == 7


def netlink_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            inode = target[8:-1]
            with open("/proc/net/netlink") as f:
                count += any(line.split()[-1] == inode for line in f.readlines()[1:])
    return count


def test_close_releases_the_socket() -> None:
    before = netlink_sockets()
    w = proctap.watch(backend="netlink")
    assert netlink_sockets() == before + 1
    w.close()
    w.close()
    assert netlink_sockets() == before
    assert w.read(timeout=0) == []


def test_pid_filter_follows_the_subtree() -> None:
    gate_r, gate_w = os.pipe()
    p = spawn(["sh", "-c", "read x; sh -c 'exit 4'; exit 2"], stdin=gate_r)
    with proctap.watch(events="fork,exit", backend="netlink", pid=p.pid) as w:
        other = spawn(["true"])
        os.write(gate_w, b"go\n")
        log = EventLog(w)
        # p was forked before the watcher started (no Fork in the log): p is alive until its own exit.
        log.wait_for(lambda ev: any(isinstance(e, Exit) and e.pid == p.pid for e in ev))
    p.wait()
    other.wait()
    assert other.pid not in {e.pid for e in log.events}
    grandchild = [e for e in log.of(Exit) if e.pid != p.pid]
    assert [e.exit_code for e in grandchild] == [4]
    assert [e.exit_code for e in log.of(Exit) if e.pid == p.pid] == [2]


def test_unknown_backend_and_bad_events_are_one_line_errors() -> None:
    with pytest.raises(proctap.ProctapError, match="unknown backend 'nope'"):
        proctap.watch(backend="nope")
    with pytest.raises(proctap.ProctapError, match="unknown event type 'forks'"):
        proctap.watch(events="forks", backend="netlink")


def test_new_network_namespace_is_explained() -> None:
    code = "import proctap\ntry:\n proctap.watch(backend='netlink')\nexcept proctap.BackendUnavailable as e:\n print(e)"
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)  # fmt: skip
    assert "initial network namespace" in out.stdout


def test_child_pid_namespace_is_explained() -> None:
    code = "import proctap\nprint(proctap.probe_all()['netlink'].reason)"
    out = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)  # fmt: skip
    assert "child PID/user namespace" in out.stdout


def test_unprivileged_user_can_watch_with_a_smaller_buffer() -> None:
    r, w_ = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with proctap.watch(backend="netlink") as w:
                    grandchild = os.fork()
                    if grandchild == 0:
                        os._exit(6)
                    os.waitpid(grandchild, 0)
                    log = EventLog(w)
                    log.wait_for(log.has_process_exit(grandchild), timeout=5)
                    ok = log.process_exit(grandchild).exit_code == 6
            warned = any("CAP_NET_ADMIN" in str(c.message) for c in caught)
            os.write(w_, f"{ok} {warned}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w_)
    _, status = os.waitpid(child, 0)
    assert os.read(r, 100).decode() == "True True"
    assert os.waitstatus_to_exitcode(status) == 0


def test_unavailable_backend_names_the_ones_that_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from proctap.linux import procfs

    monkeypatch.setattr(procfs, "in_child_pid_namespace", lambda: True)
    with pytest.raises(BackendUnavailable, match="child PID/user namespace"):
        proctap.watch(backend="netlink")
