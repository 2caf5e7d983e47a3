"""The one way the tests watch while a workload runs: collect what a source delivers until a condition holds.

A *source* hands over what arrived within a short wait.  Anything proctap reads from can be one:

- a :class:`proctap.Watcher` (``read(timeout=...)``),
- a backend, a taskstats listener, anything with ``fileno()`` and ``read_events()`` or ``read()`` that never
  blocks (select on the fd, then read: a backend that finds losses by polling is read after every wait too),
- a plain callable ``wait_seconds -> iterable`` (for instance lines from ``proctap watch``'s stdout).

:func:`collect` and :class:`Collector` collect until a predicate holds, and fail with what was seen when the deadline
passes; :class:`EventLog` adds the queries about processes the tests make (the events of the latest process with a
pid: pids are reused fast on a busy machine).

Deadlines only bound waiting, they are never a measurement: ``PROCTAP_TEST_TIMEOUT`` seconds (default 30, enough
for a loaded 2-core machine; tests/vm/run raises it for emulation).
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from proctap.events import Event, Exec, Exit, Fork, Lost

TIMEOUT = float(os.environ.get("PROCTAP_TEST_TIMEOUT", "30"))
PUMP_WAIT = 0.05  # one read's wait: short, so that predicates are checked often

T = TypeVar("T")
Source = Callable[[float], Iterable[Any]]


def as_source(thing: object) -> Source:
    """A source for a watcher, a backend (or listener), or a callable that already is one."""
    read = getattr(thing, "read", None)
    if _is_watcher(thing):
        return lambda wait: read(timeout=wait)  # type: ignore[misc]
    drain = getattr(thing, "read_events", None) or read
    if drain is not None and hasattr(thing, "fileno"):

        def from_fd(wait: float) -> Iterable[Any]:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile: read says so (an empty list)
                select.select([thing], [], [], wait)
            return drain()  # type: ignore[no-any-return]

        return from_fd
    if callable(thing):
        return thing  # type: ignore[return-value]
    raise TypeError(f"cannot collect from {thing!r}")


def _is_watcher(thing: object) -> bool:
    from proctap.watcher import Watcher

    return isinstance(thing, Watcher)


class Collector(Generic[T]):
    """Everything a source delivered during a test, with bounded waits for what the test expects."""

    def __init__(self, source: object) -> None:
        self.source = as_source(source)
        self.items: list[T] = []

    def pump(self, timeout: float = PUMP_WAIT) -> list[T]:
        """One read (waiting at most ``timeout``); returns what it added."""
        new = list(self.source(timeout))
        self.items.extend(new)
        return new

    def drain(self) -> list[T]:
        """Read without waiting until a read brings nothing."""
        while self.pump(0):
            pass
        return self.items

    def until(self, done: Callable[[list[T]], bool], what: str = "the expected events",
              timeout: float | None = None) -> list[T]:  # fmt: skip
        """Read until ``done(everything so far)``; AssertionError saying what was awaited and seen on timeout."""
        limit = TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not done(self.items):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {limit:g}s waiting for {what}; {self.describe()}")
            self.pump()
        return self.items

    def during(self, seconds: float) -> list[T]:
        """Everything that arrives within ``seconds`` (for a test that checks something does *not* come)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, PUMP_WAIT))
        return self.items

    def describe(self) -> str:
        tail = "\n  ".join(repr(i) for i in self.items[-20:])
        return f"saw {len(self.items)}" + (f", the last:\n  {tail}" if tail else "")


