"""
Capture workers (L{rpcapsvc.server.worker}) without processes or sockets:
the pipe protocol's framing and codecs, and L{WorkerCaptureHandle} driving
a L{CaptureWorker} in memory (the requests and event frames cross as bytes,
as they would cross the sockets).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from collections import deque
from typing import Any, Optional

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ..capture.reader import CaptureReader
from ..capture.sampling import FirstAfterInterval, OneInEvery
from ..capture.system import CaptureError, CaptureOptions, Direction, PrefixedProgram
from ..protocol import bpf
from ..protocol.datachannel import PacketBatch
from ..protocol.wire import BpfInstruction, BpfProgram, InterfaceInfo
from ..server import worker as w
from ..server.datachannel import (
    TcpPacketSink,
    TcpUdpStrPacketSink,
    UdpPacketSink,
    UdpStrPacketSink,
    sink_from_settings,
)
from ..testing import FakeCaptureHandle, FakeCaptureSystem, HeldRunner, RecordingSink

LO = InterfaceInfo("lo", "", 0, ())
PACKETS = [(1, 2, b"\x00" * 12 + b"\x08\x00" + bytes(range(40))), (1, 3, b"\xff" * 60), (2, 0, b"x" * 1514)]


class FrameTests(SynchronousTestCase):
    def test_frames_split_anywhere_come_out_whole_and_in_order(self) -> None:
        stream = (
            w.encode_frame(w.COUNTS, b"abc")
            + w.encode_frame(w.FAILED, b"")
            + w.encode_frame(w.BATCH, b"z" * 300)
        )
        decoder = w.FrameDecoder()
        frames = []
        for i in range(0, len(stream), 7):
            frames += decoder.feed(stream[i : i + 7])
        self.assertEqual(frames, [(w.COUNTS, b"abc"), (w.FAILED, b""), (w.BATCH, b"z" * 300)])

    def test_a_frame_too_large_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            w.FrameDecoder().feed(w.FRAME.pack(w.MAX_FRAME + 1, w.BATCH))

    def test_programs_options_and_batches_round_trip(self) -> None:
        prefix = (BpfInstruction(0x28, 0, 0, 12), BpfInstruction(0x15, 0, 1, 0x800))
        body = bpf.ACCEPT_ALL.instructions
        prefixed = PrefixedProgram(prefix + body, prefix)
        decoded = w.program_from_json(json.loads(json.dumps(w.program_to_json(prefixed))))
        self.assertIsInstance(decoded, PrefixedProgram)
        self.assertEqual((decoded.instructions, decoded.prefix), (prefixed.instructions, prefix))  # type: ignore[attr-defined]
        plain = w.program_from_json(json.loads(json.dumps(w.program_to_json(bpf.ACCEPT_ALL))))
        self.assertNotIsInstance(plain, PrefixedProgram)
        self.assertEqual(plain, bpf.ACCEPT_ALL)
        options = CaptureOptions(
            snaplen=96, promiscuous=True, read_timeout_ms=20, direction=Direction.IN, buffer_size=1 << 24
        )
        self.assertEqual(w.options_from_json(json.loads(json.dumps(w.options_to_json(options)))), options)
        batch = PacketBatch.from_packets(PACKETS)
        [(kind, payload)] = w.FrameDecoder().feed(w.encode_batch(batch))
        self.assertEqual(w.decode_batch(payload), batch)

    def test_sampling_travels_as_the_rpcap_method_and_value(self) -> None:
        self.assertEqual(w.sampling_of(OneInEvery(10)), (1, 10))
        self.assertEqual(w.sampling_of(FirstAfterInterval(100)), (2, 100))
        self.assertEqual(w.sampling_of(None), (0, 0))


class FakeSocket:
    family = socket.AF_INET

    def fileno(self) -> int:
        return 77


class FakeUdpPort:
    socket = FakeSocket()


def daemon_udp_sink() -> UdpPacketSink:
    """The daemon's end of a UDP data channel, its socket a stand-in (handed over by its number)."""
    sink = UdpPacketSink(200)
    sink.transport = FakeUdpPort()  # type: ignore[assignment]
    return sink


