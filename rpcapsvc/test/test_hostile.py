"""
Hostile and broken clients, at the unit level: streams of malformed,
truncated and out-of-order control messages, cut at random points, fed to
L{RpcapServerProtocol} over an in-memory transport with a fake capture system,
fake data channels and a memory clock.  No sockets.

Whatever a client sends, the daemon must not raise, must answer only with
well-framed replies of known types (errors with known codes), must never be
left half-broken (a closed connection has a closed session and released every
capture), must buffer no more than one message, and must go on serving the
next client.  A client that never authenticates is dropped at the auth
timeout, however it dribbles; a thousand sessions leave nothing behind.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.connections import TlsSettings
from rpcapsvc.protocol.framing import DEFAULT_MAX_PAYLOAD, ControlStreamParser
from rpcapsvc.protocol.wire import (
    HEADER,
    AuthReply,
    AuthRequest,
    BpfInstruction,
    BpfProgram,
    CloseRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    Message,
    OpenReply,
    OpenRequest,
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
from rpcapsvc.server.control import RpcapServerFactory, RpcapServerProtocol
from rpcapsvc.server.session import REQUESTS_PER_TURN, SessionPolicy, SessionState
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels

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
)

REPLY_TYPES = (
    ErrorReply,
    AuthReply,
    FindAllInterfacesReply,
    OpenReply,
    StartCaptureReply,
    UpdateFilterReply,
    StatsReply,
    EndCaptureReply,
    SetSamplingReply,
)
KNOWN_CODES = {int(code) for code in ErrorCode}

# The longest program a client may send: 8191 loads and a return.
LONGEST_PROGRAM = BpfProgram((BpfInstruction(0x00, 0, 0, 0),) * 8191 + (BpfInstruction(0x06, 0, 0, 65535),))


# --- strategies --------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

instructions = st.builds(BpfInstruction, u16, u8, u8, st.integers(-(2**31), 2**31 - 1))
programs = st.one_of(
    st.sampled_from([ICMP_FILTER, UDP_FILTER, JUMP_PAST_END, NO_RETURN, BpfProgram(()), LONGEST_PROGRAM]),
    st.builds(BpfProgram, st.lists(instructions, max_size=6).map(tuple)),
)
interface_names = st.one_of(
    st.sampled_from(
        [
            "lo",
            "eth0",
            "eth1",
            "",
            "rpcap://192.0.2.1/eth0",
            "/etc/passwd",
            "capture.pcap",
            "lo\0x",
            "a" * 300,
        ]
    ),
    # Bytes that are not UTF-8 come through the codec as surrogate escapes.
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
start_flags = st.one_of(
    st.sampled_from([0, StartCapFlags.DGRAM, StartCapFlags.SERVEROPEN, StartCapFlags.PROMISC | 24]),
    u16,
)

requests: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        AuthRequest,
        st.sampled_from([0, 0, 0, 1, 1, 2, 0xFFFF]),
        st.sampled_from([b"", b"alice", b"mallory", b"\xff\x00"]),
        st.sampled_from([b"", b"secret", b"guess"]),
    ),
    st.just(FindAllInterfacesRequest()),
    st.builds(OpenRequest, interface_names),
    st.builds(
        StartCaptureRequest,
        st.one_of(st.just(65535), u32),
        st.one_of(st.just(1000), u32),
        start_flags,
        st.one_of(st.just(2003), u16),
        st.one_of(st.none(), programs),
    ),
    st.builds(UpdateFilterRequest, programs),
    st.just(StatsRequest()),
    st.just(EndCaptureRequest()),
    st.builds(SetSamplingRequest, u8, u32),
    # Replies have no business coming from a client.
    st.sampled_from(
        [
            AuthReply(),
            OpenReply(1, 0),
            StartCaptureReply(0, 2003),
            StatsReply(1, 2, 3, 4),
            FindAllInterfacesReply((LO,)),
            ErrorReply(ErrorCode.READEX, "you broke it"),
        ]
    ),
)
# Raw frames the codec would not write: an error with an unknown code and text that is not UTF-8.
odd_frames = st.sampled_from([frame(1, b"\xff\xfe", value=0xFFFF), frame(0x88), frame(0xFF, b"x" * 8)])

# A closing request ends the example early, so it is rare.
messages = st.one_of(requests, requests, requests, requests, requests, requests, st.just(CloseRequest()))


@st.composite
def truncated_messages(draw: Any) -> bytes:
    data = draw(messages).encode()
    return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])


@st.composite
def random_headers(draw: Any) -> bytes:
    """A header with any fields, and some or all of the payload it announces."""
    version = draw(st.sampled_from([0, 0, 0, 1, 0xFF]))
    mtype = draw(u8)
    value = draw(u16)
    length = draw(
        st.one_of(
            st.integers(0, 64),
            st.sampled_from([DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD + 1, 65556, 0xFFFFFFFF]),
            u32,
        )
    )
    body = draw(st.binary(max_size=64))
    if length <= 64:
        body = body[:length].ljust(length, b"\0") if draw(st.booleans()) else body[:length]
    return HEADER.pack(version, mtype, value, length) + body


@st.composite
def quirky_startcaps(draw: Any) -> bytes:
    """libpcap's short startcap: the filter header promises more than plen covers."""
    program = draw(st.sampled_from([ICMP_FILTER, LONGEST_PROGRAM, BpfProgram(())]))
    payload = StartCaptureRequest(65535, 1000, draw(start_flags), 2003, program).payload()
    short_by = draw(st.integers(0, 16))
    return HEADER.pack(0, 4, 0, max(0, len(payload) - short_by)) + payload[: len(payload) - short_by]


