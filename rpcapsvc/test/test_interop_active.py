"""
End-to-end, active mode: ``twistd -n rpcapd`` connects out to libpcap
1.10.5's own client waiting in C{pcap_remoteact_accept} (a collector), and
serves it.  Also preselected interfaces, the rpcapd.ini file and its reload
on SIGHUP.  Traffic stays on loopback.  These tests skip, saying why, where
the client is not built or capture is not permitted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import psutil
from twisted.trial.unittest import SynchronousTestCase

from ._e2e import (
    REPO_ROOT,
    ActivePeerCapture,
    Daemon,
    Traffic,
    active_peer,
    e2e_skip_reason,
    free_port,
    has_marker,
    payloads,
    peer,
    udp_dst_port,
    warm_up,
)

SKIP = e2e_skip_reason()

#: How long a collector may wait for the daemon to connect: it retries
#: within about a second (0.75 to 1.25 s after a session ends).
ACCEPT_WITHIN = 5


def _listening(daemon: Daemon) -> list[Any]:
    """The daemon's listening TCP sockets, as psutil reports them."""
    conns = psutil.Process(daemon.process.pid).net_connections(kind="inet")
    return [c for c in conns if c.status == psutil.CONN_LISTEN]


def _interface_names(reply: dict[str, Any]) -> list[str]:
    return [i["name"].rsplit("/", 1)[1] for i in reply["interfaces"]]


def _daemon_description(interface: dict[str, Any]) -> str:
    """
    The description the daemon sent: libpcap's client shows it as
    C{Network adapter 'DESCRIPTION' on remote node HOST}, and shows none
    when the daemon sent none.
    """
    shown = interface["description"]
    if shown is None:
        return ""
    prefix, sep, rest = shown.partition("'")
    description, sep2, _ = rest.rpartition("' on remote node ")
    assert prefix == "Network adapter " and sep and sep2, shown
    return description


