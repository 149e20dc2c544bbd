"""
Classic BPF programs: validation before they reach the kernel, and the
rewrite the Linux kernel needs.

The checks are those of the kernel's and libpcap's C{bpf_validate}: a
non-empty program of known opcodes, forward jumps that land inside it, no
constant division by zero, scratch-memory indexes in range, and a final
return.
"""

from __future__ import annotations

from typing import Optional

from .wire import MAX_BPF_INSTRUCTIONS, BpfInstruction, BpfProgram

# Instruction classes and fields (from <pcap/bpf.h>).
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR = 0x60, 0x70, 0x80, 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_TAX, BPF_TXA = 0x00, 0x80
BPF_MEMWORDS = 16

MAXIMUM_SNAPLEN = 262144

ACCEPT_ALL = BpfProgram((BpfInstruction(BPF_RET | BPF_K, 0, 0, MAXIMUM_SNAPLEN),))


class InvalidFilter(ValueError):
    """A BPF program that must not be run."""


def _cls(code: int) -> int:
    return code & 0x07


_VALID_LD_MODES = {
    BPF_LD: {BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN},
    BPF_LDX: {BPF_IMM, BPF_MEM, BPF_LEN, BPF_MSH},
}
_VALID_ALU_OPS = {
    BPF_ADD,
    BPF_SUB,
    BPF_MUL,
    BPF_DIV,
    BPF_OR,
    BPF_AND,
    BPF_LSH,
    BPF_RSH,
    BPF_NEG,
    BPF_MOD,
    BPF_XOR,
}


def validate(program: BpfProgram) -> None:
    """
    Raise L{InvalidFilter} unless C{program} is safe to run.
    """
    insns = program.instructions
    n = len(insns)
    if n == 0:
        raise InvalidFilter("the filter program is empty")
    if n > MAX_BPF_INSTRUCTIONS:
        raise InvalidFilter(f"the filter has {n} instructions, more than {MAX_BPF_INSTRUCTIONS}")
    for pc, insn in enumerate(insns):
        code = insn.code
        cls = _cls(code)
        k = insn.k & 0xFFFFFFFF
        if code > 0xFFFF:
            raise InvalidFilter(f"instruction {pc}: bad opcode {code:#x}")
        if cls in (BPF_LD, BPF_LDX):
            mode = code & 0xE0
            size = code & 0x18
            if mode not in _VALID_LD_MODES[cls] or size == 0x18:
                raise InvalidFilter(f"instruction {pc}: bad load {code:#x}")
            if cls == BPF_LDX and mode == BPF_MSH and size != BPF_B:
                raise InvalidFilter(f"instruction {pc}: bad load {code:#x}")
            if mode == BPF_MEM and k >= BPF_MEMWORDS:
                raise InvalidFilter(f"instruction {pc}: scratch memory index {k} out of range")
        elif cls in (BPF_ST, BPF_STX):
            if k >= BPF_MEMWORDS:
                raise InvalidFilter(f"instruction {pc}: scratch memory index {k} out of range")
        elif cls == BPF_ALU:
            op = code & 0xF0
            if op not in _VALID_ALU_OPS:
                raise InvalidFilter(f"instruction {pc}: bad ALU operation {code:#x}")
            if op in (BPF_DIV, BPF_MOD) and (code & 0x08) == BPF_K and k == 0:
                raise InvalidFilter(f"instruction {pc}: division by constant zero")
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                if k >= n - pc - 1:
                    raise InvalidFilter(f"instruction {pc}: jump past the end of the program")
            elif op in (BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET):
                if pc + 1 + insn.jt >= n or pc + 1 + insn.jf >= n:
                    raise InvalidFilter(f"instruction {pc}: jump past the end of the program")
            else:
                raise InvalidFilter(f"instruction {pc}: bad jump {code:#x}")
        elif cls == BPF_RET:
            if code & 0x18 not in (BPF_K, BPF_A) or code & ~0x1F:
                raise InvalidFilter(f"instruction {pc}: bad return {code:#x}")
        elif cls == BPF_MISC:
            if code & 0xF8 not in (BPF_TAX, BPF_TXA):
                raise InvalidFilter(f"instruction {pc}: bad misc operation {code:#x}")
    if _cls(insns[-1].code) != BPF_RET:
        raise InvalidFilter("the filter does not end with a return")


def for_kernel(program: BpfProgram) -> BpfProgram:
    """
    The program as the Linux kernel should run it: a non-zero constant return
    (the client's snaplen) becomes the maximum, so that the kernel keeps the
    whole frame and the daemon, which applies the snaplen itself, still learns
    each packet's original length.  libpcap rewrites programs the same way.
    """
    insns = []
    for insn in program.instructions:
        if insn.code == BPF_RET | BPF_K and insn.k != 0:
            insn = BpfInstruction(insn.code, insn.jt, insn.jf, MAXIMUM_SNAPLEN)
        insns.append(insn)
    return BpfProgram(tuple(insns))


def _load(packet: bytes, offset: int, size: int) -> Optional[int]:
    if offset < 0 or offset + size > len(packet):
        return None
    return int.from_bytes(packet[offset : offset + size], "big")


_SIZES = {BPF_W: 4, BPF_H: 2, BPF_B: 1}
_M32 = 0xFFFFFFFF


