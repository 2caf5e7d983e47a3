"""The process cache against the real kernel: ancestry on every event, the start-up snapshot with no gap and no
duplicate, repair after forced losses, pid reuse resolved by key, and a cache rebuilt from NDJSON."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import proctap
from eventlog import EventLog
from proctap.cache import ProcessCache
from proctap.events import Exec, Existing, Exit, Fork, Lost, event_from_dict
from proctap.linux import procfs

PROCTAP = [sys.executable, "-m", "proctap"]  # this checkout's proctap, not whatever is on PATH

BACKENDS = [b for b in ("bpf", "netlink", "tracefs") if proctap.probe_all()[b]]
CHAIN = 'bash -c \'bash -c "bash -c \\"sleep 0.3; true\\"; true"; true\''


def _is_leaf(ev: object) -> bool:
    return isinstance(ev, Exec) and ev.argv == ("sleep", "0.3")


def _chain_leaf(log: EventLog) -> Exec:
    log.wait_for(lambda evs: any(map(_is_leaf, evs)), "the chain's sleep")
    return next(e for e in log.events if isinstance(e, Exec) and _is_leaf(e))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exec_carries_its_ancestry(backend: str) -> None:
    with proctap.watch("exec,exit", backend=backend, track=True) as w:
        log = EventLog(w)
        shell = subprocess.Popen(["sh", "-c", CHAIN])
        leaf = _chain_leaf(log)
        shell.wait()
        proc = leaf.process
        assert proc is not None and proc.pid == leaf.pid and proc.exe == "/usr/bin/sleep"
        assert proc.exec_id == f"{leaf.pid}@{proc.start_ns}:{leaf.timestamp_ns}"
        chain = w.processes.ancestors(proc)
        assert [p.comm for p in chain[:3]] == ["bash", "bash", "bash"]
        assert chain[3].pid == shell.pid and chain[4].pid == os.getpid()  # sh, then this test's own process
        assert chain[-1].pid == 1
        assert w.processes.parent(proc) == chain[0]
        assert proc in w.processes.children(chain[0])


def ndjson_of(args: list[str], workload: list[str], path: Path) -> list[dict[str, object]]:
    """``proctap watch --json ARGS`` into a file (a pipe nobody reads would fill and stall it) while ``workload``
    runs; its lines, decoded."""
    with open(path, "wb") as out:
        watch = subprocess.Popen([*PROCTAP, "watch", "-b", "netlink", "--json", "-q", *args], stdout=out)
        time.sleep(1.5)  # subscribed (a start-up bound, not a measurement)
        subprocess.run(workload, check=True)
        time.sleep(0.5)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 128 + signal.SIGINT
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_ancestry_in_ndjson_is_the_same_chain(tmp_path: Path) -> None:
    lines = ndjson_of(["--ancestry", "-e", "exec"], ["sh", "-c", CHAIN], tmp_path / "out.json")
    (leaf,) = [obj for obj in lines if obj["argv"] == ["sleep", "0.3"]]
    ancestors = leaf["ancestors"]
    assert isinstance(ancestors, list)
    assert [a["comm"] for a in ancestors][:4] == ["bash", "bash", "bash", "sh"] and ancestors[-1]["pid"] == 1
    assert leaf["parent"] == ancestors[0] and str(leaf["exec_id"]).startswith(f"{leaf['pid']}@")


@contextlib.contextmanager
def spawner(every: float, lifetime: float) -> Iterator[list[int]]:
    """A process that starts a ``sleep lifetime`` child every ``every`` seconds and prints its pid; yields the list
    of pids printed so far (filled when the block ends)."""
    code = (
        "import subprocess, sys, time\n"
        "while True:\n"
        f"    p = subprocess.Popen(['sleep', '{lifetime}'], stdout=subprocess.DEVNULL)\n"
        "    print(p.pid, flush=True)\n"
        f"    time.sleep({every})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        yield pids
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        pids.extend(int(line) for line in out.split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_snapshot_has_no_gap_and_no_duplicate(backend: str) -> None:
    before = [subprocess.Popen(["sleep", "30"]) for _ in range(5)]
    try:
        with spawner(every=0.01, lifetime=20) as spawned:
            time.sleep(0.3)
            with proctap.watch("fork,exec,exit", backend=backend, snapshot=True) as w:
                log = EventLog(w)
                first = log.drain()
                time.sleep(0.3)
            # the spawner stops here; every child it started lives 20 s, so each one was alive while we watched
            with contextlib.suppress(Exception):
                log.drain()
        events = log.events
        existing = [e for e in events if isinstance(e, Existing)]
        assert existing and all(e.reason == "snapshot" for e in existing)
        assert first[: len(existing)] == existing  # the snapshot comes first
        pids = [e.pid for e in existing]
        assert len(pids) == len(set(pids))
        seen_before = set()
        for e in existing:  # parents before children
            assert e.parent_pid not in pids or e.parent_pid in seen_before, e
            seen_before.add(e.pid)
        for p in before:
            assert pids.count(p.pid) == 1
        forked = [e.pid for e in events if isinstance(e, Fork) and not e.is_thread]
        started = set(spawned)
        for pid in started:
            if pid in forked or pid in pids:
                assert (pid in forked) != (pid in pids), f"pid {pid} came twice"
        # the children started while the watcher was open: every one came, as Existing or as Fork
        watched = [pid for pid in spawned if pid in forked or pid in pids]
        first_seen = spawned.index(watched[0])
        last_seen = spawned.index(watched[-1])
        missing = [pid for pid in spawned[first_seen : last_seen + 1] if pid not in forked and pid not in pids]
        assert not missing, f"gap: {missing}"
    finally:
        for p in before:
            p.kill()
            p.wait()


def test_repair_after_forced_losses() -> None:
    """A storm against a tiny netlink buffer (losses guaranteed, the reader sleeps through them); afterwards the
    cache's live processes in the storm's subtree are /proc's, and the repair's counts add up."""
    storm = (
        "for i in $(seq 1 6); do sleep 60 & done; "
        "i=0; while [ $i -lt 3000 ]; do /bin/true & i=$((i+1)); done; wait_for_nothing=1; "
        "for i in $(seq 1 6); do sleep 60 & done; exec sleep 60"
    )
    with proctap.watch("fork,exec,exit", backend="netlink", buffer_bytes=4096, latency=1.0, track=True) as w:
        root = subprocess.Popen(["sh", "-c", storm])
        log = EventLog(w)
        log.wait_until(lambda: sum(1 for e in log.events if isinstance(e, Lost)) > 0, "a Lost event")
        # until the storm is over: its last act is exec'ing sleep
        log.wait_until(lambda: procfs.read_comm(root.pid) == "sleep" and len(procfs.descendants(root.pid)) == 12,
                       "the storm's end")  # fmt: skip
        log.during(0.5)
        # a busy machine keeps overrunning a 4 KiB buffer after the storm too, and repairs are throttled: reconcile
        # now, and compare at that instant (the storm's subtree is 12 sleeps by now, it does not change)
        repaired_now = w.repair()
        stats = w.processes.stats()
        cache_live = {p.pid for p in w.processes if root.pid in {a.pid for a in w.processes.ancestors(p)}}
        proc_live = procfs.descendants(root.pid)
        events = log.events + repaired_now
        try:
            assert w.stats().lost > 0 or w.stats().lost_unknown > 0
            assert stats.repairs >= 2  # at least one during the storm, and ours
            assert cache_live == proc_live
            synthetic = [e for e in events if isinstance(e, Exit) and e.synthetic]
            repaired = [e for e in events if isinstance(e, Existing) and e.reason == "repair"]
            # status unknown, or read from a zombie's stat: the storm's processes all exit 0
            ours = [e for e in synthetic if e.parent_pid == root.pid and e.comm == "true"]
            assert all(e.status is None or (e.exit_code == 0 and e.status == 0) for e in ours), ours
            assert len(synthetic) == stats.synthetic_exits
            assert len(repaired) == stats.synthetic_found
            unknown = [e for e in repaired if e.pid in proc_live and w.processes.lookup(e.pid, learn=False) is None]
            assert not unknown, (unknown, [(type(e).__name__, e) for e in events if e.pid in {u.pid for u in unknown}])
        finally:
            for pid in [root.pid, *proc_live]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            root.wait()


def _fork_at(pid: int) -> subprocess.Popen[bytes] | None:
    """A child with exactly this pid (via ns_last_pid, which root may write), or None if another task took it."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    child = subprocess.Popen(["sleep", "60"])
    if child.pid == pid:
        return child
    child.kill()
    child.wait()
    return None


