"""What /proc tells about a task: its ``stat`` and ``status`` files, argv, exe, comm, and this process's namespaces
and capabilities.  One reader per file; the parsers are pure functions of the bytes.

Every reader returns ``None`` (or False) when the task is gone or the file unreadable: /proc races with the task.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .clock import CLOCK_TICKS

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "PF_KTHREAD",
    "Stat",
    "descendants",
    "effective_capabilities",
    "has_capability",
    "in_child_pid_namespace",
    "in_child_user_namespace",
    "list_pids",
    "parse_stat",
    "parse_status",
    "proc_start_ns",
    "process_alive",
    "read_argv",
    "read_comm",
    "read_cwd",
    "read_exe",
    "read_id_file",
    "read_namespace",
    "read_ppid",
    "read_small",
    "read_start_ticks",
    "read_stat",
    "read_status",
    "read_tgid",
    "ticks_to_ns",
]

PF_KTHREAD = 0x00200000  # include/linux/sched.h; stat field 9 (flags)
CAP_NET_ADMIN = 12  # include/uapi/linux/capability.h
CAP_SYS_PTRACE = 19
_INITIAL_UID_MAP = [b"0", b"0", b"4294967295"]  # the identity map of the initial user namespace


def read_small(path: str) -> bytes | None:
    """The content of a small /proc file (at most 4096 bytes, one read), None when the task is gone or hidden."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_all(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def ticks_to_ns(ticks: int) -> int:
    """Clock ticks since boot (``stat`` starttime) in nanoseconds since boot (CLOCK_BOOTTIME)."""
    return ticks * 1_000_000_000 // CLOCK_TICKS


def read_argv(pid: int) -> tuple[str, ...] | None:
    """argv of the process as a tuple (empty arguments kept, non-UTF-8 bytes as surrogate escapes).

    An empty cmdline (kernel threads, zombies) gives ``None``.
    """
    data = _read_all(f"/proc/{pid}/cmdline")
    if not data:
        return None
    if data.endswith(b"\0"):
        data = data[:-1]
    return tuple(os.fsdecode(arg) for arg in data.split(b"\0"))


def read_exe(pid: int) -> str | None:
    """The path of the executable (readlink of /proc/PID/exe)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def read_cwd(pid: int) -> str | None:
    """The working directory (readlink of /proc/PID/cwd, as seen from this process's root)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def read_id_file(pid: int, name: str) -> int | None:
    """A /proc/PID file holding one number (``loginuid``, ``sessionid``), None when gone or absent."""
    data = read_small(f"/proc/{pid}/{name}")
    try:
        return None if not data else int(data)
    except ValueError:
        return None


def read_namespace(pid: int, kind: str) -> int | None:
    """The inode number of a namespace of a task (``kind``: pid, mnt, net, uts, ipc, user, cgroup...), from the
    link /proc/PID/ns/KIND (``pid:[4026531836]``); None when gone or unreadable."""
    try:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    start = link.find("[")
    try:
        return int(link[start + 1 : -1]) if start >= 0 and link.endswith("]") else None
    except ValueError:
        return None


def read_comm(pid: int, tid: int | None = None) -> str | None:
    """The task's comm (at most 15 characters)."""
    path = f"/proc/{pid}/comm" if tid is None or tid == pid else f"/proc/{pid}/task/{tid}/comm"
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read().rstrip(b"\n"))
    except OSError:
        return None


# -- /proc/PID/stat ------------------------------------------------------------------------------------------------
class Stat(NamedTuple):
    """The fields of /proc/PID/stat proctap uses (numbered as in proc_pid_stat(5))."""

    comm: str  # field 2
    state: str  # field 3
    ppid: int  # field 4
    flags: int  # field 9
    num_threads: int  # field 20
    start_ticks: int  # field 22, clock ticks since boot
    start_code: int  # field 26
    end_code: int  # field 27
    arg_start: int  # field 48
    exit_code: int  # field 52 (0 unless a zombie, and 0 when the reader may not ptrace the task)
    tty_nr: int = 0  # field 7: the controlling terminal (new_encode_dev of its device number), 0 without one

    @property
    def start_ns(self) -> int:
        """When the task started, in nanoseconds since boot (CLOCK_BOOTTIME, clock-tick precision)."""
        return ticks_to_ns(self.start_ticks)

    @property
    def image(self) -> tuple[int, int, int] | None:
        """What identifies the executable image mapped in the process, or None when unknown.

        fs/proc/array.c do_task_stat(): startcode/endcode read 0 without an mm (zombies, kernel threads) and 1 when
        the reader may not ptrace the task.  Not startstack: load_elf_binary() (fs/binfmt_elf.c) sets it *after*
        start_code, a scan inside execve could see a stale one; arg_start is set before (create_elf_tables()).
        """
        if self.start_code <= 1:
            return None
        return (self.start_code, self.end_code, self.arg_start)

    @property
    def is_kthread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def is_settled(self) -> bool:
        """False while a live user task has an mm without code yet: in the middle of an execve (load_elf_binary()
        sets start_code after the new mm and comm) or of its exit (exit_mm() done, not a zombie yet)."""
        return self.start_code != 0 or self.is_dead or self.is_kthread

    @property
    def is_dead(self) -> bool:
        """The task has exited: a zombie (Z) or being reaped (X; x before Linux 3.14)."""
        return self.state in ("Z", "X", "x")


