"""The Python API: :func:`watch` (blocking iterator, or ``read()`` after select) and :func:`awatch` (asyncio).

Example::

    with proctap.watch(events={"exec", "exit"}) as w:
        for ev in w:
            print(ev)

Every consumer (the iterator, :meth:`Watcher.read`, asyncio, ``proctap watch``, ``proctap run``) takes events
through the same two steps: :meth:`Watcher.read` is the one drain loop (batching while events flow, blocking while
idle), and ``Watcher._drain`` the one enrichment step (filters, /proc reads, the process table, accounting).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import math
import os
import select
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from .accounting import ExitAccounting
from .backends import (
    DEFAULT_ARGV_LIMIT,
    MAX_ARGV_LIMIT,
    Backend,
    BackendConfig,
    OptionsSpec,
    check_options,
    choose_backend,
)
from .cache import DEFAULT_CAPACITY, DEFAULT_GRACE_S, START_TOLERANCE_NS, Process, ProcessCache, synthetic_exit
from .enrich import enrich_exec, read_existing
from .errors import BackendUnavailable, ProctapError
from .events import Event, EventKind, Exec, Exit, Fork, Lost
from .linux import procfs
from .linux.cgroups import relative_cgroup, under
from .linux.clock import Clock
from .snapshot import scan, start_times, unseen_or_gone
from .where import AUDIT_UNSET, Cgroups

__all__ = [
    "DEFAULT_LATENCY_S",
    "AsyncWatcher",
    "EventFilter",
    "WatchStats",
    "Watcher",
    "awatch",
    "parse_kinds",
    "settle_for_storms",
    "watch",
]

KindSpec = EventKind | str | type[Event]
WakeFd = int | tuple[int, int]  # a descriptor (POLLIN) or (descriptor, poll event mask)
DEFAULT_LATENCY_S = 0.01  # how long events may wait in the kernel between drains while they keep coming
ACCOUNTING_DRAIN_S = 1.0  # with accounting, the longest idle wait: the taskstats socket hears every exit
PENDING_SLICE = 1024  # events handed over per read() from what is already queued (a snapshot)
# A process the scan found may be reported by the backend a moment later (its fork tracepoint fires after it is in
# /proc: kernel/fork.c, copy_process then the tracepoint in kernel_clone); its Fork within this many seconds of the
# snapshot is a duplicate.
SNAPSHOT_RACE_S = 2.0
REPAIR_INTERVAL_S = 0.5  # at most one /proc reconciliation this often in a storm of losses (the last one is kept)
CACHE_KINDS = frozenset({EventKind.FORK, EventKind.EXEC, EventKind.EXIT})  # what keeps the process cache complete
_set = object.__setattr__  # Event.process is set once, by the drain step, on an event nobody else holds yet


def parse_kinds(spec: Iterable[KindSpec] | str | None) -> frozenset[EventKind]:
    """``None`` or ``"all"`` -> every kind; else kinds named by EventKind, value string or event class.

    Raises ProctapError naming the valid kinds for an unknown name.
    """
    if spec is None:
        return frozenset(EventKind)
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()]
    kinds: set[EventKind] = set()
    every = False
    for item in spec:
        if isinstance(item, EventKind):
            kinds.add(item)
        elif isinstance(item, type) and issubclass(item, Event):
            kinds.add(item.kind)
        else:
            name = str(item).strip().lower().replace("-", "_")
            if name == "all":
                every = True  # still check the other names: "all,bogus" is as wrong as "bogus,all"
                continue
            try:
                kinds.add(EventKind(name))
            except ValueError:
                valid = ", ".join(k.value for k in EventKind)
                raise ProctapError(f"unknown event type {item!r}: choose from {valid} or all") from None
    if every:
        return frozenset(EventKind)
    kinds.add(EventKind.LOST)  # never silent
    return frozenset(kinds)


class EventFilter:
    """The user's filters, applied exactly in user space (backends may pre-filter in the kernel).

    ``pid``: that process and its descendants (followed through Fork events).  ``comm``: processes whose comm
    (or argv[0] basename) equals it.  ``threads``: False drops thread Fork/Exit.  Lost events always pass.

    Filters on who and where a process is (:meth:`context_matches`, on the event's process as the cache knows it):
    ``uid`` (its real uid), ``loginuid`` (its audit login uid; :data:`proctap.where.AUDIT_UNSET` for "never
    logged in"), ``cgroup`` (a v2 cgroup path: that cgroup and below), ``container`` (an id prefix or a name;
    ``"any"``: every containerised process).
    """

    def __init__(
        self,
        kinds: frozenset[EventKind],
        *,
        threads: bool = True,
        pid: int | None = None,
        comm: str | None = None,
        uid: int | None = None,
        loginuid: int | None = None,
        cgroup: str | None = None,
        container: str | None = None,
    ) -> None:
        self.kinds = kinds
        self.threads = threads
        self.comm = comm
        self.tracked: set[int] | None = None if pid is None else {pid}
        self.uid = uid
        self.loginuid = loginuid
        self.cgroup = cgroup
        self.container = container
        self.by_context = not (uid is None and loginuid is None and cgroup is None and container is None)

    def in_scope(self, event: Event) -> bool:
        """Every filter but the comm one (which may need the event enriched first); follows the pid subtree."""
        if isinstance(event, Lost):
            return True
        tracked = self.tracked
        if tracked is not None:
            if isinstance(event, Fork) and not event.is_thread:
                if event.parent_pid in tracked:
                    tracked.add(event.pid)
                else:  # a new process outside the subtree: if it reuses a tracked pid, that one is gone
                    tracked.discard(event.pid)
                    return False
            elif event.pid not in tracked:
                return False
        if event.kind not in self.kinds:
            return False
        return self.threads or not (isinstance(event, (Fork, Exit)) and event.is_thread)

    def comm_matches(self, event: Event, proc: Process | None) -> bool:
        """The comm filter: the event's comm, else its process's comm or argv[0] basename."""
        if self.comm is None or isinstance(event, Lost):
            return True
        comm = getattr(event, "comm", None)
        if comm is None and proc is not None:
            comm = proc.comm
            if comm != self.comm and proc.argv:
                return proc.argv[0].rsplit("/", 1)[-1] == self.comm
        return comm == self.comm

    def context_matches(self, event: Event, proc: Process | None) -> bool:
        """The uid, loginuid, cgroup and container filters, on the event's process (Lost events pass)."""
        if not self.by_context or type(event) is Lost:
            return True
        if proc is None:
            return False
        if self.uid is not None and proc.uid != self.uid:
            return False
        where = proc.where
        if self.loginuid is not None:
            loginuid = None if where is None else where.loginuid
            if (AUDIT_UNSET if loginuid is None else loginuid) != self.loginuid:
                return False
        if self.cgroup is not None and not under(None if where is None else where.cgroup, self.cgroup):
            return False
        if self.container is not None:
            found = None if where is None else where.container
            if found is None:
                return False
            wanted = self.container
            return wanted == "any" or found.id.startswith(wanted) or found.name == wanted
        return True

    def follow(self, pid: int) -> None:
        """Follow ``pid`` too (a process the caller started itself, whose Fork event may come late or be lost)."""
        if self.tracked is not None:
            self.tracked.add(pid)

    def forget(self, event: Event) -> None:
        """After delivery: stop tracking processes that ended."""
        if self.tracked is not None and isinstance(event, Exit) and not event.is_thread:
            self.tracked.discard(event.pid)


@dataclass
class WatchStats:
    """Counters of a watcher, readable at any time.

    ``received``: events from the backend by kind (before filters); ``delivered``: events handed to the user;
    ``lost``: events the kernel reported dropped (exact counts summed); ``lost_unknown``: overruns whose size the
    kernel did not tell; ``backend``: the backend's own counters; ``accounting_overruns``: taskstats socket overflows
    (records dropped, count unknown; with ``accounting=True``); ``drains``: how many times the backend was read (in
    a storm, far fewer than the events: each drain takes what piled up during ``latency``, whatever the filters
    keep).
    """

    backend_name: str
    received: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    lost: int = 0
    lost_unknown: int = 0
    backend: dict[str, int] = field(default_factory=dict)
    accounting_overruns: int = 0
    drains: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend_name,
            "received": dict(self.received),
            "delivered": self.delivered,
            "lost": self.lost,
            "lost_unknown": self.lost_unknown,
            "backend_stats": dict(self.backend),
            "accounting_overruns": self.accounting_overruns,
            "drains": self.drains,
        }