def _first_exit(ev: object, pid: int) -> bool:
    return isinstance(ev, Exit) and ev.pid == pid and ev.process is not None and ev.process.argv == ("sleep", "0.2")


def _second_exec(ev: object, pid: int) -> bool:
    return isinstance(ev, Exec) and ev.pid == pid and ev.argv == ("sleep", "60")


def test_a_reused_pid_resolves_to_the_right_process_by_key() -> None:
    # this test's subtree only: bpf filters it in the kernel, so a busy machine cannot overrun the buffer
    with proctap.watch("fork,exec,exit", backend=BACKENDS[0], pid=os.getpid()) as w:
        log = EventLog(w)
        for _ in range(20):
            first = subprocess.Popen(["sleep", "0.2"])
            first.wait()
            second = _fork_at(first.pid)
            if second is not None:
                break
        else:
            pytest.skip("the pid was always taken by another task before we could reuse it")
        try:
            log.wait_for(lambda evs: any(_first_exit(e, first.pid) for e in evs), "the first exit")
            log.wait_for(lambda evs: any(_second_exec(e, second.pid) for e in evs), "the second exec")
            exits = [e for e in log.events if isinstance(e, Exit) and e.pid == first.pid and not e.is_thread]
            old = exits[0].process
            new = w.processes.lookup(second.pid)
            assert old is not None and new is not None and old.key is not None and new.key is not None
            assert old.key != new.key and old.exit is not None and new.exit is None
            assert w.processes.lookup(old.key) == old and w.processes.lookup(new.key) == new
            assert w.processes.lookup(str(old.key)) == old
            assert new.argv == ("sleep", "60") and old.argv == ("sleep", "0.2")
        finally:
            second.kill()
            second.wait()


