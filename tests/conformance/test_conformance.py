"""One suite for every backend: each test checks a feature a backend declares, on real workloads, against the
events about the exact pids the test created.

Parametrized over the registered backends that work here (``test_backend_probe`` reports the others as skipped,
with their probe's reason); a test for a feature runs only for the backends that declare it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import textwrap
import threading
import time

import pytest
from conformance_helpers import (
    PYTHON,
    TIMEOUT,
    BackendInfo,
    Collector,
    backend_infos,
    c_helper,
    collect,
    core_pattern,
    exec_fails,
    fork_exit,
    fork_fails_by_rlimit_nproc,
    fork_fails_in_pids_cgroup,
    in_cgroup,
    kill_and_reap,
    own_comm,
    pids_cgroup_root,
    reap,
    run_python,
    segfault_script,
    v2_cgroup,
)

import proctap
from proctap.backends import BackendConfig, Feature, backend_class
from proctap.events import (
    Comm,
    Coredump,
    EventKind,
    Exec,
    ExecFailed,
    Exit,
    Fork,
    ForkFailed,
    Gid,
    Lost,
    Namespaces,
    Ptrace,
    Sid,
    Uid,
)
from proctap.linux import procfs
from proctap.linux.cgroups import read_cgroup, under
from proctap.where import AUDIT_UNSET, container_of, decode_tty_nr

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs as root (scripts/test checks it)")

INFOS = backend_infos()
AVAILABLE = [i for i in INFOS if i.availability.ok]


def requires(*features: Feature) -> pytest.MarkDecorator:
    return pytest.mark.requires(*features)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.function.__name__ == "test_backend_probe":
        params = [
            pytest.param(i, id=i.name, marks=() if i.availability.ok else pytest.mark.skip(
                reason=f"{i.name} unavailable here: {i.availability.reason}"))
            for i in INFOS
        ]  # fmt: skip
        metafunc.parametrize("backend", params)
        return
    needed: set[Feature] = set()
    for mark in metafunc.definition.iter_markers("requires"):
        needed.update(mark.args)
    params = []
    for info in AVAILABLE:
        if not needed <= info.features:
            continue
        reason = KNOWN_LIMITS.get((metafunc.function.__name__, info.name))
        marks = pytest.mark.xfail(reason=reason, strict=True) if reason else ()
        params.append(pytest.param(info.name, id=info.name, marks=marks))
    metafunc.parametrize("backend", params)


# Declared features a backend gets wrong in a corner the kernel interface does not show; strict xfail, so a fix
# makes the suite say so.  Keep the reason exact: it goes into the backend's documentation.
KNOWN_LIMITS: dict[tuple[str, str], str] = {}


@pytest.fixture
def log(backend: str) -> Collector:
    with collect(backend) as c:
        yield c


def features_of(backend: str) -> frozenset[Feature]:
    return next(i.features for i in INFOS if i.name == backend)


# -- the backend itself ---------------------------------------------------------------------------------------------
def test_backend_probe(backend: BackendInfo) -> None:
    assert backend.availability.ok
    assert backend.features <= set(Feature)
    with proctap.watch(backend=backend.name) as w:
        assert w.backend_name == backend.name
        assert w.read(timeout=0) is not None


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _tracefs_instances() -> set[str]:
    try:
        return {n for n in os.listdir("/sys/kernel/tracing/instances") if n.startswith(f"proctap-{os.getpid()}-")}
    except OSError:
        return set()


@requires()
def test_close_releases_everything(backend: str) -> None:
    fds, instances = _open_fds(), _tracefs_instances()
    w = proctap.watch(backend=backend)
    fork_exit(0)
    w.read(timeout=0.1)
    w.close()
    w.close()
    assert w.read(timeout=0) == []
    assert _open_fds() == fds
    assert _tracefs_instances() == instances


@requires(Feature.FORK)
def test_fileno_becomes_readable_and_asyncio_works(backend: str) -> None:
    import asyncio
    import select

    with proctap.watch(events="fork", backend=backend) as w:
        while w.read(timeout=0):  # whatever the machine did so far
            pass
        gate_r, gate_w = os.pipe()
        child = run_python("import sys; sys.stdin.read()", stdin=gate_r)
        os.close(gate_r)
        try:
            ready, _, _ = select.select([w.fileno()], [], [], TIMEOUT)
            assert ready, "fileno() did not become readable after a fork"
            log = Collector(w)
            log.wait_until(lambda: bool(log.forks_of(child.pid)), "the fork", [child.pid])
        finally:
            os.close(gate_w)
            reap(child)

    async def first_fork_of_child() -> int:
        async with proctap.awatch(events="fork", backend=backend) as aw:
            proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE)
            async for ev in aw:
                if isinstance(ev, Fork) and ev.pid == proc.pid:
                    assert proc.stdin is not None
                    proc.stdin.close()
                    await proc.wait()
                    return ev.parent_pid
        raise AssertionError("unreachable")

    assert asyncio.run(asyncio.wait_for(first_fork_of_child(), TIMEOUT)) == os.getpid()


# -- fork / exit ------------------------------------------------------------------------------------------------------
@requires(Feature.FORK, Feature.EXIT)
def test_fork_and_exit_of_processes(log: Collector, backend: str) -> None:
    codes = [0, 1, 3, 255]
    pids = [fork_exit(code, log) for code in codes]
    exits = log.wait_exit(*pids)
    for pid, ex in zip(pids, exits, strict=True):
        (fork,) = log.forks_of(pid)
        assert fork.parent_pid == os.getpid() and fork.tid == pid and not fork.is_thread
        assert fork.parent_tid in (None, threading.get_native_id())
        assert ex.tid == pid and not ex.is_thread
        assert len([e for e in log.about([pid], Exit) if not e.is_thread]) == 1
        if fork.key is not None and ex.key is not None:
            assert ex.key == fork.key
        if ex.lifetime_ns is not None:
            assert 0 <= ex.lifetime_ns < TIMEOUT * 1e9
        assert fork.timestamp_ns <= ex.timestamp_ns
        assert abs(fork.wall_time - time.time()) < 60 + TIMEOUT
        if ex.parent_pid is not None:
            assert ex.parent_pid == os.getpid()
    if Feature.EXIT_STATUS in features_of(backend):
        assert [(e.exit_code, e.signal, e.status) for e in exits] == [(c, None, c << 8) for c in codes]


@requires(Feature.FORK, Feature.EXIT)
def test_every_fork_comes_before_its_exit_in_a_storm(log: Collector, backend: str) -> None:
    """Children on both CPUs, born and dead within microseconds: events come in causal order, none missing."""
    n = 300
    gate_r, gate_w = os.pipe()
    loader = os.fork()
    if loader == 0:
        os.close(gate_w)
        for _ in range(n):
            if os.fork() == 0:
                os._exit(0)
            os.wait()
        os.read(gate_r, 1)  # until the test saw the loader (a sampling backend needs it alive at a scan)
        os._exit(0)
    os.close(gate_r)
    try:
        log.wait_until(lambda: bool(log.forks_of(loader)), "the loader's fork", [loader])
    finally:
        os.close(gate_w)
        os.waitpid(loader, 0)
    log.wait_exit(loader)
    children = {e.pid for e in log.of(Fork) if e.parent_pid == loader and not e.is_thread}
    log.wait_until(lambda: all(log.process_exit(pid) is not None for pid in children), "the children's exits")
    # A machine too busy for the default buffer may drop some: then the loss must be reported, and counted where the
    # backend counts exactly (the loss tests force that case).
    missing = n - len(children)
    if missing:
        losses = log.of(Lost)
        assert losses, f"{missing} of the {n} forks are missing and no Lost event says so"
        if Feature.LOSS_EXACT in features_of(backend):
            assert log.lost() >= missing, f"{missing} forks missing, Lost counts only {log.lost()}"
    position = {id(e): i for i, e in enumerate(log.events)}
    for pid in children:
        fork = next(e for e in log.events if isinstance(e, Fork) and e.pid == pid)
        ex = log.process_exit(pid)
        assert ex is not None and position[id(fork)] < position[id(ex)] and fork.timestamp_ns <= ex.timestamp_ns
        assert ex.parent_pid in (None, loader)


@requires(Feature.FORK)
def test_monotonic_timestamps(log: Collector) -> None:
    before = time.monotonic_ns()
    pid = fork_exit(0, log)
    after = time.monotonic_ns()
    (fork,) = log.forks_of(pid)
    assert before <= fork.timestamp_ns <= after, "timestamps are CLOCK_MONOTONIC"


@requires(Feature.FORK, Feature.EXIT)
def test_pid_filter_follows_the_subtree(backend: str) -> None:
    gate_r, gate_w = os.pipe()
    hold_r, hold_w = os.pipe()  # the grandchild lives until the test saw its fork (for sampling backends)
    script = (
        "import os, sys\n"
        "os.read(0, 1)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.read(int(sys.argv[1]), 1)\n"
        "    os._exit(4)\n"
        "os.waitpid(pid, 0)\n"
        "sys.exit(2)\n"
    )
    p = run_python(script, str(hold_r), stdin=gate_r, pass_fds=(hold_r,))
    os.close(hold_r)
    try:
        with collect(backend, pid=p.pid) as log:
            other = fork_exit(0)
            os.write(gate_w, b"g")
            log.wait_until(lambda: any(e.parent_pid == p.pid for e in log.of(Fork)), "the grandchild", [p.pid])
            os.close(hold_w)
            hold_w = -1
            (ex,) = log.wait_exit(p.pid, forked=False)  # p started before the watcher: no Fork of it
            reap(p)
    finally:
        for fd in (gate_r, gate_w, hold_w):
            if fd >= 0:
                os.close(fd)
    assert other not in {e.pid for e in log.events}
    grandchildren = [e for e in log.of(Fork) if e.parent_pid == p.pid and not e.is_thread]
    assert len(grandchildren) == 1
    log.wait_exit(grandchildren[0].pid)
    if Feature.EXIT_STATUS in features_of(backend):
        assert log.process_exit(grandchildren[0].pid).exit_code == 4  # type: ignore[union-attr]
        assert ex.exit_code == 2


# -- threads ----------------------------------------------------------------------------------------------------------
THREADS_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    first, second = threading.Event(), threading.Event()
    ts = [threading.Thread(target=first.wait) for _ in range(3)]
    live = [threading.Thread(target=second.wait) for _ in range(2)]
    [t.start() for t in ts + live]
    sys.stdin.readline()          # the test saw the five thread forks
    first.set(); [t.join() for t in ts]
    sys.stdin.readline()          # the test saw those three thread exits
    os._exit(5)                   # exit_group with two live threads
    """
)


