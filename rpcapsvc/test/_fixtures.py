"""
Helpers shared by rpcapsvc's unit tests: hex bytes, Ethernet/IPv4/TCP/UDP
frame builders, BPF programs compiled once by tcpdump and pasted here, the
interfaces of the fake capture system, the packets of the data-channel
tests, and a control connection driven over a C{StringTransport}.

Nothing here opens a socket or runs a capture.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHostResolution
from twisted.internet.testing import StringTransportWithDisconnection
from zope.interface import implementer

from rpcapsvc.protocol.datachannel import CapturedPacket
from rpcapsvc.protocol.framing import ControlStreamParser, Received
from rpcapsvc.protocol.wire import (
    BpfInstruction,
    BpfProgram,
    InterfaceAddress,
    InterfaceFlags,
    InterfaceInfo,
    Message,
)
from rpcapsvc.server.control import RpcapServerProtocol

Packet = tuple[int, int, bytes]


def h(text: str) -> bytes:
    """Bytes from hex digits, spaced and split over lines for readability."""
    return bytes.fromhex(text)


# --- frames ----------------------------------------------------------------------

# Destination and source MAC addresses of the frames L{ether_ipv4} builds.
ETH_ADDRS = b"\x02" * 6 + b"\x04" * 6


def internet_checksum(data: bytes) -> int:
    """The ones' complement checksum of IPv4 headers and ICMP (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(ethertype: int, payload: bytes, addresses: bytes = ETH_ADDRS) -> bytes:
    """An Ethernet frame: C{addresses} (destination and source MAC), C{ethertype}, C{payload}."""
    return addresses + ethertype.to_bytes(2, "big") + payload


def ipv4(
    proto: int,
    payload: bytes,
    src: str = "192.0.2.1",
    dst: str = "192.0.2.10",
    options: bytes = b"",
    frag: int = 0,
    ttl: int = 64,
) -> bytes:
    """An IPv4 header (version 4, IHL from the options, id 1, checksum 0) and C{payload}."""
    ihl = 5 + len(options) // 4
    return (
        bytes([0x40 | ihl, 0])
        + (ihl * 4 + len(payload)).to_bytes(2, "big")
        + h("0001")
        + frag.to_bytes(2, "big")
        + bytes([ttl, proto])
        + h("0000")
        + ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + options
        + payload
    )


