"""Per-task resource accounting from taskstats, the generic-netlink family "TASKSTATS" (kernel/taskstats.c).

A listener registered for every CPU (TASKSTATS_CMD_ATTR_REGISTER_CPUMASK) is sent one TASKSTATS_CMD_NEW message per
exiting task: an AGGR_PID record for the thread, plus an AGGR_TGID record when the last thread of a process that ever
had several threads exits.  The kernel sends it from do_exit() *before* the task becomes a zombie and before the proc
connector / tracepoint exit events, so draining this socket after reading a batch of Exit events finds their records.

Layers: :func:`parse_messages` and :func:`decode_taskstats` are pure functions over bytes; :class:`TaskstatsListener`
does the socket I/O; :class:`AccountingMerger` attaches the figures to :class:`~proctap.events.Exit` events (what
``proctap watch --accounting`` and ``proctap run`` use).

Needs CAP_NET_ADMIN and the initial network namespace (in another netns registration succeeds but nothing comes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from ..errors import BackendUnavailable, DecodeError
from . import cpus
from .netlink_socket import set_receive_buffer

__all__ = [
    "RawRecord",
    "TaskstatsListener",
    "TaskstatsMessage",
    "TaskstatsRecord",
    "decode_taskstats",
    "parse_messages",
    "scan_messages",
]

T = TypeVar("T")

NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# include/uapi/linux/taskstats.h
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_TGID = 2
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
TASKSTATS_TYPE_AGGR_TGID = 5
TASKSTATS_TYPE_NULL = 6  # padding for 64-bit alignment of the stats
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK = 4

_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
_NLA_F_MASK = 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER

# Offsets in struct taskstats (include/uapi/linux/taskstats.h; verified with offsetof on x86_64).  Fields were only
# ever appended, so an offset is valid for every version that has the field; (offset, format, first version).
_FIELDS: dict[str, tuple[int, str, int]] = {
    "exit_status": (4, "I", 1),
    "flags": (8, "B", 1),
    "uid": (120, "I", 1),
    "gid": (124, "I", 1),
    "tid": (128, "I", 1),
    "ppid": (132, "I", 1),
    "btime_s": (136, "I", 1),
    "elapsed_us": (144, "Q", 1),
    "cpu_user_us": (152, "Q", 1),
    "cpu_system_us": (160, "Q", 1),
    "minor_faults": (168, "Q", 1),
    "major_faults": (176, "Q", 1),
    "peak_rss_kb": (200, "Q", 1),
    "read_char": (216, "Q", 1),
    "write_char": (224, "Q", 1),
    "read_bytes": (248, "Q", 1),
    "write_bytes": (256, "Q", 1),
    "voluntary_switches": (272, "Q", 2),
    "involuntary_switches": (280, "Q", 2),
    "btime64_s": (344, "Q", 10),
    "tgid": (368, "I", 12),
}
_COMM_OFFSET = 80
_COMM_LEN = 32
AC_FLAGS = {0x01: "AFORK", 0x02: "ASU", 0x08: "ACORE", 0x10: "AXSIG", 0x20: "AGROUP"}  # include/uapi/linux/acct.h


class TaskstatsRecord(NamedTuple):
    """One decoded struct taskstats.  ``tid`` is ac_pid (the task id); ``tgid`` is None before version 12.

    Times: ``elapsed_us``, ``cpu_*_us`` in microseconds; ``peak_rss_kb`` in KiB; ``*_bytes`` storage I/O,
    ``*_char`` bytes passed to read/write syscalls.  ``None``: the kernel's struct version lacks the field.
    """

    version: int
    tid: int
    tgid: int | None
    ppid: int
    comm: str
    exit_status: int
    flags: int
    uid: int
    gid: int
    btime_s: int
    elapsed_us: int
    cpu_user_us: int
    cpu_system_us: int
    minor_faults: int
    major_faults: int
    peak_rss_kb: int | None
    read_char: int | None
    write_char: int | None
    read_bytes: int | None
    write_bytes: int | None
    voluntary_switches: int | None
    involuntary_switches: int | None


@dataclass(frozen=True, slots=True)
class TaskstatsMessage:
    """A record as the kernel labelled it: ``aggregate`` "pid" (one thread, ``id`` = tid) or "tgid" (a process's
    accumulated figures, ``id`` = tgid)."""

    aggregate: str
    id: int
    record: TaskstatsRecord


def _layout(fields: dict[str, tuple[int, str, int]]) -> tuple[struct.Struct, tuple[str, ...]]:
    """One Struct reading every field at once (pad bytes between them), and the names in its order."""
    fmt = "="
    pos = 0
    names = []
    for name, (offset, code, _since) in sorted(fields.items(), key=lambda item: item[1][0]):
        fmt += f"{offset - pos}x" if offset > pos else ""
        fmt += code
        pos = offset + struct.calcsize("=" + code)
        names.append(name)
    return struct.Struct(fmt), tuple(names)


_FULL, _FULL_NAMES = _layout(_FIELDS)
_FULL_SINCE = max(since for _o, _c, since in _FIELDS.values())


def decode_taskstats(payload: bytes) -> TaskstatsRecord:
    """Decode struct taskstats, reading only the fields the struct's ``version`` (and length) has."""
    if len(payload) < 168:
        raise DecodeError(f"taskstats payload of {len(payload)} bytes is too short (need at least 168)")
    (version,) = struct.unpack_from("=H", payload, 0)
    values: dict[str, int | None]
    if version >= _FULL_SINCE and len(payload) >= _FULL.size:
        values = dict(zip(_FULL_NAMES, _FULL.unpack_from(payload), strict=True))  # every field: one unpack
    else:
        values = {}
        for name, (offset, fmt, since) in _FIELDS.items():
            if version >= since and offset + struct.calcsize(fmt) <= len(payload):
                values[name] = struct.unpack_from("=" + fmt, payload, offset)[0]
            else:
                values[name] = None
    comm = payload[_COMM_OFFSET : _COMM_OFFSET + _COMM_LEN].split(b"\0", 1)[0]
    btime64 = values.pop("btime64_s")
    if btime64 is not None:
        values["btime_s"] = btime64
    return TaskstatsRecord(version=version, comm=os.fsdecode(comm), **values)  # type: ignore[arg-type]


