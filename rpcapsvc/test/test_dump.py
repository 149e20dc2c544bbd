"""
Tests for C{rpcap-dump} (L{rpcapsvc.collector.dump}): its source URLs, its
options, where the password comes from, how C{-c} cuts a capture, and whole
runs against rpcapsvc's own server in memory (listing interfaces, a capture
down a pipe or into a file, a daemon that vanishes).  No sockets: the
command's endpoint is swapped for an L{iosim} connection.
"""

from __future__ import annotations

import getpass
import io
import os
import sys
from typing import Any, Optional

import pcapy
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcapsvc.collector import dump
from rpcapsvc.collector.dump import Dump, Source, UsageError, build_parser, parse_source, password_for
from rpcapsvc.collector.files import CaptureFileWriter
from rpcapsvc.protocol.datachannel import CapturedPacket
from rpcapsvc.protocol.wire import ErrorCode, RemoteError
from rpcapsvc.test._fixtures import ether_ipv4
from rpcapsvc.test.test_client import (
    COLLECTOR_HOST,
    DAEMON_HOST,
    ICMP_PACKET,
    UDP_PACKET,
    InMemoryDaemon,
    UdpMemoryReactor,
    captured,
)

BIG_PACKET = ether_ipv4(1, bytes(200), src=DAEMON_HOST, dst=COLLECTOR_HOST)


def packets(count: int, first_npkt: int = 1) -> list[CapturedPacket]:
    return captured([(1700000000 + n, n, UDP_PACKET) for n in range(count)], first_npkt)


def read_capture(test: SynchronousTestCase, data: bytes) -> tuple[int, list[tuple[int, int, bytes]]]:
    """
    Open capture file bytes with libpcap, as tcpdump and Wireshark would:
    the link type and every packet as C{(ts_sec, ts_usec, bytes)}.
    """
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    reader = pcapy.open_offline(path)
    out = []
    while True:
        header, body = reader.next()
        if header is None:
            break
        sec, usec = header.getts()
        out.append((sec, usec, body))
    return reader.datalink(), out


class ParseSourceTests(SynchronousTestCase):
    def test_host_and_interface(self) -> None:
        source = parse_source("rpcap://capture.example/eth0")
        self.assertEqual(source, Source("rpcap", "capture.example", 2002, "eth0"))
        self.assertFalse(source.tls)
        self.assertEqual(source.url(), "rpcap://capture.example:2002/eth0")

    def test_port(self) -> None:
        self.assertEqual(parse_source("rpcap://h:2003/eth0"), Source("rpcap", "h", 2003, "eth0"))

    def test_tls_ipv6(self) -> None:
        """rpcaps:// is TLS; a bracketed IPv6 address comes out bare and goes back in brackets."""
        source = parse_source("rpcaps://[::1]:2002/lo")
        self.assertEqual(source, Source("rpcaps", "::1", 2002, "lo"))
        self.assertTrue(source.tls)
        self.assertEqual(source.url(), "rpcaps://[::1]:2002/lo")
        self.assertEqual(source.url("eth1"), "rpcaps://[::1]:2002/eth1")

    def test_no_interface(self) -> None:
        """-D needs no interface: rpcap://HOST/ and rpcap://HOST both do."""
        self.assertEqual(parse_source("rpcap://h/").interface, "")
        self.assertEqual(parse_source("rpcap://h").interface, "")

    def test_bad_sources(self) -> None:
        for text in (
            "eth0",
            "http://h/eth0",
            "pcap://h/eth0",
            "rpcap:///eth0",
            "rpcap://h:99999/eth0",
            "rpcap://h:port/eth0",
            "rpcap://h:-1/eth0",
        ):
            with self.assertRaises(UsageError, msg=text):
                parse_source(text)


class OptionTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Any:
        return build_parser().parse_intermixed_args(list(argv))

    def test_defaults(self) -> None:
        args = self.parse("rpcap://h/eth0")
        self.assertEqual(args.source, "rpcap://h/eth0")
        self.assertEqual(
            (args.list_interfaces, args.write, args.count, args.filter, args.expression),
            (False, None, None, None, []),
        )
        self.assertEqual(args.snaplen, 262144)
        self.assertFalse(args.no_promisc or args.udp or args.quiet)
        self.assertIsNone(args.active or args.auth or args.duration)

    def test_list_interfaces(self) -> None:
        self.assertTrue(self.parse("-D", "rpcap://h/").list_interfaces)
        self.assertTrue(self.parse("--list-interfaces", "rpcap://h/").list_interfaces)

    def test_capture_options(self) -> None:
        args = self.parse(
            "-w", "out.pcapng", "-c", "100", "-s", "96", "-p", "--udp", "-G", "2.5", "-q", "rpcap://h/eth0"
        )
        self.assertEqual(
            (args.write, args.count, args.snaplen, args.no_promisc, args.udp, args.duration, args.quiet),
            ("out.pcapng", 100, 96, True, True, 2.5, True),
        )

    def test_filter_option_and_expression(self) -> None:
        """The filter is -f or the words after the source, as for tcpdump."""
        self.assertEqual(self.parse("-f", "icmp", "rpcap://h/eth0").filter, "icmp")
        args = self.parse("rpcap://h/eth0", "tcp", "port", "80")
        self.assertEqual(args.expression, ["tcp", "port", "80"])

    def test_options_after_the_source(self) -> None:
        """Options may come after the source and among the filter's words."""
        args = self.parse("rpcap://h/eth0", "-c", "5", "tcp", "port", "80", "-w", "x.pcap")
        self.assertEqual((args.count, args.write), (5, "x.pcap"))
        self.assertEqual(args.expression, ["tcp", "port", "80"])

    def test_active_and_auth(self) -> None:
        args = self.parse(
            "--active", "2003", "--auth", "alice", "--password-file", "pw", "--ca", "ca.pem", "-i", "eth1"
        )
        self.assertEqual(
            (args.active, args.auth, args.password_file, args.ca, args.interface, args.source),
            ("2003", "alice", "pw", "ca.pem", "eth1", None),
        )

    def test_snaplen_zero_means_whole_packets(self) -> None:
        """-s 0 keeps whole packets, as for tcpdump (not a filter that returns 0 bytes)."""
        self.assertEqual(self.parse("-s", "0", "rpcap://h/eth0").snaplen, 262144)

    def test_bad_numbers(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        for argv in (["-c", "ten"], ["-c", "0"], ["-c", "-3"], ["-s", "big"], ["-s", "-1"], ["-G", "soon"]):
            with self.assertRaises(SystemExit):
                self.parse(*argv, "rpcap://h/eth0")


class PasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        environ = dict(os.environ)
        environ.pop("RPCAP_PASSWORD", None)
        self.patch(os, "environ", environ)
        self.prompts: list[str] = []
        self.patch(getpass, "getpass", self.fake_getpass)

    def fake_getpass(self, prompt: str = "Password: ") -> str:
        self.prompts.append(prompt)
        return "typed"

    def args(self, *argv: str) -> Any:
        return build_parser().parse_args([*argv, "rpcap://h/eth0"])

    def test_no_auth_no_password(self) -> None:
        """Without --auth there is no login, whatever the environment says."""
        os.environ["RPCAP_PASSWORD"] = "s3cret"
        self.assertIsNone(password_for(self.args()))
        self.assertEqual(self.prompts, [])

    def test_password_file(self) -> None:
        """The file's first line, without its line ending; it wins over the environment."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"from-file\r\n")
        os.environ["RPCAP_PASSWORD"] = "from-env"
        self.assertEqual(password_for(self.args("--auth", "alice", "--password-file", path)), b"from-file")
        self.assertEqual(self.prompts, [])

    def test_environment(self) -> None:
        os.environ["RPCAP_PASSWORD"] = "from-env"
        self.assertEqual(password_for(self.args("--auth", "alice")), b"from-env")
        self.assertEqual(self.prompts, [])

    def test_prompt(self) -> None:
        """With neither, the user is asked, by name."""
        self.assertEqual(password_for(self.args("--auth", "alice")), b"typed")
        self.assertEqual(self.prompts, ["Password for alice: "])


class CountTests(SynchronousTestCase):
    """Dump.on_packets writes what arrives, and -c stops at exactly COUNT packets."""

    def make(self, *argv: str) -> tuple[Dump, io.BytesIO]:
        args = build_parser().parse_args([*argv, "rpcap://h/eth0"])
        stream = io.BytesIO()
        out = CaptureFileWriter(stream, "pcapng", close_stream=False)
        run = Dump(MemoryReactorClock(), args, out, None)
        run.interface_id = out.add_interface("eth0", 1, 262144, "rpcap://h:2002/eth0")
        return run, stream

    def written(self, run: Dump, stream: io.BytesIO) -> list[tuple[int, int, bytes]]:
        assert run.out is not None
        run.out.close()
        linktype, got = read_capture(self, stream.getvalue())
        self.assertEqual(linktype, 1)
        return got

    def test_batch_crossing_the_count(self) -> None:
        """A batch that would pass the count is cut at it, and the capture is done."""
        run, stream = self.make("-c", "5")
        batch = packets(7)
        run.on_packets(batch[:3])
        self.assertNoResult(run.done)
        run.on_packets(batch[3:])
        self.successResultOf(run.done)
        run.on_packets(packets(2, first_npkt=8))
        self.assertEqual(run.packets, 5)
        self.assertEqual(run.bytes, 5 * len(UDP_PACKET))
        self.assertEqual(self.written(run, stream), [(p.ts_sec, p.ts_usec, p.data) for p in batch[:5]])

    def test_count_reached_exactly(self) -> None:
        run, stream = self.make("-c", "3")
        run.on_packets(packets(3))
        self.successResultOf(run.done)
        self.assertEqual(len(self.written(run, stream)), 3)

    def test_no_count(self) -> None:
        run, stream = self.make()
        for n in range(10):
            run.on_packets(packets(10, first_npkt=10 * n + 1))
        self.assertNoResult(run.done)
        self.assertEqual(len(self.written(run, stream)), 100)

    def test_without_a_file_prints_a_line_each(self) -> None:
        """Without -w, each packet is a line on standard output; -c still counts."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        args = build_parser().parse_args(["-c", "2", "rpcap://h/eth0"])
        run = Dump(MemoryReactorClock(), args, None, None)
        run.on_packets(packets(3))
        lines = stdout.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        size = len(UDP_PACKET)
        self.assertRegex(lines[1], rf"^\d\d:\d\d:\d\d\.000001 length {size} captured {size}$")
        self.successResultOf(run.done)

    def test_quiet_without_a_file(self) -> None:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        args = build_parser().parse_args(["-q", "rpcap://h/eth0"])
        Dump(MemoryReactorClock(), args, None, None).on_packets(packets(3))
        self.assertEqual(stdout.getvalue(), "")


@implementer(IStreamClientEndpoint)
class InMemoryEndpoint:
    """Connects to an L{InMemoryDaemon} instead of over the network."""

    def __init__(self, daemon: InMemoryDaemon) -> None:
        self.daemon = daemon
        self.pump: Optional[iosim.IOPump] = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        proto = factory.buildProtocol(IPv4Address("TCP", self.daemon.host, 2002))
        self.pump = self.daemon.connect(proto)
        return defer.succeed(proto)


class RunTests(SynchronousTestCase):
    """Whole rpcap-dump runs against rpcapsvc's own server."""

    def setUp(self) -> None:
        self.daemon = InMemoryDaemon()
        self.addCleanup(self.daemon.close)
        self.endpoint = InMemoryEndpoint(self.daemon)
        self.endpoints: list[tuple[str, int, Optional[str]]] = []

        def client_endpoint(reactor: Any, source: Source, ca: Optional[str]) -> InMemoryEndpoint:
            self.endpoints.append((source.host, source.port, ca))
            return self.endpoint

        self.patch(dump, "client_endpoint", client_endpoint)
        self.reactor = UdpMemoryReactor()
        self.stdout = io.TextIOWrapper(io.BytesIO(), write_through=True)
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def start(self, *argv: str) -> defer.Deferred[int]:
        args = build_parser().parse_intermixed_args(list(argv))
        d = defer.ensureDeferred(dump.run(self.reactor, args))
        self.flush()
        return d

    def flush(self) -> None:
        assert self.endpoint.pump is not None
        self.endpoint.pump.flush()

    def finished(self, d: defer.Deferred[int]) -> int:
        for _ in range(20):
            if d.called:
                break
            self.flush()
        return self.successResultOf(d)

    def test_list_interfaces(self) -> None:
        """-D lists each interface with its number, description, state and addresses, and hangs up."""
        d = self.start("-D", f"rpcap://{DAEMON_HOST}/")
        self.assertEqual(self.finished(d), 0)
        self.assertEqual(
            self.stdout.buffer.getvalue().decode(),  # type: ignore[attr-defined]
            "1.lo [Up] 127.0.0.1\n2.eth0 (Ethernet adapter) [Up] 192.0.2.20, 2001:db8::20\n",
        )
        self.assertEqual(self.endpoints, [(DAEMON_HOST, 2002, None)])
        self.assertEqual(self.daemon.factory.sessions, set())

    def test_capture_to_pipe(self) -> None:
        """
        `rpcap-dump -w - ... | wireshark -k -i -`: standard output carries
        a pcapng stream and nothing else; -c ends the capture at the daemon.
        """
        d = self.start("-w", "-", "-c", "2", "--udp", f"rpcap://{DAEMON_HOST}/eth0", "icmp")
        self.assertNoResult(d)
        [udp] = self.reactor.udpPorts
        self.daemon.capture(
            [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET), (3, 0, ICMP_PACKET), (4, 0, ICMP_PACKET)]
        )
        self.daemon.forward_udp(udp.protocol)
        self.assertEqual(self.finished(d), 0)
        data = self.stdout.buffer.getvalue()  # type: ignore[attr-defined]
        self.assertEqual(data[:4], b"\x0a\x0d\x0d\x0a")
        self.assertIn(f"rpcap://{DAEMON_HOST}:2002/eth0".encode(), data)
        self.assertEqual(read_capture(self, data), (1, [(1, 0, ICMP_PACKET), (3, 0, ICMP_PACKET)]))
        self.assertTrue(self.daemon.system.handles[-1].closed)
        self.assertFalse(udp.listening)
        self.assertEqual(self.daemon.factory.sessions, set())
        self.assertIn("rpcap-dump: capturing on eth0 (link type 1)\n", self.stderr.getvalue())
        self.assertIn(
            "rpcap-dump: 2 packets captured, 0 dropped by the daemon's kernel, 0 lost in transit\n",
            self.stderr.getvalue(),
        )

    def test_capture_to_pcap_file_over_tcp(self) -> None:
        """-w FILE.pcap writes classic pcap; the default data channel is TCP to the daemon."""
        path = self.mktemp() + ".pcap"
        d = self.start("-w", path, "-c", "3", "-s", "96", f"rpcap://{DAEMON_HOST}:2003/eth0")
        self.assertNoResult(d)
        self.reactor.advance(0)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), (DAEMON_HOST, 40001))
        receiver = factory.buildProtocol(IPv4Address("TCP", host, port))
        receiver.makeConnection(iosim.FakeTransport(receiver, isServer=False))
        self.flush()
        self.daemon.channels.pending[-1].callback(None)
        self.daemon.capture([(n, 0, BIG_PACKET) for n in range(5)])
        self.daemon.forward_tcp(receiver)
        self.assertEqual(self.finished(d), 0)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:4], (0xA1B2C3D4).to_bytes(4, sys.byteorder))
        self.assertEqual(read_capture(self, data), (1, [(n, 0, BIG_PACKET[:96]) for n in range(3)]))
        self.assertEqual(self.endpoints, [(DAEMON_HOST, 2003, None)])

    def test_duration(self) -> None:
        """-G stops the capture after that many seconds."""
        path = self.mktemp()
        d = self.start("-w", path + ".pcapng", "-G", "5", "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        self.reactor.advance(4.9)
        self.flush()
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertEqual(self.finished(d), 0)
        self.assertIn("0 packets captured", self.stderr.getvalue())

    def test_daemon_vanishes(self) -> None:
        """
        When the daemon hangs up mid-capture, rpcap-dump finishes the file
        with what it got and exits rather than waiting for ever.
        """
        path = self.mktemp()
        d = self.start("-w", path, "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        [server] = self.daemon.factory.sessions
        server.transport.loseConnection()
        self.assertEqual(self.finished(d), 0)
        with open(path, "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET)]))
        self.assertFalse(udp.listening)
        self.assertIn("1 packets captured", self.stderr.getvalue())

    def test_interrupted(self) -> None:
        """
        Ctrl-C (the reactor shutting down) ends the capture at the daemon,
        finishes the file and reports the counts; the run ends cleanly.
        """
        path = self.mktemp()
        d = self.start("-w", path, "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        [finishing] = self.reactor.shut_down()
        self.assertEqual(self.finished(d), 0)
        self.successResultOf(finishing)
        self.assertTrue(self.daemon.system.handles[-1].closed)
        self.assertEqual(self.daemon.factory.sessions, set())
        with open(path, "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)]))
        self.assertEqual(
            self.stderr.getvalue().splitlines()[-1],
            "rpcap-dump: 2 packets captured, 0 dropped by the daemon's kernel, 0 lost in transit",
        )

    def test_active(self) -> None:
        """
        --active PORT waits for a daemon to connect, stops listening, and
        captures from the daemon's first (preselected) interface; the first
        word is the filter, as there is no source.
        """
        daemon = InMemoryDaemon(active=True, preselected="eth0")
        self.addCleanup(daemon.close)
        args = build_parser().parse_intermixed_args(
            ["--active", "2003", "--udp", "-c", "1", "-w", "-", "icmp"]
        )
        d = defer.ensureDeferred(dump.run(self.reactor, args))
        port, factory, _, _ = self.reactor.tcpServers[-1]
        self.assertEqual(port, 2003)
        self.assertIn("rpcap-dump: waiting for a daemon on tcp:2003\n", self.stderr.getvalue())
        pump = daemon.connect(factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 50000)))
        pump.flush()
        self.assertFalse(self.reactor.tcpPorts[0].listening)
        self.assertEqual(daemon.system.handles[-1].device, "eth0")
        [udp] = self.reactor.udpPorts
        daemon.capture([(1, 0, UDP_PACKET), (2, 0, ICMP_PACKET)])
        daemon.forward_udp(udp.protocol)
        for _ in range(20):
            if d.called:
                break
            pump.flush()
        self.assertEqual(self.successResultOf(d), 0)
        data = self.stdout.buffer.getvalue()  # type: ignore[attr-defined]
        self.assertEqual(read_capture(self, data), (1, [(2, 0, ICMP_PACKET)]))
        self.assertIn(f"rpcap-dump: daemon connected from {DAEMON_HOST}\n", self.stderr.getvalue())

    def test_refused(self) -> None:
        """An interface the daemon refuses fails the run with its error."""
        d = self.start("-w", self.mktemp(), f"rpcap://{DAEMON_HOST}/eth9")
        self.assertEqual(self.failureResultOf(d, RemoteError).value.code, ErrorCode.OPEN)


class MainTests(SynchronousTestCase):
    """main(): the command line parsed, and errors turned into messages and exit codes."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.seen: list[Any] = []
        self.outcome: list[Any] = []

        def react(main: Any) -> None:
            main(MemoryReactorClock()).addBoth(self.outcome.append)

        self.patch(dump.task, "react", react)

    def main(self, argv: list[str], error: Optional[Exception] = None) -> Optional[int]:
        async def run(reactor: Any, args: Any) -> int:
            self.seen.append(args)
            if error is not None:
                raise error
            return 0

        self.patch(dump, "run", run)
        dump.main(argv)
        [result] = self.outcome
        if isinstance(result, Failure):
            result.trap(SystemExit)
            return result.value.code  # type: ignore[no-any-return]
        return None

    def test_options_after_source(self) -> None:
        """`rpcap-dump rpcap://h/eth0 -c 5 tcp port 80` works as tcpdump's order would."""
        self.assertIsNone(self.main(["rpcap://h/eth0", "-c", "5", "tcp", "port", "80"]))
        [args] = self.seen
        self.assertEqual(
            (args.source, args.count, args.expression), ("rpcap://h/eth0", 5, ["tcp", "port", "80"])
        )

    def test_usage_error(self) -> None:
        self.assertEqual(self.main(["rpcap://h/eth0"], UsageError("give a source")), 2)
        self.assertEqual(self.stderr.getvalue(), "rpcap-dump: give a source\n")

    def test_bad_filter(self) -> None:
        self.assertEqual(self.main(["rpcap://h/eth0", "tcp port x"], ValueError("cannot compile filter")), 2)
        self.assertEqual(self.stderr.getvalue(), "rpcap-dump: cannot compile filter\n")

    def test_refused(self) -> None:
        error = RemoteError(ErrorCode.AUTH_FAILED, "Authentication failed")
        self.assertEqual(self.main(["rpcap://h/eth0"], error), 1)
        self.assertEqual(
            self.stderr.getvalue(), "rpcap-dump: the daemon refused: Authentication failed (error 18)\n"
        )

    def test_tls_failure(self) -> None:
        """rpcaps:// to a daemon whose certificate is not trusted: a message, not a traceback."""
        from OpenSSL.SSL import Error as TLSError
        from service_identity import VerificationError

        for error in (TLSError([("SSL routines", "", "certificate verify failed")]), VerificationError([])):
            self.stderr.truncate(0)
            self.stderr.seek(0)
            self.outcome.clear()
            self.assertEqual(self.main(["--ca", "ca.pem", "rpcaps://h/eth0"], error), 1)
            self.assertIn("rpcap-dump: TLS with the daemon failed: ", self.stderr.getvalue())

    def test_cannot_connect(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        self.assertEqual(self.main(["rpcap://h/eth0"], ConnectionRefusedError()), 1)
        self.assertIn("rpcap-dump: cannot connect:", self.stderr.getvalue())
