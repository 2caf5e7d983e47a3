"""The Watcher as the one path from backend to consumer: one drain loop (read() after select returns, waits are cut
short by wake descriptors), one check of the pid, one probe of the chosen backend, accounting as an option."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

import proctap
from proctap.backends import backend_class, choose_backend
from proctap.cli.watch import open_watcher
from proctap.errors import ProctapError

PROCTAP = [sys.executable, "-m", "proctap"]  # this checkout's proctap, not whatever is on PATH
STORM = "i=0; while [ $i -lt 1500 ]; do /bin/true; i=$((i+1)); done"


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a call that should return promptly raises after ``seconds``."""

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise AssertionError(f"still blocked after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def forking_load() -> Iterator[None]:
    """Other processes forking all the time (none of them in the watched subtree)."""
    load = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        yield
    finally:
        load.kill()
        load.wait()


def test_read_after_select_returns_when_everything_ready_is_filtered_out() -> None:
    idle = subprocess.Popen(["sleep", "60"])
    try:
        with proctap.watch(backend="netlink", pid=idle.pid) as w, forking_load():
            for _ in range(5):
                readable, _, _ = select.select([w], [], [], 10)
                assert readable, "the load's events never made the watcher readable"
                with alarm(10):
                    batch = w.read()
                assert all(ev.pid == idle.pid or isinstance(ev, proctap.Lost) for ev in batch)
    finally:
        idle.kill()
        idle.wait()


def test_a_wake_descriptor_cuts_the_idle_wait_short() -> None:
    r, wfd = os.pipe()
    try:
        with proctap.watch("exec", backend="netlink", pid=os.getpid()) as w:
            os.write(wfd, b"x")
            with alarm(10):
                assert w.read(wake=[r]) == []
    finally:
        os.close(r)
        os.close(wfd)


def test_the_api_rejects_a_pid_that_does_not_exist_as_the_cli_does() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: its pid names no process now (unless reused within this instant)
    with pytest.raises(ProctapError, match="no process with pid"):
        proctap.watch(backend="netlink", pid=proc.pid)
    with pytest.raises(ProctapError, match="invalid pid"):
        proctap.watch(backend="netlink", pid=0)


def _count_probes(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    cls = backend_class(name)
    calls: list[int] = []
    original = cls.probe.__func__  # type: ignore[attr-defined]

    def counting(klass: type) -> object:
        calls.append(1)
        return original(klass)

    monkeypatch.setattr(cls, "probe", classmethod(counting))
    return calls


def test_the_chosen_backend_is_probed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_probes(monkeypatch, "netlink")
    with proctap.watch("exec", backend="netlink"):
        pass
    assert len(calls) == 1
    cls = choose_backend("netlink")
    assert len(calls) == 2
    with proctap.watch("exec", backend=cls):  # type: ignore[arg-type]
        pass
    assert len(calls) == 2  # a class is taken as chosen


def test_the_cli_probes_its_backend_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_probes(monkeypatch, "netlink")
    args = argparse.Namespace(
        events=frozenset(proctap.EventKind), backend="netlink", pid=None, threads=False, comm=None, buffer=None,
        latency=0.01, backend_option=[], quiet=True, argv_limit=4096,
    )  # fmt: skip
    open_watcher(args, track=False).close()
    assert len(calls) == 1


def test_accounting_is_a_watcher_option() -> None:
    with proctap.watch("exit", backend="netlink", accounting=True) as w:
        assert w.accounting
        proc = subprocess.Popen(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
        proc.wait()
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            found = next((e for e in w.read(timeout=0.5) if e.pid == proc.pid and not e.is_thread), None)
    assert isinstance(found, proctap.Exit)
    assert found.accounting is not None and found.accounting.per_process
    assert found.accounting.cpu_user_us + found.accounting.cpu_system_us > 0
    assert "accounting_overruns" in w.stats().as_dict()


def _cli_stats(*args: str, during: list[str] | None = None) -> dict[str, object]:
    """``proctap watch ... --stats`` as a user runs it (while ``during`` runs, when given): its counters."""
    cmd = [*PROCTAP, "watch", "-q", "--stats", *args]
    watch = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # subscribed (a start-up bound, not a timing assertion)
    if during is not None:
        subprocess.run(during, check=True)
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == 128 + signal.SIGINT, err
    return json.loads(err.splitlines()[-1])  # type: ignore[no-any-return]


def test_the_cli_and_the_api_ask_the_kernel_for_the_same_events() -> None:
    """``proctap watch -e exec`` (a table) filters in the kernel as ``watch("exec")`` does, so no fork reaches it."""
    with proctap.watch("exec", backend="netlink") as w:
        api_filter = w.stats().backend["kernel_filter"]
    assert api_filter != 0
    stats = _cli_stats("-b", "netlink", "-e", "exec", during=["sh", "-c", "for i in 1 2 3; do /bin/true; done"])
    backend_stats = stats["backend_stats"]
    assert isinstance(backend_stats, dict) and backend_stats["kernel_filter"] == api_filter
    received = stats["received"]
    assert isinstance(received, dict) and received.get("exec", 0) >= 3
    # unfiltered, there would be a fork per exec at least; one may slip in while the filter is being attached
    assert received.get("fork", 0) <= 1, received


def test_events_the_filters_drop_are_still_drained_in_batches() -> None:
    """A storm that the filters empty entirely must not wake the reader per event (6,271 polls for 6,272 events
    in the trial): the watcher batches on what the backend delivered, not on what survived the filters."""
    with proctap.watch(backend="netlink", comm="nosuchthing") as w:
        storm = subprocess.Popen(["sh", "-c", STORM])
        delivered = []
        while storm.poll() is None:
            delivered += w.read(timeout=0.5)
        delivered += w.read(timeout=0.5)
        stats = w.stats()
    assert delivered == []
    events = sum(stats.received.values())
    assert events >= 1500 * 3  # fork, exec and exit of each /bin/true
    assert stats.drains * 5 < events, stats
    cli = _cli_stats("-b", "netlink", "--comm", "nosuchthing", during=["sh", "-c", STORM])
    received = cli["received"]
    drains = cli["drains"]
    assert isinstance(received, dict) and isinstance(drains, int)
    assert sum(received.values()) >= 1500 * 3 and drains * 5 < sum(received.values()), cli


def test_backend_options_take_three_forms_and_are_checked_alike() -> None:
    for options in ({"interval": "20ms"}, [("interval", "20ms")], ["interval=20ms"]):
        with proctap.watch(backend="proc", options=options) as w:  # type: ignore[arg-type]
            assert w.backend.option_value("interval") == 20_000_000
    with pytest.raises(ProctapError, match="backend netlink takes no options"):
        proctap.watch(backend="netlink", options=["interval=50ms"])
    with pytest.raises(ProctapError, match="is not NAME=VALUE"):
        proctap.watch(backend="proc", options=["interval"])
    with pytest.raises(ProctapError, match="has no option 'nope': it accepts interval=DURATION"):
        proctap.watch(backend="proc", options={"nope": 1})
    with pytest.raises(ProctapError, match="given twice"):
        proctap.watch(backend="proc", options=["interval=50ms", "interval=abc"])


def test_the_api_checks_comm_and_argv_limit_as_the_cli_does() -> None:
    with pytest.raises(ProctapError, match="empty name matches nothing"):
        proctap.watch(backend="netlink", comm="")
    with pytest.raises(ProctapError, match="argv_limit must be 0 to 131072"):
        proctap.watch(backend="netlink", argv_limit=-1)
    with pytest.raises(ProctapError, match="unknown event type 'bogus'"):
        proctap.watch("all,bogus", backend="netlink")


OUTSIDER = """
import os, sys
if os.fork():
    os._exit(0)  # the grandchild is re-parented: not a descendant of the test
fifo, out = sys.argv[1], sys.argv[2]
while True:
    with open(fifo) as f:
        if f.read().strip() != "go":
            os._exit(0)
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    os.waitpid(pid, 0)
    with open(out, "w") as f:
        f.write(str(pid))
"""


def test_a_zombie_in_the_subtree_is_not_followed_into_its_pid_reuse(tmp_path: Path) -> None:
    """A child that exited (not yet reaped) when the watcher started is not part of the subtree: once reaped, its
    pid may name an unrelated process, whose events must not be delivered."""
    fifo, out = tmp_path / "go", tmp_path / "pid"
    os.mkfifo(fifo)
    subprocess.run([sys.executable, "-c", OUTSIDER, str(fifo), str(out)], check=True)
    try:
        for _ in range(20):
            zombie = subprocess.Popen(["true"])
            _wait_state(zombie.pid, "Z")
            with proctap.watch(backend="netlink", pid=os.getpid()) as w:
                assert zombie.pid not in (w.filter.tracked or set())
                zombie.wait()
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(zombie.pid - 1))
                fifo.write_text("go")
                deadline = time.monotonic() + 10
                while not out.exists() or not out.read_text().strip():
                    assert time.monotonic() < deadline, "the outsider did not fork"
                    time.sleep(0.01)
                reused = int(out.read_text())
                out.unlink()
                events = w.read(timeout=0.5) + w.read(timeout=0.2)
            if reused == zombie.pid:  # the outsider's child took the zombie's pid (else another task did: retry)
                assert not [e for e in events if e.pid == reused], events
                return
        pytest.skip("another task always took the pid first")
    finally:
        with contextlib.suppress(OSError):  # ENXIO: the outsider is gone already (a blocking open would hang)
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"stop")
            os.close(fd)


def _wait_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != state:
        assert time.monotonic() < deadline
        time.sleep(0.01)


THREADED = """
import os, sys, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os.execv("/bin/true", ["true"])
os.waitpid(pid, 0)
"""


def _workload_events(w: proctap.Watcher, root: int) -> list[tuple[object, ...]]:
    """The events of ``root`` and its children, as (kind, pid, tid, is_thread), until its own exit."""
    found: list[tuple[object, ...]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for ev in w.read(timeout=0.5):
            parent = getattr(ev, "parent_pid", None)
            if ev.pid == root or parent == root:
                found.append((ev.kind.value, ev.pid, ev.tid, getattr(ev, "is_thread", None)))
                if ev.kind.value == "exit" and ev.pid == root and not ev.is_thread:  # type: ignore[attr-defined]
                    return found
    raise AssertionError(f"no exit of {root} within 30 s: {found}")


@pytest.mark.parametrize("threads", [False, True])
def test_a_watcher_that_only_forwards_filters_as_the_full_step(threads: bool) -> None:
    """Without filters that need the general step (pids, names, context) the watcher takes a short path per event,
    with its process cache fed or not: the same kinds and threads filters, execs enriched, every event counted, as
    the full step (here forced by a uid filter, which every process of this root test passes)."""
    backend = choose_backend("auto").name
    with (
        proctap.watch("fork,exit", backend=backend, threads=threads, cache=False) as short,
        proctap.watch("fork,exit", backend=backend, threads=threads, context=True) as fed,
        proctap.watch("fork,exit", backend=backend, threads=threads, uid=os.getuid()) as full,
    ):
        work = subprocess.Popen([sys.executable, "-c", THREADED])
        work.wait()
        seen_short = _workload_events(short, work.pid)
        seen_fed = _workload_events(fed, work.pid)
        seen_full = _workload_events(full, work.pid)
        assert short.processes.stats().exited == 0 and fed.processes.stats().exited > 0  # fed, or not
    assert seen_short == seen_fed == seen_full
    assert {kind for kind, *_ in seen_short} == {"fork", "exit"}  # no exec (the fed ones received and dropped it)
    assert any(is_thread for *_, is_thread in seen_short) == threads
    received = short.stats().received
    assert received.get("fork", 0) >= 2 + threads and received.get("exit", 0) >= 2 + threads  # dropped threads too
    assert fed.stats().received.get("exec", 0) >= 1 and full.stats().received.get("exec", 0) >= 1


def test_a_forwarding_watcher_feeds_its_cache_every_event_it_drops() -> None:
    """``watch("exec", context=True)`` delivers only execs, but its cache follows the forks and exits it drops: the
    exec carries its process, whose parent is this test, and the process is known exited afterwards."""
    with proctap.watch("exec", context=True) as w:
        child = subprocess.Popen(["sleep", "0.2"])
        child.wait()
        seen: list[proctap.Event] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(ev.pid == child.pid for ev in seen):
            seen += w.read(timeout=0.5)
        time.sleep(0.3)
        w.read(timeout=0.1)  # its exit, dropped
        ended = w.processes.lookup(child.pid)
    assert {ev.kind.value for ev in seen} == {"exec"}
    execd = next(ev for ev in seen if ev.pid == child.pid)
    assert execd.process is not None and execd.process.exe is not None and execd.process.exe.endswith("/sleep")
    assert execd.process.parent_pid == os.getpid() and execd.process.parent_key is not None
    assert ended is not None and ended.exit is not None and ended.exit.exit_code == 0


def test_a_forwarding_watcher_enriches_execs_and_counts_losses() -> None:
    """The short path still fills an exec's argv from /proc (netlink's exec carries none) and counts Lost events."""
    with proctap.watch("exec", backend="netlink", cache=False) as w:
        child = subprocess.Popen(["sleep", "2"])
        execd = None
        deadline = time.monotonic() + 20
        while execd is None and time.monotonic() < deadline:
            execd = next((ev for ev in w.read(timeout=0.5) if ev.pid == child.pid), None)
        child.kill()
        child.wait()
    assert execd is not None and execd.argv == ("sleep", "2")  # type: ignore[attr-defined]
    with proctap.watch("exec", backend="netlink", cache=False, buffer_bytes=4096) as w:
        time.sleep(0.2)  # not read: a storm overruns the 4 KiB socket buffer
        subprocess.run(["sh", "-c", STORM], check=True)
        lost = []
        deadline = time.monotonic() + 20
        while not lost and time.monotonic() < deadline:
            lost = [ev for ev in w.read(timeout=1) if ev.kind.value == "lost"]
        stats = w.stats()
    assert lost and stats.lost + stats.lost_unknown >= len(lost)


def test_poll_timeouts_round_up_to_the_millisecond_not_beyond() -> None:
    """A 10 ms latency naps 10 ms (it was 11: a tenth more wait for every event of a paced stream), never 0 for a
    positive wait (no busy loop), and float noise (0.07 s is 70.00000000000001 ms) does not add a millisecond."""
    from proctap.watcher import _milliseconds

    assert [_milliseconds(s) for s in (0.0, -1.0, 1e-9, 0.0004, 0.001, 0.01, 0.0101, 0.07, 0.5)] == [
        0, 0, 1, 1, 1, 10, 11, 70, 500
    ]  # fmt: skip
    assert _milliseconds(1e12) == (1 << 31) - 1


def test_settle_for_storms_is_what_the_commands_use() -> None:
    """The public helper freezes what exists and collects the young generation less often; watch, top and run call
    it (what it saves is measured by bench/context_cost.py --gc, not timed here)."""
    before = gc.get_threshold()
    try:
        proctap.settle_for_storms()
        assert gc.get_threshold() == (20_000, 50, 100)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    from proctap.cli import run as cli_run
    from proctap.cli import watch as cli_watch

    assert cli_watch.settle_for_storms is proctap.settle_for_storms is cli_run.settle_for_storms
