"""
Tests for RPCAP sampling (L{rpcapsvc.capture.sampling}): both methods on
packet batches cut at every place, through the capture reader of a
running capture (a fake capture system, in-memory data channels), and
how a client's stats reply and the daemon's metrics count what was
skipped.  No sockets.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.capture.reader import CaptureReader
from rpcapsvc.capture.sampling import (
    FirstAfterInterval,
    OneInEvery,
    Sampler,
    sampler_for,
)
from rpcapsvc.capture.system import CaptureOptions
from rpcapsvc.protocol.datachannel import BATCH_RECORD, PacketBatch
from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    AuthType,
    OpenReply,
    OpenRequest,
    SetSamplingReply,
    SetSamplingRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
)
from rpcapsvc.server.forwarded import ForwardedTraffic
from rpcapsvc.server.session import SessionPolicy
from rpcapsvc.server.sessioncapture import SessionCapture
from rpcapsvc.service import RpcapdService
from rpcapsvc.testing import (
    FakeCaptureHandle,
    FakeCaptureSystem,
    FakeDataChannels,
    RecordingSink,
    run_in_place,
)

from ._fixtures import ETH0, ICMP_PACKET, LO, Client
from .test_service import Reactor

Packet = tuple[int, int, bytes]


def stream(count: int, gap_us: int = 1000, start_us: int = 1_700_000_000_000_000) -> list[Packet]:
    """C{count} packets C{gap_us} apart, each carrying its number."""
    out = []
    for i in range(count):
        ts = start_us + i * gap_us
        out.append((ts // 1_000_000, ts % 1_000_000, b"packet-%06d" % i))
    return out


def cut(packets: list[Packet], sizes: list[int]) -> list[PacketBatch]:
    """C{packets} in batches of the given sizes (cycled), as a reader would read them."""
    batches, i, k = [], 0, 0
    while i < len(packets):
        size = sizes[k % len(sizes)]
        batches.append(PacketBatch.from_packets(packets[i : i + size]))
        i += size
        k += 1
    return batches


def contents(batch: PacketBatch) -> list[Packet]:
    """The packets a batch holds, read through its records as a framer reads them."""
    return [
        (sec, usec, batch.data[off : off + length])
        for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records)
    ]


def run(sampler: Sampler, batches: list[PacketBatch]) -> list[Packet]:
    kept: list[Packet] = []
    for batch in batches:
        kept += contents(sampler(batch))
    return kept


def first_after_reference(packets: list[Packet], ms: int) -> list[Packet]:
    """Method 2 packet by packet, as WinPcap's client applied it."""
    kept, due = [], None
    for packet in packets:
        ts = packet[0] * 1_000_000 + packet[1]
        if due is None or ts >= due:
            kept.append(packet)
            due = ts + ms * 1000
    return kept


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample of the daemon's metrics, read back from their text form."""
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


batch_sizes = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8)


class OneInEveryTests(SynchronousTestCase):
    def test_every_tenth(self) -> None:
        """1 in 10 of 1000 packets: the 10th, 20th, ... 1000th, exactly 100 of them."""
        packets = stream(1000)
        kept = run(OneInEvery(10), cut(packets, [512]))
        self.assertEqual(kept, packets[9::10])

    @given(sizes=batch_sizes, n=st.integers(min_value=2, max_value=17))
    def test_batch_boundaries_change_nothing(self, sizes: list[int], n: int) -> None:
        """Wherever the reader cuts the stream (batches smaller and larger than N), the same packets."""
        packets = stream(300)
        sampler = OneInEvery(n)
        self.assertEqual(run(sampler, cut(packets, sizes)), packets[n - 1 :: n])
        self.assertEqual(sampler.skipped, 300 - len(packets[n - 1 :: n]))

    def test_no_packet_bytes_copied(self) -> None:
        """The sampled batch shares the read batch's bytes: skipping costs nothing per byte."""
        batch = PacketBatch.from_packets(stream(50))
        self.assertIs(OneInEvery(5)(batch).data, batch.data)

    def test_batch_with_nothing_to_keep(self) -> None:
        sampler = OneInEvery(100)
        sampled = sampler(PacketBatch.from_packets(stream(10)))
        self.assertEqual(len(sampled), 0)
        self.assertEqual(sampler.skipped, 10)


