"""
End-to-end, C{rpcap-extcap} run as Wireshark runs it: the listing calls
(C{--extcap-interfaces}, C{--extcap-dlts}), the config call filled from a
real daemon's interfaces (and its reload), and captures into a fifo read as
dumpcap reads it, stopped with SIGTERM as Wireshark stops them, from:

  - our daemon (C{twistd rpcapd}), over TCP;
  - libpcap 1.10.5's rpcapd, over UDP;
  - ExtraHop's fork, whose TCP data channel carries udpstr by default;
  - our daemon in active mode (C{twistd rpcapd --active}) dialling the
    C{rpcap-active} interface, which hangs up without RPCAP CLOSE;

and the ways a capture ends or fails: Wireshark closing the fifo, closing
the control pipe of the interface toolbar, an unreachable daemon, a filter
that does not compile.  Then tshark itself: C{rpcap-extcap --install} makes
C{tshark -D} list C{rpcap}, and C{tshark -i rpcap} captures through it.

Every capture must hold every marked datagram sent (tshark reads the pcapng
back).  Traffic stays on loopback.  tshark's extcap folder is a temporary
one, bound over the real one in a private mount namespace (Wireshark 4.0
has only the system's folder and ignores C{WIRESHARK_EXTCAP_DIR} for root),
so nothing is installed on the system.  The tests skip, saying why, where
capture is not permitted or a peer or tool is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import psutil
from twisted.trial.unittest import SynchronousTestCase

from ..collector.extcap import (
    COMMAND_ADD,
    COMMAND_INITIALIZED,
    choose_extcap_folder,
    control_frame,
    parse_control,
    parse_folders,
)
from ..protocol.wire import MessageType
from . import _peers
from ._e2e import Daemon, Sniffer, Traffic, free_port, transport_fields
from .test_interop_collector import ReferenceRpcapd, _env, _wait_until, tshark_fields
from .test_interop_extrahop import ExtraHopRpcapd
from .test_interop_security import make_certificates

EXTCAP_SCRIPT = Path(sys.executable).with_name("rpcap-extcap")


def extcap_command() -> list[str]:
    """The console script, as Wireshark finds it in its extcap folder."""
    if os.access(EXTCAP_SCRIPT, os.X_OK):
        return [str(EXTCAP_SCRIPT)]
    return [sys.executable, "-m", "rpcapsvc.collector.extcap"]


def _skip_reason() -> Optional[str]:
    ok, why = _peers.can_capture()
    if not ok:
        return why
    if shutil.which("tshark") is None:
        return "tshark is not installed (scripts/install-system-deps.sh)"
    return None


def _namespace_skip_reason() -> Optional[str]:
    reason = _skip_reason()
    if reason is not None:
        return reason
    if not os.access(EXTCAP_SCRIPT, os.X_OK):
        return f"the rpcap-extcap console script is not installed beside {sys.executable} (pip install -e .)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        return "cannot make a private mount namespace here (unshare --mount), so tshark's extcap folder cannot be swapped"
    return None


SKIP = _skip_reason()
SKIP_REFERENCE = SKIP or _peers.skip_reason_for_rpcapd()
SKIP_FORK = SKIP or _peers.skip_reason_for_extrahop()
SKIP_NAMESPACE = _namespace_skip_reason()


def run_extcap(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*extcap_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def message_types(stream: bytes) -> list[int]:
    """The types of the RPCAP messages of a control stream, in order."""
    types = []
    offset = 0
    while offset + 8 <= len(stream):
        _, kind, _, length = struct.unpack_from("!BBHI", stream, offset)
        types.append(kind)
        offset += 8 + length
    return types


def payloads_in(path: str) -> list[bytes]:
    """The UDP payloads of a capture file, as tshark reads them (it must read the whole file)."""
    return [bytes.fromhex(row[0]) for row in tshark_fields(path, "udp.payload") if row and row[0]]


def sent_and_held(capture: FifoCapture, traffic: Traffic, marker: str) -> bool:
    """Send C{marker} and see whether the capture holds it (a marker sent before, at least)."""
    traffic.send(marker)
    time.sleep(0.05)
    return capture.holds(marker.encode())


class FifoCapture:
    """
    C{rpcap-extcap --capture --fifo FIFO ...} as Wireshark starts it, the
    fifo read by a thread as dumpcap reads it.
    """

    def __init__(self, directory: str, interface: str, *args: str, read: bool = True) -> None:
        self.fifo = os.path.join(directory, f"wireshark_extcap_{interface}")
        os.mkfifo(self.fifo, 0o600)
        self.data = bytearray()
        self.reader_closed = False
        self.process = subprocess.Popen(
            [*extcap_command(), "--capture", "--extcap-interface", interface, "--fifo", self.fifo, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        if read:
            self._reader.start()

    def _read(self) -> None:
        fd = os.open(self.fifo, os.O_RDONLY)  # as dumpcap: blocks until rpcap-extcap opens its end
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.data += chunk
        finally:
            os.close(fd)
            self.reader_closed = True

    def holds(self, marker: bytes) -> bool:
        return marker in self.data

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        if (
            not _wait_until(lambda: predicate() or self.process.poll() is not None, timeout)
            or not predicate()
        ):
            raise AssertionError(f"{what} never happened; rpcap-extcap: {self.finish(kill=True)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, str]:
        """Stop it as Wireshark does (SIGTERM); its exit status and standard error."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.finish(timeout=timeout)

    def finish(self, timeout: float = 15.0, kill: bool = False) -> tuple[int, str]:
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"rpcap-extcap did not end within {timeout} s") from None
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        self.process.stderr.close()
        self._release_reader()
        return code, stderr

    def _release_reader(self) -> None:
        """A reader still blocked opening the fifo (rpcap-extcap never opened it) is let go."""
        if self._reader.is_alive():
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            self._reader.join(5)

    def save(self, path: str) -> str:
        self._reader.join(10)
        Path(path).write_bytes(bytes(self.data))
        return path

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.process.stderr.close()
        self._release_reader()


