"""
Tests for L{rpcapsvc.protocol.wire}: control messages against byte strings
written out by hand from the protocol (not produced by the encoder), the
decoders' error paths, and Hypothesis round trips for every message class.
"""

from __future__ import annotations

import struct
import sys
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.wire import (
    BYTE_ORDER_MAGIC,
    HEADER_SIZE,
    MAX_BPF_INSTRUCTIONS,
    MESSAGE_CLASSES,
    AuthReply,
    AuthRequest,
    AuthType,
    BpfInstruction,
    BpfProgram,
    CloseRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    Header,
    InterfaceAddress,
    InterfaceFlags,
    InterfaceInfo,
    MalformedMessage,
    Message,
    MessageType,
    OpenReply,
    OpenRequest,
    SetSamplingReply,
    SetSamplingRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
    UnknownMessage,
    UpdateFilterReply,
    UpdateFilterRequest,
    decode_message,
)

from ._fixtures import ICMP_FILTER, h


def sockaddr(raw: bytes) -> bytes:
    """A 128-byte sockaddr slot: C{raw} followed by zero bytes."""
    assert len(raw) <= 128
    return raw + bytes(128 - len(raw))


NO_SOCKADDR = bytes(128)

# 0xa1b2c3d4 as this machine (the server) stores it in memory.
NATIVE_MAGIC = h("a1b2c3d4") if sys.byteorder == "big" else h("d4c3b2a1")
FOREIGN_MAGIC = NATIVE_MAGIC[::-1]

FINDALLDEVS_REPLY = FindAllInterfacesReply(
    (
        InterfaceInfo(
            "lo",
            "",
            InterfaceFlags.LOOPBACK | InterfaceFlags.UP | InterfaceFlags.RUNNING,
            (InterfaceAddress(IPv4Address("127.0.0.1"), IPv4Address("255.0.0.0")),),
        ),
        InterfaceInfo(
            "eth0",
            "Ethernet",
            InterfaceFlags.UP | InterfaceFlags.RUNNING | InterfaceFlags.CONNECTION_STATUS_CONNECTED,
            (
                InterfaceAddress(
                    IPv4Address("192.0.2.10"),
                    IPv4Address("255.255.255.0"),
                    IPv4Address("192.0.2.255"),
                ),
                InterfaceAddress(IPv6Address("fe80::1"), IPv6Address("ffff:ffff:ffff:ffff::"), scope_id=2),
            ),
        ),
        InterfaceInfo(
            "tun0",
            "",
            6,
            (
                InterfaceAddress(
                    IPv4Address("10.8.0.1"),
                    IPv4Address("255.255.255.255"),
                    destination=IPv4Address("10.8.0.2"),
                ),
            ),
        ),
    )
)

# lo: 12 + 2 + 512; eth0: 12 + 4 + 8 + 1024; tun0: 12 + 4 + 512; 2102 = 0x836.
FINDALLDEVS_REPLY_BYTES = (
    h("00 82 0003 00000836")
    # lo: namelen 2, desclen 0, flags 7, one address
    + h("0002 0000 00000007 0001 0000")
    + b"lo"
    + sockaddr(h("0002 0000 7f000001 0000000000000000"))
    + sockaddr(h("0002 0000 ff000000 0000000000000000"))
    + NO_SOCKADDR
    + NO_SOCKADDR
    # eth0: namelen 4, desclen 8, flags 0x16, two addresses
    + h("0004 0008 00000016 0002 0000")
    + b"eth0"
    + b"Ethernet"
    + sockaddr(h("0002 0000 c000020a 0000000000000000"))
    + sockaddr(h("0002 0000 ffffff00 0000000000000000"))
    + sockaddr(h("0002 0000 c00002ff 0000000000000000"))
    + NO_SOCKADDR
    # family 23, port 0, flowinfo 0, fe80::1, scope id 2
    + sockaddr(h("0017 0000 00000000 fe800000000000000000000000000001 00000002"))
    + sockaddr(h("0017 0000 00000000 ffffffffffffffff0000000000000000 00000000"))
    + NO_SOCKADDR
    + NO_SOCKADDR
    # tun0: point to point, a destination and no broadcast
    + h("0004 0000 00000006 0001 0000")
    + b"tun0"
    + sockaddr(h("0002 0000 0a080001 0000000000000000"))
    + sockaddr(h("0002 0000 ffffffff 0000000000000000"))
    + NO_SOCKADDR
    + sockaddr(h("0002 0000 0a080002 0000000000000000"))
)

