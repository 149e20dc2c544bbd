"""
Tests for the data-channel sinks (L{TcpPacketSink}, L{UdpPacketSink}), the
passive data-channel listener of L{DataChannels} and L{CaptureReader}, all
over in-memory transports and reactors.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from twisted.internet import defer, protocol, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, MessageLengthError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rpcapsvc.capture.reader import CaptureReader
from rpcapsvc.capture.system import CaptureError, CaptureOptions
from rpcapsvc.protocol.datachannel import (
    BATCH_RECORD,
    PKTHDR_SIZE,
    CapturedPacket,
    PacketBatch,
    encode_packet_messages,
    encode_packet_stream,
    iter_packet_messages,
)
from rpcapsvc.protocol.udpstr import UdpStrDecoder
from rpcapsvc.protocol.wire import HEADER, MessageType
from rpcapsvc.server import fastsend
from rpcapsvc.server.datachannel import DataChannels, TcpPacketSink, UdpPacketSink, UdpStrPacketSink
from rpcapsvc.testing import FakeCaptureHandle


def frames(n: int, start: int = 0, size: int = 60) -> list[tuple[int, int, bytes]]:
    """C{n} distinct packets of C{size} bytes, stamped C{start}, C{start + 1}, ..."""
    return [(1700000000 + i, i * 10, bytes([i % 256]) * size) for i in range(start, start + n)]


class CountingTransport(StringTransport):
    """A StringTransport that remembers each write separately."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class TcpPacketSinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = CountingTransport()
        self.sink = TcpPacketSink(snaplen=100)
        self.connected: list[TcpPacketSink] = []
        self.sink.connected_deferred.addCallback(self.connected.append)
        self.sink.makeConnection(self.transport)

    def test_connection_fires_deferred(self) -> None:
        self.assertEqual(self.connected, [self.sink])

    def test_one_write_per_batch(self) -> None:
        """Each batch is framed into a single transport write."""
        self.sink.write_batch(PacketBatch.from_packets(frames(3)))
        self.sink.write_batch(PacketBatch.from_packets(frames(2, start=3)))
        self.assertEqual(len(self.transport.writes), 2)
        first = list(iter_packet_messages(self.transport.writes[0]))
        second = list(iter_packet_messages(self.transport.writes[1]))
        self.assertEqual(len(first), 3)
        self.assertEqual(len(second), 2)
        self.assertEqual(self.sink.sent, 5)

    def test_classic_framing_and_npkt_across_batches(self) -> None:
        """
        The stream is type-7 messages with plen = 20 + caplen, packets
        numbered from 1 across batches, each cut to the snaplen with its
        original length kept.
        """
        batch1 = [(10, 1, b"a" * 40), (11, 2, b"b" * 150)]
        batch2 = [(12, 3, b"c" * 100), (13, 4, b"d" * 101)]
        self.sink.write_batch(PacketBatch.from_packets(batch1))
        self.sink.write_batch(PacketBatch.from_packets(batch2))
        stream = self.transport.value()
        packets = list(iter_packet_messages(stream))
        self.assertEqual(
            packets,
            [
                CapturedPacket(10, 1, 40, 40, 1, b"a" * 40),
                CapturedPacket(11, 2, 100, 150, 2, b"b" * 100),
                CapturedPacket(12, 3, 100, 100, 3, b"c" * 100),
                CapturedPacket(13, 4, 100, 101, 4, b"d" * 100),
            ],
        )
        version, mtype, value, plen = HEADER.unpack_from(stream)
        self.assertEqual((version, mtype, value, plen), (0, MessageType.PACKET, 0, PKTHDR_SIZE + 40))
        self.assertEqual(len(stream), 4 * (8 + PKTHDR_SIZE) + 40 + 100 + 100 + 100)

    def test_empty_batch(self) -> None:
        self.sink.write_batch(PacketBatch.from_packets([]))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.sink.sent, 0)

    def test_attach_producer(self) -> None:
        """The capture reader is registered as a streaming producer for backpressure."""
        producer = object()
        self.sink.attach_producer(producer)  # type: ignore[arg-type]
        self.assertIs(self.transport.producer, producer)
        self.assertTrue(self.transport.streaming)

    def test_close(self) -> None:
        self.sink.attach_producer(object())  # type: ignore[arg-type]
        self.sink.close()
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)
        self.sink.close()  # idempotent: no producer left to unregister

    def test_peer_closing_reported_once(self) -> None:
        lost: list[str] = []
        self.sink.set_lost_callback(lost.append)
        self.sink.connectionLost(Failure(ConnectionDone("bye")))
        self.sink.connectionLost(Failure(ConnectionDone("bye")))
        self.assertEqual(len(lost), 1)
        self.assertIn("data connection closed", lost[0])

    def test_our_close_not_reported(self) -> None:
        lost: list[str] = []
        self.sink.set_lost_callback(lost.append)
        self.sink.close()
        self.sink.connectionLost(Failure(ConnectionDone("bye")))
        self.assertEqual(lost, [])

    def test_client_data_ignored(self) -> None:
        self.sink.dataReceived(b"anything")
        self.assertEqual(self.transport.value(), b"")


class FakeDatagramTransport:
    """A connected UDP transport whose sends fail for chosen datagrams."""

    def __init__(self, failures: dict[int, Exception] | None = None) -> None:
        self.failures = failures or {}
        self.attempts = 0
        self.datagrams: list[bytes] = []
        self.listening = True

    def write(self, data: bytes, addr: object = None) -> None:
        index = self.attempts
        self.attempts += 1
        if index in self.failures:
            raise self.failures[index]
        self.datagrams.append(data)

    def stopListening(self) -> None:
        self.listening = False


