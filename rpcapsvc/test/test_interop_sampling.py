"""
End-to-end tests of RPCAP sampling: ``twistd -n rpcapd`` capturing on lo,
traffic sent on lo by this process, and two clients:

- one that speaks the control channel by hand (L{RawRpcapClient}) and sends
  the sampling value as the protocol defines it, as WinPcap's and
  libpcap 1.0's clients did: 1 in 10 of 100,000 packets is 10 % +- 1 %,
  first-after-100-ms one packet per 100 ms of traffic;
- libpcap 1.10's own client (C{pcap_setsampling}, rpcap-peer-client's
  C{--sampling}), which sends C{(uint16)htonl(value)} and so 0 on a
  little-endian machine whatever the application asked for: the daemon
  forwards every packet and its log says why.

They need root (or CAP_NET_RAW) and the reference peers; they skip otherwise.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from typing import Optional

from twisted.trial.unittest import TestCase

from rpcapsvc.capture.compiler import compile_filter
from rpcapsvc.protocol.datachannel import CapturedPacket, PacketStreamParser
from rpcapsvc.protocol.wire import StartCaptureRequest

from ._e2e import (
    NULL_AUTH,
    Daemon,
    PeerCapture,
    RawRpcapClient,
    Traffic,
    e2e_skip_reason,
    free_port,
    has_marker,
    payloads,
    rpcap_message,
    warm_up,
)

DLT_EN10MB = 1
SETSAMPLING, OPEN, STATS = 11, 3, 9
REPLY = 0x80
BUFFER = str(32 << 20)  # the whole 100,000-packet burst fits: a sampling test, not a drop test


class SampledCapture:
    """
    A capture of lo asked for by hand: null auth, open, setsampling, startcap
    with a filter for C{port} (other tests' traffic on lo stays out), passive
    TCP data channel read by a thread.
    """

    def __init__(self, daemon_port: int, udp_port: int, method: int, value: int) -> None:
        self.control = RawRpcapClient(daemon_port)
        self.packets: list[CapturedPacket] = []
        self.error: Optional[str] = None
        self._expect(self.control.request(NULL_AUTH), 8)
        self._expect(self.control.request(rpcap_message(OPEN, b"lo")), OPEN)
        self._expect(
            self.control.request(rpcap_message(SETSAMPLING, struct.pack("!BxxxI", method, value))), 11
        )
        program = compile_filter(f"udp and dst port {udp_port}", DLT_EN10MB)
        reply = self.control.request(StartCaptureRequest(65535, 50, 0, 0, program).encode())
        payload = self._expect(reply, 4)
        _, data_port = struct.unpack_from("!iH", payload)
        self.data = socket.create_connection(("127.0.0.1", data_port), timeout=5)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @staticmethod
    def _expect(reply: tuple[int, int, bytes], request_type: int) -> bytes:
        mtype, _, payload = reply
        assert mtype == REPLY | request_type, f"reply {mtype} to request {request_type}: {payload!r}"
        return payload

    def _read(self) -> None:
        parser = PacketStreamParser()
        self.data.settimeout(None)
        while True:
            try:
                chunk = self.data.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            self.packets += parser.feed(chunk)
            if parser.error:
                self.error = parser.error
                return

    def marked(self, marker: str) -> list[CapturedPacket]:
        return [p for p in list(self.packets) if has_marker(p.data, marker)]

    def settle(self, quiet: float = 0.5, timeout: float = 20.0) -> None:
        """Wait until nothing more has arrived for C{quiet} seconds."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if len(self.packets) != seen:
                seen, since = len(self.packets), time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def stats(self) -> tuple[int, int, int, int]:
        """The stats reply: C{(ifrecv, ifdrop, krnldrop, svrcapt)}."""
        payload = self._expect(self.control.request(rpcap_message(STATS)), STATS)
        ifrecv, ifdrop, krnldrop, svrcapt = struct.unpack("!IIII", payload)
        return ifrecv, ifdrop, krnldrop, svrcapt

    def close(self) -> None:
        self.control.close()
        self.data.close()
        self._reader.join(5)


def warm_up_raw(capture: SampledCapture, traffic: Traffic, every: float, timeout: float = 10.0) -> None:
    """Send warm-up datagrams until one is forwarded: the daemon reads the capture from then on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        traffic.send("warmup")
        time.sleep(every)
        if capture.marked("warmup"):
            return
    raise AssertionError(f"capture never started ({capture.error})")


def send_burst(traffic: Traffic, count: int, rate: float, chunk: int = 1000) -> None:
    """
    C{count} datagrams marked C{burst-N}, paced at about C{rate} a second,
    C{chunk} at a time (no receiver reads them).
    """
    sender, target = traffic.sender, (traffic.host, traffic.port)
    started = time.monotonic()
    for i in range(count):
        sender.sendto(b"burst-%06d" % i, target)
        if i % chunk == chunk - 1:
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


class SamplingTestBase(TestCase):
    skip = e2e_skip_reason()

    def setUp(self) -> None:
        self.port = free_port()
        self.daemon = Daemon(
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--null-auth",
            "--buffer-size",
            BUFFER,
            wait_port=self.port,
        )
        self.addCleanup(self.daemon.stop)
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)
        # Nobody reads the test traffic: a full receive buffer must not make ICMP errors or block.
        self.traffic.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)


class SamplingAsTheProtocolSaysTests(SamplingTestBase):
    """A client that sends the value as RPCAP defines it (WinPcap's, libpcap 1.0's)."""

    def test_one_in_ten(self) -> None:
        """
        1 in 10 of 100,000 packets: 10 % +- 1 % delivered; the stats reply
        counts all of them received, none dropped (skipped is not lost), and
        the packets sent are those the client got.
        """
        capture = SampledCapture(self.port, self.traffic.port, 1, 10)
        self.addCleanup(capture.close)
        warm_up_raw(capture, self.traffic, every=0.01)
        send_burst(self.traffic, 100_000, rate=100_000)
        capture.settle()
        delivered = len(capture.marked("burst-"))
        ifrecv, ifdrop, krnldrop, svrcapt = capture.stats()
        self.assertIsNone(capture.error)
        self.assertEqual(krnldrop, 0, "the capture lost packets: the count below would not say much")
        self.assertTrue(9_000 <= delivered <= 11_000, f"{delivered} of 100,000 packets delivered")
        self.assertGreaterEqual(ifrecv, 100_000)
        self.assertEqual(svrcapt, len(capture.packets))
        # 1 in 10 exactly, counted from whatever phase the warm-up left.
        numbers = [int(p.data[-6:]) for p in capture.marked("burst-")]
        self.assertEqual({b - a for a, b in zip(numbers, numbers[1:])}, {10})

    def test_first_after_100_ms(self) -> None:
        """A packet every ms for 2 s, first-after-100ms: one packet per 100 ms window of traffic."""
        capture = SampledCapture(self.port, self.traffic.port, 2, 100)
        self.addCleanup(capture.close)
        warm_up_raw(capture, self.traffic, every=0.15)
        time.sleep(0.2)  # past the warm-up packet's window
        send_burst(self.traffic, 2000, rate=1000, chunk=2)
        capture.settle()
        stamps = [p.ts_sec * 1_000_000 + p.ts_usec for p in capture.marked("burst-")]
        gaps = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:])]  # from whole microseconds: exact
        self.assertTrue(18 <= len(stamps) <= 21, f"{len(stamps)} packets forwarded in 2 s: {gaps[:25]}")
        # Each forwarded packet is the first of its window: at least 100 ms after the last, and
        # the traffic's own gaps (a ms, more when the sender is descheduled) late at most.
        self.assertGreaterEqual(min(gaps), 0.100)
        self.assertLess(max(gaps), 0.150)
        _, _, krnldrop, svrcapt = capture.stats()
        self.assertEqual(krnldrop, 0)
        self.assertEqual(svrcapt, len(capture.packets))


class LibpcapClientSamplingTests(SamplingTestBase):
    """libpcap 1.10's client: C{pcap_setsampling} reaches the daemon with value 0 (see the module docstring)."""

    def test_value_lost_on_the_way(self) -> None:
        """
        libpcap's client asks 1 in 10: the request arrives as 1 in 0, every
        packet is forwarded, none is lost, and the daemon's log says why.
        """
        capture = PeerCapture(
            f"rpcap://127.0.0.1:{self.port}/lo",
            "--sampling",
            "1",
            "10",
            "--filter",
            f"udp and dst port {self.traffic.port}",
            "--max-seconds",
            "20",
            "--stats",
        )
        self.addCleanup(capture.kill)
        warm_up(capture, self.traffic)
        for i in range(1000):
            self.traffic.sender.sendto(b"burst-%06d" % i, (self.traffic.host, self.traffic.port))
        capture.wait_for(lambda lines: sum(b"burst-" in f for f in payloads(lines)) >= 1000)
        self.daemon.wait_for_log("sampling method 1 asked for with value 0")
        self.assertIn("every packet is forwarded", self.daemon.log())

    if sys.byteorder != "little":
        test_value_lost_on_the_way.skip = (  # type: ignore[attr-defined]
            "libpcap's client sends the sampling value intact on a big-endian machine"
        )
