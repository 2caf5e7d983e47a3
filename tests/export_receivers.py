"""Real receivers for the export tests (tests/test_export_*.py).

* :class:`Rotel`: the ``rotel-agent`` OpenTelemetry collector from PyPI (``rotel``), receiving OTLP/HTTP from
  proctap and forwarding what it decoded, as OTLP/HTTP protobuf, to a :class:`Sink`, where the official
  ``opentelemetry-proto`` classes decode it: the tests read what a real collector made of proctap's requests.
* :class:`Sink`: a small standard-library HTTP server that records every request (gunzipped).  It is also the
  receiver of the one fault a collector cannot be made to show on demand: answering 503 with ``Retry-After``.
* :func:`parse_otlp_json`: proctap's JSON through protobuf's strict ``json_format.Parse`` (unknown fields and bad
  types fail), after the one deviation OTLP/JSON makes from the proto3 JSON mapping (ids in hex, not base64).
* :class:`WatchProcess`: ``proctap watch`` as a subprocess, started when it says it is watching.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import proctap
from eventlog import TIMEOUT

SRC = Path(proctap.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(SRC)}
for _name in ("PROCTAP_DEBUG", "TRACEPARENT", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"):
    ENV.pop(_name, None)
for _name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    ENV.pop(_name, None)  # loopback receivers: never through a proxy


def _proto() -> Any:
    try:
        from google.protobuf import json_format
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError:
        pytest.fail("the export tests need opentelemetry-proto: pip install -e '.[test]' (scripts/test does)")
    return json_format, logs_service_pb2, trace_service_pb2


def rotel_agent() -> Path:
    try:
        import rotel
    except ImportError:
        pytest.fail("the export tests need rotel (a real OTLP collector): pip install -e '.[test]' (scripts/test does)")
    path = Path(rotel.__file__).resolve().parent / "rotel-agent"
    if not path.is_file():
        pytest.fail(f"rotel is installed but has no agent at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``predicate`` until it returns something true (returned); AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def wait_listening(port: int, what: str) -> None:
    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, f"{what} to listen on port {port}")


# -- the OTLP schema --------------------------------------------------------------------------------------------------

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _ids_to_base64(obj: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex; the proto3 JSON mapping expects base64 for bytes fields."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in _ID_FIELDS and isinstance(value, str) and value:
                out[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            else:
                out[key] = _ids_to_base64(value)
        return out
    if isinstance(obj, list):
        return [_ids_to_base64(v) for v in obj]
    return obj


def parse_otlp_json(signal_name: str, document: dict[str, Any] | bytes | str) -> Any:
    """An OTLP/JSON export request parsed strictly into the official protobuf class (``logs`` or ``traces``)."""
    json_format, logs_pb2, trace_pb2 = _proto()
    if isinstance(document, bytes | str):
        document = json.loads(document)
    message = logs_pb2.ExportLogsServiceRequest() if signal_name == "logs" else trace_pb2.ExportTraceServiceRequest()
    return json_format.Parse(json.dumps(_ids_to_base64(document)), message, ignore_unknown_fields=False)


def any_value(value: Any) -> Any:
    """A protobuf AnyValue as Python (arrays as lists, kvlists as dicts)."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which is None:
        return None
    return getattr(value, which)


def attrs(message: Any) -> dict[str, Any]:
    """The ``attributes`` of a protobuf message (record, span, resource) as a dict."""
    return {kv.key: any_value(kv.value) for kv in message.attributes}


# -- a recording HTTP server ------------------------------------------------------------------------------------------