def _attrs(data: bytes, start: int, end: int) -> Iterable[tuple[int, bytes]]:
    while start + 4 <= end:
        length, atype = _NLATTR.unpack_from(data, start)
        if length < 4:
            raise DecodeError(f"netlink attribute with length {length} < 4 at byte {start}")
        yield atype & _NLA_F_MASK, data[start + 4 : start + length]
        start += (length + 3) & ~3


class RawRecord(NamedTuple):
    """A record located but not decoded: ``aggregate`` "pid" (``id`` = tid) or "tgid" (``id`` = tgid); ``tgid``
    read cheaply from the struct (the tid before version 12); ``stats`` the struct taskstats bytes."""

    aggregate: str
    id: int
    tgid: int
    stats: bytes

    def decode(self) -> TaskstatsMessage:
        return TaskstatsMessage(self.aggregate, self.id, decode_taskstats(self.stats))


def _stats_tgid(stats: bytes, tid: int) -> int:
    """ac_tgid without decoding the whole struct (version >= 12), else the tid."""
    offset, fmt, since = _FIELDS["tgid"]
    if len(stats) >= offset + 4 and struct.unpack_from("=H", stats, 0)[0] >= since:
        return int(struct.unpack_from("=" + fmt, stats, offset)[0])
    return tid


