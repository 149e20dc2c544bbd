"""
The session with its capture system's calls off the reactor thread: each
call is held by a L{HeldRunner} until the test releases it, so results can
arrive in any order.  Whatever the order, the session answers each request
once and in turn, closes every capture it opened (and touches none after),
starts reading only once the capture's filter is in place, and no capture
includes another session's forwarded traffic.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.capture.blocking import pool_runner, run_in_place
from rpcapsvc.capture.reader import CaptureReader
from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    CloseRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
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
)
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.forwarded import ForwardedTraffic
from rpcapsvc.server.session import SessionPolicy, SessionState
from rpcapsvc.testing import FakeCaptureHandle, FakeCaptureSystem, FakeDataChannels, HeldRunner

from ._fixtures import ETH0, ICMP_FILTER, LO, Client, ether_ipv4_between


def startcap(portdata: int = 2003, flags: int = StartCapFlags.DGRAM, **kw: Any) -> StartCaptureRequest:
    return StartCaptureRequest(65535, 1000, flags, portdata, kw.get("filter"))


class HeldCallsBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.runner = HeldRunner()
        self.system = FakeCaptureSystem([LO, ETH0], run_blocking=self.runner)
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

    def opened(self, device: str = "eth0") -> Client:
        client = Client(self.factory)
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        client.send(OpenRequest(device))
        self.assertEqual(client.replies(), [])
        self.runner.release("probe")
        self.assertIsInstance(client.replies()[0], OpenReply)
        return client

    def capturing(self, portdata: int = 2003) -> tuple[Client, FakeCaptureHandle]:
        client = self.opened()
        client.send(startcap(portdata))
        self.runner.release_all()
        [reply] = client.replies()
        self.assertIsInstance(reply, StartCaptureReply)
        return client, self.system.handles[-1]

    def lose(self, client: Client) -> None:
        client.protocol.connectionLost(Failure(ConnectionLost()))

    def assertNoMisuse(self) -> None:
        """No call on any handle after it was closed."""
        self.assertEqual([h.misuse for h in self.system.handles], [[] for _ in self.system.handles])

    def readers(self) -> list[CaptureReader]:
        return [r for r in self.reactor.getReaders() if isinstance(r, CaptureReader)]


class OneRequestAtATimeTests(HeldCallsBase):
    def test_reply_when_the_call_returns_and_reading_paused_meanwhile(self) -> None:
        client = self.opened()
        client.send(FindAllInterfacesRequest())
        self.assertEqual(self.runner.names, ["_interfaces"])
        self.assertEqual(client.replies(), [])
        self.assertEqual(client.transport.producerState, "paused")  # type: ignore[attr-defined]
        self.runner.release()
        self.assertIsInstance(client.replies()[0], FindAllInterfacesReply)
        self.assertEqual(client.transport.producerState, "producing")  # type: ignore[attr-defined]

    def test_a_request_queued_behind_a_slow_one_is_answered_after_it(self) -> None:
        client = self.opened()
        client.send(FindAllInterfacesRequest(), SetSamplingRequest(SamplingMethod.NONE, 0))
        self.assertEqual(client.replies(), [])
        self.runner.release()
        self.assertEqual([type(m) for m in client.replies()], [FindAllInterfacesReply, SetSamplingReply])

    def test_open_failure_arrives_as_an_error(self) -> None:
        client = Client(self.factory)
        client.request(AuthRequest(0))
        self.system.refuse_open = "lo: You don't have permission to capture on that device"
        client.send(OpenRequest("lo"))
        self.runner.release("probe")
        [reply] = client.replies()
        assert isinstance(reply, ErrorReply)
        self.assertEqual((reply.code, reply.text), (ErrorCode.OPEN, self.system.refuse_open))
        self.assertEqual(client.session.state, SessionState.READY)

    def test_listing_failure_arrives_as_an_error(self) -> None:
        client = self.opened()

        def broken() -> list[Any]:
            raise OSError("no /proc")

        self.system.list_interfaces = broken  # type: ignore[method-assign]
        client.send(FindAllInterfacesRequest())
        self.runner.release()
        [reply] = client.replies()
        assert isinstance(reply, ErrorReply)
        self.assertEqual((reply.code, reply.text), (ErrorCode.FINDALLIF, "cannot list interfaces: no /proc"))


class SessionEndsFirstTests(HeldCallsBase):
    def test_open_answered_after_the_session_closed_is_dropped(self) -> None:
        client = Client(self.factory)
        client.request(AuthRequest(0))
        client.send(OpenRequest("eth0"))
        self.lose(client)
        self.runner.release("probe")
        self.assertEqual(client.replies(), [])
        self.assertIsNone(client.session.device)
        self.assertEqual(self.system.handles, [])

    def test_a_capture_opened_after_the_session_closed_is_closed(self) -> None:
        client = self.opened()
        client.send(startcap())
        self.assertEqual(self.runner.names, ["open"])
        self.lose(client)
        self.runner.release("open")
        [handle] = self.system.handles
        self.assertFalse(handle.closed)  # its close is on its way
        self.assertEqual(self.runner.names, ["close_capture"])
        self.runner.release_all()
        self.assertTrue(handle.closed)
        self.assertEqual(self.channels.sinks, [])  # no data channel was made for it
        self.assertEqual(client.replies(), [])
        self.assertEqual(len(client.factory.forwarded), 0)
        self.assertNoMisuse()

    def test_connection_lost_while_the_filter_is_compiled(self) -> None:
        first, first_handle = self.capturing(2003)
        second = self.opened()
        second.send(startcap(2004))
        self.runner.release("open")
        self.assertEqual(self.runner.names, ["compile_clauses"])
        self.lose(second)
        self.runner.release_all()
        second_handle = self.system.handles[-1]
        self.assertTrue(second_handle.closed)
        self.assertTrue(self.channels.sinks[-1].closed)  # the UDP socket made for it
        self.assertEqual(second.replies(), [])
        self.assertEqual([r.fileno() for r in self.readers()], [first_handle.fileno()])
        # The first capture's last filter leaves out its own traffic only, again.
        self.assertEqual(len(self.factory.forwarded), 1)
        self.assertEqual(first_handle.filter, first.session._capture.programs()[0])
        self.assertEqual(first_handle.filters_set[0], first_handle.filters_set[-1])
        self.assertNoMisuse()

    def test_passive_data_channel_given_up_when_the_session_ends_first(self) -> None:
        client = self.opened()
        client.send(startcap(flags=0))  # passive TCP: the daemon listens
        self.runner.release("open")
        self.runner.release("compile_clauses")
        listening = self.channels.pending[-1]
        self.lose(client)
        self.assertTrue(listening.called)  # cancelled, and nobody is left to hear of it
        self.runner.release_all()
        self.assertTrue(self.system.handles[-1].closed)
        self.assertEqual(client.replies(), [])
        self.assertNoMisuse()

    def test_daemon_connects_only_once_the_filter_is_in_place(self) -> None:
        client = self.opened()
        client.send(startcap(flags=StartCapFlags.SERVEROPEN))
        self.runner.release("open")
        self.runner.release("compile_clauses")
        self.assertEqual(self.channels.requests, [])
        self.runner.release("place_filter")
        self.assertEqual([r[0] for r in self.channels.requests], ["connect"])
        self.assertIsInstance(client.replies()[0], StartCaptureReply)

    def test_connection_lost_while_the_filter_is_placed(self) -> None:
        client = self.opened()
        client.send(startcap())
        self.runner.release("open")
        self.runner.release("compile_clauses")
        self.assertEqual(self.runner.names, ["place_filter"])
        self.lose(client)
        self.assertEqual(self.runner.names, ["place_filter"])  # the close waits for it
        self.runner.release("place_filter")
        self.assertEqual(self.runner.names, ["close_capture"])
        self.runner.release_all()
        [handle] = self.system.handles
        self.assertTrue(handle.closed)
        self.assertEqual(self.readers(), [])
        self.assertEqual(client.replies(), [])
        self.assertNoMisuse()

    def test_endcap_and_close_queued_behind_startcap(self) -> None:
        client = self.opened()
        client.send(startcap(), EndCaptureRequest(), CloseRequest())
        self.runner.release_all()
        replies = client.replies()
        self.assertEqual([type(m) for m in replies], [StartCaptureReply, EndCaptureReply])
        self.assertFalse(client.connected)
        [handle] = self.system.handles
        self.assertTrue(handle.closed)
        self.assertNoMisuse()

    def test_data_channel_lost_while_a_filter_is_placed(self) -> None:
        first, first_handle = self.capturing(2003)
        first_sink = self.channels.sinks[-1]
        second = self.opened()
        second.send(startcap(2004))
        self.runner.release("open")
        self.runner.release("compile_clauses")
        self.runner.release("place_filter")  # the first capture's (the joiner's own waits behind)
        self.assertEqual(self.runner.names, ["place_filter"])
        first_sink.on_lost("gone")  # type: ignore[operator]
        self.runner.release_all()
        self.assertTrue(first_handle.closed)
        self.assertIsInstance(second.replies()[0], StartCaptureReply)
        self.assertNoMisuse()


class CaptureStartTests(HeldCallsBase):
    def test_reading_starts_only_with_the_filter_in_place(self) -> None:
        client = self.opened()
        client.send(startcap())
        self.runner.release("open")
        self.runner.release("compile_clauses")
        [handle] = self.system.handles
        self.assertIsNone(handle.filter)
        self.assertEqual(self.readers(), [])
        self.assertEqual(client.replies(), [])
        self.runner.release("place_filter")
        self.assertIsNotNone(handle.filter)
        self.assertEqual(len(self.readers()), 1)
        self.assertIsInstance(client.replies()[0], StartCaptureReply)

    def test_startcap_waits_for_every_other_capture_to_leave_its_traffic_out(self) -> None:
        first, first_handle = self.capturing(2003)
        second = self.opened()
        second.send(startcap(2004))
        self.runner.release("open")
        self.runner.release("compile_clauses")
        self.runner.release("place_filter")  # the first capture's
        self.assertEqual(second.replies(), [])
        self.runner.release("place_filter")  # its own
        self.assertIsInstance(second.replies()[0], StartCaptureReply)
        peer = second.transport.getPeer().host
        local = second.transport.getHost().host
        to_second = ether_ipv4_between(17, local, peer, 50000, 2004)
        unrelated = ether_ipv4_between(17, local, peer, 50000, 2005)
        first_handle.inject([(1, 0, to_second), (2, 0, unrelated)])
        self.assertEqual(len(first_handle.read_batch(10)), 1)

    def test_refused_filter_closes_the_capture_and_says_so(self) -> None:
        client = self.opened()
        client.send(startcap())
        self.runner.release("open")
        [handle] = self.system.handles
        handle.refuse_filter = "the kernel refused the filter: [Errno 1] Operation not permitted"
        self.runner.release_all()
        [reply] = client.replies()
        assert isinstance(reply, ErrorReply)
        self.assertEqual(reply.code, ErrorCode.STARTCAPTURE)
        self.assertIn("cannot filter on eth0", reply.text)
        self.assertTrue(handle.closed)
        self.assertTrue(self.channels.sinks[-1].closed)
        self.assertEqual(len(self.factory.forwarded), 0)
        self.assertEqual(client.session.state, SessionState.OPEN)
        self.assertNoMisuse()

    def test_kernel_short_of_memory_gets_the_own_clause_alone(self) -> None:
        first, first_handle = self.capturing(2003)
        second = self.opened()
        second.send(startcap(2004))
        self.runner.release("open")
        second_handle = self.system.handles[-1]
        own = len(first_handle.filter.instructions)  # type: ignore[union-attr]
        for handle in (first_handle, second_handle):
            handle.max_filter_instructions = own  # room for one session's traffic only
        self.runner.release_all()
        self.assertIsInstance(second.replies()[0], StartCaptureReply)
        # Both have their own session's traffic left out, not the other's.
        self.assertEqual(len(second_handle.filter.instructions), own)  # type: ignore[union-attr]
        self.assertEqual(len(first_handle.filter.instructions), own)  # type: ignore[union-attr]
        self.assertNotEqual(first_handle.filter, second_handle.filter)

    def test_stats_after_endcap_are_the_final_counts(self) -> None:
        client, handle = self.capturing()
        handle.inject([(1, 0, b"\x00" * 60)])
        client.send(EndCaptureRequest(), StatsRequest())
        self.assertEqual(self.runner.names, ["close_capture"])
        self.assertEqual(client.replies(), [])
        self.runner.release()
        replies = client.replies()
        self.assertEqual([type(m) for m in replies], [EndCaptureReply, StatsReply])
        self.assertEqual(replies[1].ifrecv, 1)  # type: ignore[union-attr]

    def test_updatefilter_during_a_refresh_ends_with_both(self) -> None:
        first, first_handle = self.capturing(2003)
        second = self.opened()
        second.send(startcap(2004))
        self.runner.release("open")
        self.runner.release("compile_clauses")
        # The refresh of the first capture's filter is held; its client changes its program.
        first.send(UpdateFilterRequest(ICMP_FILTER))
        self.runner.release_all()
        self.assertIsInstance(first.replies()[0], UpdateFilterReply)
        member = first.session._capture
        self.assertEqual(member.client_program, ICMP_FILTER)
        self.assertEqual(first_handle.filter, member.programs()[0])
        self.assertEqual(
            first_handle.filter.instructions[-len(ICMP_FILTER.instructions) :], ICMP_FILTER.instructions
        )  # type: ignore[union-attr]
        self.assertEqual(
            len(self.factory.forwarded.prefixes(member)[0]),
            len(first_handle.filter.instructions) - len(ICMP_FILTER.instructions),
        )  # type: ignore[union-attr]


class CoalescingTests(HeldCallsBase):
    def test_many_starts_one_compile_of_each_clause_and_one_more_round(self) -> None:
        first, _ = self.capturing(2001)
        rounds = self.factory.forwarded.rounds
        compiled = len(self.system.compiled)
        clients = [self.opened() for _ in range(5)]
        for n, client in enumerate(clients):
            client.send(startcap(3000 + n))
        for _ in clients:
            self.runner.release("open")
        # The first to open started a round; the others joined while it compiled.
        self.assertEqual(self.runner.names, ["compile_clauses"])
        self.runner.release_all()
        for client in clients:
            self.assertIsInstance(client.replies()[0], StartCaptureReply)
        self.assertEqual(self.factory.forwarded.rounds - rounds, 1)
        self.assertEqual(len(self.system.compiled) - compiled, 5)
        # Each capture placed its filter once (the first: once more).
        self.assertEqual([len(h.filters_set) for h in self.system.handles], [2, 1, 1, 1, 1, 1])

    def test_a_change_while_placing_makes_one_more_round(self) -> None:
        first, _ = self.capturing(2001)
        rounds = self.factory.forwarded.rounds
        second, third, fourth = self.opened(), self.opened(), self.opened()
        second.send(startcap(3001))
        self.runner.release("open")
        self.runner.release("compile_clauses")
        self.assertEqual(self.runner.names, ["place_filter", "place_filter"])
        third.send(startcap(3002))
        fourth.send(startcap(3003))
        self.runner.release("open")
        self.runner.release("open")
        self.runner.release_all()
        for client in (second, third, fourth):
            self.assertIsInstance(client.replies()[0], StartCaptureReply)
        self.assertEqual(self.factory.forwarded.rounds - rounds, 2)

    def test_ends_in_quick_succession_one_round(self) -> None:
        sessions = [self.capturing(3000 + n) for n in range(4)]
        rounds = self.factory.forwarded.rounds
        for client, _ in sessions[1:]:
            client.send(EndCaptureRequest())
        self.runner.release_all()
        self.assertLessEqual(self.factory.forwarded.rounds - rounds, 2)
        first_client, first_handle = sessions[0]
        self.assertEqual(len(self.factory.forwarded), 1)
        self.assertEqual(first_handle.filter, first_client.session._capture.programs()[0])
        self.assertNoMisuse()

    def test_a_clause_compiled_once_per_link_type(self) -> None:
        self.system.linktypes["lo"] = 113  # Linux cooked
        first, _ = self.capturing(2001)
        second = self.opened("lo")
        second.send(startcap(2002))
        self.runner.release_all()
        self.assertIsInstance(second.replies()[0], StartCaptureReply)
        by_linktype = sorted(lt for _, lt in self.system.compiled)
        self.assertEqual(by_linktype, [1, 1, 113, 113])


class InPlaceTests(SynchronousTestCase):
    def test_default_runner_of_the_fake_runs_in_place(self) -> None:
        self.assertIs(FakeCaptureSystem([LO]).run_blocking, run_in_place)

    def test_a_system_without_a_runner_runs_in_place(self) -> None:
        from rpcapsvc.capture.blocking import runner_of

        self.assertIs(runner_of(object()), run_in_place)

    def test_forwarded_traffic_needs_no_arguments(self) -> None:
        self.assertEqual(len(ForwardedTraffic()), 0)


class ThreadPoolTests(SynchronousTestCase):
    """The real runner delivers results in the reactor thread."""

    def test_pool_runner(self) -> None:
        import threading

        from twisted.python.threadpool import ThreadPool

        from rpcapsvc.capture.blocking import capture_thread_pool

        pool = capture_thread_pool(2)
        self.assertIsInstance(pool, ThreadPool)
        called: list[Any] = []

        class Reactor:
            def callFromThread(self, f: Any, *a: Any) -> None:
                called.append((f, a))

        pool.start()
        self.addCleanup(pool.stop)
        d = pool_runner(Reactor(), pool)(lambda: threading.current_thread().name)
        for _ in range(200):
            if called:
                break
            threading.Event().wait(0.01)
        f, a = called[0]
        f(*a)
        self.assertIn("rpcapd-capture", self.successResultOf(d))


class ServicePoolTests(SynchronousTestCase):
    """The service owns its capture threads: started and stopped with it."""

    def test_started_and_stopped_with_the_service(self) -> None:
        from rpcapsvc.service import RpcapdService

        service = RpcapdService(MemoryReactorClock(), listen=(), policy=SessionPolicy(null_auth=True))
        self.assertIsNone(service.capture_pool)
        service.startService()
        pool = service.capture_pool
        assert pool is not None
        self.assertTrue(pool.started)
        self.assertEqual(pool.max, 16)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.capture_pool)
        self.assertFalse(pool.started)

    def test_none_of_its_own_for_a_capture_system_it_was_given(self) -> None:
        from rpcapsvc.service import RpcapdService

        system = FakeCaptureSystem([LO])
        service = RpcapdService(MemoryReactorClock(), listen=(), capture_system=system)
        service.startService()
        self.assertIsNone(service.capture_pool)
        self.assertIs(service.capture_system, system)
        self.successResultOf(service.stopService())
