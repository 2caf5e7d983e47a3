"""proctap's BPF programs, generated for the running kernel from BTF offsets.

* ``proctap_fork``: tp_btf ``task_newtask(task, clone_flags)``, the end of copy_process (kernel/fork.c): the child
  is complete (pid, parent, start time, cgroup) and the clone flags are at hand.  Runs in the parent.
* ``proctap_exec``: tp_btf ``sched_process_exec(task, old_pid, bprm)`` (fs/exec.c), after the new image is set up:
  filename from bprm->filename, argc from bprm->argc, argv from the new mm's arg_start..arg_end.
* ``proctap_exit``: tp_btf ``sched_process_exit(task[, group_dead])`` (kernel/exit.c do_exit), after
  task->exit_code is set; group_dead from the argument (6.18+) or signal->live == 0.
* ``proctap_ff_<syscall>``: classic tracepoints ``syscalls/sys_exit_{clone,clone3,fork,vfork}`` with ret < 0,
  attached through perf events: nearly free for other syscalls (the kernel tests a bitmap before running anything),
  but each takes 60-80 ms to close (a grace period per tracepoint).
* ``proctap_ef_<syscall>``: classic tracepoints ``syscalls/sys_exit_{execve,execveat}`` with ret < 0 (attached like
  the ForkFailed ones): the filename and argv the caller passed, read at the exit from its registers
  (``bpf_task_pt_regs``) and its memory.  A failed exec has not touched either: the caller goes on running its old
  program, so no per-task copy taken at the syscall's entry is needed (nor a program on every exec's entry).
* ``proctap_ffail``: the alternative for short-lived watchers (``fork_failed_hook=raw``, used by ``proctap run``)
  or without tracefs: tp_btf ``sys_exit(regs, ret)`` (the raw tracepoint those events hang on), one link that
  closes at once, but it runs for every syscall on the machine (+0.13 us each; bench/startup_costs.py).  One
  program serves both failed forks and failed execs.

With context wanted, ``proctap_fork`` and ``proctap_exec`` add the task's context block (:mod:`records`: loginuid,
sessionid, controlling tty, namespaces, pid in its own pid namespace; read through BTF offsets like the rest), and
``proctap_exec`` the working directory: a bounded walk up ``task->fs->pwd`` (dentry parents, crossing mounts through
``struct mount``) to the root of its mount namespace, each name copied with ``bpf_probe_read_kernel_str``.

All write :mod:`records` into one ring buffer through a per-CPU scratch slot, with NO_WAKEUP unless the ring was
empty (the first record after a drain wakes the reader) or more than half full.  A failed output increments a per-CPU
loss counter.  Filters (pid subtree, uid, loginuid, cgroup id or subtree, threads) run before anything is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from . import records as rec
from .btf import STRUCT, TYPEDEF, Btf
from .insn import DW, FP, R0, R1, R2, R3, R4, R6, R7, R8, R9, Asm, B, Helper, Reg, W

__all__ = ["CWD_MAX", "EXEC_ARGS_MAX", "EXEC_SYSCALLS", "FNAME_MAX", "SYSCALL_ABI", "WHERE_MEMBERS", "Filters",
           "Layout", "MapFds", "SyscallAbi", "cgroup_path_capturable", "context_capturable", "cwd_capturable",
           "exec_failed_program", "exec_program", "exit_program", "failed_syscalls_raw_program", "fork_failed_program",
           "fork_program", "scratch_size"]  # fmt: skip

FNAME_MAX = 4096  # PATH_MAX
CLONE_THREAD = 0x00010000
SIGNAL_GROUP_EXIT = 0x00000004  # include/linux/sched/signal.h: signal->flags while a group exit is in progress
BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP = 1, 2
BPF_RB_AVAIL_DATA, BPF_RB_CONS_POS = 0, 2  # bpf_ringbuf_query flags (include/uapi/linux/bpf.h)
BPF_ANY = 0

# stack slots (offsets from the frame pointer)
SLOT_KEY = -8  # u32 map keys
SLOT_VAL = -16  # u64 value for map updates
SLOT_CONS = -24  # u64 consumer position seen before the output
SLOT_FLAGS = -32  # u64 wakeup flags of the output
SLOT_FNAME_PTR = -40  # a failed exec's filename (user address)
SLOT_ARGV_PTR = -48  # a failed exec's argv (user address of the pointer array)
SLOT_ARG_PTR = -56  # argv[i], read from the caller's memory
SLOT_UPID = -72  # 16 bytes: the task's struct upid in its own pid namespace
SLOT_TMP = -80  # the cwd walk: a pointer just read
SLOT_DENTRY = -88  # the cwd walk: the current dentry
SLOT_MOUNT = -96  # the cwd walk: its struct mount
SLOT_MNT_ROOT = -104  # the cwd walk: that mount's root dentry
SLOT_SIZE = -112  # the cwd walk: the record's size before the cwd
SLOT_NAME = -120  # the cwd walk: the current dentry's name (a kernel pointer)
SLOT_CG_ID = -128  # the cgroup path: the cgroup's id (the key of the map of cgroups already sent)
SLOT_KN = -136  # the cgroup path: the current kernfs node
SLOT_ROOT_DENTRY = -144  # the cwd walk: the task's root directory (chroot), where the walk stops
SLOT_ROOT_MOUNT = -152  # and its struct mount

# The cwd walk: at most CWD_MAX bytes of names and CWD_STEPS steps (a component or a mount crossed), each name read
# with room for NAME_ROOM bytes (NAME_MAX + 1); a path beyond is reported truncated (no cwd).
CWD_MAX = 4096
CWD_STEPS = 64
NAME_ROOM = 256
CGROUP_PATH_MAX = 2048  # the cgroup path record: at most this many bytes of names
CGROUP_STEPS = 32  # and this many levels (deeper: not sent; user space resolves the id)
CGROUPS_SEEN_MAX = 16384  # LRU map of cgroup ids whose path was sent
MAX_PID_NS_LEVEL = 32  # include/linux/pid_namespace.h
AUDIT_UNSET = 0xFFFF_FFFF

# Context (``where``): the members the programs read, by name -> (struct, member path); -1 when the kernel lacks it.
WHERE_MEMBERS = {
    "task_loginuid": ("task_struct", "loginuid"), "task_sessionid": ("task_struct", "sessionid"),
    "signal_tty": ("signal_struct", "tty"), "tty_index": ("tty_struct", "index"),
    "tty_driver": ("tty_struct", "driver"), "driver_major": ("tty_driver", "major"),
    "driver_minor_start": ("tty_driver", "minor_start"),
    "task_nsproxy": ("task_struct", "nsproxy"), "nsproxy_mnt": ("nsproxy", "mnt_ns"),
    "nsproxy_net": ("nsproxy", "net_ns"), "nsproxy_uts": ("nsproxy", "uts_ns"), "nsproxy_ipc": ("nsproxy", "ipc_ns"),
    "nsproxy_cgroup": ("nsproxy", "cgroup_ns"),
    "mnt_inum": ("mnt_namespace", "ns.inum"), "net_inum": ("net", "ns.inum"), "uts_inum": ("uts_namespace", "ns.inum"),
    "ipc_inum": ("ipc_namespace", "ns.inum"), "cgroup_inum": ("cgroup_namespace", "ns.inum"),
    "user_inum": ("user_namespace", "ns.inum"), "pidns_inum": ("pid_namespace", "ns.inum"),
    "task_real_cred": ("task_struct", "real_cred"), "cred_user_ns": ("cred", "user_ns"),
    "task_thread_pid": ("task_struct", "thread_pid"), "pid_level": ("pid", "level"),
    "pid_numbers": ("pid", "numbers"), "upid_nr": ("upid", "nr"), "upid_ns": ("upid", "ns"),
    "task_fs": ("task_struct", "fs"), "fs_pwd": ("fs_struct", "pwd"), "fs_root": ("fs_struct", "root"),
    "path_mnt": ("path", "mnt"),
    "path_dentry": ("path", "dentry"), "dentry_parent": ("dentry", "d_parent"),
    "dentry_name": ("dentry", "d_name.name"),
    "mount_mnt": ("mount", "mnt"), "mount_parent": ("mount", "mnt_parent"),
    "mount_mountpoint": ("mount", "mnt_mountpoint"), "vfsmount_root": ("vfsmount", "mnt_root"),
    "task_cgroups": ("task_struct", "cgroups"), "css_dfl_cgrp": ("css_set", "dfl_cgrp"), "cgroup_kn": ("cgroup", "kn"),
    "kn_name": ("kernfs_node", "name"), "kn_parent": ("kernfs_node", "__parent"),  # "parent" before Linux 6.15
}  # fmt: skip
# (nsproxy member, inode member, index among the record's namespaces: pid, mnt, net, uts, ipc, user, cgroup)
_NSPROXY = (("nsproxy_mnt", "mnt_inum", 1), ("nsproxy_net", "net_inum", 2), ("nsproxy_uts", "uts_inum", 3),
            ("nsproxy_ipc", "ipc_inum", 4), ("nsproxy_cgroup", "cgroup_inum", 6))  # fmt: skip
_CGROUP_MEMBERS = ("task_cgroups", "css_dfl_cgrp", "cgroup_kn", "kn_name", "kn_parent")
_CWD_MEMBERS = ("task_fs", "fs_pwd", "fs_root", "path_mnt", "path_dentry", "dentry_parent", "dentry_name", "mount_mnt",
                "mount_parent", "mount_mountpoint", "vfsmount_root")  # fmt: skip

# Failed execs: the syscalls by the index the programs write, which of the syscall's arguments are the filename and
# argv (fs/exec.c: execve(filename, argv, envp), execveat(dirfd, filename, argv, envp, flags)), and how many argv
# pointers the program follows (bounded loops the verifier walks): EXEC_ARGS_MAX arguments copied while argv_limit
# allows, then up to EXEC_ARGS_COUNTED more only counted; argc beyond is unknown.
EXEC_SYSCALLS = ("execve", "execveat")
EXEC_SYSCALL_ARGS = {"execve": (0, 1), "execveat": (1, 2)}
EXEC_ARGS_MAX = 128
EXEC_ARGS_COUNTED = 512


@dataclass(frozen=True)
class SyscallAbi:
    """Where this architecture keeps the syscall number and which numbers create tasks."""

    regs_nr: str  # the member of struct pt_regs holding the syscall number at sys_exit
    fork_syscalls: dict[str, int]  # name -> number
    compat_word: str  # task_struct path of the word that marks a compat (32-bit) task
    compat_mask: int
    exec_syscalls: dict[str, int]  # execve, execveat -> number
    arg_regs: tuple[tuple[str, int], ...]  # the syscall's first three arguments at sys_exit: (pt_regs member, index)


SYSCALL_ABI = {
    # arch/x86/entry/syscalls/syscall_64.tbl; TS_COMPAT in arch/x86/include/asm/thread_info.h; the arguments stay in
    # di, si, dx (rax gets the return value)
    "x86_64": SyscallAbi("orig_ax", {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435}, "thread_info.status", 0x2,
                         {"execve": 59, "execveat": 322}, (("di", 0), ("si", 0), ("dx", 0))),
    # include/uapi/asm-generic/unistd.h; TIF_32BIT in arch/arm64/include/asm/thread_info.h; x0 gets the return value,
    # the first argument stays in orig_x0 (arch/arm64/include/asm/syscall.h syscall_get_arguments)
    "aarch64": SyscallAbi("syscallno", {"clone": 220, "clone3": 435}, "thread_info.flags", 1 << 22,
                          {"execve": 221, "execveat": 281}, (("orig_x0", 0), ("regs", 1), ("regs", 2))),
}  # fmt: skip
TRACEPOINTS = ("task_newtask", "sched_process_exec", "sched_process_exit", "sys_exit")


@dataclass(frozen=True)
class Layout:
    """Everything about the running kernel the programs rely on, all read from BTF (and cached: :mod:`.cache`).

    Offsets are bytes from the start of the struct; -1 marks what this kernel or architecture lacks.
    """

    task_tgid: int
    task_pid: int
    task_real_parent: int
    task_group_leader: int
    task_start_boottime: int
    task_exit_code: int
    task_comm: int
    task_mm: int
    task_signal: int
    signal_live: int
    signal_flags: int
    signal_group_exit_code: int
    mm_arg_start: int
    mm_arg_end: int
    bprm_argc: int
    bprm_filename: int
    exit_has_group_dead: bool
    tracepoints: dict[str, int]  # btf_trace_<name> typedef ids, for attaching tp_btf programs
    prog_info_recursion_misses: int  # in struct bpf_prog_info
    fork_syscalls: dict[str, int]  # this architecture's fork syscall numbers (empty: unknown architecture)
    regs_syscall_nr: int
    regs_syscall_nr_size: int
    compat_flags: int
    compat_mask: int
    exec_syscalls: dict[str, int]  # execve/execveat numbers (empty: unknown architecture)
    regs_arg0: int  # where pt_regs keeps the syscall's arguments 0-2 at sys_exit (-1: unknown)
    regs_arg1: int
    regs_arg2: int
    where: dict[str, int]  # WHERE_MEMBERS' offsets (-1: missing) and "upid_size" (0: unknown)

    @property
    def regs_args(self) -> tuple[int, int, int]:
        return self.regs_arg0, self.regs_arg1, self.regs_arg2

    @classmethod
    def from_btf(cls, btf: Btf, machine: str) -> Layout:
        def off(struct_name: str, member: str) -> int:
            return btf.member(struct_name, member).offset

        def off_or_missing(struct_name: str, member: str) -> int:
            try:
                return off(struct_name, member)
            except KeyError:
                return -1

        tracepoints = {}
        for name in TRACEPOINTS:
            with contextlib.suppress(KeyError):
                tracepoints[name] = btf.find(f"btf_trace_{name}", TYPEDEF)
        abi = SYSCALL_ABI.get(machine)
        regs_nr = None if abi is None else btf.member("pt_regs", abi.regs_nr)
        exit_params = btf.func_params("btf_trace_sched_process_exit")  # (void *__data, task[, group_dead])
        where = {name: off_or_missing(struct_name, member) for name, (struct_name, member) in WHERE_MEMBERS.items()}
        if where["kn_parent"] < 0:
            where["kn_parent"] = off_or_missing("kernfs_node", "parent")
        try:
            where["upid_size"] = btf.size(btf.find("upid", STRUCT))
        except (KeyError, ValueError):
            where["upid_size"] = 0
        arg_offsets = [-1, -1, -1]
        if abi is not None:
            with contextlib.suppress(KeyError):
                arg_offsets = [btf.member("pt_regs", name).offset + 8 * index for name, index in abi.arg_regs]
        return cls(
            task_tgid=off("task_struct", "tgid"),
            task_pid=off("task_struct", "pid"),
            task_real_parent=off("task_struct", "real_parent"),
            task_group_leader=off("task_struct", "group_leader"),
            task_start_boottime=off("task_struct", "start_boottime"),
            task_exit_code=off("task_struct", "exit_code"),
            task_comm=off("task_struct", "comm"),
            task_mm=off("task_struct", "mm"),
            task_signal=off("task_struct", "signal"),
            signal_live=off("signal_struct", "live"),
            signal_flags=off("signal_struct", "flags"),
            signal_group_exit_code=off("signal_struct", "group_exit_code"),
            mm_arg_start=off("mm_struct", "arg_start"),
            mm_arg_end=off("mm_struct", "arg_end"),
            bprm_argc=off("linux_binprm", "argc"),
            bprm_filename=off("linux_binprm", "filename"),
            exit_has_group_dead=len(exit_params) >= 3,
            tracepoints=tracepoints,
            prog_info_recursion_misses=off_or_missing("bpf_prog_info", "recursion_misses"),
            fork_syscalls={} if abi is None or regs_nr is None else dict(abi.fork_syscalls),
            regs_syscall_nr=-1 if regs_nr is None else regs_nr.offset,
            regs_syscall_nr_size=0 if regs_nr is None else regs_nr.size,
            compat_flags=-1 if abi is None else off_or_missing("task_struct", abi.compat_word),
            compat_mask=0 if abi is None else abi.compat_mask,
            exec_syscalls={} if abi is None or regs_nr is None or -1 in arg_offsets else dict(abi.exec_syscalls),
            regs_arg0=arg_offsets[0],
            regs_arg1=arg_offsets[1],
            regs_arg2=arg_offsets[2],
            where=where,
        )

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Layout:
        """The inverse of :meth:`to_json`; raises ValueError unless every field is there with its type."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            if f.type == "bool":
                ok = isinstance(value, bool)
            elif f.type == "int":
                ok = type(value) is int
            else:
                ok = isinstance(value, dict) and all(isinstance(k, str) and type(v) is int for k, v in value.items())
            if f.name == "where" and ok:  # a cache written before members were added: parse BTF again
                ok = isinstance(value, dict) and {*WHERE_MEMBERS, "upid_size"} <= value.keys()
            if not ok:
                raise ValueError(f"bad or missing {f.name}")
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Filters:
    """In-kernel filters; None/True: no filtering on that criterion."""

    tracked: bool = False  # only tgids in the tracked map (the pid subtree, extended by forks)
    uid: int | None = None
    cgroup_id: int | None = None
    loginuid: int | None = None  # the task's audit login uid, at task_struct offset ``loginuid_offset``
    loginuid_offset: int = -1
    cgroup_under: bool = False  # only tasks in the cgroup of MapFds.cgroup (or below it): current_task_under_cgroup
    threads: bool = True
    wakeup_threshold: int = 1 << 20  # force a wakeup when more bytes than this are pending


