"""``proctap run``: start a command and follow its whole process tree from its first instruction.

No race: the watcher (``pid=`` proctap itself, so its filter follows our children) and the taskstats listener are
opened *before* the command is forked.  The command's fork, exec and everything it or its descendants do are
therefore seen, with the kernel's timestamps.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType

from ..backends import DEFAULT_ARGV_LIMIT, Backend, Feature, choose_backend
from ..errors import ProctapError
from ..linux import procfs
from ..linux.clock import Clock
from ..text import quote_arg
from ..watcher import DEFAULT_LATENCY_S, Watcher
from .tree import ProcessNode, ProcessTree

__all__ = ["CommandFailed", "RunOptions", "RunResult", "run", "shell_exit_status"]

KERNEL_ARGV_LATENCY_S = 0.05
ROOT_EXIT_GRACE_S = 1.0  # after reaping the command, how long to wait for its Exit event
FINAL_DRAIN_S = 0.5  # without --wait-all: how long to keep collecting events after the command ended
LIVENESS_CHECK_S = 1.0  # --wait-all: how often to look in /proc for processes whose Exit never came
SWEEP_GRACE_S = 0.05  # how long a process found gone in /proc may take to have its Exit event delivered
_START_SLACK_NS = 50_000_000  # /proc start times have clock-tick precision (10 ms)


class CommandFailed(ProctapError):
    """The command could not be started (not found, not executable); ``exit_status`` is what a shell returns."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class RunOptions:
    argv: list[str]
    backend: str = "auto"
    threads: bool = False
    wait_all: bool = False
    accounting: bool = True
    latency: float | None = None  # None: run_latency(backend)
    buffer_bytes: int | None = None
    backend_options: tuple[tuple[str, str], ...] = ()
    argv_limit: int = DEFAULT_ARGV_LIMIT


@dataclass
class RunResult:
    """What ``proctap run`` learnt.  Times are CLOCK_MONOTONIC ns; ``started_wall`` is the epoch at ``started_ns``."""

    command: list[str]
    tree: ProcessTree
    root_status: int  # raw wait status of the command
    exit_status: int  # the shell's view: the code, or 128 + signal
    started_ns: int
    started_wall: float
    finished_ns: int
    backend: str
    accounting_source: str | None
    accounting_note: str | None
    accounting_lost: int = 0
    watch_stats: dict[str, object] = field(default_factory=dict)
    monitor_cpu_s: float = 0.0  # CPU time proctap itself used while following the command


