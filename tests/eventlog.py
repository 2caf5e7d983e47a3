"""Helpers for real-kernel tests: collect events from a live watcher until the ones about our tasks arrived."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from proctap.events import Event


class EventLog:
    """Everything a watcher delivered during a test, with queries by pid."""

    def __init__(self, watcher: object) -> None:
        self.watcher = watcher
        self.events: list[Event] = []

    def pump(self, timeout: float = 0.05) -> None:
        self.events.extend(self.watcher.read(timeout=timeout))  # type: ignore[attr-defined]

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 10.0) -> list[Event]:
        """Read until ``predicate(all events so far)`` holds; AssertionError (with what was seen) on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; saw {len(self.events)} events")
            self.pump()
        return self.events

    def about(self, pids: Iterable[int], kind: type[Event] | None = None) -> list[Event]:
        """Events about the latest processes with these pids (see :meth:`since_fork`), in order."""
        found = [e for pid in set(pids) for e in self.since_fork(pid) if kind is None or isinstance(e, kind)]
        order = {id(e): i for i, e in enumerate(self.events)}
        return sorted(found, key=lambda e: order[id(e)])

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def process_exit(self, pid: int) -> Event | None:
        """The exit of the *latest* process with this pid: the first process Exit after its Fork.

        PIDs are reused (fast, when other tasks fork a lot), so an Exit with the same pid before our Fork is someone
        else's.  Tasks the tests spawn are always forked while the watcher runs, so their Fork is in the log.
        """
        from proctap.events import Exit, Fork

        forked_at = None
        for i, e in enumerate(self.events):
            if isinstance(e, Fork) and e.pid == pid and not e.is_thread:
                forked_at = i
        if forked_at is None:
            return None
        for e in self.events[forked_at:]:
            if isinstance(e, Exit) and e.pid == pid and not e.is_thread:
                return e
        return None

    def since_fork(self, pid: int) -> list[Event]:
        """Events about the latest process with this pid (from its Fork on)."""
        from proctap.events import Fork

        forked_at = 0
        for i, e in enumerate(self.events):
            if isinstance(e, Fork) and e.pid == pid and not e.is_thread:
                forked_at = i
        return [e for e in self.events[forked_at:] if e.pid == pid]

    def has_process_exit(self, pid: int) -> Callable[[list[Event]], bool]:
        return lambda _events: self.process_exit(pid) is not None