@dataclass(frozen=True)
class MapFds:
    ringbuf: int
    scratch: int  # ARRAY of one record slot per CPU
    lost: int  # PERCPU_ARRAY[1] of u64
    tracked: int  # HASH u32 tgid -> u64 (or -1 when not filtering)
    cgroup: int = -1  # CGROUP_ARRAY[1] holding the cgroup of Filters.cgroup_under (-1: none)
    cgroups_seen: int = -1  # LRU_HASH u64 cgroup id -> u64: the cgroups whose path a CGROUP record gave (-1: none)


def scratch_size(argv_limit: int, *, exec_failed: bool = False, context: bool = False) -> int:
    """Bytes of one per-CPU record slot.  A failed exec's argv is read one string at a time, each at most what is
    left of ``argv_limit``: the verifier cannot relate the offset to that size, so the slot leaves room for both.
    With ``context``, room for the context block and the cwd."""
    extra = rec.WHERE_SIZE + max(CWD_MAX, CGROUP_PATH_MAX) if context else 0
    return rec.HEADER_SIZE + FNAME_MAX + argv_limit * (2 if exec_failed else 1) + extra


def cgroup_path_capturable(lay: Layout) -> bool:
    """Whether this kernel's BTF has everything the cgroup path walk reads."""
    return all(lay.where.get(name, -1) >= 0 for name in _CGROUP_MEMBERS)