class Watcher:
    """Watches task events from one backend.  Iterate it, or call :meth:`read`; ``fileno()`` plugs into select.

    ``backend``: a name (``"auto"`` picks the first that works here) or a backend class already chosen (then it is
    not probed again).  ``latency`` (seconds) bounds how long events may wait in the kernel buffer while events keep
    coming: between two drains that found events the watcher sleeps instead of blocking in poll, so the forking
    tasks never have to wake it (waking a reader per event is what makes monitors slow down a fork storm).  When
    idle it blocks in poll and wakes on the first event.

    ``read_proc``: fill what the kernel did not say (exec'd argv, filename, comm, parent) from /proc right after the
    event (``Origin.PROC``).

    ``context``: who and where each process is (:class:`proctap.Where` on ``event.process.where``: cgroup,
    container, login uid and session, terminal, cwd, namespaces), captured in the kernel at Fork and Exec where the
    backend can (``Feature.CONTEXT_KERNEL``), else read from /proc for each Exec and for processes learnt from
    /proc; a forked child has its parent's until it exec's.  It feeds the process cache (the backend delivers
    forks, execs and exits whatever ``events`` says) so that every event carries its process.  The filters ``uid``
    (real uid), ``loginuid`` (audit login uid, 4294967295: never logged in), ``cgroup`` (a v2 cgroup path as
    /proc/PID/cgroup shows it, or its directory: that cgroup and below) and ``container`` (an id prefix or a name;
    ``"any"``: every containerised process) imply it; they are exact (applied to every event's process) and also
    run in the kernel where the backend can (``Feature.CONTEXT_FILTER_KERNEL``).

    The process cache (:attr:`processes`, :class:`proctap.ProcessCache`) follows every process while the backend
    delivers forks, execs and exits (the default kinds; ``track=True`` asks for them whatever ``events`` says), and
    each event then carries its process (``event.process``).  ``track`` also reads the processes that exist at the
    start from /proc into it; ``snapshot`` delivers them first, as ``Existing`` events (parents before children),
    then the live stream, with no gap and no duplicate.  After lost events the cache is reconciled with /proc
    (``repair``): processes found gone get a synthetic Exit (``synthetic=True``, status unknown), processes never
    seen an ``Existing`` event with reason ``"repair"`` (delivered when forks or ``existing`` are wanted); counts in
    ``processes.stats()``.  ``grace`` (seconds) and ``cache_capacity`` bound what the cache holds.  ``cache=False``
    (unless ``track``/``snapshot``) leaves the cache unfed and ``event.process`` None: about 1 us less per event,
    for consumers that only forward events (``proctap watch --json`` without ``--context``).

    ``accounting``: add taskstats figures (CPU, peak RSS, I/O,
    context switches) to Exit events; needs CAP_NET_ADMIN: where taskstats is unavailable a RuntimeWarning says why
    and Exit events carry no accounting (``accounting_note`` keeps the reason).  ``options``: backend-specific
    options (``proctap backends`` lists them), as a dict (``{"interval": "50ms"}``), ``(name, value)`` pairs or
    ``"NAME=VALUE"`` strings; an option the backend does not accept, a repeated one or a bad value raises
    ProctapError naming what the backend accepts.
    """

    def __init__(
        self,
        events: Iterable[KindSpec] | str | None = None,
        backend: str | type[Backend] = "auto",
        *,
        pid: int | None = None,
        threads: bool = True,
        comm: str | None = None,
        buffer_bytes: int | None = None,
        read_proc: bool = True,
        argv_limit: int = DEFAULT_ARGV_LIMIT,
        latency: float = DEFAULT_LATENCY_S,
        track: bool = False,
        snapshot: bool = False,
        cache: bool = True,
        repair: bool = True,
        grace: float = DEFAULT_GRACE_S,
        cache_capacity: int = DEFAULT_CAPACITY,
        accounting: bool = False,
        options: OptionsSpec = (),
        context: bool = False,
        uid: int | None = None,
        loginuid: int | None = None,
        cgroup: str | None = None,
        container: str | None = None,
    ) -> None:
        kinds = parse_kinds(events)
        _check_pid(pid)
        _check_id("uid", uid)
        _check_id("loginuid", loginuid)
        if container is not None and not container.strip():
            raise ProctapError("container must be an id prefix, a name or 'any': an empty one matches nothing")
        by_context = not (uid is None and loginuid is None and cgroup is None and container is None)
        context = context or by_context
        self.cgroups = Cgroups() if context else None
        if cgroup is not None:
            found = relative_cgroup(cgroup, None if self.cgroups is None else self.cgroups.root)
            if found is None:
                where = "no cgroup2 mount here" if self.cgroups is None or self.cgroups.root is None else (
                    f"under {self.cgroups.root}")
                raise ProctapError(f"no cgroup {cgroup!r} ({where}): give a path as /proc/PID/cgroup's 0:: line "
                                   "shows it, or the cgroup's directory")  # fmt: skip
            cgroup = found
        if comm is not None and not comm.strip():
            raise ProctapError("comm must name a program (e.g. comm='make'): an empty name matches nothing")
        if latency < 0:
            raise ProctapError("latency must be >= 0 seconds")
        if not 0 <= argv_limit <= MAX_ARGV_LIMIT:
            raise ProctapError(f"argv_limit must be 0 to {MAX_ARGV_LIMIT} bytes")
        if grace < 0 or cache_capacity < 1:
            raise ProctapError("grace must be >= 0 seconds and cache_capacity >= 1")
        cls = choose_backend(backend) if isinstance(backend, str) else backend
        self.read_proc = read_proc
        self.processes = ProcessCache(
            grace=grace, capacity=cache_capacity, read_proc=read_proc, context=context, cgroups=self.cgroups
        )
        track = track or snapshot
        # Following a subtree needs Fork events even when the user does not want to see them; keeping the process
        # cache right needs every event that changes it.
        backend_kinds = kinds | {EventKind.FORK, EventKind.EXIT} if pid is not None else kinds
        if track:
            backend_kinds |= {EventKind.FORK, EventKind.EXEC, EventKind.EXIT, EventKind.COMM}
        if context:  # the context and its filters are the processes': the cache must follow them all
            backend_kinds |= CACHE_KINDS | ({EventKind.UID} if uid is not None else set())
        self._cache_fed = (cache or track or context) and backend_kinds >= CACHE_KINDS
        self._enrich_all = track  # enrich execs out of scope too: the cache's ancestors need their argv
        self._repair = repair and self._cache_fed
        if EventKind.FORK in kinds or snapshot:  # a process found by a repair stands in for its lost Fork
            kinds = kinds | {EventKind.EXISTING}
        config = BackendConfig(
            events=frozenset(backend_kinds),
            root_pid=pid,
            threads=threads,
            buffer_bytes=buffer_bytes,
            argv_limit=argv_limit,
            options=check_options(cls, options),
            context=context,
            uid=uid,
            loginuid=loginuid,
            cgroup=cgroup,
        )
        self.filter = EventFilter(kinds, threads=threads, pid=pid, comm=comm, uid=uid, loginuid=loginuid,
                                  cgroup=cgroup, container=container)  # fmt: skip
        self.latency = latency
        self.accounting_note: str | None = None
        self._accounting = self._open_accounting() if accounting else None
        try:
            self.backend: Backend = cls(config)
        except BaseException:
            if self._accounting is not None:
                self._accounting.close()
            raise
        if pid is not None and self.filter.tracked is not None:
            # Descendants that exist already: later ones are followed through Fork events (the backend is already
            # subscribed, so a task forked during this scan is seen either here or as an event).
            self.filter.tracked |= procfs.descendants(pid)
        self._stats = WatchStats(cls.name)
        self._pending: collections.deque[Event] = collections.deque()
        self._busy = False  # the last drain returned events: sleep rather than poll
        self._closed = False
        self._clock = Clock()
        self._repair_due: float | None = None  # monotonic seconds: a repair is pending (throttled)
        self._last_repair = -REPAIR_INTERVAL_S
        self._snapshot_pids: set[int] = set()  # for a while after the snapshot: its pids (see _prime)
        self._snapshot_ends = 0.0
        self._wanted: dict[type[Event], bool] = {}  # event class -> whether its kind was asked for
        if track:
            self._prime(deliver=snapshot)

    def _open_accounting(self) -> ExitAccounting | None:
        try:
            return ExitAccounting()
        except BackendUnavailable as exc:
            self.accounting_note = str(exc)
            warnings.warn(f"{exc}; exit events will have no accounting", RuntimeWarning, stacklevel=3)
            return None

    # -- the file-like part ------------------------------------------------------------------------------------
    def fileno(self) -> int:
        """A descriptor that becomes readable when events may be ready (then call :meth:`read`)."""
        return self.backend.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release every kernel resource (socket, tracefs instance, BPF objects, taskstats listener).  Idempotent."""
        if not self._closed:
            self._closed = True
            self._stats.backend = self.backend.stats()
            self.backend.close()
            if self.cgroups is not None:
                self.cgroups.close()
            if self._accounting is not None:
                self._stats.accounting_overruns = self._accounting.overruns
                self._accounting.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- reading ----------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while events are flowing (the last drain found some, delivered or not)."""
        return self._busy

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def accounting(self) -> bool:
        """Whether Exit events get taskstats figures."""
        return self._accounting is not None

    def stats(self) -> WatchStats:
        """A snapshot of the counters."""
        if not self._closed:
            self._stats.backend = self.backend.stats()
            if self._accounting is not None:
                self._stats.accounting_overruns = self._accounting.overruns
        return WatchStats(**{**self._stats.__dict__, "received": dict(self._stats.received)})

    def read(self, timeout: float | None = None, *, wake: Sequence[WakeFd] = ()) -> list[Event]:
        """The events ready now, after waiting up to ``timeout`` seconds (None: no limit) for the kernel to have any.

        This is the one drain loop.  While events flow it first sleeps ``latency`` (so they pile up in the kernel
        buffer instead of waking us one by one), then drains; when idle it blocks in poll until the kernel has
        something.  It returns after one drain that followed readiness, so the list may be empty (everything ready
        was filtered out): the selectors idiom (select, then ``read()``) never blocks for long.  ``wake``: more
        descriptors (or ``(fd, poll mask)``) whose readiness cuts any wait short, e.g. a signal pipe or a pidfd.
        Returns an empty list on timeout or after close.
        """
        return self._read(timeout, wake)

    def read_with_info(
        self, timeout: float | None = None, *, wake: Sequence[WakeFd] = ()
    ) -> list[tuple[Event, Process | None]]:
        """Like :meth:`read`, each event paired with its process as of that event (``event.process``: None for
        Lost events, and when the cache is not fed)."""
        return [(ev, ev.process) for ev in self._read(timeout, wake)]

    def _read(self, timeout: float | None, wake: Sequence[WakeFd]) -> list[Event]:
        pending = self._pending
        if pending:  # e.g. a snapshot of 30,000 processes: handed over in slices, so a renderer's batch stays small
            return [pending.popleft() for _ in range(min(len(pending), PENDING_SLICE))]
        if self._closed:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._busy:
            nap = self.latency if deadline is None else min(self.latency, deadline - time.monotonic())
            if nap > 0:
                self._wait(nap, wake, backend=False)
        batch = self._drain()
        if batch or self._busy:
            return batch
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return []
        if self._accounting is not None:
            remaining = ACCOUNTING_DRAIN_S if remaining is None else min(remaining, ACCOUNTING_DRAIN_S)
        if self._repair_due is not None:
            due = max(self._repair_due - time.monotonic(), 0.0)
            remaining = due if remaining is None else min(remaining, due)
        self._wait(remaining, wake, backend=True)
        return self._drain()

    def _wait(self, seconds: float | None, wake: Sequence[WakeFd], *, backend: bool) -> None:
        """Block until ``seconds`` pass (None: forever) or a ``wake`` fd (and, with ``backend``, the backend's
        descriptor) is ready."""
        poller = select.poll()
        if backend:
            poller.register(self.backend.fileno(), select.POLLIN)
        for item in wake:
            fd, mask = (item, select.POLLIN) if isinstance(item, int) else item
            poller.register(fd, mask)
        poller.poll(None if seconds is None else _milliseconds(seconds))

    def _drain(self) -> list[Event]:
        """Read the backend once (without blocking) and pass what it had through the enrichment step; a repair
        that is due runs after it."""
        events = self.backend.read_events()
        self._stats.drains += 1
        self._busy = bool(events)
        out = self._process(events) if events else []
        if self._cache_fed:
            self.processes.expire()  # also when idle: exited processes leave after their grace period
        if self._snapshot_pids and time.monotonic() > self._snapshot_ends:
            self._snapshot_pids = set()  # forks during the scan are all in by now: let the big set go
        if self._accounting is not None:
            if events:
                out = self._accounting.attach(out)
            else:
                self._accounting.collect()  # keep the socket drained
        if self._repair_due is not None and time.monotonic() >= self._repair_due:
            out += self._repair_now()
        self._stats.delivered += len(out)
        return out

    def _process(self, events: Sequence[Event]) -> list[Event]:
        """The one enrichment step: every backend event is counted, filtered, enriched from /proc (the delivered
        execs, and all of them when tracking), applied to the process cache (which it then carries), and the comm
        filter applied; Lost events schedule a repair of the cache."""
        received = self._stats.received
        by_class: collections.Counter[type[Event]] = collections.Counter(map(type, events))  # one C loop
        for cls, n in by_class.items():
            kind = cls.kind.value
            received[kind] = received.get(kind, 0) + n
        flt = self.filter
        cache = self.processes if self._cache_fed else None
        enrich = self.read_proc
        enrich_all = self._enrich_all
        cgroups = self.cgroups
        by_comm = flt.comm is not None
        by_context = flt.by_context
        accounting = self._accounting
        subtree = flt.tracked is not None
        if not by_comm and not by_context and accounting is None and not subtree and not self._snapshot_pids:
            return self._forward(events, cache)
        wanted = self._wanted
        threads = flt.threads
        out: list[Event] = []
        for ev in events:
            cls = type(ev)
            if cls is Lost:
                self._count_lost(ev)  # type: ignore[arg-type]
            elif cls is Fork and self._snapshot_pids and self._duplicate_of_snapshot(ev):  # type: ignore[arg-type]
                continue
            if subtree:
                in_scope = flt.in_scope(ev)
            else:  # flt.in_scope without the call and the kinds' Enum hashing: a class -> bool table
                known = wanted.get(cls)
                if known is None:
                    known = wanted[cls] = cls.kind in flt.kinds
                in_scope = known and (threads or not (isinstance(ev, (Fork, Exit)) and ev.is_thread))
            if enrich and cls is Exec and (in_scope or enrich_all):
                ev = enrich_exec(ev, cgroups)  # type: ignore[arg-type]
            proc = None
            if cache is not None:
                proc = cache.apply(ev)
                _set(ev, "process", proc)
            elif by_comm and in_scope:
                proc = self.processes.lookup(ev.pid) if ev.pid > 0 else None
            if in_scope and (not by_comm or flt.comm_matches(ev, proc)) and (
                not by_context or flt.context_matches(ev, proc)
            ):
                out.append(ev)
            elif accounting is not None and cls is Exit and not ev.is_thread:  # type: ignore[attr-defined]
                accounting.forget(ev.pid)
            if subtree:
                flt.forget(ev)
        return out

    def _forward(self, events: Sequence[Event], cache: ProcessCache | None) -> list[Event]:
        """:meth:`_process` for a watcher without filters on pids, names or context and without accounting (``proctap
        watch --json``, with ``--context`` too): the same kinds and threads filters, execs enriched, losses counted,
        each event applied to the ``cache`` when it is fed, at a fraction of the general step's cost per event (a
        storm of 100,000 tasks makes 200,000)."""
        wanted = self._wanted
        kinds = self.filter.kinds
        threads = self.filter.threads
        enrich = self.read_proc
        enrich_all = self._enrich_all
        cgroups = self.cgroups
        apply = None if cache is None else cache.apply
        out: list[Event] = []
        append = out.append
        for ev in events:
            cls = type(ev)
            ok = wanted.get(cls)
            if ok is None:
                ok = wanted[cls] = cls.kind in kinds
            if ok and not threads and isinstance(ev, (Fork, Exit)) and ev.is_thread:
                ok = False
            if not ok and apply is None:
                continue
            if cls is Exec:
                if enrich and (ok or enrich_all):
                    ev = enrich_exec(ev, cgroups)  # type: ignore[arg-type]
            elif cls is Lost:
                self._count_lost(ev)  # type: ignore[arg-type]
            if apply is not None:
                _set(ev, "process", apply(ev))  # every event the cache needs, delivered or not
            if ok:
                append(ev)
        return out

    def _count_lost(self, ev: Lost) -> None:
        if ev.count is None:
            self._stats.lost_unknown += 1
        else:
            self._stats.lost += ev.count
        if self._repair and self._repair_due is None:
            self._repair_due = max(time.monotonic(), self._last_repair + REPAIR_INTERVAL_S)

    # -- the snapshot and the repair -------------------------------------------------------------------------
    def _prime(self, *, deliver: bool) -> None:
        """Read the processes running now into the cache (delivered as Existing events when ``deliver``).

        The backend is subscribed already, so a process forked during the scan is seen by it: what it queued
        meanwhile is drained right after the scan, and a process whose Fork is in there is left out of the
        snapshot (it comes as a Fork); a Fork that arrives later for a process already in the snapshot is
        dropped, so nothing comes twice.
        """
        tracked = self.filter.tracked
        found = scan("snapshot", self._clock, self.backend.name, pids=None if tracked is None else sorted(tracked),
                     cgroups=self.cgroups)  # fmt: skip
        queued = self.backend.read_events()
        forked = {ev.pid for ev in queued if type(ev) is Fork and not ev.is_thread}  # type: ignore[attr-defined]
        found = [ev for ev in found if ev.pid not in forked]
        self._snapshot_pids = {ev.pid for ev in found}
        self._snapshot_ends = time.monotonic() + SNAPSHOT_RACE_S
        if deliver:
            existing = self._process(found)
            self._pending.extend(existing)
            self._stats.delivered += len(existing)
        else:  # into the cache a slice at a time, each slice's events let go (the peak: bench/cache_memory.py)
            found.reverse()
            while found:
                chunk = found[-PENDING_SLICE:]
                del found[-PENDING_SLICE:]
                chunk.reverse()
                self._process(chunk)
        live = self._process(queued)
        self._pending.extend(live)
        self._stats.delivered += len(live)

    def _duplicate_of_snapshot(self, ev: Fork) -> bool:
        """A Fork of a process that the snapshot already delivered (it forked during the scan)."""
        if ev.is_thread or ev.pid not in self._snapshot_pids:
            return False
        self._snapshot_pids.discard(ev.pid)
        known = self.processes.lookup(ev.pid, learn=False)
        return known is not None and ev.start_ns is not None and known.start_ns is not None and (
            abs(known.start_ns - ev.start_ns) <= START_TOLERANCE_NS
        )

    def repair(self) -> list[Event]:
        """Reconcile the process cache with /proc now (what a Lost event triggers by itself, at most every
        ``REPAIR_INTERVAL_S``): returns the events that made it right (synthetic Exits, ``Existing`` with reason
        ``"repair"``, and whatever the backend had queued), filtered as :meth:`read`'s.  Right after it returns, the
        cache's live processes are /proc's."""
        if not self._cache_fed:
            raise ProctapError("the process cache is not fed: watch fork, exec and exit (or pass track=True)")
        out = self._repair_now()
        self._stats.delivered += len(out)
        return out

    def _repair_now(self) -> list[Event]:
        """Reconcile the cache with /proc after lost events: scan /proc first, then drain what the backend queued
        meanwhile (those events are exact), then what still differs is repaired: processes gone get a synthetic
        Exit, processes unseen an Existing event (reason ``"repair"``)."""
        self._repair_due = None
        self._last_repair = time.monotonic()
        scanned_at = self._clock.since_boot(time.monotonic_ns())
        running, dead = start_times()
        out = self._process(self.backend.read_events())
        cache = self.processes
        gone, unseen = unseen_or_gone(cache.live_keys(), running, START_TOLERANCE_NS)
        now = time.monotonic_ns()
        stamp = Lost(source=self.backend.name, timestamp_ns=now, wall_time=self._clock.wall_time(now), pid=0, tid=0,
                     count=0, reason="repair")  # fmt: skip
        made: list[Event] = []
        for pid in gone:
            proc = cache.lookup(pid, learn=False)
            if proc is None or (proc.start_ns is not None and proc.start_ns > scanned_at - START_TOLERANCE_NS):
                continue  # forked after the scan began: /proc could not list it
            if proc.start_ns is None and os.path.exists(f"/proc/{pid}"):
                continue
            made.append(synthetic_exit(proc, stamp, dead.get(pid)))  # a zombie still tells its status
        exits = len(made)
        for pid in unseen:  # exits come first in ``made``: a reused pid's old process ends before the new one
            found = read_existing(pid, "repair", self._clock, self.backend.name, self.cgroups)
            if found is not None:
                made.append(found)
        cache.count_repair(exits, len(made) - exits)
        return out + self._process(made)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopIteration
            self._pending.extend(self.read())
        return self._pending.popleft()

    def follow(self, pid: int) -> None:
        """Watching a subtree (``pid=``): follow ``pid`` too, e.g. a child the caller just started, even if its Fork
        event comes late or is lost in a burst."""
        self.filter.follow(pid)

    def process_info(self, pid: int) -> Process | None:
        """The process cache's record of ``pid`` (live, else exited within the grace period): ``processes.lookup``."""
        return self.processes.lookup(pid)


