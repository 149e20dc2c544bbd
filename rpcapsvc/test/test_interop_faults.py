"""
End-to-end tests of faults a real network produces, against ``twistd -n
rpcapd``: a client that half-closes its control connection, and a firewall
that rejects the UDP data flow with an ICMP "administratively prohibited".
Each is survived, answered or counted, and leaves no traceback in the log.
"""

from __future__ import annotations

import signal
import socket
import struct
import time

from twisted.trial.unittest import TestCase

from ..capture.compiler import compile_filter
from . import _peers
from ._e2e import FINDALLDEVS, NULL_AUTH, Daemon, RawRpcapClient, free_port, rpcap_message
from ._fixtures import internet_checksum

AUTH_REPLY, FINDALLIF_REPLY, OPEN_REPLY, STARTCAP_REPLY, STATS_REPLY = 0x88, 0x82, 0x83, 0x84, 0x89
ERROR = 1
DGRAM = 2
ICMP_UNREACH, ICMP_PKT_FILTERED = 3, 13


def assert_clean_log(test: TestCase, daemon: Daemon) -> None:
    log = daemon.log()
    test.assertNotIn("Traceback", log)
    test.assertNotIn("Unhandled", log)


def icmp_prohibited(src_port: int, dst_port: int) -> bytes:
    """
    An ICMP "communication administratively prohibited" (type 3, code 13),
    what a firewall's reject sends, about a UDP datagram from 127.0.0.1
    C{src_port} to 127.0.0.1 C{dst_port}.
    """
    loopback = socket.inet_aton("127.0.0.1")
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 28, 0, 0x4000, 64, 17, 0, loopback, loopback)
    inner_ip = inner_ip[:10] + struct.pack("!H", internet_checksum(inner_ip)) + inner_ip[12:]
    inner_udp = struct.pack("!HHHH", src_port, dst_port, 8 + 28, 0)
    body = struct.pack("!BBHI", ICMP_UNREACH, ICMP_PKT_FILTERED, 0, 0) + inner_ip + inner_udp
    return body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]


class HalfCloseTests(TestCase):
    def setUp(self) -> None:
        self.port = free_port()
        self.daemon = Daemon("--listen", f"tcp:{self.port}:interface=127.0.0.1", "--null-auth")
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for_port(self.port)

    def test_requests_then_shutdown(self) -> None:
        """
        A client sends its requests and shuts down its sending side: it gets
        every reply, then the daemon closes (libpcap's rpcapd does the same).
        """
        client = RawRpcapClient(self.port)
        self.addCleanup(client.close)
        client.send(NULL_AUTH + FINDALLDEVS)
        client.sock.shutdown(socket.SHUT_WR)
        replies, closed = client.read_until_closed(5.0)
        self.assertEqual([m[0] for m in replies], [AUTH_REPLY, FINDALLIF_REPLY])
        self.assertTrue(closed)
        self.daemon.wait_for_log("the client finished sending")
        assert_clean_log(self, self.daemon)


class SighupTests(TestCase):
    """kill -HUP, what the shipped systemd unit's ExecReload sends."""

    def test_daemon_without_config_survives(self) -> None:
        port = free_port()
        daemon = Daemon("--listen", f"tcp:{port}:interface=127.0.0.1", "--null-auth")
        self.addCleanup(daemon.stop)
        daemon.wait_for_port(port)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("SIGHUP: no configuration file to reload")
        self.assertTrue(daemon.alive())
        client = RawRpcapClient(port)
        self.addCleanup(client.close)
        self.assertEqual(client.request(NULL_AUTH)[0], AUTH_REPLY)
        self.assertEqual(client.request(FINDALLDEVS)[0], FINDALLIF_REPLY)
        assert_clean_log(self, daemon)

    def test_collector_survives(self) -> None:
        port = free_port()
        directory = self.mktemp()
        collector = Daemon(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--directory", directory, plugin="rpcapcollect"
        )
        self.addCleanup(collector.stop)
        collector.wait_for_port(port)
        collector.process.send_signal(signal.SIGHUP)
        collector.wait_for_log("SIGHUP: capture files closed and new ones opened: files=0")
        self.assertTrue(collector.alive())
        assert_clean_log(self, collector)