def cwd_capturable(lay: Layout) -> bool:
    """Whether this kernel's BTF has everything the cwd walk reads."""
    return all(lay.where.get(name, -1) >= 0 for name in _CWD_MEMBERS)


def context_capturable(lay: Layout) -> bool:
    """Whether this kernel's BTF has what the context block needs at least (namespaces, pid levels)."""
    w = lay.where
    return w.get("task_nsproxy", -1) >= 0 and w.get("task_thread_pid", -1) >= 0 and w.get("upid_size", 0) == 16


# -- building blocks ---------------------------------------------------------------------------------------------


def _scratch_slot(a: Asm, maps: MapFds) -> None:
    """r9 = this CPU's scratch record, or exit."""
    a.call(Helper.get_smp_processor_id)
    a.stx(W, FP, SLOT_KEY, R0)
    a.ld_map_fd(R1, maps.scratch)
    a.mov(R2, FP)
    a.add(R2, SLOT_KEY)
    a.call(Helper.map_lookup_elem)
    a.jeq(R0, 0, "out")
    a.mov(R9, R0)


def _tracked_map_call(a: Asm, maps: MapFds, helper: Helper, *, value: bool = False) -> None:
    """Call a map helper on the tracked map with the key at FP+SLOT_KEY (and, with ``value``, the value at
    FP+SLOT_VAL, BPF_ANY)."""
    a.ld_map_fd(R1, maps.tracked)
    a.mov(R2, FP)
    a.add(R2, SLOT_KEY)
    if value:
        a.mov(R3, FP)
        a.add(R3, SLOT_VAL)
        a.mov(R4, BPF_ANY)
    a.call(helper)


def _check_tracked(a: Asm, maps: MapFds, tgid: Reg) -> None:
    """Exit unless the tgid in register ``tgid`` is in the tracked map (pid-subtree filter)."""
    a.stx(W, FP, SLOT_KEY, tgid)
    _tracked_map_call(a, maps, Helper.map_lookup_elem)
    a.jeq(R0, 0, "out")


def _creds_cgroup_comm(a: Asm, filters: Filters, maps: MapFds) -> None:
    """uid, gid, cgroup id and comm of the current task into the record at r9, applying the uid, loginuid and
    cgroup filters (clobbers r0-r5)."""
    a.call(Helper.get_current_uid_gid)
    a.stx(W, R9, rec.OFF_UID, R0)
    if filters.uid is not None:
        a.mov32(R1, R0)
        _jne_u32(a, R1, filters.uid, "out")
    a.rsh(R0, 32)
    a.stx(W, R9, rec.OFF_GID, R0)
    _login_and_subtree_filters(a, filters, maps)
    a.call(Helper.get_current_cgroup_id)
    a.stx(DW, R9, rec.OFF_CGROUP, R0)
    if filters.cgroup_id is not None:
        a.ld_imm64(R1, filters.cgroup_id)
        a.jne(R0, R1, "out")
    a.mov(R1, R9)
    a.add(R1, rec.OFF_COMM)
    a.mov(R2, 16)
    a.call(Helper.get_current_comm)


def _login_and_subtree_filters(a: Asm, filters: Filters, maps: MapFds) -> None:
    """Exit unless the current task has the wanted loginuid and is under the wanted cgroup (clobbers r0-r5)."""
    if filters.loginuid is not None and filters.loginuid_offset >= 0:
        a.call(Helper.get_current_task_btf)
        a.ldx(W, R1, R0, filters.loginuid_offset)
        _jne_u32(a, R1, filters.loginuid, "out")
    if filters.cgroup_under and maps.cgroup >= 0:
        a.ld_map_fd(R1, maps.cgroup)
        a.mov(R2, 0)
        a.call(Helper.current_task_under_cgroup)
        a.jne(R0, 1, "out")


def _jne_u32(a: Asm, reg: Reg, value: int, label: str) -> None:
    """Jump unless the zero-extended u32 in ``reg`` equals ``value``: an immediate is a sign-extended s32, so a value
    of 2**31 or more (4294967295, an unset loginuid) is compared through a register.  Clobbers r2 then."""
    if value < 1 << 31:
        a.jne(reg, value, label)
    else:
        a.ld_imm64(R2, value)
        a.jne(reg, R2, label)


def _read_kernel(a: Asm, dst: Reg, dst_off: int, size: int, src: Reg, src_off: int) -> None:
    """bpf_probe_read_kernel(dst + dst_off, size, src + src_off): r0 = 0 or -errno (the destination zeroed on
    failure); clobbers r1-r5.  ``src`` may be any register (it is moved first)."""
    if src != R3:
        a.mov(R3, src)
    if src_off:
        a.add(R3, src_off)
    a.mov(R1, dst)
    if dst_off:
        a.add(R1, dst_off)
    a.mov(R2, size)
    a.call(Helper.probe_read_kernel)


