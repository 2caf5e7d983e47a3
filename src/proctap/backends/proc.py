"""The ``proc`` backend: periodic scans of /proc, for users without any privilege.

Every ``interval`` (a timerfd makes the backend pollable) it lists /proc, reads each process's ``stat`` (one read per
process), lists ``task/`` only for multi-threaded processes, and reports the differences with the previous scan:

* new pids / tids -> Fork (parent: ``stat`` field 4 at scan time); an identity is (pid, starttime), so a pid reused
  between two scans is an Exit followed by a Fork;
* Exec: the kernel clears the task flag PF_FORKNOEXEC (``stat`` field 9, readable by anyone, zombies included)
  at a process's first exec, so a process seen with it clear that was seen with it set, or that is new, exec'd; a
  process caught inside execve (its new mm has no code yet) is reported when a scan sees the exec done, or gone.
  Later execs: the image changed, recognized cheaply from fields ``stat`` already holds: ``startcode``,
  ``endcode``, ``arg_start`` (fields 26, 27, 48; a new mm at every exec, randomized stack) and ``comm``;
* a zombie -> Exit with its real wait status (``stat`` field 52, ``exit_code``, since Linux 3.5);
  a task that vanished -> Exit with ``status`` None;
* tasks created and gone between two scans -> ``Lost`` with a count: the kernel's pid cursor (``/proc/loadavg``
  field 5, the last pid allocated) says how many ids were handed out since the last scan; those we never saw are
  counted (one scan later, so that tasks still being created at scan time are not counted);
* processes created while watching that one scan saw before they exec'd and that were gone at the next: whether
  they exec'd is unknown -> ``Lost`` with a count too (EXEC_UNKNOWN_REASON).

Timestamps are scan times, so their precision is the interval.  See docs/proc-backend.md for what it can miss.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from ..errors import BackendUnavailable, ProctapError
from ..events import Comm, Event, EventKind, Exec, Exit, Fork, Origin, decode_wait_status
from ..linux import procfs
from ..linux.clock import Clock
from ..linux.procfs import Stat, read_stat
from ..linux.procfs import ticks_to_ns as _ticks_ns
from ..linux.timerfd import TimerFd
from .base import Availability, Backend, BackendConfig, BackendOption, Common, Feature, Stamp

__all__ = [
    "EXEC_UNKNOWN_REASON",
    "LOST_REASON",
    "RESERVED_PIDS",
    "ProcScanBackend",
    "allocated_ranges",
    "count_in_ranges",
    "parse_interval",
    "parse_last_pid",
]

PROC = "/proc"
DEFAULT_INTERVAL_NS = 100_000_000
MIN_INTERVAL_NS = 1_000_000
MAX_INTERVAL_NS = 10_000_000_000
# kernel/pid.c: once the cursor passed RESERVED_PIDS, allocation wraps around to it, not to 1.
RESERVED_PIDS = 300
LOST_REASON = "short-lived tasks between /proc scans"
EXEC_UNKNOWN_REASON = "processes gone before a scan could tell whether they exec'd"
# include/linux/sched.h task flags (stat field 9): set by fork, cleared by the first exec (fs/exec.c begin_new_exec)
# A task being released after its parent reaped it (EXIT_DEAD; "x" before Linux 3.14): /proc still lists it, but
# with parent 0 (no longer hashed, fs/proc/array.c) and an exit_code of 0, neither of them true.
_BEING_REAPED = ("X", "x")
PF_EXITING = 0x00000004
PF_FORKNOEXEC = 0x00000040
# Scans may use at most this share of the time: on a machine with many processes a scan can outlast the interval,
# and the backend must not eat a core.  Scans are then spaced further apart (and miss more, which is counted).
MAX_DUTY = 0.25


def parse_last_pid(data: bytes) -> int:
    """The last pid the kernel allocated in the reader's pid namespace: /proc/loadavg field 5."""
    return int(data.split()[4])


