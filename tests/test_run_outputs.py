"""``proctap run`` output files: checked before the command starts; a write that fails afterwards is one warning
line naming the file, leaves no temporary file, and the exit status stays the command's.  And the option checks that
run shares with watch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")


def proctap(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "proctap", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize("option", ["--json", "--html", "--report"])
def test_an_unwritable_output_fails_before_the_command_starts(tmp_path: Path, option: str) -> None:
    marker = tmp_path / "ran"
    result = proctap("run", option, "/nonexistent-dir/out", "--", "touch", str(marker))
    assert result.returncode == 2
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"proctap: error: cannot write {option} /nonexistent-dir/out: ")
    assert "backend" not in lines[0]


def test_a_directory_is_not_an_output_file(tmp_path: Path) -> None:
    result = proctap("run", "--json", str(tmp_path), "--", "true")
    assert result.returncode == 2
    assert "it is a directory" in result.stderr


def test_a_write_that_fails_after_the_run_keeps_the_commands_status(tmp_path: Path) -> None:
    out = tmp_path / "gone"
    out.mkdir()
    # the command removes the directory its report was to go to: the check before the start passed
    result = proctap("run", "-q", "--report", str(out / "r.txt"), "--", "sh", "-c", f"rm -r {out}; exit 3")
    assert result.returncode == 3
    warnings = [line for line in result.stderr.splitlines() if "could not write" in line]
    assert warnings == [f"proctap: warning: could not write --report {out / 'r.txt'}: No such file or directory"]
    assert list(tmp_path.iterdir()) == []  # no r.txt.tmpNNNN left


def test_run_validates_like_watch() -> None:
    negative = proctap("run", "--tree-limit", "-1", "--", "true")
    assert negative.returncode == 2 and "--tree-limit" in negative.stderr
    slow = proctap("run", "--latency", "60", "--", "true")
    assert slow.returncode == 2 and "at most 10 seconds" in slow.stderr
    for args in (("run",), ("watch",)):
        bad = proctap(*args, "--buffer", "lots", "--", "true")
        assert bad.returncode == 2 and "is not a size" in bad.stderr
