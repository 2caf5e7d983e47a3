"""The bpf backend and its toolkit, against the real kernel (root, BTF)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog import collect
from proctap.backends.base import BackendConfig
from proctap.backends.bpf import BpfBackend, EventDecoder, _verifier_summary
from proctap.errors import DecodeError, ProctapError
from proctap.events import Event, EventKind, Exec, ExecFailed, Exit, Fork, ForkFailed, Lost, Origin
from proctap.linux.bpf import cache, programs
from proctap.linux.bpf import records as rec
from proctap.linux.bpf.btf import ENUM, FUNC_PROTO, STRUCT, TYPEDEF, vmlinux
from proctap.linux.bpf.insn import DW, FP, R0, R1, R2, Asm, AsmError, Helper, W
from proctap.linux.bpf.programs import Layout
from proctap.linux.bpf.ringbuf import RingBuffer
from proctap.linux.bpf.syscall import (
    BpfError,
    MapType,
    ProgType,
    create_map,
    load_program,
    obj_info,
    prog_fd_by_id,
    prog_ids,
)
from proctap.linux.clock import Clock
from proctap.linux.tracefs import instance as tracefs_instance
from proctap.watcher import Watcher

AVAILABLE = BpfBackend.probe()
needs_bpf = pytest.mark.skipif(not AVAILABLE, reason=f"bpf backend unavailable: {AVAILABLE.reason}")
DATA = Path(__file__).parent / "data"


# -- helpers -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def backend(**kwargs: object) -> Iterator[BpfBackend]:
    b = BpfBackend(BackendConfig(**kwargs))  # type: ignore[arg-type]
    try:
        yield b
    finally:
        b.close()


def of_pid(events: list[Event], pid: int) -> list[Event]:
    return [e for e in events if e.pid == pid and not isinstance(e, Lost)]


def exited(pid: int) -> Callable[[list[Event]], bool]:
    return lambda evs: any(isinstance(e, Exit) and e.pid == pid and not e.is_thread for e in evs)


def run_and_collect(b: BpfBackend, argv: list[bytes] | list[str], **popen: object) -> tuple[int, list[Event]]:
    proc = subprocess.Popen(argv, **popen)  # type: ignore[call-overload]
    proc.wait()
    return proc.pid, of_pid(collect(b, exited(proc.pid)), proc.pid)


def proctap_programs() -> list[str]:
    """Names of loaded BPF programs that start with proctap (struct bpf_prog_info.name, offset from BTF)."""
    name_off = vmlinux().member("bpf_prog_info", "name").offset
    names = []
    for prog_id in prog_ids():
        try:
            fd = prog_fd_by_id(prog_id)
        except BpfError:
            continue  # unloaded meanwhile
        try:
            info = obj_info(fd, name_off + 16)
        finally:
            os.close(fd)
        name = info[name_off : name_off + 16].split(b"\0", 1)[0].decode()
        if name.startswith("proctap"):
            names.append(name)
    return names


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- instruction encoding -----------------------------------------------------------------------------------------


def test_encodes_known_instructions() -> None:
    a = Asm()
    a.mov(R0, 0)  # b7: ALU64 | MOV | K
    a.mov(R1, R2)  # bf: ALU64 | MOV | X, regs byte src<<4 | dst
    a.ldx(DW, R0, R1, 8)  # 79
    a.stx(W, FP, -4, R0)  # 63
    a.call(Helper.ringbuf_output)  # 85, imm 130
    a.exit()  # 95
    code = a.assemble()
    assert code == bytes.fromhex(
        "b700000000000000 bf21000000000000 7910080000000000 630afcff00000000 8500000082000000 9500000000000000"
    )


def test_ld_imm64_takes_two_slots_and_jumps_count_them() -> None:
    a = Asm()
    a.jeq(R1, 0, "end")
    a.ld_imm64(R2, 0x1122334455667788)
    a.label("end")
    a.exit()
    code = a.assemble()
    assert len(code) == 4 * 8
    code_, regs, off, imm = struct.unpack_from("<BBhi", code, 0)
    assert (code_, regs, off, imm) == (0x15, 0x01, 2, 0)  # skips both slots of the 64-bit load
    assert struct.unpack_from("<BBhi", code, 8) == (0x18, 0x02, 0, 0x55667788)
    assert struct.unpack_from("<BBhi", code, 16) == (0, 0, 0, 0x11223344)


def test_backward_jump_and_label_errors() -> None:
    a = Asm()
    a.label("top")
    a.mov(R0, 1)
    a.ja("top")
    assert struct.unpack_from("<BBhi", a.assemble(), 8) == (0x05, 0, -2, 0)
    b = Asm()
    b.ja("nowhere")
    with pytest.raises(AsmError, match="unknown label"):
        b.assemble()
    with pytest.raises(AsmError, match="duplicate"):
        b.label("x")
        b.label("x")


def test_helper_ids_agree_with_kernel_btf() -> None:
    btf = vmlinux()
    for helper in Helper:
        assert btf.enum_value("bpf_func_id", f"BPF_FUNC_{helper.name}") == helper.value


def test_uapi_constants_agree_with_kernel_btf() -> None:
    from proctap.linux.bpf import programs, syscall

    btf = vmlinux()
    for name, value in [
        ("BPF_RB_NO_WAKEUP", programs.BPF_RB_NO_WAKEUP), ("BPF_RB_FORCE_WAKEUP", programs.BPF_RB_FORCE_WAKEUP),
        ("BPF_RB_AVAIL_DATA", programs.BPF_RB_AVAIL_DATA), ("BPF_RB_CONS_POS", programs.BPF_RB_CONS_POS),
        ("BPF_TRACE_RAW_TP", syscall.BPF_TRACE_RAW_TP), ("BPF_MAP_TYPE_RINGBUF", syscall.MapType.RINGBUF),
        ("BPF_MAP_TYPE_PERCPU_ARRAY", syscall.MapType.PERCPU_ARRAY),
        ("BPF_PROG_TYPE_TRACING", syscall.ProgType.TRACING),
        ("BPF_PROG_TYPE_TRACEPOINT", syscall.ProgType.TRACEPOINT), ("BPF_PROG_LOAD", syscall.Cmd.PROG_LOAD),
        ("BPF_RAW_TRACEPOINT_OPEN", syscall.Cmd.RAW_TRACEPOINT_OPEN), ("BPF_ANY", programs.BPF_ANY),
    ]:  # fmt: skip
        assert btf.enumerator(name) == value, name
    # the offsets in union bpf_attr that syscall.load_program and create_map fill
    for field, offset in [
        ("prog_type", 0), ("insn_cnt", 4), ("insns", 8), ("license", 16), ("log_level", 24), ("log_size", 28),
        ("log_buf", 32), ("prog_name", 48), ("expected_attach_type", 68), ("attach_btf_id", 108),
        ("map_type", 0), ("key_size", 4), ("value_size", 8), ("max_entries", 12), ("map_name", 28),
    ]:  # fmt: skip
        assert btf.member("bpf_attr", field).offset == offset, field


# -- BTF ----------------------------------------------------------------------------------------------------------


@needs_bpf
def test_layout_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCTAP_CACHE_DIR", str(tmp_path))
    parsed = Layout.from_btf(vmlinux(), platform.machine())
    assert cache.kernel_layout.__wrapped__() == parsed  # computed, then stored
    assert len(list(tmp_path.glob("btf-layout-*.json"))) == 1
    assert cache.kernel_layout.__wrapped__() == parsed  # read back
    assert Layout.from_json(parsed.to_json()) == parsed
    assert parsed.tracepoints.keys() >= {"task_newtask", "sched_process_exec", "sched_process_exit"}


@needs_bpf
def test_layout_cache_ignores_a_damaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCTAP_CACHE_DIR", str(tmp_path))
    good = cache.kernel_layout.__wrapped__()
    (stored,) = tmp_path.glob("btf-layout-*.json")
    for damage in ("{not json", json.dumps({"schema": cache.SCHEMA, "layout": {"task_tgid": "0"}}),
                   json.dumps({"schema": cache.SCHEMA - 1, "layout": good.to_json()})):  # fmt: skip
        stored.write_text(damage)
        assert cache.kernel_layout.__wrapped__() == good
        assert json.loads(stored.read_text())["layout"] == good.to_json()  # rewritten


def test_layout_cache_key_follows_the_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCTAP_CACHE_DIR", str(tmp_path))
    blobs = (b"one kernel", b"another kernel", b"another kernel!")
    names = {os.path.basename(cache._cache_file(blob)) for blob in blobs}
    assert len(names) == 3 and all(n.startswith(f"btf-layout-{platform.machine()}-") for n in names)


def test_btf_task_struct_known_facts() -> None:
    btf = vmlinux()
    pid = btf.member("task_struct", "pid")
    tgid = btf.member("task_struct", "tgid")
    assert pid.size == tgid.size == 4
    assert tgid.offset == pid.offset + 4  # declared next to each other in include/linux/sched.h
    assert btf.member("task_struct", "comm").size == 16  # TASK_COMM_LEN
    assert btf.member("task_struct", "start_boottime").size == 8
    assert btf.member("task_struct", "real_parent").size == 8
    assert btf.name(btf.pointee(btf.member("task_struct", "real_parent").type_id)) == "task_struct"
    # mm_struct's fields sit in an anonymous struct: found through it, arg_end right after arg_start
    start, end = btf.member("mm_struct", "arg_start"), btf.member("mm_struct", "arg_end")
    assert end.offset == start.offset + 8
    # a path through an embedded struct: list_head is two pointers
    assert btf.member("task_struct", "children.next").offset + 8 == btf.member("task_struct", "children.prev").offset


def test_btf_uapi_layouts_and_tracepoints() -> None:
    btf = vmlinux()
    # struct bpf_prog_info is UAPI: name[16] has been at byte 64 since Linux 4.15
    assert btf.member("bpf_prog_info", "name").offset == 64
    fork = btf.func_params("btf_trace_sched_process_fork")  # (void *__data, parent, child)
    assert len(fork) == 3
    assert btf.name(btf.pointee(fork[1][1])) == "task_struct"
    assert btf.kind(btf.find("btf_trace_sched_process_exec", TYPEDEF)) == TYPEDEF
    assert btf.kind(btf.find("task_struct", STRUCT)) == STRUCT
    assert btf.kind(btf.find("bpf_func_id", ENUM)) == ENUM
    with pytest.raises(KeyError):
        btf.find("no_such_struct_proctap", STRUCT)
    with pytest.raises(KeyError):
        btf.member("task_struct", "no_such_member")
    assert FUNC_PROTO == 13


def test_btf_bitfield_member() -> None:
    btf = vmlinux()
    # task_struct has single-bit flags (sched_reset_on_fork:1 ...) declared with kind_flag bitfield offsets
    m = btf.member("task_struct", "sched_reset_on_fork")
    assert m.bit_size == 1 and m.size == 0


def test_btf_rejects_garbage() -> None:
    from proctap.linux.bpf.btf import Btf

    with pytest.raises(DecodeError):
        Btf(b"\0" * 40)
    with pytest.raises(DecodeError):
        Btf(b"")


# -- record decoding ----------------------------------------------------------------------------------------------


def make_record(rtype: int, payload: bytes = b"", **fields: int) -> bytes:
    values = {"flags": 0, "ts": 1, "tgid": 2, "tid": 3, "start": 4, "task_start": 5, "ppid": 6, "uid": 7, "gid": 8,
              "aux32": 9, "cgroup": 10, "aux64": 11, "len_a": 0, "len_b": 0}  # fmt: skip
    values.update(fields)
    header = rec.HEADER.pack(
        rtype, values["flags"], values["ts"], values["tgid"], values["tid"], values["start"], values["task_start"],
        values["ppid"], values["uid"], values["gid"], values["aux32"], values["cgroup"], b"comm\0junk",
        values["aux64"], values["len_a"], values["len_b"],
    )  # fmt: skip
    return header + payload


def decode(data: bytes, offset: int = 0, length: int | None = None) -> list[Event]:
    """The events the backend's decoder makes of one record."""
    out: list[Event] = []
    EventDecoder(Clock()).decode(data, offset, len(data) - offset if length is None else length, out)
    return out


