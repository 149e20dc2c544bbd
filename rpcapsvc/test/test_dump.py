"""
Tests for C{rpcap-dump} (L{rpcapsvc.collector.dump}): its source URLs, its
options (tcpdump's letters, dumpcap's C{-a}) and what the words of a command
line mean, where the password comes from, how C{-c} cuts a capture, file
rotation, and whole runs against rpcapsvc's own server in memory: listing
interfaces, a capture down a pipe or into a file, every way a capture ends
(each with its last line and exit status), and every error a user can cause
(each one line, never a traceback).  No sockets: the command's endpoint is
swapped for an L{iosim} connection.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import io
import os
import re
import signal
import sys
from typing import Any, Optional

import pcapy
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcapsvc import __version__
from rpcapsvc.collector import dump
from rpcapsvc.collector.connect import Daemon
from rpcapsvc.collector.dump import (
    EXIT_DAEMON_ENDED,
    EXIT_PROTOCOL,
    EXIT_VANISHED,
    SIGNAL_GRACE,
    CaptureCutShort,
    DataChannelError,
    Dump,
    DumpClient,
    DumpError,
    Interrupted,
    NoReply,
    Output,
    Run,
    Source,
    UsageError,
    advice,
    build_parser,
    open_output,
    parse_source,
    password_for,
    resolve,
    rotation_name,
)
from rpcapsvc.collector.files import CaptureFileWriter
from rpcapsvc.protocol.datachannel import CapturedPacket
from rpcapsvc.protocol.wire import ErrorCode, RemoteError, StatsReply
from rpcapsvc.server.session import SessionPolicy
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
    return read_capture_file(path)


def read_capture_file(path: str) -> tuple[int, list[tuple[int, int, bytes]]]:
    reader = pcapy.open_offline(path)
    out = []
    while True:
        header, body = reader.next()
        if header is None:
            break
        sec, usec = header.getts()
        out.append((sec, usec, body))
    return reader.datalink(), out


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_intermixed_args(list(argv))


def resolved(*argv: str) -> argparse.Namespace:
    return resolve(parse(*argv))


class ParseSourceTests(SynchronousTestCase):
    def test_host_and_interface(self) -> None:
        source = parse_source("rpcap://capture.example/eth0")
        self.assertEqual(source, Source("rpcap", "capture.example", 2002, "eth0"))
        self.assertFalse(source.tls)
        self.assertEqual(source.url(), "rpcap://capture.example:2002/eth0")
        self.assertEqual(source.address, "capture.example:2002")

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
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_defaults(self) -> None:
        args = parse("rpcap://h/eth0")
        self.assertEqual(args.source, "rpcap://h/eth0")
        self.assertEqual(
            (args.list_interfaces, args.write, args.count, args.filter, args.expression),
            (False, None, None, None, []),
        )
        self.assertEqual(args.snaplen, 262144)
        self.assertEqual(args.timeout, 10.0)
        self.assertFalse(args.no_promisc or args.udp or args.quiet)
        self.assertIsNone(args.active or args.auth or args.duration or args.rotate_seconds)
        self.assertEqual(resolve(args).limits, dump.Limits())

    def test_list_interfaces(self) -> None:
        self.assertTrue(parse("-D", "rpcap://h/").list_interfaces)
        self.assertTrue(parse("--list-interfaces", "rpcap://h/").list_interfaces)

    def test_capture_options(self) -> None:
        args = parse("-w", "out.pcapng", "-c", "100", "-s", "96", "-p", "--udp", "-q", "rpcap://h/eth0")
        self.assertEqual(
            (args.write, args.count, args.snaplen, args.no_promisc, args.udp, args.quiet),
            ("out.pcapng", 100, 96, True, True, True),
        )

    def test_filter_option_and_expression(self) -> None:
        """The filter is -f or the words after the source, as for tcpdump; not both."""
        self.assertEqual(resolved("-f", "icmp", "rpcap://h/eth0").expression_text, "icmp")
        self.assertEqual(resolved("rpcap://h/eth0", "tcp", "port", "80").expression_text, "tcp port 80")
        with self.assertRaises(UsageError) as e:
            resolved("-f", "icmp", "rpcap://h/eth0", "tcp")
        self.assertIn("two filters", str(e.exception))

    def test_options_after_the_source(self) -> None:
        """Options may come after the source and among the filter's words."""
        args = resolved("rpcap://h/eth0", "-c", "5", "tcp", "port", "80", "-w", "x.pcap")
        self.assertEqual((args.count, args.write), (5, "x.pcap"))
        self.assertEqual(args.expression_text, "tcp port 80")
        self.assertEqual((args.url, args.device), (Source("rpcap", "h", 2002, "eth0"), "eth0"))

    def test_interface_option(self) -> None:
        """-i names the interface instead of the URL; -i rpcap://... is the source, as for tcpdump."""
        self.assertEqual(resolved("-i", "eth1", "rpcap://h/eth0").device, "eth1")
        args = resolved("-i", "rpcap://h:2003/eth0", "tcp", "port", "80")
        self.assertEqual((args.url, args.device), (Source("rpcap", "h", 2003, "eth0"), "eth0"))
        self.assertEqual(args.expression_text, "tcp port 80")

    def test_active_and_auth(self) -> None:
        args = resolved(
            "--active", "2003", "--auth", "alice", "--password-file", "pw", "--ca", "ca.pem", "-i", "eth1"
        )
        self.assertEqual(
            (args.active, args.auth, args.password_file, args.ca, args.device, args.url),
            ("2003", "alice", "pw", "ca.pem", "eth1", None),
        )

    def test_active_interface_is_the_first_word(self) -> None:
        """With --active, the first word is the interface and the rest the filter."""
        args = resolved("--active", "2003", "-w", "x.pcap", "lo", "icmp")
        self.assertEqual((args.device, args.device_from_word, args.expression_text), ("lo", True, "icmp"))
        args = resolved("--active", "2003", "lo")
        self.assertEqual((args.device, args.expression_text), ("lo", ""))

    def test_active_with_interface_option(self) -> None:
        """... unless -i names it: then every word is the filter's."""
        args = resolved("--active", "2003", "-i", "eth1", "tcp", "port", "80")
        self.assertEqual(
            (args.device, args.device_from_word, args.expression_text), ("eth1", False, "tcp port 80")
        )

    def test_active_quoted_filter(self) -> None:
        """A first word holding a space is a quoted filter (no interface name has one): the daemon's first interface."""
        args = resolved("--active", "2003", "udp dst port 53")
        self.assertEqual((args.device, args.expression_text), ("", "udp dst port 53"))
        args = resolved("--active", "2003", "-f", "icmp")
        self.assertEqual((args.device, args.expression_text), ("", "icmp"))

    def test_active_takes_no_url(self) -> None:
        for argv in (["--active", "2003", "rpcap://h/eth0"], ["--active", "2003", "-i", "rpcap://h/eth0"]):
            with self.assertRaises(UsageError) as e:
                resolved(*argv)
            self.assertIn("--active takes no rpcap:// source", str(e.exception))

    def test_no_source(self) -> None:
        with self.assertRaises(UsageError) as e:
            resolved()
        self.assertIn("give the daemon's URL", str(e.exception))
        with self.assertRaises(UsageError) as e:
            resolved("eth0", "icmp")
        self.assertIn("'eth0' is not an rpcap://HOST[:PORT]/INTERFACE source", str(e.exception))

    def test_password_file_needs_auth(self) -> None:
        with self.assertRaises(UsageError):
            resolved("--password-file", "pw", "rpcap://h/eth0")

    def test_snaplen_zero_means_whole_packets(self) -> None:
        """-s 0 keeps whole packets, as for tcpdump (not a filter that returns 0 bytes)."""
        self.assertEqual(parse("-s", "0", "rpcap://h/eth0").snaplen, 262144)

    def test_bad_options_are_one_line(self) -> None:
        """A bad option or number: one line naming it (no usage dump), exit status 2."""
        for argv in (
            ["-c", "ten"],
            ["-c", "0"],
            ["-c", "-3"],
            ["-s", "big"],
            ["-s", "-1"],
            ["-s", "300000"],
            ["-G", "soon"],
            ["-G", "0"],
            ["-C", "big"],
            ["-C", "0"],
            ["-W", "0"],
            ["-a", "duration"],
            ["-a", "hours:2"],
            ["-a", "duration:-1"],
            ["-a", "packets:x"],
            ["--timeout", "0"],
            ["--bogus"],
        ):
            self.stderr.truncate(0)
            self.stderr.seek(0)
            with self.assertRaises(SystemExit) as e:
                parse(*argv, "rpcap://h/eth0")
            self.assertEqual(e.exception.code, 2)
            lines = self.stderr.getvalue().splitlines()
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], r"^rpcap-dump: .* \(rpcap-dump --help lists the options\)$")

    def test_version(self) -> None:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        with self.assertRaises(SystemExit) as e:
            parse("--version")
        self.assertEqual(e.exception.code, 0)
        self.assertEqual(stdout.getvalue(), f"rpcap-dump (rpcapsvc) {__version__}\n")

    def test_timeout(self) -> None:
        self.assertEqual(parse("--timeout", "2.5", "rpcap://h/eth0").timeout, 2.5)


