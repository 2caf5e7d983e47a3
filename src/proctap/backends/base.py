"""What a backend is: a source of :mod:`proctap.events` with a pollable file descriptor.

A backend only produces events.  Filtering for the user, the process table, rendering: all of that consumes them.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, TypedDict

from ..errors import ProctapError
from ..events import EventKind, Lost
from ..linux.clock import Clock
from ..linux.procfs import proc_start_ns

__all__ = [
    "DEFAULT_ARGV_LIMIT",
    "MAX_ARGV_LIMIT",
    "Availability",
    "Backend",
    "BackendConfig",
    "BackendOption",
    "Common",
    "Feature",
    "OptionsSpec",
    "Stamp",
    "StartTimes",
    "check_options",
    "flag_option",
    "int_option",
]


class Feature(str, Enum):
    """What a backend can deliver; the conformance suite tests each backend for what it declares."""

    FORK = "fork"  # Fork events for processes
    THREADS = "threads"  # Fork/Exit events for threads, with is_thread
    EXEC = "exec"  # Exec events
    EXEC_FILENAME_KERNEL = "exec_filename_kernel"  # Exec.filename captured by the kernel (else read from /proc)
    ARGV_KERNEL = "argv_kernel"  # Exec.argv captured by the kernel, with argc and argv_truncated
    EXIT = "exit"  # Exit events
    EXIT_STATUS = "exit_status"  # Exit.status / exit_code / signal for every exit
    CORE_DUMPED = "core_dumped"  # Exit.core_dumped is reliable
    FORK_FAILED = "fork_failed"  # ForkFailed events (sees the fork path's return value)
    EXEC_FAILED = "exec_failed"  # ExecFailed events (sees execve/execveat's return value)
    EXEC_FAILED_ARGS = "exec_failed_args"  # ExecFailed.filename/argv the failed call was given (read at its exit)
    COMM = "comm"  # Comm events
    CREDENTIALS = "credentials"  # Uid / Gid events
    SID = "sid"  # Sid events
    PTRACE = "ptrace"  # Ptrace events
    COREDUMP = "coredump"  # Coredump events
    LOSS_EXACT = "loss_exact"  # Lost events carry exact counts
    # Context (``Watcher(context=True)``): Fork and Exec events carry a Where captured by the kernel at the event
    # (cgroup, loginuid, sessionid, tty, namespaces, pid in its namespace); without it the watcher reads /proc
    CONTEXT_KERNEL = "context_kernel"
    CWD_KERNEL = "cwd_kernel"  # Exec's Where.cwd captured by the kernel at the exec (else /proc/PID/cwd afterwards)
    CONTEXT_FILTER_KERNEL = "context_filter_kernel"  # the cgroup, uid and loginuid filters run in the kernel too


@dataclass(frozen=True)
class Availability:
    """Whether a backend works here; ``reason`` is one line saying why not (and what would make it work)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


DEFAULT_ARGV_LIMIT = 4096
MAX_ARGV_LIMIT = 131072  # bytes of argv a backend copies per exec (bpf: a per-CPU scratch buffer; tested here)


@dataclass(frozen=True)
class BackendConfig:
    """What the consumer wants; backends use it to filter in the kernel where they can.

    ``events``: the kinds wanted (``Lost`` is always delivered).  ``root_pid``: only this process and its
    descendants are wanted (a hint: backends may deliver more, the watcher filters exactly).  ``threads``: whether
    thread Fork/Exit events are wanted.  ``buffer_bytes``: kernel buffer to ask for (None: the backend's default).
    ``argv_limit``: bytes of argv to capture where the backend captures argv itself.  ``context``: capture each
    Fork's and Exec's :class:`proctap.events.Where` where the backend can (else the watcher reads /proc).  ``uid``,
    ``loginuid``, ``cgroup`` (a path relative to the cgroup2 mount: that cgroup and below): the user's filters, hints
    like ``root_pid``.
    """

    events: frozenset[EventKind] = field(default_factory=lambda: frozenset(EventKind))
    root_pid: int | None = None
    threads: bool = True
    buffer_bytes: int | None = None
    argv_limit: int = DEFAULT_ARGV_LIMIT
    options: tuple[tuple[str, str], ...] = ()
    context: bool = False
    uid: int | None = None
    loginuid: int | None = None
    cgroup: str | None = None

    def option(self, name: str, default: str | None = None) -> str | None:
        """A backend-specific option (``--backend-option NAME=VALUE`` on the command line)."""
        for key, value in self.options:
            if key == name:
                return value
        return default


@dataclass(frozen=True)
class BackendOption:
    """One backend-specific option (``-o NAME=VALUE``): ``form`` shows its values (``N``, ``syscalls|raw``),
    ``parse`` turns the text into the value the backend uses and raises ValueError with a reason when it is wrong."""

    name: str
    form: str
    parse: Callable[[str], object]
    help: str = ""

    def usage(self) -> str:
        return f"{self.name}={self.form}"


# What ``options`` may be, from Python: a mapping, (name, value) pairs, or "NAME=VALUE" strings.
OptionsSpec = Mapping[str, object] | Iterable[tuple[str, object] | str]