START_UDP = StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003, ICMP_FILTER)
START_PASSIVE = StartCaptureRequest(65535, 1000, 0, 0)
START_SERVEROPEN = StartCaptureRequest(
    96, 500, StartCapFlags.SERVEROPEN | StartCapFlags.PROMISC, 2003, UDP_FILTER
)

# Requests a real client would send, so that streams get past login and into captures.
plausible = st.sampled_from(
    [
        AuthRequest(0),
        AuthRequest(1, b"alice", b"secret"),
        FindAllInterfacesRequest(),
        OpenRequest("eth0"),
        OpenRequest("lo"),
        START_UDP,
        START_PASSIVE,
        START_SERVEROPEN,
        UpdateFilterRequest(UDP_FILTER),
        StatsRequest(),
        EndCaptureRequest(),
        SetSamplingRequest(1, 10),
    ]
)

# Pieces that derail the stream (garbage read as a header often announces a
# huge payload, which ends the session) are rarer than ones that do not.
pieces = st.one_of(
    plausible.map(lambda m: m.encode()),
    plausible.map(lambda m: m.encode()),
    plausible.map(lambda m: m.encode()),
    plausible.map(lambda m: m.encode()),
    messages.map(lambda m: m.encode()),
    messages.map(lambda m: m.encode()),
    odd_frames,
    quirky_startcaps(),
    st.one_of(truncated_messages(), random_headers(), st.binary(min_size=1, max_size=48)),
)

# What else happens while the stream arrives.
EVENTS = [
    "nothing",
    "nothing",
    "tick",  # a little time passes
    "second",  # a failed login's delay passes
    "long",  # minutes pass: the auth timeout
    "accept",  # the client opens the passive data connection
    "packets",  # packets arrive on every capture and are read
    "device-gone",  # the captured interface disappears
    "data-lost",  # the client closes the data connection
    "refuse-opens",  # the OS starts refusing captures (permissions)
]


@st.composite
def hostile_scripts(draw: Any) -> list[tuple[bytes, str]]:
    """The stream of pieces, cut at random points, each cut followed by an event."""
    # Most streams log in and open a device first (with a password when null
    # auth is refused), so that what follows reaches every state.
    opening = draw(
        st.sampled_from(
            [
                b"",
                AuthRequest(1, b"alice", b"secret").encode(),
                AuthRequest(1, b"alice", b"secret").encode() + OpenRequest("eth0").encode(),
                AuthRequest(1, b"alice", b"secret").encode() + OpenRequest("lo").encode(),
                AuthRequest(0).encode() + OpenRequest("eth0").encode() + START_UDP.encode(),
                AuthRequest(0).encode() + OpenRequest("eth0").encode() + START_PASSIVE.encode(),
                AuthRequest(0).encode() + OpenRequest("lo").encode() + START_SERVEROPEN.encode(),
            ]
        )
    )
    stream = opening + b"".join(draw(st.lists(pieces, min_size=1, max_size=40)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a] or [b""]
    events = draw(st.lists(st.sampled_from(EVENTS), min_size=len(chunks), max_size=len(chunks)))
    return list(zip(chunks, events))


policies: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    null_auth=st.sampled_from([True, True, True, False]),
    exclude_own_traffic=st.booleans(),
    max_message_size=st.sampled_from([DEFAULT_MAX_PAYLOAD, 65556, 1024]),
    auth_timeout=st.sampled_from([90.0, 5.0]),
    idle_timeout=st.sampled_from([300.0, 5.0, 0.0]),
)


