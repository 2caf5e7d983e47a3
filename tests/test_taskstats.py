"""taskstats: decoding bytes captured from this kernel (tests/data, made by tests/data/capture_taskstats.py), and a
live listener against real exiting processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import proctap
from eventlog import EventLog, collect
from proctap.accounting import sum_records
from proctap.errors import DecodeError
from proctap.events import Exit
from proctap.linux.taskstats import (
    TaskstatsListener,
    TaskstatsMessage,
    decode_taskstats,
    parse_messages,
    scan_messages,
)

DATA = Path(__file__).resolve().parent / "data"
CAPTURES = sorted(DATA.glob("taskstats_*.json"))


def load(capture: Path) -> tuple[dict[str, int], list[TaskstatsMessage]]:
    doc = json.loads(capture.read_text())
    messages = [m for h in doc["datagrams"] for m in parse_messages(bytes.fromhex(h))]
    return doc["scenarios"], messages


def pid_record(messages: list[TaskstatsMessage], tid: int) -> TaskstatsMessage:
    (msg,) = [m for m in messages if m.aggregate == "pid" and m.id == tid]
    return msg


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.stem for c in CAPTURES])
def test_decode_captured_exits(capture: Path) -> None:
    scenarios, messages = load(capture)
    exit3 = pid_record(messages, scenarios["exit3"]).record
    assert exit3.version >= 1
    assert exit3.comm == "sh" and exit3.tid == scenarios["exit3"]
    assert exit3.exit_status == 3 << 8
    if exit3.version >= 12:
        assert exit3.tgid == exit3.tid
    assert exit3.elapsed_us > 0 and exit3.peak_rss_kb and exit3.peak_rss_kb > 0

    killed = pid_record(messages, scenarios["sigkill"]).record
    assert killed.comm == "sleep" and killed.exit_status & 0x7F == signal.SIGKILL
    assert killed.flags & 0x10  # AXSIG: killed by a signal

    writer = pid_record(messages, scenarios["writer"]).record
    assert writer.write_bytes is not None and writer.write_bytes >= 1 << 20
    assert writer.write_char is not None and writer.write_char >= 1 << 20


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.stem for c in CAPTURES])
def test_threads_sum_to_the_process(capture: Path) -> None:
    scenarios, messages = load(capture)
    pid = scenarios["threads"]
    threads = [m.record for m in messages if m.aggregate == "pid" and m.record.tgid == pid]
    assert len(threads) == 3  # the main thread and two workers
    tgid_msgs = [m for m in messages if m.aggregate == "tgid" and m.id == pid]
    assert len(tgid_msgs) == 1  # the process had several threads: the kernel adds an AGGR_TGID record
    total = sum_records(threads, leader_tid=pid)
    assert total.per_process
    assert total.cpu_user_us == sum(r.cpu_user_us for r in threads) > 0
    leader = next(r for r in threads if r.tid == pid)
    assert total.elapsed_us == leader.elapsed_us


def test_decode_respects_version_and_length() -> None:
    raw = bytes.fromhex(json.loads(CAPTURES[0].read_text())["datagrams"][0])
    stats = _stats_payload(raw)
    full = decode_taskstats(stats)
    old = bytearray(stats[:344])  # a version-9-sized struct: no ac_btime64, no ac_tgid
    old[0:2] = (9).to_bytes(2, sys.byteorder)
    dec = decode_taskstats(bytes(old))
    assert dec.tgid is None and dec.cpu_user_us == full.cpu_user_us and dec.comm == full.comm
    with pytest.raises(DecodeError):
        decode_taskstats(stats[:100])


def _stats_payload(datagram: bytes) -> bytes:
    # nlmsghdr(16) + genlmsghdr(4) + AGGR_PID nla(4) + PID nla(8) + STATS nla header(4): find it by its type
    pos = 16 + 4 + 4
    while pos < len(datagram):
        length = int.from_bytes(datagram[pos : pos + 2], sys.byteorder)
        atype = int.from_bytes(datagram[pos + 2 : pos + 4], sys.byteorder)
        if atype == 3:
            return datagram[pos + 4 : pos + length]
        pos += (length + 3) & ~3
    raise AssertionError("no stats attribute")


def test_truncated_datagram_is_a_decode_error() -> None:
    raw = bytes.fromhex(json.loads(CAPTURES[0].read_text())["datagrams"][0])
    with pytest.raises(DecodeError):
        parse_messages(raw[:-100] + b"")


def test_scan_locates_records_without_decoding() -> None:
    scenarios, messages = load(CAPTURES[0])
    raw = [bytes.fromhex(h) for h in json.loads(CAPTURES[0].read_text())["datagrams"]]
    scanned = [r for d in raw for r in scan_messages(d)]
    assert [(r.aggregate, r.id) for r in scanned] == [(m.aggregate, m.id) for m in messages]
    for r, m in zip(scanned, messages, strict=True):
        assert r.decode() == m
        if m.aggregate == "pid":
            assert r.tgid == m.record.tgid
    assert {r.tgid for r in scanned if r.aggregate == "pid"} >= set(scenarios.values())


# -- live --------------------------------------------------------------------------------------------------------
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.15: pass"


def _read_until(listener: TaskstatsListener, want: int) -> list[TaskstatsMessage]:
    def records(wait: float) -> list[TaskstatsMessage]:
        select.select([listener], [], [], wait)
        return [raw.decode() for raw in listener.read_raw() if raw.tgid == want]

    return collect(records, lambda got: any(m.aggregate == "pid" and m.id == want for m in got),
                   what=f"the taskstats record of {want}")  # fmt: skip


def test_live_listener_reports_cpu_and_status() -> None:
    with TaskstatsListener() as listener:
        proc = subprocess.Popen([sys.executable, "-c", BUSY + "\nraise SystemExit(9)"])
        proc.wait()
        messages = _read_until(listener, proc.pid)
    rec = pid_record(messages, proc.pid).record
    assert rec.exit_status == 9 << 8
    assert rec.cpu_user_us + rec.cpu_system_us >= 100_000
    assert rec.tgid == proc.pid and rec.ppid == os.getpid()


def test_close_deregisters() -> None:
    listener = TaskstatsListener()
    listener.close()
    listener.close()  # idempotent
    with TaskstatsListener() as again:  # a fresh registration works after the old one left
        proc = subprocess.Popen(["true"])
        proc.wait()
        assert pid_record(_read_until(again, proc.pid), proc.pid).record.comm == "true"


def test_watcher_accounting_adds_figures_to_real_exit_events() -> None:
    script = textwrap.dedent(f"""
        import threading
        def spin():
            {BUSY.replace(chr(10), chr(10) + "            ")}
        t = threading.Thread(target=spin); t.start(); t.join()
    """)
    with proctap.watch(events="exit", backend="netlink", accounting=True) as watcher:
        proc = subprocess.Popen([sys.executable, "-c", script])
        proc.wait()
        log = EventLog(watcher)
        log.wait_exit(proc.pid, forked=False)  # exits only: no Fork in the log
        exits = log.about([proc.pid], Exit)
    process_exit = next(e for e in exits if not e.is_thread)
    thread_exit = next(e for e in exits if e.is_thread)
    assert process_exit.accounting is not None and process_exit.accounting.per_process
    assert thread_exit.accounting is not None and not thread_exit.accounting.per_process
    assert thread_exit.accounting.cpu_user_us + thread_exit.accounting.cpu_system_us >= 100_000
    # the process's totals include the worker thread's CPU
    assert process_exit.accounting.cpu_user_us >= thread_exit.accounting.cpu_user_us


def test_watch_accounting_cli_adds_figures_to_exit_events() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    watch = subprocess.Popen(
        [sys.executable, "-m", "proctap", "watch", "--json", "-e", "exit", "--accounting", "-d", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert watch.stderr is not None and watch.stdout is not None
    watch.stderr.readline()  # the start message: the watcher is listening
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    busy.wait()
    found = None
    for line in watch.stdout:
        ev = json.loads(line)
        if ev["event"] == "exit" and ev["pid"] == busy.pid and not ev["is_thread"]:
            found = ev
            break
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=30)
    assert found is not None
    acct = found["accounting"]
    assert acct is not None and acct["cpu_user_us"] + acct["cpu_system_us"] >= 100_000
    assert acct["per_process"] is True


def test_fast_scan_agrees_with_the_generic_scan() -> None:
    from proctap.linux.taskstats import _scan_fast

    hits = 0
    for capture in CAPTURES:
        for h in json.loads(capture.read_text())["datagrams"]:
            data = bytes.fromhex(h)
            fast = _scan_fast(data)
            generic = scan_messages(data)
            if fast is not None:
                hits += 1
                assert [fast] == generic
            else:
                assert len(generic) != 1 or generic[0].aggregate != "pid"  # only multi-record datagrams fall back
        assert _scan_fast(data[:-8]) is None  # a truncated datagram is not taken for the usual layout
    assert hits >= 5
