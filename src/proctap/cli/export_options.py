"""``proctap watch``'s export options: ``--otlp``, ``--otlp-header``, ``--otlp-queue``, ``--metrics`` and
``--output FILE`` (reopened on SIGHUP, for logrotate).  The export package is imported only when asked for (it
pulls in urllib and http.server: ~60 ms of start-up)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

from ..errors import ProctapError
from .common import PROG, StopSignals, count_arg, stderr

if TYPE_CHECKING:
    from ..events import Event
    from ..export import ExportSink, MetricsServer, OtlpExporter
    from ..render import Renderer

__all__ = ["ReopenableOutput", "WatchExport", "add_export_arguments", "handle_hangup", "open_output"]

FLUSH_TIMEOUT_S = 5.0  # how long Ctrl-C / SIGTERM waits for the OTLP queue to drain


def _header_arg(text: str) -> tuple[str, str]:
    from ..export.exporter import parse_header

    try:
        return parse_header(text)
    except ProctapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen_arg(text: str) -> str:
    from ..export.prometheus import parse_listen_address

    try:
        parse_listen_address(text)
    except ProctapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _queue_arg(text: str) -> int:
    value = count_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 event")
    return value


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="also send every event to an OpenTelemetry collector as OTLP/HTTP JSON log records, e.g. "
        "http://localhost:4318 (/v1/logs is added when the URL has no path; docs/export.md)",
    )
    parser.add_argument(
        "--otlp-header",
        action="append",
        default=[],
        type=_header_arg,
        metavar="NAME=VALUE",
        help="a header for the OTLP requests, e.g. 'Authorization=Bearer TOKEN' (repeatable)",
    )
    parser.add_argument(
        "--otlp-queue",
        type=_queue_arg,
        default=100_000,
        metavar="EVENTS",
        help="events held while the collector is slow or down (default 100000); beyond that they are dropped and "
        "reported as a lost event",
    )
    parser.add_argument(
        "--metrics",
        type=_listen_arg,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464 (':9464': every address)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write the events to FILE (appending) instead of stdout; SIGHUP reopens it (for logrotate)",
    )


# -- --output FILE ----------------------------------------------------------------------------------------------


class ReopenableOutput(io.TextIOBase):
    """A text file opened for appending that :meth:`reopen` closes and opens again by name (after logrotate moved
    it).  It has no ``fileno`` (so the watch loop does not poll it as a pipe) and is never a terminal."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._file = self._open()

    def _open(self) -> TextIO:
        try:
            return open(self.path, "a", encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise ProctapError(f"cannot write --output {self.path}: {exc.strerror or exc}") from None

    def reopen(self) -> None:
        """Flush and close the file, then open ``path`` again (a new file if it was moved away)."""
        old = self._file
        self._file = self._open()
        try:
            old.close()
        except OSError as exc:
            stderr(f"{PROG}: warning: closing the old --output file failed: {exc.strerror or exc}")

    def write(self, text: str) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_output(path: str | None) -> TextIO | None:
    """The ``--output`` file (opened now, so a bad path fails before watching starts), or None for stdout."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise ProctapError(f"cannot write --output {path}: it is a directory")
    return cast(TextIO, ReopenableOutput(path))


def handle_hangup(stop: StopSignals, output: Any) -> bool:
    """After the watch loop stopped for a signal: True when it was SIGHUP and ``output`` (a ReopenableOutput) was
    reopened, so the loop should go on; any other signal caught meanwhile still stops it."""
    if stop.signum != signal.SIGHUP or not isinstance(output, ReopenableOutput):
        return False
    caught = b""
    try:
        while chunk := os.read(stop.fd, 512):  # the wakeup pipe: one byte per signal (its number)
            caught += chunk
    except BlockingIOError:
        pass
    others = [s for s in caught if s != signal.SIGHUP]
    if others:
        stop.signum = others[0]
        return False
    output.reopen()
    stop.signum = None
    return True


# -- --otlp / --metrics -----------------------------------------------------------------------------------------


class WatchExport:
    """The exporter, metrics and server of one ``proctap watch`` (:meth:`open` returns None when none is asked)."""

    def __init__(self, sink: ExportSink, exporter: OtlpExporter | None, server: MetricsServer | None) -> None:
        self.sink = sink
        self.exporter = exporter
        self.server = server

    @classmethod
    def open(cls, args: argparse.Namespace, backend: str) -> WatchExport | None:
        if args.otlp is None and args.metrics is None:
            if args.otlp_header:
                raise ProctapError("--otlp-header needs --otlp URL")
            return None
        from ..export import ExportSink, Metrics, MetricsServer, OtlpExporter

        exporter = None
        if args.otlp is not None:
            exporter = OtlpExporter(
                args.otlp,
                dict(args.otlp_header),
                backend=backend,
                queue_size=args.otlp_queue,
                on_problem=lambda message: stderr(f"{PROG}: otlp: {message}"),
            )
        metrics = None
        server = None
        if args.metrics is not None:
            metrics = Metrics(backend, export_stats=None if exporter is None else exporter.stats)
            try:
                server = MetricsServer(args.metrics, metrics)
            except ProctapError:
                if exporter is not None:
                    exporter.close(0)
                raise
        return cls(ExportSink(exporter, metrics), exporter, server)

    def start_note(self) -> str:
        parts = []
        if self.exporter is not None:
            parts.append(f"exporting to {self.exporter.url}")
        if self.server is not None:
            parts.append(f"metrics at {self.server.url}")
        return f"{PROG}: " + ", ".join(parts)

    def close(self, renderer: Renderer, shown: dict[str, int], *, quiet: bool) -> dict[str, object]:
        """Flush the exporter (bounded), show the Lost events of what it could not send, stop the server; returns
        the exporter's counters for ``--stats`` ({} without --otlp)."""
        lost: Sequence[Event] = self.sink.close(FLUSH_TIMEOUT_S)
        if lost:
            with contextlib.suppress(OSError, ValueError):
                renderer.render_batch([(ev, None) for ev in lost])
            for ev in lost:
                shown[ev.kind.value] = shown.get(ev.kind.value, 0) + 1
        if self.server is not None:
            self.server.close()
        if self.exporter is None:
            return {}
        stats = self.exporter.stats()
        if not quiet:
            dropped = sum(stats.dropped.values())
            detail = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in stats.dropped.items() if n)
            what = f"{stats.sent} events sent to {self.exporter.url}"
            what += f" ({stats.bytes_sent} bytes in {stats.requests.get('success', 0)} requests)"
            what += f"; LOST {dropped} ({detail})" if dropped else "; nothing lost"
            stderr(f"{PROG}: otlp: {what}")
        return {"export": stats.as_dict()}


