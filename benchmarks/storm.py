"""
Capture-start storm: how long replies take, and how long the daemon's
reactor stalls, when many sessions start and end captures at once.

For each round a fresh ``twistd -n rpcapd`` (null auth, loopback) is started;
one capture is already running, fed with 1000 marked datagrams a second on
``lo``; then N sessions that have ``lo`` open send their startcap at once
(UDP data channels), and later their endcap at once.  Measured, from outside
the daemon (see ``rpcapsvc/test/_storm.py``):

- each startcap and endcap reply's time after the storm began (first, last);
- a session that connects as the storm begins: time to its findalldevs reply;
- a separate session timing a findalldevs round trip every 50 ms: the longest
  round trip during the storm (the reactor's longest stall), and before it;
- the running capture: marked datagrams missing, and the daemon's stats;
- the daemon's RSS after the round (all captures ended, sessions closed).

Run as root (capture), from the repository::

    python benchmarks/storm.py                     # rounds of 64 and 50 sessions
    python benchmarks/storm.py --sessions 64 --sessions 50 --repeat 3

Prints one JSON object per round.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rpcapsvc.test._e2e import Daemon, free_port  # noqa: E402
from rpcapsvc.test._storm import storm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, action="append", help="sessions per round (repeatable)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rate", type=int, default=1000, help="marked datagrams a second")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds to wait for the replies")
    args = parser.parse_args()
    for _ in range(args.repeat):
        for n in args.sessions or [64, 50]:
            port = free_port()
            daemon = Daemon(
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--null-auth",
                "--max-sessions",
                str(n + 8),
                wait_port=port,
            )
            try:
                result = storm(
                    port, n, rate=args.rate, reply_deadline=args.deadline, daemon_pid=daemon.process.pid
                )
                print(json.dumps(result.summary()), flush=True)
            finally:
                daemon.stop()


if __name__ == "__main__":
    main()
