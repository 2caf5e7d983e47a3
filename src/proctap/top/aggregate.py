"""The aggregator behind ``proctap top``: events in, "who is spawning what" out.  Pure: no terminal, no kernel.

Feed it every batch a :class:`~proctap.watcher.Watcher` delivers (:meth:`Aggregator.feed`, with the time the batch
arrived); ask it for the machine-wide rates (:meth:`Aggregator.header`) and for the rows of one view
(:meth:`Aggregator.rows`), or for everything as one JSON-ready dict (:meth:`Aggregator.snapshot`).

Views:

* ``parent``: one row per spawning process (the parent of the forks; the caller of the failed forks; a process that
  creates threads): children per second, total children, the programs its children ran, their median lifetime, how
  many ended badly (non-zero exit or a signal) and its failed forks by errno.  Sorted by its spawning activity
  (children, threads and failed forks together), so a thread storm or a fork bomb stopped by a limit comes first
  too.
* ``program``: one row per program the processes ran (the basename of the exec'd file; a process that never exec'd
  counts under ``[comm]`` when it exits): starts per second, total, who started them, median lifetime, bad ends.
* ``cgroup``: one row per cgroup v2 id (the bpf backend fills ``cgroup_id``; the others give ``unknown``): forks
  per second, total forks, execs, programs, bad ends, failed forks.
* ``failures``: failed forks by errno and caller; non-zero exits and deaths by signal by program and status.

Rates count events by the time they reached proctap (within ``--latency`` of the kernel seeing them), in buckets of
:data:`BUCKET_NS`, over the windows of :data:`WINDOWS_S`.  Memory is bounded: ended spawners and stale failure rows
beyond :data:`MAX_ROWS` are forgotten oldest first, and so are unmatched children beyond :data:`MAX_LIVE`.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..events import Event, Exec, ExecFailed, Exit, Fork, ForkFailed, Lost, errno_name, json_text
from ..text import format_status

__all__ = [
    "BUCKET_NS",
    "MAX_LIVE",
    "MAX_ROWS",
    "WINDOWS_S",
    "Aggregator",
    "CgroupRow",
    "FailureRow",
    "Header",
    "ParentRow",
    "ProgramRow",
    "Row",
    "Sort",
    "View",
]

BUCKET_NS = 100_000_000  # rates are counted in 100 ms buckets
WINDOWS_S = (1, 10)  # the rate windows, in seconds (the first is the one rows sort by)
_KEEP_BUCKETS = max(WINDOWS_S) * 1_000_000_000 // BUCKET_NS
MAX_ROWS = 5000  # rows of one view kept; beyond, the ended/idle ones go, oldest activity first
MAX_LIVE = 200_000  # children followed (fork seen, exit not yet); beyond, the oldest are forgotten
LIFETIMES = 101  # lifetimes kept per row for its median (the most recent ones)
UNKNOWN_CGROUP = "unknown"


class View(str, Enum):
    PARENT = "parent"
    PROGRAM = "program"
    CGROUP = "cgroup"
    FAILURES = "failures"

    def __str__(self) -> str:
        return self.value


class Sort(str, Enum):
    RATE = "rate"  # over the first window (1 s), ties by total
    TOTAL = "total"  # since the start, ties by rate

    def __str__(self) -> str:
        return self.value


# -- counting over time ---------------------------------------------------------------------------------------------


class Series:
    """A count since the start plus the recent counts per bucket (the last ``max(WINDOWS_S)`` seconds), for rates."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.total = 0
        self.buckets: collections.deque[list[int]] = collections.deque()  # [bucket index, count], oldest first

    def add(self, bucket: int, n: int = 1) -> None:
        self.total += n
        buckets = self.buckets
        if buckets and buckets[-1][0] >= bucket:
            buckets[-1][1] += n
        else:
            buckets.append([bucket, n])
            if len(buckets) > _KEEP_BUCKETS + 1:
                buckets.popleft()

    def last_bucket(self) -> int | None:
        return self.buckets[-1][0] if self.buckets else None

    def count_since(self, first_bucket: int) -> int:
        """Events in buckets ``first_bucket`` and later."""
        n = 0
        for index, count in reversed(self.buckets):
            if index < first_bucket:
                break
            n += count
        return n


