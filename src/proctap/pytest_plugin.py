"""The pytest plugin: see and assert on the processes a test starts, and catch the ones it leaves running.

Registered through the ``pytest11`` entry point, so installing proctap is all it takes; it watches nothing until
asked (docs/pytest.md):

- the ``processes`` fixture: the processes the test started, directly or through any depth of children, with
  argv, exit status, duration and parent (``processes.execs("git")``, ``.failed()``, ``.running()``,
  ``.leaked()``); when a test using it fails, the report shows the test's process tree;
- ``--proctap-leaks`` (``=warn``): after each test, the processes it started that still run fail the test (an error
  at teardown) or warn; ``--proctap-report FILE``: every test's processes as JSON (or the HTML timeline for
  ``*.html``); the terminal summary lists the tests that started the most processes and used the most CPU.

How: one :class:`proctap.Watcher` per pytest process (per xdist worker) follows the pytest process's own subtree
(``pid=os.getpid()``) from a background thread, so a test that starts thousands of processes cannot overflow the
kernel buffer.  Every process the pytest process forks belongs to whoever was running at the moment of the fork
(the kernel's timestamp against the moments tests and wider-scoped fixtures start and end: a session fixture's
server is the fixture's, not the first test's), and every process forked by one of those belongs to the same owner:
descent is followed through Fork events as they happen, so a double-forked daemon re-parented to init stays the
test's.  Each owner's processes form a :class:`proctap.run.tree.ProcessTree` rooted at the pytest process, rendered
by :mod:`proctap.run.report` and :mod:`proctap.run.timeline`.  At a test's end the thread is asked to drain
everything the kernel queued (a *sync*), then each process not seen exiting is checked in /proc.

Backends that read argv from /proc after the event (netlink, the unprivileged one) miss the argv of processes that
exit within a millisecond or so; for processes the pytest process starts itself through Python (``subprocess``,
``os.posix_spawn``, ``os.system``) the plugin then shows the argv Python asked the kernel to execute (seen by an
audit hook and matched to the kernel's Fork event by thread and time).

This module is a consumer at the top of the layout: nothing in proctap imports it.  (PYTEST_DONT_REWRITE: pytest
rewrites the asserts of plugin modules; this one's are plain checks.)
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .events import Event
    from .run.session import RunResult
    from .run.tree import ProcessNode, ProcessTree
    from .watcher import Watcher

__all__ = ["Process", "ProcessLeakWarning", "ProcessList", "Processes"]

EXIT_GRACE_S = 1.0  # how long a process found gone in /proc may take to report its Exit event
LEAK_GRACE_S = 0.05  # before reporting leaks: time for a just-forked process to exec
IDLE_WAIT_S = 0.25  # the background thread's longest wait (backends that batch wakeups, e.g. bpf, need a poll)
SYNC_TIMEOUT_S = 30.0  # a sync that takes longer means the background thread is stuck: give up and say so
SYNC_DRAIN_LIMIT_S = 2.0  # a sync drains until the kernel has nothing, or this long (a storm never stops)
SWITCH_KEEP_NS = 1_000_000_000  # owner switches older than this before the last sync are forgotten
_START_SLACK_NS = 50_000_000  # /proc start times have clock-tick precision
REPORT_SCHEMA_VERSION = 1
TREE_LIMIT = 200  # rows of a process tree in a failure report (past it, only the processes that did not end well)

LEAK_MODES = ("fail", "warn")


class ProcessLeakWarning(UserWarning):
    """A test (or a wider-scoped fixture) left processes running (``--proctap-leaks=warn``)."""


# -- who started a process ----------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Owner:
    """A test, or a fixture wider than a function's: the processes the pytest process forked while it ran, and
    their descendants."""

    kind: str  # "test" or "fixture"
    name: str  # the test's node id, or "NAME (SCOPE-scoped fixture)"
    tree: ProcessTree
    start_ns: int
    start_wall: float
    rusage_start: float
    end_ns: int | None = None
    lost: int = 0
    lost_unknown: int = 0
    lost_reasons: list[str] | None = None  # why, as the backend said (distinct, in order)


@dataclass
class _Request:
    """What Python asked to start (an audit event), waiting for the kernel's Fork from the same thread."""

    ns: int
    argv: tuple[str, ...] | None  # None: a plain fork
    executable: str | None


# -- the collector: one watcher, one thread, every owner ----------------------------------------------------------
_ACTIVE: list[_Collector] = []  # collectors of this process (the audit hook and the fork handler reach them here)
_HOOKS_INSTALLED = False
_SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.posix_spawnp", "os.system", "os.fork", "os.forkpty"}
)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in _SPAWN_EVENTS or not _ACTIVE:
        return
    try:
        executable: str | None = None
        argv: tuple[str, ...] | None = None
        if event == "subprocess.Popen" or event.startswith("os.posix_spawn"):
            executable = os.fsdecode(args[0])
            argv = tuple(os.fsdecode(a) for a in args[1])
        elif event == "os.system":
            command = args[0]
            argv = ("sh", "-c", os.fsdecode(command))
            executable = "/bin/sh"
        request = _Request(time.monotonic_ns(), argv, executable)
        tid = threading.get_native_id()
        for collector in _ACTIVE:
            collector.requested(tid, request)
    except Exception:  # never break the code under test
        pass


def _after_fork_in_child() -> None:
    """A forked copy of the pytest process (``os.fork``, multiprocessing) must not keep the watcher's kernel objects
    alive (BPF programs, sockets): their descriptors are pointed at /dev/null, keeping their numbers taken so that
    nothing the child opens later is closed by the watcher's own clean-up."""
    for collector in _ACTIVE:
        collector.forget_in_child()
    _ACTIVE.clear()


def _install_process_hooks() -> None:
    global _HOOKS_INSTALLED
    if not _HOOKS_INSTALLED:
        _HOOKS_INSTALLED = True
        sys.addaudithook(_audit)
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_fds() -> set[int]:
    """The descriptors open now (the listing's own descriptor is gone by the time it is checked)."""
    import fcntl  # (here: the plugin module must import anywhere pytest runs; it only watches on Linux)

    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_GETFD)
            fds.add(fd)
    return fds


