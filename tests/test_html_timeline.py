"""The HTML timeline, opened in headless Chromium (Debian package ``chromium``).

Checks: no console errors, the page's status element (rows in the document, rows drawn), a handful of DOM nodes
whatever the number of processes (canvas + virtualised rows), and a screenshot saved in tests/artifacts/.
The 10,000-process document is synthetic: it tests rendering, not a kernel interface.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proctap.run.report import run_document
from proctap.run.session import RunOptions, run
from proctap.run.timeline import render_html

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: apt-get install chromium (listed in scripts/apt-test.txt)")
    return path


def open_page(page: Path, tmp_path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Load the page; return its status attributes, error box text, DOM element count and console messages."""
    base = [chromium(), *CHROMIUM_FLAGS, "--virtual-time-budget=10000"]
    profile = tmp_path / "profile-dom"
    dom = subprocess.run(
        [*base, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<span id="proctap-status"([^>]*)>([^<]*)<', dom.stdout)
    assert match is not None, "no status element in the rendered page"
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))
    errors = re.search(r'<div id="proctap-errors"[^>]*>(.*?)</div>\s*</header>', dom.stdout, re.S)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = subprocess.run(
            [*base, f"--user-data-dir={tmp_path / 'profile-shot'}", "--window-size=1400,800",
             f"--screenshot={screenshot}", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert screenshot.exists() and screenshot.stat().st_size > 5000
    return {
        "attrs": attrs,
        "text": match.group(2),
        "errors": "" if errors is None else errors.group(1),
        "elements": len(re.findall(r"<[a-zA-Z]", dom.stdout)),
        "console": console,
    }


def test_timeline_of_a_real_run(tmp_path: Path) -> None:
    script = "true; (exit 3); sh -c 'kill -9 $$'; for i in 1 2 3; do sleep 0.01; done; exit 0"
    result = run(RunOptions(argv=["sh", "-c", script]))
    doc = run_document(result)
    page = tmp_path / "run.html"
    page.write_text(render_html(doc))
    seen = open_page(page, tmp_path, ARTIFACTS / "run_timeline.png")
    assert seen["console"] == [], seen["console"]
    assert seen["attrs"]["errors"] == "0" and seen["errors"] == ""
    assert int(seen["attrs"]["rows"]) == len(doc["processes"]) >= 6
    assert int(seen["attrs"]["drawn"]) == len(doc["processes"])  # all fit in the window


def synthetic_document(n: int) -> dict[str, Any]:
    """A make-like tree of ``n`` processes: make -> n/5 shells -> 4 compiler steps each, mixed outcomes."""
    procs: list[dict[str, Any]] = []

    def add(parent: int | None, depth: int, argv: list[str], start: int, end: int | None, outcome: str) -> int:
        idx = len(procs)
        procs.append({
            "id": idx, "parent": parent, "depth": depth, "pid": 1000 + idx,
            "ppid": None if parent is None else 1000 + parent, "key": None, "argv": argv, "filename": None,
            "comm": argv[0][:15], "execed": True, "execs": [{"offset_ns": start, "filename": None, "argv": argv}],
            "start_offset_ns": start, "end_offset_ns": end, "duration_ns": None if end is None else end - start,
            "outcome": outcome, "exit_seen": outcome != "unknown", "status": 0,
            "exit_code": {"ok": 0, "failed": 1}.get(outcome), "signal": 9 if outcome == "signaled" else None,
            "signal_name": "SIGKILL" if outcome == "signaled" else None, "core_dumped": False,
            "outlived_root": outcome == "running", "accounting": None, "fork_failures": [], "threads": [],
        })  # fmt: skip
        return idx

    total_ns = 60_000_000_000
    root = add(None, 0, ["make", "-j2"], 0, total_ns, "ok")
    shells = (n - 1) // 5
    outcomes = ["ok"] * 17 + ["failed", "signaled", "unknown"]
    for i in range(shells):
        start = i * (total_ns // shells)
        sh = add(root, 1, ["/bin/sh", "-c", f"cc -c file{i}.c -o file{i}.o"], start, start + 25_000_000, "ok")
        for j in range(4):
            s = start + j * 5_000_000
            add(sh, 2, [f"/usr/bin/step{j}", f"file{i}.c"], s, s + 4_000_000, outcomes[(i * 4 + j) % len(outcomes)])
    while len(procs) < n:
        add(root, 1, ["daemon"], total_ns // 2, None, "running")
    return {
        "schema": "proctap-run", "schema_version": 1, "command": ["make", "-j2"], "exit_status": 0,
        "root_status": 0, "started_wall": 1.7e9, "duration_ns": total_ns, "root_end_offset_ns": total_ns,
        "backend": "synthetic", "accounting_source": None, "accounting_note": None, "accounting_overruns": 0,
        "lost": [{"offset_ns": 1_000_000, "count": 12, "reason": "synthetic", "cpu": 0}],
        "counts": {"processes": n}, "watch_stats": {}, "processes": procs,
    }  # fmt: skip


def test_ten_thousand_processes_render_fast_and_virtualised(tmp_path: Path) -> None:
    doc = synthetic_document(10_000)
    page = tmp_path / "big.html"
    page.write_text(render_html(doc))
    seen = open_page(page, tmp_path, ARTIFACTS / "timeline_10k.png")
    assert seen["console"] == [], seen["console"]
    assert seen["attrs"]["errors"] == "0"
    assert seen["attrs"]["rows"] == "10000" and seen["attrs"]["visible"] == "10000"
    drawn = int(seen["attrs"]["drawn"])
    assert 0 < drawn < 200  # only the rows in view are drawn
    assert seen["elements"] < 100  # no DOM node per process
    print(f"\n10,000-process timeline: first render {seen['attrs']['ms']} ms in headless chromium", file=sys.stderr)


def test_embedded_data_cannot_break_out_of_the_script(tmp_path: Path) -> None:
    doc = synthetic_document(6)
    doc["processes"][1]["argv"] = ["</script><script>window.onerror('injected')</script>", "<!--"]
    doc["command"] = ["</title><b>x"]
    page = tmp_path / "evil.html"
    text = render_html(doc)
    assert "</script><script>" not in text.split('id="proctap-data">', 1)[1].split("</script>", 1)[0]
    page.write_text(text)
    seen = open_page(page, tmp_path)
    assert seen["console"] == [] and seen["attrs"]["errors"] == "0"
    assert seen["attrs"]["rows"] == "6"
    embedded = json.loads(text.split('id="proctap-data">', 1)[1].split("</script>", 1)[0])
    assert embedded["processes"][1]["argv"][0].startswith("</script>")