KNOWN_MESSAGES: list[tuple[str, bytes, Message]] = [
    (
        "auth request, null",
        h("00 08 0000 00000008  0000 0000 0000 0000"),
        AuthRequest(AuthType.NULL),
    ),
    (
        "auth request, password",
        h("00 08 0000 00000013  0001 0000 0005 0006") + b"alice" + b"s3cret",
        AuthRequest(AuthType.PASSWORD, b"alice", b"s3cret"),
    ),
    (
        "auth reply",
        h("00 88 0000 00000008  00 00 0000") + NATIVE_MAGIC,
        AuthReply(0, 0, 0xA1B2C3D4),
    ),
    (
        "findalldevs request",
        h("00 02 0000 00000000"),
        FindAllInterfacesRequest(),
    ),
    ("findalldevs reply", FINDALLDEVS_REPLY_BYTES, FINDALLDEVS_REPLY),
    (
        "findalldevs reply, no interfaces",
        h("00 82 0000 00000000"),
        FindAllInterfacesReply(()),
    ),
    (
        "open request",
        h("00 03 0000 00000004") + b"eth0",
        OpenRequest("eth0"),
    ),
    (
        "open reply",
        h("00 83 0000 00000008  00000001 00000000"),
        OpenReply(1, 0),
    ),
    (
        "startcap request, no filter block",
        h("00 04 0000 0000000c  0000ffff 000003e8 0001 0000"),
        StartCaptureRequest(65535, 1000, StartCapFlags.PROMISC, 0, None),
    ),
    (
        "startcap request, one instruction",
        h("00 04 0000 0000001c  00040000 000003e8 0000 1234  0001 0000 00000001  0006 00 00 00040000"),
        StartCaptureRequest(262144, 1000, 0, 0x1234, BpfProgram((BpfInstruction(6, 0, 0, 262144),))),
    ),
    (
        "startcap request, empty program",
        h("00 04 0000 00000014  000005dc 00000064 0006 0000  0001 0000 00000000"),
        StartCaptureRequest(1500, 100, 6, 0, BpfProgram(())),
    ),
    (
        "startcap request, icmp filter, UDP",
        h(
            "00 04 0000 00000044  0000ffff 00000000 0003 07d3  0001 0000 00000006"
            "  0028 00 00 0000000c  0015 00 03 00000800  0030 00 00 00000017"
            "  0015 00 01 00000001  0006 00 00 00040000  0006 00 00 00000000"
        ),
        StartCaptureRequest(65535, 0, StartCapFlags.PROMISC | StartCapFlags.DGRAM, 2003, ICMP_FILTER),
    ),
    (
        "startcap reply",
        h("00 84 0000 00000008  00100000 1f40 0000"),
        StartCaptureReply(1048576, 8000),
    ),
    (
        "updatefilter request",
        h(
            "00 05 0000 00000028  0001 0000 00000004"
            "  0028 00 00 fffff000  0015 00 01 00000800"
            "  0006 00 00 0000ffff  0006 00 00 00000000"
        ),
        UpdateFilterRequest(
            BpfProgram(
                (
                    BpfInstruction(0x28, 0, 0, -4096),
                    BpfInstruction(0x15, 0, 1, 0x800),
                    BpfInstruction(0x06, 0, 0, 0xFFFF),
                    BpfInstruction(0x06, 0, 0, 0),
                )
            )
        ),
    ),
    ("updatefilter reply", h("00 85 0000 00000000"), UpdateFilterReply()),
    ("stats request", h("00 09 0000 00000000"), StatsRequest()),
    (
        "stats reply",
        h("00 89 0000 00000010  000003e8 00000002 00000003 ffffffff"),
        StatsReply(1000, 2, 3, 0xFFFFFFFF),
    ),
    ("endcap request", h("00 0a 0000 00000000"), EndCaptureRequest()),
    ("endcap reply", h("00 8a 0000 00000000"), EndCaptureReply()),
    (
        "setsampling request",
        h("00 0b 0000 00000008  01 00 0000 00000064"),
        SetSamplingRequest(1, 100),
    ),
    ("setsampling reply", h("00 8b 0000 00000000"), SetSamplingReply()),
    ("close", h("00 06 0000 00000000"), CloseRequest()),
    (
        "error, auth failed",
        h("00 01 0012 00000015") + b"Authentication failed",
        ErrorReply(ErrorCode.AUTH_FAILED, "Authentication failed"),
    ),
    (
        "error, wrong version",
        h("00 01 0011 00000013") + b"unsupported version",
        ErrorReply(ErrorCode.WRONGVER, "unsupported version"),
    ),
    (
        "error, UTF-8 text",
        h("00 01 0005 00000008  c2bb 65746839 c2ab"),
        ErrorReply(ErrorCode.NOREMOTEIF, "\u00bbeth9\u00ab"),
    ),
    ("error, no text", h("00 01 0010 00000000"), ErrorReply(ErrorCode.WRONGMSG, "")),
]


