"""
Tests for the RPCAP control session, driven through L{RpcapServerFactory}
over in-memory transports: requests are built with the wire codec, replies
parsed back with L{ControlStreamParser}.  No sockets, no real capture.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcapsvc.protocol.datachannel import BATCH_RECORD, PacketBatch
from rpcapsvc.protocol.wire import (
    BYTE_ORDER_MAGIC,
    HEADER,
    AuthReply,
    AuthRequest,
    BpfProgram,
    CloseRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    InterfaceInfo,
    Message,
    OpenReply,
    OpenRequest,
    SamplingMethod,
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
from rpcapsvc.server.session import (
    REQUESTS,
    TRANSITIONS,
    IllegalTransition,
    ServerSession,
    SessionPolicy,
    SessionState,
)
from rpcapsvc.testing import FakeCaptureHandle, FakeCaptureSystem, FakeDataChannels, HeldRunner, RecordingSink

from ._fixtures import (
    ETH0,
    ICMP_FILTER,
    ICMP_PACKET,
    JUMP_PAST_END,
    LO,
    LOCAL_HOST,
    NO_RETURN,
    PEER_HOST,
    UDP_FILTER,
    UDP_PACKET,
    Client,
    ether_ipv4_between,
)


def packets_of(batches: list[PacketBatch]) -> list[tuple[int, int, bytes]]:
    """Every packet in C{batches}, as C{(sec, usec, bytes)}."""
    out = []
    for batch in batches:
        for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records):
            out.append((sec, usec, batch.data[off : off + length]))
    return out


@implementer(ICredentialsChecker)
class SlowChecker:
    """A password checker whose answer the test gives later."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: Deferred[bytes] = Deferred()

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        return self.pending


class SessionTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem([LO, ETH0])
        self.channels = FakeDataChannels()
        self.factory = self.make_factory()
        system = self.system
        self.addCleanup(lambda: [h.close() for h in system.handles])

    def make_factory(self, **policy: Any) -> RpcapServerFactory:
        policy.setdefault("null_auth", True)
        return RpcapServerFactory(
            reactor=self.reactor,
            capture_system=self.system,
            policy=SessionPolicy(**policy),
            data_channels=self.channels,  # type: ignore[arg-type]
        )

    def connect(self, factory: RpcapServerFactory | None = None) -> Client:
        return Client(factory or self.factory)

    def assertError(self, message: Message | None, code: int) -> ErrorReply:
        self.assertIsInstance(message, ErrorReply)
        assert isinstance(message, ErrorReply)
        self.assertEqual(message.code, code, message.text)
        return message

    def authed(self, factory: RpcapServerFactory | None = None) -> Client:
        client = self.connect(factory)
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        return client

    def opened(self, device: str = "eth0") -> Client:
        client = self.authed()
        self.assertEqual(client.request(OpenRequest(device)), OpenReply(1, 0))
        return client

    def capturing(
        self,
        flags: int = StartCapFlags.DGRAM,
        filter: BpfProgram | None = None,
        snaplen: int = 65535,
        portdata: int = 2003,
    ) -> tuple[Client, FakeCaptureHandle, RecordingSink]:
        """A session capturing on eth0 into a ready sink (UDP by default: no waiting)."""
        client = self.opened()
        reply = client.request(StartCaptureRequest(snaplen, 1000, flags, portdata, filter))
        self.assertIsInstance(reply, StartCaptureReply)
        return client, self.system.handles[-1], self.channels.sinks[-1]

    def reader(self, sink: RecordingSink) -> Any:
        self.assertIsNotNone(sink.producer)
        return sink.producer


