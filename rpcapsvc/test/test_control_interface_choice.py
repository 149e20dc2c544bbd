"""
Tests that a collector's preselected interface (C{ifaddr=}) is chosen off
the reactor thread: the interfaces are listed through the capture system's
runner, the control connection is not read meanwhile, and the session
begins once the choice is made.  Which interface matches is tested in
test_preselect.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.capture.system import CaptureError
from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    ErrorCode,
    ErrorReply,
    InterfaceInfo,
    OpenReply,
    OpenRequest,
)
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.session import SessionPolicy
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels, HeldRunner

from ._fixtures import ETH0, LO, Client
from .test_preselect import interface

ETH1 = interface("eth1", "198.51.100.7")


class InterfaceChoiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = HeldRunner()
        self.system = FakeCaptureSystem([LO, ETH0, ETH1], run_blocking=self.runner)
        self.factory = RpcapServerFactory(
            MemoryReactorClock(),
            self.system,
            SessionPolicy(null_auth=True),
            FakeDataChannels(),  # type: ignore[arg-type]
            active=True,
            interface_address="198.51.100.0/24",
        )
        self.addCleanup(lambda: [h.close() for h in self.system.handles])

    def test_listed_through_the_runner(self) -> None:
        """Nothing is listed in the reactor thread; the session starts when the listing comes back."""
        client = Client(self.factory, "198.51.100.1")
        self.assertEqual(self.runner.names, ["list_interfaces"])
        self.assertIsNone(client.session)
        self.assertEqual(client.transport.producerState, "paused")  # the client's requests wait
        self.runner.release("list_interfaces")
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(client.session.preselected, "eth1")
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        client.send(OpenRequest("eth0"))
        reply = client.replies()[0]
        assert isinstance(reply, ErrorReply)
        self.assertEqual(reply.code, ErrorCode.OPEN)
        client.send(OpenRequest("eth1"))
        self.runner.release_all()
        self.assertIsInstance(client.replies()[0], OpenReply)

    def test_connection_lost_while_listing(self) -> None:
        client = Client(self.factory, "198.51.100.1")
        client.protocol.connectionLost(Failure(ConnectionLost()))
        self.runner.release("list_interfaces")
        self.assertIsNone(client.session)
        self.assertNotIn(client.protocol, self.factory.sessions)

    def test_listing_fails(self) -> None:
        """One line in the log, the connection closed (active mode reconnects later)."""

        def broken() -> list[InterfaceInfo]:
            raise CaptureError("no permission to list interfaces")

        self.system.list_interfaces = broken  # type: ignore[method-assign]
        client = Client(self.factory, "198.51.100.1")
        with capturedLogs() as events:
            self.runner.release()
        self.assertIsNone(client.session)
        self.assertFalse(client.connected)
        self.assertNotIn(client.protocol, self.factory.sessions)
        [line] = [formatEvent(e) for e in events]
        self.assertIn("no permission to list interfaces", line)
        self.assertNotIn("Traceback", line)
        self.assertFalse([e for e in events if e.get("log_failure") is not None])
