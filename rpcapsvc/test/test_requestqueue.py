"""
Tests for L{rpcapsvc.server.requestqueue}: requests handled one at a time,
in order, with the control connection read only while nothing waits.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.protocol.framing import ControlStreamParser, Received
from rpcapsvc.protocol.wire import FindAllInterfacesRequest, Message, OpenRequest, StatsRequest
from rpcapsvc.server.requestqueue import REQUESTS_PER_TURN, RequestQueue


def received(*messages: Message) -> list[Received]:
    return ControlStreamParser().feed(b"".join(m.encode() for m in messages))


class Connection:
    """The reading side of a control connection: whether it is read."""

    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class RequestQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connection = Connection()
        self.handled: list[Optional[Message]] = []
        self.waiting: list[defer.Deferred[None]] = []
        self.slow = False
        self.faults: list[Failure] = []
        self.finished = 0
        self.queue = RequestQueue(self.clock, self.connection, self.handle, self.faults.append, self.finish)

    def handle(self, request: Received) -> Optional[defer.Deferred[None]]:
        self.handled.append(request.message)
        if isinstance(request.message, OpenRequest) and request.message.device == "boom":
            raise RuntimeError("a bug")
        if self.slow:
            d: defer.Deferred[None] = defer.Deferred()
            self.waiting.append(d)
            return d
        return None

    def finish(self) -> None:
        self.finished += 1

    def test_in_order_and_reading_resumed(self) -> None:
        self.queue.received(received(FindAllInterfacesRequest(), StatsRequest()))
        self.assertEqual(self.handled, [FindAllInterfacesRequest(), StatsRequest()])
        self.assertTrue(self.connection.reading)

    def test_one_at_a_time(self) -> None:
        """A request that goes on after returning keeps the next one waiting, and the connection unread."""
        self.slow = True
        self.queue.received(received(FindAllInterfacesRequest(), StatsRequest()))
        self.assertEqual(self.handled, [FindAllInterfacesRequest()])
        self.assertTrue(self.queue.busy)
        self.assertFalse(self.connection.reading)
        self.waiting[0].callback(None)
        self.assertEqual(self.handled, [FindAllInterfacesRequest(), StatsRequest()])
        self.waiting[1].callback(None)
        self.assertFalse(self.queue.busy)
        self.assertTrue(self.connection.reading)

    def test_yields_after_a_turn(self) -> None:
        """After REQUESTS_PER_TURN requests, the rest wait for the next turn of the reactor."""
        self.queue.received(received(*[StatsRequest()] * (REQUESTS_PER_TURN + 5)))
        self.assertEqual(len(self.handled), REQUESTS_PER_TURN)
        self.assertFalse(self.connection.reading)
        self.clock.advance(0)
        self.assertEqual(len(self.handled), REQUESTS_PER_TURN + 5)
        self.assertTrue(self.connection.reading)

    def test_opens_count_double(self) -> None:
        """Opening a capture is slow: two fill a turn."""
        self.queue.received(received(*[OpenRequest("eth0")] * 3))
        self.assertEqual(len(self.handled), 2)
        self.clock.advance(0)
        self.assertEqual(len(self.handled), 3)

    def test_held(self) -> None:
        """Work an earlier request started holds the next request until it is done."""
        closing: defer.Deferred[None] = defer.Deferred()
        self.queue.hold(closing)
        self.assertTrue(self.queue.held)
        self.queue.received(received(StatsRequest()))
        self.assertEqual(self.handled, [])
        self.assertFalse(self.connection.reading)
        closing.callback(None)
        self.assertFalse(self.queue.held)
        self.assertEqual(self.handled, [StatsRequest()])
        self.assertTrue(self.connection.reading)

    def test_hold_on_work_already_done(self) -> None:
        self.queue.hold(defer.succeed(None))
        self.assertFalse(self.queue.held)

    def test_replies_backed_up(self) -> None:
        """While the client does not read its replies, no request is handled and the connection is not read."""
        self.queue.replies_backed_up(True)
        self.assertFalse(self.connection.reading)
        self.queue.received(received(StatsRequest()))
        self.assertEqual(self.handled, [])
        self.queue.replies_backed_up(False)
        self.assertEqual(self.handled, [StatsRequest()])
        self.assertTrue(self.connection.reading)

    def test_half_close_answers_then_finishes(self) -> None:
        """After a half-close, every request sent is handled, then the owner is told, once."""
        self.slow = True
        self.queue.received(received(StatsRequest(), StatsRequest()))
        self.queue.input_ended()
        self.assertEqual(self.finished, 0)
        self.waiting[0].callback(None)
        self.assertEqual(self.finished, 0)
        self.waiting[1].callback(None)
        self.assertEqual(self.finished, 1)

    def test_fault_reported_and_queue_goes_on(self) -> None:
        self.queue.received(received(OpenRequest("boom"), StatsRequest()))
        [fault] = self.faults
        self.assertIsInstance(fault.value, RuntimeError)
        self.assertEqual(self.handled, [OpenRequest("boom"), StatsRequest()])

    def test_failed_request_reported(self) -> None:
        self.slow = True
        self.queue.received(received(StatsRequest(), StatsRequest()))
        self.waiting[0].errback(RuntimeError("late bug"))
        self.assertEqual([str(f.value) for f in self.faults], ["late bug"])
        self.assertEqual(len(self.handled), 2)

    def test_stop(self) -> None:
        """A stopped queue drops what waits, handles nothing and leaves the connection alone."""
        self.queue.received(received(*[StatsRequest()] * (REQUESTS_PER_TURN + 5)))
        self.queue.stop()
        self.assertEqual(len(self.queue), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.connection.reading = True
        self.queue.received(received(StatsRequest()))
        self.queue.input_ended()
        self.assertEqual(len(self.handled), REQUESTS_PER_TURN)
        self.assertTrue(self.connection.reading)
        self.assertEqual(self.finished, 0)
