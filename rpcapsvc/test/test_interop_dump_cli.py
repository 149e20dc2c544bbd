"""
End-to-end, C{rpcap-dump} run as a user runs it: the command in a
subprocess, against C{twistd -n rpcapd} on loopback (plain, TLS, with
passwords, in active mode), against a port that accepts and says nothing,
and against a port another program holds.  For each way a run can end,
its exit status and the line that says why, and never a traceback: the
output pipe closed under it (C{| head -c 100}), a TLS port given a plain
C{rpcap://}, a busy C{--active} port, Ctrl-C while a reply is awaited,
SIGTERM while waiting for a daemon and during an active capture, a silent
server's timeout, the daemon killed mid-capture, C{--active} with the
interface as its first word, C{-G} rotation, C{-a duration:N}, C{--version}.

The commands run in their own session (no terminal, so no password
prompt), with SIGINT at its default, as from a shell.  Tests that capture
skip, saying why, where capture is not permitted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc import __version__

from . import _peers
from ._e2e import REPO_ROOT, Daemon, Traffic, free_port
from .test_interop_collector import Dump, _wait_until

SKIP_CAPTURE = _peers.skip_reason_for_capture()
SKIP_TLS = SKIP_CAPTURE or (None if shutil.which("openssl") else "the openssl command is not installed")

#: What may never show on rpcap-dump's standard error.
NEVER = ("Traceback", "Unhandled", "Exception ignored", "ReactorNotRunning")


def _command() -> list[str]:
    """The installed C{rpcap-dump} script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("rpcap-dump")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "rpcapsvc.collector.dump"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RPCAP_PASSWORD", None)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class RpcapDump(Dump):
    """C{rpcap-dump ARGS} as installed, in its own session (no terminal), its standard error collected."""

    def __init__(
        self, *args: str, stdout: int = subprocess.DEVNULL, env: Optional[dict[str, str]] = None
    ) -> None:
        super().__init__(*args, stdout=stdout, command=_command(), env=env or _env(), new_session=True)

    def lines(self) -> list[str]:
        return self.stderr().splitlines()


