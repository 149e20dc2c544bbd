"""
udpstr on TCP data channels, as ExtraHop's rpcapd frames them: the
datagrams written back to back with no length in front.

L{UdpStrStreamParser} is fed what L{UdpStrFramer} sends (and what a framer
that cuts wherever the format allows would send) in every way a TCP stream
can be cut into reads, and broken streams; L{DataStreamParser} picks the
framing; the collector's L{TcpPacketReceiver} and C{rpcap-dump} report an
unreadable stream; the daemon's L{TcpUdpStrPacketSink}, L{DataChannels} and
C{--udpstr-tcp} send it.  No sockets.
"""

from __future__ import annotations

import io
import random
import struct
import sys
from typing import Any, Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.collector import dump
from rpcapsvc.collector.client import TcpPacketReceiver
from rpcapsvc.collector.dump import EXIT_DATA_CHANNEL, DataChannelError
from rpcapsvc.connections import TlsSettings
from rpcapsvc.protocol.datachannel import (
    PKTHDR,
    CapturedPacket,
    PacketBatch,
    PacketStreamParser,
    encode_packet_records,
    encode_packet_stream,
)
from rpcapsvc.protocol.udpstr import (
    MAX_CAPLEN,
    UDPSTR_HEADER,
    DataStreamParser,
    UdpStrFramer,
    UdpStrStreamParser,
)
from rpcapsvc.protocol.wire import OpenRequest, StartCapFlags, StartCaptureReply, StartCaptureRequest
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.datachannel import DataChannels, IPacketSink, TcpPacketSink, TcpUdpStrPacketSink
from rpcapsvc.service import RpcapdService
from rpcapsvc.tap import makeService
from rpcapsvc.testing import FakeDataChannels

from . import test_dump
from ._fixtures import ICMP_PACKET, PEER_HOST, UDP_PACKET, Packet, captured
from .test_client import DAEMON_HOST
from .test_session import SessionTestBase
from .test_tap import OptionsTestBase

SNAPLEN = 262144


def frame(
    batches: list[list[Packet]], mtu: int, flush_each: bool = False, snaplen: int = SNAPLEN
) -> list[bytes]:
    """The datagrams L{UdpStrFramer} sends for C{batches}, flushed at the end (and after each batch)."""
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


def record_starts(packets: list[Packet], snaplen: int = SNAPLEN) -> tuple[bytes, list[int]]:
    """The record stream of C{packets} and where each record starts in it."""
    stream = encode_packet_records(PacketBatch.from_packets(packets), snaplen, 1)
    starts = []
    position = 0
    for _, _, data in packets:
        starts.append(position)
        position += 20 + min(len(data), snaplen)
    return stream, starts


def cut_anywhere(packets: list[Packet], mtu: int, short: list[bool], seqno: int = 0) -> list[bytes]:
    """
    Datagrams as the format allows them, not only as the fork cuts them:
    each is exactly C{mtu} bytes, cut wherever that falls (inside a packet
    header too), or, where C{short} says so, ends early at the first record
    end it holds.
    """
    stream, starts = record_starts(packets)
    ends = [s for s in starts[1:]] + [len(stream)]
    out = []
    position = 0
    turn = 0
    while position < len(stream):
        end = min(position + mtu - 8, len(stream))
        if short and short[turn % len(short)]:
            inside = [e for e in ends if position < e <= end]
            if inside:
                end = inside[0]
        turn += 1
        begun = [s for s in starts if position <= s < end]
        first = 8 + begun[0] - position if begun else 0xFFFF
        out.append(UDPSTR_HEADER.pack(0, 110, first, seqno & 0xFFFFFFFF) + stream[position:end])
        seqno += 1
        position = end
    return out


def stream_ends(datagrams: list[bytes]) -> list[int]:
    """Where, in the TCP stream of C{datagrams}, the last byte of each packet record lies."""
    where = []  # TCP stream offset of each record-stream byte
    offset = 0
    for d in datagrams:
        where += range(offset + 8, offset + len(d))
        offset += len(d)
    payload = b"".join(d[8:] for d in datagrams)
    ends = []
    position = 0
    while position < len(payload):
        position += 20 + PKTHDR.unpack_from(payload, position)[2]
        ends.append(where[position - 1])
    return ends


def feed_in(parser: Any, data: bytes, cuts: list[int]) -> list[CapturedPacket]:
    out = []
    for a, b in zip([0] + cuts, cuts + [len(data)]):
        out += parser.feed(data[a:b])
    return out


# Live timestamps never start with 00 6E, the bytes of a datagram header (1970-03-25).
timestamps = st.integers(0, 2**32 - 1).filter(lambda t: t >> 16 != 0x006E)


