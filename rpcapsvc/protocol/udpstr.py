"""
ExtraHop's udpstr data-channel format: captured packets packed into UDP
datagrams.

Each datagram payload is at most C{mtu} bytes: an 8-byte header
C{ver=0, type=110, firsthdridx, seqno} (network byte order), then a slice of
the packet stream, which is C{rpcap_pkthdr} + captured bytes per packet, back
to back (the stream L{encode_packet_records} builds).  C{firsthdridx} is the
offset, counted from the start of the payload with the header included, of
the first packet header that begins in the datagram, C{0xFFFF} when none
does; the bytes before it finish a packet begun in an earlier datagram.
C{seqno} counts datagrams from 0 for each capture.

The framer cuts the stream as the fork's C{daemon_udpstr_write} does, so the
datagrams are the same bytes the fork would send: data is appended to the
current datagram and, as soon as it holds at least C{mtu - 28} bytes, the
datagram goes out, cut at C{mtu} bytes; the cut-off rest of the last packet
opens the next datagram.  A packet therefore always starts with more than 28
bytes of room, so its 20-byte header is never split, and a datagram may be
shorter than the MTU.  (Unlike the fork, the framer has no 32-entry iovec
array, which in the fork's single-threaded mode also sends a datagram once
it holds 15 packets; the format is the same either way.)

The decoder reassembles packets, and after a lost datagram discards the
packet in progress and picks the stream up again at the next C{firsthdridx}.
It never raises on what it is fed: a datagram from an untrusted UDP socket
that does not make sense is counted in C{malformed} and skipped.

Pure code, no I/O; see C{docs/protocol.md}.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from itertools import accumulate, repeat
from operator import add
from typing import Optional

import attrs

from .bpf import MAXIMUM_SNAPLEN
from .datachannel import (
    BATCH_RECORD,
    PKTHDR,
    PKTHDR_SIZE,
    CapturedPacket,
    PacketBatch,
    encode_packet_records,
)
from .wire import PROTOCOL_VERSION, MessageType

UDPSTR_HEADER = struct.Struct("!BBHI")
"""ver, type, firsthdridx, seqno."""
UDPSTR_HEADER_SIZE = UDPSTR_HEADER.size
NO_FIRST_HEADER = 0xFFFF
"""C{firsthdridx} of a datagram in which no packet header begins."""

DEFAULT_MTU = 1472
"""The fork's default: a 1500-byte Ethernet MTU less the IPv4 and UDP headers."""
MAX_MTU = 65507
"""The largest UDP payload over IPv4; also keeps every offset below 0xFFFF."""
MIN_MTU = 64
"""
A datagram is sent once fewer than 28 bytes of room are left, so at an MTU
of 36 or less even an empty one counts as full and the fork's loop never
ends; 64 leaves room for a header, a packet header and a few bytes more, and
anything smaller is a configuration mistake rather than a network's MTU.
"""
MAX_CAPLEN = MAXIMUM_SNAPLEN
"""libpcap's largest snapshot length; a longer caplen marks a corrupt datagram."""

_SEND_MARGIN = UDPSTR_HEADER_SIZE + PKTHDR_SIZE  # 28: the fork's "room for one more header"
_U32 = 0xFFFFFFFF
_HALF_U32 = 0x80000000


def is_udpstr_datagram(data: bytes) -> bool:
    """
    Whether C{data} starts with a udpstr header (version 0, type 110) rather
    than a classic type-7 packet message or anything else.
    """
    return len(data) >= UDPSTR_HEADER_SIZE and data[0] == PROTOCOL_VERSION and data[1] == MessageType.UDPSTR


