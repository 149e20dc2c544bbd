"""
Tests for L{rpcapsvc.protocol.datachannel}: type-7 packet messages and the
udpstr record stream against hand-built bytes, snaplen truncation, and
Hypothesis round trips.
"""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.datachannel import (
    PKTHDR,
    CapturedPacket,
    ClassicDatagramDecoder,
    PacketBatch,
    PacketStreamParser,
    decode_packet_payload,
    encode_packet_messages,
    encode_packet_records,
    encode_packet_stream,
    iter_packet_messages,
)
from rpcapsvc.protocol.wire import MalformedMessage, MessageType, frame

from ._fixtures import FRAME_A, FRAME_B, PACKETS, PKTHDR_A, PKTHDR_B, captured, h


def native_u32(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, sys.byteorder) for v in values)


class PacketBatchTests(SynchronousTestCase):
    def test_fromPackets(self) -> None:
        """
        The data is the packets back to back; each record is four native
        u32s: ts_sec, ts_usec, offset into the data, caplen.
        """
        batch = PacketBatch.from_packets(PACKETS + [(7, 8, b"")])
        self.assertEqual(batch.data, FRAME_A + FRAME_B)
        self.assertEqual(
            batch.records,
            native_u32(1700000000, 123456, 0, 10)
            + native_u32(1700000001, 5, 10, 3)
            + native_u32(7, 8, 13, 0),
        )
        self.assertEqual(len(batch), 3)
        self.assertEqual(len(PacketBatch.from_packets([])), 0)


class EncodeTests(SynchronousTestCase):
    def test_messages(self) -> None:
        """Header type 7, plen = 20 + caplen, then the packet header and bytes."""
        messages = encode_packet_messages(PacketBatch.from_packets(PACKETS), 65535, 1)
        self.assertEqual(
            messages,
            [
                h("00 07 0000 0000001e") + PKTHDR_A + FRAME_A,
                h("00 07 0000 00000017") + PKTHDR_B + FRAME_B,
            ],
        )

    def test_records(self) -> None:
        """The udpstr form: packet headers and bytes, no RPCAP header."""
        records = encode_packet_records(PacketBatch.from_packets(PACKETS), 65535, 1)
        self.assertEqual(records, PKTHDR_A + FRAME_A + PKTHDR_B + FRAME_B)

    def test_firstNpkt(self) -> None:
        """Packets are numbered on from C{first_npkt}."""
        batch = PacketBatch.from_packets(PACKETS)
        messages = encode_packet_messages(batch, 65535, 41)
        self.assertEqual(messages[0][8 + 16 : 8 + 20], h("00000029"))
        self.assertEqual(messages[1][8 + 16 : 8 + 20], h("0000002a"))
        records = encode_packet_records(batch, 65535, 41)
        self.assertEqual(records[16:20], h("00000029"))
        self.assertEqual(records[20 + 10 + 16 : 20 + 10 + 20], h("0000002a"))

    def test_npktWraps(self) -> None:
        """
        C{npkt} is a u32 on the wire: past 2**32 - 1 it wraps, as libpcap's
        counter does, instead of failing the capture.
        """
        batch = PacketBatch.from_packets(PACKETS)
        messages = encode_packet_messages(batch, 65535, 0xFFFFFFFF)
        self.assertEqual(messages[0][8 + 16 : 8 + 20], h("ffffffff"))
        self.assertEqual(messages[1][8 + 16 : 8 + 20], h("00000000"))
        records = encode_packet_records(batch, 65535, 2**32 + 5)
        self.assertEqual(records[16:20], h("00000005"))
        self.assertEqual(records[20 + 10 + 16 : 20 + 10 + 20], h("00000006"))

    def test_snaplen(self) -> None:
        """
        A packet longer than the snaplen is cut: caplen and the data shrink,
        C{len} keeps the original length.  One exactly the snaplen is whole.
        """
        batch = PacketBatch.from_packets(PACKETS)
        messages = encode_packet_messages(batch, 3, 1)
        self.assertEqual(
            messages,
            [
                h("00 07 0000 00000017  6553f100 0001e240 00000003 0000000a 00000001") + FRAME_A[:3],
                h("00 07 0000 00000017") + PKTHDR_B + FRAME_B,
            ],
        )
        records = encode_packet_records(batch, 4, 1)
        self.assertEqual(
            records,
            h("6553f100 0001e240 00000004 0000000a 00000001") + FRAME_A[:4] + PKTHDR_B + FRAME_B,
        )

    def test_snaplenZero(self) -> None:
        [message] = encode_packet_messages(PacketBatch.from_packets(PACKETS[:1]), 0, 1)
        self.assertEqual(message, h("00 07 0000 00000014  6553f100 0001e240 00000000 0000000a 00000001"))

    def test_emptyBatch(self) -> None:
        batch = PacketBatch.from_packets([])
        self.assertEqual(encode_packet_messages(batch, 65535, 1), [])
        self.assertEqual(encode_packet_records(batch, 65535, 1), b"")

    def test_batchOffsets(self) -> None:
        """
        Records are followed wherever their offsets point, as in pcapy-ng's
        batches where the data need not be packed in record order.
        """
        data = b"....HELLO..WORLD"
        records = native_u32(1, 2, 11, 5) + native_u32(3, 4, 4, 5)
        messages = encode_packet_messages(PacketBatch(data, records), 65535, 1)
        self.assertEqual([m[28:] for m in messages], [b"WORLD", b"HELLO"])