class EventLog(Collector[Event]):
    """Everything a watcher (or backend) delivered during a test, with queries by pid."""

    def __init__(self, source: object) -> None:
        super().__init__(source)
        self.watcher = source

    @property
    def events(self) -> list[Event]:
        return self.items

    @property
    def backend(self) -> str:
        return str(getattr(self.watcher, "backend_name", type(self.watcher).__name__))

    # -- waiting ----------------------------------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[list[Event]], bool], what: str = "the expected events",
                 timeout: float | None = None) -> list[Event]:  # fmt: skip
        """Read until ``predicate(all events so far)`` holds."""
        return self.until(predicate, what, timeout)

    def wait_until(self, predicate: Callable[[], bool], what: str, pids: Iterable[int] = ()) -> None:
        """Read until ``predicate()`` holds; on timeout the message lists the events about ``pids``."""
        pids = list(pids)
        try:
            self.until(lambda _events: predicate(), what)
        except AssertionError:
            seen = "\n  ".join(repr(e) for e in self.about(pids)) or "(nothing about them)"
            raise AssertionError(
                f"{self.backend}: timed out waiting for {what}; events about {pids}:\n  {seen}"
            ) from None

    def wait_exit(self, *pids: int, forked: bool = True) -> list[Exit]:
        """The process exits of these pids, once all came (see :meth:`process_exit` for ``forked``)."""
        self.wait_until(lambda: all(self.process_exit(p, forked) is not None for p in pids), "process exits", pids)
        return [self.process_exit(p, forked) for p in pids]  # type: ignore[misc]

    def wait_exec(self, pid: int) -> Exec:
        """The latest Exec of this pid, once one came."""
        self.wait_until(lambda: bool(self.about([pid], Exec)), f"the exec of {pid}", [pid])
        return self.about([pid], Exec)[-1]  # type: ignore[return-value]

    def has_process_exit(self, pid: int) -> Callable[[list[Event]], bool]:
        return lambda _events: self.process_exit(pid) is not None

    # -- queries ----------------------------------------------------------------------------------------------------
    def about(self, pids: Iterable[int], kind: type[Event] | None = None) -> list[Event]:
        """Events about the latest processes with these pids (see :meth:`since_fork`), in order."""
        found = [e for pid in set(pids) for e in self.since_fork(pid) if kind is None or isinstance(e, kind)]
        order = {id(e): i for i, e in enumerate(self.events)}
        return sorted(found, key=lambda e: order[id(e)])

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def lost(self) -> int:
        """Events the kernel reported lost, by count (a Lost without a count counts as none: check for those)."""
        return sum(e.count or 0 for e in self.events if isinstance(e, Lost))

    def forks_of(self, pid: int) -> list[Fork]:
        return [e for e in self.events if isinstance(e, Fork) and e.pid == pid and not e.is_thread]

    def _forked_at(self, pid: int) -> int | None:
        at = None
        for i, e in enumerate(self.events):
            if isinstance(e, Fork) and e.pid == pid and not e.is_thread:
                at = i
        return at

    def process_exit(self, pid: int, forked: bool = True) -> Exit | None:
        """The exit of the *latest* process with this pid: the first process Exit after its Fork.

        PIDs are reused (fast, when other tasks fork a lot), so an Exit with the same pid before our Fork is someone
        else's.  Tasks the tests spawn while the watcher runs have their Fork in the log; for a process started
        before the watcher, pass ``forked=False``: then, with no Fork seen, the first process Exit of the pid.
        """
        forked_at = self._forked_at(pid)
        if forked_at is None and forked:
            return None
        for e in self.events[forked_at or 0 :]:
            if isinstance(e, Exit) and e.pid == pid and not e.is_thread:
                return e
        return None

    def since_fork(self, pid: int) -> list[Event]:
        """Events about the latest process with this pid (from its Fork on; all of them when no Fork was seen)."""
        return [e for e in self.events[self._forked_at(pid) or 0 :] if e.pid == pid]


def collect(source: object, until: Callable[[list[Any]], bool] | None, timeout: float | None = None,
            what: str = "the expected events") -> list[Any]:  # fmt: skip
    """What ``source`` delivers until ``until(everything so far)`` holds (AssertionError on timeout), or, with
    ``until=None``, everything that arrives within ``timeout`` seconds."""
    c: Collector[Any] = Collector(source)
    if until is None:
        return c.during(TIMEOUT if timeout is None else timeout)
    return c.until(until, what, timeout)