def parse_stat(data: bytes) -> Stat | None:
    """Decode the bytes of /proc/PID/stat; None when malformed or too short (kernels before 3.5 lack exit_code).

    The comm (field 2) may hold spaces and parentheses: it ends at the *last* ``)``.  Non-UTF-8 bytes of the comm
    come back as surrogate escapes.  This runs once per process per scan in the proc backend: keep it lean.
    """
    open_paren = data.find(b"(")
    close_paren = data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    rest = data[close_paren + 2 :].split()
    if len(rest) < 50:
        return None
    try:
        return Stat(
            data[open_paren + 1 : close_paren].decode("utf-8", "surrogateescape"),  # comm
            rest[0].decode("ascii", "replace"),  # state
            int(rest[1]),  # ppid
            int(rest[6]),  # flags
            int(rest[17]),  # num_threads
            int(rest[19]),  # starttime
            int(rest[23]),  # startcode
            int(rest[24]),  # endcode
            int(rest[45]),  # arg_start
            int(rest[49]),  # exit_code
            int(rest[4]),  # tty_nr
        )
    except ValueError:
        return None


def read_stat(pid: int, tid: int | None = None) -> Stat | None:
    """/proc/PID/stat decoded (of thread ``tid`` of process ``pid`` when given), None when the task is gone."""
    path = f"/proc/{pid}/stat" if tid is None or tid == pid else f"/proc/{pid}/task/{tid}/stat"
    data = read_small(path)
    return None if data is None else parse_stat(data)


def read_ppid(pid: int) -> int | None:
    """The parent's pid, from /proc/PID/stat (field 4)."""
    stat = read_stat(pid)
    return None if stat is None else stat.ppid


def read_start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22, starttime)."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_ticks


def proc_start_ns(pid: int, tid: int | None = None) -> int | None:
    """Start time of a task in nanoseconds since boot (CLOCK_BOOTTIME, clock-tick precision), None if it is gone."""
    stat = read_stat(pid, tid)
    return None if stat is None else stat.start_ns


def process_alive(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` still is the process that started at ``start_ticks`` (not gone, not a reused pid)."""
    return read_start_ticks(pid) == start_ticks


def list_pids() -> list[int]:
    """The pids of every live process (the numeric entries of /proc)."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> set[int]:
    """The pids of the live descendants of ``pid`` (children, grandchildren...), from one scan of /proc.

    Zombies are left out: they are dead already, and once reaped their pid may name an unrelated process."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            child = int(name)
            stat = read_stat(child)
            if stat is not None and not stat.is_dead:
                children.setdefault(stat.ppid, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# -- /proc/PID/status ----------------------------------------------------------------------------------------------
def parse_status(data: bytes) -> dict[str, str]:
    """Decode /proc/PID/status: ``{"Tgid": "123", "CapEff": "000001ffffffffff", ...}`` (values stripped, non-UTF-8
    bytes as surrogate escapes).  fs/proc/array.c escapes newlines in the Name line, so one line is one field."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def read_status(pid: int | str = "self") -> dict[str, str] | None:
    """/proc/PID/status decoded (``pid`` may be ``"self"``), None when the task is gone."""
    data = _read_all(f"/proc/{pid}/status")
    return None if data is None else parse_status(data)


def read_tgid(tid: int) -> int | None:
    """The process (thread group) id of task ``tid``, None when it is gone."""
    status = read_status(tid)
    try:
        return None if status is None else int(status["Tgid"])
    except (KeyError, ValueError):
        return None


def effective_capabilities(pid: int | str = "self") -> int:
    """The effective capability set of a task as a bit mask (bit N = capability N), 0 when unknown."""
    status = read_status(pid)
    try:
        return 0 if status is None else int(status["CapEff"], 16)
    except (KeyError, ValueError):
        return 0


def has_capability(cap: int) -> bool:
    """Whether this process has capability ``cap`` (e.g. :data:`CAP_NET_ADMIN`) in its effective set."""
    return bool(effective_capabilities() >> cap & 1)


# -- namespaces of this process ------------------------------------------------------------------------------------
PROC_PID_INIT_INO = 0xEFFFFFFC  # include/linux/proc_ns.h: the initial PID namespace's fixed inode number


def in_child_pid_namespace() -> bool:
    """Whether this process runs in a PID namespace below the initial one: /proc/self/ns/pid is not the initial
    namespace's inode (right whichever pid namespace mounted /proc), else NSpid lists one pid per level (a /proc of
    this namespace shows only its own level).  False when /proc is unreadable."""
    try:
        return os.readlink("/proc/self/ns/pid") != f"pid:[{PROC_PID_INIT_INO}]"
    except OSError:
        pass
    status = read_status()
    return status is not None and len(status.get("NSpid", "").split()) > 1


def in_child_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one (whose uid_map is the identity
    map of all 2**32 - 1 ids); False when /proc is unreadable."""
    data = _read_all("/proc/self/uid_map")
    return data is not None and data.split() != _INITIAL_UID_MAP