def _gone(node: ProcessNode) -> bool:
    """Whether the process of ``node`` is no longer running: gone from /proc, a zombie (its Exit was sent), or its pid
    now belongs to another process."""
    from .linux import procfs

    st = procfs.read_stat(node.pid)
    if st is None or st.is_dead:
        return True
    return node.boot_start_ns is not None and abs(st.start_ns - node.boot_start_ns) > _START_SLACK_NS


class _Collector:
    """The watcher of the pytest process's subtree, drained by a background thread into one tree per owner."""

    def __init__(self, backend: str, buffer_bytes: int | None = None, accounting: bool = False) -> None:
        from .backends import choose_backend
        from .linux import procfs
        from .run.session import run_latency
        from .run.tree import ProcessTree
        from .watcher import Watcher

        self._tree_class = ProcessTree
        self.pid = os.getpid()
        self.root_argv = procfs.read_argv(self.pid)
        cls = choose_backend(backend)
        before = _open_fds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.watcher: Watcher = Watcher(
                "fork,exec,exit",
                cls,
                pid=self.pid,
                threads=False,
                buffer_bytes=buffer_bytes,
                latency=run_latency(cls.features),
                accounting=accounting,
            )
        self.notes = [str(w.message) for w in caught]
        self.backend = self.watcher.backend_name
        self.features = cls.features
        self.accounting = self.watcher.accounting
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds = (_open_fds() - before) | {self._wake_r, self._wake_w}
        self._lock = threading.Lock()  # the trees, the pid map, the switches
        self._cv = threading.Condition()  # sync requests
        self._requested = 0
        self._served = 0
        self._stopping = False
        self.error: BaseException | None = None
        self.closed = False
        self._switch_ns: list[int] = []
        self._switch_owner: list[_Owner | None] = []
        self._pids: dict[int, _Owner] = {}  # live processes -> their owner
        self._requests: dict[int, list[_Request]] = {}  # thread id -> Python's spawn requests, oldest first
        self._pending_argv: dict[int, _Request] = {}  # pid -> what Python asked it to exec (until its first exec)
        self._last_owner: _Owner | None = None  # (a loss between two tests is the previous test's)
        _install_process_hooks()
        _ACTIVE.append(self)
        self._thread = threading.Thread(target=self._loop, name="proctap-pytest", daemon=True)
        self._thread.start()

    # -- the main thread's side --------------------------------------------------------------------------------
    def new_owner(self, kind: str, name: str) -> _Owner:
        now = time.monotonic_ns()
        tree = self._tree_class(self.pid, now, self.root_argv)
        return _Owner(kind, name, tree, now, time.time(), _children_cpu())

    def switch(self, owner: _Owner | None) -> None:
        """From now on, processes the pytest process forks belong to ``owner`` (None: to nobody)."""
        now = time.monotonic_ns()
        with self._lock:
            self._switch_ns.append(now)
            self._switch_owner.append(owner)
            if owner is not None:
                self._last_owner = owner

    def requested(self, tid: int, request: _Request) -> None:
        """From the audit hook (any thread): Python is about to start a process from thread ``tid``."""
        with self._lock:
            queue = self._requests.setdefault(tid, [])
            queue.append(request)
            if len(queue) > 64:  # requests no Fork ever claimed (a spawn that failed before forking)
                del queue[:32]

    def sync(self) -> bool:
        """Wait until the background thread has drained everything the kernel queued before this call.  False when
        it could not (the thread failed or is stuck: the results may be incomplete)."""
        if self.closed or self.error is not None:
            return False
        start = time.monotonic_ns()
        with self._cv:
            self._requested += 1
            want = self._requested
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"s")
        with self._cv:
            done = self._cv.wait_for(lambda: self._served >= want or self.error is not None, SYNC_TIMEOUT_S)
        if not done or self.error is not None:
            return False
        with self._lock:  # forget owner switches no event can still refer to
            cut = bisect.bisect_right(self._switch_ns, start - SWITCH_KEEP_NS) - 1
            if cut > 0:
                del self._switch_ns[:cut]
                del self._switch_owner[:cut]
        return True

    def settle(self, owner: _Owner) -> list[ProcessNode]:
        """Sync, then give processes found gone in /proc (whose Exit event is still on its way: the kernel reports
        an exit after waking the parent) up to EXIT_GRACE_S to report; the ones that never do are marked ended with
        an unknown status.  Returns the owner's processes still running."""
        self.sync()
        deadline = time.monotonic() + EXIT_GRACE_S
        nap = 0.001
        while True:
            with self._lock:
                live = [n for n in owner.tree.live.values() if n is not owner.tree.root]
            suspects = [n for n in live if _gone(n)]
            if not suspects:
                return live
            if time.monotonic() >= deadline:
                break
            time.sleep(nap)
            nap = min(nap * 2, 0.05)
            self.sync()
        with self._lock:
            for node in suspects:
                if owner.tree.live.get(node.pid) is node:
                    owner.tree.mark_gone(node.pid)
                    if self._pids.get(node.pid) is owner:
                        del self._pids[node.pid]
            return [n for n in owner.tree.live.values() if n is not owner.tree.root]

    def nodes(self, owner: _Owner) -> list[ProcessNode]:
        """The owner's processes in tree order (parents before children, siblings by start)."""
        with self._lock:
            return [node for node, _ in owner.tree.walk() if node is not owner.tree.root]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._cv:
            self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"q")
        self._thread.join(timeout=SYNC_TIMEOUT_S)
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self.watcher.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def forget_in_child(self) -> None:
        """In a forked child: release the kernel objects without touching them (see _after_fork_in_child)."""
        self.closed = True
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)

    # -- the background thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        watcher = self.watcher
        try:
            while True:
                with self._cv:
                    if self._stopping:
                        return
                    want = self._requested
                if want > self._served:
                    limit = time.monotonic() + SYNC_DRAIN_LIMIT_S
                    while True:
                        events = watcher.read(0)
                        if events:
                            self._feed(events)
                        elif not watcher.busy or time.monotonic() > limit:
                            break
                    with self._cv:
                        self._served = want
                        self._cv.notify_all()
                    continue
                events = watcher.read(IDLE_WAIT_S, wake=[self._wake_r])
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                if events:
                    self._feed(events)
        except BaseException as exc:  # surfaced by sync() callers and the summary
            with self._cv:
                self.error = exc
                self._cv.notify_all()

    def _owner_at(self, ns: int) -> _Owner | None:
        i = bisect.bisect_right(self._switch_ns, ns) - 1
        return self._switch_owner[i] if i >= 0 else None

    def _claim_request(self, tid: int | None, ns: int) -> _Request | None:
        """The spawn request that thread ``tid`` made last before forking at ``ns`` (older ones are stale)."""
        queue = self._requests.get(tid) if tid is not None else None
        if not queue:
            return None
        i = 0
        while i < len(queue) and queue[i].ns <= ns:
            i += 1
        if i == 0:
            return None
        request = queue[i - 1]
        del queue[:i]
        return request

    def _feed(self, events: Sequence[Event]) -> None:
        from .events import Exec, Exit, Fork, Lost

        me = self.pid
        pids = self._pids
        with self._lock:
            for ev in events:
                if isinstance(ev, Fork):
                    if ev.parent_pid == me:
                        owner = self._owner_at(ev.timestamp_ns)
                        request = self._claim_request(ev.parent_tid, ev.timestamp_ns)
                        if owner is None:
                            continue
                        if request is not None and request.argv is not None:
                            self._pending_argv[ev.pid] = request
                    else:
                        owner = pids.get(ev.parent_pid)
                        if owner is None:
                            continue
                    stale = pids.get(ev.pid)
                    if stale is not None and stale is not owner:  # a reused pid: the old process's Exit was lost
                        stale.tree.mark_gone(ev.pid)
                    pids[ev.pid] = owner
                    owner.tree.feed((ev,))
                elif isinstance(ev, Exec):
                    owner = pids.get(ev.pid)
                    if owner is None:
                        continue
                    owner.tree.feed((ev,))
                    request = self._pending_argv.pop(ev.pid, None)
                    if request is not None and ev.argv is None:  # /proc was too late: what Python asked for
                        node = owner.tree.live.get(ev.pid)
                        if node is not None and node.execs:
                            node.argv = node.execs[-1].argv = request.argv
                            if node.filename is None and request.executable and request.executable.startswith("/"):
                                node.filename = node.execs[-1].filename = request.executable
                elif isinstance(ev, Exit):
                    if ev.is_thread:
                        continue
                    owner = pids.pop(ev.pid, None)
                    self._pending_argv.pop(ev.pid, None)
                    if owner is not None:
                        owner.tree.feed((ev,))
                elif isinstance(ev, Lost):
                    owner = self._owner_at(ev.timestamp_ns) or self._last_owner
                    if owner is not None:
                        owner.tree.feed((ev,))
                        reasons = owner.lost_reasons = owner.lost_reasons or []
                        if ev.reason not in reasons:
                            reasons.append(ev.reason)
                        if ev.count is None:
                            owner.lost_unknown += 1
                        else:
                            owner.lost += ev.count


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- what a test sees: the fixture -----------------------------------------------------------------------------------
class Process:
    """One process a test started (directly or through any depth of children), as the kernel reported it.

    A view of proctap's tree: read it after a call on :class:`Processes` (which first collects what the kernel
    reported until then).
    """

    __slots__ = ("_node", "_owner")

    def __init__(self, node: ProcessNode, owner: _Owner) -> None:
        self._node = node
        self._owner = owner

    @property
    def pid(self) -> int:
        return self._node.pid

    @property
    def ppid(self) -> int | None:
        """The pid of the process that started it (at the time: a daemon re-parented since keeps its first parent)."""
        return self._node.ppid

    @property
    def parent(self) -> Process | None:
        """The process that started it, or None when the test's own process did."""
        parent = self._node.parent
        if parent is None or parent is self._owner.tree.root:
            return None
        return Process(parent, self._owner)

    @property
    def children(self) -> ProcessList:
        return ProcessList(Process(kid, self._owner) for kid in self._node.children)

    @property
    def argv(self) -> tuple[str, ...] | None:
        """The argv of its last exec (a process that never exec'd has its parent's); None when unknown (see
        docs/pytest.md: a backend that reads argv from /proc misses processes that exit within a millisecond)."""
        return self._node.argv

    @property
    def filename(self) -> str | None:
        """The file it executed, when the backend or /proc told."""
        return self._node.filename

    @property
    def comm(self) -> str | None:
        return self._node.comm

    @property
    def name(self) -> str | None:
        """The program's name: the basename of argv[0], else of the file executed, else the comm."""
        node = self._node
        if node.argv:
            return node.argv[0].rsplit("/", 1)[-1]
        if node.filename:
            return node.filename.rsplit("/", 1)[-1]
        return node.comm

    @property
    def execs(self) -> list[tuple[str, ...] | None]:
        """The argv of each exec, in order."""
        return [e.argv for e in self._node.execs]

    @property
    def command(self) -> str:
        """The command line as a shell would read it (``[comm]`` or ``?`` when the argv is unknown)."""
        from .run.report import format_argv

        return format_argv(self._node, 10_000)

    @property
    def running(self) -> bool:
        return not self._node.ended

    @property
    def ended(self) -> bool:
        return self._node.ended

    @property
    def exit_code(self) -> int | None:
        """Its exit code; None while running, when killed by a signal, or when the exit was not seen."""
        return self._node.exit_code

    @property
    def signal(self) -> int | None:
        """The signal that killed it, or None."""
        return self._node.signal

    @property
    def signal_name(self) -> str | None:
        return self._node.signal_name

    @property
    def returncode(self) -> int | None:
        """As :attr:`subprocess.Popen.returncode`: the exit code, ``-N`` for death by signal N, None when unknown."""
        if self._node.signal is not None:
            return -self._node.signal
        return self._node.exit_code

    @property
    def outcome(self) -> str:
        """``ok``, ``failed`` (exit code not 0), ``signaled``, ``running``, or ``unknown`` (gone, exit unseen)."""
        return self._node.outcome.value

    @property
    def failed(self) -> bool:
        """It exited with a non-zero code or was killed by a signal."""
        return self._node.outcome.value in ("failed", "signaled")

    @property
    def leaked(self) -> bool:
        """Still running although the process that started it has exited: nobody is left to wait for it (a daemon,
        a shell's ``&`` child, a double fork)."""
        node = self._node
        return not node.ended and node.parent is not None and node.parent.ended

    @property
    def duration(self) -> float | None:
        """Seconds from fork to exit; None while running or unknown."""
        ns = self._node.duration_ns
        return None if ns is None else ns / 1e9

    @property
    def cpu(self) -> float | None:
        """CPU seconds (user + system) from taskstats, where the kernel gives them (root); else None."""
        acct = self._node.accounting
        return None if acct is None else (acct.cpu_user_us + acct.cpu_system_us) / 1e6

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and other._node is self._node

    def __hash__(self) -> int:
        return id(self._node)

    def __repr__(self) -> str:
        return f"<Process {self.pid} {self.command}: {_status_text(self._node)}>"


