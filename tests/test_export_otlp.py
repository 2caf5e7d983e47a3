"""OTLP export against the official schema and a real collector.

What proctap sends is parsed strictly by the ``opentelemetry-proto`` classes (protobuf's ``json_format``), and sent
through ``rotel-agent`` (a real OpenTelemetry collector from PyPI), which forwards what it decoded to a recording
server: the assertions are on the collector's view of real processes spawned by the test (argv, exit codes, the
span tree of ``proctap run``).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

import proctap
from eventlog import EventLog
from export_receivers import (
    ENV,
    Sink,
    WatchProcess,
    attrs,
    parse_otlp_json,
    proctap_cmd,
    rotel_pipeline,
    spawn_pid,
    wait_for,
)
from proctap.events import Exec, Exit
from proctap.export import otlp

BACKEND = "netlink"  # dependable here; the backends have their own conformance tests


def _marker() -> str:
    return f"proctap-otlp-{uuid.uuid4().hex[:12]}"


def test_log_records_of_real_events_parse_with_the_official_schema() -> None:
    marker = _marker()
    odd = b"caf\xc3\xa9-\xff\xfe"  # an argument that is not UTF-8
    with proctap.watch("fork,exec,exit", backend=BACKEND) as watcher:
        log = EventLog(watcher)
        # started, not waited for: the watcher reads argv from /proc while they live
        proc = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3; exit 7", marker])
        odd_proc = subprocess.Popen([b"/bin/sh", b"-c", b"sleep 0.3; exit 0", odd])
        pid, odd_pid = proc.pid, odd_proc.pid
        log.wait_exit(pid, odd_pid)
        log.wait_exec(pid)
    assert proc.wait() == 7 and odd_proc.wait() == 0
    events = [e for e in log.about([pid, odd_pid]) if isinstance(e, Exec | Exit) or e.kind.value == "fork"]
    resource = otlp.resource_attributes(BACKEND)
    request = otlp.logs_request([otlp.log_record(e) for e in events], resource)
    text = json.dumps(request)
    text.encode("utf-8")  # valid UTF-8 whatever the argv held
    message = parse_otlp_json("logs", text)

    (resource_logs,) = message.resource_logs
    res = attrs(resource_logs.resource)
    assert res["service.name"] == "proctap"
    assert res["proctap.backend"] == BACKEND
    assert res["host.name"] == os.uname().nodename
    with open("/etc/machine-id") as f:
        assert res["host.id"] == f.read().strip()
    assert resource_logs.scope_logs[0].scope.name == "proctap"
    records = list(resource_logs.scope_logs[0].log_records)
    assert len(records) == len(events)
    for event, record in zip(events, records, strict=True):
        assert record.event_name == f"proctap.{event.kind.value}"
        assert record.time_unix_nano == round(event.wall_time * 1e9)  # when it happened, not when it was sent
        a = attrs(record)
        assert a["process.pid"] == event.pid
        assert a["thread.id"] == event.tid
        assert a["proctap.timestamp_ns"] == event.timestamp_ns
    by_kind = {(r.event_name, attrs(r)["process.pid"]): r for r in records}
    exec_record = by_kind[("proctap.exec", pid)]
    a = attrs(exec_record)
    assert a["process.command_args"] == ["/bin/sh", "-c", "sleep 0.3; exit 7", marker]
    assert a["process.args_count"] == 4
    assert a["process.executable.path"] in ("/bin/sh", "/usr/bin/sh", "/bin/dash", "/usr/bin/dash")
    assert a["process.executable.name"] == a["process.executable.path"].rsplit("/", 1)[1]
    assert exec_record.severity_number == otlp.SEVERITY_INFO
    assert marker in exec_record.body.string_value
    exit_record = by_kind[("proctap.exit", pid)]
    assert attrs(exit_record)["process.exit.code"] == 7
    assert exit_record.severity_number == otlp.SEVERITY_WARN  # a non-zero exit
    assert attrs(by_kind[("proctap.exit", odd_pid)])["process.exit.code"] == 0
    assert by_kind[("proctap.exit", odd_pid)].severity_number == otlp.SEVERITY_INFO
    odd_attrs = attrs(by_kind[("proctap.exec", odd_pid)])
    assert odd_attrs["process.command_args"][3] == "café-\ufffd\ufffd"  # valid UTF-8 in the record
    import base64

    raw = odd_attrs["proctap.raw_b64.argv"]
    assert base64.b64decode(raw[3]) == odd  # and the exact bytes beside it
    fork = by_kind[("proctap.fork", pid)]
    assert attrs(fork)["process.parent_pid"] == os.getpid()
    assert attrs(fork)["process.creation.time"].endswith("Z")


def test_endpoint_and_traceparent_rules() -> None:
    assert otlp.endpoint("http://collector:4318", "logs") == "http://collector:4318/v1/logs"
    assert otlp.endpoint("http://collector:4318/", "traces") == "http://collector:4318/v1/traces"
    assert otlp.endpoint("https://gw.example/otlp/v1/logs", "logs") == "https://gw.example/otlp/v1/logs"
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert otlp.parse_traceparent(good) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert otlp.parse_traceparent(good.upper()) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    for bad in ("", "garbage", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01", good[:-1]):  # fmt: skip
        assert otlp.parse_traceparent(bad) is None


def test_watch_otlp_through_a_real_collector(tmp_path: Path) -> None:
    marker = _marker()
    with rotel_pipeline(tmp_path) as (agent, sink):
        watch = WatchProcess(
            "--json", "-b", BACKEND, "--otlp", agent.url, "--otlp-header", "X-Proctap-Test=1", stdout=tmp_path / "out"
        )
        try:
            watch.wait_stderr(lambda line: f"exporting to {agent.url}/v1/logs" in line, "the export note")
            pid, status = spawn_pid(["/bin/sh", "-c", "sleep 0.3; exit 3", marker])

            def ours() -> dict[str, Any] | None:
                found = {}
                for resource, record in sink.log_records():
                    a = attrs(record)
                    if a.get("process.pid") == pid:
                        found[record.event_name] = (resource, record, a)
                return found if {"proctap.exec", "proctap.exit"} <= found.keys() else None

            found = wait_for(ours, f"the collector to forward the exec and exit of {pid}")
        finally:
            code, out, err = watch.stop()
    assert code == 128 + 2  # SIGINT
    resource, exec_record, a = found["proctap.exec"]
    assert a["process.command_args"] == ["/bin/sh", "-c", "sleep 0.3; exit 3", marker]
    assert resource["service.name"] == "proctap" and resource["proctap.backend"] == BACKEND
    _, exit_record, e = found["proctap.exit"]
    assert e["process.exit.code"] == status == 3
    assert exit_record.severity_text == "WARN"
    assert exit_record.observed_time_unix_nano >= exit_record.time_unix_nano
    summary = [line for line in err if line.startswith("proctap: otlp:")]
    assert summary and "nothing lost" in summary[-1], err
    # what proctap printed is what it sent: the exec line of the NDJSON carries the same time and argv
    lines = [json.loads(line) for line in out.splitlines() if line]
    (printed,) = [d for d in lines if d["event"] == "exec" and d["pid"] == pid]
    assert round(printed["wall_time"] * 1e9) == exec_record.time_unix_nano


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        proctap_cmd("run", *args), capture_output=True, text=True, env=env or ENV, timeout=60, cwd=tmp_path
    )


SCRIPT = "sh -c 'exit 0'; (exit 3); sh -c 'kill -9 $$'; exit 5"


def test_run_otlp_sends_the_process_tree_as_a_trace(tmp_path: Path) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trace_file = tmp_path / "trace.json"
    with rotel_pipeline(tmp_path) as (agent, sink):
        result = _run(
            tmp_path, "--otlp", agent.url, "--trace-event", str(trace_file), "--json", str(tmp_path / "run.json"),
            "--", "sh", "-c", SCRIPT, env={**ENV, "TRACEPARENT": traceparent},
        )  # fmt: skip
        assert result.returncode == 5, result.stderr
        doc = json.loads((tmp_path / "run.json").read_text())
        count = len(doc["processes"])
        spans = wait_for(lambda: len(sink.spans()) >= count and sink.spans(), f"{count} spans at the collector")
    assert f"{count} spans sent" in result.stderr
    by_id = {span.span_id.hex(): (resource, span) for resource, span in spans}
    assert len(by_id) == count
    roots = [s for _, s in spans if s.parent_span_id.hex() == "00f067aa0ba902b7"]
    assert len(roots) == 1  # the command nests under the caller's span
    root = roots[0]
    assert all(s.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" for _, s in spans)
    assert root.name == "sh" and attrs(root)["process.exit.code"] == 5
    assert root.status.code == 2 and root.status.message == "exit 5"  # STATUS_CODE_ERROR
    # every span's parent is its parent process's span, as in proctap's own tree
    pid_of_span = {sid: attrs(span)["process.pid"] for sid, (_, span) in by_id.items()}
    for process in doc["processes"]:
        if process["parent"] is None:
            continue
        (span,) = [s for _, s in spans if attrs(s)["process.pid"] == process["pid"]]
        parent = doc["processes"][process["parent"]]
        assert pid_of_span[span.parent_span_id.hex()] == parent["pid"]
        assert span.start_time_unix_nano <= span.end_time_unix_nano
    statuses = {
        (attrs(s).get("process.exit.code"), attrs(s).get("proctap.signal_name"), s.status.code) for _, s in spans
    }
    assert (0, None, 0) in statuses  # sh -c 'exit 0': status unset
    assert (None, "SIGKILL", 2) in statuses  # killed: an error
    resource = spans[0][0]
    assert resource["service.name"] == "proctap"

    # the same tree in the Trace Event Format: one complete event per process, on its own pid lane
    trace = json.loads(trace_file.read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "process"]
    assert sorted(e["pid"] for e in complete) == sorted(p["pid"] for p in doc["processes"])
    for e in complete:
        assert e["tid"] == e["pid"] and e["ts"] >= 0 and e["dur"] >= 0
    (root_event,) = [e for e in complete if e["pid"] == doc["processes"][0]["pid"]]
    assert root_event["args"]["exit_code"] == 5 and root_event["args"]["argv"] == ["sh", "-c", SCRIPT]
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert all(f"[{pid}]" in name for pid, name in names.items())
    flows = [e for e in trace["traceEvents"] if e["ph"] in ("s", "f")]
    assert len(flows) == 2 * (count - 1)  # a fork arrow to every process but the command


def test_run_otlp_json_is_valid_otlp_and_a_bad_url_fails_first(tmp_path: Path) -> None:
    sink = Sink()  # records proctap's own request, to parse exactly what went on the wire
    try:
        result = _run(tmp_path, "-q", "--otlp", sink.url, "--", "sh", "-c", "sh -c 'exit 2'; exit 0")
        assert result.returncode == 0, result.stderr
        (request,) = sink.ok()
    finally:
        sink.close()
    assert request["path"] == "/v1/traces"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["content-encoding"] == "gzip"
    message = parse_otlp_json("traces", request["body"])
    spans = message.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 2 and len({s.trace_id for s in spans}) == 1
    child = next(s for s in spans if s.parent_span_id)
    assert attrs(child)["process.exit.code"] == 2

    bad = _run(tmp_path, "--otlp", "collector:4318", "--", "true")
    assert bad.returncode == 2 and bad.stderr.startswith("proctap: error: bad OTLP URL"), bad.stderr
    lone = _run(tmp_path, "--otlp-header", "A=b", "--", "true")
    assert lone.returncode == 2 and "--otlp-header needs --otlp" in lone.stderr


@pytest.mark.parametrize("header", ["novalue", "=x", "a b=c"])
def test_bad_otlp_header_is_one_line(header: str) -> None:
    result = subprocess.run(
        proctap_cmd("watch", "--otlp", "http://127.0.0.1:9", "--otlp-header", header),
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("proctap: error:") and "bad OTLP header" in result.stderr
    assert len(result.stderr.splitlines()) == 1