class CleanLogTests(TestCase):
    def test_a_traceback_in_a_daemon_log_fails_the_test(self) -> None:
        """
        Every end-to-end test stops its daemons with Daemon.stop, which fails
        on a traceback in the daemon's log: so a whole run of the suite
        asserts that no daemon logged one.
        """
        port = free_port()
        daemon = Daemon("--listen", f"tcp:{port}:interface=127.0.0.1", "--null-auth")
        daemon.wait_for_port(port)
        daemon.process.terminate()
        daemon.process.wait(10)
        # Written once twistd is done with the file (it writes at its own offset).
        with open(daemon.log_path, "a") as f:
            f.write("Traceback (most recent call last):\n")
        self.assertRaises(AssertionError, daemon.stop)


class IcmpRejectTests(TestCase):
    def setUp(self) -> None:
        ok, why = _peers.can_capture()
        if not ok:
            raise self.skipTest(why)
        self.port = free_port()
        self.daemon = Daemon("--listen", f"tcp:{self.port}:interface=127.0.0.1", "--null-auth")
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for_port(self.port)

    def test_udp_flow_rejected_by_a_firewall(self) -> None:
        """
        A firewall answers the UDP data flow with ICMP "administratively
        prohibited": the datagram the kernel then refuses (EHOSTUNREACH) is
        counted as a drop, the capture goes on and later packets arrive.
        """
        data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(data.close)
        data.bind(("127.0.0.1", 0))
        data.settimeout(0.2)
        data_port = data.getsockname()[1]
        traffic = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(traffic.close)
        sink_port = free_port(kind=socket.SOCK_DGRAM)

        client = RawRpcapClient(self.port)
        self.addCleanup(client.close)
        self.assertEqual(client.request(NULL_AUTH)[0], AUTH_REPLY)
        self.assertEqual(client.request(rpcap_message(3, b"lo"))[0], OPEN_REPLY)
        # Only the test's marked datagrams (lo is DLT_EN10MB).
        program = compile_filter(f"udp dst port {sink_port}", 1, 65535)
        startcap = struct.pack("!IIHH", 65535, 50, DGRAM, data_port) + program.encode()
        mtype, _, payload = client.request(rpcap_message(4, startcap))
        self.assertEqual(mtype, STARTCAP_REPLY, payload)
        daemon_port = struct.unpack_from("!iHH", payload)[1]

        def send_and_count(n: int, marker: bytes) -> int:
            for i in range(n):
                traffic.sendto(marker + b"%04d" % i, ("127.0.0.1", sink_port))
            got = 0
            deadline = time.monotonic() + 3
            while got < n and time.monotonic() < deadline:
                try:
                    if marker in data.recv(65535):
                        got += 1
                except socket.timeout:
                    pass
            return got

        self.assertEqual(send_and_count(5, b"before"), 5)
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.addCleanup(icmp.close)
        icmp.sendto(icmp_prohibited(daemon_port, data_port), ("127.0.0.1", 0))
        time.sleep(0.2)
        # The first datagram after the reject is refused by the kernel; the rest get through.
        got = send_and_count(10, b"after")
        self.assertGreaterEqual(got, 9)
        mtype, _, payload = client.request(rpcap_message(9))
        self.assertEqual(mtype, STATS_REPLY, payload)
        _, _, dropped, sent = struct.unpack("!IIII", payload)
        self.assertEqual(dropped, 10 - got)
        self.assertEqual(dropped, 1)
        self.assertGreaterEqual(sent, 14)
        self.daemon.wait_for_log("datagrams refused (EHOSTUNREACH")
        assert_clean_log(self, self.daemon)