class ProcessList(list[Process]):
    """A list of :class:`Process` whose repr reads in an assertion message: ``[sh -c 'exit 3' (pid 123): exit 3]``."""

    def __repr__(self) -> str:
        from .text import elide

        return "[" + ", ".join(f"{elide(p.command, 80)} (pid {p.pid}): {_status_text(p._node)}" for p in self) + "]"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self]


def _status_text(node: ProcessNode) -> str:
    from .text import format_status

    outcome = node.outcome.value
    if outcome == "running":
        return "running"
    if outcome == "unknown":
        return "exit unseen"
    return format_status(node.exit_code, node.signal, node.core_dumped)


class Processes:
    """The ``processes`` fixture: the processes this test started, directly or through any depth of children.

    Every method first collects what the kernel reported until the call, so it sees the processes started just
    before, and the exit of those that just ended.  Processes started by fixtures wider than a function's (session,
    module, class) belong to the fixture, not to the test.
    """

    def __init__(self, collector: _Collector, owner: _Owner) -> None:
        self._collector = collector
        self._owner = owner

    def _list(self, keep: Callable[[ProcessNode], bool] | None = None) -> ProcessList:
        self._collector.settle(self._owner)  # (a process reaped just now may not have reported its exit yet)
        owner = self._owner
        nodes = self._collector.nodes(owner)
        return ProcessList(Process(n, owner) for n in nodes if keep is None or keep(n))

    def all(self) -> ProcessList:
        """Every process, parents before their children."""
        return self._list()

    def __iter__(self) -> Iterator[Process]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def execs(self, program: str) -> ProcessList:
        """The processes that exec'd ``program``: a name (``git``: matched against the basename of argv[0] and of
        the file executed, in any of the process's execs) or a path (``/usr/bin/git``)."""
        by_path = "/" in program

        def matches(node: ProcessNode) -> bool:
            for e in node.execs:
                for name in (e.filename, e.argv[0] if e.argv else None):
                    if name is not None and (name if by_path else name.rsplit("/", 1)[-1]) == program:
                        return True
            return False

        return self._list(matches)

    def failed(self) -> ProcessList:
        """The processes that exited with a non-zero code or were killed by a signal."""
        return self._list(lambda n: n.outcome.value in ("failed", "signaled"))

    def running(self) -> ProcessList:
        """The processes still running now (a process that just exited is waited for: its Exit event may lag)."""
        return self._list(lambda n: not n.ended)

    def leaked(self) -> ProcessList:
        """The processes still running whose parent has exited: daemons, ``&`` children of a shell, double forks.
        (After the test, ``--proctap-leaks`` reports every process still running.)"""
        return self._list(lambda n: not n.ended and n.parent is not None and n.parent.ended)

    def tree(self) -> str:
        """The process tree as text (the format of ``proctap run``'s report)."""
        self._collector.settle(self._owner)
        return "\n".join(_tree_lines(self._collector, self._owner))

    @property
    def backend(self) -> str:
        return self._collector.backend

    @property
    def lost(self) -> int:
        """Events the kernel dropped while this test ran (then the lists may be incomplete); an overrun of unknown
        size counts as one."""
        self._collector.sync()
        return self._owner.lost + self._owner.lost_unknown

    def __repr__(self) -> str:
        return f"<Processes of {self._owner.name}: {len(self)} processes>"


