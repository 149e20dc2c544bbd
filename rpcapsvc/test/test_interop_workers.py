"""
End-to-end: ``twistd -n rpcapd --capture-workers`` with libpcap's own client
capturing on loopback: the packets arrive byte for byte from a worker
process per capture, the stats count them, and no worker outlives its
capture (nor becomes a zombie), even one killed mid-capture.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time

import psutil
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._e2e import Daemon, PeerCapture, Traffic, e2e_skip_reason, free_port, packets, payloads, warm_up
from .test_interop_security import make_certificates

SKIP = e2e_skip_reason()
WORKER = "rpcapsvc.server.worker"


class CaptureWorkerTests(SynchronousTestCase):
    skip = SKIP
    url = "rpcap://127.0.0.1:{port}/lo"

    def listen(self) -> str:
        return f"tcp:{self.port}:interface=127.0.0.1"

    def setUp(self) -> None:
        self.port = free_port()
        self.daemon = Daemon(
            "--listen", self.listen(), "--null-auth", "--capture-workers", wait_port=self.port
        )
        self.addCleanup(self.daemon.stop)
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)

    def capture(self, traffic: Traffic, *options: str) -> PeerCapture:
        cap = PeerCapture(
            self.url.format(port=self.port), "--filter", f"udp dst port {traffic.port}", *options
        )
        self.addCleanup(cap.kill)
        return cap

    def workers(self) -> list[psutil.Process]:
        """The daemon's child processes (it starts none but its workers), zombies included."""
        children = psutil.Process(self.daemon.process.pid).children()
        for child in children:
            try:
                command = " ".join(child.cmdline())
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue  # a worker being reaped
            if command:  # empty while it exits
                self.assertIn(WORKER, command)
        return children

    def wait_no_workers(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([p.pid for p in self.workers()], [])

    def sent_exactly(self, cap: PeerCapture, traffic: Traffic, tag: str, count: int = 20) -> None:
        """Marked datagrams of growing sizes; each frame the client got carries one whole."""
        sent = [f"{tag}-{n}-".encode().ljust(n * 70, b"x") for n in range(1, count + 1)]
        for payload in sent:
            traffic.sender.sendto(payload, (traffic.host, traffic.port))
        cap.wait_for(lambda lines: any(f.endswith(sent[-1]) for f in payloads(lines)))
        frames = [f for f in payloads(cap.lines) if f"{tag}-".encode() in f]
        # Ethernet (14, zeros on lo) + IPv4 (20) + UDP (8), then the payload as sent.
        self.assertEqual([f[42:] for f in frames], sent)
        self.assertTrue(all(p["caplen"] == p["len"] for p in packets(cap.lines)))

    def test_tcp_capture_forwards_from_a_worker_byte_for_byte_and_the_worker_ends_with_it(self) -> None:
        cap = self.capture(self.traffic, "--max-seconds", "4", "--stats")
        warm_up(cap, self.traffic)
        [worker] = self.workers()
        self.sent_exactly(cap, self.traffic, "tcp")
        lines = cap.wait(30)
        [stats] = [line["stats"] for line in lines if "stats" in line]
        forwarded = len(packets(lines))
        self.assertGreaterEqual(stats["ps_recv"], forwarded)
        self.assertEqual((stats["ps_drop"], stats["ps_ifdrop"]), (0, 0))
        self.daemon.wait_for_log("capture on lo ended")
        self.assertIn(f"sent={forwarded}", self.daemon.log())  # the worker's count, reported to the daemon
        self.wait_no_workers()
        self.assertFalse(psutil.pid_exists(worker.pid))  # waited for: not even a zombie
        self.assertNotIn("ended on its own", self.daemon.log())

    def test_two_udp_clients_each_get_their_own_worker(self) -> None:
        second = Traffic()
        self.addCleanup(second.close)
        one = self.capture(self.traffic, "--udp", "--max-seconds", "6")
        two = self.capture(second, "--udp", "--max-seconds", "6")
        warm_up(one, self.traffic)
        warm_up(two, second)
        self.assertEqual(len({p.pid for p in self.workers()}), 2)
        self.sent_exactly(one, self.traffic, "one")
        self.sent_exactly(two, second, "two")
        self.assertFalse(any(b"one-" in f for f in payloads(two.lines)))
        one.wait(30)
        two.wait(30)
        self.wait_no_workers()

    def test_a_killed_worker_fails_its_capture_cleanly_and_the_daemon_goes_on(self) -> None:
        cap = self.capture(self.traffic, "--max-seconds", "8")
        warm_up(cap, self.traffic)
        [worker] = self.workers()
        os.kill(worker.pid, signal.SIGKILL)
        lines = cap.wait(30)
        [error] = [line["error"] for line in lines if "error" in line]
        # The READEX error goes on the control connection; libpcap's client
        # reports the data connection the daemon closed with it.
        self.assertIn("terminated the connection", error)
        self.daemon.wait_for_log("ended on its own (killed by SIGKILL)")
        log = self.daemon.log()
        self.assertIn(
            f"sent error 9: capture on lo ended: the capture worker (pid {worker.pid}) ended: killed by SIGKILL",
            log,
        )
        self.assertEqual(log.count("ended on its own"), 1)
        self.wait_no_workers()  # reaped: no zombie
        again = self.capture(self.traffic, "--max-seconds", "4")
        warm_up(again, self.traffic)
        self.sent_exactly(again, self.traffic, "again", count=5)

    def test_stopping_the_daemon_ends_its_workers(self) -> None:
        cap = self.capture(self.traffic, "--max-seconds", "8")
        warm_up(cap, self.traffic)
        [worker] = self.workers()
        self.daemon.process.terminate()
        self.daemon.process.wait(10)
        self.assertFalse(psutil.pid_exists(worker.pid))
        self.assertNotIn("ended on its own", self.daemon.log())  # closed in order, as the session closed


class TlsCaptureWorkerTests(CaptureWorkerTests):
    """
    rpcaps://: a TLS data channel cannot change process (its TLS session is
    the daemon's), so its worker relays the packets to the daemon, which
    encrypts and sends them.
    """

    skip = SKIP if SKIP else (None if shutil.which("openssl") else "the openssl command is not installed")
    url = "rpcaps://127.0.0.1:{port}/lo"

    def listen(self) -> str:
        certs = tempfile.mkdtemp(prefix="rpcapd-tls-")
        self.addCleanup(shutil.rmtree, certs, True)
        _, key, cert = make_certificates(certs)
        return f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"

    def test_two_udp_clients_each_get_their_own_worker(self) -> None:
        raise SkipTest("UDP data channels cannot be encrypted")