@requires(Feature.THREADS, Feature.EXIT)
def test_threads_and_the_process_exit_after_them(log: Collector, backend: str) -> None:
    # gated steps, so that backends which sample (the /proc scanner) see every thread too
    p = run_python(THREADS_SCRIPT, stdin=__import__("subprocess").PIPE)
    assert p.stdin is not None
    try:
        log.wait_until(lambda: len([e for e in log.about([p.pid], Fork) if e.is_thread]) == 5, "5 threads", [p.pid])
        thread_forks = [e for e in log.about([p.pid], Fork) if e.is_thread]
        p.stdin.write(b"\n")
        p.stdin.flush()
        log.wait_until(lambda: len([e for e in log.about([p.pid], Exit) if e.is_thread]) >= 3, "3 exits", [p.pid])
        p.stdin.write(b"\n")
        p.stdin.flush()
        (ex,) = log.wait_exit(p.pid)
    finally:
        p.stdin.close()
        reap(p)
    assert all(e.pid == p.pid and e.tid != p.pid and e.parent_pid == p.pid for e in thread_forks)
    assert all(e.parent_tid in (None, p.pid) for e in thread_forks)
    thread_exits = [e for e in log.about([p.pid], Exit) if e.is_thread]
    assert {e.tid for e in thread_exits} == {e.tid for e in thread_forks}
    exits = log.about([p.pid], Exit)
    assert exits[-1] is ex and ex.tid == p.pid, "the process exit comes after its threads, with the leader's tid"
    if Feature.EXIT_STATUS in features_of(backend):
        assert ex.exit_code == 5
        # the two threads killed by the exit_group carry the group's status too
        killed = [e for e in thread_exits if e.tid not in {x.tid for x in thread_exits[:3]}]
        assert len(killed) == 2 and all(e.exit_code == 5 for e in killed)


