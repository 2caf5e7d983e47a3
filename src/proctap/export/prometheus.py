"""Prometheus metrics: counters fed from the event stream, the text exposition format, and a one-thread HTTP server.

:class:`Metrics` is fed whole batches (:meth:`Metrics.observe`, one lock per batch, nothing but dict updates on the
event path); :meth:`Metrics.exposition` renders the text format (version 0.0.4) for a scrape.  Every label has a
bounded set of values: event kinds, the backend, loss reasons (fixed strings in proctap's code), errno names, exit
outcomes and, for ``proctap_execs_total{comm}``, at most ``comm_limit`` program names (see :class:`TopPrograms`).

:class:`MetricsServer` serves ``/metrics`` with the standard library's ``http.server`` on one daemon thread.
"""

from __future__ import annotations

import http.server
import os
import platform
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import __version__
from ..errors import ProctapError
from ..events import Event, EventKind, errno_name, json_text

__all__ = ["DEFAULT_COMM_LIMIT", "Metrics", "MetricsServer", "TopPrograms", "parse_listen_address"]

DEFAULT_COMM_LIMIT = 50
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"


class TopPrograms:
    """Bounded labels for exec counts: a program gets its own label once it has been exec'd ``promote_after`` times
    (counted in a candidate table of at most ``candidates`` names, cleared when full), while fewer than ``limit``
    programs have one; every other exec counts under ``other``.  Labels are never taken back, so each series only
    grows (a Prometheus counter), and programs that run often get a label while one-off programs stay in ``other``.
    A program's execs before the one that gave it its label stay counted in ``other``."""

    def __init__(self, limit: int = DEFAULT_COMM_LIMIT, promote_after: int = 3, candidates: int = 4096) -> None:
        self.limit = limit
        self.promote_after = promote_after
        self.candidates_max = candidates
        self.counts: dict[str, int] = {}  # labelled programs -> execs since labelled
        self.other = 0
        self._candidates: dict[str, int] = {}

    def add(self, name: str) -> None:
        counts = self.counts
        if name in counts:
            counts[name] += 1
            return
        if len(counts) < self.limit:
            seen = self._candidates.get(name, 0) + 1
            if seen >= self.promote_after:
                self._candidates.pop(name, None)
                counts[name] = 1  # this exec is its label's first; the earlier ones stay in "other"
                return
            if len(self._candidates) >= self.candidates_max:
                self._candidates.clear()
            self._candidates[name] = seen
        self.other += 1


