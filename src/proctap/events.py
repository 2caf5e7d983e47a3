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

import base64
import errno as _errno
import json
import re
import signal as _signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from operator import attrgetter
from typing import Any, ClassVar, NamedTuple, TypeVar, get_args, get_origin, get_type_hints

__all__ = [
    "EVENT_CLASSES",
    "Accounting",
    "Comm",
    "Container",
    "Coredump",
    "Event",
    "EventKind",
    "Exec",
    "ExecFailed",
    "Existing",
    "Exit",
    "Fork",
    "ForkFailed",
    "Gid",
    "Lost",
    "Namespaces",
    "Origin",
    "Ptrace",
    "Sid",
    "TaskKey",
    "Uid",
    "WaitStatus",
    "Where",
    "accounting_dict",
    "constructor",
    "decode_wait_status",
    "errno_name",
    "event_dict",
    "event_from_dict",
    "event_json",
    "exact_bytes",
    "json_text",
    "json_texts",
    "signal_name",
]


class EventKind(str, Enum):
    """The kinds of event, by the name used on the command line and in JSON (``"event"``)."""

    FORK = "fork"
    FORK_FAILED = "fork_failed"
    EXEC = "exec"
    EXEC_FAILED = "exec_failed"
    EXIT = "exit"
    COMM = "comm"
    UID = "uid"
    GID = "gid"
    SID = "sid"
    PTRACE = "ptrace"
    COREDUMP = "coredump"
    EXISTING = "existing"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


class Origin(str, Enum):
    """Where a field's value came from."""

    KERNEL = "kernel"  # captured by the kernel at the moment of the event
    PROC = "proc"  # read from /proc after the event: may already describe a later state of the task
    SNAPSHOT = "snapshot"  # read from /proc when the watcher started (the process predates it)
    INHERITED = "inherited"  # the parent's, copied at fork: true until the process exec's
    SYNTHETIC = "synthetic"  # made up by a repair after lost events (a process found gone, or found unseen)

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


class Container(NamedTuple):
    """A container, as the path of its cgroup names it (:func:`proctap.where.container_of`).

    ``id``: the runtime's id (64 hex digits for docker, podman, containerd and CRI-O; the name for LXC and
    systemd-nspawn); ``runtime``: ``docker``, ``podman``, ``containerd``, ``cri-o``, ``lxc``, ``systemd-nspawn``, or
    ``kubernetes`` when only the kubepods layout tells; ``pod_uid``: the Kubernetes pod's uid; ``name``: the
    container's name where the runtime keeps it in a file readable without asking a daemon, else None.
    """

    id: str
    runtime: str
    pod_uid: str | None = None
    name: str | None = None


