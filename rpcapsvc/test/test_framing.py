"""
Tests for L{rpcapsvc.protocol.framing.ControlStreamParser}: however the
stream is cut, the same messages come out, as soon as they are complete;
libpcap's short startcap is read whole; memory stays bounded.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.framing import (
    DEFAULT_MAX_PAYLOAD,
    ControlStreamParser,
    MessageTooLarge,
    Received,
)
from rpcapsvc.protocol.wire import (
    HEADER_SIZE,
    BpfInstruction,
    BpfProgram,
    EndCaptureRequest,
    ErrorReply,
    Header,
    MalformedMessage,
    Message,
    StartCaptureRequest,
    StatsRequest,
    UpdateFilterRequest,
)

from .test_wire import KNOWN_MESSAGES, h, messages

# libpcap 1.10's startcap when the application set no filter: plen = 20
# covers the fixed part and the filter header, which promises one
# instruction; the instruction follows anyway.
QUIRK_STARTCAP = h("00 04 0000 00000014  0000ffff 000003e8 0001 0000  0001 0000 00000001")
QUIRK_INSN = h("0006 00 00 0000ffff")  # ret #65535
# What libpcap's client sends next when told not to capture its own traffic.
NEXT_UPDATEFILTER = h("00 05 0000 00000018  0001 0000 00000002  0028 00 00 0000000c  0006 00 00 00000000")
NEXT_UPDATEFILTER_MESSAGE = UpdateFilterRequest(
    BpfProgram((BpfInstruction(0x28, 0, 0, 12), BpfInstruction(6, 0, 0, 0)))
)
STATS_REQUEST = h("00 09 0000 00000000")


def feed_in_chunks(parser: ControlStreamParser, data: bytes, cuts: list[int]) -> list[Received]:
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        out.extend(parser.feed(data[start:end]))
    return out


def feed_bytewise(parser: ControlStreamParser, data: bytes) -> list[Received]:
    return feed_in_chunks(parser, data, list(range(1, len(data))))


class SplittingTests(SynchronousTestCase):
    """The result does not depend on where the stream is cut."""

    def assertCleanMessages(self, received: list[Received], expected: list[Message]) -> None:
        self.assertEqual([r.error for r in received], [None] * len(expected))
        self.assertEqual([r.message for r in received], expected)

    def test_knownMessagesWhole(self) -> None:
        stream = b"".join(data for _, data, _ in KNOWN_MESSAGES)
        parser = ControlStreamParser()
        received = parser.feed(stream)
        self.assertCleanMessages(received, [m for _, _, m in KNOWN_MESSAGES])
        self.assertEqual([r.header for r in received], [Header.decode(d) for _, d, _ in KNOWN_MESSAGES])
        self.assertEqual(parser.buffered, 0)

    def test_everySplitPoint(self) -> None:
        """
        The known messages back to back, cut in two at each byte boundary,
        then fed a byte at a time.
        """
        stream = b"".join(data for _, data, _ in KNOWN_MESSAGES)
        whole = ControlStreamParser().feed(stream)
        for cut in range(len(stream) + 1):
            parser = ControlStreamParser()
            self.assertEqual(feed_in_chunks(parser, stream, [cut]), whole, cut)
            self.assertEqual(parser.buffered, 0)
        self.assertEqual(feed_bytewise(ControlStreamParser(), stream), whole)

    @given(st.lists(messages, max_size=8), st.data())
    def test_randomSplits(self, msgs: list[Message], data: st.DataObject) -> None:
        """
        Random cuts over random messages give the messages themselves; each
        comes out as soon as its last byte is in, and what stays buffered is
        the part of the one message not complete yet.
        """
        encoded = [m.encode() for m in msgs]
        stream = b"".join(encoded)
        ends = []
        for e in encoded:
            ends.append((ends[-1] if ends else 0) + len(e))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))

        parser = ControlStreamParser()
        received: list[Received] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            received.extend(parser.feed(stream[start:end]))
            complete = [e for e in ends if e <= end]
            self.assertEqual(len(received), len(complete))
            last = complete[-1] if complete else 0
            self.assertEqual(parser.buffered, end - last)
            if parser.buffered:
                self.assertLess(parser.buffered, len(encoded[len(complete)]))
            self.assertLess(parser.buffered, HEADER_SIZE + DEFAULT_MAX_PAYLOAD)
        self.assertCleanMessages(received, msgs)
        self.assertEqual(received, ControlStreamParser().feed(stream))


class StartcapFilterBlockTests(SynchronousTestCase):
    """The filter block of a startcap: libpcap's quirk, missing, empty."""

    def test_libpcapNoFilterQuirk(self) -> None:
        """
        A startcap whose plen leaves out the one instruction it promises is
        read with that instruction, and the next message is intact.
        """
        stream = QUIRK_STARTCAP + QUIRK_INSN + NEXT_UPDATEFILTER
        expected = [
            StartCaptureRequest(65535, 1000, 1, 0, BpfProgram((BpfInstruction(6, 0, 0, 0xFFFF),))),
            NEXT_UPDATEFILTER_MESSAGE,
        ]
        for name, received in (
            ("whole", ControlStreamParser().feed(stream)),
            ("bytewise", feed_bytewise(ControlStreamParser(), stream)),
        ):
            self.assertEqual([r.message for r in received], expected, name)
            self.assertEqual([r.error for r in received], [None, None], name)
            self.assertEqual(received[0].header, Header(0, 4, 0, 20), name)
        for cut in range(len(stream) + 1):
            received = feed_in_chunks(ControlStreamParser(), stream, [cut])
            self.assertEqual([r.message for r in received], expected, cut)

    def test_libpcapQuirkWaitsForInstruction(self) -> None:
        """Nothing comes out until the promised instruction is in."""
        parser = ControlStreamParser()
        self.assertEqual(parser.feed(QUIRK_STARTCAP), [])
        self.assertEqual(parser.feed(QUIRK_INSN[:7]), [])
        self.assertEqual(parser.buffered, len(QUIRK_STARTCAP) + 7)
        [received] = parser.feed(QUIRK_INSN[7:])
        self.assertEqual(received.message.filter, BpfProgram((BpfInstruction(6, 0, 0, 0xFFFF),)))
        self.assertEqual(parser.buffered, 0)

    def test_noFilterBlock(self) -> None:
        """plen = 12: no filter block at all, C{filter} is C{None}."""
        stream = h("00 04 0000 0000000c  0000ffff 000003e8 0001 0000") + STATS_REQUEST
        received = ControlStreamParser().feed(stream)
        self.assertEqual(
            [r.message for r in received],
            [StartCaptureRequest(65535, 1000, 1, 0, None), StatsRequest()],
        )

    def test_emptyProgram(self) -> None:
        """
        nitems = 0: an empty program, delivered at once without waiting for
        more bytes.
        """
        startcap = h("00 04 0000 00000014  0000ffff 000003e8 0001 0000  0001 0000 00000000")
        parser = ControlStreamParser()
        [received] = parser.feed(startcap)
        self.assertIsNone(received.error)
        self.assertEqual(received.message, StartCaptureRequest(65535, 1000, 1, 0, BpfProgram(())))
        self.assertEqual([r.message for r in parser.feed(STATS_REQUEST)], [StatsRequest()])

    def test_tooManyInstructionsNotAwaited(self) -> None:
        """
        A short startcap promising more than 8192 instructions is reported
        at once rather than waited for.
        """
        startcap = h("00 04 0000 00000014  0000ffff 000003e8 0001 0000  0001 0000 00002001")
        received = ControlStreamParser().feed(startcap + STATS_REQUEST)
        self.assertEqual(len(received), 2)
        self.assertIsInstance(received[0].error, MalformedMessage)
        self.assertIsNone(received[0].message)
        self.assertEqual(received[1].message, StatsRequest())