def split(data: bytes) -> tuple[Header, bytes]:
    return Header.decode(data), data[HEADER_SIZE:]


class KnownBytesTests(SynchronousTestCase):
    """Each message against its bytes as the protocol lays them out."""

    def test_tableIsConsistent(self) -> None:
        """
        Each hand-written byte string's C{plen} is the length of what follows
        it, and the table covers every message class.
        """
        for name, data, message in KNOWN_MESSAGES:
            (plen,) = struct.unpack("!I", data[4:8])
            self.assertEqual(plen, len(data) - HEADER_SIZE, name)
            self.assertEqual(data[1], type(message).TYPE, name)
        self.assertEqual({type(message) for _, _, message in KNOWN_MESSAGES}, set(MESSAGE_CLASSES.values()))

    def test_encode(self) -> None:
        for name, data, message in KNOWN_MESSAGES:
            self.assertEqual(message.encode(), data, name)

    def test_decode(self) -> None:
        for name, data, message in KNOWN_MESSAGES:
            header, payload = split(data)
            self.assertEqual(header, Header(0, type(message).TYPE, header.value, len(payload)), name)
            self.assertEqual(decode_message(header, payload), message, name)

    def test_authReplyMagicIsNative(self) -> None:
        """
        The magic is written in this machine's byte order, not network order.
        """
        payload = AuthReply().encode()[HEADER_SIZE:]
        self.assertEqual(payload[4:], BYTE_ORDER_MAGIC.to_bytes(4, sys.byteorder))

    def test_authReplyForeignMagic(self) -> None:
        """
        A server of the other byte order is recognisable: its magic reads
        back byte-swapped.
        """
        header, payload = split(h("00 88 0000 00000008  00 00 0000") + FOREIGN_MAGIC)
        self.assertEqual(decode_message(header, payload), AuthReply(0, 0, 0xD4C3B2A1))

    def test_authReplyOldFormats(self) -> None:
        """Older servers send an empty or a 2-byte reply: no magic."""
        for data in (h("00 88 0000 00000000"), h("00 88 0000 00000002  00 00")):
            header, payload = split(data)
            self.assertEqual(decode_message(header, payload), AuthReply(0, 0, None))
        self.assertEqual(AuthReply(byte_order_magic=None).encode(), h("00 88 0000 00000004  00 00 0000"))

    def test_openRequestTerminator(self) -> None:
        """A NUL terminator after the interface name is tolerated."""
        header, payload = split(h("00 03 0000 00000005") + b"eth0\0")
        self.assertEqual(decode_message(header, payload), OpenRequest("eth0"))

    def test_errorReplyInvalidUtf8(self) -> None:
        """Error text that is not UTF-8 still decodes, with replacement characters."""
        header, payload = split(h("00 01 0009 00000003  66 ff 6f"))
        self.assertEqual(decode_message(header, payload), ErrorReply(ErrorCode.READEX, "f\ufffdo"))

    def test_findalldevsLinuxInet6Family(self) -> None:
        """An IPv6 sockaddr with Linux's family value (10) is read too."""
        data = (
            h("00 82 0001 00000214  0002 0000 00000000 0001 0000")
            + b"lo"
            + sockaddr(h("000a 0000 00000000 00000000000000000000000000000001 00000000"))
            + NO_SOCKADDR * 3
        )
        header, payload = split(data)
        self.assertEqual(
            decode_message(header, payload),
            FindAllInterfacesReply((InterfaceInfo("lo", "", 0, (InterfaceAddress(IPv6Address("::1")),)),)),
        )

    def test_findalldevsSkipsUnknownFamily(self) -> None:
        """
        An address of a family other than IPv4 and IPv6 (here 17, a link
        layer address) is skipped; the interface and its other addresses stay.
        """
        data = (
            h("00 82 0001 00000414  0004 0000 00000002 0002 0000")
            + b"eth1"
            + sockaddr(h("0011 0000 00000002 0001 0006 020000000001"))
            + NO_SOCKADDR * 3
            + sockaddr(h("0002 0000 c0000201 0000000000000000"))
            + NO_SOCKADDR * 3
        )
        header, payload = split(data)
        self.assertEqual(
            decode_message(header, payload),
            FindAllInterfacesReply(
                (InterfaceInfo("eth1", "", 2, (InterfaceAddress(IPv4Address("192.0.2.1")),)),)
            ),
        )

    def test_headerTooShort(self) -> None:
        self.assertRaises(MalformedMessage, Header.decode, h("00 02 0000 000000"))


