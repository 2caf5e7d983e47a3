"""A BPF_MAP_TYPE_RINGBUF consumer over mmap (kernel/bpf/ringbuf.c).

Layout of the map's pages: the consumer page (RW, offset 0) holds the consumer position; at page size comes the
producer page (RO, producer position), then the data area, which the kernel offers twice in a row (so a record that
wraps around the end is contiguous in the second copy).  Each record: u32 len (bit 31 BUSY: not committed yet, bit 30
DISCARD), u32 page offset, then the data, padded to 8 bytes.  Positions are free-running u64 byte counters.

The kernel fills a mapping's page tables when it is made (remap_vmalloc_range), so every mapped page of the data area
counts in the reader's RSS from the start: mapping the whole doubled area costs twice the ring (16 MiB for proctap's
8 MiB ring).  This reader maps a window instead (``WINDOW_BYTES``, 1 MiB, plus a page) at the consumer position and
moves it when the records it reads leave it; a window may reach into the second copy, so a record is always
contiguous in it.  Moving costs an mmap and a munmap per window of records read (a few a second in a storm).
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Iterator

__all__ = ["WINDOW_BYTES", "RingBuffer"]

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
WINDOW_BYTES = 1 << 20  # the mapped part of the data area (plus a page); larger than any record proctap writes
_LEN = struct.Struct("I")


class RingBuffer:
    """Reads committed records of a ring buffer map in batches.

    Iterate :meth:`records` for ``(buffer, offset, length)`` of each ready record (its data is
    ``buffer[offset:offset + length]``; decode it before taking the next record: the buffer may be unmapped once the
    window moves on), then call :meth:`release` to hand the space back to the producers.  ``window``: bytes of the
    data area mapped at a time (default ``WINDOW_BYTES``, at most the ring); records must be shorter than it.
    """

    def __init__(self, map_fd: int, size: int, window: int | None = None) -> None:
        page = mmap.PAGESIZE
        if size <= 0 or size & (size - 1) or size % page:
            raise ValueError("ring buffer size must be a power of 2 and a multiple of the page size")
        window = WINDOW_BYTES if window is None else window
        if window <= 0 or window % page:
            raise ValueError("the ring buffer window must be a positive multiple of the page size")
        self.size = size
        self._fd = map_fd
        self._mask = size - 1
        # A window starts on the page of a record's header (at most size - page into the area) and may run into the
        # second copy: a page more than the window holds any record shorter than it, and never passes the end.
        self._window_bytes = min(window, size) + page
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer.close()
            raise
        self._window: mmap.mmap | None = None
        self._window_start = 0  # offset in the data area of the window's first byte
        self._window_end = 0  # ... and of the byte after its last (0, 0: nothing mapped)
        for mapping in (self._consumer, self._producer):
            _no_fork(mapping)
        # The positions are read and written through memoryviews: one aligned 8-byte memcpy each, which the kernel
        # sees whole.  Not struct.pack_into: it zero-fills the target before packing, and a producer that read the
        # consumer position as 0 in between found the ring "full" and dropped its record (kernel/bpf/ringbuf.c
        # __bpf_ringbuf_reserve compares the new producer position with consumer_pos).
        self._consumer_pos = memoryview(self._consumer).cast("B")[:8].cast("Q")
        self._producer_pos = memoryview(self._producer).cast("B")[:8].cast("Q")
        self._cons_pos = self._consumer_pos[0]
        self._next_pos = self._cons_pos

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the map this reader has mapped now (its RSS share): the two position pages and the window."""
        return 2 * mmap.PAGESIZE + (self._window_end - self._window_start)

    def producer_pos(self) -> int:
        return int(self._producer_pos[0])

    def available(self) -> int:
        """Bytes between the consumer and the producer (committed or not)."""
        return int(self.producer_pos() - self._cons_pos)

    def records(self, max_bytes: int | None = None) -> Iterator[tuple[mmap.mmap, int, int]]:
        """Committed, non-discarded records from the consumer position: ``(buffer, offset, length)`` each.

        Stops at the first record still being written (or after ``max_bytes`` of ring).  Call :meth:`release` once
        they are decoded.
        """
        # x86 keeps loads in order: the producer position is read before the records it covers.
        prod = self.producer_pos()
        pos = self._cons_pos
        if max_bytes is not None:
            prod = min(prod, pos + max_bytes)
        mask = self._mask
        window, start, end = self._window, self._window_start, self._window_end
        unpack_len = _LEN.unpack_from
        while pos < prod:
            at = pos & mask
            if at < start or at + HEADER_SIZE > end or window is None:
                window, start, end = self._move(at)
            hdr = unpack_len(window, at - start)[0]
            if hdr & BUSY_BIT:
                break
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if at + HEADER_SIZE + length > end:  # runs past the window: one that starts at its header holds it
                window, start, end = self._move(at)
            if not hdr & DISCARD_BIT:
                yield window, at - start + HEADER_SIZE, length
            pos += (length + HEADER_SIZE + 7) & ~7
            self._next_pos = pos

    def _move(self, at: int) -> tuple[mmap.mmap, int, int]:
        """Map the window at the page holding data offset ``at``."""
        page = mmap.PAGESIZE
        start = at - at % page
        if self._window is not None:
            self._window.close()
            self._window = None
        window = mmap.mmap(self._fd, self._window_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=2 * page + start)
        _no_fork(window)
        self._window, self._window_start, self._window_end = window, start, start + self._window_bytes
        return window, start, self._window_end

    def release(self) -> None:
        """Give the space of the records read so far back to the producers."""
        if self._next_pos != self._cons_pos:
            self._cons_pos = self._next_pos
            self._consumer_pos[0] = self._cons_pos

    def close(self) -> None:
        self._consumer_pos.release()
        self._producer_pos.release()
        if self._window is not None:
            self._window.close()
            self._window = None
        self._producer.close()
        self._consumer.close()


def _no_fork(mapping: mmap.mmap) -> None:
    """The kernel maps the ring with vm_insert_page (VM_MIXEDMAP), so a fork would copy every page table entry of it:
    keep the mapping out of children (they do not consume the ring), which keeps our forks cheap."""
    with contextlib.suppress(OSError, AttributeError):
        mapping.madvise(mmap.MADV_DONTFORK)
