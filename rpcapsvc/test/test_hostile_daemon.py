"""
The collector's data path against a hostile daemon.

Unit tests (no sockets) for each rule the data channel keeps: only the
daemon's address, then only its port, may feed a UDP capture; packet numbers
that jump cannot inflate the loss counters or make genuine packets be
dropped; impossible lengths are counted and skipped; a file holds only what
its header promises.  Then end to end: the scripted fake of
L{rpcapsvc.test._hostile_daemon} against C{rpcap-dump}, checking the exit
status, that no traceback is printed, the peak RSS, the time taken, and
that tshark reads a file holding only the genuine packets.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rpcapsvc.collector.client import DatagramPacketReceiver
from rpcapsvc.collector.files import CaptureFileWriter, UnsupportedLinkType, check_linktype
from rpcapsvc.protocol.datachannel import CapturedPacket, PacketSequence

from ._hostile_daemon import (
    BEHAVIOURS,
    FORGED,
    GENUINE,
    HostileDaemon,
    marked_frame,
    packet_message,
    run_measured,
    udpstr_datagrams,
)
from .test_interop_collector import _env, tshark_fields

DAEMON = "127.0.0.1"
DUMP = os.path.join(os.path.dirname(sys.executable), "rpcap-dump")


def genuine_messages(numbers: range) -> list[bytes]:
    return [packet_message(marked_frame(GENUINE, n), n) for n in numbers]


def markers(packets: list[CapturedPacket]) -> list[bytes]:
    return [p.data[-12:] for p in packets]


class UdpSourceTests(SynchronousTestCase):
    """Only the daemon writes into a UDP capture."""

    def setUp(self) -> None:
        self.delivered: list[CapturedPacket] = []
        self.receiver = DatagramPacketReceiver(self.delivered.extend, allowed_host=DAEMON)

    def send(self, datagram: bytes, host: str = DAEMON, port: int = 5000) -> None:
        self.receiver.datagramReceived(datagram, (host, port))

    def test_other_address_is_foreign(self) -> None:
        """Datagrams from another address are counted foreign, never delivered, before and after the daemon's."""
        forged = packet_message(marked_frame(FORGED, 1), 1)
        self.send(forged, host="127.0.0.2")
        for message in genuine_messages(range(1, 3)):
            self.send(message)
        self.send(forged, host="127.0.0.2", port=5000)
        self.assertEqual(markers(self.delivered), [b"GENUINE-0001", b"GENUINE-0002"])
        self.assertEqual((self.receiver.loss.foreign, self.receiver.loss.lost_packets), (2, 0))

    def test_first_clean_datagram_fixes_the_port(self) -> None:
        """After the daemon's first clean datagram, another port of its address is foreign too."""
        genuine = genuine_messages(range(1, 4))
        self.send(genuine[0], port=5000)
        self.send(packet_message(marked_frame(FORGED, 1), 2), port=5001)
        self.send(genuine[1], port=5000)
        self.send(genuine[2], port=5000)
        self.assertEqual(len(self.delivered), 3)
        self.assertEqual(self.receiver.daemon_port, 5000)
        self.assertEqual(self.receiver.loss.foreign, 1)

    def test_garbage_does_not_fix_the_port(self) -> None:
        """A malformed datagram from the daemon's address does not pick the port."""
        self.send(b"\x00\x07garbage", port=6000)
        self.assertIsNone(self.receiver.daemon_port)
        self.send(genuine_messages(range(1, 2))[0], port=5000)
        self.assertEqual(self.receiver.daemon_port, 5000)

    def test_out_of_step_datagram_does_not_fix_the_port(self) -> None:
        """
        A udpstr datagram far ahead of the stream (held: it may be forged)
        from another port of the daemon's address does not pick the port:
        the daemon's datagrams that follow are all delivered.
        """
        forged = udpstr_datagrams([marked_frame(FORGED, 1)], first_npkt=1, first_seqno=5000)
        genuine = udpstr_datagrams([marked_frame(GENUINE, n) for n in range(1, 4)])
        self.send(forged[0], port=6000)
        self.assertIsNone(self.receiver.daemon_port)
        for d in genuine:
            self.send(d, port=5000)
        self.assertEqual(self.receiver.daemon_port, 5000)
        self.assertEqual(markers(self.delivered), [b"GENUINE-0001", b"GENUINE-0002", b"GENUINE-0003"])
        self.assertEqual(self.receiver.loss.foreign, 0)

    def test_confirmed_hold_cancels_the_release(self) -> None:
        """
        Once a held datagram is confirmed the release is cancelled, so the
        next datagram held waits its whole hold time, not what was left.
        """
        clock = Clock()
        receiver = DatagramPacketReceiver(self.delivered.extend, allowed_host=DAEMON, clock=clock)
        datagrams = udpstr_datagrams([marked_frame(GENUINE, n) for n in range(1, 41)], mtu=400)
        for d in datagrams[:1] + datagrams[2:4]:  # one lost: the next is held, then confirmed
            receiver.datagramReceived(d, (DAEMON, 5000))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(receiver.hold_seconds * 0.8)
        receiver.datagramReceived(datagrams[5], (DAEMON, 5000))  # another loss: held
        before = len(self.delivered)
        clock.advance(receiver.hold_seconds * 0.5)
        self.assertEqual(len(self.delivered), before)  # still held
        clock.advance(receiver.hold_seconds * 0.5)
        self.assertGreater(len(self.delivered), before)

    def test_held_udpstr_datagram_is_released(self) -> None:
        """A udpstr datagram after a loss, with nothing after it, reaches the file within the hold time."""
        clock = Clock()
        receiver = DatagramPacketReceiver(self.delivered.extend, allowed_host=DAEMON, clock=clock)
        datagrams = udpstr_datagrams([marked_frame(GENUINE, n) for n in range(1, 21)], mtu=400)
        for d in datagrams[:1] + datagrams[2:3]:
            receiver.datagramReceived(d, (DAEMON, 5000))
        before = len(self.delivered)
        clock.advance(receiver.hold_seconds)
        self.assertGreater(len(self.delivered), before)
        self.assertEqual(clock.getDelayedCalls(), [])


