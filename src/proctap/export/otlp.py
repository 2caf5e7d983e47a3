"""The OpenTelemetry (OTLP/JSON) form of proctap's data: pure functions, no I/O but reading the host's identity.

* :func:`log_record`: one event as an OTLP log record (``eventName`` ``proctap.<kind>``, ``timeUnixNano`` the
  event's wall time, severity, attributes named by the OpenTelemetry semantic conventions where one exists and
  ``proctap.*`` otherwise), built on :func:`proctap.events.event_dict` (the one JSON form of an event);
  :func:`logs_request` wraps records into an ``ExportLogsServiceRequest``.
* :func:`tree_spans`: a ``proctap run`` process tree as spans (one per process, parent span = parent process);
  :func:`traces_request` wraps them into an ``ExportTraceServiceRequest``; :func:`parse_traceparent` reads a W3C
  ``TRACEPARENT`` so the tree nests under the caller's span.

The encoding is OTLP's JSON mapping (opentelemetry-proto, ``docs/specs/otlp``): lowerCamelCase field names, 64-bit
integers as decimal strings, enums as numbers, trace and span ids as hex.  docs/export.md lists every attribute.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..events import Event, EventKind, Exit, event_dict, json_text, json_texts
from ..text import format_command, format_exit, format_lost, format_status, sanitize

if TYPE_CHECKING:
    from ..cache import Process
    from ..run.tree import ProcessNode, ProcessTree

__all__ = [
    "SCOPE",
    "SEVERITY_INFO",
    "SEVERITY_WARN",
    "any_value",
    "attributes",
    "context_pairs",
    "endpoint",
    "log_record",
    "log_record_json",
    "logs_request",
    "logs_request_json",
    "parse_traceparent",
    "resource_attributes",
    "span_name",
    "traces_request",
    "tree_spans",
]

SEVERITY_INFO = 9  # SEVERITY_NUMBER_INFO
SEVERITY_WARN = 13  # SEVERITY_NUMBER_WARN
SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2
SCOPE = {"name": "proctap", "version": __version__}

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# event_dict field -> attribute name, where the semantic conventions have one (registry: process.*, thread.*,
# error.*, cpu.*).  ``uid``/``gid`` of Fork/Exec/Existing are the *real* ids (what bpf_get_current_uid_gid and
# /proc's first Uid column give); a Uid event carries both.  Fields listed with None are not attributes (they are
# the record's own fields or the resource's).  Every other field becomes ``proctap.<field>``, so fields added to
# the events later are exported without a change here.
_SEMCONV: dict[str, str | None] = {
    "event": None,  # eventName
    "source": None,  # the resource's proctap.backend
    "wall_time": None,  # timeUnixNano
    "pid": "process.pid",
    "tid": "thread.id",
    "parent_pid": "process.parent_pid",
    "filename": "process.executable.path",
    "argv": "process.command_args",
    "argc": "process.args_count",
    "exit_code": "process.exit.code",
    "uid": "process.real_user.id",
    "ruid": "process.real_user.id",
    "euid": "process.user.id",
    "errno_name": "error.type",
    "cpu": "cpu.logical_number",
    "cwd": "process.working_directory",
    "container_id": "container.id",
}


# -- the resource ---------------------------------------------------------------------------------------------------


def _machine_id() -> str | None:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            return text
    return None


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm32", "ppc64le": "ppc64", "s390x": "s390x"}


def resource_attributes(backend: str | None = None, extra: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The resource every record is sent under: ``service.name`` proctap, ``service.version``, ``host.name``,
    ``host.id`` (/etc/machine-id), ``host.arch``, ``os.type``, ``proctap.backend``; ``extra`` adds or overrides
    (``OTEL_RESOURCE_ATTRIBUTES`` is read by the callers)."""
    attrs: dict[str, Any] = {
        "service.name": "proctap",
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "host.id": _machine_id(),
        "host.arch": _ARCH.get(platform.machine(), platform.machine()),
        "os.type": "linux",
        "proctap.backend": backend,
    }
    if extra:
        attrs.update(extra)
    return attributes(attrs.items())


