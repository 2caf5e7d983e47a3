"""The Python API: :func:`watch` (blocking iterator) and :func:`awatch` (asyncio).

Example::

    with proctap.watch(events={"exec", "exit"}) as w:
        for ev in w:
            print(ev)
"""

from __future__ import annotations

import collections
import contextlib
import select
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from .backends import Backend, BackendConfig, choose_backend
from .errors import ProctapError
from .events import Event, EventKind, Exit, Fork, Lost
from .linux import procfs
from .process_table import ProcessInfo, ProcessTable

__all__ = ["AsyncWatcher", "EventFilter", "WatchStats", "Watcher", "awatch", "parse_kinds", "watch"]

KindSpec = EventKind | str | type[Event]
DEFAULT_LATENCY_S = 0.01  # how long events may wait in the kernel between drains while they keep coming


def parse_kinds(spec: Iterable[KindSpec] | str | None) -> frozenset[EventKind]:
    """``None`` or ``"all"`` -> every kind; else kinds named by EventKind, value string or event class.

    Raises ProctapError naming the valid kinds for an unknown name.
    """
    if spec is None:
        return frozenset(EventKind)
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()]
    kinds: set[EventKind] = set()
    for item in spec:
        if isinstance(item, EventKind):
            kinds.add(item)
        elif isinstance(item, type) and issubclass(item, Event):
            kinds.add(item.kind)
        else:
            name = str(item).strip().lower().replace("-", "_")
            if name == "all":
                return frozenset(EventKind)
            try:
                kinds.add(EventKind(name))
            except ValueError:
                valid = ", ".join(k.value for k in EventKind)
                raise ProctapError(f"unknown event type {item!r}: choose from {valid} or all") from None
    kinds.add(EventKind.LOST)  # never silent
    return frozenset(kinds)


class EventFilter:
    """The user's filters, applied exactly in user space (backends may pre-filter in the kernel).

    ``pid``: that process and its descendants (followed through Fork events).  ``comm``: processes whose comm
    (or argv[0] basename) equals it.  ``threads``: False drops thread Fork/Exit.  Lost events always pass.
    """

    def __init__(
        self,
        kinds: frozenset[EventKind],
        *,
        threads: bool = True,
        pid: int | None = None,
        comm: str | None = None,
        table: ProcessTable | None = None,
    ) -> None:
        self.kinds = kinds
        self.threads = threads
        self.comm = comm
        self.table = table
        self.tracked: set[int] | None = None if pid is None else {pid}

    def accept(self, event: Event) -> bool:
        if isinstance(event, Lost):
            return True
        tracked = self.tracked
        if tracked is not None:
            if isinstance(event, Fork) and not event.is_thread and event.parent_pid in tracked:
                tracked.add(event.pid)
            elif event.pid not in tracked:
                return False
        if event.kind not in self.kinds:
            return False
        if not self.threads and isinstance(event, (Fork, Exit)) and event.is_thread:
            return False
        return self.comm is None or self._comm_matches(event)

    def _comm_matches(self, event: Event) -> bool:
        comm = getattr(event, "comm", None)
        if comm is None and self.table is not None:
            info = self.table.lookup(event.pid)
            if info is not None:
                comm = info.comm
                if comm != self.comm and info.argv:
                    return info.argv[0].rsplit("/", 1)[-1] == self.comm
        return comm == self.comm

    def forget(self, event: Event) -> None:
        """After delivery: stop tracking processes that ended."""
        if self.tracked is not None and isinstance(event, Exit) and not event.is_thread:
            self.tracked.discard(event.pid)


@dataclass
class WatchStats:
    """Counters of a watcher, readable at any time.

    ``received``: events from the backend by kind (before filters); ``delivered``: events handed to the user;
    ``lost``: events the kernel reported dropped (exact counts summed); ``lost_unknown``: overruns whose size the
    kernel did not tell; ``backend``: the backend's own counters.
    """

    backend_name: str
    received: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    lost: int = 0
    lost_unknown: int = 0
    backend: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend_name,
            "received": dict(self.received),
            "delivered": self.delivered,
            "lost": self.lost,
            "lost_unknown": self.lost_unknown,
            "backend_stats": dict(self.backend),
        }


