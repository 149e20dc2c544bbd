"""
Tests for L{rpcapsvc.protocol.udpstr}: datagrams against hand-built bytes
and against a line-by-line model of the fork's C{daemon_udpstr_write}, the
decoder's handling of loss, reordering and garbage, and Hypothesis
properties of both.
"""

from __future__ import annotations

import random
import struct
from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.datachannel import (
    BATCH_RECORD,
    PKTHDR,
    CapturedPacket,
    PacketBatch,
    encode_packet_records,
)
from rpcapsvc.protocol.udpstr import (
    MAX_CAPLEN,
    MAX_MTU,
    MIN_MTU,
    UdpStrDecoder,
    UdpStrFramer,
    is_udpstr_datagram,
    packets_touched,
)

from ._fixtures import FRAME_A, FRAME_B, PACKETS, PKTHDR_A, PKTHDR_B, Packet, captured, h


def numbered(*sizes: int) -> list[Packet]:
    """Packets of the given sizes; packet C{n} (from 1) is stamped C{n} s and filled with byte C{n}."""
    return [(n, 0, bytes([n]) * size) for n, size in enumerate(sizes, 1)]


def pkthdr(n: int, caplen: int) -> bytes:
    """The packet header of L{numbered}'s packet C{n}, in hex digits."""
    return h(f"{n:08x} 00000000 {caplen:08x} {caplen:08x} {n:08x}")


def frame(
    batches: list[list[Packet]], mtu: int, snaplen: int = 65535, flush_each: bool = False
) -> list[bytes]:
    """All the datagrams a capture of C{batches} sends, flushed at the end."""
    framer = UdpStrFramer(mtu)
    out: list[bytes] = []
    npkt = 1
    for batch in batches:
        out += framer.pack_batch(PacketBatch.from_packets(batch), snaplen, npkt)
        npkt += len(batch)
        if flush_each:
            last = framer.flush()
            if last is not None:
                out.append(last)
    last = framer.flush()
    if last is not None:
        out.append(last)
    return out


def fork_model(batches: list[list[Packet]], mtu: int, snaplen: int, flush_each: bool) -> list[bytes]:
    """
    All the datagrams ExtraHop's rpcapd sends for C{batches} (L{reference_framer}),
    flushed after each batch if C{flush_each}, and at the end.
    """
    flush: Step = ("flush", PacketBatch(b"", b""), 0, 0)
    steps: list[Step] = []
    npkt = 1
    for batch in batches:
        steps.append(("batch", PacketBatch.from_packets(batch), snaplen, npkt))
        npkt += len(batch)
        if flush_each:
            steps.append(flush)
    steps.append(flush)
    return [datagram for out in reference_framer(steps, mtu, 0) for datagram in out]


def decode(datagrams: list[bytes]) -> tuple[UdpStrDecoder, list[CapturedPacket]]:
    decoder = UdpStrDecoder()
    packets = []
    for datagram in datagrams:
        packets += decoder.feed(datagram)
    packets += decoder.release_held()  # the capture went quiet
    return decoder, packets