def _check_mtu(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not MIN_MTU <= value <= MAX_MTU:
        raise ValueError(f"udpstr MTU must be between {MIN_MTU} and {MAX_MTU}, not {value}")


@attrs.define
class UdpStrFramer:
    """
    Packs the packets of one capture into udpstr datagram payloads.

    Call L{pack_batch} for each batch read and send what it returns; call
    L{flush} when the capture goes quiet, so that the partly filled datagram
    is not held back.
    """

    mtu: int = attrs.field(validator=_check_mtu)
    _pending: bytes = attrs.field(default=b"", init=False)
    """Stream bytes of the datagram being filled, always fewer than C{mtu - 36}."""
    _first: Optional[int] = attrs.field(default=None, init=False)
    """Offset in C{_pending} of the first packet header, if one begins there."""
    _seqno: int = attrs.field(default=0, init=False)

    @property
    def pending(self) -> int:
        """Stream bytes waiting in the partly filled datagram."""
        return len(self._pending)

    @property
    def next_seqno(self) -> int:
        """The C{seqno} the next datagram will carry."""
        return self._seqno

    def pack_batch(self, batch: PacketBatch, snaplen: int, first_npkt: int) -> list[bytes]:
        """
        Add the packets of C{batch}, numbered from C{first_npkt} and cut to
        C{snaplen}, and return the datagrams they complete, in order.  What
        does not fill a datagram yet waits for the next batch or L{flush}.
        """
        if not batch.records:
            return []
        records = encode_packet_records(batch, snaplen, first_npkt)
        pending = self._pending
        base = len(pending)
        # Positions in the stream `pending + records`: bounds[i] is where
        # packet i of the batch starts, bounds[i + 1] where it ends.  Built
        # from the caplens (native u32s, as "=I" is) by C-level iterators,
        # so the only per-packet bytecode is encode_packet_records' loop;
        # the cuts below cost a bisection per datagram.
        caplens = memoryview(batch.records).cast("I")[BATCH_RECORD.size // 4 - 1 :: BATCH_RECORD.size // 4]
        sizes = map(add, map(min, caplens, repeat(snaplen)), repeat(PKTHDR_SIZE))
        bounds = list(accumulate(sizes, initial=base))
        count = len(bounds) - 1
        full = self.mtu - _SEND_MARGIN - UDPSTR_HEADER_SIZE  # stream bytes that make a datagram due
        capacity = self.mtu - UDPSTR_HEADER_SIZE
        view = memoryview(records)
        pack = UDPSTR_HEADER.pack
        seqno = self._seqno
        out = []
        start = 0  # stream position where the current datagram begins
        end_index = 1  # bounds[1:] are packet ends
        first_index = 0  # bounds[:count] are packet starts
        while True:
            # The datagram goes out at the first packet end that fills it,
            # cut at the capacity if that packet runs past it.
            end_index = bisect_left(bounds, start + full, end_index)
            if end_index > count:
                break
            cut = bounds[end_index]
            if cut > start + capacity:
                cut = start + capacity
            if start == 0 and self._first is not None:
                first = UDPSTR_HEADER_SIZE + self._first
            else:
                first_index = bisect_left(bounds, start, first_index, count)
                if first_index < count and bounds[first_index] < cut:
                    first = UDPSTR_HEADER_SIZE + bounds[first_index] - start
                else:
                    first = NO_FIRST_HEADER
            head = pack(PROTOCOL_VERSION, MessageType.UDPSTR, first, seqno)
            if start == 0:
                # Only the first datagram can hold pending bytes: they are
                # fewer than `full`, and every cut lies past `full`.
                out.append(b"".join((head, pending, view[: cut - base])))
            else:
                out.append(b"".join((head, view[start - base : cut - base])))
            seqno = (seqno + 1) & _U32
            start = cut
        self._seqno = seqno
        if start == 0:
            self._pending = pending + records
            if self._first is None:
                self._first = base
        else:
            self._pending = bytes(view[start - base :])
            first_index = bisect_left(bounds, start, first_index, count)
            self._first = bounds[first_index] - start if first_index < count else None
        return out

    def flush(self) -> Optional[bytes]:
        """
        The partly filled datagram, or C{None} if there is nothing waiting
        (the fork sends no datagram without packet bytes either).
        """
        if not self._pending:
            return None
        first = NO_FIRST_HEADER if self._first is None else UDPSTR_HEADER_SIZE + self._first
        datagram = (
            UDPSTR_HEADER.pack(PROTOCOL_VERSION, MessageType.UDPSTR, first, self._seqno) + self._pending
        )
        self._seqno = (self._seqno + 1) & _U32
        self._pending = b""
        self._first = None
        return datagram


class _Corrupt(Exception):
    """Internal: the datagram being read contradicts itself or the stream."""


@attrs.define
class UdpStrDecoder:
    """
    Reassembles packets from the udpstr datagrams of one capture.

    Counters: C{lost_datagrams} from gaps in C{seqno}; C{lost_packets} from
    gaps in the C{npkt} of the packets delivered (numbered from 1 per
    capture), so it covers packets lost to any cause once a later packet
    arrives; C{stale_datagrams} for datagrams older than expected, which are
    late or duplicated and are dropped (telling the two apart would mean
    keeping a history of seqnos); C{malformed} for datagrams that are not
    udpstr or contradict themselves, which are skipped.
    """

    expected_seqno: int = attrs.field(default=0, init=False)
    lost_datagrams: int = attrs.field(default=0, init=False)
    lost_packets: int = attrs.field(default=0, init=False)
    stale_datagrams: int = attrs.field(default=0, init=False)
    malformed: int = attrs.field(default=0, init=False)
    _expected_npkt: int = attrs.field(default=1, init=False)
    _synced: bool = attrs.field(default=False, init=False)
    """Whether the next stream byte is known to continue the stream we hold."""
    _partial: Optional[bytearray] = attrs.field(default=None, init=False)
    """The packet in progress: its header and bytes so far (bounded by its caplen)."""
    _need: int = attrs.field(default=0, init=False)
    """Bytes the packet in progress needs in all: a header, then header + caplen."""

    @property
    def in_progress(self) -> int:
        """Bytes held of a packet begun in an earlier datagram."""
        return 0 if self._partial is None else len(self._partial)

    def feed(self, datagram: bytes) -> list[CapturedPacket]:
        """Take one datagram payload; return the packets it completes."""
        end = len(datagram)
        if end < UDPSTR_HEADER_SIZE:
            self.malformed += 1
            return []
        version, mtype, first, seqno = UDPSTR_HEADER.unpack_from(datagram)
        if version != PROTOCOL_VERSION or mtype != MessageType.UDPSTR:
            # Not ours at all: leave the stream state alone.  If it was one
            # of ours, mangled, the next seqno shows the gap.
            self.malformed += 1
            return []
        gap = (seqno - self.expected_seqno) & _U32
        if gap >= _HALF_U32:
            self.stale_datagrams += 1
            return []
        if gap:
            self.lost_datagrams += gap
            self._desync()
        self.expected_seqno = (seqno + 1) & _U32
        if first != NO_FIRST_HEADER and not UDPSTR_HEADER_SIZE <= first < end:
            self.malformed += 1
            self._desync()
            return []
        out: list[CapturedPacket] = []
        counted = False  # malformed counts datagrams, not faults
        if self._synced:
            # The datagram must finish the packet in progress (if any)
            # exactly where firsthdridx says the next one begins.
            position = UDPSTR_HEADER_SIZE
            finished = None
            try:
                if self._partial is not None:
                    position, finished = self._resume(datagram)
            except _Corrupt:
                position = -1
            if position == (end if first == NO_FIRST_HEADER else first):
                if finished is not None:
                    self._deliver(finished, out)
            else:
                # Trust firsthdridx over the packet in progress: drop that
                # packet and read on from firsthdridx.
                self.malformed += 1
                self._desync()
                counted = True
        if not self._synced:
            if first == NO_FIRST_HEADER:
                return out  # all of it belongs to a packet we lost the start of
            self._synced = True
        if first != NO_FIRST_HEADER:
            try:
                self._read_packets(datagram, first, out)
            except _Corrupt:
                self.malformed += not counted
                self._desync()
        return out

    def _desync(self) -> None:
        self._synced = False
        self._partial = None

    def _deliver(self, packet: CapturedPacket, out: list[CapturedPacket]) -> None:
        gap = (packet.npkt - self._expected_npkt) & _U32
        if gap < _HALF_U32:
            self.lost_packets += gap
            self._expected_npkt = (packet.npkt + 1) & _U32
        out.append(packet)

    def _resume(self, datagram: bytes) -> tuple[int, Optional[CapturedPacket]]:
        """
        Add the start of C{datagram}'s stream to the packet in progress.
        Return where in C{datagram} that packet ends (the datagram's end if
        it goes on) and the packet if it is complete.
        """
        partial = self._partial
        assert partial is not None
        position = UDPSTR_HEADER_SIZE
        end = len(datagram)
        while True:
            take = min(self._need - len(partial), end - position)
            partial += datagram[position : position + take]
            position += take
            if len(partial) < self._need:
                return position, None
            if self._need == PKTHDR_SIZE:
                # The fork never splits a packet header, but nothing in the
                # format forbids it, so a split one is read too.
                caplen = PKTHDR.unpack_from(partial)[2]
                if caplen > MAX_CAPLEN:
                    raise _Corrupt()
                self._need = PKTHDR_SIZE + caplen
                if caplen:
                    continue
            sec, usec, caplen, length, npkt = PKTHDR.unpack_from(partial)
            self._partial = None
            return position, CapturedPacket(sec, usec, caplen, length, npkt, bytes(partial[PKTHDR_SIZE:]))

    def _read_packets(self, datagram: bytes, position: int, out: list[CapturedPacket]) -> None:
        """Read the packets that begin in C{datagram} from C{position} on."""
        end = len(datagram)
        unpack = PKTHDR.unpack_from
        while position < end:
            if end - position < PKTHDR_SIZE:
                self._partial = bytearray(memoryview(datagram)[position:])
                self._need = PKTHDR_SIZE
                return
            sec, usec, caplen, length, npkt = unpack(datagram, position)
            if caplen > MAX_CAPLEN:
                raise _Corrupt()
            data_start = position + PKTHDR_SIZE
            position = data_start + caplen
            if position > end:
                self._partial = bytearray(memoryview(datagram)[data_start - PKTHDR_SIZE :])
                self._need = PKTHDR_SIZE + caplen
                return
            self._deliver(CapturedPacket(sec, usec, caplen, length, npkt, datagram[data_start:position]), out)


def packets_touched(datagram: bytes) -> int:
    """
    How many packets lose bytes when C{datagram} is lost: those whose header
    begins in it, and the one continued into it, if any.  The sender counts
    with this when the kernel refuses a datagram.
    """
    if len(datagram) < UDPSTR_HEADER_SIZE:
        return 0
    _, _, first, _ = UDPSTR_HEADER.unpack_from(datagram)
    if first == NO_FIRST_HEADER:
        return 1  # all of it is the middle of one packet
    count = 1 if first > UDPSTR_HEADER_SIZE else 0
    position = first
    while position + PKTHDR_SIZE <= len(datagram):
        count += 1
        _, _, caplen, _, _ = PKTHDR.unpack_from(datagram, position)
        position += PKTHDR_SIZE + caplen
    return count
