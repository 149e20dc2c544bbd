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
from typing import Iterable, Iterator, Optional

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


def implausible_lengths(caplen: int, length: int) -> Optional[str]:
    """
    Why a packet header's lengths cannot come from a capture (C{None} if
    they can): more bytes captured than the packet had, or more than any
    snaplen.  A daemon never sends such a packet; a file holding one is
    refused by tcpdump, so it is counted as malformed and skipped.  (The
    per-packet paths compare inline and ask this only for the why.)
    """
    if caplen > MAXIMUM_SNAPLEN:
        return f"caplen {caplen} is over the largest snaplen, {MAXIMUM_SNAPLEN}"
    if caplen > length:
        return f"caplen {caplen} is more than the packet's length, {length}"
    return None


def decode_packet_payload(payload: bytes) -> CapturedPacket:
    """
    Decode the payload of one type-7 message.

    @raise MalformedMessage: a header cut short, a caplen past the payload's
        end, or lengths no capture has (L{implausible_lengths}).
    """
    if len(payload) < PKTHDR_SIZE:
        raise MalformedMessage("packet header is truncated")
    sec, usec, caplen, length, npkt = PKTHDR.unpack_from(payload)
    if caplen > length or caplen > MAXIMUM_SNAPLEN:
        raise MalformedMessage(implausible_lengths(caplen, length))
    # Checked before slicing: nothing is sized from the peer's caplen.
    if PKTHDR_SIZE + caplen > len(payload):
        raise MalformedMessage("packet data is shorter than its caplen")
    return CapturedPacket(sec, usec, caplen, length, npkt, payload[PKTHDR_SIZE : PKTHDR_SIZE + caplen])


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


SEQUENCE_WINDOW = 1 << 16
"""
How far a packet (or udpstr datagram) number may run ahead of the one
expected and still count the ones between as lost: 65,536 packets are 65 ms
of a million packets a second, far more than a real burst of loss on a path
that works.  A jump further than that (either way) is not loss but a
number that cannot be trusted, a restarted sender or a forgery: it counts as
a resynchronisation, so one forged number cannot add 2**31 to a counter.
"""


class PacketSequence:
    """
    Follows a u32 sequence (wrapping) of packet or datagram numbers and
    counts what it says: C{lost} for the numbers skipped by a step ahead
    within L{SEQUENCE_WINDOW}; C{late} for numbers at most a window behind
    (late or repeated); C{resyncs} for jumps beyond the window.  A lone
    jump does not move the expected number, so the numbers that follow it
    as before are neither lost nor late; a second number that continues
    the jump confirms it, and the sequence goes on from there.
    """

    def __init__(self, first: int = 1, window: int = SEQUENCE_WINDOW) -> None:
        self.expected = first & _U32
        self.window = window
        self.lost = 0
        self.late = 0
        self.resyncs = 0
        self._jumped_to: Optional[int] = None  # the number that would confirm the last jump

    def see(self, number: int) -> bool:
        """
        Take C{number}; whether it is in sequence (the expected one, one
        ahead within the window, or one confirming a jump).
        """
        ahead = (number - self.expected) & _U32
        if ahead < self.window:
            self.lost += ahead
        elif ahead > _U32 - self.window:
            self.late += 1
            return False
        elif number == self._jumped_to:
            pass  # the jump was real: follow it (counted when it came)
        else:
            self.resyncs += 1
            self._jumped_to = (number + 1) & _U32
            return False
        self.expected = (number + 1) & _U32
        self._jumped_to = None
        return True

    def see_all(self, numbers: Iterable[int]) -> None:
        """
        L{see} each of C{numbers} in turn: one call for a datagram's or a
        batch's packets, the number expected taken without a call.
        """
        for number in numbers:
            if number == self.expected:
                self.expected = (number + 1) & _U32
                self._jumped_to = None
            else:
                self.see(number)


class ClassicDatagramDecoder:
    """
    Decodes classic UDP data datagrams (one type-7 message each) and counts
    the packets lost in transit from the gaps in their numbers (u32,
    wrapping, see L{PacketSequence}).  Every well-formed packet is
    delivered, late or not: one datagram is one whole packet.
    """

    def __init__(self) -> None:
        self.sequence = PacketSequence()
        self.malformed = 0

    @property
    def lost_packets(self) -> int:
        return self.sequence.lost

    @property
    def resyncs(self) -> int:
        return self.sequence.resyncs

    def feed(self, datagram: bytes) -> list[CapturedPacket]:
        if len(datagram) < HEADER_SIZE or datagram[1] != MessageType.PACKET:
            self.malformed += 1
            return []
        try:
            packet = decode_packet_payload(datagram[HEADER_SIZE:])
        except MalformedMessage:
            self.malformed += 1
            return []
        self.sequence.see(packet.npkt)
        return [packet]
