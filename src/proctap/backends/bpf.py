"""The eBPF backend: programs generated in Python from BTF offsets, events filled in the kernel at the moment of the
event, delivered through one BPF ring buffer read by mmap.  No compiler, no BCC, no kernel headers.

Backend options (``--backend-option NAME=VALUE``): ``uid=N`` only tasks whose current uid is N; ``cgroup_id=N`` only
tasks in the cgroup v2 cgroup with that id (the inode number of its directory, ``stat -c %i``); ``wakeup_bytes=N``
force a reader wakeup when more than N bytes are pending (default: half the ring); ``fork_failed_hook=syscalls``
(the default: perf events on the syscalls/sys_exit_{clone,...,execve,execveat} tracepoints, nearly free for other
syscalls but slow to close, ~0.3 s) or ``raw`` (one program on the raw sys_exit tracepoint: closes at once but adds
~0.13 us to every syscall on the machine; what ``proctap run`` uses, and the fallback without tracefs).  The hook
serves ForkFailed and ExecFailed alike; either is only attached when its kind is wanted.

With context wanted (``BackendConfig.context``), the fork and exec programs capture each task's context in the
kernel (``Feature.CONTEXT_KERNEL``, ``Feature.CWD_KERNEL``): the decoder makes one :class:`proctap.events.Where` per
distinct context (a storm's tasks share it).  The path of each cgroup comes from the kernel too, once (a CGROUP record
before the first event in it), so a container gone by the time proctap reads its events still has its path; the
id is resolved in user space only when that record is missing.  The watcher's
``uid``, ``loginuid`` and ``cgroup`` filters run in the programs too (``Feature.CONTEXT_FILTER_KERNEL``; the cgroup
one with ``bpf_current_task_under_cgroup``: that cgroup and below).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import time
from typing import ClassVar

from ..errors import BackendUnavailable, DecodeError, ProctapError
from ..events import (
    Event,
    EventKind,
    Exec,
    ExecFailed,
    Exit,
    Fork,
    ForkFailed,
    Namespaces,
    Origin,
    Where,
    constructor,
    decode_wait_status,
)
from ..linux import procfs
from ..linux.bpf import programs as progs
from ..linux.bpf import records as rec
from ..linux.bpf.btf import VMLINUX
from ..linux.bpf.cache import kernel_layout
from ..linux.bpf.insn import R0, Asm
from ..linux.bpf.ringbuf import RingBuffer
from ..linux.bpf.syscall import (
    BPF_TRACE_RAW_TP,
    BpfError,
    MapType,
    ProgType,
    create_map,
    load_program,
    map_lookup,
    map_update,
    obj_info,
    perf_event_open_tracepoint,
    raw_tracepoint_open,
)
from ..linux.cgroups import cgroup_dir
from ..linux.clock import Clock
from ..linux.cpus import possible_cpu_count
from ..linux.tracefs.instance import tracepoint_format
from ..where import AUDIT_UNSET, Cgroups, tty_name
from .base import Availability, Backend, BackendConfig, BackendOption, Feature, Stamp, StartTimes, int_option

__all__ = ["BpfBackend", "EventDecoder"]

DEFAULT_RING_BYTES = 8 << 20
TRACKED_MAX = 1 << 16
FORK_SYSCALLS = ("clone", "clone3", "fork", "vfork")  # ForkFailed.syscall by the index the program writes
EXEC_SYSCALLS = progs.EXEC_SYSCALLS  # ExecFailed.syscall by the index the program writes
FORK_FAILED_HOOKS = ("syscalls", "raw")
MISSES_INTERVAL_S = 1.0
PAYLOAD_MEMO_BYTES, PAYLOAD_MEMO_MAX = 512, 1024  # exec payloads remembered: at most this long, this many
_U64 = struct.Struct("=Q")
HEADER_SIZE = rec.HEADER_SIZE
EXIT_SIZE = rec.EXIT_RECORD_SIZE
FORK_WHERE_SIZE = HEADER_SIZE + rec.WHERE_SIZE  # a record with its context block
_unpack_header = rec.HEADER.unpack_from
_unpack_cwd = struct.Struct("=II").unpack_from
_TYPE_FORK, _TYPE_EXIT, _TYPE_EXEC, _FLAG_WHERE, _CLONE_THREAD = (
    rec.TYPE_FORK, rec.TYPE_EXIT, rec.TYPE_EXEC, rec.FLAG_WHERE, progs.CLONE_THREAD,
)  # fmt: skip
_KERNEL = Origin.KERNEL
_WAIT: dict[int, tuple[int, int | None, int | None, bool]] = {}  # wait status -> (status, exit code, signal, core)
# Positional constructors (events.constructor): keyword arguments cost half of making a storm's events.
_fork = constructor(Fork, "source timestamp_ns wall_time pid tid start_ns parent_pid parent_tid is_thread clone_flags "
                          "comm uid gid cgroup_id where")  # fmt: skip
_exit = constructor(Exit, "source timestamp_ns wall_time pid tid start_ns is_thread status exit_code signal "
                          "core_dumped lifetime_ns parent_pid comm")  # fmt: skip
_exec = constructor(Exec, "source timestamp_ns wall_time pid tid start_ns filename argv argc argv_truncated comm "
                          "parent_pid uid gid cgroup_id filename_from argv_from comm_from where")  # fmt: skip


def _ring_size(requested: int | None) -> int:
    size = max(requested or DEFAULT_RING_BYTES, os.sysconf("SC_PAGE_SIZE"))
    return 1 << (size - 1).bit_length()


def _hook_option(text: str) -> str:
    if text not in FORK_FAILED_HOOKS:
        raise ValueError(f"choose {' or '.join(FORK_FAILED_HOOKS)}")
    return text


def _unavailable_reason(exc: BpfError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return "needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): run as root"
    if exc.errno == errno.EINVAL:
        return "the kernel lacks BPF ring buffers or BTF tracepoints (needs Linux >= 5.8 with CONFIG_DEBUG_INFO_BTF)"
    if exc.errno == errno.ENOSYS:
        return "the kernel has no bpf() syscall (CONFIG_BPF_SYSCALL off)"
    return str(exc)


def _verifier_summary(log: str) -> str:
    """The verifier's reason for refusing a program (its last line before the statistics), as a message tail."""
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith(("processed ", "verification"))]
    if not lines:
        return ""
    return f" (verifier: {lines[-1].strip()}; use another backend and report this kernel's version)"