class FramerBytesTests(SynchronousTestCase):
    """Datagrams built by hand from the rules of the fork."""

    def test_twoPacketsOneDatagram(self) -> None:
        """
        Two small packets wait in the datagram being filled; the flush sends
        them with the first header right after the udpstr header and seqno 0.
        """
        framer = UdpStrFramer(1472)
        self.assertEqual(framer.pack_batch(PacketBatch.from_packets(PACKETS), 65535, 1), [])
        self.assertEqual(framer.pending, 20 + 10 + 20 + 3)
        self.assertEqual(framer.next_seqno, 0)
        self.assertEqual(
            framer.flush(),
            h("00 6e 0008 00000000") + PKTHDR_A + FRAME_A + PKTHDR_B + FRAME_B,
        )
        self.assertEqual(framer.pending, 0)
        self.assertEqual(framer.next_seqno, 1)

    def test_flushEmpty(self) -> None:
        """Nothing waiting: the flush sends nothing and uses no seqno."""
        framer = UdpStrFramer(1472)
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.pack_batch(PacketBatch.from_packets([]), 65535, 1), [])
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.next_seqno, 0)
        framer.pack_batch(PacketBatch.from_packets(PACKETS), 65535, 1)
        framer.flush()
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.next_seqno, 1)

    def test_packetOverThreeDatagrams(self) -> None:
        """
        At MTU 64 a 100-byte packet fills 64 bytes (header, packet header,
        36 bytes), then a whole datagram with no header beginning in it
        (0xFFFF); its last 8 bytes open the third, where the next packet's
        header begins at 8 + 8 = 16.  That one holds 40 bytes, at least
        64 - 28, so it goes out short of the MTU.
        """
        big = bytes(range(100))
        packets = [(1, 0, big), (2, 0, b"\xee" * 4)]
        self.assertEqual(
            UdpStrFramer(64).pack_batch(PacketBatch.from_packets(packets), 65535, 1),
            [
                h("00 6e 0008 00000000") + pkthdr(1, 100) + big[:36],
                h("00 6e ffff 00000001") + big[36:92],
                h("00 6e 0010 00000002") + big[92:] + pkthdr(2, 4) + b"\xee" * 4,
            ],
        )

    def test_roomRuleNotYet(self) -> None:
        """At MTU 100, a datagram of 71 bytes (29 bytes of room) is kept."""
        framer = UdpStrFramer(100)
        self.assertEqual(framer.pack_batch(PacketBatch.from_packets(numbered(43)), 65535, 1), [])
        self.assertEqual(framer.pending, 63)
        self.assertEqual(framer.flush(), h("00 6e 0008 00000000") + pkthdr(1, 43) + b"\x01" * 43)

    def test_roomRuleThreshold(self) -> None:
        """At MTU 100, a datagram of 72 bytes (28 bytes of room) goes out at once."""
        framer = UdpStrFramer(100)
        self.assertEqual(
            framer.pack_batch(PacketBatch.from_packets(numbered(44)), 65535, 1),
            [h("00 6e 0008 00000000") + pkthdr(1, 44) + b"\x01" * 44],
        )
        self.assertEqual(framer.pending, 0)

    def test_roomRuleShortDatagram(self) -> None:
        """
        A packet that takes the datagram from 71 to 91 bytes sends it as it
        is: 91 bytes, under the MTU of 100, not cut.
        """
        self.assertEqual(
            UdpStrFramer(100).pack_batch(PacketBatch.from_packets(numbered(43, 0)), 65535, 1),
            [h("00 6e 0008 00000000") + pkthdr(1, 43) + b"\x01" * 43 + pkthdr(2, 0)],
        )

    def test_roomRuleCut(self) -> None:
        """
        A packet that takes the datagram past the MTU is cut at the MTU; its
        rest (here one byte) opens the next datagram, whose first header
        then begins at 8 + 1.
        """
        framer = UdpStrFramer(100)
        self.assertEqual(
            framer.pack_batch(PacketBatch.from_packets(numbered(43, 10, 0)), 65535, 1),
            [h("00 6e 0008 00000000") + pkthdr(1, 43) + b"\x01" * 43 + pkthdr(2, 10) + b"\x02" * 9],
        )
        self.assertEqual(framer.pending, 1 + 20)
        self.assertEqual(framer.flush(), h("00 6e 0009 00000001") + b"\x02" + pkthdr(3, 0))

    def test_restRefillsDatagram(self) -> None:
        """
        A rest of 28 bytes or more fills the next datagram on its own: it
        goes out with 0xFFFF though no more data follows.
        """
        framer = UdpStrFramer(64)
        self.assertEqual(
            framer.pack_batch(PacketBatch.from_packets(numbered(36 + 28)), 65535, 1),
            [
                h("00 6e 0008 00000000") + pkthdr(1, 64) + b"\x01" * 36,
                h("00 6e ffff 00000001") + b"\x01" * 28,
            ],
        )
        self.assertIsNone(framer.flush())

    def test_pendingAcrossBatches(self) -> None:
        """
        A packet left waiting by one batch opens the datagram the next batch
        completes, first header and all.
        """
        framer = UdpStrFramer(100)
        self.assertEqual(framer.pack_batch(PacketBatch.from_packets(numbered(10)), 65535, 1), [])
        self.assertEqual(
            framer.pack_batch(PacketBatch.from_packets(numbered(10, 20)[1:]), 65535, 2),
            [h("00 6e 0008 00000000") + pkthdr(1, 10) + b"\x01" * 10 + pkthdr(2, 20) + b"\x02" * 20],
        )

    def test_snaplen(self) -> None:
        """Packets are cut to the snaplen; the header keeps the wire length."""
        framer = UdpStrFramer(1472)
        framer.pack_batch(PacketBatch.from_packets([(1, 0, b"abcdef")]), 4, 7)
        self.assertEqual(
            framer.flush(),
            h("00 6e 0008 00000000 00000001 00000000 00000004 00000006 00000007") + b"abcd",
        )

    def test_seqnoWraps(self) -> None:
        """seqno is a u32: after 2**32 - 1 comes 0."""
        framer = UdpStrFramer(64)
        framer._seqno = 0xFFFFFFFF
        datagrams = framer.pack_batch(PacketBatch.from_packets(numbered(100)), 65535, 1)
        self.assertEqual([d[4:8] for d in datagrams], [h("ffffffff"), h("00000000")])
        self.assertEqual(framer.next_seqno, 1)

    def test_mtuLimits(self) -> None:
        """
        The MTU must leave room for the headers and some data (64 at least)
        and fit a UDP payload (65507 at most).
        """
        self.assertRaises(ValueError, UdpStrFramer, 63)
        self.assertRaises(ValueError, UdpStrFramer, 0)
        self.assertRaises(ValueError, UdpStrFramer, 65508)
        self.assertEqual(UdpStrFramer(64).mtu, 64)
        self.assertEqual(UdpStrFramer(65507).mtu, 65507)

    def test_manySmallPackets(self) -> None:
        """
        At the fork's default MTU of 1472, 10,000 packets of 64 bytes pack
        more than 15 to a datagram, none over the MTU, and read back whole.
        """
        packets = [(n, n % 1_000_000, n.to_bytes(4, "big") * 16) for n in range(10_000)]
        datagrams = frame([packets[:3000], packets[3000:]], 1472)
        self.assertTrue(all(len(d) <= 1472 for d in datagrams))
        self.assertGreater(len(packets) / len(datagrams), 15)
        decoder, decoded = decode(datagrams)
        self.assertEqual(decoded, captured(packets))
        self.assertEqual((decoder.lost_datagrams, decoder.lost_packets), (0, 0))