class MalformedPayloadTests(SynchronousTestCase):
    def test_malformedThenNext(self) -> None:
        """
        A known type with a payload that does not decode comes out with
        C{error} set; the parser carries on with the next message.
        """
        stream = (
            h("00 83 0000 00000004  00000001")  # open reply, 4 bytes short
            + STATS_REQUEST
            + h("00 04 0000 0000001c  0000ffff 000003e8 0001 0000")  # startcap,
            + h("0002 0000 00000001  0006 00 00 00000000")  # filter type 2
            + h("00 0a 0000 00000000")
        )
        received = ControlStreamParser().feed(stream)
        self.assertEqual(len(received), 4)
        self.assertEqual(received[0].header, Header(0, 0x83, 0, 4))
        self.assertIsNone(received[0].message)
        self.assertIsInstance(received[0].error, MalformedMessage)
        self.assertEqual(received[1], Received(Header(0, 9, 0, 0), StatsRequest()))
        self.assertEqual(received[2].header, Header(0, 4, 0, 28))
        self.assertIsInstance(received[2].error, MalformedMessage)
        self.assertEqual(received[3], Received(Header(0, 0x0A, 0, 0), EndCaptureRequest()))


class LimitTests(SynchronousTestCase):
    """Memory is bounded by the payload limit."""

    def test_oversizedHeaderRaisesAtOnce(self) -> None:
        """
        A header announcing more than the limit raises as soon as the header
        is complete, before any of the payload.
        """
        parser = ControlStreamParser(max_payload=1024)
        header = h("00 01 0000 00000401")
        self.assertEqual(parser.feed(header[:7]), [])
        [received] = parser.feed(header[7:])
        e = received.error
        self.assertIsInstance(e, MessageTooLarge)
        self.assertEqual(e.header, Header(0, 1, 0, 1025))
        self.assertEqual(e.limit, 1024)
        self.assertTrue(parser.broken)
        self.assertEqual(parser.buffered, 0)
        # Nothing after it is trusted, or buffered.
        self.assertEqual(parser.feed(STATS_REQUEST * 100), [])
        self.assertEqual(parser.buffered, 0)

    def test_oversizedAfterValidMessages(self) -> None:
        """Messages framed before an oversized header in the same feed are kept."""
        parser = ControlStreamParser(max_payload=1024)
        first, second = parser.feed(STATS_REQUEST + h("00 04 0000 ffffffff"))
        self.assertEqual(first.message, StatsRequest())
        self.assertIsInstance(second.error, MessageTooLarge)

    def test_defaultLimit(self) -> None:
        """
        The default limit takes a full-size filter (8192 instructions) and
        refuses a 4 GiB payload.
        """
        self.assertGreaterEqual(DEFAULT_MAX_PAYLOAD, 12 + 8 + 8192 * 8)
        [received] = ControlStreamParser().feed(h("00 04 0000 ffffffff"))
        self.assertIsInstance(received.error, MessageTooLarge)

    def test_exactlyTheLimit(self) -> None:
        parser = ControlStreamParser(max_payload=1024)
        self.assertEqual(parser.feed(h("00 01 0005 00000400")), [])
        [received] = parser.feed(b"x" * 1024)
        self.assertEqual(received.message, ErrorReply(5, "x" * 1024))

    def test_quirkWithinLimit(self) -> None:
        """libpcap's short startcap is fine when what it promises fits the limit."""
        parser = ControlStreamParser(max_payload=28)
        [received] = parser.feed(QUIRK_STARTCAP + QUIRK_INSN)
        self.assertEqual(len(received.message.filter.instructions), 1)

    def test_quirkBeyondLimit(self) -> None:
        """
        A short startcap whose filter header promises more than the limit
        is refused, not waited for: the parser never buffers past one
        message of the limit's size.
        """
        parser = ControlStreamParser(max_payload=27)
        [received] = parser.feed(QUIRK_STARTCAP)
        self.assertIsInstance(received.error, MessageTooLarge)
        parser = ControlStreamParser(max_payload=64)
        # 100 instructions promised: 820 bytes of payload
        startcap = h("00 04 0000 00000014  0000ffff 000003e8 0001 0000  0001 0000 00000064")
        [received] = parser.feed(startcap)
        e = received.error
        self.assertIsInstance(e, MessageTooLarge)
        self.assertEqual(e.header.length, 20 + 800)
        self.assertLessEqual(parser.buffered, HEADER_SIZE + 64)

    def test_bufferedBoundedBytewise(self) -> None:
        """
        Fed a byte at a time, the parser holds at most the one incomplete
        message.
        """
        stream = b"".join(data for _, data, _ in KNOWN_MESSAGES)
        parser = ControlStreamParser(max_payload=2200)
        longest = max(len(data) for _, data, _ in KNOWN_MESSAGES)
        peak = 0
        for i in range(len(stream)):
            parser.feed(stream[i : i + 1])
            peak = max(peak, parser.buffered)
        self.assertEqual(peak, longest - 1)
        self.assertEqual(parser.buffered, 0)
