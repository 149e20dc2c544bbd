"""
RPCAP wire format: constants, message classes and their byte encodings.

Pure data and bytes, no I/O.  Every control message is an 8-byte header
(``ver, type, value, plen``, network byte order) followed by ``plen`` bytes of
payload; see ``docs/protocol.md``.
Both directions are modelled so that the daemon and a collector share one
codec.  Decoders raise L{MalformedMessage} when a payload cannot be read; the
session turns that into an RPCAP error reply.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from typing import ClassVar, Optional, Union

import attrs

PROTOCOL_VERSION = 0
"""The only RPCAP version there is."""

BYTE_ORDER_MAGIC = 0xA1B2C3D4
"""Sent in the auth reply in the server's own byte order."""

REPLY_BIT = 0x80

HEADER = struct.Struct("!BBHI")
HEADER_SIZE = HEADER.size

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class MessageType(enum.IntEnum):
    ERROR = 1
    FINDALLIF_REQ = 2
    OPEN_REQ = 3
    STARTCAP_REQ = 4
    UPDATEFILTER_REQ = 5
    CLOSE = 6
    PACKET = 7
    AUTH_REQ = 8
    STATS_REQ = 9
    ENDCAP_REQ = 10
    SETSAMPLING_REQ = 11
    UDPSTR = 110  # ExtraHop's packed UDP datagrams (data channel only)

    FINDALLIF_REPLY = FINDALLIF_REQ | REPLY_BIT
    OPEN_REPLY = OPEN_REQ | REPLY_BIT
    STARTCAP_REPLY = STARTCAP_REQ | REPLY_BIT
    UPDATEFILTER_REPLY = UPDATEFILTER_REQ | REPLY_BIT
    AUTH_REPLY = AUTH_REQ | REPLY_BIT
    STATS_REPLY = STATS_REQ | REPLY_BIT
    ENDCAP_REPLY = ENDCAP_REQ | REPLY_BIT
    SETSAMPLING_REPLY = SETSAMPLING_REQ | REPLY_BIT


class ErrorCode(enum.IntEnum):
    NETWORK = 1
    INITTIMEOUT = 2
    AUTH = 3
    FINDALLIF = 4
    NOREMOTEIF = 5
    OPEN = 6
    UPDATEFILTER = 7
    GETSTATS = 8
    READEX = 9
    HOSTNOAUTH = 10
    REMOTEACCEPT = 11
    STARTCAPTURE = 12
    ENDCAPTURE = 13
    RUNTIMETIMEOUT = 14
    SETSAMPLING = 15
    WRONGMSG = 16
    WRONGVER = 17
    AUTH_FAILED = 18
    TLS_REQUIRED = 19
    AUTH_TYPE_NOTSUP = 20


class AuthType(enum.IntEnum):
    NULL = 0
    PASSWORD = 1


class StartCapFlags(enum.IntFlag):
    PROMISC = 1
    DGRAM = 2
    SERVEROPEN = 4
    INBOUND = 8
    OUTBOUND = 16


class InterfaceFlags(enum.IntFlag):
    """libpcap's ``PCAP_IF_*`` flags, as sent in a findalldevs reply."""

    LOOPBACK = 0x01
    UP = 0x02
    RUNNING = 0x04
    WIRELESS = 0x08
    CONNECTION_STATUS_UNKNOWN = 0x00
    CONNECTION_STATUS_CONNECTED = 0x10
    CONNECTION_STATUS_DISCONNECTED = 0x20
    CONNECTION_STATUS_NOT_APPLICABLE = 0x30


class SamplingMethod(enum.IntEnum):
    NONE = 0
    EVERY_N = 1
    FIRST_AFTER_N_MS = 2


FILTER_TYPE_BPF = 1
MAX_BPF_INSTRUCTIONS = 8192
"""libpcap's server refuses longer programs; so do we."""


class RpcapError(Exception):
    """Root of the errors this package raises about RPCAP traffic."""


class MalformedMessage(RpcapError):
    """The peer sent something that is not a valid RPCAP message."""