class DecodeTests(SynchronousTestCase):
    def test_decodePayload(self) -> None:
        packet = decode_packet_payload(h("6553f100 0001e240 00000003 0000000a 00000007") + b"abc")
        self.assertEqual(packet, CapturedPacket(1700000000, 123456, 3, 10, 7, b"abc"))

    def test_decodeTruncated(self) -> None:
        self.assertRaises(MalformedMessage, decode_packet_payload, PKTHDR_A[:19])
        self.assertRaises(MalformedMessage, decode_packet_payload, PKTHDR_A + FRAME_A[:9])

    def test_iterWrongType(self) -> None:
        """Anything but type 7 on the data channel is refused."""
        stream = h("00 07 0000 00000017") + PKTHDR_B + FRAME_B + h("00 09 0000 00000000")
        packets = iter_packet_messages(stream)
        self.assertEqual(next(packets).data, FRAME_B)
        self.assertRaises(MalformedMessage, next, packets)


packet_lists = st.lists(
    st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 999_999), st.binary(max_size=200)),
    max_size=20,
)


class RoundTripTests(SynchronousTestCase):
    @given(packet_lists, st.integers(0, 300), st.integers(1, 2**31))
    def test_messages(self, packets, snaplen: int, first_npkt: int) -> None:
        """A TCP data stream of type-7 messages decodes to the packets, cut."""
        batch = PacketBatch.from_packets(packets)
        messages = encode_packet_messages(batch, snaplen, first_npkt)
        self.assertEqual(len(messages), len(packets))
        self.assertEqual(
            list(iter_packet_messages(b"".join(messages))),
            captured(packets, snaplen, first_npkt),
        )

    @given(packet_lists, st.integers(0, 300), st.integers(1, 2**32 - 1))
    def test_stream_is_the_messages_joined(self, packets, snaplen: int, first_npkt: int) -> None:
        """The TCP fast path writes exactly the per-packet messages, back to back."""
        batch = PacketBatch.from_packets(packets)
        self.assertEqual(
            encode_packet_stream(batch, snaplen, first_npkt),
            b"".join(encode_packet_messages(batch, snaplen, first_npkt)),
        )

    @given(packet_lists, st.integers(0, 300), st.integers(1, 2**31))
    def test_records(self, packets, snaplen: int, first_npkt: int) -> None:
        """The udpstr record stream reads back packet by packet."""
        stream = encode_packet_records(PacketBatch.from_packets(packets), snaplen, first_npkt)
        decoded = []
        offset = 0
        while offset < len(stream):
            packet = decode_packet_payload(stream[offset:])
            decoded.append(packet)
            offset += 20 + packet.caplen
        self.assertEqual(offset, len(stream))
        self.assertEqual(decoded, captured(packets, snaplen, first_npkt))


