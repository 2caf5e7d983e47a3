"""Prometheus metrics against the real thing: Debian's ``promtool check metrics`` on what ``/metrics`` serves, and a
Prometheus server scraping ``proctap watch --metrics`` on loopback, queried through its HTTP API after a known
workload (a program with a name of its own, run a known number of times with known exit codes)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from export_receivers import ENV, WatchProcess, free_port, spawn_pid, wait_for, wait_listening
from proctap.export import Metrics, TopPrograms

BACKEND = "netlink"
CODES = [0, 0, 1, 0, 2, 0]  # the workload's exit codes: 4 successes, 2 failures


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: apt-get install prometheus (scripts/apt-test.txt; scripts/test installs it)")
    return path


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _program(tmp_path: Path) -> tuple[str, Path]:
    """A script with a name no other process has: its comm (and argv[0]) is that name."""
    name = f"pxm{uuid.uuid4().hex[:9]}"
    path = tmp_path / name
    path.write_text('#!/bin/sh\nsleep 0.2\nexit "$1"\n')
    path.chmod(0o755)
    return name, path


def test_metrics_pass_promtool_and_a_prometheus_server_scrapes_them(tmp_path: Path) -> None:
    promtool, prometheus = _need("promtool"), _need("prometheus")
    name, program = _program(tmp_path)
    port = free_port()
    watch = WatchProcess("--json", "-b", BACKEND, "--comm", name, "--metrics", f"127.0.0.1:{port}",
                         stdout=tmp_path / "out")  # fmt: skip
    server = None
    try:
        watch.wait_stderr(lambda line: f"metrics at http://127.0.0.1:{port}/metrics" in line, "the metrics note")
        for code in CODES:
            assert spawn_pid([str(program), str(code)])[1] == code
        url = f"http://127.0.0.1:{port}/metrics"
        key = 'proctap_exits_total{outcome="success"}'
        samples = wait_for(lambda: (s := _samples(_get(url)))[key] == 4 and s, "4 successful exits in /metrics")
        text = _get(url)

        # the exposition format, checked by Prometheus's own linter
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr
        assert samples['proctap_exits_total{outcome="failure"}'] == 2
        assert samples['proctap_events_total{event="exec",backend="netlink"}'] == len(CODES)
        assert samples['proctap_events_total{event="exit",backend="netlink"}'] == len(CODES)
        # labels stay bounded: a program gets its own comm label from its third exec on
        assert samples[f'proctap_execs_total{{comm="{name}"}}'] == len(CODES) - 2
        assert samples['proctap_execs_total{comm="other"}'] == 2
        build = [k for k in samples if k.startswith("proctap_build_info{")]
        assert len(build) == 1 and 'backend="netlink"' in build[0] and samples[build[0]] == 1
        assert "# TYPE proctap_events_total counter" in text

        # a Prometheus server scraping proctap, queried through its HTTP API
        web = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            f"scrape_configs:\n  - job_name: proctap\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
        server = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path,
        )  # fmt: skip
        wait_listening(web, "prometheus")

        def query(expr: str) -> float | None:
            q = urllib.parse.urlencode({"query": expr})
            try:
                answer = json.loads(_get(f"http://127.0.0.1:{web}/api/v1/query?{q}"))
            except OSError:
                return None
            result = answer["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        wait_for(lambda: query('proctap_events_total{event="exec"}') == len(CODES), "Prometheus to scrape the execs")
        assert query('proctap_exits_total{outcome="failure"}') == 2
        assert query('proctap_events_total{event="exit",job="proctap"}') == len(CODES)
        assert query("up{job='proctap'}") == 1
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        code, _, err = watch.stop(signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err


def test_top_programs_keep_labels_bounded_and_counters_monotonic() -> None:
    top = TopPrograms(limit=2, promote_after=2, candidates=3)
    for name in ["a", "a", "a", "b", "c", "c", "d", "e", "f", "g", "b", "b", "c"]:
        top.add(name)
    assert set(top.counts) == {"a", "c"}  # the first two to reach 2 execs; then no more labels
    assert top.counts == {"a": 2, "c": 2}  # counted from the exec that gave them their label
    assert top.other + sum(top.counts.values()) == 13


def test_metrics_address_errors_are_one_line() -> None:
    for bad in ("9464", "127.0.0.1:", "127.0.0.1:99999", "localhost:http"):
        result = subprocess.run(
            [sys.executable, "-m", "proctap", "watch", "--metrics", bad, "-d", "1"],
            capture_output=True, text=True, env=ENV, timeout=30,
        )  # fmt: skip
        assert result.returncode == 2, (bad, result.stderr)
        assert result.stderr.startswith("proctap: error: argument --metrics: bad address"), result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_label_values_are_escaped() -> None:
    metrics = Metrics('net"link\\')
    text = metrics.exposition()
    assert 'backend="net\\"link\\\\"' in text
