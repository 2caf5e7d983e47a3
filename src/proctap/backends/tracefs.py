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
* ``syscalls:sys_exit_{execve,execveat}`` filtered likewise -> ExecFailed, without filename or argv: the syscalls'
  entry tracepoints only carry the caller's pointers (their ``format``: ``const char * filename``).

Tracepoint ``pid`` fields are task ids; the thread-group id of a task is learnt from task_newtask (a new process:
tgid = its tid; a new thread: the creator's tgid) with ``/proc/TID/status`` as fallback for tasks older than the
watcher.  No pid filter is set in the kernel: a subtree cannot be written as a static filter (the watcher filters
exactly); the kernel filters only what is never wanted (successful clones, signals that cannot kill).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from ..errors import BackendUnavailable
from ..events import EventKind, ForkFailed
from ..linux.procfs import read_comm
from ..linux.tracefs.instance import find_tracefs
from .base import Availability, BackendConfig, BackendOption, flag_option
from .tracing_common import CLONE_THREAD, TRACING_FEATURES, TracingBackend, no_tracefs, not_writable

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
    "syscalls/sys_enter_exit_group", "syscalls/sys_exit_clone", "syscalls/sys_exit_execve", "signal/signal_generate",
    "signal/signal_deliver",
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


class TracefsBackend(TracingBackend):
    """Task events from static tracepoints in a private tracefs instance."""

    name = "tracefs"
    description = "tracepoints through a private tracefs instance (root; no BPF needed)"
    accepted_options = (
        BackendOption("count_threads", "1|0", flag_option, "count each process's threads instead of group_dead"),
    )
    features = TRACING_FEATURES

    @classmethod
    def probe(cls) -> Availability:
        root = find_tracefs()
        if root is None:
            return no_tracefs(cls.name)
        refused = not_writable(root, os.path.join(root, "instances"), "create tracefs instances")
        if refused is not None:
            return refused
        for event in _REQUIRED_EVENTS:
            if not os.path.exists(os.path.join(root, "events", event, "format")):
                hint = " (syscall tracepoints need CONFIG_FTRACE_SYSCALLS)" if event.startswith("syscalls/") else ""
                return Availability(False, f"this kernel has no tracepoint {event.replace('/', ':')}{hint}")
        return Availability(True)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.exits = ExitTracker()
        self._threads: dict[int, set[int]] = {}  # tgid -> live threads (only on kernels without group_dead)
        self._count_threads = False
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

    # -- set-up ------------------------------------------------------------------------------------------------
    def _enable_events(self, kinds: frozenset[EventKind]) -> None:
        # task_newtask, sched_process_exec and sched_process_exit are always on: they keep the tid -> tgid map (and
        # the other per-task state) exact and bounded, whatever kinds are wanted.
        if self._enable("task", "task_newtask", ("pid", "comm", "clone_flags"), self._on_newtask) is None:
            raise BackendUnavailable("this kernel has no task:task_newtask tracepoint: use the netlink backend")
        self._enable("sched", "sched_process_exec", ("filename", "pid", "old_pid"), self._on_exec)
        exit_decoder = self._enable("sched", "sched_process_exit", ("comm", "pid", "group_dead"), self._on_exit,
                                    optional=("group_dead",))  # fmt: skip
        # "count_threads=1" takes the path of kernels without group_dead on any kernel (tested here on 6.18)
        self._count_threads = (
            exit_decoder is None
            or exit_decoder.event.field("group_dead") is None
            or self.option_value("count_threads") is True
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
        if EventKind.EXEC_FAILED in kinds:
            self._enable_exec_failed()

    # -- Backend API -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._reader.close()

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["pending_exit_state"] = len(self.exits) + len(self._leader_gone)
        return out

    # -- handlers: (timestamp, common_pid, fields...) ----------------------------------------------------------------
    def _on_newtask(self, ts: int, parent_tid: int, tid: int, comm: str, clone_flags: int) -> None:
        parent_tgid = self.groups.tgid(parent_tid)
        is_thread = bool(clone_flags & CLONE_THREAD)
        if is_thread and self._count_threads:
            self._threads.setdefault(parent_tgid, set()).add(tid)
        self._forked(ts, parent_tid, parent_tgid, tid, is_thread, clone_flags, comm)

    def _exec_seen(self, pid: int) -> None:
        self.exits.exec(pid)
        self._threads.pop(pid, None)

    def _on_exit(self, ts: int, _current: int, comm: str, tid: int, group_dead: int | None) -> None:
        tgid = self.groups.tgid(tid)
        if self._count_threads:  # older kernels (6.1) lack group_dead: count the threads of each process
            group_dead = self._last_task(tid, tgid)
        self._task_ended(ts, tid, tgid, comm, bool(group_dead))

    def _last_task(self, tid: int, tgid: int) -> bool:
        threads = self._threads.get(tgid)
        if tid != tgid:
            if threads is not None:
                threads.discard(tid)
            return not threads and tgid in self._leader_gone
        return not threads

    def _thread_status(self, tid: int, tgid: int, code: int | None) -> int | None:
        return self.exits.thread_exited(tid, tgid)

    def _process_status(self, tid: int, tgid: int, code: int | None) -> int | None:
        self._threads.pop(tgid, None)
        return self.exits.process_exited(tid, tgid)

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

    def _fork_failed_handler(self, syscall: str) -> Callable[[int, int, int], None]:
        def on_fork_failed(ts: int, tid: int, ret: int) -> None:
            if ret >= 0:
                return
            tgid = self.groups.tgid(tid)
            self._emit(tid, ForkFailed(**self.stamp(ts, tgid, tid, self.starts.get(tgid)), errno=-ret,
                                       syscall=syscall, comm=read_comm(tgid, tid)))  # fmt: skip

        return on_fork_failed
