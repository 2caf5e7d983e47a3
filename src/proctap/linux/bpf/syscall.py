"""bpf(2) and perf_event_open(2) through ctypes (include/uapi/linux/bpf.h, perf_event.h).

Every object the kernel gives back is a file descriptor: closing it (or the process dying) releases the object.
Nothing here pins anything in bpffs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from enum import IntEnum

from .. import libc

__all__ = [
    "BpfError",
    "MapType",
    "ProgType",
    "bpf",
    "create_map",
    "load_program",
    "map_lookup",
    "map_update",
    "obj_info",
    "perf_event_open_tracepoint",
    "prog_fd_by_id",
    "prog_ids",
    "raw_tracepoint_open",
]

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl)
_SYSCALLS = {"x86_64": (321, 298), "aarch64": (280, 241)}
SYS_BPF, SYS_PERF_EVENT_OPEN = _SYSCALLS.get(os.uname().machine, (321, 298))


class Cmd(IntEnum):
    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    PROG_LOAD = 5
    PROG_GET_NEXT_ID = 11
    PROG_GET_FD_BY_ID = 13
    OBJ_GET_INFO_BY_FD = 15
    RAW_TRACEPOINT_OPEN = 17


class MapType(IntEnum):
    HASH = 1
    ARRAY = 2
    PERCPU_ARRAY = 6
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    RINGBUF = 27


class ProgType(IntEnum):
    SOCKET_FILTER = 1
    TRACEPOINT = 5
    TRACING = 26


BPF_TRACE_RAW_TP = 23  # enum bpf_attach_type, expected_attach_type of tp_btf programs
PERF_TYPE_TRACEPOINT = 2
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
PERF_FLAG_FD_CLOEXEC = 8
ATTR_SIZE = 128  # bigger than every attr we fill; the kernel checks the tail is zero

# syscall(2) is variadic: ctypes passes Python ints as C ints, so wider arguments are wrapped by the callers.
_syscall = libc.function("syscall", None, ctypes.c_long)
_ioctl = libc.function("ioctl", (ctypes.c_int, ctypes.c_ulong, ctypes.c_int))


class BpfError(OSError):
    """A bpf(2) call failed; ``log`` holds the verifier's explanation for a refused program."""

    def __init__(self, err: int | None, what: str, log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err) if err else 'unknown error'}")
        self.log = log


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    """Call bpf(cmd, attr, sizeof attr); BpfError on failure.  EAGAIN is retried: PROG_LOAD returns it when the
    verifier was interrupted by a signal (kernel/bpf/verifier.c)."""
    try:
        return libc.call(_syscall, SYS_BPF, ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)), retry=(errno.EAGAIN,))
    except OSError as exc:
        raise BpfError(exc.errno, what) from None


