"""eBPF instruction encoding with named registers, helpers and labelled jumps (include/uapi/linux/bpf.h).

A program is written as a short listing on an :class:`Asm`::

    a = Asm()
    a.mov(R6, R1)
    a.jeq(R0, 0, "out")
    a.label("out")
    a.mov(R0, 0)
    a.exit()
    code = a.assemble()

Each instruction is 8 bytes: u8 opcode, u8 dst_reg:4 | src_reg:4, s16 off, s32 imm (little-endian on x86_64);
a 64-bit immediate load takes two slots.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "DW",
    "FP",
    "R0",
    "R1",
    "R2",
    "R3",
    "R4",
    "R5",
    "R6",
    "R7",
    "R8",
    "R9",
    "Asm",
    "AsmError",
    "B",
    "H",
    "Helper",
    "Insn",
    "Reg",
    "W",
]


class Reg(IntEnum):
    R0 = 0  # return value of helpers and of the program
    R1 = 1  # arguments 1-5 (clobbered by calls); R1 holds the context at entry
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6  # callee-saved
    R7 = 7
    R8 = 8
    R9 = 9
    FP = 10  # read-only frame pointer; the stack is the 512 bytes below it


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = tuple(Reg)


class Size(IntEnum):
    W = 0x00  # 4 bytes
    H = 0x08  # 2 bytes
    B = 0x10  # 1 byte
    DW = 0x18  # 8 bytes


W, H, B, DW = Size.W, Size.H, Size.B, Size.DW
SIZE_BYTES = {Size.W: 4, Size.H: 2, Size.B: 1, Size.DW: 8}


class Helper(IntEnum):
    """BPF helper ids (enum bpf_func_id; stable kernel ABI)."""

    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    get_smp_processor_id = 8
    get_current_pid_tgid = 14
    get_current_uid_gid = 15
    get_current_comm = 16
    get_current_task = 35
    current_task_under_cgroup = 37
    get_current_cgroup_id = 80
    probe_read_user = 112
    probe_read_kernel = 113
    probe_read_user_str = 114
    probe_read_kernel_str = 115
    ktime_get_boot_ns = 125
    ringbuf_output = 130
    ringbuf_reserve = 131
    ringbuf_submit = 132
    ringbuf_discard = 133
    ringbuf_query = 134
    get_current_task_btf = 158
    task_pt_regs = 175


# Opcode classes and fields (include/uapi/linux/bpf_common.h, bpf.h)
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
MODE_IMM, MODE_MEM, MODE_ATOMIC = 0x00, 0x60, 0xC0
SRC_K, SRC_X = 0x00, 0x08
PSEUDO_MAP_FD = 1

ALU_OPS = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or_": 0x40, "and_": 0x50,
    "lsh": 0x60, "rsh": 0x70, "mod": 0x90, "xor": 0xA0, "mov": 0xB0, "arsh": 0xC0,
}  # fmt: skip
JMP_OPS = {
    "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50, "jsgt": 0x60,
    "jsge": 0x70, "jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0,
}  # fmt: skip
OP_JA, OP_CALL, OP_EXIT = 0x00, 0x80, 0x90
ATOMIC_ADD = 0x00

_INSN = struct.Struct("<BBhi")


class AsmError(ValueError):
    """A malformed listing: unknown or duplicate label, out-of-range operand."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte instruction slot."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        if not -(1 << 15) <= self.off < (1 << 15):
            raise AsmError(f"jump/memory offset {self.off} out of range")
        imm = self.imm
        if not -(1 << 31) <= imm < (1 << 32):
            raise AsmError(f"immediate {imm} out of range")
        if imm >= 1 << 31:
            imm -= 1 << 32
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, imm)


@dataclass(slots=True)
class _Jump:
    code: int
    dst: int
    src: int
    imm: int
    target: str


Operand = Reg | int