@st.composite
def captures(draw: st.DrawFn, min_size: int = 0, nonzero: bool = False) -> tuple[list[list[Packet]], int]:
    """Packets of 0 bytes to a few MTUs, in batches, and an MTU."""
    mtu = draw(st.sampled_from([64, 65, 100, 1472, 9000]) | st.integers(64, 3000))
    sizes = draw(
        st.lists(
            st.integers(min_size, 100) | st.integers(min_size, 3 * mtu) | st.sampled_from([0, 1, 7, 8, 9]),
            max_size=25,
        ).map(lambda sizes: [max(size, min_size) for size in sizes])
    )
    rng = random.Random(draw(st.integers(0, 2**32)))
    low = 1 if nonzero else 0
    packets = [
        (draw(timestamps), rng.randrange(1_000_000), bytes(rng.randint(low, 255) for _ in range(size)))
        for size in sizes
    ]
    cuts = sorted(draw(st.lists(st.integers(0, len(packets)), max_size=6)))
    return [packets[a:b] for a, b in zip([0] + cuts, cuts + [len(packets)])], mtu


def everything(batches: list[list[Packet]]) -> list[Packet]:
    return [p for batch in batches for p in batch]


class StreamParserTests(SynchronousTestCase):
    """Hand-built streams: what is delivered when, and the MTU learned."""

    def test_two_packets_one_datagram(self) -> None:
        packets = [(1, 2, ICMP_PACKET), (3, 4, UDP_PACKET)]
        [datagram] = frame([packets], 1472)
        parser = UdpStrStreamParser()
        self.assertEqual(parser.feed(datagram), captured(packets, SNAPLEN))
        self.assertEqual((parser.error, parser.mtu, parser.datagrams, parser.buffered), (None, None, 1, 0))

    def test_mtu_learned_from_a_cut(self) -> None:
        """The first datagram cut inside a packet says the MTU; later ones are checked against it."""
        packets = [(n, 0, bytes([n]) * 250) for n in range(1, 9)]
        datagrams = frame([packets], 100)
        parser = UdpStrStreamParser()
        self.assertEqual(parser.feed(b"".join(datagrams)), captured(packets, SNAPLEN))
        self.assertEqual(parser.mtu, 100)
        self.assertEqual(parser.datagrams, len(datagrams))
        self.assertIsNone(parser.error)

    def test_trickle(self) -> None:
        """A datagram flushed after each packet brings its packet at once, however sizes vary."""
        packets = [
            (1700000000 + n, n, bytes([0x41 + n]) * size) for n, size in enumerate([60, 1400, 90, 3000, 60])
        ]
        datagrams = frame([[p] for p in packets], 1472, flush_each=True)
        parser = UdpStrStreamParser()
        got = [parser.feed(d) for d in datagrams]
        # The 1400- and 3000-byte packets fill datagrams and are flushed in their last one.
        delivered = [[(p.ts_sec, p.ts_usec, p.data) for p in batch] for batch in got if batch]
        self.assertEqual(delivered, [[p] for p in packets])
        self.assertEqual(parser.buffered, 0)

    def test_held_back_only_while_ambiguous(self) -> None:
        """
        While the MTU is unknown, a packet ending in 00 past every datagram
        seen so far might have a datagram header cut into its last byte: it
        waits for the next bytes, or for the end of the stream.
        """
        packets = [(1, 0, b"\x01" * 60 + b"\x00"), (2, 0, b"\x02" * 30)]
        first, second = frame([[p] for p in packets], 1472, flush_each=True)
        parser = UdpStrStreamParser()
        self.assertEqual(parser.feed(first), [])
        # The next byte is 00, not 6E: no header at that last byte after all.
        self.assertEqual(parser.feed(second[:1]), captured(packets[:1], SNAPLEN))
        self.assertEqual(parser.feed(second[1:]), captured(packets, SNAPLEN)[1:])
        parser = UdpStrStreamParser()
        parser.feed(first)
        self.assertEqual(parser.end(), captured(packets[:1], SNAPLEN))
        self.assertEqual(parser.feed(second), [])  # nothing after the end

    def test_no_wait_once_shorter(self) -> None:
        """A packet ending in 00 in a datagram no longer than one already seen is not held."""
        packets = [(1, 0, b"\x01" * 70), (2, 0, b"\x02" * 60 + b"\x00")]
        first, second = frame([[p] for p in packets], 1472, flush_each=True)
        parser = UdpStrStreamParser()
        self.assertEqual(parser.feed(first), captured(packets[:1], SNAPLEN))
        self.assertEqual(parser.feed(second), captured(packets, SNAPLEN)[1:])

    def test_split_packet_header(self) -> None:
        """The fork never cuts a packet header, but the format allows it, and it is read."""
        packets = [(1, 0, b"\x01" * 30), (2, 0, b"\x02" * 5), (3, 0, b"\x03" * 100)]
        stream, starts = record_starts(packets)
        mtu = 8 + starts[2] + 7  # the third packet's header is cut after 7 bytes
        datagrams = cut_anywhere(packets, mtu, [])
        self.assertEqual(len(datagrams[0]), mtu)
        for chunk in (1, 3, len(stream)):
            parser = UdpStrStreamParser()
            data = b"".join(datagrams)
            self.assertEqual(
                feed_in(parser, data, list(range(chunk, len(data), chunk))), captured(packets, SNAPLEN)
            )
            self.assertEqual((parser.error, parser.mtu), (None, mtu))

    def test_packet_over_many_datagrams(self) -> None:
        """A packet longer than a datagram spans several, the middle ones with firsthdridx 0xFFFF."""
        packets = [(5, 5, bytes(range(256)) * 40)]
        datagrams = frame([packets], 64)
        self.assertGreater(len(datagrams), 100)
        self.assertEqual(struct.unpack_from("!H", datagrams[1], 2), (0xFFFF,))
        parser = UdpStrStreamParser()
        self.assertEqual(
            feed_in(parser, b"".join(datagrams), list(range(1, 20000, 7))), captured(packets, SNAPLEN)
        )
        self.assertEqual(parser.mtu, 64)

    def test_lost_packets_from_npkt(self) -> None:
        """TCP loses nothing in transit, but a gap in npkt (the daemon's) is counted."""
        framer = UdpStrFramer(1472)
        data = b"".join(framer.pack_batch(PacketBatch.from_packets([(1, 0, UDP_PACKET)]), SNAPLEN, 1))
        data += b"".join(framer.pack_batch(PacketBatch.from_packets([(2, 0, UDP_PACKET)]), SNAPLEN, 5))
        data += framer.flush() or b""
        parser = UdpStrStreamParser()
        self.assertEqual([p.npkt for p in parser.feed(data)], [1, 5])
        self.assertEqual(parser.lost_packets, 3)

    def test_seqno_wraps(self) -> None:
        packets = [(n, 0, bytes([n]) * 40) for n in range(1, 6)]
        datagrams = cut_anywhere(packets, 64, [False], seqno=2**32 - 2)
        self.assertGreater(len(datagrams), 3)
        parser = UdpStrStreamParser()
        self.assertEqual(parser.feed(b"".join(datagrams)), captured(packets, SNAPLEN))
        self.assertIsNone(parser.error)

    def test_trailing_partial_packet(self) -> None:
        """A stream cut short is no error: the packet in progress is just never delivered."""
        packets = [(1, 0, UDP_PACKET), (2, 0, ICMP_PACKET)]
        data = b"".join(frame([packets], 1472))
        parser = UdpStrStreamParser()
        self.assertEqual(parser.feed(data[:-5]), captured(packets[:1], SNAPLEN))
        self.assertEqual(parser.end(), [])
        self.assertIsNone(parser.error)
        self.assertGreater(parser.buffered, 0)