class LimitTests(SynchronousTestCase):
    """-c, -a (dumpcap's stop conditions), and tcpdump's -G, -C and -W."""

    def limits(self, *argv: str) -> dump.Limits:
        return resolved(*argv, "rpcap://h/eth0").limits  # type: ignore[no-any-return]

    def test_count_and_packets(self) -> None:
        self.assertEqual(self.limits("-c", "5").count, 5)
        self.assertEqual(self.limits("-a", "packets:7").count, 7)
        self.assertEqual(self.limits("-c", "9", "-a", "packets:7").count, 7)

    def test_duration(self) -> None:
        """-a duration:N stops after N seconds (what -G used to do); --duration too."""
        limits = self.limits("-a", "duration:2.5")
        self.assertEqual((limits.duration, limits.duration_option), (2.5, "-a duration:2.5"))
        limits = self.limits("--duration", "60")
        self.assertEqual((limits.duration, limits.duration_option), (60, "--duration 60"))
        self.assertIsNone(limits.rotate_seconds)

    def test_rotate_seconds(self) -> None:
        """-G rotates, as tcpdump's -G does; it does not stop the capture."""
        limits = self.limits("-w", "x.pcapng", "-G", "60")
        self.assertEqual((limits.rotate_seconds, limits.duration, limits.files), (60, None, None))

    def test_rotate_seconds_with_file_count_stops(self) -> None:
        """-G with -W stops after that many files, as tcpdump does."""
        limits = self.limits("-w", "x.pcapng", "-G", "60", "-W", "3")
        self.assertEqual((limits.files, limits.files_option, limits.keep_files), (3, "-W 3", None))

    def test_rotate_size_with_file_count_is_a_ring(self) -> None:
        """-C with -W keeps the newest N files (tcpdump writes over the oldest), and never stops."""
        limits = self.limits("-w", "x.pcapng", "-C", "100", "-W", "5")
        self.assertEqual((limits.rotate_bytes, limits.keep_files, limits.files), (100_000_000, 5, None))
        limits = self.limits("-w", "x.pcapng", "-C", "100", "-G", "60", "-W", "5")
        self.assertEqual((limits.keep_files, limits.files), (5, None))

    def test_size_units(self) -> None:
        """-C is in millions of bytes, or KiB, MiB, GiB with k, m, g, as for tcpdump."""
        for text, size in (
            ("2", 2_000_000),
            ("0.5", 500_000),
            ("4k", 4096),
            ("3M", 3 << 20),
            ("1g", 1 << 30),
        ):
            self.assertEqual(self.limits("-w", "x.pcap", "-C", text).rotate_bytes, size, text)

    def test_files_and_filesize(self) -> None:
        limits = self.limits("-w", "x.pcap", "-C", "1", "-a", "files:4", "-a", "filesize:300")
        self.assertEqual((limits.files, limits.files_option, limits.filesize), (4, "-a files:4", 300_000))

    def test_rotation_needs_a_file(self) -> None:
        for argv, text in (
            (["-G", "60"], "-G starts a new file every N seconds and needs -w FILE"),
            (["-w", "-", "-G", "60"], "to stop after N seconds, use -a duration:N"),
            (["-w", "-", "-C", "1"], "-C starts a new file at a size and needs -w FILE"),
            (["-w", "x.pcap", "-W", "3"], "-W limits the files of -C or -G"),
            (["-w", "x.pcap", "-a", "files:3"], "-a files:N counts the files of -C or -G"),
            (["-a", "filesize:10"], "give -w FILE"),
        ):
            with self.assertRaises(UsageError, msg=argv) as e:
                self.limits(*argv)
            self.assertIn(text, str(e.exception))


class PasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        environ = dict(os.environ)
        environ.pop("RPCAP_PASSWORD", None)
        self.patch(os, "environ", environ)
        self.prompts: list[str] = []
        self.patch(getpass, "getpass", self.fake_getpass)
        self.patch(dump, "_terminal", lambda: True)

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

    def test_password_file_missing(self) -> None:
        with self.assertRaises(UsageError) as e:
            password_for(self.args("--auth", "alice", "--password-file", self.mktemp()))
        self.assertIn("cannot read the password file", str(e.exception))

    def test_environment(self) -> None:
        os.environ["RPCAP_PASSWORD"] = "from-env"
        self.assertEqual(password_for(self.args("--auth", "alice")), b"from-env")
        self.assertEqual(self.prompts, [])

    def test_prompt(self) -> None:
        """With neither, the user is asked, by name."""
        self.assertEqual(password_for(self.args("--auth", "alice")), b"typed")
        self.assertEqual(self.prompts, ["Password for alice: "])

    def test_no_terminal(self) -> None:
        """With no terminal to ask on (cron, a pipe), a line that says where the password can come from."""
        self.patch(dump, "_terminal", lambda: False)
        with self.assertRaises(UsageError) as e:
            password_for(self.args("--auth", "alice"))
        self.assertIn("--password-file FILE or $RPCAP_PASSWORD", str(e.exception))
        self.assertEqual(self.prompts, [])

    def test_ctrl_c_at_the_prompt(self) -> None:
        def interrupted(prompt: str = "") -> str:
            raise KeyboardInterrupt()

        self.patch(getpass, "getpass", interrupted)
        with self.assertRaises(Interrupted) as e:
            password_for(self.args("--auth", "alice"))
        self.assertEqual(e.exception.code, 130)
        self.assertEqual(
            str(e.exception), "interrupted by Ctrl-C (SIGINT) at the password prompt; nothing captured"
        )


