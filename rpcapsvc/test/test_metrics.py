"""
Tests for the metrics (docs/monitoring.md): the daemon's (L{DaemonMetrics})
and the collector's (L{CollectorMetrics}), read from services built with
fakes (a fake capture system, in-memory data channels, L{iosim}) by calling
C{generate_latest} on their registries and parsing the text back with
C{prometheus_client}'s parser; the C{/metrics} page rendered without a
socket; the C{--metrics} options of C{twistd rpcapd}, C{rpcapd} and
C{twistd rpcapcollect}.  No sockets.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from rpcapsvc import metrics as metrics_module
from rpcapsvc.collector import tap as collector_tap
from rpcapsvc.collector.metrics import MAX_LABEL, SeriesTable, series_key
from rpcapsvc.collector.service import CollectorService
from rpcapsvc.config import ActiveTarget
from rpcapsvc.metrics import MetricsListener, MetricsRoot, MetricsSite
from rpcapsvc.protocol.datachannel import PacketBatch
from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    AuthType,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorReply,
    InterfaceInfo,
    OpenReply,
    OpenRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
)
from rpcapsvc.rpcapd import CommandLineError, _check, translate
from rpcapsvc.server.counters import ForwardingCounts, ServiceCounters
from rpcapsvc.server.datachannel import TcpPacketSink, TcpUdpStrPacketSink, UdpPacketSink, UdpStrPacketSink
from rpcapsvc.server.session import SessionPolicy
from rpcapsvc.service import RpcapdService
from rpcapsvc.tap import Options as RpcapdOptions
from rpcapsvc.tap import makeService as make_rpcapd
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels

from ._fixtures import ETH0, ICMP_PACKET, LO, UDP_PACKET, Client
from .test_client import DAEMON_HOST, OTHER_HOST
from .test_collector_service import Collector
from .test_datachannel_sinks import CountingTransport, FakeDatagramTransport, frames
from .test_service import Reactor

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry) -> Samples:
    """Every sample C{registry} exposes (C{_created} ones left out), parsed back from the text format."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry)[(name, tuple(sorted(labels.items())))]


PACKETS = [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, ICMP_PACKET)]


class DaemonTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.system = FakeCaptureSystem([ETH0, LO])
        self.channels = FakeDataChannels()
        self.addCleanup(lambda: [h.close() for h in self.system.handles])

    def service(self, **kwargs: Any) -> RpcapdService:
        kwargs.setdefault("listen", [])
        kwargs.setdefault("policy", SessionPolicy(null_auth=True))
        service = RpcapdService(
            self.reactor, capture_system=self.system, data_channels=self.channels, **kwargs
        )
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def client(self, service: RpcapdService, logged_in: bool = True) -> Client:
        client = Client(service.passive_factory)
        if logged_in:
            self.assertIsInstance(client.request(AuthRequest(AuthType.NULL)), AuthReply)
        return client

    def capturing(self, service: RpcapdService, flags: int = StartCapFlags.DGRAM) -> Client:
        client = self.client(service)
        self.assertIsInstance(client.request(OpenRequest("eth0")), OpenReply)
        reply = client.request(StartCaptureRequest(65535, 1000, flags, 2003, None))
        self.assertIsInstance(reply, StartCaptureReply)
        return client

    def capture(self, packets: list[tuple[int, int, bytes]]) -> None:
        """Packets arrive on the interface the last capture opened, and the daemon reads them."""
        self.system.handles[-1].inject(packets)
        for reader in list(self.reactor.readers):
            reader.doRead()


