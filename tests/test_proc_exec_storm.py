"""The proc backend's promise holds for exec storms too (issue 10, item 8): every process created while it watches
has its Fork, its first Exec and its Exit reported, or is counted in a Lost event (docs/proc-backend.md).

A shell runs 2000 short-lived programs one after the other while the backend scans at its default interval; most
of them live and die between two scans.  For each kind, what was reported about the shell's children plus what was
counted lost must cover the 2000 tasks.  The storm and the backend run in a PID namespace of their own with its own
/proc (``unshare --pid --fork --mount-proc``): the pid cursor the backend counts with then only moves for the
storm, so the counts are exact rather than inflated by whatever else the machine runs, and an over-count shows too.
The second workload exec's a program with the shell's own name, so a changed name cannot give the exec away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventlog import TIMEOUT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a PID namespace of its own")

N = 2000
WORKLOADS = {"true": "/bin/true", "same-name": "/bin/sh -c :"}
SRC = Path(__file__).resolve().parent.parent / "src"

# Runs as pid 1 of the new namespace: the backend, the storm, and the counts as JSON on stdout.
STORM = """
import json, select, subprocess, sys
from proctap.backends.base import BackendConfig
from proctap.backends.proc import EXEC_UNKNOWN_REASON, ProcScanBackend
from proctap.events import Exec, Exit, Fork, Lost

n, command = int(sys.argv[1]), sys.argv[2]
events = []

def drain(backend, wait):
    select.select([backend], [], [], wait)
    events.extend(backend.read_events())

with ProcScanBackend(BackendConfig()) as backend:
    script = f"read _; i=0; while [ $i -lt {n} ]; do {command}; i=$((i+1)); done"
    shell = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE)
    for _ in range(2):  # a scan knows the shell before the storm
        drain(backend, 1.0)
    shell.stdin.write(b"\\n")
    shell.stdin.close()
    while shell.poll() is None:
        drain(backend, 0.2)
    for _ in range(3):  # a Lost count comes one scan late
        drain(backend, 1.0)
    stats = backend.stats()
children = {e.pid for e in events if isinstance(e, Fork) and not e.is_thread and e.parent_pid == shell.pid}
json.dump({
    "status": shell.returncode,
    "loss_counting": stats["loss_counting"],
    "fork": len(children),
    "exec": len({e.pid for e in events if isinstance(e, Exec) and e.pid in children}),
    "exit": len({e.pid for e in events if isinstance(e, Exit) and not e.is_thread and e.pid in children}),
    "lost": sum(e.count or 0 for e in events if isinstance(e, Lost)),
    "exec_unknown": sum(e.count or 0 for e in events if isinstance(e, Lost) and e.reason == EXEC_UNKNOWN_REASON),
}, sys.stdout)
"""


@pytest.mark.parametrize("workload", list(WORKLOADS), ids=list(WORKLOADS))
def test_exec_storm_is_seen_or_counted(workload: str) -> None:
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", STORM, str(N), WORKLOADS[workload]]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == 0 and out["loss_counting"] == 1, out
    lost = out["lost"]
    seen = {kind: out[kind] for kind in ("fork", "exec", "exit")}
    assert seen["fork"] < N, f"the storm was supposed to outrun the scans: {out}"
    short = {kind: N - count for kind, count in seen.items() if count + lost < N}
    assert not short, f"{workload}: seen {seen} + lost {lost} < {N} tasks; uncovered: {short} ({out})"
    assert seen["exec"] <= seen["fork"] == seen["exit"], out
    # Only the storm allocates pids in this namespace: the count covers its tasks, not much more (the few extra:
    # the shell and a scan's own helpers, if any).  Tasks counted twice would show here.
    assert lost <= N - seen["fork"] + out["exec_unknown"] + 5, out
    assert out["exec_unknown"] <= seen["fork"] - seen["exec"], out
