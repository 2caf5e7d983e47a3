"""The pure tracefs parsers on files and ring-buffer pages captured from the real kernel (tests/tools/
capture_tracefs.py wrote tests/data/tracefs/), and a fuzz of the page decoder."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctap.errors import DecodeError
from proctap.linux.tracefs.format import (
    EventFormat,
    RecordDecoder,
    parse_format,
    parse_header_event,
    parse_header_page,
)
from proctap.linux.tracefs.instance import instance_owner, parse_stats
from proctap.linux.tracefs.ring import decode_page

DATA = os.path.join(os.path.dirname(__file__), "data", "tracefs")


def read(name: str) -> str:
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def fmt(system: str, event: str) -> EventFormat:
    return parse_format(read(f"formats/{system}__{event}.format"), system)


LAYOUT = parse_header_page(read("header_page"))
FACTS = json.loads(read("workload.json"))


def pages(name: str = "pages.bin") -> Iterator[tuple[int, bytes]]:
    with open(os.path.join(DATA, name), "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        cpu, size = struct.unpack_from("=II", data, pos)
        yield cpu, data[pos + 8 : pos + 8 + size]
        pos += 8 + size


def records(name: str = "pages.bin") -> list[tuple[int, int, bytes, int, int]]:
    """(timestamp, type id, page, start, length) of every record, in timestamp order."""
    out = []
    for _cpu, page in pages(name):
        for ts, start, length in decode_page(page, LAYOUT).records:
            out.append((ts, struct.unpack_from("=H", page, start)[0], page, start, length))
    return sorted(out, key=lambda r: r[0])


def decoded(system: str, event: str, names: tuple[str, ...]) -> list[tuple[object, ...]]:
    f = fmt(system, event)
    dec = RecordDecoder(f, ("common_pid", *names))
    return [dec.decode(page, start, length) for _ts, tid, page, start, length in records() if tid == f.id]


# -- description files ------------------------------------------------------------------------------------------
def test_header_page_and_event_layouts() -> None:
    assert (LAYOUT.timestamp_offset, LAYOUT.commit_offset, LAYOUT.commit_size, LAYOUT.data_offset) == (0, 8, 8, 16)
    assert LAYOUT.page_size == 4096
    layout = parse_header_event(read("header_event"))
    assert (layout.type_len_bits, layout.time_delta_bits, layout.padding, layout.time_extend) == (5, 27, 29, 30)


def test_format_of_sched_process_fork_has_data_loc_comms() -> None:
    f = fmt("sched", "sched_process_fork")
    assert f.name == "sched_process_fork" and f.id > 0
    comm = f.field("parent_comm")
    assert comm is not None and comm.is_data_loc and comm.is_string and comm.size == 4
    pid = f.field("child_pid")
    assert pid is not None and pid.type == "pid_t" and pid.signed and pid.size == 4
    assert f.field("common_pid") is not None and f.field("nope") is None


def test_format_of_task_newtask() -> None:
    f = fmt("task", "task_newtask")
    comm, flags = f.field("comm"), f.field("clone_flags")
    assert comm is not None and comm.type == "char[16]" and comm.is_string and not comm.is_data_loc
    assert flags is not None and flags.size == 8 and not flags.signed


def test_bad_format_texts_are_decode_errors() -> None:
    with pytest.raises(DecodeError):
        parse_format("hello")
    with pytest.raises(DecodeError):
        parse_header_page("field: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;")
    with pytest.raises(DecodeError):
        parse_header_event(read("header_event").replace("30", "29"))
    with pytest.raises(DecodeError, match="no field"):
        RecordDecoder(fmt("task", "task_newtask"), ("nope",))


def test_optional_field_missing_decodes_as_none() -> None:
    f = fmt("task", "task_newtask")
    dec = RecordDecoder(f, ("pid", "group_dead"), optional=("group_dead",))
    (_ts, _tid, page, start, length) = next(r for r in records() if r[1] == f.id)
    pid, missing = dec.decode(page, start, length)
    assert isinstance(pid, int) and missing is None


# -- records of the captured workload ---------------------------------------------------------------------------
def test_newtask_records_of_the_workload() -> None:
    rows = decoded("task", "task_newtask", ("pid", "comm", "clone_flags"))
    by_child = {pid: (parent, comm, flags) for parent, pid, comm, flags in rows}
    capturer = FACTS["capturer"]
    for key in ("exit3", "exec_true", "killed"):
        parent, comm, flags = by_child[FACTS[key]]
        assert parent == capturer and comm.startswith("python")
        assert not flags & 0x10000, "a process, not a thread"
    parent, _comm, flags = by_child[FACTS["thread"]]
    assert parent == capturer and flags & 0x10000, "CLONE_THREAD"


def test_fork_records_decode_data_loc_strings() -> None:
    rows = decoded("sched", "sched_process_fork", ("parent_comm", "parent_pid", "child_comm", "child_pid"))
    mine = [r for r in rows if r[4] == FACTS["exit3"]]
    assert len(mine) == 1
    _common, parent_comm, parent_pid, child_comm, _child = mine[0]
    assert parent_pid == FACTS["capturer"] and parent_comm.startswith("python") and child_comm == parent_comm


def test_exec_exit_and_syscall_records() -> None:
    execs = decoded("sched", "sched_process_exec", ("filename", "pid", "old_pid"))
    assert (FACTS["exec_true"], "/bin/true", FACTS["exec_true"], FACTS["exec_true"]) in execs
    exits = {r[2]: r for r in decoded("sched", "sched_process_exit", ("comm", "pid", "group_dead"))}
    assert exits[FACTS["exit3"]][3] == 1 and exits[FACTS["thread"]][3] == 0, "group_dead: process vs thread"
    assert exits[FACTS["exec_true"]][1] == "true", "comm after exec"
    groups = decoded("syscalls", "sys_enter_exit_group", ("error_code",))
    assert (FACTS["exit3"], 3) in groups
    thread_exits = decoded("syscalls", "sys_enter_exit", ("error_code",))
    assert (FACTS["thread"], 0) in thread_exits
    generated = decoded("signal", "signal_generate", ("sig", "pid", "result"))
    assert (FACTS["capturer"], 9, FACTS["killed"], 0) in generated
    delivered = decoded("signal", "signal_deliver", ("sig", "sa_handler"))
    assert (FACTS["killed"], 9, 0) in delivered


def test_timestamps_are_monotonic_within_each_page() -> None:
    for _cpu, page in pages():
        decoded_page = decode_page(page, LAYOUT)
        stamps = [ts for ts, _s, _l in decoded_page.records]
        assert stamps == sorted(stamps) and stamps[0] >= decoded_page.timestamp
        assert decoded_page.missed is None


def test_overrun_pages_carry_the_lost_count() -> None:
    missed = [decode_page(page, LAYOUT).missed for _cpu, page in pages("pages_overrun.bin")]
    counts = [m for m in missed if m is not None]
    assert counts and all(c > 0 for c in counts), missed


def test_data_loc_pointing_outside_the_record_is_a_decode_error() -> None:
    f = fmt("sched", "sched_process_exec")
    dec = RecordDecoder(f, ("filename",))
    (_ts, _tid, page, start, length) = next(r for r in records() if r[1] == f.id)
    assert isinstance(dec.decode(page, start, length)[0], str)
    with pytest.raises(DecodeError):
        dec.decode(page, start, 12)  # shorter than the fixed part
    broken = bytearray(page)
    struct.pack_into("=I", broken, start + 8, (200 << 16) | 20)  # 200 bytes at offset 20: beyond the record
    with pytest.raises(DecodeError):
        dec.decode(bytes(broken), start, length)


def test_older_kernel_layout_char16_comms() -> None:
    """Kernels before 6.x print sched_process_fork's comms as char[16] (this text is the 5.x/6.1 layout, from the
    kernel's include/trace/events/sched.h): the same decoder request works on both layouts."""
    text = (
        "name: sched_process_fork\nID: 300\nformat:\n"
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
        "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
        "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
        "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n"
        "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n"
        "\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n"
        "\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n"
        "\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n"
    )
    dec = RecordDecoder(parse_format(text, "sched"), ("parent_comm", "parent_pid", "child_comm", "child_pid"))
    record = struct.pack("=HBBi16si16si", 300, 0, 0, 10, b"bash\0junk", 10, b"bash", 11)
    assert dec.decode(record, 0, len(record)) == ("bash", 10, "bash", 11)


