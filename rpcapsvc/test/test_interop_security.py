"""
End-to-end security and resilience: ``twistd -n rpcapd`` under TLS, behind
an allow list, flooded, looped back on itself, losing its interface, stopped
with SIGTERM, churned through thousands of sessions, and run without root;
driven by libpcap 1.10.5's own client and by raw sockets.  Traffic stays on
loopback and on veth pairs these tests make and delete.  They skip, saying
why, where the client is not built or capture is not permitted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import psutil
from twisted.trial.unittest import SynchronousTestCase

from ._e2e import (
    CLOSE,
    FINDALLDEVS,
    NULL_AUTH,
    Daemon,
    PeerCapture,
    RawRpcapClient,
    Sniffer,
    Traffic,
    WrappedDaemon,
    e2e_skip_reason,
    free_port,
    has_marker,
    local_ports,
    payloads,
    peer,
    rpcap_message,
    transport_fields,
    warm_up,
)

SKIP = e2e_skip_reason()

MB = 1024 * 1024
ERROR, FINDALLDEVS_REPLY, OPEN_REPLY, STARTCAP_REPLY, AUTH_REPLY = 1, 0x82, 0x83, 0x84, 0x88


def open_request(device: str) -> bytes:
    return rpcap_message(3, device.encode())


def startcap_request(flags: int, portdata: int, snaplen: int = 65535, timeout_ms: int = 100) -> bytes:
    return rpcap_message(4, struct.pack("!IIHH", snaplen, timeout_ms, flags, portdata))


def is_rpcap_packet_datagram(payload: bytes) -> bool:
    """
    RPCAP data messages (version 0, type 7, value 0) back to back, whose
    length fields fit the datagram (which the capture's snaplen may have cut
    short): one message, or the run of them a UDP GSO send is before the
    kernel cuts it (what a capture on the sending host sees).
    """
    position = 0
    while position < len(payload):
        header = payload[position : position + 8]
        if len(header) < 8:
            return position > 0 and payload[position:] == b"\x00\x07\x00\x00"[: len(header)]
        if header[:4] != b"\x00\x07\x00\x00":
            return False
        (plen,) = struct.unpack_from("!I", header, 4)
        if plen < 20:
            return False
        position += 8 + plen
    return len(payload) >= 8 + 20


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class DaemonMixin:
    """One daemon per test, plus marked traffic on loopback."""

    daemon: Daemon
    port: int
    daemon_args: tuple[str, ...] = ("--null-auth",)

    def setUp(self) -> None:
        self.port = free_port()
        self.start_daemon(*self.daemon_args)
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)  # type: ignore[attr-defined]
        self.url = f"rpcap://127.0.0.1:{self.port}/"

    def start_daemon(self, *args: str) -> None:
        self.daemon = Daemon("--listen", f"tcp:{self.port}:interface=127.0.0.1", *args, wait_port=self.port)
        self.addCleanup(self.daemon.stop)  # type: ignore[attr-defined]
        self.addCleanup(self.assert_clean_log, self.daemon)  # type: ignore[attr-defined]

    def assert_clean_log(self, daemon: Daemon) -> None:
        """Whatever the test did, the daemon logged no traceback (run before it is stopped)."""
        log = daemon.log()
        for sign in ("Traceback", "Unhandled error", "Unhandled Error"):
            assert sign not in log, f"{sign!r} in the daemon's log:\n{log[-3000:]}"

    def capture(self, source: str, *options: str) -> PeerCapture:
        cap = PeerCapture(source, *options)
        self.addCleanup(cap.kill)  # type: ignore[attr-defined]
        return cap

    def still_serving(self) -> None:
        [reply] = peer("findalldevs", self.url, timeout=10)
        assert "interfaces" in reply, reply
        assert self.daemon.alive()


# --- a. TLS ------------------------------------------------------------------------


def make_certificates(directory: str) -> tuple[str, str, str]:
    """
    A throwaway CA and a server certificate it signed for 127.0.0.1 (in the
    SAN), made with the openssl CLI: C{(ca.pem, server.key, server.pem)}.
    """

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, *"-keyout ca.key -out ca.pem -days 2 -subj /CN=rpcapsvc-test-CA".split())
    openssl("req", *ec, *"-keyout server.key -out server.csr -subj /CN=127.0.0.1".split())
    Path(directory, "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        *"-in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext".split(),
    )
    return tuple(os.path.join(directory, name) for name in ("ca.pem", "server.key", "server.pem"))  # type: ignore[return-value]


class TlsTests(DaemonMixin, SynchronousTestCase):
    """
    C{--listen ssl:...}: libpcap's client captures through C{rpcaps://}, and
    both the control and the data connection are TLS on the wire.
    """

    skip = SKIP if SKIP else (None if shutil.which("openssl") else "the openssl command is not installed")

    def start_daemon(self, *args: str) -> None:
        certs = tempfile.mkdtemp(prefix="rpcapd-tls-")
        self.addCleanup(shutil.rmtree, certs, True)
        self.ca, key, cert = make_certificates(certs)
        self.daemon = Daemon(
            "--listen",
            f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            *args,
            wait_port=self.port,
        )
        self.addCleanup(self.daemon.stop)
        self.addCleanup(self.assert_clean_log, self.daemon)
        self.tls_url = f"rpcaps://127.0.0.1:{self.port}/"

    def tls_client(self) -> RawRpcapClient:
        """A raw client that verifies the daemon's certificate against the test CA."""
        context = ssl.create_default_context(cafile=self.ca)
        client = RawRpcapClient(self.port, tls=context)
        self.addCleanup(client.close)
        return client

    def test_capture_over_tls_is_encrypted_on_the_wire(self) -> None:
        cap = self.capture(
            self.tls_url + "lo", "--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "15"
        )
        warm_up(cap, self.traffic)
        # The data connection: the daemon's connection on a port other than the control port.
        data_ports = {
            c.laddr.port
            for c in psutil.Process(self.daemon.process.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port != self.port
        }
        self.assertEqual(len(data_ports), 1, data_ports)
        [data_port] = data_ports
        sniffer = Sniffer("lo", f"tcp port {data_port} or tcp port {self.port}")
        self.addCleanup(sniffer.stop)
        time.sleep(0.2)
        markers = [f"tls-secret-{n}-{os.urandom(4).hex()}" for n in range(20)]
        for marker in markers:
            self.traffic.send(marker)
        cap.wait_for(lambda lines: all(any(has_marker(f, m) for f in payloads(lines)) for m in markers))
        time.sleep(0.2)
        frames = sniffer.stop()
        # What went over the data port, daemon to client.
        segments = [
            fields[3]
            for fields in map(transport_fields, frames)
            if fields is not None and fields[1] == data_port and fields[3]
        ]
        self.assertGreater(
            sum(map(len, segments)), 20 * 40, "the packets did not go over the data connection"
        )
        self.assertTrue(
            any(segment.startswith(b"\x17\x03\x03") for segment in segments),
            "the data connection does not carry TLS application data records",
        )
        everything = b"".join(frames)
        for marker in markers:
            self.assertNotIn(marker.encode(), everything)
        # A check on the check: the markers are in the clear on the captured loopback traffic.
        self.assertTrue(any(marker.encode() in f for f in payloads(cap.lines) for marker in markers))

    def test_udp_is_refused_under_tls(self) -> None:
        # libpcap's client refuses by itself ...
        [line] = peer("capture", self.tls_url + "lo", "--udp", "--max-seconds", "2", timeout=15)
        self.assertIn("TLS not supported with UDP", line["error"])
        # ... and the daemon refuses a client that asks anyway, and goes on serving it.
        client = self.tls_client()
        self.assertEqual(client.request(NULL_AUTH)[0], AUTH_REPLY)
        self.assertEqual(client.request(open_request("lo"))[0], OPEN_REPLY)
        mtype, code, text = client.request(startcap_request(flags=2, portdata=self.traffic.port))
        self.assertEqual((mtype, code), (ERROR, 12))
        self.assertIn(b"cannot be encrypted", text)
        self.assertEqual(client.request(FINDALLDEVS)[0], FINDALLDEVS_REPLY)

    def test_plaintext_client_is_turned_away_at_once(self) -> None:
        started = time.monotonic()
        [line] = peer("findalldevs", self.url, timeout=15)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("error", line)
        # A raw plaintext login: the connection is closed, not left hanging.
        raw = RawRpcapClient(self.port)
        self.addCleanup(raw.close)
        started = time.monotonic()
        raw.send(NULL_AUTH + FINDALLDEVS)
        messages, closed = raw.read_until_closed(timeout=2.0)
        self.assertTrue(closed)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(messages, [])  # no RPCAP in the clear; at most a TLS alert, which is not RPCAP
        # TLS clients are still served.
        [reply] = peer("findalldevs", self.tls_url, timeout=15)
        self.assertIn("interfaces", reply)
        self.assertTrue(self.daemon.alive())


# --- b. --allow ----------------------------------------------------------------------


class AllowTests(DaemonMixin, SynchronousTestCase):
    """C{--allow} a host that is not us: we are refused with error 10 and a closed connection."""

    skip = e2e_skip_reason(need_capture=False)
    daemon_args = ("--null-auth", "--allow", "10.255.255.1")

    def test_client_not_in_the_list_is_refused(self) -> None:
        [line] = peer("findalldevs", self.url, timeout=15)
        self.assertIn("error", line)
        self.assertIn("not allowed", line["error"])
        self.daemon.wait_for_log("control connection refused: not an allowed client")
        self.assertIn("peer=127.0.0.1:", self.daemon.log())
        raw = RawRpcapClient(self.port)
        self.addCleanup(raw.close)
        messages, closed = raw.read_until_closed(timeout=5.0)
        self.assertTrue(closed)
        [(mtype, code, text)] = messages
        self.assertEqual((mtype, code), (ERROR, 10))
        self.assertIn(b"127.0.0.1", text)
        self.assertNotIn("authenticated", self.daemon.log())
        self.assertTrue(self.daemon.alive())


# --- c. backpressure: memory stays flat under a flood nobody reads ----------------------


def socket_queues(proto: str, port: int, remote_port: Optional[int] = None) -> list[tuple[int, int, int]]:
    """
    C{(send queue, receive queue, drops)} of this host's IPv4 C{proto}
    ("tcp", "udp") sockets bound to local C{port} (TCP: established ones; and connected to
    C{remote_port}, if given), from /proc/net; drops are counted for UDP only.
    """
    found = []
    for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) != port:
            continue
        if remote_port is not None and int(fields[2].split(":")[1], 16) != remote_port:
            continue
        if proto == "tcp" and fields[3] != "01":
            continue  # not established: a listener, or a closed connection that had this port once
        tx, rx = (int(q, 16) for q in fields[4].split(":"))
        found.append((tx, rx, int(fields[-1]) if proto == "udp" else 0))
    return found


