"""
Tests for L{rpcapsvc.protocol.bpf}: validation of real and broken classic
BPF programs, the Python interpreter against tcpdump's semantics, and the
rewrites for the Linux kernel.

The real programs below were compiled once with tcpdump 4.99.3 / libpcap
1.10.3 (C{tcpdump -ddd -y DLT 'expression'}) and pasted here, so the tests
need no tcpdump.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.bpf import (
    ACCEPT_ALL,
    BPF_JMP,
    MAXIMUM_SNAPLEN,
    SKF_AD_HATYPE,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
    InvalidFilter,
    for_cooked_kernel,
    for_kernel,
    run,
    validate,
)
from rpcapsvc.protocol.wire import BpfInstruction, BpfProgram

from . import _fixtures as fixtures
from ._fixtures import ICMP_FILTER, h, tcp, udp


def prog(insns: list[tuple[int, int, int, int]]) -> BpfProgram:
    """
    A program from C{tcpdump -ddd} numbers; C{k} is made signed, as the
    wire decoder reads it.
    """
    return BpfProgram(
        tuple(BpfInstruction(c, jt, jf, k - 2**32 if k >= 2**31 else k) for c, jt, jf, k in insns)
    )


# --- programs compiled by tcpdump for DLT_EN10MB ------------------------------

# tcpdump -ddd -y EN10MB 'icmp'
ICMP = ICMP_FILTER
# tcpdump -ddd -y EN10MB -s 96 'icmp'
ICMP_SNAPLEN_96 = prog(
    [(40, 0, 0, 12), (21, 0, 3, 2048), (48, 0, 0, 23), (21, 0, 1, 1), (6, 0, 0, 96), (6, 0, 0, 0)]
)
# tcpdump -ddd -y EN10MB 'tcp port 80'
TCP_PORT_80 = prog(
    [
        (40, 0, 0, 12), (21, 0, 6, 34525), (48, 0, 0, 20), (21, 0, 15, 6), (40, 0, 0, 54),
        (21, 12, 0, 80), (40, 0, 0, 56), (21, 10, 11, 80), (21, 0, 10, 2048), (48, 0, 0, 23),
        (21, 0, 8, 6), (40, 0, 0, 20), (69, 6, 0, 8191), (177, 0, 0, 14), (72, 0, 0, 14),
        (21, 2, 0, 80), (72, 0, 0, 16), (21, 0, 1, 80), (6, 0, 0, 262144), (6, 0, 0, 0),
    ]
)  # fmt: skip
# tcpdump -ddd -y EN10MB 'udp and host 127.0.0.1'
UDP_AND_HOST_LOCALHOST = prog(
    [
        (40, 0, 0, 12), (21, 0, 7, 2048), (48, 0, 0, 23), (21, 0, 5, 17), (32, 0, 0, 26),
        (21, 2, 0, 2130706433), (32, 0, 0, 30), (21, 0, 1, 2130706433), (6, 0, 0, 262144),
        (6, 0, 0, 0),
    ]
)  # fmt: skip
# tcpdump -ddd -y EN10MB 'ip6'
IP6 = prog([(40, 0, 0, 12), (21, 0, 1, 34525), (6, 0, 0, 262144), (6, 0, 0, 0)])
# tcpdump -ddd -y EN10MB 'tcp[tcpflags] & tcp-syn != 0'
TCP_SYN = prog(
    [
        (40, 0, 0, 12), (21, 0, 8, 2048), (48, 0, 0, 23), (21, 0, 6, 6), (40, 0, 0, 20),
        (69, 4, 0, 8191), (177, 0, 0, 14), (80, 0, 0, 27), (69, 0, 1, 2), (6, 0, 0, 262144),
        (6, 0, 0, 0),
    ]
)  # fmt: skip
# tcpdump -ddd -y EN10MB 'len > 100'
LEN_OVER_100 = prog([(128, 0, 0, 0), (37, 0, 1, 100), (6, 0, 0, 262144), (6, 0, 0, 0)])
# tcpdump -ddd -y EN10MB 'vlan and ip'
VLAN_AND_IP = prog(
    [
        (40, 0, 0, 12), (21, 2, 0, 33024), (21, 1, 0, 34984), (21, 0, 3, 37120), (40, 0, 0, 16),
        (21, 0, 1, 2048), (6, 0, 0, 262144), (6, 0, 0, 0),
    ]
)  # fmt: skip
# tcpdump -ddd -y EN10MB 'ip[2:2] / 4 > 10 and ip[8] % 3 = 1'
DIV_MOD = prog(
    [
        (40, 0, 0, 12), (21, 0, 7, 2048), (40, 0, 0, 16), (52, 0, 0, 4), (37, 0, 4, 10),
        (48, 0, 0, 22), (148, 0, 0, 3), (21, 0, 1, 1), (6, 0, 0, 262144), (6, 0, 0, 0),
    ]
)  # fmt: skip
# tcpdump -ddd -y EN10MB 'ip6 protochain 6': loops with backward jumps
# (ja -15 and ja -28, written as unsigned offsets that wrap around).
IP6_PROTOCHAIN_TCP = prog(
    [
        (40, 0, 0, 12), (21, 0, 33, 34525), (48, 0, 0, 20), (1, 0, 0, 40), (21, 27, 0, 6),
        (21, 26, 0, 59), (21, 3, 0, 0), (21, 2, 0, 60), (21, 1, 0, 43), (21, 0, 9, 44),
        (80, 0, 0, 14), (2, 0, 0, 0), (80, 0, 0, 15), (4, 0, 0, 1), (36, 0, 0, 8), (12, 0, 0, 0),
        (7, 0, 0, 0), (96, 0, 0, 0), (5, 0, 0, 4294967281), (21, 0, 12, 51), (135, 0, 0, 0),
        (80, 0, 0, 14), (2, 0, 0, 0), (135, 0, 0, 0), (4, 0, 0, 1), (7, 0, 0, 0), (80, 0, 0, 14),
        (4, 0, 0, 2), (36, 0, 0, 4), (7, 0, 0, 0), (96, 0, 0, 0), (5, 0, 0, 4294967268),
        (4, 0, 0, 0), (21, 0, 1, 6), (6, 0, 0, 262144), (6, 0, 0, 0),
    ]
)  # fmt: skip

# --- programs compiled by tcpdump for DLT_LINUX_SLL ---------------------------

# tcpdump -ddd -y LINUX_SLL 'icmp'
SLL_ICMP = prog(
    [(40, 0, 0, 14), (21, 0, 3, 2048), (48, 0, 0, 25), (21, 0, 1, 1), (6, 0, 0, 262144), (6, 0, 0, 0)]
)
# tcpdump -ddd -y LINUX_SLL 'tcp port 80'
SLL_TCP_PORT_80 = prog(
    [
        (40, 0, 0, 14), (21, 0, 6, 34525), (48, 0, 0, 22), (21, 0, 15, 6), (40, 0, 0, 56),
        (21, 12, 0, 80), (40, 0, 0, 58), (21, 10, 11, 80), (21, 0, 10, 2048), (48, 0, 0, 25),
        (21, 0, 8, 6), (40, 0, 0, 22), (69, 6, 0, 8191), (177, 0, 0, 16), (72, 0, 0, 16),
        (21, 2, 0, 80), (72, 0, 0, 18), (21, 0, 1, 80), (6, 0, 0, 262144), (6, 0, 0, 0),
    ]
)  # fmt: skip
# tcpdump -ddd -y LINUX_SLL 'inbound'
SLL_INBOUND = prog([(40, 0, 0, 0), (21, 0, 1, 4), (6, 0, 0, 0), (6, 0, 0, 262144)])
# tcpdump -ddd -y LINUX_SLL 'ether[6] = 1'
SLL_ETHER_6 = prog([(48, 0, 0, 6), (21, 0, 1, 1), (6, 0, 0, 262144), (6, 0, 0, 0)])

REAL_PROGRAMS = {
    "icmp": ICMP,
    "icmp, snaplen 96": ICMP_SNAPLEN_96,
    "tcp port 80": TCP_PORT_80,
    "udp and host 127.0.0.1": UDP_AND_HOST_LOCALHOST,
    "ip6": IP6,
    "tcp syn": TCP_SYN,
    "len > 100": LEN_OVER_100,
    "vlan and ip": VLAN_AND_IP,
    "div and mod": DIV_MOD,
    "SLL icmp": SLL_ICMP,
    "SLL tcp port 80": SLL_TCP_PORT_80,
    "SLL inbound": SLL_INBOUND,
    "SLL ether[6] = 1": SLL_ETHER_6,
    "accept all": ACCEPT_ALL,
}


def insns(*tuples: tuple[int, int, int, int]) -> BpfProgram:
    return BpfProgram(tuple(BpfInstruction(*t) for t in tuples))


# --- frames ----------------------------------------------------------------------

# The frames here go from 02:00:00:00:00:01 to the broadcast address.
ETH_ADDRS = h("ffffffffffff 020000000001")

# Ethernet, IPv4 192.0.2.1 -> 192.0.2.2, ICMP echo request, written out.
ICMP_ECHO_FRAME = h(
    "ffffffffffff 020000000001 0800  45 00 001c 0001 0000 40 01 0000 c0000201 c0000202  08 00 f7ff 0000 0000"
)


def ether(ethertype: int, payload: bytes) -> bytes:
    return fixtures.ether(ethertype, payload, ETH_ADDRS)


def ipv4(proto: int, payload: bytes, *, dst: str = "192.0.2.2", **kw: Any) -> bytes:
    """An IPv4 header (version 4, IHL from the options) and C{payload}, to 192.0.2.2 unless told."""
    return fixtures.ipv4(proto, payload, dst=dst, **kw)


def ipv6(next_header: int, payload: bytes) -> bytes:
    return (
        h("60000000")
        + len(payload).to_bytes(2, "big")
        + bytes([next_header, 64])
        + ip_address("2001:db8::1").packed
        + ip_address("2001:db8::2").packed
        + payload
    )


def tcp4(sport: int, dport: int, **kw) -> bytes:
    return ether(0x0800, ipv4(6, tcp(sport, dport), **kw))


def udp4(sport: int, dport: int, **kw) -> bytes:
    return ether(0x0800, ipv4(17, udp(sport, dport), **kw))


class FrameTests(SynchronousTestCase):
    def test_icmpFrameMatchesBuilders(self) -> None:
        """The frame builders lay out what the hand-written frame shows."""
        self.assertEqual(ether(0x0800, ipv4(1, h("08 00 f7ff 0000 0000"))), ICMP_ECHO_FRAME)


# --- validate() ------------------------------------------------------------------------


class ValidateTests(SynchronousTestCase):
    def assertInvalid(self, program: BpfProgram) -> None:
        self.assertRaises(InvalidFilter, validate, program)

    def test_realPrograms(self) -> None:
        for name, program in REAL_PROGRAMS.items():
            try:
                validate(program)
            except InvalidFilter as e:
                self.fail(f"{name}: {e}")

    def test_protochainRefused(self) -> None:
        """
        libpcap's userland filter runs protochain's backward jumps; this
        validator, like the Linux kernel's, allows forward jumps only.
        """
        self.assertInvalid(IP6_PROTOCHAIN_TCP)

    def test_empty(self) -> None:
        self.assertInvalid(BpfProgram(()))

    def test_conditionalJumpPastEnd(self) -> None:
        """jt or jf one beyond the last instruction is refused; to it, allowed."""
        base = [(0x28, 0, 0, 12), (0x15, 1, 1, 0x800), (0x06, 0, 0, 262144), (0x06, 0, 0, 0)]
        validate(insns(*base))
        for field in (1, 2):
            program = [list(i) for i in base]
            program[1][field] = 2
            self.assertInvalid(insns(*map(tuple, program)))
            program[1][field] = 255
            self.assertInvalid(insns(*map(tuple, program)))

    def test_unconditionalJumpPastEnd(self) -> None:
        validate(insns((0x05, 0, 0, 1), (0x06, 0, 0, 0), (0x06, 0, 0, 1)))
        self.assertInvalid(insns((0x05, 0, 0, 2), (0x06, 0, 0, 0), (0x06, 0, 0, 1)))
        self.assertInvalid(insns((0x05, 0, 0, 0x7FFFFFFF), (0x06, 0, 0, 0), (0x06, 0, 0, 1)))
        # backward, -1 on the wire
        self.assertInvalid(insns((0x06, 0, 0, 0), (0x05, 0, 0, -1), (0x06, 0, 0, 1)))

    def test_noFinalReturn(self) -> None:
        validate(insns((0x28, 0, 0, 12), (0x06, 0, 0, 0)))
        self.assertInvalid(insns((0x28, 0, 0, 12)))
        self.assertInvalid(insns((0x06, 0, 0, 0), (0x28, 0, 0, 12)))
        self.assertInvalid(insns((0x06, 0, 0, 0), (0x05, 0, 0, 0)))

    def test_divisionByConstantZero(self) -> None:
        for code in (0x34, 0x94):  # div #k, mod #k
            validate(insns((0x00, 0, 0, 7), (code, 0, 0, 2), (0x16, 0, 0, 0)))
            self.assertInvalid(insns((0x00, 0, 0, 7), (code, 0, 0, 0), (0x16, 0, 0, 0)))
        # div x, mod x: checked when run, not here
        validate(insns((0x00, 0, 0, 7), (0x3C, 0, 0, 0), (0x9C, 0, 0, 0), (0x16, 0, 0, 0)))

    def test_badOpcodes(self) -> None:
        """The first instruction of C{ld #0; ret a} replaced by a bad one."""
        validate(insns((0x00, 0, 0, 0), (0x16, 0, 0, 0)))
        for code in (
            0xE0,  # ld, mode 7
            0x38,  # ld, size 3
            0x21,  # ldx [k]: ldx has no absolute mode
            0x41,  # ldx [x + k]
            0xA0,  # ld with ldx's 4*([k]&0xf) mode
            0xA9,  # ldxh 4*([k]&0xf)
            0xB4,  # ALU op 0xb0
            0xF4,  # ALU op 0xf0
            0x55,  # jump op 0x50
            0xF5,  # jump op 0xf0
            0x0F,  # misc op 0x08
            0x10000,  # beyond 16 bits
        ):
            self.assertInvalid(insns((code, 0, 0, 0), (0x16, 0, 0, 0)))
        for code in (0x0E, 0x1E, 0x26):  # ret x, ret with mode bits 0x18, 0x20
            self.assertInvalid(insns((0x00, 0, 0, 0), (code, 0, 0, 0)))

    def test_scratchMemoryIndex(self) -> None:
        """M[0] to M[15] exist; M[16] does not, nor M[-1] read as unsigned."""
        for code in (0x60, 0x61, 0x02, 0x03):  # ld M[k], ldx M[k], st M[k], stx M[k]
            validate(insns((code, 0, 0, 0), (code, 0, 0, 15), (0x06, 0, 0, 0)))
            self.assertInvalid(insns((code, 0, 0, 16), (0x06, 0, 0, 0)))
            self.assertInvalid(insns((code, 0, 0, -1), (0x06, 0, 0, 0)))

    def test_instructionLimit(self) -> None:
        load = BpfInstruction(0x00, 0, 0, 0)
        ret = BpfInstruction(0x06, 0, 0, 0)
        validate(BpfProgram((load,) * 8191 + (ret,)))
        self.assertInvalid(BpfProgram((load,) * 8192 + (ret,)))


# --- run() -----------------------------------------------------------------------


class RunRealProgramsTests(SynchronousTestCase):
    """tcpdump's programs give the verdicts tcpdump would."""

    def assertVerdicts(self, program: BpfProgram, cases: list[tuple[str, bytes, int]]) -> None:
        for name, frame, expected in cases:
            self.assertEqual(run(program, frame), expected, name)

    def test_icmp(self) -> None:
        self.assertVerdicts(
            ICMP,
            [
                ("icmp echo", ICMP_ECHO_FRAME, 262144),
                ("tcp", tcp4(1234, 80), 0),
                ("udp", udp4(1234, 53), 0),
                ("ip6 icmp6", ether(0x86DD, ipv6(58, h("8000 0000 0000 0000"))), 0),
                ("cut before the protocol", ICMP_ECHO_FRAME[:23], 0),
                ("cut before the ethertype", ICMP_ECHO_FRAME[:13], 0),
                ("empty", b"", 0),
            ],
        )
        self.assertEqual(run(ICMP_SNAPLEN_96, ICMP_ECHO_FRAME), 96)

    def test_tcpPort80(self) -> None:
        self.assertVerdicts(
            TCP_PORT_80,
            [
                ("to port 80", tcp4(40000, 80), 262144),
                ("from port 80", tcp4(80, 40000), 262144),
                ("port 443", tcp4(40000, 443), 0),
                ("udp port 80", udp4(40000, 80), 0),
                # the IP header length is read from the packet: with 4 bytes
                # of options the ports sit 4 bytes later
                ("options, port 80", tcp4(40000, 80, options=h("01010101")), 262144),
                ("options that look like port 80", tcp4(1234, 443, options=h("00500050")), 0),
                ("later fragment", tcp4(40000, 80, frag=0x0001), 0),
                ("first fragment (MF set)", tcp4(40000, 80, frag=0x2000), 262144),
                ("ip6 tcp port 80", ether(0x86DD, ipv6(6, tcp(40000, 80))), 262144),
                ("ip6 tcp port 22", ether(0x86DD, ipv6(6, tcp(40000, 22))), 0),
                ("ip6 udp port 80", ether(0x86DD, ipv6(17, udp(40000, 80))), 0),
                ("cut inside the tcp header", tcp4(40000, 80)[:36], 0),
                ("arp", ether(0x0806, bytes(28)), 0),
            ],
        )

    def test_udpAndHost(self) -> None:
        self.assertVerdicts(
            UDP_AND_HOST_LOCALHOST,
            [
                ("from 127.0.0.1", udp4(1, 2, src="127.0.0.1", dst="10.0.0.1"), 262144),
                ("to 127.0.0.1", udp4(1, 2, src="10.0.0.1", dst="127.0.0.1"), 262144),
                ("other hosts", udp4(1, 2, src="10.0.0.1", dst="10.0.0.2"), 0),
                ("tcp to 127.0.0.1", tcp4(1, 2, dst="127.0.0.1"), 0),
            ],
        )

    def test_ip6(self) -> None:
        self.assertVerdicts(
            IP6,
            [
                ("ip6", ether(0x86DD, ipv6(59, b"")), 262144),
                ("ip", ICMP_ECHO_FRAME, 0),
            ],
        )

    def test_tcpSyn(self) -> None:
        self.assertVerdicts(
            TCP_SYN,
            [
                ("syn", ether(0x0800, ipv4(6, tcp(1, 2, flags=0x02))), 262144),
                ("syn ack", ether(0x0800, ipv4(6, tcp(1, 2, flags=0x12))), 262144),
                ("ack", ether(0x0800, ipv4(6, tcp(1, 2, flags=0x10))), 0),
                ("syn after options", ether(0x0800, ipv4(6, tcp(1, 2), options=h("01010101"))), 262144),
            ],
        )

    def test_lenUsesWireLength(self) -> None:
        """C{len} is the original length, which may exceed the bytes at hand."""
        self.assertEqual(run(LEN_OVER_100, bytes(60)), 0)
        self.assertEqual(run(LEN_OVER_100, bytes(100)), 0)
        self.assertEqual(run(LEN_OVER_100, bytes(101)), 262144)
        self.assertEqual(run(LEN_OVER_100, bytes(60), wirelen=1500), 262144)
        self.assertEqual(run(LEN_OVER_100, bytes(200), wirelen=100), 0)

    def test_vlan(self) -> None:
        self.assertVerdicts(
            VLAN_AND_IP,
            [
                ("802.1Q, ip", ether(0x8100, h("0064 0800") + ipv4(1, b"")), 262144),
                ("802.1ad, ip", ether(0x88A8, h("0064 0800") + ipv4(1, b"")), 262144),
                ("802.1Q, ip6", ether(0x8100, h("0064 86dd") + ipv6(59, b"")), 0),
                ("untagged ip", ICMP_ECHO_FRAME, 0),
            ],
        )

    def test_divMod(self) -> None:
        """ip[2:2] / 4 > 10 and ip[8] % 3 = 1"""
        big = ipv4(17, udp(1, 2, bytes(20)))  # total length 48: 48 / 4 = 12
        small = ipv4(17, udp(1, 2))  # 28: 7
        self.assertEqual(run(DIV_MOD, ether(0x0800, big)), 262144)  # ttl 64 % 3 = 1
        self.assertEqual(run(DIV_MOD, ether(0x0800, ipv4(17, udp(1, 2, bytes(20)), ttl=63))), 0)
        self.assertEqual(run(DIV_MOD, ether(0x0800, small)), 0)


class RunSemanticsTests(SynchronousTestCase):
    """The instructions one by one, on hand-made programs."""

    def test_alu(self) -> None:
        """C{ld #a; op #k; ret a}: 32-bit unsigned arithmetic."""
        for name, code, a, k, expected in [
            ("add wraps", 0x04, 0xFFFFFFFF, 2, 1),
            ("sub wraps", 0x14, 1, 2, 0xFFFFFFFF),
            ("mul wraps", 0x24, 0x10000, 0x10001, 0x10000),
            ("div truncates", 0x34, 7, 2, 3),
            ("div is unsigned", 0x34, -2, 2, 0x7FFFFFFF),
            ("mod", 0x94, 7, 3, 1),
            ("or", 0x44, 0x0F0, 0x00F, 0x0FF),
            ("and", 0x54, 0x0F0, 0x03C, 0x030),
            ("xor", 0xA4, 0x0F0, 0x03C, 0x0CC),
            ("lsh", 0x64, 1, 31, 0x80000000),
            ("lsh drops high bits", 0x64, 0xFFFFFFFF, 4, 0xFFFFFFF0),
            ("rsh is logical", 0x74, -1, 28, 0xF),
            ("neg", 0x84, 1, 0, 0xFFFFFFFF),
        ]:
            program = insns((0x00, 0, 0, a), (code, 0, 0, k), (0x16, 0, 0, 0))
            validate(program)
            self.assertEqual(run(program, b""), expected, name)

    def test_aluWithX(self) -> None:
        """C{ld #7; ldx #2; op x; ret a}."""
        for code, expected in [(0x0C, 9), (0x1C, 5), (0x2C, 14), (0x3C, 3), (0x9C, 1), (0x6C, 28), (0x7C, 1)]:
            program = insns((0x00, 0, 0, 7), (0x01, 0, 0, 2), (code, 0, 0, 0), (0x16, 0, 0, 0))
            self.assertEqual(run(program, b""), expected, hex(code))

    def test_divisionByXZero(self) -> None:
        """A division or modulo by X = 0 rejects the packet."""
        for code in (0x3C, 0x9C):
            program = insns((0x00, 0, 0, 7), (0x01, 0, 0, 0), (code, 0, 0, 0), (0x06, 0, 0, 99))
            validate(program)
            self.assertEqual(run(program, b""), 0)

    def test_scratchMemoryAndTransfers(self) -> None:
        """st, stx, ld M[], ldx M[], tax, txa."""
        program = insns(
            (0x00, 0, 0, 5),  # ld #5
            (0x02, 0, 0, 3),  # st M[3]
            (0x01, 0, 0, 6),  # ldx #6
            (0x03, 0, 0, 15),  # stx M[15]
            (0x00, 0, 0, 0),  # ld #0
            (0x61, 0, 0, 3),  # ldx M[3]      x = 5
            (0x60, 0, 0, 15),  # ld M[15]     a = 6
            (0x2C, 0, 0, 0),  # mul x         a = 30
            (0x07, 0, 0, 0),  # tax           x = 30
            (0x00, 0, 0, 1),  # ld #1
            (0x87, 0, 0, 0),  # txa           a = 30
            (0x0C, 0, 0, 0),  # add x         a = 60
            (0x16, 0, 0, 0),  # ret a
        )
        validate(program)
        self.assertEqual(run(program, b""), 60)

    def test_scratchMemoryStartsZero(self) -> None:
        program = insns((0x60, 0, 0, 7), (0x16, 0, 0, 0))
        self.assertEqual(run(program, b""), 0)

    def test_loads(self) -> None:
        packet = h("00 11 22 33 44 55 66 77 88 99")
        for name, program, expected in [
            ("ld [k]", insns((0x20, 0, 0, 2), (0x16, 0, 0, 0)), 0x22334455),
            ("ldh [k]", insns((0x28, 0, 0, 8), (0x16, 0, 0, 0)), 0x8899),
            ("ldb [k]", insns((0x30, 0, 0, 9), (0x16, 0, 0, 0)), 0x99),
            ("ld [x + k]", insns((0x01, 0, 0, 4), (0x40, 0, 0, 1), (0x16, 0, 0, 0)), 0x55667788),
            ("ldh [x + k]", insns((0x01, 0, 0, 4), (0x48, 0, 0, 1), (0x16, 0, 0, 0)), 0x5566),
            ("ldb [x + k]", insns((0x01, 0, 0, 4), (0x50, 0, 0, 1), (0x16, 0, 0, 0)), 0x55),
            ("ldxb 4*([k]&0xf)", insns((0xB1, 0, 0, 4), (0x87, 0, 0, 0), (0x16, 0, 0, 0)), 16),
            ("ld len", insns((0x80, 0, 0, 0), (0x16, 0, 0, 0)), 10),
            ("ldx len", insns((0x81, 0, 0, 0), (0x87, 0, 0, 0), (0x16, 0, 0, 0)), 10),
            ("ld #k, negative", insns((0x00, 0, 0, -1), (0x16, 0, 0, 0)), 0xFFFFFFFF),
            # a load past the end rejects the packet whatever comes next
            ("ld [k] past the end", insns((0x20, 0, 0, 7), (0x06, 0, 0, 1)), 0),
            ("ldb [k] just past the end", insns((0x30, 0, 0, 10), (0x06, 0, 0, 1)), 0),
            ("ldb [x + k] past the end", insns((0x01, 0, 0, 9), (0x50, 0, 0, 1), (0x06, 0, 0, 1)), 0),
            ("ldxb past the end", insns((0xB1, 0, 0, 10), (0x06, 0, 0, 1)), 0),
            ("ld [k], k negative", insns((0x20, 0, 0, -4096), (0x06, 0, 0, 1)), 0),
        ]:
            validate(program)
            self.assertEqual(run(program, packet), expected, name)

    def test_jumps(self) -> None:
        """C{ld #a; ldx #x; j<op> <k or x> jt 1 jf 0; ret #1 (false); ret #2 (true)}."""
        for name, code, a, k, x, taken in [
            ("jeq #k", 0x15, 5, 5, 0, True),
            ("jeq #k, not", 0x15, 5, 6, 0, False),
            ("jgt #k is unsigned", 0x25, -1, 1, 0, True),
            ("jgt #k, equal", 0x25, 5, 5, 0, False),
            ("jge #k, equal", 0x35, 5, 5, 0, True),
            ("jge #k, less", 0x35, 4, 5, 0, False),
            ("jset #k", 0x45, 0b1010, 0b0010, 0, True),
            ("jset #k, no common bit", 0x45, 0b1010, 0b0101, 0, False),
            ("jeq x", 0x1D, 7, 0, 7, True),
            ("jgt x", 0x2D, 7, 0, 8, False),
            ("jge x", 0x3D, 8, 0, 8, True),
            ("jset x", 0x4D, 8, 0, 8, True),
        ]:
            program = insns(
                (0x00, 0, 0, a), (0x01, 0, 0, x), (code, 1, 0, k), (0x06, 0, 0, 1), (0x06, 0, 0, 2)
            )
            validate(program)
            self.assertEqual(run(program, b""), 2 if taken else 1, name)
        program = insns((0x05, 0, 0, 1), (0x06, 0, 0, 1), (0x06, 0, 0, 2))  # ja +1
        self.assertEqual(run(program, b""), 2)

    def test_returns(self) -> None:
        self.assertEqual(
            run(
                insns(
                    (0x06, 0, 0, 1500),
                ),
                b"",
            ),
            1500,
        )
        self.assertEqual(
            run(
                insns(
                    (0x06, 0, 0, -1),
                ),
                b"",
            ),
            0xFFFFFFFF,
        )
        self.assertEqual(run(insns((0x00, 0, 0, 77), (0x16, 0, 0, 0)), b""), 77)


# --- the kernel rewrites ----------------------------------------------------------


class ForKernelTests(SynchronousTestCase):
    def test_snaplenReturnBecomesMaximum(self) -> None:
        """
        C{ret #96} becomes C{ret #262144}; C{ret #0} and everything else
        stay: tcpdump's C{-s 96} program turns into its default one.
        """
        self.assertEqual(MAXIMUM_SNAPLEN, 262144)
        self.assertEqual(for_kernel(ICMP_SNAPLEN_96), ICMP)
        self.assertEqual(
            for_kernel(
                insns(
                    (0x06, 0, 0, 1),
                )
            ),
            insns(
                (0x06, 0, 0, 262144),
            ),
        )
        self.assertEqual(
            for_kernel(
                insns(
                    (0x06, 0, 0, -1),
                )
            ),
            insns(
                (0x06, 0, 0, 262144),
            ),
        )

    def test_otherwiseUnchanged(self) -> None:
        for name, program in REAL_PROGRAMS.items():
            if name != "icmp, snaplen 96":
                self.assertEqual(for_kernel(program), program, name)
        ret_a = insns((0x00, 0, 0, 96), (0x16, 0, 0, 0), (0x06, 0, 0, 0))
        self.assertEqual(for_kernel(ret_a), ret_a)


class ForCookedKernelTests(SynchronousTestCase):
    def test_icmp(self) -> None:
        """The protocol field becomes the ancillary load; IP offsets lose 16."""
        self.assertEqual(
            for_cooked_kernel(SLL_ICMP),
            insns(
                (0x28, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),
                (0x15, 0, 3, 2048),
                (0x30, 0, 0, 9),
                (0x15, 0, 1, 1),
                (0x06, 0, 0, 262144),
                (0x06, 0, 0, 0),
            ),
        )
        self.assertEqual(SKF_AD_OFF + SKF_AD_PROTOCOL, -4096)

    def test_tcpPort80(self) -> None:
        """Absolute, indexed and IP-header-length loads are all moved."""
        self.assertEqual(
            for_cooked_kernel(SLL_TCP_PORT_80),
            prog(
                [
                    (40, 0, 0, 2**32 - 4096), (21, 0, 6, 34525), (48, 0, 0, 6), (21, 0, 15, 6),
                    (40, 0, 0, 40), (21, 12, 0, 80), (40, 0, 0, 42), (21, 10, 11, 80),
                    (21, 0, 10, 2048), (48, 0, 0, 9), (21, 0, 8, 6), (40, 0, 0, 6),
                    (69, 6, 0, 8191), (177, 0, 0, 0), (72, 0, 0, 0), (21, 2, 0, 80),
                    (72, 0, 0, 2), (21, 0, 1, 80), (6, 0, 0, 262144), (6, 0, 0, 0),
                ]
            ),
        )  # fmt: skip

    def test_packetTypeAndHardwareType(self) -> None:
        self.assertEqual(
            for_cooked_kernel(SLL_INBOUND),
            insns((0x28, 0, 0, -4092), (0x15, 0, 1, 4), (0x06, 0, 0, 0), (0x06, 0, 0, 262144)),
        )
        self.assertEqual(SKF_AD_OFF + SKF_AD_PKTTYPE, -4092)
        self.assertEqual(
            for_cooked_kernel(insns((0x28, 0, 0, 2), (0x16, 0, 0, 0))),
            insns((0x28, 0, 0, SKF_AD_OFF + SKF_AD_HATYPE), (0x16, 0, 0, 0)),
        )

    def test_unfixable(self) -> None:
        """Loads from the SLL header other than those three fields: C{None}."""
        self.assertIsNone(for_cooked_kernel(SLL_ETHER_6))
        for insn in [
            (0x30, 0, 0, 14),  # ldb [14]: only the 2-byte protocol field maps
            (0x20, 0, 0, 0),  # ld [0]
            (0x28, 0, 0, 4),  # ldh [4]: the address length
            (0x28, 0, 0, 15),  # ldh [15]
            (0x48, 0, 0, 2),  # ldh [x + 2]
            (0xB1, 0, 0, 4),  # ldxb 4*([4]&0xf)
        ]:
            self.assertIsNone(for_cooked_kernel(insns(insn, (0x06, 0, 0, 1))), insn)

    def test_nonPacketLoadsKept(self) -> None:
        """Immediate, memory and length loads do not address the packet."""
        program = insns(
            (0x00, 0, 0, 5),  # ld #5
            (0x01, 0, 0, 14),  # ldx #14
            (0x60, 0, 0, 3),  # ld M[3]
            (0x61, 0, 0, 2),  # ldx M[2]
            (0x80, 0, 0, 0),  # ld len
            (0x81, 0, 0, 0),  # ldx len
            (0x02, 0, 0, 0),  # st M[0]
            (0x16, 0, 0, 0),  # ret a
        )
        self.assertEqual(for_cooked_kernel(program), program)


# --- Hypothesis --------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
ks = st.one_of(st.integers(0, 70), i32)

wire_instructions = st.builds(BpfInstruction, u16, u8, u8, i32)

# Every opcode the Linux kernel accepts in a classic program.
_ALU_OPS = (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0)
VALID_OPCODES = sorted(
    {0x00, 0x20, 0x28, 0x30, 0x40, 0x48, 0x50, 0x60, 0x80}  # ld
    | {0x01, 0x61, 0x81, 0xB1}  # ldx
    | {0x02, 0x03}  # st, stx
    | {0x04 | op | src for op in _ALU_OPS for src in (0x00, 0x08)}
    | {0x84}  # neg
    | {0x05}
    | {0x05 | op | src for op in (0x10, 0x20, 0x30, 0x40) for src in (0x00, 0x08)}
    | {0x06, 0x16}  # ret
    | {0x07, 0x87}  # tax, txa
)
_MEMORY_OPCODES = {0x60, 0x61, 0x02, 0x03}
_DIV_K_OPCODES = {0x34, 0x94}


@st.composite
def valid_programs(draw) -> BpfProgram:
    """Programs of valid opcodes, in-range jumps and memory, ending in a return."""
    n = draw(st.integers(1, 24))
    out = []
    for pc in range(n):
        code = draw(st.sampled_from([0x06, 0x16] if pc == n - 1 else VALID_OPCODES))
        room = n - pc - 2  # the furthest forward offset that still lands inside
        jt = jf = 0
        if code in _MEMORY_OPCODES:
            k = draw(st.integers(0, 15))
        elif code == 0x05:
            k = draw(st.integers(0, room))
        elif code & 0x07 == BPF_JMP:
            jt = draw(st.integers(0, min(room, 255)))
            jf = draw(st.integers(0, min(room, 255)))
            k = draw(ks)
        elif code in _DIV_K_OPCODES:
            k = draw(ks.filter(lambda k: k != 0))
        else:
            k = draw(ks)
        out.append(BpfInstruction(code, jt, jf, k))
    return BpfProgram(tuple(out))


@st.composite
def mutated_programs(draw) -> BpfProgram:
    """A valid program with one field of one instruction set at random."""
    program = draw(valid_programs())
    items = list(program.instructions)
    i = draw(st.integers(0, len(items) - 1))
    field, strategy = draw(st.sampled_from([("code", u16), ("jt", u8), ("jf", u8), ("k", i32)]))
    items[i] = attrs.evolve(items[i], **{field: draw(strategy)})
    return BpfProgram(tuple(items))


packets = st.binary(max_size=80)
wirelens = st.none() | st.integers(0, 0xFFFFFFFF)


class PropertyTests(SynchronousTestCase):
    def assertRunsSafely(self, program: BpfProgram, packet: bytes, wirelen) -> int:
        result = run(program, packet, wirelen)
        self.assertIsInstance(result, int)
        self.assertTrue(0 <= result <= 0xFFFFFFFF, result)
        return result

    @given(st.lists(wire_instructions, max_size=24), packets, wirelens)
    def test_arbitraryInstructions(self, items, packet: bytes, wirelen) -> None:
        """
        On any instruction list the wire can carry, validate() accepts or
        raises L{InvalidFilter}; whatever it accepts runs on any packet.
        """
        program = BpfProgram(tuple(items))
        try:
            validate(program)
        except InvalidFilter:
            return
        self.assertRunsSafely(program, packet, wirelen)

    @given(mutated_programs(), packets, wirelens)
    def test_nearlyValidPrograms(self, program: BpfProgram, packet: bytes, wirelen) -> None:
        """The same, on programs one field away from valid ones."""
        try:
            validate(program)
        except InvalidFilter:
            return
        self.assertRunsSafely(program, packet, wirelen)

    @given(valid_programs(), packets, wirelens)
    def test_validPrograms(self, program: BpfProgram, packet: bytes, wirelen) -> None:
        """
        Programs of the kernel's opcodes with in-range operands are accepted
        and run; L{for_kernel} keeps them valid and keeps every verdict.
        """
        validate(program)
        result = self.assertRunsSafely(program, packet, wirelen)
        kernel = for_kernel(program)
        validate(kernel)
        self.assertEqual(bool(run(kernel, packet, wirelen)), bool(result))

    @given(valid_programs())
    def test_cookedRewriteKeepsValidity(self, program: BpfProgram) -> None:
        """
        L{for_cooked_kernel} changes load offsets only: the result, when
        there is one, is valid and of the same shape.
        """
        cooked = for_cooked_kernel(program)
        if cooked is None:
            return
        validate(cooked)
        self.assertEqual(
            [(i.code, i.jt, i.jf) for i in cooked.instructions],
            [(i.code, i.jt, i.jf) for i in program.instructions],
        )