class DaemonMetricsTests(DaemonTestBase):
    def test_nothing_yet(self) -> None:
        """A daemon that has served nobody: every series there, at 0; no collector, no collector series."""
        service = self.service()
        self.assertEqual(
            samples(service.metrics_registry),
            {
                ("rpcapd_sessions", (("state", "awaiting_auth"),)): 0,
                ("rpcapd_sessions", (("state", "ready"),)): 0,
                ("rpcapd_sessions", (("state", "opened"),)): 0,
                ("rpcapd_sessions", (("state", "capturing"),)): 0,
                ("rpcapd_packets_forwarded_total", ()): 0,
                ("rpcapd_bytes_forwarded_total", ()): 0,
                ("rpcapd_packets_dropped_total", (("where", "kernel"),)): 0,
                ("rpcapd_packets_dropped_total", (("where", "interface"),)): 0,
                ("rpcapd_packets_dropped_total", (("where", "send"),)): 0,
                ("rpcapd_packets_sampled_out_total", ()): 0,
                ("rpcapd_auth_failures_total", ()): 0,
            },
        )

    def test_sessions_by_state(self) -> None:
        service = self.service()
        self.client(service, logged_in=False)
        self.client(service)
        opened = self.client(service)
        self.assertIsInstance(opened.request(OpenRequest("eth0")), OpenReply)
        self.capturing(service)
        self.capturing(service)
        registry = service.metrics_registry
        counts = {s: value(registry, "rpcapd_sessions", state=s) for s in ("awaiting_auth", "ready")}
        self.assertEqual(counts, {"awaiting_auth": 1, "ready": 1})
        self.assertEqual(value(registry, "rpcapd_sessions", state="opened"), 1)
        self.assertEqual(value(registry, "rpcapd_sessions", state="capturing"), 2)

    def test_forwarded_while_capturing_and_after(self) -> None:
        """
        Packets and bytes forwarded count as the capture runs (read from its
        data channel when scraped), and stay counted once the capture, and
        then the session, have ended.
        """
        service = self.service()
        client = self.capturing(service)
        self.capture(PACKETS[:2])
        registry = service.metrics_registry
        self.assertEqual(value(registry, "rpcapd_packets_forwarded_total"), 2)
        self.assertEqual(value(registry, "rpcapd_bytes_forwarded_total"), len(ICMP_PACKET) + len(UDP_PACKET))
        self.assertEqual(client.request(EndCaptureRequest()), EndCaptureReply())
        self.assertEqual(value(registry, "rpcapd_packets_forwarded_total"), 2)
        self.assertEqual(value(registry, "rpcapd_sessions", state="opened"), 1)
        # A second capture of the same session adds to them.
        reply = client.request(StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003, None))
        self.assertIsInstance(reply, StartCaptureReply)
        self.capture(PACKETS[2:])
        self.assertEqual(value(registry, "rpcapd_packets_forwarded_total"), 3)
        client.transport.loseConnection()
        self.assertEqual(service.sessions, set())
        self.assertEqual(value(registry, "rpcapd_packets_forwarded_total"), 3)
        self.assertEqual(
            value(registry, "rpcapd_bytes_forwarded_total"), 2 * len(ICMP_PACKET) + len(UDP_PACKET)
        )
        self.assertEqual(value(registry, "rpcapd_sessions", state="capturing"), 0)

    def test_several_sessions_add_up(self) -> None:
        service = self.service()
        self.capturing(service)
        self.capture(PACKETS)
        gone = self.capturing(service)
        self.capture(PACKETS[:1])
        gone.transport.loseConnection()
        self.capturing(service)
        self.capture(PACKETS[:2])
        self.assertEqual(value(service.metrics_registry, "rpcapd_packets_forwarded_total"), 6)

    def test_kernel_and_interface_drops_from_the_last_stats(self) -> None:
        """
        A running capture's kernel and interface drops are those libpcap last
        reported (a client's stats request: libpcap is never asked for the
        metrics); at the end, its final counters; never less than before.
        """
        service = self.service()
        client = self.capturing(service)
        handle = self.system.handles[-1]
        handle.dropped = 5
        registry = service.metrics_registry
        # No stats asked for yet: nothing known, 0.
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="kernel"), 0)
        reply = client.request(StatsRequest())
        assert isinstance(reply, StatsReply)
        self.assertEqual(reply.krnldrop, 5)
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="kernel"), 5)
        handle.dropped = 7  # not reported to anyone yet
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="kernel"), 5)
        self.assertEqual(client.request(EndCaptureRequest()), EndCaptureReply())
        # The final counters, read as the handle closed.
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="kernel"), 7)
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="interface"), 0)
        client.transport.loseConnection()
        self.assertEqual(value(registry, "rpcapd_packets_dropped_total", where="kernel"), 7)

    def test_send_drops(self) -> None:
        """Packets the data channel could not send (UDP datagrams refused) count as send drops."""
        service = self.service()
        client = self.capturing(service)
        self.channels.sinks[-1].dropped = 3
        self.assertEqual(value(service.metrics_registry, "rpcapd_packets_dropped_total", where="send"), 3)
        client.transport.loseConnection()
        self.assertEqual(value(service.metrics_registry, "rpcapd_packets_dropped_total", where="send"), 3)

    def test_auth_failures(self) -> None:
        """Each refused login counts, at once (its answer comes a second later)."""
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"secret")
        service = self.service(policy=SessionPolicy(checkers=(checker,)))
        client = self.client(service, logged_in=False)
        client.send(AuthRequest(AuthType.PASSWORD, b"alice", b"wrong"))
        self.assertEqual(value(service.metrics_registry, "rpcapd_auth_failures_total"), 1)
        self.reactor.advance(1)
        [reply] = client.replies()
        self.assertIsInstance(reply, ErrorReply)
        other = self.client(service, logged_in=False)
        other.send(AuthRequest(AuthType.NULL))  # null auth is not allowed here
        self.reactor.advance(1)
        self.assertEqual(value(service.metrics_registry, "rpcapd_auth_failures_total"), 2)
        self.assertEqual(client.request(AuthRequest(AuthType.PASSWORD, b"alice", b"secret")), AuthReply())
        self.assertEqual(value(service.metrics_registry, "rpcapd_auth_failures_total"), 2)

    def test_collectors(self) -> None:
        """
        One series per configured collector, named by its target: connected
        while a session with it is open, and how often it was dialled again.
        """
        a = ActiveTarget("127.0.0.1:2003")
        b = ActiveTarget("127.0.0.1:2004", ifname="lo")
        service = self.service(active=[a, b])
        registry = service.metrics_registry
        a_label, b_label = "127.0.0.1:2003", "127.0.0.1:2004 (interface lo)"
        self.assertEqual(b.describe(), b_label)
        for label in (a_label, b_label):
            self.assertEqual(value(registry, "rpcapd_collector_connected", collector=label), 0)
            self.assertEqual(value(registry, "rpcapd_collector_reconnects_total", collector=label), 0)
        # The collector at 2004 is down: the daemon will dial it again.
        [(_, _, factory_a, _, _), (_, _, factory_b, _, _)] = self.reactor.tcpClients
        factory_b.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(0.3)  # HostnameEndpoint gives up once its attempts are over
        self.assertEqual(value(registry, "rpcapd_collector_reconnects_total", collector=b_label), 1)
        # The one at 2003 answers.
        client = Client(factory_a, IPv4Address("TCP", "127.0.0.1", 2003))
        self.assertEqual(value(registry, "rpcapd_collector_connected", collector=a_label), 1)
        self.assertEqual(value(registry, "rpcapd_collector_connected", collector=b_label), 0)
        self.assertIsInstance(client.request(AuthRequest(AuthType.NULL)), AuthReply)
        self.assertEqual(value(registry, "rpcapd_collector_connected", collector=a_label), 1)
        self.assertEqual(value(registry, "rpcapd_sessions", state="ready"), 1)
        client.transport.loseConnection()
        self.assertEqual(value(registry, "rpcapd_collector_connected", collector=a_label), 0)
        # Removed from the configuration: its series go.
        service.set_collectors([a])
        self.assertNotIn(("rpcapd_collector_connected", (("collector", b_label),)), samples(registry))

    def test_registry_of_its_own(self) -> None:
        """Two services, two registries, nothing in the process-wide one."""
        from prometheus_client import REGISTRY

        first, second = self.service(), self.service()
        self.assertIsNot(first.metrics_registry, second.metrics_registry)
        self.client(first)
        self.assertEqual(value(first.metrics_registry, "rpcapd_sessions", state="ready"), 1)
        self.assertEqual(value(second.metrics_registry, "rpcapd_sessions", state="ready"), 0)
        self.assertIsNone(REGISTRY.get_sample_value("rpcapd_sessions", {"state": "ready"}))

    def test_openmetrics(self) -> None:
        """The exposition parses as OpenMetrics too (what Prometheus asks for first)."""
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

        service = self.service()
        self.capturing(service)
        self.capture(PACKETS)
        families = {
            f.name: f for f in openmetrics_families(openmetrics_latest(service.metrics_registry).decode())
        }
        self.assertEqual(families["rpcapd_packets_forwarded"].type, "counter")
        self.assertEqual(families["rpcapd_sessions"].type, "gauge")


