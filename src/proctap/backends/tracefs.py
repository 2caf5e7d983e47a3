"""The tracefs backend: static tracepoints read from a private tracefs instance (no BPF, no modules).

Tracepoints (decoded with decoders generated from each event's ``format``, so the layout of the running kernel is
used):

* ``task:task_newtask`` (in the parent: ``common_pid`` = creating thread, ``pid`` = new task, ``clone_flags``)
  -> Fork; CLONE_THREAD tells thread from process.  ``sched:sched_process_fork`` says nothing more and is not used.
* ``sched:sched_process_exec`` (``filename``, ``pid``, ``old_pid``) -> Exec.
* ``sched:sched_process_exit`` (per task; ``group_dead`` on newer kernels) -> Exit, with the status put together
  from ``syscalls:sys_enter_exit``/``sys_enter_exit_group`` (the code) and ``signal:signal_deliver`` /
  ``signal:signal_generate`` (deaths by signal), see :class:`ExitTracker`.
* ``syscalls:sys_exit_{clone,clone3,fork,vfork}`` filtered in the kernel to ``ret < 0`` -> ForkFailed.

Tracepoint ``pid`` fields are task ids; the thread-group id of a task is learnt from task_newtask (a new process:
tgid = its tid; a new thread: the creator's tgid) with ``/proc/TID/status`` as fallback for tasks older than the
watcher.  No pid filter is set in the kernel: a subtree cannot be written as a static filter (the watcher filters
exactly); the kernel filters only what is never wanted (successful clones, signals that cannot kill).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from ..errors import BackendUnavailable, ProctapError
from ..events import Event, EventKind, Exec, Exit, Fork, ForkFailed, Lost, Origin
from ..linux.clock import Clock
from ..linux.procfs import read_argv, read_comm, read_ppid
from ..linux.tracefs.format import RecordDecoder
from ..linux.tracefs.instance import TRACEFS_MOUNTS, find_tracefs
from ..linux.tracefs.reader import TraceReader
from .base import Availability, Backend, BackendConfig, Feature, StartTimes
from .tracing_common import CLONE_PARENT, CLONE_THREAD, TaskGroups

__all__ = ["ExitTracker", "TracefsBackend"]


# Signals whose default action is not to terminate (kernel/signal.c: SIG_KERNEL_IGNORE_MASK, SIG_KERNEL_STOP_MASK,
# SIGCONT); every other signal kills a task that did not install a handler.
_NOT_FATAL = frozenset(int(s) for s in (signal.SIGCHLD, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP,
                                       signal.SIGTTIN, signal.SIGTTOU, signal.SIGURG, signal.SIGWINCH))  # fmt: skip
_MAY_KILL = " && ".join(f"sig != {s}" for s in sorted(_NOT_FATAL))
# include/trace/events/signal.h: TRACE_SIGNAL_DELIVERED 0 ... TRACE_SIGNAL_LOSE_INFO 4 (queued without siginfo)
_GENERATE_FILTER = f"(result == 0 || result == 4) && {_MAY_KILL}"
_DELIVER_FILTER = f"sa_handler == 0 && {_MAY_KILL}"  # SIG_DFL: the default action is taken
_FORK_SYSCALLS = ("clone", "clone3", "fork", "vfork")  # clone3 exists since 5.3: used where present
# Without these the declared features (exit status, failed forks) could not be delivered.
_REQUIRED_EVENTS = (
    "task/task_newtask", "sched/sched_process_exec", "sched/sched_process_exit", "syscalls/sys_enter_exit",
    "syscalls/sys_enter_exit_group", "syscalls/sys_exit_clone", "signal/signal_generate", "signal/signal_deliver",
)  # fmt: skip


class ExitTracker:
    """Puts together the wait status of exiting tasks from the tracepoints that precede sched_process_exit.

    The kernel's rule (kernel/exit.c wait_task_zombie): a process's status is ``signal->group_exit_code`` when the
    group exited as a whole (exit_group(2) or a fatal signal: the first cause wins), else the leader's own
    ``exit_code``.  Causes, in stream order:

    * ``sys_enter_exit_group(code)``: group status ``code << 8``; ``sys_enter_exit(code)``: that task's ``code << 8``.
    * ``signal_deliver`` with SIG_DFL of a signal that kills: group status = that signal.  A fatal signal sent to a
      whole process short-circuits (kernel/signal.c complete_signal): every thread then "delivers" SIGKILL, while
      the status is the signal *sent*; so the last signal that could kill, generated for the process
      (``signal_generate``), is what a delivered SIGKILL stands for.
    * an exec ends a group exit started by de_thread() (the other threads were killed, the process lives on).

    The core-dump bit (0x80) is not seen by any of these tracepoints and is never set.
    """

    __slots__ = ("_fatal_sent", "_group", "_task")

    def __init__(self) -> None:
        self._task: dict[int, int] = {}  # tid -> status from exit(2)
        self._group: dict[int, int] = {}  # tgid -> group exit status
        self._fatal_sent: dict[int, int] = {}  # tgid -> last signal that could kill it, sent to it

    def exit_syscall(self, tid: int, code: int) -> None:
        self._task[tid] = (code & 0xFF) << 8

    def exit_group_syscall(self, tid: int, tgid: int, code: int) -> None:
        status = (code & 0xFF) << 8
        self._task[tid] = status
        self._group.setdefault(tgid, status)

    def signal_sent(self, tgid: int, sig: int) -> None:
        self._fatal_sent[tgid] = sig

    def signal_taken(self, tgid: int, sig: int) -> None:
        if sig == signal.SIGKILL:
            sig = self._fatal_sent.get(tgid, sig)
        self._group.setdefault(tgid, sig)

    def exec(self, tgid: int) -> None:
        self._group.pop(tgid, None)
        self._fatal_sent.pop(tgid, None)

    def thread_exited(self, tid: int, tgid: int) -> int | None:
        """The status of a thread that ended while its process lives on (the leader's code is kept)."""
        status = self._task.get(tid) if tid == tgid else self._task.pop(tid, None)
        return status if status is not None else self._group.get(tgid)

    def process_exited(self, tid: int, tgid: int) -> int | None:
        """The wait status of a process whose last task ``tid`` ended; forgets the process."""
        group = self._group.pop(tgid, None)
        own = self._task.pop(tid, None)
        leader = self._task.pop(tgid, None)
        self._fatal_sent.pop(tgid, None)
        if group is not None:
            return group
        return leader if leader is not None else own

    def __len__(self) -> int:
        return len(self._task) + len(self._group) + len(self._fatal_sent)


Handler = Callable[[int, bytes, int, int], Event | None]


class TracefsBackend(Backend):
    """Task events from static tracepoints in a private tracefs instance."""

    name = "tracefs"
    description = "tracepoints through a private tracefs instance (root; no BPF needed)"
    features = frozenset(
        {
            Feature.FORK,
            Feature.THREADS,
            Feature.EXEC,
            Feature.EXEC_FILENAME_KERNEL,
            Feature.EXIT,
            Feature.EXIT_STATUS,
            Feature.FORK_FAILED,
            Feature.LOSS_EXACT,
        }
    )

    @classmethod
    def probe(cls) -> Availability:
        root = find_tracefs()
        if root is None:
            for mount in TRACEFS_MOUNTS:
                if os.path.isdir(mount) and not os.access(mount, os.R_OK | os.X_OK):
                    return Availability(False, f"cannot read {mount}: the tracefs backend needs root")
            return Availability(False, "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing (as root)")
        if not os.access(os.path.join(root, "instances"), os.W_OK):
            return Availability(False, f"cannot create tracefs instances in {root}: run as root")
        for event in _REQUIRED_EVENTS:
            if not os.path.exists(os.path.join(root, "events", event, "format")):
                hint = " (syscall tracepoints need CONFIG_FTRACE_SYSCALLS)" if event.startswith("syscalls/") else ""
                return Availability(False, f"this kernel has no tracepoint {event.replace('/', ':')}{hint}")
        return Availability(True)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.clock = Clock()
        self.starts = StartTimes()
        self.groups = TaskGroups()
        self.exits = ExitTracker()
        self._reader = TraceReader(self._buffer_kb(config))
        self._handlers: dict[int, Handler] = {}
        self._out: list[Event] = []  # where handlers that make several events put them
        self._parents: dict[int, int] = {}  # pid -> parent's pid at fork
        self._leader_gone: dict[int, str] = {}  # tgid -> comm of a leader that ended before its threads
        self._threads: dict[int, set[int]] = {}  # tgid -> live threads (only on kernels without group_dead)
        self._count_threads = False
        self._want_forks = EventKind.FORK in config.events
        self._want_thread_forks = self._want_forks and config.threads
        self._want_exits = EventKind.EXIT in config.events
        self._want_thread_exits = self._want_exits and config.threads
        self._decoders: dict[str, RecordDecoder] = {}
        try:
            self._enable_events(config.events)
            self._reader.start()
            self.groups.prime()
            if self._count_threads:
                for tid, tgid in self.groups.items():
                    if tid != tgid:
                        self._threads.setdefault(tgid, set()).add(tid)
        except BaseException:
            self._reader.close()
            raise

    @staticmethod
    def _buffer_kb(config: BackendConfig) -> int | None:
        if config.buffer_bytes is None:
            return None
        return max(4, config.buffer_bytes // 1024 // max(1, os.cpu_count() or 1))

    # -- set-up ------------------------------------------------------------------------------------------------
    def _enable(
        self,
        system: str,
        name: str,
        fields: tuple[str, ...],
        handler: Callable[..., Event | None],
        filter_expr: str | None = None,
        optional: tuple[str, ...] = (),
    ) -> bool:
        inst = self._reader.instance
        if not inst.has_event(system, name):
            return False
        fmt = inst.event_format(system, name)
        decoder = RecordDecoder(fmt, ("common_pid", *fields), optional)
        self._decoders[name] = decoder
        decode = decoder.decode

        def handle(ts: int, buf: bytes, start: int, length: int) -> Event | None:
            return handler(ts, *decode(buf, start, length))  # type: ignore[no-any-return]

        self._handlers[fmt.id] = handle
        try:
            inst.enable_event(system, name, filter_expr)
        except ProctapError:
            if filter_expr is None:
                raise
            inst.enable_event(system, name)  # a kernel refusing the filter costs work, not correctness
        return True

    def _enable_events(self, kinds: frozenset[EventKind]) -> None:
        # task_newtask, sched_process_exec and sched_process_exit are always on: they keep the tid -> tgid map (and
        # the other per-task state) exact and bounded, whatever kinds are wanted.
        if not self._enable("task", "task_newtask", ("pid", "comm", "clone_flags"), self._on_newtask):
            raise BackendUnavailable("this kernel has no task:task_newtask tracepoint: use the netlink backend")
        self._enable("sched", "sched_process_exec", ("filename", "pid", "old_pid"), self._on_exec)
        self._enable("sched", "sched_process_exit", ("comm", "pid", "group_dead"), self._on_exit,
                     optional=("group_dead",))  # fmt: skip
        # "count_threads=1" takes the path of kernels without group_dead on any kernel (tested here on 6.18)
        self._count_threads = (
            self._decoders["sched_process_exit"].event.field("group_dead") is None
            or self.config.option("count_threads") == "1"
        )
        if EventKind.EXIT in kinds:
            self._enable("syscalls", "sys_enter_exit", ("error_code",), self._on_exit_syscall)
            self._enable("syscalls", "sys_enter_exit_group", ("error_code",), self._on_exit_group_syscall)
            self._enable("signal", "signal_generate", ("sig", "pid", "result"), self._on_signal_generate,
                         _GENERATE_FILTER)  # fmt: skip
            self._enable("signal", "signal_deliver", ("sig", "sa_handler"), self._on_signal_deliver, _DELIVER_FILTER)
        if EventKind.FORK_FAILED in kinds:
            for syscall in _FORK_SYSCALLS:
                self._enable("syscalls", f"sys_exit_{syscall}", ("ret",), self._fork_failed_handler(syscall),
                             "ret < 0")  # fmt: skip

    # -- Backend API -------------------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._reader.fileno()

    def read_events(self) -> list[Event]:
        if self._reader.closed:
            return []
        records, losses = self._reader.read()
        out: list[Event] = []
        if losses:
            wall = self.clock.wall_time
            ts = records[0][0] if records else time.monotonic_ns()
            for cpu, count in losses:
                out.append(Lost(source="tracefs", timestamp_ns=ts, wall_time=wall(ts), pid=0, tid=0, count=count,
                                reason="tracefs ring buffer overrun", cpu=cpu))  # fmt: skip
        handlers = self._handlers
        self._out = out
        append = out.append
        for ts, type_id, buf, start, length in records:
            handler = handlers.get(type_id)
            if handler is None:
                continue
            event = handler(ts, buf, start, length)
            if event is not None:
                append(event)
        return out

    def close(self) -> None:
        self._reader.close()

    def stats(self) -> dict[str, int]:
        out = self._reader.stats()
        out["tracked_tasks"] = len(self.starts)
        out["pending_exit_state"] = len(self.exits) + len(self._leader_gone)
        return out

    @property
    def instance_name(self) -> str:
        return self._reader.instance.name

    # -- handlers: (timestamp, common_pid, fields...) -> Event | None ----------------------------------------------
    def _on_newtask(self, ts: int, parent_tid: int, tid: int, comm: str, clone_flags: int) -> Event | None:
        groups = self.groups
        parent_tgid = groups.tgid(parent_tid)
        if clone_flags & CLONE_THREAD:
            groups.new_task(tid, parent_tgid)
            if self._count_threads:
                self._threads.setdefault(parent_tgid, set()).add(tid)
            if not self._want_thread_forks:
                return None
            return Fork(source="tracefs", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=parent_tgid,
                        tid=tid, start_ns=self.starts.get(parent_tgid), parent_pid=parent_tgid,
                        parent_tid=parent_tid, is_thread=True, clone_flags=clone_flags, comm=comm)  # fmt: skip
        groups.new_task(tid, tid)
        start_ns = self.clock.since_boot(ts)
        self.starts.started(tid, start_ns)
        parent = parent_tgid
        if clone_flags & CLONE_PARENT:  # the new process is a sibling of its creator (kernel/fork.c)
            parent = read_ppid(parent_tgid) or parent_tgid
        self._parents[tid] = parent
        if not self._want_forks:
            return None
        return Fork(source="tracefs", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=tid, tid=tid,
                    start_ns=start_ns, parent_pid=parent, parent_tid=parent_tid, is_thread=False,
                    clone_flags=clone_flags, comm=comm)  # fmt: skip

    def _on_exec(self, ts: int, _tid: int, filename: str, pid: int, old_pid: int) -> Event | None:
        # After de_thread() the exec'ing thread has taken the leader's pid: pid is the tgid, old_pid its former tid.
        if old_pid != pid:
            self.groups.forget(old_pid)
        self.groups.new_task(pid, pid)
        self.exits.exec(pid)
        self._leader_gone.pop(pid, None)
        self._threads.pop(pid, None)
        if EventKind.EXEC not in self.config.events:
            return None
        argv = comm = None
        parent = self._parents.get(pid)
        if self.config.read_proc:
            argv = read_argv(pid)
            comm = read_comm(pid)
            if parent is None:
                parent = read_ppid(pid)
        return Exec(source="tracefs", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=pid, tid=pid,
                    start_ns=self.starts.get(pid), filename=filename, filename_from=Origin.KERNEL, argv=argv,
                    argc=None if argv is None else len(argv), argv_from=None if argv is None else Origin.PROC,
                    comm=comm, comm_from=None if comm is None else Origin.PROC, parent_pid=parent)  # fmt: skip

    def _on_exit(self, ts: int, _current: int, comm: str, tid: int, group_dead: int | None) -> None:
        """One task ended.  Like the proc connector, every task but the leader gets a thread Exit, and the leader's
        is the process Exit, reported when the last task of the process is gone (``group_dead``): a leader that
        ends before its threads (exit_group kills them in any order, or pthread_exit) is held back until then."""
        groups = self.groups
        tgid = groups.tgid(tid)
        groups.forget(tid)
        if self._count_threads:  # older kernels (6.1) lack group_dead: count the threads of each process
            group_dead = self._last_task(tid, tgid)
        if tid != tgid:
            status = self.exits.thread_exited(tid, tgid)
            if self._want_thread_exits:
                self._out.append(self._exit_event(ts, tgid, tid, True, status, comm, self.starts.get(tgid)))
            if not group_dead:
                return
        elif not group_dead:
            self._leader_gone[tgid] = comm
            return
        status = self.exits.process_exited(tid, tgid)
        self._threads.pop(tgid, None)
        comm = self._leader_gone.pop(tgid, comm)
        start_ns = self.starts.ended(tgid)
        parent = self._parents.pop(tgid, None)
        if parent is None and self.config.read_proc and self._want_exits:
            parent = read_ppid(tgid)  # a process older than the watcher: /proc, while it is a zombie
        if self._want_exits:
            self._out.append(self._exit_event(ts, tgid, tgid, False, status, comm, start_ns, parent))

    def _last_task(self, tid: int, tgid: int) -> bool:
        threads = self._threads.get(tgid)
        if tid != tgid:
            if threads is not None:
                threads.discard(tid)
            return not threads and tgid in self._leader_gone
        return not threads

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
    ) -> Exit:
        exit_code = sig = None
        if status is not None:
            if status & 0x7F:
                sig = status & 0x7F
            else:
                exit_code = (status >> 8) & 0xFF
        clock = self.clock
        lifetime = None if start_ns is None else max(0, clock.since_boot(ts) - start_ns)
        return Exit(source="tracefs", timestamp_ns=ts, wall_time=clock.wall_time(ts), pid=pid, tid=tid,
                    start_ns=start_ns, is_thread=is_thread, status=status, exit_code=exit_code, signal=sig,
                    lifetime_ns=lifetime, comm=comm, parent_pid=parent)  # fmt: skip

    def _on_exit_syscall(self, _ts: int, tid: int, code: int) -> None:
        self.exits.exit_syscall(tid, code)

    def _on_exit_group_syscall(self, _ts: int, tid: int, code: int) -> None:
        self.exits.exit_group_syscall(tid, self.groups.tgid(tid), code)

    # The kernel filters these already; the checks repeat the filters for a kernel that refused them.
    def _on_signal_generate(self, _ts: int, _sender: int, sig: int, target: int, result: int) -> None:
        if result in (0, 4) and sig not in _NOT_FATAL:
            self.exits.signal_sent(self.groups.tgid(target), sig)

    def _on_signal_deliver(self, _ts: int, tid: int, sig: int, sa_handler: int) -> None:
        if sa_handler == 0 and sig not in _NOT_FATAL:
            self.exits.signal_taken(self.groups.tgid(tid), sig)

    def _fork_failed_handler(self, syscall: str) -> Callable[[int, int, int], Event | None]:
        def on_fork_failed(ts: int, tid: int, ret: int) -> Event | None:
            if ret >= 0:
                return None
            tgid = self.groups.tgid(tid)
            comm = read_comm(tgid, tid) if self.config.read_proc else None
            return ForkFailed(source="tracefs", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=tgid,
                              tid=tid, start_ns=self.starts.get(tgid), errno=-ret, syscall=syscall,
                              comm=comm)  # fmt: skip

        return on_fork_failed
