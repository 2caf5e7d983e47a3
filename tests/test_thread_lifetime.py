"""A thread's Exit carries the thread's own lifetime, not its process's age (issue 10, item 6).

The workload: a process that lives about a second, then starts one thread that ends as soon as the test saw it
(the gate lets the /proc scanner see it too), then exits.  The thread's ``lifetime_ns`` must be far below the
process's: below half of it (no timing is measured; a second against the time a watcher takes to report a thread).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import proctap
from eventlog import TIMEOUT, EventLog
from proctap.backends import BACKENDS, Feature, backend_class
from proctap.events import Exit, Fork

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root (scripts/test checks it)")

SCRIPT = """
import sys, threading, time
time.sleep(1.0)
t = threading.Thread(target=sys.stdin.readline)
t.start()
t.join()
"""


def _cases() -> list[object]:
    cases: list[object] = []
    for name in BACKENDS:
        cls = backend_class(name)
        if not {Feature.THREADS, Feature.EXIT} <= cls.features:
            continue
        availability = cls.probe()
        skip = () if availability else pytest.mark.skip(reason=f"{name} unavailable here: {availability.reason}")
        cases.append(pytest.param(name, (), id=name, marks=skip))
        if name == "tracefs":  # the path of kernels without group_dead (6.1), taken on any kernel
            cases.append(pytest.param(name, (("count_threads", "1"),), id="tracefs-count_threads", marks=skip))
    return cases


@pytest.mark.parametrize(("backend", "options"), _cases())
def test_thread_exit_has_the_threads_own_lifetime(backend: str, options: tuple[tuple[str, str], ...]) -> None:
    with proctap.watch(backend=backend, options=list(options)) as w:
        log = EventLog(w)
        p = subprocess.Popen([os.path.realpath(sys.executable), "-c", SCRIPT], stdin=subprocess.PIPE)
        assert p.stdin is not None
        try:
            log.wait_until(lambda: any(e.is_thread for e in log.about([p.pid], Fork)), "the thread's Fork", [p.pid])
            p.stdin.write(b"\n")
            p.stdin.flush()
            (process_exit,) = log.wait_exit(p.pid)
        finally:
            p.stdin.close()
            p.wait(timeout=TIMEOUT)
    (thread_exit,) = [e for e in log.about([p.pid], Exit) if e.is_thread]
    assert process_exit.lifetime_ns is not None
    if backend == "proc":  # scans do not know a thread's start: unknown, never the process's age
        assert thread_exit.lifetime_ns is None
        return
    assert thread_exit.lifetime_ns is not None, f"{backend}: a thread created while watching has a known start"
    assert 0 <= thread_exit.lifetime_ns < process_exit.lifetime_ns / 2, (
        f"{backend}: the thread lived {thread_exit.lifetime_ns / 1e6:.1f} ms by its Exit, "
        f"its process {process_exit.lifetime_ns / 1e6:.1f} ms"
    )
    assert thread_exit.start_ns == process_exit.start_ns, "start_ns stays the process's key"
