"""What the tracefs and kprobe backends share: both read tracepoint records of task ids from a private tracefs
instance and must map them to processes, follow clone flags and keep per-task exit bookkeeping; and both report
failed execs from the same tracepoints (:meth:`TracingBackend._enable_exec_failed`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ..errors import ProctapError
from ..events import Event, EventKind, Exec, ExecFailed, Exit, Fork, Origin, decode_wait_status
from ..linux.clock import Clock
from ..linux.procfs import read_comm, read_ppid, read_tgid
from ..linux.tracefs.format import RecordDecoder
from ..linux.tracefs.instance import TRACEFS_MOUNTS
from ..linux.tracefs.reader import TraceReader
from .base import Availability, Backend, BackendConfig, Feature, Stamp, StartTimes

__all__ = [
    "CLONE_PARENT",
    "CLONE_THREAD",
    "EXEC_SYSCALLS",
    "TRACING_FEATURES",
    "TaskGroups",
    "TracingBackend",
    "no_tracefs",
    "not_writable",
]

CLONE_THREAD = 0x10000  # include/uapi/linux/sched.h
CLONE_PARENT = 0x8000
TRACING_FEATURES = frozenset(
    {
        Feature.FORK,
        Feature.THREADS,
        Feature.EXEC,
        Feature.EXEC_FILENAME_KERNEL,
        Feature.EXIT,
        Feature.EXIT_STATUS,
        Feature.FORK_FAILED,
        Feature.EXEC_FAILED,
        Feature.LOSS_EXACT,
    }
)
EXEC_SYSCALLS = ("execve", "execveat")


def no_tracefs(backend: str) -> Availability:
    """Why ``backend`` cannot work when no tracefs was found: not mounted, or not readable by this user.

    Access is checked with the effective ids and capabilities (what opening the files will use), not the real ids
    access(2) checks by default: a user granted CAP_DAC_OVERRIDE can use tracefs.
    """
    for mount in TRACEFS_MOUNTS:
        if os.path.isdir(mount) and not os.access(mount, os.R_OK | os.X_OK, effective_ids=True):
            return Availability(False, f"cannot read {mount}: the {backend} backend needs root")
    return Availability(False, "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing (as root)")


def not_writable(root: str, path: str, action: str) -> Availability | None:
    """Why ``action`` on ``path`` (in the tracefs mounted at ``root``) will fail, or None when it can be done:
    a read-only mount (root cannot write either), else permissions (effective ids and capabilities)."""
    if os.access(path, os.W_OK, effective_ids=True):
        return None
    try:
        read_only = bool(os.statvfs(root).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return Availability(False, f"{root} is mounted read-only, so proctap cannot {action}: remount it read-write")
    return Availability(False, f"cannot {action} in {root}: run as root")


class TaskGroups:
    """tid -> tgid, learnt from task_newtask and execs, /proc as fallback (tasks that predate the watcher)."""

    __slots__ = ("_tgid",)

    def __init__(self) -> None:
        self._tgid: dict[int, int] = {}

    def tgid(self, tid: int) -> int:
        tgid = self._tgid.get(tid)
        if tgid is None:
            tgid = read_tgid(tid) or tid
            self._tgid[tid] = tgid
        return tgid

    def prime(self) -> None:
        """Learn every existing thread from /proc/PID/task (call after tracing is on: later ones are traced).
        Without it a thread that predates the watcher and is reaped before its exit record is drained could not
        be placed in its process."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                self._tgid.setdefault(int(tid), pid)

    def items(self) -> list[tuple[int, int]]:
        return list(self._tgid.items())

    def new_task(self, tid: int, tgid: int) -> None:
        self._tgid[tid] = tgid

    def forget(self, tid: int) -> None:
        self._tgid.pop(tid, None)


Handler = Callable[[int, bytes, int, int], None]


