"""OTLP/HTTP exporters: :class:`OtlpExporter` streams events as log records; :func:`export_tree` sends a ``proctap
run`` tree as one trace.  JSON encoding (``application/json``), gzip by default."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import ProctapError
from ..events import Event, Lost
from . import otlp
from .delivery import QUEUE_FULL, REJECTED, UNSENT_AT_EXIT, Delivery, DeliveryStats, HttpPoster

__all__ = ["LOST_REASONS", "OtlpExporter", "check_url", "export_tree", "parse_header"]

# What a Lost event (and the stream's marker record) says for each way the exporter can lose events.
LOST_REASONS = {
    QUEUE_FULL: "otlp export queue full",
    REJECTED: "otlp receiver refused them",
    UNSENT_AT_EXIT: "otlp export unsent at exit",
}
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def check_url(url: str) -> str:
    """An OTLP/HTTP URL (``http://`` or ``https://`` with a host), else ProctapError saying what to give."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise ProctapError(f"bad OTLP URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProctapError(f"bad OTLP URL {url!r}: give http(s)://HOST[:PORT][/PATH], e.g. http://localhost:4318")
    return url


def parse_header(text: str) -> tuple[str, str]:
    """``K=V`` (as ``--otlp-header`` and ``OTEL_EXPORTER_OTLP_HEADERS`` write them) -> (K, V)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t:\r\n") or any(c in value for c in "\r\n"):
        raise ProctapError(f"bad OTLP header {text!r}: give NAME=VALUE, e.g. Authorization='Bearer TOKEN'")
    return name, value.strip()


class OtlpExporter:
    """Sends events to an OTLP/HTTP receiver as log records, from a background thread.

    ``url``: the receiver (``http://collector:4318``; ``/v1/logs`` is appended when it has no path).  ``headers``:
    extra request headers (auth).  :meth:`send` / :meth:`send_batch` only queue (at most ``queue_size`` events;
    beyond that events are dropped and counted, never blocking the caller); batches of up to ``batch_size`` leave
    when full or when their oldest event has waited ``batch_age`` seconds.  Losses come back from
    :meth:`take_lost` as :class:`proctap.Lost` events (reason ``otlp export queue full``, ...), and the receiver
    gets a ``proctap.lost`` record for them once the queue has room.  :meth:`close` flushes within ``timeout``.

    >>> with OtlpExporter("http://localhost:4318") as exporter:   # doctest: +SKIP
    ...     for ev in proctap.watch():
    ...         exporter.send(ev)
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        *,
        backend: str | None = None,
        resource: Mapping[str, str] | None = None,
        queue_size: int = 100_000,
        batch_size: int = 2000,
        batch_age: float = 1.0,
        compression: str | None = "gzip",
        timeout: float = 10.0,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        check_url(url)
        if queue_size < 1 or batch_size < 1:
            raise ProctapError("queue_size and batch_size must be at least 1")
        self.url = otlp.endpoint(url, "logs")
        self.backend = backend
        extra = {**otlp.env_resource_attributes(), **(resource or {})}
        self._resource = otlp.resource_attributes(backend, extra)
        self._poster = HttpPoster(
            self.url, dict(headers or {}), compression=compression, timeout=timeout, rejected_field="rejectedLogRecords"
        )
        self._delivery: Delivery[Event] = Delivery(
            self._poster,
            self._encode,
            capacity=queue_size,
            batch_size=batch_size,
            batch_age=batch_age,
            make_marker=self._marker,
            on_problem=on_problem,
            name="proctap-otlp-logs",
        )
        self._closed = False

    # -- the event path ---------------------------------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Queue one event (never blocks on the network)."""
        self._delivery.put((event,))

    def send_batch(self, events: Sequence[Event]) -> int:
        """Queue events; returns how many were dropped because the queue was full (also in :meth:`take_lost`)."""
        return self._delivery.put(events)

    def take_lost(self) -> list[Lost]:
        """One Lost event per reason for the events lost since the last call (queue full, refused by the receiver,
        unsent at exit); [] when none."""
        return [self._lost(count, reason) for reason, count in self._delivery.take_losses().items()]

    def stats(self) -> DeliveryStats:
        return self._delivery.stats()

    def close(self, timeout: float = 5.0) -> DeliveryStats:
        """Flush what is queued for at most ``timeout`` seconds; what could not be sent is counted (``dropped``
        ``unsent_at_exit``, and a Lost from :meth:`take_lost`).  Idempotent."""
        self._closed = True
        return self._delivery.close(timeout)

    def __enter__(self) -> OtlpExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding (the sender thread) -----------------------------------------------------------------------------
    def _encode(self, events: list[Event]) -> bytes:
        observed = time.time_ns()
        record = otlp.log_record_json
        return otlp.logs_request_json([record(ev, observed) for ev in events], self._resource).encode("ascii")

    def _lost(self, count: int, reason: str) -> Lost:
        now = time.monotonic_ns()
        wall = time.time()
        return Lost(
            source=self.backend or "otlp",
            timestamp_ns=now,
            wall_time=wall,
            pid=0,
            tid=0,
            count=count,
            reason=LOST_REASONS.get(reason, reason),
        )

    def _marker(self, count: int, reason: str) -> Event:
        return self._lost(count, reason)


def export_tree(
    url: str,
    tree: Any,
    *,
    wall_offset_ns: int,
    end_ns: int,
    backend: str | None = None,
    headers: Mapping[str, str] | None = None,
    traceparent: str | None = None,
    timeout: float = 10.0,
    batch_size: int = 1000,
    on_problem: Callable[[str], None] | None = None,
) -> tuple[int, int, str]:
    """Send a :class:`proctap.run.tree.ProcessTree` as one OTLP trace (``/v1/traces``): returns (spans sent, spans
    not sent, the trace id).  ``traceparent`` (W3C, e.g. ``$TRACEPARENT``) makes the tree a child of that span in
    that trace.  Delivery retries like the log exporter's, all within ``timeout`` seconds."""
    check_url(url)
    parent = otlp.parse_traceparent(traceparent)
    trace_id, parent_span = parent if parent is not None else (None, None)
    spans = otlp.tree_spans(
        tree, wall_offset_ns=wall_offset_ns, end_ns=end_ns, trace_id=trace_id, parent_span_id=parent_span
    )
    resource = otlp.resource_attributes(backend, otlp.env_resource_attributes())
    poster = HttpPoster(otlp.endpoint(url, "traces"), headers, timeout=timeout, rejected_field="rejectedSpans")

    def encode(batch: list[dict[str, Any]]) -> bytes:
        return _ENCODE(otlp.traces_request(batch, resource)).encode("utf-8", "surrogatepass")

    delivery: Delivery[dict[str, Any]] = Delivery(
        poster, encode, capacity=max(len(spans), 1), batch_size=batch_size, batch_age=0.0, on_problem=on_problem,
        name="proctap-otlp-traces",
    )  # fmt: skip
    delivery.put(spans)
    stats = delivery.close(timeout)
    return stats.sent, sum(stats.dropped.values()), spans[0]["traceId"]