class Namespaces(NamedTuple):
    """The inode numbers of a process's namespaces (what ``readlink /proc/PID/ns/*`` shows in brackets)."""

    pid: int | None
    mnt: int | None
    net: int | None
    uts: int | None
    ipc: int | None
    user: int | None
    cgroup: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Where:
    """Who and where a process is: its cgroup and container, login session, terminal, working directory and
    namespaces.  Carried by Fork, Exec and Existing events when context is wanted (``Watcher(context=True)``,
    ``watch --context``), and by the process cache's records; not part of an event's own JSON (``--context`` adds
    these fields after the others, docs/cli.md).

    ``origin``: :class:`Origin` ``KERNEL`` (captured by the kernel at the event: the bpf backend) or ``PROC`` (read
    from /proc right after it).  ``cgroup_id``: the v2 cgroup's id (the inode number of its directory); ``cgroup``:
    its path relative to the cgroup2 mount (``/user.slice/user-0.slice/session-3.scope``; resolved from the id once
    per cgroup with bpf); ``container``: parsed from that path, None outside a container.  ``loginuid`` and
    ``sessionid``: the audit login uid (the user who logged in: it survives su and sudo) and session, None when
    unset; ``tty``: the controlling terminal (``pts/3``, ``tty1``, ``ttyS0``), None without one.  ``cwd``: the
    working directory at the exec (None in a Fork: a child starts in its parent's).  ``ns_pid``: the pid inside the
    process's own pid namespace, when that is not the initial one; ``namespaces``: the namespaces' inode numbers.
    Anything the source could not tell is None.
    """

    origin: Origin
    cgroup_id: int | None = None
    cgroup: str | None = None
    container: Container | None = None
    loginuid: int | None = None
    sessionid: int | None = None
    tty: str | None = None
    cwd: str | None = None
    ns_pid: int | None = None
    namespaces: Namespaces | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events; see the module docstring for the common fields."""

    kind: ClassVar[EventKind]
    json_derived: ClassVar[tuple[str, ...]] = ()  # properties added to the JSON form after ``key``

    source: str
    timestamp_ns: int
    wall_time: float
    pid: int
    tid: int
    start_ns: int | None = None
    # The process as the watcher's cache knew it at this event (proctap.cache.Process), set by the watcher once
    # the event is applied; not part of the event's JSON (``--context`` adds the parent and ancestors).
    process: Any = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> TaskKey | None:
        """PID-reuse-safe identity of the process, or ``None`` when its start time is unknown."""
        if self.start_ns is None:
            return None
        return TaskKey(self.pid, self.start_ns)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (documented in docs/cli.md, NDJSON): see :func:`event_dict`."""
        return event_dict(self)


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
    # The child's context (cgroup, container, login, tty, namespaces; cwd is its parent's) when context is wanted:
    # captured by the kernel (bpf), else None (the process cache gives the child its parent's).  Not in the JSON.
    where: Where | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkFailed(Event):
    """A fork/clone/vfork/clone3 call that returned an error: ``pid``/``tid`` are the caller.

    Only backends that see the return value of the fork path report it (tracefs, kprobe, bpf).
    """

    kind: ClassVar[EventKind] = EventKind.FORK_FAILED
    json_derived: ClassVar[tuple[str, ...]] = ("errno_name",)

    errno: int
    clone_flags: int | None = None
    syscall: str | None = None
    comm: str | None = None

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno)


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
    # Context at the exec (cgroup, container, login, tty, cwd, namespaces) when wanted: captured by the kernel
    # (bpf) or read from /proc by the watcher.  Not in the JSON (``--context`` adds it).
    where: Where | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecFailed(Event):
    """An execve/execveat that returned an error: ``pid``/``tid`` are the caller, which goes on running its old
    program.  ``filename``/``argv`` are what it tried to run where the backend captured them (bpf: at the syscall's
    entry), else ``None``; ``errno`` is the positive error number (``ENOENT``, ``EACCES``, ``ENOEXEC``...).

    Only backends that see the syscall's return value report it (bpf, tracefs, kprobe).
    """

    kind: ClassVar[EventKind] = EventKind.EXEC_FAILED
    json_derived: ClassVar[tuple[str, ...]] = ("errno_name",)

    errno: int
    filename: str | None = None
    argv: tuple[str, ...] | None = None
    argc: int | None = None
    argv_truncated: bool = False
    syscall: str | None = None
    comm: str | None = None

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit(Event):
    """A task ended.  ``is_thread`` True: one thread of a process ended, the process lives on; False: the process
    ended (its last thread exited).

    ``status`` is the raw wait status (``None`` where the backend cannot know it); ``exit_code`` XOR ``signal`` is
    set from it, ``core_dumped`` tells whether a core was written.  ``lifetime_ns`` is how long the task lived,
    when its start is known.
    """

    kind: ClassVar[EventKind] = EventKind.EXIT
    json_derived: ClassVar[tuple[str, ...]] = ("signal_name",)

    is_thread: bool = False
    status: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    lifetime_ns: int | None = None
    parent_pid: int | None = None
    comm: str | None = None
    accounting: Accounting | None = None
    synthetic: bool = False  # made by a repair: the process was found gone after lost events; status unknown

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal)


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
class Existing(Event):
    """A process proctap learnt from /proc rather than from an event: one that was running when the watcher started
    (``reason`` ``"snapshot"``, ``watch --snapshot``: parents before children, then the live stream), or one found
    after lost events hid its fork (``"repair"``).  ``timestamp_ns`` is when /proc was read; ``filename`` is its
    executable (/proc/PID/exe); fields /proc would not give (a kernel thread's exe, another user's) are ``None``.
    """

    kind: ClassVar[EventKind] = EventKind.EXISTING

    reason: str
    parent_pid: int | None = None
    comm: str | None = None
    filename: str | None = None
    argv: tuple[str, ...] | None = None
    uid: int | None = None
    gid: int | None = None
    where: Where | None = field(default=None, compare=False, repr=False)  # read from /proc when context is wanted


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
    cls.kind: cls
    for cls in (Fork, ForkFailed, Exec, ExecFailed, Exit, Comm, Uid, Gid, Sid, Ptrace, Coredump, Existing, Lost)
}


