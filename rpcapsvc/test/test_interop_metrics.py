"""
End-to-end, the metrics (docs/monitoring.md): C{twistd rpcapd --active
... --metrics} capturing marked loopback traffic into C{twistd rpcapcollect
--metrics}, both scraped over HTTP while the capture runs and after the
daemon has gone.  The counters are checked against what the collector's
files hold, and the expositions are checked with C{prometheus_client}'s
parsers (the text format and OpenMetrics) and with C{promtool check metrics}
where Prometheus is installed.

Everything stays on loopback.  Skips, saying why, where capture is not
permitted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from . import _peers
from ._e2e import Daemon, Traffic, free_port

SKIP = _peers.skip_reason_for_capture()
PROMTOOL = shutil.which("promtool")

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

#: Bytes of a captured loopback frame around a UDP payload (Ethernet, IPv4, UDP)...
FRAME_OVERHEAD = 14 + 20 + 8
#: ... and of the RPCAP packet message around a frame (header and rpcap_pkthdr).
MESSAGE_OVERHEAD = 8 + 20

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, accept: Optional[str] = None) -> tuple[str, str]:
    """GET http://127.0.0.1:PORT/metrics: the content type and the text."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def parse(text: str) -> Samples:
    """Every sample of a text-format exposition (C{_created} ones left out); fails on what does not parse."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class MetricsEndToEndTests(SynchronousTestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rpcap-metrics-e2e-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.traffic = Traffic()
        self.addCleanup(self.traffic.close)

    def start(self, *args: str, plugin: str) -> Daemon:
        daemon = Daemon(*args, plugin=plugin)
        self.addCleanup(daemon.stop)
        return daemon

    def start_pair(self) -> tuple[Daemon, int, Daemon, int]:
        """A collector and an active daemon, both with --metrics on loopback; once capturing."""
        collector_port, collector_metrics, daemon_metrics = free_port(), free_port(), free_port()
        collector = self.start(
            "--listen",
            f"tcp:{collector_port}:interface=127.0.0.1",
            "--directory",
            self.directory,
            "--interface",
            "lo",
            "--filter",
            f"udp dst port {self.traffic.port}",
            "--stats-interval",
            "1",
            "--metrics",
            f"tcp:{collector_metrics}:interface=127.0.0.1",
            plugin="rpcapcollect",
        )
        collector.wait_for_port(collector_metrics)
        daemon = self.start(
            "--active",
            f"127.0.0.1:{collector_port}",
            "--null-auth",
            "--interface",
            "lo",
            "--metrics",
            f"tcp:{daemon_metrics}:interface=127.0.0.1",
            plugin="rpcapd",
        )

        def capturing() -> bool:
            if not daemon.alive() or not collector.alive():
                raise AssertionError(f"exited early:\n{collector.log()}\n{daemon.log()}{daemon.stderr()}")
            return value(parse(scrape(collector_metrics)[1]), "rpcapcollect_daemons_capturing") == 1

        wait_until(capturing, 20, "the collector to capture from the daemon")
        return collector, collector_metrics, daemon, daemon_metrics

    def files(self) -> list[Path]:
        return sorted(Path(self.directory).glob("*.pcapng"))

    def marked_in_files(self, payloads: list[bytes]) -> int:
        """How many of C{payloads} (each distinct) the capture files hold, copies included."""
        data = b"".join(p.read_bytes() for p in self.files())
        return sum(data.count(payload) for payload in payloads)

    def test_counters_match_the_files(self) -> None:
        """
        While the capture runs, the daemon has forwarded every marked packet
        and counted their bytes; the collector has written them all, one
        series for the daemon's address and lo, lost none; the daemon's
        collector is connected.  Once the daemon is gone, the collector's
        totals stay.
        """
        collector, collector_metrics, daemon, daemon_metrics = self.start_pair()
        payloads = []
        for n in range(40):
            marker = f"metrics-e2e-{n}-"
            self.traffic.send(marker, 50 + 30 * n)
            payloads.append(marker.encode().ljust(50 + 30 * n, b"."))
            time.sleep(0.005)
        wait_until(lambda: self.marked_in_files(payloads) >= len(payloads), 15, "the packets in the files")

        # During the capture.
        daemon_type, daemon_text = scrape(daemon_metrics)
        collector_type, collector_text = scrape(collector_metrics)
        self.assertTrue(daemon_type.startswith("text/plain; version=0.0.4"), daemon_type)
        self.assertTrue(collector_type.startswith("text/plain; version=0.0.4"), collector_type)
        d, c = parse(daemon_text), parse(collector_text)
        written_in_files = self.marked_in_files(payloads)
        self.assertEqual(written_in_files, len(payloads))
        written = value(c, "rpcapcollect_packets_written_total", daemon="127.0.0.1", interface="lo")
        forwarded = value(d, "rpcapd_packets_forwarded_total")
        # The collector's filter is the traffic's port: the files hold only marked packets.
        self.assertEqual(written, written_in_files)
        self.assertGreaterEqual(forwarded, written)
        self.assertEqual(forwarded, len(payloads))
        self.assertEqual(
            value(d, "rpcapd_bytes_forwarded_total"),
            sum(MESSAGE_OVERHEAD + FRAME_OVERHEAD + len(p) for p in payloads),
        )
        self.assertEqual(value(c, "rpcapcollect_packets_lost_total", daemon="127.0.0.1", interface="lo"), 0)
        self.assertEqual(value(c, "rpcapcollect_daemons_connected"), 1)
        self.assertEqual(value(c, "rpcapcollect_files_written_total"), len(self.files()))
        self.assertEqual(value(d, "rpcapd_sessions", state="capturing"), 1)
        collector_label = re.search(r'rpcapd_collector_connected\{collector="([^"]+)"\} 1\.0', daemon_text)
        self.assertIsNotNone(collector_label, daemon_text)
        self.assertEqual(value(d, "rpcapd_auth_failures_total"), 0)
        self.assertEqual(value(d, "rpcapd_packets_dropped_total", where="send"), 0)
        for where in ("kernel", "interface"):
            self.assertGreaterEqual(value(d, "rpcapd_packets_dropped_total", where=where), 0)
        # No series names a client port.
        self.assertNotRegex(collector_text, r'daemon="[^"]*:\d+"')

        # OpenMetrics, as Prometheus asks for it first.
        om_type, om_text = scrape(daemon_metrics, OPENMETRICS)
        self.assertTrue(om_type.startswith("application/openmetrics-text"), om_type)
        self.assertIn("rpcapd_packets_forwarded", {f.name for f in openmetrics_families(om_text)})
        om_type, om_text = scrape(collector_metrics, OPENMETRICS)
        self.assertIn("rpcapcollect_packets_written", {f.name for f in openmetrics_families(om_text)})

        # The daemon goes: its session ends, the collector's totals stay.
        daemon.process.terminate()
        daemon.process.wait(15)
        wait_until(
            lambda: value(parse(scrape(collector_metrics)[1]), "rpcapcollect_daemons_connected") == 0,
            10,
            "the collector to see the daemon go",
        )
        after = parse(scrape(collector_metrics)[1])
        self.assertEqual(
            value(after, "rpcapcollect_packets_written_total", daemon="127.0.0.1", interface="lo"), written
        )
        self.assertEqual(value(after, "rpcapcollect_files_written_total"), len(self.files()))

    def test_promtool_accepts_the_expositions(self) -> None:
        """C{promtool check metrics} (Prometheus's own linter) finds nothing wrong with either."""
        assert PROMTOOL is not None
        _, collector_metrics, _, daemon_metrics = self.start_pair()
        self.traffic.send("promtool-", 100)
        for port in (daemon_metrics, collector_metrics):
            text = scrape(port)[1]
            checked = subprocess.run(
                [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
            )
            self.assertEqual(checked.returncode, 0, f"{checked.stdout}{checked.stderr}\n{text}")

    if PROMTOOL is None:
        test_promtool_accepts_the_expositions.skip = (  # type: ignore[attr-defined]
            "promtool is not installed: it comes only with Debian's prometheus package (a 96 MB "
            "server, left out of scripts/install-system-deps.sh); prometheus_client's parsers "
            "check the expositions instead"
        )
