"""A reader for the kernel's BTF (/sys/kernel/btf/vmlinux; include/uapi/linux/btf.h).

Only what proctap needs: find a type by name and kind, resolve ``struct.member.member`` paths to byte offsets
(through anonymous structs/unions and typedefs), the parameters of a tracepoint's ``btf_trace_<name>`` typedef and
enum values.  Nothing about the kernel's layout is hard-coded: every offset comes from here.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from functools import lru_cache

from ...errors import DecodeError

__all__ = ["VMLINUX", "Btf", "Member", "vmlinux"]

VMLINUX = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# kinds (BTF_KIND_*)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT = 9, 10, 11, 12, 13, 14, 15, 16
DECL_TAG, TYPE_TAG, ENUM64 = 17, 18, 19
MODIFIERS = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})

_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")  # name_off, info (vlen:16 | kind:5 @24 | kind_flag @31), size_or_type
_U32 = struct.Struct("<I")
_MEMBER = struct.Struct("<III")  # name_off, type, offset (bits; with kind_flag: bitfield_size << 24 | bit offset)
_PARAM = struct.Struct("<II")  # name_off, type
_ENUM = struct.Struct("<Ii")
_ENUM64 = struct.Struct("<III")

# bytes of kind-specific data after the 12-byte common part, as (fixed, per vlen item)
_TRAILER = {
    INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8), FUNC_PROTO: (0, 8),
    VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Member:
    """Where a (possibly nested) member lives: byte offset from the outer struct, its size and type id."""

    offset: int
    size: int
    type_id: int
    bit_offset: int = 0  # within the byte at ``offset`` (bitfields only)
    bit_size: int = 0  # 0: not a bitfield


class Btf:
    """Parsed BTF type section with name lookup."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise DecodeError("BTF blob too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise DecodeError(f"not BTF (magic {magic:#x})")
        self._data = data
        self._types_start = hdr_len + type_off
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        if self._types_start + type_len > len(data) or len(self._strings) != str_len:
            raise DecodeError("BTF sections extend past the end of the blob")
        # compact per-type columns (a list of ints would cost ~10x the memory for 126k types)
        self._offsets = array("I", [0])  # byte offset of each type record; id 0 is void
        self._name_offs = array("I", [0])
        self._kinds = array("B", [0])
        pos, end = self._types_start, self._types_start + type_len
        unpack = _TYPE.unpack_from
        trailer = _TRAILER
        offsets, name_offs, kinds = self._offsets, self._name_offs, self._kinds
        while pos < end:
            name_off, info, _ = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            offsets.append(pos)
            name_offs.append(name_off)
            kinds.append(kind)
            fixed, per_item = trailer.get(kind, (0, 0))
            pos += 12 + fixed + per_item * (info & 0xFFFF)
        if pos != end:
            raise DecodeError("BTF type section is malformed")

    # -- raw access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._kinds)

    def name(self, type_id: int) -> str:
        return self._string(self._name_offs[type_id])

    def kind(self, type_id: int) -> int:
        return self._kinds[type_id]

    def _string(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _record(self, type_id: int) -> tuple[int, int, int, int]:
        """(info vlen, kind_flag, size_or_type, position of the trailer)."""
        pos = self._offsets[type_id]
        _, info, size_or_type = _TYPE.unpack_from(self._data, pos)
        return int(info) & 0xFFFF, int(info) >> 31, int(size_or_type), pos + 12

    # -- lookup ------------------------------------------------------------------------------------------------
    def find(self, name: str, kind: int) -> int:
        """The id of the type ``name`` of ``kind``; KeyError when absent."""
        needle = b"\0" + name.encode() + b"\0"
        offs = {0} if self._strings.startswith(needle[1:]) else set()
        start = 0
        while True:
            hit = self._strings.find(needle, start)
            if hit < 0:
                break
            offs.add(hit + 1)
            start = hit + 1
        for off in offs:
            for type_id, (name_off, k) in enumerate(zip(self._name_offs, self._kinds, strict=False)):
                if name_off == off and k == kind:
                    return type_id
        raise KeyError(f"BTF has no {name!r} of kind {kind}")

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while self._kinds[type_id] in MODIFIERS:
            type_id = self._record(type_id)[2]
        return type_id

    def size(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        kind = self._kinds[type_id]
        if kind == PTR:
            return 8
        if kind == ARRAY:
            _, _, _, trailer = self._record(type_id)
            elem, _index, nelems = (int(v) for v in struct.unpack_from("<III", self._data, trailer))
            return self.size(elem) * nelems
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return self._record(type_id)[2]
        raise DecodeError(f"BTF type {type_id} (kind {kind}) has no size")

    def pointee(self, type_id: int) -> int:
        """The type a pointer points to."""
        type_id = self.resolve(type_id)
        if self._kinds[type_id] != PTR:
            raise DecodeError(f"BTF type {type_id} is not a pointer")
        return self.resolve(self._record(type_id)[2])

    def members(self, type_id: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct/union's direct members."""
        type_id = self.resolve(type_id)
        if self._kinds[type_id] not in (STRUCT, UNION):
            raise DecodeError(f"BTF type {type_id} is not a struct or union")
        vlen, kind_flag, _, pos = self._record(type_id)
        out = []
        for i in range(vlen):
            name_off, mtype, offset = _MEMBER.unpack_from(self._data, pos + 12 * i)
            if kind_flag:
                out.append((self._string(name_off), mtype, offset & 0xFFFFFF, offset >> 24))
            else:
                out.append((self._string(name_off), mtype, offset, 0))
        return out

    def _find_member(self, type_id: int, name: str) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield size) of member ``name``, looking into anonymous structs/unions."""
        for mname, mtype, bit_off, bit_size in self.members(type_id):
            if mname == name:
                return bit_off, mtype, bit_size
            if not mname and self._kinds[self.resolve(mtype)] in (STRUCT, UNION):
                inner = self._find_member(mtype, name)
                if inner is not None:
                    return bit_off + inner[0], inner[1], inner[2]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """``member("task_struct", "signal")`` or a dotted path through embedded structs (``"se.vruntime"``).

        ``struct_name`` names a struct, or a union when no struct has that name."""
        try:
            type_id = self.find(struct_name, STRUCT)
        except KeyError:
            type_id = self.find(struct_name, UNION)
        bits = 0
        bit_size = 0
        mtype = type_id
        for part in path.split("."):
            found = self._find_member(mtype, part)
            if found is None:
                raise KeyError(f"struct {struct_name} has no member {path!r}")
            bit_off, mtype, bit_size = found
            bits += bit_off
        if bit_size:
            return Member(bits // 8, 0, mtype, bits % 8, bit_size)
        if bits % 8:
            raise DecodeError(f"{struct_name}.{path} is not byte-aligned")
        return Member(bits // 8, self.size(mtype), mtype)

    def func_params(self, typedef_name: str) -> list[tuple[str, int]]:
        """Parameters (name, type id) of the function-pointer typedef ``typedef_name`` (e.g. btf_trace_X)."""
        type_id = self.find(typedef_name, TYPEDEF)
        proto = self.pointee(type_id)
        if self._kinds[proto] != FUNC_PROTO:
            raise DecodeError(f"{typedef_name} is not a function pointer")
        vlen, _, _, pos = self._record(proto)
        return [
            (self._string(name_off), ptype)
            for name_off, ptype in (_PARAM.unpack_from(self._data, pos + 8 * i) for i in range(vlen))
        ]

    def _enumerator_in(self, type_id: int, value_name: str) -> int | None:
        """The value of enumerator ``value_name`` of the enum ``type_id``, None when it has none of that name."""
        vlen, _, _, pos = self._record(type_id)
        for i in range(vlen):
            name_off, value = _ENUM.unpack_from(self._data, pos + 8 * i)
            if self._string(name_off) == value_name:
                return int(value)
        return None

    def enum_value(self, enum_name: str, value_name: str) -> int:
        """The value of ``value_name`` in enum ``enum_name``."""
        value = self._enumerator_in(self.find(enum_name, ENUM), value_name)
        if value is None:
            raise KeyError(f"enum {enum_name} has no {value_name}")
        return value

    def enumerator(self, value_name: str) -> int:
        """The value of enumerator ``value_name`` in whichever enum declares it (anonymous enums included)."""
        for type_id, kind in enumerate(self._kinds):
            if kind == ENUM:
                value = self._enumerator_in(type_id, value_name)
                if value is not None:
                    return value
        raise KeyError(f"no enumerator {value_name}")


@lru_cache(maxsize=1)
def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    with open(VMLINUX, "rb") as f:
        return Btf(f.read())