class ActiveTestCase(SynchronousTestCase):
    """Starts daemons, config files and traffic that are cleaned up after the test."""

    def start_daemon(self, *args: str, wait_port: int | None = None) -> Daemon:
        daemon = Daemon(*args, wait_port=wait_port)
        self.addCleanup(shutil.rmtree, daemon.workdir, True)
        self.addCleanup(daemon.stop)
        return daemon

    def traffic(self) -> Traffic:
        traffic = Traffic()
        self.addCleanup(traffic.close)
        return traffic

    def capture(self, port: int, interface: str, *options: str, timeout_s: int = 10) -> ActivePeerCapture:
        cap = ActivePeerCapture(port, interface, *options, timeout_s=timeout_s)
        self.addCleanup(cap.kill)
        return cap

    def config_file(self, *lines: str) -> str:
        directory = tempfile.mkdtemp(prefix="rpcapd-ini-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "rpcapd.ini")
        self.write_config(path, *lines)
        return path

    def write_config(self, path: str, *lines: str) -> None:
        with open(path + ".new", "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(path + ".new", path)  # the daemon never reads half a file

    def assert_accepted(self, lines: Sequence[dict[str, Any]], started: float) -> None:
        """The client's first line says the daemon connected, in time."""
        self.assertTrue(lines, "the client printed nothing")
        self.assertEqual(lines[0], {"accepted": "127.0.0.1"}, lines[-3:])
        self.assertLess(time.monotonic() - started, ACCEPT_WITHIN + 3)

    def assert_delivers(self, cap: ActivePeerCapture, traffic: Traffic, tag: str, n: int = 10) -> None:
        """Marked datagrams sent now all reach the client."""
        for i in range(n):
            traffic.send(f"{tag}-{i}")
        last = f"{tag}-{n - 1}"
        cap.wait_for(lambda lines: any(has_marker(f, last) for f in payloads(lines)), timeout=10)
        frames = payloads(cap.lines)
        self.assertEqual(
            [i for i in range(n) if any(has_marker(f, f"{tag}-{i}") for f in frames)], list(range(n))
        )

    def findalldevs_actively(self, port: int, timeout_s: int = ACCEPT_WITHIN) -> dict[str, Any]:
        """One active findalldevs session; its interface list."""
        started = time.monotonic()
        lines = active_peer(port, "findalldevs", timeout_s=timeout_s)
        self.assert_accepted(lines, started)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("interfaces", lines[1])
        return lines[1]


class ActiveCaptureTests(ActiveTestCase):
    """The daemon finds a collector that starts after it, and captures for it."""

    skip = SKIP

    def setUp(self) -> None:
        self.port = free_port()
        self.daemon = self.start_daemon("--active", f"127.0.0.1:{self.port}", "--null-auth")
        # It has tried, and failed, to reach the collector before there was one.
        self.daemon.wait_for_log(f"Cannot connect to collector 127.0.0.1:{self.port}")

    def _exact_match(self, *options: str) -> None:
        traffic, other = self.traffic(), self.traffic()
        cap = self.capture(
            self.port, "lo", "--filter", f"udp dst port {traffic.port}", "--max-seconds", "8", *options
        )
        self.assertLess(cap.wait_accepted(ACCEPT_WITHIN), ACCEPT_WITHIN)
        self.assertEqual(cap.lines[0], {"accepted": "127.0.0.1"})
        warm_up(cap, traffic)
        for n in range(20):
            traffic.send(f"match-{n}")
            other.send(f"other-{n}")
        cap.wait_for(lambda lines: any(has_marker(f, "match-19") for f in payloads(lines)))
        cap.kill()
        frames = payloads(cap.lines)
        self.assertEqual({udp_dst_port(f) for f in frames}, {traffic.port})
        got = [n for n in range(20) if any(has_marker(f, f"match-{n}") for f in frames)]
        self.assertEqual(got, list(range(20)))
        self.assertFalse(any(has_marker(f, "other-") for f in frames))
        self.assertRegex(self.daemon.log(), r"session=\d+ peer=127\.0\.0\.1:\d+ capture on lo started")

    def test_tcp_capture_with_filter_delivers_exactly_the_matches(self) -> None:
        self._exact_match()

    def test_udp_capture_with_filter_delivers_exactly_the_matches(self) -> None:
        self._exact_match("--udp")


class ReconnectTests(ActiveTestCase):
    """After each session ends the daemon connects again, soon."""

    skip = SKIP

    def test_a_new_session_is_accepted_after_each_one_ends(self) -> None:
        port = free_port()
        daemon = self.start_daemon("--active", f"127.0.0.1:{port}", "--null-auth")
        traffic = self.traffic()
        # First session: a capture that ends by itself.
        cap = self.capture(port, "lo", "--filter", f"udp dst port {traffic.port}", "--max-seconds", "2")
        self.assertLess(cap.wait_accepted(ACCEPT_WITHIN), ACCEPT_WITHIN)
        warm_up(cap, traffic)
        lines = cap.wait(15)
        self.assertEqual(cap.process.returncode, 0, cap.stderr)
        self.assertEqual(lines[-1]["done"], True)
        # Then twice more: a new collector is served within a few seconds.
        for _ in range(2):
            reply = self.findalldevs_actively(port)
            self.assertIn("lo", _interface_names(reply))
        self.assertEqual(daemon.log().count(f"connected to collector 127.0.0.1:{port}"), 3)
        self.assertTrue(daemon.alive())


class NoListeningTests(ActiveTestCase):
    """In active mode only, the daemon opens no port to the network."""

    skip = SKIP

    def test_active_only_daemon_listens_on_no_port(self) -> None:
        port = free_port()
        daemon = self.start_daemon("--active", f"127.0.0.1:{port}", "--null-auth")
        daemon.wait_for_log(f"Connecting to collector 127.0.0.1:{port}")
        self.assertEqual(_listening(daemon), [])
        # Not while it serves a capture either: it connects the data channel too.
        traffic = self.traffic()
        cap = self.capture(port, "lo", "--filter", f"udp dst port {traffic.port}", "--max-seconds", "6")
        cap.wait_accepted(ACCEPT_WITHIN)
        warm_up(cap, traffic)
        self.assertEqual(_listening(daemon), [])
        established = [
            c
            for c in psutil.Process(daemon.process.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED
        ]
        # The control connection and the data connection, both to the collector.
        self.assertEqual(len(established), 2, established)
        self.assertEqual({c.raddr.ip for c in established}, {"127.0.0.1"})
        self.assertIn(port, {c.raddr.port for c in established})


class PreselectedInterfaceTests(ActiveTestCase):
    """A preselected interface is listed first, marked, and the only one that opens."""

    skip = SKIP

    def _check_preselected_active(self, port: int) -> None:
        reply = self.findalldevs_actively(port)
        self._check_listing(reply)
        other = next(name for name in _interface_names(reply) if name != "lo")
        # Another interface: refused, and the client says why.
        started = time.monotonic()
        lines = active_peer(port, "capture", other, "--max-seconds", "2", timeout_s=ACCEPT_WITHIN)
        self.assert_accepted(lines, started)
        self.assertNotIn("linktype", str(lines))
        [error] = [line["error"] for line in lines if "error" in line]
        self.assertIn("only the preselected interface lo may be opened", error)
        # The preselected one captures.
        traffic = self.traffic()
        cap = self.capture(port, "lo", "--filter", f"udp dst port {traffic.port}", "--max-seconds", "6")
        cap.wait_accepted(ACCEPT_WITHIN)
        warm_up(cap, traffic)
        self.assert_delivers(cap, traffic, "presel")

    def _check_listing(self, reply: dict[str, Any]) -> None:
        first = reply["interfaces"][0]
        self.assertTrue(first["name"].endswith("/lo"), first)
        self.assertTrue(_daemon_description(first).endswith(";preselected"), first)
        self.assertGreater(len(reply["interfaces"]), 1)
        for other in reply["interfaces"][1:]:
            self.assertNotIn("preselected", _daemon_description(other), other)

    def test_interface_option_in_active_mode(self) -> None:
        port = free_port()
        self.start_daemon("--active", f"127.0.0.1:{port}", "--null-auth", "--interface", "lo")
        self._check_preselected_active(port)

    def test_interface_option_in_passive_mode(self) -> None:
        port = free_port()
        self.start_daemon(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--null-auth", "--interface", "lo", wait_port=port
        )
        url = f"rpcap://127.0.0.1:{port}/"
        [reply] = peer("findalldevs", url)
        self._check_listing(reply)
        other = next(name for name in _interface_names(reply) if name != "lo")
        lines = peer("capture", url + other, "--max-seconds", "1")
        [error] = [line["error"] for line in lines if "error" in line]
        self.assertIn("only the preselected interface lo may be opened", error)
        lines = peer("capture", url + "lo", "--max-seconds", "0.5")
        self.assertEqual(lines[0], {"linktype": 1})
        self.assertEqual(lines[-1]["done"], True)

    def test_config_ifname(self) -> None:
        port = free_port()
        path = self.config_file(f"ActiveClient = 127.0.0.1,{port},ifname=lo", "NullAuthPermit = YES")
        self.start_daemon("--config", path)
        self._check_preselected_active(port)

    def test_config_ifaddr(self) -> None:
        port = free_port()
        path = self.config_file(f"ActiveClient = 127.0.0.1,{port},ifaddr=127.0.0.1", "NullAuthPermit = YES")
        self.start_daemon("--config", path)
        self._check_preselected_active(port)


class ConfigFileTests(ActiveTestCase):
    """ActiveClient, PassiveClient and NullAuthPermit from rpcapd.ini."""

    skip = e2e_skip_reason(need_capture=False)

    def test_active_and_passive_clients(self) -> None:
        active_port, passive_port = free_port(), free_port()
        path = self.config_file(
            "# a collector, and who may connect to us",
            f"ActiveClient = 127.0.0.1,{active_port}",
            "PassiveClient = 127.0.0.1",
            "NullAuthPermit = YES",
        )
        daemon = self.start_daemon(
            "--config", path, "--listen", f"tcp:{passive_port}:interface=127.0.0.1", wait_port=passive_port
        )
        [reply] = peer("findalldevs", f"rpcap://127.0.0.1:{passive_port}/")
        self.assertIn("lo", _interface_names(reply))
        self.assertIn("lo", _interface_names(self.findalldevs_actively(active_port)))
        # It listens where it was told, and nowhere else (not the default 2002).
        self.assertEqual(
            [(c.laddr.ip, c.laddr.port) for c in _listening(daemon)], [("127.0.0.1", passive_port)]
        )

    def test_passive_client_not_listed_is_refused(self) -> None:
        active_port, passive_port = free_port(), free_port()
        path = self.config_file(
            f"ActiveClient = 127.0.0.1,{active_port}", "PassiveClient = 10.9.9.9", "NullAuthPermit = YES"
        )
        daemon = self.start_daemon("--config", path, "--listen", f"tcp:{passive_port}:interface=127.0.0.1")
        # The collector is served: PassiveClient does not apply to it.
        self.assertIn("lo", _interface_names(self.findalldevs_actively(active_port)))
        # A passive client from 127.0.0.1 is turned away.
        [reply] = peer("findalldevs", f"rpcap://127.0.0.1:{passive_port}/")
        self.assertIn("error", reply)
        self.assertIn("not allowed", reply["error"])
        daemon.wait_for_log("control connection refused: not an allowed client")
        self.assertIn("peer=127.0.0.1:", daemon.log())
        # On the wire: RPCAP error 10, host not allowed, then the connection closes.
        with socket.create_connection(("127.0.0.1", passive_port), timeout=5) as s:
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        ver, mtype, value, plen = struct.unpack_from("!BBHI", data)
        self.assertEqual((ver, mtype, value), (0, 1, 10))
        self.assertEqual(len(data), 8 + plen)
        self.assertIn(b"127.0.0.1 is not allowed", data[8:])
        self.assertTrue(daemon.alive())

    def test_bad_line_stops_the_daemon_at_start(self) -> None:
        port = free_port()
        path = self.config_file("NullAuthPermit = YES", f"ActiveClient = 127.0.0.1,{port},ifaddr=eth0")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = os.path.join(os.path.dirname(path), "twistd.log")
        out = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
            + ["--logfile", log, "rpcapd", "--config", path],
            capture_output=True,
            text=True,
            timeout=15,
            env=env,
            cwd=os.path.dirname(path),
        )
        # A usage error: one line on stderr, exit status 2, no help screen.
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertEqual(
            out.stderr.splitlines(), [f"twistd rpcapd: {path}, line 2: ifaddr='eth0' is not an IP address"]
        )


class SighupTests(ActiveTestCase):
    """SIGHUP re-reads the file: collectors come and go, running captures stay."""

    skip = SKIP

    def test_reload_adds_and_removes_collectors(self) -> None:
        port_a, port_b = free_port(), free_port()
        line_a = f"ActiveClient = 127.0.0.1,{port_a}"
        line_b = f"ActiveClient = 127.0.0.1,{port_b}"
        path = self.config_file("NullAuthPermit = YES", line_a)
        daemon = self.start_daemon("--config", path)
        traffic_a, traffic_b = self.traffic(), self.traffic()
        filter_a, filter_b = f"udp dst port {traffic_a.port}", f"udp dst port {traffic_b.port}"

        cap_a = self.capture(port_a, "lo", "--filter", filter_a, "--max-seconds", "30")
        cap_a.wait_accepted(ACCEPT_WITHIN)
        warm_up(cap_a, traffic_a)
        # B waits; the daemon does not know it yet.
        cap_b = self.capture(port_b, "lo", "--filter", filter_b, "--max-seconds", "30", timeout_s=15)
        self.assert_delivers(cap_a, traffic_a, "before")
        self.assertEqual(cap_b.lines, [])

        # Add B.
        self.write_config(path, "NullAuthPermit = YES", line_a, line_b)
        os.kill(daemon.process.pid, signal.SIGHUP)
        daemon.wait_for_log(f"Reloaded {path}: collectors=2 ")
        cap_b.wait_accepted(ACCEPT_WITHIN)
        warm_up(cap_b, traffic_b)
        # A's capture was not disturbed: same session, still delivering.
        self.assert_delivers(cap_a, traffic_a, "after-add")
        self.assert_delivers(cap_b, traffic_b, "b")
        self.assertIsNone(cap_a.process.poll())
        self.assertEqual(sum("accepted" in line for line in cap_a.lines), 1)
        self.assertFalse(any(has_marker(f, "b-") for f in payloads(cap_a.lines)))

        # Remove A: its session ends, B's goes on.
        self.write_config(path, "NullAuthPermit = YES", line_b)
        os.kill(daemon.process.pid, signal.SIGHUP)
        daemon.wait_for_log(f"Collector 127.0.0.1:{port_a} removed")
        daemon.wait_for_log(f"Reloaded {path}: collectors=1 ")
        cap_a.wait(10)
        self.assertFalse(any("done" in line for line in cap_a.lines), cap_a.lines[-3:])
        self.assertIn("error", cap_a.lines[-1])
        self.assert_delivers(cap_b, traffic_b, "b-after-remove")
        self.assertIsNone(cap_b.process.poll())
        # And the daemon no longer connects to A.
        lines = active_peer(port_a, "findalldevs", timeout_s=2)
        self.assertEqual(lines, [{"error": "timed out (--timeout-s) in active mode"}])
        self.assertTrue(daemon.alive())

    def test_broken_file_keeps_the_previous_configuration(self) -> None:
        port_a, port_b = free_port(), free_port()
        line_a = f"ActiveClient = 127.0.0.1,{port_a}"
        path = self.config_file("NullAuthPermit = YES", line_a)
        daemon = self.start_daemon("--config", path)
        traffic = self.traffic()
        cap = self.capture(port_a, "lo", "--filter", f"udp dst port {traffic.port}", "--max-seconds", "30")
        cap.wait_accepted(ACCEPT_WITHIN)
        warm_up(cap, traffic)

        # A new collector and a line that cannot be used: nothing of it is applied.
        broken = {
            "ActiveClient = 127.0.0.1,no-such-service": "'no-such-service' is not a port number",
            f"ActiveClient = 127.0.0.1,{port_b},ifaddr=lo": "ifaddr='lo' is not an IP address",
        }
        for line, why in broken.items():
            self.write_config(
                path, "NullAuthPermit = YES", line_a, f"ActiveClient = 127.0.0.1,{port_b}", line
            )
            os.kill(daemon.process.pid, signal.SIGHUP)
            daemon.wait_for_log(f"Configuration not reloaded: {path}, line 4: {why}")
            self.assertTrue(daemon.alive())
        self.assert_delivers(cap, traffic, "after-bad-reload")
        self.assertNotIn("Reloaded", daemon.log())
        lines = active_peer(port_b, "findalldevs", timeout_s=2)
        self.assertEqual(lines, [{"error": "timed out (--timeout-s) in active mode"}])
        self.assertNotIn(f"collector 127.0.0.1:{port_b}", daemon.log())
        # The old configuration is still in force: A is served again after its session ends.
        cap.kill()
        self.assertIn("lo", _interface_names(self.findalldevs_actively(port_a)))
        self.assertTrue(daemon.alive())
