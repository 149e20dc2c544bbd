"""
Data-channel framing for captured packets (the classic RPCAP format).

Each packet is a type-7 message: the 8-byte RPCAP header, a 20-byte
C{rpcap_pkthdr} (C{ts_sec, ts_usec, caplen, len, npkt}) and the captured
bytes.  The encoder works on a whole batch at a time in the layout pcapy-ng's
C{next_batch} returns, so the per-packet work is one C{struct} pack and a
slice.
"""

from __future__ import annotations

import struct
from typing import Iterator, Optional

import attrs

from .bpf import MAXIMUM_SNAPLEN
from .wire import HEADER_SIZE, PROTOCOL_VERSION, MalformedMessage, MessageType

PKTHDR = struct.Struct("!IIIII")
PKTHDR_SIZE = PKTHDR.size
_PACKET_MESSAGE_HEAD = struct.Struct("!BBHIIIIII")
BATCH_RECORD = struct.Struct("=IIII")
"""pcapy-ng's per-packet batch record: ts_sec, ts_usec, offset, caplen."""
_U32 = 0xFFFFFFFF


@attrs.frozen
class CapturedPacket:
    ts_sec: int
    ts_usec: int
    caplen: int
    length: int
    npkt: int
    data: bytes


@attrs.frozen
class PacketBatch:
    """
    Packets read in one go: C{data} holds their bytes back to back and
    C{records} one L{BATCH_RECORD} per packet.  The wire length of each
    packet is its caplen here, since the daemon captures whole frames and
    applies the client's snaplen itself.
    """

    data: bytes
    records: bytes

    def __len__(self) -> int:
        return len(self.records) // BATCH_RECORD.size

    @classmethod
    def from_packets(cls, packets: list[tuple[int, int, bytes]]) -> PacketBatch:
        """Build a batch from C{(ts_sec, ts_usec, bytes)} tuples (tests, fakes)."""
        data = bytearray()
        records = bytearray()
        for sec, usec, payload in packets:
            records += BATCH_RECORD.pack(sec, usec, len(data), len(payload))
            data += payload
        return cls(bytes(data), bytes(records))


def encode_packet_messages(batch: PacketBatch, snaplen: int, first_npkt: int) -> list[bytes]:
    """
    One whole type-7 message per packet of C{batch}, packets numbered from
    C{first_npkt}, each cut to C{snaplen} bytes.
    """
    head = _PACKET_MESSAGE_HEAD.pack
    data = batch.data
    out = []
    npkt = first_npkt & _U32  # a u32 on the wire: wraps like libpcap's counter
    for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records):
        caplen = length if length <= snaplen else snaplen
        out.append(
            head(
                PROTOCOL_VERSION,
                MessageType.PACKET,
                0,
                PKTHDR_SIZE + caplen,
                sec,
                usec,
                caplen,
                length,
                npkt,
            )
            + data[off : off + caplen]
        )
        npkt = (npkt + 1) & _U32
    return out


def encode_packet_stream(batch: PacketBatch, snaplen: int, first_npkt: int) -> bytes:
    """
    The whole batch as one run of type-7 messages, for a TCP data channel:
    each packet's bytes are copied once, straight into the result.
    """
    head = _PACKET_MESSAGE_HEAD.pack
    view = memoryview(batch.data)
    parts: list[bytes | memoryview] = []
    append = parts.append
    npkt = first_npkt & _U32
    for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records):
        caplen = length if length <= snaplen else snaplen
        append(
            head(
                PROTOCOL_VERSION, MessageType.PACKET, 0, PKTHDR_SIZE + caplen, sec, usec, caplen, length, npkt
            )
        )
        append(view[off : off + caplen])
        npkt = (npkt + 1) & _U32
    return b"".join(parts)