@requires(Feature.THREADS, Feature.EXIT, Feature.EXIT_STATUS)
def test_leader_ends_before_its_threads(log: Collector) -> None:
    p = __import__("subprocess").Popen([c_helper(), "leader-first", "6"])
    (ex,) = log.wait_exit(p.pid)
    assert reap(p) == 6, "the wait status is the group exit code (kernel/exit.c wait_task_zombie)"
    assert ex.exit_code == 6 and ex.tid == p.pid and not ex.is_thread
    thread_exits = [e for e in log.about([p.pid], Exit) if e.is_thread]
    assert len(thread_exits) == 1 and thread_exits[0].tid != p.pid


@requires(Feature.THREADS, Feature.EXIT, Feature.EXIT_STATUS)
def test_thread_exit_code_is_the_threads_own(log: Collector) -> None:
    p = __import__("subprocess").Popen([c_helper(), "thread-exit", "3"])
    (ex,) = log.wait_exit(p.pid)
    assert reap(p) == 3
    assert ex.exit_code == 3
    (thread_exit,) = [e for e in log.about([p.pid], Exit) if e.is_thread]
    assert thread_exit.exit_code == 99 and thread_exit.signal is None


@requires(Feature.THREADS, Feature.EXEC, Feature.EXIT, Feature.EXIT_STATUS)
def test_exec_from_a_thread_keeps_the_process_alive(log: Collector) -> None:
    """A non-leader thread execs: de_thread() kills the other threads (SIGKILL in their exit paths), the exec'd
    program then exits 0: the process status is 0, not a signal."""
    script = (
        "import os, threading, time\n"
        "threading.Thread(target=os.execv, args=('/bin/sh', ['sh', '-c', 'exit 0'])).start()\n"
        "time.sleep(30)"
    )
    p = run_python(script)
    (ex,) = log.wait_exit(p.pid)
    reap(p)
    exec_ = log.about([p.pid], Exec)[-1]  # the interpreter's own exec, then the thread's
    assert ex.exit_code == 0 and ex.signal is None and ex.timestamp_ns > exec_.timestamp_ns
    log.pump(timeout=0.2)
    assert len([e for e in log.about([p.pid], Exit) if not e.is_thread]) == 1, "one process exit, after the exec"


