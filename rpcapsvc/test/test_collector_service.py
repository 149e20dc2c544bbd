"""
Tests for C{twistd rpcapcollect}: its options (L{rpcapsvc.collector.tap}),
the service L{makeService} builds from them, and L{CollectorService} with
daemons in active mode connecting to it - rpcapsvc's own server over
L{iosim}, with a fake capture system: which interface each daemon captures,
what the files are called and hold, what is logged, and what happens when a
daemon vanishes or refuses.  No sockets.
"""

from __future__ import annotations

import os
import signal
import struct
from typing import Any

from prometheus_client import generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.collector import service as collector_service
from rpcapsvc.collector.client import RpcapClientProtocol, TcpPacketReceiver
from rpcapsvc.collector.files import DirectoryBudget, FileHistory, RotatingCaptureFiles
from rpcapsvc.collector.service import (
    DEFAULT_LISTEN,
    STOP_GRACE,
    CollectorService,
    CollectorSettings,
    DaemonSession,
    host_file_name,
    interface_file_name,
)
from rpcapsvc.collector.tap import Options, makeService
from rpcapsvc.protocol.wire import MessageType
from rpcapsvc.server.active import ReconnectPolicy
from rpcapsvc.server.session import ServerSession
from rpcapsvc.test.test_client import (
    COLLECTOR_HOST,
    DAEMON_HOST,
    ICMP_PACKET,
    OTHER_HOST,
    UDP_PACKET,
    InMemoryDaemon,
    UdpMemoryReactor,
)
from rpcapsvc.test.test_dump import read_capture

STAMP = r"\d{8}T\d{6}"


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        environ = dict(os.environ)
        environ.pop("RPCAP_PASSWORD", None)
        self.patch(os, "environ", environ)

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def refused(self, *argv: str) -> str:
        with self.assertRaises(UsageError) as caught:
            self.parse(*argv)
        return str(caught.exception)

    def test_defaults(self) -> None:
        """With no options: daemons on TCP port 2003, pcapng files in ./captures, over TCP."""
        options = self.parse()
        self.assertEqual(DEFAULT_LISTEN, "tcp:2003")
        self.assertEqual(options["listen"], ["tcp:2003"])
        self.assertEqual(options["directory"], "captures")
        self.assertEqual(options["format"], "pcapng")
        self.assertEqual((options["snaplen"], options["filter"], options["udp"]), (262144, "", 0))
        self.assertIsNone(options["interface"])
        self.assertEqual(options["host-interface"], {})
        self.assertEqual(
            (options["rotate-size"], options["rotate-seconds"], options["max-files"]), (None,) * 3
        )
        self.assertEqual(options["stats-interval"], 10.0)
        self.assertEqual(options.password, b"")

    def test_listen_repeatable(self) -> None:
        options = self.parse("--listen", "tcp:2003:interface=192.0.2.1", "--listen", "tcp6:2003")
        self.assertEqual(options["listen"], ["tcp:2003:interface=192.0.2.1", "tcp6:2003"])

    def test_listen_port_out_of_range(self) -> None:
        """Refused as an option (one line), not by bind() at start (a traceback)."""
        self.assertIn("99999 is not a port number", self.refused("--listen", "tcp:99999"))

    def test_host_interface(self) -> None:
        """HOST=IFACE, repeatable; an IPv6 host's colons are fine."""
        options = self.parse(
            "--host-interface", "192.0.2.20=eth1", "--host-interface", "2001:db8::7=ens3", "-i", "eth0"
        )
        self.assertEqual(options["host-interface"], {"192.0.2.20": "eth1", "2001:db8::7": "ens3"})
        self.assertEqual(options["interface"], "eth0")

    def test_host_interface_bad(self) -> None:
        for value in ("eth0", "=eth0", "192.0.2.20=", ""):
            self.assertIn("HOST=IFACE", self.refused("--host-interface", value))

    def test_format(self) -> None:
        self.assertEqual(self.parse("--format", "pcap")["format"], "pcap")
        self.assertIn("pcapng, pcap", self.refused("--format", "pcapx"))

    def test_capture_options(self) -> None:
        options = self.parse("-u", "-f", "not port 22", "-s", "128", "-d", "/srv/pcap")
        self.assertEqual(
            (options["udp"], options["filter"], options["snaplen"], options["directory"]),
            (1, "not port 22", 128, "/srv/pcap"),
        )

    def test_not_positive_refused(self) -> None:
        for name in ("rotate-size", "rotate-seconds", "max-files", "stats-interval", "retry-refused"):
            for value in ("0", "-1"):
                self.assertIn(f"--{name} must be positive", self.refused(f"--{name}", value))

    def test_filter_checked_at_start(self) -> None:
        """A filter libpcap cannot compile would refuse every daemon: it is refused at once."""
        self.assertIn("--filter 'udp prt 1'", self.refused("-f", "udp prt 1"))
        self.assertEqual(self.parse("-f", "udp port 1")["filter"], "udp port 1")

    def test_snaplen(self) -> None:
        """A negative snaplen is refused; 0 means all of each packet, as for tcpdump -s 0."""
        self.assertIn("--snaplen", self.refused("--snaplen", "-1"))
        self.assertEqual(self.parse("--snaplen", "0")["snaplen"], 262144)

    def test_not_a_number(self) -> None:
        for option in ("--snaplen", "--rotate-size", "--max-files"):
            self.assertRaises(UsageError, self.parse, option, "lots")

    def test_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"secret\n")
        os.environ["RPCAP_PASSWORD"] = "from-env"
        self.assertEqual(self.parse("--user", "alice", "--password-file", path).password, b"secret")

    def test_password_from_environment(self) -> None:
        os.environ["RPCAP_PASSWORD"] = "from-env"
        self.assertEqual(self.parse("--user", "alice").password, b"from-env")
        self.assertEqual(self.parse().password, b"")


