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
        wanted = set(pids)
        return [e for e in self.events if e.pid in wanted and (kind is None or isinstance(e, kind))]

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def process_exit(self, pid: int) -> Event | None:
        from proctap.events import Exit

        for e in self.events:
            if isinstance(e, Exit) and e.pid == pid and not e.is_thread:
                return e
        return None

    def has_process_exit(self, pid: int) -> Callable[[list[Event]], bool]:
        return lambda _events: self.process_exit(pid) is not None