class UdpPacketSinkTests(SynchronousTestCase):
    def make(
        self, failures: dict[int, Exception] | None = None
    ) -> tuple[UdpPacketSink, FakeDatagramTransport]:
        sink = UdpPacketSink(snaplen=1000)
        transport = FakeDatagramTransport(failures)
        sink.transport = transport  # type: ignore[assignment]
        return sink, transport

    def test_one_datagram_per_packet(self) -> None:
        sink, transport = self.make()
        sink.write_batch(PacketBatch.from_packets(frames(3)))
        self.assertEqual(len(transport.datagrams), 3)
        for n, datagram in enumerate(transport.datagrams, 1):
            [packet] = list(iter_packet_messages(datagram))
            self.assertEqual(packet.npkt, n)
        self.assertEqual((sink.sent, sink.dropped), (3, 0))

    def test_transient_errors_counted_as_dropped(self) -> None:
        """
        Datagrams the kernel will not take (EAGAIN, ENOBUFS) are dropped and
        counted; the packet numbers keep counting so the client sees the gap.
        """
        sink, transport = self.make(
            {1: OSError(errno.EAGAIN, "busy"), 2: OSError(errno.ENOBUFS, "no buffers")}
        )
        sink.write_batch(PacketBatch.from_packets(frames(4)))
        self.assertEqual((sink.sent, sink.dropped), (2, 2))
        npkts = [next(iter_packet_messages(d)).npkt for d in transport.datagrams]
        self.assertEqual(npkts, [1, 4])
        sink.write_batch(PacketBatch.from_packets(frames(1, start=4)))
        self.assertEqual(next(iter_packet_messages(transport.datagrams[-1])).npkt, 5)
        self.assertEqual((sink.sent, sink.dropped), (3, 2))

    def test_network_errors_counted_and_survived(self) -> None:
        """
        Every error a network can produce for a UDP flow (a firewall's ICMP
        reject is EHOSTUNREACH) loses that datagram only; each kind is
        logged once and counted.
        """
        kinds = [errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM, errno.EACCES, errno.ECONNREFUSED]
        failures: dict[int, Exception] = {i: OSError(e, os.strerror(e)) for i, e in enumerate(kinds)}
        failures[len(kinds)] = OSError(errno.EHOSTUNREACH, "again")
        sink, transport = self.make(failures)
        sink.log_tag = "session=7 peer=192.0.2.1:40000"  # the session's, set when the capture starts
        events: list[dict[str, Any]] = []
        self.patch(sink, "log", Logger(observer=events.append))
        sink.write_batch(PacketBatch.from_packets(frames(len(kinds) + 3)))
        self.assertEqual((sink.sent, sink.dropped), (2, len(kinds) + 1))
        self.assertEqual(sink.send_errors["EHOSTUNREACH"], 2)
        self.assertEqual(len(events), len(kinds))  # once per kind
        self.assertIn("EHOSTUNREACH", formatEvent(events[0]))
        self.assertTrue(
            formatEvent(events[0]).startswith("session=7 peer=192.0.2.1:40000 UDP data channel to ")
        )

    def test_message_too_long_counted_as_dropped(self) -> None:
        sink, transport = self.make({0: MessageLengthError("message too long")})
        sink.write_batch(PacketBatch.from_packets(frames(2)))
        self.assertEqual((sink.sent, sink.dropped), (1, 1))
        self.assertEqual(len(transport.datagrams), 1)

    def test_other_errors_raised(self) -> None:
        """A broken socket is not silently counted as drops."""
        sink, _ = self.make({0: OSError(errno.EBADF, "bad file descriptor")})
        error = self.assertRaises(OSError, sink.write_batch, PacketBatch.from_packets(frames(1)))
        self.assertEqual(error.errno, errno.EBADF)
        self.assertEqual(sink.dropped, 0)

    def test_snaplen(self) -> None:
        sink, transport = self.make()
        sink.write_batch(PacketBatch.from_packets([(1, 2, b"x" * 1500)]))
        [packet] = list(iter_packet_messages(transport.datagrams[0]))
        self.assertEqual((packet.caplen, packet.length, len(packet.data)), (1000, 1500, 1000))

    def test_connection_refused(self) -> None:
        """An ICMP port-unreachable turns a sent datagram into a dropped one."""
        sink, _ = self.make()
        sink.write_batch(PacketBatch.from_packets(frames(2)))
        sink.connectionRefused()
        self.assertEqual((sink.sent, sink.dropped), (1, 1))

    def test_close(self) -> None:
        sink, transport = self.make()
        sink.attach_producer(object())  # type: ignore[arg-type]
        sink.close()
        self.assertFalse(transport.listening)