class MakeServiceTests(SynchronousTestCase):
    def make(self, *argv: str) -> CollectorService:
        options = Options()
        options.parseOptions(list(argv))
        return makeService(options)

    def test_service(self) -> None:
        """makeService builds the collector its options describe (and touches no disk)."""
        directory = os.path.join(self.mktemp(), "captures")
        service = self.make(
            "-d",
            directory,
            "--listen",
            "tcp:2003",
            "--listen",
            "tcp:2004:interface=127.0.0.1",
            "-i",
            "eth0",
            "--host-interface",
            "192.0.2.20=eth1",
            "--filter",
            "icmp",
            "-s",
            "96",
            "--udp",
            "--format",
            "pcap",
            "--rotate-size",
            "1.5",
            "--rotate-seconds",
            "3600",
            "--max-files",
            "24",
            "--stats-interval",
            "30",
            "--retry-refused",
            "45",
        )
        self.assertIsInstance(service, CollectorService)
        # Made at start, once twistd has dropped privileges; never by the constructor.
        self.assertFalse(os.path.exists(directory))
        self.assertEqual(
            service.settings,
            CollectorSettings(
                directory=directory,
                interface="eth0",
                host_interfaces={"192.0.2.20": "eth1"},
                filter="icmp",
                snaplen=96,
                udp=True,
                format="pcap",
                rotate_bytes=1_500_000,
                rotate_seconds=3600.0,
                max_files=24,
                username=None,
                password=b"",
                stats_interval=30.0,
                refused_hold=45.0,
                max_buffered=64_000_000,
                max_daemon_files=16 * 24,
            ),
        )
        listeners = list(service)
        self.assertEqual(len(listeners), 2)
        self.assertTrue(all(isinstance(s, StreamServerEndpointService) for s in listeners))
        ports = [s.endpoint._port for s in listeners]  # type: ignore[attr-defined]
        self.assertEqual(ports, [2003, 2004])
        self.assertFalse(service.running)

    def test_user(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"secret\n")
        service = self.make("-d", self.mktemp(), "--user", "alice", "--password-file", path)
        self.assertEqual((service.settings.username, service.settings.password), (b"alice", b"secret"))