class AuthTests(SessionTestBase):
    def test_null_auth_accepted(self) -> None:
        """
        With null auth allowed, a null auth request gets an auth reply with
        version 0 and the byte-order magic in the server's byte order.
        """
        client = self.connect()
        client.send(AuthRequest(0))
        [received] = client.received()
        self.assertEqual(received.message, AuthReply(0, 0, BYTE_ORDER_MAGIC))
        self.assertEqual(received.header.version, 0)
        self.assertEqual(client.session.state, SessionState.READY)

    def test_null_auth_refused_after_delay(self) -> None:
        """
        Null auth when not allowed is refused with AUTH_FAILED, but only
        after the failed-login delay; the session stays open.
        """
        client = self.connect(self.make_factory(null_auth=False))
        client.send(AuthRequest(0))
        self.assertEqual(client.replies(), [])
        self.reactor.advance(0.999)
        self.assertEqual(client.replies(), [])
        self.reactor.advance(0.001)
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.AUTH_FAILED)
        self.assertTrue(client.connected)
        self.assertEqual(client.session.state, SessionState.AUTHENTICATING)

    def test_retry_after_refused_auth(self) -> None:
        """After a refused login the client may try again and succeed."""
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        client = self.connect(self.make_factory(null_auth=False, checkers=[checker]))
        client.send(AuthRequest(0))
        self.reactor.advance(1)
        self.assertError(client.replies()[0], ErrorCode.AUTH_FAILED)
        self.assertIsInstance(client.request(AuthRequest(1, b"alice", b"secret")), AuthReply)
        self.assertEqual(client.session.user, b"alice")

    def test_requests_wait_behind_delayed_refusal(self) -> None:
        """
        Requests pipelined behind a refused login are answered after it, in
        order, and reading pauses meanwhile.
        """
        client = self.connect(self.make_factory(null_auth=False))
        client.send(AuthRequest(0), FindAllInterfacesRequest())
        self.assertEqual(client.replies(), [])
        self.assertEqual(client.transport.producerState, "paused")
        self.reactor.advance(1)
        first, second = client.replies()
        self.assertError(first, ErrorCode.AUTH_FAILED)
        self.assertError(second, ErrorCode.WRONGMSG)
        self.assertEqual(client.transport.producerState, "producing")

    def test_unsupported_auth_type(self) -> None:
        """An auth type other than null and password is refused with code 20."""
        client = self.connect()
        self.assertError(client.request(AuthRequest(2)), ErrorCode.AUTH_TYPE_NOTSUP)
        self.assertTrue(client.connected)
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)

    def test_password_auth_right_password(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        client = self.connect(self.make_factory(null_auth=False, checkers=[checker]))
        self.assertIsInstance(client.request(AuthRequest(1, b"alice", b"secret")), AuthReply)
        self.assertEqual(client.session.state, SessionState.READY)

    def test_password_auth_wrong_password(self) -> None:
        """A wrong password is refused with code 18 after the delay."""
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        client = self.connect(self.make_factory(null_auth=False, checkers=[checker]))
        client.send(AuthRequest(1, b"alice", b"guess"))
        self.assertEqual(client.replies(), [])
        self.reactor.advance(1)
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.AUTH_FAILED)
        self.assertTrue(client.connected)
        # Nothing else was authorised by the failed attempt.
        self.assertError(client.request(FindAllInterfacesRequest()), ErrorCode.WRONGMSG)

    def test_password_auth_unknown_user(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        client = self.connect(self.make_factory(null_auth=False, checkers=[checker]))
        client.send(AuthRequest(1, b"mallory", b"secret"))
        self.reactor.advance(1)
        self.assertError(client.replies()[0], ErrorCode.AUTH_FAILED)

    def test_password_auth_without_checkers(self) -> None:
        """With no password database, password logins fail (after the delay)."""
        client = self.connect()
        client.send(AuthRequest(1, b"alice", b"secret"))
        self.assertEqual(client.replies(), [])
        self.reactor.advance(1)
        self.assertError(client.replies()[0], ErrorCode.AUTH_FAILED)

    def test_requests_before_auth_refused(self) -> None:
        """Any other request before auth gets WRONGMSG; the session stays open."""
        client = self.connect()
        for request in (
            FindAllInterfacesRequest(),
            OpenRequest("eth0"),
            StartCaptureRequest(100, 1000, 0, 0),
            StatsRequest(),
            EndCaptureRequest(),
            SetSamplingRequest(0, 0),
            UpdateFilterRequest(ICMP_FILTER),
        ):
            self.assertError(client.request(request), ErrorCode.WRONGMSG)
        self.assertTrue(client.connected)
        self.assertEqual(self.system.handles, [])
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)

    def test_second_auth_refused(self) -> None:
        client = self.authed()
        self.assertError(client.request(AuthRequest(0)), ErrorCode.WRONGMSG)
        self.assertTrue(client.connected)

    def test_auth_timeout_default(self) -> None:
        """A session not authenticated within 10 s gets error 2 and is dropped."""
        client = self.connect()
        self.reactor.advance(9.9)
        self.assertEqual(client.replies(), [])
        self.assertTrue(client.connected)
        self.reactor.advance(0.1)
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.INITTIMEOUT)
        self.assertFalse(client.connected)
        self.assertNotIn(client.protocol, self.factory.sessions)

    def test_auth_timeout_configurable(self) -> None:
        client = self.connect(self.make_factory(auth_timeout=5))
        self.reactor.advance(4.9)
        self.assertTrue(client.connected)
        self.reactor.advance(0.1)
        self.assertError(client.replies()[0], ErrorCode.INITTIMEOUT)
        self.assertFalse(client.connected)

    def test_auth_timeout_not_reset_by_failed_logins(self) -> None:
        client = self.connect(self.make_factory(null_auth=False, auth_timeout=5))
        for _ in range(4):
            client.send(AuthRequest(0))
            self.reactor.advance(1)
        self.reactor.advance(1)
        codes = [r.code for r in client.replies()]  # type: ignore[union-attr]
        self.assertEqual(codes[-1], ErrorCode.INITTIMEOUT)
        self.assertFalse(client.connected)

    def test_slow_login_success_after_timeout(self) -> None:
        """
        A login check still running when the session times out does not
        revive the session or answer the client once it completes.
        """
        checker = SlowChecker()
        client = self.connect(self.make_factory(null_auth=False, checkers=[checker], auth_timeout=5))
        client.send(AuthRequest(1, b"alice", b"secret"))
        self.reactor.advance(5)
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.INITTIMEOUT)
        self.assertFalse(client.connected)
        checker.pending.callback(b"alice")
        self.assertEqual(client.replies(), [])
        self.assertEqual(client.session.state, SessionState.CLOSED)
        self.assertIsNone(client.session.user)

    def test_slow_login_success_after_connection_lost(self) -> None:
        checker = SlowChecker()
        client = self.connect(self.make_factory(null_auth=False, checkers=[checker]))
        client.send(AuthRequest(1, b"alice", b"secret"))
        self.assertEqual(client.transport.producerState, "paused")
        client.transport.loseConnection()
        checker.pending.callback(b"alice")
        self.assertEqual(client.replies(), [])
        self.assertEqual(client.session.state, SessionState.CLOSED)

    def test_no_timeout_after_auth(self) -> None:
        client = self.authed(self.make_factory(idle_timeout=0))
        self.reactor.advance(1000)
        self.assertEqual(client.replies(), [])
        self.assertTrue(client.connected)


