"""
Tests for the data-channel sinks (L{TcpPacketSink}, L{UdpPacketSink}), the
passive data-channel listener of L{DataChannels} and L{CaptureReader}, all
over in-memory transports and reactors.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, MessageLengthError
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.capture.reader import CaptureReader
from rpcapsvc.capture.system import CaptureError, CaptureOptions
from rpcapsvc.protocol.datachannel import (
    BATCH_RECORD,
    PKTHDR_SIZE,
    CapturedPacket,
    PacketBatch,
    iter_packet_messages,
)
from rpcapsvc.protocol.wire import HEADER, MessageType
from rpcapsvc.server.datachannel import DataChannels, TcpPacketSink, UdpPacketSink
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