def env_resource_attributes(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, values percent-decoded) and ``OTEL_SERVICE_NAME``, as the
    OpenTelemetry SDKs read them; malformed pairs are skipped."""
    from urllib.parse import unquote

    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    if env.get("OTEL_SERVICE_NAME", "").strip():
        out["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    return out


# -- values ---------------------------------------------------------------------------------------------------------


def any_value(value: Any) -> dict[str, Any]:
    """A Python value as an OTLP ``AnyValue``: str, bool, int (int64 as a decimal string; beyond int64 a string),
    float, a list or tuple (``arrayValue``), a dict (``kvlistValue``); text is made valid UTF-8."""
    tp = type(value)
    if tp is str:
        return {"stringValue": value if value.isascii() else json_text(value)}
    if tp is bool:
        return {"boolValue": value}
    if tp is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if tp is float:
        return {"doubleValue": value}
    if tp is list or tp is tuple:
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if tp is dict:
        return {"kvlistValue": {"values": attributes(value.items())}}
    if value is None:
        return {}
    return {"stringValue": json_text(str(value))}


def attributes(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    """``KeyValue`` list from (name, value) pairs, leaving out None values."""
    return [{"key": key, "value": any_value(value)} for key, value in pairs if value is not None]


def _iso8601(ns: int) -> str:
    """Epoch nanoseconds as ISO 8601 UTC with microseconds (``2026-11-29T21:28:02.244607Z``)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


class _Clock:
    """CLOCK_BOOTTIME -> epoch, for ``process.creation.time`` (``start_ns`` is nanoseconds since boot)."""

    boot_wall_ns: int | None = None

    @classmethod
    def boot_to_wall(cls, boot_ns: int) -> int:
        if cls.boot_wall_ns is None:
            cls.boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        return boot_ns + cls.boot_wall_ns


# -- log records ----------------------------------------------------------------------------------------------------
#
# The hot path (a fork storm's every event) writes the JSON text of a record directly: each attribute's key is
# encoded once ("prefix") and values go through the C string encoder, several times faster than building the nested
# dicts and encoding them.  :func:`log_record` (the dict) is parsed from the same text: one encoder.

_esc: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_PREFIXES: dict[str, str | None] = {}  # event_dict field -> '{"key":"<name>","value":' (None: not an attribute)


def _prefix(name: str) -> str | None:
    try:
        return _PREFIXES[name]
    except KeyError:
        pass
    key = _SEMCONV.get(name, "")
    prefix = None if key is None else _attr_prefix(key or f"proctap.{name}")
    _PREFIXES[name] = prefix
    return prefix


def _attr_prefix(key: str) -> str:
    return '{"key":' + _esc(key) + ',"value":'


def _json_value(value: Any) -> str:
    """A Python value as the JSON text of an OTLP ``AnyValue`` (the text of :func:`any_value`)."""
    tp = type(value)
    if tp is str:
        return '{"stringValue":' + _esc(value if value.isascii() else json_text(value)) + "}"
    if tp is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return '{"intValue":"' + str(value) + '"}'
        return '{"stringValue":"' + str(value) + '"}'
    if tp is bool:
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if tp is list or tp is tuple:
        return '{"arrayValue":{"values":[' + ",".join(map(_json_value, value)) + "]}}"
    if tp is float:
        return '{"doubleValue":' + repr(value) + "}" if math.isfinite(value) else _json_value(repr(value))
    if tp is dict:
        pairs = ",".join(_attr_prefix(k) + _json_value(v) + "}" for k, v in value.items() if v is not None)
        return '{"kvlistValue":{"values":[' + pairs + "]}}"
    if value is None:
        return "{}"
    return _json_value(str(value))


