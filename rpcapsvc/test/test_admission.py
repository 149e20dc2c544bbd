"""
Fair admission (L{rpcapsvc.server.admission}) and the idle limit, at the
unit level: control connections over in-memory transports, a memory clock,
a fake capture system.  No sockets.

Connections that have not logged in share their own pool, by address, and
the one that has waited longest makes room for a new one; logged-in
sessions count against C{max_sessions}, and when they fill it a login
closes the one idle longest, never one that captures, never an active one;
a logged-in session that captures nothing is closed after C{idle_timeout}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    Message,
    OpenReply,
    OpenRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsRequest,
)
from rpcapsvc.server.admission import host_key
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.session import SessionPolicy, SessionState
from rpcapsvc.tap import Options, makeService
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels

from ._fixtures import ETH0, LO, PEER_HOST, Client
from .test_hostile import HostileClient

HEADER_START = b"\x00\x08\x00"  # three bytes of an auth request's header, and then nothing


class AdmissionTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.system = FakeCaptureSystem([LO, ETH0])
        self.channels = FakeDataChannels()
        self.sessions: set[Any] = set()
        self.factory = self.make_factory()
        system = self.system
        self.addCleanup(lambda: [h.close() for h in system.handles])

    def make_factory(self, active: bool = False, **policy: Any) -> RpcapServerFactory:
        policy.setdefault("null_auth", True)
        policy.setdefault("checkers", [InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")])
        return RpcapServerFactory(
            reactor=self.reactor,
            capture_system=self.system,
            policy=SessionPolicy(**policy),
            data_channels=self.channels,  # type: ignore[arg-type]
            active=active,
            sessions=self.sessions,
        )

    def staller(self, host: str = PEER_HOST, factory: RpcapServerFactory | None = None) -> Client:
        client = Client(factory or self.factory, host)
        client.send(HEADER_START)
        return client

    def login(
        self, host: str = PEER_HOST, factory: RpcapServerFactory | None = None, password: bool = False
    ) -> Client:
        client = Client(factory or self.factory, host)
        self.assertTrue(client.connected, client.replies())
        auth = AuthRequest(1, b"alice", b"secret") if password else AuthRequest(0)
        self.assertEqual(client.request(auth), AuthReply())
        return client

    def assertClosedWith(self, client: Client, code: int) -> ErrorReply:
        replies = client.replies()
        self.assertFalse(client.connected, replies)
        self.assertTrue(replies, "closed without a word")
        last = replies[-1]
        assert isinstance(last, ErrorReply), replies
        self.assertEqual(last.code, code, last.text)
        self.assertIs(client.session.state if client.session else SessionState.CLOSED, SessionState.CLOSED)
        return last

    def assertServed(self, client: Client) -> None:
        self.assertTrue(client.connected)
        self.assertEqual(client.request(FindAllInterfacesRequest()), FindAllInterfacesReply((LO, ETH0)))


class DefaultsTests(SynchronousTestCase):
    def test_policy_defaults(self) -> None:
        policy = SessionPolicy()
        self.assertEqual(policy.auth_timeout, 10.0)
        self.assertEqual(policy.idle_timeout, 300.0)
        self.assertEqual(policy.max_sessions, 64)
        self.assertEqual(policy.max_unauthenticated, 32)
        self.assertEqual(policy.max_unauthenticated_per_host, 8)
        self.assertEqual(policy.reclaim_idle_after, 1.0)

    def test_options_default_to_the_policy(self) -> None:
        """The twistd options take their defaults from SessionPolicy, defined once there."""
        options = Options()
        options.parseOptions(["-n"])
        policy = SessionPolicy()
        for option, field in [
            ("auth-timeout", "auth_timeout"),
            ("idle-timeout", "idle_timeout"),
            ("max-sessions", "max_sessions"),
            ("max-unauthenticated", "max_unauthenticated"),
            ("max-unauthenticated-per-host", "max_unauthenticated_per_host"),
            ("reclaim-idle-after", "reclaim_idle_after"),
            ("buffer-size", "buffer_size"),
            ("max-message-size", "max_message_size"),
        ]:
            self.assertEqual(options[option], getattr(policy, field), option)

    def test_options_reach_the_policy(self) -> None:
        options = Options()
        options.parseOptions(
            [
                "-n",
                "--idle-timeout", "60",
                "--max-sessions", "10",
                "--max-unauthenticated", "5",
                "--max-unauthenticated-per-host", "2",
                "--reclaim-idle-after", "0",
                "--auth-timeout", "3",
            ]
        )  # fmt: skip
        policy = makeService(options).policy
        self.assertEqual(
            (
                policy.idle_timeout,
                policy.max_sessions,
                policy.max_unauthenticated,
                policy.max_unauthenticated_per_host,
                policy.reclaim_idle_after,
                policy.auth_timeout,
            ),
            (60.0, 10, 5, 2, 0.0, 3.0),
        )

    def test_bad_values_refused(self) -> None:
        for argv in (
            ["--max-unauthenticated", "0"],
            ["--max-unauthenticated-per-host", "0"],
            ["--max-sessions", "0"],
            ["--auth-timeout", "0"],
            ["--idle-timeout", "-1"],
            ["--reclaim-idle-after", "-1"],
        ):
            with self.assertRaises(UsageError, msg=argv) as caught:
                Options().parseOptions(["-n", *argv])
            self.assertIn(argv[0], str(caught.exception))


class HostKeyTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(host_key("192.0.2.7"), "192.0.2.7")

    def test_ipv4_mapped(self) -> None:
        self.assertEqual(host_key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_ipv6_counts_by_64(self) -> None:
        self.assertEqual(host_key("2001:db8:1:2::1"), "2001:db8:1:2::/64")
        self.assertEqual(host_key("2001:db8:1:2:ffff::9%eth0"), "2001:db8:1:2::/64")
        self.assertNotEqual(host_key("2001:db8:1:3::1"), host_key("2001:db8:1:2::1"))

    def test_not_an_address(self) -> None:
        self.assertEqual(host_key(""), "")


class UnauthenticatedPoolTests(AdmissionTestBase):
    def test_a_hosts_share_is_full_its_oldest_makes_room(self) -> None:
        self.factory = self.make_factory(max_unauthenticated_per_host=3, max_unauthenticated=10)
        other = self.staller("198.51.100.1")
        first, second, third = (self.staller() for _ in range(3))
        fourth = self.staller()
        error = self.assertClosedWith(first, ErrorCode.INITTIMEOUT)
        self.assertIn("too many connections are waiting to log in", error.text)
        for client in (second, third, fourth, other):
            self.assertTrue(client.connected)
        # The next one closes the next oldest of that address, not another's.
        self.staller()
        self.assertClosedWith(second, ErrorCode.INITTIMEOUT)
        self.assertTrue(other.connected)

    def test_the_pool_is_full_the_oldest_makes_room(self) -> None:
        self.factory = self.make_factory(max_unauthenticated_per_host=8, max_unauthenticated=4)
        clients = [self.staller(f"198.51.100.{n}") for n in range(1, 5)]
        newcomer = self.staller("198.51.100.9")
        self.assertClosedWith(clients[0], ErrorCode.INITTIMEOUT)
        self.assertTrue(all(c.connected for c in clients[1:]))
        self.assertTrue(newcomer.connected)
        self.assertEqual(len(self.sessions), 4)

    def test_an_ipv6_host_cannot_spread_over_its_64(self) -> None:
        self.factory = self.make_factory(max_unauthenticated_per_host=2)
        first = self.staller("2001:db8::1")
        self.staller("2001:db8::2")
        self.staller("2001:db8::3")
        self.assertClosedWith(first, ErrorCode.INITTIMEOUT)

    def test_two_hundred_stallers_do_not_keep_real_clients_out(self) -> None:
        """
        From the same address as the stallers, and from another: a null login
        and a password login are served at once; the stallers hold the
        address's share and no more.
        """
        self.factory = self.make_factory()
        stallers = [self.staller() for _ in range(200)]
        self.assertEqual(sum(s.connected for s in stallers), 8)
        for host in (PEER_HOST, "198.51.100.1"):
            self.assertServed(self.login(host))
            self.assertServed(self.login(host, password=True))
        # The first from PEER_HOST made room; logged in, it left the pool, and the second found room.
        self.assertEqual(sum(s.connected for s in stallers), 7)

    def test_two_hundred_stallers_from_many_hosts(self) -> None:
        self.factory = self.make_factory()
        stallers = [self.staller(f"198.51.100.{n % 50}") for n in range(200)]
        self.assertEqual(sum(s.connected for s in stallers), 32)
        self.assertServed(self.login("203.0.113.1"))
        self.assertServed(self.login(f"198.51.100.{199 % 50}", password=True))

    def test_logged_in_sessions_are_not_in_the_pool(self) -> None:
        self.factory = self.make_factory(max_unauthenticated_per_host=2, max_unauthenticated=2)
        logged_in = [self.login() for _ in range(5)]
        for _ in range(50):
            self.staller()
        for client in logged_in:
            self.assertServed(client)

    def test_a_login_under_way_is_not_made_to_wait_by_the_pool(self) -> None:
        """A failed login keeps its connection in the pool: it is still the oldest to go."""
        self.factory = self.make_factory(null_auth=False, max_unauthenticated_per_host=2)
        guesser = Client(self.factory)
        guesser.send(AuthRequest(1, b"alice", b"guess"))
        self.staller()
        self.staller()
        self.assertFalse(guesser.connected)

    def test_active_connections_are_never_evicted_by_passive_stallers(self) -> None:
        active_factory = self.make_factory(active=True)
        self.factory = self.make_factory(max_unauthenticated=2, max_unauthenticated_per_host=2)
        waiting = Client(active_factory, PEER_HOST)  # the collector has not logged in yet
        for _ in range(50):
            self.staller()
        self.assertTrue(waiting.connected)
        self.assertEqual(waiting.request(AuthRequest(0)), AuthReply())
        self.assertServed(waiting)

    def test_the_auth_timeout_still_applies(self) -> None:
        client = self.staller()
        self.reactor.advance(9.999)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        self.assertClosedWith(client, ErrorCode.INITTIMEOUT)


class SessionLimitTests(AdmissionTestBase):
    def test_connections_waiting_to_log_in_do_not_count(self) -> None:
        self.factory = self.make_factory(max_sessions=2)
        for n in range(20):
            self.staller(f"198.51.100.{n}")
        first, second = self.login(), self.login()
        self.assertServed(first)
        self.assertServed(second)

    def test_full_of_working_sessions_a_connection_is_refused(self) -> None:
        self.factory = self.make_factory(max_sessions=2)
        first, second = self.login(), self.login()
        third = Client(self.factory)
        error = self.assertClosedWith(third, ErrorCode.NETWORK)
        self.assertEqual(error.text, "too many sessions; try again later")
        self.assertServed(first)
        self.assertServed(second)

    def test_a_login_when_full_is_refused_and_the_connection_closed(self) -> None:
        """Admitted while there was room; by the time it logs in, there is none."""
        self.factory = self.make_factory(max_sessions=2)
        early = Client(self.factory)
        self.login()
        self.login()
        early.send(AuthRequest(0))
        self.assertClosedWith(early, ErrorCode.NETWORK)
        self.assertEqual(len(self.factory.admission.logged_in()), 2)

    def test_full_a_login_closes_the_session_idle_longest(self) -> None:
        self.factory = self.make_factory(max_sessions=3)
        oldest, idlest, busy = self.login(), self.login(), self.login()
        self.reactor.advance(5)
        oldest.request(FindAllInterfacesRequest())  # idle 0 s: it just did something
        self.reactor.advance(2)
        busy.request(FindAllInterfacesRequest())
        newcomer = self.login()
        error = self.assertClosedWith(idlest, ErrorCode.RUNTIMETIMEOUT)
        self.assertIn("idle for 7 s", error.text)
        self.assertServed(newcomer)
        self.assertServed(oldest)
        self.assertServed(busy)

    def test_a_session_idle_less_than_reclaim_idle_after_is_kept(self) -> None:
        self.factory = self.make_factory(max_sessions=1)
        first = self.login()
        self.reactor.advance(0.9)
        self.assertClosedWith(Client(self.factory), ErrorCode.NETWORK)
        self.reactor.advance(0.1)
        newcomer = self.login()
        self.assertClosedWith(first, ErrorCode.RUNTIMETIMEOUT)
        self.assertServed(newcomer)

    def test_reclaim_idle_after_0_never_closes_one(self) -> None:
        self.factory = self.make_factory(max_sessions=1, reclaim_idle_after=0)
        first = self.login()
        self.reactor.advance(100)
        self.assertClosedWith(Client(self.factory), ErrorCode.NETWORK)
        self.assertServed(first)

    def test_capturing_sessions_are_never_closed_to_make_room(self) -> None:
        self.factory = self.make_factory(max_sessions=2)
        capturing = []
        for _ in range(2):
            client = self.login()
            self.assertEqual(client.request(OpenRequest("eth0")), OpenReply(1, 0))
            reply = client.request(StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003))
            self.assertIsInstance(reply, StartCaptureReply)
            capturing.append(client)
        self.reactor.advance(3600)
        self.assertClosedWith(Client(self.factory), ErrorCode.NETWORK)
        for client in capturing:
            self.assertTrue(client.connected)
            self.assertIs(client.session.state, SessionState.CAPTURING)

    def test_active_sessions_are_never_closed_to_make_room(self) -> None:
        active_factory = self.make_factory(active=True)
        self.factory = self.make_factory(max_sessions=1)
        collector = self.login(factory=active_factory)
        self.reactor.advance(3600)
        self.assertClosedWith(Client(self.factory), ErrorCode.NETWORK)
        self.assertServed(collector)

    def test_a_freed_slot_is_taken(self) -> None:
        self.factory = self.make_factory(max_sessions=1)
        first = self.login()
        first.transport.loseConnection()
        self.assertServed(self.login())

    def test_stallers_cannot_close_idle_sessions(self) -> None:
        """Only a login makes room among logged-in sessions: a connection alone does not."""
        self.factory = self.make_factory(max_sessions=2, null_auth=False)
        idle = [self.login(password=True) for _ in range(2)]
        self.reactor.advance(60)
        for _ in range(100):
            self.staller()
        for client in idle:
            self.assertServed(client)


class IdleTimeoutTests(AdmissionTestBase):
    def test_an_idle_session_is_closed_with_an_error(self) -> None:
        client = self.login()
        self.reactor.advance(299.999)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        error = self.assertClosedWith(client, ErrorCode.RUNTIMETIMEOUT)
        self.assertIn("idle for 300 s", error.text)
        self.assertEqual(self.sessions, set())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_any_request_resets_it(self) -> None:
        client = self.login()
        self.reactor.advance(200)
        self.assertIsInstance(client.request(StatsRequest()), Message)  # any request: stats with no capture
        self.reactor.advance(299.999)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        self.assertClosedWith(client, ErrorCode.RUNTIMETIMEOUT)

    def test_even_a_refused_request_resets_it(self) -> None:
        client = self.login()
        self.reactor.advance(250)
        self.assertIsInstance(client.request(OpenRequest("nonesuch")), ErrorReply)
        self.reactor.advance(250)
        self.assertTrue(client.connected)

    def test_an_open_device_is_not_a_capture(self) -> None:
        client = self.login()
        self.assertEqual(client.request(OpenRequest("eth0")), OpenReply(1, 0))
        self.reactor.advance(300)
        self.assertClosedWith(client, ErrorCode.RUNTIMETIMEOUT)

    def test_a_capture_is_never_idle(self) -> None:
        client = self.login()
        self.assertEqual(client.request(OpenRequest("eth0")), OpenReply(1, 0))
        reply = client.request(StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003))
        self.assertIsInstance(reply, StartCaptureReply)
        self.reactor.advance(3600)
        self.assertTrue(client.connected)
        # Idle from the end of the capture on.
        self.assertEqual(client.request(EndCaptureRequest()), EndCaptureReply())
        self.reactor.advance(299.999)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        self.assertClosedWith(client, ErrorCode.RUNTIMETIMEOUT)

    def test_idle_from_when_a_capture_ended_by_itself(self) -> None:
        client = self.login()
        client.request(OpenRequest("eth0"))
        client.request(StartCaptureRequest(65535, 1000, StartCapFlags.DGRAM, 2003))
        self.reactor.advance(1000)
        self.channels.sinks[-1].on_lost("data connection closed")  # type: ignore[misc]
        self.assertIs(client.session.state, SessionState.OPEN)
        self.reactor.advance(299.999)
        self.assertTrue(client.connected)
        self.reactor.advance(0.001)
        self.assertClosedWith(client, ErrorCode.RUNTIMETIMEOUT)

    def test_a_client_that_never_reads_its_replies_is_idle(self) -> None:
        """No request handled is idle, however many wait to be read: it cannot hold a slot."""
        client = HostileClient(self.factory)
        client.send(AuthRequest(0).encode() + FindAllInterfacesRequest().encode() * 100000)
        for _ in range(1000):
            if client.transport.producer_paused:
                break
            self.reactor.advance(0)
        self.assertTrue(client.transport.producer_paused)
        self.reactor.advance(1)
        self.assertTrue(client.connected)
        self.reactor.advance(300)
        self.assertFalse(client.connected)
        self.assertEqual(self.sessions, set())

    def test_configurable_and_0_is_no_limit(self) -> None:
        self.factory = self.make_factory(idle_timeout=5)
        client = self.login()
        self.reactor.advance(5)
        self.assertClosedWith(client, ErrorCode.RUNTIMETIMEOUT)
        self.factory = self.make_factory(idle_timeout=0)
        client = self.login()
        self.reactor.advance(100000)
        self.assertServed(client)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_not_before_login(self) -> None:
        """Before login the auth timeout applies, and only it."""
        self.factory = self.make_factory(idle_timeout=5, auth_timeout=60)
        client = self.staller()
        self.reactor.advance(59)
        self.assertTrue(client.connected)
        self.reactor.advance(1)
        self.assertClosedWith(client, ErrorCode.INITTIMEOUT)

    def test_active_sessions_have_none(self) -> None:
        """The daemon chose to connect to the collector: what it does with its session is its business."""
        collector = self.login(factory=self.make_factory(active=True))
        self.reactor.advance(100000)
        self.assertServed(collector)

    def test_the_timer_goes_with_the_session(self) -> None:
        client = self.login()
        client.transport.loseConnection()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
