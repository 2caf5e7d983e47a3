"""The event model every backend produces and everything else consumes.

Events are immutable (frozen, slotted dataclasses).  Every event carries:

* ``source``: the backend that saw it (``"netlink"``, ``"tracefs"``, ``"kprobe"``, ``"bpf"``, ``"proc"``);
* ``timestamp_ns``: when the kernel saw it, CLOCK_MONOTONIC nanoseconds (the clock of ``time.monotonic_ns``);
* ``wall_time``: the same instant as seconds since the epoch (CLOCK_REALTIME), for display;
* ``pid`` (the thread-group id, what ``ps`` calls PID) and ``tid`` (the task id; equal to ``pid`` for the main thread);
* ``start_ns``: when the *process* started, nanoseconds since boot (CLOCK_BOOTTIME), or ``None`` when unknown.
  Together with ``pid`` it forms :attr:`Event.key`, an identity that survives PID reuse.

PIDs are always those of the initial PID namespace.
"""

from __future__ import annotations

import errno as _errno
import signal as _signal
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "EVENT_CLASSES",
    "Accounting",
    "Comm",
    "Coredump",
    "Event",
    "EventKind",
    "Exec",
    "Exit",
    "Fork",
    "ForkFailed",
    "Gid",
    "Lost",
    "Origin",
    "Ptrace",
    "Sid",
    "TaskKey",
    "Uid",
    "WaitStatus",
    "decode_wait_status",
    "errno_name",
    "signal_name",
]


class EventKind(str, Enum):
    """The kinds of event, by the name used on the command line and in JSON (``"event"``)."""

    FORK = "fork"
    FORK_FAILED = "fork_failed"
    EXEC = "exec"
    EXIT = "exit"
    COMM = "comm"
    UID = "uid"
    GID = "gid"
    SID = "sid"
    PTRACE = "ptrace"
    COREDUMP = "coredump"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


class Origin(str, Enum):
    """Where a field's value came from."""

    KERNEL = "kernel"  # captured by the kernel at the moment of the event
    PROC = "proc"  # read from /proc after the event: may already describe a later state of the task

    def __str__(self) -> str:
        return self.value


class TaskKey(NamedTuple):
    """An identity for a process that survives PID reuse: the PID plus the process start time.

    ``start_ns`` is nanoseconds since boot (CLOCK_BOOTTIME).  Its precision depends on where it was learnt:
    exact from eBPF, the kernel's fork timestamp for netlink/tracefs, clock-tick precision (10 ms) for tasks that
    already existed when the watcher started (read from /proc/PID/stat).  Compare keys from one watcher.
    """

    pid: int
    start_ns: int

    def __str__(self) -> str:
        return f"{self.pid}@{self.start_ns}"


class WaitStatus(NamedTuple):
    """A decoded wait status (see wait(2)): exactly one of ``exit_code`` and ``signal`` is set."""

    exit_code: int | None
    signal: int | None
    core_dumped: bool


def decode_wait_status(status: int) -> WaitStatus:
    """Decode a wait status as the kernel stores it in ``task_struct.exit_code``.

    ``exit(3)`` gives ``0x300``; death by SIGKILL gives ``0x9``; bit ``0x80`` says a core was dumped.
    """
    status &= 0xFFFF
    sig = status & 0x7F
    if sig == 0:
        return WaitStatus((status >> 8) & 0xFF, None, False)
    return WaitStatus(None, sig, bool(status & 0x80))


def signal_name(signum: int | None) -> str | None:
    """``9`` -> ``"SIGKILL"``; unknown numbers give ``"SIG<n>"``; ``None`` stays ``None``."""
    if signum is None:
        return None
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def errno_name(err: int | None) -> str | None:
    """``11`` -> ``"EAGAIN"``; unknown numbers give ``"E<n>"``; ``None`` stays ``None``."""
    if err is None:
        return None
    return _errno.errorcode.get(err, f"E{err}")


