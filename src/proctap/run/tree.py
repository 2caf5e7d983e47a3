"""A process tree built from Fork / Exec / Exit / ForkFailed / Comm / Lost events (any backend).

Feed events in the order a watcher delivers them; :class:`ProcessTree` keeps one :class:`ProcessNode` per process
(PID reuse gives a new node), its threads, its execs and its fate.  Times are CLOCK_MONOTONIC nanoseconds (the
events' ``timestamp_ns``).  Nothing here recurses, so a 100k-deep chain of processes is fine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from ..events import (
    Accounting,
    Comm,
    Event,
    Exec,
    Exit,
    Fork,
    ForkFailed,
    Lost,
    decode_wait_status,
    errno_name,
    signal_name,
)

__all__ = ["ExecRecord", "ForkFailure", "LostRecord", "Outcome", "ProcessNode", "ProcessTree", "ThreadNode"]


class Outcome(str, Enum):
    """How a process ended, as the tree reports it."""

    OK = "ok"  # exit code 0
    FAILED = "failed"  # non-zero exit code
    SIGNALED = "signaled"  # killed by a signal
    RUNNING = "running"  # still alive when the report was made
    UNKNOWN = "unknown"  # it is gone, how is not known: its Exit event never came (lost), or came without a status

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class ExecRecord:
    timestamp_ns: int
    filename: str | None
    argv: tuple[str, ...] | None


@dataclass(slots=True)
class ForkFailure:
    timestamp_ns: int
    tid: int
    errno: int
    syscall: str | None

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno)


@dataclass(slots=True)
class LostRecord:
    timestamp_ns: int
    count: int | None
    reason: str
    cpu: int | None


@dataclass(slots=True)
class ThreadNode:
    tid: int
    start_ns: int | None
    end_ns: int | None = None
    status: int | None = None
    accounting: Accounting | None = None


@dataclass(slots=True, eq=False)
class ProcessNode:
    """One process.  ``argv``/``filename`` are those of its last exec (inherited from the parent until it execs:
    ``execed`` False).  ``start_ns``/``end_ns`` are monotonic ns; ``status`` the raw wait status.

    ``exit_seen``: its Exit event came (with or without a status: the proc backend finds a task gone with its status
    only when it caught it as a zombie).  ``alive_ns``: the latest time it is known to have been alive, and
    ``dead_by_ns`` the earliest it is known to have been gone; they decide ``outlived_root``
    (:meth:`ProcessTree.finish`)."""

    pid: int
    ppid: int | None
    start_ns: int | None
    boot_start_ns: int | None = None
    comm: str | None = None
    argv: tuple[str, ...] | None = None
    filename: str | None = None
    execed: bool = False
    end_ns: int | None = None
    ended: bool = False
    exit_seen: bool = False
    status: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    accounting: Accounting | None = None
    outlived_root: bool = False
    alive_ns: int | None = None
    dead_by_ns: int | None = None
    parent: ProcessNode | None = None
    children: list[ProcessNode] = field(default_factory=list)
    threads: list[ThreadNode] = field(default_factory=list)
    execs: list[ExecRecord] = field(default_factory=list)
    fork_failures: list[ForkFailure] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        if not self.ended:
            return Outcome.RUNNING
        if self.signal is not None:
            return Outcome.SIGNALED
        if self.exit_code is None:
            return Outcome.UNKNOWN
        return Outcome.OK if self.exit_code == 0 else Outcome.FAILED

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal)

    @property
    def duration_ns(self) -> int | None:
        if self.start_ns is None or self.end_ns is None:
            return None
        return self.end_ns - self.start_ns

    def set_status(self, status: int | None, exit_code: int | None, sig: int | None, core: bool) -> None:
        self.status = status
        self.exit_code = exit_code
        self.signal = sig
        self.core_dumped = core


class ProcessTree:
    """Processes descending from ``root_pid``: a view of the watcher's process cache (each event's
    ``event.process`` gives a node's comm, argv and executable, inherited or exec'd) with what a run reports on top
    (outcomes, timings, threads, every exec, failed forks, accounting).

    The root node exists from the start (made by the caller, which may or may not have watched its fork: the root's
    Fork event, if it comes, only sets its start); every other node comes from a Fork event.  Other children of
    ``creator`` (the root's parent) are ignored.

    ``exact_times``: the events' timestamps are when things happened (a backend hooked into the kernel).  False for a
    backend whose timestamps are when a periodic scan noticed a change (proc): then an Exit's time is not when the
    task died (only that it was gone by then), the root keeps the start the caller gave, and other processes start at
    their /proc start time (``Fork.start_ns``, since boot: ``boot_offset_ns`` converts it to monotonic time) rather
    than at the scan that found them.
    """

    def __init__(
        self,
        root_pid: int,
        root_start_ns: int,
        argv: tuple[str, ...] | None = None,
        *,
        creator: int | None = None,
        exact_times: bool = True,
        boot_offset_ns: int | None = None,
    ) -> None:
        self.creator = creator  # the process that forked the root: its other children are not part of the tree
        self.exact_times = exact_times
        self.boot_offset_ns = boot_offset_ns
        self.root = ProcessNode(pid=root_pid, ppid=None, start_ns=root_start_ns, argv=argv)
        self.live: dict[int, ProcessNode] = {root_pid: self.root}
        self.latest: dict[int, ProcessNode] = {root_pid: self.root}  # the last process seen with each pid
        self.orphans: list[ProcessNode] = []  # processes whose parent's Fork was not seen (lost events)
        self.lost: list[LostRecord] = []
        self.count = 1
        self.root_ended_ns: int | None = None
        self.root_fork_seen = False

    # -- feeding ------------------------------------------------------------------------------------------------
    def feed(self, events: Iterable[Event]) -> None:
        for ev in events:
            if isinstance(ev, Fork):
                self._fork(ev)
            elif isinstance(ev, Exit):
                self._exit(ev)
            elif isinstance(ev, Exec):
                self._exec(ev)
            elif isinstance(ev, ForkFailed):
                node = self.live.get(ev.pid)
                if node is not None:
                    node.fork_failures.append(ForkFailure(ev.timestamp_ns, ev.tid, ev.errno, ev.syscall))
            elif isinstance(ev, Comm):
                node = self.live.get(ev.pid)
                if node is not None:
                    self._alive(node, ev.timestamp_ns)
                    if ev.tid == ev.pid:
                        node.comm = ev.comm
            elif isinstance(ev, Lost):
                self.lost.append(LostRecord(ev.timestamp_ns, ev.count, ev.reason, ev.cpu))

    def _fork(self, ev: Fork) -> None:
        if ev.is_thread:
            owner = self.live.get(ev.pid)
            if owner is not None:
                owner.threads.append(ThreadNode(ev.tid, ev.timestamp_ns))
                self._alive(owner, ev.timestamp_ns)
            return
        if ev.pid == self.root.pid and not self.root_fork_seen and not self.root.execs:
            # The root's own fork (the caller created the node first): take the kernel's timestamp (a scan's time
            # is later than the caller's, taken just before the fork).
            self.root_fork_seen = True
            if self.exact_times:
                self.root.start_ns = ev.timestamp_ns
            self.root.boot_start_ns = ev.start_ns
            self.root.ppid = ev.parent_pid
            self._alive(self.root, ev.timestamp_ns)
            return
        if ev.parent_pid == self.creator and ev.pid != self.root.pid:
            return
        stale = self.live.pop(ev.pid, None)
        if stale is not None:  # the PID was reused: the old process's Exit was lost
            self._end_unseen(stale, ev.timestamp_ns)
        parent = self.live.get(ev.parent_pid)
        node = ProcessNode(pid=ev.pid, ppid=ev.parent_pid, start_ns=self._start(ev, parent), boot_start_ns=ev.start_ns)
        node.alive_ns = ev.timestamp_ns
        if parent is not None and self.exact_times:
            self._alive(parent, ev.timestamp_ns)  # it forked then (a scan only shows the child's ppid: maybe a zombie)
        if parent is not None:
            node.parent = parent
            parent.children.append(node)
        else:
            self.orphans.append(node)
        proc = ev.process
        if proc is not None:  # the watcher's process cache: what the child inherited from its parent
            node.comm, node.argv, node.filename = proc.comm, proc.argv, proc.exe
        elif parent is not None:
            node.comm, node.argv, node.filename = parent.comm, parent.argv, parent.filename
        if ev.comm is not None:
            node.comm = ev.comm
        self.live[ev.pid] = node
        self.latest[ev.pid] = node
        self.count += 1

    def _start(self, ev: Fork, parent: ProcessNode | None) -> int:
        """When a new process started: the event's time, or for scan times, its /proc start time (clock ticks)
        bounded by its parent's start and the scan that found it."""
        if self.exact_times or ev.start_ns is None or self.boot_offset_ns is None:
            return ev.timestamp_ns
        start = min(ev.timestamp_ns, ev.start_ns - self.boot_offset_ns)
        if parent is not None and parent.start_ns is not None:
            start = max(start, parent.start_ns)
        return start

    @staticmethod
    def _alive(node: ProcessNode, when_ns: int) -> None:
        if node.alive_ns is None or when_ns > node.alive_ns:
            node.alive_ns = when_ns

    def _exec(self, ev: Exec) -> None:
        node = self.live.get(ev.pid)
        if node is None:
            return
        self._alive(node, ev.timestamp_ns)
        node.execs.append(ExecRecord(ev.timestamp_ns, ev.filename, ev.argv))
        if ev.argv is not None or node is not self.root or node.execed:
            node.argv = ev.argv  # (the root's first exec runs the argv the caller gave, even if /proc was too late)
        node.execed = True
        node.filename = ev.filename
        proc = ev.process
        if proc is not None:  # the watcher's process cache derived the new comm (fs/exec.c renames the task)
            node.comm = proc.comm
        elif ev.comm is not None:
            node.comm = ev.comm
        elif ev.filename is not None:
            node.comm = ev.filename.rsplit("/", 1)[-1][:15]

    def _exit(self, ev: Exit) -> None:
        node = self.live.get(ev.pid)
        if node is None:
            return
        if ev.is_thread:
            self._alive(node, ev.timestamp_ns)
            for thread in node.threads:
                if thread.tid == ev.tid and thread.end_ns is None:
                    thread.end_ns = ev.timestamp_ns
                    thread.status = ev.status
                    thread.accounting = ev.accounting
                    break
            return
        del self.live[ev.pid]
        node.ended = True
        node.exit_seen = True
        node.end_ns = ev.timestamp_ns
        if self.exact_times:
            self._alive(node, ev.timestamp_ns)  # alive until that instant
        else:
            # The scan found it gone (or a zombie): it died before, maybe long before.  What the same scan said of
            # it (a Fork of a process already a zombie) does not show it alive then.
            if node.alive_ns == ev.timestamp_ns:
                node.alive_ns = None
            if node.dead_by_ns is not None and node.dead_by_ns < ev.timestamp_ns:
                node.end_ns = max(node.dead_by_ns, node.start_ns or 0)
        node.set_status(ev.status, ev.exit_code, ev.signal, ev.core_dumped)
        if ev.accounting is not None:
            node.accounting = ev.accounting
        if ev.comm is not None and (node.comm is None or node.argv is None):
            node.comm = ev.comm  # a process too short-lived for /proc to tell its argv is at least named
        if node is self.root:
            self.root_ended_ns = node.end_ns

    # -- ending ---------------------------------------------------------------------------------------------------
    def _end_unseen(self, node: ProcessNode, when_ns: int | None) -> None:
        node.ended = True
        node.exit_seen = False
        node.end_ns = when_ns

    def end_root(self, status: int, when_ns: int) -> None:
        """The caller reaped the root (waitpid) at ``when_ns``: its status is that one, exact on every backend (an
        Exit event may have had none: proc), and it had ended by then (a scan's Exit may be later)."""
        root = self.root
        if not root.ended:
            self.live.pop(root.pid, None)
            root.ended = True
            root.end_ns = when_ns
        elif root.end_ns is None or root.end_ns > when_ns:
            root.end_ns = when_ns
        self.root_ended_ns = root.end_ns
        ws = decode_wait_status(status)
        root.set_status(status, ws.exit_code, ws.signal, ws.core_dumped)

    def seen_alive(self, pid: int, when_ns: int) -> None:
        """The caller found the live process ``pid`` alive (in /proc, not a zombie) at ``when_ns``."""
        node = self.live.get(pid)
        if node is not None:
            self._alive(node, when_ns)

    def seen_dead(self, pid: int, when_ns: int) -> None:
        """The caller found the live process ``pid`` gone (or a zombie) at ``when_ns``, before its Exit event came:
        with scan times, that bounds its end."""
        node = self.live.get(pid)
        if node is not None and (node.dead_by_ns is None or when_ns < node.dead_by_ns):
            node.dead_by_ns = when_ns

    def mark_gone(self, pid: int, when_ns: int | None = None) -> None:
        """A live process is found gone without its Exit event (a lost event): how it ended is unknown, and when is
        only bounded (``when_ns``: gone by then)."""
        node = self.live.pop(pid, None)
        if node is not None:
            self._end_unseen(node, when_ns)

    def finish(self) -> None:
        """Decide ``outlived_root``: a process outlived the command if it is still running, or if it is known to
        have been alive after the root ended (an event of it after that: with exact times its Exit, with scan
        times a scan that found it alive; or the caller found it alive in /proc after reaping the root)."""
        end = self.root_ended_ns
        for node in self.nodes():
            if node is self.root:
                continue
            if node.pid in self.live and self.live[node.pid] is node:
                node.outlived_root = True
            else:
                node.outlived_root = end is not None and node.alive_ns is not None and node.alive_ns > end

    # -- reading ------------------------------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[ProcessNode, int]]:
        """(node, depth) in pre-order: the root's tree, then orphan subtrees; children by start time."""
        for top in [self.root, *self.orphans]:
            stack: list[tuple[ProcessNode, int]] = [(top, 0)]
            while stack:
                node, depth = stack.pop()
                yield node, depth
                kids = sorted(node.children, key=_start_key, reverse=True)
                stack.extend((kid, depth + 1) for kid in kids)

    def nodes(self) -> list[ProcessNode]:
        return [node for node, _ in self.walk()]


def _start_key(node: ProcessNode) -> int:
    return node.start_ns if node.start_ns is not None else 0