class Collector:
    """A L{CollectorService} on a memory reactor, its log, and the daemons that connect to it."""

    def __init__(self, test: SynchronousTestCase, **settings: Any) -> None:
        self.test = test
        self.reactor = UdpMemoryReactor()
        self.directory = test.mktemp()
        self.events: list[dict[str, Any]] = []
        test.patch(DaemonSession, "log", Logger(observer=self.events.append))
        test.patch(CollectorService, "log", Logger(observer=self.events.append))
        self.service = CollectorService(self.reactor, CollectorSettings(self.directory, **settings))
        self.service.startService()
        test.addCleanup(lambda: self.service.running and self.service.stopService())
        [listener] = list(self.service)
        self.factory = listener.factory  # type: ignore[attr-defined]
        self.daemons: list[InMemoryDaemon] = []

    def log(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def files(self) -> list[str]:
        return sorted(os.listdir(self.directory))

    def daemon_connects(
        self, host: str = DAEMON_HOST, collector_host: str = COLLECTOR_HOST, **daemon: Any
    ) -> tuple[InMemoryDaemon, RpcapClientProtocol, iosim.IOPump]:
        """A daemon in active mode connects; the collector logs in, opens and starts capturing."""
        d = InMemoryDaemon(host, active=True, **daemon)
        self.test.addCleanup(d.close)
        self.daemons.append(d)
        address = IPv6Address if ":" in host else IPv4Address
        client = self.factory.buildProtocol(address("TCP", host, 50000))
        pump = d.connect(client, collector_host=collector_host, port=50000)
        pump.flush()
        return d, client, pump

    def data_connects(self, host: str = DAEMON_HOST) -> TcpPacketReceiver:
        """The daemon opens the TCP data connection the collector asked for."""
        _, factory, _, _ = self.reactor.tcpServers[-1]
        address = IPv6Address if ":" in host else IPv4Address
        receiver = factory.buildProtocol(address("TCP", host, 50001))
        receiver.makeConnection(iosim.FakeTransport(receiver, isServer=False))
        return receiver  # type: ignore[no-any-return]

    def capturing(
        self, host: str = DAEMON_HOST, collector_host: str = COLLECTOR_HOST, **daemon: Any
    ) -> tuple[InMemoryDaemon, DaemonSession, TcpPacketReceiver, iosim.IOPump]:
        d, client, pump = self.daemon_connects(host, collector_host, **daemon)
        receiver = self.data_connects(host)
        [session] = [s for s in self.service.sessions if s.client is client]
        self.test.assertIsNotNone(session.capture)
        return d, session, receiver, pump


class DaemonSessionTests(SynchronousTestCase):
    def test_capture_into_a_file_named_for_the_daemon(self) -> None:
        """
        A daemon that connects is captured into <host>_<iface>_<time>_<n>.pcapng;
        the file holds its packets, and the connection is logged.
        """
        collector = Collector(self, interface="eth0")
        daemon, session, receiver, _ = collector.capturing()
        self.assertEqual(daemon.system.handles[-1].device, "eth0")
        [name] = collector.files()
        self.assertRegex(name, rf"^192\.0\.2\.20_eth0_{STAMP}_00001\.pcapng$")
        daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        daemon.forward_tcp(receiver)
        self.assertEqual(session.packets, 2)
        collector.service.stopService()
        with open(os.path.join(collector.directory, name), "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)]))
        log = collector.log()
        self.assertIn("daemon=192.0.2.20:50000 connected", log)
        files = os.path.join(collector.directory, "192.0.2.20_eth0_*.pcapng")
        self.assertIn(f"daemon=192.0.2.20:50000 interface=eth0 capturing into {files}", log)

    def test_concurrent_sessions_of_one_daemon_and_interface_get_their_own_series(self) -> None:
        """
        Two sessions from the same host on the same interface write series
        that can be told apart; the name is free again once a session ends.
        """
        collector = Collector(self, interface="eth0")
        _, first, _, _ = collector.capturing()
        _, second, _, _ = collector.capturing()
        names = sorted(collector.files())
        self.assertEqual(len(names), 2)
        self.assertRegex(names[0], rf"^192\.0\.2\.20_eth0-2_{STAMP}_00001\.pcapng$")
        self.assertRegex(names[1], rf"^192\.0\.2\.20_eth0_{STAMP}_00001\.pcapng$")
        first.client.close()
        first.finish()
        _, third, _, _ = collector.capturing()
        self.assertEqual(third.prefix, "192.0.2.20_eth0")
        self.assertEqual(second.prefix, "192.0.2.20_eth0-2")

    def test_ipv6_daemon(self) -> None:
        """An IPv6 daemon's colons do not reach the file name."""
        collector = Collector(self, interface="eth0")
        collector.capturing("2001:db8::7", "2001:db8::1")
        [name] = collector.files()
        self.assertRegex(name, rf"^2001-db8--7_eth0_{STAMP}_00001\.pcapng$")

    def test_ipv4_daemon_on_an_ipv6_listener(self) -> None:
        """
        An IPv4 daemon accepted on a dual-stack listener (--listen tcp6:2003)
        is known by its IPv4 address: in --host-interface, file names and logs.
        """
        collector = Collector(self, interface="lo", host_interfaces={DAEMON_HOST: "eth0"})
        daemon, _, _, _ = collector.capturing(f"::ffff:{DAEMON_HOST}", f"::ffff:{COLLECTOR_HOST}")
        self.assertEqual(daemon.system.handles[-1].device, "eth0")
        [name] = collector.files()
        self.assertRegex(name, rf"^192\.0\.2\.20_eth0_{STAMP}_00001\.pcapng$")
        self.assertIn("daemon=192.0.2.20:50000 connected", collector.log())

    def test_unsafe_interface_name(self) -> None:
        """An interface name that is no safe file name is made into one, with a hash of the real name."""
        from rpcapsvc.protocol.wire import InterfaceInfo

        collector = Collector(self)
        collector.capturing(interfaces=[InterfaceInfo("eth0 (uplink)")])
        [name] = collector.files()
        self.assertRegex(name, rf"^192\.0\.2\.20_eth0-uplink-[0-9a-f]{{8}}_{STAMP}_00001\.pcapng$")

    def test_pcap_format(self) -> None:
        collector = Collector(self, format="pcap", interface="eth0")
        collector.capturing()
        [name] = collector.files()
        self.assertTrue(name.endswith("_00001.pcap"), name)

    def test_daemons_first_interface_by_default(self) -> None:
        """With no interface named, the daemon's first (its preselected one, when it has one)."""
        collector = Collector(self)
        daemon, _, _, _ = collector.capturing()
        self.assertEqual(daemon.system.handles[-1].device, "lo")
        other, _, _, _ = collector.capturing(OTHER_HOST, preselected="eth0")  # rpcapd -i eth0
        self.assertEqual(other.system.handles[-1].device, "eth0")

    def test_interface_per_host(self) -> None:
        """--host-interface wins for its host; the others get --interface."""
        collector = Collector(self, interface="lo", host_interfaces={DAEMON_HOST: "eth0"})
        first, _, _, _ = collector.capturing()
        other, _, _, _ = collector.capturing(OTHER_HOST)
        self.assertEqual(first.system.handles[-1].device, "eth0")
        self.assertEqual(other.system.handles[-1].device, "lo")
        self.assertEqual(len(collector.files()), 2)

    def test_filter_compiled_here(self) -> None:
        collector = Collector(self, interface="eth0", filter="icmp")
        daemon, session, receiver, _ = collector.capturing()
        daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        daemon.forward_tcp(receiver)
        self.assertEqual(session.packets, 1)

    def test_udp(self) -> None:
        collector = Collector(self, interface="eth0", udp=True)
        daemon, client, _ = collector.daemon_connects()
        [udp] = collector.reactor.udpPorts
        self.assertEqual(daemon.channels.requests, [("udp", COLLECTOR_HOST, str(udp.port))])
        daemon.capture([(1, 0, ICMP_PACKET)])
        daemon.forward_udp(udp.protocol)
        [session] = collector.service.sessions
        self.assertEqual(session.packets, 1)

    def test_counts_logged(self) -> None:
        """Every stats interval the collector logs the packet, drop and loss counts."""
        collector = Collector(self, interface="eth0", stats_interval=30)
        daemon, session, receiver, pump = collector.capturing()
        daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, UDP_PACKET)])
        daemon.forward_tcp(receiver)
        daemon.system.handles[-1].dropped = 4
        collector.reactor.advance(29)
        pump.flush()
        self.assertFalse([line for line in collector.log() if "lost_in_transit" in line])
        collector.reactor.advance(1)
        pump.flush()
        self.assertIn(
            "daemon=192.0.2.20:50000 interface=eth0 stats: file_prefix=192.0.2.20_eth0 "
            "packets=3 kernel_dropped=4 lost_in_transit=0 lost_datagrams=0",
            collector.log(),
        )
        self.assertEqual(session.drops, 4)

    def test_daemon_vanishes(self) -> None:
        """
        A daemon that hangs up ends only its own capture: its file is
        finished and readable, it is logged, and the other daemons go on.
        """
        collector = Collector(self, interface="eth0")
        first, first_session, first_receiver, first_pump = collector.capturing()
        second, second_session, second_receiver, _ = collector.capturing(OTHER_HOST)
        first.capture([(1, 0, ICMP_PACKET)])
        first.forward_tcp(first_receiver)
        [server] = first.factory.sessions
        server.transport.loseConnection()
        first_pump.flush()
        self.assertEqual(collector.service.sessions, {second_session})
        self.assertIn("daemon=192.0.2.20:50000 interface=eth0 gone: packets=1 files=1", collector.log())
        [first_file] = [n for n in collector.files() if n.startswith("192.0.2.20_")]
        with open(os.path.join(collector.directory, first_file), "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET)]))
        second.capture([(2, 0, UDP_PACKET)])
        second.forward_tcp(second_receiver)
        self.assertEqual(second_session.packets, 1)
        # The ticker of the session that ended is stopped.
        collector.reactor.advance(60)
        self.assertFalse(
            [
                line
                for line in collector.log()
                if line.startswith("daemon=192.0.2.20:50000 interface=eth0 stats:")
            ]
        )

    def test_unreadable_data_connection(self) -> None:
        """
        A data connection that carries no RPCAP ends the session, said once,
        on a line that names the daemon, the interface and what was wrong.
        """
        collector = Collector(self, interface="eth0")
        _, session, receiver, pump = collector.capturing()
        with capturedLogs() as elsewhere:
            receiver.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
            receiver.connectionLost(Failure(ConnectionDone()))
            pump.flush()
        self.assertEqual(
            [line for line in collector.log() if "data connection" in line],
            [
                "daemon=192.0.2.20:50000 interface=eth0 data connection unreadable "
                "(not an RPCAP data stream (first bytes 48 54)); ending the session"
            ],
        )
        # Nothing else of the collector's says it again (the in-memory daemon logs its side).
        self.assertEqual(
            [formatEvent(e) for e in elsewhere if e["log_namespace"].startswith("rpcapsvc.collector")], []
        )
        self.assertTrue(session.client.disconnected.called)

    def test_refused(self) -> None:
        """
        A daemon that refuses the capture is logged, held idle for
        refused_hold seconds (an active daemon dials again at once when hung
        up on), then hung up on without RPCAP CLOSE, and leaves no empty file.
        """
        server_log = self.server_log()
        collector = Collector(self, interface="eth9", refused_hold=30.0)
        daemon, client, pump = collector.daemon_connects()
        pump.flush()
        [warning] = [line for line in collector.log() if "capture not started" in line]
        self.assertTrue(
            warning.startswith("daemon=192.0.2.20:50000 interface=eth9 capture not started: "), warning
        )
        self.assertIn("trying again in 30 s", warning)
        self.assertFalse(client.disconnected.called)
        collector.reactor.advance(29)
        pump.flush()
        self.assertFalse(client.disconnected.called)
        collector.reactor.advance(1)
        pump.flush()
        self.assertTrue(client.disconnected.called)
        self.assertEqual(collector.service.sessions, set())
        self.assertEqual(daemon.factory.sessions, set())
        self.assertEqual(collector.files(), [])
        self.assertNoCloseSent(server_log)

    def server_log(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(ServerSession, "log", Logger(observer=events.append))
        return events

    def assertNoCloseSent(self, events: list[dict[str, Any]]) -> None:
        """The daemon's sessions ended with the connection, never with an RPCAP CLOSE."""
        ends = [formatEvent(e) for e in events if "closed:" in formatEvent(e)]
        self.assertTrue(ends)
        for line in ends:
            self.assertNotIn("client closed the session", line)
            self.assertIn("connection lost", line)

    def test_daemon_told_how_the_session_went(self) -> None:
        """
        Our daemon's reconnect policy hears how many packets a session
        forwarded: after a restarted collector's hang-up it dials again at
        once; after a refused capture it backs off.
        """
        collector = Collector(self, interface="eth0")
        daemon, _, receiver, pump = collector.capturing()
        policy = ReconnectPolicy("collector", jitter=lambda: 0.0)
        daemon.factory.reconnect = policy
        daemon.capture([(1, 0, ICMP_PACKET)])
        daemon.forward_tcp(receiver)
        collector.service.stopService()
        pump.flush()
        self.assertEqual(policy(1), 0.0)

        refusing = Collector(self, interface="eth9", refused_hold=1.0)
        daemon, _, pump = refusing.daemon_connects()
        daemon.factory.reconnect = policy
        refusing.reactor.advance(1)
        pump.flush()
        self.assertGreater(policy(1), 0.5)

    def test_stop_closes_control_before_data(self) -> None:
        """
        Stopping hangs up the control connection first; the data connection
        is closed only after the daemon has seen that (or after a grace
        period), so ExtraHop's rpcapd never writes into a closed data socket.
        """
        collector = Collector(self, interface="eth0")
        _, _, receiver, _ = collector.capturing()
        stopped = collector.service.stopService()
        self.assertNoResult(stopped)
        # No daemon is accepted any more while the others are being let go.
        self.assertFalse([listener for listener in collector.service if listener.running])
        self.assertFalse(receiver.transport.disconnecting)  # type: ignore[union-attr]
        collector.reactor.advance(STOP_GRACE)
        self.successResultOf(stopped)
        self.assertEqual(collector.service.sessions, set())
        self.assertTrue(receiver.transport.disconnecting)  # type: ignore[union-attr]

    def test_sighup_reopens_files(self) -> None:
        """SIGHUP: each capture finishes its file and goes on in a new one (for log-rotation tools)."""
        collector = Collector(self, interface="eth0")
        daemon, session, receiver, _ = collector.capturing()
        daemon.capture([(1, 0, ICMP_PACKET)])
        daemon.forward_tcp(receiver)
        collector.service.reopen_files()
        daemon.capture([(2, 0, UDP_PACKET)])
        daemon.forward_tcp(receiver)
        first, second = collector.files()
        with open(os.path.join(collector.directory, first), "rb") as f:
            self.assertEqual(read_capture(self, f.read())[1], [(1, 0, ICMP_PACKET)])
        collector.service.stopService()
        with open(os.path.join(collector.directory, second), "rb") as f:
            self.assertEqual(read_capture(self, f.read())[1], [(2, 0, UDP_PACKET)])

    def test_sighup_handler(self) -> None:
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        reactor = UdpMemoryReactor()
        service = CollectorService(reactor, CollectorSettings(self.mktemp()), [], reload_on_sighup=True)
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), service.sighup)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_sighup_handler_before_the_port_opens(self) -> None:
        """The handler is in place before daemons can connect, so an early SIGHUP cannot end the collector."""
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        reactor = UdpMemoryReactor()
        at_listen: list[object] = []
        listen = reactor.listenTCP

        def recording(*args: Any, **kwargs: Any) -> Any:
            at_listen.append(signal.getsignal(signal.SIGHUP))
            return listen(*args, **kwargs)

        reactor.listenTCP = recording  # type: ignore[method-assign]
        service = CollectorService(
            reactor, CollectorSettings(self.mktemp()), ["tcp:0:interface=127.0.0.1"], reload_on_sighup=True
        )
        service.privilegedStartService()
        self.assertEqual(at_listen, [service.sighup])
        service.startService()
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_refused_daemon_gone_while_held(self) -> None:
        """A refused daemon that hangs up while held ends its session; nothing is left scheduled."""
        collector = Collector(self, interface="eth9")
        daemon, client, pump = collector.daemon_connects()
        [server] = daemon.factory.sessions
        server.transport.loseConnection()
        pump.flush()
        self.assertTrue(client.disconnected.called)
        self.assertEqual(collector.service.sessions, set())
        self.assertEqual([c for c in collector.reactor.getDelayedCalls() if c.active()], [])

    def test_stop_service(self) -> None:
        """
        Stopping the collector hangs up on every daemon (no RPCAP CLOSE, so
        real daemons dial again) and finishes every file.
        """
        server_log = self.server_log()
        collector = Collector(self, interface="eth0")
        daemon, _, receiver, pump = collector.capturing()
        daemon.capture([(1, 0, ICMP_PACKET)])
        daemon.forward_tcp(receiver)
        collector.service.stopService()
        pump.flush()
        self.assertEqual(collector.service.sessions, set())
        self.assertEqual(daemon.factory.sessions, set())
        self.assertTrue(daemon.system.handles[-1].closed)
        self.assertNoCloseSent(server_log)
        [name] = collector.files()
        with open(os.path.join(collector.directory, name), "rb") as f:
            self.assertEqual(len(read_capture(self, f.read())[1]), 1)

    def test_rotation(self) -> None:
        """--rotate-seconds starts a new file, named in sequence, when the time is up."""
        collector = Collector(self, interface="eth0", rotate_seconds=60, stats_interval=10)
        clock: list[float] = [1_700_000_000.0]
        self.patch(collector_service.RotatingCaptureFiles, "__init__", _with_clock(clock))
        daemon, session, receiver, pump = collector.capturing()
        daemon.capture([(1, 0, ICMP_PACKET)])
        daemon.forward_tcp(receiver)
        clock[0] += 60
        collector.reactor.advance(10)
        pump.flush()
        daemon.capture([(2, 0, UDP_PACKET)])
        daemon.forward_tcp(receiver)
        collector.service.stopService()
        first, second = collector.files()
        self.assertRegex(first, r"^192\.0\.2\.20_eth0_20231114T221320_00001\.pcapng$")
        self.assertRegex(second, r"^192\.0\.2\.20_eth0_20231114T221420_00002\.pcapng$")
        contents = []
        for name in (first, second):
            with open(os.path.join(collector.directory, name), "rb") as f:
                contents.append(read_capture(self, f.read())[1])
        self.assertEqual(contents, [[(1, 0, ICMP_PACKET)], [(2, 0, UDP_PACKET)]])


