"""
End-to-end: ``twistd -n rpcapd`` driven by libpcap 1.10.5's own remote-capture
client, the program Wireshark's captures go through.  Traffic stays on
loopback.  These tests skip, saying why, where the client is not built or
capture is not permitted.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time

import pcapy
import psutil
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._e2e import (
    Daemon,
    PeerCapture,
    Traffic,
    e2e_skip_reason,
    free_port,
    has_marker,
    packets,
    payloads,
    peer,
    udp_dst_port,
    warm_up,
)

SKIP = e2e_skip_reason()


class PassiveDaemonMixin:
    daemon: Daemon
    port: int

    def setUp(self) -> None:
        self.port = free_port()
        self.daemon = Daemon(
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--null-auth", wait_port=self.port
        )
        self.addCleanup(self.daemon.stop)  # type: ignore[attr-defined]
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)  # type: ignore[attr-defined]
        self.url = f"rpcap://127.0.0.1:{self.port}/"

    def capture(self, *options: str) -> PeerCapture:
        cap = PeerCapture(self.url + "lo", *options)
        self.addCleanup(cap.kill)  # type: ignore[attr-defined]
        return cap


class UdpGsoCaptureTests(PassiveDaemonMixin, SynchronousTestCase):
    """
    libpcap's client over a classic UDP data channel from a daemon that
    sends with UDP GSO (the default): a burst of equal-sized packets (one
    segmented send per run) arrives whole, in order, byte for byte.
    """

    skip = SKIP

    def test_a_burst_of_equal_packets_arrives_whole_and_in_order(self) -> None:
        cap = self.capture("--filter", f"udp dst port {self.traffic.port}", "--udp", "--max-seconds", "8")
        warm_up(cap, self.traffic)
        count = 300
        for n in range(count):
            self.traffic.send(f"gso-{n:04d}", size=400)
        cap.wait_for(lambda lines: any(has_marker(f, f"gso-{count - 1:04d}") for f in payloads(lines)))
        cap.kill()
        frames = [f for f in payloads(cap.lines) if b"gso-" in f]
        self.assertEqual(
            [f[f.index(b"gso-") : f.index(b"gso-") + 8] for f in frames],
            [f"gso-{n:04d}".encode() for n in range(count)],
        )
        self.assertEqual({len(f) for f in frames}, {14 + 20 + 8 + 400})
        self.assertNotIn("will not segment", self.daemon.log())
        self.assertIn("UDP GSO where the kernel has it", self.daemon.log())

    def test_over_ipv6_too(self) -> None:
        """The same burst with the client, the daemon and the data channel on ::1."""
        if "::1" not in {a.address for a in psutil.net_if_addrs()["lo"]}:
            raise SkipTest("lo has no ::1 here")
        self.daemon.stop()
        port = free_port()
        self.daemon = Daemon("--listen", f"tcp6:{port}:interface=\\:\\:1", "--null-auth")
        self.addCleanup(self.daemon.stop)
        self.daemon.wait_for_port(port, host="::1")
        traffic = Traffic(socket.AF_INET6)
        self.addCleanup(traffic.close)
        cap = PeerCapture(f"rpcap://[::1]:{port}/lo", "--filter", f"udp dst port {traffic.port}", "--udp",
                          "--max-seconds", "8")  # fmt: skip
        self.addCleanup(cap.kill)
        warm_up(cap, traffic)
        for n in range(200):
            traffic.send(f"gso6-{n:04d}", size=400)
        cap.wait_for(lambda lines: any(has_marker(f, "gso6-0199") for f in payloads(lines)))
        cap.kill()
        frames = [f for f in payloads(cap.lines) if b"gso6-" in f]
        self.assertEqual(len(frames), 200)
        self.assertEqual({len(f) for f in frames}, {14 + 40 + 8 + 400})
        self.assertIn("UDP data channel to [::1]", self.daemon.log())
        self.assertNotIn("will not segment", self.daemon.log())


class FindAllDevsTests(PassiveDaemonMixin, SynchronousTestCase):
    skip = e2e_skip_reason(need_capture=False)

    def test_lists_every_interface_with_addresses(self) -> None:
        [reply] = peer("findalldevs", self.url)
        names = [i["name"].rsplit("/", 1)[1] for i in reply["interfaces"]]
        self.assertEqual(sorted(names), sorted(pcapy.findalldevs()))
        lo = next(i for i in reply["interfaces"] if i["name"].endswith("/lo"))
        v4 = [a for a in lo["addresses"] if a["family"] == "ipv4"]
        self.assertIn({"family": "ipv4", "addr": "127.0.0.1", "netmask": "255.0.0.0", "broadaddr": None}, v4)
        if "::1" in {a.address for a in psutil.net_if_addrs()["lo"]}:
            self.assertIn("::1", [a["addr"] for a in lo["addresses"] if a["family"] == "ipv6"])
        self.assertEqual(lo["flags"] & 0x7, 0x7)  # loopback, up, running


class CaptureTests(PassiveDaemonMixin, SynchronousTestCase):
    skip = SKIP

    def _exact_match(self, *options: str) -> None:
        other = Traffic()
        self.addCleanup(other.close)
        cap = self.capture("--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "6", *options)
        warm_up(cap, self.traffic)
        for n in range(20):
            self.traffic.send(f"match-{n}")
            other.send(f"other-{n}")
        cap.wait_for(lambda lines: sum(has_marker(f, "match-19") for f in payloads(lines)) > 0)
        cap.kill()
        frames = payloads(cap.lines)
        self.assertEqual({udp_dst_port(f) for f in frames}, {self.traffic.port})
        got = [n for n in range(20) if any(has_marker(f, f"match-{n}") for f in frames)]
        self.assertEqual(got, list(range(20)))
        self.assertFalse(any(has_marker(f, "other-") for f in frames))

    def test_tcp_capture_with_filter_delivers_exactly_the_matches(self) -> None:
        self._exact_match()

    def test_udp_capture_with_filter_delivers_exactly_the_matches(self) -> None:
        self._exact_match("--udp")

    def test_capture_with_no_filter_at_all(self) -> None:
        # libpcap's client sends a short-length startcap when no filter is set.
        cap = self.capture("--max-seconds", "6")
        warm_up(cap, self.traffic)
        for n in range(10):
            self.traffic.send(f"nofilter-{n}")
        cap.wait_for(lambda lines: any(has_marker(f, "nofilter-9") for f in payloads(lines)))
        cap.kill()
        frames = payloads(cap.lines)
        for n in range(10):
            self.assertTrue(any(has_marker(f, f"nofilter-{n}") for f in frames), n)
        self.assertIn("capture on lo started", self.daemon.log())

    def test_updatefilter_switches_what_arrives(self) -> None:
        second = Traffic()
        self.addCleanup(second.close)
        cap = self.capture(
            "--filter",
            f"udp dst port {self.traffic.port}",
            "--update-filter-after",
            "1",
            f"udp dst port {second.port}",
            "--max-seconds",
            "8",
        )
        warm_up(cap, self.traffic)
        cap.wait_for(lambda lines: {"filter_updated": True} in lines)
        time.sleep(0.3)  # the client's updatefilter reaches the daemon
        for n in range(10):
            self.traffic.send(f"old-{n}")
            second.send(f"new-{n}")
        cap.wait_for(lambda lines: any(has_marker(f, "new-9") for f in payloads(lines)))
        cap.kill()
        index = cap.lines.index({"filter_updated": True})
        after = payloads(cap.lines[index:])
        for n in range(10):
            self.assertTrue(any(has_marker(f, f"new-{n}") for f in after), n)
        self.assertFalse(any(has_marker(f, "old-") for f in after))

    def test_snaplen_caps_caplen_and_keeps_the_length(self) -> None:
        cap = self.capture(
            "--filter", f"udp dst port {self.traffic.port}", "--snaplen", "64", "--max-seconds", "6"
        )
        warm_up(cap, self.traffic)
        self.traffic.send("big", size=1000)
        cap.wait_for(lambda lines: any(p["len"] == 14 + 20 + 8 + 1000 for p in packets(lines)))
        cap.kill()
        big = [p for p in packets(cap.lines) if p["len"] == 1042]
        self.assertEqual(big[0]["caplen"], 64)
        self.assertEqual(len(bytes.fromhex(big[0]["data"])), 64)
        self.assertTrue(all(p["caplen"] <= 64 for p in packets(cap.lines)))

    def test_stats_count_received_and_sent(self) -> None:
        cap = self.capture("--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "3", "--stats")
        warm_up(cap, self.traffic)
        for n in range(10):
            self.traffic.send(f"stat-{n}")
        lines = cap.wait(30)
        frames = payloads(lines)
        for n in range(10):
            self.assertTrue(any(has_marker(f, f"stat-{n}") for f in frames), n)
        [stats] = [line["stats"] for line in lines if "stats" in line]
        self.assertGreaterEqual(stats["ps_recv"], len(frames))
        self.assertEqual(stats["ps_drop"], 0)
        self.assertEqual(stats["ps_ifdrop"], 0)


class ConcurrencyTests(PassiveDaemonMixin, SynchronousTestCase):
    skip = SKIP

    def test_two_clients_capture_at_once(self) -> None:
        second = Traffic()
        self.addCleanup(second.close)
        one = self.capture("--filter", f"udp dst port {self.traffic.port}", "--max-seconds", "8")
        two = self.capture("--filter", f"udp dst port {second.port}", "--udp", "--max-seconds", "8")
        warm_up(one, self.traffic)
        warm_up(two, second)
        for n in range(10):
            self.traffic.send(f"one-{n}")
            second.send(f"two-{n}")
        one.wait_for(lambda lines: any(has_marker(f, "one-9") for f in payloads(lines)))
        two.wait_for(lambda lines: any(has_marker(f, "two-9") for f in payloads(lines)))
        self.assertFalse(any(has_marker(f, "two-") for f in payloads(one.lines)))
        self.assertFalse(any(has_marker(f, "one-") for f in payloads(two.lines)))

    def test_a_client_that_stops_reading_slows_no_other(self) -> None:
        stalled = self.capture(
            "--filter",
            f"udp dst port {self.traffic.port}",
            "--stop-reading-after",
            "1",
            "--max-seconds",
            "30",
        )
        warm_up(stalled, self.traffic)
        live_traffic = Traffic()
        self.addCleanup(live_traffic.close)
        live = self.capture("--filter", f"udp dst port {live_traffic.port}", "--max-seconds", "30")
        warm_up(live, live_traffic)
        daemon = psutil.Process(self.daemon.process.pid)
        rss_before = daemon.memory_info().rss
        # Flood big frames (80 MB in all) that only the stalled client's capture takes in.
        for n in range(10000):
            self.traffic.send(f"flood-{n}", size=8000)
            if n % 1000 == 0:
                live_traffic.send(f"live-{n // 1000}")
        for n in range(10, 20):
            live_traffic.send(f"live-{n}")
        live.wait_for(lambda lines: any(has_marker(f, "live-19") for f in payloads(lines)), timeout=15)
        frames = payloads(live.lines)
        for n in range(20):
            self.assertTrue(any(has_marker(f, f"live-{n}") for f in frames), n)
        self.assertTrue(self.daemon.alive())
        # Backpressure: the stalled capture's packets wait in the kernel ring, not in the daemon.
        self.assertLess(daemon.memory_info().rss - rss_before, 32 * 1024 * 1024)


class BadInputTests(PassiveDaemonMixin, SynchronousTestCase):
    """Hostile and broken clients get an error or a closed connection; others are still served."""

    skip = e2e_skip_reason(need_capture=False)

    def _exchange(self, data: bytes, read_for: float = 2.0) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(data)
            s.settimeout(read_for)
            out = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except socket.timeout:
                pass
            return out

    def _errors(self, reply: bytes) -> list[int]:
        codes = []
        while len(reply) >= 8:
            _, mtype, value, plen = struct.unpack_from("!BBHI", reply)
            if mtype == 1:
                codes.append(value)
            reply = reply[8 + plen :]
        return codes

    def _still_serving(self) -> None:
        [reply] = peer("findalldevs", self.url)
        self.assertIn("interfaces", reply)
        self.assertTrue(self.daemon.alive())

    NULL_AUTH = struct.pack("!BBHI", 0, 8, 0, 8) + bytes(8)

    def test_garbage(self) -> None:
        reply = self._exchange(b"\xff" * 4096)
        self.assertTrue(reply == b"" or self._errors(reply))
        self._still_serving()

    def test_truncated_message_then_hangup(self) -> None:
        self._exchange(self.NULL_AUTH + struct.pack("!BBHI", 0, 4, 0, 100) + b"\0" * 10, read_for=0.5)
        self._still_serving()

    def test_oversized_message_is_refused(self) -> None:
        reply = self._exchange(self.NULL_AUTH + struct.pack("!BBHI", 0, 3, 0, 0x7FFFFFFF))
        self.assertIn(16, self._errors(reply))
        self._still_serving()

    def test_unknown_type_and_wrong_version(self) -> None:
        reply = self._exchange(
            self.NULL_AUTH + struct.pack("!BBHI", 0, 99, 0, 0) + struct.pack("!BBHI", 1, 2, 0, 0)
        )
        self.assertEqual(self._errors(reply), [16, 17])
        self._still_serving()

    def test_requests_out_of_order(self) -> None:
        findalldevs = struct.pack("!BBHI", 0, 2, 0, 0)
        startcap = struct.pack("!BBHI", 0, 4, 0, 12) + struct.pack("!IIHH", 100, 100, 0, 0)
        reply = self._exchange(findalldevs + self.NULL_AUTH + startcap)
        self.assertEqual(self._errors(reply), [16, 12])
        self._still_serving()

    def test_open_of_a_url_or_a_file_is_refused(self) -> None:
        for name in (b"rpcap://127.0.0.1:2002/lo", b"/etc/passwd", b"../../tmp/x.pcap", b"nonexistent0"):
            reply = self._exchange(self.NULL_AUTH + struct.pack("!BBHI", 0, 3, 0, len(name)) + name)
            self.assertEqual(self._errors(reply), [6], name)
        self._still_serving()

    def test_bad_bpf_program_is_refused(self) -> None:
        name = b"lo"
        open_lo = struct.pack("!BBHI", 0, 3, 0, len(name)) + name
        # One instruction that jumps past the end of the program.
        prog = struct.pack("!HHI", 1, 0, 1) + struct.pack("!HBBi", 0x15, 5, 5, 0)
        startcap = struct.pack("!BBHI", 0, 4, 0, 12 + len(prog)) + struct.pack("!IIHH", 100, 100, 0, 0) + prog
        reply = self._exchange(self.NULL_AUTH + open_lo + startcap)
        self.assertEqual(self._errors(reply), [12])
        self._still_serving()


class DissectorTests(PassiveDaemonMixin, SynchronousTestCase):
    """Wireshark's own RPCAP dissector reads the daemon's side of a session as well-formed."""

    skip = SKIP or (
        None if shutil.which("tshark") and shutil.which("tcpdump") else "tshark and tcpdump are needed"
    )

    def test_tshark_decodes_every_message(self) -> None:
        pcap = os.path.join(self.daemon.workdir, "control.pcap")
        sniffer = subprocess.Popen(
            ["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-w", pcap, f"tcp port {self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: sniffer.poll() is None and sniffer.kill())
        time.sleep(1)  # tcpdump is listening
        peer("findalldevs", self.url)
        cap = self.capture("--filter", f"udp dst port {self.traffic.port}", "--stats", "--max-seconds", "2")
        warm_up(cap, self.traffic)
        lines = cap.wait(20)
        self.assertTrue(any("stats" in line for line in lines), lines[-3:])
        time.sleep(0.5)
        sniffer.terminate()
        sniffer.wait(10)

        def tshark(display_filter: str) -> list[str]:
            out = subprocess.run(
                [
                    "tshark",
                    "-r",
                    pcap,
                    "--enable-heuristic",
                    "rpcap_tcp",
                    "-Y",
                    display_filter,
                    "-T",
                    "fields",
                    "-e",
                    "rpcap.type",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return [line for line in out.stdout.splitlines() if line.strip()]

        types = {int(t, 0) for line in tshark("rpcap") for t in line.split(",")}
        # auth, findalldevs, open, startcap and stats requests and their replies, and close
        self.assertTrue({0x08, 0x88, 0x02, 0x82, 0x03, 0x83, 0x04, 0x84, 0x09, 0x89, 0x06} <= types, types)
        self.assertEqual(tshark("_ws.malformed || (rpcap && _ws.expert.severity >= warning)"), [])