class ListenTcpTests(SynchronousTestCase):
    """The passive data channel: one connection, from the control peer only."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.channels = DataChannels(self.reactor, accept_timeout=30)
        self.port, self.d = self.channels.listen_tcp("192.0.2.1", "192.0.2.10", 200)
        [(_, self.listener, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((backlog, interface), (1, "192.0.2.1"))
        self.results: list[object] = []
        self.d.addBoth(self.results.append)

    def test_accepts_peer_once(self) -> None:
        stranger = self.listener.buildProtocol(IPv4Address("TCP", "198.51.100.7", 4000))
        self.assertIsNone(stranger)
        sink = self.listener.buildProtocol(IPv4Address("TCP", "192.0.2.10", 4000))
        self.assertIsInstance(sink, TcpPacketSink)
        self.assertEqual(sink.snaplen, 200)
        self.assertEqual(self.results, [])
        sink.makeConnection(StringTransport())
        self.assertEqual(self.results, [sink])
        self.assertIsNone(self.listener.buildProtocol(IPv4Address("TCP", "192.0.2.10", 4001)))
        # The accept timer was cancelled.
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_accept_timeout(self) -> None:
        self.reactor.advance(29)
        self.assertEqual(self.results, [])
        self.reactor.advance(1)
        [result] = self.results
        assert isinstance(result, Failure)
        self.assertTrue(result.check(TimeoutError))


class CountingPort:
    """A listening port that counts its stops (a real one fails on the second)."""

    def __init__(self) -> None:
        self.stops = 0

    def stopListening(self) -> None:
        self.stops += 1
        if self.stops > 1:
            raise AttributeError("'Port' object has no attribute 'socket'")

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.1", 40000)


class ListenTcpStopTests(SynchronousTestCase):
    def make(self) -> tuple[CountingPort, defer.Deferred[Any]]:
        port = CountingPort()
        self.reactor = MemoryReactorClock()
        self.patch(self.reactor, "listenTCP", lambda *a, **kw: port)
        _, d = DataChannels(self.reactor, accept_timeout=5).listen_tcp("192.0.2.1", "192.0.2.10", 200)
        return port, d

    def test_cancelled_port_stopped_once(self) -> None:
        """A data port dropped before its connection arrives is stopped once, with nothing logged."""
        port, d = self.make()
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        d.cancel()
        self.assertEqual(port.stops, 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_timed_out_port_stopped_once(self) -> None:
        port, d = self.make()
        failures: list[Failure] = []
        d.addErrback(failures.append)
        self.reactor.advance(5)
        self.assertTrue(failures[0].check(TimeoutError))
        d.cancel()  # a session ending afterwards cancels it too
        self.assertEqual(port.stops, 1)


class CountingHandle(FakeCaptureHandle):
    def __init__(self) -> None:
        super().__init__("eth0", CaptureOptions())
        self.reads = 0

    def read_batch(self, max_packets: int) -> PacketBatch:
        self.reads += 1
        return super().read_batch(max_packets)


class CaptureReaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.handle = CountingHandle()
        self.addCleanup(self.handle.close)
        self.batches: list[PacketBatch] = []
        self.errors: list[str] = []
        self.reader = CaptureReader(
            self.reactor,
            self.handle,
            self.batches.append,
            self.errors.append,
            batch_packets=2,
            batches_per_turn=3,
        )

    def delivered(self) -> list[bytes]:
        out = []
        for batch in self.batches:
            for _, _, off, length in BATCH_RECORD.iter_unpack(batch.records):
                out.append(batch.data[off : off + length])
        return out

    def test_start_registers_reader(self) -> None:
        self.assertNotIn(self.reader, self.reactor.readers)
        self.reader.start()
        self.assertIn(self.reader, self.reactor.readers)
        self.assertEqual(self.reader.fileno(), self.handle.fileno())

    def test_pause_and_resume(self) -> None:
        """Backpressure: pausing leaves the capture unread until resumed."""
        self.reader.start()
        self.reader.pauseProducing()
        self.assertNotIn(self.reader, self.reactor.readers)
        self.handle.inject(frames(1))
        self.reader.doRead()
        self.assertEqual(self.batches, [])
        self.reader.resumeProducing()
        self.assertIn(self.reader, self.reactor.readers)
        self.reader.doRead()
        self.assertEqual(len(self.delivered()), 1)

    def test_batches_per_turn(self) -> None:
        """One doRead reads at most batches_per_turn batches; the rest waits."""
        self.reader.start()
        packets = frames(10)
        self.handle.inject(packets)
        self.reader.doRead()
        self.assertEqual([len(b) for b in self.batches], [2, 2, 2])
        self.assertEqual(self.reader.delivered, 6)
        self.reader.doRead()
        self.assertEqual([len(b) for b in self.batches], [2, 2, 2, 2, 2])
        self.assertEqual(self.delivered(), [p[2] for p in packets])
        self.assertEqual(self.reader.delivered, 10)

    def test_short_batch_ends_turn(self) -> None:
        self.reader.start()
        self.handle.inject(frames(3))
        self.reader.doRead()
        self.assertEqual([len(b) for b in self.batches], [2, 1])
        self.assertEqual(self.handle.reads, 2)

    def test_nothing_waiting(self) -> None:
        self.reader.start()
        self.reader.doRead()
        self.assertEqual(self.batches, [])
        self.assertEqual(self.handle.reads, 1)

    def test_pause_from_consumer(self) -> None:
        """A consumer that pauses the reader mid-turn stops further reads."""

        def consume(batch: PacketBatch) -> None:
            self.batches.append(batch)
            self.reader.pauseProducing()

        self.reader = CaptureReader(self.reactor, self.handle, consume, self.errors.append, 2, 3)
        self.reader.start()
        self.handle.inject(frames(6))
        self.reader.doRead()
        self.assertEqual(len(self.batches), 1)
        self.assertNotIn(self.reader, self.reactor.readers)

    def test_consumer_failure_stops_reader(self) -> None:
        """A consumer that raises stops the reader; doRead does not raise."""

        def consume(batch: PacketBatch) -> None:
            raise ValueError("boom")

        events: list[dict[str, Any]] = []
        reader = CaptureReader(self.reactor, self.handle, consume, self.errors.append, 2, 3)
        self.patch(reader, "log", Logger(observer=events.append))
        reader.start()
        self.handle.inject(frames(6))
        reader.doRead()
        self.assertEqual(len(self.errors), 1)
        self.assertIn("internal error", self.errors[0])
        self.assertNotIn(reader, self.reactor.readers)
        self.assertEqual(self.handle.reads, 1)
        [event] = events  # the fault is logged with its traceback, for whoever fixes it
        self.assertTrue(event["log_failure"].check(ValueError))
        reader.resumeProducing()  # stopped for good
        self.assertNotIn(reader, self.reactor.readers)

    def test_read_failure(self) -> None:
        self.reader.start()
        self.handle.fail_with = "device went away"
        self.reader.doRead()
        self.assertEqual(self.errors, ["device went away"])
        self.assertNotIn(self.reader, self.reactor.readers)
        self.reader.start()
        self.assertNotIn(self.reader, self.reactor.readers)

    def test_read_failure_from_capture_error(self) -> None:
        """Any CaptureError from the handle is reported with its text."""

        def fail(max_packets: int) -> PacketBatch:
            raise CaptureError("The interface disappeared")

        self.handle.read_batch = fail  # type: ignore[method-assign]
        self.reader.start()
        self.reader.doRead()
        self.assertEqual(self.errors, ["The interface disappeared"])

    def test_stop_producing(self) -> None:
        self.reader.start()
        self.reader.stopProducing()
        self.assertNotIn(self.reader, self.reactor.readers)
        self.reader.resumeProducing()
        self.assertNotIn(self.reader, self.reactor.readers)
        self.reader.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.errors, [])

    def test_descriptor_lost(self) -> None:
        self.reader.start()
        self.reader.connectionLost(Failure(ConnectionDone("gone")))
        self.assertEqual(len(self.errors), 1)
        self.assertIn("gone", self.errors[0])
        self.assertNotIn(self.reader, self.reactor.readers)


# --- the batch sends (rpcapsvc.server.fastsend) -------------------------------------------


class FakeBatchSender:
    """
    The batch system calls over memory: what each would have given the
    kernel, read back through the iovecs the sink built, with chosen errors.
    C{stream_room} bytes are taken by C{send_stream} (then it reports a full
    socket); C{failures} maps a datagram's index (counted over all calls) to
    the error the kernel gives for it.
    """

    def __init__(self, stream_room: int = 1 << 30, failures: dict[int, OSError] | None = None) -> None:
        self.stream_room = stream_room
        self.failures = failures or {}
        self.stream = b""
        self.datagrams: list[bytes] = []
        self.calls = 0
        self.plain_calls = 0
        self.segmented_calls = 0
        self.segments = True
        """What C{send_segmented} says of the kernel: whether it segments (UDP GSO)."""
        self._index = 0

    def writable_fd(self, transport: Any) -> int | None:
        # As the real one: the socket only while the transport holds nothing.
        return None if transport.value() else 7

    def send_stream(self, fd: int, vectors: fastsend.PacketVectors) -> int:
        self.calls += 1
        data = vectors.tail(0)
        taken = data[: self.stream_room]
        self.stream_room -= len(taken)
        self.stream += taken
        return len(taken)

    def _send(self, datagrams: list[bytes], on_refused: Any) -> list[int]:
        self.calls += 1
        refused = []
        for index, datagram in enumerate(datagrams):
            error = self.failures.get(self._index)
            self._index += 1
            if error is None:
                self.datagrams.append(datagram)
            else:
                refused.append(index)
                on_refused(index, error)
        return refused

    def send_datagrams(self, fd: int, vectors: fastsend.PacketVectors, on_refused: Any) -> list[int]:
        return self._send([vectors.message(i) for i in range(vectors.count)], on_refused)

    def send_buffers(self, fd: int, datagrams: list[bytes], on_refused: Any) -> list[int]:
        self.plain_calls += 1
        return self._send(list(datagrams), on_refused)

    def send_segmented(self, fd: int, datagrams: list[bytes], on_refused: Any) -> tuple[list[int], bool]:
        self.segmented_calls += 1
        return self._send(list(datagrams), on_refused), self.segments

    def send_datagrams_segmented(
        self, fd: int, vectors: fastsend.PacketVectors, largest: int, on_refused: Any
    ) -> tuple[list[int], int | None]:
        self.segmented_calls += 1
        messages = [vectors.message(i) for i in range(vectors.count)]
        return self._send(messages, on_refused), (largest if self.segments else None)


class FakeSocket:
    """A UDP port's socket: its descriptor for the batch sends, C{send} for a lone datagram."""

    def __init__(self, sent: list[bytes]) -> None:
        self.sent = sent

    def fileno(self) -> int:
        return 7

    def send(self, datagram: bytes) -> int:
        self.sent.append(datagram)
        return len(datagram)