def tcp(sport: int, dport: int, flags: int = 0x02, window: int = 0xFFFF, payload: bytes = b"") -> bytes:
    """A TCP header (seq 1, ack 0, no options, checksum 0) and C{payload}."""
    return (
        sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + h("00000001 00000000")
        + bytes([0x50, flags])
        + window.to_bytes(2, "big")
        + h("0000 0000")
        + payload
    )


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header (checksum 0) and C{payload}."""
    return (
        sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + (8 + len(payload)).to_bytes(2, "big")
        + h("0000")
        + payload
    )


def ether_ipv4(proto: int, payload: bytes, src: str = "192.0.2.1", dst: str = "192.0.2.10") -> bytes:
    """An Ethernet frame carrying an IPv4 packet of protocol C{proto} from C{src} to C{dst}."""
    return ether(0x0800, ipv4(proto, payload, src, dst))


def ether_ipv4_between(proto: int, src: str, dst: str, sport: int, dport: int, body: bytes = b"x") -> bytes:
    """An Ethernet/IPv4 frame of a TCP (6) or UDP (17) packet between two endpoints."""
    if proto == 17:
        l4 = udp(sport, dport, body)
    else:
        l4 = tcp(sport, dport, flags=0x18, window=512, payload=body)
    return ether_ipv4(proto, l4, src, dst)


# An ICMP echo request and a DNS query, as payloads for L{ether_ipv4}.
ICMP_ECHO = h("08 00 f7ff 0000 0000") + b"ping" * 10
DNS_QUERY = udp(1234, 53, b"dnsq")

# Both, from 192.0.2.1 to 192.0.2.10.
ICMP_PACKET = ether_ipv4(1, ICMP_ECHO)
UDP_PACKET = ether_ipv4(17, DNS_QUERY)


# --- BPF programs ----------------------------------------------------------------

# `tcpdump -ddd -y EN10MB icmp` (snaplen 262144)
ICMP_FILTER = BpfProgram(
    (
        BpfInstruction(0x28, 0, 0, 12),  # ldh [12]
        BpfInstruction(0x15, 0, 3, 0x800),  # jeq #0x800 jt 0 jf 3
        BpfInstruction(0x30, 0, 0, 23),  # ldb [23]
        BpfInstruction(0x15, 0, 1, 1),  # jeq #1 jt 0 jf 1
        BpfInstruction(0x06, 0, 0, 262144),  # ret #262144
        BpfInstruction(0x06, 0, 0, 0),  # ret #0
    )
)
# `tcpdump -ddd -y EN10MB udp`
UDP_FILTER = BpfProgram.from_tuples(
    [
        (40, 0, 0, 12), (21, 0, 2, 2048), (48, 0, 0, 23), (21, 6, 7, 17), (21, 0, 6, 34525),
        (48, 0, 0, 20), (21, 3, 0, 17), (21, 0, 3, 44), (48, 0, 0, 54), (21, 0, 1, 17),
        (6, 0, 0, 262144), (6, 0, 0, 0),
    ]
)  # fmt: skip
# A conditional jump past the end of the program (jt = 5 in a 2-instruction program).
JUMP_PAST_END = BpfProgram.from_tuples([(21, 5, 0, 1), (6, 0, 0, 0)])
# A program that never returns.
NO_RETURN = BpfProgram.from_tuples([(40, 0, 0, 12)])


# --- interfaces ------------------------------------------------------------------

LO = InterfaceInfo(
    "lo",
    "",
    InterfaceFlags.LOOPBACK | InterfaceFlags.UP | InterfaceFlags.RUNNING,
    (InterfaceAddress(ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("255.0.0.0")),),
)


def eth0(address: str, *more: InterfaceAddress) -> InterfaceInfo:
    """An Ethernet adapter, up and connected, at C{address}/24 (and at C{more})."""
    return InterfaceInfo(
        "eth0",
        "Ethernet adapter",
        InterfaceFlags.UP | InterfaceFlags.RUNNING | InterfaceFlags.CONNECTION_STATUS_CONNECTED,
        (
            InterfaceAddress(
                ipaddress.ip_address(address),
                ipaddress.ip_address("255.255.255.0"),
                ipaddress.ip_address("192.0.2.255"),
            ),
            *more,
        ),
    )


ETH0 = eth0("192.0.2.1")


# --- packets ---------------------------------------------------------------------

# Two packets of 10 and 3 bytes, npkt 1 and 2, and their type-7 packet headers:
# ts 1700000000 = 0x6553f100, 123456 us = 0x0001e240.
FRAME_A = bytes(range(10))
FRAME_B = b"\xbb\xcc\xdd"
PACKETS = [(1700000000, 123456, FRAME_A), (1700000001, 5, FRAME_B)]
PKTHDR_A = h("6553f100 0001e240 0000000a 0000000a 00000001")
PKTHDR_B = h("6553f101 00000005 00000003 00000003 00000002")


def captured(packets: list[Packet], snaplen: int = 65535, first_npkt: int = 1) -> list[CapturedPacket]:
    """What a receiver should deliver for C{packets}: cut to C{snaplen}, numbered from C{first_npkt}."""
    return [
        CapturedPacket(sec, usec, min(len(data), snaplen), len(data), first_npkt + n, data[:snaplen])
        for n, (sec, usec, data) in enumerate(packets)
    ]


# --- connections -----------------------------------------------------------------

PEER_HOST = "192.0.2.10"
LOCAL_HOST = "192.0.2.1"


class Client:
    """
    One control connection to C{factory}, seen from the client's side: from
    C{peer} (an address, or a host on port 5555) to L{LOCAL_HOST} port 2002.
    """

    def __init__(self, factory: Any, peer: Union[str, IAddress] = PEER_HOST) -> None:
        self.factory = factory
        if isinstance(peer, str):
            peer = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 5555)
        self.transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", LOCAL_HOST, 2002), peerAddress=peer
        )
        protocol: Optional[RpcapServerProtocol] = factory.buildProtocol(peer)
        assert protocol is not None
        self.protocol = protocol
        self.transport.protocol = protocol
        self.transport.connected = True  # type: ignore[attr-defined]
        protocol.makeConnection(self.transport)
        self.parser = ControlStreamParser()

    @property
    def session(self) -> Any:
        return self.protocol.session

    @property
    def connected(self) -> bool:
        return bool(self.transport.connected)  # type: ignore[attr-defined]

    def send(self, *messages: Union[Message, bytes]) -> None:
        for m in messages:
            self.protocol.dataReceived(m if isinstance(m, bytes) else m.encode())

    def received(self) -> list[Received]:
        data = self.transport.value()
        self.transport.clear()
        return self.parser.feed(data)

    def replies(self) -> list[Optional[Message]]:
        return [r.message for r in self.received()]

    def request(self, message: Union[Message, bytes]) -> Optional[Message]:
        """Send one request and return the single reply it got at once."""
        self.send(message)
        replies = self.replies()
        assert len(replies) == 1, f"expected one reply, got {replies!r}"
        return replies[0]


@implementer(IHostResolution)
class Resolution:
    """A host name resolution that has begun (and cannot be cancelled)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass
