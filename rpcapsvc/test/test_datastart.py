"""
Tests for L{rpcapsvc.server.datastart}: which data-channel strategy a
startcap gets, and the pcap expression of a session's own traffic.  How
each strategy runs a start is tested through the session (test_session,
test_capture_threads).
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.capture.system import CaptureOptions
from rpcapsvc.connections import TlsSettings
from rpcapsvc.protocol.wire import StartCapFlags, StartCaptureRequest
from rpcapsvc.server.datastart import (
    ActiveTcpStart,
    PassiveTcpStart,
    UdpStart,
    data_start_for,
    own_traffic_expression,
)
from rpcapsvc.testing import FakeDataChannels


@attrs.define
class Control:
    peer_host: str = "192.0.2.7"
    local_host: str = "192.0.2.1"
    active: bool = False
    tls: Optional[TlsSettings] = None


OPTIONS = CaptureOptions(snaplen=1500, promiscuous=False, read_timeout_ms=250)


def request(flags: int, portdata: int = 0) -> StartCaptureRequest:
    return StartCaptureRequest(1500, 250, flags, portdata)


class ChoiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.channels = FakeDataChannels()

    def choose(self, flags: int, portdata: int = 0, control: Optional[Control] = None) -> object:
        return data_start_for(request(flags, portdata), control or Control(), self.channels, OPTIONS)  # type: ignore[arg-type]

    def test_passive(self) -> None:
        """No flag, passive session: we listen on our own address for the peer."""
        self.assertEqual(
            self.choose(0),
            PassiveTcpStart(self.channels, "192.0.2.1", "192.0.2.7", 1500, None, 250),  # type: ignore[arg-type]
        )

    def test_server_opens(self) -> None:
        self.assertEqual(
            self.choose(StartCapFlags.SERVEROPEN, 2003),
            ActiveTcpStart(self.channels, "192.0.2.7", 2003, 1500, None, 250),  # type: ignore[arg-type]
        )

    def test_active_mode_connects(self) -> None:
        """In active mode the daemon connects even without the flag."""
        self.assertIsInstance(self.choose(0, 2003, Control(active=True)), ActiveTcpStart)

    def test_tls_belongs_to_the_tcp_ones(self) -> None:
        tls = TlsSettings(None)  # type: ignore[arg-type]
        passive = self.choose(0, 0, Control(tls=tls))
        active = self.choose(StartCapFlags.SERVEROPEN, 2003, Control(tls=tls))
        self.assertIs(passive.tls, tls)  # type: ignore[attr-defined]
        self.assertIs(active.tls, tls)  # type: ignore[attr-defined]

    def test_udp_wins(self) -> None:
        """UDP is UDP whatever else is flagged, in either mode."""
        self.assertEqual(
            self.choose(StartCapFlags.DGRAM | StartCapFlags.SERVEROPEN, 2003, Control(active=True)),
            UdpStart(self.channels, "192.0.2.7", 2003, 1500, 250),  # type: ignore[arg-type]
        )


class OwnTrafficTests(SynchronousTestCase):
    def test_data_and_control(self) -> None:
        self.assertEqual(
            own_traffic_expression("192.0.2.7", 2002, 40000, "tcp and port 41000"),
            "host 192.0.2.7 and ((tcp and port 41000) or (tcp and port 2002 and port 40000))",
        )

    def test_control_without_ports(self) -> None:
        """A control connection with no ports (a UNIX socket) adds no clause of its own."""
        self.assertEqual(
            own_traffic_expression("192.0.2.7", 0, 0, "udp and port 5 and port 6"),
            "host 192.0.2.7 and ((udp and port 5 and port 6))",
        )

    def test_no_peer_address(self) -> None:
        self.assertEqual(own_traffic_expression("", 2002, 40000, "tcp and port 1"), "")