# --- the harness -------------------------------------------------------------------


class BufferedTransport(StringTransportWithDisconnection):
    """
    Like Twisted's TCP transport, it pauses its producer when more than
    C{bufferSize} bytes wait to be sent (here: until the client reads them),
    and resumes it once they are gone.
    """

    bufferSize = 65536
    producer_paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and not self.producer_paused and len(self.value()) > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def read_all(self) -> bytes:
        """The client reads everything the daemon sent."""
        data = self.value()
        self.clear()
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


class HostileClient:
    """
    One control connection, as a real TCP transport would drive it: bytes
    the daemon has not asked for (it paused reading) wait in the "socket"
    until it resumes, and replies the client has not read pause the daemon.
    """

    def __init__(self, factory: RpcapServerFactory, tls: bool = False) -> None:
        peer = IPv4Address("TCP", PEER_HOST, 5555)
        self.transport = BufferedTransport(hostAddress=IPv4Address("TCP", LOCAL_HOST, 2002), peerAddress=peer)
        self.protocol: RpcapServerProtocol = factory.buildProtocol(peer)
        self.transport.protocol = self.protocol
        self.transport.connected = True  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)
        if tls:
            # As if the control connection were TLS (only its presence matters here).
            self.protocol.tls = TlsSettings(object())  # type: ignore[arg-type]
        self.replies = ControlStreamParser(0xFFFFFFFF)
        self.unread = b""

    @property
    def connected(self) -> bool:
        return bool(self.transport.connected)  # type: ignore[attr-defined]

    def send(self, data: bytes) -> None:
        self.unread += data
        self.pump()

    def pump(self) -> None:
        if self.unread and self.connected and self.transport.producerState == "producing":
            data, self.unread = self.unread, b""
            self.protocol.dataReceived(data)

    def received(self) -> list[Message]:
        data = self.transport.read_all()
        out = []
        for r in self.replies.feed(data):
            if r.error is not None or r.message is None:
                raise AssertionError(f"a reply that does not decode: {r!r}")
            if r.header.version != 0:
                raise AssertionError(f"a reply of version {r.header.version}")
            out.append(r.message)
        return out


