"""The proc connector's wire format (include/uapi/linux/cn_proc.h, include/uapi/linux/connector.h), as pure functions.

One event is one netlink datagram: ``nlmsghdr`` (16 bytes) + ``cn_msg`` (20 bytes) + ``proc_event`` (header 16 bytes
at offset 36, then a union at offset 52).  All fields are native-endian.  Each union member is described once, in
:data:`EVENT_LAYOUTS`.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import Any, NamedTuple

from ..errors import DecodeError

__all__ = [
    "CN_IDX_PROC",
    "CN_VAL_PROC",
    "EVENT_LAYOUTS",
    "NETLINK_CONNECTOR",
    "McastOp",
    "ProcEventRecord",
    "What",
    "build_subscribe",
    "parse_datagram",
    "parse_messages",
]

NETLINK_CONNECTOR = 11  # include/uapi/linux/netlink.h
CN_IDX_PROC = 1  # include/uapi/linux/connector.h
CN_VAL_PROC = 1
NLMSG_DONE = 3


class What(IntFlag):
    """``enum proc_cn_event`` (include/uapi/linux/cn_proc.h).  Also the bits of the >= 6.6 event_type filter mask."""

    NONE = 0x00000000  # an ack of our LISTEN/IGNORE
    FORK = 0x00000001
    EXEC = 0x00000002
    UID = 0x00000004
    GID = 0x00000040
    SID = 0x00000080
    PTRACE = 0x00000100
    COMM = 0x00000200
    NONZERO_EXIT = 0x20000000  # a filter bit only: "exits with a non-zero code"
    COREDUMP = 0x40000000
    EXIT = 0x80000000


ALL_EVENTS_MASK = int(
    What.FORK | What.EXEC | What.UID | What.GID | What.SID | What.PTRACE | What.COMM | What.COREDUMP | What.EXIT
)


class McastOp(IntEnum):
    """``enum proc_cn_mcast_op``."""

    LISTEN = 1
    IGNORE = 2


NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags
PROC_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (aligned(8): lands at offset 40 of cn_msg data)
HEADER_SIZE = NLMSGHDR.size + CN_MSG.size  # 36: where proc_event starts
UNION_OFFSET = HEADER_SIZE + PROC_EVENT_HEADER.size  # 52
UNION_SIZE = 24  # the largest member (exit): 6 x u32

# The union members, one per event type: (struct, field names).  pid_t is a signed 32-bit int.
EVENT_LAYOUTS: dict[int, tuple[struct.Struct, tuple[str, ...]]] = {
    What.NONE: (struct.Struct("=I"), ("err",)),
    What.FORK: (struct.Struct("=iiii"), ("parent_pid", "parent_tgid", "child_pid", "child_tgid")),
    What.EXEC: (struct.Struct("=ii"), ("process_pid", "process_tgid")),
    What.UID: (struct.Struct("=iiII"), ("process_pid", "process_tgid", "ruid", "euid")),
    What.GID: (struct.Struct("=iiII"), ("process_pid", "process_tgid", "rgid", "egid")),
    What.SID: (struct.Struct("=ii"), ("process_pid", "process_tgid")),
    What.PTRACE: (struct.Struct("=iiii"), ("process_pid", "process_tgid", "tracer_pid", "tracer_tgid")),
    What.COMM: (struct.Struct("=ii16s"), ("process_pid", "process_tgid", "comm")),
    What.COREDUMP: (struct.Struct("=iiii"), ("process_pid", "process_tgid", "parent_pid", "parent_tgid")),
    What.EXIT: (
        struct.Struct("=iiIIii"),
        ("process_pid", "process_tgid", "exit_code", "exit_signal", "parent_pid", "parent_tgid"),
    ),
}
_UNPACKERS = {what: layout[0].unpack_from for what, layout in EVENT_LAYOUTS.items()}


class ProcEventRecord(NamedTuple):
    """One decoded ``proc_event``: the header plus the union member's fields as a tuple (see EVENT_LAYOUTS)."""

    seq: int  # cn_msg.seq: a per-CPU counter (pair it with ``cpu``); for acks, the seq we sent
    what: int
    cpu: int
    timestamp_ns: int  # ktime_get_ns(): CLOCK_MONOTONIC
    data: tuple[Any, ...]  # the union member's fields, in EVENT_LAYOUTS order

    def fields(self) -> dict[str, int | bytes]:
        """The union member as a dict, for debugging and tests."""
        names = EVENT_LAYOUTS[self.what][1] if self.what in EVENT_LAYOUTS else ()
        return dict(zip(names, self.data, strict=False))


def parse_datagram(buf: bytes | bytearray | memoryview, offset: int = 0, length: int | None = None) -> ProcEventRecord:
    """Decode the one proc connector message at ``buf[offset:offset+length]``.

    Raises DecodeError when the bytes are not a complete proc connector message.  Unknown ``what`` values decode
    with an empty ``data`` tuple (a newer kernel may add event types).
    """
    end = len(buf) if length is None else offset + length
    if end - offset < UNION_OFFSET:
        raise DecodeError(f"proc connector message too short: {end - offset} bytes, need at least {UNION_OFFSET}")
    nl_len = NLMSGHDR.unpack_from(buf, offset)[0]
    idx, val, seq, _ack, data_len, _flags = CN_MSG.unpack_from(buf, offset + NLMSGHDR.size)
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        raise DecodeError(f"not a proc connector message (cn_msg id {idx}:{val})")
    if nl_len > end - offset or HEADER_SIZE + data_len > end - offset:
        raise DecodeError(f"truncated proc connector message: {end - offset} bytes, header says {nl_len}")
    what, cpu, timestamp_ns = PROC_EVENT_HEADER.unpack_from(buf, offset + HEADER_SIZE)
    unpack = _UNPACKERS.get(what)
    if unpack is None:
        return ProcEventRecord(seq, what, cpu, timestamp_ns, ())
    try:
        data = unpack(buf, offset + UNION_OFFSET)
    except struct.error as exc:
        raise DecodeError(f"truncated proc_event (what={what:#x}): {exc}") from None
    return ProcEventRecord(seq, what, cpu, timestamp_ns, data)


def parse_messages(data: bytes | bytearray | memoryview) -> list[ProcEventRecord]:
    """Decode every netlink message in ``data`` (one recv may in principle hold several, NLMSG_ALIGNed)."""
    out = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        nl_len = NLMSGHDR.unpack_from(data, offset)[0]
        if nl_len < NLMSGHDR.size:
            raise DecodeError(f"bad nlmsg_len {nl_len} at offset {offset}")
        out.append(parse_datagram(data, offset, min(nl_len, len(data) - offset)))
        offset += (nl_len + 3) & ~3
    return out


def build_subscribe(op: McastOp, seq: int = 0, event_mask: int | None = None) -> bytes:
    """The message that subscribes (LISTEN) or unsubscribes (IGNORE) this socket.

    Without ``event_mask`` the legacy 4-byte payload (all kernels, all events).  With it, ``struct proc_input``
    ``{u32 mcast_op; u32 event_type}`` which kernels >= 6.6 use to filter events in the kernel (older kernels ignore
    the message silently).
    """
    payload = struct.pack("=I", op) if event_mask is None else struct.pack("=II", op, event_mask)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, 0, len(payload), 0)
    total = NLMSGHDR.size + len(cn) + len(payload)
    return NLMSGHDR.pack(total, NLMSG_DONE, 0, seq, 0) + cn + payload
