"""
End to end: the real C{rpcap-dump} against the hostile fake daemon
(L{rpcapsvc.test._hostile_daemon}), each run a subprocess measured for its
exit status, peak RSS (the process's VmHWM) and wall time.  Whatever
the daemon does, rpcap-dump ends within its deadlines, with one line that
says why, no traceback, memory bounded and nothing from the daemon printed
raw; Ctrl-C and SIGTERM end it within a second with a complete file.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Optional

from twisted.trial.unittest import TestCase

from rpcapsvc.collector.dump import EXIT_OK, EXIT_PROTOCOL
from rpcapsvc.test._e2e import free_port
from rpcapsvc.test._hostile_daemon import HostileDaemon, Measured, run_measured, vm_hwm_kib
from rpcapsvc.test.test_interop_collector import Dump, _env, _wait_until, capinfos

DUMP = [sys.executable, "-m", "rpcapsvc.collector.dump"]

MAX_RSS_KIB = 150 * 1024
"""rpcap-dump's peak with the largest reply it takes (a 16 MiB interface list) is about 65 MiB."""


class HostileDumpTestsBase(TestCase):
    """Runs the fake and rpcap-dump; checks what every run must show."""

    def daemon(self, behaviour: str, active: Optional[str] = None) -> HostileDaemon:
        fake = HostileDaemon(behaviour, active=active, timeout=8)
        self.addCleanup(fake.stop)
        return fake

    def dump(self, *args: str, timeout: float = 15.0) -> Measured:
        return run_measured([*DUMP, *args], timeout=timeout, env=_env())

    def assertSane(self, run: Measured, status: int, seconds: float) -> str:
        """Exit C{status} within C{seconds}, memory bounded, no traceback, an escaped last line; standard error."""
        self.assertFalse(run.killed, f"rpcap-dump had to be killed:\n{run.stderr}")
        self.assertEqual(run.status, status, run.stderr)
        self.assertLess(run.seconds, seconds, run.stderr)
        self.assertLess(run.max_rss_kib, MAX_RSS_KIB, run.stderr)
        self.assertNotIn("Traceback", run.stderr)
        self.assertNotIn("Unhandled", run.stderr)
        self.assertNotIn("\x1b", run.stderr)
        lines = run.stderr.splitlines()
        if status != EXIT_OK:
            self.assertTrue(lines and lines[-1].startswith("rpcap-dump: "), run.stderr)
        return run.stderr

    def path(self, name: str) -> str:
        return os.path.join(self.mktemp() + "-" + name)


class PassiveDaemonTests(HostileDumpTestsBase):
    """rpcap-dump connects to the fake."""

    def test_unsolicited_error_flood(self) -> None:
        """1 MB error messages mid-capture: refused unread, the capture ends (exit 6), the file keeps what came."""
        fake = self.daemon("error-flood")
        path = self.path("flood.pcapng")
        run = self.dump("-w", path, "--timeout", "2", fake.url + "eth0")
        stderr = self.assertSane(run, EXIT_PROTOCOL, 5)
        self.assertIn("the daemon broke the protocol: it sent an oversized error message", stderr)
        self.assertEqual(capinfos(path)[0], "pcapng")

    def test_small_error_flood(self) -> None:
        """Small error messages, with line breaks, mid-capture: the first ends the capture (exit 5), escaped."""
        fake = self.daemon("small-error-flood")
        run = self.dump("-w", self.path("errors.pcapng"), "--timeout", "2", fake.url + "eth0")
        stderr = self.assertSane(run, 5, 5)
        self.assertIn("the daemon ended the capture: late\\nforged (error 9)", stderr)

    def test_silent_after_auth(self) -> None:
        """A daemon that answers the login and then nothing: -D gives up at --timeout, naming what did not come."""
        fake = self.daemon("silent-after-auth")
        run = self.dump("-D", "--timeout", "1", fake.url)
        stderr = self.assertSane(run, 1, 4)
        self.assertIn("did not answer the request for its interfaces within 1 s (--timeout", stderr)

    def test_reply_one_byte_short(self) -> None:
        """A 16 MiB list of interfaces held one byte short: -D gives up at --timeout, memory bounded."""
        fake = self.daemon("reply-one-byte-short")
        run = self.dump("-D", "--timeout", "2", fake.url)
        stderr = self.assertSane(run, 1, 6)
        self.assertIn("did not answer the request for its interfaces within 2 s", stderr)

    def test_oversized_reply(self) -> None:
        """A list of interfaces announced at 4 GB is refused at its header (exit 6)."""
        fake = self.daemon("oversized-reply")
        run = self.dump("-D", "--timeout", "2", fake.url)
        stderr = self.assertSane(run, EXIT_PROTOCOL, 4)
        self.assertIn("broke the protocol: it sent an oversized list of interfaces (4294967295 bytes", stderr)

    def test_escape_sequences_in_interface_names(self) -> None:
        """-D prints the daemon's names and descriptions as tcpdump would: no escape sequence, no forged line."""
        fake = self.daemon("escape-sequences")
        run = self.dump("-D", "--timeout", "2", fake.url)
        self.assertSane(run, EXIT_OK, 4)
        out = run.stdout.decode("ascii")  # printable ASCII only
        self.assertEqual(
            out.splitlines(),
            [
                "1.eth0\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07 (clears the screen\\r\\nforged line {x}) [Up]",
                "2.lo (\\x1b]8;;http://evil.example/\\x1b\\link\\x1b]8;;\\x1b\\ \\xc2\\x9b31m) [Up]",
            ],
        )

    def test_escape_sequences_in_errors(self) -> None:
        """The daemon's error text and its interface names, in the line that says why, are escaped."""
        fake = self.daemon("escape-sequences")
        run = self.dump("-w", self.path("x.pcapng"), "--timeout", "2", fake.url + "eth0")
        stderr = self.assertSane(run, 1, 4)
        self.assertEqual(len(stderr.splitlines()), 1, stderr)
        self.assertIn("no such device\\x1b[2J\\x1b]0;pwned\\x07\\nrpcap-dump: forged line (error 6)", stderr)

    def test_negative_link_type(self) -> None:
        """An open reply with link type -5 and -w x.pcap: a clear error, exit 6, no file of lies."""
        fake = self.daemon("negative-linktype")
        path = self.path("x.pcap")
        run = self.dump("-w", path, "--timeout", "2", fake.url + "eth0")
        stderr = self.assertSane(run, EXIT_PROTOCOL, 4)
        self.assertIn("broke the protocol: it opened the interface with link type -5", stderr)
        self.assertNotIn("packets captured", stderr)

    def test_never_opened_data_connection(self) -> None:
        """A daemon that names a data port nothing listens on: a clear error, exit 1."""
        fake = self.daemon("never-opens-data")
        run = self.dump("-w", self.path("x.pcapng"), "--timeout", "2", fake.url + "eth0")
        stderr = self.assertSane(run, 1, 5)
        self.assertIn("cannot make the data connection", stderr)