class ExtcapTestCase(SynchronousTestCase):
    def make_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="rpcap-extcap-e2e-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def traffic(self) -> Traffic:
        traffic = Traffic()
        self.addCleanup(traffic.close)
        return traffic

    def own_daemon(self, *args: str) -> int:
        """C{twistd rpcapd} on loopback, null auth; its port."""
        port = free_port()
        daemon = Daemon("--listen", f"tcp:{port}:interface=127.0.0.1", "--null-auth", *args, wait_port=port)
        self.addCleanup(daemon.stop)
        self.addCleanup(self.show, "twistd rpcapd", daemon.log)
        return port

    def show(self, name: str, output: Callable[[], str]) -> None:
        """With C{RPCAPSVC_TEST_SHOW_OUTPUT} set, what a program said (its log)."""
        if os.environ.get("RPCAPSVC_TEST_SHOW_OUTPUT"):
            sys.stderr.write(f"\n--- {name}:\n{output()}")

    def fifo_capture(self, interface: str, *args: str, read: bool = True) -> FifoCapture:
        capture = FifoCapture(self.make_dir(), interface, *args, read=read)
        self.addCleanup(capture.cleanup)
        return capture

    def passive(self, port: int, traffic: Traffic, *args: str, read: bool = True) -> FifoCapture:
        """The C{rpcap} interface capturing lo of the daemon on loopback C{port}, C{traffic}'s datagrams only."""
        return self.fifo_capture(
            "rpcap",
            "--remote-host",
            "127.0.0.1",
            "--remote-port",
            str(port),
            "--remote-interface",
            "lo",
            "--extcap-capture-filter",
            f"udp dst port {traffic.port}",
            *args,
            read=read,
        )

    def capture_marked(
        self, capture: FifoCapture, traffic: Traffic, prefix: str, count: int = 8, interface: str = "lo"
    ) -> str:
        """
        Warm the capture up, send C{count} marked datagrams, stop it with
        SIGTERM as Wireshark does; every marked one must be in the pcapng,
        which names the remote interface.  The path of the pcapng.
        """
        warm = [0]

        def warmed() -> bool:
            traffic.send(f"{prefix}-warmup-{warm[0]}")
            warm[0] += 1
            time.sleep(0.05)
            return capture.holds(f"{prefix}-warmup-".encode())

        capture.wait_for(warmed, "the first packet")
        sent = []
        for n in range(count):
            marker = f"{prefix}-{n}-"
            traffic.send(marker, 40 + 150 * n)
            sent.append(marker.encode().ljust(40 + 150 * n, b"."))
        capture.wait_for(lambda: all(capture.holds(p) for p in sent), "every marked packet")
        code, stderr = capture.stop()
        self.assertEqual((code, stderr), (0, ""))
        path = capture.save(os.path.join(self.make_dir(), f"{prefix}.pcapng"))
        got = [p for p in payloads_in(path) if p.startswith(f"{prefix}-".encode()) and b"warmup" not in p]
        self.assertEqual(got, sent)
        [names] = {
            tuple(row) for row in tshark_fields(path, "frame.interface_name", "frame.interface_description")
        }
        self.assertEqual(names[0], interface)
        self.assertTrue(names[1].startswith(("rpcap://127.0.0.1", "rpcaps://127.0.0.1")), names)
        return path