class StreamRoundTripTests(SynchronousTestCase):
    """What the framer sends comes back, however TCP cuts it into reads."""

    def check(self, batches: list[list[Packet]], mtu: int, datagrams: list[bytes], cuts: list[int]) -> None:
        data = b"".join(datagrams)
        parser = UdpStrStreamParser()
        largest = max((len(p[2]) for p in everything(batches)), default=0)
        got = []
        for a, b in zip([0] + cuts, cuts + [len(data)]):
            got += parser.feed(data[a:b])
            self.assertLessEqual(parser.buffered, 20 + largest + 28)  # one record, a header
        got += parser.end()
        self.assertIsNone(parser.error)
        self.assertEqual(got, captured(everything(batches), SNAPLEN))
        self.assertEqual((parser.lost_packets, parser.malformed, parser.datagrams), (0, 0, len(datagrams)))
        self.assertIn(parser.mtu, (None, mtu))
        cut_inside = any(
            len(d) == mtu and struct.unpack_from("!H", datagrams[i + 1], 2)[0] != 8
            for i, d in enumerate(datagrams[:-1])
        )
        if cut_inside:
            self.assertEqual(parser.mtu, mtu)

    @given(captures(), st.booleans())
    def test_all_at_once(self, capture: tuple[list[list[Packet]], int], flush_each: bool) -> None:
        batches, mtu = capture
        self.check(batches, mtu, frame(batches, mtu, flush_each), [])

    @given(captures(), st.booleans())
    def test_one_byte_at_a_time(self, capture: tuple[list[list[Packet]], int], flush_each: bool) -> None:
        batches, mtu = capture
        datagrams = frame(batches, mtu, flush_each)
        self.check(batches, mtu, datagrams, list(range(1, sum(map(len, datagrams)))))

    @given(captures(), st.booleans(), st.data())
    def test_random_reads(
        self, capture: tuple[list[list[Packet]], int], flush_each: bool, data: st.DataObject
    ) -> None:
        batches, mtu = capture
        datagrams = frame(batches, mtu, flush_each)
        size = sum(map(len, datagrams))
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(size - 1, 1)), max_size=60), label="cuts")))
        self.check(batches, mtu, datagrams, [c for c in cuts if c < size])

    @given(st.sampled_from([64, 100, 1472, 9000]), st.integers(0, 2**32), st.booleans())
    def test_each_mtu(self, mtu: int, seed: int, flush_each: bool) -> None:
        """At 64, 100, 1472 and 9000 bytes, with packets of 0 bytes to several MTUs."""
        rng = random.Random(seed)
        batches = [
            [
                (1700000000 + n, n, rng.randbytes(rng.choice([0, rng.randrange(60), rng.randrange(4 * mtu)])))
                for n in range(rng.randrange(8))
            ]
            for _ in range(rng.randrange(1, 5))
        ]
        datagrams = frame(batches, mtu, flush_each)
        size = sum(map(len, datagrams))
        for cuts in (
            [],
            list(range(1, size)),
            sorted(rng.sample(range(1, size), min(size - 1, 30))) if size > 1 else [],
        ):
            self.check(batches, mtu, datagrams, cuts)

    @given(captures(), st.lists(st.booleans(), max_size=8), st.data())
    def test_any_valid_cut(
        self, capture: tuple[list[list[Packet]], int], short: list[bool], data: st.DataObject
    ) -> None:
        """
        Datagrams cut wherever the format allows (exactly the MTU, inside a
        packet header too, or shorter at a record end) are read as well.
        """
        batches, mtu = capture
        datagrams = cut_anywhere(everything(batches), mtu, short)
        size = sum(map(len, datagrams))
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(size - 1, 1)), max_size=40), label="cuts")))
        self.check(batches, mtu, datagrams, [c for c in cuts if c < size])

    @given(captures(min_size=7, nonzero=True), st.booleans())
    def test_delivered_at_its_last_byte(
        self, capture: tuple[list[list[Packet]], int], flush_each: bool
    ) -> None:
        """
        Fed a byte at a time, each packet comes out with its last byte, not
        with the next datagram (packets whose last bytes cannot begin a
        datagram header: no 00 in them).
        """
        batches, mtu = capture
        datagrams = frame(batches, mtu, flush_each)
        data = b"".join(datagrams)
        ends = stream_ends(datagrams)
        parser = UdpStrStreamParser()
        delivered = []
        for i in range(len(data)):
            delivered += [i] * len(parser.feed(data[i : i + 1]))
        self.assertEqual(delivered, ends)