def _json_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Accounting:
    """Resource use of a task that ended, from taskstats (include/uapi/linux/taskstats.h).

    CPU times in microseconds, memory in KiB, I/O in bytes.  ``None`` where the kernel's struct version lacks it.
    """

    cpu_user_us: int
    cpu_system_us: int
    elapsed_us: int | None = None
    peak_rss_kb: int | None = None
    read_bytes: int | None = None
    write_bytes: int | None = None
    voluntary_switches: int | None = None
    involuntary_switches: int | None = None
    per_process: bool = False  # True: totals of all threads of the process (TASKSTATS_TYPE_AGGR_TGID)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events; see the module docstring for the common fields."""

    kind: ClassVar[EventKind]

    source: str
    timestamp_ns: int
    wall_time: float
    pid: int
    tid: int
    start_ns: int | None = None

    @property
    def key(self) -> TaskKey | None:
        """PID-reuse-safe identity of the process, or ``None`` when its start time is unknown."""
        if self.start_ns is None:
            return None
        return TaskKey(self.pid, self.start_ns)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form: ``{"event": kind, <fields>..., "key": "pid@start_ns" | null}``.

        Enums become their string values, tuples become lists; extra derived fields are added by subclasses.
        """
        out: dict[str, Any] = {"event": self.kind.value}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Accounting):
                out[f.name] = asdict(value)
            else:
                out[f.name] = _json_value(value)
        key = self.key
        out["key"] = None if key is None else str(key)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Fork(Event):
    """A new task: a process (``is_thread`` False) or a thread of an existing process.

    ``parent_pid``/``parent_tid`` name the creator.  For a thread, ``parent_pid == pid`` (the process that gained
    a thread); ``parent_tid`` is the creating thread where the backend knows it, else ``None``.
    """

    kind: ClassVar[EventKind] = EventKind.FORK

    parent_pid: int
    parent_tid: int | None = None
    is_thread: bool = False
    clone_flags: int | None = None
    comm: str | None = None
    uid: int | None = None
    gid: int | None = None
    cgroup_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkFailed(Event):
    """A fork/clone/vfork/clone3 call that returned an error: ``pid``/``tid`` are the caller.

    Only backends that see the return value of the fork path report it (tracefs, kprobe, bpf).
    """

    kind: ClassVar[EventKind] = EventKind.FORK_FAILED

    errno: int
    clone_flags: int | None = None
    syscall: str | None = None
    comm: str | None = None

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno)

    def to_dict(self) -> dict[str, Any]:
        out = Event.to_dict(self)
        out["errno_name"] = self.errno_name
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Exec(Event):
    """A successful execve/execveat: the task now runs ``filename``.

    ``argv`` is a tuple of strings (empty arguments kept; bytes that are not UTF-8 are kept as surrogate escapes,
    recover them with :func:`os.fsencode`), or ``None`` when unknown.  ``argc`` is the true count even when ``argv``
    was truncated (``argv_truncated``).  ``*_from`` tell where each field came from: :class:`Origin` ``KERNEL``
    (captured at the exec) or ``PROC`` (read from /proc afterwards), and are ``None`` with the field when the task was
    already gone.
    """

    kind: ClassVar[EventKind] = EventKind.EXEC

    filename: str | None = None
    argv: tuple[str, ...] | None = None
    argc: int | None = None
    argv_truncated: bool = False
    comm: str | None = None
    parent_pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    cgroup_id: int | None = None
    filename_from: Origin | None = None
    argv_from: Origin | None = None
    comm_from: Origin | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit(Event):
    """A task ended.  ``is_thread`` True: one thread of a process ended, the process lives on; False: the process
    ended (its last thread exited).

    ``status`` is the raw wait status (``None`` where the backend cannot know it); ``exit_code`` XOR ``signal`` is
    set from it, ``core_dumped`` tells whether a core was written.  ``lifetime_ns`` is how long the task lived,
    when its start is known.
    """

    kind: ClassVar[EventKind] = EventKind.EXIT

    is_thread: bool = False
    status: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    lifetime_ns: int | None = None
    parent_pid: int | None = None
    comm: str | None = None
    accounting: Accounting | None = None

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal)

    def to_dict(self) -> dict[str, Any]:
        out = Event.to_dict(self)
        out["signal_name"] = self.signal_name
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Comm(Event):
    """The task changed its name (prctl(PR_SET_NAME) or a write to /proc/PID/comm)."""

    kind: ClassVar[EventKind] = EventKind.COMM

    comm: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Uid(Event):
    """The task changed its user ids (real and effective)."""

    kind: ClassVar[EventKind] = EventKind.UID

    ruid: int
    euid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Gid(Event):
    """The task changed its group ids (real and effective)."""

    kind: ClassVar[EventKind] = EventKind.GID

    rgid: int
    egid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Sid(Event):
    """The task started a new session (setsid(2))."""

    kind: ClassVar[EventKind] = EventKind.SID


@dataclass(frozen=True, slots=True, kw_only=True)
class Ptrace(Event):
    """A tracer attached to the task (``attached`` True) or detached from it.  ``tracer_pid`` is 0 on detach."""

    kind: ClassVar[EventKind] = EventKind.PTRACE

    tracer_pid: int
    tracer_tid: int
    attached: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Coredump(Event):
    """The task is dumping core (reported before its Exit)."""

    kind: ClassVar[EventKind] = EventKind.COREDUMP

    parent_pid: int | None = None
    parent_tid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost(Event):
    """The kernel dropped events.  ``count`` is exact when the kernel makes it countable, ``None`` when it only said
    that something was dropped.  ``cpu`` names the CPU whose events were lost where known; ``reason`` says which
    mechanism overflowed.  ``pid``/``tid`` are 0.
    """

    kind: ClassVar[EventKind] = EventKind.LOST

    count: int | None
    reason: str
    cpu: int | None = None


EVENT_CLASSES: dict[EventKind, type[Event]] = {
    cls.kind: cls for cls in (Fork, ForkFailed, Exec, Exit, Comm, Uid, Gid, Sid, Ptrace, Coredump, Lost)
}
