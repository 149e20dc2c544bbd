"""
The daemons' command lines as a user types them: ``twistd rpcapd`` and
``twistd rpcapcollect`` with mistakes in them, and the ``rpcapd`` front end.
Each mistake gets one line on standard error naming the problem, a non-zero
exit status, and no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from ._e2e import REPO_ROOT, Daemon, free_port

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run(*argv: str, timeout: float = 20.0) -> tuple[int, str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, timeout=timeout, text=True)
    return done.returncode, done.stdout, done.stderr


class TwistdCommandLineTests(TestCase):
    def assertOneLine(self, result: tuple[int, str, str], status: int, start: str) -> str:
        code, out, err = result
        self.assertEqual(code, status, (out, err))
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith(start), lines[0])
        self.assertNotIn("Traceback", out + err)
        return lines[0]

    def test_bad_listen(self) -> None:
        for plugin in ("rpcapd", "rpcapcollect"):
            for spec in ("tcp:notaport", "foo:bar", "127.0.0.1:99999", "2002x"):
                args = [*TWISTD, "-n", "--pidfile=", plugin, "--listen", spec]
                if plugin == "rpcapd":
                    args.append("--null-auth")
                line = self.assertOneLine(run(*args), 2, f"twistd {plugin}: --listen {spec!r}")
                self.assertIn("expected PORT, ADDRESS:PORT", line)

    def test_port_in_use(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for plugin, extra in (("rpcapd", ["--null-auth"]), ("rpcapcollect", [])):
            args = [*TWISTD, "-n", "--pidfile=", plugin, "--listen", f"127.0.0.1:{port}", *extra]
            line = self.assertOneLine(
                run(*args), 1, f"twistd {plugin}: cannot listen on 127.0.0.1 port {port}"
            )
            self.assertIn("choose another port with --listen", line)

    def test_no_auth_choice(self) -> None:
        self.assertOneLine(
            run(*TWISTD, "-n", "--pidfile=", "rpcapd", "--listen", str(free_port())),
            2,
            "twistd rpcapd: choose how clients log in",
        )

    def test_collector_filter_that_cannot_compile(self) -> None:
        """It would refuse every daemon, for ever: refused at start instead."""
        self.assertOneLine(
            run(*TWISTD, "-n", "--pidfile=", "rpcapcollect", "--listen", str(free_port()), "-f", "udp prt 1"),
            2,
            "twistd rpcapcollect: --filter 'udp prt 1'",
        )

    def test_settings_that_cannot_work_are_said_at_start(self) -> None:
        """A preselected interface that does not exist, and null auth open to the network: one warning each."""
        port = free_port()
        daemon = Daemon("--listen", str(port), "--null-auth", "--interface", "nosuch0")
        self.addCleanup(daemon.stop)
        daemon.wait_for_port(port)
        daemon.wait_for_log("--interface nosuch0: no such interface here")
        daemon.wait_for_log(f"Null auth on 0.0.0.0 port {port}, reachable from the network")

    def test_rpcapd_front_end(self) -> None:
        rpcapd = [sys.executable, "-c", "from rpcapsvc.rpcapd import main; main()"]
        self.assertOneLine(run(*rpcapd, "-q"), 2, "rpcapd: option -q not recognized")
        self.assertOneLine(run(*rpcapd, "-n", "-t", "10"), 2, "rpcapd: --udp-mtu")
        self.assertOneLine(run(*rpcapd, "-v"), 2, "rpcapd: -v (active only) needs a collector")
