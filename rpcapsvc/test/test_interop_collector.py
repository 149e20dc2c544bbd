"""
End-to-end, the collector side: C{rpcap-dump} capturing from libpcap 1.10.5's
own C{rpcapd} and from ours (TCP and UDP data, pcapng and pcap files,
standard output piped into tshark), C{rpcap-dump --active} receiving udpstr
from C{twistd rpcapd --active}, and C{twistd rpcapcollect} recording two
daemons at once through rotation, a daemon killed and a daemon reconnecting.

Every file written is read back with tshark (and capinfos), which must find
exactly the marked packets that were sent.  Traffic stays on loopback.  These
tests skip, saying why, where capture is not permitted, tshark is missing
or (for those against libpcap's programs) the reference peers are not built.
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
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from . import _peers
from ._e2e import REPO_ROOT, Daemon, Traffic, e2e_skip_reason, free_port, peer


def _skip_reason(reference_peers: bool = False) -> Optional[str]:
    if reference_peers:
        reason = e2e_skip_reason() or _peers.skip_reason_for_rpcapd()
    else:
        reason = _peers.skip_reason_for_capture()
    for tool in ("tshark", "capinfos"):
        if reason is None and shutil.which(tool) is None:
            reason = f"{tool} is not installed (scripts/install-system-deps.sh)"
    return reason


SKIP = _skip_reason()
SKIP_REFERENCE = _skip_reason(reference_peers=True)

#: Bytes in front of a UDP payload in a captured loopback frame (Ethernet, IPv4, UDP).
FRAME_OVERHEAD = 14 + 20 + 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


class Dump:
    """C{rpcap-dump ARGS} in a subprocess, its standard error collected as it comes."""

    def __init__(
        self,
        *args: str,
        stdout: int = subprocess.DEVNULL,
        command: Optional[list[str]] = None,
        env: Optional[dict[str, str]] = None,
        new_session: bool = False,
    ) -> None:
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "rpcapsvc.collector.dump"]), *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env or _env(),
            text=stdout != subprocess.PIPE,
            start_new_session=new_session,  # no terminal: nothing can prompt
            # As from a terminal, whatever this test run inherited (a
            # background job ignores SIGINT, and so would rpcap-dump).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line if isinstance(line, str) else line.decode(errors="replace"))

    def stderr(self) -> str:
        return "".join(self._lines)

    def wait_for_stderr(self, text: str, timeout: float = 15.0) -> None:
        """Wait until rpcap-dump has said C{text} (e.g. that it is capturing)."""
        if not _wait_until(lambda: text in self.stderr() or not self._reader.is_alive(), timeout):
            raise AssertionError(f"rpcap-dump never said {text!r}:\n{self.stderr()}")
        if text not in self.stderr():
            raise AssertionError(f"rpcap-dump exited without saying {text!r}:\n{self.stderr()}")

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for rpcap-dump to finish; its exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"rpcap-dump did not finish within {timeout} s:\n{self.stderr()}") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class ReferenceRpcapd:
    """libpcap 1.10.5's C{rpcapd -n -b 127.0.0.1 -p PORT}, in its own session."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = _peers.start_reference_rpcapd(
            "-n",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"libpcap's rpcapd exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        if not _wait_until(listening, 10.0):
            self.stop()
            raise RuntimeError(f"libpcap's rpcapd did not listen on {self.port}")

    def stop(self) -> None:
        # Its own session, so its process group is it and its per-client children.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()


def tshark_fields(path: str, *fields: str, options: Sequence[str] = ()) -> list[list[str]]:
    """
    Read C{path} with tshark: one list of C{fields} per packet.  Fails the
    test if tshark cannot read the whole file.
    """
    command = ["tshark", "-n", "-r", path, *options, "-T", "fields"]
    for field in fields:
        command += ["-e", field]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"tshark cannot read {path} (exit {out.returncode}):\n{out.stderr}")
    return [line.split("\t") for line in out.stdout.splitlines()]