class BrokenStreamTests(SynchronousTestCase):
    """A stream that contradicts itself stops the parser with a one-line reason; nothing raises."""

    packets = [(n, 0, bytes([n]) * 40) for n in range(1, 6)]

    def broken(self, data: bytes, *words: str) -> UdpStrStreamParser:
        for chunk in (1, 7, len(data)):
            parser = UdpStrStreamParser()
            feed_in(parser, data, list(range(chunk, len(data), chunk)))
            parser.end()
            assert parser.error is not None
            self.assertNotIn("\n", parser.error)
            for word in words:
                self.assertIn(word, parser.error)
            self.assertEqual(parser.feed(data), [])
            self.assertEqual(parser.buffered, 0)
        return parser

    def test_not_udpstr(self) -> None:
        self.broken(encode_packet_stream(PacketBatch.from_packets(self.packets), SNAPLEN, 1), "00 07")

    def test_seqno_gap(self) -> None:
        """A datagram missing (TCP loses none: the sender is broken) is an error."""
        datagrams = frame([[p] for p in self.packets], 1472, flush_each=True)
        self.broken(b"".join(datagrams[:2] + datagrams[3:]), "datagram 3 follows datagram 1")

    def test_seqno_gap_after_mtu(self) -> None:
        datagrams = frame([self.packets * 3], 64)
        self.broken(b"".join(datagrams[:4] + datagrams[5:]), "follows datagram 3")

    def test_duplicate_datagram(self) -> None:
        datagrams = frame([[p] for p in self.packets], 1472, flush_each=True)
        self.broken(b"".join(datagrams[:2] + datagrams[1:]), "datagram 1 follows datagram 1")

    def test_firsthdridx_contradicts(self) -> None:
        datagrams = frame([[p] for p in self.packets], 1472, flush_each=True)
        datagrams[2] = datagrams[2][:2] + struct.pack("!H", 12) + datagrams[2][4:]
        self.broken(b"".join(datagrams), "firsthdridx 12")

    def test_firsthdridx_says_none(self) -> None:
        datagrams = frame([self.packets * 3], 64)
        for i, d in enumerate(datagrams):
            first = struct.unpack_from("!H", d, 2)[0]
            if 8 < first < 0xFFFF:
                datagrams[i] = d[:2] + b"\xff\xff" + d[4:]
                break
        self.broken(b"".join(datagrams), "firsthdridx")

    def test_caplen_too_large(self) -> None:
        header = UDPSTR_HEADER.pack(0, 110, 8, 0) + PKTHDR.pack(1, 0, MAX_CAPLEN + 1, MAX_CAPLEN + 1, 1)
        self.broken(header + bytes(100), "caplen")

    def test_no_boundary(self) -> None:
        """A datagram can hold no more than 65535 bytes."""
        record = PKTHDR.pack(1, 0, 100000, 100000, 1) + b"\x01" * 100000
        self.broken(UDPSTR_HEADER.pack(0, 110, 8, 0) + record, "65535")

    def test_garbage_after(self) -> None:
        data = b"".join(frame([self.packets], 1472))
        parser = self.broken(data + b"\xff" * 30)
        self.assertIn("caplen", parser.error or "")

    def test_longer_than_mtu(self) -> None:
        """Once the MTU is known, a header must sit at every MTU bytes."""
        datagrams = frame([self.packets * 3], 64)
        data = b"".join(datagrams)
        index = data.index(datagrams[5])
        self.broken(data[:index] + b"\x01" + data[index:], "expected a udpstr datagram header")

    def test_first_datagram_must_begin_with_a_packet(self) -> None:
        data = UDPSTR_HEADER.pack(0, 110, 20, 0) + PKTHDR.pack(1, 0, 4, 4, 1) + b"abcd"
        self.broken(data, "firsthdridx 20")

    @given(st.data())
    def test_mangled(self, data: st.DataObject) -> None:
        """Bytes flipped, dropped or added anywhere: an error or packets, never an exception."""
        batches = [[(1 + n, n, bytes([n + 1]) * (n * 37 % 300)) for n in range(12)]]
        stream = bytearray(b"".join(frame(batches, data.draw(st.sampled_from([64, 100, 1472])))))
        for _ in range(data.draw(st.integers(1, 3))):
            where = data.draw(st.integers(0, len(stream) - 1))
            how = data.draw(st.sampled_from(["flip", "drop", "add"]))
            if how == "flip":
                stream[where] ^= data.draw(st.integers(1, 255))
            elif how == "drop":
                del stream[where]
            else:
                stream.insert(where, data.draw(st.integers(0, 255)))
        parser = UdpStrStreamParser()
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=20))))
        feed_in(parser, bytes(stream), cuts)
        parser.end()
        self.assertTrue(parser.error is None or "\n" not in parser.error)

    def test_timestamp_like_a_header(self) -> None:
        """
        A packet stamped 1970-03-25 (ts_sec 0x006E....) reads as a datagram
        header: unless its microseconds happen to equal the next seqno, the
        header contradicts the stream, which is refused.
        """
        packets = [(1, 0, UDP_PACKET), (0x006E0008, 999, UDP_PACKET)]
        parser = UdpStrStreamParser()
        parser.feed(b"".join(frame([packets], 1472)))
        self.assertEqual(
            parser.error, "udpstr datagram 999 follows datagram 0 (seqno must go up by 1 over TCP)"
        )


