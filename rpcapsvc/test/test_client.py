"""
Tests for the collector's client library (L{rpcapsvc.collector.client}).

L{RpcapClientProtocol} is driven over a C{StringTransport} by a scripted
daemon (each request's bytes are compared with the codec's own encoding,
replies are fed back as bytes), and end to end, in memory, against
rpcapsvc's own server with a fake capture system.  The packet receivers are
fed type-7 streams, classic datagrams and udpstr datagrams built with the
codec; L{compile_filter} is compared with tcpdump's programs.  No sockets.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Callable, Optional, Union

import pcapy
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcapsvc.collector.client import (
    MAX_UNEXPECTED,
    CaptureSettings,
    DatagramPacketReceiver,
    ProtocolBroken,
    RemoteCapture,
    RpcapClientFactory,
    RpcapClientProtocol,
    TcpPacketReceiver,
    compile_filter,
    start_capture,
)
from rpcapsvc.protocol.datachannel import CapturedPacket, PacketBatch, encode_packet_messages
from rpcapsvc.protocol.udpstr import UdpStrFramer
from rpcapsvc.protocol.wire import (
    BYTE_ORDER_MAGIC,
    AuthReply,
    AuthRequest,
    AuthType,
    BpfProgram,
    CloseRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    InterfaceAddress,
    InterfaceInfo,
    MalformedMessage,
    Message,
    MessageType,
    OpenReply,
    OpenRequest,
    RemoteError,
    SetSamplingReply,
    SetSamplingRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
    UpdateFilterReply,
    UpdateFilterRequest,
    frame,
)
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.session import SessionPolicy, SessionState
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels

from . import _fixtures as fixtures
from ._fixtures import DNS_QUERY, ICMP_ECHO, ICMP_FILTER, LO, Resolution, eth0, ether_ipv4

DAEMON_HOST = "192.0.2.20"
COLLECTOR_HOST = "192.0.2.1"
OTHER_HOST = "198.51.100.7"
DLT_EN10MB = 1
DLT_LINUX_SLL = 113
SNAPLEN = 262144

ETH0 = eth0(DAEMON_HOST, InterfaceAddress(ipaddress.ip_address("2001:db8::20"), scope_id=0))

ICMP_PACKET = ether_ipv4(1, ICMP_ECHO, src=DAEMON_HOST, dst=COLLECTOR_HOST)
UDP_PACKET = ether_ipv4(17, DNS_QUERY, src=DAEMON_HOST, dst=COLLECTOR_HOST)


def packet_messages(packets: list[tuple[int, int, bytes]], first_npkt: int = 1) -> list[bytes]:
    """The classic type-7 messages a daemon sends for C{packets}, numbered from C{first_npkt}."""
    return encode_packet_messages(PacketBatch.from_packets(packets), SNAPLEN, first_npkt)


def captured(packets: list[tuple[int, int, bytes]], first_npkt: int = 1) -> list[CapturedPacket]:
    """What a receiver should deliver for C{packets} (whole frames, numbered from C{first_npkt})."""
    return fixtures.captured(packets, SNAPLEN, first_npkt)


def connected_client(
    daemon: Union[IPv4Address, IPv6Address, None] = None,
    collector: Union[IPv4Address, IPv6Address, None] = None,
) -> tuple[RpcapClientProtocol, StringTransportWithDisconnection]:
    """A client protocol on a connection to a daemon that the test scripts."""
    proto = RpcapClientProtocol()
    transport = StringTransportWithDisconnection(
        hostAddress=collector or IPv4Address("TCP", COLLECTOR_HOST, 40000),
        peerAddress=daemon or IPv4Address("TCP", DAEMON_HOST, 2002),
    )
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


class FakeUdpPort:
    """What L{UdpMemoryReactor.listenUDP} returns: a port that records being stopped."""

    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self) -> None:
        self.listening = False


class FakeTcpPort:
    """What L{UdpMemoryReactor.listenTCP} returns: a port that records being stopped."""

    def __init__(self, address: Union[IPv4Address, IPv6Address]) -> None:
        self.address = address
        self.listening = True

    def getHost(self) -> Union[IPv4Address, IPv6Address]:
        return self.address

    def stopListening(self) -> defer.Deferred[None]:
        self.listening = False
        return defer.succeed(None)


@implementer(IHostnameResolver)
class LiteralResolver:
    """Resolves an IP literal to itself (MemoryReactor's resolver says 127.0.0.1 to everything)."""

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        cls = IPv6Address if ":" in hostName else IPv4Address
        resolutionReceiver.addressResolved(cls("TCP", hostName, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class UdpMemoryReactor(MemoryReactorClock):
    """
    A MemoryReactorClock that can also listen for UDP (on ports 33001,
    33002, ...), gives TCP port 0 a real-looking number, resolves IP
    literals to themselves, and lets system event triggers be removed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[FakeUdpPort] = []
        self.tcpPorts: list[FakeTcpPort] = []
        self.nameResolver = LiteralResolver()

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUdpPort:
        udp = FakeUdpPort(port or 33000 + len(self.udpPorts) + 1, protocol, interface)
        self.udpPorts.append(udp)
        protocol.makeConnection(udp)
        return udp

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakeTcpPort:
        """As MemoryReactor's, but port 0 gets a number of its own (34001, 34002, ...)."""
        address = super().listenTCP(port, factory, backlog, interface).getHost()
        listening = FakeTcpPort(type(address)("TCP", address.host, port or 34000 + len(self.tcpServers)))
        self.tcpPorts.append(listening)
        return listening

    def addSystemEventTrigger(self, phase: str, eventType: str, callable: Any, *args: Any, **kw: Any) -> Any:
        super().addSystemEventTrigger(phase, eventType, callable, *args, **kw)
        return (phase, eventType, self.triggers[phase][eventType][-1])

    def removeSystemEventTrigger(self, triggerID: Any) -> None:
        phase, eventType, trigger = triggerID
        self.triggers[phase][eventType].remove(trigger)

    def shut_down(self) -> list[Any]:
        """Run the before-shutdown triggers as a reactor stopping on Ctrl-C does: each is spent once run."""
        triggers = self.triggers.get("before", {}).get("shutdown", [])
        results = []
        while triggers:
            callable, args, kw = triggers.pop(0)
            results.append(callable(*args, **kw))
        return results


class InMemoryDaemon:
    """
    rpcapsvc's own RPCAP server, with a fake capture system and fake data
    channels, reached over an L{iosim} connection.  Packets the test injects
    reach the data channel's L{RecordingSink}; L{forward_udp} and
    L{forward_tcp} carry them on to a collector's receiver as the real
    channels would.
    """

    def __init__(
        self,
        host: str = DAEMON_HOST,
        policy: Optional[SessionPolicy] = None,
        active: bool = False,
        interfaces: Optional[list[InterfaceInfo]] = None,
        preselected: Optional[str] = None,
    ) -> None:
        self.host = host
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem(interfaces if interfaces is not None else [LO, ETH0])
        self.channels = FakeDataChannels()
        self.factory = RpcapServerFactory(
            self.reactor,
            self.system,
            policy or SessionPolicy(null_auth=True),
            data_channels=self.channels,  # type: ignore[arg-type]
            active=active,
            interface=preselected,
        )
        self._forwarded: dict[int, tuple[int, int]] = {}

    def close(self) -> None:
        for handle in self.system.handles:
            handle.close()

    def connect(self, client: Any, collector_host: str = COLLECTOR_HOST, port: int = 2002) -> iosim.IOPump:
        """Connect C{client} (a collector's protocol) to a fresh server session."""
        address = IPv6Address if ":" in self.host else IPv4Address
        collector_address = IPv6Address if ":" in collector_host else IPv4Address
        server = self.factory.buildProtocol(None)
        server_io = iosim.FakeTransport(
            server,
            isServer=True,
            hostAddress=address("TCP", self.host, port),
            peerAddress=collector_address("TCP", collector_host, 40000),
        )
        client_io = iosim.FakeTransport(
            client,
            isServer=False,
            hostAddress=collector_address("TCP", collector_host, 40000),
            peerAddress=address("TCP", self.host, port),
        )
        return iosim.connect(server, server_io, client, client_io, clock=self.reactor)

    def capture(self, packets: list[tuple[int, int, bytes]]) -> None:
        """Packets arrive on the capturing interface and the daemon reads them."""
        handle = self.system.handles[-1]
        handle.inject(packets)
        for reader in list(self.reactor.readers):
            reader.doRead()

    def _unsent(self) -> list[bytes]:
        sink_index = len(self.channels.sinks) - 1
        sink = self.channels.sinks[sink_index]
        batches_sent, npkt = self._forwarded.get(sink_index, (0, 1))
        messages = []
        for batch in sink.batches[batches_sent:]:
            messages += encode_packet_messages(batch, sink.snaplen, npkt)
            npkt += len(batch)
        self._forwarded[sink_index] = (len(sink.batches), npkt)
        return messages

    def forward_udp(self, receiver: DatagramPacketReceiver) -> None:
        """Send what the data channel was given as classic datagrams to C{receiver}."""
        for datagram in self._unsent():
            receiver.datagramReceived(datagram, (self.host, 40000))

    def forward_tcp(self, receiver: Any) -> None:
        """Send what the data channel was given down C{receiver}'s TCP connection."""
        receiver.dataReceived(b"".join(self._unsent()))


def run_until_called(pump: iosim.IOPump, d: defer.Deferred[Any], limit: int = 100) -> None:
    """Pump the connection until C{d} has fired."""
    for _ in range(limit):
        if d.called:
            return
        pump.flush()
    raise AssertionError(f"{d!r} never fired")


class RequestBytesTests(SynchronousTestCase):
    """Each request method writes exactly the codec's encoding of its message."""

    def assertWrites(
        self, call: Callable[[RpcapClientProtocol], object], expected: Message
    ) -> RpcapClientProtocol:
        proto, transport = connected_client()
        call(proto)
        self.assertEqual(transport.value(), expected.encode())
        return proto

    def test_null_auth(self) -> None:
        """A null login is the 16 bytes libpcap's client sends."""
        self.assertWrites(lambda p: p.authenticate(), AuthRequest(AuthType.NULL))
        self.assertEqual(
            AuthRequest(AuthType.NULL).encode(),
            b"\x00\x08\x00\x00\x00\x00\x00\x08" + b"\x00" * 8,
        )

    def test_password_auth(self) -> None:
        self.assertWrites(
            lambda p: p.authenticate(b"alice", b"secret"), AuthRequest(AuthType.PASSWORD, b"alice", b"secret")
        )

    def test_find_interfaces(self) -> None:
        self.assertWrites(lambda p: p.find_interfaces(), FindAllInterfacesRequest())

    def test_open(self) -> None:
        self.assertWrites(lambda p: p.open("eth0"), OpenRequest("eth0"))

    def test_start_capture(self) -> None:
        request = StartCaptureRequest(
            96, 100, StartCapFlags.PROMISC | StartCapFlags.DGRAM, 33001, ICMP_FILTER
        )
        self.assertWrites(lambda p: p.start_capture(request), request)

    def test_update_filter(self) -> None:
        self.assertWrites(lambda p: p.update_filter(ICMP_FILTER), UpdateFilterRequest(ICMP_FILTER))

    def test_stats(self) -> None:
        self.assertWrites(lambda p: p.stats(), StatsRequest())

    def test_end_capture(self) -> None:
        self.assertWrites(lambda p: p.end_capture(), EndCaptureRequest())

    def test_set_sampling(self) -> None:
        self.assertWrites(lambda p: p.set_sampling(1, 10), SetSamplingRequest(1, 10))


class ReplyTests(SynchronousTestCase):
    """Replies fire each request's Deferred with the decoded message."""

    def answered(
        self, call: Callable[[RpcapClientProtocol], defer.Deferred[Any]], reply: Union[Message, bytes]
    ) -> defer.Deferred[Any]:
        proto, _ = connected_client()
        d = call(proto)
        self.assertNoResult(d)
        proto.dataReceived(reply if isinstance(reply, bytes) else reply.encode())
        return d

    def test_auth_reply(self) -> None:
        d = self.answered(lambda p: p.authenticate(), AuthReply(0, 0, BYTE_ORDER_MAGIC))
        self.assertEqual(self.successResultOf(d), AuthReply(0, 0, BYTE_ORDER_MAGIC))

    def test_find_interfaces_gives_the_interfaces(self) -> None:
        """find_interfaces fires with the tuple of interfaces, addresses and all."""
        d = self.answered(lambda p: p.find_interfaces(), FindAllInterfacesReply((LO, ETH0)))
        interfaces = self.successResultOf(d)
        self.assertEqual(interfaces, (LO, ETH0))
        self.assertEqual([str(a.address) for a in interfaces[1].addresses], ["192.0.2.20", "2001:db8::20"])

    def test_no_interfaces(self) -> None:
        d = self.answered(lambda p: p.find_interfaces(), FindAllInterfacesReply(()))
        self.assertEqual(self.successResultOf(d), ())

    def test_open_reply(self) -> None:
        d = self.answered(lambda p: p.open("eth0"), OpenReply(DLT_LINUX_SLL, 0))
        self.assertEqual(self.successResultOf(d).linktype, DLT_LINUX_SLL)

    def test_start_capture_reply(self) -> None:
        request = StartCaptureRequest(SNAPLEN, 100, 0, 0, ICMP_FILTER)
        d = self.answered(lambda p: p.start_capture(request), StartCaptureReply(2097152, 40001))
        self.assertEqual(self.successResultOf(d), StartCaptureReply(2097152, 40001))

    def test_stats_reply(self) -> None:
        d = self.answered(lambda p: p.stats(), StatsReply(100, 1, 2, 97))
        self.assertEqual(self.successResultOf(d), StatsReply(100, 1, 2, 97))

    def test_empty_replies(self) -> None:
        for call, reply in (
            (lambda p: p.end_capture(), EndCaptureReply()),
            (lambda p: p.update_filter(ICMP_FILTER), UpdateFilterReply()),
            (lambda p: p.set_sampling(0, 0), SetSamplingReply()),
        ):
            self.assertEqual(self.successResultOf(self.answered(call, reply)), reply)

    def test_error_reply_fails_with_remote_error(self) -> None:
        """A refusal fails the request with the daemon's code and text."""
        d = self.answered(lambda p: p.open("eth9"), ErrorReply(ErrorCode.OPEN, "eth9: No such device exists"))
        error = self.failureResultOf(d, RemoteError).value
        self.assertEqual((error.code, error.text), (ErrorCode.OPEN, "eth9: No such device exists"))

    def test_reply_of_the_wrong_type(self) -> None:
        """A reply that answers another request fails with MalformedMessage, saying which was due."""
        d = self.answered(lambda p: p.stats(), OpenReply(1, 0))
        failure = self.failureResultOf(d, MalformedMessage)
        self.assertEqual(str(failure.value), "it answered with an open reply where a stats reply was due")

    def test_undecodable_reply(self) -> None:
        """A stats reply too short to hold the counters fails the request."""
        d = self.answered(lambda p: p.stats(), frame(MessageType.STATS_REPLY, b"\0" * 15))
        self.failureResultOf(d, MalformedMessage)

    def test_reply_in_pieces(self) -> None:
        """A reply that arrives a byte at a time fires once, when it is complete."""
        proto, _ = connected_client()
        d = proto.find_interfaces()
        data = FindAllInterfacesReply((LO, ETH0)).encode()
        for n in range(len(data) - 1):
            proto.dataReceived(data[n : n + 1])
        self.assertNoResult(d)
        proto.dataReceived(data[-1:])
        self.assertEqual(self.successResultOf(d), (LO, ETH0))

    def test_several_in_flight_answered_in_order(self) -> None:
        """Requests sent before any reply each get their own reply, in order."""
        proto, transport = connected_client()
        auth = proto.authenticate()
        interfaces = proto.find_interfaces()
        opened = proto.open("eth0")
        stats = proto.stats()
        self.assertEqual(
            transport.value(),
            b"".join(
                m.encode()
                for m in (AuthRequest(0), FindAllInterfacesRequest(), OpenRequest("eth0"), StatsRequest())
            ),
        )
        proto.dataReceived(
            AuthReply().encode()
            + FindAllInterfacesReply((ETH0,)).encode()
            + ErrorReply(ErrorCode.OPEN, "busy").encode()
            + StatsReply(1, 2, 3, 4).encode()
        )
        self.assertEqual(self.successResultOf(auth), AuthReply())
        self.assertEqual(self.successResultOf(interfaces), (ETH0,))
        self.assertEqual(self.failureResultOf(opened, RemoteError).value.text, "busy")
        self.assertEqual(self.successResultOf(stats), StatsReply(1, 2, 3, 4))


class ConnectionTests(SynchronousTestCase):
    def test_connected(self) -> None:
        """when_connected fires with the protocol; the peer and local addresses are kept."""
        proto, _ = connected_client()
        self.assertIs(self.successResultOf(proto.when_connected), proto)
        self.assertEqual((proto.peer_host, proto.local_host), (DAEMON_HOST, COLLECTOR_HOST))

    def test_ipv6_peer(self) -> None:
        proto, _ = connected_client(
            IPv6Address("TCP", "2001:db8::20", 2002), IPv6Address("TCP", "2001:db8::1", 40000)
        )
        self.assertEqual((proto.peer_host, proto.local_host), ("2001:db8::20", "2001:db8::1"))

    def test_request_before_connection(self) -> None:
        """A request on a protocol not yet connected fails at once."""
        self.failureResultOf(RpcapClientProtocol().stats(), ConnectionDone)

    def test_connection_lost_fails_pending(self) -> None:
        """Every request waiting for a reply fails when the daemon hangs up."""
        proto, transport = connected_client()
        stats = proto.stats()
        endcap = proto.end_capture()
        self.assertNoResult(proto.disconnected)
        proto.connectionLost(Failure(ConnectionLost("peer reset")))
        self.failureResultOf(stats, ConnectionLost)
        self.failureResultOf(endcap, ConnectionLost)
        self.assertIsNone(self.successResultOf(proto.disconnected))

    def test_request_after_connection_lost(self) -> None:
        """
        A request made after the daemon hung up fails at once rather than
        waiting for ever (what ends rpcap-dump when its daemon vanishes).
        """
        proto, transport = connected_client()
        proto.connectionLost(Failure(ConnectionLost("peer reset")))
        transport.clear()
        self.failureResultOf(proto.stats(), ConnectionDone)
        self.assertEqual(transport.value(), b"")

    def test_unsolicited_error_recorded(self) -> None:
        """
        An error that answers no request (a capture that failed at the
        daemon) is kept in .errors; the next request still gets its reply.
        """
        proto, _ = connected_client()
        proto.dataReceived(ErrorReply(ErrorCode.READEX, "eth0: the interface went down").encode())
        self.assertEqual(proto.errors, [ErrorReply(ErrorCode.READEX, "eth0: the interface went down")])
        d = proto.stats()
        proto.dataReceived(StatsReply(1, 0, 0, 1).encode())
        self.assertEqual(self.successResultOf(d), StatsReply(1, 0, 0, 1))

    def test_unexpected_reply_ignored(self) -> None:
        """A reply nobody asked for is dropped; it does not answer the next request."""
        proto, transport = connected_client()
        proto.dataReceived(StatsReply(9, 9, 9, 9).encode())
        self.assertEqual(proto.errors, [])
        self.assertTrue(transport.connected)
        d = proto.stats()
        self.assertNoResult(d)
        proto.dataReceived(StatsReply(1, 0, 0, 1).encode())
        self.assertEqual(self.successResultOf(d), StatsReply(1, 0, 0, 1))

    def test_oversized_reply_ends_connection(self) -> None:
        """A header announcing an absurd payload fails the request and hangs up."""
        proto, transport = connected_client()
        d = proto.find_interfaces()
        proto.dataReceived(struct.pack("!BBHI", 0, MessageType.FINDALLIF_REPLY, 1, 0xFFFFFFF0))
        failure = self.failureResultOf(d, ProtocolBroken)
        self.assertEqual(
            str(failure.value), "it sent an oversized list of interfaces (4294967280 bytes; 16777216 at most)"
        )
        self.assertFalse(transport.connected)
        self.assertEqual(proto.parser.buffered, 0)

    def test_close(self) -> None:
        """close() says goodbye with a CLOSE message and hangs up."""
        proto, transport = connected_client()
        proto.close()
        self.assertEqual(transport.value(), CloseRequest().encode())
        self.assertEqual(transport.value(), b"\x00\x06\x00\x00\x00\x00\x00\x00")
        self.assertFalse(transport.connected)
        self.assertIsNone(self.successResultOf(proto.disconnected))

    def test_close_active_daemon(self) -> None:
        """
        A daemon that dialled in is hung up on without CLOSE: after a CLOSE,
        libpcap's and ExtraHop's daemons never dial the collector again.
        """
        proto = RpcapClientFactory().buildProtocol(IPv4Address("TCP", DAEMON_HOST, 5000))
        self.assertTrue(proto.active)
        transport = StringTransport(peerAddress=IPv4Address("TCP", DAEMON_HOST, 5000))
        proto.makeConnection(transport)
        proto.close()
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_factory_reports_connections(self) -> None:
        """The factory hands each connected protocol to on_connect."""
        seen: list[RpcapClientProtocol] = []
        factory = RpcapClientFactory(seen.append)
        proto = factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 5000))
        self.assertEqual(seen, [])
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", DAEMON_HOST, 5000)))
        self.assertEqual(seen, [proto])
        self.assertIs(self.successResultOf(proto.when_connected), proto)


class ServerEndToEndTests(SynchronousTestCase):
    """
    The client against rpcapsvc's own server, in memory: what a collector
    would see of a real daemon, short of sockets and a real interface.
    """

    def setUp(self) -> None:
        self.daemon = InMemoryDaemon()
        self.addCleanup(self.daemon.close)
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.daemon.factory.buildProtocol(None),
            RpcapClientProtocol,
            clientTransportFactory=lambda p: iosim.FakeTransport(
                p,
                isServer=False,
                hostAddress=IPv4Address("TCP", COLLECTOR_HOST, 40000),
                peerAddress=IPv4Address("TCP", DAEMON_HOST, 2002),
            ),
            serverTransportFactory=lambda p: iosim.FakeTransport(
                p,
                isServer=True,
                hostAddress=IPv4Address("TCP", DAEMON_HOST, 2002),
                peerAddress=IPv4Address("TCP", COLLECTOR_HOST, 40000),
            ),
            clock=self.daemon.reactor,
        )

    def result(self, d: defer.Deferred[Any]) -> Any:
        run_until_called(self.pump, d)
        return self.successResultOf(d)

    def test_session(self) -> None:
        """auth, findalldevs, open, stats, endcap and close, as a collector runs them."""
        self.assertEqual(self.result(self.client.authenticate()), AuthReply(0, 0, BYTE_ORDER_MAGIC))
        self.assertEqual(self.result(self.client.find_interfaces()), (LO, ETH0))
        self.assertEqual(self.result(self.client.open("eth0")), OpenReply(DLT_EN10MB, 0))
        self.assertEqual(self.result(self.client.stats()), StatsReply(0, 0, 0, 0))
        reply = self.result(self.client.start_capture(StartCaptureRequest(SNAPLEN, 100, 2, 33001, None)))
        self.assertIsInstance(reply, StartCaptureReply)
        self.assertEqual(self.daemon.channels.requests, [("udp", COLLECTOR_HOST, "33001")])
        self.daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        self.assertEqual(self.result(self.client.stats()), StatsReply(2, 0, 0, 2))
        self.assertEqual(self.result(self.client.end_capture()), EndCaptureReply())
        self.assertTrue(self.daemon.system.handles[-1].closed)
        self.client.close()
        self.pump.flush()
        self.assertEqual(self.server.session.state, SessionState.CLOSED)
        self.assertEqual(self.daemon.factory.sessions, set())

    def test_refusals(self) -> None:
        """The server's refusals fail the requests with its codes; the session goes on."""
        self.result(self.client.authenticate())
        d = self.client.open("eth9")
        run_until_called(self.pump, d)
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, ErrorCode.OPEN)
        d = self.client.end_capture()
        run_until_called(self.pump, d)
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, ErrorCode.ENDCAPTURE)
        self.assertEqual(self.result(self.client.open("lo")), OpenReply(DLT_EN10MB, 0))

    def test_password_required(self) -> None:
        """A daemon that wants a password refuses a null login, after its delay."""
        self.daemon.factory.policy = SessionPolicy(null_auth=False)
        client = RpcapClientProtocol()
        pump = self.daemon.connect(client)
        d = client.authenticate()
        pump.flush()
        self.assertNoResult(d)
        self.daemon.reactor.advance(1)
        pump.flush()
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, ErrorCode.AUTH_FAILED)

    def test_start_capture_over_udp(self) -> None:
        """
        start_capture opens the device, compiles the filter for its link type
        (the daemon's kernel then drops what does not match), asks for UDP
        to a port it listens on, and delivers the daemon's packets; stop()
        reads the last counters and ends the capture.
        """
        self.result(self.client.authenticate())
        reactor = UdpMemoryReactor()
        batches: list[list[CapturedPacket]] = []
        settings = CaptureSettings("eth0", filter="icmp", udp=True)
        capture = self.result(
            defer.ensureDeferred(start_capture(reactor, self.client, settings, batches.append))
        )
        self.assertIsInstance(capture, RemoteCapture)
        self.assertEqual(capture.linktype, DLT_EN10MB)
        [udp] = reactor.udpPorts
        self.assertEqual(udp.interface, COLLECTOR_HOST)
        self.assertEqual(self.daemon.channels.requests, [("udp", COLLECTOR_HOST, str(udp.port))])
        handle = self.daemon.system.handles[-1]
        self.assertTrue(handle.options.promiscuous)

        self.daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, ICMP_PACKET)])
        self.daemon.forward_udp(capture.receiver)
        self.assertEqual(
            [p for batch in batches for p in batch],
            captured([(1, 0, ICMP_PACKET), (3, 0, ICMP_PACKET)]),
        )
        self.assertEqual(capture.loss.lost_packets, 0)

        stats = self.result(defer.ensureDeferred(capture.stop()))
        self.assertEqual(stats, StatsReply(3, 0, 0, 2))
        self.assertTrue(handle.closed)
        self.assertFalse(udp.listening)

    def test_stop_after_daemon_vanished(self) -> None:
        """stop() on a capture whose daemon is gone returns no stats instead of hanging."""
        self.result(self.client.authenticate())
        reactor = UdpMemoryReactor()
        capture = self.result(
            defer.ensureDeferred(
                start_capture(reactor, self.client, CaptureSettings("eth0", udp=True), lambda _: None)
            )
        )
        self.server.transport.loseConnection()
        self.pump.flush()
        self.assertTrue(self.client.disconnected.called)
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(capture.stop())))
        self.assertFalse(reactor.udpPorts[-1].listening)


