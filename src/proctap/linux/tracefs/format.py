"""Pure parsers of tracefs description files: an event's ``format``, ``events/header_page`` and
``events/header_event``, and record decoders generated from a parsed ``format``.

Formats differ between kernels (e.g. sched_process_fork's comms are ``__data_loc char[]`` on 6.18 and ``char[16]``
on older kernels), so decoders are built at run time from what the running kernel says.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...errors import DecodeError

__all__ = [
    "EventFormat",
    "EventHeaderLayout",
    "Field",
    "PageLayout",
    "RecordDecoder",
    "parse_format",
    "parse_header_event",
    "parse_header_page",
]

_FIELD_RE = re.compile(
    r"^\s*field:\s*(?P<decl>[^;]+);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);"
    r"(?:\s*signed:\s*(?P<signed>-?\d+);)?"
)
_DECL_RE = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<array>\[[^\]]*\])?\s*$")


@dataclass(frozen=True)
class Field:
    """One field of a record: ``type`` is the C type as the kernel prints it, array suffix included
    (``char[16]``, ``__data_loc char[]``)."""

    name: str
    type: str
    offset: int
    size: int
    signed: bool

    @property
    def is_data_loc(self) -> bool:
        """A dynamic array: a u32 ``len << 16 | offset`` (offset from the record start; ``__rel_loc``: from the end
        of this field), see include/trace/stages/stage2_data_offsets.h."""
        return self.type.startswith(("__data_loc", "__rel_loc"))

    @property
    def is_string(self) -> bool:
        """``char[N]`` or a dynamic ``char[]``: a NUL-terminated string."""
        base = self.type.removeprefix("__data_loc").removeprefix("__rel_loc").strip()
        return base.endswith("]") and base[: base.index("[")].strip() in ("char", "signed char", "unsigned char")


@dataclass(frozen=True)
class EventFormat:
    """A parsed ``events/SYSTEM/NAME/format`` file."""

    system: str
    name: str
    id: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    @property
    def size(self) -> int:
        """Bytes of the fixed part of a record."""
        return max((f.offset + f.size for f in self.fields), default=0)


def _parse_field(line: str) -> Field | None:
    m = _FIELD_RE.match(line)
    if m is None:
        return None
    decl = m.group("decl").strip()
    d = _DECL_RE.match(decl)
    if d is None:
        raise DecodeError(f"cannot parse tracefs field declaration {decl!r}")
    ftype = d.group("type").strip() + (d.group("array") or "")
    signed = m.group("signed")
    return Field(d.group("name"), ftype, int(m.group("offset")), int(m.group("size")), signed not in (None, "0"))


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse the text of an event's ``format`` file."""
    name = ""
    event_id: int | None = None
    fields: list[Field] = []
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("ID:"):
            try:
                event_id = int(line.partition(":")[2])
            except ValueError:
                raise DecodeError(f"bad ID line in tracefs format: {line!r}") from None
        else:
            f = _parse_field(line)
            if f is not None:
                fields.append(f)
    if not name or event_id is None or not fields:
        raise DecodeError("not a tracefs event format file (missing name, ID or fields)")
    return EventFormat(system, name, event_id, tuple(fields))


@dataclass(frozen=True)
class PageLayout:
    """The layout of one ring-buffer sub-buffer page (``events/header_page``, struct buffer_data_page in
    kernel/trace/ring_buffer.c)."""

    timestamp_offset: int
    timestamp_size: int
    commit_offset: int
    commit_size: int
    data_offset: int
    data_size: int

    @property
    def page_size(self) -> int:
        return self.data_offset + self.data_size


def parse_header_page(text: str) -> PageLayout:
    fields = {f.name: f for f in (_parse_field(line) for line in text.splitlines()) if f is not None}
    try:
        ts, commit, data = fields["timestamp"], fields["commit"], fields["data"]
    except KeyError as exc:
        raise DecodeError(f"header_page lacks field {exc.args[0]!r}") from None
    if ts.size != 8 or commit.size not in (4, 8) or data.offset < commit.offset + commit.size:
        raise DecodeError("unexpected header_page layout (timestamp/commit/data)")
    return PageLayout(ts.offset, ts.size, commit.offset, commit.size, data.offset, data.size)


@dataclass(frozen=True)
class EventHeaderLayout:
    """The compressed event header (``events/header_event``, struct ring_buffer_event)."""

    type_len_bits: int = 5
    time_delta_bits: int = 27
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max_type_len: int = 28


_HEADER_EVENT_RE = {
    "type_len_bits": re.compile(r"type_len\s*:\s*(\d+)\s*bits"),
    "time_delta_bits": re.compile(r"time_delta\s*:\s*(\d+)\s*bits"),
    "padding": re.compile(r"padding\s*:\s*type\s*==\s*(\d+)"),
    "time_extend": re.compile(r"time_extend\s*:\s*type\s*==\s*(\d+)"),
    "time_stamp": re.compile(r"time_stamp\s*:\s*type\s*==\s*(\d+)"),
    "data_max_type_len": re.compile(r"data max type_len\s*==\s*(\d+)"),
}