def allocated_ranges(prev_last: int, last: int, pid_max: int, pid_min: int = RESERVED_PIDS) -> tuple[range, ...]:
    """The ids the pid allocator (a cyclic idr, kernel/pid.c alloc_pid) handed out after ``prev_last`` up to ``last``.

    Ids still in use inside a range were skipped by the allocator; a wrap past ``pid_max`` restarts at ``pid_min``.
    Several wraps between two readings cannot be seen.
    """
    if last == prev_last:
        return ()
    if last > prev_last:
        return (range(prev_last + 1, last + 1),)
    return (range(prev_last + 1, pid_max), range(pid_min, last + 1))


def count_in_ranges(ids: set[int], ranges: tuple[range, ...]) -> int:
    """How many of ``ids`` fall in ``ranges``."""
    if not ranges:
        return 0
    return sum(1 for i in ids if any(i in r for r in ranges))


def parse_interval(text: str | None) -> int:
    """``"50ms"``, ``"0.1s"``, ``"0.1"`` (seconds) -> nanoseconds; ProctapError out of 1 ms .. 10 s."""
    if text is None:
        return DEFAULT_INTERVAL_NS
    raw = text.strip().lower()
    scale = 1e9
    if raw.endswith("ms"):
        raw, scale = raw[:-2], 1e6
    elif raw.endswith("s"):
        raw = raw[:-1]
    try:
        value = int(float(raw) * scale)
    except ValueError:
        value = -1
    if not MIN_INTERVAL_NS <= value <= MAX_INTERVAL_NS:
        raise ProctapError(f"invalid proc backend interval {text!r}: give 1ms to 10s, e.g. interval=50ms")
    return value


def _interval_option(text: str) -> int:
    try:
        return parse_interval(text)
    except ProctapError:
        raise ValueError("give 1ms to 10s, e.g. interval=50ms") from None


def _periodic_timer(interval_ns: int) -> TimerFd:
    """The timerfd that paces the scans: expires every ``interval_ns``."""
    try:
        timer = TimerFd()
    except OSError as exc:
        raise BackendUnavailable(f"proc backend: timerfd_create failed: {exc.strerror}") from None
    try:
        timer.arm_every(interval_ns)
    except OSError as exc:
        timer.close()
        raise BackendUnavailable(f"proc backend: timerfd_settime failed: {exc.strerror}") from None
    return timer


class _Proc:
    """What the previous scans learnt about one live process."""

    __slots__ = (
        "born",
        "comm",
        "exec_open",
        "exec_pending",
        "exit_reported",
        "image",
        "leader_died_early",
        "permitted",
        "ppid",
        "start_ticks",
        "tids",
    )

    def __init__(self, rec: Stat, tids: frozenset[int], born: bool = False) -> None:
        self.born = born  # created while watching (not there at the first scan)
        self.exec_pending = False  # caught inside execve: the Exec is reported once the exec is done (or it is gone)
        self.exec_open = _exec_may_come(rec)  # it may still make its first exec
        self.start_ticks = rec.start_ticks
        self.comm = rec.comm
        self.ppid = rec.ppid
        self.image = rec.image
        self.tids = tids
        self.permitted = rec.image is not None  # we could ptrace-read it: its exit_code will be real
        self.exit_reported = False
        self.leader_died_early = False  # leader exited before the other threads: its exit_code is not the process's


def _has_execed(rec: Stat) -> bool:
    """The process exec'd since its fork (PF_FORKNOEXEC clear); kernel threads never do."""
    return not rec.flags & PF_FORKNOEXEC and not rec.is_kthread


def _exec_may_come(rec: Stat) -> bool:
    """The process has not exec'd yet and still may: alive, not exiting, not a kernel thread."""
    return bool(rec.flags & PF_FORKNOEXEC) and not rec.flags & PF_EXITING and not rec.is_dead and not rec.is_kthread


def _inside_execve(rec: Stat) -> bool:
    """A live user task with a new mm and no code mapped yet, that is not exiting: in the middle of an execve."""
    return not rec.is_settled and not rec.flags & PF_EXITING