# --- builders for the decoders' error paths --------------------------------


def auth_payload(auth_type=1, pad=0, len1=5, len2=6, creds=b"alices3cret", cut=None):
    data = struct.pack("!HHHH", auth_type, pad, len1, len2) + creds
    return data if cut is None else data[:cut]


def insn_bytes(count: int) -> bytes:
    """C{count} instructions: C{count - 1} C{ld #0} then C{ret #0}."""
    return h("0000 00 00 00000000") * (count - 1) + h("0006 00 00 00000000")


def filter_block(ftype=1, pad=0, nitems=1, body=None):
    if body is None:
        body = insn_bytes(nitems)
    return struct.pack("!HHI", ftype, pad, nitems) + body


def startcap_payload(fixed=h("0000ffff 000003e8 0001 0000"), block=None):
    return fixed + (filter_block() if block is None else block)


def ifrecord(namelen=2, desclen=0, flags=0, naddr=1, name=b"lo", desc=b"", addrs=None):
    if addrs is None:
        addrs = sockaddr(h("0002 0000 7f000001")) + NO_SOCKADDR * 3
    return struct.pack("!HHIHH", namelen, desclen, flags, naddr, 0) + name + desc + addrs


def decode_payload(msg_type: int, payload: bytes, value: int = 0) -> Message:
    return decode_message(Header(0, msg_type, value, len(payload)), payload)


