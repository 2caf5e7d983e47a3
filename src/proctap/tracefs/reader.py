"""Reading a tracefs instance: per-CPU ``trace_pipe_raw`` pages, merged in timestamp order, with loss accounting.

I/O lives here; decoding is :func:`.ring.decode_page` and :class:`.format.RecordDecoder`.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import weakref

from .format import PageLayout
from .instance import Instance, find_tracefs, remove_stale_instances
from .ring import decode_page

__all__ = ["Loss", "Record", "TraceReader"]

Record = tuple[int, int, bytes, int, int]
"""``(timestamp_ns, event type id, page bytes, payload start, payload length)``."""

Loss = tuple[int, int | None]
"""``(cpu, count)``: events the kernel overwrote before we read them; count None when it did not say."""

_TYPE_ID = struct.Struct("=H")

DEFAULT_BUFFER_KB = 2048  # per CPU


def _close_all(instance: Instance, epoll: select.epoll | None) -> None:
    if epoll is not None:
        with contextlib.suppress(OSError):
            epoll.close()
    instance.remove()


class TraceReader:
    """A private instance configured for low-cost reading: ``buffer_percent`` 0 (poll wakes on any data; the
    caller batches by sleeping between non-empty drains), ``trace_clock`` mono (timestamps are CLOCK_MONOTONIC ns,
    as ``time.monotonic_ns``), a per-CPU buffer of ``buffer_kb``.

    Make it, enable events on ``.instance``, then :meth:`start`.  :meth:`close` (also run on garbage collection
    and at interpreter exit) removes the instance.
    """

    def __init__(self, buffer_kb: int | None = None, prefix: str = "proctap") -> None:
        root = find_tracefs()
        if root is None:
            from ..errors import BackendUnavailable

            raise BackendUnavailable(
                "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing (needs root)"
            )
        self.stale_removed = remove_stale_instances(root, prefix)
        self.instance = Instance(root, prefix)
        self._epoll: select.epoll | None = None
        self._finalizer = weakref.finalize(self, _close_all, self.instance, None)
        try:
            self._configure(buffer_kb)
        except BaseException:
            self.close()
            raise
        self.pages_read = 0
        self.records_read = 0
        self.lost_reported: dict[int, int] = dict.fromkeys(self.cpus, 0)
        self.lost_unknown = 0

    def _configure(self, buffer_kb: int | None) -> None:
        inst = self.instance
        inst.write("tracing_on", "0")
        inst.write("buffer_size_kb", str(buffer_kb or DEFAULT_BUFFER_KB))
        inst.write("buffer_percent", "0")
        inst.set_trace_clock("mono")
        self.layout: PageLayout = inst.page_layout()
        inst.header_layout()  # refuses a header layout the page decoder does not know
        self.cpus = inst.cpus()

    def start(self) -> None:
        """Open the pipes and turn tracing on."""
        inst = self.instance
        inst.open_pipes(self.cpus)
        self._epoll = inst.epoll()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_all, inst, self._epoll)
        inst.write("tracing_on", "1")

    def fileno(self) -> int:
        if self._epoll is None:
            raise ValueError("TraceReader not started")
        return self._epoll.fileno()

    def read(self) -> tuple[list[Record], list[Loss]]:
        """Every complete or partial page available now, from all CPUs; records sorted by timestamp."""
        records: list[Record] = []
        losses: list[Loss] = []
        page_size = self.layout.page_size
        layout = self.layout
        type_id = _TYPE_ID.unpack_from
        for cpu, fd in self.instance.pipes.items():
            while True:
                try:
                    buf = os.read(fd, page_size)
                except BlockingIOError:
                    break
                if not buf:
                    break
                self.pages_read += 1
                page = decode_page(buf, layout)
                if page.missed is not None:
                    losses.append(self._loss(cpu, page.missed))
                for ts, start, length in page.records:
                    if length >= 2:
                        records.append((ts, type_id(buf, start)[0], buf, start, length))
        if len(self.instance.pipes) > 1:
            records.sort(key=lambda r: r[0])
        self.records_read += len(records)
        return records, losses

    def _loss(self, cpu: int, missed: int) -> Loss:
        if missed >= 0:
            self.lost_reported[cpu] = self.lost_reported.get(cpu, 0) + missed
            return cpu, missed
        # the page says events were lost but had no room for the count: the per-CPU overrun counter has it
        with contextlib.suppress(OSError):
            overrun = self.instance.cpu_stats(cpu).get("overrun", 0)
            count = overrun - self.lost_reported.get(cpu, 0)
            if count > 0:
                self.lost_reported[cpu] = overrun
                return cpu, count
        self.lost_unknown += 1
        return cpu, None

    def stats(self) -> dict[str, int]:
        out = {
            "cpus": len(self.cpus),
            "pages_read": self.pages_read,
            "records_read": self.records_read,
            "lost_reported": sum(self.lost_reported.values()),
            "lost_unknown": self.lost_unknown,
        }
        if not self.instance.removed:
            with contextlib.suppress(OSError, ValueError):
                out["buffer_kb_per_cpu"] = int(self.instance.read("buffer_size_kb").split()[0])
                out["overrun"] = sum(self.instance.cpu_stats(c).get("overrun", 0) for c in self.cpus)
        return out

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self.instance.removed