def shell_exit_status(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _reset_child_signals() -> None:
    # Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec, so restore the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _spawn(argv: list[str]) -> tuple[int, int]:
    """Fork a child that execs ``argv``.  Returns (pid, error_fd): error_fd gives EOF when the exec succeeded (it is
    close-on-exec), or the errno digits when it failed (the child then exits 126/127 like a shell)."""
    err_r, err_w = os.pipe()  # os.pipe fds are close-on-exec
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 127
        try:
            os.close(err_r)
            _reset_child_signals()
            os.execvp(argv[0], argv)
        except OSError as exc:
            code = 126 if exc.errno in (_errno.EACCES, _errno.ENOEXEC, _errno.EISDIR) else 127
            with contextlib.suppress(OSError):
                os.write(err_w, str(exc.errno or 0).encode())
        except BaseException:
            pass
        os._exit(code)
    os.close(err_w)
    return pid, err_r


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = os.read(fd, 64)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@contextlib.contextmanager
def _forwarding_signals(pid: int) -> Iterator[None]:
    """While the command runs: ignore the terminal's SIGINT/SIGQUIT (they reach the command's process group, and we
    want to report how it ended), forward SIGTERM/SIGHUP to the command."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    saved = {}
    for sig, handler in (
        (signal.SIGINT, signal.SIG_IGN),
        (signal.SIGQUIT, signal.SIG_IGN),
        (signal.SIGTERM, forward),
        (signal.SIGHUP, forward),
    ):
        saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def run_latency(features: frozenset[Feature]) -> float:
    """How long ``run`` lets events wait in the kernel between drains.

    The tree is printed at the end, so only completeness matters: a backend that captures argv in the kernel loses
    nothing by waiting longer, and draining 5x less often halved proctap's CPU on a make -j2 build
    (``bench/run_overhead.py --steps 400 --rounds 3 --no-strace`` with and without ``--latency 0.01``).  Backends
    that read argv from /proc must read it before short processes are gone.
    """
    return KERNEL_ARGV_LATENCY_S if Feature.ARGV_KERNEL in features else DEFAULT_LATENCY_S


def exact_times(features: frozenset[Feature]) -> bool:
    """Whether a backend's timestamps are when things happened rather than when a scan noticed them.

    A backend that reports the status of every exit hooks the exit itself (bpf, netlink, tracefs, kprobe), so its
    events carry the kernel's time of each fork, exec and exit.  One that cannot (proc) finds changes by scanning /proc
    now and then: its timestamps are scan times (docs/proc-backend.md), and a task found gone died at some time
    before the scan that found it gone.
    """
    return Feature.EXIT_STATUS in features


def run_backend_options(backend: type[Backend], given: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The user's backend options, plus what suits a watcher that lives as long as one command: bpf's failed-fork
    hook that detaches at once (the per-syscall one costs ~0.3 s to close, a quarter of a one-second build)."""
    accepted = {opt.name for opt in backend.accepted_options}
    if "fork_failed_hook" not in accepted or any(name == "fork_failed_hook" for name, _ in given):
        return given
    return (*given, ("fork_failed_hook", "raw"))


class _Session:
    """One run: the watcher (with accounting) and the command's pidfd."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.pid = 0
        self.tree = ProcessTree(0, 0)
        backend = choose_backend(opts.backend)
        self.exact_times = exact_times(backend.features)
        self.latency = run_latency(backend.features) if opts.latency is None else opts.latency
        # Watch our own subtree: the command's fork, exec and everything after are seen (no race), and the
        # kernel's timestamp of that fork is the root's start.
        self.watcher = Watcher(
            None,
            backend,
            pid=os.getpid(),
            threads=opts.threads,
            buffer_bytes=opts.buffer_bytes,
            argv_limit=opts.argv_limit,
            latency=self.latency,
            accounting=opts.accounting,
            options=run_backend_options(backend, opts.backend_options),
        )
        if not opts.accounting:
            self.accounting_note: str | None = "accounting disabled (--no-accounting)"
        else:
            self.accounting_note = self.watcher.accounting_note
        self.pidfd: int | None = None
        self.status: int | None = None
        self.reaped_ns: int | None = None

    def start(self, argv: list[str]) -> int:
        """Fork the command; returns the fd of the exec-error pipe."""
        start_ns = time.monotonic_ns()
        self.pid, err_fd = _spawn(argv)
        self.watcher.follow(self.pid)  # even if its Fork event is lost in a burst
        self.tree = ProcessTree(
            self.pid,
            start_ns,
            tuple(argv),
            creator=os.getpid(),
            exact_times=self.exact_times,
            boot_offset_ns=Clock().boot_offset_ns,
        )
        return err_fd

    def close(self) -> None:
        self.watcher.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def open_pidfd(self) -> None:
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            self.pidfd = None  # old kernel: waitpid is polled every latency period instead

    def step(self, timeout: float) -> bool:
        """One turn of the watcher's drain loop, fed to the tree; True if events came.

        While the command runs, its pidfd cuts the waits short (the loop then reaps it at once); without a pidfd,
        waits are bounded by ``latency`` so that waitpid is polled.
        """
        wake: list[int] = []
        if self.status is None:
            if self.pidfd is not None:
                wake.append(self.pidfd)
            else:
                timeout = min(timeout, self.latency)
        events = self.watcher.read(timeout, wake=wake)
        if events:
            self.tree.feed(events)
        return bool(events)

    def try_reap(self) -> bool:
        if self.status is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.status = status
        self.reaped_ns = time.monotonic_ns()
        self.check_live()
        return True

    def check_live(self) -> None:
        """Right after the reap, look in /proc at every process of the tree whose Exit has not come: one alive now
        outlived the command (whatever the backend's timestamps say); one gone is taken as gone by the reap (the
        look follows it by microseconds), which bounds its end when the backend's times are scan times."""
        assert self.reaped_ns is not None
        tree = self.tree
        for node in [n for n in tree.live.values() if n is not tree.root]:
            now = max(time.monotonic_ns(), self.reaped_ns + 1)
            if self.gone(node.pid, node.boot_start_ns):
                tree.seen_dead(node.pid, self.reaped_ns)
            else:
                tree.seen_alive(node.pid, now)

    @staticmethod
    def gone(pid: int, boot_start_ns: int | None) -> bool:
        """Whether the process is no longer alive (zombies count as gone: their Exit was already sent), or the pid
        now belongs to another process (its start time differs)."""
        st = procfs.read_stat(pid)
        if st is None or st.is_dead:
            return True
        return boot_start_ns is not None and abs(st.start_ns - boot_start_ns) > _START_SLACK_NS

    def sweep_gone(self) -> None:
        """Live nodes whose process is gone although no Exit came: give the backend time to report them (a scanning
        backend: until its next scan, at most ROOT_EXIT_GRACE_S), then mark those still missing as exit unseen.
        Those found alive are noted alive."""
        tree = self.tree
        suspects: list[ProcessNode] = []
        for node in [n for n in tree.live.values() if n is not tree.root]:
            now = time.monotonic_ns()
            if self.gone(node.pid, node.boot_start_ns):
                tree.seen_dead(node.pid, time.monotonic_ns())
                suspects.append(node)
            else:
                tree.seen_alive(node.pid, now)

        def missing() -> list[ProcessNode]:
            return [n for n in suspects if tree.live.get(n.pid) is n]

        deadline = time.monotonic() + SWEEP_GRACE_S + min(self.scan_interval(), ROOT_EXIT_GRACE_S)
        while missing() and time.monotonic() < deadline:
            self.step(max(0.0, min(deadline - time.monotonic(), SWEEP_GRACE_S)))
        for node in missing():
            if self.gone(node.pid, node.boot_start_ns):
                tree.mark_gone(node.pid, node.dead_by_ns)

    def scan_interval(self) -> float:
        """How long a scanning backend may take to notice a change (its ``interval_us`` counter); 0 for others."""
        if self.exact_times:
            return 0.0
        return self.watcher.stats().backend.get("interval_us", 0) / 1e6


def run(opts: RunOptions) -> RunResult:
    """Run the command, follow its tree, return everything learnt.  Notices (e.g. no accounting here) are warnings.

    Raises CommandFailed when the command cannot be executed, ProctapError/BackendUnavailable when watching cannot
    start (then the command is not started).
    """
    if not opts.argv:
        raise ProctapError("no command given: proctap run [options] -- CMD [ARGS...]")
    cpu_before = _self_cpu()
    session = _Session(opts)
    try:
        started_wall = time.time()
        err_fd = session.start(opts.argv)
        started_ns = session.tree.root.start_ns or time.monotonic_ns()
        with _forwarding_signals(session.pid):
            session.open_pidfd()
            failure = _read_all(err_fd)
            os.close(err_fd)
            if failure:
                _, status = os.waitpid(session.pid, 0)
                raise CommandFailed(
                    f"cannot run {quote_arg(opts.argv[0])}: {os.strerror(int(failure))}", shell_exit_status(status)
                )
            _follow(session)
        stats = session.watcher.stats().as_dict()
    finally:
        session.close()
    tree = session.tree
    assert session.status is not None
    return RunResult(
        command=list(opts.argv),
        tree=tree,
        root_status=session.status,
        exit_status=shell_exit_status(session.status),
        started_ns=started_ns,
        started_wall=started_wall,
        finished_ns=time.monotonic_ns(),
        backend=session.watcher.backend_name,
        accounting_source="taskstats" if session.watcher.accounting else None,
        accounting_note=session.accounting_note,
        accounting_lost=session.watcher.stats().accounting_overruns,
        watch_stats=stats,
        monitor_cpu_s=_self_cpu() - cpu_before,
    )


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _follow(session: _Session) -> None:
    tree = session.tree
    while not session.try_reap():
        session.step(1.0)
    # The command is reaped; its Exit event may still be in flight (the proc connector reports after
    # exit_notify, kernel/exit.c), so give it a moment before falling back to the status waitpid gave.
    assert session.status is not None and session.reaped_ns is not None
    deadline = time.monotonic() + ROOT_EXIT_GRACE_S
    session.step(0)  # usually queued already: drained at once, not after the watcher's nap of `latency`
    while not tree.root.ended and time.monotonic() < deadline:
        session.step(0.05)
    tree.end_root(session.status, session.reaped_ns)
    if session.opts.wait_all:
        last_check = time.monotonic()
        while tree.live:
            session.step(LIVENESS_CHECK_S / 2)
            if time.monotonic() - last_check >= LIVENESS_CHECK_S:
                session.sweep_gone()
                last_check = time.monotonic()
    else:
        # Collect what is still queued (at once: step(0) drains without the watcher's nap); bounded, since
        # processes that outlive the command may keep forking.  A process found gone whose Exit is not in yet gets
        # its grace in sweep_gone.
        deadline = time.monotonic() + FINAL_DRAIN_S
        while session.step(0) and time.monotonic() < deadline:
            pass
        session.sweep_gone()
    tree.finish()