# -- exit status ------------------------------------------------------------------------------------------------------
@requires(Feature.EXIT, Feature.EXIT_STATUS)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_killed_by_a_signal(log: Collector, sig: int) -> None:
    # default dispositions for all (Python handles SIGINT itself), then say "up": no start-up race
    script = f"import signal, time\nsignal.signal({int(sig)}, signal.SIG_DFL)\nprint('up', flush=True)\ntime.sleep(30)"
    if sig == signal.SIGKILL:
        script = "import time\nprint('up', flush=True)\ntime.sleep(30)"
    p = run_python(script, stdout=__import__("subprocess").PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"up\n"
    p.send_signal(sig)
    (ex,) = log.wait_exit(p.pid)
    reap(p)
    assert ex.signal == sig and ex.exit_code is None and ex.signal_name == signal.Signals(sig).name
    assert ex.status is not None and ex.status & 0x7F == sig


@requires(Feature.EXIT, Feature.EXIT_STATUS)
def test_multithreaded_process_killed(log: Collector) -> None:
    script = (
        "import threading, time\n"
        "for _ in range(3): threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('up', flush=True)\ntime.sleep(30)"
    )
    p = run_python(script, stdout=__import__("subprocess").PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"up\n"
    p.send_signal(signal.SIGTERM)
    (ex,) = log.wait_exit(p.pid)
    reap(p)
    assert ex.signal == signal.SIGTERM


@requires(Feature.EXIT, Feature.EXIT_STATUS)
def test_handled_signal_then_normal_exit(log: Collector) -> None:
    """A signal that could kill but is handled does not become the status of a later exit."""
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(4))\n"
        "print('up', flush=True)\ntime.sleep(30)"
    )
    p = run_python(script, stdout=__import__("subprocess").PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"up\n"
    p.send_signal(signal.SIGTERM)
    (ex,) = log.wait_exit(p.pid)
    reap(p)
    assert ex.exit_code == 4 and ex.signal is None


@requires(Feature.EXIT, Feature.EXIT_STATUS)
def test_segfault_without_core(log: Collector, tmp_path) -> None:
    p = run_python(segfault_script(dump_core=False), cwd=tmp_path)
    (ex,) = log.wait_exit(p.pid)
    reap(p)
    assert ex.signal == signal.SIGSEGV and ex.exit_code is None and not ex.core_dumped


@requires(Feature.EXIT, Feature.CORE_DUMPED)
def test_segfault_with_core_dump(log: Collector, backend: str, tmp_path) -> None:
    pattern = core_pattern()
    p = run_python(segfault_script(dump_core=True), cwd=tmp_path)
    (ex,) = log.wait_exit(p.pid)
    reap(p)
    assert ex.signal == signal.SIGSEGV
    # A plain pattern writes the core into the cwd (the temporary directory, removed afterwards); a pipe pattern
    # hands it to a helper, and the kernel still sets the core bit when the helper took it.
    if not pattern.startswith("|"):
        assert ex.core_dumped and ex.status == signal.SIGSEGV | 0x80
        assert any(tmp_path.iterdir()), "the core file was written"
    if Feature.COREDUMP in features_of(backend):
        log.wait_until(lambda: bool(log.about([p.pid], Coredump)), "the Coredump event", [p.pid])


# -- exec -------------------------------------------------------------------------------------------------------------
AWKWARD_ARGV = [b"", b"a b", b"  leading and trailing  ", b"\xff\xfe-not-utf8", b"tab\there", b"", "ü-é".encode()]


@requires(Feature.EXEC)
@pytest.mark.parametrize("extra", [[], AWKWARD_ARGV, [b"x" * 100_000, b"y" * 5000]], ids=["plain", "awkward", "long"])
def test_exec_filename_and_argv(log: Collector, backend: str, extra: list[bytes]) -> None:
    # the program waits on stdin, so /proc still has its argv when a backend reads it from there
    args = [PYTHON.encode(), b"-c", b"import sys; sys.stdin.read()", *extra]
    r, w = os.pipe()
    p = __import__("subprocess").Popen(args, stdin=r)
    os.close(r)
    try:
        ex = log.wait_exec(p.pid)
    finally:
        os.close(w)
        reap(p)
    feats = features_of(backend)
    assert ex.pid == p.pid and ex.tid == p.pid
    assert ex.filename is not None and os.path.realpath(ex.filename) == PYTHON
    if Feature.EXEC_FILENAME_KERNEL in feats:
        assert ex.filename_from == "kernel"
    if Feature.ARGV_KERNEL in feats:
        assert ex.argv_from == "kernel" and ex.argc == len(args) and ex.argv is not None
        raw = [os.fsencode(a) for a in ex.argv]
        if ex.argv_truncated:
            last = len(raw) - 1
            assert 0 <= last < len(args) and raw[:last] == args[:last] and args[last].startswith(raw[last])
        else:
            assert raw == args
    else:
        assert ex.argv_from == "proc", "argv comes from /proc while the process lives"
        assert ex.argv is not None and [os.fsencode(a) for a in ex.argv] == args and ex.argc == len(args)


@requires(Feature.EXEC, Feature.ARGV_KERNEL)
def test_argv_captured_for_a_process_already_gone(log: Collector) -> None:
    args = ["/bin/sh", "-c", "exit 0", "", "a b"]
    p = __import__("subprocess").Popen(args)
    reap(p)
    ex = log.wait_exec(p.pid)
    assert ex.argv == tuple(args) and ex.argv_from == "kernel"


# -- failed forks -----------------------------------------------------------------------------------------------------
@requires(Feature.FORK_FAILED)
@pytest.mark.parametrize("how", ["rlimit_nproc", "pids_cgroup"])
def test_fork_failed(log: Collector, how: str) -> None:
    if how == "pids_cgroup":
        root = pids_cgroup_root()
        # without a pids controller the RLIMIT_NPROC way still exercises the same kernel path (copy_process fails)
        child = fork_fails_in_pids_cgroup(root) if root is not None else fork_fails_by_rlimit_nproc()
    else:
        child = fork_fails_by_rlimit_nproc()
    log.wait_until(lambda: bool(log.about([child], ForkFailed)), "ForkFailed", [child])
    (failed,) = log.about([child], ForkFailed)
    assert failed.errno == errno.EAGAIN and failed.errno_name == "EAGAIN"
    assert failed.tid == child and failed.syscall in (None, "clone", "clone3", "fork", "vfork")
    assert not [e for e in log.of(Fork) if e.parent_pid == child], "no task was created"


# -- failed execs -----------------------------------------------------------------------------------------------------
@requires(Feature.EXEC_FAILED)
@pytest.mark.parametrize("how", ["enoent", "eacces", "execveat_eacces"])
def test_exec_failed(log: Collector, backend: str, how: str, tmp_path) -> None:
    """A child exec's a path that does not exist (ENOENT), a file without the execute bit (EACCES), or that file
    through a descriptor (fexecve: execveat with an empty name); the ExecFailed names the caller, the errno and,
    where declared, what it tried."""
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(0o644)
    args = ["tried", "", "a b", "\u00fc"]
    fd = None
    path: str | int
    if how == "enoent":
        path = filename = str(tmp_path / "does-not-exist")
        expected, syscalls = errno.ENOENT, ("execve",)
    elif how == "eacces":
        path = filename = str(plain)
        expected, syscalls = errno.EACCES, ("execve",)
    else:
        path = fd = os.open(plain, os.O_RDONLY)
        filename, expected, syscalls = "", errno.EACCES, ("execveat",)
    try:
        child, got = exec_fails(path, args)
    finally:
        if fd is not None:
            os.close(fd)
    assert got == expected, f"the exec failed with {errno.errorcode.get(got, got)}, not {errno.errorcode[expected]}"
    log.wait_until(lambda: bool(log.about([child], ExecFailed)), "ExecFailed", [child])
    (failed,) = log.about([child], ExecFailed)
    assert isinstance(failed, ExecFailed)
    assert failed.pid == child and failed.tid == child
    assert failed.errno == expected and failed.errno_name == errno.errorcode[expected]
    assert failed.syscall in (None, *syscalls)
    if Feature.EXEC_FAILED_ARGS in features_of(backend):
        assert failed.filename == filename
        assert failed.argv == tuple(args) and failed.argc == len(args) and not failed.argv_truncated
        assert failed.comm == own_comm()[:15], "the caller's comm, taken at the failure"
    else:
        assert failed.filename is None and failed.argv is None, "never guessed"
        assert failed.comm in (None, own_comm()[:15])
    assert not log.about([child], Exec), "the exec did not happen"


@requires(Feature.EXEC_FAILED, Feature.EXEC)
def test_successful_exec_gives_no_exec_failed(log: Collector) -> None:
    p = run_python("pass")
    reap(p)
    log.wait_exec(p.pid)
    log.wait_exit(p.pid)
    assert not log.about([p.pid], ExecFailed)


# -- comm, credentials, session, ptrace -------------------------------------------------------------------------------
def _child(body: callable) -> int:  # type: ignore[valid-type]
    child = os.fork()
    if child == 0:
        try:
            body()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    return child


@requires(Feature.COMM)
def test_comm_change(log: Collector) -> None:
    def rename() -> None:
        with open("/proc/self/comm", "w") as f:
            f.write("proctap-renamed")

    child = _child(rename)
    log.wait_until(lambda: bool(log.about([child], Comm)), "Comm", [child])
    assert [e.comm for e in log.about([child], Comm)] == ["proctap-renamed"]


@requires(Feature.CREDENTIALS)
def test_uid_gid_changes(log: Collector) -> None:
    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    child = _child(drop)
    log.wait_until(lambda: bool(log.about([child], Uid)) and bool(log.about([child], Gid)), "Uid and Gid", [child])
    assert [(e.rgid, e.egid) for e in log.about([child], Gid)] == [(65534, 65534)]
    assert [(e.ruid, e.euid) for e in log.about([child], Uid)] == [(65534, 65534)]


@requires(Feature.SID)
def test_new_session(log: Collector) -> None:
    child = _child(os.setsid)
    log.wait_until(lambda: bool(log.about([child], Sid)), "Sid", [child])
    assert [e.tid for e in log.about([child], Sid)] == [child]


@requires(Feature.PTRACE)
def test_ptrace_attach_and_detach(log: Collector) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    p = run_python("import time\ntime.sleep(30)")
    try:
        assert libc.ptrace(16, p.pid, None, None) == 0  # PTRACE_ATTACH
        os.waitpid(p.pid, 0)
        assert libc.ptrace(17, p.pid, None, None) == 0  # PTRACE_DETACH
        log.wait_until(lambda: len(log.about([p.pid], Ptrace)) >= 2, "attach and detach", [p.pid])
    finally:
        kill_and_reap(p)
    attach, detach = log.about([p.pid], Ptrace)[:2]
    assert attach.attached and attach.tracer_pid == os.getpid()
    assert not detach.attached


# -- loss -------------------------------------------------------------------------------------------------------------
@requires(Feature.FORK, Feature.EXIT)
def _one_task_per_cpu() -> list[int]:
    """Run (and reap) one short task pinned to each CPU we may use; their pids."""
    pids = []
    for cpu in sorted(os.sched_getaffinity(0)):
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {cpu})
            os._exit(0)
        os.waitpid(pid, 0)
        pids.append(pid)
    return pids


