"""
End-to-end: 64 sessions start their captures at once, and end them at once,
while another capture runs with marked traffic flowing, against
``twistd -n rpcapd`` on loopback (real captures: root or CAP_NET_RAW).

Opening, filtering and closing captures run off the daemon's reactor
thread, so the daemon keeps answering: every startcap and endcap reply, and
a findalldevs of a session that connects as the storm begins, arrive within
a second; the capture already running loses nothing.  (Before, with libpcap
called in the reactor, the first startcap reply took 11 to 37 s, the daemon
answered nothing else meanwhile, and the running capture lost 97 % of its
packets.)  The longest findalldevs round trip of a session probing every
50 ms is recorded in the test log.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from . import _peers
from ._e2e import Daemon, free_port
from ._storm import storm

SESSIONS = 64
DEADLINE = 1.0


class CaptureStormTests(SynchronousTestCase):
    skip = _peers.skip_reason_for_capture()
    log = Logger()

    def test_sixty_four_captures_start_and_end_while_one_runs(self) -> None:
        port = free_port()
        daemon = Daemon(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--null-auth",
            "--max-sessions",
            str(SESSIONS + 8),
            wait_port=port,
        )
        self.addCleanup(daemon.stop)
        result = storm(port, SESSIONS, rate=1000, reply_deadline=3 * DEADLINE)
        summary = result.summary()
        self.log.info("Capture storm: {summary}", summary=json.dumps(summary))
        self.assertEqual(result.errors, [], summary)
        self.assertEqual(len(result.startcap_latencies), SESSIONS, summary)
        self.assertLess(max(result.startcap_latencies), DEADLINE, summary)
        self.assertEqual(len(result.endcap_latencies), SESSIONS, summary)
        self.assertLess(max(result.endcap_latencies), DEADLINE, summary)
        self.assertIsNotNone(result.fresh_findalldevs, summary)
        assert result.fresh_findalldevs is not None
        self.assertLess(result.fresh_findalldevs, DEADLINE, summary)
        self.assertLess(result.probe_max, DEADLINE, summary)
        # The capture that was running lost nothing, and the daemon saw no drop.
        self.assertGreater(result.marks_sent, 500, summary)
        self.assertEqual(result.marks_missing, 0, summary)
        assert result.running_stats is not None
        self.assertEqual(result.running_stats.dropped, 0, summary)
        self.assertTrue(daemon.alive(), daemon.log())
        self.assertNotIn("Traceback", daemon.log())