def _with_clock(clock: list[float]) -> Any:
    """RotatingCaptureFiles.__init__ reading time from C{clock[0]}."""
    original = collector_service.RotatingCaptureFiles.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["clock"] = lambda: clock[0]
        original(self, *args, **kwargs)

    return __init__


class _HangUpTransport(StringTransport):
    """A daemon's connection that sends nothing: closing it ends the protocol at once."""

    def loseConnection(self) -> None:
        self.abortConnection()

    def abortConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


def silent_connection(collector: Collector, host: str, port: int = 40000) -> RpcapClientProtocol:
    """Someone connects to the collector from C{host} and never says a word."""
    address = IPv6Address if ":" in host else IPv4Address
    client = collector.factory.buildProtocol(address("TCP", host, port))
    transport = _HangUpTransport(
        hostAddress=address("TCP", COLLECTOR_HOST if ":" not in host else "2001:db8::1", 2003),
        peerAddress=address("TCP", host, port),
    )
    transport.protocol = client
    client.makeConnection(transport)
    return client  # type: ignore[no-any-return]


def scrape(service: CollectorService) -> str:
    return generate_latest(service.metrics_registry).decode()


class ConnectionLimitTests(SynchronousTestCase):
    """Deadlines and limits on the daemons that dial in (issue 13: a hostile daemon)."""

    def test_login_deadline(self) -> None:
        """
        A connection that does not get to capturing within --login-timeout
        seconds is closed, said once and counted; a daemon that is capturing
        is never timed out.
        """
        collector = Collector(self, interface="eth0", login_timeout=5.0)
        _, capturing, _, _ = collector.capturing()
        silent = silent_connection(collector, OTHER_HOST)
        collector.reactor.advance(4.9)
        self.assertFalse(silent.disconnected.called)
        collector.reactor.advance(0.2)
        self.assertTrue(silent.disconnected.called)
        self.assertEqual(collector.service.sessions, {capturing})
        self.assertIn(
            f"daemon={OTHER_HOST}:40000 closed: not capturing 5 s after connecting (--login-timeout)",
            collector.log(),
        )
        self.assertEqual(collector.service.closed, {"login-timeout": 1})
        self.assertIn(
            'rpcapcollect_connections_closed_total{reason="login-timeout"} 1.0', scrape(collector.service)
        )
        collector.reactor.advance(60)
        self.assertFalse(capturing.client.disconnected.called)

    def test_stallers_of_one_host_make_room(self) -> None:
        """
        Connections of one address not capturing are at most
        --max-unanswered-per-host: the one connected longest is closed for a
        newer one, so a flood of silent connections cannot keep a genuine
        daemon of that address out, nor touch other addresses' connections.
        """
        collector = Collector(self, interface="eth0", max_unanswered_per_host=3)
        elsewhere = silent_connection(collector, OTHER_HOST)
        flood = [silent_connection(collector, DAEMON_HOST, 40000 + n) for n in range(10)]
        self.assertEqual([c.disconnected.called for c in flood], [True] * 7 + [False] * 3)
        self.assertFalse(elsewhere.disconnected.called)
        _, session, _, _ = collector.capturing()  # closes one more silent one to make room
        self.assertTrue(session.capturing)
        self.assertEqual([c.disconnected.called for c in flood], [True] * 8 + [False] * 2)
        self.assertEqual(collector.service.closed, {"made-room": 8})

    def test_refusals_logged_within_a_budget(self) -> None:
        """
        A flood of connections is logged one by one up to REFUSALS_LOGGED
        lines each 10 s; the rest are counted, and the count is said with
        the next line logged.
        """
        collector = Collector(self, max_unanswered_per_host=1, login_timeout=60.0)
        for n in range(16):
            silent_connection(collector, DAEMON_HOST, 40000 + n)
        lines = [line for line in collector.log() if "made room for a newer connection" in line]
        self.assertEqual(len(lines), collector_service.REFUSALS_LOGGED)
        self.assertEqual(collector.service.closed, {"made-room": 15})
        collector.reactor.advance(collector_service.SUMMARY_INTERVAL)
        silent_connection(collector, DAEMON_HOST, 41000)
        [summary] = [line for line in collector.log() if line.endswith("(5 more not logged)")]
        self.assertIn("daemon=192.0.2.20:40015 closed: not capturing; made room", summary)

    def test_stallers_in_all_make_room(self) -> None:
        collector = Collector(self, interface="eth0", max_unanswered=2)
        hosts = ["192.0.2.31", "192.0.2.32", "192.0.2.33"]
        clients = [silent_connection(collector, host) for host in hosts]
        self.assertEqual([c.disconnected.called for c in clients], [True, False, False])
        self.assertIn(
            "daemon=192.0.2.31:40000 closed: not capturing; made room for a newer connection "
            "(--max-unanswered 2)",
            collector.log(),
        )

    def test_capturing_daemons_are_never_closed_to_make_room(self) -> None:
        """
        When daemons capturing fill --max-daemons-per-host (or --max-daemons),
        the newcomer is refused at once, counted by reason; the capturing
        daemon goes on.
        """
        collector = Collector(self, interface="eth0", max_daemons_per_host=1, max_daemons=2)
        _, first, _, _ = collector.capturing()
        refused = silent_connection(collector, DAEMON_HOST, 40001)
        self.assertTrue(refused.disconnected.called)
        self.assertIn(
            f"daemon={DAEMON_HOST}:40001 refused: 1 daemons of {DAEMON_HOST} capturing already "
            "(--max-daemons-per-host)",
            collector.log(),
        )
        _, second, _, _ = collector.capturing(OTHER_HOST)
        self.assertTrue(silent_connection(collector, "192.0.2.99").disconnected.called)
        self.assertEqual(collector.service.refused, {"max-daemons-per-host": 1, "max-daemons": 1})
        self.assertEqual(collector.service.sessions, {first, second})
        self.assertTrue(first.capturing and second.capturing)
        metrics = scrape(collector.service)
        self.assertIn('rpcapcollect_connections_refused_total{reason="max-daemons"} 1.0', metrics)
        self.assertIn("rpcapcollect_connections_total 4.0", metrics)

    def test_ipv6_host_is_its_64(self) -> None:
        """Per-address limits count an IPv6 daemon by its /64: a host has many addresses."""
        collector = Collector(self, interface="eth0", max_unanswered_per_host=1)
        first = silent_connection(collector, "2001:db8:0:1::1")
        second = silent_connection(collector, "2001:db8:0:1::2")
        other = silent_connection(collector, "2001:db8:0:2::1")
        self.assertEqual([c.disconnected.called for c in (first, second, other)], [True, False, False])

    def test_message_size_bounded(self) -> None:
        """
        A daemon announcing a reply bigger than --max-message-size is hung up
        on before it is buffered (was 16 MiB per connection).
        """
        collector = Collector(self, max_message_size=512 * 1024)
        client = silent_connection(collector, DAEMON_HOST)
        self.assertEqual(client.parser.max_payload, 512 * 1024)
        client.dataReceived(struct.pack("!BBHI", 0, MessageType.FINDALLIF_REPLY, 0, 512 * 1024 + 1))
        self.assertTrue(client.disconnected.called)
        self.assertEqual(client.parser.buffered, 0)
        self.assertEqual(collector.service.closed, {"protocol": 1})

    def test_total_buffered_bounded(self) -> None:
        """
        Past --max-buffered bytes of unfinished messages over all
        connections, the connection holding the most is closed.
        """
        collector = Collector(self, max_buffered=400 * 1024)
        header = struct.pack("!BBHI", 0, MessageType.FINDALLIF_REPLY, 0, 1000 * 1024)
        clients = [silent_connection(collector, f"192.0.2.{40 + n}") for n in range(3)]
        for n, client in enumerate(clients):
            client.dataReceived(header + b"x" * (100 + n) * 1024)
        self.assertEqual([c.disconnected.called for c in clients], [False, False, False])
        clients[0].dataReceived(b"y" * 150 * 1024)  # now 250 KiB of 555 in all
        self.assertEqual([c.disconnected.called for c in clients], [True, False, False])
        self.assertEqual(collector.service.closed, {"max-buffered": 1})
        self.assertLessEqual(collector.service.buffered(), 400 * 1024)
        self.assertIn("rpcapcollect_buffered_bytes", scrape(collector.service))

    def test_stats_reply_deadline(self) -> None:
        """A capturing daemon that leaves a stats request unanswered until the next one is due is hung up on."""
        collector = Collector(self, interface="eth0", stats_interval=10.0)
        daemon, session, _, pump = collector.capturing()
        [server] = daemon.factory.sessions
        server.dataReceived = lambda data: None  # it stops answering
        collector.reactor.advance(10)
        pump.flush()
        self.assertFalse(session.client.disconnected.called)
        collector.reactor.advance(10)
        pump.flush()
        self.assertTrue(session.client.disconnected.called)
        self.assertIn(
            "daemon=192.0.2.20:50000 interface=eth0 closed: no stats reply within 10 s (--stats-interval)",
            collector.log(),
        )
        self.assertEqual(collector.service.sessions, set())