def _scan_aggregate(kind: str, nested: bytes) -> RawRecord | None:
    task_id: int | None = None
    stats: bytes | None = None
    for atype, value in _attrs(nested, 0, len(nested)):
        if atype in (TASKSTATS_TYPE_PID, TASKSTATS_TYPE_TGID):
            (task_id,) = struct.unpack_from("=I", value)
        elif atype == TASKSTATS_TYPE_STATS:
            stats = value
    if task_id is None or stats is None:
        return None
    return RawRecord(kind, task_id, _stats_tgid(stats, task_id) if kind == "pid" else task_id, stats)


def scan_messages(data: bytes) -> list[RawRecord]:
    """The taskstats records in one datagram (one or more netlink messages), located but not decoded."""
    out: list[RawRecord] = []
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, _mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            raise DecodeError(f"truncated netlink message ({length} bytes at {pos} of {len(data)})")
        body = pos + _NLMSGHDR.size
        if length >= _NLMSGHDR.size + _GENLHDR.size and data[body] == TASKSTATS_CMD_NEW:
            for atype, value in _attrs(data, body + _GENLHDR.size, pos + length):
                if atype == TASKSTATS_TYPE_AGGR_PID:
                    raw = _scan_aggregate("pid", value)
                elif atype == TASKSTATS_TYPE_AGGR_TGID:
                    raw = _scan_aggregate("tgid", value)
                else:
                    continue
                if raw is not None:
                    out.append(raw)
        pos += (length + 3) & ~3
    return out


_FAST_HEAD = struct.Struct("=I16xHHHHI")  # nlmsg len, [16 bytes], AGGR nla len/type, PID nla len/type, pid
_TGID_OFFSET = _FIELDS["tgid"][0]


def _scan_fast(data: bytes) -> RawRecord | None:
    """The usual datagram, one AGGR_PID record laid out as the kernel builds it (kernel/taskstats.c mk_reply):
    nlmsghdr, genlmsghdr, AGGR_PID { PID, [a NULL pad attribute for 8-byte alignment], STATS }, read at fixed
    offsets.  None for anything else (the caller falls back to :func:`scan_messages`)."""
    if len(data) < 40 + _TGID_OFFSET + 4:
        return None
    length, aggr_len, aggr_type, pid_len, pid_type, tid = _FAST_HEAD.unpack_from(data, 0)
    if length != len(data) or aggr_type != TASKSTATS_TYPE_AGGR_PID or pid_type != TASKSTATS_TYPE_PID or pid_len != 8:
        return None
    if data[16] != TASKSTATS_CMD_NEW or 20 + aggr_len != length:
        return None
    pos = 32
    stats_len, stats_type = _NLATTR.unpack_from(data, pos)
    if stats_type == TASKSTATS_TYPE_NULL:
        pos += (stats_len + 3) & ~3
        stats_len, stats_type = _NLATTR.unpack_from(data, pos)
    if stats_type != TASKSTATS_TYPE_STATS or pos + stats_len != length:
        return None
    stats = data[pos + 4 : pos + stats_len]
    return RawRecord("pid", tid, _stats_tgid(stats, tid), stats)


def parse_messages(data: bytes) -> list[TaskstatsMessage]:
    """All taskstats records in one datagram, decoded; other netlink messages are skipped."""
    return [raw.decode() for raw in scan_messages(data)]


def _cpumask() -> str:
    """The registration cpumask: every possible CPU (exit records go to the listeners of the CPU a task exits on)."""
    try:
        return cpus.read_possible()
    except OSError:
        return f"0-{(os.cpu_count() or 1) - 1}"