def test_exited_processes_stay_a_grace_period_and_the_cache_is_bounded() -> None:
    with proctap.watch("fork,exec,exit", backend="netlink", grace=0.5, cache_capacity=100_000) as w:
        log = EventLog(w)
        child = subprocess.Popen(["true"])
        child.wait()
        log.wait_exit(child.pid)
        assert w.processes.lookup(child.pid, learn=False) is not None
        time.sleep(0.6)
        log.during(0.2)
        gone = w.processes.lookup(child.pid, learn=False)
        assert gone is None or gone.exit is None or gone.pid != child.pid
        assert w.processes.stats().expired >= 1
    small = ProcessCache(capacity=10)
    for pid in procfs.list_pids()[:50]:
        small.lookup(pid)
    stats = small.stats()
    assert stats.live <= 10 and stats.evictions >= 1 and stats.misses >= 10


def test_a_cache_rebuilt_from_ndjson_knows_the_same_ancestry(tmp_path: Path) -> None:
    lines = ndjson_of(["--snapshot"], ["sh", "-c", CHAIN], tmp_path / "out.json")
    cache = ProcessCache(read_proc=False)  # only what the stream says
    leaf = None
    for obj in lines:
        ev = event_from_dict(obj)
        proc = cache.apply(ev)
        if isinstance(ev, Exec) and ev.argv == ("sleep", "0.3"):
            leaf = proc
    assert leaf is not None
    chain = cache.ancestors(leaf)
    assert [p.comm for p in chain[:4]] == ["bash", "bash", "bash", "sh"] and chain[-1].pid == 1