class PacketVectorsTests(SynchronousTestCase):
    """The iovecs laid out for a batch hold exactly the classic messages, however cut and numbered."""

    def check(self, packets: list[tuple[int, int, bytes]], snaplen: int, first_npkt: int) -> None:
        batch = PacketBatch.from_packets(packets)
        vectors = fastsend.packet_vectors(batch, snaplen, first_npkt)
        expected = encode_packet_messages(batch, snaplen, first_npkt)
        self.assertEqual([vectors.message(i) for i in range(vectors.count)], expected)
        self.assertEqual(vectors.tail(0), encode_packet_stream(batch, snaplen, first_npkt))
        self.assertEqual(vectors.total, sum(map(len, expected)))
        self.assertEqual([vectors.message_length(i) for i in range(vectors.count)], list(map(len, expected)))

    def test_same_bytes_as_the_encoder(self) -> None:
        self.check(frames(40, size=1000) + frames(3, size=60), 65535, 1)

    def test_snaplen_cuts(self) -> None:
        self.check([(1, 2, b"a" * 1500), (3, 4, b"b" * 10)], 100, 9)

    def test_npkt_wraps_inside_a_batch(self) -> None:
        self.check(frames(5), 65535, 0xFFFFFFFE)

    def test_empty_batch(self) -> None:
        vectors = fastsend.packet_vectors(PacketBatch(b"", b""), 65535, 1)
        self.assertEqual((vectors.count, vectors.total, vectors.tail(0)), (0, 0, b""))

    def test_tail_from_inside_a_message(self) -> None:
        batch = PacketBatch.from_packets(frames(4, size=100))
        stream = encode_packet_stream(batch, 65535, 1)
        vectors = fastsend.packet_vectors(batch, 65535, 1)
        for skip in (1, 27, 28, 29, 127, 128, 300, len(stream) - 1, len(stream)):
            self.assertEqual(vectors.tail(skip), stream[skip:], skip)


class AddressTests(SynchronousTestCase):
    """Where buffers' bytes lie, for the iovecs: the fast way agrees with ctypes."""

    def test_many_at_once_as_ctypes_finds_each(self) -> None:
        buffers = [os.urandom(n) for n in (0, 1, 2, 100, 1472, 70000)] + [b"", b"x", bytes(5)]
        self.assertEqual(list(fastsend.addresses_of(buffers)), [fastsend.address_of(b) for b in buffers])
        for buffer in buffers:
            self.assertEqual(ctypes.string_at(fastsend.addresses_of([buffer])[0], len(buffer)), buffer)

    def test_anything_but_bytes_itself_the_ctypes_way(self) -> None:
        class Sub(bytes):
            pass

        buffers = [Sub(b"abc"), b"def"]
        self.assertEqual(list(fastsend.addresses_of(buffers)), [fastsend.address_of(b) for b in buffers])