def writer_dump(*argv: str, reactor: Optional[MemoryReactorClock] = None) -> tuple[Dump, io.BytesIO]:
    """A Dump writing pcapng into a BytesIO, interface 0 added."""
    args = resolved(*argv, "rpcap://h/eth0")
    stream = io.BytesIO()
    writer = CaptureFileWriter(stream, "pcapng", close_stream=False)
    run = Dump(reactor or MemoryReactorClock(), args, Output(writer, "x.pcapng", None), None)
    run.interface_id = writer.add_interface("eth0", 1, 262144, "rpcap://h:2002/eth0")
    return run, stream


class CountTests(SynchronousTestCase):
    """Dump.on_packets writes what arrives, and -c stops at exactly COUNT packets."""

    def written(self, run: Dump, stream: io.BytesIO) -> list[tuple[int, int, bytes]]:
        assert run.out is not None
        run.out.close()
        linktype, got = read_capture(self, stream.getvalue())
        self.assertEqual(linktype, 1)
        return got

    def test_batch_crossing_the_count(self) -> None:
        """A batch that would pass the count is cut at it, and the capture is done, saying why."""
        run, stream = writer_dump("-c", "5")
        batch = packets(7)
        run.on_packets(batch[:3])
        self.assertNoResult(run.done)
        run.on_packets(batch[3:])
        ending = self.successResultOf(run.done)
        self.assertEqual((ending.code, ending.text), (0, "stopped after 5 packets (-c 5)"))
        run.on_packets(packets(2, first_npkt=8))
        self.assertEqual(run.packets, 5)
        self.assertEqual(run.bytes, 5 * len(UDP_PACKET))
        self.assertEqual(self.written(run, stream), [(p.ts_sec, p.ts_usec, p.data) for p in batch[:5]])

    def test_count_reached_exactly(self) -> None:
        run, stream = writer_dump("-c", "3")
        run.on_packets(packets(3))
        self.successResultOf(run.done)
        self.assertEqual(len(self.written(run, stream)), 3)

    def test_autostop_packets(self) -> None:
        run, _ = writer_dump("-a", "packets:2")
        run.on_packets(packets(3))
        self.assertEqual(self.successResultOf(run.done).text, "stopped after 2 packets (-a packets:2)")

    def test_autostop_filesize(self) -> None:
        """-a filesize:KB stops once the file has that many kilobytes."""
        run, _ = writer_dump("-w", "x.pcapng", "-a", "filesize:1")
        for n in range(20):
            if run.done.called:
                break
            run.on_packets(packets(1, first_npkt=n + 1))
        self.assertEqual(
            self.successResultOf(run.done).text, "stopped: the file reached 1 kB (-a filesize:1)"
        )
        assert run.out is not None
        self.assertGreaterEqual(run.out.target.bytes_written, 1000)

    def test_no_count(self) -> None:
        run, stream = writer_dump()
        for n in range(10):
            run.on_packets(packets(10, first_npkt=10 * n + 1))
        self.assertNoResult(run.done)
        self.assertEqual(len(self.written(run, stream)), 100)

    def test_without_a_file_prints_a_line_each(self) -> None:
        """Without -w, each packet is a line on standard output; -c still counts; -q keeps them."""
        for quiet in ([], ["-q"]):
            stdout = io.StringIO()
            self.patch(sys, "stdout", stdout)
            run = Dump(MemoryReactorClock(), resolved(*quiet, "-c", "2", "rpcap://h/eth0"), None, None)
            run.on_packets(packets(3))
            lines = stdout.getvalue().splitlines()
            self.assertEqual(len(lines), 2)
            size = len(UDP_PACKET)
            self.assertRegex(lines[1], rf"^\d\d:\d\d:\d\d\.000001 length {size} captured {size}$")
            self.successResultOf(run.done)


class BrokenStream(io.BytesIO):
    """A pipe whose reader has gone (C{| head}), or a full disk."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error
        self.broken = False

    def write(self, data: Any) -> int:
        if self.broken:
            raise self.error
        return super().write(data)

    def flush(self) -> None:
        if self.broken:
            raise self.error


class OutputClosedTests(SynchronousTestCase):
    """A reader that goes away, or a disk that fills: the capture ends, saying so; no traceback."""

    def setUp(self) -> None:
        self.silenced: list[bool] = []
        self.patch(dump, "_silence_stdout", lambda: self.silenced.append(True))

    def make(self, error: OSError, *argv: str) -> tuple[Dump, BrokenStream]:
        args = resolved(*argv, "rpcap://h/eth0")
        stream = BrokenStream(error)
        writer = CaptureFileWriter(stream, "pcapng", close_stream=False)
        run = Dump(MemoryReactorClock(), args, Output(writer, args.write, None), None)
        run.interface_id = writer.add_interface("eth0", 1, 262144)
        return run, stream

    def test_pipe_closed(self) -> None:
        """`rpcap-dump -w - ... | head -c 100`: the end of a capture, exit status 0, standard output silenced."""
        run, stream = self.make(BrokenPipeError(errno.EPIPE, "Broken pipe"), "-w", "-")
        run.on_packets(packets(2))
        stream.broken = True
        run.on_packets(packets(2, first_npkt=3))
        self.assertEqual(self.successResultOf(run.done), dump.OUTPUT_CLOSED)
        self.assertEqual(dump.OUTPUT_CLOSED.code, 0)
        self.assertEqual(run.packets, 2)
        self.assertEqual(self.silenced, [True])

    def test_lines_into_a_closed_pipe(self) -> None:
        """Without -w, `rpcap-dump ... | head -1` ends the same way."""

        class Closed(io.StringIO):
            def write(self, s: str) -> int:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        self.patch(sys, "stdout", Closed())
        run = Dump(MemoryReactorClock(), resolved("rpcap://h/eth0"), None, None)
        run.on_packets(packets(1))
        self.assertEqual(self.successResultOf(run.done), dump.OUTPUT_CLOSED)

    def test_disk_full(self) -> None:
        run, stream = self.make(OSError(errno.ENOSPC, "No space left on device"), "-w", "x.pcapng")
        stream.broken = True
        run.on_packets(packets(1))
        ending = self.successResultOf(run.done)
        self.assertEqual((ending.code, ending.text), (1, "cannot write x.pcapng: No space left on device"))
        self.assertEqual(self.silenced, [])


class RotationTests(SynchronousTestCase):
    """-G, -C and -W with -w FILE: a series of files, each complete, named as tcpdump and dumpcap name them."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.clock = MemoryReactorClock()

    def start(self, name: str, *argv: str) -> Dump:
        args = resolved("-w", os.path.join(self.dir, name), *argv, "rpcap://h/eth0")
        out = open_output(args, self.clock.seconds)
        assert out is not None
        run = Dump(self.clock, args, out, None)
        run.interface_id = out.add_interface("eth0", 1, 262144, "rpcap://h:2002/eth0")
        self.addCleanup(out.close)
        return run

    def files(self) -> list[str]:
        return sorted(os.listdir(self.dir))

    def packets_in(self, name: str) -> int:
        return len(read_capture_file(os.path.join(self.dir, name))[1])

    def test_every_n_seconds(self) -> None:
        """-G 10: a new file every ten seconds, dumpcap's names (STEM_NNNNN_YYYYmmddHHMMSS.EXT)."""
        run = self.start("out.pcapng", "-G", "10")
        run.on_packets(packets(2))
        self.clock.advance(10)
        run.on_packets(packets(3, first_npkt=3))
        self.clock.advance(5)
        run.tick()  # quiet: nothing to rotate yet
        self.clock.advance(5)
        run.tick()  # quiet, but due: a new file all the same
        assert run.out is not None
        run.out.close()
        names = self.files()
        self.assertEqual(len(names), 3, names)
        for n, name in enumerate(names, 1):
            self.assertRegex(name, rf"^out_{n:05d}_\d{{14}}\.pcapng$")
        self.assertEqual([self.packets_in(n) for n in names], [2, 3, 0])
        self.assertNoResult(run.done)

    def test_strftime_names(self) -> None:
        """A %-pattern in the name is strftime'd at each file's start; a name already taken gets _2."""
        run = self.start("cap-%Y.pcap", "-G", "10")
        run.on_packets(packets(1))
        self.clock.advance(10)
        run.on_packets(packets(1, first_npkt=2))
        assert run.out is not None
        run.out.close()
        self.assertEqual(self.files(), ["cap-1970.pcap", "cap-1970_2.pcap"])
        self.assertEqual(read_capture_file(os.path.join(self.dir, "cap-1970.pcap"))[0], 1)

    def test_rotation_name(self) -> None:
        stamp = rotation_name("/d/x.pcapng", localtime=lambda when: __import__("time").gmtime(when))
        self.assertEqual(stamp(86400, 7), "/d/x_00007_19700102000000.pcapng")
        plain = rotation_name("noext")
        self.assertRegex(plain(0, 1), r"^noext_00001_\d{14}$")

    def test_file_count_stops(self) -> None:
        """-G 10 -W 2: two files, then the capture stops, as tcpdump does."""
        run = self.start("out.pcapng", "-G", "10", "-W", "2")
        run.on_packets(packets(1))
        self.clock.advance(10)
        run.on_packets(packets(1, first_npkt=2))
        self.clock.advance(10)
        run.tick()
        ending = self.successResultOf(run.done)
        self.assertEqual((ending.code, ending.text), (0, "stopped after 2 files (-W 2)"))
        self.assertEqual(len(self.files()), 2)

    def test_ring_of_files(self) -> None:
        """-C with -W keeps only the newest files, and goes on."""
        run = self.start("ring.pcapng", "-C", "1k", "-W", "2")
        for n in range(40):
            run.on_packets(packets(1, first_npkt=n + 1))
        assert run.out is not None
        run.out.close()
        names = self.files()
        self.assertEqual(len(names), 2, names)
        self.assertGreater(int(names[0].split("_")[1]), 2)
        self.assertNoResult(run.done)

    def test_autostop_files(self) -> None:
        run = self.start("out.pcapng", "-C", "1k", "-a", "files:2")
        for n in range(40):
            run.on_packets(packets(1, first_npkt=n + 1))
        self.assertEqual(self.successResultOf(run.done).text, "stopped after 2 files (-a files:2)")
        self.assertEqual(len(self.files()), 2)