def test_ps_shows_the_tree_and_the_snapshot_events() -> None:
    leaf = subprocess.Popen(["sh", "-c", "sh -c 'sleep 30; true'; true"])
    try:
        deadline = time.monotonic() + 10
        while not [p for p in procfs.descendants(leaf.pid) if procfs.read_comm(p) == "sleep"]:
            assert time.monotonic() < deadline, "the chain did not start"
            time.sleep(0.05)
        tree = subprocess.run([*PROCTAP, "ps", "-p", str(leaf.pid)], capture_output=True, text=True, check=True)
        lines = tree.stdout.splitlines()
        assert lines[0].split() == ["PID", "PPID", "USER", "STARTED", "COMMAND"]
        column = lines[0].index("COMMAND")
        commands = [line[column:] for line in lines[1:]]
        assert commands == ["sh -c 'sh -c '\"'\"'sleep 30; true'\"'\"'; true'", "\\_ sh -c 'sleep 30; true'",
                            "  \\_ sleep 30"]  # fmt: skip
        out = subprocess.run([*PROCTAP, "ps", "--json", "--ancestry", "-c", "sleep"], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        objs = [json.loads(line) for line in out.splitlines()]
        assert objs and all(o["event"] == "existing" and o["reason"] == "snapshot" for o in objs)
        (mine,) = [o for o in objs if len(o["ancestors"]) > 1 and o["ancestors"][1]["pid"] == leaf.pid]
        assert mine["argv"] == ["sleep", "30"] and mine["ancestors"][-1]["pid"] == 1
        assert event_from_dict(mine).pid == mine["pid"]
        bad = subprocess.run([*PROCTAP, "ps", "-p", "999999999"], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.startswith("proctap: error: no process with pid")
    finally:
        for pid in [leaf.pid, *procfs.descendants(leaf.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leaf.wait()


def test_the_spliced_context_equals_the_context_object() -> None:
    """The NDJSON path splices memoised JSON text; it must say exactly what ``context()`` says."""
    cache = ProcessCache()
    me = cache.lookup(os.getpid())
    for proc in (me, None):
        for ancestry in (False, True):
            for _ in range(2):  # the second time from the memo
                text = cache.context_json(proc, ancestry=ancestry)
                assert json.loads("{" + text + "}") == cache.context(proc, ancestry=ancestry)


def test_the_oldest_exited_records_are_evicted_first() -> None:
    """Past MAX_EXITED exited records, exits evict the oldest ones (by the order retired, a batch at a time),
    whatever pids are reused; the newest stay findable by key, and every eviction is counted."""
    from proctap.cache import MAX_EXITED

    cache = ProcessCache(read_proc=False)
    common = {"source": "bpf", "wall_time": 1.0}
    total = MAX_EXITED + 3000
    for i in range(total):
        pid = 1000 + i % 30_000  # pids are reused, as in a storm
        cache.apply(Fork(**common, timestamp_ns=2 * i, pid=pid, tid=pid, start_ns=10 * i + 1, parent_pid=1))  # type: ignore[arg-type]
        cache.apply(Exit(**common, timestamp_ns=2 * i + 1, pid=pid, tid=pid, start_ns=10 * i + 1, status=0))  # type: ignore[arg-type]
    stats = cache.stats()
    assert MAX_EXITED - 1024 < stats.exited <= MAX_EXITED and stats.evictions == total - stats.exited
    kept = [i for i in range(total) if cache.lookup(f"{1000 + i % 30_000}@{10 * i + 1}", learn=False) is not None]
    assert kept == list(range(total - stats.exited, total))


def test_the_memoised_ancestry_follows_changes_of_the_ancestors() -> None:
    """The context's encoded chain is memoised; an ancestor that exec's, exits, or leaves the cache shows at once."""
    cache = ProcessCache(read_proc=False, grace=0.0)
    common = {"source": "bpf", "wall_time": 1.0, "timestamp_ns": 5}

    def fork(pid: int, parent: int, comm: str, start_ns: int | None = None) -> None:
        start = pid * 10 if start_ns is None else start_ns
        cache.apply(Fork(**common, pid=pid, tid=pid, start_ns=start, parent_pid=parent, comm=comm))  # type: ignore[arg-type]

    fork(100, 0, "init")
    fork(200, 100, "shell")
    fork(300, 200, "make")
    fork(400, 300, "cc")

    def chain() -> list[object]:
        leaf = cache.lookup(400, learn=False)
        context = json.loads("{" + cache.context_json(leaf, ancestry=True) + "}")
        return [(a["pid"], a["comm"]) for a in context["ancestors"]]

    assert chain() == [(300, "make"), (200, "shell"), (100, "init")]
    assert chain() == [(300, "make"), (200, "shell"), (100, "init")]  # from the memo
    cache.apply(Exec(**common, pid=200, tid=200, start_ns=2000, filename="/bin/zsh", argv=("zsh",)))  # type: ignore[arg-type]
    assert chain() == [(300, "make"), (200, "zsh"), (100, "init")]
    cache.apply(Exit(**common, pid=100, tid=100, start_ns=1000, status=0))  # type: ignore[arg-type]
    assert chain() == [(300, "make"), (200, "zsh")]  # no grace: the exited init left the cache
    fork(100, 0, "newcomer", 10**9)  # its pid reused by a younger process: not the shell's parent
    assert chain() == [(300, "make"), (200, "zsh")]


def test_evicted_records_are_freed_without_the_garbage_collector() -> None:
    """An Exit's record holds the event and the event its record (event.process): the cache cuts that cycle when the
    record leaves and nothing else holds either, so a storm's ended processes are freed at once; an event someone
    still holds keeps its process."""
    import gc

    from proctap.cache import MAX_EXITED

    cache = ProcessCache(read_proc=False)
    common = {"source": "bpf", "wall_time": 1.0}
    kept: list[Exit] = []
    gc.collect()
    gc.disable()
    try:
        for i in range(MAX_EXITED + 20_000):
            pid = 1000 + i % 30_000
            fork = Fork(**common, timestamp_ns=2 * i, pid=pid, tid=pid, start_ns=10 * i + 1, parent_pid=1)  # type: ignore[arg-type]
            end = Exit(**common, timestamp_ns=2 * i + 1, pid=pid, tid=pid, start_ns=10 * i + 1, status=0)  # type: ignore[arg-type]
            for ev in (fork, end):
                object.__setattr__(ev, "process", cache.apply(ev))  # as the watcher does
            if i < 10:
                kept.append(end)
        assert gc.collect() < 100  # without the cut: one cycle of two objects per evicted record, 40,000
    finally:
        gc.enable()
    assert cache.stats().evictions >= 20_000
    assert all(ev.process is not None and ev.process.exit is ev for ev in kept)