# -- small parsers ------------------------------------------------------------------------------------------------
def test_stats_and_instance_names() -> None:
    text = "entries: 5\noverrun: 7\ncommit overrun: 0\nbytes: 96\noldest event ts:  1.5\ndropped events: 2\n"
    assert parse_stats(text) == {"entries": 5, "overrun": 7, "commit_overrun": 0, "bytes": 96, "dropped_events": 2}
    assert instance_owner("proctap-123-456-0") == (123, 456)
    assert instance_owner("other-123-456-0") is None and instance_owner("proctap-x") is None


# -- fuzz -----------------------------------------------------------------------------------------------------------
REAL_PAGES = [page for _cpu, page in pages()] + [page for _cpu, page in pages("pages_overrun.bin")]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4200))
def test_fuzz_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_page(data, LAYOUT)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(REAL_PAGES), st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=12),
       st.integers(0, 4096))  # fmt: skip
def test_fuzz_mutated_real_pages(page: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(page)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    try:
        result = decode_page(bytes(mutated[: max(cut, 0) or len(mutated)]), LAYOUT)
    except DecodeError:
        return
    for _ts, start, length in result.records:
        assert start >= 16 and start + length <= len(mutated)


def test_timestamps_match_the_workload_clock_across_time_extends() -> None:
    """The capture paused 0.3 s (> 2**27 ns) between steps on one CPU, so its pages hold time-extend events; the
    decoded timestamps of the workload's records fall inside the CLOCK_MONOTONIC windows the workload noted."""
    extends = 0
    for _cpu, page in pages():
        pos, end = 16, 16 + (struct.unpack_from("=Q", page, 8)[0] & ((1 << 27) - 1))
        while pos + 4 <= end:  # count type_len 30 words along the same walk the decoder does
            word = struct.unpack_from("=I", page, pos)[0]
            type_len = word & 31
            if 1 <= type_len <= 28:
                pos += 4 + 4 * type_len
            elif type_len == 0:
                pos += 8 + ((struct.unpack_from("=I", page, pos + 4)[0] - 4 + 3) & ~3)
            elif type_len == 29:
                if word >> 5 == 0:
                    break
                pos += 4 + struct.unpack_from("=I", page, pos + 4)[0]
            else:
                extends += type_len == 30
                pos += 8
    assert extends > 0, "the capture should contain time-extend events"
    newtask = fmt("task", "task_newtask")
    dec = RecordDecoder(newtask, ("pid",))
    stamps = {dec.decode(page, start, length)[0]: ts for ts, tid, page, start, length in records() if tid == newtask.id}
    assert FACTS["t_start"] <= stamps[FACTS["exit3"]] <= FACTS["t_exit3"]
    assert FACTS["t_thread"] <= stamps[FACTS["thread"]] <= FACTS["t_end"]
    assert FACTS["t_thread"] <= stamps[FACTS["killed"]] <= FACTS["t_end"]