class StartCaptureTests(SynchronousTestCase):
    """How L{start_capture} sets up each kind of data channel, against a scripted daemon."""

    def setUp(self) -> None:
        self.reactor = UdpMemoryReactor()
        self.client, self.transport = connected_client()
        self.batches: list[list[CapturedPacket]] = []

    def start(self, settings: CaptureSettings, active: bool = False) -> defer.Deferred[RemoteCapture]:
        d = defer.ensureDeferred(
            start_capture(self.reactor, self.client, settings, self.batches.append, active=active)
        )
        self.assertEqual(self.sent(), OpenRequest(settings.device).encode())
        self.client.dataReceived(OpenReply(DLT_EN10MB).encode())
        return d

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def startcap_sent(self) -> StartCaptureRequest:
        data = self.sent()
        request = StartCaptureRequest.decode(None, data[8:])  # type: ignore[arg-type]
        self.assertEqual(data, request.encode())
        return request

    def test_passive_tcp(self) -> None:
        """
        Passive TCP: no flags but promiscuous, port 0; then the collector
        connects to the daemon's host at the port in the reply.
        """
        d = self.start(CaptureSettings("eth0"))
        request = self.startcap_sent()
        self.assertEqual(
            request,
            StartCaptureRequest(SNAPLEN, 100, StartCapFlags.PROMISC, 0, compile_filter("", 1, SNAPLEN)),
        )
        self.client.dataReceived(StartCaptureReply(2097152, 40001).encode())
        self.reactor.advance(0)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), (DAEMON_HOST, 40001))
        self.assertNoResult(d)
        data = factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 40001))
        data.makeConnection(StringTransport())
        capture = self.successResultOf(d)
        self.assertIsInstance(capture.receiver, TcpPacketReceiver)
        data.dataReceived(b"".join(packet_messages([(1, 2, ICMP_PACKET)])))
        self.assertEqual(self.batches, [captured([(1, 2, ICMP_PACKET)])])

    def test_filter_sent(self) -> None:
        """The filter goes in the startcap as tcpdump would compile it for the daemon's link type."""
        self.start(CaptureSettings("eth0", filter="icmp"))
        self.assertEqual(self.startcap_sent().filter, ICMP_FILTER)

    def test_not_promiscuous(self) -> None:
        self.start(CaptureSettings("eth0", promiscuous=False, snaplen=96))
        request = self.startcap_sent()
        self.assertEqual((request.flags, request.snaplen), (0, 96))

    def test_active_tcp(self) -> None:
        """
        A daemon in active mode is asked to connect (SERVEROPEN) to a port
        the collector listens on; only the daemon's host is let in, and the
        port closes once it has connected.
        """
        d = self.start(CaptureSettings("eth0"), active=True)
        port, factory, backlog, interface = self.reactor.tcpServers[-1]
        self.assertEqual((port, backlog, interface), (0, 1, COLLECTOR_HOST))
        request = self.startcap_sent()
        self.assertEqual(request.flags, StartCapFlags.PROMISC | StartCapFlags.SERVEROPEN)
        self.assertEqual(request.portdata, self.reactor.tcpPorts[-1].getHost().port)
        self.client.dataReceived(StartCaptureReply(2097152, request.portdata).encode())
        self.assertNoResult(d)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", OTHER_HOST, 5555)))
        data = factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 5555))
        data.makeConnection(StringTransport())
        capture = self.successResultOf(d)
        self.assertFalse(self.reactor.tcpPorts[-1].listening)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 5556)))
        data.dataReceived(b"".join(packet_messages([(1, 2, UDP_PACKET)])))
        self.assertEqual(self.batches, [captured([(1, 2, UDP_PACKET)])])
        self.assertIs(capture.receiver, data)

    def test_active_tcp_never_connects(self) -> None:
        """A daemon that never opens the data connection times the capture out."""
        d = self.start(CaptureSettings("eth0"), active=True)
        self.client.dataReceived(StartCaptureReply(2097152, 2003).encode())
        self.reactor.advance(29)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.failureResultOf(d, defer.TimeoutError)

    def test_udp(self) -> None:
        d = self.start(CaptureSettings("eth0", udp=True))
        [udp] = self.reactor.udpPorts
        request = self.startcap_sent()
        self.assertEqual(request.flags, StartCapFlags.PROMISC | StartCapFlags.DGRAM)
        self.assertEqual(request.portdata, udp.port)
        self.client.dataReceived(StartCaptureReply(2097152, udp.port).encode())
        capture = self.successResultOf(d)
        self.assertIs(capture.receiver, udp.protocol)
        self.assertEqual(udp.protocol.allowed_host, DAEMON_HOST)
        self.assertTrue(udp.listening)
        capture.close_data()
        self.assertFalse(udp.listening)

    def test_udp_refused(self) -> None:
        """A refused startcap fails the capture and closes the UDP port."""
        d = self.start(CaptureSettings("eth0", udp=True))
        self.client.dataReceived(ErrorReply(ErrorCode.STARTCAPTURE, "no UDP here").encode())
        self.failureResultOf(d, RemoteError)
        self.assertFalse(self.reactor.udpPorts[-1].listening)

    def test_open_refused(self) -> None:
        d = defer.ensureDeferred(
            start_capture(self.reactor, self.client, CaptureSettings("eth9"), self.batches.append)
        )
        self.client.dataReceived(ErrorReply(ErrorCode.OPEN, "eth9: No such device exists").encode())
        self.assertEqual(self.failureResultOf(d, RemoteError).value.text, "eth9: No such device exists")

    def test_bad_filter(self) -> None:
        """A filter that does not compile fails before any startcap is sent."""
        d = self.start(CaptureSettings("eth0", filter="tcp port eighty"))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.sent(), b"")