def _where_fields(a: Asm, lay: Layout) -> None:
    """The context block of the task in r7 (a BTF task pointer) into the record at r9 (after the header): loginuid,
    sessionid, controlling tty, namespaces, pid in its own pid namespace.  Clobbers r0-r5; anything this kernel's
    BTF lacks stays 0 (unknown), the loginuid/sessionid 4294967295 (unset)."""
    w = lay.where
    base = rec.HEADER_SIZE
    for off in range(0, rec.WHERE_SIZE, 8):
        a.st(DW, R9, base + off, 0)
    # login session: task->loginuid (kuid_t), task->sessionid (CONFIG_AUDIT)
    if w["task_loginuid"] >= 0 and w["task_sessionid"] >= 0:
        a.ldx(W, R1, R7, w["task_loginuid"])
        a.stx(W, R9, base + rec.W_LOGINUID, R1)
        a.ldx(W, R1, R7, w["task_sessionid"])
        a.stx(W, R9, base + rec.W_SESSIONID, R1)
    else:
        a.st(W, R9, base + rec.W_LOGINUID, AUDIT_UNSET)
        a.st(W, R9, base + rec.W_SESSIONID, AUDIT_UNSET)
    # controlling terminal: task->signal->tty; its device is (driver->major, driver->minor_start + index)
    # (drivers/tty/tty_io.c tty_devnum)
    if min(w[k] for k in ("signal_tty", "tty_index", "tty_driver", "driver_major", "driver_minor_start")) >= 0:
        a.ldx(DW, R1, R7, lay.task_signal)
        a.jeq(R1, 0, "w_no_tty")
        a.ldx(DW, R1, R1, w["signal_tty"])
        a.jeq(R1, 0, "w_no_tty")
        a.ldx(DW, R2, R1, w["tty_driver"])
        a.jeq(R2, 0, "w_no_tty")
        a.ldx(W, R3, R1, w["tty_index"])
        a.ldx(W, R4, R2, w["driver_minor_start"])
        a.add(R4, R3)
        a.stx(W, R9, base + rec.W_TTY_MINOR, R4)
        a.ldx(W, R4, R2, w["driver_major"])
        a.stx(W, R9, base + rec.W_TTY_MAJOR, R4)
        a.label("w_no_tty")
    # namespaces of task->nsproxy (NULL once the task is exiting)
    if w["task_nsproxy"] >= 0:
        a.ldx(DW, R1, R7, w["task_nsproxy"])
        a.jeq(R1, 0, "w_no_nsproxy")
        for member, inum, index in _NSPROXY:
            if w[member] < 0 or w[inum] < 0:
                continue
            a.ldx(DW, R2, R1, w[member])
            a.jeq(R2, 0, f"w_no_{member}")
            a.ldx(W, R2, R2, w[inum])
            a.stx(W, R9, base + rec.W_NS + 4 * index, R2)
            a.label(f"w_no_{member}")
        a.label("w_no_nsproxy")
    # the user namespace of its credentials (what /proc/PID/ns/user shows: task->real_cred->user_ns)
    if min(w["task_real_cred"], w["cred_user_ns"], w["user_inum"]) >= 0:
        a.ldx(DW, R1, R7, w["task_real_cred"])
        a.jeq(R1, 0, "w_no_cred")
        a.ldx(DW, R1, R1, w["cred_user_ns"])
        a.jeq(R1, 0, "w_no_cred")
        a.ldx(W, R1, R1, w["user_inum"])
        a.stx(W, R9, base + rec.W_NS + 4 * 5, R1)
        a.label("w_no_cred")
    # its pid namespace and the pid in it: task->thread_pid->numbers[level] (kernel/pid.c task_active_pid_ns);
    # the array is indexed by a value read at run time, so the upid is copied with bpf_probe_read_kernel
    if min(w["task_thread_pid"], w["pid_level"], w["pid_numbers"], w["upid_nr"], w["upid_ns"],
           w["pidns_inum"]) >= 0 and w["upid_size"] == 16:  # fmt: skip
        a.ldx(DW, R6, R7, w["task_thread_pid"])
        a.jeq(R6, 0, "w_no_pid")
        a.ldx(W, R2, R6, w["pid_level"])
        a.stx(W, R9, base + rec.W_NS_LEVEL, R2)
        a.jgt(R2, MAX_PID_NS_LEVEL, "w_no_pid")
        a.lsh(R2, 4)  # * sizeof(struct upid)
        a.add(R2, w["pid_numbers"])
        a.mov(R3, R6)
        a.add(R3, R2)
        _read_kernel(a, FP, SLOT_UPID, 16, R3, 0)
        a.jne(R0, 0, "w_no_pid")
        a.ldx(W, R1, R9, base + rec.W_NS_LEVEL)
        a.jeq(R1, 0, "w_initial_pid_ns")  # the pid everyone sees: not repeated
        a.ldx(W, R1, FP, SLOT_UPID + w["upid_nr"])
        a.stx(W, R9, base + rec.W_NS_PID, R1)
        a.label("w_initial_pid_ns")
        a.ldx(DW, R3, FP, SLOT_UPID + w["upid_ns"])
        a.jeq(R3, 0, "w_no_pid")
        _read_kernel(a, R9, base + rec.W_NS, 4, R3, w["pidns_inum"])
        a.label("w_no_pid")


def _context_filters(a: Asm, filters: Filters, maps: MapFds) -> None:
    """Exit unless the current task passes the uid, loginuid, cgroup-subtree and cgroup-id filters (clobbers r0-r5);
    what :func:`_creds_cgroup_comm` checks while it writes the record."""
    if filters.uid is not None:
        a.call(Helper.get_current_uid_gid)
        a.mov32(R1, R0)
        _jne_u32(a, R1, filters.uid, "out")
    _login_and_subtree_filters(a, filters, maps)
    if filters.cgroup_id is not None:
        a.call(Helper.get_current_cgroup_id)
        a.ld_imm64(R1, filters.cgroup_id)
        a.jne(R0, R1, "out")


def _cgroup_path(a: Asm, lay: Layout, maps: MapFds, filters: Filters) -> None:
    """Before the event's record, once per cgroup: a CGROUP record with the current task's cgroup id and path, so
    that the path is known even when the cgroup is gone by the time user space reads the event (a container that
    lived a millisecond).  ``maps.cgroups_seen`` (an LRU map) remembers the ids already sent; the path's names are
    read from the cgroup's kernfs node up to the root (leaf first, each NUL-terminated), with the scratch slot at r9
    (the event's record is written over it afterwards).  Nothing is sent for a path too deep or unreadable: user
    space then resolves the id itself.  Clobbers r0-r5 and r8."""
    w = lay.where
    _context_filters(a, filters, maps)  # (checked again with the event's record: nothing sent for a task filtered out)
    a.call(Helper.get_current_cgroup_id)
    a.stx(DW, FP, SLOT_CG_ID, R0)
    a.ld_map_fd(R1, maps.cgroups_seen)
    a.mov(R2, FP)
    a.add(R2, SLOT_CG_ID)
    a.call(Helper.map_lookup_elem)
    a.jne(R0, 0, "cg_done")
    a.st(DW, FP, SLOT_VAL, 1)
    a.ld_map_fd(R1, maps.cgroups_seen)
    a.mov(R2, FP)
    a.add(R2, SLOT_CG_ID)
    a.mov(R3, FP)
    a.add(R3, SLOT_VAL)
    a.mov(R4, BPF_ANY)
    a.call(Helper.map_update_elem)  # first: another CPU may send the same path meanwhile, which does no harm
    _begin(a, rec.TYPE_CGROUP)
    a.ldx(DW, R1, FP, SLOT_CG_ID)
    a.stx(DW, R9, rec.OFF_AUX64, R1)
    a.st(W, R9, rec.OFF_LEN_A, 0)
    a.call(Helper.get_current_task_btf)
    _read_kernel(a, FP, SLOT_KN, 8, R0, w["task_cgroups"])  # (an __rcu pointer: read, not loaded through BTF)
    a.jne(R0, 0, "cg_done")
    a.ldx(DW, R1, FP, SLOT_KN)
    _read_kernel(a, FP, SLOT_KN, 8, R1, w["css_dfl_cgrp"])
    a.jne(R0, 0, "cg_done")
    a.ldx(DW, R1, FP, SLOT_KN)
    _read_kernel(a, FP, SLOT_KN, 8, R1, w["cgroup_kn"])
    a.jne(R0, 0, "cg_done")
    a.mov(R8, 0)
    a.label("cg_step")
    a.jge(R8, CGROUP_STEPS, "cg_done")
    a.add(R8, 1)
    a.ldx(DW, R1, FP, SLOT_KN)
    a.jeq(R1, 0, "cg_done")
    _read_kernel(a, FP, SLOT_TMP, 8, R1, w["kn_parent"])
    a.jne(R0, 0, "cg_done")
    a.ldx(DW, R1, FP, SLOT_TMP)
    a.jeq(R1, 0, "cg_send")  # the hierarchy's root: its name is not part of the path
    a.ldx(DW, R1, FP, SLOT_KN)
    _read_kernel(a, FP, SLOT_NAME, 8, R1, w["kn_name"])
    a.jne(R0, 0, "cg_done")
    a.ldx(W, R2, R9, rec.OFF_LEN_A)
    a.jgt(R2, CGROUP_PATH_MAX - NAME_ROOM, "cg_done")
    a.mov(R1, R9)
    a.add(R1, rec.HEADER_SIZE)
    a.add(R1, R2)
    a.mov(R2, NAME_ROOM)
    a.ldx(DW, R3, FP, SLOT_NAME)
    a.call(Helper.probe_read_kernel_str)
    a.jslt(R0, 2, "cg_done")
    a.ldx(W, R2, R9, rec.OFF_LEN_A)
    a.jgt(R2, CGROUP_PATH_MAX - NAME_ROOM, "cg_done")
    a.add(R2, R0)
    a.stx(W, R9, rec.OFF_LEN_A, R2)
    a.ldx(DW, R1, FP, SLOT_TMP)
    a.stx(DW, FP, SLOT_KN, R1)
    a.ja("cg_step")
    a.label("cg_send")
    a.ldx(W, R3, R9, rec.OFF_LEN_A)
    a.jle(R3, CGROUP_PATH_MAX, "cg_size")
    a.mov(R3, CGROUP_PATH_MAX)
    a.label("cg_size")
    a.add(R3, rec.HEADER_SIZE)
    a.ld_map_fd(R1, maps.ringbuf)
    a.mov(R2, R9)
    # flags 0: the kernel's adaptive wake-up, i.e. wake the reader when the ring was empty.  Not NO_WAKEUP: the event's
    # record right after would find the ring not empty and not wake it either (a reader asleep for half a ring)
    a.mov(R4, 0)
    a.call(Helper.ringbuf_output)
    a.label("cg_done")