def _fast_init(cls: type[Event]) -> None:
    """Give an event class a faster ``__init__`` with the same signature and effect as the dataclass's: each field
    stored through its slot's descriptor (``Fork.pid.__set__``) instead of ``object.__setattr__``, which a frozen
    dataclass's ``__init__`` calls per field: 0.8 us instead of 1.5 us for a Fork, and a storm makes two events a
    task.  Frozen stays frozen (``__setattr__`` still raises); ``dataclasses.replace`` and pickling are unchanged."""
    params: list[str] = []
    body: list[str] = []
    scope: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init or f.default_factory is not MISSING:
            return  # not a plain field: keep the dataclass's own __init__
        scope[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, *, {', '.join(params)}):\n" + "\n".join(body), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]


for _cls in EVENT_CLASSES.values():
    _fast_init(_cls)

_E = TypeVar("_E", bound=Event)


def constructor(cls: type[_E], names: str) -> Callable[..., _E]:
    """A positional constructor of ``cls``: the fields ``names`` (space-separated) in that order, every other field
    at its default.  For decoders that build hundreds of thousands of events: matching 15-20 keyword arguments
    costs about half of making the event (Exec: 1.3 us by keywords, 0.8 us this way).  The names are checked here,
    once: each a field of ``cls``, every field without a default among them."""
    wanted = names.split()
    by_name = {f.name: f for f in fields(cls)}
    unknown = [n for n in wanted if n not in by_name]
    missing = [n for n, f in by_name.items() if n not in wanted and f.default is MISSING]
    if (
        unknown
        or missing
        or len(set(wanted)) != len(wanted)
        or any(f.default_factory is not MISSING or not f.init for f in by_name.values())
    ):
        raise TypeError(f"constructor({cls.__name__}): unknown {unknown}, missing {missing}, or repeated fields")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = ["    event = _new(_cls)"]
    for name, f in by_name.items():
        scope[f"_set_{name}"] = getattr(cls, name).__set__
        if name in wanted:
            body.append(f"    _set_{name}(event, {name})")
        else:
            scope[f"_default_{name}"] = f.default
            body.append(f"    _set_{name}(event, _default_{name})")
    exec(f"def make({', '.join(wanted)}):\n" + "\n".join([*body, "    return event"]), scope)
    make: Callable[..., _E] = scope["make"]
    make.__qualname__ = f"constructor({cls.__name__})"
    return make


# -- the JSON form --------------------------------------------------------------------------------------------------
#
# One encoding for every JSON proctap writes (``watch --json``, ``run --json``, the HTML timeline's data): text stays
# text, but always valid UTF-8.  Strings from the kernel (argv, filename, comm) hold undecodable bytes as surrogate
# escapes (os.fsdecode); in JSON each such byte reads U+FFFD, and the object gains ``"raw_b64": {field: base64 of
# the exact bytes}`` (for a list field, a list of base64 strings, one per element) for exactly the fields that were
# not valid UTF-8.  :func:`exact_bytes` reads the bytes back.  Documented in docs/cli.md (NDJSON) and docs/run.md.

RAW_FIELD = "raw_b64"

_SURROGATES = re.compile("[\ud800-\udfff]")


def _exact(text: str) -> bytes:
    """The bytes behind ``text`` (surrogate escapes back to bytes); other lone surrogates, which proctap never
    makes, are written as their 3-byte (CESU-8) form so that encoding cannot fail."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _b64(text: str) -> str:
    return base64.b64encode(_exact(text)).decode("ascii")


def _valid(value: str) -> bool:
    return value.isascii() or _SURROGATES.search(value) is None


def json_text(text: str) -> str:
    """``text`` as valid UTF-8: each surrogate (one undecodable byte, from os.fsdecode) replaced by U+FFFD."""
    return text if _valid(text) else _SURROGATES.sub("\ufffd", text)


def json_texts(out: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Make the named fields of ``out`` (each a string, a list/tuple of strings, or None) valid UTF-8, in place.

    Fields that were not get their exact bytes under ``out["raw_b64"][name]``: base64 of the bytes for a string, a
    list of them (one per element, parallel to the field) for a list.  Fields that were valid are left alone and
    ``raw_b64`` is only added when needed.  Returns ``out``.
    """
    raw: dict[str, Any] | None = None
    for name in names:
        value = out.get(name)
        if value is None:
            continue
        if type(value) is str:
            if _valid(value):
                continue
            out[name] = json_text(value)
            encoded: Any = _b64(value)
        else:
            if all(map(_valid, value)):
                continue
            out[name] = [json_text(v) for v in value]
            encoded = [_b64(v) for v in value]
        if raw is None:
            raw = out.setdefault(RAW_FIELD, {})
        raw[name] = encoded
    return out