class TaskstatsListener:
    """A registered taskstats exit listener.  ``fileno()`` for poll; ``read()`` drains without blocking.

    Raises :class:`BackendUnavailable` (one line, with what to do) when taskstats cannot work here.  ``lost`` counts
    overflows of the socket buffer (ENOBUFS: the kernel does not say how many records were dropped).
    """

    def __init__(self, buffer_bytes: int = 32 << 20) -> None:
        self.lost = 0
        self.records = 0
        self._cpus = _cpumask()
        self._seq = 0
        self._early: list[RawRecord] = []
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        except OSError as exc:
            raise BackendUnavailable(f"taskstats unavailable: cannot open a generic netlink socket ({exc})") from None
        try:
            self._sock.bind((0, 0))
            set_receive_buffer(self._sock, buffer_bytes)
            self.family = self._resolve_family()
            self._command(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK)
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._registered = True

    def _transact(self, family: int, cmd: int, attrs: bytes) -> bytes:
        """Send a request with NLM_F_ACK; return the reply addressed to it (b"" when only acked).

        Exit records may arrive between our request and its ack (a task exiting on another CPU right after the
        registration): they are kept for :meth:`read`, not mistaken for the reply.
        """
        self._seq += 1
        seq = self._seq
        body = _GENLHDR.pack(cmd, 1, 0) + attrs
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        self._sock.send(header + body)
        self._sock.settimeout(2.0)
        reply = b""
        while True:
            data = self._sock.recv(65536)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, pos)
                if length < _NLMSGHDR.size:
                    raise BackendUnavailable("taskstats unavailable: malformed netlink reply")
                message = data[pos : pos + length]
                pos += (length + 3) & ~3
                if mseq != seq:
                    self._early.extend(scan_messages(message))
                elif mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", message, _NLMSGHDR.size)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return reply
                else:
                    reply = message

    def _resolve_family(self) -> int:
        name = b"TASKSTATS\0"
        attr = _NLATTR.pack(4 + len(name), CTRL_ATTR_FAMILY_NAME) + name + b"\0" * (-len(name) % 4)
        try:
            data = self._transact(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise BackendUnavailable("taskstats unavailable: the kernel has no TASKSTATS family") from None
            raise BackendUnavailable(f"taskstats unavailable: family lookup failed ({exc})") from None
        start = _NLMSGHDR.size + _GENLHDR.size
        for atype, value in _attrs(data, start, len(data)):
            if atype == CTRL_ATTR_FAMILY_ID:
                return int(struct.unpack_from("=H", value)[0])
        raise BackendUnavailable("taskstats unavailable: no family id in the controller's reply")

    def _command(self, attr_type: int) -> None:
        mask = self._cpus.encode() + b"\0"
        attr = _NLATTR.pack(4 + len(mask), attr_type) + mask + b"\0" * (-len(mask) % 4)
        try:
            self._transact(self.family, TASKSTATS_CMD_GET, attr)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise BackendUnavailable(
                    "taskstats unavailable: registering a listener needs CAP_NET_ADMIN (run as root)"
                ) from None
            raise BackendUnavailable(f"taskstats unavailable: listener registration failed ({exc})") from None

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[TaskstatsMessage]:
        """Every record queued now, decoded (never blocks)."""
        return [raw.decode() for raw in self.read_raw()]

    def read_raw(self) -> list[RawRecord]:
        """Every record queued now, located but not decoded (never blocks): cheap when most are of no interest."""
        out = self._early
        self._early = []
        for data in self.read_datagrams():
            fast = _scan_fast(data)
            if fast is not None:
                out.append(fast)
            else:
                out.extend(scan_messages(data))
        self.records += len(out)
        return out

    def read_datagrams(self) -> list[bytes]:
        """The raw datagrams queued now (never blocks); overflows are counted in ``lost``."""
        out: list[bytes] = []
        recv = self._sock.recv
        while True:
            try:
                out.append(recv(65536))
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.lost += 1

    def close(self) -> None:
        """Deregister (so the kernel stops queueing for us) and close.  Idempotent."""
        if self._sock.fileno() < 0:
            return
        if self._registered:
            self._registered = False
            with contextlib.suppress(OSError, BackendUnavailable):
                self._sock.setblocking(True)
                self._command(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK)
        self._sock.close()

    def __enter__(self) -> TaskstatsListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