class FileNameTests(SynchronousTestCase):
    """File names built from what daemons send (issue 13)."""

    def test_ipv6_prefixes_cannot_collide(self) -> None:
        """C{1:2::3} and C{1::2:3} are different daemons; C{1:2:0::3} is C{1:2::3}."""
        self.assertEqual(host_file_name("1:2::3"), "1-2--3")
        self.assertEqual(host_file_name("1::2:3"), "1--2-3")
        self.assertEqual(host_file_name("1:2:0::3"), "1-2--3")
        self.assertEqual(host_file_name("::1"), "--1")
        self.assertNotEqual(host_file_name("::1"), host_file_name("1::"))
        self.assertEqual(host_file_name("192.0.2.7"), "192.0.2.7")
        self.assertEqual(host_file_name("fe80::1%eth0"), "fe80--1-scope-eth0")

    def test_max_files_of_colliding_addresses_kept_apart(self) -> None:
        """With --max-files 1, two daemons that used to share a prefix each keep their file."""
        collector = Collector(self, interface="eth0", max_files=1)
        for host in ("1:2::3", "1::2:3"):
            daemon, session, _, pump = collector.capturing(host, "1::99")
            [server] = daemon.factory.sessions
            server.transport.loseConnection()
            pump.flush()
        names = collector.files()
        self.assertEqual(len(names), 2, names)
        self.assertEqual(sorted(n.split("_")[0] for n in names), ["1--2-3", "1-2--3"])

    def test_interface_names_stay_inside_the_directory(self) -> None:
        """
        Interface names with slashes, dots, line breaks or 64 KB of text give
        file names inside the directory, short enough to open, told apart.
        """
        for name in ("../../escaped", "/etc/passwd", "..", "eth0\nforged", "a" * 65536):
            self.assertNotIn("/", interface_file_name(name))
            self.assertLessEqual(len(interface_file_name(name)), 80)
        self.assertNotEqual(interface_file_name("eth0 (uplink)"), interface_file_name("eth0-uplink"))
        self.assertEqual(interface_file_name("eth0.100"), "eth0.100")
        # What the session builds its files from (our own daemon refuses such names:
        # test_hostile_collect has a daemon that opens them).
        directory = os.path.abspath(self.mktemp())
        outside = os.path.join(os.path.dirname(directory), "outside")
        os.makedirs(directory)
        os.makedirs(outside)
        for name in ("../outside/x", "eth0\r\nforged: line", "b" * 65536):
            prefix = f"{host_file_name('1::2')}_{interface_file_name(name)}"
            RotatingCaptureFiles(directory, prefix).close()
        self.assertEqual(len(os.listdir(directory)), 3)
        self.assertEqual(os.listdir(outside), [])

    def test_interface_name_escaped_in_the_log(self) -> None:
        """An interface name with a line break cannot forge a line of the collector's log."""
        from rpcapsvc.protocol.wire import InterfaceInfo

        collector = Collector(self, interface="eth0\r\nforged: line")
        collector.daemon_connects(interfaces=[InterfaceInfo("eth0")])
        self.assertTrue(collector.log())
        self.assertFalse([line for line in collector.log() if "\n" in line or "\r" in line])
        self.assertIn("interface=eth0\\r\\nforged: line capture not started", "".join(collector.log()))

    def test_invented_interface_names_bounded(self) -> None:
        """
        A daemon that lists a new interface name on each connection keeps at
        most --max-daemon-files files, and only its own go; another daemon's
        files are untouched.
        """
        from rpcapsvc.protocol.wire import InterfaceInfo

        collector = Collector(self, max_files=1, max_daemon_files=3)
        _, other, _, _ = collector.capturing(OTHER_HOST)
        for n in range(20):
            daemon, session, _, pump = collector.capturing(interfaces=[InterfaceInfo(f"fake{n}")])
            [server] = daemon.factory.sessions
            server.transport.loseConnection()
            pump.flush()
        names = collector.files()
        mine = [n for n in names if n.startswith(f"{DAEMON_HOST}_")]
        self.assertEqual(len(mine), 3, names)
        self.assertEqual(sorted(n.split("_")[1] for n in mine), ["fake17", "fake18", "fake19"])
        self.assertEqual(len([n for n in names if n.startswith(f"{OTHER_HOST}_")]), 1)
        self.assertTrue(other.capturing)
        self.assertLessEqual(len(collector.service._histories), 4)
        self.assertIn("rpcapcollect_files_deleted_by_budget_total 17.0", scrape(collector.service))