class DataStreamParserTests(SynchronousTestCase):
    packets = [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)]

    def test_classic(self) -> None:
        data = encode_packet_stream(PacketBatch.from_packets(self.packets), SNAPLEN, 1)
        parser = DataStreamParser()
        self.assertIsNone(parser.framing)
        self.assertEqual(feed_in(parser, data, [1, 2, 30]), captured(self.packets, SNAPLEN))
        self.assertEqual(parser.framing, "classic")
        self.assertIsInstance(parser.parser, PacketStreamParser)
        self.assertEqual(
            (parser.error, parser.lost_packets, parser.malformed, parser.mtu), (None, 0, 0, None)
        )
        self.assertEqual(parser.end(), [])

    def test_udpstr(self) -> None:
        data = b"".join(frame([self.packets * 5], 100))
        parser = DataStreamParser()
        got = feed_in(parser, data, [1, 2, 30]) + parser.end()
        self.assertEqual(got, captured(self.packets * 5, SNAPLEN))
        self.assertEqual(parser.framing, "udpstr")
        self.assertIsInstance(parser.parser, UdpStrStreamParser)
        self.assertEqual(parser.mtu, 100)

    def test_udpstr_packets(self) -> None:
        data = b"".join(frame([self.packets], 1472))
        parser = DataStreamParser()
        self.assertEqual(parser.feed(data[:1]), [])
        self.assertEqual(parser.feed(data[1:]), captured(self.packets, SNAPLEN))

    def test_neither(self) -> None:
        """A TLS handshake where a plain stream was expected, say: refused, and for good."""
        parser = DataStreamParser()
        self.assertEqual(parser.feed(b"\x16"), [])
        self.assertIsNone(parser.error)
        self.assertEqual(parser.feed(b"\x03\x01\x02\x00"), [])
        self.assertEqual(parser.error, "not an RPCAP data stream (first bytes 16 03)")
        self.assertEqual(parser.feed(b"".join(frame([self.packets], 1472))), [])
        self.assertEqual(parser.end(), [])

    def test_error_of_the_chosen_parser(self) -> None:
        parser = DataStreamParser()
        parser.feed(UDPSTR_HEADER.pack(0, 110, 8, 0) + PKTHDR.pack(1, 0, 10**6, 10**6, 1))
        self.assertIn("caplen", parser.error or "")