class Sink:
    """Records every POST (path, headers, gunzipped body, arrival time) and answers 200, or what ``script`` says for
    the next requests: a list of (status, headers) consumed one per request (status 0: close the connection without
    an answer)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                with sink.lock:
                    status, extra = sink.script.pop(0) if sink.script else (200, {})
                    sink.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "status": status,
                            "at": time.monotonic(),
                        }
                    )
                if status == 0:  # the connection drops without an answer (a receiver dying mid-request)
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                answer = b"" if self.headers.get("Content-Type") == "application/x-protobuf" else b"{}"
                self.send_header("Content-Type", self.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ok(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["status"] == 200]

    # what the requests held (protobuf, as a collector forwards it; or proctap's JSON)
    def log_records(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, LogRecord) for every record received with status 200."""
        _, logs_pb2, _ = _proto()
        out = []
        for request in self.ok():
            if not request["path"].endswith("/v1/logs"):
                continue
            message = self._decode(request, "logs", logs_pb2.ExportLogsServiceRequest)
            for resource_logs in message.resource_logs:
                resource = attrs(resource_logs.resource)
                for scope_logs in resource_logs.scope_logs:
                    out.extend((resource, record) for record in scope_logs.log_records)
        return out

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        _, _, trace_pb2 = _proto()
        out = []
        for request in self.ok():
            if not request["path"].endswith("/v1/traces"):
                continue
            message = self._decode(request, "traces", trace_pb2.ExportTraceServiceRequest)
            for resource_spans in message.resource_spans:
                resource = attrs(resource_spans.resource)
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out

    @staticmethod
    def _decode(request: dict[str, Any], signal_name: str, cls: Any) -> Any:
        if request["headers"].get("content-type") == "application/x-protobuf":
            return cls.FromString(request["body"])
        return parse_otlp_json(signal_name, request["body"])


# -- rotel ------------------------------------------------------------------------------------------------------------


class Rotel:
    """``rotel-agent`` receiving OTLP/HTTP on ``port`` and forwarding everything to ``sink`` (OTLP/HTTP protobuf)."""

    def __init__(self, sink: Sink, port: int | None = None, tmp: Path | None = None) -> None:
        self.sink = sink
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Rotel:
        grpc = free_port()
        pid_file = str((self.tmp or Path("/tmp")) / f"rotel-{self.port}.pid")
        argv = [
            str(rotel_agent()), "start",
            "--otlp-http-endpoint", f"127.0.0.1:{self.port}",
            "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}",
            "--pid-file", pid_file,
            "--exporter", "otlp",
            "--otlp-exporter-endpoint", self.sink.url,
            "--otlp-exporter-protocol", "http",
            "--batch-timeout", "100ms",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, "rotel-agent")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def rotel_pipeline(tmp: Path) -> Iterator[tuple[Rotel, Sink]]:
    """A running rotel-agent and the sink it forwards to."""
    sink = Sink()
    agent = Rotel(sink, tmp=tmp)
    try:
        agent.start()
        yield agent, sink
    finally:
        agent.stop()
        sink.close()


# -- proctap watch as a subprocess ------------------------------------------------------------------------------------


def proctap_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "proctap", *args]


class WatchProcess:
    """``proctap watch ARGS`` running, past its start line (``proctap: watching ...``) and the export note."""

    def __init__(self, *args: str, stdout: Path) -> None:
        self.stdout = stdout
        with open(stdout, "wb") as out:  # a file, not a pipe: the test reads it at the end, proctap never blocks
            self.proc = subprocess.Popen(proctap_cmd("watch", *args), stdout=out, stderr=subprocess.PIPE, env=ENV)
        assert self.proc.stderr is not None
        self.err_lines: list[str] = []
        self._err = b""
        deadline = time.monotonic() + TIMEOUT
        while not any(line.startswith("proctap: watching") for line in self.err_lines):
            if not self._read_err(deadline):
                self.proc.kill()
                _, err = self.proc.communicate()
                raise AssertionError(f"proctap watch did not start: {self.err_lines} {err!r}")

    def _read_err(self, deadline: float) -> bool:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._err += chunk
        *lines, self._err = self._err.split(b"\n")
        self.err_lines.extend(line.decode("utf-8", "replace") for line in lines)
        return True

    def wait_stderr(self, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for line in self.err_lines:
                if predicate(line):
                    return line
            if not self._read_err(deadline):
                raise AssertionError(f"timed out waiting for {what} on stderr; saw {self.err_lines}")

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str, list[str]]:
        """Send ``sig``, wait for the end: (exit status, stdout, every stderr line)."""
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"proctap watch did not stop on signal {sig}") from None
        rest = (self._err + err).decode("utf-8", "replace").splitlines()
        out = self.stdout.read_text("utf-8", "replace")
        return self.proc.returncode, out, self.err_lines + rest

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def spawn(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run a workload process to its end (its pid is ``result.args``'s Popen pid: use :func:`spawn_pid`)."""
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def spawn_pid(argv: list[str]) -> tuple[int, int]:
    """Run a workload process to its end: (pid, exit status)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc.pid, proc.wait()
