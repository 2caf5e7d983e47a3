"""Delivery that loses nothing silently: a bounded queue, batches by size and age, one sender thread, retries.

The event path only appends to the queue under a lock (:meth:`Delivery.put`), never waits for the network: when
the queue is full the newest items are dropped and *counted*; the count comes back from :meth:`Delivery.take_losses`
(the caller reports it, e.g. as a :class:`proctap.Lost` event) and, once the queue has room again, as a marker item
queued for the receiver (``make_marker``), so the receiver also learns of the gap.

The sender thread takes up to ``batch_size`` items when that many are queued or when the oldest has waited
``batch_age`` seconds, encodes them (outside the lock) and POSTs them with :class:`HttpPoster`.  Connection errors,
timeouts and the statuses OTLP calls retryable (429, 502, 503, 504) are retried with exponential backoff and jitter,
or after the ``Retry-After`` the receiver asked for (capped at ``max_retry_after``); other statuses are permanent:
the batch is counted as rejected (and reported), as OTLP/HTTP prescribes.  While a batch is being retried the queue
keeps filling, up to its bound.  :meth:`Delivery.close` sends what is queued within a deadline and counts the rest.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .. import __version__

__all__ = ["RETRYABLE_STATUSES", "Delivery", "DeliveryStats", "HttpPoster", "PostResult", "parse_retry_after"]

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = f"proctap/{__version__}"
GZIP_LEVEL = 1  # of 1-9: level 6 compresses an event batch ~15% better for ~3x the CPU (bench/export_cost.py)

# The reasons losses are counted under (``DeliveryStats.dropped`` keys, the metrics' ``reason`` label).
QUEUE_FULL = "queue_full"
REJECTED = "rejected"
UNSENT_AT_EXIT = "unsent_at_exit"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds (``"5"``) or an HTTP-date; None when absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class PostResult:
    """What one POST came to: ``status`` (None: no HTTP answer, ``error`` says why), ``retry_after`` seconds the
    receiver asked for, ``rejected`` items its ``partialSuccess`` refused, ``message`` its error text."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    rejected: int = 0
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRYABLE_STATUSES


