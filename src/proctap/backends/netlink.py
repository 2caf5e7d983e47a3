"""Backend ``netlink``: the kernel's process events connector (drivers/connector/cn_proc.c).

Every fork, exec, exit, uid/gid/sid change, ptrace attach, comm change and coredump of every task reaches a netlink
socket subscribed to CN_IDX_PROC.  The kernel reports bare ids: an Exec has no filename, argv or comm (the watcher
reads them from /proc, :mod:`proctap.enrich`).

Loss accounting: ``cn_msg.seq`` is a per-CPU counter incremented for every event the kernel emits, so gaps in the
sequence of one CPU count dropped events exactly.  A kernel-side event filter (used when only some event kinds are
wanted) makes gaps meaningless: then a socket overrun (ENOBUFS) is reported as a Lost of unknown size.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

from ..errors import BackendUnavailable, ProctapError
from ..events import Comm, Coredump, Event, EventKind, Exec, Exit, Fork, Gid, Ptrace, Sid, Uid
from ..events import decode_wait_status as _decode
from ..linux import procfs
from ..linux.clock import Clock
from ..linux.cn_proc import (
    ALL_EVENTS_MASK,
    CN_IDX_PROC,
    NETLINK_CONNECTOR,
    McastOp,
    ProcEventRecord,
    What,
    build_subscribe,
    parse_datagram,
)
from ..linux.netlink_socket import BatchReceiver, set_receive_buffer
from .base import Availability, Backend, BackendConfig, Common, Feature, Stamp, StartTimes

__all__ = ["EventBuilder", "NetlinkBackend"]

SOL_SOCKET = socket.SOL_SOCKET
DEFAULT_BUFFER_BYTES = 32 * 1024 * 1024
EVENT_TRUESIZE = 832  # socket memory one queued event costs (skb truesize), measured on 6.18
SLOT_SIZE = 256  # bytes per recvmmsg slot: a proc connector datagram is 76 bytes
BATCH = 256  # datagrams per recvmmsg call
MAX_PER_READ = 16 * BATCH  # bound one read_events() so a consumer (and Ctrl-C) gets control back under a storm
DEFERRED_EXIT_TIMEOUT_NS = 2_000_000_000

_KIND_MASKS = {
    EventKind.FORK: What.FORK,
    EventKind.EXEC: What.EXEC,
    EventKind.EXIT: What.EXIT,
    EventKind.UID: What.UID,
    EventKind.GID: What.GID,
    EventKind.SID: What.SID,
    EventKind.PTRACE: What.PTRACE,
    EventKind.COMM: What.COMM,
    EventKind.COREDUMP: What.COREDUMP,
}
_CORE_KINDS = frozenset({EventKind.FORK, EventKind.EXEC, EventKind.EXIT})


# -- records -> events ---------------------------------------------------------------------------------------------
class EventBuilder:
    """Turns decoded proc connector records into proctap events (the stateful half of the decoder).

    State: process start times (for keys and lifetimes), thread start times, live threads per process (so a
    process Exit is reported after its last known thread, see :meth:`_exit`), and per-CPU sequence numbers (loss).
    """

    def __init__(self, clock: Clock, *, count_gaps: bool = True) -> None:
        self.clock = clock
        self.stamp = Stamp("netlink", clock)
        self.count_gaps = count_gaps
        self.starts = StartTimes()
        self._thread_starts: dict[int, int] = {}
        self._threads: dict[int, set[int]] = {}  # pid -> tids of live non-leader threads we saw created
        self._deferred: dict[int, Exit] = {}  # pid -> the leader's exit, waiting for its other threads
        self._last_seq: dict[int, int] = {}
        self._ended: Exit | None = None  # a held-back process Exit released by its last thread's exit
        self._overrun = False  # the socket overflowed at least once
        self.gap_lost = 0
        self.unknown_lost = 0  # CPUs first heard from after an overrun: what they lost before cannot be counted
        self._handlers: dict[int, Callable[[ProcEventRecord], Event | None]] = {
            What.FORK: self._fork,
            What.EXEC: self._exec,
            What.EXIT: self._exit,
            What.UID: self._uid,
            What.GID: self._gid,
            What.SID: self._sid,
            What.PTRACE: self._ptrace,
            What.COMM: self._comm,
            What.COREDUMP: self._coredump,
        }

    def build(self, rec: ProcEventRecord, out: list[Event]) -> None:
        """Append the event(s) for one record to ``out`` (a Lost first when a sequence gap shows loss)."""
        what = rec.what
        if what == What.NONE and rec.cpu == 0xFFFFFFFF:
            return  # an ack sent outside send_msg() (older kernels): its seq echoes the request, not the counter
        if self.count_gaps:
            last = self._last_seq.get(rec.cpu)
            self._last_seq[rec.cpu] = rec.seq
            if last is not None:
                gap = (rec.seq - last - 1) & 0xFFFFFFFF
                if gap and gap < 0x80000000:
                    self.gap_lost += gap
                    out.append(self.stamp.lost(rec.timestamp_ns, gap, "netlink socket overrun (sequence gap)", rec.cpu))
            elif self._overrun:
                # The counter is per CPU and starts at boot: a CPU's losses show as a gap only after one of its
                # events gave the baseline, and this CPU's first event came after the socket overflowed.
                self.unknown_lost += 1
                out.append(self.stamp.lost(rec.timestamp_ns, None, "netlink socket overrun before this CPU's first "
                                           "event (count unknown)", rec.cpu))  # fmt: skip
        # Since cn_proc_ack() goes through send_msg() (6.x), acks of any listener's LISTEN/IGNORE take a number
        # from the per-CPU counter too: they count for the sequence above but are not events.
        handler = self._handlers.get(what)
        if handler is not None:
            event = handler(rec)
            if event is not None:
                out.append(event)
            if self._ended is not None:
                out.append(self._ended)
                self._ended = None

    def overrun(self) -> None:
        """The socket overflowed (ENOBUFS): the sequence gaps will count the loss, on CPUs already heard from."""
        self._overrun = True

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    # Fork, Exec and Exit spell the common fields out: they are the hot path of a storm (Stamp builds a dict).
    def _fork(self, rec: ProcEventRecord) -> Fork:
        parent_tid, parent_pid, tid, pid = rec.data
        ts = rec.timestamp_ns
        boot = self.clock.since_boot(ts)
        if tid != pid:
            # A thread: cn_proc reports the *process's* parent (real_parent of a CLONE_THREAD task is the
            # creator's real_parent, kernel/fork.c), so the creator is known only as "a thread of pid".
            self._thread_starts[tid] = boot
            self._threads.setdefault(pid, set()).add(tid)
            return Fork(
                source="netlink", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=pid, tid=tid,
                start_ns=self.starts.get(pid), parent_pid=pid, parent_tid=None, is_thread=True,
            )  # fmt: skip
        self.starts.started(pid, boot)
        return Fork(
            source="netlink", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=pid, tid=tid, start_ns=boot,
            parent_pid=parent_pid, parent_tid=parent_tid if isinstance(parent_tid, int) else None, is_thread=False,
        )  # fmt: skip

    def _exec(self, rec: ProcEventRecord) -> Exec:
        tid, pid = rec.data
        ts = rec.timestamp_ns
        return Exec(source="netlink", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=pid, tid=tid,
                    start_ns=self.starts.get(pid))  # fmt: skip

    def _exit(self, rec: ProcEventRecord) -> Exit | None:
        tid, pid, code, _exit_signal, _parent_tid, parent_pid = rec.data
        ts = rec.timestamp_ns
        boot_now = self.clock.since_boot(ts)
        status = _decode(code)
        if tid != pid:
            start = self._thread_starts.pop(tid, None)
            live = self._threads.get(pid)
            if live is not None:
                live.discard(tid)
            event = Exit(
                source="netlink", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=pid, tid=tid,
                start_ns=self.starts.get(pid) if pid not in self._deferred else self._deferred[pid].start_ns,
                is_thread=True, status=code, exit_code=status.exit_code, signal=status.signal,
                core_dumped=status.core_dumped, lifetime_ns=None if start is None else boot_now - start,
            )  # fmt: skip
            deferred = self._deferred.get(pid)
            if deferred is not None and not live:
                # The last thread we knew of is gone: now the process has ended.  Report it as of this moment.
                del self._deferred[pid]
                self._threads.pop(pid, None)
                self._ended = _with_end(deferred, event, self.clock)
            return event
        start = self.starts.ended(pid)
        event = Exit(
            source="netlink", timestamp_ns=ts, wall_time=self.clock.wall_time(ts), pid=pid, tid=tid, start_ns=start,
            is_thread=False, status=code, exit_code=status.exit_code, signal=status.signal,
            core_dumped=status.core_dumped, lifetime_ns=None if start is None else boot_now - start,
            parent_pid=parent_pid if isinstance(parent_pid, int) and parent_pid > 0 else None,
        )  # fmt: skip
        if self._threads.get(pid):
            # The leader exited before threads we saw created (exit_group kills them in any order, or the main
            # thread called pthread_exit): hold the process Exit until the last of them is gone.
            self._deferred[pid] = event
            return None
        self._threads.pop(pid, None)
        return event

    def flush_deferred(self, now_ns: int, force: bool = False) -> list[Event]:
        """Process exits held back for threads whose exits never came (lost, or threads already gone)."""
        out: list[Event] = []
        for pid, event in list(self._deferred.items()):
            if force or now_ns - event.timestamp_ns > DEFERRED_EXIT_TIMEOUT_NS:
                del self._deferred[pid]
                self._threads.pop(pid, None)
                out.append(event)
        return out

    def _uid(self, rec: ProcEventRecord) -> Uid:
        tid, pid, ruid, euid = rec.data
        return Uid(**self._common(rec, pid, tid), ruid=ruid, euid=euid)

    def _gid(self, rec: ProcEventRecord) -> Gid:
        tid, pid, rgid, egid = rec.data
        return Gid(**self._common(rec, pid, tid), rgid=rgid, egid=egid)

    def _sid(self, rec: ProcEventRecord) -> Sid:
        tid, pid = rec.data
        return Sid(**self._common(rec, pid, tid))

    def _ptrace(self, rec: ProcEventRecord) -> Ptrace:
        tid, pid, tracer_tid, tracer_pid = rec.data
        return Ptrace(
            **self._common(rec, pid, tid), tracer_pid=tracer_pid, tracer_tid=tracer_tid, attached=tracer_pid != 0
        )

    def _comm(self, rec: ProcEventRecord) -> Comm:
        tid, pid, raw = rec.data
        return Comm(**self._common(rec, pid, tid), comm=os.fsdecode(raw.split(b"\0", 1)[0]))

    def _coredump(self, rec: ProcEventRecord) -> Coredump:
        tid, pid, parent_tid, parent_pid = rec.data
        return Coredump(
            **self._common(rec, pid, tid),
            parent_pid=parent_pid or None,
            parent_tid=parent_tid or None,
        )

    def _common(self, rec: ProcEventRecord, pid: int, tid: int) -> Common:
        return self.stamp(rec.timestamp_ns, pid, tid, self.starts.get(pid))


def _with_end(leader: Exit, last_thread: Exit, clock: Clock) -> Exit:
    """The process Exit held back at its leader's exit, released by the exit of its last thread.

    wait() reports the group exit code when the process exited as a group, else the leader's own code
    (kernel/exit.c, wait_task_zombie).  A leader that ended with a status other than 0 ended in the group exit (or by
    its own raw exit(n)): its status stands, whatever a thread that was already exiting on its own reports later.
    A leader that ended with 0 may have called pthread_exit; a later exit_group(n) of another thread then gives the
    process status n, which is what every thread it killed exits with: take the last thread's.
    """
    ts = last_thread.timestamp_ns
    lifetime = None if leader.start_ns is None else clock.since_boot(ts) - leader.start_ns
    status = leader if leader.status else last_thread
    return replace(
        leader, timestamp_ns=ts, wall_time=clock.wall_time(ts), lifetime_ns=lifetime, status=status.status,
        exit_code=status.exit_code, signal=status.signal, core_dumped=status.core_dumped,
    )  # fmt: skip


def _kernel_has_event_filter() -> bool:
    """Kernels >= 6.6 accept ``struct proc_input`` with an event_type mask (drivers/connector/cn_proc.c)."""
    release = os.uname().release.split(".")
    try:
        return (int(release[0]), int(release[1].split("-")[0])) >= (6, 6)
    except (IndexError, ValueError):
        return False


NOT_INITIAL_NETNS = (
    "the proc connector only exists in the initial network namespace: run proctap there (e.g. nsenter -t 1 -n) "
    "or use --backend tracefs"
)
_EMPTY_MESSAGE = struct.pack("=IHHII", 16, 3, 0, 0, 0)  # struct nlmsghdr alone: len 16, NLMSG_DONE, no payload


def _open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
    except OSError as exc:
        raise BackendUnavailable(f"cannot open a NETLINK_CONNECTOR socket ({exc.strerror}): kernel without "
                                 "CONFIG_PROC_EVENTS? try --backend tracefs") from None  # fmt: skip
    try:
        sock.bind((0, CN_IDX_PROC))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EPERM:
            raise BackendUnavailable(
                "joining the proc connector group needs CAP_NET_ADMIN (run as root), or use --backend proc"
            ) from None
        raise BackendUnavailable(f"cannot bind to the proc connector group: {exc.strerror}") from None
    return sock


class NetlinkBackend(Backend):
    """The proc connector.  Needs CAP_NET_ADMIN to subscribe, and the initial network/PID/user namespaces."""

    name: ClassVar[str] = "netlink"
    description: ClassVar[str] = "netlink proc connector (fork/exec/exit/uid/gid/sid/comm/ptrace/coredump)"
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.FORK, Feature.THREADS, Feature.EXEC, Feature.EXIT, Feature.EXIT_STATUS, Feature.CORE_DUMPED,
            Feature.COMM, Feature.CREDENTIALS, Feature.SID, Feature.PTRACE, Feature.COREDUMP, Feature.LOSS_EXACT,
        }
    )  # fmt: skip

    @classmethod
    def probe(cls) -> Availability:
        if procfs.in_child_pid_namespace() or procfs.in_child_user_namespace():
            return Availability(False, "runs in a child PID/user namespace: the kernel ignores its subscription "
                                       "(run proctap in the initial namespaces)")  # fmt: skip
        try:
            sock = _open_socket()
        except BackendUnavailable as exc:
            return Availability(False, str(exc))
        try:
            # An empty netlink message (no cn_msg): the connector drops it unread (drivers/connector/connector.c
            # cn_rx_skb), but only the initial network namespace has the connector to take it, so elsewhere the
            # send fails like the subscription would, and nothing is subscribed here.
            sock.send(_EMPTY_MESSAGE)
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return Availability(False, NOT_INITIAL_NETNS)
            return Availability(False, f"cannot send to the proc connector: {exc.strerror}")
        finally:
            sock.close()
        # Kernels before 6.6 refuse LISTEN without CAP_NET_ADMIN (drivers/connector/cn_proc.c); later ones allow it.
        if not _kernel_has_event_filter() and not procfs.has_capability(procfs.CAP_NET_ADMIN):
            return Availability(False, "subscribing to the proc connector needs CAP_NET_ADMIN on kernels < 6.6 "
                                       "(run as root), or use --backend proc")  # fmt: skip
        return Availability(True)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.clock = Clock()
        self._listening = False
        self._enobufs = 0
        self._unknown_overruns = 0
        self._warned: list[str] = []
        wanted = config.events
        # A kernel-side filter only pays when it keeps whole classes of frequent events away; it costs exact loss
        # counts (filtered events still advance cn_msg.seq), so the core set fork/exec/exit is never filtered.
        mask = None
        if not wanted >= _CORE_KINDS and _kernel_has_event_filter():
            mask = 0
            for kind in wanted:
                mask |= int(_KIND_MASKS.get(kind, 0))
            mask = mask or ALL_EVENTS_MASK
        self.kernel_filter = mask
        self.builder = EventBuilder(self.clock, count_gaps=mask is None)
        self.sock = _open_socket()
        try:
            self.buffer_bytes = self._size_buffer(config.buffer_bytes or DEFAULT_BUFFER_BYTES)
            self._subscribe(mask)
        except BaseException:
            self.sock.close()
            raise
        self.receiver = BatchReceiver(self.sock, SLOT_SIZE, BATCH)
        self.builder.starts.preload(procfs.list_pids())

    def _size_buffer(self, wanted: int) -> int:
        got = set_receive_buffer(self.sock, wanted)
        if got < wanted:
            msg = (f"netlink receive buffer capped at {got} bytes (~{got // EVENT_TRUESIZE} events; wanted {wanted}): "
                   f"grant CAP_NET_ADMIN or raise net.core.rmem_max to avoid losing events in bursts")  # fmt: skip
            self._warned.append(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return got

    def _subscribe(self, mask: int | None) -> None:
        try:
            self.sock.send(build_subscribe(McastOp.LISTEN, event_mask=mask))
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                raise BackendUnavailable(NOT_INITIAL_NETNS) from None
            raise BackendUnavailable(f"cannot subscribe to the proc connector: {exc.strerror}") from None
        self._listening = True

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_events(self) -> list[Event]:
        out: list[Event] = []
        build = self.builder.build
        view = self.receiver.view
        for _ in range(MAX_PER_READ // BATCH):
            try:
                slots = self.receiver.receive()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno == errno.ENOBUFS:
                    self._on_overrun(out)
                    continue
                raise ProctapError(f"netlink receive failed: {exc.strerror}") from None
            if not slots:
                break
            for offset, length in slots:
                try:
                    rec = parse_datagram(view, offset, length)
                except ProctapError:
                    continue  # not a proc event (cannot happen on this socket's group); never crash the watcher
                build(rec, out)
            if len(slots) < BATCH:
                break
        if self.builder.has_deferred:
            out.extend(self.builder.flush_deferred(time.monotonic_ns()))
        return out

    def _on_overrun(self, out: list[Event]) -> None:
        self._enobufs += 1
        if self.kernel_filter is not None:
            # With a kernel-side filter the sequence has gaps by design: the kernel only says "some were dropped".
            self._unknown_overruns += 1
            out.append(self.builder.stamp.lost(None, None, "netlink socket overrun (ENOBUFS; count unknown)"))
        else:
            # Without a filter the per-CPU sequence gaps report the exact count when the next events arrive.
            self.builder.overrun()

    def stats(self) -> dict[str, int]:
        return {
            "buffer_bytes": self.buffer_bytes,
            "enobufs": self._enobufs,
            "lost_by_sequence": self.builder.gap_lost,
            "lost_unknown": self._unknown_overruns + self.builder.unknown_lost,
            "kernel_filter": 0 if self.kernel_filter is None else self.kernel_filter,
        }

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        if self._listening:
            # Without IGNORE the kernel keeps counting us as a listener (proc_event_num_listeners) and keeps
            # building events for nobody (drivers/connector/cn_proc.c).
            with contextlib.suppress(OSError):
                self.sock.send(build_subscribe(McastOp.IGNORE))
            self._listening = False
        self.sock.close()
