"""
Tests for active mode: how C{--active} addresses become endpoints, the
reconnection policy, and the service that keeps a collector connected, all
on a fake clock with fake endpoints.  No sockets.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.internet import ClientService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcapsvc.server import active
from rpcapsvc.server.active import (
    MAX_RETRY,
    ReconnectPolicy,
    _LoggingEndpoint,
    collector_service,
    parse_active_target,
)

from ._fixtures import Resolution


@implementer(IHostnameResolver)
class RecordingResolver:
    """Resolves every name at once (to 192.0.2.7, or the IPv6 literal it was given) and records it."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.asked.append((hostName, portNumber))
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if ":" in hostName:
            resolutionReceiver.addressResolved(IPv6Address("TCP", hostName, portNumber))
        else:
            resolutionReceiver.addressResolved(IPv4Address("TCP", "192.0.2.7", portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


def dial(spec: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """
    Connect to C{--active spec} on a memory reactor: the names looked up
    (with the port asked for) and the (address, port) pairs dialled.
    """
    reactor = MemoryReactorClock()
    resolver = RecordingResolver()
    reactor.installNameResolver(resolver)
    endpoint = parse_active_target(reactor, spec)
    endpoint.connect(Factory.forProtocol(Protocol))
    reactor.advance(0)
    return resolver.asked, [(c[0], c[1]) for c in reactor.tcpClients]


class ParseActiveTargetTests(SynchronousTestCase):
    def assertDials(self, spec: str, host: str, port: int, address: Optional[str] = None) -> None:
        endpoint = parse_active_target(MemoryReactorClock(), spec)
        self.assertIsInstance(endpoint, HostnameEndpoint)
        asked, dialled = dial(spec)
        self.assertEqual(asked, [(host, port)])
        self.assertEqual(dialled, [(address or host, port)])

    def test_host(self) -> None:
        """A bare name is looked up and dialled on port 2003."""
        self.assertDials("collector.example", "collector.example", 2003, "192.0.2.7")

    def test_host_port(self) -> None:
        self.assertDials("collector.example:2004", "collector.example", 2004, "192.0.2.7")

    def test_ipv4_port(self) -> None:
        self.assertDials("10.0.0.1:2004", "10.0.0.1", 2004, "192.0.2.7")

    def test_bracketed_ipv6_port(self) -> None:
        self.assertDials("[::1]:2004", "::1", 2004)

    def test_bracketed_ipv6(self) -> None:
        self.assertDials("[::1]", "::1", 2003)

    def test_bare_ipv6(self) -> None:
        """A bare IPv6 address is an address, not an endpoint type '' with arguments."""
        self.assertDials("::1", "::1", 2003)
        self.assertDials("fe80::1", "fe80::1", 2003)
        self.assertDials("2001:DB8::a:1", "2001:DB8::a:1", 2003)

    def test_bracketed_scoped_ipv6(self) -> None:
        self.assertDials("[fe80::1%eth0]:2004", "fe80::1%eth0", 2004)

    def test_tcp_endpoint_string(self) -> None:
        """Any Twisted client endpoint string works, as --active documents."""
        reactor = MemoryReactorClock()
        endpoint = parse_active_target(reactor, "tcp:host=h:port=1")
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual([(c[0], c[1]) for c in reactor.tcpClients], [("h", 1)])

    def test_unix_endpoint_string(self) -> None:
        reactor = MemoryReactorClock()
        endpoint = parse_active_target(reactor, "unix:/tmp/x")
        self.assertIsInstance(endpoint, UNIXClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual([c[0] for c in reactor.unixClients], ["/tmp/x"])

    def test_bad_addresses(self) -> None:
        """Malformed addresses and out-of-range ports are ValueErrors, which --active reports."""
        for spec in [
            "[::1",
            "[::1]x",
            "[::1]:",
            "[::1]:http",
            "[::1]:0",
            "host:0",
            "host:65536",
            "host:99999",
            "nosuchtype:whatever",
            "tcp:host",  # a client endpoint string missing its port
            "tcp:host=h:port=x",
        ]:
            self.assertRaises(ValueError, parse_active_target, MemoryReactorClock(), spec)

    def test_highest_port(self) -> None:
        self.assertDials("h:65535", "h", 65535, "192.0.2.7")


def _delays(policy: ReconnectPolicy, n: int) -> list[float]:
    return [policy(attempt) for attempt in range(1, n + 1)]


class ReconnectPolicyTests(SynchronousTestCase):
    def test_first_retry_within_a_second(self) -> None:
        """After the first failure the daemon tries again within about a second, even with most jitter."""
        self.assertLessEqual(ReconnectPolicy("c", jitter=lambda: 0.0)(1), 1.0)
        self.assertLessEqual(ReconnectPolicy("c", jitter=lambda: 0.5)(1), 1.5)

    def test_default_jitter(self) -> None:
        """The default jitter stays within half a second and varies between daemons."""
        base = ReconnectPolicy("c", jitter=lambda: 0.0)(1)
        delays = {ReconnectPolicy("c")(1) for _ in range(50)}
        self.assertTrue(all(base <= d <= base + 0.5 for d in delays), delays)
        self.assertGreater(len(delays), 1)

    def test_grows(self) -> None:
        """Failures in a row back off, whatever attempt count ClientService passes."""
        policy = ReconnectPolicy("c", jitter=lambda: 0.0)
        delays = [policy(1) for _ in range(7)]
        self.assertEqual(delays, sorted(delays))
        self.assertGreater(delays[-1], 2 * delays[0])

    def test_capped(self) -> None:
        """However long the collector is down, retries come at most MAX_RETRY (plus jitter) apart."""
        policy = ReconnectPolicy("c", jitter=lambda: 0.25)
        delays = _delays(policy, 200)
        self.assertEqual(max(delays), MAX_RETRY + 0.25)
        self.assertEqual(delays[-1], MAX_RETRY + 0.25)

    def test_jitter_added(self) -> None:
        plain = _delays(ReconnectPolicy("c", jitter=lambda: 0.0), 30)
        jittered = _delays(ReconnectPolicy("c", jitter=lambda: 0.3), 30)
        for a, b in zip(plain, jittered):
            self.assertAlmostEqual(b - a, 0.3)

    def test_working_session_reconnects_at_once(self) -> None:
        """A collector that ends a session which forwarded packets is dialled again at once."""
        policy = ReconnectPolicy("c", jitter=lambda: 0.0)
        _delays(policy, 5)
        policy.session_ended(packets_forwarded=12)
        self.assertEqual(policy(1), 0.0)
        self.assertEqual(policy.failures, 0)
        # The next failure starts the backoff from the beginning again.
        self.assertEqual(policy(1), ReconnectPolicy("c", jitter=lambda: 0.0)(1))

    def test_refused_captures_back_off(self) -> None:
        """Sessions that forward nothing (the collector refuses the capture) keep backing off."""
        policy = ReconnectPolicy("c", jitter=lambda: 0.0)
        delays = []
        for _ in range(12):
            policy.session_ended(packets_forwarded=0)
            delays.append(policy(1))  # ClientService restarts its count at each connection
        self.assertEqual(delays, sorted(delays))
        self.assertEqual(delays[-1], MAX_RETRY)
        self.assertNotIn(0.0, delays)

    def test_only_delivery_resets(self) -> None:
        """Backoff survives sessions without packets and resets only after one with packets."""
        policy = ReconnectPolicy("c", jitter=lambda: 0.0)
        _delays(policy, 6)
        policy.session_ended(0)
        self.assertGreater(policy(1), 5.0)
        policy.session_ended(1)
        self.assertEqual(policy(1), 0.0)

    def test_logged(self) -> None:
        """Each retry is logged with the collector's name and the delay."""
        with capturedLogs() as events:
            ReconnectPolicy("collector.example:2003", jitter=lambda: 0.0)(1)
        [message] = [formatEvent(e) for e in events]
        self.assertIn("collector.example:2003", message)
        self.assertIn("0.8 s", message)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """A collector endpoint whose connection attempts the test completes."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[IProtocol]] = []
        self.factories: list[IProtocolFactory] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred()
        self.attempts.append(d)
        self.factories.append(factory)
        return d

    def refuse(self) -> None:
        self.attempts[-1].errback(ConnectionRefusedError("collector down"))

    def accept(self) -> tuple[Protocol, StringTransport]:
        protocol = self.factories[-1].buildProtocol(IPv4Address("TCP", "192.0.2.7", 2003))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 2003))
        protocol.makeConnection(transport)
        self.attempts[-1].callback(protocol)
        return protocol, transport  # type: ignore[return-value]


class SessionProtocol(Protocol):
    made = 0

    def connectionMade(self) -> None:
        SessionProtocol.made += 1


class CollectorServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = FakeEndpoint()
        self.specs: list[str] = []

        def fake_parse(reactor: Any, spec: str) -> FakeEndpoint:
            self.assertIs(reactor, self.reactor)
            self.specs.append(spec)
            return self.endpoint

        self.patch(active, "parse_active_target", fake_parse)
        SessionProtocol.made = 0
        self.service = collector_service(
            self.reactor, "collector.example:2003", Factory.forProtocol(SessionProtocol)
        )
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()

    def test_is_client_service(self) -> None:
        self.assertIsInstance(self.service, ClientService)
        self.assertEqual(self.specs, ["collector.example:2003"])

    def test_connects_at_start(self) -> None:
        """Nothing is dialled until the service starts; then at once."""
        self.assertEqual(self.endpoint.attempts, [])
        self.service.startService()
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.endpoint.accept()
        self.assertEqual(SessionProtocol.made, 1)

    def test_retries_after_failure(self) -> None:
        """A refused connection is retried after the policy's delay, and again later if it fails again."""
        self.service.startService()
        self.endpoint.refuse()
        self.reactor.advance(0.74)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.reactor.advance(0.51)  # 1.25 s: the first delay with the most jitter
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.refuse()
        self.reactor.advance(1.1)  # the second delay is longer
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.reactor.advance(0.55)
        self.assertEqual(len(self.endpoint.attempts), 3)
        self.endpoint.accept()
        self.assertEqual(SessionProtocol.made, 1)

    def test_reconnects_after_session_ends(self) -> None:
        """When a session that forwarded nothing ends, the daemon dials again within about a second and a half."""
        self.service.startService()
        protocol, _ = self.endpoint.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.reactor.advance(1.5)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.accept()
        self.assertEqual(SessionProtocol.made, 2)

    def _with_policy(self) -> ReconnectPolicy:
        self.service.stopService()
        policy = ReconnectPolicy("c", jitter=lambda: 0.0)
        self.service = collector_service(
            self.reactor, "collector.example:2003", Factory.forProtocol(SessionProtocol), policy=policy
        )
        self.service.startService()
        return policy

    def test_working_session_reconnects_at_once(self) -> None:
        """After failures, a session that forwarded packets is followed by a new connection at once."""
        policy = self._with_policy()
        for _ in range(6):
            self.endpoint.refuse()
            self.reactor.advance(MAX_RETRY + 0.5)
        protocol, _ = self.endpoint.accept()
        policy.session_ended(packets_forwarded=100)
        protocol.connectionLost(Failure(ConnectionDone()))
        before = len(self.endpoint.attempts)
        self.reactor.advance(0)
        self.assertEqual(len(self.endpoint.attempts), before + 1)

    def test_empty_sessions_keep_backing_off(self) -> None:
        """A collector that accepts and then refuses every capture is not dialled ever faster."""
        policy = self._with_policy()
        for _ in range(12):  # enough to reach the cap
            protocol, _ = self.endpoint.accept()
            policy.session_ended(packets_forwarded=0)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.reactor.advance(MAX_RETRY + 0.5)
        before = len(self.endpoint.attempts)
        protocol, _ = self.endpoint.accept()
        policy.session_ended(packets_forwarded=0)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(MAX_RETRY - 0.5)
        self.assertEqual(len(self.endpoint.attempts), before)
        self.reactor.advance(1)
        self.assertEqual(len(self.endpoint.attempts), before + 1)

    def test_stop_stops_retrying(self) -> None:
        self.service.startService()
        self.endpoint.refuse()
        self.service.stopService()
        self.reactor.advance(MAX_RETRY * 10)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_closes_the_session(self) -> None:
        """Stopping the service disconnects from the collector and does not dial again."""
        self.service.startService()
        protocol, transport = self.endpoint.accept()
        self.service.stopService()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(MAX_RETRY * 10)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_stop_while_connecting(self) -> None:
        """A connection attempt still in progress is abandoned at stop."""
        self.service.startService()
        attempt = self.endpoint.attempts[0]
        self.service.stopService()
        self.assertTrue(attempt.called)
        self.reactor.advance(MAX_RETRY * 10)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_logs_name_the_collector(self) -> None:
        """An operator reading the log sees which collector is being dialled and why it failed."""
        with capturedLogs() as events:
            self.service.startService()
            self.endpoint.refuse()
        messages = [formatEvent(e) for e in events]
        # One line for the attempt, one for its failure with the delay before the next: no more.
        self.assertEqual(len(messages), 2, messages)
        self.assertEqual(messages[0], "Connecting to collector collector.example:2003")
        self.assertIn("Cannot connect to collector collector.example:2003", messages[1])
        self.assertIn("collector down", messages[1])
        self.assertRegex(messages[1], r"; retrying in \d+\.\d s \(failures=1\)$")

    def test_name_given(self) -> None:
        """The name used in logs may differ from the address (it says which interface, in the service)."""
        service = collector_service(
            self.reactor, "c:2003", Factory.forProtocol(SessionProtocol), name="c:2003 (interface eth1)"
        )
        with capturedLogs() as events:
            service.startService()
            self.endpoint.refuse()
            service.stopService()
        self.assertIn("Connecting to collector c:2003 (interface eth1)", [formatEvent(e) for e in events])


class LoggingEndpointTests(SynchronousTestCase):
    def test_passes_results_through(self) -> None:
        inner = FakeEndpoint()
        endpoint = _LoggingEndpoint(inner, "c")
        self.assertEqual(repr(endpoint), "<collector c>")
        results: list[object] = []
        endpoint.connect(Factory.forProtocol(Protocol)).addBoth(results.append)
        protocol, _ = inner.accept()
        self.assertEqual(results, [protocol])
        failures: list[Failure] = []
        endpoint.connect(Factory.forProtocol(Protocol)).addErrback(failures.append)
        inner.refuse()
        [failure] = failures
        self.assertTrue(failure.check(ConnectionRefusedError))

    def test_through_a_real_endpoint(self) -> None:
        """A service built from an address dials the collector's name and port on the reactor."""
        reactor = MemoryReactorClock()
        resolver = RecordingResolver()
        reactor.installNameResolver(resolver)
        service = collector_service(reactor, "collector.example:2004", Factory.forProtocol(Protocol))
        service.startService()
        self.addCleanup(service.stopService)
        reactor.advance(0)
        self.assertEqual(resolver.asked, [("collector.example", 2004)])
        self.assertEqual([(c[0], c[1]) for c in reactor.tcpClients], [("192.0.2.7", 2004)])