# -- proctap run: --otlp / --trace-event ------------------------------------------------------------------------


def add_run_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="send the process tree as an OpenTelemetry trace (one span per process) to URL, e.g. "
        "http://localhost:4318 (/v1/traces is added when it has no path); $TRACEPARENT makes it a child span",
    )
    parser.add_argument(
        "--otlp-header",
        action="append",
        default=[],
        type=_header_arg,
        metavar="NAME=VALUE",
        help="a header for the OTLP request, e.g. 'Authorization=Bearer TOKEN' (repeatable)",
    )
    parser.add_argument(
        "--trace-event",
        metavar="FILE",
        help="write the tree in the Trace Event Format (JSON) for Perfetto's UI or chrome://tracing",
    )


def check_run_export(args: argparse.Namespace) -> None:
    """Before the command starts: a bad --otlp URL or a lone --otlp-header is an error (exit 2)."""
    if args.otlp is not None:
        from ..export.exporter import check_url

        check_url(args.otlp)
    elif args.otlp_header:
        raise ProctapError("--otlp-header needs --otlp URL")


def trace_event_text(result: Any) -> str:
    """The ``--trace-event`` document of a :class:`proctap.run.session.RunResult`."""
    import json

    from ..export.trace_event import trace_events

    doc = trace_events(
        result.tree,
        base_ns=result.started_ns,
        end_ns=result.finished_ns,
        command=result.command,
        backend=result.backend,
    )
    return json.dumps(doc, separators=(",", ":")) + "\n"


def export_run(args: argparse.Namespace, result: Any) -> None:
    """``--otlp``: send the tree of a RunResult as one trace; one line on stderr says where it went (or what was
    lost).  Never changes the exit status: the command has run."""
    from ..export.exporter import export_tree

    wall_offset_ns = round(result.started_wall * 1e9) - result.started_ns
    sent, unsent, trace_id = export_tree(
        args.otlp,
        result.tree,
        wall_offset_ns=wall_offset_ns,
        end_ns=result.finished_ns,
        backend=result.backend,
        headers=dict(args.otlp_header),
        traceparent=os.environ.get("TRACEPARENT"),
        timeout=FLUSH_TIMEOUT_S,
        on_problem=lambda message: stderr(f"{PROG}: otlp: {message}"),
    )
    if unsent:
        stderr(f"{PROG}: warning: otlp: trace {trace_id}: {sent} spans sent, {unsent} NOT sent to {args.otlp}")
    elif not args.quiet:
        stderr(f"{PROG}: otlp: trace {trace_id}: {sent} spans sent to {args.otlp}")