def _run_result(collector: _Collector, owner: _Owner, *, base_ns: int) -> RunResult:
    """The owner as a ``proctap run`` result (its root is the pytest process), to reuse the run reports."""
    from .run.session import RunResult

    end = owner.end_ns if owner.end_ns is not None else time.monotonic_ns()
    return RunResult(
        command=[owner.name],
        tree=owner.tree,
        root_status=0,
        exit_status=0,
        started_ns=base_ns,
        started_wall=owner.start_wall - (owner.start_ns - base_ns) / 1e9,
        finished_ns=end,
        backend=collector.backend,
        accounting_source="taskstats" if collector.accounting else None,
        accounting_note=None,
    )


def _tree_lines(collector: _Collector, owner: _Owner, limit: int = TREE_LIMIT) -> list[str]:
    from .run.report import format_report

    with collector._lock:
        lines = format_report(_run_result(collector, owner, base_ns=owner.start_ns), limit=limit, notes=False)
    return lines[1:]  # (the first line sums up a ``proctap run`` command)


def _leak_line(node: ProcessNode, root: ProcessNode) -> str:
    from .run.report import format_argv

    text = f"[{node.pid}] {format_argv(node, 100)}"
    parent = node.parent
    if parent is not None and parent is not root:
        text += f", started by [{parent.pid}] {format_argv(parent, 60)} ({_status_text(parent)})"
    return text