class DecoderErrorTests(SynchronousTestCase):
    """
    Each builder makes a valid payload from its defaults; each case changes
    one field, which must make the decoder raise L{MalformedMessage}.
    """

    def assertMalformed(self, msg_type: int, payload: bytes, value: int = 0) -> None:
        self.assertRaises(MalformedMessage, decode_payload, msg_type, payload, value)

    def test_authRequest(self) -> None:
        self.assertEqual(
            decode_payload(MessageType.AUTH_REQ, auth_payload()),
            AuthRequest(1, b"alice", b"s3cret"),
        )
        self.assertMalformed(MessageType.AUTH_REQ, auth_payload(cut=7))
        self.assertMalformed(MessageType.AUTH_REQ, auth_payload(len1=6))
        self.assertMalformed(MessageType.AUTH_REQ, auth_payload(len2=7))
        self.assertMalformed(MessageType.AUTH_REQ, auth_payload(creds=b"alices3cre"))

    def test_authReply(self) -> None:
        self.assertMalformed(MessageType.AUTH_REPLY, h("00"))

    def test_openReply(self) -> None:
        self.assertEqual(decode_payload(MessageType.OPEN_REPLY, h("00000071 00000000")), OpenReply(113, 0))
        self.assertMalformed(MessageType.OPEN_REPLY, h("00000071 000000"))

    def test_startcapRequest(self) -> None:
        self.assertEqual(
            decode_payload(MessageType.STARTCAP_REQ, startcap_payload()),
            StartCaptureRequest(65535, 1000, 1, 0, BpfProgram((BpfInstruction(6, 0, 0, 0),))),
        )
        # the fixed part is cut short
        self.assertMalformed(MessageType.STARTCAP_REQ, h("0000ffff 000003e8 0001 00"))
        # half a filter header
        self.assertMalformed(MessageType.STARTCAP_REQ, startcap_payload(block=h("0001 0000")))
        # filter types other than BPF
        self.assertMalformed(MessageType.STARTCAP_REQ, startcap_payload(block=filter_block(ftype=0)))
        self.assertMalformed(MessageType.STARTCAP_REQ, startcap_payload(block=filter_block(ftype=2)))
        # the program is shorter than nitems says
        self.assertMalformed(
            MessageType.STARTCAP_REQ,
            startcap_payload(block=filter_block(nitems=2, body=insn_bytes(1))),
        )
        self.assertMalformed(
            MessageType.STARTCAP_REQ,
            startcap_payload(block=filter_block(body=insn_bytes(1)[:7])),
        )

    def test_filterInstructionLimit(self) -> None:
        """
        8192 instructions are allowed; 8193 are refused even though they are
        all there.
        """
        limit = MAX_BPF_INSTRUCTIONS
        self.assertEqual(limit, 8192)
        ok = decode_payload(MessageType.STARTCAP_REQ, startcap_payload(block=filter_block(nitems=limit)))
        self.assertEqual(len(ok.filter.instructions), limit)
        for msg_type, build in (
            (MessageType.STARTCAP_REQ, lambda b: startcap_payload(block=b)),
            (MessageType.UPDATEFILTER_REQ, lambda b: b),
        ):
            self.assertMalformed(msg_type, build(filter_block(nitems=limit + 1)))
            # the count alone is enough: no need to wait for 64 KiB
            self.assertMalformed(msg_type, build(filter_block(nitems=0xFFFFFFFF, body=b"")))

    def test_updatefilterRequest(self) -> None:
        self.assertEqual(
            decode_payload(MessageType.UPDATEFILTER_REQ, filter_block(nitems=2)),
            UpdateFilterRequest(BpfProgram((BpfInstruction(0, 0, 0, 0), BpfInstruction(6, 0, 0, 0)))),
        )
        self.assertMalformed(MessageType.UPDATEFILTER_REQ, b"")
        self.assertMalformed(MessageType.UPDATEFILTER_REQ, filter_block()[:7])
        self.assertMalformed(MessageType.UPDATEFILTER_REQ, filter_block(ftype=3))
        self.assertMalformed(MessageType.UPDATEFILTER_REQ, filter_block(nitems=3, body=insn_bytes(2)))

    def test_fixedSizeReplies(self) -> None:
        """Each fixed-size payload one byte short."""
        for msg_type, full in (
            (MessageType.STARTCAP_REPLY, h("00100000 1f40 0000")),
            (MessageType.STATS_REPLY, h("00000001 00000002 00000003 00000004")),
            (MessageType.SETSAMPLING_REQ, h("01 00 0000 00000064")),
        ):
            self.assertIsInstance(decode_payload(msg_type, full), MESSAGE_CLASSES[msg_type])
            self.assertMalformed(msg_type, full[:-1])
            self.assertMalformed(msg_type, b"")

    def test_findalldevsReply(self) -> None:
        reply = MessageType.FINDALLIF_REPLY
        self.assertEqual(
            decode_payload(reply, ifrecord(), value=1),
            FindAllInterfacesReply(
                (InterfaceInfo("lo", "", 0, (InterfaceAddress(IPv4Address("127.0.0.1")),)),)
            ),
        )
        # the count says one interface, there is none
        self.assertMalformed(reply, b"", value=1)
        # ... or two, there is one
        self.assertMalformed(reply, ifrecord(), value=2)
        # the interface header is cut short
        self.assertMalformed(reply, ifrecord()[:6], value=1)
        # the name or the description is longer than what follows
        self.assertMalformed(reply, ifrecord(namelen=10, addrs=b""), value=1)
        self.assertMalformed(reply, ifrecord(desclen=3, naddr=0, addrs=b""), value=1)
        # an address record is cut short
        self.assertMalformed(reply, ifrecord(addrs=NO_SOCKADDR * 3), value=1)
        self.assertMalformed(reply, ifrecord(naddr=2), value=1)