def exact_bytes(obj: Mapping[str, Any], field: str) -> bytes | list[bytes] | None:
    """The exact bytes of a text field of a decoded proctap JSON object (an NDJSON event, a ``run --json`` process
    or exec entry, or the run document for ``command``): from ``raw_b64`` when the field was not valid UTF-8, else
    the UTF-8 encoding of the string.  A list field gives a list of bytes; a null or missing field gives None.

    ``os.fsdecode`` of the result (or of each element) equals the Python event's attribute.
    """
    raw = obj.get(RAW_FIELD, {}).get(field)
    value = raw if raw is not None else obj.get(field)
    if value is None:
        return None
    convert = base64.b64decode if raw is not None else _utf8
    if isinstance(value, list):
        return [convert(v) for v in value]
    return convert(value)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


class _Plan(NamedTuple):
    """How to encode one event class, worked out once from its dataclass fields (the NDJSON hot path)."""

    kind: str
    names: tuple[str, ...]  # the fields, in declaration order
    get: Callable[[Any], tuple[Any, ...]]  # all the field values in one call
    lists: tuple[str, ...]  # tuple fields: to lists
    enums: tuple[str, ...]  # Enum fields: to their value
    records: tuple[str, ...]  # Accounting fields: to dicts
    texts: tuple[str, ...]  # str and tuple-of-str fields: valid UTF-8 (json_texts)
    derived: tuple[str, ...]  # properties appended after "key"


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return attrgetter(*names)


def _plan(cls: type[Event]) -> _Plan:
    hints = get_type_hints(cls)
    names = tuple(f.name for f in fields(cls) if f.name not in _NOT_IN_JSON)
    parts: dict[str, list[str]] = {"lists": [], "enums": [], "records": [], "texts": []}
    for name in names:
        types = [t for t in (get_args(hints[name]) or (hints[name],)) if t is not type(None)]
        for tp in types:
            origin = get_origin(tp)
            if origin is tuple:
                parts["lists"].append(name)
                if str in get_args(tp):
                    parts["texts"].append(name)
            elif tp is str:
                parts["texts"].append(name)
            elif isinstance(tp, type) and issubclass(tp, Enum):
                parts["enums"].append(name)
            elif tp is Accounting:
                parts["records"].append(name)
    plan = _Plan(
        cls.kind.value, names, _getter(names), derived=cls.json_derived, **{k: tuple(v) for k, v in parts.items()}
    )
    _PLANS[cls] = plan
    return plan


_PLANS: dict[type[Event], _Plan] = {}
_NOT_IN_JSON = frozenset({"process", "where"})  # the cache's record and the context: ``--context`` adds them
_ACCOUNTING_NAMES = tuple(f.name for f in fields(Accounting))
_accounting_values = _getter(_ACCOUNTING_NAMES)


def accounting_dict(acct: Accounting) -> dict[str, Any]:
    """An :class:`Accounting` as a JSON-ready dict, fields in declaration order (as ``dataclasses.asdict``)."""
    return dict(zip(_ACCOUNTING_NAMES, _accounting_values(acct), strict=True))