class CountersTests(SynchronousTestCase):
    def test_final_stats_never_lower_the_totals(self) -> None:
        counters = ServiceCounters()
        counted = ForwardingCounts(packets=4, bytes=100, kernel_dropped=6, interface_dropped=2)
        counters.capture_ended(counted)
        from rpcapsvc.capture.system import CaptureStats

        counters.capture_closed(counted, CaptureStats(received=10, dropped=5, interface_dropped=3))
        self.assertEqual(counters.ended, ForwardingCounts(4, 100, 0, 6, 3))
        counters.capture_closed(counted, None)
        self.assertEqual(counters.ended, ForwardingCounts(4, 100, 0, 6, 3))


class MetricsPageTests(DaemonTestBase):
    def render(self, resource: Any, path: bytes, accept: Optional[bytes] = None) -> DummyRequest:
        request = DummyRequest([path] if path else [])
        if accept is not None:
            request.requestHeaders.addRawHeader(b"accept", accept)
        child = getChildForRequest(resource, request)
        body = child.render(request)
        request.write(body)
        request.finish()
        return request

    def test_text_format(self) -> None:
        service = self.service()
        self.client(service)
        request = self.render(MetricsRoot(service.metrics_registry, "rpcapd"), b"metrics")
        [content_type] = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/plain; version=0.0.4"), content_type)
        text = b"".join(request.written).decode()
        self.assertIn('rpcapd_sessions{state="ready"} 1.0', text)
        self.assertTrue(list(text_string_to_metric_families(text)))

    def test_openmetrics_when_asked(self) -> None:
        service = self.service()
        accept = b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        request = self.render(MetricsRoot(service.metrics_registry, "rpcapd"), b"metrics", accept)
        [content_type] = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"application/openmetrics-text"), content_type)
        text = b"".join(request.written).decode()
        self.assertTrue(text.endswith("# EOF\n"), text[-50:])
        self.assertTrue(list(openmetrics_families(text)))

    def test_root_points_to_metrics(self) -> None:
        service = self.service()
        request = self.render(MetricsRoot(service.metrics_registry, "rpcapd"), b"")
        self.assertIn(b'href="/metrics"', b"".join(request.written))

    def test_served_on_the_endpoint(self) -> None:
        """--metrics ENDPOINT: a quiet twisted.web site there, listening with the service; none without."""
        events: list[dict[str, Any]] = []
        self.patch(MetricsListener, "log", Logger(observer=events.append))
        service = self.service(metrics="tcp:9102:interface=127.0.0.1")
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (9102, "127.0.0.1"))
        self.assertIsInstance(factory, MetricsSite)
        self.assertIs(factory.resource.children[b"metrics"].registry, service.metrics_registry)
        # (A memory reactor's ports say they are on 0.0.0.0.)
        self.assertIn(
            "Serving metrics on 0.0.0.0 port 9102: http://127.0.0.1:9102/metrics",
            [formatEvent(e) for e in events],
        )
        self.assertFalse(factory.noisy)
        service.stopService()
        self.assertFalse(service.metrics_listener is None or service.metrics_listener.running)
        self.reactor.tcpServers.clear()
        self.service()
        self.assertEqual(self.reactor.tcpServers, [])

    def test_port_taken(self) -> None:
        """A metrics port that cannot be had stops the daemon at start, with one line naming --metrics."""
        from twisted.internet.error import CannotListenError

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("127.0.0.1", 9102, OSError(98, "Address already in use"))

        self.patch(self.reactor, "listenTCP", refuse)
        self.patch(
            metrics_module, "cannot_start", lambda command, message: SystemExit(f"{command}: {message}")
        )
        service = RpcapdService(
            self.reactor, listen=[], capture_system=self.system, metrics="tcp:9102:interface=127.0.0.1"
        )
        with self.assertRaises(SystemExit) as caught:
            service.privilegedStartService()
        self.assertEqual(
            str(caught.exception),
            "twistd rpcapd: --metrics: cannot listen on 127.0.0.1 port 9102: Address already in use; "
            "is another daemon running there? choose another port with --metrics",
        )