class UnknownMessageTests(SynchronousTestCase):
    def test_unknownTypes(self) -> None:
        """
        Types with no message class (including data-channel types and replies
        nobody sends) decode to L{UnknownMessage}, which encodes back to the
        same bytes.
        """
        for msg_type in (0, 0x42, MessageType.PACKET, MessageType.UDPSTR, 0x81, 0x86, 0xFF):
            data = bytes([0, msg_type]) + h("0007 00000003") + b"abc"
            header, payload = split(data)
            message = decode_message(header, payload)
            self.assertEqual(message, UnknownMessage(msg_type, 7, b"abc"))
            self.assertEqual(message.encode(), data)


# --- Hypothesis strategies ---------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)

bpf_instructions = st.builds(BpfInstruction, code=u16, jt=u8, jf=u8, k=i32)
bpf_programs = st.lists(bpf_instructions, max_size=16).map(lambda insns: BpfProgram(tuple(insns)))

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
interface_addresses = st.one_of(
    st.builds(InterfaceAddress, ipv4, st.none() | ipv4, st.none() | ipv4, st.none() | ipv4, st.just(0)),
    st.builds(InterfaceAddress, ipv6, st.none() | ipv6, st.none() | ipv6, st.none() | ipv6, u32),
)
interface_infos = st.builds(
    InterfaceInfo,
    st.text(max_size=16),
    st.text(max_size=24),
    u32,
    st.lists(interface_addresses, max_size=3).map(tuple),
)
interface_lists = st.lists(interface_infos, max_size=5).map(tuple)

MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    ErrorReply: st.builds(ErrorReply, u16, st.text(max_size=64)),
    AuthRequest: st.builds(AuthRequest, u16, st.binary(max_size=40), st.binary(max_size=40)),
    AuthReply: st.builds(AuthReply, u8, u8, st.none() | u32),
    FindAllInterfacesRequest: st.just(FindAllInterfacesRequest()),
    FindAllInterfacesReply: st.builds(FindAllInterfacesReply, interface_lists),
    OpenRequest: st.builds(OpenRequest, st.text(max_size=32).filter(lambda s: not s.endswith("\0"))),
    OpenReply: st.builds(OpenReply, i32, i32),
    StartCaptureRequest: st.builds(StartCaptureRequest, u32, u32, u16, u16, st.none() | bpf_programs),
    StartCaptureReply: st.builds(StartCaptureReply, i32, u16),
    UpdateFilterRequest: st.builds(UpdateFilterRequest, bpf_programs),
    UpdateFilterReply: st.just(UpdateFilterReply()),
    StatsRequest: st.just(StatsRequest()),
    StatsReply: st.builds(StatsReply, u32, u32, u32, u32),
    EndCaptureRequest: st.just(EndCaptureRequest()),
    EndCaptureReply: st.just(EndCaptureReply()),
    SetSamplingRequest: st.builds(SetSamplingRequest, u8, u32),
    SetSamplingReply: st.just(SetSamplingReply()),
    CloseRequest: st.just(CloseRequest()),
}

