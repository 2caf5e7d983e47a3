"""The proc connector decoder on datagrams captured from the real kernel (tests/tools/capture_cn_proc.py), fuzzed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctap.backends.netlink import EventBuilder
from proctap.errors import DecodeError
from proctap.events import Comm, Exec, Exit, Fork, Gid, Lost, Sid, Uid
from proctap.linux.clock import Clock
from proctap.linux.cn_proc import (
    CN_MSG,
    NLMSGHDR,
    McastOp,
    What,
    build_subscribe,
    parse_datagram,
    parse_messages,
)

DATA = Path(__file__).parent / "data" / "netlink"


def captured() -> list[bytes]:
    blob = (DATA / "workload.bin").read_bytes()
    out, offset = [], 0
    while offset < len(blob):
        (n,) = struct.unpack_from("=I", blob, offset)
        out.append(blob[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return out


FACTS = json.loads((DATA / "workload.json").read_text())


def test_captured_datagrams_decode_to_the_workload() -> None:
    records = [parse_datagram(d) for d in captured()]
    assert all(len(d) == 76 for d in captured())
    by_what: dict[int, list] = {}
    for r in records:
        by_what.setdefault(r.what, []).append(r.fields())
    forks = {f["child_pid"]: f for f in by_what[What.FORK]}
    for key in ("exit3", "killed", "exec_true", "comm_sid_uid"):
        assert forks[FACTS[key]]["parent_tgid"] == FACTS["capturer"]
    exits = {e["process_pid"]: e for e in by_what[What.EXIT]}
    assert exits[FACTS["exit3"]]["exit_code"] == 0x300
    assert exits[FACTS["killed"]]["exit_code"] == 9
    assert exits[FACTS["exec_true"]]["exit_code"] == 0
    assert exits[FACTS["exit3"]]["exit_signal"] == 17  # SIGCHLD to the parent, not a death signal
    assert [e["process_pid"] for e in by_what[What.EXEC]] == [FACTS["exec_true"]]
    (comm,) = by_what[What.COMM]
    assert comm["comm"].rstrip(b"\0") == b"proctap-capt"
    assert by_what[What.UID][0]["euid"] == 65534 and by_what[What.GID][0]["egid"] == 65534
    assert by_what[What.SID][0]["process_pid"] == FACTS["comm_sid_uid"]


def test_builder_turns_captured_records_into_events() -> None:
    builder = EventBuilder(Clock())
    out: list = []
    for d in captured():
        builder.build(parse_datagram(d), out)
    exits = {e.pid: e for e in out if isinstance(e, Exit)}
    assert exits[FACTS["exit3"]].exit_code == 3 and exits[FACTS["exit3"]].signal is None
    assert exits[FACTS["killed"]].signal == 9 and exits[FACTS["killed"]].signal_name == "SIGKILL"
    forks = {e.pid: e for e in out if isinstance(e, Fork)}
    assert forks[FACTS["exit3"]].parent_pid == FACTS["capturer"] and not forks[FACTS["exit3"]].is_thread
    # the key of the exit is the key of the fork: same pid, same start
    assert exits[FACTS["exit3"]].key == forks[FACTS["exit3"]].key
    assert exits[FACTS["exit3"]].lifetime_ns is not None and exits[FACTS["exit3"]].lifetime_ns > 0
    assert [e.pid for e in out if isinstance(e, Exec)] == [FACTS["exec_true"]]
    assert [e.comm for e in out if isinstance(e, Comm)] == ["proctap-capt"]
    assert [(e.ruid, e.euid) for e in out if isinstance(e, Uid)] == [(65534, 65534)]
    assert [(e.rgid, e.egid) for e in out if isinstance(e, Gid)] == [(65534, 65534)]
    assert [e.pid for e in out if isinstance(e, Sid)] == [FACTS["comm_sid_uid"]]


def with_seq(seq: int, cpu: int) -> bytes:
    """A captured datagram renumbered: cn_msg.seq and proc_event.cpu."""
    d = bytearray(captured()[0])
    struct.pack_into("=I", d, NLMSGHDR.size + 8, seq)
    struct.pack_into("=I", d, 40, cpu)
    return bytes(d)


def test_sequence_gap_on_one_cpu_is_reported_exactly() -> None:
    builder = EventBuilder(Clock())
    out: list = []
    for seq, cpu in [(10, 0), (11, 0), (5, 1), (15, 0), (6, 1), (9, 1)]:
        builder.build(parse_datagram(with_seq(seq, cpu)), out)
    lost = [e for e in out if isinstance(e, Lost)]
    assert [(e.count, e.cpu) for e in lost] == [(3, 0), (2, 1)]
    assert builder.gap_lost == 5


def test_an_overrun_before_a_cpus_first_event_is_reported_of_unknown_size() -> None:
    """A CPU's counter starts at boot: losses before its first event received give no gap, so they are unknown."""
    builder = EventBuilder(Clock())
    out: list = []
    builder.build(parse_datagram(with_seq(10, 0)), out)
    builder.overrun()  # ENOBUFS: events of cpu 0 and of cpu 1 (never heard from yet) were dropped
    for seq, cpu in [(14, 0), (7, 1), (8, 1)]:
        builder.build(parse_datagram(with_seq(seq, cpu)), out)
    lost = [(e.count, e.cpu) for e in out if isinstance(e, Lost)]
    assert lost == [(3, 0), (None, 1)]
    assert (builder.gap_lost, builder.unknown_lost) == (3, 1)


def test_subscribe_message_layout() -> None:
    legacy = build_subscribe(McastOp.LISTEN)
    assert len(legacy) == 40 and NLMSGHDR.unpack_from(legacy)[0] == 40
    assert CN_MSG.unpack_from(legacy, 16)[:2] == (1, 1) and struct.unpack_from("=I", legacy, 36) == (1,)
    filtered = build_subscribe(McastOp.LISTEN, event_mask=int(What.EXEC))
    assert len(filtered) == 44 and struct.unpack_from("=II", filtered, 36) == (1, 2)


def test_parse_messages_splits_a_buffer() -> None:
    data = b"".join(captured()[:3])
    assert len(parse_messages(data)) == 3


@pytest.mark.parametrize("cut", [0, 10, 35, 51, 60])
def test_truncated_datagram_is_a_decode_error(cut: int) -> None:
    with pytest.raises(DecodeError):
        parse_datagram(captured()[0][:cut])


def test_foreign_connector_message_is_a_decode_error() -> None:
    d = bytearray(captured()[0])
    struct.pack_into("=I", d, 16, 7)
    with pytest.raises(DecodeError, match="not a proc connector"):
        parse_datagram(bytes(d))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        records = parse_messages(data)
    except DecodeError:
        return
    builder = EventBuilder(Clock())
    out: list = []
    for r in records:
        builder.build(r, out)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 75), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_real_datagrams(position: int, noise: bytes) -> None:
    d = bytearray(captured()[0])
    d[position : position + len(noise)] = noise
    try:
        rec = parse_datagram(bytes(d))
    except DecodeError:
        return
    builder = EventBuilder(Clock())
    builder.build(rec, [])