class BackpressureTests(DaemonMixin, SynchronousTestCase):
    """
    A client that stops reading while 100 MB flood its capture costs the
    daemon no memory, over TCP (the capture is paused; the kernel ring drops)
    and over UDP (datagrams the client does not read are lost at its
    socket); meanwhile other clients are served.
    """

    skip = SKIP
    FLOOD = 100 * MB
    FRAME = 8000

    def _flood_a_stalled_client(self, *options: str) -> PeerCapture:
        stalled = self.capture(
            self.url + "lo",
            "--filter",
            f"udp dst port {self.traffic.port}",
            "--stop-reading-after",
            "1",
            "--max-seconds",
            "60",
            *options,
        )
        warm_up(stalled, self.traffic)
        pid = self.daemon.process.pid
        self.still_serving()
        baseline = rss(pid)
        peak = [baseline]
        served: list[float] = []
        failures: list[Any] = []
        flooding = threading.Event()
        flooding.set()

        def watch() -> None:
            # Another client lists interfaces, again and again, while the flood lasts.
            while flooding.is_set():
                peak[0] = max(peak[0], rss(pid))
                started = time.monotonic()
                lines = peer("findalldevs", self.url, timeout=20)
                if not (lines and "interfaces" in lines[0]):
                    failures.append(lines)
                elif flooding.is_set():
                    served.append(time.monotonic() - started)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        sent = 0
        # 100 MB at least, and on until others have been served during it.
        while (sent < self.FLOOD or len(served) < 3) and time.monotonic() - started < 20:
            self.traffic.send(f"flood-{sent}", size=self.FRAME)
            sent += self.FRAME
            if sent % (500 * self.FRAME) == 0:
                peak[0] = max(peak[0], rss(pid))
        flooding.clear()
        watcher.join(30)
        peak[0] = max(peak[0], rss(pid))
        self.assertEqual(failures, [])
        self.assertGreaterEqual(len(served), 3, "others were not served during the flood")
        self.assertLess(max(served), 5.0)
        self.assertGreaterEqual(sent, self.FLOOD)
        self.assertTrue(self.daemon.alive())
        self.assertLess(peak[0] - baseline, 32 * MB, f"RSS grew by {(peak[0] - baseline) / MB:.1f} MB")
        self.still_serving()
        return stalled

    def test_tcp_client_that_stops_reading(self) -> None:
        self._flood_a_stalled_client()
        # The flood reached the data connection, which is full: the capture is paused.
        data_ports = {
            c.laddr.port
            for c in psutil.Process(self.daemon.process.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port != self.port
        }
        [data_port] = data_ports
        [(send_queue, _, _)] = socket_queues("tcp", data_port)
        self.assertGreater(send_queue, 64 * 1024)

    def test_udp_client_that_stops_reading(self) -> None:
        stalled = self._flood_a_stalled_client("--udp")
        # The flood reached the client's data socket, which dropped what it could not hold.
        [client_port] = local_ports(stalled.process.pid, "udp")
        [(_, _, drops)] = socket_queues("udp", client_port)
        self.assertGreater(drops, 0)


class GreedyClientTests(DaemonMixin, SynchronousTestCase):
    """
    A client that pipelines requests by the hundred thousand and never reads
    the replies: the daemon stops handling its requests when its replies back
    up, so memory stays flat, and others are served at once meanwhile.
    """

    skip = e2e_skip_reason(need_capture=False)

    def test_pipelined_requests_and_no_reading(self) -> None:
        pid = self.daemon.process.pid
        self.still_serving()
        baseline = rss(pid)
        greedy = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(greedy.close)
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.sendall(NULL_AUTH)
        greedy.settimeout(0.5)
        sent = 0
        try:
            while sent < 1_000_000:
                greedy.sendall(FINDALLDEVS * 8192)
                sent += 8192
        except socket.timeout:
            pass  # the daemon stopped reading: the socket buffers are full
        self.assertGreater(sent, 8192)
        # Others are served at once all along; and once the greedy client's
        # replies fill the socket buffers, the daemon stops working for it:
        # it goes idle (it would otherwise answer requests for minutes).
        process = psutil.Process(pid)
        deadline = time.monotonic() + 8
        busy = 1.0
        while busy > 0.1:
            self.assertLess(time.monotonic(), deadline, f"the daemon is still busy ({busy:.0%} of a CPU)")
            started = time.monotonic()
            self.still_serving()
            self.assertLess(time.monotonic() - started, 2.0)
            cpu = sum(process.cpu_times()[:2])
            time.sleep(0.5)
            busy = (sum(process.cpu_times()[:2]) - cpu) / 0.5
        # Requests it has not read wait in its socket's receive queue.
        [(_, unread, _)] = socket_queues("tcp", self.port, greedy.getsockname()[1])
        self.assertGreater(unread, 0)
        self.assertLess(rss(pid) - baseline, 16 * MB, f"RSS grew by {(rss(pid) - baseline) / MB:.1f} MB")
        # The greedy client, reading at last, gets its replies, in order.
        greedy.settimeout(5)
        header = greedy.recv(8, socket.MSG_WAITALL)
        self.assertEqual(header[1], AUTH_REPLY)


def filter_block(expression: str) -> bytes:
    """A startcap/updatefilter filter block: C{expression} compiled by libpcap for Ethernet."""
    import pcapy

    program = pcapy.compile(1, 65535, expression, 1, 0xFFFFFFFF).get_bpf()
    return struct.pack("!HHI", 1, 0, len(program)) + b"".join(struct.pack("!HBBi", *i) for i in program)


class OddRequestsTests(DaemonMixin, SynchronousTestCase):
    """Requests that once made the daemon raise, each answered and the session kept."""

    skip = SKIP

    def test_odd_requests(self) -> None:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        self.addCleanup(sink.close)
        raw = RawRpcapClient(self.port)
        self.addCleanup(raw.close)
        self.assertEqual(raw.request(NULL_AUTH)[0], AUTH_REPLY)
        # An interface name that is not UTF-8.
        mtype, code, text = raw.request(rpcap_message(3, b"\xffeth0"))
        self.assertEqual((mtype, code), (ERROR, 6), text)
        self.assertIn(b"no such interface", text)
        self.assertEqual(raw.request(open_request("lo"))[0], OPEN_REPLY)
        # UDP data to port 0: nowhere to send.
        mtype, code, text = raw.request(startcap_request(flags=2, portdata=0))
        self.assertEqual((mtype, code), (ERROR, 12), text)
        # A read timeout past what libpcap's int holds.
        self.assertEqual(
            raw.request(startcap_request(flags=2, portdata=sink.getsockname()[1], timeout_ms=0xFFFFFFFF))[0],
            STARTCAP_REPLY,
        )
        self.assertEqual(raw.request(FINDALLDEVS)[0], FINDALLDEVS_REPLY)


class UdpCollectorGoneTests(DaemonMixin, SynchronousTestCase):
    """
    A UDP data port that closes under a capture (ICMP port unreachable): the
    datagrams are counted as dropped, the capture goes on, and they flow again
    when a socket is back on that port.
    """

    skip = SKIP

    def test_data_port_closes_and_comes_back(self) -> None:
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        data_port = collector.getsockname()[1]
        raw = RawRpcapClient(self.port)
        self.addCleanup(raw.close)
        self.assertEqual(raw.request(NULL_AUTH)[0], AUTH_REPLY)
        self.assertEqual(raw.request(open_request("lo"))[0], OPEN_REPLY)
        program = filter_block(f"udp dst port {self.traffic.port}")
        startcap = rpcap_message(4, struct.pack("!IIHH", 65535, 50, 2, data_port) + program)
        self.assertEqual(raw.request(startcap)[0], STARTCAP_REPLY)

        def arrives(marker: str) -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                self.traffic.send(marker)
                try:
                    if marker.encode() in collector.recv(65535):
                        return
                except socket.timeout:
                    pass
            self.fail(f"{marker} never arrived")

        arrives("before")
        collector.close()
        for n in range(20):
            self.traffic.send(f"nobody-there-{n}")
            time.sleep(0.01)
        time.sleep(0.3)
        mtype, _, stats = raw.request(rpcap_message(9))
        self.assertEqual(mtype, 0x89, stats)  # a stats reply, not the error that ended the capture
        ifrecv, ifdrop, krnldrop, svrcapt = struct.unpack("!IIII", stats)
        self.assertGreater(krnldrop, 0)
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        collector.bind(("127.0.0.1", data_port))
        collector.settimeout(0.2)
        self.addCleanup(collector.close)
        arrives("after")


# --- d. no feedback loop ------------------------------------------------------------------


class FeedbackLoopTests(DaemonMixin, SynchronousTestCase):
    """
    libpcap's client captures C{lo} with no filter at all, over UDP: the
    daemon's own data datagrams to the client cross C{lo}.  By default the
    daemon never captures them (nor its control connection), so what is
    captured stays in proportion to what is sent; with
    C{--capture-own-traffic} they come back, again and again.
    """

    skip = SKIP
    daemon_args = ("--null-auth", "--udp-mtu", "0")

    def _capture_everything(self) -> tuple[list[bytes], set[int], list[str]]:
        """Capture lo unfiltered over UDP while sending marked datagrams."""
        cap = self.capture(self.url + "lo", "--udp", "--snaplen", "256", "--max-seconds", "10")
        warm_up(cap, self.traffic)
        daemon_udp_ports = local_ports(self.daemon.process.pid, "udp")
        self.assertTrue(daemon_udp_ports)
        markers = [f"loop-{n}-{os.urandom(4).hex()}" for n in range(10)]
        for marker in markers:
            self.traffic.send(marker)
            time.sleep(0.02)
        time.sleep(1.5)
        cap.kill()
        return payloads(cap.lines), daemon_udp_ports, markers

    @staticmethod
    def own_datagrams(frames: list[bytes], daemon_udp_ports: set[int]) -> list[bytes]:
        """The daemon's data datagrams among the frames (from its UDP port, RPCAP type 7)."""
        own = []
        for frame in frames:
            fields = transport_fields(frame)
            if (
                fields
                and fields[0] == 17
                and fields[1] in daemon_udp_ports
                and is_rpcap_packet_datagram(fields[3])
            ):
                own.append(frame)
        return own

    @staticmethod
    def without_other_daemons(frames: list[bytes], daemon_udp_ports: set[int]) -> list[bytes]:
        """
        The frames but other daemons' data datagrams: a test running at the
        same time (trial -j) may capture lo too, this one's markers included.
        """
        return [
            f
            for f in frames
            if not (
                (fields := transport_fields(f))
                and fields[0] == 17
                and fields[1] not in daemon_udp_ports
                and is_rpcap_packet_datagram(fields[3])
            )
        ]

    def test_own_traffic_is_never_captured(self) -> None:
        frames, daemon_udp_ports, markers = self._capture_everything()
        self.assertEqual(self.own_datagrams(frames, daemon_udp_ports), [])
        frames = self.without_other_daemons(frames, daemon_udp_ports)
        control = [f for f in frames if (fl := transport_fields(f)) and fl[0] == 6 and self.port in fl[1:3]]
        self.assertEqual(control, [])
        # Each marked datagram was captured once: not again inside a forwarded one.
        for marker in markers:
            self.assertEqual(sum(has_marker(f, marker) for f in frames), 1, marker)

    def test_two_sessions_never_capture_each_others_forwarded_packets(self) -> None:
        """
        Two unfiltered UDP captures of C{lo} at once: each session's data
        crosses the interface the other captures.  Neither sees the other's
        forwarded datagrams, whichever started first.
        """
        first = self.capture(self.url + "lo", "--udp", "--snaplen", "256", "--max-seconds", "10")
        warm_up(first, self.traffic)
        second = self.capture(self.url + "lo", "--udp", "--snaplen", "256", "--max-seconds", "10")
        warm_up(second, self.traffic)
        daemon_udp_ports = local_ports(self.daemon.process.pid, "udp")
        self.assertGreaterEqual(len(daemon_udp_ports), 2)
        markers = [f"pair-{n}-{os.urandom(4).hex()}" for n in range(10)]
        for marker in markers:
            self.traffic.send(marker)
            time.sleep(0.02)
        time.sleep(1.5)
        first.kill()
        second.kill()
        for cap in (first, second):
            frames = payloads(cap.lines)
            self.assertEqual(self.own_datagrams(frames, daemon_udp_ports), [])
            frames = self.without_other_daemons(frames, daemon_udp_ports)
            for marker in markers:
                self.assertEqual(sum(has_marker(f, marker) for f in frames), 1, marker)

    def test_capture_own_traffic_feeds_back(self) -> None:
        """The check on the check: with the exclusion off, the loop is there to see."""
        self.daemon.stop()
        self.start_daemon("--null-auth", "--udp-mtu", "0", "--capture-own-traffic")
        frames, daemon_udp_ports, markers = self._capture_everything()
        own = self.own_datagrams(frames, daemon_udp_ports)
        self.assertGreater(len(own), 10 * len(markers), f"{len(own)} of the daemon's datagrams came back")
        self.assertTrue(any(sum(has_marker(f, m) for f in frames) > 1 for m in markers))
        self.still_serving()


# --- e. the interface goes away ---------------------------------------------------------------


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def veth_skip_reason() -> Optional[str]:
    if SKIP:
        return SKIP
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making a veth pair needs root (CAP_NET_ADMIN)"
    return None


class InterfaceGoneTests(DaemonMixin, SynchronousTestCase):
    """
    A veth link deleted while it is captured: its captures end with RPCAP
    error 9, the daemon lives on, and other sessions go on.
    """

    skip = veth_skip_reason()

    def make_veth(self) -> tuple[str, str]:
        name = f"rpct{os.getpid() % 100000}"
        inside, outside = name + "a", name + "b"
        ip("link", "del", inside)  # a leftover of an earlier, killed run
        made = ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        if made.returncode != 0:
            self.skipTest(f"cannot make a veth pair: {made.stderr.strip()}")
        self.addCleanup(ip, "link", "del", inside)
        for link in (inside, outside):
            ip("link", "set", link, "up")
        return inside, outside

    def test_capture_ends_with_error_9_and_the_daemon_goes_on(self) -> None:
        inside, outside = self.make_veth()
        # Someone else's capture on lo, which must not notice.
        other = self.capture(
            self.url + "lo", "--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "30"
        )
        warm_up(other, self.traffic)
        # libpcap's client captures the veth (TCP data) ...
        doomed = self.capture(self.url + inside, "--max-seconds", "30")
        # ... and a raw client too, over UDP, to read the daemon's error itself.
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        self.addCleanup(sink.close)
        raw = RawRpcapClient(self.port)
        self.addCleanup(raw.close)
        self.assertEqual(raw.request(NULL_AUTH)[0], AUTH_REPLY)
        self.assertEqual(raw.request(open_request(inside))[0], OPEN_REPLY)
        self.assertEqual(
            raw.request(startcap_request(flags=2, portdata=sink.getsockname()[1]))[0], STARTCAP_REPLY
        )
        # Frames sent into the far end arrive on the captured end.
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind((outside, 0))
        self.addCleanup(sender.close)
        deadline = time.monotonic() + 10
        while not any(b"veth-marker" in f for f in payloads(doomed.lines)):
            self.assertLess(
                time.monotonic(), deadline, f"the veth capture never started: {doomed.lines[-3:]}"
            )
            sender.send(
                b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"veth-marker".ljust(50, b".")
            )
            time.sleep(0.1)

        gone = time.monotonic()
        self.assertEqual(ip("link", "del", inside).returncode, 0)
        # The raw client reads error 9 on its control connection, which stays open.
        raw.sock.settimeout(5)
        mtype, code, text = raw.read_message()
        self.assertEqual((mtype, code), (ERROR, 9), text)
        self.assertIn(inside.encode(), text)
        self.assertIn(b"The interface went down", text)  # libpcap's reason, not the reactor's
        self.assertEqual(raw.request(FINDALLDEVS)[0], FINDALLDEVS_REPLY)
        # libpcap's client sees its capture end with an error, promptly.
        doomed.process.wait(10)
        self.assertLess(time.monotonic() - gone, 5)
        self.assertIn("error", doomed.lines[-1])
        sent = rf"session=\d+ peer=127\.0\.0\.1:\d+ sent error 9: capture on {re.escape(inside)} ended"
        self.assertEqual(len(re.findall(sent, self.daemon.log())), 2)
        # The daemon lives, lists interfaces (the veth no more) for a new client ...
        self.assertTrue(self.daemon.alive())
        [reply] = peer("findalldevs", self.url, timeout=10)
        names = [i["name"].rsplit("/", 1)[1] for i in reply["interfaces"]]
        self.assertIn("lo", names)
        self.assertNotIn(inside, names)
        # ... and the other capture goes on.
        for n in range(5):
            self.traffic.send(f"after-{n}")
        other.wait_for(lambda lines: any(has_marker(f, "after-4") for f in payloads(lines)))
        self.assertIsNone(other.process.poll())


# --- f. SIGTERM -------------------------------------------------------------------------------


class SigtermTests(DaemonMixin, SynchronousTestCase):
    """SIGTERM during a capture: the daemon exits 0 within 5 s and the capture ends."""

    skip = SKIP

    def test_sigterm_during_a_capture(self) -> None:
        cap = self.capture(
            self.url + "lo", "--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "30"
        )
        warm_up(cap, self.traffic)
        started = time.monotonic()
        os.kill(self.daemon.process.pid, signal.SIGTERM)
        # twistd stops cleanly, then ends itself with the signal that stopped
        # it (so that a supervisor knows why): "killed by SIGTERM" is its
        # clean exit, which systemd counts as a success.
        self.assertEqual(self.daemon.process.wait(5), -signal.SIGTERM)
        cap.process.wait(5)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("error", cap.lines[-1])  # the data connection closed under it
        log = self.daemon.log()
        self.assertIn("closed: the daemon is stopping", log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)


# --- g. thousands of sessions -----------------------------------------------------------------


class ManySessionsTests(DaemonMixin, SynchronousTestCase):
    """
    2000 sessions (log in, list interfaces, say close), one in fifty also
    capturing, made as fast as a loop can: descriptors and memory come back.
    """

    skip = SKIP

    def cycle(self, capture_to: Optional[int]) -> None:
        client = RawRpcapClient(self.port)
        try:
            if capture_to is None:
                client.send(NULL_AUTH + FINDALLDEVS + CLOSE)
                replies = [client.read_message()[0] for _ in range(2)]
                self.assertEqual(replies, [AUTH_REPLY, FINDALLDEVS_REPLY])
            else:
                client.send(NULL_AUTH + FINDALLDEVS + open_request("lo") + startcap_request(2, capture_to))
                replies = [client.read_message()[0] for _ in range(4)]
                self.assertEqual(replies, [AUTH_REPLY, FINDALLDEVS_REPLY, OPEN_REPLY, STARTCAP_REPLY])
                client.send(CLOSE)
        finally:
            client.close()

    def settled(self, pid: int, fds: int) -> int:
        """The daemon's descriptor count once it stops changing (or is back to C{fds})."""
        process = psutil.Process(pid)
        deadline = time.monotonic() + 5
        last = process.num_fds()
        while time.monotonic() < deadline and last != fds:
            time.sleep(0.2)
            now = process.num_fds()
            if now == last and abs(now - fds) <= 3:
                break
            last = now
        return last

    def test_two_thousand_sessions(self) -> None:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        self.addCleanup(sink.close)
        pid = self.daemon.process.pid
        for n in range(50):  # warm up: imports, caches, the first captures
            self.cycle(sink.getsockname()[1] if n % 10 == 0 else None)
        time.sleep(0.5)
        fds_before = self.settled(pid, psutil.Process(pid).num_fds())
        rss_before = rss(pid)
        started = time.monotonic()
        for n in range(2000):
            # Opening a capture takes the kernel ~0.1 s (packet sockets, rings): one in fifty.
            self.cycle(sink.getsockname()[1] if n % 50 == 0 else None)
        elapsed = time.monotonic() - started
        fds_after = self.settled(pid, fds_before)
        rss_after = rss(pid)
        self.assertLessEqual(abs(fds_after - fds_before), 3, (fds_before, fds_after))
        self.assertLess(
            rss_after - rss_before, 10 * MB, f"RSS grew by {(rss_after - rss_before) / MB:.1f} MB"
        )
        self.assertLess(elapsed, 60)
        self.assertNotIn("Traceback", self.daemon.log())
        self.still_serving()


# --- h. without root ---------------------------------------------------------------------------


NOBODY = 65534


def interpreter_for_nobody() -> tuple[Optional[str], list[str], str]:
    """
    An interpreter user nobody can run with this one's packages, the paths to
    put on C{PYTHONPATH}, and why not when there is none.  This one, if
    nobody can reach it; else the system's build of the same Python version
    (a virtualenv made from an interpreter under a private home often cannot
    be reached).
    """
    paths = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [
                "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                candidate, "-c", "import pcapy, twisted, rpcapsvc.tap",
            ],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *paths])},
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        if probe.returncode == 0:
            return candidate, paths, ""
    return None, paths, f"no Python {version} with these packages that user nobody (uid {NOBODY}) can run"