messages = st.one_of(*MESSAGE_STRATEGIES.values())
"""Any control message this codec knows (used by the framing tests too)."""


class RoundTripTests(SynchronousTestCase):
    """decode(encode(m)) == m for every message class."""

    def assertRoundTrips(self, message: Message) -> None:
        data = message.encode()
        header, payload = split(data)
        self.assertEqual(header.version, 0)
        self.assertEqual(header.type, type(message).TYPE)
        self.assertEqual(header.length, len(payload))
        decoded = decode_message(header, payload)
        self.assertEqual(decoded, message)
        self.assertEqual(decoded.encode(), data)

    def test_everyClassHasAStrategy(self) -> None:
        self.assertEqual(set(MESSAGE_STRATEGIES), set(MESSAGE_CLASSES.values()))

    @given(interface_lists)
    def test_interfaceLists(self, interfaces: tuple[InterfaceInfo, ...]) -> None:
        """
        An interface list survives the trip; the header counts the
        interfaces and the payload is their records laid end to end.
        """
        message = FindAllInterfacesReply(interfaces)
        self.assertRoundTrips(message)
        header = Header.decode(message.encode())
        self.assertEqual(header.value, len(interfaces))
        self.assertEqual(
            header.length,
            sum(
                12
                + len(i.name.encode("utf-8", "surrogateescape"))
                + len(i.description.encode("utf-8", "surrogateescape"))
                + 4 * 128 * len(i.addresses)
                for i in interfaces
            ),
        )

    @given(st.binary(max_size=40), st.binary(max_size=40))
    def test_interfaceNamesAreBytes(self, name: bytes, desc: bytes) -> None:
        """
        Names and descriptions that are not UTF-8 survive unchanged.
        """
        data = ifrecord(len(name), len(desc), 0, 0, name, desc, b"")
        decoded = decode_payload(MessageType.FINDALLIF_REPLY, data, value=1)
        self.assertEqual(decoded.encode()[HEADER_SIZE:], data)

    @given(messages, st.data())
    def test_truncatedPayloads(self, message: Message, data: st.DataObject) -> None:
        """
        Any prefix of a valid payload decodes or raises L{MalformedMessage};
        never another exception.
        """
        header, payload = split(message.encode())
        cut = data.draw(st.integers(0, len(payload)))
        try:
            decoded = decode_payload(header.type, payload[:cut], header.value)
        except MalformedMessage:
            return
        self.assertIsInstance(decoded, type(message))

    @given(u8, u16, st.binary(max_size=600))
    def test_arbitraryPayloads(self, msg_type: int, value: int, payload: bytes) -> None:
        """Decoders raise nothing but L{MalformedMessage} on arbitrary bytes."""
        try:
            message = decode_payload(msg_type, payload, value)
        except MalformedMessage:
            return
        self.assertIsInstance(message, MESSAGE_CLASSES.get(msg_type, UnknownMessage))


def _roundtrip_test(strategy: st.SearchStrategy[Message]):
    @given(strategy)
    def test(self: RoundTripTests, message: Message) -> None:
        self.assertRoundTrips(message)

    return test


for _cls, _strategy in MESSAGE_STRATEGIES.items():
    _test = _roundtrip_test(_strategy)
    _test.__name__ = f"test_roundTrip_{_cls.__name__}"
    _test.__doc__ = f"L{{{_cls.__name__}}} survives encode and decode."
    setattr(RoundTripTests, _test.__name__, _test)
del _cls, _strategy, _test
