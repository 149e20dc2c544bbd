"""
Active mode to a TLS collector: the daemon is the TLS client and verifies the
collector's certificate against the CA the operator names (libpcap's client
verifies nothing).  The collector here is C{rpcap-dump --active ssl:...}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from ._e2e import REPO_ROOT, Daemon, Traffic, e2e_skip_reason, free_port
from .test_interop_security import make_certificates

SKIP = e2e_skip_reason() or (
    None if shutil.which("openssl") and shutil.which("tshark") else "openssl and tshark are needed"
)


class ActiveTlsTests(SynchronousTestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rpcap-tls-active-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        ca, key, cert = make_certificates(self.dir)
        self.trust = os.path.join(self.dir, "trust")
        os.mkdir(self.trust)
        shutil.copy(ca, self.trust)
        self.key, self.cert = key, cert
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)

    def collector(self, port: int, out: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rpcapsvc.collector.dump",
                "--active",
                listen,
                "-w",
                out,
                "-c",
                "5",
                "-a",
                "duration:20",
                f"udp dst port {self.traffic.port}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        time.sleep(1.5)  # listening
        return proc

    def test_verified_collector_receives_the_capture(self) -> None:
        port = free_port()
        out = os.path.join(self.dir, "out.pcapng")
        collector = self.collector(port, out)
        daemon = Daemon(
            "--active", f"tls:127.0.0.1:{port}:trustRoots={self.trust}", "--interface", "lo", "--null-auth"
        )
        self.addCleanup(daemon.stop)
        daemon.wait_for_log("capture on lo started")
        time.sleep(0.5)
        for n in range(5):
            self.traffic.send(f"tls-active-{n}")
        _, err = collector.communicate(timeout=30)
        self.assertEqual(collector.returncode, 0, err)
        fields = subprocess.run(
            ["tshark", "-r", out, "-T", "fields", "-e", "udp.payload"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        self.assertEqual([bytes.fromhex(f).decode() for f in fields], [f"tls-active-{n}" for n in range(5)])

    def test_collector_with_an_unknown_certificate_is_refused(self) -> None:
        port = free_port()
        other = os.path.join(self.dir, "other")
        os.mkdir(other)
        make_certificates(other)  # a different CA: the collector's certificate does not chain to it
        trust_other = os.path.join(other, "trust")
        os.mkdir(trust_other)
        shutil.copy(os.path.join(other, "ca.pem"), trust_other)
        collector = self.collector(port, os.path.join(self.dir, "never.pcapng"))
        daemon = Daemon(
            "--active", f"tls:127.0.0.1:{port}:trustRoots={trust_other}", "--interface", "lo", "--null-auth"
        )
        self.addCleanup(daemon.stop)
        daemon.wait_for_log("certificate verify failed")
        self.assertNotIn("logged in: user=", daemon.log())
        self.assertNotIn("capture on lo", daemon.log())
        collector.kill()
        _, err = collector.communicate(timeout=10)
        self.assertNotIn("capturing on lo", err)
