"""The pytest plugin (src/proctap/pytest_plugin.py), through ``pytester``: small test files that start real processes
(``sh -c 'exit 3'``, a leaked ``sleep 30 &``, a double-forked daemon, 1,000 ``/bin/true``, wider-scoped fixtures
with and without a leak) run in a pytest subprocess, as root and as an unprivileged user (``setpriv``: the netlink
backend), with and without pytest-xdist.  The inner tests assert on the ``processes`` fixture themselves; the outer
ones check the outcomes, the leak errors and warnings, the JSON / HTML report and the summary.

Every process the inner runs leave behind carries a token in its environment: the ``reaper`` fixture kills them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

TOKEN_VAR = "PROCTAP_PLUGIN_TEST_TOKEN"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

SCENARIOS = r'''
import os, subprocess

import pytest

STORM = "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done"


def test_exit3(processes):
    subprocess.run(["sh", "-c", "exit 3"])
    failed = processes.failed()
    assert [p.exit_code for p in failed] == [3]
    (sh,) = failed
    assert sh.argv == ("sh", "-c", "exit 3") and sh.name == "sh" and sh.returncode == 3
    assert sh.parent is None and sh.ppid == os.getpid() and sh.duration > 0
    assert processes.all() == failed and processes.execs("sh") == failed and processes.execs("true") == []
    assert not processes.running() and not processes.leaked()


def test_background_leak(processes):
    subprocess.run(["sh", "-c", "sleep 30 & echo $! > bg.pid"], check=True)
    pid = int(open("bg.pid").read())
    (sleep,) = processes.leaked()
    assert sleep.pid == pid and sleep.running and sleep.leaked and sleep.parent.argv[:2] == ("sh", "-c")
    assert processes.running() == [sleep]


def test_double_fork_daemon():
    child = os.fork()
    if child == 0:  # the classic daemon: fork, setsid, fork again, the middle process exits at once
        try:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "31"])
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def test_storm(processes):
    subprocess.run(["sh", "-c", STORM], check=True)
    shell, *trues = processes.all()
    assert shell.argv == ("sh", "-c", STORM) and shell.exit_code == 0
    assert len(trues) == 1000
    assert all(p.parent == shell and p.exit_code == 0 and p.duration is not None for p in trues)
    assert processes.lost == 0 and not processes.failed()
    if processes.backend == "bpf":  # argv captured in the kernel (netlink reads /proc: too late for /bin/true)
        assert len(processes.execs("true")) == 1000 == len(processes.execs("/bin/true"))


def test_running_and_signals(processes):
    p = subprocess.Popen(["sleep", "30"])
    assert processes.running().pids == [p.pid]
    assert not processes.leaked()  # its parent, this test, is alive
    p.kill()
    p.wait()
    assert not processes.running()
    (sleep,) = processes.all()
    assert (sleep.signal, sleep.signal_name, sleep.returncode, sleep.outcome) == (9, "SIGKILL", -9, "signaled")
    assert sleep.failed and sleep.argv == ("sleep", "30")


def test_hidden_failure(processes):
    subprocess.run(["ls", "/nonexistent-proctap-dir"], capture_output=True)  # exit 2, its message swallowed
    assert not processes.failed()
'''

FIXTURES = r'''
import subprocess

import pytest


@pytest.fixture(scope="module")
def server():
    p = subprocess.Popen(["sleep", "32"])
    yield p
    p.terminate()
    p.wait()


@pytest.fixture(scope="module")
def leaky():
    subprocess.Popen(["sleep", "33"])
    yield


def test_server(server, processes):
    assert processes.all() == []  # the module fixture's process is the fixture's, not this test's


@pytest.mark.proctap_allow_leaks
def test_allowed_to_leave_a_process():
    subprocess.Popen(["sleep", "34"])


def test_leaky_fixture(leaky):
    pass
'''

# name -> (outcome, processes, leaked commands) with --proctap-leaks (fail)
EXPECTED: dict[str, tuple[str | None, int, list[str]]] = {
    "test_scenarios.py::test_exit3": ("passed", 1, []),
    "test_scenarios.py::test_background_leak": ("error", 2, ["sleep 30"]),
    "test_scenarios.py::test_double_fork_daemon": ("error", 2, ["sleep 31"]),
    "test_scenarios.py::test_storm": ("passed", 1001, []),
    "test_scenarios.py::test_running_and_signals": ("passed", 1, []),
    "test_scenarios.py::test_hidden_failure": ("failed", 1, []),
    "test_fixtures.py::test_server": ("passed", 0, []),
    "test_fixtures.py::test_allowed_to_leave_a_process": ("passed", 1, []),
    "server (module-scoped fixture)": (None, 1, []),
    "test_fixtures.py::test_leaky_fixture": ("error", 0, []),
    "leaky (module-scoped fixture)": (None, 1, ["sleep 33"]),
}


# -- helpers -------------------------------------------------------------------------------------------------------
def _token_of(pid: str) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(TOKEN_VAR.encode() + b"="):
            return entry.split(b"=", 1)[1].decode()
    return None


@pytest.fixture
def reaper(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A token in the environment of everything the inner runs start; at teardown every process still carrying it
    (the leaks) is killed, by pid."""
    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VAR, token)
    yield token
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        mine = [int(p) for p in os.listdir("/proc") if p.isdigit() and _token_of(p) == token]
        alive = [p for p in mine if _state(p) not in ("Z", None)]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    pytest.fail(f"processes of token {token} survived SIGKILL")


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (setpriv to nobody, and the reaper reads every process's environment)")


def _xdist() -> list[str]:
    pytest.importorskip("xdist")
    return ["-p", "xdist", "-n", "2", "--dist", "loadfile"]


@functools.cache
def nobody_python() -> tuple[str, dict[str, str]]:
    """A Python that nobody can run (and run again from a process of its own: xdist starts its workers with
    ``sys.executable``) with pytest and proctap importable: this one, or, when its path is not reachable by
    nobody (a venv made from an interpreter under /root), the system's of the same version with this one's
    site-packages and proctap's directory on PYTHONPATH.  The environment to add is returned with it."""
    import proctap

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = os.pathsep.join([sysconfig.get_paths()["purelib"], str(Path(proctap.__file__).parent.parent)])
    candidates = [(sys.executable, {}), (f"/usr/bin/{version}", {"PYTHONPATH": path}),
                  (f"/usr/local/bin/{version}", {"PYTHONPATH": path})]  # fmt: skip
    for python, env in candidates:
        probe = [*NOBODY, "sh", "-c", '"$0" -c "import pytest, xdist, proctap.pytest_plugin"', python]
        if subprocess.run(probe, env={**os.environ, **env}, cwd="/", capture_output=True).returncode == 0:
            return python, env
    pytest.skip(f"no Python with pytest, xdist and proctap that nobody can run (tried {sys.executable})")


def run_inner(pytester: pytest.Pytester, args: list[str], *, nobody: bool) -> tuple[str, int, Path]:
    """Run pytest on the files in ``pytester.path`` (as nobody: on a world-readable copy); returns its output, its
    exit status and the directory it ran in."""
    base = ["-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-rA", *args]
    if not nobody:
        result = pytester.runpytest_subprocess(*base[2:], timeout=120)
        return "\n".join(result.outlines + result.errlines), int(result.ret), pytester.path
    python, python_env = nobody_python()
    where = Path(tempfile.mkdtemp(prefix="proctap-plugin-"))
    where.chmod(0o777)
    for f in pytester.path.glob("*.py"):
        shutil.copy(f, where / f.name)
        (where / f.name).chmod(0o644)
    env = {**os.environ, **python_env, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(where)}
    env["TMPDIR"] = env["PYTEST_DEBUG_TEMPROOT"] = str(where)  # (pytester points them at its own directory)
    done = subprocess.run([*NOBODY, python, *base], cwd=where, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr, done.returncode, where


def write_files(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS, test_fixtures=FIXTURES)


def check_report(report: dict[str, Any], *, backend: str, workers: bool) -> None:
    """The JSON report of a --proctap-leaks run of the two files: exactly the expected tests, processes, leaks."""
    assert report["schema"] == "proctap-pytest" and report["backend"] == backend
    entries = {e["name"]: e for e in report["tests"]}
    assert sorted(entries) == sorted(EXPECTED)
    for name, (outcome, count, leaked) in EXPECTED.items():
        entry = entries[name]
        assert (entry["outcome"], entry["counts"]["processes"], [leak["command"] for leak in entry["leaked"]]) == (
            outcome,
            count,
            leaked,
        ), name
        assert len(entry["processes"]) == count
        assert entry["lost"] == [] and (entry["worker"] is not None) == workers
    exit3 = entries["test_scenarios.py::test_exit3"]["processes"][0]
    assert (exit3["argv"], exit3["exit_code"], exit3["outcome"], exit3["parent"]) == (["sh", "-c", "exit 3"], 3,
                                                                                      "failed", None)  # fmt: skip
    daemon, sleep = entries["test_scenarios.py::test_double_fork_daemon"]["processes"]
    assert sleep["parent"] == daemon["id"] and daemon["outcome"] == "ok" and sleep["outcome"] == "running"
    assert sleep["ppid"] == daemon["pid"]  # its first parent, though it was re-parented to init since
    counts = report["counts"]
    assert counts == {"processes": 1011, "ok": 1003, "failed": 2, "signaled": 2, "running": 4, "unknown": 0}


def check_output(output: str, *, workers: bool) -> None:
    """The leak errors name the test (or fixture) and the process; the failure shows the tree; the summary."""
    assert re.search(r"proctap: test test_scenarios.py::test_background_leak left 1 process running:\n"
                     r"  \[\d+\] sleep 30, started by \[\d+\] sh -c 'sleep 30 & echo \$! > bg.pid' \(exit 0\)",
                     output), output  # fmt: skip
    assert re.search(r"proctap: test test_scenarios.py::test_double_fork_daemon left 1 process running:\n"
                     r"  \[\d+\] sleep 31, started by \[\d+\] python[\d.]* .*\(exit 0\)", output), output  # fmt: skip
    assert re.search(r"proctap: fixture leaky \(module-scoped fixture\) left 1 process running:\n"
                     r"  \[\d+\] sleep 33\n", output), output  # fmt: skip
    assert "proctap: fixture server" not in output
    assert re.search(r"-+ proctap: processes started by this test -+\n.*\n.*\n.*exit 2 .*"
                     r"\[\d+\] ls /nonexistent-proctap-dir", output), output  # fmt: skip
    assert re.search(r"1011 processes started by 7 of 9 tests \(4 exited non-zero or killed, 3 left running\)", output)
    assert re.search(r"tests that started the most processes:\n +1001 processes .*test_scenarios.py::test_storm",
                     output), output  # fmt: skip
    assert "events lost" not in output
    summary = re.search(r"=+ (.*) in [\d.]+s", output)
    assert summary is not None and summary.group(1) == "1 failed, 8 passed, 3 errors", output
    assert "sleep 34" not in output  # (a test marked proctap_allow_leaks)
    assert ("created: 2/2 workers" in output) == workers


# -- the runs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xdist", [False, True], ids=["single", "xdist"])
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_leaks_fail(pytester: pytest.Pytester, reaper: str, user: str, xdist: bool) -> None:
    """``--proctap-leaks`` with ``--proctap-report``: the exact results, as root (bpf) and as nobody (netlink)."""
    _needs_root()
    write_files(pytester)
    nobody = user == "nobody"
    args = ["--proctap-leaks", "--proctap-report", "report.json", *(_xdist() if xdist else [])]
    output, status, where = run_inner(pytester, args, nobody=nobody)
    try:
        assert status == 1, output
        check_output(output, workers=xdist)
        report = json.loads((where / "report.json").read_text())
        check_report(report, backend="netlink" if nobody else "bpf", workers=xdist)
        if nobody:
            assert "proctap: watching the processes tests start with the netlink backend; argv read from" in output
    finally:
        if nobody:
            shutil.rmtree(where, ignore_errors=True)


def test_leaks_warn_and_html(pytester: pytest.Pytester, reaper: str) -> None:
    """``proctap_leaks = warn`` in the ini file: the same leaks as warnings, the tests pass; the HTML timeline."""
    _needs_root()
    write_files(pytester)
    pytester.makeini("[pytest]\nproctap_leaks = warn\n")
    output, status, _ = run_inner(pytester, ["--proctap-report", "timeline.html"], nobody=False)
    assert status == 1, output  # test_hidden_failure still fails
    summary = re.search(r"=+ (.*) in [\d.]+s", output)
    assert summary is not None and summary.group(1) == "1 failed, 8 passed, 3 warnings", output
    assert output.count("ProcessLeakWarning: proctap: ") == 3
    assert "ERROR" not in output
    page = (pytester.path / "timeline.html").read_text()
    data = re.search(r'<script type="application/json" id="proctap-data">(.*?)</script>', page, re.S)
    assert data is not None
    rows = json.loads(data.group(1))["processes"]
    labels = [(r["depth"], r["argv"][:2] if r["argv"] else None) for r in rows]
    assert labels[0] == (0, ["pytest"])
    assert (1, ["pytest", "test_scenarios.py::test_storm"]) in labels
    assert (1, ["fixture", "leaky (module-scoped fixture)"]) in labels
    assert sum(1 for d, argv in labels if d == 3 and argv == ["/bin/true"]) == 1000
    assert all(r["id"] == i for i, r in enumerate(rows))


def test_lost_events_are_reported(pytester: pytest.Pytester, reaper: str) -> None:
    """A buffer too small for a storm the watcher's thread cannot drain (the test holds the GIL): the summary says
    how many events were lost and in which test."""
    _needs_root()
    pytester.makepyfile(test_lossy=r'''
import subprocess, sys, time

def test_storm_unread(processes):
    sys.setswitchinterval(10.0)  # the watcher's thread cannot take the GIL while this test spins
    p = subprocess.Popen(["sh", "-c", "i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done"])
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass
    sys.setswitchinterval(0.005)
    p.wait()
    assert processes.lost > 0
''')  # fmt: skip
    output, status, _ = run_inner(pytester, ["--proctap-report", "r.json", "--proctap-buffer", "4096"], nobody=False)
    assert status == 0, output
    assert re.search(r"!! [\d,]+ events? lost.*: the process lists of test_lossy.py::test_storm_unread may be "
                     r"incomplete", output), output  # fmt: skip


def test_inactive_unless_asked(pytester: pytest.Pytester) -> None:
    """Installed but not asked (no option, no test using the fixture): no watcher, no thread, nothing printed."""
    pytester.makepyfile(test_plain=r'''
import subprocess, threading

def test_plain(request):
    subprocess.run(["true"])
    assert request.config.pluginmanager.get_plugin("proctap-session").collector is None
    assert not [t for t in threading.enumerate() if t.name == "proctap-pytest"]
''')  # fmt: skip
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "proctap:" not in result.stdout.str() and "= proctap =" not in result.stdout.str()


def test_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain(): pass\n")
    pytester.makeini("[pytest]\nproctap_leaks = sometimes\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "proctap_leaks = 'sometimes': choose fail or warn" in result.stderr.str()