def explain_tls(error: Exception) -> str:
    """What rpcap-dump says of a TLS failure with the daemon of rpcaps://h/eth0."""
    source = parse_source("rpcaps://h/eth0")
    return Daemon(advice(source), source.address, source.host, tls=True).tls_failed(error)


class ExplainTests(SynchronousTestCase):
    """TLS failures: what happened, and what to do about it."""

    def test_untrusted_certificate(self) -> None:
        from OpenSSL.SSL import Error as TLSError

        error = TLSError([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            explain_tls(error),
            "the certificate of the daemon at h:2002 is not trusted (certificate verify failed):"
            " give the CA that signed it with --ca PEM",
        )

    def test_name_mismatch(self) -> None:
        from service_identity import VerificationError

        self.assertIn("does not name h", explain_tls(VerificationError([])))

    def test_not_tls(self) -> None:
        from OpenSSL.SSL import Error as TLSError

        error = TLSError([("SSL routines", "", "wrong version number")])
        self.assertIn("use rpcap:// instead of rpcaps://", explain_tls(error))


class DumpClientTests(SynchronousTestCase):
    """The control connection with deadlines."""

    def connected(self, timeout: Optional[float] = 10.0) -> tuple[DumpClient, MemoryReactorClock]:
        clock = MemoryReactorClock()
        client = DumpClient(clock, timeout)
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", DAEMON_HOST, 2002))
        transport.protocol = client
        client.makeConnection(transport)
        return client, clock

    def test_reply_timeout(self) -> None:
        client, clock = self.connected()
        d = client.authenticate()
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        error = self.failureResultOf(d, NoReply).value
        self.assertEqual(str(error), "the daemon did not answer the login within 10 s")

    def test_late_reply_is_ignored(self) -> None:
        """A reply that comes after its request timed out goes nowhere, and the next reply to its own request."""
        from rpcapsvc.protocol.wire import AuthReply, StatsReply

        client, clock = self.connected()
        late = client.authenticate()
        clock.advance(10)
        self.failureResultOf(late, NoReply)
        stats = client.stats()
        client.dataReceived(AuthReply().encode() + StatsReply(1, 2, 3, 4).encode())
        self.assertEqual(self.successResultOf(stats), StatsReply(1, 2, 3, 4))

    def test_unsolicited_error_heard(self) -> None:
        from rpcapsvc.protocol.wire import ErrorReply

        client, _ = self.connected()
        heard: list[Any] = []
        client.on_error = heard.append
        client.dataReceived(ErrorReply(9, "capture on eth0 ended: The interface went down").encode())
        self.assertEqual(heard, [ErrorReply(9, "capture on eth0 ended: The interface went down")])

    def test_spoke_tls(self) -> None:
        client, _ = self.connected()
        client.dataReceived(b"\x15\x03\x03\x00\x02\x02\x46")
        self.assertTrue(client.spoke_tls)

    def test_lost_reason(self) -> None:
        client, _ = self.connected()
        client.connectionLost(Failure(ConnectionLost()))
        assert client.lost_reason is not None
        self.assertTrue(client.lost_reason.check(ConnectionLost))


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


@implementer(IStreamClientEndpoint)
class SilentEndpoint:
    """A port that accepts the connection and never says a word; or one that refuses it."""

    def __init__(self, refuse: Optional[Exception] = None) -> None:
        self.refuse = refuse
        self.transport: Optional[StringTransportWithDisconnection] = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse is not None:
            return defer.fail(self.refuse)
        proto = factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 2002))
        self.transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", DAEMON_HOST, 2002))
        self.transport.protocol = proto
        proto.makeConnection(self.transport)
        return defer.succeed(proto)