class OptionsTests(SynchronousTestCase):
    def test_rpcapd_plugin(self) -> None:
        options = RpcapdOptions()
        options.parseOptions(["--null-auth"])
        self.assertIsNone(options["metrics"])
        for given, endpoint in (
            ("tcp:9102:interface=127.0.0.1", "tcp:9102:interface=127.0.0.1"),
            ("127.0.0.1:9102", "tcp:9102:interface=127.0.0.1"),
            ("9102", "tcp:9102"),
            ("[::1]:9102", "tcp6:9102:interface=\\:\\:1"),
        ):
            options = RpcapdOptions()
            options.parseOptions(["--null-auth", "--metrics", given])
            self.assertEqual(options["metrics"], endpoint)
        options = RpcapdOptions()
        with self.assertRaises(UsageError) as caught:
            options.parseOptions(["--null-auth", "--metrics", "127.0.0.1:port"])
        self.assertIn("--metrics", str(caught.exception))

    def test_rpcapd_plugin_service(self) -> None:
        options = RpcapdOptions()
        options.parseOptions(
            ["--null-auth", "--listen", "tcp:0:interface=127.0.0.1", "--metrics", "127.0.0.1:0"]
        )
        service = make_rpcapd(options)
        self.assertIsInstance(service.metrics_listener, MetricsListener)
        self.assertEqual(service.metrics_listener.description, "tcp:0:interface=127.0.0.1")  # type: ignore[union-attr]
        self.assertIn(service.metrics_listener, list(service))

    def test_rpcapd_front_end(self) -> None:
        """rpcapd takes --metrics=ENDPOINT (or --metrics ENDPOINT) among the fork's letters."""
        for argv in (
            ["-n", "-v", "-a", "127.0.0.1,2003", "--metrics=127.0.0.1:9102", "-t", "0"],
            ["-n", "--metrics", "127.0.0.1:9102", "-b", "127.0.0.1"],
        ):
            inv = translate(argv, is_root=False)
            i = inv.rpcapd_args.index("--metrics")
            self.assertEqual(inv.rpcapd_args[i + 1], "127.0.0.1:9102")
            _check(inv)
        self.assertNotIn("--metrics", translate(["-n"], is_root=False).rpcapd_args)
        with self.assertRaises(CommandLineError):
            _check(translate(["-n", "--metrics=nowhere"], is_root=False))
        with self.assertRaises(CommandLineError):
            translate(["-n", "--metric-s=1"], is_root=False)

    def test_rpcapcollect(self) -> None:
        options = collector_tap.Options()
        options.parseOptions([])
        self.assertIsNone(options["metrics"])
        options = collector_tap.Options()
        options.parseOptions(["--metrics", "127.0.0.1:9103", "-d", self.mktemp()])
        self.assertEqual(options["metrics"], "tcp:9103:interface=127.0.0.1")
        service = collector_tap.makeService(options)
        [listener] = [s for s in service if isinstance(s, MetricsListener)]
        self.assertEqual(listener.description, "tcp:9103:interface=127.0.0.1")
        with self.assertRaises(UsageError):
            collector_tap.Options().parseOptions(["--metrics", "ssl:"])