class Watcher:
    """Watches task events from one backend.  Iterate it, or call :meth:`read`; ``fileno()`` plugs into select.

    ``latency`` (seconds) bounds how long events may wait in the kernel buffer while events keep coming: between
    two non-empty drains the watcher sleeps instead of blocking in poll, so the forking tasks never have to wake it
    (waking a reader per event is what makes monitors slow down a fork storm).  When idle it blocks in poll and wakes
    on the first event.
    """

    def __init__(
        self,
        events: Iterable[KindSpec] | str | None = None,
        backend: str = "auto",
        *,
        pid: int | None = None,
        threads: bool = True,
        comm: str | None = None,
        buffer_bytes: int | None = None,
        read_proc: bool = True,
        argv_limit: int = 4096,
        latency: float = DEFAULT_LATENCY_S,
        track: bool = False,
        options: Iterable[tuple[str, str]] = (),
    ) -> None:
        kinds = parse_kinds(events)
        if pid is not None and pid <= 0:
            raise ProctapError(f"invalid pid {pid}: give a positive process id")
        if latency < 0:
            raise ProctapError("latency must be >= 0 seconds")
        cls = choose_backend(backend)
        self.table: ProcessTable | None = ProcessTable(read_proc) if (track or comm is not None) else None
        # Following a subtree needs Fork events even when the user does not want to see them; keeping the process
        # table right needs every event that changes it.
        backend_kinds = kinds | {EventKind.FORK, EventKind.EXIT} if pid is not None else kinds
        if track:
            backend_kinds |= {EventKind.FORK, EventKind.EXEC, EventKind.EXIT, EventKind.COMM}
        config = BackendConfig(
            events=frozenset(backend_kinds),
            root_pid=pid,
            threads=threads,
            buffer_bytes=buffer_bytes,
            read_proc=read_proc,
            argv_limit=argv_limit,
            options=tuple(options),
        )
        self.backend: Backend = cls(config)
        self.filter = EventFilter(kinds, threads=threads, pid=pid, comm=comm, table=self.table)
        if pid is not None and self.filter.tracked is not None:
            # Descendants that exist already: later ones are followed through Fork events (the backend is already
            # subscribed, so a task forked during this scan is seen either here or as an event).
            self.filter.tracked |= procfs.descendants(pid)
        self.latency = latency
        self._stats = WatchStats(cls.name)
        self._pending: collections.deque[Event] = collections.deque()
        self._busy = False  # the last drain returned events: sleep rather than poll
        self._closed = False

    # -- the file-like part ------------------------------------------------------------------------------------
    def fileno(self) -> int:
        """A descriptor that becomes readable when events may be ready (then call :meth:`read` with timeout 0)."""
        return self.backend.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release every kernel resource (socket, tracefs instance, BPF objects).  Idempotent."""
        if not self._closed:
            self._closed = True
            self._stats.backend = self.backend.stats()
            self.backend.close()

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
        """True while events are flowing (the last drain returned some)."""
        return self._busy

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def stats(self) -> WatchStats:
        """A snapshot of the counters."""
        if not self._closed:
            self._stats.backend = self.backend.stats()
        snap = WatchStats(**{**self._stats.__dict__, "received": dict(self._stats.received)})
        return snap

    def read(self, timeout: float | None = None) -> list[Event]:
        """Events ready now, waiting up to ``timeout`` seconds (None: until there is one) for the first.

        Returns an empty list on timeout or after close.
        """
        if self._pending:
            out = list(self._pending)
            self._pending.clear()
            return out
        return self._read(timeout)

    def _read(self, timeout: float | None, infos: list[ProcessInfo | None] | None = None) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            if self._busy:
                # Events flowed at the last drain: let the next ones pile up in the kernel buffer for a moment
                # instead of blocking in poll, where each new event would have to wake us.
                remaining = None if deadline is None else deadline - time.monotonic()
                time.sleep(self.latency if remaining is None else max(0.0, min(self.latency, remaining)))
            batch = self._drain(infos)
            if batch:
                return batch
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            if not self._busy:
                self._poll(remaining)
        return []

    def read_with_info(self, timeout: float | None = None) -> list[tuple[Event, ProcessInfo | None]]:
        """Like :meth:`read`, each event paired with a snapshot of its process as of that event (``track=True``).

        The snapshot is taken before an Exit removes the process and is not changed by later events; it is None for
        Lost events and unknown processes (and always None without a process table).
        """
        if self._pending or self.table is None:
            return [(ev, None) for ev in self.read(timeout)]
        infos: list[ProcessInfo | None] = []
        batch = self._read(timeout, infos)
        return list(zip(batch, infos, strict=True))

    def _poll(self, remaining: float | None) -> None:
        poller = select.poll()
        poller.register(self.backend.fileno(), select.POLLIN)
        poller.poll(None if remaining is None else max(0, int(remaining * 1000) + 1))

    def _drain(self, infos: list[ProcessInfo | None] | None = None) -> list[Event]:
        events = self.backend.read_events()
        self._busy = bool(events)
        if not events:
            return []
        received = self._stats.received
        accept = self.filter.accept
        table = self.table
        out = []
        for ev in events:
            kind = ev.kind.value
            received[kind] = received.get(kind, 0) + 1
            if isinstance(ev, Lost):
                if ev.count is None:
                    self._stats.lost_unknown += 1
                else:
                    self._stats.lost += ev.count
            info = None
            if table is not None and not isinstance(ev, Exit):
                info = table.update(ev)
            accepted = accept(ev)  # before an Exit leaves the table: the comm filter looks the process up
            if table is not None and isinstance(ev, Exit):
                info = table.update(ev)
            if accepted:
                out.append(ev)
                if infos is not None:
                    infos.append(None if info is None else info.snapshot())
            self.filter.forget(ev)
        self._stats.delivered += len(out)
        return out

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopIteration
            self._pending.extend(self.read())
        return self._pending.popleft()

    def process_info(self, pid: int) -> object:
        """The live process table entry for ``pid`` (requires ``track=True``)."""
        if self.table is None:
            raise ProctapError("the process table is off: create the watcher with track=True")
        return self.table.lookup(pid)


def watch(events: Iterable[KindSpec] | str | None = None, backend: str = "auto", **kwargs: object) -> Watcher:
    """Start watching; see :class:`Watcher` for the arguments.  Use as a context manager or close() it."""
    return Watcher(events, backend, **kwargs)  # type: ignore[arg-type]


class AsyncWatcher:
    """asyncio flavour of :class:`Watcher`: ``async for ev in w``; wakes through the loop's reader callbacks."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._pending: collections.deque[Event] = collections.deque()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self.watcher.closed:
                raise StopAsyncIteration
            if self.watcher.busy:
                import asyncio  # here, not at the top: importing asyncio costs the CLI ~0.15 s of start-up

                await asyncio.sleep(self.watcher.latency)  # see Watcher.read: batch instead of a wakeup per event
            batch = self.watcher.read(timeout=0)
            if batch:
                self._pending.extend(batch)
                break
            if not self.watcher.busy:
                await self._readable()
        return self._pending.popleft()

    async def _readable(self) -> None:
        import asyncio

        watcher = self.watcher
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = watcher.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await fut
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