class DiscoveryAndConfigTests(ExtcapTestCase):
    skip = SKIP

    def test_listing_calls(self) -> None:
        """What Wireshark runs at start: the interfaces and, for each, its link types."""
        listing = run_extcap("--extcap-interfaces", "--extcap-version=4.0")
        self.assertEqual((listing.returncode, listing.stderr), (0, ""))
        lines = listing.stdout.splitlines()
        self.assertTrue(lines[0].startswith("extcap {version="), lines)
        self.assertIn("interface {value=rpcap}{display=Remote capture (RPCAP) from a daemon}", lines)
        self.assertIn(
            "interface {value=rpcap-active}{display=Remote capture (RPCAP), waiting for an active daemon}",
            lines,
        )
        for interface in ("rpcap", "rpcap-active"):
            dlts = run_extcap("--extcap-dlts", "--extcap-interface", interface)
            self.assertEqual(
                (dlts.returncode, dlts.stdout), (0, "dlt {number=1}{name=EN10MB}{display=Ethernet}\n")
            )

    def test_config_lists_the_daemons_interfaces(self) -> None:
        port = self.own_daemon()
        where = ["--remote-host", "127.0.0.1", "--remote-port", str(port)]
        config = run_extcap("--extcap-config", "--extcap-interface", "rpcap", *where)
        self.assertEqual((config.returncode, config.stderr), (0, ""))
        lines = config.stdout.splitlines()
        [interface] = [line for line in lines if "{call=--remote-interface}" in line]
        self.assertIn("{type=selector}", interface)
        self.assertIn("{reload=true}", interface)
        values = [line for line in lines if line.startswith("value {arg=6}")]
        self.assertIn(
            "value {arg=6}{value=lo}{display=lo [Up] 127.0.0.1 ::1}",
            [v.replace("{default=true}", "") for v in values],
        )
        reload = run_extcap(
            "--extcap-config",
            "--extcap-interface",
            "rpcap",
            "--extcap-reload-option",
            "remote-interface",
            *where,
        )
        self.assertEqual((reload.returncode, reload.stdout.splitlines()), (0, values))

    def test_config_of_a_daemon_not_there(self) -> None:
        """Still the dialog, with the interface typed in: Wireshark reads nothing after a failure."""
        config = run_extcap(
            "--extcap-config",
            "--extcap-interface",
            "rpcap",
            "--remote-host",
            "127.0.0.1",
            "--remote-port",
            str(free_port()),
        )
        self.assertEqual(config.returncode, 0)
        self.assertIn("{call=--remote-interface}{display=Remote interface}{type=string}", config.stdout)