class LossAccountingTests(SynchronousTestCase):
    """Loss counters that one forged number cannot fool."""

    def test_forged_number_far_ahead(self) -> None:
        """The issue's case: a number 2**31 ahead added ~2**31 to "lost in transit"; now one resync."""
        delivered: list[CapturedPacket] = []
        receiver = DatagramPacketReceiver(delivered.extend, allowed_host=DAEMON)
        messages = genuine_messages(range(1, 6))
        for m in messages[:3] + [packet_message(marked_frame(GENUINE, 99), 0x7FFFFFF0)] + messages[3:]:
            receiver.datagramReceived(m, (DAEMON, 5000))
        self.assertEqual((receiver.loss.lost_packets, receiver.loss.resyncs), (0, 1))
        self.assertEqual(len(delivered), 6)

    def test_window(self) -> None:
        """Gaps within the window are loss; beyond it, a resync; a late number is neither."""
        sequence = PacketSequence()
        for n in (1, 2, 1000, 999, 1001):
            sequence.see(n)
        self.assertEqual((sequence.lost, sequence.late, sequence.resyncs), (997, 1, 0))
        sequence.see(1001 + sequence.window + 5)
        self.assertEqual((sequence.lost, sequence.resyncs, sequence.expected), (997, 1, 1002))

    def test_forged_udpstr_datagram(self) -> None:
        """
        The issue's case: one forged udpstr datagram far ahead made the
        decoder drop 79 of the next 89 genuine packets, reporting 0 lost.
        Now every genuine packet is delivered and the forged one is not.
        """
        delivered: list[CapturedPacket] = []
        receiver = DatagramPacketReceiver(delivered.extend, allowed_host=DAEMON)
        genuine = udpstr_datagrams([marked_frame(GENUINE, n) for n in range(1, 91)], mtu=200)
        forged = udpstr_datagrams([marked_frame(FORGED, 1)], mtu=200, first_npkt=5000, first_seqno=90)
        for i, d in enumerate(genuine):
            receiver.datagramReceived(d, (DAEMON, 5000))
            if i == 10:
                receiver.datagramReceived(forged[0], (DAEMON, 5000))
        self.assertEqual(markers(delivered), [b"GENUINE-%04d" % n for n in range(1, 91)])
        self.assertEqual((receiver.loss.lost_packets, receiver.loss.lost_datagrams), (0, 0))


