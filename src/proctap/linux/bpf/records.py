"""The records proctap's BPF programs write to the ring buffer, and the pure byte-level parts of their decoding
(the backend's :class:`proctap.backends.bpf.EventDecoder` turns records into events).

Every record starts with the same 96-byte header (native endian, written by :mod:`proctap.linux.bpf.programs`)::

     0 u32 type          4 u32 flags         8 u64 ktime_get_ns (CLOCK_MONOTONIC)
    16 u32 tgid         20 u32 tid          24 u64 process start (group_leader->start_boottime)
    32 u64 task start (task->start_boottime)                    40 u32 parent tgid (real_parent->tgid)
    44 u32 uid          48 u32 gid          52 u32 aux32        56 u64 cgroup id
    64 char comm[16]   80 u64 aux64        88 u32 len_a        92 u32 len_b
    96 payload

aux/len fields by type: FORK aux32 = creating thread's tid, aux64 = clone flags; EXEC aux32 = old pid,
aux64 = argc, len_a = bytes of filename read (with its NUL), len_b = true argv bytes (mm->arg_end - arg_start),
payload = filename then the captured argv; EXIT aux32 = task->exit_code (a wait status), aux64 = group_dead,
len_a = the process's wait status (meaningful when group_dead), payload = the group leader's comm[16];
FORK_FAILED aux32 = index of the syscall in
the backend's list, aux64 = return value (-errno); EXEC_FAILED aux32 = index of the syscall (execve, execveat) |
argc << 16, aux64 = return value (-errno), len_a = bytes of filename read (with its NUL; 0: unreadable), len_b =
argv bytes captured (every argument NUL-terminated, the last one possibly cut), payload = filename then argv; flags
ARGV_UNREADABLE, ARGV_TRUNCATED (arguments cut or left out), ARGC_UNKNOWN (more than the program counts).

With context wanted, FORK and EXEC records have flag WHERE and a 64-byte block right after the header (the payload
of an EXEC record follows it)::

     0 u32 loginuid      4 u32 sessionid      (4294967295: unset)
     8 u32 tty major    12 u32 tty minor      (0:0 without a controlling terminal)
    16 u32 pid in its own pid namespace (0 in the initial one)   20 u32 that namespace's level
    24 u32 inode numbers of the pid, mnt, net, uts, ipc, user and cgroup namespaces (7 x u32, 0: unknown)
    52 u32 cwd bytes     56 u32 cwd flags (CWD_*)   60 u32 reserved

An EXEC record's cwd (``cwd bytes`` of them) ends the record: the names of its path's components from the leaf up to
the root of the process's mount namespace, each NUL-terminated (none: the root itself).

A CGROUP record (with context, once per cgroup, before the first FORK or EXEC record in it) tells a cgroup's path:
aux64 = the cgroup id, len_a = bytes of payload, payload = the names of the path's components from the leaf up, each
NUL-terminated (none: the root), as for the cwd; it makes no event.
"""

from __future__ import annotations

import struct

from ...errors import DecodeError

__all__ = [
    "EXIT_RECORD_SIZE",
    "FLAG_ARGV_UNREADABLE",
    "HEADER",
    "HEADER_SIZE",
    "decode_argv",
    "decode_comm",
    "decode_cwd",
    "decode_exec_failed_payload",
    "decode_exec_payload",
]

HEADER = struct.Struct("=IIQIIQQIIIIQ16sQII")
HEADER_SIZE = HEADER.size  # 96
EXIT_RECORD_SIZE = HEADER_SIZE + 16  # + the leader's comm

TYPE_FORK, TYPE_EXEC, TYPE_EXIT, TYPE_FORK_FAILED, TYPE_EXEC_FAILED, TYPE_CGROUP = 1, 2, 3, 4, 5, 6
FLAG_ARGV_UNREADABLE = 1  # bpf_probe_read_user of the argv area failed
FLAG_ARGV_TRUNCATED = 2  # EXEC_FAILED: the argv limit left arguments (or the end of one) out
FLAG_ARGC_UNKNOWN = 4  # EXEC_FAILED: more arguments than the program follows
FLAG_WHERE = 8  # FORK, EXEC: the context block follows the header