class CaptureTests(ExtcapTestCase):
    skip = SKIP

    def test_from_our_daemon(self) -> None:
        traffic = self.traffic()
        capture = self.passive(self.own_daemon(), traffic, "--snaplen", "0")
        path = self.capture_marked(capture, traffic, "own")
        # The daemon's last counters, as dumpcap writes them (an Interface Statistics Block).
        out = subprocess.run(["capinfos", path], capture_output=True, text=True, timeout=30)
        self.assertIn("Number of stat entries = 1", out.stdout)

    def test_over_tls(self) -> None:
        """C{--tls --ca}: the daemon's certificate checked, the data connection under TLS too."""
        ca, key, cert = make_certificates(self.make_dir())
        port = free_port()
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        daemon = Daemon("--listen", listen, "--null-auth", wait_port=port)
        self.addCleanup(daemon.stop)
        traffic = self.traffic()
        capture = self.passive(port, traffic, "--tls", "--ca", ca)
        path = self.capture_marked(capture, traffic, "tls")
        [[description]] = {tuple(row) for row in tshark_fields(path, "frame.interface_description")}
        self.assertEqual(description, f"rpcaps://127.0.0.1:{port}/lo")

    test_over_tls.skip = SKIP or (None if shutil.which("openssl") else "the openssl command is not installed")  # type: ignore[attr-defined]

    def test_from_libpcaps_rpcapd_over_udp(self) -> None:
        rpcapd = ReferenceRpcapd()
        self.addCleanup(rpcapd.stop)
        traffic = self.traffic()
        capture = self.fifo_capture(
            "rpcap",
            "--remote-host",
            "127.0.0.1",
            "--remote-port",
            str(rpcapd.port),
            "--remote-interface",
            "lo",
            "--remote-filter",
            f"udp dst port {traffic.port}",
            "--udp",
        )
        self.capture_marked(capture, traffic, "libpcap")

    test_from_libpcaps_rpcapd_over_udp.skip = SKIP_REFERENCE  # type: ignore[attr-defined]

    def test_from_the_extrahop_fork(self) -> None:
        """The fork's TCP data channel carries udpstr, not classic RPCAP: the collector reads both."""
        port = free_port()
        fork = ExtraHopRpcapd(self.make_dir(), "extrahop-rpcapd", ["-n", "-b", "127.0.0.1", "-p", str(port)])
        self.addCleanup(fork.stop)
        fork.wait_listening(port)
        traffic = self.traffic()
        self.capture_marked(self.passive(port, traffic), traffic, "fork")

    test_from_the_extrahop_fork.skip = SKIP_FORK  # type: ignore[attr-defined]

    def test_active_daemon(self) -> None:
        """C{rpcap-active}: our daemon dials in; at the end it is hung up on, without RPCAP CLOSE."""
        port = free_port()
        directory = self.make_dir()
        log = os.path.join(directory, "extcap.log")
        traffic = self.traffic()
        sniffer = Sniffer("lo", f"tcp port {port}")
        self.addCleanup(sniffer.stop)
        capture = self.fifo_capture(
            "rpcap-active",
            "--listen-port",
            str(port),
            "--listen-address",
            "127.0.0.1",
            "--remote-interface",
            "lo",
            "--extcap-capture-filter",
            f"udp dst port {traffic.port}",
            "--log-file",
            log,
        )
        self.assertTrue(
            _wait_until(
                lambda: "waiting for a daemon" in Path(log).read_text() if os.path.exists(log) else False, 15
            )
        )
        daemon = Daemon("--active", f"127.0.0.1:{port}", "--null-auth")
        self.addCleanup(daemon.stop)
        self.capture_marked(capture, traffic, "active")
        said = b"".join(f[3] for f in map(transport_fields, sniffer.stop()) if f is not None and f[1] == port)
        requests = message_types(said)
        self.assertEqual(
            requests[-2:], [MessageType.STATS_REQ, MessageType.ENDCAP_REQ]
        )  # the capture was ended ...
        self.assertNotIn(MessageType.CLOSE, requests)  # ... and the daemon only hung up on
        self.assertIn("the daemon at 127.0.0.1 connected", Path(log).read_text())