class ActiveDaemonTests(HostileDumpTestsBase):
    """The fake dials rpcap-dump --active."""

    def active_dump(self, behaviour: str, *args: str) -> Measured:
        port = free_port()
        result: list[Measured] = []
        import threading

        runner = threading.Thread(
            target=lambda: result.append(self.dump("--active", str(port), "--timeout", "2", *args)),
            daemon=True,
        )
        runner.start()
        self.daemon(behaviour, active=f"127.0.0.1:{port}")
        runner.join(20)
        self.assertTrue(result, "rpcap-dump never ended")
        return result[0]

    def test_huge_interface_name(self) -> None:
        """A daemon whose first interface has a 64 KB name: refused with a clear line (exit 6)."""
        run = self.active_dump("huge-interface-name", "-w", self.path("x.pcapng"), "-c", "2")
        stderr = self.assertSane(run, EXIT_PROTOCOL, 8)
        self.assertIn("its first interface has a name of 65535 bytes", stderr)
        self.assertLess(len(stderr), 2000)

    def test_never_opened_data_connection(self) -> None:
        """An active daemon that never opens the data connection: given up at --timeout, exit 1."""
        run = self.active_dump("never-opens-data", "-w", self.path("x.pcapng"), "eth0")
        stderr = self.assertSane(run, 1, 8)
        self.assertIn("did not open the data connection within 2 s", stderr)


class SignalTests(HostileDumpTestsBase):
    """Ctrl-C and SIGTERM with a daemon that never answers stats or endcap."""

    def interrupted(self, signum: int) -> tuple[int, float, int, str, str]:
        fake = self.daemon("never-answers-endcap")
        path = self.path("sig.pcapng")
        dump = Dump("-w", path, "--timeout", "10", fake.url + "eth0")
        self.addCleanup(dump.kill)
        dump.wait_for_stderr("capturing on eth0")
        # The three packets written, then the signal.
        time.sleep(0.5)
        sent = time.monotonic()
        dump.process.send_signal(signum)
        peak = 0
        while True:
            peak = max(peak, vm_hwm_kib(dump.process.pid))
            pid, status, usage = os.wait4(dump.process.pid, os.WNOHANG)
            if pid or time.monotonic() - sent > 5:
                break
            time.sleep(0.01)
        took = time.monotonic() - sent
        if not pid:
            dump.kill()
            self.fail(f"rpcap-dump still running 5 s after the signal:\n{dump.stderr()}")
        dump.process.returncode = os.waitstatus_to_exitcode(status)
        _wait_until(lambda: not dump._reader.is_alive(), 5)
        return dump.process.returncode, took, peak, dump.stderr(), path

    def check(self, signum: int, said: str) -> None:
        code, took, rss, stderr, path = self.interrupted(signum)
        self.assertEqual(code, EXIT_OK, stderr)
        self.assertLess(took, 1.0, stderr)
        self.assertLess(rss, MAX_RSS_KIB)
        self.assertNotIn("Traceback", stderr)
        self.assertTrue(stderr.endswith(f"rpcap-dump: {said}\n"), stderr)
        self.assertIn("3 packets captured", stderr)
        self.assertEqual(capinfos(path), ["pcapng", "ether", "3"])

    def test_sigint(self) -> None:
        self.check(signal.SIGINT, "interrupted by Ctrl-C (SIGINT)")

    def test_sigterm(self) -> None:
        self.check(signal.SIGTERM, "stopped by SIGTERM")
