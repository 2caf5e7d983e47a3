"""The kprobe backend: kprobe/kretprobe dynamic events on the fork and exit paths, read from a private tracefs
instance (the same reader as the tracefs backend).

What it places (definitions in :mod:`proctap.linux.tracefs.kprobe_events`), in the group named after this process:

* an entry probe on ``kernel_clone`` (``_do_fork``/``do_fork`` on older kernels) keeping the clone flags, and a
  return probe on it (maxactive 20, backend option ``maxactive``) with ``$retval``: ``retval > 0`` -> Fork of that
  task id, anything else -> ForkFailed with ``errno = -retval`` (the seed's return handler);
* an entry probe on ``do_exit`` keeping the exit code (a wait status) and one on ``taskstats_exit`` (or
  ``acct_collect``) keeping ``group_dead``: the task was the last of its process -> the process Exit;
* the tracepoints ``syscalls:sys_exit_{execve,execveat}`` with ``ret < 0`` (ExecFailed), as the tracefs backend:
  simpler than a return probe on the exec path (``do_execveat_common`` is static and may be inlined) and the same on
  every kernel; filename and argv stay None (the entry tracepoints only carry the caller's pointers);
* the tracepoints ``sched:sched_process_exec`` (Exec) and ``task:task_newtask``.  task_newtask runs in the parent
  before the child can run; a vfork parent only returns from the fork function after its child exec'd or exited,
  so the child's events precede the parent's return record.  They are held back until the return probe reported
  the Fork, so that consumers (the pid filter follows Fork events) see the Fork first; the Fork is stamped with
  the time of task_newtask (the creation) where it was seen.

Losses: ring-buffer overruns (exact, from the reader) and probe misses from ``kprobe_profile`` (a return probe
misses when more than maxactive calls are in flight, e.g. parents blocked in vfork), both as ``Lost`` events.
Probes are removed on close, SIGTERM and at interpreter exit; those of a crashed earlier run are removed at start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import weakref

from ..errors import BackendUnavailable, ProctapError
from ..events import Event, EventKind, ForkFailed
from ..linux import procfs, sigterm
from ..linux.tracefs import kprobe_events
from ..linux.tracefs.instance import find_tracefs
from ..linux.tracefs.reader import TraceReader
from .base import Availability, BackendConfig, BackendOption, Feature, int_option
from .tracing_common import CLONE_THREAD, TRACING_FEATURES, TracingBackend, no_tracefs, not_writable

__all__ = ["KprobeBackend", "KprobeSet", "remove_stale_probes"]

DEFAULT_MAXACTIVE = 20
MAXACTIVE_MAX = 4096  # KRETPROBE_MAXACTIVE_MAX, kernel/trace/trace_kprobe.c
PROFILE_INTERVAL_S = 0.25  # how often kprobe_profile is read for misses
HOLD_RELEASE_NS = 2_000_000_000  # events of a child whose Fork never came (return probe missed) wait this long
UNCONFIRMED_FORGET_NS = 60_000_000_000  # a child whose parent's return never came is forgotten after this
UNAVAILABLE_NO_KPROBES = "this kernel has no kprobe events (CONFIG_KPROBE_EVENTS off): use tracefs or netlink"


def _append(path: str, line: str) -> None:
    """Append one command to a tracefs control file (``kprobe_events`` takes commands appended, not rewritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def remove_stale_probes(root: str) -> list[str]:
    """Remove the probe events of earlier watchers whose owner process is gone; their ``group/event`` names.

    Events still enabled somewhere (an instance kept open by a surviving child) are left for a later run.
    """
    path = os.path.join(root, "kprobe_events")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    removed = []
    defined = kprobe_events.parse_dynamic_events(text)
    stale = kprobe_events.stale_events(defined, lambda owner: procfs.process_alive(*owner))
    for event in stale:
        with contextlib.suppress(OSError):  # disabled at the top level too, in case a tool enabled it there
            _append(os.path.join(root, "events", event.group, event.event, "enable"), "0")
        try:
            _append(path, kprobe_events.removal_command(event.group, event.event))
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOENT):
                raise
            continue
        removed.append(f"{event.group}/{event.event}")
    return removed


class KprobeSet:
    """The probe events this process defined, removable in one call (idempotent)."""

    def __init__(self, root: str, names: kprobe_events.ProbeNames) -> None:
        self.root = root
        self.names = names
        self.path = os.path.join(root, "kprobe_events")
        self.events: list[str] = []

    def define(self, definition: str, event: str) -> None:
        """Add a probe; OSError from the kernel when it refuses (no such function, bad fetch argument...)."""
        _append(self.path, definition)
        self.events.append(event)

    def remove(self) -> None:
        """Remove every probe; the instance that enabled them must be gone first (EBUSY otherwise)."""
        events, self.events = self.events, []
        busy = []
        for event in reversed(events):
            try:
                _append(self.path, kprobe_events.removal_command(self.names.group, event))
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                busy.append(f"{event} ({exc.strerror})")
        if busy:
            raise ProctapError(f"cannot remove kprobe events {self.names.group}: {', '.join(busy)}")