def test_decode_exec_record() -> None:
    fname = b"/bin/x\0"
    args = b"x\0\0a b\0\xff\0"
    (r,) = decode(make_record(rec.TYPE_EXEC, fname + args, len_a=len(fname), len_b=len(args), aux64=4))
    assert isinstance(r, Exec)
    assert r.filename == "/bin/x"
    assert r.argv == ("x", "", "a b", "\udcff")
    assert not r.argv_truncated and r.comm == "comm"
    (t,) = decode(make_record(rec.TYPE_EXEC, fname + args[:5], len_a=len(fname), len_b=len(args)))
    assert isinstance(t, Exec)
    assert t.argv_truncated and t.argv == ("x", "", "a ")


def test_one_decoder_remembers_exec_payloads_exactly() -> None:
    """A storm repeats a few command lines: one decoder decodes each payload once and shares the result; the same
    bytes with another announced length (truncated) or a malformed record are never taken for a remembered one."""
    decoder = EventDecoder(Clock())
    fname, args = b"/bin/x\0", b"x\0-c\0"
    whole = make_record(rec.TYPE_EXEC, fname + args, len_a=len(fname), len_b=len(args))
    cut = make_record(rec.TYPE_EXEC, fname + args, len_a=len(fname), len_b=len(args) + 4)
    out: list[Event] = []
    for record in (whole, whole, cut, whole):
        decoder.decode(record, 0, len(record), out)
    first, second, truncated, again = out
    assert isinstance(first, Exec) and isinstance(second, Exec) and isinstance(truncated, Exec)
    assert first.argv == ("x", "-c") and second.argv is first.argv and not second.argv_truncated
    assert truncated.argv == ("x", "-c", "") and truncated.argv_truncated
    assert again == first
    bad = make_record(rec.TYPE_EXEC, b"x\0y", len_a=0, len_b=3)  # complete argv without NUL
    for _ in range(2):
        with pytest.raises(DecodeError):
            decoder.decode(bad, 0, len(bad), [])