class PacketStreamParserTests(SynchronousTestCase):
    @given(packet_lists, st.lists(st.integers(1, 64), max_size=20))
    def test_any_split_gives_every_packet_once(self, packets, cuts: list[int]) -> None:
        stream = encode_packet_stream(PacketBatch.from_packets(packets), 262144, 1)
        parser = PacketStreamParser()
        got = []
        offset = 0
        for cut in cuts + [len(stream)]:
            got += parser.feed(stream[offset : offset + cut])
            offset += cut
        got += parser.feed(stream[offset:])
        self.assertEqual(got, captured(packets))
        self.assertIsNone(parser.error)

    def test_another_message_type_ends_the_stream(self) -> None:
        good = encode_packet_stream(PacketBatch.from_packets([(1, 0, b"abc")]), 262144, 1)
        parser = PacketStreamParser()
        self.assertEqual(len(parser.feed(good + h("00 02 0000 00000000") + good)), 1)
        self.assertIn("type 2", parser.error or "")
        self.assertEqual(parser.feed(good), [])

    def test_oversized_message_is_refused_at_its_header(self) -> None:
        parser = PacketStreamParser()
        self.assertEqual(parser.feed(h("00 07 0000 7fffffff")), [])
        self.assertIsNotNone(parser.error)


class ClassicDatagramDecoderTests(SynchronousTestCase):
    def datagram(self, npkt: int) -> bytes:
        return encode_packet_messages(PacketBatch.from_packets([(1, 0, b"x")]), 262144, npkt)[0]

    def test_gaps_are_counted(self) -> None:
        decoder = ClassicDatagramDecoder()
        for n in (1, 2, 5, 6, 9):
            self.assertEqual([p.npkt for p in decoder.feed(self.datagram(n))], [n])
        self.assertEqual(decoder.lost_packets, 4)

    def test_late_datagram_is_not_a_loss(self) -> None:
        decoder = ClassicDatagramDecoder()
        for n in (1, 3, 2, 4):
            decoder.feed(self.datagram(n))
        self.assertEqual(decoder.lost_packets, 1)

    def test_numbers_wrap(self) -> None:
        decoder = ClassicDatagramDecoder()
        decoder.sequence.expected = 2**32 - 5
        for n in (2**32 - 5, 2**32 - 2, 2**32 - 1, 1, 2):  # 0 is skipped: lost
            decoder.feed(self.datagram(n))
        self.assertEqual(decoder.lost_packets, 2 + 1)

    def test_forged_number_is_a_resync_not_a_loss(self) -> None:
        """
        One packet numbered about 2**31 ahead (or behind) counts one
        resynchronisation, and the packets after it are neither lost nor
        late; every one is delivered.
        """
        for forged in (2**31 + 3, 2**31 - 10, 0xFFFF0000):
            decoder = ClassicDatagramDecoder()
            numbers = [1, 2, 3, forged, 4, 5, 7]
            got = [p.npkt for n in numbers for p in decoder.feed(self.datagram(n))]
            self.assertEqual(got, numbers)
            self.assertEqual((decoder.lost_packets, decoder.resyncs, decoder.sequence.late), (1, 1, 0))

    def test_confirmed_jump_is_followed(self) -> None:
        """A sender that really jumped (two numbers in a row past the window) is followed from there."""
        decoder = ClassicDatagramDecoder()
        for n in (1, 2, 10**9, 10**9 + 1, 10**9 + 3):
            decoder.feed(self.datagram(n))
        self.assertEqual((decoder.lost_packets, decoder.resyncs), (1, 1))

    def test_impossible_lengths_are_malformed(self) -> None:
        """caplen > length, a 4 GB caplen, a caplen past the end, an empty message: counted, skipped, no crash."""
        decoder = ClassicDatagramDecoder()
        bad = [
            frame(MessageType.PACKET, PKTHDR.pack(1, 0, 3, 2, 1) + b"abc"),
            frame(MessageType.PACKET, PKTHDR.pack(1, 0, 0xFFFFFFFF, 0xFFFFFFFF, 1) + b"abc"),
            frame(MessageType.PACKET, PKTHDR.pack(1, 0, 30, 30, 1) + b"abc"),
            frame(MessageType.PACKET),
        ]
        for datagram in bad:
            self.assertEqual(decoder.feed(datagram), [])
        self.assertEqual(decoder.malformed, 4)
        self.assertEqual([p.npkt for p in decoder.feed(self.datagram(1))], [1])

    def test_garbage_is_counted_not_raised(self) -> None:
        decoder = ClassicDatagramDecoder()
        self.assertEqual(decoder.feed(b"\x00\x6e" + bytes(20)), [])
        self.assertEqual(decoder.feed(b"\x00\x07\x00\x00\x00\x00\x00\x05ab"), [])
        self.assertEqual(decoder.malformed, 2)