class IsUdpStrTests(SynchronousTestCase):
    def test_udpstr(self) -> None:
        self.assertTrue(is_udpstr_datagram(h("00 6e 0008 00000000")))
        self.assertTrue(is_udpstr_datagram(h("00 6e ffff 00000005") + b"x"))

    def test_classic(self) -> None:
        """A type-7 packet message, a short datagram or another version is not udpstr."""
        self.assertFalse(is_udpstr_datagram(h("00 07 0000 00000014") + PKTHDR_A))
        self.assertFalse(is_udpstr_datagram(h("00 6e 0008 000000")))
        self.assertFalse(is_udpstr_datagram(h("01 6e 0008 00000000")))
        self.assertFalse(is_udpstr_datagram(b""))


def datagram(first: int, seqno: int, body: bytes) -> bytes:
    return struct.pack("!BBHI", 0, 110, first, seqno) + body


class DecoderTests(SynchronousTestCase):
    """The decoder on hand-built datagrams."""

    def test_packets(self) -> None:
        decoder = UdpStrDecoder()
        self.assertEqual(
            decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A + PKTHDR_B + FRAME_B)),
            captured(PACKETS),
        )
        self.assertEqual(decoder.expected_seqno, 1)

    def test_splitPacket(self) -> None:
        """A packet cut over datagrams comes out when its last byte arrives."""
        decoder = UdpStrDecoder()
        self.assertEqual(decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:4])), [])
        self.assertEqual(decoder.in_progress, 24)
        self.assertEqual(decoder.feed(datagram(0xFFFF, 1, FRAME_A[4:6])), [])
        self.assertEqual(decoder.feed(datagram(12, 2, FRAME_A[6:] + PKTHDR_B + FRAME_B)), captured(PACKETS))
        self.assertEqual(decoder.in_progress, 0)

    def test_splitPacketHeader(self) -> None:
        """
        The fork never cuts a packet header, but the format allows it, and
        such a header is read too.
        """
        decoder = UdpStrDecoder()
        self.assertEqual(decoder.feed(datagram(8, 0, PKTHDR_A[:7])), [])
        self.assertEqual(decoder.feed(datagram(0xFFFF, 1, PKTHDR_A[7:19])), [])
        self.assertEqual(
            decoder.feed(datagram(19, 2, PKTHDR_A[19:] + FRAME_A + PKTHDR_B[:1])), captured(PACKETS)[:1]
        )
        self.assertEqual(decoder.feed(datagram(0xFFFF, 3, PKTHDR_B[1:] + FRAME_B)), captured(PACKETS)[1:])
        self.assertEqual(decoder.malformed, 0)

    def test_emptyPacket(self) -> None:
        """A packet with no bytes captured ends with its header."""
        empty = [(5, 6, b"")]
        decoder = UdpStrDecoder()
        self.assertEqual(decoder.feed(datagram(8, 0, PKTHDR.pack(5, 6, 0, 0, 1)[:10])), [])
        self.assertEqual(decoder.feed(datagram(0xFFFF, 1, PKTHDR.pack(5, 6, 0, 0, 1)[10:])), captured(empty))

    def test_lostDatagram(self) -> None:
        """
        After a seqno gap the packet in progress is dropped and reading goes
        on at the next first header, once the datagram after the gap is
        confirmed by the one that follows it; the npkt gap counts the
        packets lost.
        """
        decoder = UdpStrDecoder()
        self.assertEqual(decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:4])), [])
        # seqno 1 lost; seqno 2 finishes packet 1 and holds packet 3 (npkt 3), with packet 4 begun.
        packet3 = PKTHDR.pack(9, 9, 1, 1, 3) + b"z"
        packet4 = PKTHDR.pack(9, 9, 2, 2, 4) + b"yy"
        self.assertEqual(decoder.feed(datagram(12, 2, b"????" + packet3 + packet4[:21])), [])
        self.assertTrue(decoder.holding)
        self.assertEqual(
            decoder.feed(datagram(0xFFFF, 3, packet4[21:])),
            [CapturedPacket(9, 9, 1, 1, 3, b"z"), CapturedPacket(9, 9, 2, 2, 4, b"yy")],
        )
        self.assertEqual((decoder.lost_datagrams, decoder.lost_packets), (1, 2))
        self.assertEqual(decoder.expected_seqno, 4)

    def test_heldDatagramReleased(self) -> None:
        """A datagram after a gap that nothing follows comes out when released (the capture went quiet)."""
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A))
        self.assertEqual(decoder.feed(datagram(8, 2, PKTHDR_B + FRAME_B)), [])
        self.assertEqual(decoder.release_held(), captured(PACKETS)[1:])
        self.assertEqual(decoder.release_held(), [])
        self.assertFalse(decoder.holding)

    def test_forgedSeqnoAhead(self) -> None:
        """
        One datagram with a seqno 80 ahead (a forgery, or a stray) makes no
        genuine datagram after it stale: it is dropped when the expected one
        comes, and nothing is counted lost.
        """
        frames = [(1, n, bytes([n]) * 30) for n in range(40)]
        framer = UdpStrFramer(100)
        genuine = framer.pack_batch(PacketBatch.from_packets(frames), 65535, 1)
        last = framer.flush()
        genuine += [last] if last is not None else []
        forged = datagram(8, 5 + 80, PKTHDR.pack(7, 7, 3, 3, 5000) + b"bad")
        decoder = UdpStrDecoder()
        packets = []
        for i, d in enumerate(genuine):
            packets += decoder.feed(d)
            if i == 5:
                packets += decoder.feed(forged)
        packets += decoder.release_held()
        self.assertEqual([p.npkt for p in packets], list(range(1, 41)))
        self.assertEqual(
            (
                decoder.lost_datagrams,
                decoder.lost_packets,
                decoder.stale_datagrams,
                decoder.unconfirmed_datagrams,
            ),
            (0, 0, 0, 1),
        )

    def test_seqnoJumpBeyondWindow(self) -> None:
        """A confirmed seqno jump past the window is a resynchronisation, not billions lost."""
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A))
        self.assertEqual(decoder.feed(datagram(8, 2**31, PKTHDR.pack(1, 1, 1, 1, 2) + b"a")), [])
        self.assertEqual(len(decoder.feed(datagram(8, 2**31 + 1, PKTHDR.pack(1, 1, 1, 1, 3) + b"b"))), 2)
        self.assertEqual((decoder.lost_datagrams, decoder.resyncs, decoder.lost_packets), (0, 1, 0))

    def test_implausibleLengths(self) -> None:
        """A packet whose caplen is more than its length is counted as malformed and skipped, the rest kept."""
        bad = PKTHDR.pack(1, 1, 3, 2, 2) + b"abc"
        decoder = UdpStrDecoder()
        got = decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A + bad + PKTHDR.pack(5, 6, 1, 1, 3) + b"x"))
        self.assertEqual([p.npkt for p in got], [1, 3])
        self.assertEqual((decoder.malformed, decoder.lost_packets), (1, 1))

    def test_caplen4GB(self) -> None:
        """A caplen of 4 GB is malformed: nothing is allocated for it, the next datagram decodes."""
        decoder = UdpStrDecoder()
        self.assertEqual(
            decoder.feed(datagram(8, 0, PKTHDR.pack(1, 1, 0xFFFFFFFF, 0xFFFFFFFF, 1) + b"abc")), []
        )
        self.assertEqual((decoder.malformed, decoder.in_progress), (1, 0))
        self.assertEqual(decoder.feed(datagram(8, 1, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])

    def test_lostDatagramNoHeader(self) -> None:
        """After a gap, a datagram in which no header begins is skipped whole."""
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:2]))
        self.assertEqual(decoder.feed(datagram(0xFFFF, 2, FRAME_A[4:6])), [])
        self.assertEqual(
            decoder.feed(datagram(12, 3, FRAME_A[6:] + PKTHDR_B + FRAME_B)), captured(PACKETS)[1:]
        )
        self.assertEqual((decoder.lost_datagrams, decoder.lost_packets, decoder.malformed), (1, 1, 0))

    def test_staleDatagram(self) -> None:
        """A datagram older than expected (late or repeated) is dropped and counted."""
        first = datagram(8, 0, PKTHDR_A + FRAME_A)
        decoder = UdpStrDecoder()
        self.assertEqual(decoder.feed(first), captured(PACKETS)[:1])
        self.assertEqual(decoder.feed(first), [])
        self.assertEqual(decoder.stale_datagrams, 1)
        self.assertEqual(decoder.feed(datagram(8, 1, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])
        self.assertEqual((decoder.lost_datagrams, decoder.lost_packets), (0, 0))

    def test_seqnoWraps(self) -> None:
        """seqno 0 follows 2**32 - 1 without a gap; 2**32 - 1 after 0 is stale."""
        decoder = UdpStrDecoder()
        decoder.expected_seqno = 0xFFFFFFFF
        decoder.feed(datagram(8, 0xFFFFFFFF, PKTHDR_A + FRAME_A))
        self.assertEqual(decoder.feed(datagram(8, 0, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])
        self.assertEqual(decoder.feed(datagram(8, 0xFFFFFFFF, PKTHDR_B + FRAME_B)), [])
        self.assertEqual((decoder.lost_datagrams, decoder.stale_datagrams), (0, 1))

    def test_npktWraps(self) -> None:
        """npkt is a u32: the gap is counted across the wrap."""
        packets = numbered(1, 2, 3, 4)
        framer = UdpStrFramer(1472)
        framer.pack_batch(PacketBatch.from_packets(packets[:1]), 65535, 0xFFFFFFF0)
        framer.pack_batch(PacketBatch.from_packets(packets[1:2]), 65535, 0xFFFFFFFF)
        framer.pack_batch(PacketBatch.from_packets(packets[2:]), 65535, 2)
        flushed = framer.flush()
        assert flushed is not None
        decoder = UdpStrDecoder()
        decoder.npkts.expected = 0xFFFFFFF0
        self.assertEqual([p.npkt for p in decoder.feed(flushed)], [0xFFFFFFF0, 0xFFFFFFFF, 2, 3])
        self.assertEqual(decoder.lost_packets, 14 + 2)

    def test_notUdpStr(self) -> None:
        """
        A datagram too short for the header, of another version or type is
        counted and ignored: the stream goes on as if it had not come.
        """
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:4]))
        for junk in [
            b"",
            h("00 6e 0008 000000"),
            h("01 6e 000e 00000001") + FRAME_A[4:],
            h("00 07 0000 00000006") + FRAME_A[4:],
        ]:
            self.assertEqual(decoder.feed(junk), [])
        self.assertEqual(decoder.malformed, 4)
        self.assertEqual(decoder.feed(datagram(14, 1, FRAME_A[4:] + PKTHDR_B + FRAME_B)), captured(PACKETS))
        self.assertEqual(decoder.lost_datagrams, 0)

    def test_firstHeaderOutOfRange(self) -> None:
        """A firsthdridx inside the header or past the end makes the datagram malformed."""
        for first in [0, 7, 8 + 50, 0xFFFE]:
            decoder = UdpStrDecoder()
            self.assertEqual(decoder.feed(datagram(first, 0, PKTHDR_A + FRAME_A + PKTHDR_B)), [])
            self.assertEqual(decoder.malformed, 1)
            self.assertEqual(decoder.expected_seqno, 1)
            self.assertEqual(decoder.feed(datagram(8, 1, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])

    def test_firstHeaderContradicts(self) -> None:
        """
        A firsthdridx that does not fall where the packet in progress ends
        drops that packet; reading goes on at the firsthdridx.
        """
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:4]))
        # Packet 1 ends at 14, but firsthdridx says 37.
        body = FRAME_A[4:] + PKTHDR_B + FRAME_B + PKTHDR_B + FRAME_B
        self.assertEqual(decoder.feed(datagram(37, 1, body)), captured(PACKETS)[1:])
        self.assertEqual((decoder.malformed, decoder.lost_packets, decoder.in_progress), (1, 1, 0))

    def test_firstHeaderContradictsGarbage(self) -> None:
        """
        When firsthdridx points into the middle of a packet, what is read
        there is nonsense, caught by its caplen here; the stream is picked up
        in the next datagram.
        """
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:4]))
        self.assertEqual(decoder.feed(datagram(13, 1, FRAME_A[4:] + PKTHDR_B + FRAME_B)), [])
        self.assertEqual((decoder.malformed, decoder.in_progress), (1, 0))
        self.assertEqual(decoder.feed(datagram(8, 2, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])

    def test_noFirstHeaderContradicts(self) -> None:
        """
        0xFFFF when the packet in progress ends inside the datagram: the
        packet is dropped, not delivered.
        """
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A[:4]))
        self.assertEqual(decoder.feed(datagram(0xFFFF, 1, FRAME_A[4:] + PKTHDR_B)), [])
        self.assertEqual((decoder.malformed, decoder.lost_packets), (1, 0))
        self.assertEqual(decoder.feed(datagram(8, 2, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])
        self.assertEqual(decoder.lost_packets, 1)

    def test_headerWhereTailExpected(self) -> None:
        """With no packet in progress, a datagram must begin with a header."""
        decoder = UdpStrDecoder()
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A))
        self.assertEqual(decoder.feed(datagram(9, 1, b"?" + PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])
        self.assertEqual(decoder.malformed, 1)

    def test_absurdCaplen(self) -> None:
        """
        A caplen over 262144 makes the datagram malformed: nothing is kept
        for it, and the stream is picked up again at the next first header.
        """
        decoder = UdpStrDecoder()
        huge = PKTHDR.pack(1, 2, MAX_CAPLEN + 1, MAX_CAPLEN + 1, 1)
        self.assertEqual(decoder.feed(datagram(8, 0, huge + b"x" * 30)), [])
        self.assertEqual((decoder.malformed, decoder.in_progress), (1, 0))
        self.assertEqual(decoder.feed(datagram(0xFFFF, 1, b"x" * 30)), [])
        self.assertEqual(decoder.feed(datagram(8, 2, PKTHDR_B + FRAME_B)), captured(PACKETS)[1:])
        self.assertEqual(decoder.malformed, 1)

    def test_absurdCaplenSplitHeader(self) -> None:
        """An absurd caplen in a header cut over datagrams is caught too."""
        decoder = UdpStrDecoder()
        huge = PKTHDR.pack(1, 2, 0xFFFFFFFF, 5, 1)
        decoder.feed(datagram(8, 0, PKTHDR_A + FRAME_A + huge[:4]))
        self.assertEqual(decoder.feed(datagram(0xFFFF, 1, huge[4:] + b"x" * 40)), [])
        self.assertEqual((decoder.malformed, decoder.in_progress), (1, 0))

    def test_largestCaplen(self) -> None:
        """A packet of 262144 bytes is still read."""
        big = [(1, 2, b"\x5a" * MAX_CAPLEN)]
        decoder, packets = decode(frame([big], 9000))
        self.assertEqual(packets, captured(big))
        self.assertEqual(decoder.malformed, 0)

    @given(
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 6), st.binary(max_size=80)), max_size=30)
    )
    def test_garbage(self, datagrams: list[tuple[int, int, bytes]]) -> None:
        """
        Nonsense with a udpstr header never raises and never makes the
        decoder hold more than one packet's worth of bytes.
        """
        decoder = UdpStrDecoder()
        for first, seqno, body in datagrams:
            decoder.feed(datagram(first, seqno, body))
            self.assertLessEqual(decoder.in_progress, 20 + MAX_CAPLEN)