# -- the plugin --------------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("proctap", "proctap: the processes tests start")
    group.addoption(
        "--proctap-leaks",
        "--proctap-leaks=fail",
        action="store_const",
        const="fail",
        dest="proctap_leaks",
        default=None,
        help="after each test, fail it (an error at teardown) if processes it started still run "
        "(daemons, & children, double forks)",
    )
    group.addoption(
        "--proctap-leaks=warn",
        action="store_const",
        const="warn",
        dest="proctap_leaks",
        help="the same, but warn (naming the test and the process) instead of failing",
    )
    group.addoption(
        "--proctap-report",
        metavar="FILE",
        dest="proctap_report",
        default=None,
        help="write every test's processes to FILE: JSON, or the HTML timeline when FILE ends in .html",
    )
    group.addoption(
        "--proctap-backend",
        metavar="NAME",
        dest="proctap_backend",
        default="auto",
        help="the proctap backend to watch with (default auto: bpf as root, netlink unprivileged)",
    )
    group.addoption(
        "--proctap-buffer",
        metavar="BYTES",
        dest="proctap_buffer",
        type=int,
        default=None,
        help="the kernel buffer to ask for (default: the backend's); the summary says when events were lost",
    )
    group.addoption(
        "--proctap-accounting",
        action="store_true",
        dest="proctap_accounting",
        default=False,
        help="per-process CPU, peak RSS and I/O from taskstats (root; its listener hears every exit on the machine, "
        "so it costs more on a busy one); without it a test's CPU is that of the children pytest reaped",
    )
    group.addoption(
        "--proctap-top",
        metavar="N",
        dest="proctap_top",
        type=int,
        default=5,
        help="the summary lists the N tests that started the most processes and used the most CPU (default 5)",
    )
    parser.addini("proctap_leaks", "fail or warn: what --proctap-leaks does when given no value in the ini file "
                  "(set it to turn leak checks on for every run)", default="")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "proctap_allow_leaks: processes this test leaves running are expected (no --proctap-leaks check)"
    )
    config.pluginmanager.register(ProctapPlugin(config), "proctap-session")


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Processes:
    """The processes this test started (directly or through any depth of children): argv, exit status, duration,
    parent.  ``processes.execs("git")``, ``.failed()``, ``.running()``, ``.leaked()``, ``.tree()``."""
    plugin = request.config.pluginmanager.get_plugin("proctap-session")
    assert isinstance(plugin, ProctapPlugin)
    return plugin.fixture_value(request.node)


_RECORDS = pytest.StashKey[list[dict[str, Any]]]()
_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
_OWNER = pytest.StashKey["_Owner | None"]()