class CollectorMetricsTests(SynchronousTestCase):
    def test_nothing_yet(self) -> None:
        collector = Collector(self, interface="eth0")
        self.assertEqual(
            samples(collector.service.metrics_registry),
            {
                ("rpcapcollect_daemons_connected", ()): 0,
                ("rpcapcollect_daemons_capturing", ()): 0,
                ("rpcapcollect_files_written_total", ()): 0,
                ("rpcapcollect_metric_series_evicted_total", ()): 0,
                ("rpcapcollect_connections_total", ()): 0,
                ("rpcapcollect_unexpected_messages_total", ()): 0,
                ("rpcapcollect_foreign_data_total", ()): 0,
                ("rpcapcollect_buffered_bytes", ()): 0,
                ("rpcapcollect_files_deleted_by_budget_total", ()): 0,
            },
        )

    def test_written_by_daemon_and_interface(self) -> None:
        """
        Packets written count per daemon address and interface as they are
        written, and stay counted after the daemon has gone; a daemon that
        comes back adds to its series.
        """
        collector = Collector(self, interface="eth0")
        registry = collector.service.metrics_registry
        daemon, session, receiver, pump = collector.capturing()
        daemon.capture(PACKETS[:2])
        daemon.forward_tcp(receiver)
        other, _, other_receiver, _ = collector.capturing(OTHER_HOST)
        other.capture(PACKETS[:1])
        other.forward_tcp(other_receiver)
        self.assertEqual(value(registry, "rpcapcollect_daemons_connected"), 2)
        self.assertEqual(value(registry, "rpcapcollect_daemons_capturing"), 2)
        self.assertEqual(
            value(registry, "rpcapcollect_packets_written_total", daemon=DAEMON_HOST, interface="eth0"), 2
        )
        self.assertEqual(
            value(registry, "rpcapcollect_packets_written_total", daemon=OTHER_HOST, interface="eth0"), 1
        )
        self.assertEqual(value(registry, "rpcapcollect_files_written_total"), 2)
        [server] = daemon.factory.sessions
        server.transport.loseConnection()
        pump.flush()
        self.assertEqual(value(registry, "rpcapcollect_daemons_connected"), 1)
        self.assertEqual(
            value(registry, "rpcapcollect_packets_written_total", daemon=DAEMON_HOST, interface="eth0"), 2
        )
        self.assertEqual(value(registry, "rpcapcollect_files_written_total"), 2)
        again, _, again_receiver, _ = collector.capturing()
        again.capture(PACKETS)
        again.forward_tcp(again_receiver)
        self.assertEqual(
            value(registry, "rpcapcollect_packets_written_total", daemon=DAEMON_HOST, interface="eth0"), 5
        )
        self.assertEqual(value(registry, "rpcapcollect_files_written_total"), 3)
        collector.service.reopen_files()  # SIGHUP: a new file for each capture
        self.assertEqual(value(registry, "rpcapcollect_files_written_total"), 5)

    def test_lost_in_transit_and_dropped_by_the_daemon(self) -> None:
        """Lost = gaps in a UDP data channel's packet numbers + the drops the daemon last reported."""
        collector = Collector(self, interface="eth0", udp=True, stats_interval=10)
        registry = collector.service.metrics_registry
        daemon, client, pump = collector.daemon_connects()
        [udp] = collector.reactor.udpPorts
        daemon.capture(PACKETS)
        first, second, third = daemon._unsent()
        for datagram in (first, third):  # the second is lost on the way
            udp.protocol.datagramReceived(datagram, (DAEMON_HOST, 40000))
        labels = {"daemon": DAEMON_HOST, "interface": "eth0"}
        self.assertEqual(value(registry, "rpcapcollect_packets_written_total", **labels), 2)
        self.assertEqual(value(registry, "rpcapcollect_packets_lost_total", **labels), 1)
        daemon.system.handles[-1].dropped = 4
        collector.reactor.advance(10)
        pump.flush()
        self.assertEqual(value(registry, "rpcapcollect_packets_lost_total", **labels), 5)
        [server] = daemon.factory.sessions
        server.transport.loseConnection()
        pump.flush()
        self.assertEqual(collector.service.sessions, set())
        self.assertEqual(value(registry, "rpcapcollect_packets_lost_total", **labels), 5)
        self.assertEqual(value(registry, "rpcapcollect_packets_written_total", **labels), 2)

    def test_refused_daemon_has_no_series(self) -> None:
        collector = Collector(self, interface="eth9")
        collector.daemon_connects()
        registry = collector.service.metrics_registry
        self.assertEqual(value(registry, "rpcapcollect_daemons_connected"), 1)
        self.assertEqual(value(registry, "rpcapcollect_daemons_capturing"), 0)
        names = {name for name, _ in samples(registry)}
        self.assertNotIn("rpcapcollect_packets_written_total", names)

    def test_invented_interface_names_are_bounded(self) -> None:
        """
        A daemon that makes up a new interface name each time it connects
        cannot grow the series past the limit: the oldest series no session
        is writing are forgotten, and counted.
        """
        collector = Collector(self)
        collector.service.series.limit = 3
        registry = collector.service.metrics_registry
        for n in range(6):
            daemon, _, pump = collector.daemon_connects(interfaces=[InterfaceInfo(f"fake{n}")])
            collector.data_connects()
            [server] = daemon.factory.sessions
            server.transport.loseConnection()
            pump.flush()
        interfaces = sorted(
            dict(labels)["interface"]
            for name, labels in samples(registry)
            if name == "rpcapcollect_packets_written_total"
        )
        self.assertEqual(interfaces, ["fake3", "fake4", "fake5"])
        self.assertEqual(value(registry, "rpcapcollect_metric_series_evicted_total"), 3)
        # Sessions still writing keep their series, even past the limit.
        for n in range(6, 10):
            collector.capturing(interfaces=[InterfaceInfo(f"fake{n}")])
        live = [
            labels
            for name, labels in samples(registry)
            if name == "rpcapcollect_packets_written_total"
            and dict(labels)["interface"] in {"fake6", "fake9"}
        ]
        self.assertEqual(len(live), 2)
        self.assertEqual(len(collector.service.series), 4)

    def test_registry_of_its_own(self) -> None:
        first, second = Collector(self, interface="eth0"), Collector(self, interface="eth0")
        first.capturing()
        self.assertEqual(value(first.service.metrics_registry, "rpcapcollect_daemons_connected"), 1)
        self.assertEqual(value(second.service.metrics_registry, "rpcapcollect_daemons_connected"), 0)

    def test_served_on_the_endpoint(self) -> None:
        reactor = Reactor()
        service = CollectorService(
            reactor,
            collector_tap.CollectorSettings(self.mktemp()),
            listen=[],
            metrics="tcp:9103:interface=127.0.0.1",
        )
        service.startService()
        self.addCleanup(service.stopService)
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9103, "127.0.0.1"))
        self.assertIsInstance(factory, MetricsSite)