class BpfBackend(Backend):
    name: ClassVar[str] = "bpf"
    description: ClassVar[str] = "eBPF programs on sched/task tracepoints, ring buffer (root, BTF)"
    accepted_options: ClassVar[tuple[BackendOption, ...]] = (
        BackendOption("uid", "N", int_option(0, 0xFFFF_FFFE), "only tasks whose current uid is N"),
        BackendOption("cgroup_id", "N", int_option(1), "only tasks in the cgroup v2 cgroup with this id"),
        BackendOption("wakeup_bytes", "BYTES", int_option(0), "wake the reader when this much is pending"),
        BackendOption("fork_failed_hook", "syscalls|raw", _hook_option, "how ForkFailed is caught"),
    )
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.FORK, Feature.THREADS, Feature.EXEC, Feature.EXEC_FILENAME_KERNEL, Feature.ARGV_KERNEL,
            Feature.EXIT, Feature.EXIT_STATUS, Feature.CORE_DUMPED, Feature.FORK_FAILED, Feature.EXEC_FAILED,
            Feature.EXEC_FAILED_ARGS, Feature.LOSS_EXACT, Feature.CONTEXT_KERNEL, Feature.CWD_KERNEL,
            Feature.CONTEXT_FILTER_KERNEL,
        }
    )  # fmt: skip

    @classmethod
    def probe(cls) -> Availability:
        if not os.path.exists(VMLINUX):
            return Availability(False, f"no kernel BTF ({VMLINUX} missing: kernel built without CONFIG_DEBUG_INFO_BTF)")
        fds: list[int] = []
        try:
            fds.append(create_map(MapType.RINGBUF, 0, 0, os.sysconf("SC_PAGE_SIZE"), "proctap_probe"))
            a = Asm()
            a.mov(R0, 0)
            a.exit()
            tp = kernel_layout().tracepoints["sched_process_exec"]
            fds.append(load_program(ProgType.TRACING, a.assemble(), "proctap_probe",
                                    expected_attach_type=BPF_TRACE_RAW_TP, attach_btf_id=tp))  # fmt: skip
            # Attached as the constructor will (a program that does nothing, detached when its link fd closes):
            # a policy (LSM, lockdown) may allow loading and refuse attaching.
            fds.append(raw_tracepoint_open(fds[-1]))
        except BpfError as exc:
            reason = _unavailable_reason(exc)
            with contextlib.suppress(OSError), open("/proc/sys/kernel/unprivileged_bpf_disabled") as f:
                if os.geteuid() != 0 and f.read().strip() != "0":
                    reason += " (kernel.unprivileged_bpf_disabled is set)"
            return Availability(False, reason)
        except (OSError, KeyError, DecodeError) as exc:
            return Availability(False, f"cannot use the kernel BTF: {exc}")
        finally:
            for fd in reversed(fds):
                os.close(fd)
        return Availability(True)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._fds: list[int] = []  # every kernel object, closed in reverse order
        self._prog_fds: list[int] = []
        self._ring: RingBuffer | None = None
        self._closed = False
        self._cgroups = Cgroups() if config.context else None
        self._decoder = EventDecoder(Clock(), threads=config.threads, cgroups=self._cgroups)
        self._ncpus = possible_cpu_count()  # per-CPU map values come in that many 8-byte slots
        self._lost_seen = [0] * self._ncpus
        self._misses_seen = 0
        self._misses_checked = 0.0
        self._records = 0
        self._decode_errors = 0
        self._fork_syscalls: list[str] = []
        self._exec_syscalls: list[str] = []
        self._notes: list[str] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------------------------
    def _int_value(self, name: str) -> int | None:
        value = self.option_value(name)
        return None if value is None else int(str(value))

    def _own(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _open(self) -> None:
        cfg = self.config
        self._fork_failed_hook = str(self.option_value("fork_failed_hook") or "syscalls")
        try:
            layout = self._layout = kernel_layout()
        except (OSError, KeyError, DecodeError) as exc:
            raise BackendUnavailable(f"bpf: cannot read the kernel BTF ({exc}): use another backend") from None
        ring_size = _ring_size(cfg.buffer_bytes)
        wakeup = self._int_value("wakeup_bytes")
        uid = self._int_value("uid")
        if uid is not None and cfg.uid is not None and uid != cfg.uid:
            raise ProctapError(f"bpf: the backend option uid={uid} and the uid filter {cfg.uid} disagree: give one")
        filters = progs.Filters(
            tracked=cfg.root_pid is not None,
            uid=cfg.uid if uid is None else uid,
            cgroup_id=self._int_value("cgroup_id"),
            loginuid=cfg.loginuid,
            loginuid_offset=layout.where.get("task_loginuid", -1),
            cgroup_under=cfg.cgroup is not None,
            threads=cfg.threads,
            wakeup_threshold=ring_size // 2 if wakeup is None else wakeup,
        )
        argv_limit = max(0, cfg.argv_limit)
        self._context = cfg.context and progs.context_capturable(layout)
        self._cwd = self._context and progs.cwd_capturable(layout)
        try:
            maps = progs.MapFds(
                ringbuf=self._own(create_map(MapType.RINGBUF, 0, 0, ring_size, "proctap_ring")),
                scratch=self._own(create_map(MapType.ARRAY, 4, progs.scratch_size(
                    argv_limit, exec_failed=EventKind.EXEC_FAILED in cfg.events, context=self._context), self._ncpus,
                    "proctap_scratch")),
                lost=self._own(create_map(MapType.PERCPU_ARRAY, 4, 8, 1, "proctap_lost")),
                tracked=self._own(create_map(MapType.HASH, 4, 8, TRACKED_MAX, "proctap_tracked"))
                if filters.tracked else -1,
                cgroup=self._cgroup_map(cfg.cgroup) if cfg.cgroup is not None else -1,
                cgroups_seen=self._own(create_map(MapType.LRU_HASH, 8, 8, progs.CGROUPS_SEEN_MAX, "proctap_cgseen"))
                if self._context and progs.cgroup_path_capturable(layout) else -1,
            )  # fmt: skip
            self._lost_fd = maps.lost
            if cfg.root_pid is not None:
                self._track_subtree(maps.tracked, cfg.root_pid)
            self._ring = RingBuffer(maps.ringbuf, ring_size)
            self._attach_all(layout, maps, filters, argv_limit)
            if cfg.root_pid is not None:
                # again, for processes forked by untracked parents between the first scan and the attachment
                self._track_subtree(maps.tracked, cfg.root_pid)
        except BpfError as exc:
            reason = "the kernel refused proctap's BPF program" if exc.log else _unavailable_reason(exc)
            error = BackendUnavailable(f"bpf: {reason}{_verifier_summary(exc.log)}")
            error.verifier_log = exc.log  # type: ignore[attr-defined]  # the whole log, for bug reports
            raise error from None
        except OSError as exc:
            raise BackendUnavailable(f"bpf: {exc}") from None

    def _cgroup_map(self, path: str) -> int:
        """A CGROUP_ARRAY holding the cgroup ``path`` (relative to the cgroup2 mount), for the subtree filter."""
        root = Cgroups(names=False).root
        if root is None:
            raise BackendUnavailable("bpf: no cgroup2 mount here for the cgroup filter")
        fd = self._own(create_map(MapType.CGROUP_ARRAY, 4, 4, 1, "proctap_cgroup"))
        directory = os.open(cgroup_dir(path, root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            map_update(fd, struct.pack("=I", 0), struct.pack("=I", directory))
        finally:
            os.close(directory)
        return fd

    @staticmethod
    def _track_subtree(tracked_fd: int, root: int) -> None:
        """Put the root and its live descendants into the tracked map (later ones are added by the fork program)."""
        for pid in {root} | procfs.descendants(root):
            with contextlib.suppress(BpfError):  # a full map: the watcher still filters exactly in user space
                map_update(tracked_fd, struct.pack("=I", pid), _U64.pack(1))

    def _attach_tp_btf(self, layout: progs.Layout, tracepoint: str, prog_name: str, code: bytes) -> None:
        type_id = layout.tracepoints[tracepoint]
        fd = self._own(load_program(ProgType.TRACING, code, prog_name, expected_attach_type=BPF_TRACE_RAW_TP,
                                    attach_btf_id=type_id))  # fmt: skip
        self._prog_fds.append(fd)
        self._own(raw_tracepoint_open(fd))

    def _attach_all(self, layout: progs.Layout, maps: progs.MapFds, filters: progs.Filters, argv_limit: int) -> None:
        kinds = self.config.events
        if EventKind.FORK in kinds or filters.tracked:
            self._attach_tp_btf(layout, "task_newtask", "proctap_fork",
                                progs.fork_program(layout, maps, filters, context=self._context))  # fmt: skip
        if EventKind.EXEC in kinds:
            self._attach_tp_btf(layout, "sched_process_exec", "proctap_exec",
                                progs.exec_program(layout, maps, filters, argv_limit, context=self._context,
                                                   cwd=self._cwd))  # fmt: skip
        if EventKind.EXIT in kinds or filters.tracked:
            self._attach_tp_btf(layout, "sched_process_exit", "proctap_exit", progs.exit_program(layout, maps, filters))
        if EventKind.FORK_FAILED in kinds or EventKind.EXEC_FAILED in kinds:
            self._attach_failed_syscalls(layout, maps, filters, argv_limit)

    def _attach_failed_syscalls(
        self, layout: progs.Layout, maps: progs.MapFds, filters: progs.Filters, argv_limit: int
    ) -> None:
        """ForkFailed and ExecFailed, each where wanted: through the syscalls tracepoints (the default), else (by
        choice, or for what they could not give) one program on the raw sys_exit tracepoint."""
        kinds = self.config.events
        want_fork = EventKind.FORK_FAILED in kinds
        want_exec = EventKind.EXEC_FAILED in kinds
        if self._fork_failed_hook == "syscalls":
            if want_fork:
                self._attach_fork_failed_syscalls(maps, filters)
            if want_exec:
                self._attach_exec_failed_syscalls(layout, maps, filters, argv_limit)
            want_fork = want_fork and not self._fork_syscalls
            want_exec = want_exec and not self._exec_syscalls
            for kind, wanted in (("fork_failed", want_fork), ("exec_failed", want_exec)):
                if wanted:
                    self._notes.append(f"{kind} through syscalls tracepoints unavailable (tracefs not mounted?): "
                                       "using the raw sys_exit tracepoint")  # fmt: skip
        if want_fork or want_exec:
            self._attach_failed_raw(layout, maps, filters, argv_limit, want_fork, want_exec)

    def _attach_fork_failed_syscalls(self, maps: progs.MapFds, filters: progs.Filters) -> None:
        """One program per syscalls/sys_exit_<fork syscall> tracepoint, through perf events: the kernel runs
        nothing for other syscalls, but each event takes 60-80 ms to close."""
        for index, syscall in enumerate(FORK_SYSCALLS):
            fmt = tracepoint_format("syscalls", f"sys_exit_{syscall}")
            ret = None if fmt is None else fmt.field("ret")
            if fmt is None or ret is None:
                continue
            code = progs.fork_failed_program(maps, filters, index, ret.offset)
            if self._attach_perf(fmt.id, code, f"proctap_ff_{syscall}", "fork_failed", syscall):
                self._fork_syscalls.append(syscall)

    def _attach_exec_failed_syscalls(
        self, layout: progs.Layout, maps: progs.MapFds, filters: progs.Filters, argv_limit: int
    ) -> None:
        """One program per syscalls/sys_exit_{execve,execveat} tracepoint, like the ForkFailed ones; the filename
        and argv come from the caller's registers (bpf_task_pt_regs) and memory."""
        if -1 in layout.regs_args:
            return
        for index, syscall in enumerate(EXEC_SYSCALLS):
            fmt = tracepoint_format("syscalls", f"sys_exit_{syscall}")
            ret = None if fmt is None else fmt.field("ret")
            if fmt is None or ret is None:
                continue
            code = progs.exec_failed_program(layout, maps, filters, index, ret.offset, argv_limit)
            if self._attach_perf(fmt.id, code, f"proctap_ef_{syscall}", "exec_failed", syscall):
                self._exec_syscalls.append(syscall)

    def _attach_perf(self, tracepoint_id: int, code: bytes, prog_name: str, kind: str, syscall: str) -> bool:
        fd = self._own(load_program(ProgType.TRACEPOINT, code, prog_name))
        self._prog_fds.append(fd)
        try:
            self._own(perf_event_open_tracepoint(tracepoint_id, fd))
        except BpfError as exc:  # not fatal: everything else still works
            self._notes.append(f"{kind} on {syscall} unavailable: {exc}")
            return False
        return True

    def _attach_failed_raw(
        self, layout: progs.Layout, maps: progs.MapFds, filters: progs.Filters, argv_limit: int, want_fork: bool,
        want_exec: bool,
    ) -> None:  # fmt: skip
        """One tp_btf program on the raw sys_exit tracepoint: closes at once, but runs for every syscall."""
        machine = os.uname().machine
        fork = {nr: FORK_SYSCALLS.index(name) for name, nr in layout.fork_syscalls.items()} if want_fork else {}
        execs = {nr: EXEC_SYSCALLS.index(name) for name, nr in layout.exec_syscalls.items()} if want_exec else {}
        raw_tp = "sys_exit" in layout.tracepoints
        for kind, wanted, table in (("fork_failed", want_fork, fork), ("exec_failed", want_exec, execs)):
            if wanted and (not table or not raw_tp):
                self._notes.append(f"{kind} unavailable: no syscall table for {machine} or no sys_exit tracepoint")
        if not raw_tp or not (fork or execs):
            return
        try:
            code = progs.failed_syscalls_raw_program(layout, maps, filters, fork, execs, argv_limit)
            self._attach_tp_btf(layout, "sys_exit", "proctap_ffail", code)
        except BpfError as exc:  # not fatal: everything but ForkFailed/ExecFailed still works
            self._notes.append(f"fork_failed/exec_failed unavailable: {exc}")
            return
        self._fork_syscalls = sorted(FORK_SYSCALLS[i] for i in fork.values())
        self._exec_syscalls = sorted(EXEC_SYSCALLS[i] for i in execs.values())

    # -- the Backend interface ---------------------------------------------------------------------------------
    def fileno(self) -> int:
        if self._ring is None or self._closed:
            raise ProctapError("the bpf backend is closed")
        return self._fds[0]

    def read_events(self) -> list[Event]:
        ring = self._ring
        if ring is None or self._closed:
            return []
        out: list[Event] = []
        decode = self._decoder.decode
        for buffer, offset, length in ring.records():
            try:
                decode(buffer, offset, length, out)
            except DecodeError:
                self._decode_errors += 1
        ring.release()
        self._records += len(out)  # approximately: the exit of a process's last thread gives two events
        self._check_lost(out)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for fd in reversed(self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._prog_fds.clear()
        if self._cgroups is not None:
            self._cgroups.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def notes(self) -> tuple[str, ...]:
        """What this instance could not set up although the backend works (e.g. ForkFailed without tracefs)."""
        return tuple(self._notes)

    def stats(self) -> dict[str, int]:
        return {
            "records": self._records,
            "lost": sum(self._lost_seen),
            "recursion_misses": self._misses_seen,
            "decode_errors": self._decode_errors,
            "ring_bytes": 0 if self._ring is None else self._ring.size,
            "fork_failed_syscalls": len(self._fork_syscalls),
            "exec_failed_syscalls": len(self._exec_syscalls),
        }

    # -- loss ----------------------------------------------------------------------------------------------------
    def _check_lost(self, out: list[Event]) -> None:
        raw = map_lookup(self._lost_fd, b"\0\0\0\0", 8 * self._ncpus)
        if raw is not None:
            for cpu in range(self._ncpus):
                total = _U64.unpack_from(raw, 8 * cpu)[0]
                delta = total - self._lost_seen[cpu]
                if delta > 0:
                    self._lost_seen[cpu] = total
                    out.append(self._decoder.stamp.lost(None, delta, "bpf ring buffer full", cpu))
        now = time.monotonic()
        # a few syscalls: at most once a second while busy, but on every idle drain so none is reported late
        if not out or now - self._misses_checked >= MISSES_INTERVAL_S:
            self._misses_checked = now
            misses = self._recursion_misses()
            if misses > self._misses_seen:
                lost = misses - self._misses_seen
                out.append(self._decoder.stamp.lost(None, lost, "bpf program skipped (recursion)"))
                self._misses_seen = misses

    def _recursion_misses(self) -> int:
        """Runs the kernel skipped because the program was already running on that CPU (bpf_prog_info)."""
        offset = self._layout.prog_info_recursion_misses
        if offset < 0:
            return 0
        total = 0
        for fd in self._prog_fds:
            info = obj_info(fd, offset + 8)
            total += _U64.unpack_from(info, offset)[0]
        return total


class EventDecoder:
    """Ring records (layout: :mod:`proctap.linux.bpf.records`) into events: the backend's hot path, so it unpacks
    the header once and builds the events directly.  ``threads``: whether thread Exits are wanted.  ``cgroups``:
    resolves the cgroup ids of context blocks (records with FLAG_WHERE) to paths and containers."""

    __slots__ = (
        "_boot_offset_ns", "_cgroups", "_comms", "_payloads", "_starts", "_threads", "_wall_offset_ns", "_wheres",
        "stamp",
    )  # fmt: skip

    def __init__(self, clock: Clock, *, threads: bool = True, cgroups: Cgroups | None = None) -> None:
        self.stamp = Stamp("bpf", clock)
        self._wall_offset_ns = clock.wall_offset_ns
        self._boot_offset_ns = clock.boot_offset_ns
        self._threads = threads
        self._comms: dict[bytes, str] = {}
        self._starts = StartTimes()
        self._cgroups = cgroups
        self._wheres: dict[tuple[bytes, int, bytes | None], Where] = {}
        self._payloads: dict[tuple[bytes, int, int, int], tuple[str, tuple[str, ...] | None, bool]] = {}

    def decode(self, data: bytes | mmap.mmap, offset: int, length: int, out: list[Event]) -> None:
        """The record at ``data[offset:offset + length]`` into 0-2 events appended to ``out``; DecodeError when
        malformed."""
        if length < HEADER_SIZE:
            raise DecodeError(f"BPF record of {length} bytes is shorter than its {HEADER_SIZE}-byte header")
        (rtype, flags, ts, tgid, tid, start, task_start, ppid, uid, gid, aux32, cgroup, comm, aux64, len_a, len_b) = (
            _unpack_header(data, offset)
        )
        wall = (ts + self._wall_offset_ns) / 1e9
        # Fork, Exec and Exit spell the common fields out and look names and wait statuses up in tables: a storm
        # decodes 200,000 of them, and every call or dict per event shows in its CPU.
        if rtype == _TYPE_FORK:
            where = None
            if flags & _FLAG_WHERE:
                if length != FORK_WHERE_SIZE:
                    raise DecodeError(f"BPF fork record has {length} bytes, expected {FORK_WHERE_SIZE}")
                where = self._where(data, offset, cgroup, None)
            elif length != HEADER_SIZE:
                raise DecodeError(f"BPF fork record has {length} bytes, expected {HEADER_SIZE}")
            is_thread = aux64 & _CLONE_THREAD != 0
            out.append(_fork(
                "bpf", ts, wall, tgid, tid, start, tgid if is_thread else ppid, aux32, is_thread, aux64,
                self._comms.get(comm) or self._comm(comm), uid, gid, cgroup, where,
            ))  # fmt: skip
        elif rtype == _TYPE_EXIT:
            if length != EXIT_SIZE:
                raise DecodeError(f"BPF exit record has {length} bytes, expected {EXIT_SIZE}")
            # a non-leader thread's own Exit, then the process Exit (with the leader's tid, as the other backends)
            # when it was the last thread; a leader ending before its threads says nothing until the process ends
            since_boot = ts + self._boot_offset_ns
            name = self._comms.get(comm) or self._comm(comm)
            if tid != tgid and self._threads:
                status, code, signal, core = _WAIT.get(aux32 & 0xFFFF) or _wait(aux32)
                lifetime = since_boot - task_start
                out.append(_exit(
                    "bpf", ts, wall, tgid, tid, start, True, status, code, signal, core,
                    lifetime if lifetime > 0 else 0, ppid, name,
                ))  # fmt: skip
            if aux64:  # group_dead
                leader = data[offset + HEADER_SIZE : offset + EXIT_SIZE]
                status, code, signal, core = _WAIT.get(len_a & 0xFFFF) or _wait(len_a)
                lifetime = since_boot - start
                out.append(_exit(
                    "bpf", ts, wall, tgid, tgid, start, False, status, code, signal, core,
                    lifetime if lifetime > 0 else 0, ppid, self._comms.get(leader) or self._comm(leader),
                ))  # fmt: skip
        elif rtype == _TYPE_EXEC:
            where = None
            start_payload, end = offset + HEADER_SIZE, offset + length
            if flags & rec.FLAG_WHERE:
                if length < FORK_WHERE_SIZE:
                    raise DecodeError(f"BPF exec record of {length} bytes has no room for its context")
                cwd_len, cwd_flags = _unpack_cwd(data, offset + HEADER_SIZE + rec.W_CWD_LEN)
                if cwd_len > length - FORK_WHERE_SIZE:
                    raise DecodeError(f"BPF exec record: a cwd of {cwd_len} bytes in {length}")
                start_payload, end = offset + FORK_WHERE_SIZE, end - cwd_len
                where = self._where(data, offset, cgroup, None if cwd_flags else data[end : end + cwd_len])
            key = (data[start_payload:end], len_a, len_b, flags)
            decoded = self._payloads.get(key)
            if decoded is None:
                decoded = self._exec_payload(key)
            filename, argv, truncated = decoded
            out.append(_exec(
                "bpf", ts, wall, tgid, tid, start, filename, argv, aux64, truncated,
                self._comms.get(comm) or self._comm(comm), ppid, uid, gid, cgroup, _KERNEL,
                None if argv is None else _KERNEL, _KERNEL, where,
            ))  # fmt: skip
        elif rtype == rec.TYPE_CGROUP:  # a cgroup's path, before the first event in it: no event of its own
            if self._cgroups is not None and len_a <= length - HEADER_SIZE:
                self._cgroups.learn(aux64, rec.decode_cwd(data[offset + HEADER_SIZE : offset + HEADER_SIZE + len_a]))
        elif rtype == rec.TYPE_FORK_FAILED:
            if length != HEADER_SIZE:
                raise DecodeError(f"BPF fork-failed record has {length} bytes, expected {HEADER_SIZE}")
            ret = aux64 - (1 << 64) if aux64 >= 1 << 63 else aux64
            out.append(ForkFailed(
                **self.stamp(ts, tgid, tid, self._starts.get(tgid)), errno=-ret,
                syscall=FORK_SYSCALLS[aux32] if aux32 < len(FORK_SYSCALLS) else None, comm=self._comm(comm),
            ))  # fmt: skip
        elif rtype == rec.TYPE_EXEC_FAILED:
            payload = data[offset + HEADER_SIZE : offset + length]
            tried, argv, truncated = rec.decode_exec_failed_payload(payload, len_a, len_b, flags)
            index, argc = aux32 & 0xFFFF, aux32 >> 16
            if argv is not None and not truncated and argc != len(argv):
                raise DecodeError(f"BPF exec-failed record: argc {argc} but {len(argv)} arguments")
            ret = aux64 - (1 << 64) if aux64 >= 1 << 63 else aux64
            out.append(ExecFailed(
                **self.stamp(ts, tgid, tid, start), errno=-ret, filename=tried, argv=argv,
                argc=None if flags & rec.FLAG_ARGC_UNKNOWN else argc, argv_truncated=truncated,
                syscall=EXEC_SYSCALLS[index] if index < len(EXEC_SYSCALLS) else None, comm=self._comm(comm),
            ))  # fmt: skip
        else:
            raise DecodeError(f"unknown BPF record type {rtype}")

    def _where(self, data: bytes | mmap.mmap, offset: int, cgroup: int, cwd: bytes | None) -> Where:
        """The context block after the header (and the cwd's bytes, None when not captured) as a Where: one
        record per distinct context, so a storm's tasks share theirs and the cgroup is resolved once."""
        block = data[offset + HEADER_SIZE : offset + FORK_WHERE_SIZE]
        key = (block, cgroup, cwd)
        found = self._wheres.get(key)
        if found is None:
            if len(self._wheres) >= 16384:
                self._wheres.clear()
            found = self._wheres[key] = self._make_where(block, cgroup, cwd)
        return found

    def _make_where(self, block: bytes, cgroup: int, cwd: bytes | None) -> Where:
        (loginuid, sessionid, major, minor, ns_pid, level, *ns, _cwd_len, _cwd_flags, _) = rec.WHERE.unpack(block)
        path = container = None
        if self._cgroups is not None and cgroup:
            _, path, container = self._cgroups.by_id(cgroup)
        namespaces = Namespaces(*(n or None for n in ns))
        return Where(
            origin=Origin.KERNEL,
            cgroup_id=cgroup or None,
            cgroup=path,
            container=container,
            loginuid=None if loginuid == AUDIT_UNSET else loginuid,
            sessionid=None if sessionid == AUDIT_UNSET else sessionid,
            tty=tty_name(major, minor),
            cwd=None if cwd is None else rec.decode_cwd(cwd),
            ns_pid=ns_pid if level else None,
            namespaces=None if not any(ns) else namespaces,
        )

    def _exec_payload(self, key: tuple[bytes, int, int, int]) -> tuple[str, tuple[str, ...] | None, bool]:
        """An exec record's (filename, argv, argv_truncated), remembered by its bytes: a storm repeats a few
        command lines, and equal ones then share their objects (which the JSON writer remembers too)."""
        decoded = rec.decode_exec_payload(*key)
        if len(key[0]) <= PAYLOAD_MEMO_BYTES:  # bounded: at most PAYLOAD_MEMO_MAX short command lines
            if len(self._payloads) >= PAYLOAD_MEMO_MAX:
                self._payloads.clear()
            self._payloads[key] = decoded
        return decoded

    def _comm(self, raw: bytes) -> str:
        """comm[16] as text; cached, since a storm repeats a few names."""
        comm = self._comms.get(raw)
        if comm is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            comm = self._comms[raw] = rec.decode_comm(raw)
        return comm


def _wait(status: int) -> tuple[int, int | None, int | None, bool]:
    """(status, exit code, signal, core dumped) of a wait status (its low 16 bits), remembered: there are at most
    65,536 and a storm repeats a few."""
    status &= 0xFFFF
    exit_code, signal, core_dumped = decode_wait_status(status)
    found = _WAIT[status] = (status, exit_code, signal, core_dumped)
    return found