class FakeLibc:
    """
    C{sendmsg}/C{sendmmsg} answering from a script, one entry per call:
    C{None} takes everything offered, a number is what the kernel took (bytes
    for C{sendmsg}, messages for C{sendmmsg}), C{OSError} fails the call with
    its errno (where ctypes' C{get_errno} finds it).
    """

    def __init__(self, *script: int | OSError | None) -> None:
        self.script = list(script)
        self.offered: list[int] = []

    def _answer(self, offered: int) -> int:
        self.offered.append(offered)
        answer = self.script.pop(0)
        if isinstance(answer, OSError):
            ctypes.set_errno(answer.errno or 0)
            return -1
        return offered if answer is None else answer

    def sendmsg(self, fd: int, header_at: int, flags: int) -> int:
        header = fastsend._MsgHdr.from_address(header_at)
        lengths = (ctypes.c_uint64 * (2 * header.msg_iovlen)).from_address(header.msg_iov or 0)[1::2]
        return self._answer(sum(lengths))

    def sendmmsg(self, fd: int, mmsg_at: int, count: int, flags: int) -> int:
        return self._answer(count)


class LibcCallTests(SynchronousTestCase):
    """What the batch sends make of the kernel's partial results and errors."""

    def setUp(self) -> None:
        if not fastsend.AVAILABLE:
            raise SkipTest("the batch sends need 64-bit Linux")
        self.vectors = fastsend.packet_vectors(PacketBatch.from_packets(frames(600)), 65535, 1)
        self.first_call = 512 * 88  # IOV_MAX iovecs: 512 messages of 28 + 60 bytes

    def test_stream_error_after_bytes_went_says_how_many(self) -> None:
        """A connection breaking mid-batch: the bytes sent are not sent again (the error comes back next write)."""
        self.patch(fastsend, "_libc", FakeLibc(None, OSError(errno.EPIPE, "broken pipe")))
        self.assertEqual(fastsend.send_stream(5, self.vectors), self.first_call)

    def test_stream_error_before_any_byte_raised(self) -> None:
        self.patch(fastsend, "_libc", FakeLibc(OSError(errno.ECONNRESET, "reset")))
        error = self.assertRaises(OSError, fastsend.send_stream, 5, self.vectors)
        self.assertEqual(error.errno, errno.ECONNRESET)

    def test_stream_interrupted_retried_full_stops(self) -> None:
        libc = FakeLibc(OSError(errno.EINTR, "interrupted"), 100)
        self.patch(fastsend, "_libc", libc)
        self.assertEqual(fastsend.send_stream(5, self.vectors), 100)
        self.assertEqual(libc.offered, [self.first_call, self.first_call])
        self.patch(fastsend, "_libc", FakeLibc(None, OSError(errno.EAGAIN, "full")))
        self.assertEqual(fastsend.send_stream(5, self.vectors), self.first_call)

    def test_datagrams_sent_in_part_then_refused(self) -> None:
        """sendmmsg took 3: the 4th is refused with the errno, the rest go in the next call."""
        libc = FakeLibc(3, OSError(errno.ENOBUFS, "no buffers"), None)
        self.patch(fastsend, "_libc", libc)
        vectors = fastsend.packet_vectors(PacketBatch.from_packets(frames(6)), 65535, 1)
        seen: list[tuple[int, int | None]] = []

        def go_on(index: int, error: OSError) -> bool:
            seen.append((index, error.errno))
            return True

        refused = fastsend.send_datagrams(5, vectors, go_on)
        self.assertEqual((refused, seen, libc.offered), ([3], [(3, errno.ENOBUFS)], [6, 3, 2]))

    def test_datagrams_refused_with_no_going_on(self) -> None:
        self.patch(fastsend, "_libc", FakeLibc(1, OSError(errno.ECONNREFUSED, "refused")))
        vectors = fastsend.packet_vectors(PacketBatch.from_packets(frames(4)), 65535, 1)
        self.assertEqual(fastsend.send_datagrams(5, vectors, lambda i, e: False), [1, 2, 3])


class TcpBatchSendTests(SynchronousTestCase):
    """TCP with the batch sends: straight to the socket while Twisted's buffer is empty."""

    def setUp(self) -> None:
        self.transport = CountingTransport()
        self.sink = TcpPacketSink(snaplen=100)
        self.sink.makeConnection(self.transport)

    def test_batches_go_to_the_socket(self) -> None:
        """Nothing through the transport; the client reads the packets in order, npkt going on."""
        sender = FakeBatchSender()
        self.sink.batch_sender = sender  # type: ignore[assignment]
        self.sink.write_batch(PacketBatch.from_packets(frames(3)))
        self.sink.write_batch(PacketBatch.from_packets(frames(2, start=3, size=200)))
        self.assertEqual((sender.calls, self.transport.writes), (2, []))
        packets = list(iter_packet_messages(sender.stream))
        self.assertEqual([p.npkt for p in packets], [1, 2, 3, 4, 5])
        self.assertEqual([p.caplen for p in packets], [60, 60, 60, 100, 100])
        self.assertEqual((self.sink.sent, self.sink.bytes_sent), (5, len(sender.stream)))

    def test_what_the_kernel_leaves_goes_through_the_transport(self) -> None:
        """
        A full socket: the rest of the batch is buffered by the transport
        (which pauses the capture while full), and later batches queue
        behind it, so the stream stays whole and in order.
        """
        sender = FakeBatchSender(stream_room=150)
        self.sink.batch_sender = sender  # type: ignore[assignment]
        self.sink.write_batch(PacketBatch.from_packets(frames(4)))
        self.sink.write_batch(PacketBatch.from_packets(frames(2, start=4)))
        self.assertEqual(len(sender.stream), 150)
        self.assertEqual(len(self.transport.writes), 2)
        packets = list(iter_packet_messages(sender.stream + self.transport.value()))
        self.assertEqual([p.npkt for p in packets], [1, 2, 3, 4, 5, 6])
        self.assertEqual([p.data for p in packets], [f[2] for f in frames(6)])

    def test_broken_connection_left_to_the_transport(self) -> None:
        """A send that fails outright hands the batch to the transport, whose write finds the error and closes."""

        class Broken(FakeBatchSender):
            def send_stream(self, fd: int, vectors: fastsend.PacketVectors) -> int:
                raise OSError(errno.EPIPE, "broken pipe")

        self.sink.batch_sender = Broken()  # type: ignore[assignment]
        self.sink.write_batch(PacketBatch.from_packets(frames(2)))
        self.assertEqual([p.npkt for p in iter_packet_messages(self.transport.value())], [1, 2])