WHERE = struct.Struct("=16I")
WHERE_SIZE = WHERE.size  # 64
W_LOGINUID, W_SESSIONID, W_TTY_MAJOR, W_TTY_MINOR, W_NS_PID, W_NS_LEVEL, W_NS = 0, 4, 8, 12, 16, 20, 24
W_CWD_LEN, W_CWD_FLAGS = 52, 56
CWD_NONE, CWD_TRUNCATED, CWD_UNREADABLE = 1, 2, 4  # not captured (a fork; no fs), too deep or long, a read failed

# header field offsets, used by the programs that write them
OFF_TYPE, OFF_FLAGS, OFF_TS, OFF_TGID, OFF_TID, OFF_START, OFF_TASK_START = 0, 4, 8, 16, 20, 24, 32
OFF_PPID, OFF_UID, OFF_GID, OFF_AUX32, OFF_CGROUP, OFF_COMM, OFF_AUX64, OFF_LEN_A, OFF_LEN_B = (
    40, 44, 48, 52, 56, 64, 80, 88, 92,
)  # fmt: skip


def decode_comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def decode_argv(raw: bytes, truncated: bool) -> tuple[str, ...]:
    """NUL-separated arguments; when truncated the last one is what fitted (possibly empty)."""
    if not truncated:
        if not raw:
            return ()
        if raw[-1:] != b"\0":
            raise DecodeError("argv area does not end with NUL")
        raw = raw[:-1]
    # Decoded whole, then split: the same strings as splitting the bytes first (a NUL is never part of a UTF-8
    # sequence, so it ends any broken one before it: tested on any bytes), in one call instead of one per argument.
    return tuple(raw.decode("utf-8", "surrogateescape").split("\0"))


def decode_exec_payload(payload: bytes, len_a: int, len_b: int, flags: int) -> tuple[str, tuple[str, ...] | None, bool]:
    """(filename, argv or None when unreadable, argv_truncated) from an exec record's payload."""
    if len_a > len(payload):
        raise DecodeError(f"exec record: filename of {len_a} bytes overruns the {len(payload)}-byte payload")
    filename = payload[:len_a].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if flags & FLAG_ARGV_UNREADABLE:
        return filename, None, False
    captured = payload[len_a:]
    if len(captured) > len_b:
        raise DecodeError(f"exec record: {len(captured)} argv bytes captured of {len_b}")
    truncated = len(captured) < len_b
    return filename, decode_argv(captured, truncated), truncated


def decode_exec_failed_payload(
    payload: bytes, len_a: int, len_b: int, flags: int
) -> tuple[str | None, tuple[str, ...] | None, bool]:
    """(filename or None when unreadable, argv or None when unreadable, argv_truncated) from an exec-failed
    record's payload."""
    if len_a + len_b != len(payload):
        raise DecodeError(f"exec-failed record: {len_a} + {len_b} bytes announced, {len(payload)} sent")
    filename = None
    if len_a:
        if payload[len_a - 1] != 0:
            raise DecodeError("exec-failed record: filename does not end with NUL")
        filename = payload[: len_a - 1].decode("utf-8", "surrogateescape")
    if flags & FLAG_ARGV_UNREADABLE:
        return filename, None, False
    captured = payload[len_a:]
    if captured and captured[-1] != 0:
        raise DecodeError("exec-failed record: argv does not end with NUL")
    argv = tuple(captured[:-1].decode("utf-8", "surrogateescape").split("\0")) if captured else ()
    return filename, argv, bool(flags & FLAG_ARGV_TRUNCATED)


def decode_cwd(raw: bytes) -> str:
    """A cwd as the exec program wrote it (the components' names from the leaf up, each NUL-terminated) as a path;
    non-UTF-8 bytes as surrogate escapes."""
    if not raw:
        return "/"
    if raw[-1:] != b"\0":
        raise DecodeError("cwd does not end with NUL")
    parts = raw[:-1].split(b"\0")
    parts.reverse()
    return "/" + "/".join(part.decode("utf-8", "surrogateescape") for part in parts)