class _Sample(NamedTuple):
    rec: Stat
    tids: frozenset[int]


def _list_ids(path: str) -> list[int] | None:
    try:
        with os.scandir(path) as entries:
            return [int(e.name) for e in entries if e.name.isdigit()]
    except OSError:
        return None


def _proc_hides_pids() -> bool:
    """Whether /proc is mounted with hidepid (then other users' processes are invisible or unreadable)."""
    try:
        with open(f"{PROC}/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    hides = False
    for line in lines:  # the last mount on /proc is the visible one
        fields = line.split()
        if len(fields) > 4 and fields[4] == PROC.encode():
            hides = b"hidepid=" in line and b"hidepid=0" not in line and b"hidepid=off" not in line
    return hides


class ProcScanBackend(Backend):
    """Periodic /proc scans: works for every user, misses what lives shorter than the interval (and counts it)."""

    name = "proc"
    features = frozenset({Feature.FORK, Feature.THREADS, Feature.EXEC, Feature.EXIT})
    description = "periodic /proc scans (any user); timestamps are scan times; counts the tasks it missed"
    accepted_options = (BackendOption("interval", "DURATION", _interval_option, "time between scans (1ms to 10s)"),)

    @classmethod
    def probe(cls) -> Availability:
        if not os.path.exists(f"{PROC}/self/stat"):
            return Availability(False, "/proc is not mounted (mount -t proc proc /proc)")
        if procfs.read_small(f"{PROC}/loadavg") is None:
            return Availability(False, "/proc/loadavg is unreadable")
        return Availability(True)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)  # not probed again: the caller chose this class through probe()
        self.interval_ns = parse_interval(config.option("interval"))
        self._clock = Clock()
        self._stamp = Stamp(self.name, self._clock)
        self._privileged = procfs.has_capability(procfs.CAP_SYS_PTRACE)
        self._want = config.events
        self._threads = config.threads
        # Counting needs /proc and the loadavg cursor to be of our pid namespace, and every task to be visible.
        self._loss_counting = os.readlink(f"{PROC}/self") == str(os.getpid()) and not (
            _proc_hides_pids() and not self._privileged
        )
        self._procs: dict[int, _Proc] = {}
        self._live_tids: set[int] = set()
        self._pending_lost = 0
        self._pending_ranges: tuple[range, ...] = ()
        self._pid_max = self._read_pid_max()
        self._scans = 0
        self._scan_ns_total = 0
        self._scan_ns_max = 0
        self._scan_ns_last = 0
        self._late_scans = 0
        self._throttled = 0
        self._cursor_resets = 0
        self._next_scan_ns = 0
        self._lost_total = 0
        self._events_total = 0
        samples = self._sample()
        self._last_pid = self._read_last_pid()
        for pid, sample in samples.items():
            proc = self._procs[pid] = _Proc(sample.rec, sample.tids)
            proc.exit_reported = sample.rec.is_dead  # zombies of before the start are not news
            self._live_tids |= sample.tids
        self._timer = _periodic_timer(self.interval_ns)

    # -- the Backend interface ---------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._timer.fd

    def read_events(self) -> list[Event]:
        if self._timer.fd < 0:
            return []
        expired = self._timer.expirations()
        if not expired:
            return []
        if time.monotonic_ns() < self._next_scan_ns:
            self._throttled += 1
            return []
        self._late_scans += expired > 1
        return self.scan()

    def close(self) -> None:
        self._timer.close()

    def stats(self) -> dict[str, int]:
        return {
            "interval_us": self.interval_ns // 1000,
            "scans": self._scans,
            "late_scans": self._late_scans,
            "throttled": self._throttled,
            "scan_us_last": self._scan_ns_last // 1000,
            "scan_us_max": self._scan_ns_max // 1000,
            "scan_us_total": self._scan_ns_total // 1000,
            "processes": len(self._procs),
            "tasks": len(self._live_tids),
            "events": self._events_total,
            "lost": self._lost_total,
            "loss_counting": int(self._loss_counting),
            "cursor_resets": self._cursor_resets,
        }

    # -- scanning ----------------------------------------------------------------------------------------------
    def scan(self) -> list[Event]:
        """Scan /proc now and return the differences with the previous scan (read_events does it on the timer)."""
        begin = time.monotonic_ns()
        samples = self._sample()
        last_pid = self._read_last_pid()
        events = _ScanDiff(self, begin).run(samples, last_pid)
        end = time.monotonic_ns()
        spent = end - begin
        self._next_scan_ns = end + int(spent * (1 / MAX_DUTY - 1))
        self._scans += 1
        self._scan_ns_last = spent
        self._scan_ns_total += spent
        self._scan_ns_max = max(self._scan_ns_max, spent)
        self._events_total += len(events)
        return events

    def _sample(self) -> dict[int, _Sample]:
        """pid -> stat and thread ids of every visible process."""
        pids = _list_ids(PROC) or []
        procs = self._procs
        samples: dict[int, _Sample] = {}
        for pid in pids:
            rec = read_stat(pid)
            if rec is None or rec.state in _BEING_REAPED:
                continue  # gone since the listing, hidden from us, or being released: as good as gone
            known = procs.get(pid)
            if rec.num_threads > 1 or (known is not None and len(known.tids) > 1):
                listed = _list_ids(f"{PROC}/{pid}/task")
                if listed is None:
                    continue
                tids = frozenset(listed)
            else:
                tids = frozenset((pid,))
            samples[pid] = _Sample(rec, tids)
        return samples

    def _read_last_pid(self) -> int:
        data = procfs.read_small(f"{PROC}/loadavg")
        if data is None:
            raise ProctapError("proc backend: /proc/loadavg became unreadable; is /proc still mounted?")
        return parse_last_pid(data)

    @staticmethod
    def _read_pid_max() -> int:
        data = procfs.read_small(f"{PROC}/sys/kernel/pid_max")
        return int(data) if data else 4_194_304