class RemoteError(RpcapError):
    """The peer answered with an RPCAP error message."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"RPCAP error {code}: {text}")
        self.code = code
        self.text = text


@attrs.frozen
class Header:
    version: int
    type: int
    value: int
    length: int

    def encode(self) -> bytes:
        return HEADER.pack(self.version, self.type, self.value, self.length)

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER_SIZE:
            raise MalformedMessage("header shorter than 8 bytes")
        return cls(*HEADER.unpack_from(data))


def frame(msg_type: int, payload: bytes = b"", value: int = 0) -> bytes:
    """A whole control message: header then payload."""
    return HEADER.pack(PROTOCOL_VERSION, msg_type, value, len(payload)) + payload


# --- BPF filter blocks -----------------------------------------------------

BPF_INSN = struct.Struct("!HBBi")
FILTER_HEADER = struct.Struct("!HHI")


@attrs.frozen
class BpfInstruction:
    code: int
    jt: int
    jf: int
    k: int


@attrs.frozen
class BpfProgram:
    """A compiled classic BPF program as carried by startcap and updatefilter."""

    instructions: tuple[BpfInstruction, ...] = ()

    def encode(self) -> bytes:
        parts = [FILTER_HEADER.pack(FILTER_TYPE_BPF, 0, len(self.instructions))]
        parts.extend(BPF_INSN.pack(i.code, i.jt, i.jf, i.k) for i in self.instructions)
        return b"".join(parts)

    @classmethod
    def from_tuples(cls, insns: "list[tuple[int, int, int, int]]") -> BpfProgram:
        return cls(tuple(BpfInstruction(*i) for i in insns))


def decode_filter_block(data: bytes, offset: int = 0) -> Optional[BpfProgram]:
    """
    Decode a filter block at C{offset}; C{None} when the block is missing
    altogether (libpcap-compatible servers tolerate that).
    """
    if len(data) == offset:
        return None
    if len(data) - offset < FILTER_HEADER.size:
        raise MalformedMessage("truncated filter header")
    ftype, _, nitems = FILTER_HEADER.unpack_from(data, offset)
    if ftype != FILTER_TYPE_BPF:
        raise MalformedMessage(f"unsupported filter type {ftype}")
    if nitems > MAX_BPF_INSTRUCTIONS:
        raise MalformedMessage(f"filter has {nitems} instructions, more than {MAX_BPF_INSTRUCTIONS}")
    start = offset + FILTER_HEADER.size
    if len(data) - start < nitems * BPF_INSN.size:
        raise MalformedMessage("filter program is truncated")
    insns = tuple(
        BpfInstruction(*BPF_INSN.unpack_from(data, start + n * BPF_INSN.size)) for n in range(nitems)
    )
    return BpfProgram(insns)


# --- sockaddrs as findalldevs sends them -------------------------------------

SOCKADDR_SIZE = 128
FAMILY_INET = 2
FAMILY_INET6 = 23  # the Windows value, used by RPCAP on every OS
_SOCKADDR_IN = struct.Struct("!HH4s8x")
_SOCKADDR_IN6 = struct.Struct("!HHI16sI")


def encode_sockaddr(address: Optional[IPAddress], scope_id: int = 0) -> bytes:
    if address is None:
        return bytes(SOCKADDR_SIZE)
    if address.version == 4:
        raw = _SOCKADDR_IN.pack(FAMILY_INET, 0, address.packed)
    else:
        raw = _SOCKADDR_IN6.pack(FAMILY_INET6, 0, 0, address.packed, scope_id)
    return raw.ljust(SOCKADDR_SIZE, b"\0")


def decode_sockaddr(data: bytes, offset: int) -> tuple[Optional[IPAddress], int]:
    """Returns the address (C{None} for an absent or unknown one) and scope id."""
    (family,) = struct.unpack_from("!H", data, offset)
    if family == FAMILY_INET:
        _, _, packed = _SOCKADDR_IN.unpack_from(data, offset)
        return ipaddress.IPv4Address(packed), 0
    if family in (FAMILY_INET6, socket.AF_INET6):
        _, _, _, packed, scope = _SOCKADDR_IN6.unpack_from(data, offset)
        return ipaddress.IPv6Address(packed), scope
    return None, 0


@attrs.frozen
class InterfaceAddress:
    address: IPAddress
    netmask: Optional[IPAddress] = None
    broadcast: Optional[IPAddress] = None
    destination: Optional[IPAddress] = None
    scope_id: int = 0

    def encode(self) -> bytes:
        return b"".join(
            (
                encode_sockaddr(self.address, self.scope_id),
                encode_sockaddr(self.netmask),
                encode_sockaddr(self.broadcast),
                encode_sockaddr(self.destination),
            )
        )


@attrs.frozen
class InterfaceInfo:
    name: str
    description: str = ""
    flags: int = 0
    addresses: tuple[InterfaceAddress, ...] = ()


_IFHDR = struct.Struct("!HHIHH")


# --- messages ----------------------------------------------------------------


class Message:
    """Base of every control message class."""

    TYPE: ClassVar[int]

    def payload(self) -> bytes:
        return b""

    def header_value(self) -> int:
        return 0

    def encode(self) -> bytes:
        return frame(self.TYPE, self.payload(), self.header_value())

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> Message:
        return cls()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@attrs.frozen
class ErrorReply(Message):
    TYPE = MessageType.ERROR
    code: int
    text: str

    def payload(self) -> bytes:
        return self.text.encode("utf-8")

    def header_value(self) -> int:
        return self.code

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> ErrorReply:
        return cls(header.value, _text(payload))


_AUTH = struct.Struct("!HHHH")


@attrs.frozen
class AuthRequest(Message):
    TYPE = MessageType.AUTH_REQ
    auth_type: int
    username: bytes = b""
    password: bytes = attrs.field(default=b"", repr=False)

    def payload(self) -> bytes:
        return (
            _AUTH.pack(self.auth_type, 0, len(self.username), len(self.password))
            + self.username
            + self.password
        )

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> AuthRequest:
        if len(payload) < _AUTH.size:
            raise MalformedMessage("auth request is shorter than its fixed part")
        auth_type, _, len1, len2 = _AUTH.unpack_from(payload)
        if _AUTH.size + len1 + len2 > len(payload):
            raise MalformedMessage("auth request credentials are truncated")
        user = payload[_AUTH.size : _AUTH.size + len1]
        password = payload[_AUTH.size + len1 : _AUTH.size + len1 + len2]
        return cls(auth_type, user, password)


_AUTH_REPLY = struct.Struct("!BBxx")


@attrs.frozen
class AuthReply(Message):
    TYPE = MessageType.AUTH_REPLY
    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    byte_order_magic: Optional[int] = BYTE_ORDER_MAGIC
    """As read back: the magic in the byte order the peer wrote it."""

    def payload(self) -> bytes:
        # The magic goes in *our* byte order: the client compares it with both
        # byte orders to learn ours.
        magic = b"" if self.byte_order_magic is None else struct.pack("=I", self.byte_order_magic)
        return _AUTH_REPLY.pack(self.min_version, self.max_version) + magic

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> AuthReply:
        if len(payload) == 0:  # the oldest servers send an empty reply
            return cls(PROTOCOL_VERSION, PROTOCOL_VERSION, None)
        if len(payload) < 2:
            raise MalformedMessage("auth reply is truncated")
        minv, maxv = payload[0], payload[1]
        magic = None
        if len(payload) >= 8:
            (magic,) = struct.unpack_from("=I", payload, 4)
        return cls(minv, maxv, magic)


@attrs.frozen
class FindAllInterfacesRequest(Message):
    TYPE = MessageType.FINDALLIF_REQ


@attrs.frozen
class FindAllInterfacesReply(Message):
    TYPE = MessageType.FINDALLIF_REPLY
    interfaces: tuple[InterfaceInfo, ...] = ()

    def header_value(self) -> int:
        return len(self.interfaces)

    def payload(self) -> bytes:
        parts = []
        for iface in self.interfaces:
            name = iface.name.encode("utf-8", "surrogateescape")
            desc = iface.description.encode("utf-8", "surrogateescape")
            parts.append(_IFHDR.pack(len(name), len(desc), iface.flags, len(iface.addresses), 0))
            parts.append(name)
            parts.append(desc)
            parts.extend(a.encode() for a in iface.addresses)
        return b"".join(parts)

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> FindAllInterfacesReply:
        interfaces = []
        offset = 0
        try:
            for _ in range(header.value):
                namelen, desclen, flags, naddr, _ = _IFHDR.unpack_from(payload, offset)
                offset += _IFHDR.size
                name = payload[offset : offset + namelen]
                offset += namelen
                desc = payload[offset : offset + desclen]
                offset += desclen
                if len(name) != namelen or len(desc) != desclen:
                    raise MalformedMessage("interface name or description is truncated")
                addresses = []
                for _ in range(naddr):
                    if len(payload) - offset < 4 * SOCKADDR_SIZE:
                        raise MalformedMessage("interface address is truncated")
                    addr, scope = decode_sockaddr(payload, offset)
                    mask, _ = decode_sockaddr(payload, offset + SOCKADDR_SIZE)
                    bcast, _ = decode_sockaddr(payload, offset + 2 * SOCKADDR_SIZE)
                    dst, _ = decode_sockaddr(payload, offset + 3 * SOCKADDR_SIZE)
                    offset += 4 * SOCKADDR_SIZE
                    if addr is not None:
                        addresses.append(InterfaceAddress(addr, mask, bcast, dst, scope))
                interfaces.append(
                    InterfaceInfo(
                        name.decode("utf-8", "surrogateescape"),
                        desc.decode("utf-8", "surrogateescape"),
                        flags,
                        tuple(addresses),
                    )
                )
        except struct.error as e:
            raise MalformedMessage(f"findalldevs reply is truncated: {e}") from e
        return cls(tuple(interfaces))


@attrs.frozen
class OpenRequest(Message):
    TYPE = MessageType.OPEN_REQ
    device: str

    def payload(self) -> bytes:
        return self.device.encode("utf-8", "surrogateescape")

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> OpenRequest:
        # libpcap sends no terminator; tolerate one anyway.
        return cls(payload.rstrip(b"\0").decode("utf-8", "surrogateescape"))


_OPEN_REPLY = struct.Struct("!ii")


@attrs.frozen
class OpenReply(Message):
    TYPE = MessageType.OPEN_REPLY
    linktype: int
    tzoff: int = 0

    def payload(self) -> bytes:
        return _OPEN_REPLY.pack(self.linktype, self.tzoff)

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> OpenReply:
        if len(payload) < _OPEN_REPLY.size:
            raise MalformedMessage("open reply is truncated")
        return cls(*_OPEN_REPLY.unpack_from(payload))


_STARTCAP = struct.Struct("!IIHH")


@attrs.frozen
class StartCaptureRequest(Message):
    TYPE = MessageType.STARTCAP_REQ
    snaplen: int
    read_timeout_ms: int
    flags: int
    portdata: int
    filter: Optional[BpfProgram] = None
    """C{None} when the request carried no filter block at all."""

    def payload(self) -> bytes:
        fixed = _STARTCAP.pack(self.snaplen, self.read_timeout_ms, self.flags, self.portdata)
        if self.filter is None:
            return fixed
        return fixed + self.filter.encode()

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> StartCaptureRequest:
        if len(payload) < _STARTCAP.size:
            raise MalformedMessage("startcap request is shorter than its fixed part")
        snaplen, timeout, flags, port = _STARTCAP.unpack_from(payload)
        return cls(snaplen, timeout, flags, port, decode_filter_block(payload, _STARTCAP.size))

    @property
    def flag_set(self) -> StartCapFlags:
        return StartCapFlags(self.flags & 0x1F)


_STARTCAP_REPLY = struct.Struct("!iHxx")


@attrs.frozen
class StartCaptureReply(Message):
    TYPE = MessageType.STARTCAP_REPLY
    bufsize: int
    portdata: int

    def payload(self) -> bytes:
        return _STARTCAP_REPLY.pack(self.bufsize, self.portdata)

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> StartCaptureReply:
        if len(payload) < _STARTCAP_REPLY.size:
            raise MalformedMessage("startcap reply is truncated")
        return cls(*_STARTCAP_REPLY.unpack_from(payload))


@attrs.frozen
class UpdateFilterRequest(Message):
    TYPE = MessageType.UPDATEFILTER_REQ
    filter: BpfProgram

    def payload(self) -> bytes:
        return self.filter.encode()

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> UpdateFilterRequest:
        program = decode_filter_block(payload)
        if program is None:
            raise MalformedMessage("updatefilter request carries no filter")
        return cls(program)


@attrs.frozen
class UpdateFilterReply(Message):
    TYPE = MessageType.UPDATEFILTER_REPLY


@attrs.frozen
class StatsRequest(Message):
    TYPE = MessageType.STATS_REQ


_STATS = struct.Struct("!IIII")


@attrs.frozen
class StatsReply(Message):
    TYPE = MessageType.STATS_REPLY
    ifrecv: int
    ifdrop: int
    krnldrop: int
    svrcapt: int

    @property
    def dropped(self) -> int:
        """Every packet the daemon's side lost: at the interface and in its kernel (or its UDP sends)."""
        return self.ifdrop + self.krnldrop

    def payload(self) -> bytes:
        m = 0xFFFFFFFF
        return _STATS.pack(self.ifrecv & m, self.ifdrop & m, self.krnldrop & m, self.svrcapt & m)

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> StatsReply:
        if len(payload) < _STATS.size:
            raise MalformedMessage("stats reply is truncated")
        return cls(*_STATS.unpack_from(payload))