def privilege_skip_reason() -> Optional[str]:
    if SKIP:
        return SKIP
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if os.geteuid() != 0:
        return "dropping to user nobody with chosen capabilities needs root"
    return None


class WithoutRootTests(SynchronousTestCase):
    """
    The daemon as user nobody: with CAP_NET_RAW alone it captures (promiscuous
    mode included); with no capability a capture fails with a clear RPCAP
    error and the daemon goes on.
    """

    skip = privilege_skip_reason()

    def setUp(self) -> None:
        interpreter, paths, why = interpreter_for_nobody()
        if interpreter is None:
            self.skipTest(why)
        self.interpreter, self.paths = interpreter, paths
        self.port = free_port()
        self.url = f"rpcap://127.0.0.1:{self.port}/"
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)

    def start(self, capabilities: str) -> WrappedDaemon:
        """The daemon as nobody, with exactly C{capabilities} ("+net_raw", or "" for none)."""
        caps = ["--inh-caps=-all" + (f",{capabilities}" if capabilities else "")]
        if capabilities:
            caps.append(f"--ambient-caps={capabilities}")
        wrapper = [
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *caps,
            "--bounding-set=-all" + (f",{capabilities}" if capabilities else ""),
        ]  # fmt: skip
        daemon = WrappedDaemon(
            wrapper,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--null-auth",
            interpreter=self.interpreter,
            extra_path=self.paths,
            wait_port=self.port,
        )
        self.addCleanup(daemon.stop)
        status = Path(f"/proc/{daemon.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        self.assertEqual(fields["Uid"].split()[0], str(NOBODY))
        expected = 1 << 13 if capabilities else 0  # CAP_NET_RAW is capability 13
        self.assertEqual(int(fields["CapEff"], 16), expected)
        return daemon

    def test_cap_net_raw_is_enough(self) -> None:
        daemon = self.start("+net_raw")
        cap = PeerCapture(
            self.url + "lo", "--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "15"
        )
        self.addCleanup(cap.kill)
        warm_up(cap, self.traffic)  # libpcap's client asks for promiscuous mode by default
        for n in range(10):
            self.traffic.send(f"nobody-{n}")
        cap.wait_for(lambda lines: any(has_marker(f, "nobody-9") for f in payloads(lines)))
        self.assertRegex(daemon.log(), r"session=\d+ peer=127\.0\.0\.1:\d+ capture on lo started")

    def test_no_capability_fails_clearly(self) -> None:
        daemon = self.start("")
        # Listing interfaces needs no privilege ...
        [reply] = peer("findalldevs", self.url, timeout=10)
        self.assertIn("lo", [i["name"].rsplit("/", 1)[1] for i in reply["interfaces"]])
        # ... capturing does, and the client is told so.
        [line] = peer("capture", self.url + "lo", "--max-seconds", "2", timeout=15)
        self.assertIn("Operation not permitted", line["error"])
        raw = RawRpcapClient(self.port)
        self.addCleanup(raw.close)
        self.assertEqual(raw.request(NULL_AUTH)[0], AUTH_REPLY)
        mtype, code, text = raw.request(open_request("lo"))
        self.assertEqual((mtype, code), (ERROR, 6))
        self.assertIn(b"permission", text)
        self.assertTrue(daemon.alive())
        [reply] = peer("findalldevs", self.url, timeout=10)
        self.assertIn("interfaces", reply)