def _check_pid(pid: int | None) -> None:
    if pid is None:
        return
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ProctapError(f"invalid pid {pid!r}: give a positive process id")
    if not os.path.exists(f"/proc/{pid}"):
        raise ProctapError(f"no process with pid {pid}: give the pid of a running process")


def _check_id(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= AUDIT_UNSET:
        raise ProctapError(f"invalid {name} {value!r}: give a user id from 0 to {AUDIT_UNSET}")


def _milliseconds(seconds: float) -> int:
    """A poll() timeout: rounded up to the next millisecond (so we never wake just before a deadline, but a 10 ms
    latency naps 10 ms, not 11: that millisecond is a tenth of every event's wait in a paced stream), within a C int."""
    return min(math.ceil(round(max(seconds, 0.0) * 1000, 6)), (1 << 31) - 1)  # round: 0.07 s is 70.00000000000001 ms


def watch(events: Iterable[KindSpec] | str | None = None, backend: str = "auto", **kwargs: object) -> Watcher:
    """Start watching; see :class:`Watcher` for the arguments.  Use as a context manager or close() it."""
    return Watcher(events, backend, **kwargs)  # type: ignore[arg-type]


class AsyncWatcher:
    """asyncio flavour of :class:`Watcher`: ``async for ev in w``.  The same drain loop as :meth:`Watcher.read`
    (sleep ``latency`` while events flow, wait for readiness while idle), with the waits done by the event loop."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._pending: collections.deque[Event] = collections.deque()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        import asyncio  # here, not at the top: importing asyncio costs the CLI ~0.15 s of start-up

        watcher = self.watcher
        while not self._pending:
            if watcher.closed:
                raise StopAsyncIteration
            if watcher.busy:
                await asyncio.sleep(watcher.latency)
            else:
                await self._readable()
            self._pending.extend(watcher.read(timeout=0))
        return self._pending.popleft()

    async def _readable(self) -> None:
        """Until the backend's descriptor is readable (with accounting: at most ACCOUNTING_DRAIN_S)."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self.watcher.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await asyncio.wait_for(fut, ACCOUNTING_DRAIN_S if self.watcher.accounting else None)
        except asyncio.TimeoutError:
            pass  # drain anyway: the taskstats socket must not fill up
        finally:
            loop.remove_reader(fd)

    def stats(self) -> WatchStats:
        return self.watcher.stats()

    def close(self) -> None:
        self.watcher.close()

    async def aclose(self) -> None:
        self.watcher.close()

    async def __aenter__(self) -> AsyncWatcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def awatch(events: Iterable[KindSpec] | str | None = None, backend: str = "auto", **kwargs: object) -> AsyncWatcher:
    """asyncio: ``async with proctap.awatch(...) as w: async for ev in w: ...`` (or iterate it directly)."""
    return AsyncWatcher(Watcher(events, backend, **kwargs))  # type: ignore[arg-type]


def settle_for_storms() -> None:
    """Keep Python's garbage collector out of a storm's way: call it once the program is set up (after imports and
    :func:`watch`).  ``proctap watch``, ``top`` and ``run`` do; it changes the whole interpreter, so a library never
    calls it for its host program.

    Why: the process cache keeps two objects per ended process (its record and its Exit) for the grace period and
    evicts them in order (``run``'s tree keeps every process), so with Python's settings the generational collector
    promotes tens of thousands of them and each collection of the older generations scans them again.  Measured on a
    consumer with ``--ancestry`` in a 100k fork storm: 0.22 s of collections with Python's settings against 0.006 s
    with these (``bench/context_cost.py --gc default`` / ``--gc settled``).

    What it does: objects that exist now (modules, classes, set-up) are frozen out of collections (``gc.freeze``),
    and the young generation is collected every 20,000 allocations instead of 700.  proctap makes no reference
    cycles on its hot path (the cache cuts the one between an ended record and its Exit), so memory is still freed
    as it goes; a program that makes many cycles of its own may prefer Python's settings.
    """
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