class TcpPacketReceiverTests(SynchronousTestCase):
    def receiver(self) -> tuple[TcpPacketReceiver, list[list[CapturedPacket]], StringTransport]:
        batches: list[list[CapturedPacket]] = []
        receiver = TcpPacketReceiver(batches.append)
        transport = StringTransportWithDisconnection()
        transport.protocol = receiver
        receiver.makeConnection(transport)
        return receiver, batches, transport

    @given(
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999999), st.binary(max_size=300)),
            max_size=30,
        ),
        st.data(),
    )
    def test_any_split(self, packets: list[tuple[int, int, bytes]], data: st.DataObject) -> None:
        """However the stream is cut into reads, every packet arrives once, in order."""
        stream = b"".join(packet_messages(packets))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
        receiver, batches, transport = self.receiver()
        for start, end in zip([0] + cuts, cuts + [len(stream)]):
            receiver.dataReceived(stream[start:end])
        self.assertEqual([p for batch in batches for p in batch], captured(packets))
        self.assertTrue(all(batches))
        self.assertIsNone(receiver.error)
        self.assertTrue(transport.connected)

    def test_one_read_one_batch(self) -> None:
        """Packets that arrive in one read are delivered as one batch."""
        receiver, batches, _ = self.receiver()
        packets = [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, b"")]
        receiver.dataReceived(b"".join(packet_messages(packets)))
        self.assertEqual(batches, [captured(packets)])

    def test_other_message_type_ends_the_channel(self) -> None:
        """
        A control message on the data channel closes it and says why; the
        packets before it are still delivered.
        """
        receiver, batches, transport = self.receiver()
        receiver.dataReceived(
            b"".join(packet_messages([(1, 0, ICMP_PACKET)])) + StatsReply(0, 0, 0, 0).encode()
        )
        self.assertEqual(batches, [captured([(1, 0, ICMP_PACKET)])])
        self.assertFalse(transport.connected)
        self.assertIn("type 137", receiver.error or "")
        self.assertIsNone(self.successResultOf(receiver.lost))

    def test_oversized_packet_ends_the_channel(self) -> None:
        receiver, batches, transport = self.receiver()
        receiver.dataReceived(struct.pack("!BBHI", 0, MessageType.PACKET, 0, 0x7FFFFFFF))
        self.assertEqual(batches, [])
        self.assertFalse(transport.connected)
        self.assertIsNotNone(receiver.error)

    def test_truncated_packet_counted(self) -> None:
        """A type-7 message too short for its packet header is counted and skipped."""
        receiver, batches, transport = self.receiver()
        receiver.dataReceived(
            frame(MessageType.PACKET, b"\0" * 10) + packet_messages([(5, 0, UDP_PACKET)])[0]
        )
        self.assertEqual(receiver.loss.malformed, 1)
        self.assertEqual(batches, [captured([(5, 0, UDP_PACKET)])])
        self.assertTrue(transport.connected)

    def test_connected_and_lost(self) -> None:
        receiver, _, transport = self.receiver()
        self.assertIs(self.successResultOf(receiver.connected_deferred), receiver)
        self.assertNoResult(receiver.lost)
        transport.loseConnection()
        self.assertIsNone(self.successResultOf(receiver.lost))


class DatagramPacketReceiverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.batches: list[list[CapturedPacket]] = []
        self.receiver = DatagramPacketReceiver(self.batches.append, allowed_host=DAEMON_HOST)

    def send(self, *datagrams: bytes, host: str = DAEMON_HOST) -> None:
        for datagram in datagrams:
            self.receiver.datagramReceived(datagram, (host, 40000))

    def delivered(self) -> list[CapturedPacket]:
        return [p for batch in self.batches for p in batch]

    def test_classic_in_order(self) -> None:
        packets = [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, ICMP_PACKET)]
        self.send(*packet_messages(packets))
        self.assertEqual(self.delivered(), captured(packets))
        self.assertEqual(self.receiver.loss.lost_packets, 0)
        self.assertEqual(self.receiver.datagrams, 3)

    def test_classic_gap_counts_lost_packets(self) -> None:
        """Packets numbered 1, 2, 5, 6 arrive: 3 and 4 are counted lost."""
        messages = packet_messages([(n, 0, UDP_PACKET) for n in range(1, 7)])
        self.send(messages[0], messages[1], messages[4], messages[5])
        self.assertEqual([p.npkt for p in self.delivered()], [1, 2, 5, 6])
        self.assertEqual(self.receiver.loss.lost_packets, 2)
        self.assertEqual(self.receiver.loss.lost_datagrams, 0)

    def test_classic_first_packets_lost(self) -> None:
        """A capture whose first datagrams never arrive counts them too."""
        self.send(*packet_messages([(9, 0, UDP_PACKET)], first_npkt=4))
        self.assertEqual(self.receiver.loss.lost_packets, 3)

    def test_classic_duplicate_not_counted_twice(self) -> None:
        [message] = packet_messages([(1, 0, UDP_PACKET)])
        self.send(message, message)
        self.assertEqual(self.receiver.loss.lost_packets, 0)

    def udpstr_datagrams(self, packets: list[tuple[int, int, bytes]], mtu: int = 128) -> list[bytes]:
        framer = UdpStrFramer(mtu)
        datagrams = framer.pack_batch(PacketBatch.from_packets(packets), SNAPLEN, 1)
        last = framer.flush()
        return datagrams + ([last] if last is not None else [])

    def test_udpstr(self) -> None:
        """udpstr datagrams, packets cut across them, are put back together."""
        packets = [(n, n, (ICMP_PACKET, UDP_PACKET)[n % 2]) for n in range(20)]
        datagrams = self.udpstr_datagrams(packets)
        # Some datagrams begin with the tail of a packet begun in the one before.
        self.assertTrue(any(struct.unpack_from("!H", d, 2)[0] != 8 for d in datagrams))
        self.send(*datagrams)
        self.assertEqual(self.delivered(), captured(packets))
        loss = self.receiver.loss
        self.assertEqual((loss.lost_packets, loss.lost_datagrams, loss.malformed), (0, 0, 0))

    def test_udpstr_lost_datagram(self) -> None:
        """A lost udpstr datagram loses only the packets it touched, and is counted."""
        packets = [(n, 0, UDP_PACKET) for n in range(20)]
        datagrams = self.udpstr_datagrams(packets)
        self.send(*(datagrams[:3] + datagrams[4:]))
        got = self.delivered()
        loss = self.receiver.loss
        self.assertEqual(loss.lost_datagrams, 1)
        self.assertEqual(loss.lost_packets, len(packets) - len(got))
        self.assertGreater(loss.lost_packets, 0)
        self.assertEqual(got[-1], captured(packets)[-1])

    def test_classic_and_udpstr_mixed(self) -> None:
        """Each datagram is read by its own header, whichever the daemon sends."""
        [classic] = packet_messages([(1, 0, ICMP_PACKET)])
        udpstr = self.udpstr_datagrams([(2, 0, UDP_PACKET)], mtu=1472)
        self.send(classic, *udpstr)
        self.assertEqual(self.delivered(), captured([(1, 0, ICMP_PACKET)]) + captured([(2, 0, UDP_PACKET)]))

    def test_other_hosts_ignored(self) -> None:
        """Datagrams from anyone but the daemon are dropped without a trace."""
        self.send(*packet_messages([(1, 0, ICMP_PACKET)]), host=OTHER_HOST)
        self.send(b"garbage", host=OTHER_HOST)
        self.assertEqual(self.batches, [])
        self.assertEqual(self.receiver.datagrams, 0)
        self.assertEqual(self.receiver.loss.malformed, 0)

    def test_any_host_without_allowed_host(self) -> None:
        receiver = DatagramPacketReceiver(self.batches.append)
        receiver.datagramReceived(packet_messages([(1, 0, ICMP_PACKET)])[0], (OTHER_HOST, 1))
        self.assertEqual(self.delivered(), captured([(1, 0, ICMP_PACKET)]))

    def test_garbage_counted_malformed(self) -> None:
        """Datagrams that are no packets are counted and skipped."""
        self.send(
            b"",
            b"hello",
            StatsReply(0, 0, 0, 0).encode(),
            frame(MessageType.PACKET, b"\0" * 10),
            b"\x00\x6e\x00",
        )
        self.assertEqual(self.batches, [])
        self.assertEqual(self.receiver.loss.malformed, 5)
        self.send(*packet_messages([(1, 0, ICMP_PACKET)]))
        self.assertEqual(self.delivered(), captured([(1, 0, ICMP_PACKET)]))