class FindAllDevsTests(SessionTestBase):
    def test_lists_interfaces(self) -> None:
        client = self.authed()
        client.send(FindAllInterfacesRequest())
        [received] = client.received()
        self.assertEqual(received.header.value, 2)
        self.assertEqual(received.message, FindAllInterfacesReply((LO, ETH0)))

    def test_preselected_listed_first(self) -> None:
        """
        The preselected interface comes first, its description suffixed with
        ";preselected" (it had none here).
        """
        self.system.interfaces = [ETH0, LO]
        client = self.authed(self.make_factory(preselected_interface="lo"))
        client.send(FindAllInterfacesRequest())
        [received] = client.received()
        self.assertEqual(received.header.value, 2)
        assert isinstance(received.message, FindAllInterfacesReply)
        names = [(i.name, i.description) for i in received.message.interfaces]
        self.assertEqual(names, [("lo", ";preselected"), ("eth0", "Ethernet adapter")])
        self.assertEqual(received.message.interfaces[0].addresses, LO.addresses)

    def test_preselected_with_description(self) -> None:
        client = self.authed(self.make_factory(preselected_interface="eth0"))
        reply = client.request(FindAllInterfacesRequest())
        assert isinstance(reply, FindAllInterfacesReply)
        self.assertEqual(
            [(i.name, i.description) for i in reply.interfaces],
            [("eth0", "Ethernet adapter ;preselected"), ("lo", "")],
        )

    def test_preselected_only_one_may_be_opened(self) -> None:
        client = self.authed(self.make_factory(preselected_interface="lo"))
        self.assertError(client.request(OpenRequest("eth0")), ErrorCode.OPEN)
        self.assertEqual(client.request(OpenRequest("lo")), OpenReply(1, 0))

    def test_per_factory_interface_overrides_policy(self) -> None:
        factory = RpcapServerFactory(
            self.reactor,
            self.system,
            SessionPolicy(null_auth=True, preselected_interface="lo"),
            data_channels=self.channels,  # type: ignore[arg-type]
            interface="eth0",
        )
        client = self.authed(factory)
        self.assertError(client.request(OpenRequest("lo")), ErrorCode.OPEN)
        self.assertIsInstance(client.request(OpenRequest("eth0")), OpenReply)

    def test_no_interfaces(self) -> None:
        self.system.interfaces = []
        client = self.authed()
        self.assertError(client.request(FindAllInterfacesRequest()), ErrorCode.NOREMOTEIF)
        self.assertTrue(client.connected)


class OpenTests(SessionTestBase):
    def test_open_known_interface(self) -> None:
        self.system.linktype = 113
        client = self.authed()
        self.assertEqual(client.request(OpenRequest("eth0")), OpenReply(113, 0))
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertEqual(client.session.device, "eth0")

    def test_open_refuses_non_interfaces(self) -> None:
        """URLs, paths, pcap files, empty and unknown names are refused; the session goes on."""
        # Even were the OS to list such names, they are never opened.
        self.system.interfaces = [
            LO,
            ETH0,
            InterfaceInfo("rpcap://1.2.3.4/eth0"),
            InterfaceInfo("/etc/passwd"),
        ]
        client = self.authed()
        for name in ("rpcap://1.2.3.4/eth0", "/etc/passwd", "file.pcap", "", "eth1", "lo\0x"):
            self.assertError(client.request(OpenRequest(name)), ErrorCode.OPEN)
            self.assertEqual(client.session.state, SessionState.READY)
        self.assertTrue(client.connected)
        self.assertEqual(client.request(OpenRequest("lo")), OpenReply(1, 0))

    def test_open_failure_reported(self) -> None:
        self.system.refuse_open = "permission denied"
        client = self.authed()
        reply = self.assertError(client.request(OpenRequest("eth0")), ErrorCode.OPEN)
        self.assertIn("permission denied", reply.text)

    def test_open_while_capturing_refused(self) -> None:
        client, handle, _ = self.capturing()
        self.assertError(client.request(OpenRequest("lo")), ErrorCode.OPEN)
        self.assertFalse(handle.closed)