def _attributes_json(event: Event, fields: Mapping[str, Any]) -> str:
    parts: list[str] = []
    add = parts.append
    for name, value in fields.items():
        if value is None:
            continue
        prefix = _PREFIXES[name] if name in _PREFIXES else _prefix(name)
        if prefix is None:
            continue
        tp = type(value)
        if tp is int and _INT64_MIN <= value <= _INT64_MAX:  # the common cases inline: no call per attribute
            add(prefix + '{"intValue":"' + str(value) + '"}}')
            continue
        if tp is bool:
            add(prefix + ('{"boolValue":true}}' if value else '{"boolValue":false}}'))
            continue
        if tp is str and value.isascii():
            add(prefix + '{"stringValue":' + _esc(value) + "}}")
            continue
        if tp is dict:
            if name == "raw_b64":
                for field, raw in value.items():
                    add(_attr_prefix(f"proctap.raw_b64.{field}") + _json_value(raw) + "}")
                continue
            if name == "accounting":
                for field, figure in value.items():
                    if figure is not None:
                        add(_attr_prefix(f"proctap.accounting.{field}") + _json_value(figure) + "}")
                continue
        add(prefix + _json_value(value) + "}")
    start = fields.get("start_ns")
    if start is not None:
        add(_CREATION + _esc(_iso8601(_Clock.boot_to_wall(start))) + "}}")
    filename = fields.get("filename")
    if filename:
        add(_EXE_NAME + _esc(json_text(filename.rsplit("/", 1)[-1])) + "}}")
    if event.kind is EventKind.EXIT and not fields.get("is_thread"):
        add(_EXIT_TIME + _esc(_iso8601(_wall_ns(event))) + "}}")
    proc = event.process
    if proc is not None:  # the process cache's record (a watcher with context): who and where it is
        if fields.get("parent_pid") is None and proc.parent_pid is not None:
            add(_PARENT_PID + str(proc.parent_pid) + '"}}')
        if fields.get("uid") is None and fields.get("ruid") is None and proc.uid is not None:
            add(_REAL_UID + str(proc.uid) + '"}}')
        context = _context_attributes(proc)
        if context:
            add(context)
    return ",".join(parts)


_PARENT_PID = _attr_prefix("process.parent_pid") + '{"intValue":"'
_REAL_UID = _attr_prefix("process.real_user.id") + '{"intValue":"'
_CONTEXT_MEMO: dict[tuple[int, str | None], tuple[object, str]] = {}


def _context_attributes(proc: Process) -> str:
    """The attributes of a process's context (:class:`proctap.Where` and cwd), as JSON text: memoised by the
    identity of the (immutable, shared) Where record and the cwd, so a storm's records cost a lookup."""
    where = proc.where
    key = (id(where), proc.cwd)
    found = _CONTEXT_MEMO.get(key)
    if found is None:
        if len(_CONTEXT_MEMO) >= 8192:
            _CONTEXT_MEMO.clear()
        pairs = context_pairs(proc)
        text = ",".join(_attr_prefix(name) + _json_value(value) + "}" for name, value in pairs if value is not None)
        found = _CONTEXT_MEMO[key] = (where, text)  # the record stays alive while its id is in the key
    return found[1]