class CliTestCase(SynchronousTestCase):
    def dump(
        self, *args: str, stdout: int = subprocess.DEVNULL, env: Optional[dict[str, str]] = None
    ) -> RpcapDump:
        d = RpcapDump(*args, stdout=stdout, env=env)
        self.addCleanup(d.kill)
        return d

    def run_dump(
        self, *args: str, timeout: float = 15.0, env: Optional[dict[str, str]] = None
    ) -> tuple[int, list[str]]:
        """Run rpcap-dump to its end: its exit status and its lines of standard error."""
        d = self.dump(*args, env=env)
        code = d.wait(timeout)
        self.assertClean(d)
        return code, d.lines()

    def assertClean(self, d: RpcapDump) -> None:
        for sign in NEVER:
            self.assertNotIn(sign, d.stderr(), d.stderr())

    def daemon(self, *args: str) -> tuple[Daemon, int]:
        """C{twistd -n rpcapd ARGS} listening on a free loopback port (plain TCP unless ARGS say otherwise)."""
        port = free_port()
        if not any(a == "--listen" for a in args):
            args = ("--listen", f"tcp:{port}:interface=127.0.0.1", *args)
        else:
            args = tuple(a.replace("PORT", str(port)) for a in args)
        daemon = Daemon(*args, wait_port=port)
        self.addCleanup(daemon.stop)
        return daemon, port

    def traffic(self) -> Traffic:
        traffic = Traffic()
        self.addCleanup(traffic.close)
        return traffic

    def directory(self) -> str:
        path = tempfile.mkdtemp(prefix="rpcap-dump-cli-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def silent_port(self) -> socket.socket:
        """A port that accepts connections (the kernel does) and never says a word."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        self.addCleanup(sock.close)
        return sock


def _stop(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _holds(path: str, marker: bytes, count: int) -> Callable[[], bool]:
    """Whether the file at C{path} holds C{marker} C{count} times yet (files are flushed as written)."""
    return lambda: Path(path).read_bytes().count(marker) >= count


def _read_packets(path: str) -> int:
    import pcapy

    reader = pcapy.open_offline(path)
    count = 0
    while reader.next()[0] is not None:
        count += 1
    return count


class NoDaemonTests(CliTestCase):
    """Runs that need no daemon: --version, refused and silent ports, a busy --active port."""

    def test_version(self) -> None:
        out = subprocess.run(
            [*_command(), "--version"], capture_output=True, text=True, timeout=30, env=_env()
        )
        self.assertEqual(
            (out.returncode, out.stdout, out.stderr), (0, f"rpcap-dump (rpcapsvc) {__version__}\n", "")
        )

    def test_connection_refused(self) -> None:
        port = free_port()
        code, lines = self.run_dump("-D", f"rpcap://127.0.0.1:{port}/")
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                f"rpcap-dump: cannot connect to 127.0.0.1:{port}: connection refused"
                " (is the daemon running and listening there?)"
            ],
        )

    def test_silent_server_times_out(self) -> None:
        """A port that accepts and says nothing: given up after --timeout, not waited on for ever."""
        port = self.silent_port().getsockname()[1]
        started = time.monotonic()
        code, lines = self.run_dump("--timeout", "1", "-D", f"rpcap://127.0.0.1:{port}/")
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                f"rpcap-dump: 127.0.0.1:{port} accepted the connection but did not answer the login within 1 s:"
                " is it an RPCAP daemon? (rpcaps:// if it listens with TLS; --timeout to wait longer)"
            ],
        )

    def test_ctrl_c_while_waiting_for_a_reply(self) -> None:
        listener = self.silent_port()
        port = listener.getsockname()[1]
        d = self.dump("-D", f"rpcap://127.0.0.1:{port}/")
        listener.settimeout(10)
        conn, _ = listener.accept()
        self.addCleanup(conn.close)
        conn.settimeout(10)
        login = b""
        while len(login) < 16:  # the whole login is out: rpcap-dump waits for its answer
            chunk = conn.recv(16 - len(login))
            self.assertTrue(chunk, "rpcap-dump hung up before logging in")
            login += chunk
        d.process.send_signal(signal.SIGINT)
        self.assertEqual(d.wait(), 130, d.stderr())
        self.assertClean(d)
        self.assertEqual(
            d.lines(),
            [
                "rpcap-dump: interrupted by Ctrl-C (SIGINT) while waiting for the daemon's answer to the login;"
                " nothing captured"
            ],
        )

    def test_busy_active_port(self) -> None:
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        code, lines = self.run_dump("--active", str(port), "-w", os.path.join(self.directory(), "x.pcapng"))
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                f"rpcap-dump: cannot listen on tcp:{port}: address already in use; another program has it"
                " (another rpcap-dump, rpcapcollect?): pick another port with --active"
            ],
        )

    def test_signals_while_waiting_for_a_daemon(self) -> None:
        """SIGTERM (or Ctrl-C) while --active waits: one line, 143 (or 130), and the port let go."""
        for sig, code, how in (
            (signal.SIGTERM, 143, "stopped by SIGTERM"),
            (signal.SIGINT, 130, "interrupted by Ctrl-C (SIGINT)"),
        ):
            port = free_port()
            d = self.dump("--active", f"tcp:{port}:interface=127.0.0.1")
            d.wait_for_stderr("waiting for a daemon")
            d.process.send_signal(sig)
            self.assertEqual(d.wait(), code, d.stderr())
            self.assertClean(d)
            self.assertEqual(
                d.lines(),
                [
                    f"rpcap-dump: waiting for a daemon on tcp:{port}:interface=127.0.0.1",
                    f"rpcap-dump: {how} while waiting for a daemon on tcp:{port}:interface=127.0.0.1; nothing captured",
                ],
            )


class DaemonTests(CliTestCase):
    """Against C{twistd rpcapd}."""

    skip = SKIP_CAPTURE

    def test_pipe_closed(self) -> None:
        """`rpcap-dump -w - ... | head -c 100`: the reader goes; rpcap-dump ends quietly, exit status 0."""
        _, port = self.daemon("--null-auth")
        traffic = self.traffic()
        d = self.dump(
            "-w", "-", f"rpcap://127.0.0.1:{port}/lo", f"udp dst port {traffic.port}", stdout=subprocess.PIPE
        )
        head = subprocess.Popen(["head", "-c", "100"], stdin=d.process.stdout, stdout=subprocess.DEVNULL)
        self.addCleanup(_stop, head)
        assert d.process.stdout is not None
        d.process.stdout.close()  # head holds the pipe now
        d.wait_for_stderr("capturing on lo")
        deadline = time.monotonic() + 15
        while d.process.poll() is None and time.monotonic() < deadline:
            traffic.send("to-a-closed-pipe", 200)
            time.sleep(0.02)
        self.assertEqual(d.wait(), 0, d.stderr())
        self.assertClean(d)
        lines = d.lines()
        self.assertEqual(lines[0], "rpcap-dump: capturing on lo (link type 1)")
        self.assertRegex(lines[-2], r"^rpcap-dump: \d+ packets captured, \d+ dropped by the daemon's kernel$")
        self.assertEqual(lines[-1], "rpcap-dump: the output was closed (the program reading it exited)")
        self.assertEqual(head.wait(5), 0)

    def test_daemon_killed_mid_capture(self) -> None:
        """The daemon dies (SIGKILL) mid-capture: exit status 4, the line says it vanished, the file is whole."""
        for options in ((), ("--udp",)):
            daemon, port = self.daemon("--null-auth")
            traffic = self.traffic()
            path = os.path.join(self.directory(), "killed.pcapng")
            d = self.dump(
                "-w", path, *options, f"rpcap://127.0.0.1:{port}/lo", f"udp dst port {traffic.port}"
            )
            d.wait_for_stderr("capturing on lo")
            for n in range(5):
                traffic.send(f"before-{n}")
            self.assertTrue(_wait_until(_holds(path, b"before-", 5), 10), options)
            daemon.process.kill()
            self.assertEqual(d.wait(), 4, (options, d.stderr()))
            self.assertClean(d)
            lines = d.lines()
            self.assertEqual(lines[0], "rpcap-dump: capturing on lo (link type 1)")
            self.assertRegex(lines[-2], r"^rpcap-dump: 5 packets captured, 0 dropped by the daemon's kernel")
            self.assertRegex(
                lines[-1], r"^rpcap-dump: the daemon vanished mid-capture: its connection (closed|was cut)"
            )
            self.assertEqual(_read_packets(path), 5)

    def test_duration(self) -> None:
        """-a duration:N stops after N seconds (what -G used to mean)."""
        _, port = self.daemon("--null-auth")
        path = os.path.join(self.directory(), "short.pcapng")
        started = time.monotonic()
        code, lines = self.run_dump(
            "-a", "duration:1.5", "-w", path, f"rpcap://127.0.0.1:{port}/lo", "udp port 9"
        )
        self.assertGreaterEqual(time.monotonic() - started, 1.5)
        self.assertEqual(code, 0, lines)
        self.assertEqual(lines[-1], "rpcap-dump: stopped after 1.5 s (-a duration:1.5)")
        self.assertEqual(_read_packets(path), 0)

    def test_rotation(self) -> None:
        """
        -G 1: a new file every second, named as dumpcap names them; with a
        %-pattern, strftime'd as tcpdump does; -G with -W 2 stops after two files.
        """
        _, port = self.daemon("--null-auth")
        traffic = self.traffic()
        directory = self.directory()
        url = f"rpcap://127.0.0.1:{port}/lo"
        expression = f"udp dst port {traffic.port}"

        def with_traffic(d: RpcapDump) -> None:
            d.wait_for_stderr("capturing on lo")
            deadline = time.monotonic() + 15
            n = 0
            while d.process.poll() is None and time.monotonic() < deadline:
                traffic.send(f"rotated-{n}")
                n += 1
                time.sleep(0.05)

        d = self.dump(
            "-G", "1", "-a", "duration:2.5", "-w", os.path.join(directory, "rot.pcapng"), url, expression
        )
        with_traffic(d)
        self.assertEqual(d.wait(), 0, d.stderr())
        self.assertClean(d)
        self.assertEqual(d.lines()[-1], "rpcap-dump: stopped after 2.5 s (-a duration:2.5)")
        names = sorted(os.listdir(directory))
        self.assertTrue(3 <= len(names) <= 4, names)
        for n, name in enumerate(names, 1):
            self.assertRegex(name, rf"^rot_{n:05d}_\d{{14}}\.pcapng$")
        captured = int(re.match(r"rpcap-dump: (\d+) packets captured", d.lines()[-2]).group(1))  # type: ignore[union-attr]
        self.assertEqual(sum(_read_packets(os.path.join(directory, name)) for name in names), captured)
        self.assertGreater(captured, 20)

        patterned = self.directory()
        d = self.dump("-G", "1", "-W", "2", "-w", os.path.join(patterned, "t-%H%M%S.pcap"), url, expression)
        with_traffic(d)
        self.assertEqual(d.wait(), 0, d.stderr())
        self.assertClean(d)
        self.assertEqual(d.lines()[-1], "rpcap-dump: stopped after 2 files (-W 2)")
        names = sorted(os.listdir(patterned))
        self.assertEqual(len(names), 2, names)
        for name in names:
            self.assertRegex(name, r"^t-\d{6}(_\d+)?\.pcap$")
            self.assertGreater(_read_packets(os.path.join(patterned, name)), 0)

    def test_mistakes_against_a_daemon(self) -> None:
        """A filter that does not compile (2), an interface the daemon lacks (1): one line each."""
        _, port = self.daemon("--null-auth")
        path = os.path.join(self.directory(), "x.pcapng")
        code, lines = self.run_dump("-w", path, f"rpcap://127.0.0.1:{port}/lo", "tcp port x")
        self.assertEqual(code, 2, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            r"^rpcap-dump: cannot compile filter 'tcp port x': .* \(man pcap-filter gives the syntax\)$",
        )
        code, lines = self.run_dump("-w", path, f"rpcap://127.0.0.1:{port}/nosuch0")
        self.assertEqual(code, 1, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            rf"^rpcap-dump: the daemon at 127\.0\.0\.1:{port} cannot open nosuch0: .*; its interfaces: .*\blo\b",
        )

    def test_passwords(self) -> None:
        """No password, a wrong one, none to be had: one line each, naming --auth and $RPCAP_PASSWORD."""
        _, port = self.daemon("--auth", "memory:alice:secret")
        url = f"rpcap://127.0.0.1:{port}/"
        code, lines = self.run_dump("-D", url)
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                f"rpcap-dump: the daemon at 127.0.0.1:{port} wants a password: Authentication failed: NULL"
                " authentication not permitted (error 18); log in with --auth USER (the password from"
                " --password-file, $RPCAP_PASSWORD or a prompt)"
            ],
        )
        code, lines = self.run_dump("--auth", "alice", "-D", url, env=_env(RPCAP_PASSWORD="wrong"))
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                f"rpcap-dump: the daemon at 127.0.0.1:{port} refused the login as alice: Authentication failed:"
                " authentication failed (error 18); check the user (--auth) and the password"
                " (--password-file or $RPCAP_PASSWORD)"
            ],
        )
        code, lines = self.run_dump("--auth", "alice", "-D", url)
        self.assertEqual(code, 2, lines)
        self.assertEqual(
            lines,
            [
                "rpcap-dump: no password for alice: give it with --password-file FILE or $RPCAP_PASSWORD"
                " (there is no terminal to ask on)"
            ],
        )
        code, lines = self.run_dump("--auth", "alice", "-D", url, env=_env(RPCAP_PASSWORD="secret"))
        self.assertEqual((code, lines), (0, []))


class TlsTests(CliTestCase):
    """A daemon that listens with TLS."""

    skip = SKIP_TLS

    def test_plain_url_to_a_tls_port(self) -> None:
        from .test_interop_security import make_certificates

        ca, key, cert = make_certificates(self.directory())
        _, port = self.daemon(
            "--listen", f"ssl:PORT:interface=127.0.0.1:privateKey={key}:certKey={cert}", "--null-auth"
        )
        code, lines = self.run_dump("-D", f"rpcap://127.0.0.1:{port}/")
        self.assertEqual(code, 1, lines)
        self.assertEqual(
            lines,
            [
                f"rpcap-dump: 127.0.0.1:{port} closed the connection without answering: if the daemon listens"
                f" with TLS, use rpcaps://127.0.0.1:{port}/"
            ],
        )
        code, lines = self.run_dump("-D", f"rpcaps://127.0.0.1:{port}/")
        self.assertEqual(code, 1, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            rf"^rpcap-dump: the certificate of the daemon at 127\.0\.0\.1:{port} is not trusted \(.*\):"
            r" give the CA that signed it with --ca PEM$",
        )
        code, lines = self.run_dump("--ca", ca, "-D", f"rpcaps://127.0.0.1:{port}/")
        self.assertEqual(code, 0, lines)


class ActiveTests(CliTestCase):
    """rpcap-dump --active, and C{twistd rpcapd --active} connecting to it."""

    skip = SKIP_CAPTURE

    def test_interface_as_first_word(self) -> None:
        """
        `rpcap-dump --active PORT -w x.pcapng lo udp dst port P`: lo is
        captured (not the daemon's first interface), and the rest is the filter.
        """
        port = free_port()
        traffic = self.traffic()
        path = os.path.join(self.directory(), "active.pcapng")
        d = self.dump(
            "--active",
            f"tcp:{port}:interface=127.0.0.1",
            "-c",
            "5",
            "-w",
            path,
            "lo",
            "udp",
            "dst",
            "port",
            str(traffic.port),
        )
        d.wait_for_stderr("waiting for a daemon")
        daemon = Daemon("--active", f"127.0.0.1:{port}", "--null-auth")
        self.addCleanup(daemon.stop)
        d.wait_for_stderr("capturing on lo")
        deadline = time.monotonic() + 15
        while d.process.poll() is None and time.monotonic() < deadline:
            traffic.send("active-positional")
            time.sleep(0.05)
        self.assertEqual(d.wait(), 0, d.stderr())
        self.assertClean(d)
        self.assertEqual(d.lines()[-1], "rpcap-dump: stopped after 5 packets (-c 5)")
        self.assertEqual(_read_packets(path), 5)
        self.assertEqual(Path(path).read_bytes().count(b"active-positional"), 5)

    def test_sigterm_during_an_active_capture(self) -> None:
        """SIGTERM once the daemon is in: the capture ends as asked (0), the file whole, no ReactorNotRunning."""
        port = free_port()
        path = os.path.join(self.directory(), "active.pcapng")
        d = self.dump("--active", f"tcp:{port}:interface=127.0.0.1", "-w", path, "lo", "udp port 9")
        d.wait_for_stderr("waiting for a daemon")
        daemon = Daemon("--active", f"127.0.0.1:{port}", "--null-auth")
        self.addCleanup(daemon.stop)
        d.wait_for_stderr("capturing on lo")
        d.process.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait(), 0, d.stderr())
        self.assertClean(d)
        self.assertEqual(d.lines()[-1], "rpcap-dump: stopped by SIGTERM")
        self.assertEqual(_read_packets(path), 0)
        # The daemon was let go, not told to close: it dials again.
        self.assertTrue(daemon.alive())