def exec_failed_record(fname: bytes, args: bytes, argc: int, *, syscall: int = 0, ret: int = -2, flags: int = 0,
                       **fields: int) -> bytes:  # fmt: skip
    return make_record(rec.TYPE_EXEC_FAILED, fname + args, len_a=len(fname), len_b=len(args),
                       aux32=syscall | argc << 16, aux64=ret & (2**64 - 1), flags=flags, **fields)  # fmt: skip


def test_decode_exec_failed_record() -> None:
    (r,) = decode(exec_failed_record(b"/no/such\0", b"x\0\0a b\0\xff\0", 4, syscall=1, ret=-13, start=77))
    assert isinstance(r, ExecFailed)
    assert (r.pid, r.tid, r.start_ns) == (2, 3, 77)
    assert r.errno == 13 and r.errno_name == "EACCES" and r.syscall == "execveat" and r.comm == "comm"
    assert r.filename == "/no/such" and r.argv == ("x", "", "a b", "\udcff") and r.argc == 4
    assert not r.argv_truncated
    # cut by the argv limit: what fitted, the true argc
    (t,) = decode(exec_failed_record(b"/x\0", b"x\0ab\0", 7, flags=rec.FLAG_ARGV_TRUNCATED))
    assert isinstance(t, ExecFailed)
    assert t.argv == ("x", "ab") and t.argc == 7 and t.argv_truncated and t.errno_name == "ENOENT"
    # more arguments than the program counts; argv unreadable; the filename unreadable; an empty argv
    (u,) = decode(exec_failed_record(b"/x\0", b"", 640, flags=rec.FLAG_ARGV_TRUNCATED | rec.FLAG_ARGC_UNKNOWN))
    assert isinstance(u, ExecFailed) and u.argc is None and u.argv == () and u.argv_truncated
    (v,) = decode(exec_failed_record(b"", b"", 1, flags=rec.FLAG_ARGV_UNREADABLE))
    assert isinstance(v, ExecFailed) and v.filename is None and v.argv is None and not v.argv_truncated
    (w,) = decode(exec_failed_record(b"\0", b"", 0))
    assert isinstance(w, ExecFailed) and w.filename == "" and w.argv == () and w.argc == 0


def test_decode_rejects_malformed() -> None:
    with pytest.raises(DecodeError):
        decode(b"\0" * 95)
    with pytest.raises(DecodeError):
        decode(make_record(99))
    with pytest.raises(DecodeError):
        decode(make_record(rec.TYPE_FORK, b"x"))
    with pytest.raises(DecodeError):
        decode(make_record(rec.TYPE_EXEC, b"ab", len_a=3))
    with pytest.raises(DecodeError):
        decode(make_record(rec.TYPE_EXEC, b"a\0b\0", len_a=0, len_b=2))
    with pytest.raises(DecodeError):
        decode(make_record(rec.TYPE_EXEC, b"ab", len_a=0, len_b=2))  # complete argv without NUL
    with pytest.raises(DecodeError):
        decode(exec_failed_record(b"/x\0", b"a\0", 1) + b"extra")  # more bytes than announced
    with pytest.raises(DecodeError):
        decode(exec_failed_record(b"/x", b"a\0", 1))  # filename without NUL
    with pytest.raises(DecodeError):
        decode(exec_failed_record(b"/x\0", b"a", 1))  # argv without NUL
    with pytest.raises(DecodeError):
        decode(exec_failed_record(b"/x\0", b"a\0", 2))  # complete argv, wrong argc


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoder_raw_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@settings(max_examples=400, deadline=None)
@given(
    rtype=st.sampled_from([rec.TYPE_FORK, rec.TYPE_EXEC, rec.TYPE_EXIT, rec.TYPE_FORK_FAILED, rec.TYPE_EXEC_FAILED,
                           0, 6]),
    payload=st.binary(max_size=200),
    len_a=st.integers(0, 2**32 - 1),
    len_b=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 7),
)
def test_fuzz_decoder_structured(rtype: int, payload: bytes, len_a: int, len_b: int, flags: int) -> None:
    data = make_record(rtype, payload, len_a=len_a, len_b=len_b, flags=flags)
    try:
        events = decode(data)
    except DecodeError:
        return
    for r in events:
        if isinstance(r, Exec) and r.argv is not None:
            assert r.argv_truncated == (len(payload) - len_a < len_b)
        if isinstance(r, ExecFailed):
            assert len_a + len_b == len(payload) and (r.filename is None) == (len_a == 0)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=8).map(lambda b: b.replace(b"\0", b"")), max_size=5), st.booleans())