def event_dict(event: Event) -> dict[str, Any]:
    """The JSON form of an event (what NDJSON prints, and :meth:`Event.to_dict`): ``{"event": kind, <fields in
    declaration order>..., "key": "pid@start_ns" | null, <derived fields, e.g. signal_name>, ["raw_b64": {...}]}``.

    Enums become their values, tuples lists, :class:`Accounting` a dict; text is valid UTF-8 (see
    :func:`json_texts`: ``raw_b64`` appears only when a field held bytes that are not UTF-8).  Fast: the fields of
    each class are worked out once, so a fork storm's NDJSON costs little more than the JSON encoder.
    """
    cls = type(event)
    plan = _PLANS.get(cls) or _plan(cls)
    out: dict[str, Any] = {"event": plan.kind}
    out.update(zip(plan.names, plan.get(event), strict=True))
    for name in plan.lists:
        value = out[name]
        if value is not None:
            out[name] = list(value)
    for name in plan.enums:
        value = out[name]
        if value is not None:
            out[name] = value._value_  # what .value returns, without the property call
    for name in plan.records:
        value = out[name]
        if value is not None:
            out[name] = accounting_dict(value)
    start = out["start_ns"]
    out["key"] = None if start is None else f"{event.pid}@{start}"
    for name in plan.derived:
        out[name] = getattr(event, name)
    for name in plan.texts:  # almost always ASCII: checked here without a call, json_texts only when needed
        value = out[name]
        if value is not None and not (value.isascii() if type(value) is str else all(map(str.isascii, value))):
            return json_texts(out, plan.texts)
    return out


_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_JSON_WRITERS: dict[type[Event], Callable[[Any], str | None]] = {}
_JSON_SOURCES: dict[type[Event], str] = {}  # the generated code, for reading and debugging


def event_json(event: Event) -> str:
    """The JSON form as one compact, ASCII-only line (no newline): what ``proctap watch --json`` prints.

    Byte for byte ``json.dumps(event_dict(event), ensure_ascii=True, separators=(",", ":"))`` (the tests compare
    them), but written straight from the fields by code generated once per class, without the dict: about 1.5 us
    instead of 4.5 us for an Exit, the NDJSON hot path of a fork storm.  An event the writer does not vouch for
    (text that is not ASCII, a field holding another type than declared, a NaN) goes through the dict.
    """
    cls = type(event)
    writer = _JSON_WRITERS.get(cls) or _json_writer(cls)
    line = writer(event)
    return _ENCODE(event_dict(event)) if line is None else line


def _json_writer(cls: type[Event]) -> Callable[[Any], str | None]:
    """Generate ``cls``'s line writer: the values in one attrgetter call, one guard that each has exactly a declared
    type (else None: the caller takes the dict path), then one f-string."""
    plan = _PLANS.get(cls) or _plan(cls)
    hints = get_type_hints(cls)
    scope: dict[str, Any] = {
        "_get": plan.get, "_esc": _ESCAPE, "_float": float.__repr__,
        "_encode": _ENCODE, "_accounting": accounting_dict, "_Accounting": Accounting,
        "_texts_get": _TEXTS_JSON.get, "_texts_json": _texts_json,
    }  # fmt: skip
    local = [f"v{i}" for i in range(len(plan.names))]
    guards: list[str] = []
    derived: list[str] = []  # derived values, read before the guard
    prepare: list[str] = []  # parts made after it
    parts = [f'{{{{"event":{json.dumps(plan.kind)}']
    for name, v in zip(plan.names, local, strict=True):
        declared = [t for t in (get_args(hints[name]) or (hints[name],)) if t is not type(None)]
        optional = type(None) in get_args(hints[name])
        if len(declared) != 1:
            return _no_writer(cls)
        tp = declared[0]
        if tp is bool:
            guard, text = f"type({v}) is bool", f'{{"true" if {v} else "false"}}'
        elif tp is int:
            guard, text = f"type({v}) is int", f"{{{v}}}"
        elif tp is float:
            guard, text = f"type({v}) is float and {v} - {v} == 0.0", f"{{_float({v})}}"
        elif tp is str:
            guard, text = f"type({v}) is str and {v}.isascii()", f"{{_esc({v})}}"
        elif get_origin(tp) is tuple and get_args(tp) == (str, ...):
            guard, text = f"type({v}) is tuple", f"{{t_{v}}}"
            found = f"(_texts_get({v}) or _texts_json({v}))"
            prepare.append(f"t_{v} = {found}" if not optional else f't_{v} = "null" if {v} is None else {found}')
            prepare.append(f"if t_{v} is None:\n            return None")
        elif isinstance(tp, type) and issubclass(tp, Enum):
            scope[f"_type_{v}"] = tp
            guard, text = f"type({v}) is _type_{v}", f"{{_esc({v}._value_)}}"
        elif tp is Accounting:
            guard, text = f"type({v}) is _Accounting", f"{{_encode(_accounting({v}))}}"
        else:
            return _no_writer(cls)
        if optional:
            guard = f"({v} is None or {guard})"
            if not text.startswith("{t_"):
                text = f'{{"null" if {v} is None else {text[1:-1]}}}'
        guards.append(guard)
        parts.append(f'"{name}":{text}')
    if "pid" not in plan.names or "start_ns" not in plan.names:
        return _no_writer(cls)
    pid, start = local[plan.names.index("pid")], local[plan.names.index("start_ns")]
    prepare.append(f"key = \"null\" if {start} is None else f'\"{{{pid}}}@{{{start}}}\"'")
    parts.append('"key":{key}')
    for i, name in enumerate(plan.derived):
        derived.append(f"d{i} = event.{name}")
        guards.append(f"(d{i} is None or type(d{i}) is str)")
        parts.append(f'"{name}":{{"null" if d{i} is None else _esc(d{i})}}')
    source = "\n".join([
        "def write(event):",
        "    try:",
        f"        {', '.join(local)}, = _get(event)",
        *(f"        {line}" for line in derived),
        f"        if not ({' and '.join(guards)}):",
        "            return None",
        *(f"        {line}" for line in prepare),
        "    except TypeError:",
        "        return None",
        f"    return f'{','.join(parts)}}}}}'",
    ])  # fmt: skip
    exec(source, scope)
    _JSON_SOURCES[cls] = source
    writer: Callable[[Any], str | None] = scope["write"]
    writer.__qualname__ = f"{cls.__qualname__} JSON writer"
    _JSON_WRITERS[cls] = writer
    return writer