def encode_packet_records(batch: PacketBatch, snaplen: int, first_npkt: int) -> bytes:
    """
    The udpstr stream form: C{rpcap_pkthdr} + bytes per packet, no RPCAP
    header, all concatenated.
    """
    pack = PKTHDR.pack
    data = batch.data
    parts = []
    npkt = first_npkt & _U32  # a u32 on the wire: wraps like libpcap's counter
    for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records):
        caplen = length if length <= snaplen else snaplen
        parts.append(pack(sec, usec, caplen, length, npkt))
        parts.append(data[off : off + caplen])
        npkt = (npkt + 1) & _U32
    return b"".join(parts)


def decode_packet_payload(payload: bytes) -> CapturedPacket:
    """Decode the payload of one type-7 message."""
    if len(payload) < PKTHDR_SIZE:
        raise MalformedMessage("packet header is truncated")
    sec, usec, caplen, length, npkt = PKTHDR.unpack_from(payload)
    body = payload[PKTHDR_SIZE : PKTHDR_SIZE + caplen]
    if len(body) != caplen:
        raise MalformedMessage("packet data is shorter than its caplen")
    return CapturedPacket(sec, usec, caplen, length, npkt, body)


def iter_packet_messages(stream: bytes) -> Iterator[CapturedPacket]:
    """Decode a run of complete type-7 messages (a TCP data stream, a test)."""
    offset = 0
    while offset < len(stream):
        _, mtype, _, plen = struct.unpack_from("!BBHI", stream, offset)
        if mtype != MessageType.PACKET:
            raise MalformedMessage(f"unexpected message type {mtype} on data channel")
        yield decode_packet_payload(stream[offset + HEADER_SIZE : offset + HEADER_SIZE + plen])
        offset += HEADER_SIZE + plen


MAX_PACKET_MESSAGE = HEADER_SIZE + PKTHDR_SIZE + MAXIMUM_SNAPLEN
"""The largest type-7 message a daemon sends (a whole 256 KiB frame)."""


class PacketStreamParser:
    """
    Frames the type-7 messages of a TCP data channel as they arrive,
    buffering at most one message.  Anything else on the channel, or a
    message larger than any frame, sets C{error}: the stream cannot be
    followed past it, and the parser takes nothing more.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.malformed = 0
        """Packet messages whose payload did not decode (skipped)."""
        self.error: Optional[str] = None

    def feed(self, data: bytes) -> list[CapturedPacket]:
        """The packets C{data} completes (those before any error included)."""
        if self.error is not None:
            return []
        buf = self._buffer
        buf += data
        offset = 0
        packets: list[CapturedPacket] = []
        while len(buf) - offset >= HEADER_SIZE:
            _, mtype, _, plen = struct.unpack_from("!BBHI", buf, offset)
            if mtype != MessageType.PACKET or plen > MAX_PACKET_MESSAGE:
                self.error = f"unexpected message (type {mtype}, {plen} bytes) on the data channel"
                buf.clear()
                return packets
            end = offset + HEADER_SIZE + plen
            if len(buf) < end:
                break
            try:
                packets.append(decode_packet_payload(bytes(buf[offset + HEADER_SIZE : end])))
            except MalformedMessage:
                self.malformed += 1
            offset = end
        del buf[:offset]
        return packets


class ClassicDatagramDecoder:
    """
    Decodes classic UDP data datagrams (one type-7 message each) and counts
    the packets lost in transit from the gaps in their numbers (u32, wrapping).
    """

    def __init__(self) -> None:
        self.lost_packets = 0
        self.malformed = 0
        self._next_npkt = 1

    def feed(self, datagram: bytes) -> list[CapturedPacket]:
        if len(datagram) < HEADER_SIZE or datagram[1] != MessageType.PACKET:
            self.malformed += 1
            return []
        try:
            packet = decode_packet_payload(datagram[HEADER_SIZE:])
        except MalformedMessage:
            self.malformed += 1
            return []
        ahead = (packet.npkt - self._next_npkt) & _U32
        if ahead < 1 << 31:  # this one or a later one: the ones between are lost
            self.lost_packets += ahead
            self._next_npkt = (packet.npkt + 1) & _U32
        return [packet]