class TcpReceiverTests(SynchronousTestCase):
    """The collector's TCP data channel reads udpstr too."""

    def setUp(self) -> None:
        self.batches: list[list[CapturedPacket]] = []
        self.receiver = TcpPacketReceiver(self.batches.append)
        self.transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", DAEMON_HOST, 40000))
        self.transport.protocol = self.receiver
        self.receiver.makeConnection(self.transport)

    def test_udpstr(self) -> None:
        packets = [(n, 0, UDP_PACKET) for n in range(1, 30)]
        data = b"".join(frame([packets], 200))
        for i in range(0, len(data), 50):
            self.receiver.dataReceived(data[i : i + 50])
        self.assertEqual([p for b in self.batches for p in b], captured(packets, SNAPLEN))
        self.assertTrue(all(self.batches))
        self.assertEqual(self.receiver.parser.framing, "udpstr")
        self.assertEqual((self.receiver.packets, self.receiver.bytes_received), (29, len(data)))
        self.assertIsNone(self.receiver.error)

    def test_loss_counts_npkt_gaps(self) -> None:
        framer = UdpStrFramer(1472)
        data = b"".join(framer.pack_batch(PacketBatch.from_packets([(1, 0, UDP_PACKET)]), SNAPLEN, 1))
        data += b"".join(framer.pack_batch(PacketBatch.from_packets([(2, 0, UDP_PACKET)]), SNAPLEN, 4))
        self.receiver.dataReceived(data + (framer.flush() or b""))
        self.assertEqual(self.receiver.loss.lost_packets, 2)

    def test_unreadable_stream_is_closed_and_reported(self) -> None:
        """
        Closed, and the error kept for the receiver's owner, who logs it once
        with who the daemon is (the collector: test_unreadable_data_connection).
        """
        logged: list[dict[str, Any]] = []
        self.receiver.log = Logger(observer=logged.append)
        datagrams = frame([[(n, 0, UDP_PACKET)] for n in range(1, 5)], 1472, flush_each=True)
        self.receiver.dataReceived(b"".join(datagrams[:1] + datagrams[2:]))
        self.assertEqual(len(self.batches), 1)
        self.assertIn("datagram 2 follows datagram 0", self.receiver.error or "")
        self.assertFalse(self.transport.connected)
        self.assertIsNone(self.successResultOf(self.receiver.lost))
        self.assertEqual(logged, [])  # not twice: its owner says it

    def test_not_rpcap(self) -> None:
        self.receiver.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertEqual(self.receiver.error, "not an RPCAP data stream (first bytes 48 54)")
        self.assertFalse(self.transport.connected)

    def test_held_packet_delivered_at_close(self) -> None:
        """A packet held back for bytes that could have been a header comes out when the stream ends."""
        packets = [(1, 0, b"\x01" * 60 + b"\x00")]
        self.receiver.dataReceived(b"".join(frame([packets], 1472)))
        self.assertEqual(self.batches, [])
        self.transport.loseConnection()
        self.assertEqual(self.batches, [captured(packets, SNAPLEN)])


class SinkTests(SynchronousTestCase):
    """The daemon's side: TcpUdpStrPacketSink over a StringTransport and a clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.transport = StringTransportWithDisconnection()
        self.writes: list[bytes] = []
        write = self.transport.write

        def counting(data: bytes) -> None:
            self.writes.append(data)
            write(data)

        self.transport.write = counting  # type: ignore[method-assign]
        self.sink = TcpUdpStrPacketSink(snaplen=200, mtu=100, clock=self.clock, flush_after=0.25)
        self.transport.protocol = self.sink
        self.sink.makeConnection(self.transport)

    def decoded(self) -> list[CapturedPacket]:
        parser = UdpStrStreamParser()
        packets = parser.feed(self.transport.value())
        self.assertIsNone(parser.error)
        return packets

    def test_one_write_per_batch(self) -> None:
        """The datagrams a batch completes go out joined in one write; the rest waits."""
        packets = [(n, 0, bytes([n]) * 90) for n in range(1, 6)]
        self.sink.write_batch(PacketBatch.from_packets(packets))
        self.assertEqual(len(self.writes), 1)
        self.assertEqual(self.sink.sent, 5)
        self.assertGreater(self.sink.framer.pending, 0)
        self.assertLess(len(self.decoded()), 5)
        self.clock.advance(0.25)
        self.assertEqual(len(self.writes), 2)
        self.assertEqual(self.decoded(), captured(packets, 200))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_npkt_and_snaplen_across_batches(self) -> None:
        first = [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET + bytes(300))]
        second = [(3, 0, b"\x01" * 10)]
        self.sink.write_batch(PacketBatch.from_packets(first))
        self.sink.write_batch(PacketBatch.from_packets(second))
        self.clock.advance(0.25)
        self.assertEqual(self.decoded(), captured(first + second, 200))

    def test_flush_timer_armed_once(self) -> None:
        self.sink.write_batch(PacketBatch.from_packets([(1, 0, b"\x01" * 10)]))
        self.clock.advance(0.1)
        self.sink.write_batch(PacketBatch.from_packets([(2, 0, b"\x02" * 10)]))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.15)
        self.assertEqual(len(self.decoded()), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_empty_batch(self) -> None:
        self.sink.write_batch(PacketBatch(b"", b""))
        self.assertEqual((self.writes, self.clock.getDelayedCalls()), ([], []))

    def test_close_flushes(self) -> None:
        self.sink.write_batch(PacketBatch.from_packets([(1, 0, UDP_PACKET)]))
        self.sink.close()
        self.assertEqual(self.decoded(), captured([(1, 0, UDP_PACKET)], 200))
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_peer_closing(self) -> None:
        """When the collector hangs up, the flush timer goes and the loss is reported."""
        lost: list[str] = []
        self.sink.set_lost_callback(lost.append)
        self.sink.write_batch(PacketBatch.from_packets([(1, 0, UDP_PACKET)]))
        self.transport.loseConnection()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(lost), 1)

    def test_collector_reads_it(self) -> None:
        """What the sink writes, the collector's receiver reads, in whatever reads TCP makes."""
        packets = [(1700000000 + n, n, bytes([n % 250 + 1]) * (n * 53 % 400)) for n in range(40)]
        for i in range(0, 40, 7):
            self.sink.write_batch(PacketBatch.from_packets(packets[i : i + 7]))
        self.sink.close()
        batches: list[list[CapturedPacket]] = []
        receiver = TcpPacketReceiver(batches.append)
        receiver.makeConnection(StringTransportWithDisconnection())
        data = self.transport.value()
        for i in range(0, len(data), 333):
            receiver.dataReceived(data[i : i + 333])
        self.assertEqual([p for b in batches for p in b], captured(packets, 200))
        self.assertEqual(receiver.parser.mtu, 100)