class HostileStreamTests(SynchronousTestCase):
    """Random hostile streams against one session; then the next client is served."""

    def setUp(self) -> None:
        self.failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, observe)  # type: ignore[arg-type]

    def make_world(self, policy: dict[str, Any], active: bool = False) -> None:
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem([LO, ETH0])
        self.channels = FakeDataChannels()
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        self.factory = RpcapServerFactory(
            reactor=self.reactor,
            capture_system=self.system,
            policy=SessionPolicy(checkers=[checker], **policy),
            data_channels=self.channels,  # type: ignore[arg-type]
            active=active,
        )

    def check_replies(self, client: HostileClient) -> None:
        for message in client.received():
            self.assertIsInstance(message, REPLY_TYPES)
            if isinstance(message, ErrorReply):
                self.assertIn(message.code, KNOWN_CODES, message)
                self.assertNotEqual(message.text, "internal server error")

    def check_consistent(self, client: HostileClient) -> None:
        """Open and working, or closed with everything released: never in between."""
        session = client.protocol.session
        assert session is not None
        open_handles = [h for h in self.system.handles if not h.closed]
        self.assertLessEqual(client.protocol.parser.buffered, self.factory.policy.max_message_size + 8)
        if client.connected:
            self.assertIsNot(session.state, SessionState.CLOSED)
            self.assertIn(client.protocol, self.factory.sessions)
            # One capture at most, and only while starting or capturing.
            capturing = (SessionState.STARTING, SessionState.CAPTURING)
            self.assertEqual(len(open_handles), 1 if session.state in capturing else 0)
            if session.state is not SessionState.CAPTURING:
                self.assertEqual(self.reactor.readers, set())
        else:
            self.assertIs(session.state, SessionState.CLOSED)
            self.assertNotIn(client.protocol, self.factory.sessions)
            self.assertEqual(open_handles, [])
            self.assertEqual(self.reactor.readers, set())
            # Every data channel made for it is closed or was never accepted (cancelled).
            for sink in self.channels.sinks:
                if sink.producer is not None:
                    self.assertTrue(sink.closed)
            for request, sink in zip(self.channels.requests, self.channels.sinks):
                if request[0] in ("udp", "connect"):
                    self.assertTrue(sink.closed, request)
            for pending in self.channels.pending:
                self.assertTrue(pending.called)

    def event(self, client: HostileClient, event: str) -> None:
        if event == "tick":
            self.reactor.advance(0.1)
        elif event == "second":
            self.reactor.advance(1)
        elif event == "long":
            self.reactor.advance(120)
        elif event == "accept":
            waiting = [d for d in self.channels.pending if not d.called]
            if waiting:
                waiting[-1].callback(None)  # type: ignore[arg-type]
        elif event == "packets":
            for handle in self.system.handles:
                if not handle.closed:
                    handle.inject([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
            for reader in list(self.reactor.readers):
                reader.doRead()
        elif event == "device-gone":
            for handle in self.system.handles:
                handle.fail_with = "The interface disappeared"
            for reader in list(self.reactor.readers):
                reader.doRead()
        elif event == "data-lost":
            if self.channels.sinks and callable(self.channels.sinks[-1].on_lost):
                self.channels.sinks[-1].on_lost("data connection closed")  # type: ignore[operator]
        elif event == "refuse-opens":
            self.system.refuse_open = "Operation not permitted"

    def serve_next_client(self, null_auth: bool) -> None:
        """A fresh client on the same factory logs in and lists interfaces."""
        client = HostileClient(self.factory)
        login = AuthRequest(0) if null_auth else AuthRequest(1, b"alice", b"secret")
        client.send(login.encode() + FindAllInterfacesRequest().encode())
        self.assertEqual(client.received(), [AuthReply(), FindAllInterfacesReply((LO, ETH0))])
        client.send(CloseRequest().encode())
        self.assertFalse(client.connected)
        self.assertEqual(self.factory.sessions, set())

    @given(script=hostile_scripts(), policy=policies, active=st.booleans(), tls=st.booleans())
    def test_hostile_stream(
        self, script: list[tuple[bytes, str]], policy: dict[str, Any], active: bool, tls: bool
    ) -> None:
        self.failures.clear()
        self.make_world(policy, active)
        try:
            client = HostileClient(self.factory, tls=tls)
            for chunk, event in script:
                client.send(chunk)
                self.check_replies(client)
                self.check_consistent(client)
                self.event(client, event)
                client.pump()
                self.check_replies(client)
                self.check_consistent(client)
            # Let delayed answers come, then hang up.
            for _ in range(5):
                self.reactor.advance(1)
                client.pump()
            self.check_replies(client)
            self.check_consistent(client)
            client.transport.loseConnection()
            self.check_replies(client)
            self.check_consistent(client)
            self.reactor.advance(2)
            self.assertEqual(self.reactor.getDelayedCalls(), [])
            self.assertEqual(self.failures, [])
            self.serve_next_client(policy["null_auth"])
        finally:
            close_handles(self.system)

    def test_reply_text_from_any_interface_name(self) -> None:
        """
        An open of a name that is not UTF-8 is refused like any unknown
        name, with a reply that encodes, not with an exception that drops
        the connection.
        """
        self.make_world({"null_auth": True})
        client = HostileClient(self.factory)
        client.send(
            AuthRequest(0).encode() + OpenRequest(b"\xffeth\xfe".decode("utf-8", "surrogateescape")).encode()
        )
        auth, error = client.received()
        self.assertIsInstance(error, ErrorReply)
        assert isinstance(error, ErrorReply)
        self.assertEqual(error.code, ErrorCode.OPEN)
        self.assertTrue(client.connected)
        self.assertEqual(self.failures, [])

    def test_sender_ports_must_be_given(self) -> None:
        """
        A startcap that has the daemon send to the client (UDP, or server
        opens) without a data port is refused: there is nowhere to send.
        """
        self.make_world({"null_auth": True})
        client = HostileClient(self.factory)
        client.send(AuthRequest(0).encode() + OpenRequest("eth0").encode())
        client.received()
        for flags in (StartCapFlags.DGRAM, StartCapFlags.SERVEROPEN):
            client.send(StartCaptureRequest(65535, 1000, flags, 0).encode())
            [reply] = client.received()
            self.assertIsInstance(reply, ErrorReply)
            assert isinstance(reply, ErrorReply)
            self.assertEqual(reply.code, ErrorCode.STARTCAPTURE)
        self.assertEqual(self.channels.requests, [])
        self.assertTrue(all(h.closed for h in self.system.handles))
        close_handles(self.system)


def close_handles(system: FakeCaptureSystem) -> None:
    """Close what the fake holds, whatever a test found (its pipes are real descriptors)."""
    for handle in system.handles:
        handle.close()


def bytes_of(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class AuthTimeoutTests(SynchronousTestCase):
    """A client that never logs in is dropped at the auth timeout, however it dribbles."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem([LO, ETH0])
        self.channels = FakeDataChannels()

    def factory(self, auth_timeout: float = 90.0, null_auth: bool = True) -> RpcapServerFactory:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        return RpcapServerFactory(
            reactor=self.reactor,
            capture_system=self.system,
            policy=SessionPolicy(null_auth=null_auth, checkers=[checker], auth_timeout=auth_timeout),
            data_channels=self.channels,  # type: ignore[arg-type]
        )

    def assertDroppedAt(
        self, client: HostileClient, factory: RpcapServerFactory, deadline: float, each_minute: list[bytes]
    ) -> None:
        """
        Advance the clock a minute at a time, the client sending the next of
        C{each_minute} each minute, and check it is dropped at C{deadline}
        exactly, with error 2, and not a moment before.
        """
        sends = iter(each_minute)
        while self.reactor.seconds() + 60 < deadline:
            client.send(next(sends, b""))
            self.reactor.advance(60)
            self.assertTrue(client.connected, self.reactor.seconds())
        self.reactor.advance(deadline - self.reactor.seconds() - 0.001)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        self.assertFalse(client.connected)
        last = client.received()[-1]
        assert isinstance(last, ErrorReply)
        self.assertEqual(last.code, ErrorCode.INITTIMEOUT)
        self.assertIs(client.protocol.session.state, SessionState.CLOSED)  # type: ignore[union-attr]
        self.assertEqual(factory.sessions, set())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # Whatever it still sends is ignored.
        client.protocol.dataReceived(b"\0" * 100)
        self.assertEqual(client.received(), [])

    def test_silent_client(self) -> None:
        factory = self.factory()
        self.assertDroppedAt(HostileClient(factory), factory, 90.0, each_minute=[])

    def test_one_byte_a_minute(self) -> None:
        """Bytes of a login trickling in do not reset the timeout."""
        factory = self.factory()
        login = AuthRequest(1, b"alice" * 10, b"secret").encode()
        self.assertDroppedAt(HostileClient(factory), factory, 90.0, each_minute=bytes_of(login))

    def test_one_byte_a_minute_with_a_long_timeout(self) -> None:
        """
        With a 10-minute timeout, a null login sent a byte a minute (16
        minutes for the whole of it) never completes: dropped at 10 minutes.
        """
        factory = self.factory(auth_timeout=600)
        login = AuthRequest(0).encode()
        self.assertDroppedAt(HostileClient(factory), factory, 600.0, each_minute=bytes_of(login))

    def test_a_request_a_minute(self) -> None:
        """Whole requests that are not logins (each refused) do not reset it either."""
        factory = self.factory(auth_timeout=300)
        client = HostileClient(factory)
        self.assertDroppedAt(client, factory, 300.0, each_minute=[FindAllInterfacesRequest().encode()] * 10)

    def test_failed_logins_do_not_reset_it(self) -> None:
        factory = self.factory(auth_timeout=30, null_auth=False)
        client = HostileClient(factory)
        while self.reactor.seconds() < 25:
            client.send(AuthRequest(1, b"alice", b"guess").encode())
            self.reactor.advance(1.5)
            client.pump()
        self.reactor.advance(30 - self.reactor.seconds() - 0.001)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        self.assertFalse(client.connected)
        self.assertEqual(factory.sessions, set())

    def test_the_timeout_is_per_session(self) -> None:
        """A dawdling client does not hurry or delay another one's timeout."""
        factory = self.factory(auth_timeout=90)
        early = HostileClient(factory)
        self.reactor.advance(60)
        late = HostileClient(factory)
        late.send(b"\0")
        self.reactor.advance(30)
        self.assertFalse(early.connected)
        self.assertTrue(late.connected)
        self.reactor.advance(59.999)
        self.assertTrue(late.connected)
        self.reactor.advance(0.001)
        self.assertFalse(late.connected)
        self.assertEqual(factory.sessions, set())


class ManySessionsTests(SynchronousTestCase):
    """A thousand sessions, ended every way a session ends, leave nothing behind."""

    def test_a_thousand_sessions(self) -> None:
        reactor = MemoryReactorClock()
        system = FakeCaptureSystem([LO, ETH0])
        channels = FakeDataChannels()
        # The session limit is the batch size: a slot that leaked would refuse a session.
        factory = RpcapServerFactory(
            reactor=reactor,
            capture_system=system,
            policy=SessionPolicy(
                null_auth=True,
                max_sessions=50,
                max_unauthenticated=50,
                max_unauthenticated_per_host=50,
                auth_timeout=90,
            ),
            data_channels=channels,  # type: ignore[arg-type]
        )
        self.addCleanup(close_handles, system)
        login = AuthRequest(0).encode()
        open_eth0 = login + OpenRequest("eth0").encode()
        udp = StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003).encode()
        passive = StartCaptureRequest(65535, 1000, 0, 0).encode()
        total = 0
        for _batch in range(20):
            clients = [HostileClient(factory) for _ in range(50)]
            self.assertEqual(len(factory.sessions), 50)
            for n, client in enumerate(clients):
                way = n % 6
                if way == 0:  # captures over UDP, says close
                    client.send(open_eth0 + udp)
                    client.send(CloseRequest().encode())
                elif way == 1:  # waits for its passive data connection, then vanishes
                    client.send(open_eth0 + passive)
                    client.transport.loseConnection()
                elif way == 2:  # captures over TCP, ends the capture, hangs up
                    client.send(open_eth0 + passive)
                    channels.pending[-1].callback(None)  # type: ignore[arg-type]
                    system.handles[-1].inject([(1, 0, ICMP_PACKET)])
                    for reader in list(reactor.readers):
                        reader.doRead()
                    client.send(EndCaptureRequest().encode())
                    client.transport.loseConnection()
                elif way == 3:  # sends an oversized message
                    client.send(login + HEADER.pack(0, 3, 0, 0xFFFFFFFF))
                elif way == 4:  # its capture's interface goes away, then it hangs up
                    client.send(open_eth0 + udp)
                    system.handles[-1].fail_with = "The interface disappeared"
                    for reader in list(reactor.readers):
                        reader.doRead()
                    self.assertTrue(client.connected)
                    client.transport.loseConnection()
                # way 5: never logs in; the auth timeout ends it
            reactor.advance(91)
            for client in clients:
                self.assertFalse(client.connected)
                self.assertIs(client.protocol.session.state, SessionState.CLOSED)  # type: ignore[union-attr]
            total += len(clients)
            self.assertEqual(factory.sessions, set())
        self.assertEqual(total, 1000)
        self.assertEqual(factory.sessions, set())
        self.assertTrue(system.handles)
        self.assertTrue(all(h.closed for h in system.handles))
        self.assertTrue(all(s.closed for s in channels.sinks if s.producer is not None))
        self.assertTrue(all(d.called for d in channels.pending))
        self.assertEqual(reactor.readers, set())
        self.assertEqual(reactor.getDelayedCalls(), [])
        # And the next one is served.
        client = HostileClient(factory)
        client.send(login + FindAllInterfacesRequest().encode())
        self.assertEqual(client.received(), [AuthReply(), FindAllInterfacesReply((LO, ETH0))])


def one_turn(clock: MemoryReactorClock) -> None:
    """
    Run the calls due now, but not the ones they schedule: one turn of a
    real reactor (C{Clock.advance} would run those too).
    """
    for call in [c for c in clock.calls if c.getTime() <= clock.seconds()]:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class GreedyClientTests(SynchronousTestCase):
    """
    A client that pipelines requests cannot make the daemon buffer replies
    it does not read, nor keep the reactor from other sessions.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem([LO, ETH0])
        self.factory = RpcapServerFactory(
            reactor=self.reactor,
            capture_system=self.system,
            policy=SessionPolicy(null_auth=True),
            data_channels=FakeDataChannels(),  # type: ignore[arg-type]
        )
        self.addCleanup(close_handles, self.system)

    def test_a_client_that_never_reads_its_replies(self) -> None:
        client = HostileClient(self.factory)
        requests = 20000
        client.send(AuthRequest(0).encode() + FindAllInterfacesRequest().encode() * requests)
        reply_size = len(FindAllInterfacesReply((LO, ETH0)).encode())
        for _ in range(100):
            self.reactor.advance(0)
        # Replies stop piling up just past the transport's buffer; reading stopped too.
        self.assertLessEqual(len(client.transport.value()), BufferedTransport.bufferSize + reply_size)
        self.assertEqual(client.transport.producerState, "paused")
        # Once the client reads, every request is answered, in order.
        replies: list[Message] = []
        for _ in range(10000):
            replies.extend(client.received())
            self.reactor.advance(0)
            client.pump()
            if len(replies) == requests + 1:
                break
        self.assertEqual(replies, [AuthReply()] + [FindAllInterfacesReply((LO, ETH0))] * requests)
        self.assertEqual(client.transport.producerState, "producing")

    def test_requests_are_handled_a_turn_at_a_time(self) -> None:
        greedy, other = HostileClient(self.factory), HostileClient(self.factory)
        greedy.send(AuthRequest(0).encode() + StatsRequest().encode() * 1000)
        self.assertEqual(len(greedy.received()), REQUESTS_PER_TURN)
        # Another client is served at once, not after the thousand.
        other.send(AuthRequest(0).encode() + FindAllInterfacesRequest().encode())
        self.assertEqual(other.received(), [AuthReply(), FindAllInterfacesReply((LO, ETH0))])
        one_turn(self.reactor)
        self.assertEqual(len(greedy.received()), REQUESTS_PER_TURN)
        self.reactor.advance(0)
        self.assertEqual(len(greedy.received()), 1001 - 2 * REQUESTS_PER_TURN)

    def test_capture_operations_are_two_a_turn(self) -> None:
        """Opening a capture blocks (tens of ms with libpcap): two per session per turn."""
        greedy = HostileClient(self.factory)
        greedy.send(AuthRequest(0).encode())
        greedy.received()
        greedy.send(OpenRequest("eth0").encode() * 10)
        self.assertEqual(greedy.received(), [OpenReply(1, 0)] * 2)
        one_turn(self.reactor)
        self.assertEqual(greedy.received(), [OpenReply(1, 0)] * 2)
        self.reactor.advance(0)
        self.assertEqual(greedy.received(), [OpenReply(1, 0)] * 6)

    def test_pending_turn_cancelled_when_the_session_ends(self) -> None:
        greedy = HostileClient(self.factory)
        greedy.send(AuthRequest(0).encode() + StatsRequest().encode() * 100)
        self.assertTrue(self.reactor.getDelayedCalls())
        greedy.transport.loseConnection()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.factory.sessions, set())


class CaptureFaultTests(SynchronousTestCase):
    def test_descriptor_error_reports_libpcaps_reason(self) -> None:
        """
        When the reactor drops a capture's descriptor (epoll reports only an
        error when an interface goes away), the client learns libpcap's
        reason with error 9, and the session goes on.
        """
        reactor = MemoryReactorClock()
        system = FakeCaptureSystem([LO, ETH0])
        channels = FakeDataChannels()
        factory = RpcapServerFactory(
            reactor=reactor,
            capture_system=system,
            policy=SessionPolicy(null_auth=True),
            data_channels=channels,  # type: ignore[arg-type]
        )
        self.addCleanup(close_handles, system)
        client = HostileClient(factory)
        client.send(AuthRequest(0).encode() + OpenRequest("eth0").encode() + START_UDP.encode())
        self.assertIsInstance(client.received()[-1], StartCaptureReply)
        [reader] = reactor.readers
        system.handles[-1].fail_with = "The interface went down"
        reactor.removeReader(reader)
        reader.connectionLost(Failure(ConnectionDone("Connection was closed cleanly.")))
        [error] = client.received()
        self.assertEqual(
            error, ErrorReply(ErrorCode.READEX, "capture on eth0 ended: The interface went down")
        )
        self.assertTrue(system.handles[-1].closed)
        self.assertTrue(client.connected)
        client.send(FindAllInterfacesRequest().encode())
        self.assertEqual(client.received(), [FindAllInterfacesReply((LO, ETH0))])