def context_pairs(proc: Process) -> list[tuple[str, Any]]:
    """(attribute, value) of who and where a process is (docs/export.md): ``process.working_directory``,
    ``process.linux.cgroup`` (``0::PATH``, as /proc/PID/cgroup's v2 line), ``container.id``,
    ``container.runtime.name``, ``container.name``, ``k8s.pod.uid``, ``process.vpid`` (the pid in its own pid
    namespace), and ``proctap.loginuid``, ``proctap.sessionid``, ``proctap.tty``,
    ``proctap.namespaces.<kind>`` (inode numbers), which have no semantic-convention name."""
    where = proc.where
    pairs: list[tuple[str, Any]] = [("process.working_directory", proc.cwd)]
    if where is None:
        return pairs
    container = where.container
    pairs.append(("process.linux.cgroup", None if where.cgroup is None else f"0::{where.cgroup}"))
    if container is not None:
        pairs += [
            ("container.id", container.id),
            ("container.runtime.name", container.runtime),
            ("container.name", container.name),
            ("k8s.pod.uid", container.pod_uid),
        ]
    pairs += [
        ("process.vpid", where.ns_pid),
        ("proctap.loginuid", where.loginuid),
        ("proctap.sessionid", where.sessionid),
        ("proctap.tty", where.tty),
    ]
    if where.namespaces is not None:
        pairs += [(f"proctap.namespaces.{kind}", inode) for kind, inode in where.namespaces._asdict().items()]
    return pairs


_CREATION = _attr_prefix("process.creation.time") + '{"stringValue":'
_EXE_NAME = _attr_prefix("process.executable.name") + '{"stringValue":'
_EXIT_TIME = _attr_prefix("process.exit.time") + '{"stringValue":'


def _wall_ns(event: Event) -> int:
    """The event's wall time in epoch nanoseconds (``wall_time`` is the kernel's timestamp on the wall clock;
    a float of seconds, so within a quarter of a microsecond)."""
    return round(event.wall_time * 1e9)


def severity(event: Event) -> int:
    """WARN for what went wrong (a failed fork or exec, a non-zero exit or death by signal, a loss), else INFO."""
    kind = event.kind
    if kind is EventKind.EXIT:
        ended: Exit = event  # type: ignore[assignment]
        return SEVERITY_WARN if ended.signal is not None or (ended.exit_code or 0) != 0 else SEVERITY_INFO
    if kind in (EventKind.FORK_FAILED, EventKind.LOST) or kind.value == "exec_failed":
        return SEVERITY_WARN
    return SEVERITY_INFO


def body(event: Event, fields: Mapping[str, Any]) -> str:
    """A one-line human summary (the record's body): ``exec 1234: make -j2``, ``exit 1234: exit 2``, ``fork 1234
    from 1200``, ``LOST 12 events (...)``."""
    kind = event.kind.value
    pid = event.pid
    if kind == "lost":
        return format_lost(event)  # type: ignore[arg-type]
    if kind == "exit":
        what = f"thread {event.tid} " if fields.get("is_thread") else ""
        return f"exit {pid}: {what}{format_exit(event)}"  # type: ignore[arg-type]
    if kind == "fork":
        if fields.get("is_thread"):
            return f"clone {pid}: thread {event.tid}"
        return f"fork {pid} from {fields.get('parent_pid')}"
    argv = fields.get("argv")
    if argv is not None or fields.get("filename") is not None:
        command = format_command(argv, fields.get("comm"), bool(fields.get("argv_truncated")))
        text = command or sanitize(fields.get("filename") or "")
        if fields.get("errno_name"):
            text = f"{fields['errno_name']} {text}"
        return f"{kind} {pid}: {text}"
    if fields.get("errno_name"):
        return f"{kind} {pid}: {fields['errno_name']}"
    return f"{kind} {pid}"


def log_record_json(event: Event, observed_ns: int | None = None) -> str:
    """One event as the JSON text of an OTLP ``LogRecord``: ``eventName`` ``proctap.<kind>``, ``timeUnixNano`` the
    event's wall time, ``observedTimeUnixNano`` (when given: when proctap sent it), severity, a one-line body and
    the attributes (docs/export.md)."""
    fields = event_dict(event)
    level = severity(event)
    observed = "" if observed_ns is None else f'"observedTimeUnixNano":"{observed_ns}",'
    return (
        f'{{"timeUnixNano":"{_wall_ns(event)}",{observed}"severityNumber":{level},'
        f'"severityText":"{"WARN" if level == SEVERITY_WARN else "INFO"}","eventName":"proctap.{fields["event"]}",'
        f'"body":{{"stringValue":{_esc(json_text(body(event, fields)))}}},'
        f'"attributes":[{_attributes_json(event, fields)}]}}'
    )