class ProctapPlugin:
    """The plugin's state for one pytest run: in each process that runs tests, the collector and the owners; in the
    process that reports (the only one, or xdist's controller), the records of every test."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        mode = config.getoption("proctap_leaks") or str(config.getini("proctap_leaks") or "").strip().lower() or None
        if mode is not None and mode not in LEAK_MODES:
            raise pytest.UsageError(f"proctap_leaks = {mode!r}: choose fail or warn")
        self.leaks: str | None = mode
        self.report_path: str | None = config.getoption("proctap_report")
        self.backend_name: str = config.getoption("proctap_backend")
        self.buffer_bytes: int | None = config.getoption("proctap_buffer")
        self.accounting: bool = config.getoption("proctap_accounting")
        self.top: int = config.getoption("proctap_top")
        self.asked = self.leaks is not None or self.report_path is not None
        self.worker: str | None = getattr(config, "workerinput", {}).get("workerid")
        self.controller = self.worker is None and getattr(config.option, "dist", "no") != "no"
        self.collector: _Collector | None = None
        self.failure: str | None = None  # why watching could not start
        self.fixture_owners: dict[int, _Owner] = {}
        self.leak_reports: list[tuple[str, str]] = []  # found during a teardown, reported at its end
        self.current: _Owner | None = None
        self.stack: list[_Owner | None] = []
        self.item: pytest.Item | None = None
        self.records: list[dict[str, Any]] = []
        self.outcomes: dict[str, str] = {}
        self.base_ns = time.monotonic_ns()
        self.base_wall = time.time()
        self.first_record = True

    # -- starting and stopping ---------------------------------------------------------------------------------
    def start(self) -> _Collector | None:
        """The collector, started now if it was not (None when watching cannot start here: ``failure`` says why)."""
        if self.collector is None and self.failure is None and not self.controller:
            from .errors import ProctapError

            try:
                self.collector = _Collector(self.backend_name, self.buffer_bytes, self.accounting)
            except ProctapError as exc:
                self.failure = str(exc)
        return self.collector

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.asked:
            self.base_ns = time.monotonic_ns()
            self.base_wall = time.time()
            if self.start() is None and self.failure is not None:
                raise pytest.UsageError(f"proctap: cannot watch processes: {self.failure}")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # A test using the fixture: start watching before the first test runs, so its fixtures' processes are seen.
        if not self.controller and any("processes" in getattr(item, "fixturenames", ()) for item in items):
            self.start()

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if not self.asked:
            return []
        return [backend_line(self.backend_name, self.collector)]

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.collector is not None:
            self.collector.close()

    # -- owners --------------------------------------------------------------------------------------------------
    def _push(self, owner: _Owner | None) -> None:
        self.stack.append(self.current)
        self.current = owner
        if self.collector is not None:
            self.collector.switch(owner)

    def _pop(self) -> None:
        self.current = self.stack.pop() if self.stack else None
        if self.collector is not None:
            self.collector.switch(self.current)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        self.item = item
        if self.collector is not None:
            self._begin(item, self.collector)
        try:
            return (yield)
        finally:
            if _OWNER in item.stash:  # (also when the fixture started watching mid-test)
                self._pop()
            self.item = None

    def _begin(self, item: pytest.Item, collector: _Collector) -> _Owner:
        owner = collector.new_owner("test", item.nodeid)
        item.stash[_OWNER] = owner
        item.stash[_RECORDS] = []
        self._push(owner)
        return owner

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        collector = self.collector
        if collector is None or fixturedef.scope == "function":
            return (yield)
        owner = collector.new_owner("fixture", f"{fixturedef.argname} ({fixturedef.scope}-scoped fixture)")
        self.fixture_owners[id(fixturedef)] = owner
        self._push(owner)
        try:
            return (yield)
        finally:
            self._pop()

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
        owner = self.fixture_owners.pop(id(fixturedef), None)
        if owner is None or self.collector is None:
            return
        leaked = self._finish(owner, check=self.leaks is not None)
        if leaked:
            self.leak_reports.append(self._leak_report(owner, leaked))
            if self.item is None:  # torn down outside any test (an interrupted run): nothing left to fail
                self._report_leaks(can_fail=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        """After the fixtures' teardown: the test's leaks, and those of wider fixtures finalized meanwhile, fail
        the teardown together (or warn)."""
        owner = item.stash.get(_OWNER, None)
        allowed = item.get_closest_marker("proctap_allow_leaks") is not None
        try:
            result = yield
        except BaseException:
            if owner is not None:
                leaked = self._finish(owner, check=self.leaks is not None, allowed=allowed)
                if leaked:
                    self.leak_reports.append(self._leak_report(owner, leaked))
            self._report_leaks(can_fail=False)  # the teardown failed already: warn, so they are not lost
            raise
        finally:
            item.stash[_OWNER] = None  # (the tree is no longer needed: its record is kept)
        if owner is not None:
            leaked = self._finish(owner, check=self.leaks is not None, allowed=allowed)
            if leaked:
                self.leak_reports.append(self._leak_report(owner, leaked))
        self._report_leaks(can_fail=True)
        return result

    def _finish(self, owner: _Owner, *, check: bool, allowed: bool = False) -> list[ProcessNode]:
        """The owner's end: collect, find what still runs, keep its record.  Returns the leaked processes (when
        ``check``, and the test is not marked ``proctap_allow_leaks``: then what still runs is no leak)."""
        collector = self.collector
        assert collector is not None
        check = check and not allowed
        running = collector.settle(owner)
        if running and check:
            # A process forked just before the end (a shell's ``cmd &``) may not have exec'd yet: a moment more, so
            # the report names the program it runs, not its parent's.
            time.sleep(LEAK_GRACE_S)
            running = collector.settle(owner)
        owner.end_ns = time.monotonic_ns()
        record = self._record(collector, owner, [] if allowed else running)
        if self.item is not None:
            self.item.stash.setdefault(_RECORDS, []).append(record)  # sent with the item's teardown report
        elif not self.worker:
            self.records.append(record)  # (a fixture torn down after the last test, e.g. on an interrupted run)
        return running if check else []

    def _leak_report(self, owner: _Owner, leaked: list[ProcessNode]) -> tuple[str, str]:
        """(the message naming the owner and its leaked processes, the owner's process tree)."""
        from .text import plural

        what = "test" if owner.kind == "test" else "fixture"
        lines = [f"proctap: {what} {owner.name} left {plural(len(leaked), 'process')} running:"]
        lines.extend("  " + _leak_line(node, owner.tree.root) for node in leaked)
        assert self.collector is not None
        return "\n".join(lines), "\n".join(_tree_lines(self.collector, owner))

    def _report_leaks(self, *, can_fail: bool) -> None:
        reports, self.leak_reports = self.leak_reports, []
        if not reports:
            return
        if self.leaks == "warn" or not can_fail:
            item = self.item
            path, line = (str(item.path), item.location[1] or 0) if item is not None else ("<proctap>", 0)
            for message, _ in reports:  # (pointing at the test, not at this line)
                warnings.warn_explicit(ProcessLeakWarning(message), ProcessLeakWarning, path, line + 1)
            return
        text = "\n\n".join(f"{message}\n\nthe processes it started:\n{tree}" for message, tree in reports)
        pytest.fail(text, pytrace=False)

    def fixture_value(self, item: pytest.Item) -> Processes:
        collector = self.start()
        if collector is None:
            pytest.skip(f"proctap cannot watch processes here: {self.failure}")
        owner = item.stash.get(_OWNER, None)
        if owner is None:  # the watcher started just now, inside this test
            owner = self._begin(item, collector)
        return Processes(collector, owner)

    # -- records ------------------------------------------------------------------------------------------------
    def _record(self, collector: _Collector, owner: _Owner, leaked: list[ProcessNode]) -> dict[str, Any]:
        """What the reporting process needs of an owner: a JSON-able dict (it travels from xdist's workers)."""
        nodes = collector.nodes(owner)
        outcomes = [n.outcome.value for n in nodes]
        accounted = [n.accounting for n in nodes if n.accounting is not None]
        if collector.accounting:
            cpu: float | None = sum(a.cpu_user_us + a.cpu_system_us for a in accounted) / 1e6
            cpu_source = "taskstats"
        else:
            cpu = max(0.0, _children_cpu() - owner.rusage_start)
            cpu_source = "rusage"
        from .run.report import format_argv

        record: dict[str, Any] = {
            "kind": owner.kind,
            "name": owner.name,
            "worker": self.worker,
            "worker_pid": collector.pid,
            "start_ns": owner.start_ns,
            "end_ns": owner.end_ns,
            "processes": len(nodes),
            "failed": outcomes.count("failed") + outcomes.count("signaled"),
            "unknown": outcomes.count("unknown"),
            "cpu_s": cpu,
            "cpu_source": cpu_source,
            "leaked": [
                {
                    "pid": n.pid,
                    "key": None if n.boot_start_ns is None else f"{n.pid}@{n.boot_start_ns}",
                    "argv": None if n.argv is None else list(n.argv),
                    "command": format_argv(n, 200),
                    "text": _leak_line(n, owner.tree.root),
                }
                for n in leaked
            ],
            "lost": owner.lost,
            "lost_unknown": owner.lost_unknown,
            "lost_reasons": owner.lost_reasons or [],
            "backend": collector.backend,
            "notes": collector.notes if self.first_record else [],
            "error": None if collector.error is None else repr(collector.error),
            "document": self._document(collector, owner) if self.report_path else None,
        }
        self.first_record = False
        return record

    @staticmethod
    def _document(collector: _Collector, owner: _Owner) -> dict[str, Any]:
        """The owner's processes as ``proctap run`` documents them, offsets from boot-independent monotonic 0 (the
        reporting process rebases them); the pytest process itself (the root) is left out."""
        from .run.report import run_document

        with collector._lock:
            doc = run_document(_run_result(collector, owner, base_ns=0))
        procs = doc["processes"][1:]
        for p in procs:
            p["id"] -= 1
            p["parent"] = None if not p["parent"] else p["parent"] - 1
            p["depth"] = max(0, p["depth"] - 1)
        return {"processes": procs, "lost": doc["lost"], "counts": _counts(procs)}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report: pytest.TestReport = yield
        if call.when == "call" and report.failed and self.collector is not None:
            owner = item.stash.get(_OWNER, None)
            if owner is not None and self.collector.sync() and self.collector.nodes(owner):
                report.sections.append(
                    ("proctap: processes started by this test", "\n".join(_tree_lines(self.collector, owner)))
                )
        if call.when == "teardown":
            records = item.stash.get(_RECORDS, None)
            if records:
                report.proctap = records  # type: ignore[attr-defined]  # travels with the report (xdist)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.worker:
            return
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
        elif report.skipped:
            outcome = "skipped"
        else:
            outcome = "passed"
        if _RANK[outcome] > _RANK[self.outcomes.get(report.nodeid, "passed")]:
            self.outcomes[report.nodeid] = outcome
        records = getattr(report, "proctap", None)
        if report.when == "teardown" and isinstance(records, list):
            self.records.extend(records)

    # -- the end --------------------------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.report_path and not self.worker:
            self._write_report(int(exitstatus))

    def _write_report(self, exitstatus: int) -> None:
        command = ["pytest", *self.config.invocation_params.args]
        doc = report_document(self.records, self.outcomes, self.base_ns, self.base_wall, exitstatus, command)
        path = Path(self.report_path or "")
        if path.suffix.lower() in (".html", ".htm"):
            from .run.timeline import render_html

            text = render_html(timeline_document(doc))
        else:
            text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.failure = f"cannot write {path}: {exc.strerror}"

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.worker or not (self.asked or self.records):
            return
        if not self.asked and not any(r["lost"] or r["lost_unknown"] or r["error"] for r in self.records):
            return
        lines = summary_lines(self.records, self.outcomes, self.top, self.report_path, self.failure)
        terminalreporter.write_sep("=", "proctap")
        for line in lines:
            red = line.startswith("!!")
            terminalreporter.write_line(line, red=red, bold=red)


# -- reports (in the reporting process) -------------------------------------------------------------------------------
def backend_line(name: str, collector: _Collector | None) -> str:
    """The report header's line: the backend, and what it may miss here."""
    from .backends import Feature, choose_backend
    from .errors import ProctapError

    if collector is not None:
        backend, features, notes = collector.backend, collector.features, collector.notes
    else:  # xdist's controller watches nothing: the workers will choose the same way
        try:
            cls = choose_backend(name)
        except ProctapError as exc:
            return f"proctap: cannot watch processes: {exc}"
        backend, features, notes = cls.name, cls.features, []
    misses = []
    if Feature.ARGV_KERNEL not in features:
        misses.append("argv read from /proc after exec: a process that exits within ~1 ms shows none unless "
                      "Python started it")  # fmt: skip
    if Feature.EXIT_STATUS not in features:
        misses.append("exit statuses unknown")
    if backend == "proc":
        misses.append("processes shorter than a /proc scan are missed (counted as lost)")
    misses.extend(notes)
    text = f"proctap: watching the processes tests start with the {backend} backend"
    return text + ("; " + "; ".join(misses) if misses else "")


def _counts(procs: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"processes": len(procs), "ok": 0, "failed": 0, "signaled": 0, "running": 0, "unknown": 0}
    for p in procs:
        counts[p["outcome"]] = counts.get(p["outcome"], 0) + 1
    return counts


_OFFSET_FIELDS = ("start_offset_ns", "end_offset_ns")


def _rebase(procs: list[dict[str, Any]], base: int) -> None:
    for p in procs:
        for key in _OFFSET_FIELDS:
            if p.get(key) is not None:
                p[key] -= base
        for e in p.get("execs", ()):
            if e.get("offset_ns") is not None:
                e["offset_ns"] -= base
        for f in p.get("fork_failures", ()):
            f["offset_ns"] -= base
        for t in p.get("threads", ()):
            for key in _OFFSET_FIELDS:
                if t.get(key) is not None:
                    t[key] -= base


def report_document(
    records: list[dict[str, Any]],
    outcomes: dict[str, str],
    base_ns: int,
    base_wall: float,
    exitstatus: int,
    command: Sequence[str] = ("pytest",),
) -> dict[str, Any]:
    """The ``--proctap-report`` JSON document (docs/pytest.md): one entry per test (and per wider-scoped fixture
    that started processes), offsets in ns from ``started_wall``."""
    entries = []
    totals = _counts([])
    for rec in sorted(records, key=lambda r: r["start_ns"]):
        doc = rec.get("document") or {"processes": [], "lost": [], "counts": {}}
        procs = doc["processes"]
        _rebase(procs, base_ns)
        for lost in doc["lost"]:
            lost["offset_ns"] -= base_ns
        entry = {
            "kind": rec["kind"],
            "name": rec["name"],
            "outcome": outcomes.get(rec["name"], "passed") if rec["kind"] == "test" else None,
            "worker": rec["worker"],
            "worker_pid": rec["worker_pid"],
            "start_offset_ns": rec["start_ns"] - base_ns,
            "end_offset_ns": None if rec["end_ns"] is None else rec["end_ns"] - base_ns,
            "cpu_s": None if rec["cpu_s"] is None else round(rec["cpu_s"], 3),
            "cpu_source": rec["cpu_source"],
            "counts": doc["counts"] or {"processes": rec["processes"]},
            "leaked": [{k: v for k, v in leak.items() if k != "text"} for leak in rec["leaked"]],
            "lost": doc["lost"],
            "processes": procs,
        }
        entries.append(entry)
        for key in totals:
            totals[key] += entry["counts"].get(key, 0)
    backends = sorted({r["backend"] for r in records})
    notes = sorted({n for r in records for n in r["notes"]})
    sources = sorted({r["cpu_source"] for r in records})
    return {
        "schema": "proctap-pytest",
        "schema_version": REPORT_SCHEMA_VERSION,
        "command": list(command),
        "started_wall": base_wall,
        "duration_ns": max([e["end_offset_ns"] or 0 for e in entries], default=0),
        "exit_status": exitstatus,
        "backend": ", ".join(backends) or None,
        "cpu_source": ", ".join(sources) or None,
        "notes": notes,
        "counts": totals,
        "lost": sum(r["lost"] for r in records),
        "lost_unknown": sum(r["lost_unknown"] for r in records),
        "tests": entries,
    }


def timeline_document(report: dict[str, Any]) -> dict[str, Any]:
    """The report as one ``proctap run`` document for the HTML timeline: a row per pytest process (per xdist
    worker), under it a row per test (a bar for its duration, coloured by its outcome), under that its processes."""
    rows: list[dict[str, Any]] = []
    workers: dict[int, int] = {}
    lost: list[dict[str, Any]] = []

    def row(pid: int, ppid: int | None, parent: int | None, depth: int, argv: list[str], start: int | None,
            end: int | None, outcome: str) -> int:  # fmt: skip
        rows.append({
            "id": len(rows), "parent": parent, "depth": depth, "pid": pid, "ppid": ppid, "key": None, "argv": argv,
            "filename": None, "comm": None, "execed": False, "execs": [], "start_offset_ns": start,
            "end_offset_ns": end, "duration_ns": None if start is None or end is None else end - start,
            "outcome": outcome, "exit_seen": outcome != "unknown", "status": None,
            "exit_code": {"ok": 0, "failed": 1}.get(outcome), "signal": None, "signal_name": None,
            "core_dumped": False, "outlived_root": False, "accounting": None, "fork_failures": [], "threads": [],
        })  # fmt: skip
        return len(rows) - 1

    end = report["duration_ns"]
    order: dict[int, int] = {}
    for entry in report["tests"]:
        order.setdefault(entry["worker_pid"], len(order))
    real: list[dict[str, Any]] = []
    for entry in sorted(report["tests"], key=lambda e: (order[e["worker_pid"]], e["start_offset_ns"])):
        wpid = entry["worker_pid"]
        if wpid not in workers:
            label = ["pytest", f"worker {entry['worker']}"] if entry["worker"] else ["pytest"]
            workers[wpid] = row(wpid, None, None, 0, label, 0, end, "ok")
        outcome = "failed" if entry["outcome"] in ("failed", "error") or entry["leaked"] else "ok"
        label = ["pytest" if entry["kind"] == "test" else "fixture", entry["name"]]
        test_row = row(wpid, wpid, workers[wpid], 1, label, entry["start_offset_ns"], entry["end_offset_ns"], outcome)
        first = len(rows)
        for p in entry["processes"]:
            p = dict(p)
            p["id"] = first + p["id"]
            p["parent"] = test_row if p["parent"] is None else first + p["parent"]
            p["depth"] = p["depth"] + 2
            rows.append(p)
            real.append(p)
        lost.extend(entry["lost"])
    counts = _counts(real)
    return {
        "schema": "proctap-run",
        "schema_version": 1,
        "command": report["command"],
        "exit_status": report["exit_status"],
        "root_status": report["exit_status"],
        "started_wall": report["started_wall"],
        "duration_ns": end,
        "root_end_offset_ns": end,
        "backend": report["backend"],
        "accounting_source": "taskstats" if report["cpu_source"] == "taskstats" else None,
        "accounting_note": "; ".join(report["notes"]) or None,
        "accounting_overruns": 0,
        "lost": lost,
        "counts": {**counts, "threads": 0, "fork_failures": 0, "outlived_root": 0, "core_dumps": 0},
        "watch_stats": {},
        "proctap_cpu_s": 0,
        "processes": rows,
    }


def summary_lines(
    records: list[dict[str, Any]], outcomes: dict[str, str], top: int, report_path: str | None, failure: str | None
) -> list[str]:
    """The terminal summary: totals, the tests that started the most processes and used the most CPU, the leaks,
    lost events."""
    from .text import plural

    lines = []
    tests = [r for r in records if r["kind"] == "test"]
    total = sum(r["processes"] for r in records)
    failed = sum(r["failed"] for r in records)
    leaked = [r for r in records if r["leaked"]]
    cpu = [r["cpu_s"] for r in records if r["cpu_s"] is not None]
    sources = sorted({r["cpu_source"] for r in records})
    backends = ", ".join(sorted({r["backend"] for r in records})) or "none"
    spawning = sum(1 for r in tests if r["processes"])
    left = sum(len(r["leaked"]) for r in records)
    lines.append(
        f"{plural(total, 'process')} started by {spawning} of {plural(len(tests), 'test')} "
        f"({failed} exited non-zero or killed, {left} left running); "
        f"CPU {sum(cpu):.2f}s ({' + '.join(_CPU_SOURCES.get(s, s) for s in sources) or 'none'}); backend {backends}"
    )
    width = max([len(r["name"]) for r in records] + [10])
    if top > 0 and spawning:
        lines.append("tests that started the most processes:")
        ranked = sorted(tests, key=lambda r: (-r["processes"], r["name"]))[:top]
        lines.extend(_test_line(r) for r in ranked if r["processes"])
        busy = [r for r in tests if (r["cpu_s"] or 0) >= 0.005]
        if busy:
            lines.append("tests whose processes used the most CPU:")
            ranked = sorted(busy, key=lambda r: (-r["cpu_s"], r["name"]))[:top]
            lines.extend(_test_line(r) for r in ranked)
    if leaked:
        lines.append(f"!! processes left running by {plural(len(leaked), 'test')} (or fixture):")
        for r in leaked:
            for leak in r["leaked"]:
                lines.append(f"!!   {r['name']:<{min(width, 60)}}  {leak['text']}")
    lost = sum(r["lost"] for r in records)
    unknown = sum(r["lost_unknown"] for r in records)
    if lost or unknown:
        hit = [r["name"] for r in records if r["lost"] or r["lost_unknown"]]
        what = f"{plural(lost, 'event')} lost"
        if unknown:
            what += f" (+{plural(unknown, 'overrun')} of unknown size)"
        reasons = sorted({reason for r in records for reason in r.get("lost_reasons", ())})
        lines.append(f"!! {what} ({'; '.join(reasons)}): the process lists of {', '.join(hit[:5])}"
                     f"{' ...' if len(hit) > 5 else ''} may be incomplete")  # fmt: skip
    errors = sorted({r["error"] for r in records if r["error"]})
    lines.extend(f"!! the watcher failed: {e}: results after it are incomplete" for e in errors)
    if failure:
        lines.append(f"!! {failure}")
    elif report_path:
        lines.append(f"report: {report_path}")
    return lines


_CPU_SOURCES = {"taskstats": "taskstats", "rusage": "rusage of reaped children"}


def _test_line(record: dict[str, Any]) -> str:
    cpu = record["cpu_s"]
    cpu_text = "   -" if cpu is None else f"{cpu:7.2f}s CPU"
    return f"  {record['processes']:>7} processes {cpu_text}  {record['name']}"