def test_loss_is_never_silent(backend: str) -> None:
    """A tiny buffer and a reader that does not read during a fork storm: whatever of our children's events is
    missing is covered by Lost events (with counts that add up, for backends that count exactly)."""
    n = 300
    with collect(backend, buffer_bytes=4096) as log:
        if backend == "netlink":
            # netlink counts a CPU's losses from its first event received (the sequence starts at boot, see
            # docs/netlink.md): give every CPU one before the storm, so that all of it is counted exactly
            log.wait_exit(*_one_task_per_cpu())
        gate_r, gate_w = os.pipe()
        loader = os.fork()
        if loader == 0:
            os.read(gate_r, 1)
            for _ in range(n):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
            os._exit(0)
        os.write(gate_w, b"g")
        os.waitpid(loader, 0)
        os.close(gate_r)
        os.close(gate_w)
        log.drain()  # the overflowed buffer, so that later events have room
        # a loss shows when later events arrive on the same CPU (netlink sequence gaps): make some on every CPU
        _one_task_per_cpu()
        exact = Feature.LOSS_EXACT in features_of(backend)

        def missing() -> int:
            forks = {e.pid for e in log.of(Fork) if e.parent_pid == loader and not e.is_thread}
            exits = {e.pid for e in log.of(Exit) if not e.is_thread and (e.pid in forks or e.parent_pid == loader)}
            return 2 * n - len(forks) - len(exits)

        def explained() -> bool:
            losses = log.of(Lost)
            if exact:
                return sum(e.count or 0 for e in losses) >= missing()
            return bool(losses) or missing() == 0

        log.wait_until(explained, "Lost events that account for the missing events", [loader])
    children_forks = {e.pid for e in log.of(Fork) if e.parent_pid == loader and not e.is_thread}
    children_exits = {
        e.pid for e in log.of(Exit) if not e.is_thread and (e.pid in children_forks or e.parent_pid == loader)
    }
    missing = 2 * n - len(children_forks) - len(children_exits)
    losses = log.of(Lost)
    assert missing > 0, "a 4 KiB buffer must overflow during the storm (else this test proves nothing)"
    assert losses, f"{missing} events about our children are missing and no Lost event says so"
    if exact:
        assert all(e.count is not None for e in losses)
        assert sum(e.count for e in losses) >= missing  # type: ignore[misc]