class FilePromiseTests(SynchronousTestCase):
    """What is written is what the file header promises."""

    def packet(self, size: int, length: int) -> CapturedPacket:
        return CapturedPacket(1, 0, size, length, 1, b"x" * size)

    def test_pcap_caplen_cut_to_snaplen(self) -> None:
        out = io.BytesIO()
        writer = CaptureFileWriter(out, "pcap")
        writer.add_interface("eth0", 1, 64)
        writer.write_packets(0, [self.packet(100, 100)])
        data = out.getvalue()
        self.assertEqual(len(data), 24 + 16 + 64)
        self.assertEqual(int.from_bytes(data[24 + 8 : 24 + 12], sys.byteorder), 64)  # incl_len
        self.assertEqual(int.from_bytes(data[24 + 12 : 24 + 16], sys.byteorder), 100)  # orig_len

    def test_pcapng_caplen_cut_to_interface_snaplen(self) -> None:
        out = io.BytesIO()
        writer = CaptureFileWriter(out, "pcapng")
        writer.add_interface("eth0", 1, 64)
        before = len(out.getvalue())
        writer.write_packets(0, [self.packet(100, 100)])
        self.assertEqual(len(out.getvalue()) - before, 32 + 64)

    def test_original_length_covers_what_is_written(self) -> None:
        out = io.BytesIO()
        writer = CaptureFileWriter(out, "pcap")
        writer.add_interface("eth0", 1, 262144)
        writer.write_packets(0, [self.packet(10, 0)])
        self.assertEqual(int.from_bytes(out.getvalue()[24 + 12 : 24 + 16], sys.byteorder), 10)

    def test_link_type_out_of_range_refused(self) -> None:
        """A negative or >16-bit link type is refused with a clear exception, for pcap as for pcapng."""
        for linktype in (-1, -(2**31), 0x10000):
            self.assertRaises(UnsupportedLinkType, check_linktype, linktype)
            for fmt in ("pcap", "pcapng"):
                out = io.BytesIO()
                e = self.assertRaises(
                    UnsupportedLinkType, CaptureFileWriter(out, fmt).add_interface, "x", linktype, 64
                )
                self.assertIn(str(linktype), str(e))
        check_linktype(0)
        check_linktype(0xFFFF)


# --- end to end -------------------------------------------------------------------------


def _skip_reason() -> str | None:
    if not shutil.which("tshark"):
        return "tshark is not installed"
    if not os.path.exists(DUMP):
        return f"{DUMP} is not installed"
    return None


MAX_RSS_KIB = 150_000
"""rpcap-dump runs in about 50 MB; a hostile daemon must not make it grow much past that."""


