"""``proctap run``: start a command and follow its whole process tree from its first instruction.

No race: the watcher (``pid=`` proctap itself, so its filter follows our children) and the taskstats listener are
opened *before* the command is forked.  The command's fork, exec and everything it or its descendants do are
therefore seen, with the kernel's timestamps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno as _errno
import os
import resource
import select
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from ..backends import Feature
from ..errors import BackendUnavailable, ProctapError
from ..events import Event, Exec, Exit, Origin
from ..linux import procfs
from ..linux.clock import CLOCK_TICKS
from ..linux.taskstats import AccountingMerger, RawRecord, TaskstatsListener, TaskstatsMessage
from ..watcher import DEFAULT_LATENCY_S, Watcher
from .tree import ProcessTree

__all__ = ["CommandFailed", "RunOptions", "RunResult", "run", "shell_exit_status"]

KERNEL_ARGV_LATENCY_S = 0.05
ROOT_EXIT_GRACE_S = 1.0  # after reaping the command, how long to wait for its Exit event
FINAL_DRAIN_S = 0.5  # without --wait-all: how long to keep collecting events after the command ended
LIVENESS_CHECK_S = 1.0  # --wait-all: how often to look in /proc for processes whose Exit never came
PARKED_MAX_AGE_S = 5.0  # how long a taskstats record may wait for its process's events
PARKED_MAX = 65536  # processes with parked records, at most
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


def run_backend_options(given: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The user's backend options, plus what suits a watcher that lives as long as one command: bpf's failed-fork
    hook that detaches at once (the per-syscall one costs ~0.3 s to close, a quarter of a one-second build)."""
    if any(name == "fork_failed_hook" for name, _ in given):
        return given
    return (*given, ("fork_failed_hook", "raw"))