class EndingTests(ExtcapTestCase):
    skip = SKIP

    def test_wireshark_closes_the_fifo(self) -> None:
        """Wireshark stops reading: no packet needs to come to find the reader gone; exit 0, nothing said."""
        traffic = self.traffic()
        capture = self.passive(self.own_daemon(), traffic, read=False)
        fd = os.open(capture.fifo, os.O_RDONLY | os.O_NONBLOCK)
        data = b""
        deadline = time.monotonic() + 15
        while b"first" not in data and time.monotonic() < deadline and capture.process.poll() is None:
            traffic.send("first")
            time.sleep(0.05)
            try:
                data += os.read(fd, 65536)
            except BlockingIOError:
                pass
        os.close(fd)
        self.assertIn(b"first", data)
        self.assertEqual(capture.finish(timeout=10), (0, ""))

    def test_wireshark_closes_the_control_pipe(self) -> None:
        """
        The toolbar's pipes, as Wireshark's GUI uses them: it reads the log
        (and the status bar), sends Initialized, and stops by closing its
        end of our control-in.
        """
        directory = self.make_dir()
        to_extcap = os.path.join(directory, "wireshark_control_ws_to_ext_rpcap")
        from_extcap = os.path.join(directory, "wireshark_control_ext_to_ws_rpcap")
        os.mkfifo(to_extcap, 0o600)
        os.mkfifo(from_extcap, 0o600)
        traffic = self.traffic()
        capture = self.passive(
            self.own_daemon(), traffic, "--extcap-control-in", to_extcap, "--extcap-control-out", from_extcap
        )
        received: list[tuple[int, int, bytes]] = []

        def read_log() -> None:
            fd = os.open(from_extcap, os.O_RDONLY)
            buffer = b""
            while chunk := os.read(fd, 65536):
                messages, buffer, _ = parse_control(buffer + chunk)
                received.extend(messages)
            os.close(fd)

        threading.Thread(target=read_log, daemon=True).start()
        writer = os.open(to_extcap, os.O_WRONLY)  # blocks until rpcap-extcap reads it, as in Wireshark
        os.write(writer, control_frame(0, COMMAND_INITIALIZED))

        def logged(text: str) -> bool:
            return any(cmd == COMMAND_ADD and text.encode() in payload for _, cmd, payload in received)

        capture.wait_for(lambda: logged("capturing lo"), "the log line of the capture")
        capture.wait_for(lambda: sent_and_held(capture, traffic, "ctl"), "a packet")
        os.close(writer)  # Wireshark stops the capture
        self.assertEqual(capture.finish(timeout=10), (0, ""))
        self.assertTrue(logged("stopped: Wireshark closed the control pipe"), received)
        self.assertIn((0, 6, b"rpcap: capturing lo of 127.0.0.1"), received)  # the status bar

    def test_daemon_killed_mid_capture(self) -> None:
        """Not a stop Wireshark asked for: status 1 and one line, which Wireshark shows."""
        port = free_port()
        daemon = Daemon("--listen", f"tcp:{port}:interface=127.0.0.1", "--null-auth", wait_port=port)
        self.addCleanup(daemon.stop)
        traffic = self.traffic()
        capture = self.passive(port, traffic)
        capture.wait_for(lambda: sent_and_held(capture, traffic, "before"), "a packet")
        daemon.process.kill()
        code, stderr = capture.finish(timeout=15)
        self.assertEqual(code, 1)
        [line] = stderr.splitlines()
        self.assertRegex(
            line,
            rf"^rpcap-extcap: the daemon at 127\.0\.0\.1:{port} closed the (data )?connection mid-capture$",
        )
        self.assertIn(b"before", capture.data)

    def test_unreachable_daemon(self) -> None:
        capture = self.passive(free_port(), self.traffic())
        code, stderr = capture.finish(timeout=20)
        self.assertEqual(code, 1)
        [line] = stderr.splitlines()
        self.assertRegex(line, r"^rpcap-extcap: cannot connect to 127\.0\.0\.1:\d+: connection refused")

    def test_filter_that_does_not_compile(self) -> None:
        capture = self.fifo_capture(
            "rpcap",
            "--remote-host",
            "127.0.0.1",
            "--remote-port",
            str(self.own_daemon()),
            "--remote-interface",
            "lo",
            "--extcap-capture-filter",
            "udp prot 53",
        )
        code, stderr = capture.finish(timeout=20)
        self.assertEqual(code, 2)
        [line] = stderr.splitlines()
        self.assertIn("cannot compile filter 'udp prot 53'", line)