class StartCaptureTests(SessionTestBase):
    def test_passive_tcp(self) -> None:
        """
        Without UDP or SERVEROPEN, the server listens for the data
        connection on its own address for the peer and puts the port in the
        reply; nothing is read until the client connects.
        """
        client = self.opened()
        reply = client.request(StartCaptureRequest(1500, 1000, StartCapFlags.PROMISC, 0))
        self.assertEqual(self.channels.requests, [("listen", LOCAL_HOST, PEER_HOST)])
        self.assertEqual(reply, StartCaptureReply(2 * 1024 * 1024, 40001))
        self.assertEqual(client.session.state, SessionState.STARTING)  # waiting for the data connection
        [handle] = self.system.handles
        self.assertTrue(handle.options.promiscuous)
        handle.inject([(1, 2, ICMP_PACKET)])
        self.assertEqual(self.reactor.readers, set())
        [sink] = self.channels.sinks
        self.assertIsNone(sink.producer)

        self.channels.pending[-1].callback(None)
        self.assertEqual(client.session.state, SessionState.CAPTURING)
        reader = self.reader(sink)
        self.assertIn(reader, self.reactor.readers)
        self.assertEqual(reader.fileno(), handle.fileno())
        reader.doRead()
        handle.inject([(3, 4, UDP_PACKET)])
        reader.doRead()
        self.assertEqual(packets_of(sink.batches), [(1, 2, ICMP_PACKET), (3, 4, UDP_PACKET)])
        self.assertEqual(sink.snaplen, 1500)

    def test_passive_tcp_accept_failure(self) -> None:
        """If the client never opens the data connection, it is told and the capture ends."""
        client = self.opened()
        client.request(StartCaptureRequest(1500, 1000, 0, 0))
        self.channels.pending[-1].errback(TimeoutError("the client did not open the data connection"))
        reply = self.assertError(client.replies()[0], ErrorCode.STARTCAPTURE)
        self.assertIn("did not open", reply.text)
        self.assertTrue(self.system.handles[-1].closed)
        self.assertEqual(client.session.state, SessionState.OPEN)

    def test_passive_tcp_endcap_before_connection(self) -> None:
        client = self.opened()
        client.request(StartCaptureRequest(1500, 1000, 0, 0))
        self.assertEqual(client.request(EndCaptureRequest()), EndCaptureReply())
        self.assertTrue(self.channels.pending[-1].called)
        self.assertTrue(self.system.handles[-1].closed)
        self.assertEqual(self.reactor.readers, set())
        self.assertEqual(client.replies(), [])

    def test_udp(self) -> None:
        """The UDP flag sends datagrams to the peer's address at portdata."""
        client = self.opened()
        reply = client.request(StartCaptureRequest(96, 1000, StartCapFlags.DGRAM, 0x1234))
        self.assertEqual(self.channels.requests, [("udp", PEER_HOST, str(0x1234))])
        self.assertEqual(reply, StartCaptureReply(2 * 1024 * 1024, 50000))
        [handle] = self.system.handles
        [sink] = self.channels.sinks
        self.assertEqual(sink.snaplen, 96)
        reader = self.reader(sink)
        self.assertIn(reader, self.reactor.readers)
        handle.inject([(1, 0, UDP_PACKET)])
        reader.doRead()
        self.assertEqual(packets_of(sink.batches), [(1, 0, UDP_PACKET)])

    def test_server_opens_tcp(self) -> None:
        """SERVEROPEN makes the server connect to the peer at portdata."""
        client = self.opened()
        reply = client.request(StartCaptureRequest(65535, 1000, StartCapFlags.SERVEROPEN, 2003))
        self.assertEqual(self.channels.requests, [("connect", PEER_HOST, "2003")])
        self.assertEqual(reply, StartCaptureReply(2 * 1024 * 1024, 2003))
        [handle] = self.system.handles
        reader = self.reader(self.channels.sinks[-1])
        self.assertIn(reader, self.reactor.readers)
        handle.inject([(5, 6, ICMP_PACKET)])
        reader.doRead()
        self.assertEqual(packets_of(self.channels.sinks[-1].batches), [(5, 6, ICMP_PACKET)])

    def test_active_mode_connects(self) -> None:
        """A session on a connection we made (active mode) connects for data."""
        factory = RpcapServerFactory(
            self.reactor,
            self.system,
            SessionPolicy(null_auth=True),
            data_channels=self.channels,  # type: ignore[arg-type]
            active=True,
        )
        client = self.authed(factory)
        client.request(OpenRequest("eth0"))
        reply = client.request(StartCaptureRequest(65535, 1000, 0, 2003))
        self.assertEqual(self.channels.requests, [("connect", PEER_HOST, "2003")])
        self.assertIsInstance(reply, StartCaptureReply)

    def test_server_opens_tcp_failure(self) -> None:
        self.channels.fail_connect = ConnectionRefusedError("connection refused")
        client = self.opened()
        reply = self.assertError(
            client.request(StartCaptureRequest(65535, 1000, StartCapFlags.SERVEROPEN, 2003)),
            ErrorCode.STARTCAPTURE,
        )
        self.assertIn("connection refused", reply.text)
        self.assertTrue(self.system.handles[-1].closed)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertEqual(self.reactor.readers, set())

    def test_with_filter(self) -> None:
        """A capture started with a filter delivers only matching packets."""
        client, handle, sink = self.capturing(filter=ICMP_FILTER)
        # The client's program runs last, behind the one that drops the session's own traffic.
        assert handle.filter is not None
        self.assertEqual(
            handle.filter.instructions[-len(ICMP_FILTER.instructions) :], ICMP_FILTER.instructions
        )
        handle.inject([(1, 0, UDP_PACKET), (2, 0, ICMP_PACKET), (3, 0, UDP_PACKET), (4, 0, ICMP_PACKET)])
        self.reader(sink).doRead()
        self.assertEqual(packets_of(sink.batches), [(2, 0, ICMP_PACKET), (4, 0, ICMP_PACKET)])

    def test_empty_filter_captures_everything(self) -> None:
        client, handle, sink = self.capturing(filter=BpfProgram(()))
        handle.inject([(1, 0, UDP_PACKET), (2, 0, ICMP_PACKET)])
        self.reader(sink).doRead()
        self.assertEqual(len(packets_of(sink.batches)), 2)

    def test_libpcap_short_length_quirk(self) -> None:
        """
        libpcap's client computes plen without its default one-instruction
        filter; the server still reads the whole request and the next one.
        """
        client = self.opened()
        request = StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003, bpf_accept_all())
        encoded = request.encode()
        version, mtype, value, plen = HEADER.unpack_from(encoded)
        short = HEADER.pack(version, mtype, value, plen - 8) + encoded[8:]
        client.send(short + FindAllInterfacesRequest().encode())
        first, second = client.replies()
        self.assertIsInstance(first, StartCaptureReply)
        self.assertIsInstance(second, FindAllInterfacesReply)

    def test_invalid_filter(self) -> None:
        """An invalid program is refused with code 12 and nothing is captured."""
        client = self.opened()
        for program in (JUMP_PAST_END, NO_RETURN):
            reply = client.request(StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003, program))
            self.assertError(reply, ErrorCode.STARTCAPTURE)
        self.assertEqual(self.system.handles, [])
        self.assertEqual(self.channels.requests, [])
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertIsInstance(client.request(StartCaptureRequest(65535, 1000, 2, 2003)), StartCaptureReply)

    def test_before_open(self) -> None:
        client = self.authed()
        self.assertError(client.request(StartCaptureRequest(65535, 1000, 2, 2003)), ErrorCode.STARTCAPTURE)
        self.assertEqual(self.system.handles, [])
        self.assertTrue(client.connected)

    def test_twice(self) -> None:
        client, handle, sink = self.capturing()
        self.assertError(client.request(StartCaptureRequest(65535, 1000, 2, 2003)), ErrorCode.STARTCAPTURE)
        self.assertEqual(len(self.system.handles), 1)
        self.assertFalse(handle.closed)
        self.assertIn(self.reader(sink), self.reactor.readers)

    def test_capture_open_failure(self) -> None:
        client = self.opened()
        self.system.refuse_open = "That device is not up"
        reply = self.assertError(
            client.request(StartCaptureRequest(65535, 1000, 2, 2003)), ErrorCode.STARTCAPTURE
        )
        self.assertIn("not up", reply.text)
        self.assertEqual(client.session.state, SessionState.OPEN)

    def test_snaplen(self) -> None:
        """The client's snaplen reaches the sink; 0 or an excessive one means the maximum."""
        client, _, sink = self.capturing(snaplen=128)
        self.assertEqual(sink.snaplen, 128)
        for snaplen in (0, 262145):
            client.request(EndCaptureRequest())
            client.request(StartCaptureRequest(snaplen, 1000, StartCapFlags.DGRAM, 2003))
            self.assertEqual(self.channels.sinks[-1].snaplen, 262144)
            self.assertEqual(self.system.handles[-1].options.snaplen, 262144)

    def test_direction_flags(self) -> None:
        _, handle, _ = self.capturing(flags=StartCapFlags.DGRAM | StartCapFlags.INBOUND)
        self.assertEqual(handle.options.direction.value, "in")
        self.assertFalse(handle.options.promiscuous)


