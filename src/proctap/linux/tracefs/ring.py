"""Pure decoder of ring-buffer pages as read from ``per_cpu/cpuN/trace_pipe_raw``.

A page (struct buffer_data_page, kernel/trace/ring_buffer.c; layout from ``events/header_page``) is a u64
timestamp, a ``commit`` word (low 27 bits: bytes of data; bit 31 RB_MISSED_EVENTS: events were lost before this
page; bit 30 RB_MISSED_STORED: their count is stored as a long right after the data), then the data: a sequence of
events, each with a u32 header ``type_len:5 | time_delta:27`` (``events/header_event``).  The decoding follows
libtraceevent's kbuffer.c, which is what ``trace-cmd`` uses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import DecodeError
from .format import EventHeaderLayout, PageLayout

__all__ = ["COMMIT_MASK", "MISSED_EVENTS", "MISSED_STORED", "Page", "decode_page"]

MISSED_EVENTS = 1 << 31
MISSED_STORED = 1 << 30
COMMIT_MASK = (1 << 27) - 1

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_TS_SHIFT = 27
_DELTA_MASK = (1 << _TS_SHIFT) - 1
_DEFAULT_HEADER = EventHeaderLayout()


@dataclass(frozen=True, slots=True)
class Page:
    """One decoded page.  ``records`` are ``(timestamp, start, length)`` of each data event's payload inside the
    page's bytes (no copies).  ``missed`` is None when nothing was lost before this page, -1 when events were lost
    but the kernel did not store how many, else the count."""

    timestamp: int
    data_length: int
    missed: int | None
    records: list[tuple[int, int, int]]


def decode_page(page: bytes, layout: PageLayout, header: EventHeaderLayout = _DEFAULT_HEADER) -> Page:
    """Decode a page; DecodeError for anything malformed (never another exception)."""
    if header != _DEFAULT_HEADER:
        raise DecodeError("unsupported ring-buffer event header layout")
    size = len(page)
    data_start = layout.data_offset
    if size < data_start:
        raise DecodeError(f"ring-buffer page of {size} bytes is shorter than its {data_start}-byte header")
    (timestamp,) = _U64.unpack_from(page, layout.timestamp_offset)
    if layout.commit_size == 8:
        (commit,) = _U64.unpack_from(page, layout.commit_offset)
    else:
        (commit,) = _U32.unpack_from(page, layout.commit_offset)
    data_length = commit & COMMIT_MASK
    data_end = data_start + data_length
    if data_end > size:
        raise DecodeError(f"ring-buffer page commit {data_length} exceeds the page ({size - data_start} data bytes)")
    missed: int | None = None
    if commit & MISSED_EVENTS:
        missed = -1
        if commit & MISSED_STORED:
            if data_end + 8 > size:
                raise DecodeError("ring-buffer page says the lost count is stored, but it lies beyond the page")
            (missed,) = _U64.unpack_from(page, data_end)
    return Page(timestamp, data_length, missed, _decode_events(page, data_start, data_end, timestamp))


def _decode_events(page: bytes, pos: int, end: int, ts: int) -> list[tuple[int, int, int]]:
    records: list[tuple[int, int, int]] = []
    append = records.append
    unpack_u32 = _U32.unpack_from
    while pos + 4 <= end:
        (word,) = unpack_u32(page, pos)
        type_len = word & 0x1F
        delta = word >> 5
        pos += 4
        if 1 <= type_len <= 28:
            ts += delta
            length = type_len * 4
            if pos + length > end:
                raise DecodeError("ring-buffer event runs past the page's data")
            append((ts, pos, length))
            pos += length
            continue
        if pos + 4 > end:
            if type_len == 29 and delta == 0:
                break  # a null padding event: the rest of the page is unused
            raise DecodeError(f"ring-buffer event of type {type_len} truncated at the end of the page")
        (array0,) = unpack_u32(page, pos)
        if type_len == 0:
            ts += delta
            # array[0] holds the payload length plus its own 4 bytes; payload rounded up to 4 (kbuffer.c)
            length = ((array0 - 4) + 3) & ~3
            if array0 < 4 or pos + 4 + length > end:
                raise DecodeError("ring-buffer event with a bad length word")
            append((ts, pos + 4, length))
            pos += 4 + length
        elif type_len == 29:  # padding: a discarded event (its delta still counts) or the end of the page
            if delta == 0:
                break
            ts += delta
            if pos + array0 > end:
                raise DecodeError("ring-buffer padding runs past the page's data")
            pos += array0
        elif type_len == 30:  # time extend: delta is array[0] << 27 | time_delta
            ts += (array0 << _TS_SHIFT) | delta
            pos += 4
        else:  # 31: absolute time stamp
            ts = (array0 << _TS_SHIFT) | delta
            pos += 4
    return records