class Clock:
    """The rate windows as of one instant: which buckets each window covers and how long that really is."""

    def __init__(self, start_ns: int, now_ns: int) -> None:
        self.now_ns = now_ns
        now_bucket = now_ns // BUCKET_NS
        self.first: dict[int, int] = {}
        self.span_s: dict[int, float] = {}
        elapsed = max(now_ns - start_ns, 0)
        for window in WINDOWS_S:
            n = window * 1_000_000_000 // BUCKET_NS
            first = now_bucket - n + 1
            covered = (n - 1) * BUCKET_NS + (now_ns - now_bucket * BUCKET_NS)  # whole buckets + the current part
            self.first[window] = first
            self.span_s[window] = max(min(covered, elapsed), 1) / 1e9

    def rate(self, series: Series, window: int) -> float:
        last = series.last_bucket()
        if last is None or last < self.first[window]:
            return 0.0
        return series.count_since(self.first[window]) / self.span_s[window]

    def rates(self, series: Series) -> dict[int, float]:
        return {w: self.rate(series, w) for w in WINDOWS_S}


def median_ns(values: Iterable[int]) -> int | None:
    data = list(values)
    return int(statistics.median(data)) if data else None


def _top(counts: dict[Any, int], n: int | None = None) -> list[tuple[Any, int]]:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return items if n is None else items[:n]