def _escape(value: str) -> str:
    """A label value in the exposition format: valid UTF-8, backslash, double quote and newline escaped."""
    return json_text(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Counters of one ``proctap watch``: see docs/export.md for the list.  ``export_stats``: a callable giving the
    OTLP exporter's :class:`proctap.export.delivery.DeliveryStats` (adds ``proctap_export_*``)."""

    def __init__(
        self,
        backend: str,
        *,
        comm_limit: int = DEFAULT_COMM_LIMIT,
        export_stats: Callable[[], Any] | None = None,
    ) -> None:
        self.backend = backend
        self.export_stats = export_stats
        self.started = time.time()
        self._lock = threading.Lock()
        self.events: dict[str, int] = {}
        self.lost: dict[str, int] = {}  # reason -> events lost (exact counts)
        self.overruns: dict[str, int] = {}  # reason -> losses of unknown size
        self.fork_failures: dict[str, int] = {}
        self.exits: dict[str, int] = {"success": 0, "failure": 0, "signal": 0}
        self.execs = TopPrograms(comm_limit)

    def observe(self, events: Iterable[Event]) -> None:
        """Count a batch of delivered events."""
        with self._lock:
            counts = self.events
            for ev in events:
                kind = ev.kind
                counts[kind.value] = counts.get(kind.value, 0) + 1
                if kind is EventKind.EXEC:
                    self.execs.add(_program(ev))
                elif kind is EventKind.EXIT:
                    if getattr(ev, "is_thread", False):
                        continue
                    if getattr(ev, "signal", None) is not None:
                        outcome = "signal"
                    else:
                        code = getattr(ev, "exit_code", None)
                        outcome = "unknown" if code is None else "success" if code == 0 else "failure"
                    self.exits[outcome] = self.exits.get(outcome, 0) + 1
                elif kind is EventKind.FORK_FAILED:
                    name = errno_name(getattr(ev, "errno", None)) or "unknown"
                    self.fork_failures[name] = self.fork_failures.get(name, 0) + 1
                elif kind is EventKind.LOST:
                    reason = getattr(ev, "reason", "") or "unknown"
                    count = getattr(ev, "count", None)
                    if count is None:
                        self.overruns[reason] = self.overruns.get(reason, 0) + 1
                        self.lost.setdefault(reason, 0)
                    else:
                        self.lost[reason] = self.lost.get(reason, 0) + count

    # -- exposition -------------------------------------------------------------------------------------------------
    def exposition(self) -> str:
        """The text exposition format (``# HELP``, ``# TYPE``, samples), one family after another."""
        with self._lock:
            events = dict(self.events)
            lost = dict(self.lost)
            overruns = dict(self.overruns)
            fork_failures = dict(self.fork_failures)
            exits = dict(self.exits)
            execs = dict(self.execs.counts)
            execs_other = self.execs.other
        backend = self.backend
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float | int]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{labels} {_number(value)}")

        family(
            "proctap_build_info",
            "gauge",
            "proctap's version, the Python running it and the backend in use (always 1).",
            [(_labels([("version", __version__), ("python", platform.python_version()), ("backend", backend)]), 1)],
        )
        family(
            "proctap_events_total",
            "counter",
            "Events delivered (after the filters), by kind.",
            [(_labels([("event", k.value), ("backend", backend)]), events.get(k.value, 0)) for k in EventKind],
        )
        family(
            "proctap_events_lost_total",
            "counter",
            "Events lost, by the mechanism that overflowed (kernel buffers, the OTLP export queue...).",
            [(_labels([("backend", backend), ("reason", r)]), n) for r, n in sorted(lost.items())],
        )
        family(
            "proctap_overruns_total",
            "counter",
            "Losses whose size the kernel did not tell (each lost an unknown number of events), by mechanism.",
            [(_labels([("backend", backend), ("reason", r)]), n) for r, n in sorted(overruns.items())],
        )
        family(
            "proctap_fork_failures_total",
            "counter",
            "Failed fork/clone/vfork/clone3 calls, by error.",
            [(_labels([("errno", e)]), n) for e, n in sorted(fork_failures.items())],
        )
        family(
            "proctap_exits_total",
            "counter",
            "Processes that ended: exit 0 (success), another exit code (failure), killed by a signal (signal), or "
            "with no status known (unknown).",
            [(_labels([("outcome", o)]), n) for o, n in exits.items()],
        )
        family(
            "proctap_execs_total",
            "counter",
            f'Execs by program (comm) for the {self.execs.limit} most frequent at most; the rest under comm="other".',
            [(_labels([("comm", OTHER)]), execs_other)]
            + [(_labels([("comm", c)]), n) for c, n in sorted(execs.items())],
        )
        if self.export_stats is not None:
            self._export_families(family, self.export_stats())
        self._process_families(family)
        return "\n".join(out) + "\n"

    @staticmethod
    def _export_families(family: Callable[..., None], stats: Any) -> None:
        family("proctap_export_queue_length", "gauge", "Events waiting in the OTLP export queue.", [("", stats.queued)])
        family("proctap_export_queue_capacity", "gauge", "The OTLP export queue's bound.", [("", stats.capacity)])
        family(
            "proctap_export_queue_high_water", "gauge", "The most events the OTLP export queue has held.",
            [("", stats.high_water)],
        )  # fmt: skip
        family("proctap_export_sent_total", "counter", "Events the OTLP receiver accepted.", [("", stats.sent)])
        family(
            "proctap_export_dropped_total",
            "counter",
            "Events not delivered to the OTLP receiver, by reason (queue_full, rejected, unsent_at_exit).",
            [(_labels([("reason", r)]), stats.dropped.get(r, 0)) for r in ("queue_full", "rejected", "unsent_at_exit")],
        )
        family(
            "proctap_export_requests_total",
            "counter",
            "OTLP export requests by outcome (success, retry: failed and retried, rejected: refused, not retried).",
            [(_labels([("outcome", o)]), stats.requests.get(o, 0)) for o in ("success", "retry", "rejected")],
        )
        family(
            "proctap_export_sent_bytes_total", "counter", "Bytes of OTLP requests accepted (as sent, compressed).",
            [("", stats.bytes_sent)],
        )  # fmt: skip

    def _process_families(self, family: Callable[..., None]) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        family(
            "process_cpu_seconds_total", "counter", "User and system CPU time proctap spent.",
            [("", usage.ru_utime + usage.ru_stime)],
        )  # fmt: skip
        family("process_resident_memory_bytes", "gauge", "proctap's resident memory.", [("", _rss_bytes())])
        family("process_start_time_seconds", "gauge", "When proctap started, since the epoch.", [("", self.started)])


def _program(ev: Event) -> str:
    comm = getattr(ev, "comm", None)
    if comm:
        return str(comm)
    filename = getattr(ev, "filename", None)
    if filename:
        return str(filename).rsplit("/", 1)[-1][:15]
    return "unknown"


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# -- the HTTP server ------------------------------------------------------------------------------------------------


def parse_listen_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``127.0.0.1:9464``, ``[::1]:9464``, ``:9464`` for every address) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProctapError(f"bad address {text!r}: give ADDR:PORT, e.g. 127.0.0.1:9464 or :9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a scraper's idle keep-alive cannot hold the thread
    timeout = 10  # seconds a client may take to send its request

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.server.metrics.exposition().encode("utf-8")
            self._answer(200, CONTENT_TYPE, body)
        elif path == "/":
            self._answer(200, "text/html; charset=utf-8", b'<html><body><a href="/metrics">metrics</a></body></html>\n')
        else:
            self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


class _Server(http.server.HTTPServer):
    metrics: Metrics

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        self.metrics = metrics
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves ``metrics`` at ``http://ADDR:PORT/metrics`` from one daemon thread until :meth:`close`."""

    def __init__(self, address: str | tuple[str, int], metrics: Metrics) -> None:
        host, port = parse_listen_address(address) if isinstance(address, str) else address
        try:
            self._server = _Server((host, port), metrics)
        except OSError as exc:
            raise ProctapError(f"cannot serve metrics on {host or '*'}:{port}: {exc.strerror or exc}") from None
        self._server.timeout = 1.0
        self.address = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="proctap-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = str(self.address[0]), int(self.address[1])
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