def bpf_accept_all() -> BpfProgram:
    return BpfProgram.from_tuples([(6, 0, 0, 65535)])


class UpdateFilterTests(SessionTestBase):
    def test_switches_delivery(self) -> None:
        client, handle, sink = self.capturing()
        reader = self.reader(sink)
        handle.inject([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        reader.doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [1, 2])

        self.assertEqual(client.request(UpdateFilterRequest(ICMP_FILTER)), UpdateFilterReply())
        handle.inject([(3, 0, ICMP_PACKET), (4, 0, UDP_PACKET)])
        reader.doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [1, 2, 3])

        self.assertEqual(client.request(UpdateFilterRequest(UDP_FILTER)), UpdateFilterReply())
        handle.inject([(5, 0, ICMP_PACKET), (6, 0, UDP_PACKET)])
        reader.doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [1, 2, 3, 6])

        # An empty program lifts the filter.
        self.assertEqual(client.request(UpdateFilterRequest(BpfProgram(()))), UpdateFilterReply())
        handle.inject([(7, 0, ICMP_PACKET), (8, 0, UDP_PACKET)])
        reader.doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [1, 2, 3, 6, 7, 8])

    def test_without_capture(self) -> None:
        client = self.opened()
        self.assertError(client.request(UpdateFilterRequest(ICMP_FILTER)), ErrorCode.UPDATEFILTER)
        self.assertTrue(client.connected)

    def test_invalid_program(self) -> None:
        """An invalid program is refused with code 7 and the old filter stays."""
        client, handle, sink = self.capturing(filter=ICMP_FILTER)
        placed = handle.filter
        self.assertError(client.request(UpdateFilterRequest(JUMP_PAST_END)), ErrorCode.UPDATEFILTER)
        self.assertEqual(handle.filter, placed)
        handle.inject([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        self.reader(sink).doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [1])
        self.assertEqual(client.session.state, SessionState.CAPTURING)


class StatsTests(SessionTestBase):
    def test_stats(self) -> None:
        client, handle, sink = self.capturing(filter=ICMP_FILTER)
        handle.inject([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, ICMP_PACKET)])
        self.reader(sink).doRead()
        handle.dropped = 5
        sink.dropped = 3  # datagrams the UDP channel could not send
        sink.sent -= 1
        self.assertEqual(client.request(StatsRequest()), StatsReply(3, 0, 8, 1))

    def test_stats_before_capture(self) -> None:
        client = self.opened()
        self.assertEqual(client.request(StatsRequest()), StatsReply(0, 0, 0, 0))

    def test_stats_after_endcap(self) -> None:
        """After endcap the client still learns the final counts."""
        client, handle, sink = self.capturing()
        handle.inject([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        self.reader(sink).doRead()
        client.request(EndCaptureRequest())
        self.assertEqual(client.request(StatsRequest()), StatsReply(2, 0, 0, 2))


class EndCaptureTests(SessionTestBase):
    def test_endcap(self) -> None:
        client, handle, sink = self.capturing()
        reader = self.reader(sink)
        self.assertEqual(client.request(EndCaptureRequest()), EndCaptureReply())
        self.assertTrue(handle.closed)
        self.assertTrue(sink.closed)
        self.assertNotIn(reader, self.reactor.readers)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertTrue(client.connected)

    def test_a_close_that_fails_is_logged_once_and_the_session_goes_on(self) -> None:
        """A fault in closing a capture is ours: logged, never an unhandled error; the client's endcap is answered."""
        client, handle, sink = self.capturing()

        real_close = handle.close

        def broken_close() -> None:
            handle.close = real_close  # type: ignore[method-assign]  # once: the test's cleanup closes it
            raise RuntimeError("close failed")

        handle.close = broken_close  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.assertEqual(client.request(EndCaptureRequest()), EndCaptureReply())
        failed = [formatEvent(e) for e in events if "closing the capture failed" in e.get("log_format", "")]
        self.assertEqual(len(failed), 1, failed)
        self.assertTrue(failed[0].endswith(" closing the capture failed: RuntimeError: close failed"), failed)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertIsInstance(
            client.request(StartCaptureRequest(100, 1000, StartCapFlags.DGRAM, 2003)), StartCaptureReply
        )

    def test_endcap_without_capture(self) -> None:
        client = self.opened()
        self.assertError(client.request(EndCaptureRequest()), ErrorCode.ENDCAPTURE)
        self.assertTrue(client.connected)

    def test_startcap_after_endcap(self) -> None:
        client, first, _ = self.capturing()
        client.request(EndCaptureRequest())
        reply = client.request(StartCaptureRequest(100, 1000, StartCapFlags.DGRAM, 2003))
        self.assertIsInstance(reply, StartCaptureReply)
        self.assertEqual(len(self.system.handles), 2)
        second = self.system.handles[-1]
        self.assertIsNot(second, first)
        sink = self.channels.sinks[-1]
        self.assertEqual(self.reactor.readers, {self.reader(sink)})
        second.inject([(9, 9, ICMP_PACKET)])
        self.reader(sink).doRead()
        self.assertEqual(packets_of(sink.batches), [(9, 9, ICMP_PACKET)])


class SamplingTests(SessionTestBase):
    def test_setsampling(self) -> None:
        client = self.opened()
        self.assertEqual(client.request(SetSamplingRequest(1, 10)), SetSamplingReply())
        self.assertEqual(client.session.sampling, SetSamplingRequest(SamplingMethod.EVERY_N, 10))

    def test_unknown_method(self) -> None:
        client = self.opened()
        self.assertError(client.request(SetSamplingRequest(3, 10)), ErrorCode.SETSAMPLING)
        self.assertEqual(client.session.sampling.method, SamplingMethod.NONE)
        self.assertTrue(client.connected)


class CloseTests(SessionTestBase):
    def test_close_request(self) -> None:
        """Close ends the session without a reply and releases the capture."""
        client, handle, sink = self.capturing()
        reader = self.reader(sink)
        client.send(CloseRequest())
        self.assertEqual(client.replies(), [])
        self.assertFalse(client.connected)
        self.assertTrue(handle.closed)
        self.assertTrue(sink.closed)
        self.assertNotIn(reader, self.reactor.readers)
        self.assertEqual(client.session.state, SessionState.CLOSED)
        self.assertEqual(self.factory.sessions, set())

    def test_requests_after_close_ignored(self) -> None:
        client = self.opened()
        client.send(CloseRequest().encode() + FindAllInterfacesRequest().encode())
        self.assertEqual(client.replies(), [])

    def test_connection_lost_mid_capture(self) -> None:
        client, handle, sink = self.capturing()
        reader = self.reader(sink)
        client.transport.connected = False  # type: ignore[attr-defined]
        client.protocol.connectionLost(Failure(ConnectionLost("peer reset")))
        self.assertTrue(handle.closed)
        self.assertTrue(sink.closed)
        self.assertNotIn(reader, self.reactor.readers)
        self.assertEqual(self.factory.sessions, set())

    def test_connection_lost_during_failed_auth_delay(self) -> None:
        client = self.connect(self.make_factory(null_auth=False))
        client.send(AuthRequest(0))
        client.transport.connected = False  # type: ignore[attr-defined]
        client.protocol.connectionLost(Failure(ConnectionLost("peer reset")))
        self.reactor.advance(1)
        self.assertEqual(client.replies(), [])


class GarbageTests(SessionTestBase):
    def test_oversized_message(self) -> None:
        client = self.authed()
        limit = self.factory.policy.max_message_size
        client.send(HEADER.pack(0, 3, 0, limit + 1))
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.WRONGMSG)
        self.assertFalse(client.connected)

    def test_oversized_message_before_auth(self) -> None:
        factory = RpcapServerFactory(
            self.reactor,
            self.system,
            SessionPolicy(null_auth=True, max_message_size=100),
            data_channels=self.channels,  # type: ignore[arg-type]
        )
        client = self.connect(factory)
        client.send(HEADER.pack(0, 8, 0, 101))
        self.assertIsInstance(client.replies()[0], ErrorReply)
        self.assertFalse(client.connected)

    def test_wrong_version(self) -> None:
        client = self.authed()
        client.send(HEADER.pack(1, 2, 0, 0))
        self.assertError(client.replies()[0], ErrorCode.WRONGVER)
        self.assertTrue(client.connected)
        self.assertIsInstance(client.request(FindAllInterfacesRequest()), FindAllInterfacesReply)

    def test_wrong_version_auth(self) -> None:
        client = self.connect()
        client.send(HEADER.pack(1, 8, 0, 8) + b"\0" * 8)
        self.assertError(client.replies()[0], ErrorCode.WRONGVER)
        self.assertEqual(client.session.state, SessionState.AUTHENTICATING)

    def test_unknown_type(self) -> None:
        client = self.authed()
        self.assertError(client.request(frame(99, b"junk")), ErrorCode.WRONGMSG)
        self.assertTrue(client.connected)
        self.assertIsInstance(client.request(FindAllInterfacesRequest()), FindAllInterfacesReply)

    def test_reply_type_from_client(self) -> None:
        client = self.authed()
        self.assertError(client.request(frame(0x82)), ErrorCode.WRONGMSG)
        self.assertError(client.request(OpenReply(1, 0)), ErrorCode.WRONGMSG)
        self.assertTrue(client.connected)
        self.assertIsInstance(client.request(FindAllInterfacesRequest()), FindAllInterfacesReply)

    def test_truncated_startcap(self) -> None:
        client = self.opened()
        self.assertError(client.request(frame(4, b"\0\0\0\1\0")), ErrorCode.STARTCAPTURE)
        self.assertEqual(self.system.handles, [])
        self.assertTrue(client.connected)
        self.assertIsInstance(client.request(StartCaptureRequest(100, 1000, 2, 2003)), StartCaptureReply)

    def test_truncated_auth(self) -> None:
        client = self.connect()
        self.assertError(client.request(frame(8, b"\0\1")), ErrorCode.AUTH)
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)

    def test_bytes_in_pieces(self) -> None:
        """Requests split across reads are answered once they are whole."""
        client = self.connect()
        data = AuthRequest(0).encode() + FindAllInterfacesRequest().encode()
        for i in range(len(data)):
            client.send(data[i : i + 1])
        first, second = client.replies()
        self.assertIsInstance(first, AuthReply)
        self.assertIsInstance(second, FindAllInterfacesReply)

    def test_sessions_are_independent(self) -> None:
        """One session's errors, capture and close do not touch another's."""
        a = self.authed()
        b = self.authed()
        self.assertEqual(self.factory.sessions, {a.protocol, b.protocol})
        b.request(OpenRequest("lo"))
        b.request(StartCaptureRequest(100, 1000, StartCapFlags.DGRAM, 2003))
        b_handle, b_sink = self.system.handles[-1], self.channels.sinks[-1]

        a.request(OpenRequest("eth0"))
        a.request(StartCaptureRequest(100, 1000, StartCapFlags.DGRAM, 2003))
        a_handle = self.system.handles[-1]
        self.assertError(a.request(frame(99)), ErrorCode.WRONGMSG)
        a.send(HEADER.pack(0, 3, 0, self.factory.policy.max_message_size + 1))
        self.assertFalse(a.connected)
        self.assertTrue(a_handle.closed)

        self.assertEqual(b.replies(), [])
        self.assertTrue(b.connected)
        self.assertFalse(b_handle.closed)
        self.assertEqual(self.factory.sessions, {b.protocol})
        b_handle.inject([(1, 0, ICMP_PACKET)])
        self.reader(b_sink).doRead()
        self.assertEqual(len(packets_of(b_sink.batches)), 1)
        self.assertIsInstance(b.request(StatsRequest()), StatsReply)