# -- the process cache ------------------------------------------------------------------------------------------------
@requires(Feature.FORK, Feature.EXEC, Feature.EXIT)
def test_exec_and_exit_carry_their_process(log: Collector, backend: str) -> None:
    """event.process on every backend: the exec'd program and its arguments, where each came from as the backend
    declares, the parent, an exec_id; the Exit carries the same process, now ended."""
    args = [PYTHON, "-c", "import sys; sys.stdin.read()", "x y"]
    r, w = os.pipe()
    p = __import__("subprocess").Popen(args, stdin=r)
    os.close(r)
    try:
        ex = log.wait_exec(p.pid)
    finally:
        os.close(w)
        reap(p)
    (ended,) = log.wait_exit(p.pid)
    feats = features_of(backend)
    proc = ex.process
    assert proc is not None and proc.pid == p.pid and proc.parent_pid == os.getpid()
    assert proc.exe == ex.filename and proc.argv == ex.argv == tuple(args) and proc.comm == ex.comm
    assert proc.exe_from == ("kernel" if Feature.EXEC_FILENAME_KERNEL in feats else "proc")
    assert proc.argv_from == ("kernel" if Feature.ARGV_KERNEL in feats else "proc")
    if proc.start_ns is not None:
        assert proc.exec_id == f"{p.pid}@{proc.start_ns}:{ex.timestamp_ns}"
    assert proc.exit is None
    after = ended.process
    assert after is not None and after.exit is ended and after.key == proc.key and after.argv == proc.argv