def parse_header_event(text: str) -> EventHeaderLayout:
    """Parse ``header_event``; the decoder supports the layout every kernel since 2.6.30 uses, anything else is a
    DecodeError (rather than silently wrong timestamps)."""
    values: dict[str, int] = {}
    for key, regex in _HEADER_EVENT_RE.items():
        m = regex.search(text)
        if m is None:
            raise DecodeError(f"header_event lacks {key}")
        values[key] = int(m.group(1))
    layout = EventHeaderLayout(**values)
    if layout != EventHeaderLayout():
        raise DecodeError(f"unsupported ring-buffer event header layout: {layout}")
    return layout


_INT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h", (4, False): "I", (4, True): "i",
              (8, False): "Q", (8, True): "q"}  # fmt: skip


def _bad(name: str) -> str:
    raise DecodeError(f"__data_loc field {name} points outside its record")


def _c_string(raw: bytes) -> str:
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


class RecordDecoder:
    """Decodes chosen fields of one event's records into a tuple, in the order asked for.

    Generated from the kernel's ``format``: one ``struct.Struct`` reads every fixed field at its offset, and a small
    function (compiled once per event, it is on the hot path) reorders the values and converts strings
    (``char[N]`` and ``__data_loc char[]`` are cut at their NUL and decoded as UTF-8 with surrogate escapes).
    Fields the kernel's format lacks decode as ``None`` (``optional``); a missing required field is a DecodeError
    at build time.
    """

    __slots__ = ("decode", "event", "fixed_size", "names")

    def __init__(self, event: EventFormat, names: Sequence[str], optional: Sequence[str] = ()) -> None:
        self.event = event
        self.names = tuple(names)
        present: list[tuple[int, Field]] = []
        for index, name in enumerate(self.names):
            f = event.field(name)
            if f is None:
                if name in optional:
                    continue
                raise DecodeError(f"tracefs event {event.system}:{event.name} has no field {name!r}")
            present.append((index, f))
        present.sort(key=lambda item: item[1].offset)
        codes: list[str] = []
        pos = 0
        exprs: list[str] = ["None"] * len(self.names)
        namespace: dict[str, object] = {"DecodeError": DecodeError, "_c_string": _c_string, "_bad": _bad}
        for slot, (index, f) in enumerate(present):
            if f.offset < pos:
                raise DecodeError(f"overlapping fields in {event.name}: {f.name}")
            if f.offset > pos:
                codes.append(f"{f.offset - pos}x")
            code, expr = self._field_code(f, f"v{slot}")
            codes.append(code)
            pos = f.offset + f.size
            exprs[index] = expr
        unpack = struct.Struct("=" + "".join(codes))
        self.fixed_size = unpack.size
        namespace["unpack"] = unpack.unpack_from
        values = "".join(f"v{slot}, " for slot in range(len(present)))
        source = (
            "def decode(buf, start, length):\n"
            f"    if length < {unpack.size}:\n"
            f"        raise DecodeError({event.name + ' record shorter than its format: '!r} + str(length))\n"
            f"    {values or '_'} = unpack(buf, start)\n"
            f"    return ({''.join(e + ', ' for e in exprs)})\n"
        )
        exec(compile(source, f"<tracefs decoder {event.system}:{event.name}>", "exec"), namespace)
        self.decode: Callable[[bytes, int, int], tuple[object, ...]] = namespace["decode"]  # type: ignore[assignment]
        """``decode(buf, start, length)``: the chosen fields of the record at ``buf[start:start+length]``."""

    @staticmethod
    def _field_code(f: Field, var: str) -> tuple[str, str]:
        """The struct code of a field and the expression that turns its unpacked value ``var`` into the result."""
        if f.is_data_loc:
            if f.size != 4:
                raise DecodeError(f"unsupported __data_loc size {f.size} for {f.name}")
            # u32 len << 16 | offset; __rel_loc offsets count from the end of the field
            base = f.offset + f.size if f.type.startswith("__rel_loc") else 0
            begin = f"(start + {base} + ({var} & 0xFFFF))"
            end = f"({begin} + ({var} >> 16))"
            check = f"(_c_string(buf[{begin}:{end}]) if {end} <= start + length else _bad({f.name!r}))"
            return "I", check
        if f.type.endswith("]"):
            return f"{f.size}s", f"_c_string({var})" if f.is_string else var
        code = _INT_CODES.get((f.size, f.signed))
        if code is None:
            return f"{f.size}s", var
        return code, var