class CompileFilterTests(SynchronousTestCase):
    def test_empty_accepts_everything(self) -> None:
        """No filter gives one instruction, `ret #snaplen`: some servers refuse an empty program."""
        for expression in ("", "   "):
            program = compile_filter(expression, DLT_EN10MB, 1500)
            self.assertEqual(program, BpfProgram.from_tuples([(6, 0, 0, 1500)]))

    def test_as_tcpdump_compiles_it(self) -> None:
        """`icmp` becomes tcpdump's own program for the link type."""
        self.assertEqual(compile_filter("icmp", DLT_EN10MB, SNAPLEN), ICMP_FILTER)

    def test_as_pcapy_compiles_it(self) -> None:
        for expression in ("icmp", "tcp port 80", "host 192.0.2.1 and not arp"):
            expected = pcapy.compile(DLT_EN10MB, 96, expression, 1, 0xFFFFFFFF)
            self.assertEqual(
                compile_filter(expression, DLT_EN10MB, 96),
                BpfProgram.from_tuples([tuple(i) for i in expected.get_bpf()]),
            )

    def test_for_the_remote_link_type(self) -> None:
        """The same expression compiles differently for a Linux cooked capture."""
        self.assertNotEqual(compile_filter("icmp", DLT_LINUX_SLL, SNAPLEN), ICMP_FILTER)

    def test_bad_expression(self) -> None:
        with self.assertRaises(ValueError) as caught:
            compile_filter("tcp port eighty", DLT_EN10MB, SNAPLEN)
        self.assertIn("tcp port eighty", str(caught.exception))