@attrs.frozen
class EndCaptureRequest(Message):
    TYPE = MessageType.ENDCAP_REQ


@attrs.frozen
class EndCaptureReply(Message):
    TYPE = MessageType.ENDCAP_REPLY


_SAMPLING = struct.Struct("!BxxxI")


@attrs.frozen
class SetSamplingRequest(Message):
    TYPE = MessageType.SETSAMPLING_REQ
    method: int
    value: int

    def payload(self) -> bytes:
        return _SAMPLING.pack(self.method, self.value)

    @classmethod
    def decode(cls, header: Header, payload: bytes) -> SetSamplingRequest:
        if len(payload) < _SAMPLING.size:
            raise MalformedMessage("setsampling request is truncated")
        return cls(*_SAMPLING.unpack_from(payload))


@attrs.frozen
class SetSamplingReply(Message):
    TYPE = MessageType.SETSAMPLING_REPLY


@attrs.frozen
class CloseRequest(Message):
    TYPE = MessageType.CLOSE


@attrs.frozen
class UnknownMessage(Message):
    """A well-framed message of a type this codec does not know."""

    TYPE = 0
    type: int
    value: int
    body: bytes

    def encode(self) -> bytes:
        return frame(self.type, self.body, self.value)


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        ErrorReply,
        AuthRequest,
        AuthReply,
        FindAllInterfacesRequest,
        FindAllInterfacesReply,
        OpenRequest,
        OpenReply,
        StartCaptureRequest,
        StartCaptureReply,
        UpdateFilterRequest,
        UpdateFilterReply,
        StatsRequest,
        StatsReply,
        EndCaptureRequest,
        EndCaptureReply,
        SetSamplingRequest,
        SetSamplingReply,
        CloseRequest,
    )
}


def decode_message(header: Header, payload: bytes) -> Message:
    """Decode one framed control message; unknown types become L{UnknownMessage}."""
    cls = MESSAGE_CLASSES.get(header.type)
    if cls is None:
        return UnknownMessage(header.type, header.value, payload)
    return cls.decode(header, payload)
