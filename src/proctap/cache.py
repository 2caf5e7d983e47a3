"""The process cache: every process proctap knows of, kept up to date from the event stream.

Each process is an immutable :class:`Process` record; an event that changes a process replaces its record, so the
record an event carries (``event.process``) stays as it was at that event.  The cache answers who a process is
without a second lookup: its parent and ancestors (``systemd -> sshd -> bash -> curl``), its children, what it runs.

It only consumes events (``apply``), so a program that reads proctap's NDJSON can rebuild it
(:func:`proctap.events.event_from_dict`).  Processes that predate the watcher are learnt from /proc on first sight
(``Origin.PROC``) or from a snapshot (``Existing`` events, ``Origin.SNAPSHOT``).  Exited processes stay ``grace``
seconds, so late consumers still resolve them; the cache holds at most ``capacity`` records (exited ones are evicted
first, then the live ones seen longest ago), and counts evictions and misses in :meth:`ProcessCache.stats`.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar

from .enrich import read_existing
from .events import (
    Comm,
    Container,
    Event,
    Exec,
    Existing,
    Exit,
    Fork,
    Gid,
    Lost,
    Namespaces,
    Origin,
    TaskKey,
    Uid,
    Where,
    decode_wait_status,
    json_text,
)  # fmt: skip
from .linux.clock import CLOCK_TICKS, Clock
from .where import Cgroups

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_GRACE_S",
    "CacheStats",
    "ProcRef",
    "Process",
    "ProcessCache",
    "synthetic_exit",
    "where_dict",
]

DEFAULT_GRACE_S = 5.0  # how long an exited process stays resolvable (elastic/quark keeps 4 s)
DEFAULT_CAPACITY = 200_000  # records, live and exited (more than a default pid_max of live processes)
# Exited records kept at most, whatever the grace period: a storm ends thousands of processes a second, and keeping
# each for seconds would hold tens of megabytes.  The oldest go first (counted as evictions).
MAX_EXITED = 16_384
# /proc gives start times in clock ticks; an event's start is exact: two starts this close name the same process.
START_TOLERANCE_NS = 2 * 1_000_000_000 // CLOCK_TICKS


class Process(NamedTuple):
    """One process as proctap knows it: an immutable record (a named tuple: made and copied in about a microsecond,
    which a fork storm needs).  Fields nobody could learn are ``None``, never guessed.

    ``start_ns``: when it started, nanoseconds since boot (CLOCK_BOOTTIME; clock-tick precision when learnt from
    /proc).  ``parent_pid``/``parent_key``: its parent at fork (or as /proc said when learnt).  ``comm``, ``exe`` (the
    executable's path), ``argv``, ``uid``, ``gid``: as of the last event that told them; a forked child has its
    parent's ``exe``/``argv`` (``Origin.INHERITED``) until it exec's.  ``comm_from``/``exe_from``/``argv_from`` say
    where each came from (:class:`proctap.Origin`).  ``forked_ns``/``exec_ns``: CLOCK_MONOTONIC of its Fork and
    last Exec events, when seen.  ``exit``: its Exit event once it ended (``exit.synthetic`` when a repair found it
    gone).  ``synthetic``: learnt by a repair after lost events, not from its Fork.

    Context (when the watcher was asked for it, ``context=True``): ``where`` (:class:`proctap.Where`: cgroup,
    container, login uid and session, terminal, namespaces, pid in its own pid namespace) as of its last Fork, Exec
    or /proc read, and ``where_from`` where that came from (a forked child whose Fork did not carry it has its
    parent's, ``Origin.INHERITED``); ``cwd``: its working directory at its last exec (a forked child: its
    parent's, inherited, until it exec's), ``cwd_from`` likewise.  The properties ``cgroup``, ``container``,
    ``loginuid``, ``sessionid``, ``tty``, ``namespaces`` and ``ns_pid`` read ``where``.
    """

    pid: int
    start_ns: int | None = None
    parent_pid: int | None = None
    parent_key: TaskKey | None = None
    comm: str | None = None
    exe: str | None = None
    argv: tuple[str, ...] | None = None
    uid: int | None = None
    gid: int | None = None
    forked_ns: int | None = None
    exec_ns: int | None = None
    comm_from: Origin | None = None
    exe_from: Origin | None = None
    argv_from: Origin | None = None
    exit: Exit | None = None
    synthetic: bool = False
    where: Where | None = None
    where_from: Origin | None = None
    cwd: str | None = None
    cwd_from: Origin | None = None

    @property
    def cgroup(self) -> str | None:
        """Its cgroup v2 path (relative to the cgroup2 mount)."""
        return None if self.where is None else self.where.cgroup

    @property
    def container(self) -> Container | None:
        """The container it runs in (id, runtime, pod uid, name), None outside one (or unknown)."""
        return None if self.where is None else self.where.container

    @property
    def loginuid(self) -> int | None:
        """The audit login uid: who logged in (it survives su and sudo); None when unset or unknown."""
        return None if self.where is None else self.where.loginuid

    @property
    def sessionid(self) -> int | None:
        return None if self.where is None else self.where.sessionid

    @property
    def tty(self) -> str | None:
        """Its controlling terminal (``pts/3``), None without one (or unknown)."""
        return None if self.where is None else self.where.tty

    @property
    def namespaces(self) -> Namespaces | None:
        return None if self.where is None else self.where.namespaces

    @property
    def ns_pid(self) -> int | None:
        """Its pid inside its own pid namespace, when that is not the initial one."""
        return None if self.where is None else self.where.ns_pid

    @property
    def key(self) -> TaskKey | None:
        """``pid@start_ns``: an identity that survives pid reuse (None when the start is unknown)."""
        return None if self.start_ns is None else _new_key((self.pid, self.start_ns))

    @property
    def exec_id(self) -> str | None:
        """New at every exec: the key plus the exec's timestamp (``pid@start_ns:exec_ns``), or None when proctap
        saw no exec of this process (it predates the watcher, or it forked and has not exec'd)."""
        if self.exec_ns is None or self.start_ns is None:
            return None
        return f"{self.pid}@{self.start_ns}:{self.exec_ns}"

    @property
    def alive(self) -> bool:
        return self.exit is None

    def same_as(self, key: TaskKey) -> bool:
        """Whether ``key`` names this process (start times learnt from /proc are only tick-precise)."""
        return key.pid == self.pid and self.start_ns is not None and abs(key.start_ns - self.start_ns) <= (
            START_TOLERANCE_NS
        )


_new_key = TaskKey._make  # from a (pid, start_ns) tuple: a third of TaskKey(pid, start_ns)'s cost
_new_process = Process._make  # from a tuple of every field, in order (the fork storm's path: no keyword matching)
_EXIT = Process._fields.index("exit")
assert Process._fields[-6:] == ("exit", "synthetic", "where", "where_from", "cwd", "cwd_from")  # _fork's order


class ProcRef(NamedTuple):
    """A short reference to a process for context output: pid, comm, exe."""

    pid: int
    comm: str | None
    exe: str | None


@dataclass
class CacheStats:
    """Counters of a :class:`ProcessCache`.  ``misses``: lookups of a pid the cache did not hold (then read from
    /proc when allowed); ``learnt``: records made from /proc on such a miss; ``evictions``: records dropped to stay
    within ``capacity``; ``expired``: exited records dropped after ``grace``; ``repairs``: reconciliations with /proc
    after lost events; ``synthetic_exits``/``synthetic_found``: processes those found gone / found unseen (each
    delivered as a synthetic Exit / an Existing event); ``reused``: processes whose pid a Fork reused before their
    Exit was seen (lost): their record is closed with a synthetic Exit, not delivered."""

    live: int = 0
    exited: int = 0
    capacity: int = DEFAULT_CAPACITY
    misses: int = 0
    learnt: int = 0
    evictions: int = 0
    expired: int = 0
    repairs: int = 0
    synthetic_exits: int = 0
    synthetic_found: int = 0
    reused: int = 0


class ProcessCache:
    """pid / key -> :class:`Process`, for live processes and, for ``grace`` seconds, exited ones.

    Feed it every event with :meth:`apply` (in stream order).  ``read_proc``: learn processes it has not seen from
    /proc (a miss), e.g. the parent of a Fork when the parent predates the watcher.  ``grace`` (seconds) and
    ``capacity`` (records) bound what it holds.  ``context``: a process learnt from /proc gets its context
    (:class:`proctap.Where`) too; ``cgroups``: the cgroup resolver to share (the watcher's).
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE_S,
        capacity: int = DEFAULT_CAPACITY,
        read_proc: bool = True,
        context: bool = False,
        cgroups: Cgroups | None = None,
    ) -> None:
        if grace < 0 or capacity < 1:
            raise ValueError("grace must be >= 0 seconds and capacity >= 1")
        self.grace_ns = int(grace * 1e9)
        self.capacity = capacity
        self.read_proc = read_proc
        self.cgroups = (cgroups or Cgroups()) if context else None
        self._live: dict[int, Process] = {}
        # by key, as one int (_exited_ref: a storm retires thousands a second, and an int is no object for the GC)
        self._exited: dict[int, Process] = {}
        self._last_exited: dict[int, Process] = {}  # pid -> the latest exited record of that pid
        # when each exited record expires (CLOCK_MONOTONIC ns) and its ref, in the order retired: two queues of ints
        self._expiry_at: collections.deque[int] = collections.deque()
        self._expiry_ref: collections.deque[int] = collections.deque()
        self._clock = Clock()
        self._stats = CacheStats(capacity=capacity)
        self._interned: dict[object, object] = {}
        self._last_parent: Process | None = None  # _fork's parent of last time, and what its children inherit
        self._from_parent: tuple[object, ...] = _ORPHAN
        # id(parent record) -> (that record, its ancestors, the JSON members): see context_json
        self._context_memo: _ChainMemo = {}
        self._ancestry_memo: _ChainMemo = {}
        # pids of the ancestors context_json walked, and how many times a record of one of them changed or left
        self._named_parents: set[int] = set()
        self._changes = 0
        # (id(where), id(where_from), cwd, id(cwd_from)) -> (where, its JSON members): ids, as an Enum hashes in Python
        self._where_memo: dict[tuple[int, int, str | None, int], tuple[Where | None, str]] = {}
        self._inherited_memo: dict[int, tuple[Where, Where]] = {}

    # -- reading -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """How many live processes it holds."""
        return len(self._live)

    def __iter__(self) -> Iterator[Process]:
        """The live processes, in the order the cache learnt them."""
        return iter(list(self._live.values()))

    def __contains__(self, item: object) -> bool:
        return isinstance(item, (int, TaskKey, str)) and self.lookup(item, learn=False) is not None

    def exited(self) -> Iterator[Process]:
        """The exited processes still within the grace period."""
        return iter(list(self._exited.values()))

    def lookup(self, ref: int | TaskKey | str, *, learn: bool = True) -> Process | None:
        """The process with this pid (live, else the latest exited one), key, or ``"pid@start_ns"`` string.

        A pid it does not hold is a miss: read from /proc when ``learn`` and the cache may (``read_proc``).
        """
        if isinstance(ref, str):
            ref = _parse_key(ref)
        if isinstance(ref, TaskKey):
            live = self._live.get(ref.pid)
            if live is not None and live.same_as(ref):
                return live
            found = self._exited.get(_exited_ref(ref.pid, ref.start_ns))
            if found is None:
                last = self._last_exited.get(ref.pid)
                found = last if last is not None and last.same_as(ref) else None
            return found
        found = self._live.get(ref) or self._last_exited.get(ref)
        if found is None and ref > 0:
            self._stats.misses += 1
            if learn and self.read_proc:
                found = self._learn(ref)
        return found

    def parent(self, proc: Process) -> Process | None:
        """Its parent: by key when known (so a reused pid is not mistaken for it), else by pid."""
        if proc.parent_key is not None:
            found = self.lookup(proc.parent_key)
            if found is not None:
                return found
        if proc.parent_pid is None or proc.parent_pid <= 0:
            return None
        found = self.lookup(proc.parent_pid)
        if found is not None and _younger(found, proc):
            return None  # that pid names a process younger than the child now: the parent is gone
        return found

    def ancestors(self, proc: Process) -> list[Process]:
        """Parent, grandparent, ... up to the root (pid 1, or the last one known); safe against cycles."""
        chain: list[Process] = []
        seen = {proc.pid}
        current = self.parent(proc)
        while current is not None and current.pid not in seen:
            chain.append(current)
            seen.add(current.pid)
            current = self.parent(current)
        return chain

    def children(self, proc: Process) -> list[Process]:
        """Its children the cache knows, live and (within the grace period) exited, in the order learnt."""
        key = proc.key
        out = []
        for child in (*self._live.values(), *self._exited.values()):
            if child.parent_key is not None and key is not None:
                if child.parent_key == key or proc.same_as(child.parent_key):
                    out.append(child)
            elif child.parent_pid == proc.pid:
                out.append(child)
        return out

    def context(self, proc: Process | None, *, ancestry: bool = False) -> dict[str, object]:
        """The JSON context of a process (``--context``/``--ancestry``): ``exec_id``, ``parent`` {pid, comm, exe},
        with ``ancestry`` ``ancestors`` [{pid, comm, exe}, ...] from the parent to the root, then who and where it
        is (:func:`where_dict`: cgroup, container, loginuid, sessionid, tty, cwd, namespaces...; docs/cli.md)."""
        if proc is None:
            return {"exec_id": None, "parent": None, **({"ancestors": None} if ancestry else {}), **where_dict(None)}
        parent = self.parent(proc)
        out: dict[str, object] = {"exec_id": proc.exec_id, "parent": None if parent is None else _ref(parent)}
        if ancestry:
            out["ancestors"] = [_ref(p) for p in self.ancestors(proc)]
        out.update(where_dict(proc))
        return out

    def context_json(self, proc: Process | None, *, ancestry: bool = False) -> str:
        """:meth:`context` as JSON object members (``"exec_id":...,"parent":{...}``, no braces), for splicing into
        an event's JSON line.  The encoded chain is memoised by the identity of the parent's record (immutable: a
        parent that exec'd is a new record).  With ``ancestry`` the memo also holds while no record of an ancestor
        it walked changed (``_changes``), or else when each is still the live record of its pid: a storm's lines
        cost a few dict lookups, not a walk up the chain."""
        if proc is None:
            return (_NO_CONTEXT_ANCESTRY if ancestry else _NO_CONTEXT) + _NO_WHERE
        # parent() and _where_json with their common case inlined: this runs for every line of a storm
        parent_key = proc.parent_key
        parent = None if parent_key is None else self._live.get(parent_key[0])
        if parent is None or parent.start_ns != parent_key[1]:  # type: ignore[index]
            parent = self.parent(proc)
        memo = self._ancestry_memo if ancestry else self._context_memo
        found = memo.get(id(parent))
        if found is None or found[0] is not parent:
            found = self._remember_chain(memo, parent, ancestry)
        elif ancestry and found[3] != self._changes:
            if self._all_live(found[1]):
                found = memo[id(parent)] = (*found[:3], self._changes)
            else:
                found = self._remember_chain(memo, parent, ancestry)
        where = proc.where
        place = self._where_memo.get((id(where), id(proc.where_from), proc.cwd, id(proc.cwd_from)))
        where_text = self._where_json(proc) if place is None else place[1]
        exec_ns = proc.exec_ns
        if exec_ns is None or proc.start_ns is None:
            return '"exec_id":null' + found[2] + where_text
        return f'"exec_id":"{proc.pid}@{proc.start_ns}:{exec_ns}"{found[2]}{where_text}'

    def _remember_chain(self, memo: _ChainMemo, parent: Process | None, ancestry: bool) -> _ChainEntry:
        above = self.ancestors(parent) if ancestry and parent is not None else []
        tail = ',"parent":' + ("null" if parent is None else _encode(_ref(parent)))
        if ancestry:
            chain = [] if parent is None else [parent, *above]
            tail += ',"ancestors":' + _encode([_ref(p) for p in chain])
            self._named_parents.update(p.pid for p in chain)  # a change to any of them will count in _changes
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        # The entry holds the parent alive while its id is the key.
        found = memo[id(parent)] = (parent, above, tail, self._changes)
        return found

    def _all_live(self, chain: list[Process]) -> bool:
        """Whether each record is still the live one of its pid (then the ancestors found from them are too)."""
        live = self._live
        return all(live.get(proc.pid) is proc for proc in chain)

    def _where_json(self, proc: Process) -> str:
        """``,"cgroup":...`` (:func:`where_dict` as JSON members), memoised by the identity of the (immutable,
        shared) Where record and the cwd."""
        where = proc.where
        key = (id(where), id(proc.where_from), proc.cwd, id(proc.cwd_from))
        memo = self._where_memo
        found = memo.get(key)
        if found is None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            text = _encode(where_dict(proc))
            found = memo[key] = (where, "," + text[1:-1])  # the record stays alive while its id is in the key
        return found[1]

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        self._stats.live = len(self._live)
        self._stats.exited = len(self._exited)
        return replace(self._stats)

    # -- updating ----------------------------------------------------------------------------------------------
    def apply(self, event: Event) -> Process | None:
        """Apply one event; returns the process record as of that event (None for Lost events and pids <= 0)."""
        cls = type(event)
        if cls is Fork:
            return self._fork(event)  # type: ignore[arg-type]
        if cls is Lost or event.pid <= 0:
            return None
        if cls is Exec:
            return self._exec(event)  # type: ignore[arg-type]
        if cls is Exit:
            return self._exit(event)  # type: ignore[arg-type]
        if cls is Existing:
            return self._existing(event)  # type: ignore[arg-type]
        proc = self._live.get(event.pid) or self.lookup(event.pid)
        if proc is None or proc.exit is not None:
            return proc
        if cls is Comm and event.tid == event.pid:
            return self._put(proc._replace(comm=event.comm, comm_from=Origin.KERNEL))  # type: ignore[attr-defined]
        if cls is Uid:
            return self._put(proc._replace(uid=event.ruid))  # type: ignore[attr-defined]
        if cls is Gid:
            return self._put(proc._replace(gid=event.rgid))  # type: ignore[attr-defined]
        return proc

    def expire(self, now_ns: int | None = None) -> None:
        """Drop exited records older than the grace period (``now_ns``: CLOCK_MONOTONIC, default now)."""
        expiry_at = self._expiry_at
        if not expiry_at:
            return
        now = time.monotonic_ns() if now_ns is None else now_ns
        while expiry_at and expiry_at[0] <= now:
            expiry_at.popleft()
            proc = self._exited.pop(self._expiry_ref.popleft(), None)
            if proc is not None:
                self._stats.expired += 1
                self._forget_exited(proc)

    def live_keys(self) -> dict[int, int | None]:
        """pid -> start_ns of every live process (what a repair compares with /proc)."""
        return {pid: proc.start_ns for pid, proc in self._live.items()}

    def _fork(self, event: Fork) -> Process | None:
        if event.is_thread:
            return self._live.get(event.pid) or self.lookup(event.pid)
        live = self._live
        pid, parent_pid = event.pid, event.parent_pid
        parent = live.get(parent_pid) or self.lookup(parent_pid)
        stale = live.get(pid)
        if stale is not None:  # its exit was never seen (lost): the pid was reused
            self._retire(stale._replace(exit=synthetic_exit(stale, event)))
            self._stats.reused += 1
        if parent is not self._last_parent:
            self._child_of(parent)
        inherited = self._from_parent
        comm, uid, gid, where = event.comm, event.uid, event.gid, event.where
        # Positional, in field order (a fork storm makes one per task; keywords cost twice as much): see Process.
        proc = _new_process((
            pid,  # pid
            event.start_ns,  # start_ns
            parent_pid,  # parent_pid
            inherited[0],  # parent_key
            inherited[1] if comm is None else comm,  # comm
            inherited[2],  # exe
            inherited[3],  # argv
            inherited[4] if uid is None else uid,  # uid
            inherited[5] if gid is None else gid,  # gid
            event.timestamp_ns,  # forked_ns
            None,  # exec_ns
            inherited[6] if comm is None else Origin.KERNEL,  # comm_from
            inherited[7],  # exe_from
            inherited[8],  # argv_from
            None,  # exit
            False,  # synthetic
            inherited[9] if where is None else where,  # where
            inherited[10] if where is None else where.origin,  # where_from
            inherited[11],  # cwd
            inherited[12],  # cwd_from
        ))  # fmt: skip
        if pid in self._named_parents:
            self._changes += 1
        if stale is None and len(live) + len(self._exited) >= self.capacity:
            self._evict()
        live[pid] = proc
        return proc

    def _child_of(self, parent: Process | None) -> None:
        """What a forked child of ``parent`` has from it until its own exec (by field, for _fork), worked out once
        per parent record: a fork storm's children all have the same parent."""
        self._last_parent = parent
        if parent is None:
            self._from_parent = _ORPHAN
            return
        inherited = Origin.INHERITED
        where = None if parent.where is None else self._inherited(parent.where)
        self._from_parent = (
            self._shared(parent.key),  # parent_key
            parent.comm,
            parent.exe,
            parent.argv,
            parent.uid,
            parent.gid,
            inherited,  # comm_from, when the fork did not say
            None if parent.exe is None else inherited,  # exe_from
            None if parent.argv is None else inherited,  # argv_from
            where,
            None if where is None else inherited,  # where_from, when the fork did not say
            parent.cwd,
            None if parent.cwd is None else inherited,  # cwd_from
        )

    def _inherited(self, where: Where) -> Where:
        """The parent's context for a child whose Fork did not carry its own: all but the pid in its namespace,
        which is the child's own (unknown here).  One record per parent record."""
        if where.ns_pid is None:
            return where
        found = self._inherited_memo.get(id(where))
        if found is None or found[0] is not where:
            if len(self._inherited_memo) >= _MEMO_MAX:
                self._inherited_memo.clear()
            found = self._inherited_memo[id(where)] = (where, replace(where, ns_pid=None))
        return found[1]

    def _exec(self, event: Exec) -> Process:
        proc = self._live.get(event.pid) or self.lookup(event.pid) or Process(pid=event.pid, start_ns=event.start_ns)
        # exec renames the task to the file's basename (fs/exec.c, __set_task_comm(kbasename(filename))), so the
        # comm of before is stale: use the event's, else derive it, else unknown.
        comm, comm_from = event.comm, event.comm_from
        if comm is None and event.filename is not None:
            comm, comm_from = event.filename.rsplit("/", 1)[-1][:15], event.filename_from
        parent_pid = proc.parent_pid if event.parent_pid is None else event.parent_pid
        where = event.where
        if where is None:  # no context at this exec: what the process had
            where, where_from, cwd, cwd_from = proc.where, proc.where_from, proc.cwd, proc.cwd_from
        else:
            where_from = where.origin
            cwd, cwd_from = where.cwd, None if where.cwd is None else where.origin
        # Positional, in field order, as in _fork (an exec storm makes one per task).
        new = _new_process((
            proc.pid,  # pid
            proc.start_ns if proc.start_ns is not None else event.start_ns,  # start_ns
            parent_pid,  # parent_pid
            proc.parent_key if parent_pid == proc.parent_pid else None,  # parent_key
            comm,  # comm
            self._shared(event.filename),  # exe
            self._shared(event.argv),  # argv
            proc.uid if event.uid is None else event.uid,  # uid
            proc.gid if event.gid is None else event.gid,  # gid
            proc.forked_ns,  # forked_ns
            event.timestamp_ns,  # exec_ns
            comm_from,  # comm_from
            event.filename_from,  # exe_from
            event.argv_from,  # argv_from
            proc.exit,  # exit
            proc.synthetic,  # synthetic
            where,
            where_from,
            cwd,
            cwd_from,
        ))  # fmt: skip
        return self._put(new)

    def _exit(self, event: Exit) -> Process | None:
        if event.is_thread:
            return self._live.get(event.pid) or self.lookup(event.pid, learn=False)
        pid = event.pid
        proc = self._live.pop(pid, None)
        if pid in self._named_parents:
            self._changes += 1
        if proc is None:
            # Not seen alive: /proc no longer has it; keep what the event says.
            proc = Process(pid=pid, start_ns=event.start_ns, parent_pid=event.parent_pid, comm=event.comm)
        ended = _new_process((*proc[:_EXIT], event, *proc[_EXIT + 1 :]))  # proc._replace(exit=event), at a third
        if self.grace_ns > 0:
            self._retire(ended)
        return ended

    def _existing(self, event: Existing) -> Process:
        origin = Origin.SNAPSHOT if event.reason == "snapshot" else Origin.SYNTHETIC
        parent = self._live.get(event.parent_pid) if event.parent_pid else None
        where = event.where
        cwd = None if where is None else where.cwd
        proc = Process(
            pid=event.pid,
            start_ns=event.start_ns,
            parent_pid=event.parent_pid,
            parent_key=None if parent is None else self._shared(parent.key),
            comm=self._shared(event.comm),
            exe=self._shared(event.filename),
            argv=self._shared(event.argv),
            uid=event.uid,
            gid=event.gid,
            comm_from=origin if event.comm is not None else None,
            exe_from=origin if event.filename is not None else None,
            argv_from=origin if event.argv is not None else None,
            synthetic=event.reason != "snapshot",
            where=where,
            where_from=None if where is None else origin,
            cwd=cwd,
            cwd_from=None if cwd is None else origin,
        )
        return self._put(proc)

    def _shared(self, value: _T) -> _T:
        """One object for equal names and command lines learnt from /proc or an exec: 30,000 workers of one
        program share their argv (the cache's size is mostly these)."""
        if value is None:
            return value
        shared = self._interned
        found = shared.get(value)
        if found is None:
            if len(shared) >= _INTERN_MAX:
                shared.clear()
            found = shared[value] = value
        return found  # type: ignore[return-value]

    def _learn(self, pid: int) -> Process | None:
        found = read_existing(pid, "proc", self._clock, "proc", self.cgroups)
        if found is None:
            return None
        self._stats.learnt += 1
        proc = self._existing(found)
        origin = Origin.PROC
        return self._put(
            proc._replace(
                comm_from=origin if proc.comm is not None else None,
                exe_from=origin if proc.exe is not None else None,
                argv_from=origin if proc.argv is not None else None,
                where_from=origin if proc.where is not None else None,
                cwd_from=origin if proc.cwd is not None else None,
                synthetic=False,
            )
        )

    def _put(self, proc: Process) -> Process:
        live = self._live
        if proc.pid in self._named_parents:
            self._changes += 1
        if proc.pid not in live and len(live) + len(self._exited) >= self.capacity:
            self._evict()
        live[proc.pid] = proc
        return proc

    def _retire(self, proc: Process) -> None:
        """Keep an exited record for the grace period (the oldest exited ones go first past MAX_EXITED)."""
        exited = self._exited
        if len(exited) >= MAX_EXITED:
            self._evict(_EVICT_BATCH)
        elif len(self._live) + len(exited) >= self.capacity:
            self._evict()
        pid = proc.pid
        ref = _exited_ref(pid, proc.start_ns)
        exited[ref] = proc
        self._last_exited[pid] = proc
        self._expiry_at.append(time.monotonic_ns() + self.grace_ns)
        self._expiry_ref.append(ref)

    def _evict(self, count: int = 1) -> None:
        """Make room for ``count`` records: the oldest exited ones, else the live ones learnt longest ago (a storm
        evicts in batches, not one record per exit)."""
        exited = self._exited
        expiry_at, expiry_ref = self._expiry_at, self._expiry_ref
        left = count
        # The oldest by the expiry queue, which holds them in the order retired (the dict's own order; a ref retired
        # again keeps its first place in both, its later entry finds nothing).  Not next(iter(dict)): records popped
        # from a dict's front stay there as holes that iteration walks over until the next resize.
        while left and expiry_ref:
            expiry_at.popleft()
            proc = exited.pop(expiry_ref.popleft(), None)
            if proc is not None:
                left -= 1
                self._forget_exited(proc)
        live = self._live
        while left and live and not exited:
            pid = next(iter(live))
            del live[pid]
            self._left(pid)
            left -= 1
        self._stats.evictions += count - left

    def _forget_exited(self, proc: Process) -> None:
        """An exited record left the cache (its caller holds it in one local variable).

        The record holds its Exit event and the watcher made the event's ``process`` that record: a reference
        cycle, which only the garbage collector would free, one per ended process of a storm (with the CLI's rare
        collections they piled up: tests/test_cache.py counts them).  When nothing else holds either (their
        reference counts are what this cache and the cycle account for), nobody can see the event again, so the
        cycle is cut here and both are freed at once."""
        if self._last_exited.get(proc.pid) is proc:
            del self._last_exited[proc.pid]
        self._left(proc.pid)
        ended = proc.exit
        # proc: the caller's variable, this parameter, getrefcount's argument, ended.process;
        # ended: proc's field, this variable, getrefcount's argument.
        if ended is not None and ended.process is proc and _refs(proc) == 4 and _refs(ended) == 3:
            _set(ended, "process", None)

    def _left(self, pid: int) -> None:
        """A record of ``pid`` left the cache: a memoised ancestry naming it is stale."""
        if pid in self._named_parents:
            self._changes += 1
            self._named_parents.discard(pid)

    # -- repair ------------------------------------------------------------------------------------------------
    def count_repair(self, gone: int, found: int) -> None:
        """Record one reconciliation with /proc (the watcher's repair step) and what it changed."""
        self._stats.repairs += 1
        self._stats.synthetic_exits += gone
        self._stats.synthetic_found += found


_MEMO_MAX = 2048
_refs = sys.getrefcount
_set = object.__setattr__
_ORPHAN = (None,) * 13  # _child_of(None): a child whose parent is unknown inherits nothing
_EVICT_BATCH = 256  # exited records evicted at once past MAX_EXITED
# id(parent record) -> (that record, its ancestors, the JSON members, ProcessCache._changes when found)
_ChainEntry = tuple["Process | None", list[Process], str, int]
_ChainMemo = dict[int, _ChainEntry]
_INTERN_MAX = 65_536
_T = TypeVar("_T")
_NO_CONTEXT = '"exec_id":null,"parent":null'
_NO_CONTEXT_ANCESTRY = '"exec_id":null,"parent":null,"ancestors":null'
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def where_dict(proc: Process | None) -> dict[str, object]:
    """Who and where a process is, for JSON (``--context``; docs/cli.md "Context"): ``cgroup``, ``container``
    ({id, runtime, name, pod_uid} or null), ``loginuid``, ``sessionid``, ``tty``, ``cwd``, ``ns_pid``,
    ``namespaces`` ({pid, mnt, net, uts, ipc, user, cgroup} inode numbers), ``where_from`` and ``cwd_from``
    (kernel, proc, snapshot, inherited).  Every key is there; unknown values are null.  Text is made valid UTF-8.
    (No cgroup id: a fork's and an exec's own ``cgroup_id`` field has that name.)"""
    where = None if proc is None else proc.where
    cwd = None if proc is None else proc.cwd
    out: dict[str, object] = {
        "cgroup": None, "container": None, "loginuid": None, "sessionid": None, "tty": None,
        "cwd": None if cwd is None else json_text(cwd), "ns_pid": None, "namespaces": None,
        "where_from": None if proc is None or proc.where_from is None else proc.where_from.value,
        "cwd_from": None if proc is None or proc.cwd_from is None else proc.cwd_from.value,
    }  # fmt: skip
    if where is not None:
        container = where.container
        out.update(
            cgroup=None if where.cgroup is None else json_text(where.cgroup),
            container=None if container is None else {
                "id": json_text(container.id), "runtime": container.runtime,
                "name": None if container.name is None else json_text(container.name), "pod_uid": container.pod_uid,
            },
            loginuid=where.loginuid,
            sessionid=where.sessionid,
            tty=where.tty,
            ns_pid=where.ns_pid,
            namespaces=None if where.namespaces is None else where.namespaces._asdict(),
        )  # fmt: skip
    return out


_NO_WHERE = "," + _encode(where_dict(None))[1:-1]


def _exited_ref(pid: int, start_ns: int | None) -> int:
    """An exited record's key in the cache as one int: the pid (below 2**22, PID_MAX_LIMIT in
    include/linux/threads.h) and the start, or the pid alone when the start is unknown."""
    return pid if start_ns is None else (start_ns + 1) << 23 | pid


def _younger(candidate: Process, child: Process) -> bool:
    if candidate.start_ns is None or child.start_ns is None:
        return False
    return candidate.start_ns > child.start_ns + START_TOLERANCE_NS


def _ref(proc: Process) -> dict[str, object]:
    """For JSON: text made valid UTF-8 (the event's own fields keep exact bytes in raw_b64; context is for reading)."""
    comm, exe = proc.comm, proc.exe
    return {
        "pid": proc.pid,
        "comm": None if comm is None else json_text(comm),
        "exe": None if exe is None else json_text(exe),
    }


def _parse_key(text: str) -> TaskKey | int:
    pid, sep, start = text.partition("@")
    try:
        return TaskKey(int(pid), int(start)) if sep else int(pid)
    except ValueError:
        raise ValueError(f"{text!r} is not a pid or a pid@start_ns key") from None


def synthetic_exit(proc: Process, when: Event, status: int | None = None) -> Exit:
    """The Exit of a process found gone after its real Exit was lost: ``synthetic=True``, stamped with the time it
    was found gone (``when``); the status is unknown (``None`` fields) unless /proc still showed it as a zombie
    (``status``: its wait status)."""
    code, sig, core = decode_wait_status(status) if status is not None else (None, None, False)
    return Exit(
        status=status,
        exit_code=code,
        signal=sig,
        core_dumped=core,
        source=when.source,
        timestamp_ns=when.timestamp_ns,
        wall_time=when.wall_time,
        pid=proc.pid,
        tid=proc.pid,
        start_ns=proc.start_ns,
        parent_pid=proc.parent_pid,
        comm=proc.comm,
        synthetic=True,
    )