@requires(Feature.FORK)
def test_snapshot_then_live_stream(backend: str) -> None:
    """watch(snapshot=True) on every backend: a process running before the watcher comes first, once, as Existing;
    one forked afterwards comes as a Fork and not as Existing."""
    before = __import__("subprocess").Popen(["sleep", "30"])
    try:
        with collect(backend, snapshot=True) as log:
            after = fork_exit(0, log)
            existing = [e for e in log.events if e.kind.value == "existing"]
            assert [e.pid for e in existing].count(before.pid) == 1
            assert after not in {e.pid for e in existing}
            assert log.events[: len(existing)] == existing
            (mine,) = [e for e in existing if e.pid == before.pid]
            assert mine.reason == "snapshot" and mine.argv == ("sleep", "30") and mine.parent_pid == os.getpid()
    finally:
        before.kill()
        reap(before)


# -- who and where (issue 12) ---------------------------------------------------------------------------------------
def _origin(backend: str, feature: Feature) -> str:
    return "kernel" if feature in features_of(backend) else "proc"


def _namespaces(pid: int | str) -> Namespaces:
    return Namespaces(*(procfs.read_namespace(pid, kind) for kind in Namespaces._fields))  # type: ignore[arg-type]


def _cgroup(backend: str, pid: int | str) -> str | None:
    """The v2 cgroup path /proc shows, as the backend reports it: where the v2 hierarchy was never mounted, /proc has
    no ``0::`` line but the kernel (bpf) still names the default hierarchy's root."""
    found = read_cgroup(pid)
    return found if found is not None or Feature.CONTEXT_KERNEL not in features_of(backend) else "/"


def _audit(pid: int | str, name: str) -> int | None:
    value = procfs.read_id_file(pid, name)  # type: ignore[arg-type]
    return None if value == AUDIT_UNSET else value


@requires(Feature.EXEC)
def test_exec_carries_its_context(backend: str, tmp_path) -> None:
    """Watcher(context=True): an Exec's context (its Where, and the process's) is what /proc says of the process:
    cgroup, container, login uid and session, terminal, namespaces, the directory it was started in; captured by the
    kernel where the backend declares CONTEXT_KERNEL / CWD_KERNEL, else read from /proc."""
    work = tmp_path / "work dir"
    work.mkdir()
    with collect(backend, context=True) as log:
        r, w = os.pipe()
        p = __import__("subprocess").Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=r, cwd=work)
        os.close(r)
        try:
            ex = log.wait_exec(p.pid)
            stat = procfs.read_stat(p.pid)
            want = (_cgroup(backend, p.pid), _namespaces(p.pid), _audit(p.pid, "loginuid"), _audit(p.pid, "sessionid"))
        finally:
            os.close(w)
            reap(p)
    assert isinstance(ex, Exec) and stat is not None
    where, proc = ex.where, ex.process
    assert where is not None and proc is not None and proc.where is where
    assert where.origin == _origin(backend, Feature.CONTEXT_KERNEL) and proc.where_from == where.origin
    assert proc.cwd == where.cwd == os.path.realpath(work)
    assert proc.cwd_from == _origin(backend, Feature.CWD_KERNEL)
    assert (where.cgroup, where.namespaces, where.loginuid, where.sessionid) == want
    assert where.tty == decode_tty_nr(stat.tty_nr) and where.ns_pid is None
    assert where.container == container_of(where.cgroup)


@requires(Feature.FORK)
def test_a_forked_child_has_its_context(backend: str) -> None:
    """A Fork carries the child's context from the kernel (CONTEXT_KERNEL; its cwd is its parent's), else the
    child has its parent's (``inherited``); either way the child's process knows its namespaces and cwd."""
    with collect(backend, context=True) as log:
        pid = fork_exit(0, log)
    fork = log.forks_of(pid)[-1]
    proc = fork.process
    assert proc is not None and proc.where is not None
    if Feature.CONTEXT_KERNEL in features_of(backend):
        assert fork.where is not None and fork.where.origin == "kernel" and fork.where.cwd is None
        assert proc.where_from == "kernel"
    else:
        assert fork.where is None and proc.where_from == "inherited"
    assert proc.where.namespaces == _namespaces("self") and proc.cwd == os.getcwd() and proc.cwd_from == "inherited"
    assert proc.where.cgroup == _cgroup(backend, "self")