class TracingBackend(Backend):
    """A backend reading a private tracefs instance: records decoded with the running kernel's ``format`` files and
    dispatched to handlers ``(timestamp, common_pid, fields...)`` that put events in ``_out`` through :meth:`_emit`.

    It keeps what both backends need: the tid -> tgid map, process starts and parents from forks, and exits told
    like the proc connector: a thread Exit for every task but the leader, and the process Exit (pid = tid = the
    leader's) when the last task of the process is gone.
    """

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.clock = Clock()
        self.stamp = Stamp(self.name, self.clock)
        self.starts = StartTimes()
        self.groups = TaskGroups()
        self._reader = TraceReader(self._buffer_kb(config))
        self._handlers: dict[int, Handler] = {}
        self._out: list[Event] = []  # the events of the records being read
        self._last_ts = 0  # the newest record read
        self._parents: dict[int, int] = {}  # pid -> parent's pid at fork
        self._thread_starts: dict[int, int] = {}  # tid -> start (ns since boot) of a thread seen created
        self._leader_gone: dict[int, str] = {}  # tgid -> comm of a leader that ended before its threads
        self._failed_execs: dict[int, list[ExecFailed]] = {}  # tgid -> ExecFailed of this read with a /proc comm
        self._exec_record: tuple[int, Callable[[bytes, int, int], tuple[object, ...]]] | None = None
        kinds = config.events
        self._want_forks = EventKind.FORK in kinds
        self._want_thread_forks = self._want_forks and config.threads
        self._want_execs = EventKind.EXEC in kinds
        self._want_exits = EventKind.EXIT in kinds
        self._want_thread_exits = self._want_exits and config.threads

    @staticmethod
    def _buffer_kb(config: BackendConfig) -> int | None:
        if config.buffer_bytes is None:
            return None
        return max(4, config.buffer_bytes // 1024 // max(1, os.cpu_count() or 1))

    def _enable(
        self,
        system: str,
        name: str,
        fields: tuple[str, ...],
        handler: Callable[..., None],
        filter_expr: str | None = None,
        optional: tuple[str, ...] = (),
    ) -> RecordDecoder | None:
        """Decode ``system:name`` records into ``handler(ts, common_pid, *fields)``; None when the kernel lacks it."""
        inst = self._reader.instance
        if not inst.has_event(system, name):
            return None
        fmt = inst.event_format(system, name)
        decoder = RecordDecoder(fmt, ("common_pid", *fields), optional)
        decode = decoder.decode

        def handle(ts: int, buf: bytes, start: int, length: int) -> None:
            handler(ts, *decode(buf, start, length))

        self._handlers[fmt.id] = handle
        if (system, name) == ("sched", "sched_process_exec"):
            self._exec_record = (fmt.id, decode)  # common_pid first: after de_thread the process's pid
        try:
            inst.enable_event(system, name, filter_expr)
        except ProctapError:
            if filter_expr is None:
                raise
            inst.enable_event(system, name)  # a kernel refusing the filter costs work, not correctness
        return decoder

    # -- Backend API -------------------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._reader.fileno()

    def read_events(self) -> list[Event]:
        if self._reader.closed:
            return []
        records, losses = self._reader.read()
        out: list[Event] = []
        self._out = out
        self._failed_execs.clear()
        if losses:
            ts = records[0][0] if records else None
            out.extend(self.stamp.lost(ts, count, "tracefs ring buffer overrun", cpu) for cpu, count in losses)
        handlers = self._handlers
        for ts, type_id, buf, start, length in records:
            handler = handlers.get(type_id)
            if handler is not None:
                handler(ts, buf, start, length)
        if self._failed_execs:
            self._execs_held_back()
        if records:
            self._last_ts = records[-1][0]
        self._drained()
        return out

    def _drained(self) -> None:
        """Called after each read, to add events that are not records (none here)."""

    def stats(self) -> dict[str, int]:
        out = self._reader.stats()
        out["tracked_tasks"] = len(self.starts)
        return out

    @property
    def instance_name(self) -> str:
        return self._reader.instance.name

    # -- events --------------------------------------------------------------------------------------------------
    def _emit(self, tid: int, event: Event) -> None:
        """Deliver an event about task ``tid`` (a backend may hold it back)."""
        self._out.append(event)

    def _forked(
        self, ts: int, parent_tid: int, parent_tgid: int, tid: int, is_thread: bool, flags: int | None, comm: str
    ) -> None:
        """Task ``tid`` was created by ``parent_tid`` (of process ``parent_tgid``)."""
        if is_thread:
            self.groups.new_task(tid, parent_tgid)
            self._thread_starts[tid] = self.clock.since_boot(ts)
            if self._want_thread_forks:
                self._emit(tid, Fork(**self.stamp(ts, parent_tgid, tid, self.starts.get(parent_tgid)),
                                     parent_pid=parent_tgid, parent_tid=parent_tid, is_thread=True, clone_flags=flags,
                                     comm=comm))  # fmt: skip
            return
        self.groups.new_task(tid, tid)
        start_ns = self.clock.since_boot(ts)
        self.starts.started(tid, start_ns)
        parent = parent_tgid
        if flags is not None and flags & CLONE_PARENT:  # the new process is a sibling of its creator (kernel/fork.c)
            parent = read_ppid(parent_tgid) or parent_tgid
        self._parents[tid] = parent
        if self._want_forks:
            self._emit(tid, Fork(**self.stamp(ts, tid, tid, start_ns), parent_pid=parent, parent_tid=parent_tid,
                                 is_thread=False, clone_flags=flags, comm=comm))  # fmt: skip

    def _on_exec(self, ts: int, _tid: int, filename: str, pid: int, old_pid: int) -> None:
        # After de_thread() the exec'ing thread has taken the leader's pid: pid is the tgid, old_pid its former tid.
        if old_pid != pid:
            self.groups.forget(old_pid)
            self._thread_starts.pop(old_pid, None)  # it is the leader now: its end is the process's
        self.groups.new_task(pid, pid)
        self._leader_gone.pop(pid, None)
        if self._failed_execs:
            self._forget_stale_comms(pid)
        self._exec_seen(pid)
        if self._want_execs:
            self._emit(pid, Exec(**self.stamp(ts, pid, pid, self.starts.get(pid)), filename=filename,
                                 filename_from=Origin.KERNEL, parent_pid=self._parents.get(pid)))  # fmt: skip

    def _exec_seen(self, pid: int) -> None:
        """Process ``pid`` exec'd: its other threads are gone (de_thread)."""

    # -- failed execs ----------------------------------------------------------------------------------------------
    def _enable_exec_failed(self) -> int:
        """``syscalls:sys_exit_{execve,execveat}`` filtered in the kernel to ``ret < 0`` -> ExecFailed; returns how
        many of the two the kernel has.  The entry tracepoints carry only the caller's pointers (``const char *
        filename``, ``argv``: 6.1 and 6.18 alike), so filename and argv stay None; comm is read from /proc."""
        count = 0
        for syscall in EXEC_SYSCALLS:
            handler = self._exec_failed_handler(syscall)
            if self._enable("syscalls", f"sys_exit_{syscall}", ("ret",), handler, "ret < 0") is not None:
                count += 1
        return count

    def _exec_failed_handler(self, syscall: str) -> Callable[[int, int, int], None]:
        def on_exec_failed(ts: int, tid: int, ret: int) -> None:
            if ret >= 0:  # a kernel that refused the filter
                return
            tgid = self.groups.tgid(tid)
            event = ExecFailed(**self.stamp(ts, tgid, tid, self.starts.get(tgid)), errno=-ret, syscall=syscall,
                               comm=read_comm(tgid, tid))  # fmt: skip
            self._emit(tid, event)
            if event.comm is not None:
                self._failed_execs.setdefault(tgid, []).append(event)

        return on_exec_failed

    def _forget_stale_comms(self, pid: int) -> None:
        """Process ``pid`` exec'd after failed execs of this read: the comm /proc gave them is the new program's
        (every record of a read was written before /proc was asked), so they get None instead.  The usual case:
        execvp trying each PATH directory before the one that works."""
        for event in self._failed_execs.pop(pid, ()):
            self._replace(event, dataclasses.replace(event, comm=None))

    def _execs_held_back(self) -> None:
        """An exec of the reader's held-back records (stamped just before this read, handled with the next) also
        happened before /proc was asked for the comm of a failed exec of the same process."""
        if self._exec_record is None:
            return
        exec_id, decode = self._exec_record
        for _ts, type_id, buf, start, length in self._reader.held:
            if type_id == exec_id:
                pid = decode(buf, start, length)[0]
                if pid in self._failed_execs:
                    self._forget_stale_comms(pid)

    def _replace(self, old: Event, new: Event) -> None:
        """Put ``new`` where ``old`` was emitted during this read."""
        out = self._out
        for i in range(len(out) - 1, -1, -1):
            if out[i] is old:
                out[i] = new
                return

    def _task_ended(self, ts: int, tid: int, tgid: int, comm: str, group_dead: bool, code: int | None = None) -> None:
        """Task ``tid`` of process ``tgid`` ended (``code``: its do_exit code where the backend sees it).

        Every task but the leader gets a thread Exit; the leader's is the process Exit, reported when the last task
        of the process is gone (``group_dead``): a leader that ends before its threads (exit_group kills them in
        any order, or pthread_exit) is held back until then.
        """
        self.groups.forget(tid)
        if tid != tgid:
            status = self._thread_status(tid, tgid, code)
            thread_start = self._thread_starts.pop(tid, None)  # None: older than the watcher, start unknown
            if self._want_thread_exits:
                self._emit(tid, self._exit_event(ts, tgid, tid, True, status, comm, self.starts.get(tgid),
                                                 lifetime_from=thread_start))  # fmt: skip
            if not group_dead:
                return
        elif not group_dead:
            self._leader_gone[tgid] = comm
            return
        status = self._process_status(tid, tgid, code)
        comm = self._leader_gone.pop(tgid, comm)
        start_ns = self.starts.ended(tgid)
        parent = self._parents.pop(tgid, None)
        if not self._want_exits:
            return
        if parent is None:
            parent = read_ppid(tgid)  # a process older than the watcher: /proc, while it is a zombie
        self._emit(tgid, self._exit_event(ts, tgid, tgid, False, status, comm, start_ns, parent))

    def _thread_status(self, tid: int, tgid: int, code: int | None) -> int | None:
        """The wait status of a thread that ended while its process lives on."""
        return None if code is None else code & 0xFFFF

    def _process_status(self, tid: int, tgid: int, code: int | None) -> int | None:
        """The wait status of a process whose last task ``tid`` ended; forgets the process's exit state."""
        return None if code is None else code & 0xFFFF

    def _exit_event(
        self,
        ts: int,
        pid: int,
        tid: int,
        is_thread: bool,
        status: int | None,
        comm: str,
        start_ns: int | None,
        parent: int | None = None,
        lifetime_from: int | None = None,
    ) -> Exit:
        """``start_ns`` is the process's start (the key); a thread's lifetime runs from its own start,
        ``lifetime_from`` (None: unknown), a process's from ``start_ns``."""
        exit_code = sig = None
        core = False
        if status is not None:
            exit_code, sig, core = decode_wait_status(status)
        begin = lifetime_from if is_thread else start_ns
        lifetime = None if begin is None else max(0, self.clock.since_boot(ts) - begin)
        return Exit(**self.stamp(ts, pid, tid, start_ns), is_thread=is_thread, status=status, exit_code=exit_code,
                    signal=sig, core_dumped=core, lifetime_ns=lifetime, comm=comm, parent_pid=parent)  # fmt: skip
