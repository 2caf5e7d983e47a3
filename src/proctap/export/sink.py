"""What ``proctap watch`` hands each batch to: the OTLP exporter and the Prometheus counters, together."""

from __future__ import annotations

from collections.abc import Sequence

from ..events import Event
from .exporter import OtlpExporter
from .prometheus import Metrics

__all__ = ["ExportSink"]


class ExportSink:
    """Feeds each delivered batch to an :class:`OtlpExporter` and/or :class:`Metrics` (either may be None).

    :meth:`consume` returns the Lost events the exporter reports (its queue overflowed, the receiver refused a
    batch): the caller shows them with the batch, and they are counted in the metrics like the kernel's."""

    def __init__(self, exporter: OtlpExporter | None = None, metrics: Metrics | None = None) -> None:
        self.exporter = exporter
        self.metrics = metrics

    def consume(self, events: Sequence[Event]) -> list[Event]:
        extra: list[Event] = []
        if self.exporter is not None:
            if events:
                self.exporter.send_batch(events)
            extra.extend(self.exporter.take_lost())
        if self.metrics is not None:
            self.metrics.observe(events)
            if extra:
                self.metrics.observe(extra)
        return extra

    def close(self, timeout: float = 5.0) -> list[Event]:
        """Flush the exporter (at most ``timeout`` seconds); returns the Lost events of what it could not send."""
        if self.exporter is None:
            return []
        self.exporter.close(timeout)
        return self.consume(())
