"""The kprobe backend against the real kernel.

This machine's kernel has no kprobe events: here only the availability check runs; the rest runs inside Debian's 6.1
kernel under qemu (``tests/vm/run tests/kprobe``), where the backend's events are checked against real processes.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from eventlog import TIMEOUT, EventLog, collect
from proctap.backends.base import BackendConfig, check_options
from proctap.backends.kprobe import UNAVAILABLE_NO_KPROBES, KprobeBackend
from proctap.errors import BackendUnavailable, ProctapError
from proctap.events import Event, Exec, Exit, Fork, ForkFailed, Lost
from proctap.linux.tracefs import kprobe_events as kprobes
from proctap.linux.tracefs.instance import find_tracefs

TRACING = find_tracefs()
HAS_KPROBES = TRACING is not None and os.path.exists(os.path.join(TRACING, "kprobe_events"))
needs_kprobes = pytest.mark.skipif(not HAS_KPROBES, reason="no kprobe events in this kernel: run tests/vm/run")

SYS_CLONE = {"x86_64": 56, "aarch64": 220}
CLONE_SIGHAND = 0x800


def test_probe_says_why_the_backend_is_unavailable() -> None:
    availability = KprobeBackend.probe()
    if HAS_KPROBES:
        assert availability.ok
        return
    assert not availability.ok
    if TRACING is not None:
        assert availability.reason == UNAVAILABLE_NO_KPROBES
        with pytest.raises(BackendUnavailable, match="CONFIG_KPROBE_EVENTS off"):
            KprobeBackend(BackendConfig())


def test_maxactive_option_is_checked() -> None:
    with pytest.raises(ProctapError, match="maxactive"):
        check_options(KprobeBackend, {"maxactive": "lots"})
    with pytest.raises(ProctapError, match="maxactive"):
        check_options(KprobeBackend, {"maxactive": "5000"})
    assert check_options(KprobeBackend, {"maxactive": "64"}) == (("maxactive", "64"),)


@needs_kprobes
def test_maxactive_reaches_the_probes() -> None:
    with KprobeBackend(BackendConfig(options=(("maxactive", "64"),))) as b:
        assert b.maxactive == 64
    with KprobeBackend(BackendConfig()) as b:
        assert b.maxactive == 20


@pytest.fixture
def backend() -> Iterator[KprobeBackend]:
    with KprobeBackend(BackendConfig()) as b:
        assert isinstance(b, KprobeBackend)
        yield b


def kprobe_events() -> str:
    assert TRACING is not None
    with open(os.path.join(TRACING, "kprobe_events")) as f:
        return f.read()


def about(events: list[Event], pid: int) -> list[Event]:
    return [e for e in events if e.pid == pid]


def exit_of(events: list[Event], pid: int) -> Exit | None:
    for e in events:
        if isinstance(e, Exit) and e.pid == pid and not e.is_thread:
            return e
    return None


@needs_kprobes
def test_fork_and_exit_code(backend: KprobeBackend) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitpid(pid, 0)
    events = collect(backend, lambda evs: exit_of(evs, pid) is not None)
    mine = about(events, pid)
    fork = mine[0]
    assert isinstance(fork, Fork)
    assert (fork.tid, fork.parent_pid, fork.parent_tid, fork.is_thread) == (pid, os.getpid(), os.getpid(), False)
    assert fork.clone_flags is not None and fork.source == "kprobe"
    end = exit_of(events, pid)
    assert end is not None
    assert (end.status, end.exit_code, end.signal, end.parent_pid) == (0x300, 3, None, os.getpid())
    assert end.lifetime_ns is not None and end.lifetime_ns >= 0


@needs_kprobes
def test_death_by_signal(backend: KprobeBackend) -> None:
    child = subprocess.Popen(["sleep", "60"])
    child.send_signal(signal.SIGKILL)
    child.wait()
    events = collect(backend, lambda evs: exit_of(evs, child.pid) is not None)
    end = exit_of(events, child.pid)
    assert end is not None
    assert (end.signal, end.exit_code, end.core_dumped) == (signal.SIGKILL, None, False)


@needs_kprobes
def test_core_dump_bit(backend: KprobeBackend) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pid = os.fork()
        if pid == 0:
            os.chdir(tmp)
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            os.kill(os.getpid(), signal.SIGQUIT)  # dumps core; not caught by pytest's faulthandler
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        events = collect(backend, lambda evs: exit_of(evs, pid) is not None)
    end = exit_of(events, pid)
    assert end is not None
    assert end.signal == signal.SIGQUIT
    assert end.core_dumped == os.WCOREDUMP(status)


@needs_kprobes
def test_vfork_child_events_follow_its_fork(backend: KprobeBackend) -> None:
    # subprocess spawns with vfork: the parent's return probe fires after the child exec'd
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    events = collect(backend, lambda evs: exit_of(evs, child.pid) is not None)
    kinds = [type(e) for e in about(events, child.pid)]
    assert kinds[0] is Fork
    assert Exec in kinds and kinds.index(Exec) < kinds.index(Exit)
    execs = [e for e in about(events, child.pid) if isinstance(e, Exec)]
    assert execs[0].filename == "/bin/true"
    stamps = [e.timestamp_ns for e in about(events, child.pid)]
    assert stamps == sorted(stamps)


@needs_kprobes
def test_thread_fork_and_exit(backend: KprobeBackend) -> None:
    tids: list[int] = []
    thread = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    thread.start()
    thread.join()
    tid = tids[0]

    def thread_exit_seen(evs: list[Event]) -> bool:
        return any(isinstance(e, Exit) and e.tid == tid for e in evs)

    events = collect(backend, thread_exit_seen)
    fork = next(e for e in events if isinstance(e, Fork) and e.tid == tid)
    end = next(e for e in events if isinstance(e, Exit) and e.tid == tid)
    assert (fork.pid, fork.is_thread, fork.parent_tid) == (os.getpid(), True, threading.get_native_id())
    assert (end.pid, end.is_thread, end.exit_code) == (os.getpid(), True, 0)


@needs_kprobes
def test_leader_exiting_before_its_thread_gives_the_process_exit_last(backend: KprobeBackend) -> None:
    script = "import ctypes, os, threading, time\n" \
             "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(4))).start()\n" \
             "ctypes.CDLL(None).pthread_exit(None)\n"  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", script])
    child.wait()
    events = collect(backend, lambda evs: exit_of(evs, child.pid) is not None)
    exits = [e for e in about(events, child.pid) if isinstance(e, Exit)]
    assert exits[-1].is_thread is False and exits[-1].tid == child.pid
    assert exits[-1].exit_code == child.returncode == 4
    assert all(e.is_thread for e in exits[:-1])


@needs_kprobes
def test_failed_clone_is_fork_failed(backend: KprobeBackend) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # CLONE_SIGHAND without CLONE_VM: copy_process refuses with EINVAL (kernel/fork.c)
    ret = libc.syscall(SYS_CLONE[os.uname().machine], CLONE_SIGHAND, 0, 0, 0, 0)
    assert ret == -1 and ctypes.get_errno() == 22
    me = threading.get_native_id()
    events = collect(backend, lambda evs: any(isinstance(e, ForkFailed) and e.tid == me for e in evs))
    failed = next(e for e in events if isinstance(e, ForkFailed) and e.tid == me)
    assert (failed.pid, failed.errno, failed.errno_name) == (os.getpid(), 22, "EINVAL")
    assert failed.clone_flags == CLONE_SIGHAND


@needs_kprobes
def test_return_probe_misses_are_lost_events() -> None:
    # maxactive 1: concurrent vforks (dash spawns with vfork; the parent holds the return probe's single instance
    # until the child has exec'd) exhaust it.  Whether one burst overlaps depends on the scheduler (a loaded 2-core
    # machine may run the shells one after the other): bursts go on until a miss is reported, within the deadline.
    burst = "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done"
    with KprobeBackend(BackendConfig(options=(("maxactive", "1"),))) as b:
        log = EventLog(b)
        deadline = time.monotonic() + TIMEOUT
        while not log.of(Lost):
            assert time.monotonic() < deadline, f"no missed return probe reported in {TIMEOUT:g}s of vfork bursts"
            loops = [subprocess.Popen(["sh", "-c", burst]) for _ in range(8)]
            for loop in loops:
                loop.wait()
            log.pump()
        events = log.events
    lost = [e for e in events if isinstance(e, Lost)]
    assert all(e.count and e.count > 0 for e in lost)
    assert any("forkret" in e.reason and "kprobe_profile" in e.reason for e in lost)


@needs_kprobes
def test_close_removes_probes_and_instance() -> None:
    assert TRACING is not None
    b = KprobeBackend(BackendConfig())
    group, instance = b.group, b.instance_name
    assert group in kprobe_events()
    b.close()
    assert group not in kprobe_events()
    assert instance not in os.listdir(os.path.join(TRACING, "instances"))
    b.close()  # idempotent


@needs_kprobes
def test_stale_probes_of_a_dead_owner_are_removed_at_start() -> None:
    assert TRACING is not None
    dead = kprobes.ProbeNames(4_000_000, 1)
    fd = os.open(os.path.join(TRACING, "kprobe_events"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, (kprobes.exit_probe(dead, os.uname().machine) + "\n").encode())
    os.close(fd)
    with KprobeBackend(BackendConfig()) as b:
        assert f"{dead.group}/{dead.exit}" in b.stale_removed
    assert dead.group not in kprobe_events()


@needs_kprobes
def test_sigterm_removes_probes() -> None:
    assert TRACING is not None
    script = "import os,time,sys\n" \
             "from proctap.backends.kprobe import KprobeBackend\n" \
             "from proctap.backends.base import BackendConfig\n" \
             "b = KprobeBackend(BackendConfig())\n" \
             "print(b.group, flush=True)\n" \
             "time.sleep(600)\n"  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    group = child.stdout.readline().strip()
    assert group.startswith("proctap_")
    child.terminate()
    assert child.wait() == -signal.SIGTERM
    assert group not in kprobe_events()