def udp_sink_with_fake_sender(
    failures: dict[int, OSError] | None = None, segmenting: bool = False
) -> tuple[UdpPacketSink, FakeBatchSender]:
    """A classic UDP sink on a fake port whose batch sends go to a L{FakeBatchSender}."""
    sink = UdpPacketSink(snaplen=1000, segmenting=segmenting)
    return sink, wire_fake_sender(sink, failures)


def wire_fake_sender(sink: Any, failures: dict[int, OSError] | None = None) -> FakeBatchSender:
    """Put C{sink} on a fake port whose batch sends go to a new L{FakeBatchSender}, and return that."""
    transport = FakeDatagramTransport()
    sender = FakeBatchSender(failures=failures)
    transport.socket = FakeSocket(sender.datagrams)  # type: ignore[attr-defined]
    sink.transport = transport
    sink.batch_sender = sender
    return sender


class UdpBatchSendTests(SynchronousTestCase):
    """Classic UDP with one sendmmsg per batch: the same datagrams, drops counted the same way."""

    def make(self, failures: dict[int, OSError] | None = None) -> tuple[UdpPacketSink, FakeBatchSender]:
        return udp_sink_with_fake_sender(failures)

    def test_one_call_per_batch(self) -> None:
        sink, sender = self.make()
        sink.write_batch(PacketBatch.from_packets(frames(3) + [(1, 2, b"x" * 1500)]))
        self.assertEqual(sender.calls, 1)
        packets = [next(iter_packet_messages(d)) for d in sender.datagrams]
        self.assertEqual([p.npkt for p in packets], [1, 2, 3, 4])
        self.assertEqual((packets[3].caplen, packets[3].length), (1000, 1500))
        self.assertEqual((sink.sent, sink.dropped, sink.bytes_sent), (4, 0, sum(map(len, sender.datagrams))))

    def test_refused_datagrams_counted_as_dropped(self) -> None:
        """EAGAIN and ENOBUFS lose their datagram only; the numbers go on so the client sees the gap."""
        sink, sender = self.make({1: OSError(errno.EAGAIN, "busy"), 2: OSError(errno.ENOBUFS, "no buffers")})
        sink.write_batch(PacketBatch.from_packets(frames(4)))
        self.assertEqual((sink.sent, sink.dropped), (2, 2))
        self.assertEqual([next(iter_packet_messages(d)).npkt for d in sender.datagrams], [1, 4])
        self.assertEqual(sink.bytes_sent, sum(map(len, sender.datagrams)))
        sink.write_batch(PacketBatch.from_packets(frames(1, start=4)))
        self.assertEqual(next(iter_packet_messages(sender.datagrams[-1])).npkt, 5)
        self.assertEqual(sink.send_errors, {"EAGAIN": 1, "ENOBUFS": 1})

    def test_other_errors_raised(self) -> None:
        """A broken socket is a fault that ends the capture, not drops."""
        sink, _ = self.make({0: OSError(errno.EBADF, "bad file descriptor")})
        error = self.assertRaises(OSError, sink.write_batch, PacketBatch.from_packets(frames(2)))
        self.assertEqual(error.errno, errno.EBADF)