class HostileDaemonDumpTests(SynchronousTestCase):
    """rpcap-dump against the scripted fake, one behaviour per test."""

    skip = _skip_reason()

    def capture(self, behaviour: str, *options: str, fmt: str = "pcap", expect_status: int = 0) -> list[str]:
        """
        Capture from the fake for a second; the UDP payloads of the packets
        tshark reads in the file, after checking status, stderr, RSS and time.
        """
        daemon = HostileDaemon(behaviour)
        self.addCleanup(daemon.stop)
        directory = tempfile.mkdtemp(prefix="rpcap-hostile-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = self.path = os.path.join(directory, f"out.{fmt}")
        run = run_measured(
            [DUMP, "-q", "--duration", "1", "-w", path, *options, daemon.url + "eth0"], timeout=15, env=_env()
        )
        self.stderr = run.stderr
        self.assertFalse(run.killed, run.stderr)
        self.assertEqual(run.status, expect_status, run.stderr)
        self.assertNotIn("Traceback", run.stderr)
        self.assertNotIn("Unhandled", run.stderr)
        self.assertLess(run.max_rss_kib, MAX_RSS_KIB)
        self.assertLess(run.seconds, 8)
        return [bytes.fromhex(f[0]).decode() for f in tshark_fields(path, "udp.payload") if f[0]]

    def test_udp_injection_from_other_port_and_address(self) -> None:
        """Forged datagrams from another port of the daemon's address and from 127.0.0.2 never reach the file."""
        payloads = self.capture("udp-inject", "--udp")
        self.assertEqual(payloads, [f"GENUINE-{n:04d}" for n in range(1, 11)])
        self.assertIn("20 datagrams from another host or port dropped", self.stderr)

    def test_udp_injection_daemon_silent(self) -> None:
        self.assertEqual(self.capture("udp-inject-silent", "--udp"), [])
        self.assertIn("20 datagrams from another host or port dropped", self.stderr)

    def test_forged_packet_number(self) -> None:
        payloads = self.capture("forged-seqno", "--udp")
        self.assertEqual(
            [p for p in payloads if p != "GENUINE-0099"], [f"GENUINE-{n:04d}" for n in range(1, 11)]
        )
        self.assertIn("0 lost in transit", self.stderr)
        self.assertIn("1 packet-number resync", self.stderr)

    def test_forged_udpstr_datagram(self) -> None:
        payloads = self.capture("forged-udpstr", "--udp")
        self.assertEqual(payloads, [f"GENUINE-{n:04d}" for n in range(1, 91)])
        self.assertIn("0 lost in transit", self.stderr)

    def test_impossible_lengths_tcp(self) -> None:
        payloads = self.capture("bad-lengths", fmt="pcapng")
        self.assertEqual(payloads, [f"GENUINE-{n:04d}" for n in range(1, 7)])
        self.assertIn("5 malformed skipped", self.stderr)

    def test_impossible_lengths_udp(self) -> None:
        payloads = self.capture("bad-lengths", "--udp")
        self.assertEqual(payloads, [f"GENUINE-{n:04d}" for n in range(1, 7)])
        self.assertIn("5 malformed skipped", self.stderr)

    def test_snaplen_promised_is_kept(self) -> None:
        """
        -s 40 to a daemon that sends whole 54-byte frames anyway: the file
        says snaplen 40 and holds 40 bytes of each (tcpdump refused the
        file when records ran past the header's snaplen).
        """
        self.capture("genuine", "-s", "40")
        self.assertEqual(tshark_fields(self.path, "frame.cap_len", "frame.len"), [["40", "54"]] * 5)
        with open(self.path, "rb") as f:
            self.assertEqual(int.from_bytes(f.read(24)[16:20], sys.byteorder), 40)

    def test_wrong_message_on_tcp_data_channel(self) -> None:
        """A message of another type on the TCP data channel ends the capture with a reason and exit 3."""
        payloads = self.capture("wrong-data-message", expect_status=3)
        self.assertEqual(payloads, ["GENUINE-0001", "GENUINE-0002"])
        self.assertIn("unexpected message", self.stderr)

    def test_wrong_message_on_udp_data_channel(self) -> None:
        payloads = self.capture("wrong-data-message", "--udp")
        self.assertEqual(payloads, [f"GENUINE-{n:04d}" for n in range(1, 5)])
        self.assertIn("1 malformed skipped", self.stderr)


class PacketFloodTests(SynchronousTestCase):
    """A daemon that sends packets as fast as it can: the collector's memory stays bounded, it ends on time."""

    skip = _skip_reason()

    def setUp(self) -> None:
        # The flood runs in a network namespace of its own: on the machine's lo it would swamp
        # the other tests' captures of lo (trial -j runs them at the same time).
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise SkipTest("needs root and ip(8) for a network namespace of its own")
        self.namespace = f"rpcapflood{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.namespace], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", self.namespace], check=False)
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "lo", "up"], check=True)
        self.inside = ["ip", "netns", "exec", self.namespace]

    def flood(self, *options: str) -> str:
        daemon = HostileDaemon("packet-flood", timeout=6, prefix=self.inside)
        self.addCleanup(daemon.stop)
        directory = tempfile.mkdtemp(prefix="rpcap-flood-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "out.pcap")
        run = run_measured(
            [
                *self.inside,
                DUMP,
                "-q",
                "--duration",
                "1.5",
                "-s",
                "64",
                "-w",
                path,
                *options,
                daemon.url + "eth0",
            ],
            timeout=15,
            env=_env(),
        )
        self.assertFalse(run.killed, run.stderr)
        self.assertEqual(run.status, 0, run.stderr)
        self.assertNotIn("Traceback", run.stderr)
        self.assertLess(run.max_rss_kib, MAX_RSS_KIB)
        self.assertLess(run.seconds, 6)
        self.assertGreater(os.path.getsize(path), 1_000_000, "the flood never reached the file")
        return run.stderr

    def test_tcp(self) -> None:
        self.flood()

    def test_udp(self) -> None:
        """The kernel drops what the collector cannot read; nothing piles up in the collector."""
        self.flood("--udp")


class RegistryTests(SynchronousTestCase):
    def test_behaviours_registered(self) -> None:
        """Every behaviour the e2e tests use is in the registry others extend."""
        for name in (
            "genuine",
            "udp-inject",
            "udp-inject-silent",
            "forged-seqno",
            "forged-udpstr",
            "bad-lengths",
        ):
            self.assertIn(name, BEHAVIOURS)