def run(program: BpfProgram, packet: bytes, wirelen: Optional[int] = None) -> int:
    """
    Run a validated program over one packet in Python; returns the number of
    bytes to keep (0 = reject).  Used only where the kernel cannot filter:
    the moment a filter is (re)placed, and for tests.
    """
    insns = program.instructions
    a = x = 0
    mem = [0] * BPF_MEMWORDS
    pc = 0
    length = len(packet) if wirelen is None else wirelen
    while pc < len(insns):
        insn = insns[pc]
        code = insn.code
        k = insn.k & _M32
        cls = code & 0x07
        pc += 1
        if cls == BPF_RET:
            return (a if code & 0x18 == BPF_A else k) & _M32
        if cls == BPF_LD or cls == BPF_LDX:
            mode = code & 0xE0
            if mode == BPF_IMM:
                val: Optional[int] = k
            elif mode == BPF_LEN:
                val = length
            elif mode == BPF_MEM:
                val = mem[k]
            elif mode == BPF_MSH:
                byte = _load(packet, k, 1)
                val = None if byte is None else (byte & 0x0F) * 4
            else:
                offset = k + (x if mode == BPF_IND else 0)
                val = _load(packet, offset, _SIZES[code & 0x18])
            if val is None:
                return 0
            if cls == BPF_LD:
                a = val
            else:
                x = val
        elif cls == BPF_ST:
            mem[k] = a
        elif cls == BPF_STX:
            mem[k] = x
        elif cls == BPF_ALU:
            op = code & 0xF0
            operand = x if code & 0x08 else k
            if op == BPF_NEG:
                a = -a & _M32
                continue
            if op in (BPF_DIV, BPF_MOD) and operand == 0:
                return 0
            a = _ALU[op](a, operand) & _M32
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                pc += k
                continue
            operand = x if code & 0x08 else k
            taken = _JUMPS[op](a, operand)
            pc += insn.jt if taken else insn.jf
        else:  # BPF_MISC
            if code & 0xF8 == BPF_TAX:
                x = a
            else:
                a = x
    return 0


_ALU = {
    BPF_ADD: lambda a, b: a + b,
    BPF_SUB: lambda a, b: a - b,
    BPF_MUL: lambda a, b: a * b,
    BPF_DIV: lambda a, b: a // b,
    BPF_MOD: lambda a, b: a % b,
    BPF_OR: lambda a, b: a | b,
    BPF_AND: lambda a, b: a & b,
    BPF_XOR: lambda a, b: a ^ b,
    BPF_LSH: lambda a, b: a << (b & 31) if b < 32 else 0,
    BPF_RSH: lambda a, b: a >> b if b < 32 else 0,
}
_JUMPS = {
    BPF_JEQ: lambda a, b: a == b,
    BPF_JGT: lambda a, b: a > b,
    BPF_JGE: lambda a, b: a >= b,
    BPF_JSET: lambda a, b: bool(a & b),
}

# Linux "cooked" captures (the "any" device, DLT_LINUX_SLL) hand the kernel
# filter the packet without the 16-byte SLL header that userland sees, so
# offsets into it are rewritten the way libpcap's pcap-linux.c does.
DLT_LINUX_SLL = 113
SLL_HDR_LEN = 16
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_HATYPE = 28


def for_cooked_kernel(program: BpfProgram) -> Optional[BpfProgram]:
    """
    Rewrite C{program} (compiled for DLT_LINUX_SLL) for a cooked packet
    socket; C{None} when some load cannot be expressed there.
    """
    insns = []
    for insn in program.instructions:
        cls = insn.code & 0x07
        mode = insn.code & 0xE0
        if cls in (BPF_LD, BPF_LDX) and mode in (BPF_ABS, BPF_IND, BPF_MSH):
            k = insn.k
            if k >= SLL_HDR_LEN:
                k -= SLL_HDR_LEN
            elif mode == BPF_ABS and insn.code & 0x18 == BPF_H and k in (0, 2, 14):
                k = SKF_AD_OFF + {0: SKF_AD_PKTTYPE, 2: SKF_AD_HATYPE, 14: SKF_AD_PROTOCOL}[k]
            else:
                return None
            insn = BpfInstruction(insn.code, insn.jt, insn.jf, k)
        insns.append(insn)
    return BpfProgram(tuple(insns))


def exclude(unwanted: BpfProgram, program: BpfProgram) -> BpfProgram:
    """
    A program that rejects what C{unwanted} accepts and runs C{program} on
    everything else: each of C{unwanted}'s returns becomes C{ret #0} (it
    matched) or a jump to the start of C{program} (it did not).  Both are
    validated programs; their jumps stay relative, so they compose as they are.
    """
    n = len(unwanted.instructions)
    insns = []
    for pc, insn in enumerate(unwanted.instructions):
        if insn.code & 0x07 == BPF_RET:
            if insn.code == BPF_RET | BPF_K and insn.k == 0:
                insn = BpfInstruction(BPF_JMP | BPF_JA, 0, 0, n - pc - 1)
            else:
                insn = BpfInstruction(BPF_RET | BPF_K, 0, 0, 0)
        insns.append(insn)
    return BpfProgram(tuple(insns) + program.instructions)
