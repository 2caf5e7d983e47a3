"""Delivery that loses nothing silently, under faults: a collector down at start, a collector restarted in the
middle of a storm, a receiver answering 503 with Retry-After (and 429, a dropped connection, a refusal), a full
queue.  Every event proctap handed to the exporter is either at the receiver or counted as dropped (and reported as
a Lost event), never silently missing.

The collector is ``rotel-agent`` (tests/export_receivers.py).  It acknowledges a request before it has forwarded
it, so killing it with SIGKILL would lose what *it* had acknowledged, which no sender can see or resend: the restart
test stops it with SIGTERM (it forwards what it acknowledged, then exits), and the dropped-connection case, a
receiver dying in the middle of a request, is played by the recording server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import proctap
from eventlog import EventLog
from export_receivers import Rotel, Sink, WatchProcess, attrs, free_port, spawn_pid, wait_for
from proctap.events import Event, Lost
from proctap.export import LOST_REASONS, OtlpExporter

BACKEND = "netlink"


def _workload_events(count: int) -> list[Event]:
    """The fork, exec and exit events of ``count`` real short processes (exit codes 0..count-1)."""
    marker = f"proctap-delivery-{uuid.uuid4().hex[:12]}"
    with proctap.watch("fork,exec,exit", backend=BACKEND) as watcher:
        log = EventLog(watcher)
        pids = [spawn_pid(["/bin/sh", "-c", f"exit {i}", marker])[0] for i in range(count)]
        log.wait_exit(*pids)
        events = log.about(pids)
    return events


def _key(kind: str, pid: int, tid: int, ts: int) -> tuple[str, int, int, int]:
    return kind, pid, tid, ts


def _received(sink: Sink) -> tuple[list[tuple[str, int, int, int]], list[dict[str, Any]]]:
    """(keys of the event records, attributes of the loss markers) the sink got."""
    keys, markers = [], []
    for _, record in sink.log_records():
        a = attrs(record)
        if record.event_name == "proctap.lost":
            markers.append(a)
        else:
            keys.append(_key(record.event_name.removeprefix("proctap."), a["process.pid"], a["thread.id"],
                             a["proctap.timestamp_ns"]))  # fmt: skip
    return keys, markers


def test_collector_down_at_start_then_started(tmp_path: Path) -> None:
    sink = Sink()
    agent = Rotel(sink, port=free_port(), tmp=tmp_path)  # not started yet: nothing listens on its port
    marker = f"proctap-late-{uuid.uuid4().hex[:12]}"
    watch = WatchProcess("--json", "-b", BACKEND, "--otlp", agent.url, stdout=tmp_path / "out")
    try:
        pids = [spawn_pid(["/bin/sh", "-c", f"sleep 0.1; exit {i}", marker])[0] for i in range(5)]
        watch.wait_stderr(lambda line: "retrying" in line, "the exporter to report the collector down")
        agent.start()

        def all_exits() -> bool:
            codes = {
                attrs(r)["process.pid"]: attrs(r).get("process.exit.code")
                for _, r in sink.log_records()
                if r.event_name == "proctap.exit"
            }
            return all(codes.get(pid) == i for i, pid in enumerate(pids))

        wait_for(all_exits, "the exits of the processes run while the collector was down")
        code, _, err = watch.stop(signal.SIGTERM)
    finally:
        watch.kill()
        agent.stop()
        sink.close()
    assert code == 128 + signal.SIGTERM
    assert any(line.startswith("proctap: otlp: delivering again") for line in err), err
    summary = [line for line in err if line.startswith("proctap: otlp:") and "events sent" in line]
    assert summary and "nothing lost" in summary[-1], err


def test_collector_restarted_mid_storm_loses_nothing(tmp_path: Path) -> None:
    sink = Sink()
    agent = Rotel(sink, tmp=tmp_path).start()
    watch = WatchProcess("--json", "-b", BACKEND, "--otlp", agent.url, "--stats", stdout=tmp_path / "out")
    storm = subprocess.Popen(["/bin/sh", "-c", "i=0; while [ $i -lt 1500 ]; do /bin/true; i=$((i+1)); done"])
    try:
        wait_for(lambda: sink.ok(), "the first batch at the collector")
        agent.stop(signal.SIGTERM)  # forwards what it acknowledged, then goes away
        watch.wait_stderr(lambda line: "retrying" in line, "the exporter to notice the collector gone")
        agent.start()
        assert storm.wait(120) == 0
        code, out, err = watch.stop(signal.SIGINT)  # the flush on Ctrl-C sends the rest
    finally:
        storm.kill()
        watch.kill()
        agent.stop()
    try:
        printed = [json.loads(line) for line in out.splitlines() if line]
        keys, markers = _received(sink)
    finally:
        sink.close()
    assert code == 130
    stats = json.loads(next(line for line in reversed(err) if line.startswith("{")))
    assert stats["export"]["dropped"] == {}, stats["export"]
    assert stats["export"]["requests"].get("retry", 0) >= 1  # the restart was seen
    assert not markers
    received = set(keys)
    missing = [d for d in printed if _key(d["event"], d["pid"], d["tid"], d["timestamp_ns"]) not in received]
    assert not missing, f"{len(missing)} of {len(printed)} printed events never reached the collector: {missing[:5]}"
    assert len(printed) > 3000  # the storm's fork, exec and exit events, at least


def test_503_retry_after_429_dropped_connection_then_success(tmp_path: Path) -> None:
    events = _workload_events(5)
    sink = Sink()
    sink.script = [(503, {"Retry-After": "1"}), (0, {}), (429, {}), (200, {})]
    problems: list[str] = []
    exporter = OtlpExporter(sink.url, {"Authorization": "Bearer t0ken"}, batch_age=0.05, on_problem=problems.append)
    try:
        exporter.send_batch(events)
        wait_for(lambda: len(sink.ok()) == 1, "the batch accepted after three failures")
        stats = exporter.close(5)
    finally:
        sink.close()
    statuses = [r["status"] for r in sink.requests]
    assert statuses == [503, 0, 429, 200]
    assert sink.requests[1]["at"] - sink.requests[0]["at"] >= 1.0  # Retry-After: 1 honoured (a lower bound)
    assert all(r["headers"]["authorization"] == "Bearer t0ken" for r in sink.requests)
    assert all(r["body"] == sink.requests[0]["body"] for r in sink.requests)  # the same batch, resent
    assert stats.requests == {"retry": 3, "success": 1}
    assert stats.sent == len(events) and stats.dropped == {}
    assert exporter.take_lost() == []
    assert any("HTTP 503" in p and "retrying" in p for p in problems), problems
    keys, _ = _received(sink)
    assert keys == [_key(e.kind.value, e.pid, e.tid, e.timestamp_ns) for e in events]


def test_a_refused_batch_is_counted_and_reported() -> None:
    events = _workload_events(2)
    sink = Sink()
    sink.script = [(400, {})]  # not retryable (OTLP/HTTP): counted as refused, never silently gone
    exporter = OtlpExporter(sink.url, batch_age=0.05)
    try:
        exporter.send_batch(events)
        wait_for(lambda: exporter.stats().dropped, "the refusal to be counted")
        exporter.send_batch(events)  # the next batch carries a marker of the loss to the receiver
        stats = exporter.close(5)
    finally:
        sink.close()
    assert stats.dropped == {"rejected": len(events)}
    (lost,) = exporter.take_lost()
    assert isinstance(lost, Lost) and lost.count == len(events) and lost.reason == LOST_REASONS["rejected"]
    keys, markers = _received(sink)
    assert len(keys) == len(events)
    assert [m["proctap.count"] for m in markers] == [len(events)]
    assert markers[0]["proctap.reason"] == LOST_REASONS["rejected"]


def test_full_queue_everything_delivered_or_counted(tmp_path: Path) -> None:
    events = _workload_events(20)
    sink = Sink()
    agent = Rotel(sink, port=free_port(), tmp=tmp_path)  # down while the events come
    exporter = OtlpExporter(agent.url, queue_size=20, batch_size=5, batch_age=0.05)
    try:
        dropped = sum(exporter.send_batch(events[i : i + 7]) for i in range(0, len(events), 7))
        assert dropped > 0
        lost = exporter.take_lost()
        agent.start()
        stats = exporter.close(30)
        wait_for(lambda: len(_received(sink)[0]) + len(_received(sink)[1]) >= stats.sent, "the collector's batches")
    finally:
        agent.stop()
    keys, markers = _received(sink)
    sink.close()
    assert [(e.count, e.reason) for e in lost] == [(dropped, LOST_REASONS["queue_full"])]
    assert stats.dropped == {"queue_full": dropped}
    assert stats.accepted == len(events) - dropped
    assert stats.high_water <= 20 + 1
    assert len(keys) == len(events) - dropped  # every event that fit in the queue
    assert set(keys) <= {_key(e.kind.value, e.pid, e.tid, e.timestamp_ns) for e in events}
    assert sum(m["proctap.count"] for m in markers) == dropped  # and the collector knows how many did not


def test_watch_reports_queue_overflow_as_lost_events(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    marker = f"proctap-overflow-{uuid.uuid4().hex[:12]}"
    url = f"http://127.0.0.1:{port}"
    watch = WatchProcess(
        "--json", "-b", BACKEND, "--otlp", url, "--otlp-queue", "3", "--stats", stdout=tmp_path / "out"
    )
    try:
        for i in range(10):
            spawn_pid(["/bin/sh", "-c", f"exit {i}", marker])
        watch.wait_stderr(lambda line: "retrying" in line, "the exporter to report the collector down")
        code, out, err = watch.stop(signal.SIGINT)
    finally:
        watch.kill()
    assert code == 130
    lines = [json.loads(line) for line in out.splitlines() if line]
    lost = [d for d in lines if d["event"] == "lost"]
    full = sum(d["count"] for d in lost if d["reason"] == LOST_REASONS["queue_full"])
    unsent = sum(d["count"] for d in lost if d["reason"] == LOST_REASONS["unsent_at_exit"])
    shown = [d for d in lines if d["event"] != "lost" or d["reason"] not in LOST_REASONS.values()]
    assert full > 0 and unsent > 0
    # every event shown went to the exporter: each one is dropped for a full queue or queued, and then unsent at
    # exit (nothing listens), with the markers of the losses queued for the receiver
    stats = json.loads(next(line for line in reversed(err) if line.startswith("{")))["export"]
    assert stats["accepted"] + full == len(shown)
    assert stats["dropped"] == {"queue_full": full, "unsent_at_exit": unsent}
    assert unsent == stats["accepted"] + stats["markers"]
    summary = next(line for line in err if line.startswith("proctap: otlp:") and "events sent" in line)
    assert "LOST" in summary and "queue full" in summary and "unsent at exit" in summary