class DataChannelsTests(SynchronousTestCase):
    def test_listen_tcp(self) -> None:
        reactor = MemoryReactorClock()
        channels = DataChannels(reactor, udp_mtu=1472, tcp_udpstr=True)
        _, d = channels.listen_tcp("192.0.2.1", "192.0.2.10", 200, read_timeout_ms=250)
        [(_, factory, _, _)] = reactor.tcpServers
        sink = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 4000))
        self.assertIsInstance(sink, TcpUdpStrPacketSink)
        self.assertEqual((sink.snaplen, sink.framer.mtu, sink._flush_after), (200, 1472, 0.25))
        sink.makeConnection(StringTransportWithDisconnection())
        self.assertIs(self.successResultOf(d), sink)

    def test_connect_tcp(self) -> None:
        reactor = MemoryReactorClock()
        channels = DataChannels(reactor, udp_mtu=9000, tcp_udpstr=True)
        d = channels.connect_tcp("192.0.2.10", 2003, 96, read_timeout_ms=40)
        reactor.advance(0)
        [(_, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual(port, 2003)
        self.assertNoResult(d)
        factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 2003)).makeConnection(
            StringTransportWithDisconnection()
        )
        sink = self.successResultOf(d)
        assert isinstance(sink, TcpUdpStrPacketSink)
        self.assertEqual((sink.snaplen, sink.framer.mtu, sink._flush_after), (96, 9000, 0.04))

    def test_classic_unless_asked(self) -> None:
        """Without tcp_udpstr, or without an MTU, TCP keeps libpcap's framing."""
        for options in ({"udp_mtu": 1472}, {"tcp_udpstr": True}, {}):
            reactor = MemoryReactorClock()
            DataChannels(reactor, **options).listen_tcp("192.0.2.1", "192.0.2.10", 200)  # type: ignore[arg-type]
            sink = reactor.tcpServers[-1][1].buildProtocol(IPv4Address("TCP", "192.0.2.10", 4000))
            self.assertIs(type(sink), TcpPacketSink)


