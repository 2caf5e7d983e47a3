"""Workloads and event collection for the backend conformance suite.

Self-contained: only the standard library and proctap; the C helper is compiled with gcc lazily, into a temporary
directory, by the first test that needs it.  Events are collected with tests/eventlog.py, whose waits are bounded
by ``PROCTAP_TEST_TIMEOUT`` seconds (default 30; raise it under slow emulation).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import proctap
from eventlog import TIMEOUT
from eventlog import EventLog as Collector
from proctap.backends import BACKENDS, Availability, Feature, backend_class
from proctap.errors import BackendUnavailable

__all__ = ["TIMEOUT", "Collector"]  # re-exported for the suite

PYTHON = os.path.realpath(sys.executable)


# -- which backends -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendInfo:
    name: str
    availability: Availability
    features: frozenset[Feature]


def backend_infos() -> list[BackendInfo]:
    """Every registered backend with whether it works here and what it declares."""
    out = []
    for name in BACKENDS:
        try:
            cls = backend_class(name)
        except BackendUnavailable as exc:
            out.append(BackendInfo(name, Availability(False, str(exc)), frozenset()))
            continue
        try:
            availability = cls.probe()
        except Exception as exc:  # a probe must not raise; report it as the reason rather than hide the backend
            availability = Availability(False, f"probe() raised {exc!r}")
        out.append(BackendInfo(name, availability, frozenset(cls.features)))
    return out


# -- collecting events --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def collect(backend: str, **kwargs: object) -> Iterator[Collector]:
    """A watcher on ``backend`` and the log of what it delivers (tests/eventlog.py: the tests' one collector)."""
    with proctap.watch(backend=backend, **kwargs) as w:
        yield Collector(w)


# -- workloads ----------------------------------------------------------------------------------------------------
def fork_exit(code: int, log: Collector | None = None) -> int:
    """A child that exits with ``code``; reaped.  Returns its pid.

    With ``log``, the child lives until the watcher has reported its Fork: backends that sample (the /proc scanner)
    see only tasks that live across a scan, event-driven ones see it either way.
    """
    gate_r, gate_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(gate_w)
        os.read(gate_r, 1)
        os._exit(code)
    os.close(gate_r)
    try:
        if log is not None:
            log.wait_until(lambda: bool(log.forks_of(pid)), f"the fork of {pid}", [pid])
    finally:
        os.close(gate_w)
        os.waitpid(pid, 0)
    return pid


def run_python(script: str, *args: str | bytes, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PYTHON, "-c", script, *args], **kw)  # type: ignore[call-overload,no-any-return]


def reap(p: subprocess.Popen[bytes]) -> int:
    return p.wait(timeout=TIMEOUT)


def core_pattern() -> str:
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read().strip()


def segfault_script(dump_core: bool) -> str:
    limit = "resource.RLIM_INFINITY" if dump_core else "0"
    return (
        "import ctypes, resource\n"
        f"resource.setrlimit(resource.RLIMIT_CORE, ({limit}, {limit}))\n"
        "ctypes.string_at(0)\n"
    )


# -- the C helper: exits that Python cannot express ------------------------------------------------------------------
_HELPER_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int code;

static void *late_exit_group(void *arg) { usleep(150000); syscall(SYS_exit_group, code); return arg; }
static void *thread_exit(void *arg) { syscall(SYS_exit, 99); return arg; }