def log_record(event: Event, observed_ns: int | None = None) -> dict[str, Any]:
    """One event as an OTLP ``LogRecord`` dict (JSON mapping): :func:`log_record_json`, decoded."""
    return json.loads(log_record_json(event, observed_ns))  # type: ignore[no-any-return]


def logs_request(records: list[dict[str, Any]], resource: list[dict[str, Any]]) -> dict[str, Any]:
    """An ``ExportLogsServiceRequest`` of ``records`` under one resource and proctap's scope."""
    return {
        "resourceLogs": [{"resource": {"attributes": resource}, "scopeLogs": [{"scope": SCOPE, "logRecords": records}]}]
    }


def logs_request_json(records: Iterable[str], resource: list[dict[str, Any]]) -> str:
    """:func:`logs_request` as JSON text, from records' JSON text (:func:`log_record_json`)."""
    head = json.dumps({"attributes": resource}, separators=(",", ":"), ensure_ascii=True)
    scope = json.dumps(SCOPE, separators=(",", ":"))
    return (
        '{"resourceLogs":[{"resource":' + head + ',"scopeLogs":[{"scope":' + scope + ',"logRecords":['
        + ",".join(records) + "]}]}]}"
    )  # fmt: skip


# -- endpoints ------------------------------------------------------------------------------------------------------