def test_argv_decoded_whole_is_argv_decoded_one_by_one(args: list[bytes], truncated: bool) -> None:
    """decode_argv decodes the area once and splits the text; each argument must be what decoding it alone gives,
    whatever its bytes (broken UTF-8 sequences cut by the NUL included)."""
    raw = b"\0".join(args) + (b"" if truncated or not args else b"\0")
    expected = tuple(part.decode("utf-8", "surrogateescape") for part in b"\0".join(args).split(b"\0"))
    assert rec.decode_argv(raw, truncated) == (expected if args or truncated else ())


@needs_bpf
def test_decode_captured_records() -> None:
    """Records captured from the real kernel by scripts in this test's capture mode (tests/data/bpf_records.bin)."""
    blob = (DATA / "bpf_records.bin").read_bytes()
    pos = 0
    decoded: list[Event] = []
    decoder = EventDecoder(Clock())
    while pos < len(blob):
        (length,) = struct.unpack_from("<I", blob, pos)
        decoder.decode(blob, pos + 4, length, decoded)
        pos += 4 + length
    execs = [r for r in decoded if isinstance(r, Exec)]
    assert any(r.argv == ("/bin/echo", "captured", "", "a b") for r in execs)
    # the exit of the last (here the only) thread: the process Exit, named after its leader
    exits = [r for r in decoded if isinstance(r, Exit) and r.comm == "echo"]
    assert exits and exits[0].status == 0 and not exits[0].is_thread and exits[0].pid == exits[0].tid


def test_decode_captured_exec_failed_records() -> None:
    """A child's failed execs, captured from the kernel (``capture_bpf_records.py exec_failed``): ENOENT with an
    awkward argv, EACCES, fexecve (execveat with an empty name) and a NULL argv."""
    blob = (DATA / "bpf_exec_failed_records.bin").read_bytes()
    pos = 0
    decoded: list[Event] = []
    decoder = EventDecoder(Clock())
    while pos < len(blob):
        (length,) = struct.unpack_from("<I", blob, pos)
        decoder.decode(blob, pos + 4, length, decoded)
        pos += 4 + length
    assert all(isinstance(r, ExecFailed) for r in decoded) and len({r.pid for r in decoded}) == 1
    got = [(r.errno_name, r.filename, r.argv, r.argc, r.syscall) for r in decoded if isinstance(r, ExecFailed)]
    assert got == [
        ("ENOENT", "/nonexistent/proctap", ("tried", "", "a b", "\udcff"), 4, "execve"),
        ("EACCES", "/etc/passwd", ("passwd",), 1, "execve"),
        ("EACCES", "", ("by-fd",), 1, "execveat"),
        ("ENOENT", "/nonexistent/null-argv", (), 0, "execve"),
    ]


# -- ring buffer --------------------------------------------------------------------------------------------------


@needs_bpf
def test_ringbuf_empty_and_closes() -> None:
    fd = create_map(MapType.RINGBUF, 0, 0, 4096 * 4, "proctap_test")
    try:
        ring = RingBuffer(fd, 4096 * 4)
        assert list(ring.records()) == [] and ring.available() == 0
        ring.release()
        ring.close()
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        RingBuffer(-1, 1000)


EXEC_SIZES = "i=1; while [ $i -le 300 ]; do /bin/true $(printf '%0'$i'd' 0); i=$((i+1)); done"


@needs_bpf
@pytest.mark.parametrize("window", [None, 4096])
def test_records_that_wrap_around_the_ring_arrive_whole(window: int | None) -> None:
    """A 16 KiB ring, 300 exec records of 110 to 410 bytes: the ring wraps every 60 or so, records straddle its end
    and (with a one-page window) the window's; each must decode to its exact argv, in order, none silently gone."""
    shell = subprocess.Popen(["sh", "-c", "read go; " + EXEC_SIZES], stdin=subprocess.PIPE)
    assert shell.stdin is not None
    events = frozenset({EventKind.EXEC, EventKind.LOST})
    with backend(events=events, root_pid=shell.pid, buffer_bytes=16384) as b:
        if window is not None:  # a second reader of the same map, with a window smaller than the ring
            assert b._ring is not None
            b._ring.close()
            b._ring = RingBuffer(b.fileno(), 16384, window=window)
        shell.stdin.write(b"go\n")
        shell.stdin.close()
        got: list[Event] = []
        deadline = time.monotonic() + 60
        while shell.poll() is None and time.monotonic() < deadline:
            got += b.read_events()
            time.sleep(0.002)
        time.sleep(0.05)
        got += b.read_events()
        stats = b.stats()
        mapped = b._ring.mapped_bytes  # type: ignore[union-attr]
    assert shell.returncode == 0
    argvs = [ev.argv for ev in got if isinstance(ev, Exec) and ev.argv and ev.argv[0] == "/bin/true"]
    lost = sum(ev.count or 0 for ev in got if isinstance(ev, Lost))
    assert stats["decode_errors"] == 0
    widths = [len(argv[1]) for argv in argvs]
    assert all(argv == ("/bin/true", "0" * n) for argv, n in zip(argvs, widths, strict=True))
    assert widths == sorted(widths) and len(argvs) + lost >= 300, (len(argvs), lost)
    assert lost or widths == list(range(1, 301))
    assert mapped <= 2 * 4096 + 16384 + 4096


def _bpf_map_rss_kb() -> int:
    """Resident KiB of this process's mappings of BPF maps (/proc/self/smaps, anon_inode:bpf-map)."""
    total, in_map = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line: range perms offset dev inode [name]
            in_map = line.rstrip().endswith("bpf-map")
        elif in_map and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@needs_bpf
def test_a_reader_maps_a_window_of_the_ring_not_all_of_it() -> None:
    """The kernel fills the page tables of every mapped page of the ring: the reader maps a 1 MiB window (and the two
    position pages), not the 8 MiB ring twice (which put 16 MiB in proctap's RSS)."""
    before = _bpf_map_rss_kb()
    with backend(events=frozenset({EventKind.EXEC})) as b:
        subprocess.run(["/bin/true"], check=True)
        time.sleep(0.05)
        b.read_events()
        assert b.stats()["ring_bytes"] >= 8 << 20
        assert b._ring is not None and b._ring.mapped_bytes == (1 << 20) + 3 * 4096
        rss_kb = _bpf_map_rss_kb() - before
    assert 0 < rss_kb <= 1024 + 3 * 4, rss_kb