class _ScanDiff:
    """Turns one scan into events, updating the backend's state."""

    def __init__(self, backend: ProcScanBackend, now_ns: int) -> None:
        self.b = backend
        self.now = now_ns
        self.boot_now = backend._clock.since_boot(now_ns)
        self.gone: list[Event] = []  # exits of vanished tasks
        self.changes: list[Event] = []  # exec/comm/exit of continuing processes
        self.births: list[tuple[int, list[Event]]] = []  # (allocation order, events) of new tasks
        self.exec_unknown = 0  # processes gone before a scan could tell whether they exec'd

    def run(self, samples: dict[int, _Sample], last_pid: int) -> list[Event]:
        b = self.b
        lost_events = self._lost_events(samples)
        prev_last = b._last_pid
        for pid, proc in list(b._procs.items()):
            sample = samples.get(pid)
            if sample is None or sample.rec.start_ticks != proc.start_ticks:
                self._vanished(pid, proc)
                del b._procs[pid]
        for pid, sample in samples.items():
            known = b._procs.get(pid)
            if known is None:
                b._procs[pid] = self._born(pid, sample, prev_last)
            else:
                self._continued(pid, known, sample, prev_last)
        live_now: set[int] = set()
        for sample in samples.values():
            live_now |= sample.tids
        self._count_missed(prev_last, last_pid, live_now)
        b._live_tids = live_now
        b._last_pid = last_pid
        self.births.sort(key=lambda item: item[0])
        if self.exec_unknown and b._loss_counting:
            b._lost_total += self.exec_unknown
            lost_events.append(b._stamp.lost(self.now, self.exec_unknown, EXEC_UNKNOWN_REASON))
        events = lost_events + self.gone + self.changes
        for _order, born in self.births:
            events.extend(born)
        return events

    # -- loss accounting ---------------------------------------------------------------------------------------
    def _lost_events(self, samples: dict[int, _Sample]) -> list[Event]:
        """Report the ids of the previous scan's allocations that never showed up (not even late, in this scan)."""
        b = self.b
        if not b._pending_lost:
            return []
        late: set[int] = set()
        for pid, sample in samples.items():
            proc = b._procs.get(pid)
            known_tids = proc.tids if proc is not None and proc.start_ticks == sample.rec.start_ticks else frozenset()
            late |= sample.tids - known_tids
        missed = b._pending_lost - count_in_ranges(late, b._pending_ranges)
        b._pending_lost = 0
        if missed <= 0:
            return []
        b._lost_total += missed
        return [self.b._stamp.lost(self.now, missed, LOST_REASON)]

    def _count_missed(self, prev_last: int, last_pid: int, live_now: set[int]) -> None:
        b = self.b
        if not b._loss_counting:
            return
        if last_pid < prev_last:
            b._pid_max = b._read_pid_max()
        ranges = allocated_ranges(prev_last, last_pid, b._pid_max)
        allocated = sum(len(r) for r in ranges)
        if last_pid < prev_last and allocated > b._pid_max // 2:
            # Not a plausible wrap but the cursor set back (a write to ns_last_pid, clone3 set_tid): uncountable.
            b._cursor_resets += 1
            b._pending_lost = 0
            return
        # Ids in use at either scan were skipped by the allocator or are tasks we saw.
        seen = count_in_ranges(live_now | b._live_tids, ranges)
        b._pending_lost = max(0, allocated - seen)
        b._pending_ranges = ranges

    # -- per task ----------------------------------------------------------------------------------------------
    def _order(self, tid: int, prev_last: int) -> int:
        """Allocation order of an id handed out after ``prev_last`` (parents before children, across a wrap)."""
        return (tid - prev_last - 1) % self.b._pid_max

    def _common(self, pid: int, tid: int, start_ticks: int) -> Common:
        return self.b._stamp(self.now, pid, tid, _ticks_ns(start_ticks))

    def _fork(self, pid: int, tid: int, start_ticks: int, parent_pid: int, comm: str | None = None) -> Fork:
        return Fork(**self._common(pid, tid, start_ticks), parent_pid=parent_pid, is_thread=tid != pid, comm=comm)

    def _vanished(self, pid: int, proc: _Proc) -> None:
        """A known process is gone (or its pid now belongs to another process)."""
        if proc.exit_reported:
            return
        if proc.exec_pending:  # it was inside execve at the last scan: the exec happened, its new name is unknown
            self.gone.append(self._exec(pid, proc.start_ticks, None, proc.ppid))
        elif proc.exec_open and proc.born:
            self.exec_unknown += 1
        self._thread_exits(pid, proc, proc.tids - {pid})
        self.gone.append(self._exit(pid, proc, status=None))

    def _thread_exits(self, pid: int, proc: _Proc, tids: frozenset[int]) -> None:
        if not self.b._threads or not tids:
            return
        for tid in sorted(tids):
            self.gone.append(Exit(**self._common(pid, tid, proc.start_ticks), is_thread=True, parent_pid=proc.ppid))

    def _exit(self, pid: int, proc: _Proc, status: int | None) -> Exit:
        common = self._common(pid, pid, proc.start_ticks)
        exit_code = signal = None
        core_dumped = False
        if status is not None:
            exit_code, signal, core_dumped = decode_wait_status(status)
        return Exit(
            **common,
            status=status,
            exit_code=exit_code,
            signal=signal,
            core_dumped=core_dumped,
            lifetime_ns=max(0, self.boot_now - _ticks_ns(proc.start_ticks)),
            parent_pid=proc.ppid,
            comm=proc.comm,
        )

    def _zombie_status(self, proc: _Proc, rec: Stat) -> int | None:
        """The wait status of a zombie, when stat shows the real one (fs/proc/array.c prints 0 unless permitted)."""
        if proc.leader_died_early:
            return None
        if self.b._privileged or proc.permitted or rec.exit_code != 0:
            return rec.exit_code
        return None

    def _born(self, pid: int, sample: _Sample, prev_last: int) -> _Proc:
        rec = sample.rec
        proc = _Proc(rec, sample.tids, born=True)
        inside_execve = _inside_execve(rec) and not rec.is_kthread
        # PF_FORKNOEXEC clear: it exec'd after its fork (zombies too: the flags outlive the mm).
        exec_seen = _has_execed(rec) and not inside_execve
        if inside_execve:  # reported once the exec is done (its new name known) or the process gone
            proc.exec_pending, proc.exec_open = True, False
        # Fork.comm is the name at the fork: the child's current one only if it did not exec since.
        fork_comm = None if exec_seen or inside_execve or rec.is_kthread else rec.comm
        events: list[Event] = [self._fork(pid, pid, rec.start_ticks, rec.ppid, fork_comm)]
        if exec_seen:
            events.append(self._exec(pid, rec.start_ticks, rec.comm, rec.ppid))
        self.births.append((self._order(pid, prev_last), events))
        self._thread_births(pid, proc, sample.tids - {pid}, prev_last)
        if rec.is_dead:
            if rec.num_threads > 1:
                proc.leader_died_early = True
            else:
                proc.exit_reported = True
                events.append(self._exit(pid, proc, self._zombie_status(proc, rec)))
        return proc

    def _thread_births(self, pid: int, proc: _Proc, tids: frozenset[int], prev_last: int) -> None:
        if not self.b._threads:
            return
        for tid in tids:
            self.births.append((self._order(tid, prev_last), [self._fork(pid, tid, proc.start_ticks, pid)]))

    def _continued(self, pid: int, proc: _Proc, sample: _Sample, prev_last: int) -> None:
        rec = sample.rec
        self._thread_births(pid, proc, sample.tids - proc.tids, prev_last)
        self._thread_exits(pid, proc, proc.tids - sample.tids - {pid})
        proc.tids = sample.tids
        proc.ppid = rec.ppid
        if rec.is_dead:
            # a zombie keeps its task flags and the comm of its last exec
            if not proc.exit_reported and (proc.exec_pending or (proc.exec_open and _has_execed(rec))):
                self.changes.append(self._exec(pid, rec.start_ticks, rec.comm, rec.ppid))
            proc.exec_pending = proc.exec_open = False
            if rec.num_threads > 1:
                proc.leader_died_early = True
            elif not proc.exit_reported:
                proc.exit_reported = True
                self.changes.append(self._exit(pid, proc, self._zombie_status(proc, rec)))
            return
        if rec.is_kthread:
            return  # kworker names change with their work: neither exec nor rename
        if not rec.is_settled:
            if _inside_execve(rec):  # mid-exec: reported when a scan sees it done
                proc.exec_pending, proc.exec_open = True, False
            else:
                proc.exec_open = False  # exiting: no exec can come
            return
        first_exec = proc.exec_pending or (proc.exec_open and _has_execed(rec))
        proc.exec_pending, proc.exec_open = False, _exec_may_come(rec)
        image = rec.image
        same_image = image is not None and image == proc.image
        changed_image = image is not None and proc.image is not None and image != proc.image
        # Still PF_FORKNOEXEC: it never exec'd, so a new name is a rename.
        if first_exec or (_has_execed(rec) and (changed_image or (rec.comm != proc.comm and not same_image))):
            self.changes.append(self._exec(pid, rec.start_ticks, rec.comm, rec.ppid))
        elif rec.comm != proc.comm and EventKind.COMM in self.b._want:
            self.changes.append(Comm(**self._common(pid, pid, rec.start_ticks), comm=rec.comm))
        proc.comm = rec.comm
        proc.permitted = image is not None  # as of now: an exec of a setuid program may take it away
        if image is not None:
            proc.image = image

    def _exec(self, pid: int, start_ticks: int, comm: str | None, ppid: int) -> Exec:
        """What the scan saw of an exec: the new comm (None: gone before a scan saw it) and the parent (filename
        and argv are for the watcher to read, :mod:`proctap.enrich`)."""
        return Exec(**self._common(pid, pid, start_ticks), comm=comm, parent_pid=ppid,
                    comm_from=None if comm is None else Origin.PROC)  # fmt: skip