class SeriesTableTests(SynchronousTestCase):
    def test_most_recent_kept(self) -> None:
        table = SeriesTable(limit=2)
        for name in ("a", "b", "c"):
            key = series_key("192.0.2.1", name)
            table.session_started(key)
            table.session_ended(key, 1, 0)
        self.assertEqual([key for key, _ in table.items()], [("192.0.2.1", "b"), ("192.0.2.1", "c")])
        self.assertEqual(table.evicted, 1)
        # Used again, "b" is the most recent: "c" goes next.
        table.session_started(series_key("192.0.2.1", "b"))
        table.session_ended(series_key("192.0.2.1", "b"), 2, 1)
        table.session_started(series_key("192.0.2.1", "d"))
        self.assertEqual([key[1] for key, _ in table.items()], ["b", "d"])
        [(_, b), _] = table.items()
        self.assertEqual((b.written, b.lost, b.live), (3, 1, 0))

    def test_long_names_cut(self) -> None:
        self.assertEqual(series_key("192.0.2.1", "x" * 1000), ("192.0.2.1", "x" * MAX_LABEL))


class BytesSentTests(SynchronousTestCase):
    """Each data channel counts the bytes it wrote, once per batch: what the wire carried, framing included."""

    def test_tcp(self) -> None:
        transport = CountingTransport()
        sink = TcpPacketSink(snaplen=100)
        sink.makeConnection(transport)
        sink.write_batch(PacketBatch.from_packets(frames(3, size=150)))
        sink.write_batch(PacketBatch.from_packets(frames(2, size=60)))
        self.assertEqual(sink.bytes_sent, len(transport.value()))
        self.assertEqual(sink.bytes_sent, 3 * (28 + 100) + 2 * (28 + 60))

    def test_tcp_udpstr(self) -> None:
        transport = CountingTransport()
        clock = Clock()
        sink = TcpUdpStrPacketSink(snaplen=200, mtu=100, clock=clock, flush_after=0.25)
        sink.makeConnection(transport)
        sink.write_batch(PacketBatch.from_packets(frames(5, size=70)))
        clock.advance(0.25)  # the partly filled datagram goes out
        self.assertEqual(sink.bytes_sent, len(transport.value()))

    def test_udp_counts_what_was_sent(self) -> None:
        """Refused datagrams are dropped, not counted as bytes sent."""
        sink = UdpPacketSink(snaplen=1000)
        transport = FakeDatagramTransport({1: OSError(errno.ENOBUFS, "no buffers")})
        sink.transport = transport  # type: ignore[assignment]
        sink.write_batch(PacketBatch.from_packets(frames(3, size=50)))
        self.assertEqual((sink.sent, sink.dropped), (2, 1))
        self.assertEqual(sink.bytes_sent, sum(map(len, transport.datagrams)))
        self.assertEqual(sink.bytes_sent, 2 * (28 + 50))

    def test_udpstr(self) -> None:
        sink = UdpStrPacketSink(snaplen=1000, mtu=120, clock=Clock(), flush_after=0.25)
        transport = FakeDatagramTransport({2: OSError(errno.ENOBUFS, "no buffers")})
        sink.transport = transport  # type: ignore[assignment]
        sink.write_batch(PacketBatch.from_packets(frames(6, size=70)))
        sink.flush()
        self.assertGreater(sink.dropped, 0)
        self.assertEqual(sink.bytes_sent, sum(map(len, transport.datagrams)))