@needs_bpf
def test_consumer_position_is_never_seen_half_written() -> None:
    """Producers read the consumer position at any moment (kernel/bpf/ringbuf.c __bpf_ringbuf_reserve): a write that
    passes through 0 makes the ring look full to them.  Another process maps the same page and watches it while this
    one moves the position."""
    size = 4096 * 4
    fd = create_map(MapType.RINGBUF, 0, 0, size, "proctap_test")
    ring = RingBuffer(fd, size)
    watcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import mmap, os, sys, time
            page = mmap.mmap(int(sys.argv[1]), mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
            pos = memoryview(page).cast("B")[:8].cast("Q")
            sys.stdout.write("ready\\n"); sys.stdout.flush()
            zeros = reads = 0
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                for _ in range(1000):
                    zeros += pos[0] == 0
                reads += 1000
            print(zeros, reads)
        """), str(fd)],
        pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ring._next_pos = 8
        ring.release()
        assert watcher.stdout is not None and watcher.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 1.0
        step = 0
        while time.monotonic() < deadline:
            for _ in range(1000):
                step += 1
                ring._next_pos = 8 + 8 * (step & 0xFF)
                ring.release()
        zeros, reads = map(int, watcher.communicate(timeout=10)[0].split())
    finally:
        watcher.kill()
        ring.close()
        os.close(fd)
    assert reads > 0 and zeros == 0


# -- syscall layer ------------------------------------------------------------------------------------------------


@needs_bpf
def test_refused_program_returns_verifier_log() -> None:
    a = Asm()
    a.ldx(DW, R0, R1, 0)  # classic tracepoint programs may not read the first 8 bytes of the context
    a.exit()
    with pytest.raises(BpfError) as info:
        load_program(ProgType.TRACEPOINT, a.assemble(), "proctap_bad")
    assert "invalid bpf_context access" in info.value.log
    summary = _verifier_summary(info.value.log)
    assert "invalid bpf_context access off=0 size=8" in summary and "\n" not in summary
    b = Asm()
    b.mov(R2, 0)
    b.exit()  # R0 never set
    with pytest.raises(BpfError) as info:
        load_program(ProgType.TRACEPOINT, b.assemble(), "proctap_bad")
    assert "R0" in info.value.log and info.value.errno == errno.EACCES


# -- the backend on the real kernel ------------------------------------------------------------------------------


@needs_bpf
def test_fork_exec_exit_of_a_child() -> None:
    with backend() as b:
        pid, events = run_and_collect(b, ["/bin/sh", "-c", "exit 3"])
    fork = next(e for e in events if isinstance(e, Fork))
    exe = next(e for e in events if isinstance(e, Exec))
    exit_ = next(e for e in events if isinstance(e, Exit))
    assert fork.parent_pid == os.getpid() and not fork.is_thread and fork.tid == pid
    assert fork.uid == os.getuid() and fork.gid == os.getgid() and fork.cgroup_id
    assert fork.clone_flags is not None and not fork.clone_flags & 0x10000
    assert exe.filename == "/bin/sh" and exe.argv == ("/bin/sh", "-c", "exit 3") and exe.argc == 3
    assert exe.comm == "sh" and exe.filename_from is Origin.KERNEL and exe.argv_from is Origin.KERNEL
    assert exe.parent_pid == os.getpid()
    assert exit_.exit_code == 3 and exit_.status == 0x300 and exit_.signal is None and not exit_.is_thread
    # the key survives: same start for the whole life, and it is the kernel's (matches /proc to the tick)
    assert fork.start_ns == exe.start_ns == exit_.start_ns
    assert fork.timestamp_ns <= exe.timestamp_ns <= exit_.timestamp_ns
    assert exit_.lifetime_ns is not None and 0 < exit_.lifetime_ns < 60e9
    assert {e.source for e in events} == {"bpf"}


@needs_bpf
def test_argv_edge_cases() -> None:
    argv = [b"/bin/true", b"", b"two words", b"\xff\xfenot-utf8", b"", b"tab\there"]
    with backend() as b:
        _, events = run_and_collect(b, argv)
    exe = next(e for e in events if isinstance(e, Exec))
    assert exe.argv is not None
    assert [os.fsencode(a) for a in exe.argv] == argv
    assert exe.argc == len(argv) and not exe.argv_truncated


@needs_bpf
def test_empty_argv() -> None:
    # execve with argv = {NULL}: the kernel (>= 5.18) inserts an empty argv[0]; argc reports what it counts
    code = "import ctypes; null = (ctypes.c_char_p * 1)(None); ctypes.CDLL(None).execve(b'/bin/true', null, null)"
    with backend() as b:
        child = subprocess.Popen([sys.executable, "-c", code])
        child.wait()
        events = of_pid(collect(b, exited(child.pid)), child.pid)
    exe = next(e for e in events if isinstance(e, Exec) and e.filename == "/bin/true")
    assert exe.argc in (0, 1)
    assert exe.argv in ((), ("",))


@needs_bpf
def test_huge_argv_is_truncated_with_true_argc() -> None:
    args = [f"arg{i:05d}-" + "x" * 90 for i in range(1000)]  # ~100 KB
    with backend(argv_limit=4096) as b:
        _, events = run_and_collect(b, ["/bin/true", *args])
    exe = next(e for e in events if isinstance(e, Exec))
    assert exe.argv_truncated and exe.argc == 1001
    assert exe.argv is not None and 1 < len(exe.argv) < 1001
    captured = "\0".join(exe.argv).encode()
    full = "\0".join(["/bin/true", *args]).encode()
    assert len(captured) == 4096 and full.startswith(captured)


@needs_bpf
def test_larger_argv_limit_captures_everything() -> None:
    args = ["y" * 1000] * 60
    with backend(argv_limit=100_000) as b:
        _, events = run_and_collect(b, ["/bin/true", *args])
    exe = next(e for e in events if isinstance(e, Exec))
    assert not exe.argv_truncated and exe.argv == ("/bin/true", *args)


@needs_bpf
def test_exit_by_signal() -> None:
    with backend() as b:
        proc = subprocess.Popen(["/bin/sleep", "30"])
        time.sleep(0.05)
        proc.kill()
        proc.wait()
        events = of_pid(collect(b, exited(proc.pid)), proc.pid)
    exit_ = next(e for e in events if isinstance(e, Exit) and not e.is_thread)
    assert exit_.signal == signal.SIGKILL and exit_.exit_code is None and not exit_.core_dumped


def _core_pattern() -> str:
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read().strip()


@needs_bpf
@pytest.mark.skipif(_core_pattern().startswith("|"), reason="core_pattern pipes cores to a helper")
def test_exit_with_core_dump(tmp_path: Path) -> None:
    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    with backend() as b:
        proc = subprocess.Popen(["/bin/sh", "-c", "kill -SEGV $$"], cwd=tmp_path, preexec_fn=allow_core)
        proc.wait()
        events = of_pid(collect(b, exited(proc.pid)), proc.pid)
    exit_ = next(e for e in events if isinstance(e, Exit) and not e.is_thread)
    assert exit_.signal == signal.SIGSEGV and exit_.core_dumped
    assert exit_.status is not None and exit_.status & 0x80


THREADS_CHILD = textwrap.dedent(
    """
    import threading
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    """
)


@needs_bpf
def test_threads() -> None:
    with backend() as b:
        pid, events = run_and_collect(b, [sys.executable, "-c", THREADS_CHILD])
    thread_forks = [e for e in events if isinstance(e, Fork) and e.is_thread]
    assert thread_forks
    tf = thread_forks[0]
    assert tf.parent_pid == pid and tf.tid != pid and tf.parent_tid == pid
    assert tf.clone_flags is not None and tf.clone_flags & 0x10000
    process_fork = next(e for e in events if isinstance(e, Fork) and not e.is_thread)
    assert tf.start_ns == process_fork.start_ns  # a thread carries its process's start: the key
    thread_exit = next(e for e in events if isinstance(e, Exit) and e.tid == tf.tid)
    assert thread_exit.is_thread and thread_exit.pid == pid
    assert next(e for e in events if isinstance(e, Exit) and not e.is_thread).tid == pid


@needs_bpf
def test_threads_off_filters_in_kernel() -> None:
    with backend(threads=False) as b:
        _, events = run_and_collect(b, [sys.executable, "-c", THREADS_CHILD])
    assert not [e for e in events if isinstance(e, (Fork, Exit)) and e.is_thread]
    assert [e for e in events if isinstance(e, Exit)]


FORK_BOMB_CHILD = textwrap.dedent(
    """
    import os, sys, time
    with open(sys.argv[1] + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    failures = 0
    kids = []
    for _ in range(6):
        try:
            pid = os.fork()
        except BlockingIOError:
            failures += 1
            continue
        if pid == 0:
            time.sleep(1)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    print(failures)
    """
)


@contextlib.contextmanager
def pids_cgroup(limit: int) -> Iterator[Path]:
    root = Path("/sys/fs/cgroup/pids")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no pids cgroup v1 hierarchy at /sys/fs/cgroup/pids")
    cg = root / f"proctap-test-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "pids.max").write_text(str(limit))
        yield cg
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@needs_bpf
@pytest.mark.parametrize("hook", ["syscalls", "raw"])
def test_failed_forks(hook: str) -> None:
    kinds = frozenset({EventKind.FORK_FAILED, EventKind.EXIT})
    with pids_cgroup(3) as cg, backend(events=kinds, options=(("fork_failed_hook", hook),)) as b:
        assert b.stats()["fork_failed_syscalls"] >= 2
        out = subprocess.run([sys.executable, "-c", FORK_BOMB_CHILD, str(cg)], capture_output=True, check=True)
        failures = int(out.stdout)
        events = collect(b, lambda evs: len([e for e in evs if isinstance(e, ForkFailed)]) >= failures)
    assert failures >= 1
    failed = [e for e in events if isinstance(e, ForkFailed) and e.comm == os.path.basename(sys.executable)[:15]]
    assert len(failed) == failures
    for e in failed:
        assert e.errno == errno.EAGAIN and e.errno_name == "EAGAIN" and e.syscall in ("clone", "clone3", "fork")
    assert not [e for e in events if isinstance(e, (Fork, Exec))]  # only the kinds asked for


@needs_bpf
def test_fork_failed_falls_back_to_the_raw_hook_without_tracefs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracefs_instance, "TRACEFS_MOUNTS", ("/nonexistent/tracing",))  # as if tracefs were not mounted
    with backend(events=frozenset({EventKind.FORK_FAILED})) as b:
        assert b.stats()["fork_failed_syscalls"] >= 2
        assert any("raw sys_exit" in note for note in b.notes)


@needs_bpf
def test_fork_failed_hook_option_is_checked() -> None:
    with pytest.raises(ProctapError, match="fork_failed_hook='perf': choose syscalls or raw"):
        BpfBackend(BackendConfig(events=frozenset({EventKind.EXIT}), options=(("fork_failed_hook", "perf"),)))


EXEC_FAILS_CHILD = textwrap.dedent(
    """
    import os, sys
    for argv in (["short", "", "a b"], [str(i) for i in range(int(sys.argv[1]))]):
        try:
            os.execv("/nonexistent/proctap", argv)
        except OSError:
            pass
    os.execv("/bin/true", ["true"])
    """
)


def failed_execs(events: list[Event], pid: int) -> list[ExecFailed]:
    return [e for e in events if isinstance(e, ExecFailed) and e.pid == pid]


@needs_bpf
@pytest.mark.parametrize("hook", ["syscalls", "raw"])
def test_failed_execs(hook: str) -> None:
    """Both hooks, alone and next to ForkFailed: a short argv whole, a long one cut at argv_limit with its true
    argc, then a successful exec that gives an Exec and no ExecFailed."""
    for kinds in ({EventKind.EXEC_FAILED, EventKind.EXEC, EventKind.EXIT}, {EventKind.EXEC_FAILED, EventKind.EXIT,
                                                                           EventKind.FORK_FAILED}):  # fmt: skip
        with backend(events=frozenset(kinds), argv_limit=64, options=(("fork_failed_hook", hook),)) as b:
            assert b.stats()["exec_failed_syscalls"] == 2
            p = subprocess.Popen([sys.executable, "-c", EXEC_FAILS_CHILD, "300"])
            p.wait()
            events = collect(b, exited(p.pid))
        short, long = failed_execs(events, p.pid)
        assert short.argv == ("short", "", "a b") and short.argc == 3 and not short.argv_truncated
        assert short.filename == "/nonexistent/proctap" and short.errno_name == "ENOENT" and short.syscall == "execve"
        assert long.argc == 300 and long.argv_truncated and long.argv is not None
        assert len("\0".join(long.argv)) < 64 and long.argv[:-1] == tuple(str(i) for i in range(len(long.argv) - 1))
        if EventKind.EXEC in kinds:  # the exec that worked is an Exec (and no ExecFailed: two above, no third)
            assert [e.filename for e in events if isinstance(e, Exec) and e.pid == p.pid][-1] == "/bin/true"


@needs_bpf
def test_exec_failed_argc_beyond_what_is_counted() -> None:
    n = programs.EXEC_ARGS_MAX + programs.EXEC_ARGS_COUNTED + 1
    with backend(events=frozenset({EventKind.EXEC_FAILED, EventKind.EXIT})) as b:
        p = subprocess.Popen([sys.executable, "-c", EXEC_FAILS_CHILD, str(n)])
        p.wait()
        events = collect(b, exited(p.pid))
    _, many = failed_execs(events, p.pid)
    assert many.argc is None and many.argv_truncated
    assert many.argv == tuple(str(i) for i in range(programs.EXEC_ARGS_MAX))


@needs_bpf
def test_exec_failed_only_when_wanted_and_filtered_in_the_kernel() -> None:
    with backend(events=frozenset({EventKind.EXEC, EventKind.FORK_FAILED})) as b:
        assert b.stats()["exec_failed_syscalls"] == 0
        assert not [n for n in proctap_programs() if n.startswith("proctap_ef_")]
    # the uid filter: a failed exec of another user is not reported
    kinds = frozenset({EventKind.EXEC_FAILED, EventKind.EXIT})
    with backend(events=kinds, options=(("uid", "4242"), ("fork_failed_hook", "raw"))) as b:
        other = subprocess.Popen(["/bin/sh", "-c", "exec /nonexistent/as-root"], stderr=subprocess.DEVNULL)
        other.wait()
        mine = subprocess.Popen(["/bin/sh", "-c", "exec /nonexistent/as-4242"], user=4242, group=4242,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        mine.wait()
        events = collect(b, exited(mine.pid))
    assert [(e.filename, e.errno_name) for e in failed_execs(events, mine.pid)] == [("/nonexistent/as-4242", "ENOENT")]
    assert not failed_execs(events, other.pid)
    # the pid subtree
    root = subprocess.Popen(["/bin/sh", "-c", "read x; /nonexistent/in-subtree; exit 0"], stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with backend(events=kinds, root_pid=root.pid) as b:
            outsider = subprocess.Popen([sys.executable, "-c", EXEC_FAILS_CHILD, "1"])
            outsider.wait()
            assert root.stdin is not None
            root.stdin.write(b"go\n")
            root.stdin.close()
            root.wait()
            events = collect(b, exited(root.pid))
    finally:
        root.kill()
        root.wait()
    assert not failed_execs(events, outsider.pid)
    inside = [e for e in events if isinstance(e, ExecFailed)]
    assert inside and all(e.filename == "/nonexistent/in-subtree" for e in inside)


OTHER_FAILING_SYSCALLS_CHILD = textwrap.dedent(
    """
    import os, errno
    for call in (lambda: os.open("/nonexistent/proctap", os.O_RDONLY), lambda: os.setpgid(2**22 + 1, 0),
                 lambda: os.kill(2**22 + 1, 0), lambda: os.waitpid(-1, os.WNOHANG)):
        try:
            call()
        except OSError:
            pass
    """
)


@needs_bpf
@pytest.mark.parametrize("hook", ["syscalls", "raw"])
def test_only_fork_syscalls_give_fork_failed(hook: str) -> None:
    """The raw hook sees every syscall's exit: other failing syscalls (ENOENT, ESRCH, ECHILD) are not forks."""
    kinds = frozenset({EventKind.FORK_FAILED, EventKind.EXIT})
    with backend(events=kinds, options=(("fork_failed_hook", hook),)) as b:
        child = subprocess.Popen([sys.executable, "-c", OTHER_FAILING_SYSCALLS_CHILD])
        child.wait()
        events = collect(b, lambda evs: any(isinstance(e, Exit) and e.pid == child.pid for e in evs))
    assert any(isinstance(e, Exit) and e.pid == child.pid for e in events)
    assert not [e for e in events if isinstance(e, ForkFailed) and e.pid == child.pid]


@needs_bpf
def test_pid_subtree_filter_in_kernel() -> None:
    root = subprocess.Popen(["/bin/sh", "-c", "read x; /bin/echo sub >/dev/null; exit 0"], stdin=subprocess.PIPE)
    try:
        with backend(root_pid=root.pid) as b:
            outsider = subprocess.Popen(["/bin/true"])
            outsider.wait()
            assert root.stdin is not None
            root.stdin.write(b"go\n")
            root.stdin.close()
            root.wait()
            events = [e for e in collect(b, exited(root.pid)) if not isinstance(e, Lost)]
    finally:
        root.kill()
        root.wait()
    pids = {e.pid for e in events}
    assert root.pid in pids and outsider.pid not in pids
    echo = next(e for e in events if isinstance(e, Exec) and e.argv and e.argv[0] == "/bin/echo")
    assert echo.parent_pid == root.pid
    assert pids == {root.pid, echo.pid}


@needs_bpf
def test_pid_subtree_includes_existing_descendants() -> None:
    root = subprocess.Popen(["/bin/sh", "-c", "/bin/sh -c 'read x; exec /bin/echo grandchild >/dev/null'; exit 0"],
                            stdin=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        children: list[str] = []
        while not children and time.monotonic() < deadline:
            children = Path(f"/proc/{root.pid}/task/{root.pid}/children").read_text().split()
            time.sleep(0.01)
        (grandchild,) = (int(c) for c in children)
        with backend(root_pid=root.pid) as b:
            assert root.stdin is not None
            root.stdin.write(b"go\n")
            root.stdin.close()
            root.wait()
            events = collect(b, exited(root.pid))
    finally:
        root.kill()
        root.wait()
    assert any(isinstance(e, Exec) and e.pid == grandchild and e.filename == "/bin/echo" for e in events)


@needs_bpf
def test_uid_filter_keeps_only_that_user() -> None:
    with backend(options=(("uid", "4242"),)) as b:
        other = subprocess.Popen(["/bin/true", "as-root"])
        other.wait()
        proc = subprocess.Popen(["/bin/true", "as-4242"], user=4242, group=4242)
        proc.wait()
        events = [e for e in collect(b, exited(proc.pid)) if not isinstance(e, Lost)]
    assert events and all(getattr(e, "uid", 4242) == 4242 for e in events)
    assert any(isinstance(e, Exec) and e.pid == proc.pid and e.uid == 4242 for e in events)
    assert not [e for e in events if e.pid == other.pid]


@needs_bpf
def test_cgroup_filter_option() -> None:
    cgroup_id = os.stat("/sys/fs/cgroup/unified").st_ino if os.path.isdir("/sys/fs/cgroup/unified") else None
    if cgroup_id is None:
        pytest.skip("no cgroup v2 hierarchy")
    with backend(options=(("cgroup_id", str(cgroup_id + 10_000_000)),)) as b:  # an id no cgroup has
        subprocess.run(["/bin/true"], check=True)
        assert not [e for e in collect(b, None, 0.3) if not isinstance(e, Lost)]


@needs_bpf
def test_ring_overflow_reports_exact_loss() -> None:
    with backend(buffer_bytes=4096) as b:
        for _ in range(60):
            subprocess.run(["/bin/true"], check=True)
        events = b.read_events()
    lost = [e for e in events if isinstance(e, Lost)]
    assert lost, "a 4 KiB ring cannot hold 180 records"
    assert all(e.count and e.count > 0 and e.cpu is not None and e.reason for e in lost)
    assert b.stats()["lost"] == sum(e.count or 0 for e in lost)


@needs_bpf
def test_watcher_delivers_an_isolated_event() -> None:
    with Watcher("exec", backend="bpf") as w:
        assert w.backend_name == "bpf"
        proc = subprocess.Popen(["/bin/true", "isolated"])
        proc.wait()
        events = collect(w, lambda evs: any(isinstance(e, Exec) and e.pid == proc.pid for e in evs), what="the exec")
    assert any(isinstance(e, Exec) and e.pid == proc.pid for e in events)


def program_ids(b: BpfBackend) -> set[int]:
    """Kernel ids of a backend's programs (struct bpf_prog_info.id, UAPI offset 4)."""
    return {struct.unpack_from("=I", obj_info(fd, 8), 4)[0] for fd in b._prog_fds}


def still_loaded(ids: set[int]) -> set[int]:
    """Those of ``ids`` the kernel still has; freeing after the last close is deferred (RCU), so wait a little."""
    deadline = time.monotonic() + 5
    while True:
        alive = ids & set(prog_ids())
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@needs_bpf
def test_load_and_close_in_a_loop_leaves_nothing() -> None:
    before_fds = open_fds()
    ours: set[int] = set()
    for _ in range(5):
        with backend(root_pid=os.getpid()) as b:
            ids = program_ids(b)
            assert len(ids) >= 4  # fork, exec, exit and the fork-failure programs
            names = proctap_programs()
            assert {"proctap_fork", "proctap_exec", "proctap_exit"} <= set(names)
            b.read_events()
        ours |= ids
        b.close()  # idempotent
    assert open_fds() == before_fds
    assert still_loaded(ours) == set()


@needs_bpf
def test_probe_leaves_nothing() -> None:
    before_fds = open_fds()
    assert BpfBackend.probe()
    assert open_fds() == before_fds
    deadline = time.monotonic() + 5
    while "proctap_probe" in proctap_programs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "proctap_probe" not in proctap_programs()


def test_bad_option_is_one_line_error() -> None:
    from proctap.errors import ProctapError

    with pytest.raises(ProctapError, match="uid"):
        BpfBackend(BackendConfig(options=(("uid", "root"),)))


HOLDER = textwrap.dedent(
    """
    import struct, sys, time
    from proctap.backends.base import BackendConfig
    from proctap.backends.bpf import BpfBackend, _verifier_summary
    from proctap.linux.bpf.syscall import obj_info
    b = BpfBackend(BackendConfig())
    print(" ".join(str(struct.unpack_from("=I", obj_info(fd, 8), 4)[0]) for fd in b._prog_fds), flush=True)
    time.sleep(60)
    """
)


@needs_bpf
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_programs_go_away_when_the_process_dies(sig: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None
        ids = {int(i) for i in holder.stdout.readline().split()}
        assert ids and ids <= set(prog_ids())
    finally:
        holder.send_signal(sig)
        holder.wait()
    assert still_loaded(ids) == set()


def test_probe_explains_an_unprivileged_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            vmlinux.cache_clear()
            availability = BpfBackend.probe()
            os.write(w, f"{availability.ok}|{availability.reason}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        ok, _, reason = f.read().decode().partition("|")
    os.waitpid(child, 0)
    assert ok == "False" and "root" in reason and "\n" not in reason


NAMED_THREADS = textwrap.dedent(
    """
    import os, threading
    def name(text):
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(text)
    def worker():
        name("worker-y")
        os._exit(7)
    name("leader-x")
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    """
)


@needs_bpf
def test_process_exit_carries_the_leaders_name_and_group_status() -> None:
    with backend() as b:
        pid, events = run_and_collect(b, [sys.executable, "-c", NAMED_THREADS])
    process_exit = next(e for e in events if isinstance(e, Exit) and not e.is_thread)
    assert process_exit.comm == "leader-x" and process_exit.exit_code == 7 and process_exit.tid == pid
    thread_exit = next(e for e in events if isinstance(e, Exit) and e.is_thread)
    assert thread_exit.comm == "worker-y" and thread_exit.exit_code == 7