class RunTestsBase(SynchronousTestCase):
    """Whole rpcap-dump runs against rpcapsvc's own server."""

    def setUp(self) -> None:
        self.daemon = InMemoryDaemon()
        self.addCleanup(self.daemon.close)
        self.endpoint: Any = InMemoryEndpoint(self.daemon)
        self.endpoints: list[tuple[str, int, Optional[str]]] = []

        def client_endpoint(reactor: Any, source: Source, ca: Optional[str], timeout: float = 30.0) -> Any:
            self.endpoints.append((source.host, source.port, ca))
            return self.endpoint

        self.patch(dump, "client_endpoint", client_endpoint)
        self.reactor = UdpMemoryReactor()
        self.stdout = io.TextIOWrapper(io.BytesIO(), write_through=True)
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.runs: list[Run] = []

    def start(self, *argv: str) -> defer.Deferred[int]:
        args = build_parser().parse_intermixed_args(list(argv))
        d = defer.ensureDeferred(dump.run(self.reactor, args))
        self.flush()
        return d

    def flush(self) -> None:
        if isinstance(self.endpoint, InMemoryEndpoint):
            assert self.endpoint.pump is not None
            self.endpoint.pump.flush()

    def finished(self, d: defer.Deferred[int]) -> int:
        for _ in range(20):
            if d.called:
                break
            self.flush()
        return self.successResultOf(d)

    def failed(self, d: defer.Deferred[int], kind: type = DumpError) -> Any:
        for _ in range(20):
            if d.called:
                break
            self.flush()
        return self.failureResultOf(d, kind).value

    def lines(self) -> list[str]:
        return self.stderr.getvalue().splitlines()

    def stdout_bytes(self) -> bytes:
        return self.stdout.buffer.getvalue()  # type: ignore[attr-defined,no-any-return]


