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

The fork frames TCP data channels with udpstr too, the datagrams written
back to back with nothing between them; L{UdpStrStreamParser} reads that,
and L{DataStreamParser} tells it from the classic framing by the first bytes.

Pure code, no I/O; see C{docs/protocol.md}.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from itertools import accumulate, repeat
from operator import add, attrgetter
from typing import Any, Optional, Sequence

import attrs

from .arrays import NATIVE, capped, counting, from_lanes, lanes, multiples, widened
from .bpf import MAXIMUM_SNAPLEN
from .datachannel import (
    PKTHDR,
    PKTHDR_SIZE,
    SEQUENCE_WINDOW,
    CapturedPacket,
    PacketBatch,
    PacketSequence,
    PacketStreamParser,
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


def is_udpstr_datagram(data: bytes) -> bool:
    """
    Whether C{data} starts with a udpstr header (version 0, type 110) rather
    than a classic type-7 packet message or anything else.
    """
    return len(data) >= UDPSTR_HEADER_SIZE and data[0] == PROTOCOL_VERSION and data[1] == MessageType.UDPSTR


def _check_mtu(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not MIN_MTU <= value <= MAX_MTU:
        raise ValueError(f"udpstr MTU must be between {MIN_MTU} and {MAX_MTU}, not {value}")


# --- the framer's batch arithmetic ------------------------------------------------------
#
# The framer works on whole batches with C-level operations only: u32 fields
# moved between arrays by strided memoryview copies, and element-wise sums
# done as one big-integer sum of u64 "lanes" (each element in its own 64 bits,
# far from carrying into the next).  Byte runs are cut out by one struct whose
# format is joined from cached codes.  See pack_batch.

_LANE_BITS = 64
_LANE_LIMIT = 1 << 33
"""Above any sum or difference of two u32s: a u64 lane never carries into the next."""
_HEADER_WORD0 = (PROTOCOL_VERSION << 24) | (MessageType.UDPSTR << 16)
"""The first 4 bytes of a udpstr header as a u32, firsthdridx 0."""


class _FormatCodes(dict[int, bytes]):
    """
    C{struct} format codes for runs of bytes, C{b"64s"} for 64 taken (or
    C{b"64x"} skipped), made on first use: a batch's format is then a join
    of lookups, no per-packet string formatting.  Cleared when it grows
    past a few thousand sizes (gaps between packets take any size).
    """

    def __init__(self, code: bytes) -> None:
        super().__init__()
        self.code = code

    def __missing__(self, size: int) -> bytes:
        if len(self) >= 4096:
            self.clear()
        text = self[size] = b"%d%b" % (size, self.code)
        return text


_TAKE = _FormatCodes(b"s")
_SKIP = _FormatCodes(b"x")
_splitters: dict[tuple[int, int], struct.Struct] = {}


def _splitter(size: int, count: int) -> struct.Struct:
    """A C{struct} cutting C{count} pieces of C{size} bytes (a few kept for the usual batch sizes)."""
    splitter = _splitters.get((size, count))
    if splitter is None:
        if len(_splitters) >= 16:
            _splitters.clear()
        splitter = _splitters[size, count] = struct.Struct(b"%ds" % size * count)
    return splitter


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
        # The per-packet work is all in C: packet headers built in one array by
        # strided copies, the batch's bytes cut into packets by one struct whose
        # format is a join of cached codes, one join for the stream, one struct
        # to cut the stream into datagrams.  Python runs once per datagram.
        records = memoryview(batch.records).cast("I")  # ts_sec, ts_usec, offset, length: native u32s
        count = len(records) // 4
        if not count:
            return []
        lengths = records[3::4]
        offsets = records[2::4]
        caplens: Any = lengths
        if max(lengths) > snaplen:
            caplens = capped(lengths, count, snaplen)
        words = array("I", bytes(PKTHDR_SIZE * count))
        fields = memoryview(words)
        fields[0::5] = records[0::4]
        fields[1::5] = records[1::4]
        fields[2::5] = caplens
        fields[3::5] = lengths
        fields[4::5] = counting(first_npkt & _U32, count)
        if NATIVE == "little":
            words.byteswap()
        pending = self._pending
        base = len(pending)
        parts: list[Any] = [None] * (2 * count + 1)
        parts[0] = pending
        parts[1::2] = _splitter(PKTHDR_SIZE, count).unpack(words)
        # bounds[i] is where packet i begins in the stream, bounds[count] where the stream ends.
        parts[2::2], bounds = self._layout(batch.data, offsets, caplens, count, base)
        stream = b"".join(parts)
        del parts, words  # before the datagrams are made: a batch's bytes are held once less
        full = self.mtu - _SEND_MARGIN - UDPSTR_HEADER_SIZE  # stream bytes that make a datagram due
        capacity = self.mtu - UDPSTR_HEADER_SIZE
        first_at = base if self._first is None else self._first  # the first packet at or after start
        start = 0
        index = 1
        sizes = []  # of each datagram's share of the stream
        words0 = []  # of each datagram's header: version, type and firsthdridx
        while True:
            # The datagram goes out at the first packet end that fills it,
            # cut at the capacity if that packet runs past it; the next
            # packet begins at that end either way.
            index = bisect_left(bounds, start + full, index)
            if index > count:
                break
            end = bounds[index]
            cut = start + capacity
            if end < cut:
                cut = end
            words0.append(
                _HEADER_WORD0 + UDPSTR_HEADER_SIZE + first_at - start
                if first_at < cut
                else _HEADER_WORD0 + NO_FIRST_HEADER
            )
            sizes.append(cut - start)
            start = cut
            first_at = end
        self._pending = stream[start:]
        self._first = first_at - start if first_at < bounds[count] else None
        made = len(sizes)
        if not made:
            return []
        seqno = self._seqno
        self._seqno = (seqno + made) & _U32
        heads = array("I", bytes(UDPSTR_HEADER_SIZE * made))
        halves = memoryview(heads)
        halves[0::2] = array("I", words0)
        halves[1::2] = counting(seqno, made)
        if NATIVE == "little":
            heads.byteswap()
        slices = struct.Struct(b"".join(map(_TAKE.__getitem__, sizes))).unpack_from(stream)
        del stream
        return list(map(add, _splitter(UDPSTR_HEADER_SIZE, made).unpack(heads), slices))

    @staticmethod
    def _layout(
        data: bytes, offsets: Any, caplens: Any, count: int, base: int
    ) -> tuple[Sequence[bytes | memoryview], list[int]]:
        """
        The captured bytes of each packet, C{data[offset:offset + caplen]},
        and where each packet begins in the stream once its header is put
        before it and C{base} bytes before them all (the last bound is
        where the last packet ends).  One struct cuts them when the packets
        lie in C{data} in order: back to back, or with gaps as a snaplen or
        sampling leaves them.
        """
        wide_offsets = widened(offsets, count)
        ends = lanes(wide_offsets) + lanes(widened(caplens, count))
        # Gap I lies between the end of packet I and the start of packet I + 1;
        # a lane that went negative borrows from the next, which shows as a huge lane.
        gaps_value = lanes(wide_offsets[1:]) - (ends & ((1 << (_LANE_BITS * (count - 1))) - 1))
        if gaps_value == 0:
            codes = b"".join(map(_TAKE.__getitem__, caplens))
            # Back to back: packet I begins at base + 20 I + (offset I - offset 0).
            starts = lanes(wide_offsets) + lanes(multiples("Q", PKTHDR_SIZE, count))
            shift = base - offsets[0]
            pattern = lanes(array("Q", [abs(shift)]) * count)
            starts = starts + pattern if shift >= 0 else starts - pattern
            bounds = from_lanes(starts, count).tolist()
            bounds += [bounds[-1] + PKTHDR_SIZE + caplens[count - 1]]
            return struct.Struct(codes).unpack_from(data, offsets[0]), bounds
        bounds = list(accumulate(map(add, caplens, repeat(PKTHDR_SIZE)), initial=base))
        if gaps_value > 0 and max(gaps := from_lanes(gaps_value, count - 1)) < _LANE_LIMIT:
            parts: list[bytes] = [b""] * (2 * count - 1)
            parts[0::2] = map(_TAKE.__getitem__, caplens)
            parts[1::2] = map(_SKIP.__getitem__, gaps)
            return struct.Struct(b"".join(parts)).unpack_from(data, offsets[0]), bounds
        # Out of order or overlapping: a slice each.
        view = memoryview(data)
        return list(map(view.__getitem__, map(slice, offsets, map(add, offsets, caplens)))), bounds

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

    Datagrams are read in C{seqno} order.  One that comes ahead of the
    expected C{seqno} is held, not delivered, until the next datagram says
    what it was: if that one continues it, datagrams were lost and the
    stream goes on from the held one; if it is the expected one, the held
    datagram was out of place (a forgery, or a stray) and is dropped.  So a
    single datagram with a made-up C{seqno} can neither put packets in the
    capture nor make the decoder drop the genuine ones that follow; after a
    real loss, packets come one datagram later.

    Counters: C{lost_datagrams} from confirmed gaps in C{seqno} within
    L{SEQUENCE_WINDOW}; C{resyncs} for confirmed jumps beyond it (in
    C{seqno} or C{npkt}: not counted as lost); C{lost_packets} from gaps in
    the C{npkt} of the packets delivered (numbered from 1 per capture), so
    it covers packets lost to any cause once a later packet arrives;
    C{stale_datagrams} for datagrams behind the expected one (late or
    repeated: dropped); C{unconfirmed_datagrams} for held datagrams that
    nothing continued (dropped); C{malformed} for datagrams that are not
    udpstr or contradict themselves, and packets with impossible lengths,
    which are skipped.
    """

    expected_seqno: int = attrs.field(default=0, init=False)
    lost_datagrams: int = attrs.field(default=0, init=False)
    stale_datagrams: int = attrs.field(default=0, init=False)
    unconfirmed_datagrams: int = attrs.field(default=0, init=False)
    seqno_resyncs: int = attrs.field(default=0, init=False)
    malformed: int = attrs.field(default=0, init=False)
    npkts: PacketSequence = attrs.field(factory=PacketSequence, init=False)
    """The C{npkt} sequence of the packets delivered."""
    _synced: bool = attrs.field(default=False, init=False)
    """Whether the next stream byte is known to continue the stream we hold."""
    _partial: Optional[bytearray] = attrs.field(default=None, init=False)
    """The packet in progress: its header and bytes so far (bounded by its caplen)."""
    _need: int = attrs.field(default=0, init=False)
    """Bytes the packet in progress needs in all: a header, then header + caplen."""
    _held: Optional[_HeldDatagram] = attrs.field(default=None, init=False)
    """A datagram ahead of the expected seqno, waiting for the next one to confirm it."""

    @property
    def lost_packets(self) -> int:
        return self.npkts.lost

    @property
    def resyncs(self) -> int:
        return self.seqno_resyncs + self.npkts.resyncs

    @property
    def in_progress(self) -> int:
        """Bytes held of a packet begun in an earlier datagram."""
        return 0 if self._partial is None else len(self._partial)

    @property
    def holding(self) -> bool:
        """Whether packets of a datagram ahead of the stream wait for the next datagram (see L{release_held})."""
        return self._held is not None and bool(self._held.packets)

    def release_held(self) -> list[CapturedPacket]:
        """
        The packets of the datagram held ahead of the stream, now, for when
        no datagram has come to confirm it for a while (the stream went
        quiet after a loss).  The stream position stays where it was, so if
        that datagram was a stray the genuine ones that follow still fit;
        if it was genuine, the next datagram continues it as usual.
        """
        held = self._held
        if held is None or not held.packets:
            return []
        self._held = attrs.evolve(held, packets=[])
        return self._deliver_all(held.packets)

    def feed(self, datagram: bytes) -> list[CapturedPacket]:
        """Take one datagram payload; return the packets it completes (or confirms)."""
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
        bad_first = first != NO_FIRST_HEADER and not UDPSTR_HEADER_SIZE <= first < end
        if seqno == self.expected_seqno:
            if self._held is not None:
                self.unconfirmed_datagrams += 1  # the stream went on without it
                self._held = None
            self.expected_seqno = (seqno + 1) & _U32
            if bad_first:
                self.malformed += 1
                self._desync()
                return []
            return self._deliver_all(self._consume(datagram, first))
        gap = (seqno - self.expected_seqno) & _U32
        if gap > _U32 - SEQUENCE_WINDOW:
            self.stale_datagrams += 1
            return []
        if bad_first:
            self.malformed += 1
            return []
        held = self._held
        if held is not None and seqno == held.next_seqno:
            # Confirmed: the datagrams between were lost (or, past the window, the sender restarted).
            skipped = (held.seqno - self.expected_seqno) & _U32
            if skipped < SEQUENCE_WINDOW:
                self.lost_datagrams += skipped
            else:
                self.seqno_resyncs += 1
            self._held = None
            self._partial, self._need, self._synced = held.partial, held.need, held.synced
            self.expected_seqno = (seqno + 1) & _U32
            return self._deliver_all(held.packets + self._consume(datagram, first))
        if held is not None:
            self.unconfirmed_datagrams += 1
        # Read it on its own, as the start of a stream, and keep what it gave.
        saved = self._partial, self._need, self._synced
        self._desync()
        packets = self._consume(datagram, first)
        self._held = _HeldDatagram(seqno, packets, self._partial, self._need, self._synced)
        self._partial, self._need, self._synced = saved
        return []

    def _consume(self, datagram: bytes, first: int) -> list[CapturedPacket]:
        """The packets C{datagram} completes, read as the next one in the stream."""
        end = len(datagram)
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
                    out.append(finished)
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

    def _deliver_all(self, packets: list[CapturedPacket]) -> list[CapturedPacket]:
        """
        The packets that can be delivered, their numbers counted; those
        with impossible lengths (C{datachannel.implausible_lengths}) skipped.
        """
        # A caplen over MAX_CAPLEN was refused when read: only caplen > length is left to catch.
        out = [packet for packet in packets if packet.caplen <= packet.length]
        self.malformed += len(packets) - len(out)
        self.npkts.see_all(map(_npkt_of, out))
        return out

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
            out.append(CapturedPacket(sec, usec, caplen, length, npkt, datagram[data_start:position]))


_npkt_of = attrgetter("npkt")


@attrs.frozen
class _HeldDatagram:
    """A datagram read on its own, ahead of the stream: its packets and the stream state after it."""

    seqno: int
    packets: list[CapturedPacket]
    partial: Optional[bytearray]
    need: int
    synced: bool

    @property
    def next_seqno(self) -> int:
        return (self.seqno + 1) & _U32


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


# --- udpstr over a TCP data channel ---------------------------------------------------

MAX_STREAM_DATAGRAM = 0xFFFF
"""The longest datagram a udpstr stream can hold: every offset in it must fit C{firsthdridx}."""
MIN_STREAM_MTU = UDPSTR_HEADER_SIZE + _SEND_MARGIN + 1
"""The smallest MTU with which the fork's send loop ends (see L{MIN_MTU})."""

_DATAGRAM, _BOUNDARY, _RECORD, _SEARCH = range(4)
_VERSION_AND_TYPE = bytes((PROTOCOL_VERSION, MessageType.UDPSTR))


class _Broken(Exception):
    """Internal: the udpstr stream contradicts itself; the message says how."""


class UdpStrStreamParser:
    """
    Reads udpstr over a TCP data channel, as ExtraHop's rpcapd sends it:
    the datagrams written back to back with no length in front of them.

    A datagram is either exactly the sender's MTU long, possibly cut inside
    a packet record, or shorter and then ends at a record end.  The parser
    walks the records (20-byte C{rpcap_pkthdr} and captured bytes) and, at
    each record end, takes a following C{ver=0, type=110} pair for the next
    datagram's header (a live capture's C{ts_sec} never starts with those
    bytes).  The MTU is learned from the first datagram cut inside a
    record: until then the bytes of each record are searched for the next
    datagram's header, C{00 6E}, a C{firsthdridx} that agrees with the rest
    of the record, and the next C{seqno}; afterwards a header is expected at
    exactly every MTU bytes.

    Each packet is delivered as soon as its bytes are in, with one
    exception while the MTU is still unknown: a record whose last bytes
    could be the start of a datagram header cut into it, at an offset past
    every datagram seen so far, waits for up to 7 more bytes (or L{end}).
    At most one datagram and one record are buffered.

    Anything that contradicts the format (a header that is not udpstr, a
    C{seqno} that does not follow the last one, a C{firsthdridx} that
    disagrees with the records, a caplen over L{MAX_CAPLEN}, no datagram
    boundary within L{MAX_STREAM_DATAGRAM} bytes) sets C{error}, and the
    parser takes nothing more: a TCP stream cannot be followed past it.
    """

    def __init__(self) -> None:
        self.error: Optional[str] = None
        self.malformed = 0
        """Packets with impossible lengths (C{datachannel.implausible_lengths}), skipped: the framing still holds."""
        self.npkts = PacketSequence()
        """The C{npkt} sequence of the packets delivered: C{lost} is the packets missing from it."""
        self.mtu: Optional[int] = None
        """The sender's MTU, once a datagram cut inside a record has shown it."""
        self.datagrams = 0
        """Datagram headers read."""
        self._buf = bytearray()
        self._pos = 0  # index in _buf of the first byte not yet taken
        self._state = _DATAGRAM
        self._dgram = 0  # index in _buf (possibly negative) of the current datagram's header
        self._seqno = 0
        self._first = NO_FIRST_HEADER
        self._first_seen = False  # whether a record has begun in the current datagram
        self._longest = 0  # the longest datagram ended so far: the MTU is at least this
        self._record = bytearray()  # the record in progress, once the MTU is known
        self._need = 0  # its length: a header, then header + caplen
        self._search = 0  # index of the next place to look for a datagram header in a record
        self._ended = False

    @property
    def buffered(self) -> int:
        """Bytes held: those not yet taken, and the record in progress."""
        return len(self._buf) - self._pos + len(self._record)

    def feed(self, data: bytes) -> list[CapturedPacket]:
        """The packets C{data} completes (those before any error included)."""
        if self.error is not None or self._ended:
            return []
        self._buf += data
        return self._run()

    def end(self) -> list[CapturedPacket]:
        """
        The stream has ended: the packet that was held back only because
        more bytes could have turned its last ones into a datagram header.
        """
        if self.error is not None or self._ended:
            return []
        self._ended = True
        return self._run()

    def _run(self) -> list[CapturedPacket]:
        out: list[CapturedPacket] = []
        steps = {
            _DATAGRAM: self._datagram_header,
            _BOUNDARY: self._boundary,
            _RECORD: self._continue_record,
            _SEARCH: self._search_record,
        }
        try:
            while steps[self._state](out):
                pass
        except _Broken as e:
            self.error = str(e)
            self._buf = bytearray()
            self._record = bytearray()
            self._pos = 0
            return out
        keep = self._pos
        if keep:
            del self._buf[:keep]
            self._pos = 0
            self._dgram -= keep
            self._search -= keep
        return out

    @property
    def lost_packets(self) -> int:
        return self.npkts.lost

    @property
    def resyncs(self) -> int:
        return self.npkts.resyncs

    def _deliver(self, record: bytes | bytearray, start: int, end: int, out: list[CapturedPacket]) -> None:
        sec, usec, caplen, length, npkt = PKTHDR.unpack_from(record, start)
        if caplen > length:  # implausible_lengths (a caplen over MAX_CAPLEN was refused when read)
            self.malformed += 1
            return
        self.npkts.see(npkt)
        out.append(CapturedPacket(sec, usec, caplen, length, npkt, bytes(record[start + PKTHDR_SIZE : end])))

    def _where(self) -> str:
        return f"udpstr datagram {self._seqno}"

    def _datagram_header(self, out: list[CapturedPacket]) -> bool:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < UDPSTR_HEADER_SIZE:
            if buf[pos : pos + 2] != _VERSION_AND_TYPE[: len(buf) - pos]:
                raise _Broken(f"expected a udpstr datagram header, found bytes {buf[pos:].hex(' ')}")
            return False
        version, mtype, first, seqno = UDPSTR_HEADER.unpack_from(buf, pos)
        if version != PROTOCOL_VERSION or mtype != MessageType.UDPSTR:
            raise _Broken(
                f"expected a udpstr datagram header, found bytes {buf[pos : pos + 8].hex(' ')}"
                + (f" after datagram {self._seqno}" if self.datagrams else "")
            )
        if self.datagrams and seqno != (self._seqno + 1) & _U32:
            raise _Broken(
                f"udpstr datagram {seqno} follows datagram {self._seqno} (seqno must go up by 1 over TCP)"
            )
        limit = self.mtu if self.mtu is not None else MAX_STREAM_DATAGRAM
        if first != NO_FIRST_HEADER and not UDPSTR_HEADER_SIZE <= first < limit:
            raise _Broken(f"udpstr datagram {seqno}: firsthdridx {first} is out of range")
        in_record = self._need != 0  # a record continues into this datagram
        if in_record and self._need > PKTHDR_SIZE:
            rest = self._need - len(self._record)
            if first != NO_FIRST_HEADER and first != UDPSTR_HEADER_SIZE + rest:
                raise _Broken(
                    f"udpstr datagram {seqno}: firsthdridx {first}, but the packet continued into it "
                    f"ends at offset {UDPSTR_HEADER_SIZE + rest}"
                )
        elif not in_record and first not in (UDPSTR_HEADER_SIZE, NO_FIRST_HEADER):
            raise _Broken(f"udpstr datagram {seqno}: firsthdridx {first}, but a packet begins at offset 8")
        self._dgram = pos
        self._seqno = seqno
        self._first = first
        self._first_seen = False
        self.datagrams += 1
        self._pos = pos + UDPSTR_HEADER_SIZE
        self._state = _RECORD if in_record else _BOUNDARY
        return True

    def _end_datagram(self, length: int) -> None:
        if self._first != NO_FIRST_HEADER and not self._first_seen:
            raise _Broken(
                f"{self._where()}: firsthdridx {self._first}, but no packet begins there "
                f"(the datagram ends at offset {length})"
            )
        if length > self._longest:
            self._longest = length
        self._state = _DATAGRAM

    def _boundary(self, out: list[CapturedPacket]) -> bool:
        """Between records: the next datagram's header, or the next record."""
        buf, pos = self._buf, self._pos
        offset = pos - self._dgram
        if self.mtu is not None and offset >= self.mtu:
            self._end_datagram(offset)
            return True
        available = len(buf) - pos
        if available < 2:
            return False  # even a first byte of 0 could begin either
        if buf[pos] == PROTOCOL_VERSION and buf[pos + 1] == MessageType.UDPSTR:
            self._end_datagram(offset)
            return True
        if self._first == NO_FIRST_HEADER:
            raise _Broken(
                f"{self._where()}: firsthdridx says no packet begins in it, but one begins at offset {offset}"
            )
        if not self._first_seen and self._first != offset:
            raise _Broken(
                f"{self._where()}: firsthdridx {self._first}, but the first packet begins at offset {offset}"
            )
        self._first_seen = True
        if offset >= MAX_STREAM_DATAGRAM:
            raise _Broken(f"no udpstr datagram boundary within {MAX_STREAM_DATAGRAM} bytes")
        if self.mtu is None:
            self._search = pos + 1
            self._state = _SEARCH
            return True
        datagram_end = self._dgram + self.mtu
        if available >= PKTHDR_SIZE and pos + PKTHDR_SIZE <= datagram_end:
            # The whole record at hand, in this datagram: no copy to assemble it.
            caplen = _caplen_at(buf, pos)
            end = pos + PKTHDR_SIZE + caplen
            if end <= len(buf) and end <= datagram_end:
                self._deliver(buf, pos, end, out)
                self._pos = end
                return True
        self._record = bytearray()
        self._need = PKTHDR_SIZE
        self._state = _RECORD
        return True

    def _continue_record(self, out: list[CapturedPacket]) -> bool:
        """A record read once the MTU is known: a datagram header at every MTU bytes."""
        assert self.mtu is not None
        buf, pos = self._buf, self._pos
        room = self._dgram + self.mtu - pos
        if room <= 0:
            self._end_datagram(pos - self._dgram)
            return True
        record = self._record
        take = min(self._need - len(record), room, len(buf) - pos)
        if take <= 0:
            return False
        record += buf[pos : pos + take]
        self._pos = pos + take
        if len(record) < self._need:
            return True
        if self._need == PKTHDR_SIZE:
            caplen = _caplen_at(record, 0)
            self._need = PKTHDR_SIZE + caplen
            if caplen:
                return True
        self._deliver(record, 0, len(record), out)
        self._record = bytearray()
        self._need = 0
        self._state = _BOUNDARY
        return True

    def _search_record(self, out: list[CapturedPacket]) -> bool:
        """
        A record read while the MTU is unknown: the first place in it where
        the next datagram's header sits is where the sender cut the
        datagram, and says the MTU; with none, the record is whole.
        """
        buf, start = self._buf, self._pos
        size = len(buf)
        dgram = self._dgram
        caplen: Optional[int] = None
        if size - start >= PKTHDR_SIZE:
            caplen = PKTHDR.unpack_from(buf, start)[2]
        # A cut at p leaves the header in buf[p:p + 8]; p lies inside the record,
        # past every datagram already seen, and within the longest datagram.
        stop = dgram + MAX_STREAM_DATAGRAM + 1
        if caplen is None or caplen > MAX_CAPLEN:
            stop = min(stop, start + PKTHDR_SIZE)  # only a cut in the header can make sense of it
        else:
            stop = min(stop, start + PKTHDR_SIZE + caplen)
        position = max(self._search, start + 1, dgram + max(MIN_STREAM_MTU, self._longest))
        limit = min(stop, size)
        while position < limit:
            found = buf.find(_VERSION_AND_TYPE, position, limit + 1)
            if found < 0:
                if limit == size and size - 1 >= position and buf[size - 1] == PROTOCOL_VERSION:
                    if not self._ended:  # perhaps the first byte of a header
                        self._search = size - 1
                        return False
                position = limit
                break
            verdict = self._cut_at(found, start, caplen)
            if verdict is None:
                self._search = found
                return False
            if verdict:
                return True
            position = found + 1
        self._search = position
        if position < stop or caplen is None:
            return False  # more of the record to come
        if caplen > MAX_CAPLEN:
            raise _Broken(f"{self._where()}: packet caplen {caplen} is over {MAX_CAPLEN}")
        end = start + PKTHDR_SIZE + caplen
        if end - dgram > MAX_STREAM_DATAGRAM:
            raise _Broken(
                f"no udpstr datagram boundary within {MAX_STREAM_DATAGRAM} bytes of datagram {self._seqno}"
            )
        if end > size:
            return False
        # No cut inside: the record is whole.
        self._deliver(buf, start, end, out)
        self._pos = end
        self._state = _BOUNDARY
        return True

    def _cut_at(self, cut: int, start: int, caplen: Optional[int]) -> Optional[bool]:
        """
        Whether the datagram was cut at C{cut} inside the record that
        begins at C{start} (C{None}: too few bytes yet to tell); if it was,
        the MTU is learned and the record goes on in the next datagram.
        """
        buf = self._buf
        header = bytes(buf[cut : cut + UDPSTR_HEADER_SIZE])
        seqno = ((self._seqno + 1) & _U32).to_bytes(4, "big")
        if header[4:] != seqno[: max(0, len(header) - 4)]:
            return False
        length = cut - self._dgram
        before = cut - start  # record bytes in this datagram
        if len(header) >= 4:
            first = int.from_bytes(header[2:4], "big")
            if first != NO_FIRST_HEADER and not UDPSTR_HEADER_SIZE < first < length:
                return False
        if before < PKTHDR_SIZE:
            # A cut in the packet header: its caplen is in the bytes after ours.
            tail = buf[cut + UDPSTR_HEADER_SIZE : cut + UDPSTR_HEADER_SIZE + PKTHDR_SIZE - before]
            if len(tail) < PKTHDR_SIZE - before:
                return False if self._ended else None
            caplen = PKTHDR.unpack(bytes(buf[start:cut]) + tail)[2]
            if caplen > MAX_CAPLEN:
                return False
        assert caplen is not None
        rest = PKTHDR_SIZE + caplen - before
        allowed = [NO_FIRST_HEADER.to_bytes(2, "big")]
        if UDPSTR_HEADER_SIZE + rest < length:
            allowed.append((UDPSTR_HEADER_SIZE + rest).to_bytes(2, "big"))
        if not any(f.startswith(header[2:4]) for f in allowed):
            return False
        if len(header) < UDPSTR_HEADER_SIZE:
            return False if self._ended else None
        # The cut: this datagram is exactly the MTU long.
        self.mtu = length
        self._record = bytearray(buf[start:cut])
        self._need = PKTHDR_SIZE if before < PKTHDR_SIZE else PKTHDR_SIZE + caplen
        self._pos = cut
        self._end_datagram(length)
        return True


def _caplen_at(data: bytes | bytearray, offset: int) -> int:
    caplen: int = PKTHDR.unpack_from(data, offset)[2]
    if caplen > MAX_CAPLEN:
        raise _Broken(f"packet caplen {caplen} is over {MAX_CAPLEN}: not a packet header")
    return caplen


class DataStreamParser:
    """
    Reads a TCP data channel in whichever framing the daemon chose, told
    from its first two bytes: C{ver=0, type=7} is libpcap's (one type-7
    message per packet, L{PacketStreamParser}), C{ver=0, type=110} is
    udpstr (ExtraHop's rpcapd sends it on TCP too, L{UdpStrStreamParser});
    anything else sets C{error}.
    """

    def __init__(self) -> None:
        self.parser: Optional[PacketStreamParser | UdpStrStreamParser] = None
        """The parser the first bytes chose, once they are in."""
        self._head = b""
        self._error: Optional[str] = None

    @property
    def framing(self) -> Optional[str]:
        """C{"classic"}, C{"udpstr"}, or C{None} before the first two bytes."""
        if self.parser is None:
            return None
        return "udpstr" if isinstance(self.parser, UdpStrStreamParser) else "classic"

    @property
    def error(self) -> Optional[str]:
        return self._error if self.parser is None else self.parser.error

    @property
    def malformed(self) -> int:
        return 0 if self.parser is None else self.parser.malformed

    @property
    def lost_packets(self) -> int:
        return self.parser.lost_packets if isinstance(self.parser, UdpStrStreamParser) else 0

    @property
    def resyncs(self) -> int:
        return self.parser.resyncs if isinstance(self.parser, UdpStrStreamParser) else 0

    @property
    def mtu(self) -> Optional[int]:
        return self.parser.mtu if isinstance(self.parser, UdpStrStreamParser) else None

    def feed(self, data: bytes) -> list[CapturedPacket]:
        """The packets C{data} completes (those before any error included)."""
        if self.parser is None:
            if self._error is not None:
                return []
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return []
            self._head = b""
            if data[0] == PROTOCOL_VERSION and data[1] == MessageType.PACKET:
                self.parser = PacketStreamParser()
            elif data[0] == PROTOCOL_VERSION and data[1] == MessageType.UDPSTR:
                self.parser = UdpStrStreamParser()
            else:
                self._error = f"not an RPCAP data stream (first bytes {data[:2].hex(' ')})"
                return []
        return self.parser.feed(data)

    def end(self) -> list[CapturedPacket]:
        """The stream has ended: any packet held back until then (udpstr only)."""
        return self.parser.end() if isinstance(self.parser, UdpStrStreamParser) else []