class HttpPoster:
    """POSTs JSON bodies to one URL with ``urllib.request`` (gzip by default, extra headers such as an auth token).

    ``rejected_field``: the ``partialSuccess`` counter of the signal (``rejectedLogRecords``, ``rejectedSpans``).
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        compression: str | None = "gzip",
        timeout: float = 10.0,
        rejected_field: str = "rejectedLogRecords",
    ) -> None:
        if compression not in (None, "gzip"):
            raise ValueError(f"compression must be 'gzip' or None, not {compression!r}")
        self.url = url
        self.timeout = timeout
        self.compression = compression
        self.rejected_field = rejected_field
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if compression == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        self.headers.update(headers or {})
        self._opener = urllib.request.build_opener()

    def encode(self, payload: bytes) -> bytes:
        """The body as sent (gzip: a gzip member; wbits 31 writes the gzip header and trailer)."""
        if self.compression != "gzip":
            return payload
        packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return packer.compress(payload) + packer.flush()

    def post(self, body: bytes, timeout: float | None = None) -> PostResult:
        """One POST of an already encoded body (:meth:`encode`), waiting at most ``timeout`` seconds (default: the
        poster's); never raises for network or HTTP trouble."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        wait = self.timeout if timeout is None else min(timeout, self.timeout)
        try:
            with self._opener.open(request, timeout=wait) as response:
                return self._success(response.status, response.read())
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(Exception):
                exc.read()
            retry = parse_retry_after(exc.headers.get("Retry-After")) if exc.headers is not None else None
            return PostResult(exc.code, retry_after=retry, message=f"HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            return PostResult(None, error=_reason(exc.reason))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # resets, timeouts, a truncated answer
            return PostResult(None, error=_reason(exc))

    def _success(self, status: int, text: bytes) -> PostResult:
        result = PostResult(status)
        if text:
            try:
                partial = json.loads(text).get("partialSuccess") or {}
                result.rejected = int(partial.get(self.rejected_field) or 0)
                result.message = partial.get("errorMessage") or None
            except (ValueError, AttributeError, TypeError):
                pass  # a receiver answering protobuf or nothing useful: the status is what counts
        return result


def _reason(exc: object) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass
class DeliveryStats:
    """Counters of one delivery (a snapshot).  Every item put is eventually ``sent``, counted in ``dropped`` under
    a reason (``queue_full``, ``rejected``, ``unsent_at_exit``), or still ``queued``/``in_flight``."""

    capacity: int
    queued: int = 0
    in_flight: int = 0
    high_water: int = 0
    accepted: int = 0  # items put into the queue (markers included)
    sent: int = 0  # items the receiver accepted
    dropped: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # success / retry / rejected
    bytes_sent: int = 0  # bodies as sent (compressed), of successful requests
    markers: int = 0  # loss markers queued for the receiver
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "capacity": self.capacity,
            "queued": self.queued,
            "in_flight": self.in_flight,
            "high_water": self.high_water,
            "accepted": self.accepted,
            "sent": self.sent,
            "dropped": dict(self.dropped),
            "requests": dict(self.requests),
            "bytes_sent": self.bytes_sent,
            "markers": self.markers,
            "last_error": self.last_error,
        }


class Delivery(Generic[T]):
    """A bounded queue and the thread that sends it in batches (see the module docstring).

    ``encode(items) -> bytes``: the request body of a batch (before compression).  ``make_marker(count, reason)``:
    an item telling the receiver ``count`` items were lost (queued ahead of the next items once there is room), or
    None.  ``on_problem(message)``: called (from the sender thread) when delivery starts failing and when a batch
    is rejected, to warn the user once per change of state.
    """

    def __init__(
        self,
        poster: HttpPoster,
        encode: Callable[[list[T]], bytes],
        *,
        capacity: int = 100_000,
        batch_size: int = 2000,
        batch_age: float = 1.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        make_marker: Callable[[int, str], T] | None = None,
        on_problem: Callable[[str], None] | None = None,
        name: str = "proctap-export",
    ) -> None:
        if capacity < 1 or batch_size < 1 or batch_age < 0:
            raise ValueError("capacity and batch_size must be at least 1, batch_age at least 0")
        self.poster = poster
        self.encode = encode
        self.capacity = capacity
        self.batch_size = batch_size
        self.batch_age = batch_age
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.make_marker = make_marker
        self.on_problem = on_problem
        self._cv = threading.Condition()
        self._queue: collections.deque[T] = collections.deque()
        self._marks: collections.deque[tuple[int, float]] = collections.deque()  # (items put so far, when)
        self._put_count = 0  # items ever queued
        self._taken_count = 0  # items ever taken by the sender
        self._stats = DeliveryStats(capacity)
        self._unmarked: dict[str, int] = {}  # losses not yet told to the receiver
        self._unreported: dict[str, int] = {}  # losses not yet handed to take_losses()
        self._closing = False
        self._closed = threading.Event()  # set by close(): cuts a retry's wait short
        self._abandoned = False  # close() gave up waiting: the sender thread must count nothing more
        self._deadline: float | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the event path ---------------------------------------------------------------------------------------------
    def put(self, items: Sequence[T]) -> int:
        """Queue ``items`` (never blocks on the network); returns how many were dropped because the queue is full."""
        if not items:
            return 0
        with self._cv:
            if self._closing:
                self._lose(UNSENT_AT_EXIT, len(items))
                return len(items)
            room = self.capacity - len(self._queue)
            if self._unmarked and room > 0 and self.make_marker is not None:
                for reason, count in self._unmarked.items():
                    self._queue.append(self.make_marker(count, reason))  # a marker may exceed the bound by a few
                    self._stats.markers += 1
                self._put_count += len(self._unmarked)
                self._unmarked = {}
                room = self.capacity - len(self._queue)
            if room >= len(items):
                taken = len(items)
                self._queue.extend(items)
            else:
                taken = max(room, 0)
                if taken:
                    self._queue.extend(items[:taken])
                self._lose(QUEUE_FULL, len(items) - taken)
            self._put_count += taken
            self._stats.accepted += taken
            self._marks.append((self._put_count, time.monotonic()))
            depth = len(self._queue)
            if depth > self._stats.high_water:
                self._stats.high_water = depth
            if depth >= self.batch_size or len(self._marks) == 1:
                self._cv.notify()
            return len(items) - taken

    def _lose(self, reason: str, count: int) -> None:
        """Count a loss (called with the lock held)."""
        if count <= 0:
            return
        dropped = self._stats.dropped
        dropped[reason] = dropped.get(reason, 0) + count
        self._unreported[reason] = self._unreported.get(reason, 0) + count
        if reason != UNSENT_AT_EXIT:
            self._unmarked[reason] = self._unmarked.get(reason, 0) + count

    def take_losses(self) -> dict[str, int]:
        """Losses (by reason) since the last call, for the caller to report; {} when none."""
        with self._cv:
            if not self._unreported:
                return {}
            out, self._unreported = self._unreported, {}
            return out

    def stats(self) -> DeliveryStats:
        with self._cv:
            snap = DeliveryStats(**{**self._stats.__dict__})
            snap.dropped = dict(self._stats.dropped)
            snap.requests = dict(self._stats.requests)
            snap.queued = len(self._queue)
            return snap

    # -- shutting down ----------------------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> DeliveryStats:
        """Send what is queued for at most ``timeout`` seconds (retries included), then count what is left as
        ``unsent_at_exit``.  Idempotent; returns the final counters."""
        with self._cv:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + max(timeout, 0.0)
                if self._unmarked and self.make_marker is not None:  # tell the receiver about the last losses too
                    for reason, count in self._unmarked.items():
                        self._queue.append(self.make_marker(count, reason))
                        self._stats.markers += 1
                    self._put_count += len(self._unmarked)
                    self._unmarked = {}
                self._cv.notify_all()
        self._closed.set()
        self._thread.join(max(timeout, 0.0) + 0.5)
        with self._cv:
            left = len(self._queue)
            if self._thread.is_alive() and not self._abandoned:  # a POST still hangs: its batch is not sent either
                self._abandoned = True
                left += self._stats.in_flight
                self._stats.in_flight = 0
            if left:
                self._queue.clear()
                self._lose(UNSENT_AT_EXIT, left)
        return self.stats()

    # -- the sender thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._deliver(batch)

    def _oldest_time(self) -> float | None:
        marks = self._marks
        while marks and marks[0][0] <= self._taken_count:
            marks.popleft()
        return marks[0][1] if marks else None

    def _next_batch(self) -> list[T] | None:
        with self._cv:
            while True:
                queue = self._queue
                if self._closing:
                    if not queue or self._past_deadline():
                        return None
                    break
                if len(queue) >= self.batch_size:
                    break
                oldest = self._oldest_time()
                if queue and oldest is not None:
                    wait = oldest + self.batch_age - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                elif queue:  # markers only
                    break
                else:
                    self._cv.wait()
            n = min(self.batch_size, len(queue))
            batch = [queue.popleft() for _ in range(n)]
            self._taken_count += n
            self._oldest_time()
            self._stats.in_flight = n
            return batch

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _deliver(self, batch: list[T]) -> None:
        body = self.poster.encode(self.encode(batch))
        backoff = self.initial_backoff
        while True:
            timeout = None
            if self._deadline is not None:
                timeout = max(self._deadline - time.monotonic(), 0.05)
            result = self.poster.post(body, timeout)
            with self._cv:
                if self._abandoned:
                    return
                if result.ok:
                    self._count_request("success")
                    rejected = min(max(result.rejected, 0), len(batch))
                    self._stats.sent += len(batch) - rejected
                    self._stats.bytes_sent += len(body)
                    self._stats.in_flight = 0
                    if rejected:
                        self._lose(REJECTED, rejected)
                    recovered = self._failing
                    self._failing = False
                else:
                    recovered = False
            if result.ok:
                if rejected:
                    self._problem(f"the receiver refused {rejected} of {len(batch)} records: {result.message or '?'}")
                elif recovered:
                    self._problem("delivering again")
                return
            problem = result.error or result.message or f"HTTP {result.status}"
            if not result.retryable:
                with self._cv:
                    self._count_request("rejected")
                    self._stats.in_flight = 0
                    self._stats.last_error = problem
                    self._lose(REJECTED, len(batch))
                self._problem(f"{problem}: {len(batch)} records refused (not retried)")
                return
            with self._cv:
                self._count_request("retry")
                self._stats.last_error = problem
                first = not self._failing
                self._failing = True
            if first:
                self._problem(f"{problem}; retrying (events queue meanwhile, up to {self.capacity})")
            if result.retry_after is not None:
                delay = min(result.retry_after, self.max_retry_after)
            else:
                delay = backoff * (0.5 + random.random() / 2)  # "equal jitter": between half and all of it
                backoff = min(backoff * 2, self.max_backoff)
            if self._deadline is not None:
                delay = min(delay, self._deadline - time.monotonic())
            if delay > 0:
                self._closed.wait(delay)
                if self._closed.is_set() and self._deadline is not None:  # closing: retry at once, until the deadline
                    self._closed.clear()
            with self._cv:
                if self._abandoned:
                    return
                if self._past_deadline():
                    self._stats.in_flight = 0
                    self._lose(UNSENT_AT_EXIT, len(batch))
                    return

    def _count_request(self, outcome: str) -> None:
        requests = self._stats.requests
        requests[outcome] = requests.get(outcome, 0) + 1

    def _problem(self, message: str) -> None:
        if self.on_problem is not None:
            with contextlib.suppress(Exception):
                self.on_problem(message)