class _Session:
    """The event loop of one run: watcher + taskstats listener + the command's pidfd."""

    def __init__(self, opts: RunOptions, note: Callable[[str], None]) -> None:
        self.opts = opts
        self.pid = 0
        self.tree = ProcessTree(0, 0)
        # Watch our own subtree: the command's fork, exec and everything after are seen (no race), and the
        # kernel's timestamp of that fork is the root's start.
        self.watcher = Watcher(
            None,
            opts.backend,
            pid=os.getpid(),
            read_proc=False,  # the backend would read /proc for every exec on the machine: we do it for ours
            threads=opts.threads,
            buffer_bytes=opts.buffer_bytes,
            options=run_backend_options(opts.backend_options),
        )
        self.latency = run_latency(self.watcher.backend.features) if opts.latency is None else opts.latency
        self.watcher.latency = self.latency
        self.listener: TaskstatsListener | None = None
        self.accounting_note: str | None = None
        self.merger = AccountingMerger(max_pending=16384)
        self._parked: dict[int, tuple[float, list[RawRecord]]] = {}
        if opts.accounting:
            try:
                self.listener = TaskstatsListener()
            except BackendUnavailable as exc:
                self.accounting_note = str(exc)
                note(f"{exc}; carrying on without CPU/memory/IO figures")
        else:
            self.accounting_note = "accounting disabled (--no-accounting)"
        self.pidfd: int | None = None
        self.status: int | None = None
        self.reaped_ns: int | None = None

    def start(self, argv: list[str]) -> int:
        """Fork the command; returns the fd of the exec-error pipe."""
        start_ns = time.monotonic_ns()
        self.pid, err_fd = _spawn(argv)
        tracked = self.watcher.filter.tracked
        if tracked is not None:
            tracked.add(self.pid)  # follow the command even if its Fork event is lost in a burst
        self.tree = ProcessTree(self.pid, start_ns, tuple(argv), creator=os.getpid())
        return err_fd

    def close(self) -> None:
        self.watcher.close()
        if self.listener is not None:
            self.listener.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def open_pidfd(self) -> None:
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            self.pidfd = None  # old kernel: waitpid is polled every latency period instead

    def step(self, timeout: float, batch: bool = True) -> bool:
        """Drain what is ready and feed the tree; wait up to ``timeout`` first when nothing was.  True if events.

        ``batch``: after a non-empty drain, sleep ``latency`` so the forking tasks run without waking us per event
        (off once the command has ended: then the queue is only being emptied).
        """
        events = self._drain()
        if not events:
            self._wait(timeout)
            events = self._drain()
        elif batch:
            self._pause()
        return bool(events)

    def _pause(self) -> None:
        """Sleep ``latency``, but not past the command's exit (its pidfd turns readable): not the watcher's fd,
        whose every new event would wake us."""
        if self.pidfd is None or self.status is not None:
            time.sleep(self.latency)
            return
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        poller.poll(int(self.latency * 1000))

    def _drain(self) -> list[Event]:
        events = self.watcher.read(timeout=0)
        if events:
            events = self._complete_execs(events)
        if self.listener is not None:
            # Records are sent before the exit events we just read (kernel/exit.c do_exit: taskstats_exit comes
            # first), so draining now finds the figures for every Exit in ``events``.
            messages = self._take_records(events)
            if events:
                self.tree.feed(events)
                self._assign_accounting(events)
            if messages:
                ended = {ev.pid for ev in events if isinstance(ev, Exit) and not ev.is_thread}
                self._learn_comms(messages, ended)
        elif events:
            self.tree.feed(events)
        return events

    def _complete_execs(self, events: list[Event]) -> list[Event]:
        """Exec events without argv (the backend does not capture it in the kernel): read /proc now, for our
        processes only, and only if /proc still shows the same process (its start time matches: no PID reuse)."""
        out = events
        for i, ev in enumerate(events):
            if not isinstance(ev, Exec) or ev.argv is not None:
                continue
            if ev.start_ns is not None and self.gone(ev.pid, ev.start_ns):
                continue
            argv = procfs.read_argv(ev.pid)
            filename = ev.filename or procfs.read_exe(ev.pid)
            if argv is None and filename is None:
                continue
            if out is events:
                out = list(events)
            out[i] = dataclasses.replace(
                ev,
                argv=argv,
                argc=None if argv is None else len(argv),
                filename=filename,
                argv_from=None if argv is None else Origin.PROC,
                filename_from=ev.filename_from or (None if filename is None else Origin.PROC),
            )
        return out

    def _take_records(self, events: list[Event]) -> list[TaskstatsMessage]:
        """Hand the merger the records of our processes, decoded; return them.

        The listener gets every exit on the machine.  A record may be read before the Fork of its process (it
        forked and exited while we were busy, or its events wait in the backend's backlog): records of processes
        not known yet are parked, undecoded, by process id, and taken when the process's events show up; parked
        records older than PARKED_MAX_AGE_S (or past PARKED_MAX) are dropped: they were not ours.
        """
        assert self.listener is not None
        known = self.tree.latest
        batch = {ev.pid for ev in events}
        parked = self._parked
        mine: list[RawRecord] = []
        now = time.monotonic()
        for raw in self.listener.read_raw():
            if raw.tgid in known or raw.tgid in batch:
                mine.append(raw)
            else:
                entry = parked.get(raw.tgid)
                if entry is None:
                    parked[raw.tgid] = (now, [raw])
                else:
                    entry[1].append(raw)
        for pid in batch:
            entry = parked.pop(pid, None)
            if entry is not None:
                mine.extend(entry[1])
        while parked:  # oldest first (insertion order)
            tgid, (since, _) = next(iter(parked.items()))
            if now - since <= PARKED_MAX_AGE_S and len(parked) <= PARKED_MAX:
                break
            del parked[tgid]
        messages = [raw.decode() for raw in mine]
        if messages:
            self.merger.feed(messages)
        return messages

    def _assign_accounting(self, events: list[Event]) -> None:
        """Figures for the processes (and threads) whose Exit is in this batch, set on their tree nodes."""
        latest = self.tree.latest
        merger = self.merger
        for ev in events:
            if not isinstance(ev, Exit):
                continue
            node = latest.get(ev.pid)
            if node is None:
                continue
            if not ev.is_thread:
                acct = merger.take_process(ev.pid)
                if acct is not None and node.end_ns == ev.timestamp_ns:
                    node.accounting = acct
                continue
            acct = merger.thread(ev.tid)
            for thread in node.threads:
                if thread.tid == ev.tid and thread.end_ns == ev.timestamp_ns:
                    thread.accounting = acct

    def _learn_comms(self, messages: list[TaskstatsMessage], ended_now: set[int]) -> None:
        """A process too short-lived for /proc to tell its argv is at least named by its record's ac_comm.

        Only for processes alive until this batch: a later record with the same pid is another process's.
        """
        live = self.tree.live
        latest = self.tree.latest
        for msg in messages:
            rec = msg.record
            if msg.aggregate != "pid" or rec.tid != (rec.tgid or rec.tid) or not rec.comm:
                continue
            node = live.get(rec.tid) or (latest.get(rec.tid) if rec.tid in ended_now else None)
            if node is not None and node.argv is None:
                node.comm = rec.comm

    def _wait(self, timeout: float) -> None:
        poller = select.poll()
        poller.register(self.watcher.fileno(), select.POLLIN)
        if self.pidfd is not None and self.status is None:
            poller.register(self.pidfd, select.POLLIN)
        elif self.status is None:
            timeout = min(timeout, self.latency)
        poller.poll(max(0, int(timeout * 1000)))

    def try_reap(self) -> bool:
        if self.status is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.status = status
        self.reaped_ns = time.monotonic_ns()
        return True

    @staticmethod
    def gone(pid: int, boot_start_ns: int | None) -> bool:
        """Whether the process is no longer alive (zombies count as gone: their Exit was already sent), or the pid
        now belongs to another process (its start time differs)."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            state, start_ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc_pid_stat(5)
        except (OSError, IndexError, ValueError):
            return True
        if state in (b"Z", b"X"):
            return True
        if boot_start_ns is None:
            return False
        return abs(start_ticks * 1_000_000_000 // CLOCK_TICKS - boot_start_ns) > _START_SLACK_NS

    def sweep_gone(self) -> None:
        """Live nodes whose process is gone although no Exit came: drain once more, then mark them unknown."""
        suspects = [n.pid for n in self.tree.live.values() if self.gone(n.pid, n.boot_start_ns)]
        if not suspects:
            return
        time.sleep(0.05)
        self._drain()
        for pid in suspects:
            node = self.tree.live.get(pid)
            if node is not None and self.gone(pid, node.boot_start_ns):
                self.tree.mark_gone(pid)


def run(opts: RunOptions, note: Callable[[str], None] = lambda _msg: None) -> RunResult:
    """Run the command, follow its tree, return everything learnt.  ``note`` receives one-line notices.

    Raises CommandFailed when the command cannot be executed, ProctapError/BackendUnavailable when watching cannot
    start (then the command is not started).
    """
    if not opts.argv:
        raise ProctapError("no command given: proctap run [options] -- CMD [ARGS...]")
    cpu_before = _self_cpu()
    session = _Session(opts, note)
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
                    f"cannot run {opts.argv[0]!r}: {os.strerror(int(failure))}", shell_exit_status(status)
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
        accounting_source="taskstats" if session.listener is not None else None,
        accounting_note=session.accounting_note,
        accounting_lost=session.listener.lost if session.listener is not None else 0,
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
    while not tree.root.ended and time.monotonic() < deadline:
        session.step(0.05, batch=False)
    tree.end_root(session.status, session.reaped_ns)
    if session.opts.wait_all:
        last_check = time.monotonic()
        while tree.live:
            session.step(LIVENESS_CHECK_S / 2)
            if time.monotonic() - last_check >= LIVENESS_CHECK_S:
                session.sweep_gone()
                last_check = time.monotonic()
    else:
        # Collect what is still queued; bounded, since processes that outlive the command may keep forking.
        deadline = time.monotonic() + FINAL_DRAIN_S
        while session.step(0.02, batch=False) and time.monotonic() < deadline:
            pass
        session.sweep_gone()
    tree.mark_outliving()