class CaptureFailureTests(SessionTestBase):
    def test_read_failure(self) -> None:
        """A failing capture is reported with code 9; the session carries on."""
        client, handle, sink = self.capturing()
        reader = self.reader(sink)
        handle.fail_with = "device went away"
        reader.doRead()
        [reply] = client.replies()
        error = self.assertError(reply, ErrorCode.READEX)
        self.assertIn("device went away", error.text)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertTrue(handle.closed)
        self.assertTrue(sink.closed)
        self.assertNotIn(reader, self.reactor.readers)
        self.assertIsInstance(client.request(FindAllInterfacesRequest()), FindAllInterfacesReply)
        self.assertIsInstance(client.request(StartCaptureRequest(100, 1000, 2, 2003)), StartCaptureReply)

    def test_data_channel_lost(self) -> None:
        client, handle, sink = self.capturing()
        reader = self.reader(sink)
        self.assertTrue(callable(sink.on_lost))
        sink.on_lost("data connection closed")  # type: ignore[operator]
        self.assertTrue(handle.closed)
        self.assertNotIn(reader, self.reactor.readers)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertTrue(client.connected)
        self.assertIsInstance(client.request(StartCaptureRequest(100, 1000, 2, 2003)), StartCaptureReply)

    def test_data_channel_lost_after_endcap_ignored(self) -> None:
        """A late loss notice from an old channel does not stop the new capture."""
        client, _, old_sink = self.capturing()
        client.request(EndCaptureRequest())
        client.request(StartCaptureRequest(100, 1000, 2, 2003))
        new_handle = self.system.handles[-1]
        old_sink.on_lost("late")  # type: ignore[operator]
        self.assertFalse(new_handle.closed)
        self.assertEqual(client.session.state, SessionState.CAPTURING)