def _cleanup(reader: TraceReader, probes: KprobeSet) -> None:
    reader.close()
    probes.remove()


_sequence = iter(range(1 << 62))


class KprobeBackend(TracingBackend):
    """Task events from kprobes on the fork and exit paths (plus the exec tracepoint) in a tracefs instance."""

    name = "kprobe"
    description = "kprobe/kretprobe dynamic events on kernel_clone and do_exit via a tracefs instance (root)"
    accepted_options = (
        BackendOption("maxactive", "N", int_option(0, MAXACTIVE_MAX), "concurrent return probes (0: kernel default)"),
    )
    features = TRACING_FEATURES | {Feature.CORE_DUMPED}

    @classmethod
    def probe(cls) -> Availability:
        root = find_tracefs()
        if root is None:
            return no_tracefs(cls.name)
        if not os.path.exists(os.path.join(root, "kprobe_events")):
            return Availability(False, UNAVAILABLE_NO_KPROBES)
        machine = os.uname().machine
        if machine not in kprobe_events.ARCH_ARG_REGISTERS:
            return Availability(False, f"no argument-register table for {machine}: use tracefs or netlink")
        for name, action in (("kprobe_events", "define kprobe events"), ("instances", "create tracefs instances")):
            refused = not_writable(root, os.path.join(root, name), action)
            if refused is not None:
                return refused
        return Availability(True)

    def __init__(self, config: BackendConfig) -> None:
        # Not probed again here: the caller chose this class through probe(); a failure below says what failed.
        self.config = config
        value = self.option_value("maxactive")
        self.maxactive = DEFAULT_MAXACTIVE if value is None else int(str(value))
        super().__init__(config)
        root = self._reader.instance.root
        self.stale_removed = remove_stale_probes(root)
        names = kprobe_events.ProbeNames(os.getpid(), procfs.read_start_ticks(os.getpid()) or 0, next(_sequence))
        self._probes = KprobeSet(root, names)
        self._finalizer = weakref.finalize(self, _cleanup, self._reader, self._probes)
        self._clone_flags: dict[int, int] = {}  # parent tid -> flags at the fork function's entry
        self._unconfirmed: dict[int, tuple[int, list[Event]]] = {}  # child tid -> (newtask ts, held events)
        self._newtask_flags: dict[int, int] = {}  # child tid -> clone flags from task_newtask
        self._pending_exit: dict[int, tuple[int, str]] = {}  # tid -> (do_exit code, comm) until group_dead
        self._misses: dict[str, int] = {}
        self._next_profile = 0.0
        self.fork_function = ""
        self.exit_group_function: str | None = None
        try:
            self._place_probes(root)
            self._enable_events()
            self._reader.start()
        except BaseException:
            self.close()
            raise
        sigterm.close_on_sigterm(self, self.close)

    # -- set-up ------------------------------------------------------------------------------------------------
    def _place_probes(self, root: str) -> None:
        probes, names = self._probes, self._probes.names
        machine, release = os.uname().machine, os.uname().release
        refused = []
        for function in kprobe_events.FORK_FUNCTIONS:
            try:
                probes.define(kprobe_events.fork_entry_probe(names, function, release, machine), names.fork_entry)
            except FileNotFoundError:
                raise BackendUnavailable(f"backend 'kprobe' unavailable: {UNAVAILABLE_NO_KPROBES}") from None
            except OSError as exc:
                refused.append(f"{function}: {exc.strerror}")
                continue
            self.fork_function = function
            break
        else:
            raise BackendUnavailable(f"the kernel refused a kprobe on the fork path ({'; '.join(refused)})")
        probes.define(kprobe_events.fork_return_probe(names, self.fork_function, self.maxactive), names.fork_return)
        probes.define(kprobe_events.exit_probe(names, machine), names.exit)
        for function in kprobe_events.EXIT_GROUP_FUNCTIONS:
            with contextlib.suppress(OSError):
                probes.define(kprobe_events.exit_group_probe(names, function, machine), names.exit_group)
                self.exit_group_function = function
                break

    def _enable_events(self) -> None:
        names = self._probes.names
        group = names.group
        kinds = self.config.events
        # The fork pair always: it maps threads to their process for Exit, and it is what this backend is about.
        self._enable(group, names.fork_entry, ("flags",), self._on_fork_entry)
        self._enable(group, names.fork_return, ("ret", "comm"), self._on_fork_return)
        self._enable("task", "task_newtask", ("pid", "clone_flags"), self._on_newtask)
        # (with failed execs: an exec after them tells that the comm read from /proc for them is the new program's)
        if EventKind.EXEC in kinds or EventKind.EXIT in kinds or EventKind.EXEC_FAILED in kinds:
            self._enable("sched", "sched_process_exec", ("filename", "pid", "old_pid"), self._on_exec)
        if EventKind.EXEC_FAILED in kinds:
            self._enable_exec_failed()
        if EventKind.EXIT in kinds:
            self._enable(group, names.exit, ("code", "comm"), self._on_exit)
            if self.exit_group_function is not None:
                self._enable(group, names.exit_group, ("group_dead",), self._on_exit_group)

    # -- Backend API -------------------------------------------------------------------------------------------
    def _drained(self) -> None:
        if self._unconfirmed:
            self._release_old_holds()
        if time.monotonic() >= self._next_profile:
            self._report_misses()

    def close(self) -> None:
        sigterm.forget(self)
        self._finalizer()

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["maxactive"] = self.maxactive
        out["kprobe_misses"] = sum(self._misses.values())
        out["held_children"] = len(self._unconfirmed)
        out["pending_exits"] = len(self._pending_exit) + len(self._leader_gone)
        return out

    @property
    def group(self) -> str:
        return self._probes.names.group

    # -- losses ------------------------------------------------------------------------------------------------
    def _report_misses(self) -> None:
        self._next_profile = time.monotonic() + PROFILE_INTERVAL_S
        try:
            with open(os.path.join(self._probes.root, "kprobe_profile")) as f:
                profile = kprobe_events.parse_kprobe_profile(f.read())
        except OSError:
            return
        for event in self._probes.events:
            entry = profile.get(event)
            if entry is None:
                continue
            new = entry.misses - self._misses.get(event, 0)
            if new > 0:
                self._misses[event] = entry.misses
                self._out.append(self.stamp.lost(None, new, f"kprobe {event} missed (kprobe_profile)"))

    # -- ordering: a child's events wait for its Fork -----------------------------------------------------------
    def _emit(self, tid: int, event: Event) -> None:
        held = self._unconfirmed.get(tid)
        if held is None:
            self._out.append(event)
        else:
            held[1].append(event)

    def _replace(self, old: Event, new: Event) -> None:
        for _, held in self._unconfirmed.values():
            for i, event in enumerate(held):
                if event is old:
                    held[i] = new
                    return
        super()._replace(old, new)

    def _release_old_holds(self) -> None:
        now = self._last_ts
        for tid, (ts, held) in list(self._unconfirmed.items()):
            age = now - ts
            if (held and age > HOLD_RELEASE_NS) or age > UNCONFIRMED_FORGET_NS:
                del self._unconfirmed[tid]
                self._newtask_flags.pop(tid, None)
                self._out.extend(held)

    # -- handlers: (timestamp, common_pid, fields...) ---------------------------------------------------------------
    def _on_fork_entry(self, _ts: int, tid: int, flags: int) -> None:
        self._clone_flags[tid] = flags

    def _on_newtask(self, ts: int, parent_tid: int, tid: int, clone_flags: int) -> None:
        tgid = self.groups.tgid(parent_tid) if clone_flags & CLONE_THREAD else tid
        self.groups.new_task(tid, tgid)
        self._unconfirmed[tid] = (ts, [])
        self._newtask_flags[tid] = clone_flags

    def _on_fork_return(self, ts: int, parent_tid: int, ret: int, comm: str) -> None:
        flags = self._clone_flags.pop(parent_tid, None)
        parent_tgid = self.groups.tgid(parent_tid)
        if ret <= 0:  # the seed's rule: only a positive return value is a new task
            if EventKind.FORK_FAILED in self.config.events:
                self._out.append(ForkFailed(**self.stamp(ts, parent_tgid, parent_tid, self.starts.get(parent_tgid)),
                                            errno=-ret, clone_flags=flags, syscall=None, comm=comm))  # fmt: skip
            return
        tid = ret
        held = self._unconfirmed.pop(tid, None)
        if held is not None:  # stamped with the creation (task_newtask), which precedes the child's own events
            ts = held[0]
        newtask_flags = self._newtask_flags.pop(tid, None)
        if flags is None:  # the entry probe missed (counted as Lost): the tracepoint's copy of the flags
            flags = newtask_flags
        is_thread = bool(flags & CLONE_THREAD) if flags is not None else self.groups.tgid(tid) != tid
        self._forked(ts, parent_tid, parent_tgid, tid, is_thread, flags, comm)
        if held is not None:
            self._out.extend(held[1])

    def _on_exit(self, ts: int, tid: int, code: int, comm: str) -> None:
        if self.exit_group_function is None:
            # no group_dead probe: a thread other than the leader is never the last (leader-first exits are rare)
            tgid = self.groups.tgid(tid)
            self._task_ended(ts, tid, tgid, comm, tid == tgid, code)
            return
        self._pending_exit[tid] = (code, comm)

    def _on_exit_group(self, ts: int, tid: int, group_dead: int) -> None:
        """The last task's status is the process's: in a group exit (exit_group, fatal signal) every task exits
        with the group's status (kernel/exit.c do_group_exit)."""
        code, comm = self._pending_exit.pop(tid, (None, ""))
        self._task_ended(ts, tid, self.groups.tgid(tid), comm, bool(group_dead), code)