def capinfos(path: str) -> list[str]:
    """C{[file type, encapsulation, packet count]} as capinfos reports them."""
    out = subprocess.run(
        ["capinfos", "-T", "-r", "-t", "-E", "-c", path], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise AssertionError(f"capinfos cannot read {path} (exit {out.returncode}):\n{out.stderr}")
    [line] = out.stdout.splitlines()
    name, *rest = line.split("\t")
    assert name == path, line
    return rest


def send_marked(traffic: Traffic, prefix: str, sizes: Sequence[int], pause: float = 0.0) -> list[bytes]:
    """Send one datagram of each size, each marked C{PREFIX-N-}; the payloads sent."""
    sent = []
    for n, size in enumerate(sizes):
        marker = f"{prefix}-{n}-"
        traffic.send(marker, size)
        sent.append(marker.encode().ljust(size, b"."))
        if pause:
            time.sleep(pause)
    return sent


def frames_of(payloads: Sequence[bytes]) -> list[list[str]]:
    """What tshark shows (C{frame.len}, C{frame.cap_len}, C{udp.payload}) for these datagrams on lo."""
    return [[str(FRAME_OVERHEAD + len(p)), str(FRAME_OVERHEAD + len(p)), p.hex()] for p in payloads]


FRAME_FIELDS = ("frame.len", "frame.cap_len", "udp.payload")

#: Sizes of marked datagrams for the passive captures (frames of 43 to 1542 bytes).
SIZES = [18, 100, 1500, 64, 700, 1, 1000, 256, 30, 1200]


class TestCaseWithCleanups(SynchronousTestCase):
    def make_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="rpcap-collector-e2e-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def traffic(self) -> Traffic:
        traffic = Traffic()
        self.addCleanup(traffic.close)
        return traffic

    def dump(self, *args: str, stdout: int = subprocess.DEVNULL) -> Dump:
        dump = Dump(*args, stdout=stdout)
        self.addCleanup(dump.kill)
        return dump

    def daemon(self, *args: str, plugin: str = "rpcapd", wait_port: Optional[int] = None) -> Daemon:
        daemon = Daemon(*args, plugin=plugin, wait_port=wait_port)
        self.addCleanup(shutil.rmtree, daemon.workdir, True)
        self.addCleanup(daemon.stop)
        return daemon

    def own_rpcapd(self) -> str:
        """Start C{twistd rpcapd} on loopback; its rpcap:// URL."""
        port = free_port()
        self.daemon("--listen", f"tcp:{port}:interface=127.0.0.1", "--null-auth", wait_port=port)
        return f"rpcap://127.0.0.1:{port}/"

    def reference_rpcapd(self) -> str:
        """Start libpcap's C{rpcapd} on loopback; its rpcap:// URL."""
        rpcapd = ReferenceRpcapd()
        self.addCleanup(rpcapd.stop)
        return f"rpcap://127.0.0.1:{rpcapd.port}/"

    def capture_to_file(
        self, url: str, path: str, *options: str, sizes: Sequence[int] = SIZES
    ) -> list[bytes]:
        """
        C{rpcap-dump -c N -w PATH OPTIONS URL/lo 'udp dst port P'} while N
        marked datagrams go to port P; checks it ends well, returns what was sent.
        """
        traffic = self.traffic()
        dump = self.dump(
            "-c", str(len(sizes)), "-w", path, *options, url + "lo", f"udp dst port {traffic.port}"
        )
        dump.wait_for_stderr("capturing on lo")
        sent = send_marked(traffic, "dumped", sizes)
        self.assertEqual(dump.wait(), 0, dump.stderr())
        self.assertIn(f"{len(sizes)} packets captured", dump.stderr())
        return sent


if TYPE_CHECKING:
    _DumpTestsBase = TestCaseWithCleanups
else:
    _DumpTestsBase = object  # not a test case itself: trial would run it


class DumpTestsMixin(_DumpTestsBase):
    """rpcap-dump against a passive server; C{server} starts one and returns its URL."""

    def server(self) -> str:
        raise NotImplementedError

    def test_lists_interfaces(self) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "rpcapsvc.collector.dump", "-D", self.server()],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        lo = [line for line in out.stdout.splitlines() if re.match(r"\d+\.lo \[Up\]", line)]
        self.assertEqual(len(lo), 1, out.stdout)
        self.assertIn("127.0.0.1", lo[0])

    def test_tcp_capture_into_pcapng(self) -> None:
        path = os.path.join(self.make_dir(), "lo.pcapng")
        url = self.server()
        sent = self.capture_to_file(url, path)
        self.assertEqual(tshark_fields(path, *FRAME_FIELDS), frames_of(sent))
        self.assertEqual(capinfos(path), ["pcapng", "ether", str(len(sent))])
        interfaces = tshark_fields(path, "frame.interface_name", "frame.interface_description")
        self.assertEqual(interfaces, [["lo", url + "lo"]] * len(sent))