class OwnTrafficTests(SessionTestBase):
    """
    By default a capture never includes the session's own control and data
    packets: forwarding them would capture them again, without end.
    """

    def test_own_data_and_control_packets_are_not_captured(self) -> None:
        client, handle, sink = self.capturing(portdata=2003)  # UDP from our port 50000 to the peer's 2003
        peer = client.transport.getPeer().host
        local = client.transport.getHost().host
        forwarded = ether_ipv4_between(17, local, peer, 50000, 2003)
        control = ether_ipv4_between(6, peer, local, 5555, 2002)
        control_reply = ether_ipv4_between(6, local, peer, 2002, 5555)
        other_udp = ether_ipv4_between(17, local, peer, 50000, 9999)
        other_host = ether_ipv4_between(17, local, "192.0.2.99", 50000, 2003)
        handle.inject(
            [(1, 0, forwarded), (2, 0, control), (3, 0, control_reply), (4, 0, other_udp), (5, 0, other_host)]
        )
        self.reader(sink).doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [4, 5])

    def test_no_capture_includes_another_sessions_forwarded_packets(self) -> None:
        """
        Two sessions capturing where both forward would capture each other's
        packets without end: each leaves out what every session forwards,
        and a capture started later updates the filters of those running.
        """
        first, first_handle, first_sink = self.capturing(portdata=2003)
        peer = first.transport.getPeer().host
        local = first.transport.getHost().host
        second, second_handle, second_sink = self.capturing(portdata=2004)
        to_first = ether_ipv4_between(17, local, peer, 50000, 2003)
        to_second = ether_ipv4_between(17, local, peer, 50000, 2004)
        unrelated = ether_ipv4_between(17, local, peer, 50000, 2005)
        for handle, sink in ((first_handle, first_sink), (second_handle, second_sink)):
            handle.inject([(1, 0, to_first), (2, 0, to_second), (3, 0, unrelated)])
            self.reader(sink).doRead()
            self.assertEqual([p[0] for p in packets_of(sink.batches)], [3])
        # When the second capture ends, the first forgets its traffic again.
        self.assertIsInstance(second.request(EndCaptureRequest()), EndCaptureReply)
        first_handle.inject([(4, 0, to_second), (5, 0, to_first)])
        self.reader(first_sink).doRead()
        self.assertEqual([p[0] for p in packets_of(first_sink.batches)], [3, 4])

    def test_exclusion_composes_with_the_clients_filter(self) -> None:
        client, handle, sink = self.capturing(filter=ICMP_FILTER)
        peer = client.transport.getPeer().host
        local = client.transport.getHost().host
        handle.inject(
            [
                (1, 0, ether_ipv4_between(17, local, peer, 50000, 2003)),
                (2, 0, ICMP_PACKET),
                (3, 0, UDP_PACKET),
            ]
        )
        self.reader(sink).doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [2])

    def test_updatefilter_keeps_the_exclusion(self) -> None:
        client, handle, sink = self.capturing()
        peer = client.transport.getPeer().host
        local = client.transport.getHost().host
        accept_udp = BpfProgram.from_tuples([(6, 0, 0, 65535)])
        self.assertIsInstance(client.request(UpdateFilterRequest(accept_udp)), UpdateFilterReply)
        handle.inject([(1, 0, ether_ipv4_between(17, local, peer, 50000, 2003)), (2, 0, UDP_PACKET)])
        self.reader(sink).doRead()
        self.assertEqual([p[0] for p in packets_of(sink.batches)], [2])

    def test_option_off_places_only_the_clients_filter(self) -> None:
        self.factory = self.make_factory(exclude_own_traffic=False)
        client, handle, sink = self.capturing(filter=ICMP_FILTER)
        self.assertEqual(handle.filter, ICMP_FILTER)
        client2, handle2, sink2 = self.capturing()
        self.assertIsNone(handle2.filter)


class SessionLimitTests(SessionTestBase):
    def test_sessions_beyond_the_limit_are_refused(self) -> None:
        self.factory = self.make_factory(max_sessions=2)
        first, second = self.authed(), self.authed()
        third = self.connect()
        self.assertError(third.replies()[0], ErrorCode.NETWORK)
        self.assertFalse(third.connected)
        # The others are untouched, and a slot freed is a slot taken.
        self.assertIsInstance(first.request(FindAllInterfacesRequest()), FindAllInterfacesReply)
        second.transport.loseConnection()
        self.assertIsInstance(self.authed().request(FindAllInterfacesRequest()), FindAllInterfacesReply)

    def test_close_sessions_stops_captures(self) -> None:
        client, handle, sink = self.capturing()
        self.factory.close_sessions("stopping")
        self.assertTrue(handle.closed)
        self.assertFalse(client.connected)