class FirstAfterIntervalTests(SynchronousTestCase):
    def test_one_per_window(self) -> None:
        """A packet each ms for 1 s, 100 ms windows: the packets at 0, 100, ... 900 ms."""
        packets = stream(1000, gap_us=1000)
        kept = run(FirstAfterInterval(100), cut(packets, [512]))
        self.assertEqual(kept, packets[::100])

    @given(
        sizes=batch_sizes,
        ms=st.integers(min_value=1, max_value=50),
        gaps=st.lists(st.integers(min_value=0, max_value=9000), min_size=1, max_size=20),
    )
    def test_batch_boundaries_change_nothing(self, sizes: list[int], ms: int, gaps: list[int]) -> None:
        """Irregular traffic, any cuts: what a packet-by-packet sampler keeps, and only that."""
        packets, ts = [], 1_700_000_000_000_000
        for i in range(300):
            ts += gaps[i % len(gaps)]
            packets.append((ts // 1_000_000, ts % 1_000_000, b"p%d" % i))
        sampler = FirstAfterInterval(ms)
        expected = first_after_reference(packets, ms)
        self.assertEqual(run(sampler, cut(packets, sizes)), expected)
        self.assertEqual(sampler.skipped, 300 - len(expected))

    def test_packet_timestamps_not_the_clock(self) -> None:
        """A backlog read at once (in one batch) still gives one packet per window of its timestamps."""
        packets = stream(2000, gap_us=500)  # 1 s of traffic
        kept = run(FirstAfterInterval(250), [PacketBatch.from_packets(packets)])
        self.assertEqual([p[2] for p in kept], [p[2] for p in packets[::500]])

    def test_clock_stepped_back(self) -> None:
        """The capture clock goes back an hour: sampling goes on at once rather than waiting an hour."""
        sampler = FirstAfterInterval(100)
        run(sampler, [PacketBatch.from_packets(stream(10, start_us=5_000_000_000_000))])
        earlier = stream(300, gap_us=1000, start_us=5_000_000_000_000 - 3600 * 1_000_000)
        kept = run(sampler, cut(earlier, [64]))
        self.assertEqual(kept, earlier[::100])


class SamplerForTests(SynchronousTestCase):
    def test_methods(self) -> None:
        one_in = sampler_for(1, 10)
        after = sampler_for(2, 100)
        assert isinstance(one_in, OneInEvery) and isinstance(after, FirstAfterInterval)
        self.assertEqual((one_in.n, after.ms), (10, 100))

    def test_values_that_sample_nothing(self) -> None:
        """No method, 1 in 1, 1 in 0 (what libpcap 1.10's client sends), a 0 ms window: every packet."""
        for method, val in [(0, 0), (0, 10), (1, 1), (1, 0), (2, 0)]:
            self.assertIsNone(sampler_for(method, val), (method, val))

    def test_unknown_method(self) -> None:
        self.assertRaises(ValueError, sampler_for, 3, 10)


class ReaderSamplingTests(SynchronousTestCase):
    """A capture sampled between its reader and its data channel."""

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.handle = FakeCaptureHandle("eth0", CaptureOptions(snaplen=65535))
        self.addCleanup(self.handle.close)
        self.sink = RecordingSink(65535)
        self.capture = SessionCapture(
            self.handle, 65535, None, run_in_place, _never_compile, ForwardedTraffic(), "capture on eth0"
        )
        self.reader = CaptureReader(
            self.reactor, self.handle, self.sink.write_batch, self.capture_failed, batch_packets=7
        )

    def capture_failed(self, why: str) -> None:
        raise AssertionError(why)

    def deliver(self, packets: list[Packet]) -> None:
        self.handle.inject(packets)
        while self.handle._pending:
            self.reader.doRead()

    def forwarded(self) -> list[Packet]:
        return [p for batch in self.sink.batches for p in contents(batch)]

    def test_sampling_set_before_the_capture_starts(self) -> None:
        """As libpcap's client does it (setsampling before startcap): 1 in 3 from the first packet."""
        self.capture.set_sampling(1, 3)
        self.capture.start_reading(self.reader, self.sink)
        packets = stream(100)
        self.deliver(packets[:50])
        self.deliver(packets[50:])
        self.assertEqual(self.forwarded(), packets[2::3])
        self.assertEqual(self.sink.sent, 33)
        counts = self.capture.counts()
        self.assertEqual((counts.packets, counts.sampled_out, counts.kernel_dropped), (33, 67, 0))

    def test_nothing_to_forward_is_not_framed(self) -> None:
        """Batches the sampler empties never reach the data channel (no empty writes, no empty datagrams)."""
        self.capture.set_sampling(2, 1000)
        self.capture.start_reading(self.reader, self.sink)
        self.deliver(stream(70, gap_us=1000))
        self.assertEqual(len(self.sink.batches), 1)
        self.assertEqual(self.sink.sent, 1)

    def test_changed_while_capturing(self) -> None:
        """A new setsampling during the capture applies from the next batch; skipped counts add up."""
        self.capture.start_reading(self.reader, self.sink)
        packets = stream(40)
        self.deliver(packets[:10])
        self.capture.set_sampling(1, 5)
        self.deliver(packets[10:30])
        self.capture.set_sampling(0, 0)
        self.deliver(packets[30:])
        self.assertEqual(self.forwarded(), packets[:10] + packets[14:30:5] + packets[30:])
        self.assertEqual(self.capture.sampled_out, 16)

    def test_value_zero_is_logged(self) -> None:
        """1 in 0 (libpcap 1.10's client on x86 sends 0): every packet, and the log says why."""
        with capturedLogs() as events:
            self.capture.set_sampling(1, 0)
        self.capture.start_reading(self.reader, self.sink)
        self.deliver(stream(20))
        self.assertEqual(self.sink.sent, 20)
        warnings = [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("every packet is forwarded", warnings[0])
        self.assertIn("little-endian", warnings[0])

    def test_unknown_method_refused(self) -> None:
        self.assertRaises(ValueError, self.capture.set_sampling, 9, 1)
        self.assertIsNone(self.capture.sampler)


class StatsAndMetricsTests(SynchronousTestCase):
    """What a client's stats reply and the daemon's metrics say of a sampled capture."""

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.system = FakeCaptureSystem([ETH0, LO])
        self.channels = FakeDataChannels()
        self.addCleanup(self.close_handles)
        fakes: dict[str, Any] = {"capture_system": self.system, "data_channels": self.channels}
        self.service = RpcapdService(self.reactor, listen=[], policy=SessionPolicy(null_auth=True), **fakes)
        self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())
        self.client = Client(self.service.passive_factory)
        self.assertIsInstance(self.client.request(AuthRequest(AuthType.NULL)), AuthReply)
        self.assertIsInstance(self.client.request(OpenRequest("eth0")), OpenReply)

    def close_handles(self) -> None:
        for handle in self.system.handles:
            handle.close()

    def start(self) -> None:
        reply = self.client.request(StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003, None))
        self.assertIsInstance(reply, StartCaptureReply)

    def deliver(self, packets: list[Packet]) -> None:
        # Real frames: the daemon's filter (its own traffic left out) runs on them.
        self.system.handles[-1].inject([(sec, usec, ICMP_PACKET) for sec, usec, _ in packets])
        for reader in list(self.reactor.readers):
            reader.doRead()

    def test_skipped_packets_are_received_not_dropped(self) -> None:
        """
        1 in 4 of 100 packets: the stats reply counts all 100 received, none
        dropped, 25 sent; the metrics 25 forwarded, 75 sampled out, no drop,
        also once the capture has ended.
        """
        self.start()
        self.client.session.capture.set_sampling(1, 4)  # what the session does on setsampling
        self.deliver(stream(100))
        reply = self.client.request(StatsRequest())
        assert isinstance(reply, StatsReply)
        self.assertEqual((reply.ifrecv, reply.krnldrop, reply.ifdrop, reply.svrcapt), (100, 0, 0, 25))
        registry = self.service.metrics_registry
        self.assertEqual(value(registry, "rpcapd_packets_forwarded_total"), 25)
        self.assertEqual(value(registry, "rpcapd_packets_sampled_out_total"), 75)
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="kernel"), 0)
        self.client.transport.loseConnection()
        self.assertEqual(value(registry, "rpcapd_packets_sampled_out_total"), 75)

    def test_setsampling_before_startcap(self) -> None:
        """libpcap's client's order: setsampling, then startcap; the capture samples 1 in 5."""
        self.assertEqual(self.client.request(SetSamplingRequest(1, 5)), SetSamplingReply())
        self.start()
        self.deliver(stream(50))
        self.assertEqual(self.channels.sinks[-1].sent, 10)

    def test_setsampling_during_a_capture(self) -> None:
        """A setsampling while a capture runs samples the packets read from then on."""
        self.start()
        self.deliver(stream(20))
        self.assertEqual(self.client.request(SetSamplingRequest(1, 5)), SetSamplingReply())
        self.deliver(stream(50))
        self.assertEqual(self.channels.sinks[-1].sent, 20 + 10)


def _never_compile(expression: str, linktype: int) -> Any:
    raise AssertionError("no compilation expected")