class DirectoryBudgetTests(SynchronousTestCase):
    def write(self, directory: str, name: str, size: int) -> str:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(b"x" * size)
        return path

    def test_size_cap_takes_from_the_biggest_owner(self) -> None:
        """Over the size cap, the oldest closed file of the daemon holding the most bytes goes first."""
        directory = self.mktemp()
        os.makedirs(directory)
        budget = DirectoryBudget(max_bytes=1000)
        history = FileHistory()
        small = self.write(directory, "small", 100)
        budget.opened(small, "a", history)
        budget.closed(small, 100)
        big = [self.write(directory, f"big{n}", 300) for n in range(3)]
        for path in big:
            budget.opened(path, "b", history)
            budget.closed(path, 300)
        self.assertEqual(budget.total_bytes, 1000)
        open_one = self.write(directory, "open", 0)
        budget.opened(open_one, "b", history)
        budget.grown(open_one, 200)
        self.assertEqual(sorted(os.listdir(directory)), ["big1", "big2", "open", "small"])
        self.assertEqual(budget.total_bytes, 900)
        self.assertEqual(budget.deleted, 1)

    def test_open_files_are_never_deleted(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        budget = DirectoryBudget(max_files=1)
        for name in ("one", "two"):
            budget.opened(self.write(directory, name, 10), "a", FileHistory())
        self.assertEqual(sorted(os.listdir(directory)), ["one", "two"])
        budget.closed(os.path.join(directory, "one"), 10)
        self.assertEqual(os.listdir(directory), ["two"])