class LogTests(SessionTestBase):
    """What a person reads: one line per event, each naming the session and the client."""

    def events_of(self, run: Any) -> list[str]:
        with capturedLogs() as events:
            run()
        return [formatEvent(e) for e in events]

    def test_every_line_names_the_session_and_the_peer(self) -> None:
        def run() -> None:
            client, handle, sink = self.capturing()
            handle.inject([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
            self.reader(sink).doRead()
            handle.dropped = 1
            client.request(EndCaptureRequest())
            client.send(CloseRequest())

        lines = self.events_of(run)
        [session] = {line.split()[0] for line in lines}
        self.assertRegex(session, r"^session=\d+$")
        self.assertEqual({line.split()[1] for line in lines}, {f"peer={PEER_HOST}:5555"})
        tag = f"{session} peer={PEER_HOST}:5555"
        self.assertEqual(
            lines,
            [
                f"{tag} client connected",
                f"{tag} logged in: user=(null auth)",
                f"{tag} opened eth0",
                f"{tag} capture on eth0 started: snaplen=65535 promiscuous=no",
                f"{tag} capture on eth0 ended: received=2 interface_dropped=0 kernel_dropped=1 sent=2",
                f"{tag} closed: client closed the session",
            ],
        )

    def test_data_channel_told_whose_it_is(self) -> None:
        """The data channel's own lines (UDP datagrams refused) name the session too."""
        client, _, sink = self.capturing()
        assert client.session is not None
        self.assertEqual(sink.log_tag, f"session={client.session.session_id} peer={PEER_HOST}:5555")

    def test_sessions_have_their_own_ids(self) -> None:
        first, second = self.authed(), self.authed()
        assert first.session is not None and second.session is not None
        self.assertGreater(second.session.session_id, first.session.session_id)

    def test_peer_text_stays_on_its_line(self) -> None:
        """What the client sends (an interface name, an error text) is escaped: it cannot forge a line."""
        client = self.authed()
        forged = "\n2026-01-01T00:00:00+0000 [rpcapsvc] session=1 forged"
        name = "eth0" + forged + b"\xff".decode("utf-8", "surrogateescape")
        lines = self.events_of(
            lambda: client.send(OpenRequest(name), ErrorReply(3, "it broke" + forged + "\x1b[31m"))
        )
        self.assertEqual(len(lines), 2, lines)
        for line in lines:
            self.assertNotIn("\n", line)
            self.assertNotIn("\x1b", line)
        self.assertIn("\\n2026-01-01", lines[0])
        self.assertIn("\\udcff", lines[0])
        self.assertTrue(
            lines[1].endswith(
                "client reported error 3: it broke\\n2026-01-01T00:00:00+0000 "
                "[rpcapsvc] session=1 forged\\x1b[31m"
            ),
            lines[1],
        )


class StateMachineTests(SessionTestBase):
    """The session's life as its two tables describe it (session.TRANSITIONS, session.REQUESTS)."""

    def test_every_row_has_a_handler(self) -> None:
        for (state, request), handler in REQUESTS.items():
            self.assertIn(state, TRANSITIONS)
            if isinstance(handler, str):
                self.assertTrue(callable(getattr(ServerSession, handler, None)), (state, request, handler))

    def test_every_state_is_reachable(self) -> None:
        reached = {SessionState.AUTHENTICATING}
        for _ in TRANSITIONS:
            reached |= {after for state in reached for after in TRANSITIONS[state]}
        self.assertEqual(reached | {SessionState.CLOSED}, set(SessionState))

    def test_an_illegal_move_is_refused(self) -> None:
        client = self.authed()
        with self.assertRaises(IllegalTransition):
            client.session._enter(SessionState.CAPTURING)
        self.assertEqual(client.session.state, SessionState.READY)

    def test_a_whole_life(self) -> None:
        """A passive capture's states, the capture closing in the capture system's thread."""
        runner = HeldRunner()
        self.system = FakeCaptureSystem([LO, ETH0], run_blocking=runner)
        client = self.connect(self.make_factory())
        seen = [client.session.state]
        client.request(AuthRequest(0))
        seen.append(client.session.state)
        client.send(OpenRequest("eth0"))
        runner.release_all()
        seen.append(client.session.state)
        client.send(StartCaptureRequest(1500, 1000, 0, 0))
        seen.append(client.session.state)
        runner.release_all()
        self.assertIsInstance(client.replies()[-1], StartCaptureReply)
        seen.append(client.session.state)  # replied; waiting for the data connection
        self.channels.pending[-1].callback(None)
        seen.append(client.session.state)
        client.send(EndCaptureRequest(), StatsRequest())
        seen.append(client.session.state)
        self.assertEqual(client.replies(), [])  # the stats wait for the capture to close
        runner.release_all()
        seen.append(client.session.state)
        self.assertEqual([type(m) for m in client.replies()], [EndCaptureReply, StatsReply])
        client.send(CloseRequest())
        seen.append(client.session.state)
        S = SessionState
        self.assertEqual(
            seen,
            [
                S.AUTHENTICATING,
                S.READY,
                S.OPEN,
                S.STARTING,
                S.STARTING,
                S.CAPTURING,
                S.CLOSING,
                S.OPEN,
                S.CLOSED,
            ],
        )
        self.assertFalse(client.connected)

    def test_a_start_that_fails_leaves_the_device_open(self) -> None:
        """Refused before the capture was the session's (opening it) or after (the data connection)."""
        client = self.opened()
        self.system.refuse_open = "not today"
        self.assertError(client.request(StartCaptureRequest(1500, 1000, StartCapFlags.DGRAM, 2003)), 12)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.system.refuse_open = None
        self.channels.fail_connect = ConnectionRefusedError("refused")
        reply = self.assertError(
            client.request(StartCaptureRequest(1500, 1000, StartCapFlags.SERVEROPEN, 2003)), 12
        )
        self.assertIn("cannot connect the data channel", reply.text)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertTrue(all(h.closed for h in self.system.handles))