def endpoint(url: str, signal: str) -> str:
    """The URL to POST ``signal`` (``logs``/``traces``) to: ``/v1/<signal>`` appended when ``url`` has no path (the
    OTLP/HTTP exporters' rule for a base endpoint), else ``url`` as given."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=f"/v1/{signal}"))
    return url


# -- traces: a process tree -----------------------------------------------------------------------------------------

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, parent_span_id)`` of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``); None when
    absent or malformed (version ff, all-zero ids), so a bad variable starts a new trace rather than failing."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, _flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def _new_id(nbytes: int) -> str:
    while True:
        value = os.urandom(nbytes)
        if any(value):
            return value.hex()


def span_name(node: ProcessNode) -> str:
    """The program a process ran, short: the basename of its executable, else of argv[0], else its comm."""
    if node.filename:
        return sanitize(node.filename.rsplit("/", 1)[-1])
    if node.argv:
        return sanitize(node.argv[0].rsplit("/", 1)[-1]) or "?"
    return sanitize(node.comm) if node.comm else "?"


def _node_attributes(node: ProcessNode, wall_offset_ns: int) -> list[dict[str, Any]]:
    data: dict[str, Any] = {"argv": None if node.argv is None else list(node.argv), "filename": node.filename}
    if node.comm is not None:
        data["comm"] = node.comm
    json_texts(data, ("argv", "filename", "comm"))
    pairs: list[tuple[str, Any]] = [
        ("process.pid", node.pid),
        ("process.parent_pid", node.ppid),
        ("process.command_args", data["argv"]),
        ("process.args_count", None if node.argv is None else len(node.argv)),
        ("process.executable.path", data["filename"]),
        ("process.executable.name", None if not node.filename else node.filename.rsplit("/", 1)[-1]),
        ("proctap.comm", data.get("comm")),
        ("process.exit.code", node.exit_code),
        ("proctap.signal", node.signal),
        ("proctap.signal_name", node.signal_name),
        ("proctap.core_dumped", node.core_dumped or None),
        ("proctap.outcome", node.outcome.value),
        ("proctap.exit_seen", node.exit_seen),
        ("proctap.outlived_root", node.outlived_root or None),
        ("proctap.threads", len(node.threads) or None),
        ("proctap.key", None if node.boot_start_ns is None else f"{node.pid}@{node.boot_start_ns}"),
    ]
    for name, raw in data.get("raw_b64", {}).items():
        pairs.append((f"proctap.raw_b64.{name}", raw))
    if node.start_ns is not None:
        pairs.append(("process.creation.time", _iso8601(node.start_ns + wall_offset_ns)))
    if node.ended and node.end_ns is not None:
        pairs.append(("process.exit.time", _iso8601(node.end_ns + wall_offset_ns)))
    if node.accounting is not None:
        from ..events import accounting_dict

        pairs.extend((f"proctap.accounting.{k}", v) for k, v in accounting_dict(node.accounting).items())
    return attributes(pairs)


def _node_events(node: ProcessNode, wall_offset_ns: int) -> list[dict[str, Any]]:
    events = []
    for record in node.execs:
        data = json_texts({"argv": None if record.argv is None else list(record.argv), "filename": record.filename},
                          ("argv", "filename"))  # fmt: skip
        events.append(
            {
                "timeUnixNano": str(record.timestamp_ns + wall_offset_ns),
                "name": "exec",
                "attributes": attributes(
                    [("process.executable.path", data["filename"]), ("process.command_args", data["argv"])]
                ),
            }
        )
    for failure in node.fork_failures:
        events.append(
            {
                "timeUnixNano": str(failure.timestamp_ns + wall_offset_ns),
                "name": "fork_failed",
                "attributes": attributes(
                    [
                        ("error.type", failure.errno_name),
                        ("thread.id", failure.tid),
                        ("proctap.syscall", failure.syscall),
                    ]
                ),
            }
        )
    return events


def tree_spans(
    tree: ProcessTree,
    *,
    wall_offset_ns: int,
    end_ns: int,
    trace_id: str | None = None,
    parent_span_id: str | None = None,
) -> list[dict[str, Any]]:
    """One OTLP ``Span`` per process of ``tree``, parents before children.

    Times: the tree's monotonic ns plus ``wall_offset_ns`` (epoch - monotonic); a process still running (or whose
    end is unknown) ends at ``end_ns`` (monotonic, the report's time).  The root's parent is ``parent_span_id``
    (from ``TRACEPARENT``), every other process's its parent process's span; a process whose parent's fork was
    not seen (lost events) hangs under the root.  Status ERROR for a non-zero exit or death by a signal.
    """
    trace = trace_id or _new_id(16)
    ids: dict[int, str] = {}
    root_id = _new_id(8)
    spans: list[dict[str, Any]] = []
    for node, _depth in tree.walk():
        span_id = root_id if node is tree.root else _new_id(8)
        ids[id(node)] = span_id
        if node is tree.root:
            parent = parent_span_id
        elif node.parent is not None:
            parent = ids.get(id(node.parent), root_id)
        else:
            parent = root_id
        start = node.start_ns if node.start_ns is not None else tree.root.start_ns or end_ns
        end = node.end_ns if node.ended and node.end_ns is not None else end_ns
        end = max(end, start)
        span: dict[str, Any] = {
            "traceId": trace,
            "spanId": span_id,
            "name": span_name(node),
            "kind": SPAN_KIND_INTERNAL,
            "startTimeUnixNano": str(start + wall_offset_ns),
            "endTimeUnixNano": str(end + wall_offset_ns),
            "attributes": _node_attributes(node, wall_offset_ns),
        }
        if parent:
            span["parentSpanId"] = parent
        events = _node_events(node, wall_offset_ns)
        if events:
            span["events"] = events
        if node.signal is not None or (node.exit_code or 0) != 0:
            span["status"] = {
                "code": STATUS_ERROR,
                "message": format_status(node.exit_code, node.signal, node.core_dumped),
            }
        spans.append(span)
    return spans


def traces_request(spans: Sequence[dict[str, Any]], resource: list[dict[str, Any]]) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` of ``spans`` under one resource and proctap's scope."""
    return {
        "resourceSpans": [
            {"resource": {"attributes": resource}, "scopeSpans": [{"scope": SCOPE, "spans": list(spans)}]}
        ]
    }
