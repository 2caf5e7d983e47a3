"""Export to the industry's pipelines: OpenTelemetry (OTLP/HTTP JSON) and Prometheus.  See docs/export.md.

* :class:`OtlpExporter`: events as OTLP log records, from a background thread with a bounded queue, batching and
  retries; losses come back as :class:`proctap.Lost` events (``take_lost``), never silently.
* :func:`export_tree`: a ``proctap run`` process tree as one OTLP trace (one span per process).
* :func:`trace_events`: the same tree in the Trace Event Format (Perfetto, chrome://tracing).
* :class:`Metrics` / :class:`MetricsServer`: Prometheus counters of the event stream and their ``/metrics`` page.
* :mod:`proctap.export.otlp`: the pure event -> log record and tree -> spans functions.
"""

from __future__ import annotations

from .delivery import Delivery, DeliveryStats, HttpPoster
from .exporter import LOST_REASONS, OtlpExporter, export_tree
from .otlp import log_record, logs_request, parse_traceparent, resource_attributes, tree_spans
from .prometheus import Metrics, MetricsServer, TopPrograms
from .sink import ExportSink
from .trace_event import trace_events

__all__ = [
    "LOST_REASONS",
    "Delivery",
    "DeliveryStats",
    "ExportSink",
    "HttpPoster",
    "Metrics",
    "MetricsServer",
    "OtlpExporter",
    "TopPrograms",
    "export_tree",
    "log_record",
    "logs_request",
    "parse_traceparent",
    "resource_attributes",
    "trace_events",
    "tree_spans",
]