def _bump(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def program_of(event: Exec) -> str:
    """What an exec ran, short: the basename of the file, else of argv[0], else the new comm, else ``?``."""
    if event.filename:
        return _basename(event.filename)
    if event.argv:
        return _basename(event.argv[0])
    return event.comm or "?"


def _bad_status(event: Exit) -> str | None:
    """``exit 3``, ``SIGKILL``, ``SIGSEGV (core)`` for an exit that went wrong; None for exit 0 or unknown."""
    if event.signal is None and not event.exit_code:
        return None
    return format_status(event.exit_code, event.signal, event.core_dumped)


# -- what is kept per key -----------------------------------------------------------------------------------------


class _Spawner:
    __slots__ = (
        "activity",
        "bad",
        "cgroup",
        "children",
        "comm",
        "ended",
        "exits",
        "fork_failed",
        "lifetimes",
        "pid",
        "programs",
        "statuses",
        "threads",
    )

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.comm: str | None = None
        self.ended = False
        self.children = Series()
        self.activity = Series()  # children, threads and failed forks: what the view sorts by
        self.threads = 0
        self.programs: dict[str, int] = {}
        self.lifetimes: collections.deque[int] = collections.deque(maxlen=LIFETIMES)
        self.exits = 0
        self.bad = 0
        self.statuses: dict[str, int] = {}
        self.fork_failed: dict[str, int] = {}
        self.cgroup: int | None = None

    def last(self) -> int:
        return self.activity.last_bucket() or -1


class _Program:
    __slots__ = ("bad", "exits", "lifetimes", "name", "parents", "starts", "statuses")

    def __init__(self, name: str) -> None:
        self.name = name
        self.starts = Series()
        self.parents: dict[int, int] = {}  # spawner pid -> starts
        self.lifetimes: collections.deque[int] = collections.deque(maxlen=LIFETIMES)
        self.exits = 0
        self.bad = 0
        self.statuses: dict[str, int] = {}


class _Cgroup:
    __slots__ = ("bad", "cgroup_id", "execs", "exits", "forks", "programs")

    def __init__(self, cgroup_id: int | None) -> None:
        self.cgroup_id = cgroup_id
        self.forks = Series()
        self.execs = 0
        self.programs: dict[str, int] = {}
        self.exits = 0
        self.bad = 0


class _Failure:
    __slots__ = ("count", "kind", "pid", "what", "who")

    def __init__(self, kind: str, what: str, who: str | None, pid: int | None) -> None:
        self.kind = kind  # "fork" or "exit"
        self.what = what  # "EAGAIN", "exit 3", "SIGKILL"
        self.who = who  # the program (exits) or None (forks: the caller, named at render time)
        self.pid = pid  # the caller (forks) or None
        self.count = Series()


class _Child:
    __slots__ = ("cgroup", "program", "spawner")

    def __init__(self, spawner: _Spawner | None, cgroup: int | None) -> None:
        self.spawner = spawner
        self.cgroup = cgroup
        self.program: str | None = None


# -- what is shown ------------------------------------------------------------------------------------------------


@dataclass
class Header:
    """Machine-wide (within the filters) rates per window and totals since the start."""

    elapsed_s: float
    rates: dict[int, dict[str, float]]  # window -> counter -> per second
    totals: dict[str, int]  # counter -> count; "lost" are the events the kernel said it dropped
    lost_unknown: int  # overruns of unknown size

    COUNTERS = ("forks", "execs", "exits", "fork_failed", "threads", "lost")


@dataclass
class Row:
    """One row of a view: ``label`` names it, ``rates`` are per second by window, ``total`` since the start."""

    label: str
    rates: dict[int, float]
    total: int
    ended: bool = False

    def rate(self) -> float:
        return self.rates[WINDOWS_S[0]]

    def text(self) -> str:
        """What the display filter matches against."""
        return self.label


@dataclass
class ParentRow(Row):
    pid: int = 0
    threads: int = 0
    programs: list[tuple[str, int]] = field(default_factory=list)
    median_lifetime_ns: int | None = None
    exits: int = 0
    bad: int = 0
    statuses: list[tuple[str, int]] = field(default_factory=list)
    fork_failed: list[tuple[str, int]] = field(default_factory=list)
    cgroup_id: int | None = None
    cgroup: str | None = None

    def text(self) -> str:
        return " ".join([str(self.pid), self.label, *(p for p, _ in self.programs), self.cgroup or ""])


@dataclass
class ProgramRow(Row):
    parents: list[tuple[str, int]] = field(default_factory=list)  # "comm (pid)" -> starts
    median_lifetime_ns: int | None = None
    exits: int = 0
    bad: int = 0
    statuses: list[tuple[str, int]] = field(default_factory=list)

    def text(self) -> str:
        return " ".join([self.label, *(p for p, _ in self.parents)])


@dataclass
class CgroupRow(Row):
    cgroup_id: int | None = None
    execs: int = 0
    programs: list[tuple[str, int]] = field(default_factory=list)
    exits: int = 0
    bad: int = 0
    fork_failed: list[tuple[str, int]] = field(default_factory=list)

    def text(self) -> str:
        return " ".join([self.label, str(self.cgroup_id), *(p for p, _ in self.programs)])


@dataclass
class FailureRow(Row):
    kind: str = ""  # "fork" (a failed fork) or "exit" (a non-zero exit or a death by signal)
    what: str = ""  # "EAGAIN", "exit 3", "SIGKILL"
    pid: int | None = None  # the caller of the failed forks

    def text(self) -> str:
        return f"{self.kind} {self.what} {self.label} {self.pid or ''}"


# -- the aggregator -----------------------------------------------------------------------------------------------

NameLookup = Callable[[int], "str | None"]
CgroupLookup = Callable[[int], "str | None"]


class Aggregator:
    """Counts what the events say, per spawner, program, cgroup and failure.

    ``names``: looks up the comm of a spawner the events did not name (a parent that predates the watcher), called
    at most once per spawner and only when its row is shown; ``cgroups``: the path of a cgroup id, likewise.
    """

    def __init__(self, start_ns: int, *, names: NameLookup | None = None, cgroups: CgroupLookup | None = None) -> None:
        self.start_ns = start_ns
        self._names = names
        self._cgroup_paths = cgroups
        self._cgroup_cache: dict[int, str | None] = {}
        self.counters = {name: Series() for name in Header.COUNTERS}
        self.lost_unknown = 0
        self.spawners: dict[int, _Spawner] = {}
        self.programs: dict[str, _Program] = {}
        self.cgroups: dict[int | None, _Cgroup] = {}
        self.failures: dict[tuple[str, str, str | int | None], _Failure] = {}
        self.live: dict[int, _Child] = {}
        self._looked_up: set[int] = set()

    # -- feeding ------------------------------------------------------------------------------------------------
    def feed(self, events: Iterable[Event], now_ns: int) -> None:
        """Count a batch that arrived at ``now_ns`` (CLOCK_MONOTONIC)."""
        bucket = now_ns // BUCKET_NS
        for ev in events:
            kind = type(ev)
            if kind is Fork:
                self._fork(ev, bucket)  # type: ignore[arg-type]
            elif kind is Exec:
                self._exec(ev, bucket)  # type: ignore[arg-type]
            elif kind is Exit:
                self._exit(ev, bucket)  # type: ignore[arg-type]
            elif kind is ForkFailed:
                self._fork_failed(ev, bucket)  # type: ignore[arg-type]
            elif kind is ExecFailed:
                self._exec_failed(ev, bucket)  # type: ignore[arg-type]
            elif kind is Lost:
                count = ev.count  # type: ignore[attr-defined]
                if count is None:
                    self.lost_unknown += 1
                self.counters["lost"].add(bucket, count or 0)

    def _spawner(self, pid: int) -> _Spawner:
        row = self.spawners.get(pid)
        if row is None or row.ended:  # an ended spawner's pid now names another process
            if row is not None:
                del self.spawners[pid]  # keep insertion order = order of first activity
            row = self.spawners[pid] = _Spawner(pid)
        return row

    def _cgroup(self, cgroup_id: int | None) -> _Cgroup:
        row = self.cgroups.get(cgroup_id)
        if row is None:
            row = self.cgroups[cgroup_id] = _Cgroup(cgroup_id)
        return row

    def _fork(self, ev: Fork, bucket: int) -> None:
        if ev.is_thread:
            self.counters["threads"].add(bucket)
            spawner = self._spawner(ev.pid)
            spawner.threads += 1
            spawner.activity.add(bucket)
            return
        self.counters["forks"].add(bucket)
        spawner = self._spawner(ev.parent_pid)
        spawner.children.add(bucket)
        spawner.activity.add(bucket)
        if ev.comm is not None:  # a new process starts with its parent's comm
            spawner.comm = ev.comm
        cgroup_id = ev.cgroup_id
        if cgroup_id is not None:
            spawner.cgroup = cgroup_id
        self._cgroup(cgroup_id).forks.add(bucket)
        live = self.live
        live.pop(ev.pid, None)  # a reused pid: the old child's exit was lost
        live[ev.pid] = _Child(spawner, cgroup_id)
        if len(live) > MAX_LIVE:
            del live[next(iter(live))]

    def _exec(self, ev: Exec, bucket: int) -> None:
        self.counters["execs"].add(bucket)
        program = program_of(ev)
        child = self.live.get(ev.pid)
        if child is None:  # forked before the watcher started
            parent = self.spawners.get(ev.parent_pid) if ev.parent_pid is not None else None
            child = self.live[ev.pid] = _Child(parent, ev.cgroup_id)
        child.program = program
        if ev.cgroup_id is not None:
            child.cgroup = ev.cgroup_id
        spawner = child.spawner
        if spawner is not None:
            _bump(spawner.programs, program)
        row = self.programs.get(program)
        if row is None:
            row = self.programs[program] = _Program(program)
        row.starts.add(bucket)
        if spawner is not None:
            _bump(row.parents, spawner.pid)
        cgroup = self._cgroup(child.cgroup)
        cgroup.execs += 1
        _bump(cgroup.programs, program)
        own = self.spawners.get(ev.pid)  # the process now runs something else: its own row's name follows
        if own is not None and not own.ended:
            own.comm = ev.comm or program

    def _exit(self, ev: Exit, bucket: int) -> None:
        if ev.is_thread:
            return
        self.counters["exits"].add(bucket)
        pid = ev.pid
        child = self.live.pop(pid, None)
        spawner = child.spawner if child is not None else None
        if spawner is None and ev.parent_pid is not None:
            spawner = self.spawners.get(ev.parent_pid)
        status = _bad_status(ev)
        lifetime = ev.lifetime_ns
        if spawner is not None:
            spawner.exits += 1
            if lifetime is not None:
                spawner.lifetimes.append(lifetime)
            if status is not None:
                spawner.bad += 1
                _bump(spawner.statuses, status)
        program = child.program if child is not None else None
        if program is None:  # never exec'd (that we saw): named by its comm, as ps shows such processes
            comm = ev.comm or (spawner.comm if spawner is not None else None)
            program = f"[{comm or '?'}]"
            row = self.programs.get(program)
            if row is None:
                row = self.programs[program] = _Program(program)
            row.starts.add(bucket)
            if spawner is not None:
                _bump(row.parents, spawner.pid)
        else:
            row = self.programs.get(program) or self.programs.setdefault(program, _Program(program))
        row.exits += 1
        if lifetime is not None:
            row.lifetimes.append(lifetime)
        if status is not None:
            row.bad += 1
            _bump(row.statuses, status)
            key = ("exit", status, program)
            failure = self.failures.get(key)
            if failure is None:
                failure = self.failures[key] = _Failure("exit", status, program, None)
            failure.count.add(bucket)
        if child is not None:
            cgroup = self._cgroup(child.cgroup)
            cgroup.exits += 1
            if status is not None:
                cgroup.bad += 1
        own = self.spawners.get(pid)
        if own is not None:
            own.ended = True
            if own.comm is None:
                own.comm = ev.comm

    def _fork_failed(self, ev: ForkFailed, bucket: int) -> None:
        self.counters["fork_failed"].add(bucket)
        name = errno_name(ev.errno) or "?"
        spawner = self._spawner(ev.pid)
        if ev.comm is not None:
            spawner.comm = ev.comm
        _bump(spawner.fork_failed, name)
        spawner.activity.add(bucket)
        key = ("fork", name, ev.pid)
        failure = self.failures.get(key)
        if failure is None:
            failure = self.failures[key] = _Failure("fork", name, None, ev.pid)
        failure.count.add(bucket)

    def _exec_failed(self, ev: ExecFailed, bucket: int) -> None:
        name = errno_name(ev.errno) or "?"
        tried = _basename(ev.filename) if ev.filename else _basename(ev.argv[0]) if ev.argv else "?"
        key = ("exec", name, tried)
        failure = self.failures.get(key)
        if failure is None:
            failure = self.failures[key] = _Failure("exec", name, tried, None)
        failure.count.add(bucket)

    # -- reading ------------------------------------------------------------------------------------------------
    def header(self, now_ns: int) -> Header:
        clock = Clock(self.start_ns, now_ns)
        rates = {w: {name: clock.rate(s, w) for name, s in self.counters.items()} for w in WINDOWS_S}
        totals = {name: s.total for name, s in self.counters.items()}
        return Header(max(now_ns - self.start_ns, 0) / 1e9, rates, totals, self.lost_unknown)

    def name_of(self, pid: int) -> str:
        """The comm of a spawner: from the events, else (once) from the lookup, else ``?``."""
        row = self.spawners.get(pid)
        comm = row.comm if row is not None else None
        if comm is None and self._names is not None and pid not in self._looked_up and (row is None or not row.ended):
            self._looked_up.add(pid)
            comm = self._names(pid)
            if row is not None:
                row.comm = comm
        return comm or "?"

    def cgroup_label(self, cgroup_id: int | None) -> str:
        """The cgroup's path (``/`` for the root), ``#ID`` when it is gone, ``unknown`` when the backend gave none."""
        if cgroup_id is None:
            return UNKNOWN_CGROUP
        if cgroup_id not in self._cgroup_cache:
            self._cgroup_cache[cgroup_id] = self._cgroup_paths(cgroup_id) if self._cgroup_paths is not None else None
        return self._cgroup_cache[cgroup_id] or f"#{cgroup_id}"

    def rows(
        self, view: View, now_ns: int, *, sort: Sort = Sort.RATE, limit: int | None = None, match: str | None = None
    ) -> list[Row]:
        """The rows of ``view``, sorted, filtered (``match``: a case-insensitive substring of the row's text) and cut
        to ``limit``.  Only the rows returned are fully worked out (names, medians, paths)."""
        self._trim()
        clock = Clock(self.start_ns, now_ns)
        first = WINDOWS_S[0]
        keyed: list[tuple[float, int, Any]] = []
        if view is View.PARENT:
            keyed = [(clock.rate(s.activity, first), s.activity.total, s) for s in self.spawners.values()]
        elif view is View.PROGRAM:
            keyed = [(clock.rate(p.starts, first), p.starts.total, p) for p in self.programs.values()]
        elif view is View.CGROUP:
            keyed = [(clock.rate(c.forks, first), c.forks.total + c.execs, c) for c in self.cgroups.values()]
        else:
            keyed = [(clock.rate(f.count, first), f.count.total, f) for f in self.failures.values()]
        if sort is Sort.RATE:
            keyed.sort(key=lambda t: (-t[0], -t[1]))
        else:
            keyed.sort(key=lambda t: (-t[1], -t[0]))
        builders: dict[View, Callable[[Any, Clock], Row]] = {
            View.PARENT: self._parent_row,
            View.PROGRAM: self._program_row,
            View.CGROUP: self._cgroup_row,
            View.FAILURES: self._failure_row,
        }
        build = builders[view]
        needle = match.lower() if match else None
        out: list[Row] = []
        for _, _, item in keyed:
            if limit is not None and len(out) >= limit:
                break
            row = build(item, clock)
            if needle is None or needle in row.text().lower():
                out.append(row)
        return out

    def _parent_row(self, s: _Spawner, clock: Clock) -> ParentRow:
        return ParentRow(
            label=self.name_of(s.pid),
            rates=clock.rates(s.children),
            total=s.children.total,
            ended=s.ended,
            pid=s.pid,
            threads=s.threads,
            programs=_top(s.programs),
            median_lifetime_ns=median_ns(s.lifetimes),
            exits=s.exits,
            bad=s.bad,
            statuses=_top(s.statuses),
            fork_failed=_top(s.fork_failed),
            cgroup_id=s.cgroup,
            cgroup=self.cgroup_label(s.cgroup) if s.cgroup is not None else None,
        )

    def _program_row(self, p: _Program, clock: Clock) -> ProgramRow:
        return ProgramRow(
            label=p.name,
            rates=clock.rates(p.starts),
            total=p.starts.total,
            parents=[(f"{self.name_of(pid)} ({pid})", n) for pid, n in _top(p.parents)],
            median_lifetime_ns=median_ns(p.lifetimes),
            exits=p.exits,
            bad=p.bad,
            statuses=_top(p.statuses),
        )

    def _cgroup_row(self, c: _Cgroup, clock: Clock) -> CgroupRow:
        return CgroupRow(
            label=self.cgroup_label(c.cgroup_id),
            rates=clock.rates(c.forks),
            total=c.forks.total,
            cgroup_id=c.cgroup_id,
            execs=c.execs,
            programs=_top(c.programs),
            exits=c.exits,
            bad=c.bad,
            fork_failed=_top(self._cgroup_fork_failed(c.cgroup_id)),
        )

    def _cgroup_fork_failed(self, cgroup_id: int | None) -> dict[str, int]:
        """Failed forks by errno of the spawners last seen in this cgroup (a failed fork does not say where)."""
        out: dict[str, int] = {}
        for s in self.spawners.values():
            if s.fork_failed and s.cgroup == cgroup_id:
                for name, n in s.fork_failed.items():
                    out[name] = out.get(name, 0) + n
        return out

    def _failure_row(self, f: _Failure, clock: Clock) -> FailureRow:
        label = f.who if f.who is not None else self.name_of(f.pid) if f.pid is not None else "?"
        return FailureRow(
            label=label, rates=clock.rates(f.count), total=f.count.total, kind=f.kind, what=f.what, pid=f.pid
        )

    def _trim(self) -> None:
        """Keep every view within MAX_ROWS: drop the ended spawners and the rows idle the longest."""
        if len(self.spawners) > MAX_ROWS:
            victims = sorted(self.spawners.values(), key=lambda s: (not s.ended, s.last()))
            for s in victims[: len(self.spawners) - MAX_ROWS]:
                del self.spawners[s.pid]
                self._looked_up.discard(s.pid)
        if len(self.programs) > MAX_ROWS:
            by_age = sorted(self.programs, key=lambda k: self.programs[k].starts.last_bucket() or -1)
            for name in by_age[: len(self.programs) - MAX_ROWS]:
                del self.programs[name]
        if len(self.failures) > MAX_ROWS:
            by_age_f = sorted(self.failures, key=lambda k: self.failures[k].count.last_bucket() or -1)
            for key in by_age_f[: len(self.failures) - MAX_ROWS]:
                del self.failures[key]

    # -- JSON ---------------------------------------------------------------------------------------------------
    def snapshot(self, now_ns: int, *, sort: Sort = Sort.RATE, limit: int | None = None) -> dict[str, Any]:
        """Everything as one JSON-ready dict (the schema is in docs/top.md).  Text is valid UTF-8: a name with bytes
        that are not reads U+FFFD for each (:func:`proctap.events.json_text`)."""
        head = self.header(now_ns)
        out: dict[str, Any] = {
            "elapsed_s": round(head.elapsed_s, 3),
            "totals": head.totals,
            "rates": {f"{w}s": {k: round(v, 2) for k, v in r.items()} for w, r in head.rates.items()},
        }
        for view in View:
            out[_JSON_NAMES[view]] = [_row_dict(row) for row in self.rows(view, now_ns, sort=sort, limit=limit)]
        return _valid_text(out)  # type: ignore[no-any-return]


_JSON_NAMES = {View.PARENT: "parents", View.PROGRAM: "programs", View.CGROUP: "cgroups", View.FAILURES: "failures"}


def _valid_text(value: Any) -> Any:
    """``value`` with every string in it (dict keys too) valid UTF-8."""
    if isinstance(value, str):
        return json_text(value)
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _row_dict(row: Row) -> dict[str, Any]:
    rates = {f"{w}s": round(v, 2) for w, v in row.rates.items()}
    if isinstance(row, ParentRow):
        return {
            "pid": row.pid,
            "comm": row.label,
            "ended": row.ended,
            "children": row.total,
            "children_per_s": rates,
            "threads": row.threads,
            "programs": dict(row.programs),
            "median_lifetime_ns": row.median_lifetime_ns,
            "exits": row.exits,
            "bad_exits": row.bad,
            "statuses": dict(row.statuses),
            "fork_failed": dict(row.fork_failed),
            "cgroup_id": row.cgroup_id,
            "cgroup": row.cgroup,
        }
    if isinstance(row, ProgramRow):
        return {
            "program": row.label,
            "starts": row.total,
            "starts_per_s": rates,
            "parents": dict(row.parents),
            "median_lifetime_ns": row.median_lifetime_ns,
            "exits": row.exits,
            "bad_exits": row.bad,
            "statuses": dict(row.statuses),
        }
    if isinstance(row, CgroupRow):
        return {
            "cgroup": row.label,
            "cgroup_id": row.cgroup_id,
            "forks": row.total,
            "forks_per_s": rates,
            "execs": row.execs,
            "programs": dict(row.programs),
            "exits": row.exits,
            "bad_exits": row.bad,
            "fork_failed": dict(row.fork_failed),
        }
    assert isinstance(row, FailureRow)
    out: dict[str, Any] = {"kind": row.kind, "what": row.what, "count": row.total, "per_s": rates}
    if row.kind == "fork":
        out.update(pid=row.pid, comm=row.label)
    else:
        out["program"] = row.label
    return out
