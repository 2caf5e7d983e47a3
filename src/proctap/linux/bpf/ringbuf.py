"""A BPF_MAP_TYPE_RINGBUF consumer over mmap (kernel/bpf/ringbuf.c).

Layout of the mappings: the consumer page (RW, offset 0) holds the consumer position; at page size come the
producer page (RO, producer position) and the data area mapped twice in a row, so a record that wraps around the end
is contiguous.  Each record: u32 len (bit 31 BUSY: not committed yet, bit 30 DISCARD), u32 page offset, then the
data, padded to 8 bytes.  Positions are free-running u64 byte counters.
"""

from __future__ import annotations

import contextlib
import mmap
import struct

__all__ = ["RingBuffer"]

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
_LEN = struct.Struct("I")


class RingBuffer:
    """Reads committed records of a ring buffer map in batches.

    Use :meth:`pending` to get ``(offset, length)`` of each ready record inside :attr:`data` (offsets already
    include the data area's place in the mapping), decode them, then :meth:`release` to hand the space back.
    """

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError("ring buffer size must be a power of 2 and a multiple of the page size")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._base = page  # data starts after the producer page
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self.data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer.close()
            raise
        # The kernel maps the ring with vm_insert_page (VM_MIXEDMAP), so a fork would copy every page table entry of
        # it: keep the mapping out of children (they do not consume the ring), which keeps our forks cheap.
        for mapping in (self._consumer, self.data):
            with contextlib.suppress(OSError, AttributeError):
                mapping.madvise(mmap.MADV_DONTFORK)
        # The positions are read and written through memoryviews: one aligned 8-byte memcpy each, which the kernel
        # sees whole.  Not struct.pack_into: it zero-fills the target before packing, and a producer that read the
        # consumer position as 0 in between found the ring "full" and dropped its record (kernel/bpf/ringbuf.c
        # __bpf_ringbuf_reserve compares the new producer position with consumer_pos).
        self._consumer_pos = memoryview(self._consumer).cast("B")[:8].cast("Q")
        self._producer_pos = memoryview(self.data).cast("B")[:8].cast("Q")
        self._cons_pos = self._consumer_pos[0]
        self._next_pos = self._cons_pos

    def producer_pos(self) -> int:
        return int(self._producer_pos[0])

    def available(self) -> int:
        """Bytes between the consumer and the producer (committed or not)."""
        return int(self.producer_pos() - self._cons_pos)

    def pending(self, max_bytes: int | None = None) -> list[tuple[int, int]]:
        """Committed, non-discarded records from the consumer position: ``[(offset in data, length), ...]``.

        Stops at the first record still being written.  Call :meth:`release` once they are decoded.
        """
        # x86 keeps loads in order: the producer position is read before the records it covers.
        prod = self.producer_pos()
        pos = self._cons_pos
        if max_bytes is not None:
            prod = min(prod, pos + max_bytes)
        data, base, mask = self.data, self._base, self._mask
        unpack_len = _LEN.unpack_from
        out = []
        while pos < prod:
            off = base + (pos & mask)
            hdr = unpack_len(data, off)[0]
            if hdr & BUSY_BIT:
                break
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if not hdr & DISCARD_BIT:
                out.append((off + HEADER_SIZE, length))
            pos += (length + HEADER_SIZE + 7) & ~7
        self._next_pos = pos
        return out

    def release(self) -> None:
        """Give the space of the records returned by :meth:`pending` back to the producers."""
        if self._next_pos != self._cons_pos:
            self._cons_pos = self._next_pos
            self._consumer_pos[0] = self._cons_pos

    def close(self) -> None:
        self._consumer_pos.release()
        self._producer_pos.release()
        self.data.close()
        self._consumer.close()