def _attr(*fields: tuple[str, int, int | bytes]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed attr buffer with ``(struct format, offset, value)`` fields packed in."""
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    for fmt, offset, value in fields:
        struct.pack_into(fmt, buf, offset, value)
    return buf


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def _name(name: str) -> bytes:
    """BPF object names: 15 chars + NUL, [A-Za-z0-9_.]."""
    return name.encode()[:15]


def create_map(map_type: MapType, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    attr = _attr(
        ("<I", 0, map_type), ("<I", 4, key_size), ("<I", 8, value_size), ("<I", 12, max_entries),
        ("16s", 28, _name(name)),
    )  # fmt: skip
    return bpf(Cmd.MAP_CREATE, attr, f"creating BPF map {name}")


def _elem_attr(fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char] | None, flags: int
               ) -> ctypes.Array[ctypes.c_char]:  # fmt: skip
    return _attr(("<I", 0, fd), ("<Q", 8, _addr(key)), ("<Q", 16, _addr(value)), ("<Q", 24, flags))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value for ``key``, or None when absent."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    try:
        bpf(Cmd.MAP_LOOKUP_ELEM, _elem_attr(fd, kbuf, vbuf, 0), "reading a BPF map")
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value, len(value))
    bpf(Cmd.MAP_UPDATE_ELEM, _elem_attr(fd, kbuf, vbuf, flags), "writing a BPF map")


def load_program(
    prog_type: ProgType,
    code: bytes,
    name: str,
    *,
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
    log_size: int = 1 << 20,
) -> int:
    """Load a program; on refusal BpfError carries the verifier log (loaded again with logging on)."""
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = _attr(
            ("<I", 0, prog_type), ("<I", 4, len(code) // 8), ("<Q", 8, _addr(insns)), ("<Q", 16, _addr(license_)),
            ("<I", 24, 1 if log is not None else 0), ("<I", 28, 0 if log is None else len(log)),
            ("<Q", 32, _addr(log)), ("16s", 48, _name(name)), ("<I", 68, expected_attach_type),
            ("<I", 108, attach_btf_id),
        )  # fmt: skip
        return bpf(Cmd.PROG_LOAD, attr, f"loading BPF program {name}")

    try:
        return attempt(None)
    except BpfError as first:
        log = ctypes.create_string_buffer(log_size)
        try:
            fd = attempt(log)
        except BpfError as second:
            text = log.value.decode(errors="replace")
            raise BpfError(second.errno or first.errno or errno.EINVAL, f"loading BPF program {name}", text) from None
        return fd  # refused once, accepted with a log buffer: keep it


def raw_tracepoint_open(prog_fd: int) -> int:
    """Attach a tp_btf program (its attach_btf_id names the tracepoint); returns the link fd."""
    attr = _attr(("<Q", 0, 0), ("<I", 8, prog_fd))
    return bpf(Cmd.RAW_TRACEPOINT_OPEN, attr, "attaching a BPF program to a raw tracepoint")


def perf_event_open_tracepoint(tracepoint_id: int, prog_fd: int) -> int:
    """Attach a TRACEPOINT program to the classic tracepoint ``tracepoint_id`` (from tracefs events/*/*/id).

    One perf event (pid -1, cpu 0) is enough: the program runs on every CPU (kernel/trace/bpf_trace.c,
    trace_call_bpf uses the event call's program array).
    """
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    # struct perf_event_attr: type u32, size u32, config u64, sample_period u64, sample_type u64, read_format u64,
    # flags u64 (bit 0 disabled), wakeup_events u32
    struct.pack_into("<IIQQQQQI", attr, 0, PERF_TYPE_TRACEPOINT, ATTR_SIZE, tracepoint_id, 1, 0, 0, 1, 1)
    try:
        fd = libc.call(_syscall, SYS_PERF_EVENT_OPEN, attr, -1, 0, -1, ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    except OSError as exc:
        raise BpfError(exc.errno, f"opening perf event for tracepoint {tracepoint_id}") from None
    for request, arg, what in ((PERF_EVENT_IOC_SET_BPF, prog_fd, "attaching"), (PERF_EVENT_IOC_ENABLE, 0, "enabling")):
        try:
            libc.call(_ioctl, fd, request, arg)
        except OSError as exc:
            os.close(fd)
            raise BpfError(exc.errno, f"{what} BPF program on tracepoint {tracepoint_id}") from None
    return fd


def prog_ids() -> list[int]:
    """Ids of every BPF program loaded in the kernel."""
    ids: list[int] = []
    start = 0
    while True:
        attr = _attr(("<I", 0, start))
        try:
            bpf(Cmd.PROG_GET_NEXT_ID, attr, "listing BPF programs")
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return ids
            raise
        start = struct.unpack_from("<I", attr, 4)[0]
        ids.append(start)


def prog_fd_by_id(prog_id: int) -> int:
    return bpf(Cmd.PROG_GET_FD_BY_ID, _attr(("<I", 0, prog_id)), f"opening BPF program {prog_id}")


def obj_info(fd: int, size: int = 256) -> bytes:
    """The raw struct bpf_prog_info / bpf_map_info / bpf_link_info of an fd (decode with BTF offsets)."""
    info = ctypes.create_string_buffer(size)
    attr = _attr(("<I", 0, fd), ("<I", 4, size), ("<Q", 8, ctypes.addressof(info)))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "reading BPF object info")
    return info.raw