class Asm:
    """Builds a program; jumps name labels, resolved by :meth:`assemble`."""

    def __init__(self) -> None:
        self._items: list[Insn | _Jump] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    # -- structure ---------------------------------------------------------------------------------------------
    def label(self, name: str) -> None:
        if name in self._labels:
            raise AsmError(f"duplicate label {name!r}")
        self._labels[name] = len(self._items)

    def emit(self, insn: Insn) -> None:
        self._items.append(insn)

    def assemble(self) -> bytes:
        out = []
        for index, item in enumerate(self._items):
            if isinstance(item, _Jump):
                try:
                    target = self._labels[item.target]
                except KeyError:
                    raise AsmError(f"unknown label {item.target!r}") from None
                item = Insn(item.code, item.dst, item.src, target - index - 1, item.imm)
            out.append(item.encode())
        return b"".join(out)

    # -- ALU ---------------------------------------------------------------------------------------------------
    def _alu(self, op: str, dst: Reg, src: Operand, cls: int = ALU64) -> None:
        if isinstance(src, Reg):
            self.emit(Insn(cls | ALU_OPS[op] | SRC_X, dst, src))
        else:
            self.emit(Insn(cls | ALU_OPS[op] | SRC_K, dst, 0, 0, src))

    def mov(self, dst: Reg, src: Operand) -> None:
        self._alu("mov", dst, src)

    def mov32(self, dst: Reg, src: Operand) -> None:
        """32-bit move: zero-extends into the 64-bit register."""
        self._alu("mov", dst, src, ALU)

    def add(self, dst: Reg, src: Operand) -> None:
        self._alu("add", dst, src)

    def sub(self, dst: Reg, src: Operand) -> None:
        self._alu("sub", dst, src)

    def and_(self, dst: Reg, src: Operand) -> None:
        self._alu("and_", dst, src)

    def or_(self, dst: Reg, src: Operand) -> None:
        self._alu("or_", dst, src)

    def lsh(self, dst: Reg, src: Operand) -> None:
        self._alu("lsh", dst, src)

    def rsh(self, dst: Reg, src: Operand) -> None:
        self._alu("rsh", dst, src)

    def ld_imm64(self, dst: Reg, value: int) -> None:
        """Load a 64-bit constant (two slots)."""
        value &= (1 << 64) - 1
        self.emit(Insn(LD | DW | MODE_IMM, dst, 0, 0, value & 0xFFFFFFFF))
        self.emit(Insn(0, 0, 0, 0, value >> 32))

    def ld_map_fd(self, dst: Reg, map_fd: int) -> None:
        """Load a map pointer; the kernel replaces the fd by the map at load time."""
        self.emit(Insn(LD | DW | MODE_IMM, dst, PSEUDO_MAP_FD, 0, map_fd))
        self.emit(Insn(0))

    # -- memory ------------------------------------------------------------------------------------------------
    def ldx(self, size: Size, dst: Reg, src: Reg, off: int) -> None:
        """dst = *(size *)(src + off)"""
        self.emit(Insn(LDX | MODE_MEM | size, dst, src, off))

    def stx(self, size: Size, dst: Reg, off: int, src: Reg) -> None:
        """*(size *)(dst + off) = src"""
        self.emit(Insn(STX | MODE_MEM | size, dst, src, off))

    def st(self, size: Size, dst: Reg, off: int, imm: int) -> None:
        """*(size *)(dst + off) = imm"""
        self.emit(Insn(ST | MODE_MEM | size, dst, 0, off, imm))

    def atomic_add(self, size: Size, dst: Reg, off: int, src: Reg) -> None:
        """*(size *)(dst + off) += src, atomically (size W or DW)."""
        self.emit(Insn(STX | MODE_ATOMIC | size, dst, src, off, ATOMIC_ADD))

    # -- control -----------------------------------------------------------------------------------------------
    def _jmp(self, op: str, dst: Reg, src: Operand, target: str) -> None:
        if isinstance(src, Reg):
            self._items.append(_Jump(JMP | JMP_OPS[op] | SRC_X, dst, src, 0, target))
        else:
            self._items.append(_Jump(JMP | JMP_OPS[op] | SRC_K, dst, 0, src, target))

    def jeq(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jeq", dst, src, target)

    def jne(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jne", dst, src, target)

    def jgt(self, dst: Reg, src: Operand, target: str) -> None:
        """Unsigned >."""
        self._jmp("jgt", dst, src, target)

    def jge(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jge", dst, src, target)

    def jlt(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jlt", dst, src, target)

    def jle(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jle", dst, src, target)

    def jsgt(self, dst: Reg, src: Operand, target: str) -> None:
        """Signed >."""
        self._jmp("jsgt", dst, src, target)

    def jsge(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jsge", dst, src, target)

    def jslt(self, dst: Reg, src: Operand, target: str) -> None:
        self._jmp("jslt", dst, src, target)

    def jset(self, dst: Reg, src: Operand, target: str) -> None:
        """Jump if dst & src != 0."""
        self._jmp("jset", dst, src, target)

    def ja(self, target: str) -> None:
        self._items.append(_Jump(JMP | OP_JA, 0, 0, 0, target))

    def call(self, helper: Helper) -> None:
        self.emit(Insn(JMP | OP_CALL, 0, 0, 0, int(helper)))

    def exit(self) -> None:
        self.emit(Insn(JMP | OP_EXIT))