int main(int argc, char **argv) {
    pthread_t t;
    if (argc < 3) return 2;
    code = atoi(argv[2]);
    if (!strcmp(argv[1], "leader-first")) {
        /* the main thread ends first (pthread_exit); another thread ends the process later with exit_group */
        pthread_create(&t, NULL, late_exit_group, NULL);
        pthread_exit(NULL);
    }
    if (!strcmp(argv[1], "thread-exit")) {
        /* a thread ends alone with exit(2) code 99; the process then exits with exit_group(code) */
        pthread_create(&t, NULL, thread_exit, NULL);
        pthread_join(t, NULL);
        syscall(SYS_exit_group, code);
    }
    return 2;
}
"""
_helper_path: str | None = None


def c_helper() -> str:
    """Path of the compiled helper (built once per session, into a temporary directory removed at exit)."""
    global _helper_path
    if _helper_path is None:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise AssertionError("gcc is needed to build the thread-exit helper (apt-get install gcc)")
        tmp = tempfile.mkdtemp(prefix="proctap-helper-")
        import atexit

        atexit.register(shutil.rmtree, tmp, True)
        src = os.path.join(tmp, "helper.c")
        with open(src, "w") as f:
            f.write(_HELPER_SOURCE)
        out = os.path.join(tmp, "helper")
        subprocess.run([gcc, "-O1", "-pthread", "-o", out, src], check=True, capture_output=True)
        _helper_path = out
    return _helper_path


# -- failed forks -------------------------------------------------------------------------------------------------
PIDS_CGROUP_V1 = "/sys/fs/cgroup/pids"


def pids_cgroup_root() -> str | None:
    """A cgroup hierarchy with the pids controller: v1 /sys/fs/cgroup/pids, or a v2 root that enables it."""
    if os.path.exists(os.path.join(PIDS_CGROUP_V1, "cgroup.procs")):
        return PIDS_CGROUP_V1
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.controllers")) as f:
            if "pids" in f.read().split():
                return root
    return None


def _child_try_fork(ready_w: int | None, go_r: int | None) -> None:
    """In a child: wait for the go, fork once; exit 0 when the fork failed with EAGAIN, 1 otherwise."""
    if ready_w is not None and go_r is not None:
        os.write(ready_w, b"r")
        os.read(go_r, 1)
    try:
        pid = os.fork()
    except OSError as exc:
        os._exit(0 if exc.errno == errno.EAGAIN else 1)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    os._exit(1)


def fork_fails_in_pids_cgroup(root: str) -> int:
    """A child moved into a new cgroup with pids.max 1 tries to fork: EAGAIN.  Returns the child's pid; the cgroup
    is removed."""
    path = os.path.join(root, f"proctap-test-{os.getpid()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write("1")
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                _child_try_fork(ready_w, go_r)
            finally:
                os._exit(1)
        os.read(ready_r, 1)
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(child))
        os.write(go_w, b"g")
        _, status = os.waitpid(child, 0)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 0, "the fork inside the pids cgroup did not fail with EAGAIN"
        return child
    finally:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                os.rmdir(path)
                break
            except OSError as exc:  # EBUSY until the exited child has left the cgroup
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def fork_fails_by_rlimit_nproc(uid: int = 65533) -> int:
    """A child drops to an unused uid with RLIMIT_NPROC 1 (it is that uid's only process) and forks: EAGAIN."""
    child = os.fork()
    if child == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
            os.setgid(uid)
            os.setuid(uid)
            _child_try_fork(None, None)
        finally:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the fork under RLIMIT_NPROC did not fail with EAGAIN"
    return child


def kill_and_reap(p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(sig)
    p.wait(timeout=TIMEOUT)


# -- failed execs -------------------------------------------------------------------------------------------------
def exec_fails(path: str | int, argv: list[str]) -> tuple[int, int]:
    """A child that tries to exec ``path`` (a file descriptor: fexecve, i.e. execveat with AT_EMPTY_PATH) with
    ``argv`` and exits when that fails.  Returns the child's pid and the errno it got (0: the exec succeeded)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            try:
                os.execve(path, argv, os.environ)
            except OSError as exc:
                os.write(w, str(exc.errno).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    os.waitpid(child, 0)
    return child, int(got or 0)


def own_comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().rstrip("\n")


# -- who and where: a hand-made v2 cgroup -----------------------------------------------------------------------------
@contextlib.contextmanager
def v2_cgroup(name: str) -> Iterator[tuple[str, str] | None]:
    """A new cgroup under the cgroup2 mount: (its directory, its path as /proc/PID/cgroup shows it), or None when
    there is no cgroup2 mount here.  Removed afterwards (a task left in it moved to the root first)."""
    from proctap.linux.cgroups import cgroup2_mount

    root = cgroup2_mount()
    if root is None:
        yield None
        return
    directory = os.path.join(root, name)
    os.mkdir(directory)
    try:
        yield directory, "/" + name
    finally:
        with contextlib.suppress(OSError), open(os.path.join(directory, "cgroup.procs")) as f:
            for pid in f.read().split():
                with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs"), "w") as to:
                    to.write(pid)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                os.rmdir(directory)
                break
            except OSError as exc:  # EBUSY until the kernel lets go of the tasks that died in it
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def in_cgroup(directory: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` run by a shell that first moves itself into the cgroup ``directory``."""
    return subprocess.Popen(["sh", "-c", f'echo $$ > "{directory}/cgroup.procs" && exec "$@"', "sh", *argv])