class UdpGsoSinkTests(SynchronousTestCase):
    """Classic UDP with --udp-gso: the same datagrams through the segmenting send; a kernel without it said once."""

    def make(self) -> tuple[UdpPacketSink, FakeBatchSender]:
        return udp_sink_with_fake_sender(segmenting=True)

    def test_batches_go_segmented_with_the_same_datagrams(self) -> None:
        sink, sender = self.make()
        batch = PacketBatch.from_packets(frames(5))
        sink.write_batch(batch)
        self.assertEqual(sender.segmented_calls, 1)
        self.assertEqual(sender.datagrams, encode_packet_messages(batch, 1000, 1))
        self.assertEqual((sink.sent, sink.dropped), (5, 0))

    def test_a_kernel_without_gso_is_said_once_then_plain_sends(self) -> None:
        sink, sender = self.make()
        sender.segments = False
        events: list[dict[str, Any]] = []
        self.patch(sink, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        sink.write_batch(PacketBatch.from_packets(frames(5)))
        sink.write_batch(PacketBatch.from_packets(frames(5, start=5)))
        self.assertEqual((sender.segmented_calls, sink.segmenting, sink.sent), (1, False, 10))
        self.assertEqual([formatEvent(e) for e in events if "segment" in formatEvent(e)].__len__(), 1)

    def test_the_setting_reaches_a_workers_copy(self) -> None:
        sink, _ = self.make()
        copy = UdpPacketSink.from_settings(sink.settings(), Clock())
        self.assertTrue(copy.segmenting)
        self.assertFalse(UdpPacketSink.from_settings({"kind": "udp", "snaplen": 9}, Clock()).segmenting)


class SegmentedDatagramCallTests(SynchronousTestCase):
    """What C{send_datagrams_segmented} asks of the kernel, and what it makes of a refusal."""

    def setUp(self) -> None:
        if not fastsend.AVAILABLE:
            raise SkipTest("the batch sends need 64-bit Linux")

    def vectors(self, *sizes: int) -> fastsend.PacketVectors:
        packets = [(1, i, bytes([i]) * size) for i, size in enumerate(sizes)]
        return fastsend.packet_vectors(PacketBatch.from_packets(packets), 65535, 1)

    def test_runs_of_equal_sizes_go_as_one_message_each(self) -> None:
        libc = FakeLibc(None)
        self.patch(fastsend, "_libc", libc)
        refused, largest = fastsend.send_datagrams_segmented(
            5, self.vectors(*[100] * 10, *[60] * 10), 1 << 16, None
        )  # type: ignore[arg-type]
        # Two runs (the first run closed by one shorter datagram: 11 and 9).
        self.assertEqual((refused, largest, libc.offered), ([], 1 << 16, [2]))

    def test_packets_of_many_sizes_go_one_message_each(self) -> None:
        libc = FakeLibc(None)
        self.patch(fastsend, "_libc", libc)
        fastsend.send_datagrams_segmented(5, self.vectors(*range(60, 80)), 1 << 16, None)  # type: ignore[arg-type]
        self.assertEqual(libc.offered, [20])

    def test_runs_above_the_largest_are_not_segmented(self) -> None:
        libc = FakeLibc(None)
        self.patch(fastsend, "_libc", libc)
        fastsend.send_datagrams_segmented(5, self.vectors(*[100] * 10, *[60] * 40), 100, None)  # type: ignore[arg-type]
        # 128-byte datagrams above 100: eleven messages (the run took one 88); the rest, one.
        self.assertEqual(libc.offered, [12])

    def test_a_run_the_path_will_not_segment_goes_at_once_and_in_order(self) -> None:
        """EINVAL (a segment over the path's MTU): that run one by one, at once; the size remembered."""
        libc = FakeLibc(OSError(errno.EINVAL, "invalid"), None, None)
        self.patch(fastsend, "_libc", libc)
        seen: list[int] = []
        refused, largest = fastsend.send_datagrams_segmented(
            5, self.vectors(*[100] * 10, *[60] * 10), 1 << 16, lambda i, e: seen.append(i) or True
        )
        self.assertEqual((refused, seen, largest), ([], [], 127))
        self.assertEqual(libc.offered, [2, 11, 1])

    def test_a_kernel_without_gso(self) -> None:
        libc = FakeLibc(OSError(errno.ENOPROTOOPT, "no"), None, None)
        self.patch(fastsend, "_libc", libc)
        refused, largest = fastsend.send_datagrams_segmented(5, self.vectors(*[100] * 20), 1 << 16, None)  # type: ignore[arg-type]
        self.assertEqual((refused, largest, libc.offered), ([], None, [1, 20]))

    def test_other_errors_refuse_one_datagram_as_a_send_of_it_would(self) -> None:
        """
        A full buffer or an ICMP error the socket held fails the run's send:
        its first datagram is refused (as when sent alone), the others are
        tried each on its own, then the next run goes.
        """
        libc = FakeLibc(OSError(errno.EHOSTUNREACH, "prohibited"), None, None)
        self.patch(fastsend, "_libc", libc)
        seen: list[int] = []
        refused, largest = fastsend.send_datagrams_segmented(
            5, self.vectors(*[100] * 10, *[60] * 10), 1 << 16, lambda i, e: seen.append(i) or True
        )
        self.assertEqual((refused, seen, largest), ([0], [0], 1 << 16))
        self.assertEqual(libc.offered, [2, 10, 1])

    def test_udpstr_run_the_kernel_will_not_segment_goes_at_once(self) -> None:
        """One by one before the next run, so a collector sees the datagrams in order; GSO then said off."""
        libc = FakeLibc(OSError(errno.EINVAL, "invalid"), None, None)
        self.patch(fastsend, "_libc", libc)
        datagrams = [b"a" * 1472] * 3 + [b"b" * 1400] * 2
        refused, segments = fastsend.send_segmented(5, datagrams, lambda i, e: True)
        self.assertEqual((refused, segments), ([], False))
        self.assertEqual(
            libc.offered, [2, 4, 1]
        )  # the first run (closed by a shorter one) alone, then the last

    def test_udpstr_runs_likewise(self) -> None:
        libc = FakeLibc(OSError(errno.EHOSTUNREACH, "prohibited"), None)
        self.patch(fastsend, "_libc", libc)
        seen: list[int] = []
        refused, segments = fastsend.send_segmented(5, [b"x" * 1472] * 5, lambda i, e: seen.append(i) or True)
        self.assertEqual((refused, seen, segments), ([0], [0], True))
        self.assertEqual(libc.offered, [1, 4])


class SegmentedDatagramKernelTests(SynchronousTestCase):
    """UDP GSO through this machine's kernel, on loopback: the receiver gets exactly the datagrams, in order."""

    def test_the_receiver_gets_each_datagram(self) -> None:
        import socket

        if not fastsend.AVAILABLE:
            raise SkipTest("the batch sends need 64-bit Linux")
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.bind(("127.0.0.1", 0))
        sender.connect(receiver.getsockname())
        sizes = [1000] * 40 + [999] + [64] * 70 + list(range(100, 110)) + [1400] * 3
        packets = [(1, i, bytes([i % 256]) * size) for i, size in enumerate(sizes)]
        batch = PacketBatch.from_packets(packets)
        vectors = fastsend.packet_vectors(batch, 65535, 1)
        refused, largest = fastsend.send_datagrams_segmented(
            sender.fileno(), vectors, 1 << 16, lambda i, e: True
        )
        if largest is None:
            raise SkipTest("this kernel has no UDP GSO")
        receiver.settimeout(2)
        got = [receiver.recv(65536) for _ in range(len(sizes) - len(refused))]
        self.assertEqual(refused, [])
        self.assertEqual(got, encode_packet_messages(batch, 65535, 1))


class UdpStrBatchSendTests(SynchronousTestCase):
    """udpstr over UDP: a batch's datagrams in one sendmmsg; a refused one drops the packets it touched."""

    def make(self, failures: dict[int, OSError] | None = None) -> tuple[UdpStrPacketSink, FakeBatchSender]:
        sink = UdpStrPacketSink(snaplen=65535, mtu=1472, clock=Clock(), flush_after=0.1)
        return sink, wire_fake_sender(sink, failures)

    def test_datagrams_of_a_batch_in_one_call(self) -> None:
        sink, sender = self.make()
        sink.write_batch(PacketBatch.from_packets(frames(50, size=500)))
        sink.flush()
        decoder = UdpStrDecoder()
        packets = [p for d in sender.datagrams for p in decoder.feed(d)]
        self.assertEqual([p.npkt for p in packets], list(range(1, 51)))
        self.assertEqual((decoder.lost_packets, sink.dropped, sink.datagrams), (0, 0, len(sender.datagrams)))
        self.assertEqual(sender.calls, 1)  # the batch's full datagrams; the flushed one alone, by send()

    def test_refused_datagram_drops_what_it_held(self) -> None:
        sink, sender = self.make({1: OSError(errno.ENOBUFS, "no buffers")})
        sink.write_batch(PacketBatch.from_packets(frames(50, size=500)))
        self.assertGreater(sink.dropped, 0)
        decoder = UdpStrDecoder()
        delivered = [p for d in sender.datagrams for p in decoder.feed(d)]
        # Every packet the sink counted as dropped is missing, and no other.
        missing = set(range(1, len(delivered) + sink.dropped + 1)) - {p.npkt for p in delivered}
        self.assertEqual(len(missing), sink.dropped)
        self.assertEqual(sink.send_errors, {"ENOBUFS": 1})

    def test_gso_refused_once_then_plain_sends(self) -> None:
        """A kernel or path that cannot segment: the batch still goes, later ones without GSO, said once."""
        sink, sender = self.make()
        sink.segmenting = True  # --udp-gso
        sender.segments = False
        events: list[dict[str, Any]] = []
        self.patch(sink, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        sink.write_batch(PacketBatch.from_packets(frames(50, size=500)))
        sink.write_batch(PacketBatch.from_packets(frames(50, start=50, size=500)))
        self.assertEqual((sender.segmented_calls, sender.plain_calls), (1, 1))
        self.assertEqual(len(events), 1)
        self.assertIn("will not segment", formatEvent(events[0]))
        decoder = UdpStrDecoder()
        packets = [p for d in sender.datagrams for p in decoder.feed(d)]
        self.assertEqual(packets[-1].npkt, len(packets))


class GsoGroupTests(SynchronousTestCase):
    """How a batch's udpstr datagrams are cut into UDP GSO sends."""

    def test_full_datagrams_then_a_short_one(self) -> None:
        self.assertEqual(fastsend.gso_groups([1472] * 5 + [900]), [(0, 6)])

    def test_a_longer_one_starts_a_new_send(self) -> None:
        self.assertEqual(fastsend.gso_groups([1400, 1400, 1472, 1472]), [(0, 2), (2, 4)])

    def test_short_one_in_the_middle_closes_the_send(self) -> None:
        self.assertEqual(fastsend.gso_groups([1472, 1000, 1472]), [(0, 2), (2, 3)])

    def test_sends_stay_under_the_datagram_limit(self) -> None:
        groups = fastsend.gso_groups([1472] * 100)
        self.assertEqual([end - start for start, end in groups], [44, 44, 12])
        self.assertEqual(groups[0], (0, 44))

    def test_at_most_64_segments(self) -> None:
        groups = fastsend.gso_groups([100] * 130)
        self.assertEqual([end - start for start, end in groups], [64, 64, 2])

    def test_nothing(self) -> None:
        self.assertEqual(fastsend.gso_groups([]), [])


class WritableDescriptorTests(SynchronousTestCase):
    """When a TCP sink may write to the socket itself: only while Twisted holds nothing to send."""

    def connection(self) -> tcp.Connection:
        class Socket:
            def setblocking(self, flag: bool) -> None:
                pass

            def fileno(self) -> int:
                return 42

        connection = tcp.Connection(Socket(), protocol.Protocol(), MemoryReactor())  # type: ignore[arg-type]
        connection.connected = 1
        return connection

    def test_idle_connection(self) -> None:
        self.assertEqual(fastsend.writable_fd(self.connection()), 42)

    def test_data_queued_in_twisted(self) -> None:
        """Bytes written after Twisted's queue would overtake it: the sink writes through the transport."""
        queued = self.connection()
        queued._tempDataBuffer.append(b"x")
        queued._tempDataLen = 1
        self.assertIsNone(fastsend.writable_fd(queued))
        partly_sent = self.connection()
        partly_sent.dataBuffer, partly_sent.offset = b"abc", 1
        self.assertIsNone(fastsend.writable_fd(partly_sent))

    def test_closing_or_closed(self) -> None:
        closing = self.connection()
        closing.disconnecting = True
        self.assertIsNone(fastsend.writable_fd(closing))
        closed = self.connection()
        closed.connected = 0
        self.assertIsNone(fastsend.writable_fd(closed))

    def test_not_a_plain_tcp_connection(self) -> None:
        """TLS, or a test's transport: no socket of its own to write to."""
        self.assertIsNone(fastsend.writable_fd(StringTransport()))


class SendBufferLogTests(SynchronousTestCase):
    """What a UDP data channel's send buffer turned out to be is said; a capped one with its fix, once."""

    class Socket:
        def __init__(self, usable: int) -> None:
            self.usable = usable

        def getsockopt(self, level: int, name: int) -> int:
            return 2 * self.usable  # as Linux reports it

    def logged(self, channels: DataChannels, usable: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(channels, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        channels._log_send_buffer(self.Socket(usable), "192.0.2.7", 40000)  # type: ignore[arg-type]
        return events

    def test_granted(self) -> None:
        channels = DataChannels(MemoryReactor())
        [event] = self.logged(channels, 8 * 1024 * 1024)
        self.assertEqual(
            formatEvent(event), "UDP data channel to 192.0.2.7:40000 (classic): send buffer 8388608 bytes"
        )

    def test_capped_said_once_with_the_fix(self) -> None:
        channels = DataChannels(MemoryReactor(), udp_mtu=1472)
        [first] = self.logged(channels, 212992)
        self.assertEqual(first["log_level"].name, "warn")
        self.assertIn("not the 8388608 asked", formatEvent(first))
        self.assertIn("net.core.wmem_max", formatEvent(first))
        [second] = self.logged(channels, 212992)
        self.assertEqual(second["log_level"].name, "info")
        self.assertIn("(udpstr MTU 1472): send buffer 212992 bytes", formatEvent(second))