class RunTests(RunTestsBase):
    def test_list_interfaces(self) -> None:
        """-D lists each interface with its number, description, state and addresses, and hangs up."""
        d = self.start("-D", f"rpcap://{DAEMON_HOST}/")
        self.assertEqual(self.finished(d), 0)
        self.assertEqual(
            self.stdout_bytes().decode(),
            "1.lo [Up] 127.0.0.1\n2.eth0 (Ethernet adapter) [Up] 192.0.2.20, 2001:db8::20\n",
        )
        self.assertEqual(self.endpoints, [(DAEMON_HOST, 2002, None)])
        self.assertEqual(self.daemon.factory.sessions, set())

    def test_list_interfaces_into_a_closed_pipe(self) -> None:
        """`rpcap-dump -D URL | head -1`: the reader leaving early is no error, and nothing is said."""
        broken = BrokenStream(BrokenPipeError(32, "Broken pipe"))
        broken.broken = True
        self.patch(sys, "stdout", io.TextIOWrapper(broken, write_through=True))
        self.patch(dump, "_silence_stdout", lambda: None)  # not the test runner's own stdout
        d = self.start("-D", f"rpcap://{DAEMON_HOST}/")
        self.assertEqual(self.finished(d), 0)
        self.assertEqual(self.lines(), [])

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
        data = self.stdout_bytes()
        self.assertEqual(data[:4], b"\x0a\x0d\x0d\x0a")
        self.assertIn(f"rpcap://{DAEMON_HOST}:2002/eth0".encode(), data)
        self.assertEqual(read_capture(self, data), (1, [(1, 0, ICMP_PACKET), (3, 0, ICMP_PACKET)]))
        self.assertTrue(self.daemon.system.handles[-1].closed)
        self.assertFalse(udp.listening)
        self.assertEqual(self.daemon.factory.sessions, set())
        self.assertEqual(
            self.lines(),
            [
                "rpcap-dump: capturing on eth0 (link type 1)",
                "rpcap-dump: 2 packets captured, 0 dropped by the daemon's kernel, 0 lost in transit",
                "rpcap-dump: stopped after 2 packets (-c 2)",
            ],
        )

    def test_quiet(self) -> None:
        """-q: the summary and why the capture ended, nothing else."""
        d = self.start("-q", "-w", "-", "-c", "1", "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        self.assertEqual(self.finished(d), 0)
        self.assertEqual(
            self.lines(),
            [
                "rpcap-dump: 1 packets captured, 0 dropped by the daemon's kernel, 0 lost in transit",
                "rpcap-dump: stopped after 1 packets (-c 1)",
            ],
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
        """-a duration:5 stops the capture after five seconds, and says so."""
        path = self.mktemp()
        d = self.start("-w", path + ".pcapng", "-a", "duration:5", "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        for _ in range(49):
            self.reactor.advance(0.1)
            self.flush()
        self.assertNoResult(d)  # at 4.9 s
        self.reactor.advance(0.2)
        self.assertEqual(self.finished(d), 0)
        self.assertEqual(self.lines()[-2:][0][:32], "rpcap-dump: 0 packets captured, ")
        self.assertEqual(self.lines()[-1], "rpcap-dump: stopped after 5 s (-a duration:5)")

    def test_daemon_vanishes(self) -> None:
        """
        When the daemon hangs up mid-capture, rpcap-dump finishes the file
        with what it got and fails with exit status 4, saying the daemon vanished.
        """
        path = self.mktemp()
        d = self.start("-w", path, "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        [server] = self.daemon.factory.sessions
        server.transport.loseConnection()
        error = self.failed(d, CaptureCutShort)
        self.assertEqual(error.code, EXIT_VANISHED)
        self.assertEqual(
            str(error),
            "the daemon vanished mid-capture: its connection closed without the capture being ended",
        )
        with open(path, "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET)]))
        self.assertFalse(udp.listening)
        self.assertEqual(
            self.lines()[-1],
            "rpcap-dump: 1 packets captured, 0 dropped by the daemon's kernel, 0 lost in transit",
        )

    def test_daemon_vanishes_over_tcp(self) -> None:
        """Over TCP the data connection may close first: the dead control connection tells that the daemon is gone."""
        d = self.start("-w", self.mktemp(), f"rpcap://{DAEMON_HOST}/eth0")
        self.reactor.advance(0)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        receiver = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransportWithDisconnection()
        transport.protocol = receiver
        receiver.makeConnection(transport)
        self.flush()
        self.daemon.channels.pending[-1].callback(None)
        [server] = self.daemon.factory.sessions
        transport.loseConnection()  # the data connection first
        server.transport.loseConnection()  # then the control connection
        error = self.failed(d, CaptureCutShort)
        self.assertEqual(error.code, EXIT_VANISHED)
        self.assertIn("the daemon vanished mid-capture", str(error))

    def test_daemon_ends_the_capture(self) -> None:
        """The daemon's interface goes down: its error, exit status 5."""
        d = self.start("-w", self.mktemp(), "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        self.daemon.system.handles[-1].fail_with = "The interface went down"
        self.daemon.capture([])
        error = self.failed(d, CaptureCutShort)
        self.assertEqual(error.code, EXIT_DAEMON_ENDED)
        self.assertEqual(
            str(error),
            "the daemon ended the capture: capture on eth0 ended: The interface went down (error 9)",
        )

    def test_daemon_stops_answering(self) -> None:
        """Mid-capture, a stats request left unanswered for the timeout: the daemon is gone (exit status 4)."""
        d = self.start("--timeout", "3", "-w", self.mktemp(), "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        for _ in range(30):
            self.reactor.advance(0.5)  # and no flush: the daemon hears nothing, says nothing
        error = self.failed(d, CaptureCutShort)
        self.assertEqual(error.code, EXIT_VANISHED)
        self.assertEqual(
            str(error),
            "the daemon stopped answering mid-capture: no reply to a request for its counters within 3 s",
        )

    def test_interrupted(self) -> None:
        """
        Ctrl-C ends the capture at the daemon, finishes the file and reports
        the counts; the run ends cleanly, and says why.
        """
        path = self.mktemp()
        d = self.start("-w", path, "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        dump.interrupt_all("SIGINT")
        self.assertEqual(self.finished(d), 0)
        self.assertTrue(self.daemon.system.handles[-1].closed)
        self.assertEqual(self.daemon.factory.sessions, set())
        with open(path, "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)]))
        self.assertEqual(
            self.lines()[-2:],
            [
                "rpcap-dump: 2 packets captured, 0 dropped by the daemon's kernel, 0 lost in transit",
                "rpcap-dump: interrupted by Ctrl-C (SIGINT)",
            ],
        )

    def test_second_signal_stops_waiting(self) -> None:
        """A daemon that does not answer while the capture finishes: a second Ctrl-C does not wait for it."""
        d = self.start("-w", self.mktemp(), "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        dump.interrupt_all("SIGTERM")  # the stats request goes out, and is not answered (no flush)
        self.assertNoResult(d)
        dump.interrupt_all("SIGTERM")
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.lines()[-1], "rpcap-dump: stopped by SIGTERM")

    def test_active(self) -> None:
        """
        --active PORT waits for a daemon to connect, stops listening, and
        captures the interface the first word names; the rest is the filter.
        """
        daemon = InMemoryDaemon(active=True, preselected="lo")
        self.addCleanup(daemon.close)
        args = build_parser().parse_intermixed_args(
            ["--active", "2003", "--udp", "-c", "1", "-w", "-", "eth0", "icmp"]
        )
        d = defer.ensureDeferred(dump.run(self.reactor, args))
        port, factory, _, _ = self.reactor.tcpServers[-1]
        self.assertEqual(port, 2003)
        self.assertIn("rpcap-dump: waiting for a daemon on tcp:2003\n", self.stderr.getvalue())
        daemon.factory.interface = None  # any interface may be opened
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
        self.assertEqual(read_capture(self, self.stdout_bytes()), (1, [(2, 0, ICMP_PACKET)]))
        self.assertIn(f"rpcap-dump: daemon connected from {DAEMON_HOST}\n", self.stderr.getvalue())
        self.assertIn("rpcap-dump: capturing on eth0 (link type 1)\n", self.stderr.getvalue())

    def test_active_default_interface(self) -> None:
        """With a quoted filter and no interface: the daemon's first (preselected) interface."""
        daemon = InMemoryDaemon(active=True, preselected="eth0")
        self.addCleanup(daemon.close)
        args = build_parser().parse_intermixed_args(["--active", "2003", "--udp", "-w", "-", "icmp or udp"])
        d = defer.ensureDeferred(dump.run(self.reactor, args))
        _, factory, _, _ = self.reactor.tcpServers[-1]
        pump = daemon.connect(factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 50000)))
        pump.flush()
        self.assertEqual(daemon.system.handles[-1].device, "eth0")
        dump.interrupt_all("SIGINT")
        for _ in range(20):
            pump.flush()
        self.assertEqual(self.successResultOf(d), 0)

    def test_active_word_that_is_no_interface(self) -> None:
        """`rpcap-dump --active 2003 icmp`: the daemon has no interface icmp; the line says how words are read."""
        daemon = InMemoryDaemon(active=True)
        self.addCleanup(daemon.close)
        args = build_parser().parse_intermixed_args(["--active", "2003", "icmp"])
        d = defer.ensureDeferred(dump.run(self.reactor, args))
        _, factory, _, _ = self.reactor.tcpServers[-1]
        pump = daemon.connect(factory.buildProtocol(IPv4Address("TCP", DAEMON_HOST, 50000)))
        for _ in range(10):
            pump.flush()
        error = self.failureResultOf(d, DumpError).value
        self.assertEqual(error.code, 1)
        self.assertRegex(
            str(error),
            r"^the daemon at 192\.0\.2\.20 cannot open icmp: .* \(error 6\); its interfaces: lo, eth0;"
            r" with --active the first word is the interface: put the filter after it,"
            r" or name the interface with -i$",
        )

    def test_active_port_busy(self) -> None:
        """Another program has the port: one line, and a hint."""

        def busy(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("", 2003, OSError(errno.EADDRINUSE, "Address already in use"))

        self.patch(self.reactor, "listenTCP", busy)
        d = defer.ensureDeferred(
            dump.run(self.reactor, build_parser().parse_intermixed_args(["--active", "2003"]))
        )
        error = self.failureResultOf(d, DumpError).value
        self.assertEqual(
            str(error),
            "cannot listen on tcp:2003: address already in use; another program has it"
            " (another rpcap-dump, rpcapcollect?): pick another port with --active",
        )

    def test_interrupted_while_waiting_for_a_daemon(self) -> None:
        d = defer.ensureDeferred(
            dump.run(self.reactor, build_parser().parse_intermixed_args(["--active", "2003"]))
        )
        dump.interrupt_all("SIGTERM")
        error = self.failureResultOf(d, Interrupted).value
        self.assertEqual(error.code, 128 + signal.SIGTERM)
        self.assertEqual(
            str(error), "stopped by SIGTERM while waiting for a daemon on tcp:2003; nothing captured"
        )
        self.assertFalse(self.reactor.tcpPorts[0].listening)

    def test_refused_interface(self) -> None:
        """An interface the daemon refuses: its error, and the interfaces it has."""
        d = self.start("-w", self.mktemp(), f"rpcap://{DAEMON_HOST}/eth9")
        error = self.failed(d)
        self.assertEqual(
            str(error),
            "the daemon at 192.0.2.20:2002 cannot open eth9: no such interface: eth9 (error 6);"
            " its interfaces: lo, eth0",
        )

    def test_bad_filter(self) -> None:
        """A filter libpcap cannot compile: exit status 2, and the session is closed."""
        d = self.start("-w", self.mktemp(), f"rpcap://{DAEMON_HOST}/eth0", "tcp", "port", "x")
        error = self.failed(d, UsageError)
        self.assertEqual(error.code, 2)
        self.assertRegex(
            str(error), r"^cannot compile filter 'tcp port x': .* \(man pcap-filter gives the syntax\)$"
        )
        self.flush()
        self.assertEqual(self.daemon.factory.sessions, set())

    def test_unwritable_file(self) -> None:
        """A -w file that cannot be written is found out before connecting."""
        d = defer.ensureDeferred(
            dump.run(self.reactor, parse("-w", "/nonexistent/dir/x.pcap", f"rpcap://{DAEMON_HOST}/eth0"))
        )
        self.assertEqual(
            str(self.failureResultOf(d, DumpError).value),
            "cannot write /nonexistent/dir/x.pcap: there is no directory /nonexistent/dir",
        )
        self.assertEqual(self.endpoints, [])


class LoginTests(RunTestsBase):
    """A daemon that wants a password."""

    def setUp(self) -> None:
        super().setUp()
        self.daemon.factory.policy = SessionPolicy(
            null_auth=False, checkers=[InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")]
        )
        environ = dict(os.environ)
        environ.pop("RPCAP_PASSWORD", None)
        self.patch(os, "environ", environ)

    def answered(self, d: defer.Deferred[int]) -> Any:
        self.flush()
        self.daemon.reactor.advance(1)  # a failed login is answered late, as libpcap does
        return self.failed(d)

    def test_no_password(self) -> None:
        error = self.answered(self.start("-D", f"rpcap://{DAEMON_HOST}/"))
        self.assertEqual(
            str(error),
            "the daemon at 192.0.2.20:2002 wants a password: Authentication failed: NULL authentication not"
            " permitted (error 18); log in with --auth USER (the password from --password-file,"
            " $RPCAP_PASSWORD or a prompt)",
        )

    def test_wrong_password(self) -> None:
        os.environ["RPCAP_PASSWORD"] = "wrong"
        error = self.answered(self.start("--auth", "alice", "-D", f"rpcap://{DAEMON_HOST}/"))
        self.assertEqual(
            str(error),
            "the daemon at 192.0.2.20:2002 refused the login as alice: Authentication failed: authentication"
            " failed (error 18); check the user (--auth) and the password (--password-file or $RPCAP_PASSWORD)",
        )

    def test_right_password(self) -> None:
        os.environ["RPCAP_PASSWORD"] = "secret"
        self.assertEqual(self.finished(self.start("--auth", "alice", "-D", f"rpcap://{DAEMON_HOST}/")), 0)


class UnansweredTests(RunTestsBase):
    """A port that accepts and says nothing; one that refuses; one that hangs up."""

    def setUp(self) -> None:
        super().setUp()
        self.endpoint = SilentEndpoint()

    def test_silent(self) -> None:
        d = self.start("-D", "rpcap://192.0.2.9:2002/")
        self.reactor.advance(9.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        error = self.failureResultOf(d, DumpError).value
        self.assertEqual(error.code, 1)
        self.assertEqual(
            str(error),
            "192.0.2.9:2002 accepted the connection but did not answer the login within 10 s: is it an"
            " RPCAP daemon? (rpcaps:// if it listens with TLS; --timeout to wait longer)",
        )
        assert self.endpoint.transport is not None
        self.assertFalse(self.endpoint.transport.connected)

    def test_timeout_option(self) -> None:
        d = self.start("--timeout", "2", "-D", "rpcaps://192.0.2.9:2002/")
        self.reactor.advance(2)
        self.assertIn(
            "within 2 s: is it an RPCAP daemon? (--timeout", str(self.failureResultOf(d, DumpError).value)
        )

    def test_interrupted_while_waiting_for_a_reply(self) -> None:
        """Ctrl-C while the daemon says nothing: one line, exit status 130."""
        d = self.start("-D", "rpcap://192.0.2.9:2002/")
        dump.interrupt_all("SIGINT")
        error = self.failureResultOf(d, Interrupted).value
        self.assertEqual(error.code, 130)
        self.assertEqual(
            str(error),
            "interrupted by Ctrl-C (SIGINT) while waiting for the daemon's answer to the login; nothing captured",
        )

    def test_hangs_up_at_once(self) -> None:
        """A TLS port given plain rpcap://: it hangs up on the login; the line says to use rpcaps://."""
        d = self.start("-D", "rpcap://192.0.2.9:2002/")
        assert self.endpoint.transport is not None
        self.endpoint.transport.loseConnection()
        self.assertEqual(
            str(self.failureResultOf(d, DumpError).value),
            "192.0.2.9:2002 closed the connection without answering: if the daemon listens with TLS,"
            " use rpcaps://192.0.2.9:2002/",
        )

    def test_refused(self) -> None:
        self.endpoint = SilentEndpoint(refuse=ConnectionRefusedError())
        d = defer.ensureDeferred(dump.run(self.reactor, parse("-D", "rpcap://192.0.2.9:2002/")))
        self.assertEqual(
            str(self.failureResultOf(d, DumpError).value),
            "cannot connect to 192.0.2.9:2002: connection refused (is the daemon running and listening there?)",
        )

    def test_tls_failure(self) -> None:
        """rpcaps:// to a daemon whose certificate is not trusted: the line says to give --ca."""
        from OpenSSL.SSL import Error as TLSError

        d = self.start("-D", "rpcaps://192.0.2.9:2002/")
        transport = self.endpoint.transport
        assert transport is not None
        transport.connected = False
        transport.protocol.connectionLost(
            Failure(TLSError([("SSL routines", "", "certificate verify failed")]))
        )
        self.assertIn(
            "give the CA that signed it with --ca PEM", str(self.failureResultOf(d, DumpError).value)
        )


class MainTests(SynchronousTestCase):
    """main(): the command line parsed, and errors turned into one line and an exit status."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.seen: list[Any] = []
        self.outcome: list[Any] = []

        def react(main: Any) -> None:
            main(MemoryReactorClock()).addBoth(self.outcome.append)

        self.patch(dump.task, "react", react)

    def main(self, argv: list[str], error: Optional[BaseException] = None) -> Optional[int]:
        async def run(reactor: Any, args: Any) -> int:
            self.seen.append(args)
            if error is not None:
                raise error
            return 0

        self.patch(dump, "run", run)
        self.outcome.clear()
        self.stderr.truncate(0)
        self.stderr.seek(0)
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

    def test_exit_status_of_each_error(self) -> None:
        from OpenSSL.SSL import Error as TLSError

        for error, code, line in (
            (UsageError("give a source"), 2, "rpcap-dump: give a source"),
            (ValueError("cannot compile filter"), 2, "rpcap-dump: cannot compile filter"),
            (
                RemoteError(ErrorCode.AUTH_FAILED, "Authentication failed"),
                1,
                "rpcap-dump: the daemon refused: Authentication failed (error 18)",
            ),
            (DumpError("cannot connect to h:2002: connection refused"), 1, None),
            (DataChannelError("the data channel could not be read: x"), 3, None),
            (CaptureCutShort("the daemon vanished mid-capture: x", EXIT_VANISHED), 4, None),
            (CaptureCutShort("the daemon ended the capture: x", EXIT_DAEMON_ENDED), 5, None),
            (Interrupted("SIGINT", "while connecting to h:2002"), 130, None),
            (Interrupted("SIGTERM", "while connecting to h:2002"), 143, None),
            (
                NoReply("login", 10),
                1,
                "rpcap-dump: the daemon did not answer the login within 10 s (--timeout to wait longer)",
            ),
            (ConnectionRefusedError(), 1, None),
            (TLSError([("SSL routines", "", "certificate verify failed")]), 1, None),
            (ConnectionDone(), 1, None),
            (KeyError("x"), 1, "rpcap-dump: unexpected error, please report it: KeyError: 'x'"),
            (KeyboardInterrupt(), 130, "rpcap-dump: interrupted by Ctrl-C (SIGINT); nothing captured"),
        ):
            self.assertEqual(self.main(["rpcap://h/eth0"], error), code, error)
            lines = self.stderr.getvalue().splitlines()
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith("rpcap-dump: "), lines)
            self.assertNotIn("Traceback", lines[0])
            if line is not None:
                self.assertEqual(lines[0], line)

    def test_success(self) -> None:
        self.assertIsNone(self.main(["rpcap://h/eth0"]))
        self.assertEqual(self.stderr.getvalue(), "")


class SignalTests(SynchronousTestCase):
    """Ctrl-C, SIGTERM and SIGHUP reach every run, from the reactor's thread."""

    def test_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.addCleanup(signal.signal, sig, signal.getsignal(sig))
        calls: list[Any] = []

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append((f, args))

        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup: left alone
        self.patch(dump, "_ignored_signals", None)
        dump.install_signal_handlers(Reactor())
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        self.assertEqual(calls, [(dump.interrupt_all, ("SIGTERM",))])
        self.assertIs(signal.getsignal(signal.SIGINT), handler)
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)
        # Installed again over the reactor's own, as it starts: the same, SIGHUP still ignored.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        dump.install_signal_handlers(Reactor())
        self.assertTrue(callable(signal.getsignal(signal.SIGTERM)))
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)

    def test_signal_at_the_password_prompt(self) -> None:
        """At the prompt (before the reactor runs), Ctrl-C or SIGTERM ends the run there and then."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, sig, signal.getsignal(sig))
        self.patch(dump, "_ignored_signals", set())
        dump.install_signal_handlers(object())
        self.patch(dump, "_prompting", True)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with self.assertRaises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
        with self.assertRaises(Interrupted) as e:
            handler(signal.SIGTERM, None)
        self.assertEqual(str(e.exception), "stopped by SIGTERM at the password prompt; nothing captured")

    def test_interrupt_all_without_runs(self) -> None:
        dump.interrupt_all("SIGINT")  # nothing to stop: nothing happens

    def test_exit_codes_documented(self) -> None:
        """The epilog of --help has the exit statuses."""
        text = build_parser().format_help()
        for code in (0, 1, 2, 3, 4, 5, 130):
            self.assertRegex(text, rf"\b{code}\b")
        self.assertTrue(re.search(r"Exit status:", text))


class StatsTests(SynchronousTestCase):
    def test_poll_keeps_drops_and_file_counters(self) -> None:
        run, stream = writer_dump()

        class Capture:
            loss = None

            def stats(self) -> defer.Deferred[StatsReply]:
                return defer.succeed(StatsReply(10, 1, 3, 9))

        run.capture = Capture()  # type: ignore[assignment]
        self.successResultOf(defer.ensureDeferred(run.poll()))
        self.assertEqual(run.drops, StatsReply(10, 1, 3, 9).dropped)

    def test_poll_without_answer(self) -> None:
        run, _ = writer_dump()

        class Capture:
            def stats(self) -> defer.Deferred[StatsReply]:
                return defer.fail(NoReply("request for its counters", 10))

        run.capture = Capture()  # type: ignore[assignment]
        self.successResultOf(defer.ensureDeferred(run.poll()))
        self.assertEqual(self.successResultOf(run.done).code, EXIT_VANISHED)


class HostileDaemonTests(RunTestsBase):
    """A daemon that breaks the protocol, stops answering or sends terminal escapes (scripted by hand)."""

    def setUp(self) -> None:
        super().setUp()
        self.endpoint = SilentEndpoint()

    def say(self, *messages: Any) -> None:
        """The daemon sends C{messages} (L{Message}s or raw bytes)."""
        assert self.endpoint.transport is not None
        for m in messages:
            self.endpoint.transport.protocol.dataReceived(m if isinstance(m, bytes) else m.encode())

    def test_escaped_interface_list(self) -> None:
        """-D prints what the daemon named its interfaces as tcpdump would: printable ASCII, one line each."""
        from rpcapsvc.protocol.wire import AuthReply, FindAllInterfacesReply, InterfaceInfo

        d = self.start("-D", "rpcap://192.0.2.9:2002/")
        hostile = InterfaceInfo("eth0\x1b[2J\x1b]0;pwned\x07", "line\r\nforged \u202e", 6)
        self.say(AuthReply(), FindAllInterfacesReply((hostile,)))
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(
            self.stdout_bytes(),
            b"1.eth0\\x1b[2J\\x1b]0;pwned\\x07 (line\\r\\nforged \\xe2\\x80\\xae) [Up]\n",
        )

    def test_silent_after_login(self) -> None:
        """A daemon that answers the login and then nothing: the deadline names the request it left unanswered."""
        from rpcapsvc.protocol.wire import AuthReply

        d = self.start("--timeout", "3", "-D", "rpcap://192.0.2.9:2002/")
        self.say(AuthReply())
        self.reactor.advance(3)
        error = self.failureResultOf(d, DumpError).value
        self.assertEqual(
            str(error),
            "the daemon did not answer the request for its interfaces within 3 s (--timeout to wait longer)",
        )

    def test_oversized_reply(self) -> None:
        """A list of interfaces announced at 4 GB: refused at once, exit status 6."""
        import struct

        from rpcapsvc.protocol.wire import AuthReply, MessageType

        d = self.start("-D", "rpcap://192.0.2.9:2002/")
        self.say(AuthReply(), struct.pack("!BBHI", 0, MessageType.FINDALLIF_REPLY, 1, 0xFFFFFFFF))
        error = self.failureResultOf(d, DumpError).value
        self.assertEqual(error.code, EXIT_PROTOCOL)
        self.assertEqual(
            str(error),
            "the daemon at 192.0.2.9:2002 broke the protocol: it sent an oversized list of interfaces"
            " (4294967295 bytes; 16777216 at most)",
        )

    def test_negative_link_type(self) -> None:
        """An open reply with link type -5: exit status 6, nothing written."""
        from rpcapsvc.protocol.wire import AuthReply, FindAllInterfacesReply, InterfaceInfo, OpenReply

        path = self.mktemp()
        d = self.start("-w", path, "rpcap://192.0.2.9:2002/eth0")
        self.say(AuthReply(), FindAllInterfacesReply((InterfaceInfo("eth0", "", 6),)), OpenReply(-5, 0))
        error = self.failureResultOf(d, DumpError).value
        self.assertEqual(error.code, EXIT_PROTOCOL)
        self.assertIn("broke the protocol: it opened the interface with link type -5", str(error))
        self.assertFalse(os.path.exists(path))


class HostileCaptureTests(RunTestsBase):
    """Mid-capture, against rpcapsvc's own daemon, with the daemon's side of the control connection forged."""

    def capturing(self, path: str) -> tuple[defer.Deferred[int], DumpClient]:
        d = self.start("-w", path, "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        [run] = dump._runs
        assert run.client is not None
        return d, run.client

    def test_error_flood(self) -> None:
        """1 MB error messages mid-capture: refused from the header, exit 6, the file complete."""
        import struct

        from rpcapsvc.protocol.wire import MessageType

        path = self.mktemp()
        d, client = self.capturing(path)
        client.dataReceived(struct.pack("!BBHI", 0, MessageType.ERROR, 9, 1 << 20) + b"x" * 65536)
        error = self.failed(d, CaptureCutShort)
        self.assertEqual(error.code, EXIT_PROTOCOL)
        self.assertEqual(
            str(error),
            "the daemon broke the protocol: it sent an oversized error message (1048576 bytes; 65536 at most)",
        )
        self.assertEqual(client.parser.buffered, 0)
        with open(path, "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET), (2, 0, UDP_PACKET)]))

    def test_signal_with_a_daemon_that_never_answers(self) -> None:
        """
        Ctrl-C, and the daemon never answers the last stats or the endcap:
        the run ends within SIGNAL_GRACE, the file complete, whatever --timeout says.
        """
        path = self.mktemp()
        d = self.start("--timeout", "60", "-w", path, "--udp", f"rpcap://{DAEMON_HOST}/eth0")
        [udp] = self.reactor.udpPorts
        self.daemon.capture([(1, 0, ICMP_PACKET)])
        self.daemon.forward_udp(udp.protocol)
        dump.interrupt_all("SIGINT")  # the stats request goes out, and is never answered (no flush)
        self.reactor.advance(SIGNAL_GRACE - 0.01)
        self.assertNoResult(d)
        self.reactor.advance(0.01)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.lines()[-1], "rpcap-dump: interrupted by Ctrl-C (SIGINT)")
        with open(path, "rb") as f:
            self.assertEqual(read_capture(self, f.read()), (1, [(1, 0, ICMP_PACKET)]))