class FakeProcess:
    def __init__(self) -> None:
        self.pid = 4242
        self.returncode: Optional[int] = None
        self.killed = False
        self.waited = False
        self.exit_on_wait: Optional[int] = 0

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.returncode is None:
            if self.exit_on_wait is None:
                raise subprocess.TimeoutExpired("worker", timeout or 0)
            self.returncode = self.exit_on_wait
        self.waited = True
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9


class MemoryEvents:
    """Both ends of the event socket, in memory: frames the worker wrote, and the forward requests it gets."""

    def __init__(self) -> None:
        self.to_daemon: deque[bytes] = deque()
        self.worker: Optional[w.CaptureWorker] = None
        self.gone = False
        self.closed = False
        self.fds_sent: list[Optional[int]] = []

    def fileno(self) -> int:
        return 99

    def receive(self) -> Optional[tuple[int, bytes]]:
        if self.to_daemon:
            [frame] = w.FrameDecoder().feed(self.to_daemon.popleft())
            return frame
        if self.gone:
            raise w.WorkerGone("the capture worker closed its socket")
        return None

    def send(self, frame: bytes, fd: Optional[int] = None) -> None:
        self.fds_sent.append(fd)
        [(kind, payload)] = w.FrameDecoder().feed(frame)
        assert self.worker is not None
        self.worker.event_received(kind, payload, fd)

    def close(self) -> None:
        self.closed = True


class WorkerHandleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem([LO])
        self.events = MemoryEvents()
        self.worker_sinks: list[RecordingSink] = []
        self.worker = w.CaptureWorker(
            self.reactor,
            self.system,
            self.events.to_daemon.append,
            sinks=self._worker_sink,
            relay=self._relay,
        )
        self.events.worker = self.worker
        self.process = FakeProcess()
        self.requests: list[dict[str, Any]] = []
        self.handle = w.WorkerCaptureHandle(self.process, self._call, self.events, "capture on lo")
        self.warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") is LogLevel.warn:
                self.warnings.append(event["log_format"].format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def _call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.process.returncode is not None:
            raise w.WorkerGone("the capture worker closed its socket")
        self.requests.append(request)
        reply = self.worker.handle_request(json.loads(json.dumps(request)))
        return json.loads(json.dumps(reply))  # type: ignore[no-any-return]

    def _worker_sink(self, spec: dict[str, Any], fd: Optional[int]) -> RecordingSink:
        self.spec = spec
        sink = RecordingSink(spec["snaplen"])
        self.worker_sinks.append(sink)
        return sink

    def _relay(self) -> w.RelaySink:
        return w.RelaySink(self)

    def spec_sampling(self) -> Any:
        assert self.worker.reader is not None
        return [0, 0] if self.worker.reader.sampler is None else None

    # the RelaySink's transport: the worker's end of the event socket
    def write(self, data: bytes) -> None:
        self.events.to_daemon.append(data)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def _opened(self) -> FakeCaptureHandle:
        self.handle.open("lo", CaptureOptions(snaplen=200, read_timeout_ms=30))
        [fake] = self.system.handles
        return fake

    def _forwarding(self) -> tuple[FakeCaptureHandle, UdpPacketSink, RecordingSink]:
        fake = self._opened()
        daemon_sink = daemon_udp_sink()
        self.handle.forward_to(daemon_sink, None)
        [worker_sink] = self.worker_sinks
        return fake, daemon_sink, worker_sink

    def test_open_opens_in_the_worker_with_the_clients_options(self) -> None:
        fake = self._opened()
        self.assertEqual(self.handle.linktype, self.system.linktype)
        self.assertEqual((fake.device, fake.options.snaplen, fake.options.read_timeout_ms), ("lo", 200, 30))

    def test_an_open_refused_says_what_libpcap_said(self) -> None:
        self.system.refuse_open = "lo: You don't have permission to capture on that device"
        with self.assertRaises(CaptureError) as caught:
            self.handle.open("lo", CaptureOptions())
        self.assertEqual(str(caught.exception), "lo: You don't have permission to capture on that device")

    def test_the_filter_placed_is_the_one_the_worker_puts_on_its_capture(self) -> None:
        fake = self._opened()
        prefix = (BpfInstruction(0x28, 0, 0, 12), BpfInstruction(0x15, 0, 0, 0x86DD))
        program = PrefixedProgram(prefix + bpf.ACCEPT_ALL.instructions, prefix)
        self.handle.set_filter(program)
        self.assertEqual(fake.filters_set, [program])
        fake.refuse_filter = "the kernel refused the filter: [Errno 12] Cannot allocate memory"
        with self.assertRaises(CaptureError) as caught:
            self.handle.set_filter(BpfProgram(bpf.ACCEPT_ALL.instructions))
        self.assertIn("Cannot allocate memory", str(caught.exception))

    def test_packets_go_out_in_the_worker_and_its_counts_reach_the_daemons_sink(self) -> None:
        fake, daemon_sink, worker_sink = self._forwarding()
        self.assertEqual(
            (self.spec["kind"], self.spec["family"], self.spec["snaplen"], self.spec["flush_after"]),
            ("udp", socket.AF_INET, 200, 0.03),
        )
        self.assertEqual(self.events.fds_sent, [77])
        fake.inject(PACKETS)
        assert self.worker.reader is not None
        self.worker.reader.doRead()
        self.assertEqual(worker_sink.batches, [PacketBatch.from_packets(PACKETS)])
        self.assertEqual(daemon_sink.sent, 0)  # not yet reported: nothing is sent from the daemon
        self.worker.report_counts()
        self.assertEqual(len(self.handle.read_batch(512)), 0)
        self.assertEqual((daemon_sink.sent, daemon_sink.bytes_sent), (3, worker_sink.bytes_sent))
        stats = self.handle.stats()
        self.assertEqual((stats.received, stats.dropped), (3, 0))

    def test_counts_are_reported_only_when_they_change(self) -> None:
        self._forwarding()
        self.reactor.advance(w.COUNTS_INTERVAL)
        self.reactor.advance(w.COUNTS_INTERVAL)
        self.assertEqual(len(self.events.to_daemon), 1)

    def test_the_sampling_asked_for_is_applied_in_the_worker(self) -> None:
        fake = self._opened()
        daemon_sink = daemon_udp_sink()
        sampler = OneInEvery(2)
        self.handle.forward_to(daemon_sink, sampler)
        fake.inject([(1, n, bytes([n]) * 20) for n in range(10)])
        assert self.worker.reader is not None
        self.worker.reader.doRead()
        self.assertEqual(self.worker_sinks[0].sent, 5)
        self.worker.report_counts()
        self.handle.read_batch(512)
        self.assertEqual((daemon_sink.sent, sampler.skipped), (5, 5))

    def test_a_sampling_changed_during_the_capture_reaches_the_worker(self) -> None:
        fake, daemon_sink, _ = self._forwarding()
        assert self.worker.reader is not None
        fake.inject([(1, n, bytes([n]) * 20) for n in range(10)])
        self.worker.reader.doRead()
        sampler = OneInEvery(5)
        self.handle.set_sampling(sampler)
        fake.inject([(2, n, bytes([n]) * 20) for n in range(10)])
        self.worker.reader.doRead()
        self.assertEqual(self.worker_sinks[0].sent, 10 + 2)
        self.worker.report_counts()
        self.handle.read_batch(512)
        self.assertEqual((daemon_sink.sent, sampler.skipped), (12, 8))

    def test_the_worker_owns_the_channel_it_forwards_to(self) -> None:
        """Its socket is the worker's to flush and close first (L{SessionCapture.stop} waits for that)."""
        self._opened()
        self.assertFalse(self.handle.owns_data_channel)
        self.handle.forward_to(daemon_udp_sink(), None)
        self.assertTrue(self.handle.owns_data_channel)

    def test_a_capture_failing_in_the_worker_fails_it_here_with_the_reason(self) -> None:
        fake, _, _ = self._forwarding()
        fake.fail_with = "The interface went down"
        fake.inject(PACKETS)
        assert self.worker.reader is not None
        self.worker.reader.doRead()
        with self.assertRaises(CaptureError) as caught:
            self.handle.read_batch(512)
        self.assertEqual(str(caught.exception), "The interface went down")

    def test_a_worker_that_dies_fails_the_capture_and_is_logged_once_when_closed(self) -> None:
        self._forwarding()
        self.process.returncode = -9
        self.events.gone = True
        with self.assertRaises(CaptureError) as caught:
            self.handle.read_batch(512)
        self.assertEqual(str(caught.exception), "the capture worker (pid 4242) ended: killed by SIGKILL")
        with self.assertRaises(CaptureError):
            self.handle.stats()
        self.handle.close()
        self.handle.close()
        self.assertTrue(self.process.waited)
        self.assertTrue(self.events.closed)
        self.assertEqual(
            self.warnings, ["capture on lo: capture worker pid=4242 ended on its own (killed by SIGKILL)"]
        )

    def test_close_stops_the_worker_and_waits_for_it(self) -> None:
        fake, _, worker_sink = self._forwarding()
        closed: list[w.WorkerCaptureHandle] = []
        self.handle._on_closed = closed.append
        self.handle.close()
        self.assertEqual(self.requests[-1], {"op": "close"})
        self.assertTrue(fake.closed and worker_sink.closed and self.process.waited)
        self.assertEqual((closed, self.warnings), ([self.handle], []))
        with self.assertRaises(CaptureError):
            self.handle.stats()

    def test_a_worker_that_will_not_exit_is_killed(self) -> None:
        self._opened()
        self.process.exit_on_wait = None
        self.handle.close()
        self.assertTrue(self.process.killed)
        self.assertEqual(self.process.returncode, -9)

    def test_the_service_stopping_kills_the_worker(self) -> None:
        self._opened()
        self.handle.kill()
        self.assertTrue(self.process.killed and self.process.waited and self.events.closed)

    def test_a_channel_that_cannot_move_gets_the_packets_relayed_byte_for_byte(self) -> None:
        fake = self._opened()
        daemon_sink = RecordingSink(200)  # no socket to hand over (as a TLS channel's): relayed
        self.handle.forward_to(daemon_sink, OneInEvery(2))
        self.assertEqual(self.spec_sampling(), [0, 0])  # sampled here, by the session's reader
        self.assertTrue(self.handle.relayed)
        self.assertEqual(self.events.fds_sent, [None])
        fake.inject(PACKETS)
        assert self.worker.reader is not None
        self.worker.reader.doRead()
        self.worker.report_counts()
        self.assertEqual(self.handle.read_batch(512), PacketBatch.from_packets(PACKETS))
        self.assertEqual(len(self.handle.read_batch(512)), 0)
        self.assertEqual(daemon_sink.sent, 0)  # the daemon's sink counts what it sends itself


class SinkSpecTests(SynchronousTestCase):
    """The worker's sink is made from the daemon's sink's own settings: every option reaches it."""

    def worker_copy(self, daemon_sink: Any) -> Any:
        daemon_sink.transport = FakeUdpPort()
        spec, sock = w.sink_spec(daemon_sink, CaptureOptions(snaplen=200, read_timeout_ms=30))
        self.assertIs(sock, FakeUdpPort.socket)
        return sink_from_settings(json.loads(json.dumps(spec)), Clock())

    def test_udp_gso_reaches_the_worker(self) -> None:
        """--udp-gso: the worker's udpstr sink segments too, at the daemon's MTU and flush delay."""
        daemon_sink = UdpStrPacketSink(200, 1472, Clock(), 0.03, segmenting=True)
        copy = self.worker_copy(daemon_sink)
        self.assertIsInstance(copy, UdpStrPacketSink)
        self.assertEqual(copy.settings(), daemon_sink.settings())
        self.assertTrue(copy.segmenting)

    def test_each_kind_of_sink_comes_out_the_same(self) -> None:
        for daemon_sink in (
            TcpPacketSink(96),
            TcpUdpStrPacketSink(96, 9000, Clock(), 0.25),
            UdpPacketSink(96),
            UdpStrPacketSink(96, 1200, Clock(), 0.25),
        ):
            copy = self.worker_copy(daemon_sink)
            self.assertIs(type(copy), type(daemon_sink))
            self.assertEqual(copy.settings(), daemon_sink.settings())


class _HandleOwningItsChannel(FakeCaptureHandle):
    """A capture handle whose process sends on the data channel itself, as a worker's does."""

    owns_data_channel = True

    def close(self) -> None:
        self.sink_closed_at_close = self.sink.closed
        super().close()


class StopOrderTests(SynchronousTestCase):
    def stopped(self, handle: FakeCaptureHandle) -> tuple[RecordingSink, HeldRunner]:
        from ..server.forwarded import ForwardedTraffic
        from ..server.sessioncapture import SessionCapture

        runner = HeldRunner()
        capture = SessionCapture(handle, 200, None, runner, _no_compile, ForwardedTraffic(), "capture on lo")
        sink = RecordingSink(200)
        capture.sink = handle.sink = sink  # type: ignore[attr-defined]
        capture.stop()
        return sink, runner

    def test_a_worker_closes_the_channel_before_the_daemon_does(self) -> None:
        """Packets the worker still holds go out: the daemon's orderly close would shut the shared socket down."""
        handle = _HandleOwningItsChannel("lo", CaptureOptions())
        sink, runner = self.stopped(handle)
        self.assertFalse(sink.closed)
        runner.release()
        self.assertFalse(handle.sink_closed_at_close)
        self.assertTrue(sink.closed)

    def test_otherwise_the_channel_closes_at_once(self) -> None:
        sink, runner = self.stopped(FakeCaptureHandle("lo", CaptureOptions()))
        self.assertTrue(sink.closed)
        runner.release()


def _no_compile(expression: str, linktype: int) -> Any:
    raise AssertionError("no compilation expected")


def _readable(sock: socket.socket) -> bool:
    """What the reactor's (level-triggered) poll would say of the daemon's end."""
    return bool(select.select([sock], [], [], 0)[0])


class EventSocketTests(SynchronousTestCase):
    """
    The daemon's end of the event socket, on a real socket pair (the
    worker's end written by hand): read in the reactor thread, it never
    waits, and leaves no whole frame unseen.
    """

    def setUp(self) -> None:
        here, self.there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(self.there.close)
        self.events = w.EventSocket(here)
        self.addCleanup(self.events.close)

    def _handle(self) -> tuple[w.WorkerCaptureHandle, FakeProcess, list[str]]:
        def no_requests(request: dict[str, Any], timeout: float) -> dict[str, Any]:
            raise AssertionError("no request is made here")

        process = FakeProcess()
        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") is LogLevel.warn:
                warnings.append(event["log_format"].format(**event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return w.WorkerCaptureHandle(process, no_requests, self.events, "capture on lo"), process, warnings

    def test_a_frame_coming_in_pieces_is_waited_for_without_blocking(self) -> None:
        frame = w.encode_batch(PacketBatch.from_packets(PACKETS))
        started = time.monotonic()
        for piece in (frame[:3], frame[3:7], frame[7:100]):
            self.there.sendall(piece)
            self.assertIsNone(self.events.receive())  # not all there yet: back to the reactor at once
            self.assertFalse(_readable(self.events))  # all read: the reactor waits, no spinning
        self.there.sendall(frame[100:])
        kind, payload = self.events.receive() or (0, b"")
        self.assertEqual((kind, w.decode_batch(payload)), (w.BATCH, PacketBatch.from_packets(PACKETS)))
        self.assertIsNone(self.events.receive())
        self.assertLess(time.monotonic() - started, 1.0)

    def test_a_batch_bigger_than_the_socket_buffer_comes_whole(self) -> None:
        packets = [(3, n, bytes([n]) * 60000) for n in range(40)]  # 2.4 MB: many reads
        frame = memoryview(w.encode_batch(PacketBatch.from_packets(packets)))
        self.there.setblocking(False)
        received = []
        for _ in range(10000):  # each round moves a socket buffer's worth: far fewer are needed
            if frame:
                try:
                    frame = frame[self.there.send(frame) :]
                except BlockingIOError:
                    pass
            got = self.events.receive()
            if got is not None:
                received.append(got)
                break
        self.assertFalse(frame)
        [(kind, payload)] = received
        self.assertEqual(w.decode_batch(payload), PacketBatch.from_packets(packets))

    def test_frames_that_came_together_are_each_delivered_without_more_data(self) -> None:
        sent = [(w.COUNTS, w.COUNTS_BODY.pack(n, 0, 10 * n, 0)) for n in range(50)]
        sent += [(w.WARNING, b"one line"), (w.BATCH, b"\0\0\0\0"), (w.FAILED, b"")]
        self.there.sendall(b"".join(w.encode_frame(kind, payload) for kind, payload in sent))
        received = []
        while _readable(self.events):  # the reactor is told as long as any is left
            frame = self.events.receive()
            assert frame is not None
            received.append(frame)
        self.assertEqual(received, sent)
        self.assertIsNone(self.events.receive())

    def test_each_relayed_batch_reaches_the_sessions_reader_with_no_more_data(self) -> None:
        """The session's L{CaptureReader} stops after a short batch: the rest must wake it again."""
        handle, _, _ = self._handle()
        batches = [PacketBatch.from_packets([(4, n, bytes([n]) * (n + 20))]) for n in range(6)]
        frames = []
        for n, batch in enumerate(batches):
            frames += [w.encode_frame(w.COUNTS, w.COUNTS_BODY.pack(n, 0, 0, 0)), w.encode_batch(batch)]
        self.there.sendall(b"".join(frames))
        delivered: list[PacketBatch] = []
        errors: list[str] = []
        reader = CaptureReader(MemoryReactorClock(), handle, delivered.append, errors.append)
        reader.start()
        turns = 0
        while _readable(self.events) and turns < 100:
            reader.doRead()
            turns += 1
        self.assertEqual((delivered, errors), (batches, []))
        self.assertEqual(len(handle.read_batch(512)), 0)  # nothing was held back

    def test_a_message_said_to_be_too_long_ends_the_worker_with_the_reason(self) -> None:
        handle, process, warnings = self._handle()
        self.there.sendall(w.FRAME.pack(w.MAX_FRAME + 1, w.BATCH))
        why = f"it sent a message of {w.MAX_FRAME + 1} bytes (at most {w.MAX_FRAME} make sense)"
        with self.assertRaises(CaptureError) as caught:
            handle.read_batch(512)
        self.assertEqual(str(caught.exception), f"the capture worker (pid 4242) was ended: {why}")
        self.assertTrue(process.killed)
        self.assertEqual(warnings, [f"capture on lo: capture worker pid=4242 ended: {why}"])
        handle.close()
        self.assertEqual(len(warnings), 1)  # not again as it closes

    def test_the_worker_closing_midway_through_a_message_is_the_worker_gone(self) -> None:
        self.there.sendall(w.encode_frame(w.COUNTS, w.COUNTS_BODY.pack(1, 2, 3, 4))[:20])
        self.assertIsNone(self.events.receive())
        self.there.close()
        with self.assertRaises(w.WorkerGone) as caught:
            self.events.receive()
        self.assertEqual(
            str(caught.exception), "the capture worker closed its socket in the middle of a message"
        )

    def test_the_worker_closing_between_messages_is_the_worker_gone(self) -> None:
        self.there.sendall(w.encode_frame(w.WARNING, b"bye"))
        self.there.close()
        self.assertEqual(self.events.receive(), (w.WARNING, b"bye"))
        with self.assertRaises(w.WorkerGone) as caught:
            self.events.receive()
        self.assertEqual(str(caught.exception), "the capture worker closed its socket")

    def test_sending_to_a_worker_that_reads_nothing_never_waits(self) -> None:
        handle, process, warnings = self._handle()
        started = time.monotonic()
        frame = w.encode_json(w.SAMPLING, {"sampling": [1, 10]})
        with self.assertRaises(w.WorkerBroken):
            for _ in range(100000):  # the socket's buffer fills long before
                self.events.send(frame)
        self.assertLess(time.monotonic() - started, 2.0)
        # The data channel handed over then: the stuck worker is ended, and its capture fails saying why.
        handle.forward_to(RecordingSink(200), None)
        self.assertTrue(process.killed)
        self.assertEqual(
            warnings,
            ["capture on lo: capture worker pid=4242 ended: it does not read what the daemon sends it"],
        )
        self.there.close()  # as the killed worker's end does
        with self.assertRaises(CaptureError) as caught:
            handle.read_batch(512)
        self.assertEqual(
            str(caught.exception),
            "the capture worker (pid 4242) was ended: it does not read what the daemon sends it",
        )