class ReferenceDaemonDumpTests(DumpTestsMixin, TestCaseWithCleanups):
    """rpcap-dump against libpcap 1.10.5's own rpcapd."""

    skip = SKIP_REFERENCE

    def server(self) -> str:
        return self.reference_rpcapd()

    def test_udp_capture_into_pcap(self) -> None:
        path = os.path.join(self.make_dir(), "lo.pcap")
        sent = self.capture_to_file(self.server(), path, "--udp")
        self.assertEqual(tshark_fields(path, *FRAME_FIELDS), frames_of(sent))
        self.assertEqual(capinfos(path), ["pcap", "ether", str(len(sent))])

    def test_interrupted_capture_ends_cleanly(self) -> None:
        """Ctrl-C (SIGINT) ends a capture with no count: a whole file, and exit status 0."""
        traffic = self.traffic()
        path = os.path.join(self.make_dir(), "interrupted.pcapng")
        dump = self.dump("-w", path, self.server() + "lo", f"udp dst port {traffic.port}")
        dump.wait_for_stderr("capturing on lo")
        sent = send_marked(traffic, "interrupted", SIZES)
        self.assertTrue(
            _wait_until(lambda: Path(path).read_bytes().count(b"interrupted-") == len(SIZES), 10),
            "the packets never reached the file",
        )
        dump.process.send_signal(signal.SIGINT)
        self.assertEqual(dump.wait(), 0, dump.stderr())
        self.assertIn(f"rpcap-dump: {len(SIZES)} packets captured", dump.stderr())
        self.assertEqual(tshark_fields(path, *FRAME_FIELDS), frames_of(sent))
        self.assertEqual(capinfos(path), ["pcapng", "ether", str(len(SIZES))])

    def test_standard_output_piped_into_tshark(self) -> None:
        """
        C{rpcap-dump -w - | tshark -r -}: tshark shows the first packets
        while rpcap-dump is still capturing, and then the rest.
        """
        traffic = self.traffic()
        half = len(SIZES) // 2
        dump = self.dump(
            "-w",
            "-",
            "-c",
            str(len(SIZES)),
            self.server() + "lo",
            f"udp dst port {traffic.port}",
            stdout=subprocess.PIPE,
        )
        tshark = subprocess.Popen(
            ["tshark", "-n", "-l", "-r", "-", "-T", "fields", *(a for f in FRAME_FIELDS for a in ("-e", f))],
            stdin=dump.process.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert dump.process.stdout is not None
        dump.process.stdout.close()  # tshark holds the pipe now
        self.addCleanup(_kill, tshark)
        shown: list[list[str]] = []

        def read() -> None:
            assert tshark.stdout is not None
            for line in tshark.stdout:
                shown.append(line.rstrip("\n").split("\t"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        dump.wait_for_stderr("capturing on lo")
        first = send_marked(traffic, "piped", SIZES[:half])
        self.assertTrue(_wait_until(lambda: len(shown) >= half, 10), shown)
        self.assertIsNone(dump.process.poll(), "rpcap-dump stopped early")
        self.assertEqual(shown, frames_of(first))
        rest = send_marked(traffic, "piped-more", SIZES[half:])
        self.assertEqual(dump.wait(), 0, dump.stderr())
        self.assertEqual(tshark.wait(15), 0, tshark.stderr.read() if tshark.stderr else "")
        reader.join(5)
        self.assertEqual(shown, frames_of(first + rest))

    def test_capture_with_no_filter(self) -> None:
        """
        libpcap's own client cannot start a capture without a filter on
        libpcap's rpcapd (its startcap is 8 bytes longer than it says);
        rpcap-dump always sends a well-formed program, so it can.
        """
        url = self.server()
        [opened, *rest] = peer("capture", url + "lo", "--timeout-ms", "50", "--max-seconds", "2")
        self.assertEqual(opened, {"linktype": 1})
        self.assertIn("Message payload is too short", rest[-1].get("error", ""), rest)

        # Everything on lo, so rpcap-dump's own connections too: a short
        # snaplen keeps the packets its captures make of captures small.
        # Other traffic (filler, and whatever else runs on lo) brings it to
        # its count.
        path = os.path.join(self.make_dir(), "everything.pcapng")
        traffic = self.traffic()
        filler = self.traffic()
        dump = self.dump("-s", "256", "-c", "3000", "-w", path, url + "lo")
        dump.wait_for_stderr("capturing on lo")
        sent = send_marked(traffic, "unfiltered", [100] * 10)
        deadline = time.monotonic() + 15
        while dump.process.poll() is None and time.monotonic() < deadline:
            filler.send("filler", 100)
        self.assertEqual(dump.wait(), 0, dump.stderr())
        self.assertIn("3000 packets captured", dump.stderr())
        self.assertEqual(capinfos(path), ["pcapng", "ether", "3000"])
        # Packets rpcap-dump's data connection carried show up again inside
        # its own captured segments: read those as plain TCP.
        marked = tshark_fields(
            path,
            *FRAME_FIELDS,
            options=["--disable-protocol", "rpcap", "-Y", f"udp.dstport == {traffic.port}"],
        )
        self.assertEqual(marked, frames_of(sent))


class OwnDaemonDumpTests(DumpTestsMixin, TestCaseWithCleanups):
    """rpcap-dump against C{twistd rpcapd}, as against libpcap's (the same tests)."""

    skip = SKIP

    def server(self) -> str:
        return self.own_rpcapd()


class BothServersAgreeTests(TestCaseWithCleanups):
    skip = SKIP_REFERENCE

    def test_same_packets_from_both_servers(self) -> None:
        """
        Two rpcap-dumps capture the same traffic at once, one from each
        server: tshark reads the same packets, stamped alike, from both
        files.
        """
        traffic = self.traffic()
        directory = self.make_dir()
        paths = [os.path.join(directory, "reference.pcapng"), os.path.join(directory, "ours.pcapng")]
        dumps = [
            self.dump("-c", str(len(SIZES)), "-w", path, url + "lo", f"udp dst port {traffic.port}")
            for path, url in zip(paths, [self.reference_rpcapd(), self.own_rpcapd()])
        ]
        for dump in dumps:
            dump.wait_for_stderr("capturing on lo")
        sent = send_marked(traffic, "both", SIZES)
        for dump in dumps:
            self.assertEqual(dump.wait(), 0, dump.stderr())
        reference, ours = (tshark_fields(path, "frame.time_epoch", *FRAME_FIELDS) for path in paths)
        self.assertEqual([row[1:] for row in reference], frames_of(sent))
        self.assertEqual([row[1:] for row in ours], frames_of(sent))
        # Each socket has the kernel stamp its own copy: they may differ by a microsecond or so.
        apart = [abs(float(a[0]) - float(b[0])) for a, b in zip(reference, ours)]
        self.assertLess(max(apart), 0.001, apart)


class ActiveDumpTests(TestCaseWithCleanups):
    skip = SKIP

    def test_udpstr_from_an_active_daemon_keeps_packets_whole(self) -> None:
        """
        C{rpcap-dump --active PORT --udp} waits; C{twistd rpcapd --active}
        connects and sends udpstr datagrams of at most 1472 bytes, so most
        packets here span several of them: the file holds every one whole.
        """
        port = free_port()
        traffic = self.traffic()
        path = os.path.join(self.make_dir(), "active.pcapng")
        # A 65500-byte datagram makes a 65542-byte frame on lo: with its
        # rpcap headers (28 bytes) it cannot be one classic UDP datagram (at
        # most 65507 bytes), so only udpstr can carry it.
        sizes = [10, 3000, 1430, 1431, 9000, 200, 65500, 1472, 4500, 64]
        # No source URL in active mode: the trailing words are the filter.
        dump = self.dump(
            "--active",
            str(port),
            "--udp",
            "-w",
            path,
            "-c",
            str(len(sizes)),
            "-i",
            "lo",
            f"udp dst port {traffic.port}",
        )
        dump.wait_for_stderr(f"waiting for a daemon on tcp:{port}")
        self.daemon("--active", f"127.0.0.1:{port}", "--udp-mtu", "1472", "--null-auth")
        dump.wait_for_stderr("capturing on lo")
        sent = send_marked(traffic, "udpstr", sizes, pause=0.005)
        self.assertEqual(dump.wait(), 0, dump.stderr())
        self.assertIn(
            f"{len(sizes)} packets captured, 0 dropped by the daemon's kernel, 0 lost in transit",
            dump.stderr(),
        )
        self.assertEqual(tshark_fields(path, *FRAME_FIELDS), frames_of(sent))
        self.assertEqual(capinfos(path), ["pcapng", "ether", str(len(sizes))])


class CollectorTests(TestCaseWithCleanups):
    skip = SKIP

    CAPTURING = "interface=lo capturing into"
    GONE = re.compile(r"daemon=127\.0\.0\.1:\d+ interface=lo gone: packets=(\d+) files=(\d+)")

    def test_two_daemons_rotation_loss_and_reconnection(self) -> None:
        """
        C{twistd rpcapcollect} records two daemons capturing the same
        traffic, each into files rotated every 2 s.  One daemon is killed:
        the collector says so and keeps recording the other.  Restarted, it
        connects again and its new files get the new packets.  Each marked
        packet is in exactly as many files as daemons were up when it was
        sent, and every file reads back whole.
        """
        port = free_port()
        traffic = self.traffic()
        directory = os.path.join(self.make_dir(), "captures")
        collector = self.daemon(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--directory",
            directory,
            "--interface",
            "lo",
            "--filter",
            f"udp dst port {traffic.port}",
            "--stats-interval",
            "1",
            "--rotate-seconds",
            "2",
            plugin="rpcapcollect",
        )
        collector.wait_for_log(f"starting on {port}")

        daemons: list[Daemon] = []

        def daemon() -> Daemon:
            daemons.append(self.daemon("--active", f"127.0.0.1:{port}", "--null-auth"))
            return daemons[-1]

        def wait_for_capturing(count: int) -> None:
            if not _wait_until(lambda: collector.log().count(self.CAPTURING) >= count, 15):
                logs = "\n".join(f"--- daemon {d.args}:\n{d.log()}{d.stderr()}" for d in daemons)
                self.fail(f"{count} captures never started:\n{collector.log()}\n{logs}")
            self.assertEqual(collector.log().count(self.CAPTURING), count, collector.log())

        def wait_for_files(payloads: Sequence[bytes], copies: int) -> None:
            """Until each payload is in the files C{copies} times (they are flushed as written)."""

            def counts() -> list[int]:
                data = b"".join(p.read_bytes() for p in Path(directory).glob("*.pcapng"))
                return [data.count(payload) for payload in payloads]

            _wait_until(lambda: all(c >= copies for c in counts()), 10, 0.1)

        first = daemon()
        daemon()
        wait_for_capturing(2)
        both_started = time.monotonic()
        both = send_marked(traffic, "both-up", SIZES, pause=0.05)
        wait_for_files(both, 2)
        time.sleep(max(0.0, both_started + 6.0 - time.monotonic()))  # past two rotations

        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        self.assertTrue(_wait_until(lambda: self.GONE.search(collector.log()), 10), collector.log())
        [(packets, files)] = self.GONE.findall(collector.log())
        self.assertGreaterEqual(int(files), 3, "the killed daemon's files did not rotate")
        self.assertGreaterEqual(int(packets), len(both))
        alone = send_marked(traffic, "one-up", SIZES, pause=0.02)
        wait_for_files(alone, 1)

        daemon()
        wait_for_capturing(3)
        again = send_marked(traffic, "reconnected", SIZES, pause=0.02)
        wait_for_files(again, 2)
        self.assertRegex(
            collector.log(),
            r"daemon=127\.0\.0\.1:\d+ interface=lo stats: file_prefix=127\.0\.0\.1_lo(-2)? packets=\d+ kernel_dropped=0 ",
        )

        # Shut the collector down as an operator would (not with stop(), which
        # also deletes its log): it finishes every file.
        collector.process.terminate()
        # twistd reports the signal that ended it, after a clean shutdown.
        self.assertIn(collector.process.wait(15), (0, -signal.SIGTERM), collector.log())
        self.assertEqual(len(self.GONE.findall(collector.log())), 3, collector.log())
        paths = sorted(str(p) for p in Path(directory).iterdir())
        self.assertTrue(
            all(re.fullmatch(r".*/127\.0\.0\.1_lo(-2)?_\d{8}T\d{6}_\d{5}\.pcapng", p) for p in paths), paths
        )
        # The two daemons' series can be told apart: the second to connect writes "lo-2".
        self.assertTrue(any("_lo-2_" in p for p in paths) and any("_lo_" in p for p in paths), paths)
        self.assertGreaterEqual(len(paths), 3 + 3 + 1, paths)

        # Read every file at once: one tshark each.
        readers = {
            path: subprocess.Popen(
                ["tshark", "-n", "-r", path, "-T", "fields", *(a for f in FRAME_FIELDS for a in ("-e", f))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in paths
        }
        rows: list[list[str]] = []
        for path, reader in readers.items():
            out, err = reader.communicate(timeout=60)
            self.assertEqual(reader.returncode, 0, f"tshark cannot read {path}:\n{err}")
            rows += [line.split("\t") for line in out.splitlines()]
        for copies, payloads in ((2, both), (1, alone), (2, again)):
            for frame in frames_of(payloads):
                self.assertEqual(rows.count(frame), copies, frame[2])
        self.assertEqual(len(rows), 2 * len(both) + len(alone) + 2 * len(again))
