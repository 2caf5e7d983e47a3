"""Running as a service: ``--output FILE`` reopened on SIGHUP (logrotate moves the file, ``systemctl reload``
sends SIGHUP, nothing is lost or written to the moved file afterwards), and contrib/proctap.service (its
``ExecStart`` is a command line proctap accepts; ``systemd-analyze verify`` accepts the unit where it exists)."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from export_receivers import WatchProcess, spawn_pid, wait_for
from proctap.cli.main import build_parser

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "proctap.service"


def _program(tmp_path: Path) -> tuple[str, Path]:
    name = f"pxo{uuid.uuid4().hex[:9]}"
    path = tmp_path / name
    path.write_text('#!/bin/sh\nsleep 0.1\nexit "$1"\n')
    path.chmod(0o755)
    return name, path


def _execs(path: Path, kind: str = "exec") -> list[int]:
    if not path.exists():
        return []
    return [d["pid"] for d in map(json.loads, path.read_text().splitlines()) if d["event"] == kind]


def test_output_file_is_reopened_on_sighup(tmp_path: Path) -> None:
    name, program = _program(tmp_path)
    log = tmp_path / "events.ndjson"
    rotated = tmp_path / "events.ndjson.1"
    watch = WatchProcess("--json", "-b", "netlink", "--comm", name, "--output", str(log), stdout=tmp_path / "out")
    try:
        before = [spawn_pid([str(program), "0"])[0] for _ in range(2)]
        wait_for(lambda: _execs(log, "exit") == before, "the first exits in the file")
        log.rename(rotated)  # what logrotate does ...
        watch.proc.send_signal(signal.SIGHUP)  # ... then 'systemctl reload proctap'
        wait_for(log.exists, "the file to be reopened")
        after = [spawn_pid([str(program), "1"])[0] for _ in range(2)]
        wait_for(lambda: _execs(log, "exit") == after, "the later exits in the new file")
        code, stdout, err = watch.stop(signal.SIGINT)
    finally:
        watch.kill()
    assert code == 130, err  # SIGHUP did not stop it; SIGINT did
    assert stdout == ""  # nothing on stdout with --output
    assert _execs(rotated) == _execs(rotated, "exit") == before
    assert _execs(log) == after
    exits = [d for d in map(json.loads, log.read_text().splitlines()) if d["event"] == "exit"]
    assert [(d["pid"], d["exit_code"]) for d in exits] == [(pid, 1) for pid in after]


def test_sighup_without_output_still_stops(tmp_path: Path) -> None:
    watch = WatchProcess("--json", "-b", "netlink", "--comm", "nothing-runs-this", stdout=tmp_path / "out")
    try:
        code, _, _ = watch.stop(signal.SIGHUP)
    finally:
        watch.kill()
    assert code == 128 + signal.SIGHUP


def test_output_to_a_directory_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proctap", "watch", "--output", str(tmp_path), "-d", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"proctap: error: cannot write --output {tmp_path}: it is a directory\n"


def test_the_service_unit_runs_a_command_proctap_accepts(tmp_path: Path) -> None:
    text = UNIT.read_text()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in text.splitlines()
               if line.startswith("Environment="))  # fmt: skip
    (exec_start,) = [line.removeprefix("ExecStart=") for line in text.splitlines() if line.startswith("ExecStart=")]
    for key, value in env.items():
        exec_start = exec_start.replace("${" + key + "}", value)
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/proctap" and argv[1] == "watch"
    args = build_parser().parse_args(argv[1:])
    assert args.otlp == "http://localhost:4318" and args.metrics == "127.0.0.1:9464"
    assert args.output == "/var/log/proctap/events.ndjson" and args.json and args.quiet
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text  # reload = reopen the output

    analyze = shutil.which("systemd-analyze")
    proctap = Path(sys.executable).parent / "proctap"
    if analyze is None or not proctap.exists():
        pytest.skip("systemd-analyze (or the proctap script) is not here")
    unit = tmp_path / "proctap.service"
    unit.write_text(text.replace("/usr/local/bin/proctap", str(proctap)))
    check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