@requires(Feature.EXEC, Feature.CWD_KERNEL, Feature.CONTEXT_KERNEL)
def test_context_captured_for_a_process_already_gone(backend: str, tmp_path) -> None:
    """Captured in the kernel: a process that exec'd and exited before anyone could read /proc still has its cwd
    (as it sees it: from its root directory), namespaces and cgroup."""
    with collect(backend, context=True) as log:
        p = __import__("subprocess").Popen(["/bin/true"], cwd=tmp_path)
        reap(p)
        ex = log.wait_exec(p.pid)
    assert isinstance(ex, Exec) and ex.where is not None and ex.where.origin == "kernel"
    assert ex.where.cwd == os.path.realpath(tmp_path)
    assert ex.where.namespaces == _namespaces("self") and ex.where.cgroup == _cgroup(backend, "self")


@requires(Feature.EXEC, Feature.CONTEXT_FILTER_KERNEL)
def test_context_filters_run_in_the_kernel(backend: str) -> None:
    """The backend alone (the watcher filters exactly anyway) delivers no exec of another uid when given ``uid``,
    of another login uid when given ``loginuid``, and none from outside the cgroup when given ``cgroup`` (that
    cgroup and below)."""
    subprocess = __import__("subprocess")
    cls = backend_class(backend)
    config = BackendConfig(events=frozenset({EventKind.EXEC}), context=True, uid=65534)
    with contextlib.closing(cls(config)) as b:
        log = Collector(b)
        root = subprocess.Popen(["/bin/true"])
        nobody = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/true"])
        for p in (root, nobody):
            reap(p)
        log.wait_until(lambda: any(isinstance(e, Exec) and e.pid == nobody.pid for e in log.events),
                       "the exec as nobody", [nobody.pid])  # fmt: skip
        log.during(0.2)
    execs = [e for e in log.events if isinstance(e, Exec)]
    assert all(e.uid == 65534 for e in execs) and root.pid not in {e.pid for e in execs}
    config = BackendConfig(events=frozenset({EventKind.EXEC}), context=True, loginuid=4321)
    with contextlib.closing(cls(config)) as b:
        log = Collector(b)
        unset = subprocess.Popen(["/bin/true"])  # (the suite's loginuid is unset, or another: never 4321)
        login = subprocess.Popen(["sh", "-c", "echo 4321 > /proc/self/loginuid && exec /bin/true"])
        for p in (unset, login):
            reap(p)
        log.wait_until(lambda: any(isinstance(e, Exec) and e.pid == login.pid and e.argv == ("/bin/true",)
                                   for e in log.events), "the exec of the login", [login.pid])  # fmt: skip
        log.during(0.2)
    execs = [e for e in log.events if isinstance(e, Exec)]
    assert all(e.where is not None and e.where.loginuid == 4321 for e in execs)
    assert unset.pid not in {e.pid for e in execs}
    if _audit("self", "loginuid") is None:  # 4294967295 (never logged in) does not fit a BPF immediate
        config = BackendConfig(events=frozenset({EventKind.EXEC}), context=True, loginuid=AUDIT_UNSET)
        with contextlib.closing(cls(config)) as b:
            log = Collector(b)
            unset = subprocess.Popen(["/bin/true"])
            login = subprocess.Popen(["sh", "-c", "echo 4321 > /proc/self/loginuid && exec /bin/true"])
            for p in (unset, login):
                reap(p)
            log.wait_until(lambda: any(isinstance(e, Exec) and e.pid == unset.pid for e in log.events),
                           "the exec outside any login", [unset.pid])  # fmt: skip
            log.during(0.2)
        execs = [e for e in log.events if isinstance(e, Exec)]
        assert all(e.where is not None and e.where.loginuid is None for e in execs)
        assert not [e for e in execs if e.pid == login.pid and e.argv == ("/bin/true",)]  # (its sh ran before)
    with v2_cgroup(f"proctap-conformance-{os.getpid()}") as made:
        if made is None:
            return  # no cgroup2 mount here (a VM's minimal init): the uid filter was checked
        directory, path = made
        config = BackendConfig(events=frozenset({EventKind.EXEC}), context=True, cgroup=path)
        with contextlib.closing(cls(config)) as b:
            log = Collector(b)
            inside = in_cgroup(directory, ["/bin/true"])
            outside = subprocess.Popen(["/bin/true"])
            for p in (inside, outside):
                reap(p)
            log.wait_until(lambda: any(isinstance(e, Exec) and e.pid == inside.pid and e.argv == ("/bin/true",)
                                       for e in log.events), "the exec in the cgroup", [inside.pid])  # fmt: skip
            log.during(0.2)
        execs = [e for e in log.events if isinstance(e, Exec)]
        assert outside.pid not in {e.pid for e in execs}
        assert all(e.where is not None and under(e.where.cgroup, path) for e in execs)