@st.composite
def captures(draw: st.DrawFn) -> tuple[list[list[Packet]], int, int]:
    """
    Packets of 0 to 3000 bytes (sometimes up to 9000) in batches, an MTU in
    [64, 9000] and a snaplen.
    """
    sizes = draw(st.lists(st.integers(0, 100) | st.integers(0, 3000) | st.integers(0, 9000), max_size=25))
    rng = random.Random(draw(st.integers(0, 2**32)))
    packets = [(rng.getrandbits(32), rng.randrange(1_000_000), rng.randbytes(size)) for size in sizes]
    cuts = sorted(draw(st.lists(st.integers(0, len(packets)), max_size=5)))
    batches = [packets[a:b] for a, b in zip([0] + cuts, cuts + [len(packets)])]
    mtu = draw(st.integers(64, 9000) | st.sampled_from([64, 65, 100, 1472, 9000]))
    snaplen = draw(st.just(262144) | st.integers(0, 9000))
    return batches, mtu, snaplen


def stream_layout(
    batches: list[list[Packet]], snaplen: int, datagrams: list[bytes]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """
    Where each packet record and each datagram's share of the stream lie in
    the stream (start, end), worked out from the sizes alone.
    """
    records = []
    position = 0
    for batch in batches:
        for _, _, data in batch:
            size = 20 + min(len(data), snaplen)
            records.append((position, position + size))
            position += size
    spans = []
    position = 0
    for d in datagrams:
        spans.append((position, position + len(d) - 8))
        position += len(d) - 8
    return records, spans


class FramingPropertyTests(SynchronousTestCase):
    @given(captures(), st.booleans())
    def test_layout(self, capture: tuple[list[list[Packet]], int, int], flush_each: bool) -> None:
        """
        The datagrams are the fork's, byte for byte; each is at most the
        MTU, carries version 0, type 110 and the next seqno from 0; together
        they carry the record stream; firsthdridx is where the first record
        that starts in them starts, or 0xFFFF; a record starts with more than
        28 bytes of room, so its header is whole; only a flush sends a
        datagram with 28 bytes of room or more.
        """
        batches, mtu, snaplen = capture
        datagrams = frame(batches, mtu, snaplen, flush_each)
        self.assertEqual(datagrams, fork_model(batches, mtu, snaplen, flush_each))

        everything = [p for batch in batches for p in batch]
        stream = encode_packet_records(PacketBatch.from_packets(everything), snaplen, 1)
        self.assertEqual(b"".join(d[8:] for d in datagrams), stream)
        records, spans = stream_layout(batches, snaplen, datagrams)
        for seqno, (d, (a, b)) in enumerate(zip(datagrams, spans)):
            self.assertLessEqual(len(d), mtu)
            self.assertGreater(len(d), 8)
            ver, mtype, first, got_seqno = struct.unpack_from("!BBHI", d)
            self.assertEqual((ver, mtype, got_seqno), (0, 110, seqno))
            starts = [s for s, _ in records if a <= s < b]
            self.assertEqual(first, 8 + starts[0] - a if starts else 0xFFFF)
            for s in starts:
                self.assertLess(8 + s - a, mtu - 28)
            if not flush_each and seqno < len(datagrams) - 1:
                self.assertGreaterEqual(len(d), mtu - 28)

    @given(captures(), st.booleans())
    def test_roundTrip(self, capture: tuple[list[list[Packet]], int, int], flush_each: bool) -> None:
        """Every packet comes back byte for byte, with nothing counted lost."""
        batches, mtu, snaplen = capture
        decoder, packets = decode(frame(batches, mtu, snaplen, flush_each))
        self.assertEqual(packets, captured([p for batch in batches for p in batch], snaplen))
        self.assertEqual(
            (decoder.lost_datagrams, decoder.lost_packets, decoder.stale_datagrams, decoder.malformed),
            (0, 0, 0, 0),
        )
        self.assertEqual(decoder.in_progress, 0)

    @given(captures())
    def test_flushEachBatch(self, capture: tuple[list[list[Packet]], int, int]) -> None:
        """Flushing after every batch or only at the end gives the same packets."""
        batches, mtu, snaplen = capture
        self.assertEqual(
            decode(frame(batches, mtu, snaplen, flush_each=True))[1],
            decode(frame(batches, mtu, snaplen, flush_each=False))[1],
        )

    @given(captures(), st.booleans(), st.data())
    def test_dropOne(
        self, capture: tuple[list[list[Packet]], int, int], flush_each: bool, data: st.DataObject
    ) -> None:
        """
        Without one datagram, exactly the packets with a byte in it are
        lost; the decoder counts the datagram and those packets once a later
        datagram and packet show the gaps.
        """
        batches, mtu, snaplen = capture
        datagrams = frame(batches, mtu, snaplen, flush_each)
        if not datagrams:
            return
        dropped = data.draw(st.integers(0, len(datagrams) - 1), label="dropped")
        records, spans = stream_layout(batches, snaplen, datagrams)
        a, b = spans[dropped]
        expected = captured([p for batch in batches for p in batch], snaplen)
        kept = [p for p, (s, e) in zip(expected, records) if not (s < b and a < e)]
        lost = [p.npkt for p, (s, e) in zip(expected, records) if s < b and a < e]

        decoder, packets = decode(datagrams[:dropped] + datagrams[dropped + 1 :])
        self.assertEqual(packets, kept)
        # A gap counts once a datagram after it is continued by the next one.
        self.assertEqual(decoder.lost_datagrams, 1 if dropped < len(datagrams) - 2 else 0)
        last_seen = max((p.npkt for p in packets), default=0)
        self.assertEqual(decoder.lost_packets, len([n for n in lost if n < last_seen]))
        self.assertEqual((decoder.stale_datagrams, decoder.malformed), (0, 0))
        # What the sender counts as dropped when the kernel refuses that datagram.
        self.assertEqual(packets_touched(datagrams[dropped]), len(lost))


def scattered_batch(rng: random.Random, packets: list[Packet], shuffle: bool) -> PacketBatch:
    """
    A batch of C{packets} whose bytes lie in C{data} with gaps between them
    (as sampling leaves them) and, if C{shuffle}, in another order than
    the records'.
    """
    order = list(range(len(packets)))
    if shuffle:
        rng.shuffle(order)
    data = bytearray()
    places = [0] * len(packets)
    for index in order:
        data += rng.randbytes(rng.choice((0, 0, 1, 7, 100)))
        places[index] = len(data)
        data += packets[index][2]
    data += rng.randbytes(rng.choice((0, 3)))
    records = [BATCH_RECORD.pack(sec, usec, at, len(p)) for (sec, usec, p), at in zip(packets, places)]
    return PacketBatch(bytes(data), b"".join(records))


Step = tuple[str, PacketBatch, int, int]
"""C{("batch", batch, snaplen, first_npkt)}, or C{("flush", ...)} with the rest unused."""


def reference_framer(steps: list[Step], mtu: int, seqno: int) -> list[list[bytes]]:
    """
    What each step gives: C{daemon_udpstr_write} and C{daemon_udpstr_flush}
    of ExtraHop's rpcapd transcribed one packet at a time, with a byte
    buffer in place of the iovec array (whose 32-entry limit is left out,
    as in the framer), reading the batch records directly: the datagrams a
    batch completes, or the flushed datagram (or none).
    """
    results: list[list[bytes]] = []
    buf = bytearray(8)  # the udpstr header's place: iov_len starts at 8
    firsthdr: Optional[int] = None

    def datagram(length: int) -> bytes:
        first = 0xFFFF if firsthdr is None else firsthdr
        return struct.pack("!BBHI", 0, 110, first, seqno) + bytes(buf[8:length])

    for kind, batch, snaplen, first_npkt in steps:
        out = []
        if kind == "flush":
            if len(buf) > 8:
                out.append(datagram(len(buf)))
                seqno = (seqno + 1) & 0xFFFFFFFF
                firsthdr = None
                buf = bytearray(8)
            results.append(out)
            continue
        npkt = first_npkt
        for sec, usec, offset, length in BATCH_RECORD.iter_unpack(batch.records):
            assert len(buf) < mtu - 28
            if firsthdr is None:
                firsthdr = len(buf)
            caplen = min(length, snaplen)
            buf += PKTHDR.pack(sec, usec, caplen, length, npkt & 0xFFFFFFFF)
            buf += batch.data[offset : offset + caplen]
            npkt += 1
            while len(buf) >= mtu - 28:
                length = min(len(buf), mtu)
                out.append(datagram(length))
                seqno = (seqno + 1) & 0xFFFFFFFF
                firsthdr = None
                buf = bytearray(8) + buf[length:]
        results.append(out)
    return results


@st.composite
def framer_runs(draw: st.DrawFn) -> tuple[list[Step], int, int]:
    """
    Batches of packets of 0 to 1600 bytes (contiguous, or scattered in
    their buffer), each with its own snaplen in [1, 65535] (just below or
    at its longest packet too) and first
    packet number (near the u32 wrap too), flushes between some, an MTU
    in [100, 9000] (or at the limits) and a first seqno (near its wrap too).
    """
    rng = random.Random(draw(st.integers(0, 2**32)))
    mtu = draw(st.integers(100, 9000) | st.sampled_from([MIN_MTU, 100, 1472, 9000, MAX_MTU]))
    seqno = draw(st.just(0) | st.integers(0xFFFFFFFF - 3, 0xFFFFFFFF) | st.integers(0, 0xFFFFFFFF))
    big = draw(st.booleans())
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            steps.append(("flush", PacketBatch(b"", b""), 0, 0))
            continue
        count = draw(st.integers(0, 300 if big else 40))
        packets = [
            (
                rng.getrandbits(32),
                rng.getrandbits(32),
                rng.randbytes(rng.choice((rng.randrange(1601), 64, 1000))),
            )
            for _ in range(count)
        ]
        layout = draw(st.sampled_from(["contiguous", "gaps", "shuffled"]))
        if layout == "contiguous":
            batch = PacketBatch.from_packets(packets)
        else:
            batch = scattered_batch(rng, packets, layout == "shuffled")
        longest = max((len(p) for _, _, p in packets), default=0)
        snaplen = draw(
            st.integers(1, 65535)
            | st.sampled_from([1, 64, 65535, max(1, longest - 1), max(1, longest)])
            | st.integers(1, 1600)
        )
        first_npkt = draw(st.integers(0, 0xFFFFFFFF) | st.integers(0xFFFFFFFF - 700, 0xFFFFFFFF) | st.just(1))
        steps.append(("batch", batch, snaplen, first_npkt))
    return steps, mtu, seqno


class FramerReferenceTests(SynchronousTestCase):
    """L{UdpStrFramer} against a packet-at-a-time reference, call by call."""

    @given(framer_runs())
    def test_sameBytes(self, run: tuple[list[Step], int, int]) -> None:
        """
        Every call returns the reference's datagrams, byte for byte and no
        more or fewer, whatever the snaplen, packet numbers, seqno, buffer
        layout and batch boundaries; C{pending} and C{next_seqno} follow.
        """
        steps, mtu, seqno = run
        framer = UdpStrFramer(mtu)
        framer._seqno = seqno
        expected = reference_framer(steps + [("flush", PacketBatch(b"", b""), 0, 0)], mtu, seqno)
        for (kind, batch, snaplen, first_npkt), want in zip(steps, expected):
            if kind == "flush":
                last = framer.flush()
                self.assertEqual([] if last is None else [last], want)
            else:
                self.assertEqual(framer.pack_batch(batch, snaplen, first_npkt), want)
            seqno = (seqno + len(want)) & 0xFFFFFFFF
            self.assertEqual(framer.next_seqno, seqno)
        last = framer.flush()
        self.assertEqual([] if last is None else [last], expected[-1])
        self.assertEqual(framer.pending, 0)

    @given(framer_runs())
    def test_decoderGetsEveryPacket(self, run: tuple[list[Step], int, int]) -> None:
        """The decoder reads back every packet of every batch, cut to its snaplen and numbered."""
        steps, mtu, seqno = run
        framer = UdpStrFramer(mtu)
        datagrams: list[bytes] = []
        sent: list[CapturedPacket] = []
        for kind, batch, snaplen, first_npkt in steps:
            if kind == "flush":
                last = framer.flush()
                datagrams += [] if last is None else [last]
                continue
            datagrams += framer.pack_batch(batch, snaplen, first_npkt)
            for n, (sec, usec, offset, length) in enumerate(BATCH_RECORD.iter_unpack(batch.records)):
                caplen = min(length, snaplen)
                data = batch.data[offset : offset + caplen]
                sent.append(CapturedPacket(sec, usec, caplen, length, (first_npkt + n) & 0xFFFFFFFF, data))
        last = framer.flush()
        datagrams += [] if last is None else [last]
        decoder, packets = decode(datagrams)
        self.assertEqual(packets, sent)
        self.assertEqual((decoder.lost_datagrams, decoder.stale_datagrams, decoder.malformed), (0, 0, 0))

    def test_pendingKeepsFirstHeader(self) -> None:
        """
        A batch that leaves a packet's start waiting, then one that fills
        the datagram: firsthdridx points at the first batch's packet.
        """
        framer = UdpStrFramer(100)
        self.assertEqual(framer.pack_batch(PacketBatch.from_packets(numbered(10)), 65535, 1), [])
        datagrams = framer.pack_batch(PacketBatch.from_packets(numbered(0, 100)), 65535, 2)
        self.assertEqual(datagrams[0][:8], h("00 6e 0008 00000000"))
        self.assertEqual(datagrams[0][8:28], pkthdr(1, 10))
        self.assertEqual(len(datagrams[0]), 100)

    def test_snaplenOneBelowLongest(self) -> None:
        """Only the packet one byte longer than the snaplen is cut; its header keeps the wire length."""
        framer = UdpStrFramer(1472)
        framer.pack_batch(PacketBatch.from_packets(numbered(10, 11)), 10, 1)
        self.assertEqual(
            framer.flush(),
            h("00 6e 0008 00000000")
            + pkthdr(1, 10)
            + b"\x01" * 10
            # packet 2: caplen 10 of 11 bytes
            + h("00000002 00000000 0000000a 0000000b 00000002")
            + b"\x02" * 10,
        )

    def test_npktWrapsInBatch(self) -> None:
        """Packet numbers are u32s: a batch numbered from 2**32 - 1 goes on with 0 and 1."""
        framer = UdpStrFramer(1472)
        framer.pack_batch(PacketBatch.from_packets(numbered(0, 0, 0)), 65535, 0xFFFFFFFF)
        datagram = framer.flush()
        assert datagram is not None
        self.assertEqual(
            [datagram[8 + 20 * i + 16 : 8 + 20 * i + 20] for i in range(3)],
            [h("ffffffff"), h("00000000"), h("00000001")],
        )

    def test_packetsOutOfOrderInBuffer(self) -> None:
        """
        Packets whose bytes lie in the batch's buffer in another order than
        their records (and with gaps) are framed in record order.
        """
        data = b"..BBBB.AAA"
        records = b"".join(
            [
                BATCH_RECORD.pack(1, 0, 7, 3),  # AAA
                BATCH_RECORD.pack(2, 0, 2, 4),  # BBBB
            ]
        )
        framer = UdpStrFramer(1472)
        framer.pack_batch(PacketBatch(data, records), 65535, 1)
        self.assertEqual(
            framer.flush(),
            h("00 6e 0008 00000000")
            + h("00000001 00000000 00000003 00000003 00000001")
            + b"AAA"
            + h("00000002 00000000 00000004 00000004 00000002")
            + b"BBBB",
        )