def int_option(low: int, high: int | None = None) -> Callable[[str], int]:
    """A parser for a whole number from ``low`` to ``high`` (None: no upper bound); ``0x`` prefixes allowed."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 0)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise ValueError(f"give a whole number {bound}")
        return value

    return parse


_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


def flag_option(text: str) -> bool:
    """A parser for a yes/no option: 1/yes/true/on or 0/no/false/off."""
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError("give 1 or 0 (yes/no, true/false, on/off)")


def _option_pairs(options: OptionsSpec) -> list[tuple[str, str]]:
    if isinstance(options, Mapping):
        return [(str(k), str(v)) for k, v in options.items()]
    if isinstance(options, str):
        options = [options]
    pairs = []
    for item in options:
        if isinstance(item, str):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ProctapError(f"backend option {item!r} is not NAME=VALUE")
        elif isinstance(item, tuple) and len(item) == 2:
            name, value = str(item[0]), str(item[1])
        else:
            raise ProctapError(f"backend option {item!r}: give \"NAME=VALUE\" strings, (name, value) pairs or a dict")
        pairs.append((name.strip(), value))
    return pairs


def check_options(backend: type[Backend], options: OptionsSpec) -> tuple[tuple[str, str], ...]:
    """The options as (name, value) text pairs, each checked against what ``backend`` accepts.

    Raises ProctapError (one line naming what the backend accepts) for an unknown or repeated name or a bad value.
    """
    accepted = {opt.name: opt for opt in backend.accepted_options}
    pairs = _option_pairs(options)
    seen: set[str] = set()
    for name, value in pairs:
        opt = accepted.get(name)
        if opt is None:
            if not accepted:
                raise ProctapError(f"backend {backend.name} takes no options (got {name}={value})")
            usage = ", ".join(o.usage() for o in backend.accepted_options)
            raise ProctapError(f"backend {backend.name} has no option {name!r}: it accepts {usage}")
        if name in seen:
            raise ProctapError(f"backend option {name} given twice: give it once")
        seen.add(name)
        try:
            opt.parse(value)
        except ValueError as exc:
            raise ProctapError(f"backend {backend.name} option {name}={value!r}: {exc}") from None
    return tuple(pairs)


class Backend(abc.ABC):
    """A source of events.  Open on construction; ``close()`` releases every kernel resource it made.

    ``fileno()`` becomes readable when events may be ready; ``read_events()`` never blocks and returns what is
    ready now (possibly nothing).  Backends are context managers.
    """

    name: ClassVar[str]
    features: ClassVar[frozenset[Feature]]
    description: ClassVar[str] = ""
    accepted_options: ClassVar[tuple[BackendOption, ...]] = ()  # what ``-o NAME=VALUE`` may name

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    def option_value(self, name: str) -> object:
        """The parsed value of an accepted option, or None when not given (the Watcher checked it already)."""
        text = self.config.option(name)
        if text is None:
            return None
        (opt,) = (o for o in self.accepted_options if o.name == name)
        try:
            return opt.parse(text)
        except ValueError as exc:
            raise ProctapError(f"backend {self.name} option {name}={text!r}: {exc}") from None

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Availability:
        """Whether this backend can work here, checked without leaving anything behind in the kernel."""

    @abc.abstractmethod
    def fileno(self) -> int: ...

    @abc.abstractmethod
    def read_events(self) -> list:  # type: ignore[type-arg]  # list[Event]
        """Drain what is ready without blocking."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """Backend-specific counters (e.g. buffer size, kernel overruns); empty by default."""
        return {}

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StartTimes:
    """Process start times (ns since boot) by pid, learnt from Fork events or, failing that, from /proc.

    Backends use it to fill ``Event.start_ns`` (the PID-reuse-safe key) and ``Exit.lifetime_ns``.
    """

    __slots__ = ("_starts",)

    def __init__(self) -> None:
        self._starts: dict[int, int] = {}

    def started(self, pid: int, start_ns: int) -> None:
        """A process started (its Fork event)."""
        self._starts[pid] = start_ns

    def get(self, pid: int) -> int | None:
        """The start of a live process; looked up in /proc (and remembered) when its Fork was not seen."""
        start = self._starts.get(pid)
        if start is None:
            start = proc_start_ns(pid)
            if start is not None:
                self._starts[pid] = start
        return start

    def ended(self, pid: int) -> int | None:
        """A process ended: forget it and return its start."""
        start = self._starts.pop(pid, None)
        if start is None:
            start = proc_start_ns(pid)
        return start

    def preload(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.get(pid)

    def __len__(self) -> int:
        return len(self._starts)


class Common(TypedDict):
    """The fields every event has (see :mod:`proctap.events`)."""

    source: str
    timestamp_ns: int
    wall_time: float
    pid: int
    tid: int
    start_ns: int | None


class Stamp:
    """Fills the fields every event of one backend shares: ``Fork(**stamp(ts, pid, tid, start_ns), parent_pid=...)``.

    It builds a dict per event: the hottest paths (bpf and netlink fork/exec/exit) spell the fields out instead.
    """

    __slots__ = ("clock", "source")

    def __init__(self, source: str, clock: Clock) -> None:
        self.source = source
        self.clock = clock

    def __call__(self, ts: int, pid: int, tid: int, start_ns: int | None = None) -> Common:
        return {
            "source": self.source,
            "timestamp_ns": ts,
            "wall_time": (ts + self.clock.wall_offset_ns) / 1e9,
            "pid": pid,
            "tid": tid,
            "start_ns": start_ns,
        }

    def lost(self, ts: int | None, count: int | None, reason: str, cpu: int | None = None) -> Lost:
        """A Lost event at ``ts`` (None: now)."""
        return Lost(**self(time.monotonic_ns() if ts is None else ts, 0, 0), count=count, reason=reason, cpu=cpu)