def _cwd_walk(a: Asm, lay: Layout, size_max: int) -> None:
    """Append the working directory of the task in r7 to the record at r9 whose size is in r8 (at most
    ``size_max``); r8 = the new size.  Clobbers r0-r6.

    From task->fs->pwd up to the task's root directory, task->fs->root (its chroot), or else the root of its mount
    namespace (fs/d_path.c prepend_path): at a mount's root dentry, continue from its mountpoint in the parent
    mount (struct mount, reached from the vfsmount inside it); the namespace's root mount is its own parent.
    Every pointer is read with bpf_probe_read_kernel (struct mount is reached by subtracting an offset, which BTF
    pointers do not allow).  Each name is appended NUL-terminated, leaf first; cwd bytes and flags go into the
    context block."""
    w = lay.where
    base = rec.HEADER_SIZE
    a.stx(DW, FP, SLOT_SIZE, R8)
    a.ldx(DW, R6, R7, w["task_fs"])
    a.jeq(R6, 0, "cwd_none")
    _read_kernel(a, FP, SLOT_DENTRY, 8, R6, w["fs_pwd"] + w["path_dentry"])
    a.jne(R0, 0, "cwd_unreadable")
    _read_kernel(a, FP, SLOT_TMP, 8, R6, w["fs_pwd"] + w["path_mnt"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ldx(DW, R6, FP, SLOT_TMP)  # the vfsmount
    _read_kernel(a, FP, SLOT_MNT_ROOT, 8, R6, w["vfsmount_root"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ldx(DW, R6, FP, SLOT_TMP)
    a.sub(R6, w["mount_mnt"])
    a.stx(DW, FP, SLOT_MOUNT, R6)
    a.ldx(DW, R6, R7, w["task_fs"])
    _read_kernel(a, FP, SLOT_ROOT_DENTRY, 8, R6, w["fs_root"] + w["path_dentry"])
    a.jne(R0, 0, "cwd_unreadable")
    _read_kernel(a, FP, SLOT_ROOT_MOUNT, 8, R6, w["fs_root"] + w["path_mnt"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ldx(DW, R1, FP, SLOT_ROOT_MOUNT)
    a.sub(R1, w["mount_mnt"])
    a.stx(DW, FP, SLOT_ROOT_MOUNT, R1)
    a.mov(R6, 0)  # steps taken: the loop's bound, a precise counter
    a.label("cwd_step")
    a.jge(R6, CWD_STEPS, "cwd_truncated")
    a.add(R6, 1)
    a.ldx(DW, R1, FP, SLOT_DENTRY)
    a.ldx(DW, R2, FP, SLOT_ROOT_DENTRY)
    a.jne(R1, R2, "cwd_not_root")
    a.ldx(DW, R3, FP, SLOT_MOUNT)
    a.ldx(DW, R4, FP, SLOT_ROOT_MOUNT)
    a.jeq(R3, R4, "cwd_end")  # the task's root directory: its paths start here
    a.label("cwd_not_root")
    a.ldx(DW, R2, FP, SLOT_MNT_ROOT)
    a.jeq(R1, R2, "cwd_mount")
    _read_kernel(a, FP, SLOT_TMP, 8, R1, w["dentry_parent"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ldx(DW, R1, FP, SLOT_TMP)
    a.ldx(DW, R2, FP, SLOT_DENTRY)
    a.jeq(R1, R2, "cwd_end")  # a root that is no mount's root here: where the kernel stops too (unreachable)
    _read_kernel(a, FP, SLOT_NAME, 8, R2, w["dentry_name"])
    a.jne(R0, 0, "cwd_unreadable")
    # append the name at r9 + size + cwd bytes, with room for NAME_ROOM (both bounded again for the verifier:
    # values read back from memory are not)
    a.ldx(W, R8, R9, base + rec.W_CWD_LEN)
    a.jgt(R8, CWD_MAX - NAME_ROOM, "cwd_truncated")
    a.ldx(DW, R2, FP, SLOT_SIZE)
    a.jgt(R2, size_max, "cwd_unreadable")
    a.mov(R1, R9)
    a.add(R1, R2)
    a.add(R1, R8)
    a.mov(R2, NAME_ROOM)
    a.ldx(DW, R3, FP, SLOT_NAME)
    a.call(Helper.probe_read_kernel_str)
    a.jslt(R0, 2, "cwd_unreadable")  # a name and its NUL: 2 bytes at least
    a.ldx(W, R8, R9, base + rec.W_CWD_LEN)
    a.jgt(R8, CWD_MAX - NAME_ROOM, "cwd_truncated")
    a.add(R8, R0)
    a.stx(W, R9, base + rec.W_CWD_LEN, R8)
    a.ldx(DW, R1, FP, SLOT_TMP)
    a.stx(DW, FP, SLOT_DENTRY, R1)
    a.ja("cwd_step")
    a.label("cwd_mount")  # the root of its mount: go on from where that mount is mounted
    a.ldx(DW, R1, FP, SLOT_MOUNT)
    _read_kernel(a, FP, SLOT_TMP, 8, R1, w["mount_parent"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ldx(DW, R1, FP, SLOT_TMP)
    a.ldx(DW, R2, FP, SLOT_MOUNT)
    a.jeq(R1, R2, "cwd_end")  # the namespace's root mount: done
    _read_kernel(a, FP, SLOT_DENTRY, 8, R2, w["mount_mountpoint"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ldx(DW, R1, FP, SLOT_TMP)
    a.stx(DW, FP, SLOT_MOUNT, R1)
    _read_kernel(a, FP, SLOT_MNT_ROOT, 8, R1, w["mount_mnt"] + w["vfsmount_root"])
    a.jne(R0, 0, "cwd_unreadable")
    a.ja("cwd_step")
    for label, flag in (("cwd_none", rec.CWD_NONE), ("cwd_truncated", rec.CWD_TRUNCATED),
                        ("cwd_unreadable", rec.CWD_UNREADABLE)):  # fmt: skip
        a.label(label)
        a.st(W, R9, base + rec.W_CWD_FLAGS, flag)
        a.st(W, R9, base + rec.W_CWD_LEN, 0)
        a.ja("cwd_end")
    a.label("cwd_end")
    # r8 = the size before the walk + the cwd bytes, bounded again
    a.ldx(DW, R8, FP, SLOT_SIZE)
    a.jle(R8, size_max, "cwd_size")
    a.mov(R8, size_max)
    a.label("cwd_size")
    a.ldx(W, R1, R9, base + rec.W_CWD_LEN)
    a.jle(R1, CWD_MAX, "cwd_len")
    a.mov(R1, CWD_MAX)
    a.label("cwd_len")
    a.add(R8, R1)


def _task_fields(a: Asm, lay: Layout) -> None:
    """tgid, tid, process start, task start and parent tgid of the task in r7 into the record at r9."""
    a.ldx(W, R1, R7, lay.task_tgid)
    a.stx(W, R9, rec.OFF_TGID, R1)
    a.ldx(W, R1, R7, lay.task_pid)
    a.stx(W, R9, rec.OFF_TID, R1)
    a.ldx(DW, R1, R7, lay.task_group_leader)
    a.ldx(DW, R1, R1, lay.task_start_boottime)
    a.stx(DW, R9, rec.OFF_START, R1)
    a.ldx(DW, R1, R7, lay.task_start_boottime)
    a.stx(DW, R9, rec.OFF_TASK_START, R1)
    a.ldx(DW, R1, R7, lay.task_real_parent)
    a.ldx(W, R1, R1, lay.task_tgid)
    a.stx(W, R9, rec.OFF_PPID, R1)


def _begin(a: Asm, rtype: int) -> None:
    a.st(W, R9, rec.OFF_TYPE, rtype)
    a.st(W, R9, rec.OFF_FLAGS, 0)
    a.call(Helper.ktime_get_ns)
    a.stx(DW, R9, rec.OFF_TS, R0)


def _output(a: Asm, maps: MapFds, filters: Filters, size_reg: Reg | int | None) -> None:
    """Send the record at r9 (size HEADER_SIZE, or in ``size_reg``, a callee-saved register, or that many bytes
    when an int); count a failure.

    Batched wakeups: wake the reader only for the first record after a drain (the ring was empty) or when much is
    pending.  A reader that drained the ring between our look at it and our commit may have gone to sleep without
    seeing our record: the consumer position moved meanwhile, so wake it with an empty (discarded) record.
    """
    a.ld_map_fd(R1, maps.ringbuf)
    a.mov(R2, BPF_RB_CONS_POS)
    a.call(Helper.ringbuf_query)
    a.stx(DW, FP, SLOT_CONS, R0)
    a.ld_map_fd(R1, maps.ringbuf)
    a.mov(R2, BPF_RB_AVAIL_DATA)
    a.call(Helper.ringbuf_query)
    a.mov(R4, BPF_RB_FORCE_WAKEUP)
    a.jeq(R0, 0, "flags")
    a.jgt(R0, filters.wakeup_threshold, "flags")
    a.mov(R4, BPF_RB_NO_WAKEUP)
    a.label("flags")
    a.stx(DW, FP, SLOT_FLAGS, R4)
    a.ld_map_fd(R1, maps.ringbuf)
    a.mov(R2, R9)
    if size_reg is None:
        a.mov(R3, rec.HEADER_SIZE)
    elif isinstance(size_reg, Reg):
        a.mov(R3, size_reg)
    else:
        a.mov(R3, size_reg)
    a.call(Helper.ringbuf_output)
    a.jne(R0, 0, "lost")
    a.ldx(DW, R1, FP, SLOT_FLAGS)
    a.jeq(R1, BPF_RB_FORCE_WAKEUP, "out")
    a.ld_map_fd(R1, maps.ringbuf)
    a.mov(R2, BPF_RB_CONS_POS)
    a.call(Helper.ringbuf_query)
    a.ldx(DW, R1, FP, SLOT_CONS)
    a.jeq(R0, R1, "out")
    a.ld_map_fd(R1, maps.ringbuf)
    a.mov(R2, 8)
    a.mov(R3, 0)
    a.call(Helper.ringbuf_reserve)
    a.jeq(R0, 0, "out")
    a.mov(R1, R0)
    a.mov(R2, BPF_RB_FORCE_WAKEUP)
    a.call(Helper.ringbuf_discard)
    a.ja("out")
    # the ring is full: count the record as lost on this CPU
    a.label("lost")
    a.st(W, FP, SLOT_KEY, 0)
    a.ld_map_fd(R1, maps.lost)
    a.mov(R2, FP)
    a.add(R2, SLOT_KEY)
    a.call(Helper.map_lookup_elem)
    a.jeq(R0, 0, "out")
    a.mov(R1, 1)
    a.atomic_add(DW, R0, 0, R1)
    a.label("out")
    a.mov(R0, 0)
    a.exit()


# -- the programs ------------------------------------------------------------------------------------------------


def fork_program(lay: Layout, maps: MapFds, filters: Filters, *, context: bool = False) -> bytes:
    """``context``: add the new task's context block (its namespaces, pid in its namespace, login, tty)."""
    a = Asm()
    a.ldx(DW, R7, R1, 0)  # the new task
    a.ldx(DW, R6, R1, 8)  # clone_flags
    if not filters.threads:
        a.jset(R6, CLONE_THREAD, "out")
    if filters.tracked:
        # a thread belongs to its process; a process to its parent (real_parent, CLONE_PARENT included)
        a.ldx(W, R8, R7, lay.task_tgid)
        a.jset(R6, CLONE_THREAD, "check")
        a.ldx(DW, R8, R7, lay.task_real_parent)
        a.ldx(W, R8, R8, lay.task_tgid)
        a.label("check")
        _check_tracked(a, maps, R8)
        a.jset(R6, CLONE_THREAD, "tracked")
        a.ldx(W, R1, R7, lay.task_tgid)
        a.stx(W, FP, SLOT_KEY, R1)
        a.st(DW, FP, SLOT_VAL, 1)
        _tracked_map_call(a, maps, Helper.map_update_elem, value=True)
        a.label("tracked")
    _scratch_slot(a, maps)
    if context and maps.cgroups_seen >= 0:
        _cgroup_path(a, lay, maps, filters)
    _begin(a, rec.TYPE_FORK)
    _task_fields(a, lay)
    a.stx(DW, R9, rec.OFF_AUX64, R6)
    a.call(Helper.get_current_pid_tgid)
    a.stx(W, R9, rec.OFF_AUX32, R0)  # the creating thread
    _creds_cgroup_comm(a, filters, maps)
    if context:
        a.st(W, R9, rec.OFF_FLAGS, rec.FLAG_WHERE)
        _where_fields(a, lay)
        a.st(W, R9, rec.HEADER_SIZE + rec.W_CWD_FLAGS, rec.CWD_NONE)
    _output(a, maps, filters, rec.HEADER_SIZE + rec.WHERE_SIZE if context else None)
    return a.assemble()


def exec_program(
    lay: Layout, maps: MapFds, filters: Filters, argv_limit: int, *, context: bool = False, cwd: bool = False
) -> bytes:
    """``context``: add the task's context block after the header (the filename and argv follow it); ``cwd``
    (with ``context``): and its working directory at the end of the record."""
    payload = rec.HEADER_SIZE + (rec.WHERE_SIZE if context else 0)
    a = Asm()
    a.mov(R6, R1)
    a.ldx(DW, R7, R6, 0)  # the task (current)
    if filters.tracked:
        a.ldx(W, R8, R7, lay.task_tgid)
        _check_tracked(a, maps, R8)
    _scratch_slot(a, maps)
    if context and maps.cgroups_seen >= 0:
        _cgroup_path(a, lay, maps, filters)
    _begin(a, rec.TYPE_EXEC)
    _task_fields(a, lay)
    a.ldx(DW, R1, R6, 8)
    a.stx(W, R9, rec.OFF_AUX32, R1)  # old_pid
    a.ldx(DW, R8, R6, 16)  # bprm
    a.ldx(W, R1, R8, lay.bprm_argc)
    a.stx(DW, R9, rec.OFF_AUX64, R1)
    # filename: r8 = bytes read including the NUL, within [0, FNAME_MAX]
    a.mov(R1, R9)
    a.add(R1, payload)
    a.mov(R2, FNAME_MAX)
    a.ldx(DW, R3, R8, lay.bprm_filename)
    a.call(Helper.probe_read_kernel_str)
    a.mov(R8, R0)
    a.jsge(R8, 0, "fname_nonneg")
    a.mov(R8, 0)
    a.label("fname_nonneg")
    a.jle(R8, FNAME_MAX, "fname_ok")
    a.mov(R8, FNAME_MAX)
    a.label("fname_ok")
    a.stx(W, R9, rec.OFF_LEN_A, R8)
    _creds_cgroup_comm(a, filters, maps)
    if context:
        _where_fields(a, lay)
    # argv: the true length, then as much as the limit allows
    a.ldx(DW, R1, R7, lay.task_mm)
    a.ldx(DW, R3, R1, lay.mm_arg_start)
    a.ldx(DW, R2, R1, lay.mm_arg_end)
    a.sub(R2, R3)
    a.jsge(R2, 0, "argv_nonneg")
    a.mov(R2, 0)
    a.label("argv_nonneg")
    a.stx(W, R9, rec.OFF_LEN_B, R2)
    a.jle(R2, argv_limit, "argv_ok")
    a.mov(R2, argv_limit)
    a.label("argv_ok")
    a.mov(R1, R9)
    a.add(R1, R8)
    a.add(R1, payload)
    a.add(R8, R2)
    a.add(R8, payload)  # r8 = record size
    a.call(Helper.probe_read_user)
    a.jeq(R0, 0, "send")
    a.st(W, R9, rec.OFF_FLAGS, rec.FLAG_ARGV_UNREADABLE)
    a.ldx(W, R8, R9, rec.OFF_LEN_A)
    a.jle(R8, FNAME_MAX, "fname_again")
    a.mov(R8, FNAME_MAX)
    a.label("fname_again")
    a.add(R8, payload)
    a.label("send")
    if context:
        _set_flags(a, rec.FLAG_WHERE)
        if cwd:
            _cwd_walk(a, lay, payload + FNAME_MAX + argv_limit)
        else:
            a.st(W, R9, rec.HEADER_SIZE + rec.W_CWD_FLAGS, rec.CWD_NONE)
    _output(a, maps, filters, R8)
    return a.assemble()


def exit_program(lay: Layout, maps: MapFds, filters: Filters) -> bytes:
    a = Asm()
    a.mov(R6, R1)
    a.ldx(DW, R7, R6, 0)  # the task (current)
    if lay.exit_has_group_dead:
        a.ldx(DW, R8, R6, 8)
        a.and_(R8, 0xFF)  # bool
    else:
        # do_exit decrements signal->live before the tracepoint: 0 means the whole group is dead
        a.ldx(DW, R1, R7, lay.task_signal)
        a.ldx(W, R1, R1, lay.signal_live)
        a.mov(R8, 0)
        a.jne(R1, 0, "have_group_dead")
        a.mov(R8, 1)
        a.label("have_group_dead")
    if not filters.threads:
        a.jeq(R8, 0, "out")
    if filters.tracked:
        a.ldx(W, R1, R7, lay.task_tgid)
        _check_tracked(a, maps, R1)
        a.jeq(R8, 0, "still_tracked")
        _tracked_map_call(a, maps, Helper.map_delete_elem)
        a.label("still_tracked")
    _scratch_slot(a, maps)
    _begin(a, rec.TYPE_EXIT)
    _task_fields(a, lay)
    a.stx(DW, R9, rec.OFF_AUX64, R8)
    a.ldx(W, R1, R7, lay.task_exit_code)
    a.stx(W, R9, rec.OFF_AUX32, R1)
    # the status wait() will report for the process (kernel/exit.c wait_task_zombie): the group exit code during a
    # group exit, else the leader's own exit code
    a.ldx(DW, R2, R7, lay.task_signal)
    a.ldx(W, R1, R2, lay.signal_flags)
    a.jset(R1, SIGNAL_GROUP_EXIT, "group_exit")
    a.ldx(DW, R2, R7, lay.task_group_leader)
    a.ldx(W, R1, R2, lay.task_exit_code)
    a.ja("have_status")
    a.label("group_exit")
    a.ldx(W, R1, R2, lay.signal_group_exit_code)
    a.label("have_status")
    a.stx(W, R9, rec.OFF_LEN_A, R1)
    a.st(W, R9, rec.OFF_LEN_B, 0)
    _creds_cgroup_comm(a, filters, maps)
    # the process's name for its Exit: the leader's comm (threads may have named themselves differently)
    a.mov(R1, R9)
    a.add(R1, rec.HEADER_SIZE)
    a.mov(R2, 16)
    a.ldx(DW, R3, R7, lay.task_group_leader)
    a.add(R3, lay.task_comm)
    a.call(Helper.probe_read_kernel)
    a.mov(R8, rec.EXIT_RECORD_SIZE)
    _output(a, maps, filters, R8)
    return a.assemble()


def fork_failed_program(maps: MapFds, filters: Filters, syscall_index: int, ret_offset: int) -> bytes:
    """For a classic ``syscalls/sys_exit_<fork syscall>`` tracepoint; ``ret_offset`` from its format file,
    ``syscall_index`` is written to aux32 to tell the syscalls apart."""
    a = Asm()
    a.ldx(DW, R7, R1, ret_offset)
    a.jsge(R7, 0, "out")
    _fork_failed_record(a, maps, filters, syscall_index)
    _output(a, maps, filters, None)
    return a.assemble()


def exec_failed_program(
    lay: Layout, maps: MapFds, filters: Filters, syscall_index: int, ret_offset: int, argv_limit: int
) -> bytes:
    """For a classic ``syscalls/sys_exit_{execve,execveat}`` tracepoint (``syscall_index`` into EXEC_SYSCALLS,
    ``ret_offset`` from its format file): the caller's registers through bpf_task_pt_regs (Linux >= 5.15)."""
    fname_arg, argv_arg = EXEC_SYSCALL_ARGS[EXEC_SYSCALLS[syscall_index]]
    a = Asm()
    a.ldx(DW, R7, R1, ret_offset)
    a.jsge(R7, 0, "out")
    a.call(Helper.get_current_task_btf)
    a.mov(R1, R0)
    a.call(Helper.task_pt_regs)
    _stash_exec_args(a, lay, R0, fname_arg, argv_arg)
    _exec_failed_record(a, lay, maps, filters, syscall_index, argv_limit)
    _output(a, maps, filters, R8)
    return a.assemble()


def failed_syscalls_raw_program(
    lay: Layout, maps: MapFds, filters: Filters, fork_syscalls: dict[int, int], exec_syscalls: dict[int, int],
    argv_limit: int,
) -> bytes:  # fmt: skip
    """tp_btf ``sys_exit(regs, ret)`` (the raw tracepoint under every syscalls:sys_exit_*): a fork or exec syscall
    that returned < 0.  ``fork_syscalls``/``exec_syscalls`` map this architecture's syscall numbers to the index
    written to aux32 (either may be empty)."""
    a = Asm()
    a.ldx(DW, R7, R1, 8)  # ret
    a.jsge(R7, 0, "out")
    a.ldx(DW, R6, R1, 0)  # regs
    a.ldx(DW if lay.regs_syscall_nr_size == 8 else W, R2, R6, lay.regs_syscall_nr)
    for nr, index in sorted(fork_syscalls.items()):
        a.jne(R2, nr, f"not_{nr}")
        a.mov(R6, index)
        a.ja("fork_syscall")
        a.label(f"not_{nr}")
    for nr, index in sorted(exec_syscalls.items()):
        a.jne(R2, nr, f"not_{nr}")
        _stash_exec_args(a, lay, R6, *EXEC_SYSCALL_ARGS[EXEC_SYSCALLS[index]])
        a.mov(R6, index)
        a.ja("exec_syscall")
        a.label(f"not_{nr}")
    a.ja("out")
    if fork_syscalls:
        a.label("fork_syscall")
        _not_compat(a, lay)
        _fork_failed_record(a, maps, filters, R6)
        a.mov(R8, rec.HEADER_SIZE)
        if exec_syscalls:
            a.ja("send")
    if exec_syscalls:
        a.label("exec_syscall")
        _not_compat(a, lay)
        _exec_failed_record(a, lay, maps, filters, R6, argv_limit)
    a.label("send")
    _output(a, maps, filters, R8)
    return a.assemble()


def _not_compat(a: Asm, lay: Layout) -> None:
    """Exit for a compat (32-bit) task: it numbers its syscalls differently (ia32's 57 is setpgid, not fork)."""
    if lay.compat_flags >= 0:
        a.call(Helper.get_current_task_btf)
        a.ldx(W, R1, R0, lay.compat_flags)
        a.jset(R1, lay.compat_mask, "out")


def _fork_failed_record(a: Asm, maps: MapFds, filters: Filters, syscall_index: int | Reg) -> None:
    """The ForkFailed record of the current task (HEADER_SIZE bytes at r9, not yet sent), with the return value in
    r7 and the syscall's index (a constant or a callee-saved register)."""
    a.call(Helper.get_current_pid_tgid)
    a.mov(R8, R0)
    if filters.tracked:
        a.mov(R1, R8)
        a.rsh(R1, 32)
        _check_tracked(a, maps, R1)
    _scratch_slot(a, maps)
    _begin(a, rec.TYPE_FORK_FAILED)
    a.stx(W, R9, rec.OFF_TID, R8)
    a.rsh(R8, 32)
    a.stx(W, R9, rec.OFF_TGID, R8)
    for off in (rec.OFF_START, rec.OFF_TASK_START):
        a.st(DW, R9, off, 0)
    a.st(W, R9, rec.OFF_PPID, 0)
    if isinstance(syscall_index, Reg):  # (first: a Reg is an int too)
        a.stx(W, R9, rec.OFF_AUX32, syscall_index)
    else:
        a.st(W, R9, rec.OFF_AUX32, syscall_index)
    a.stx(DW, R9, rec.OFF_AUX64, R7)
    _creds_cgroup_comm(a, filters, maps)


def _stash_exec_args(a: Asm, lay: Layout, regs: Reg, fname_arg: int, argv_arg: int) -> None:
    """The filename and argv pointers of a failed exec, from the registers at ``regs``, onto the stack."""
    a.ldx(DW, R1, regs, lay.regs_args[fname_arg])
    a.stx(DW, FP, SLOT_FNAME_PTR, R1)
    a.ldx(DW, R1, regs, lay.regs_args[argv_arg])
    a.stx(DW, FP, SLOT_ARGV_PTR, R1)


def _set_flags(a: Asm, bits: int) -> None:
    a.ldx(W, R1, R9, rec.OFF_FLAGS)
    a.or_(R1, bits)
    a.stx(W, R9, rec.OFF_FLAGS, R1)


def _fname_len(a: Asm, dst: Reg) -> None:
    """dst = the filename bytes recorded in len_a, bounded again for the verifier (a load from the map is not)."""
    label = f"fname_len_{len(a)}"
    a.ldx(W, dst, R9, rec.OFF_LEN_A)
    a.jle(dst, FNAME_MAX, label)
    a.mov(dst, FNAME_MAX)
    a.label(label)


def _exec_failed_record(a: Asm, lay: Layout, maps: MapFds, filters: Filters, syscall_index: int | Reg,
                        argv_limit: int) -> None:  # fmt: skip
    """The ExecFailed record of the current task at r9, its size in r8 (not yet sent); the return value in r7, the
    syscall's index a constant or r6, the user pointers at SLOT_FNAME_PTR / SLOT_ARGV_PTR.

    argv: each argv[i] pointer is read (at most EXEC_ARGS_MAX) and its string appended while ``argv_limit`` bytes
    allow; after that the pointers are only counted (at most EXEC_ARGS_COUNTED more).  A string that fills what was
    left may have been cut: the record is then marked truncated.  The counting loop has its own counter, so the
    verifier walks it once, not once for each argument the copying could have stopped at.
    """
    if filters.tracked:
        a.call(Helper.get_current_pid_tgid)
        a.rsh(R0, 32)
        _check_tracked(a, maps, R0)
    _scratch_slot(a, maps)
    _begin(a, rec.TYPE_EXEC_FAILED)
    a.stx(DW, R9, rec.OFF_AUX64, R7)
    if isinstance(syscall_index, Reg):
        a.stx(W, R9, rec.OFF_AUX32, syscall_index)
    else:
        a.st(W, R9, rec.OFF_AUX32, syscall_index)
    a.call(Helper.get_current_task_btf)
    a.mov(R7, R0)
    _task_fields(a, lay)
    _creds_cgroup_comm(a, filters, maps)
    # filename: r8 = bytes read including the NUL, within [0, FNAME_MAX] (0: unreadable)
    a.mov(R1, R9)
    a.add(R1, rec.HEADER_SIZE)
    a.mov(R2, FNAME_MAX)
    a.ldx(DW, R3, FP, SLOT_FNAME_PTR)
    a.call(Helper.probe_read_user_str)
    a.mov(R8, R0)
    a.jsgt(R8, 0, "ef_fname_read")
    a.mov(R8, 0)
    a.jne(R0, 0, "ef_fname_ok")
    # 0: an empty string (6.1's strncpy_from_user_nofault returns 0 for "", 6.18's 1 for its NUL)
    a.st(B, R9, rec.HEADER_SIZE, 0)
    a.mov(R8, 1)
    a.label("ef_fname_read")
    a.jle(R8, FNAME_MAX, "ef_fname_ok")
    a.mov(R8, FNAME_MAX)
    a.label("ef_fname_ok")
    a.stx(W, R9, rec.OFF_LEN_A, R8)
    # argv: r6 = &argv[i], r7 = i, r8 = argv bytes captured; every way out stores len_b.  A NULL argv is an empty
    # one (fs/exec.c get_user_arg_ptr).
    a.ldx(DW, R6, FP, SLOT_ARGV_PTR)
    a.mov(R7, 0)
    a.mov(R8, 0)
    a.jeq(R6, 0, "ef_copied")
    a.label("ef_arg")
    a.jge(R7, EXEC_ARGS_MAX, "ef_stop_copying")
    a.mov(R1, FP)
    a.add(R1, SLOT_ARG_PTR)
    a.mov(R2, 8)
    a.mov(R3, R6)
    a.call(Helper.probe_read_user)
    a.jne(R0, 0, "ef_unreadable")
    a.ldx(DW, R3, FP, SLOT_ARG_PTR)
    a.jeq(R3, 0, "ef_copied")
    if argv_limit > 0:
        a.jge(R8, argv_limit, "ef_stop_copying")
        _fname_len(a, R4)
        a.mov(R1, R9)
        a.add(R1, rec.HEADER_SIZE)
        a.add(R1, R4)
        a.add(R1, R8)
        a.mov(R2, argv_limit)
        a.sub(R2, R8)
        a.call(Helper.probe_read_user_str)
        a.jsgt(R0, 0, "ef_read")
        a.jne(R0, 0, "ef_unreadable")
        # an empty string read as 0 bytes (as the filename above): write its NUL
        _fname_len(a, R4)
        a.mov(R1, R9)
        a.add(R1, R4)
        a.add(R1, R8)
        a.st(B, R1, rec.HEADER_SIZE, 0)
        a.mov(R0, 1)
        a.label("ef_read")
        a.add(R7, 1)
        a.add(R6, 8)
        a.add(R8, R0)
        a.jlt(R8, argv_limit, "ef_arg")
        # no room left: this argument was cut (or filled it exactly)
        _set_flags(a, rec.FLAG_ARGV_TRUNCATED)
        a.mov(R8, argv_limit)
    a.label("ef_stop_copying")  # argv[r7] is not copied: count it and the rest
    a.stx(W, R9, rec.OFF_LEN_B, R8)
    a.mov(R8, 0)  # r8 = arguments counted here: its own loop counter (r7 carries on, unchecked)
    a.label("ef_count")
    a.jge(R8, EXEC_ARGS_COUNTED, "ef_too_many")
    a.mov(R1, FP)
    a.add(R1, SLOT_ARG_PTR)
    a.mov(R2, 8)
    a.mov(R3, R6)
    a.call(Helper.probe_read_user)
    a.jne(R0, 0, "ef_unreadable")
    a.ldx(DW, R3, FP, SLOT_ARG_PTR)
    a.jeq(R3, 0, "ef_end")
    _set_flags(a, rec.FLAG_ARGV_TRUNCATED)
    a.add(R7, 1)
    a.add(R6, 8)
    a.add(R8, 1)
    a.ja("ef_count")
    a.label("ef_too_many")
    _set_flags(a, rec.FLAG_ARGV_TRUNCATED | rec.FLAG_ARGC_UNKNOWN)
    a.ja("ef_end")
    a.label("ef_unreadable")  # the pointer array or a string could not be read (EFAULT, or a page not present)
    _set_flags(a, rec.FLAG_ARGV_UNREADABLE)
    a.mov(R8, 0)
    a.label("ef_copied")
    a.stx(W, R9, rec.OFF_LEN_B, R8)
    a.label("ef_end")
    a.ldx(W, R1, R9, rec.OFF_AUX32)
    a.mov(R2, R7)
    a.lsh(R2, 16)
    a.or_(R1, R2)
    a.stx(W, R9, rec.OFF_AUX32, R1)  # syscall index | argc << 16
    # r8 = record size, from len_b read back and bounded again: the same range on every path here, so the verifier
    # checks the output once rather than once per loop iteration (r8's own bounds differ from path to path)
    a.ldx(W, R8, R9, rec.OFF_LEN_B)
    a.jle(R8, argv_limit, "ef_size")
    a.mov(R8, argv_limit)
    a.label("ef_size")
    _fname_len(a, R1)
    a.add(R8, R1)
    a.add(R8, rec.HEADER_SIZE)