class TsharkTests(ExtcapTestCase):
    """tshark itself, with an extcap folder of our own (see the module's docstring)."""

    skip = SKIP_NAMESPACE

    def setUp(self) -> None:
        self.home = self.make_dir()
        self.private = self.make_dir()
        folders = subprocess.run(
            ["tshark", "-G", "folders"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
            cwd=self.home,
        )
        self.folder, self.label = choose_extcap_folder(parse_folders(folders.stdout))
        self.link = os.path.join(self.private, "rpcap-extcap")

    def env(self) -> dict[str, str]:
        return {**_env(), "HOME": self.home}

    def sandboxed(self, *command: str) -> list[str]:
        """C{command} seeing the private folder as Wireshark's extcap folder."""
        if self.folder.startswith(
            self.home + os.sep
        ):  # Wireshark 4.2 and later: a personal folder under $HOME
            os.makedirs(os.path.dirname(self.folder), exist_ok=True)
            if not os.path.lexists(self.folder):
                os.symlink(self.private, self.folder)
            return list(command)
        script = 'mount --bind "$1" "$2" || exit 97; shift 2; exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            self.private,
            self.folder,
            *command,
        ]

    def run_sandboxed(self, *command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.sandboxed(*command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.home,
        )

    def install(self) -> None:
        installed = self.run_sandboxed(str(EXTCAP_SCRIPT), "--install")
        self.assertEqual(installed.returncode, 0, installed.stderr)
        self.addCleanup(self.run_sandboxed, str(EXTCAP_SCRIPT), "--uninstall")
        self.assertIn(f"linked {self.folder}/rpcap-extcap -> {EXTCAP_SCRIPT}", installed.stdout)
        self.assertEqual(os.readlink(self.link), str(EXTCAP_SCRIPT))

    def test_tshark_lists_rpcap_after_install(self) -> None:
        self.assertNotIn("rpcap", self.run_sandboxed("tshark", "-D").stdout)
        self.install()
        listed = self.run_sandboxed("tshark", "-D").stdout
        self.assertRegex(listed, r"\d+\. rpcap \(Remote capture \(RPCAP\) from a daemon\)\n")
        self.assertRegex(
            listed, r"\d+\. rpcap-active \(Remote capture \(RPCAP\), waiting for an active daemon\)\n"
        )
        removed = self.run_sandboxed(str(EXTCAP_SCRIPT), "--uninstall")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertFalse(os.path.lexists(self.link))
        self.assertNotIn("rpcap", self.run_sandboxed("tshark", "-D").stdout)

    def test_tshark_captures_through_it(self) -> None:
        """
        C{tshark -i rpcap -o extcap.rpcap.remotehost:...}: tshark runs the
        capture call and stops it (SIGTERM) after its count; from the first
        marked datagram it holds, none is missing.
        """
        self.install()
        port = self.own_daemon()
        traffic = self.traffic()
        out = os.path.join(self.home, "tshark.pcapng")
        count = 5
        command = self.sandboxed(
            "tshark",
            "-i",
            "rpcap",
            "-o",
            "extcap.rpcap.remotehost:127.0.0.1",
            "-o",
            f"extcap.rpcap.remoteport:{port}",
            "-o",
            "extcap.rpcap.remoteinterface:lo",
            "-f",
            f"udp dst port {traffic.port}",
            "-c",
            str(count),
            "-w",
            out,
        )
        tshark = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            cwd=self.home,
        )

        def kill() -> None:
            if tshark.poll() is None:
                tshark.kill()
                tshark.wait()

        self.addCleanup(kill)
        deadline = time.monotonic() + 30
        n = 0
        while tshark.poll() is None and time.monotonic() < deadline:
            traffic.send(f"tshark-{n}-")
            n += 1
            time.sleep(0.1)
        stdout, stderr = tshark.communicate(timeout=30)
        self.assertEqual(tshark.returncode, 0, stderr)
        self.assertNotIn("rpcap-extcap:", stderr)  # the extcap said nothing: it did not fail
        numbers = [int(p.split(b"-")[1]) for p in payloads_in(out)]
        self.assertEqual(len(numbers), count, numbers)
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + count)))

        def extcap_left() -> list[psutil.Process]:
            ours = f"extcap.rpcap.remoteport:{port}"
            return [
                p
                for p in psutil.process_iter(["cmdline"])
                if "--capture" in (p.info["cmdline"] or [])
                and str(port) in (p.info["cmdline"] or [])
                and ours
            ]

        self.assertTrue(_wait_until(lambda: not extcap_left(), 10), "rpcap-extcap outlived tshark")