class ReadTimeoutChannels(FakeDataChannels):
    """FakeDataChannels that also record the read timeout they are given."""

    def __init__(self) -> None:
        super().__init__()
        self.read_timeouts: list[int] = []

    def listen_tcp(
        self,
        interface: str,
        allowed_host: str,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> tuple[int, defer.Deferred[IPacketSink]]:
        self.read_timeouts.append(read_timeout_ms)
        return super().listen_tcp(interface, allowed_host, snaplen, tls)

    def connect_tcp(
        self,
        host: str,
        port: int,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> defer.Deferred[IPacketSink]:
        self.read_timeouts.append(read_timeout_ms)
        return super().connect_tcp(host, port, snaplen, tls)


class SessionReadTimeoutTests(SessionTestBase):
    """The session gives TCP data channels the capture's read timeout: a udpstr sink flushes after it."""

    def setUp(self) -> None:
        super().setUp()
        self.channels = ReadTimeoutChannels()
        self.factory = self.make_factory()

    def test_passive(self) -> None:
        client = self.opened()
        client.request(StartCaptureRequest(1500, 250, 0, 0))
        self.assertEqual(self.channels.read_timeouts, [250])

    def test_server_opens(self) -> None:
        client = self.opened()
        client.request(StartCaptureRequest(1500, 40, StartCapFlags.SERVEROPEN, 2003))
        self.assertEqual(self.channels.read_timeouts, [40])

    def test_none_given(self) -> None:
        """A read timeout of 0 is libpcap's default, 1000 ms."""
        client = self.opened()
        client.request(StartCaptureRequest(1500, 0, 0, 0))
        self.assertEqual(self.channels.read_timeouts, [1000])


class SessionEndToEndTests(SessionTestBase):
    """Our daemon's session with real data channels framing TCP as udpstr, read by our collector."""

    def test_passive_tcp_udpstr(self) -> None:
        factory = RpcapServerFactory(
            reactor=self.reactor,
            capture_system=self.system,
            policy=self.factory.policy,
            data_channels=DataChannels(self.reactor, udp_mtu=100, tcp_udpstr=True),
        )
        client = self.authed(factory)
        client.request(OpenRequest("eth0"))
        reply = client.request(StartCaptureRequest(1500, 300, 0, 0))
        self.assertIsInstance(reply, StartCaptureReply)
        sink = self.reactor.tcpServers[-1][1].buildProtocol(IPv4Address("TCP", PEER_HOST, 4000))
        self.assertIsInstance(sink, TcpUdpStrPacketSink)
        batches: list[list[CapturedPacket]] = []
        receiver = TcpPacketReceiver(batches.append)
        receiver.makeConnection(StringTransportWithDisconnection())
        transport = StringTransportWithDisconnection()
        transport.protocol = sink
        sink.makeConnection(transport)
        handle = self.system.handles[-1]
        packets = [(n, 0, ICMP_PACKET) for n in range(1, 4)]
        handle.inject(packets)
        for reader in list(self.reactor.readers):
            reader.doRead()
        self.reactor.advance(0.3)  # the quiet flush, after the read timeout
        receiver.dataReceived(transport.value())
        self.assertEqual([p for b in batches for p in b], captured(packets, 1500))
        self.assertEqual(receiver.parser.framing, "udpstr")


class DumpTests(SynchronousTestCase):
    """rpcap-dump: an unreadable data channel is an error, never a plain success."""

    # Whole runs against our own daemon in memory, set up as test_dump's are.
    setUp = test_dump.RunTests.setUp
    start = test_dump.RunTests.start
    flush = test_dump.RunTests.flush
    finished = test_dump.RunTests.finished

    def start_tcp(self, *argv: str) -> tuple[defer.Deferred[int], TcpPacketReceiver]:
        d = self.start(*argv, f"rpcap://{DAEMON_HOST}/eth0")
        self.reactor.advance(0)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        receiver = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", host, port))
        transport.protocol = receiver
        receiver.makeConnection(transport)
        self.flush()
        self.daemon.channels.pending[-1].callback(None)
        return d, receiver

    def test_udpstr_over_tcp(self) -> None:
        """A daemon framing TCP as udpstr (ExtraHop's) is read like any other."""
        d, receiver = self.start_tcp("-w", "-", "-c", "3")
        packets = [(n, 0, ICMP_PACKET) for n in range(1, 6)]
        receiver.dataReceived(b"".join(frame([packets], 100)))
        self.assertEqual(self.finished(d), 0)
        self.assertIn("3 packets captured", self.stderr.getvalue())

    def test_unreadable_stream(self) -> None:
        d, receiver = self.start_tcp("-w", "-")
        datagrams = frame([[(n, 0, ICMP_PACKET)] for n in range(1, 5)], 1472, flush_each=True)
        receiver.dataReceived(b"".join(datagrams[:2] + datagrams[3:]))
        for _ in range(20):
            self.flush()
        error = self.failureResultOf(d, DataChannelError).value
        self.assertEqual(
            str(error),
            "the data channel could not be read: udpstr datagram 3 follows datagram 1 (seqno must go up by 1 over TCP)",
        )
        self.assertIn("2 packets captured", self.stderr.getvalue())

    def test_nothing_decoded(self) -> None:
        """Bytes but not one packet (a stream cut inside its first packet) is no success either."""
        d, receiver = self.start_tcp("-w", "-")
        receiver.dataReceived(b"".join(frame([[(1, 0, ICMP_PACKET)]], 1472))[:30])
        [server] = self.daemon.factory.sessions
        server.transport.loseConnection()
        for _ in range(20):
            self.flush()
        error = self.failureResultOf(d, DataChannelError).value
        self.assertIn("not one packet could be decoded", str(error))

    def test_exit_status(self) -> None:
        """main() prints the reason on one line and exits with 3, apart from 1 and 2."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        outcome: list[Any] = []

        async def run(reactor: Any, args: Any) -> int:
            raise DataChannelError(
                "the data channel could not be read: not an RPCAP data stream (first bytes 16 03)"
            )

        self.patch(dump, "run", run)
        self.patch(dump.task, "react", lambda main: main(MemoryReactorClock()).addBoth(outcome.append))
        dump.main(["rpcap://h/eth0"])
        [result] = outcome
        assert isinstance(result, Failure)
        result.trap(SystemExit)
        self.assertEqual(result.value.code, EXIT_DATA_CHANNEL)
        self.assertEqual(EXIT_DATA_CHANNEL, 3)
        self.assertEqual(
            stderr.getvalue(),
            "rpcap-dump: the data channel could not be read: not an RPCAP data stream (first bytes 16 03)\n",
        )


class TapTests(OptionsTestBase):
    def test_needs_udp_mtu(self) -> None:
        self.assertIn("--udp-mtu", self.refused("-n", "--udpstr-tcp"))

    def test_wired_into_data_channels(self) -> None:
        service = makeService(self.parse("-n", "--udp-mtu", "1472", "--udpstr-tcp"))
        assert isinstance(service, RpcapdService)
        self.assertEqual((service.data_channels.udp_mtu, service.data_channels.tcp_udpstr), (1472, True))

    def test_off_by_default(self) -> None:
        service = makeService(self.parse("-n", "--udp-mtu", "1472"))
        self.assertFalse(service.data_channels.tcp_udpstr)