class BoundsTests(SynchronousTestCase):
    """Nothing a daemon sends on the control connection is kept without bound."""

    def test_unsolicited_errors_end_the_session(self) -> None:
        """
        Errors that answer no request are kept up to L{MAX_UNEXPECTED}; one
        more ends the session, saying why, and the rest is not read.
        """
        proto, transport = connected_client()
        flood = ErrorReply(ErrorCode.READEX, "late\n\x1b[2J").encode()
        proto.dataReceived(flood * MAX_UNEXPECTED)
        self.assertTrue(transport.connected)
        self.assertEqual(len(proto.errors), MAX_UNEXPECTED)
        proto.dataReceived(flood * 1000)
        self.assertFalse(transport.connected)
        self.assertEqual(len(proto.errors), MAX_UNEXPECTED)
        self.assertEqual(
            proto.broken,
            f"it sent {MAX_UNEXPECTED + 1} messages that answer no request (the last: error 9: late\\n\\x1b[2J)",
        )
        self.failureResultOf(proto.stats(), ConnectionDone)

    def test_unasked_replies_end_the_session(self) -> None:
        """Replies nobody asked for count the same way."""
        proto, transport = connected_client()
        proto.dataReceived(StatsReply(9, 9, 9, 9).encode() * (MAX_UNEXPECTED + 1))
        self.assertFalse(transport.connected)
        self.assertIn("answer no request (the last: a stats reply)", str(proto.broken))

    def test_oversized_error_refused_at_its_header(self) -> None:
        """A 1 MB error message is refused from its header alone: not one byte of it is buffered."""
        proto, transport = connected_client()
        proto.dataReceived(struct.pack("!BBHI", 0, MessageType.ERROR, 9, 1 << 20) + b"x" * 4096)
        self.assertFalse(transport.connected)
        self.assertEqual(proto.parser.buffered, 0)
        self.assertEqual(proto.broken, "it sent an oversized error message (1048576 bytes; 65536 at most)")
        self.assertEqual(proto.errors, [])

    def test_oversized_small_reply_refused(self) -> None:
        """A stats reply of 5000 bytes (it holds 16) is refused from its header."""
        proto, transport = connected_client()
        d = proto.stats()
        proto.dataReceived(struct.pack("!BBHI", 0, MessageType.STATS_REPLY, 0, 5000))
        self.failureResultOf(d, ProtocolBroken)
        self.assertFalse(transport.connected)

    def test_nothing_read_after_the_end(self) -> None:
        """Once the session has ended for a broken protocol, what else comes is not looked at."""
        proto, _ = connected_client()
        proto.dataReceived(struct.pack("!BBHI", 0, MessageType.ERROR, 9, 1 << 20))
        broken = proto.broken
        proto.dataReceived(ErrorReply(1, "more").encode() * 100)
        self.assertEqual(proto.broken, broken)
        self.assertEqual(proto.errors, [])

    def test_negative_link_type_refused(self) -> None:
        """An open reply with a link type no capture file can hold fails the open."""
        for linktype in (-5, 0x10000):
            proto, _ = connected_client()
            d = proto.open("eth0")
            proto.dataReceived(OpenReply(linktype, 0).encode())
            failure = self.failureResultOf(d, ProtocolBroken)
            self.assertIn(f"link type {linktype}, which is no link type", str(failure.value))