def _texts_json(texts: tuple[str, ...]) -> str | None:
    """A tuple of text (an argv) as a JSON list, remembered (a storm repeats a few command lines); None when one is
    not ASCII (the dict path then makes it valid UTF-8 and keeps the bytes in raw_b64)."""
    if not all(map(str.isascii, texts)):
        return None
    found = "[" + ",".join(map(_ESCAPE, texts)) + "]"
    if len(found) <= _TEXTS_JSON_CHARS:  # bounded: at most _TEXTS_JSON_MAX short lists
        if len(_TEXTS_JSON) >= _TEXTS_JSON_MAX:
            _TEXTS_JSON.clear()
        _TEXTS_JSON[texts] = found
    return found


_TEXTS_JSON: dict[tuple[str, ...], str] = {}
_TEXTS_JSON_CHARS, _TEXTS_JSON_MAX = 512, 1024
_ESCAPE = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _no_writer(cls: type[Event]) -> Callable[[Any], str | None]:
    """For a class with fields the generator does not know: always the dict path."""
    _JSON_WRITERS[cls] = _none
    return _none


def _none(event: Any) -> None:
    return None


def event_from_dict(obj: Mapping[str, Any]) -> Event:
    """The event back from its JSON form (a line of ``proctap watch --json``), exact: text fields that were not
    UTF-8 come back from ``raw_b64`` as the original surrogate-escaped strings.  Keys it does not know (``key``,
    derived ones such as ``signal_name``, ``--context`` additions, fields of a later proctap) are ignored.

    Raises ValueError for an unknown ``event`` kind or a missing required field.
    """
    try:
        cls = EVENT_CLASSES[EventKind(obj["event"])]
    except (KeyError, ValueError):
        raise ValueError(f"not a proctap event: event={obj.get('event')!r}") from None
    plan = _PLANS.get(cls) or _plan(cls)
    raw = obj.get(RAW_FIELD) or {}
    values: dict[str, Any] = {}
    for name in plan.names:
        if name not in obj:
            continue
        value = obj[name]
        if name in raw:
            exact = raw[name]
            value = [_fsdecode(v) for v in exact] if isinstance(exact, list) else _fsdecode(exact)
        if value is not None:
            if name in plan.lists:
                value = tuple(value)
            elif name in plan.enums:
                value = Origin(value)
            elif name in plan.records:
                value = Accounting(**value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"{obj.get('event')} event: {exc}") from None


def _fsdecode(b64: str) -> str:
    return base64.b64decode(b64).decode("utf-8", "surrogateescape")
