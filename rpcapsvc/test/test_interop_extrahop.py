"""
End-to-end against ExtraHop's fork of rpcapd (C{.peers/bin/extrahop-rpcapd},
built by scripts/build-reference-peers.sh) and with its command line:

  - the fork, passive, with its defaults (udpstr at MTU 1472 on every data
    channel, TCP included), with C{-t 0} (classic framing) and with a small
    MTU that cuts records across datagrams, into C{rpcap-dump} over TCP and
    UDP;
  - our C{rpcapd} console script run with the fork's switches and defaults,
    into C{rpcap-dump}, and with C{-t 0} into libpcap's own client;
  - our C{rpcapd -v -f rpcapd.ini} with the fork's config lines, and our
    C{rpcapd -v -a HOST,PORT} read as the fork reads it, connecting to
    C{rpcap-dump --active};
  - a fleet that survives its collector: the fork in active mode keeps
    coming back to C{twistd rpcapcollect} when it is restarted (also after
    a refused capture), and to one C{rpcap-dump --active} after another.

Each captured file must hold exactly the marked datagrams sent while it was
capturing, frame for frame the bytes (and original lengths) that a capture
of our own on loopback saw, and read back whole with tshark.  Traffic stays
on loopback.  Every process started is stopped, the fork by its process
group (it runs in a session of its own, in the foreground: it kills its own
process group when it stops).  The tests skip, saying why, where the fork
or a tool is missing or capture is not permitted.

What the fork does, as measured here: it reconnects at once after a
collector hangs up (without RPCAP CLOSE) but waits 30 s after a refused
connection, and has no SO_REUSEADDR on its listener.  So its collectors here
never refuse it: restarted C{rpcapcollect}s share one listening socket held
by the test (as a systemd socket unit holds it), and the next C{rpcap-dump
--active} listens before the previous one ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, NamedTuple, Optional, Sequence

import psutil
from twisted.trial.unittest import SynchronousTestCase

from . import _peers
from ._e2e import PeerCapture, Sniffer, Traffic, free_port, packets, payloads, transport_fields, warm_up
from .test_interop_collector import FRAME_FIELDS, Dump, _env, _wait_until, frames_of, tshark_fields

#: Sizes of the marked datagrams (frames of 43 to 1542 bytes on lo).
SIZES = [18, 100, 1500, 64, 700, 1, 1000, 256, 30, 1200]
#: The same, and frames that span many datagrams of 1472 bytes (up to 65042 bytes).
LARGE_SIZES = [*SIZES, 9000, 20, 30000, 65000, 3]

#: The first bytes of what a data channel carries: a udpstr datagram's header, a classic packet message's.
UDPSTR, CLASSIC = b"\x00\x6e", b"\x00\x07"

#: What the collectors' logs say when the fork (or our daemon) is capturing for them.
CAPTURING = "interface=lo capturing into"
#: Whatever restarts or reconnections take, far below the fork's 30 s retry after a refusal.
RECONNECT_WITHIN = 10.0


def rpcapd_script() -> Optional[Path]:
    """The C{rpcapd} console script of this environment (the venv's bin/rpcapd), or C{None}."""
    # Not whatever rpcapd is on PATH: that may be libpcap's.
    script = Path(sys.executable).with_name("rpcapd")
    return script if os.access(script, os.X_OK) else None


def _skip_reason(fork: bool = False, own: bool = False, client: bool = False) -> Optional[str]:
    ok, why = _peers.can_capture()
    if not ok:
        return why
    if fork and _peers.skip_reason_for_extrahop():
        return _peers.skip_reason_for_extrahop()
    if client and _peers.skip_reason_for_client():
        return _peers.skip_reason_for_client()
    if own and rpcapd_script() is None:
        return f"the rpcapd console script is not installed beside {sys.executable} (pip install -e .)"
    if shutil.which("tshark") is None:
        return "tshark is not installed (scripts/install-system-deps.sh)"
    try:
        import pcapy  # noqa: F401  (the Sniffer's)
    except ImportError:
        return "pcapy is not installed (the tests' own loopback capture needs it)"
    return None


SKIP_FORK = _skip_reason(fork=True)
SKIP_OWN = _skip_reason(own=True)
SKIP_OWN_WITH_CLIENT = _skip_reason(own=True, client=True)


# --- pcap files -----------------------------------------------------------------------


class Record(NamedTuple):
    ts_sec: int
    ts_frac: int
    caplen: int
    length: int
    data: bytes


def read_pcap(path: str, whole: bool = True) -> tuple[int, list[Record]]:
    """
    The link type and records of a pcap file.  With C{whole}, the file must
    end with its last record; without, a record still being written (or a
    file not yet begun) is left out.
    """
    data = Path(path).read_bytes() if os.path.exists(path) else b""
    if len(data) < 24:
        if whole:
            raise AssertionError(f"{path} holds no pcap header ({len(data)} bytes)")
        return 0, []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise AssertionError(f"{path} is not a pcap file (magic {magic.hex()})")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    records = []
    offset = 24
    while offset + 16 <= len(data):
        ts_sec, ts_frac, caplen, length = struct.unpack_from(order + "IIII", data, offset)
        if offset + 16 + caplen > len(data):
            break
        records.append(Record(ts_sec, ts_frac, caplen, length, data[offset + 16 : offset + 16 + caplen]))
        offset += 16 + caplen
    if whole and offset != len(data):
        raise AssertionError(f"{path}: {len(data) - offset} bytes after its last whole record")
    return linktype, records


def pcap_files(directory: str) -> list[str]:
    return sorted(str(p) for p in Path(directory).glob("*.pcap"))


def marked(frames: Sequence[bytes], prefix: str) -> list[bytes]:
    return [f for f in frames if f"{prefix}-".encode() in f]


# --- processes --------------------------------------------------------------------------


class Program:
    """
    A program in the foreground, in a session of its own, its standard
    output and error in a file; stopped by its process group.
    """

    def __init__(
        self,
        directory: str,
        name: str,
        argv: Sequence[str],
        pass_fds: Sequence[int] = (),
        env: Optional[dict[str, str]] = None,
    ) -> None:
        self.name = name
        self.output_path = os.path.join(directory, f"{name}.out")
        self.started = time.monotonic()
        with open(self.output_path, "wb") as out:
            self.process = self._start(directory, argv, out, pass_fds, env)

    def _start(
        self,
        directory: str,
        argv: Sequence[str],
        out: IO[bytes],
        pass_fds: Sequence[int],
        env: Optional[dict[str, str]],
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**_env(), **(env or {})},
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.output_path).read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_output(self, text: str, count: int = 1, timeout: float = RECONNECT_WITHIN) -> float:
        """Wait until C{text} appears C{count} times in the output; the seconds since the start."""

        def seen() -> bool:
            if self.output().count(text) >= count:
                return True
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before saying {text!r}:\n{self.output()}"
                )
            return False

        if not _wait_until(seen, timeout):
            raise AssertionError(f"{self.name} never said {text!r} {count} time(s):\n{self.output()}")
        return time.monotonic() - self.started

    def listening_on(self, port: int) -> bool:
        try:
            connections = psutil.Process(self.process.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)

    def wait_listening(self, port: int, timeout: float = 15.0) -> None:
        def listening() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.output()}")
            return self.listening_on(port)

        if not _wait_until(listening, timeout):
            raise AssertionError(f"{self.name} never listened on {port}:\n{self.output()}")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as an operator stops it; its exit status."""
        self._signal_group(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.output()}") from None

    def stop(self) -> None:
        """Its whole process group, however it fares: SIGTERM, then SIGKILL."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # and any child left behind
        self.process.wait()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ExtraHopRpcapd(Program):
    """ExtraHop's rpcapd (C{_peers.start_extrahop_rpcapd}): foreground, in its own session."""

    def _start(
        self,
        directory: str,
        argv: Sequence[str],
        out: IO[bytes],
        pass_fds: Sequence[int],
        env: Optional[dict[str, str]],
    ) -> subprocess.Popen[bytes]:
        return _peers.start_extrahop_rpcapd(*argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory)


#: twistd started with an inherited listening socket, as systemd passes one
#: (fd 3, LISTEN_PID, LISTEN_FDS): C{--listen systemd:domain=INET:index=0}.
_SOCKET_ACTIVATED_TWISTD = (
    "import os\n"
    "os.dup2(int(os.environ.pop('RPCAPSVC_TEST_LISTEN_FD')), 3)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='rpcapcollect')\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)


# --- sending -------------------------------------------------------------------------------


def send_batch(traffic: Traffic, other: Traffic, prefix: str, sizes: Sequence[int]) -> list[bytes]:
    """
    One marked datagram of each size to C{traffic}'s port (C{PREFIX-N-...}),
    each followed by one to C{other}'s port that a filter must keep out;
    the marked payloads sent.
    """
    sent = []
    for n, size in enumerate(sizes):
        marker = f"{prefix}-{n}-"
        traffic.send(marker, size)
        other.send(f"other-{prefix}-{n}-", size)
        sent.append(marker.encode().ljust(size, b"."))
        time.sleep(0.002)  # a burst of 64 KB frames over 200-byte datagrams would overflow a socket
    return sent


# --- the test cases ----------------------------------------------------------------------


class ExtraHopTestCase(SynchronousTestCase):
    """Processes, directories, traffic and loopback captures, all cleaned up after the test."""

    def make_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="rpcap-extrahop-e2e-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def traffic(self) -> Traffic:
        traffic = Traffic()
        self.addCleanup(traffic.close)
        return traffic

    def sniffer(self, traffic: Traffic) -> Sniffer:
        """The marked frames as they are on loopback: what every capture must hold, byte for byte."""
        sniffer = Sniffer("lo", f"udp dst port {traffic.port}")
        self.addCleanup(sniffer.stop)
        return sniffer

    def dump(self, *args: str) -> Dump:
        dump = Dump(*args)
        self.addCleanup(dump.kill)
        return dump

    def program(self, program: Program) -> Program:
        self.addCleanup(self._stop, program)
        return program

    def _stop(self, program: Program) -> None:
        program.stop()
        if os.environ.get("RPCAPSVC_TEST_SHOW_OUTPUT"):
            sys.stderr.write(f"\n--- {program.name}:\n{program.output()}")

    def fork(self, *args: str) -> ExtraHopRpcapd:
        """ExtraHop's rpcapd ARGS."""
        fork = ExtraHopRpcapd(self.make_dir(), "extrahop-rpcapd", args)
        self.addCleanup(self._stop, fork)
        return fork

    def own_rpcapd(self, *args: str) -> Program:
        """Our C{rpcapd} console script with the fork's switches C{ARGS}."""
        script = rpcapd_script()
        assert script is not None
        return self.program(Program(self.make_dir(), "rpcapd", [str(script), *args]))

    def held_listener(self) -> socket.socket:
        """A listening socket on loopback that outlives the collectors given it; its port is fresh."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.addCleanup(listener.close)
        return listener

    def collector(self, listener: socket.socket, directory: str, *args: str) -> Program:
        """C{twistd -n rpcapcollect} accepting on C{listener} (inherited, as from systemd), writing pcap."""
        argv = [sys.executable, "-c", _SOCKET_ACTIVATED_TWISTD, "-n", "--pidfile=", "rpcapcollect"]
        argv += ["--listen", "systemd:domain=INET:index=0", "--directory", directory, "--format", "pcap"]
        return self.program(
            Program(
                self.make_dir(),
                "rpcapcollect",
                [*argv, *args],
                pass_fds=[listener.fileno()],
                env={"RPCAPSVC_TEST_LISTEN_FD": str(listener.fileno())},
            )
        )

    def data_channel(self, dump: Dump, control_port: int) -> Sniffer:
        """
        What the daemon sends on rpcap-dump's data channel (its UDP port, or
        its TCP connection other than the control one), seen on loopback.
        Start it before the first packet is sent.
        """
        process = psutil.Process(dump.process.pid)
        udp_ports = {c.laddr.port for c in process.net_connections(kind="udp") if c.laddr}
        tcp = [
            c
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED
            and c.raddr
            and control_port not in (c.laddr.port, c.raddr.port)
        ]
        if udp_ports:
            [port] = udp_ports
            expression = f"udp dst port {port}"
        else:
            [connection] = tcp
            expression = f"tcp src port {connection.raddr.port} and dst port {connection.laddr.port}"
        sniffer = Sniffer("lo", expression)
        self.addCleanup(sniffer.stop)
        return sniffer

    # --- checks

    def assert_framing(self, sniffed: Sequence[bytes], framing: bytes, mtu: Optional[int]) -> None:
        """
        The data channel carried C{framing} (L{UDPSTR} or L{CLASSIC}).  Over
        UDP each datagram is checked (udpstr: at most C{mtu} bytes, numbered
        in turn, some carrying only the middle of a record); over TCP, the
        start of the stream.
        """
        fields = [f for f in map(transport_fields, sniffed) if f is not None and f[3]]
        self.assertTrue(fields, "nothing was seen on the data channel")
        chunks = [f[3] for f in fields]
        if fields[0][0] == socket.IPPROTO_TCP:
            self.assertEqual(chunks[0][:2], framing, f"the data stream begins {chunks[0][:16].hex()}")
            return
        self.assertEqual({c[:2] for c in chunks}, {framing})
        if framing == UDPSTR:
            assert mtu is not None
            self.assertLessEqual(max(len(c) for c in chunks), mtu)
            seqnos = [struct.unpack_from("!I", c, 4)[0] for c in chunks]
            self.assertEqual(seqnos, list(range(seqnos[0], seqnos[0] + len(seqnos))))
            self.assertIn(b"\xff\xff", [c[2:4] for c in chunks], "no record was cut across datagrams")

    def assert_same_frames(self, records: Sequence[Record], frames: Sequence[bytes], what: str) -> None:
        """The records are the frames, in order: every byte, and the original length."""
        self.assertEqual(len(records), len(frames), f"{what}: {len(records)} records, {len(frames)} sent")
        for n, (record, frame) in enumerate(zip(records, frames)):
            self.assertEqual(record.length, len(frame), f"{what}: packet {n}: original length")
            self.assertEqual(record.caplen, len(frame), f"{what}: packet {n}: captured length")
            self.assertEqual(record.data, frame, f"{what}: packet {n}: bytes")

    def assert_file_holds(self, path: str, frames: Sequence[bytes], sent: Sequence[bytes]) -> None:
        """C{path} is a whole pcap file of exactly these frames; tshark reads the sent payloads from it."""
        linktype, records = read_pcap(path)
        self.assertEqual(linktype, 1, "link type: Ethernet (Linux loopback)")
        self.assertEqual(len(frames), len(sent), "our own capture missed marked packets")
        self.assert_same_frames(records, frames, path)
        self.assertEqual(tshark_fields(path, *FRAME_FIELDS), frames_of(sent))

    def wait_for_records(self, paths: Callable[[], Sequence[str]], prefix: str, count: int) -> None:
        """Until the files hold C{count} packets marked C{prefix} (they are flushed as written)."""

        def found() -> int:
            return sum(len(marked([r.data for r in read_pcap(p, whole=False)[1]], prefix)) for p in paths())

        if not _wait_until(lambda: found() >= count, 10):
            self.fail(f"{found()} of {count} packets marked {prefix!r} reached {list(paths())}")

    def capture_into_dump(
        self,
        url: str,
        *options: str,
        sizes: Sequence[int] = SIZES,
        framing: bytes = UDPSTR,
        mtu: Optional[int] = 1472,
    ) -> None:
        """
        C{rpcap-dump -w out.pcap OPTIONS URL/lo 'udp dst port P'} while
        marked datagrams go to P and others elsewhere; interrupted once
        they are all in: the file holds them exactly, and nothing else.
        The data channel carried C{framing} (udpstr datagrams of at most
        C{mtu} bytes, or classic messages).
        """
        traffic, other = self.traffic(), self.traffic()
        path = os.path.join(self.make_dir(), "out.pcap")
        dump = self.dump("-w", path, *options, url + "lo", f"udp dst port {traffic.port}")
        dump.wait_for_stderr("capturing on lo")
        data_channel = self.data_channel(dump, int(url.rsplit(":", 1)[1].strip("/")))
        sniffer = self.sniffer(traffic)
        sent = send_batch(traffic, other, "marked", sizes)
        self.wait_for_records(lambda: [path], "marked", len(sizes))
        # A packet too many would arrive within a read timeout or two (the
        # fork sends a part-filled datagram once a read times out).
        time.sleep(0.5)
        frames = sniffer.stop()
        dump.process.send_signal(signal.SIGINT)
        self.assertEqual(dump.wait(), 0, dump.stderr())
        # The kernel may count drops from before the filter was in place
        # (other tests' loopback traffic, under load): every marked packet
        # arriving, checked below, is what counts.
        summary = rf"rpcap-dump: {len(sizes)} packets captured, \d+ dropped by the daemon's kernel"
        if "--udp" in options:
            summary += ", 0 lost in transit"
        self.assertRegex(dump.stderr(), summary + "\n")
        self.assert_file_holds(path, frames, sent)
        self.assert_framing(data_channel.stop(), framing, mtu)

    def capture_actively(
        self, port: int, start_daemon: Callable[[], object], prefix: str, *options: str
    ) -> None:
        """
        C{rpcap-dump --active OPTIONS} on C{port} (loopback), then the
        daemon: it connects, and ten marked datagrams reach the file exactly.
        """
        traffic, other = self.traffic(), self.traffic()
        path = os.path.join(self.make_dir(), f"{prefix}.pcap")
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        dump = self.dump(
            "--active", endpoint, "-c", str(len(SIZES)), "-w", path, *options, f"udp dst port {traffic.port}"
        )
        dump.wait_for_stderr(f"waiting for a daemon on {endpoint}")
        start_daemon()
        dump.wait_for_stderr("daemon connected from 127.0.0.1")
        dump.wait_for_stderr("capturing on lo")
        data_channel = self.data_channel(dump, port)
        sniffer = self.sniffer(traffic)
        sent = send_batch(traffic, other, prefix, SIZES)
        self.assertEqual(dump.wait(), 0, dump.stderr())
        self.assertRegex(dump.stderr(), rf"rpcap-dump: {len(SIZES)} packets captured, \d+ dropped")
        self.assert_file_holds(path, sniffer.stop(), sent)
        self.assert_framing(data_channel.stop(), UDPSTR, None)  # the fork's default (-t 1472), on TCP


# --- 1, 2: passive daemons with the fork's defaults into rpcap-dump -------------------------


if TYPE_CHECKING:
    _PassiveTestsBase = ExtraHopTestCase
else:
    _PassiveTestsBase = object  # not a test case itself: trial would run it


class PassiveDumpTestsMixin(_PassiveTestsBase):
    """rpcap-dump from a daemon started with the fork's switches; C{server(ARGS)} starts one."""

    def server(self, *args: str) -> str:
        """Start the daemon with C{-n -b 127.0.0.1 -p PORT ARGS}; its rpcap:// URL."""
        raise NotImplementedError

    def test_defaults_tcp(self) -> None:
        """udpstr at MTU 1472 on the TCP data connection: large frames span many datagrams."""
        self.capture_into_dump(self.server(), sizes=LARGE_SIZES)

    def test_defaults_udp(self) -> None:
        self.capture_into_dump(self.server(), "--udp", sizes=LARGE_SIZES)

    def test_small_mtu_tcp(self) -> None:
        """C{-t 200}: nearly every record is cut across datagrams."""
        self.capture_into_dump(self.server("-t", "200"), mtu=200)

    def test_small_mtu_udp(self) -> None:
        self.capture_into_dump(self.server("-t", "200"), "--udp", mtu=200)


class ExtraHopPassiveTests(PassiveDumpTestsMixin, ExtraHopTestCase):
    """ExtraHop's rpcapd, passive, into rpcap-dump."""

    skip = SKIP_FORK

    def server(self, *args: str) -> str:
        port = free_port()  # the fork's listener has no SO_REUSEADDR: a fresh port every time
        fork = self.fork("-n", "-b", "127.0.0.1", "-p", str(port), *args)
        fork.wait_listening(port)
        return f"rpcap://127.0.0.1:{port}/"

    def test_classic_tcp(self) -> None:
        """C{-t 0}: classic type-7 messages."""
        self.capture_into_dump(self.server("-t", "0"), sizes=LARGE_SIZES, framing=CLASSIC)


class OwnRpcapdPassiveTests(PassiveDumpTestsMixin, ExtraHopTestCase):
    """Our rpcapd console script with the fork's switches and defaults, into rpcap-dump."""

    skip = SKIP_OWN

    def server(self, *args: str) -> str:
        port = free_port()
        rpcapd = self.own_rpcapd("-n", "-b", "127.0.0.1", "-p", str(port), *args)
        rpcapd.wait_listening(port)
        return f"rpcap://127.0.0.1:{port}/"


class OwnRpcapdClassicTests(ExtraHopTestCase):
    skip = SKIP_OWN_WITH_CLIENT

    def test_libpcap_client_with_t0(self) -> None:
        """
        C{rpcapd -n -b 127.0.0.1 -p PORT -t 0}: classic framing, which
        libpcap's own client reads (it knows nothing of udpstr).
        """
        port = free_port()
        rpcapd = self.own_rpcapd("-n", "-b", "127.0.0.1", "-p", str(port), "-t", "0")
        rpcapd.wait_listening(port)
        traffic, other = self.traffic(), self.traffic()
        capture = PeerCapture(
            f"rpcap://127.0.0.1:{port}/lo", "--filter", f"udp dst port {traffic.port}", "--max-seconds", "20"
        )
        self.addCleanup(capture.kill)
        warm_up(capture, traffic)
        sniffer = self.sniffer(traffic)
        sent = send_batch(traffic, other, "classic", SIZES)
        capture.wait_for(lambda lines: len(marked(payloads(lines), "classic")) >= len(sent))
        time.sleep(0.3)  # time for a packet too many
        frames = sniffer.stop()
        capture.kill()
        self.assertEqual(capture.lines[0], {"linktype": 1})
        got = [line for line in packets(capture.lines) if b"classic-" in bytes.fromhex(line["data"])]
        records = [Record(0, 0, line["caplen"], line["len"], bytes.fromhex(line["data"])) for line in got]
        self.assertEqual(len(frames), len(sent))
        self.assert_same_frames(records, frames, "libpcap's client")
        self.assertEqual([f[14 + 20 + 8 :] for f in frames], sent)
        self.assertEqual(marked(payloads(capture.lines), "other"), [])
        # warm-ups and marked packets only
        self.assertEqual(
            len(packets(capture.lines)), len(marked(payloads(capture.lines), "warmup")) + len(got)
        )


# --- 3, 5: our rpcapd in active mode, configured as the fork is --------------------------------


class OwnRpcapdActiveTests(ExtraHopTestCase):
    skip = SKIP_OWN

    def test_config_file_of_the_fork(self) -> None:
        """
        C{rpcapd -v -f rpcapd.ini} with the fork's lines (spaces after the
        commas, C{ifname=}, C{NullAuthPermit}, and a setting the fork
        ignores): it connects to C{rpcap-dump --active}, which captures the
        preselected interface (listed first), and the ignored line is logged
        with its file and line number.
        """
        port = free_port()
        path = os.path.join(self.make_dir(), "rpcapd.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# as for ExtraHop's rpcapd\nActiveClient = 127.0.0.1, {port},ifname=lo\n")
            f.write("NullAuthPermit = YES\nFoo = bar\n")
        started: list[Program] = []
        self.capture_actively(port, lambda: started.append(self.own_rpcapd("-v", "-f", path)), "ini")
        [rpcapd] = started
        log = rpcapd.output()
        self.assertIn(f"{path}, line 4: unknown setting 'Foo' ignored", log)
        self.assertIn(f"Connecting to collector 127.0.0.1:{port}", log)
        self.assertTrue(rpcapd.alive(), log)

    def test_active_host_comma_port(self) -> None:
        """C{rpcapd -n -v -a 127.0.0.1,PORT}: the collector at PORT, not a host named C{127.0.0.1,PORT}."""
        port = free_port()
        started: list[Program] = []
        self.capture_actively(
            port,
            lambda: started.append(self.own_rpcapd("-n", "-v", "-a", f"127.0.0.1,{port}")),
            "comma",
            "-i",
            "lo",
        )
        [rpcapd] = started
        log = rpcapd.output()
        self.assertIn(f"Connecting to collector 127.0.0.1:{port}", log)
        self.assertNotIn(f"127.0.0.1,{port}", log)
        self.assertTrue(rpcapd.alive(), log)


# --- 4: the fork's fleet survives its collector ---------------------------------------------


class ExtraHopFleetTests(ExtraHopTestCase):
    """ExtraHop's rpcapd in active mode comes back to collectors that stop and start again."""

    skip = SKIP_FORK

    def deliver(
        self, directory: str, prefix: str, traffic: Traffic, other: Traffic
    ) -> tuple[list[bytes], list[bytes]]:
        """Send marked datagrams until the collector's files hold them; (frames, payloads sent)."""
        sniffer = self.sniffer(traffic)
        sent = send_batch(traffic, other, prefix, SIZES)
        self.wait_for_records(lambda: pcap_files(directory), prefix, len(sent))
        return sniffer.stop(), sent

    def assert_directory_holds(self, directory: str, frames: Sequence[bytes], sent: Sequence[bytes]) -> None:
        [path] = pcap_files(directory)
        self.assert_file_holds(path, frames, sent)

    def stop_collector(self, collector: Program) -> None:
        """SIGTERM, as an operator or systemd stops it: it ends cleanly, and the fork lives on."""
        self.assertIn(collector.terminate(), (0, -signal.SIGTERM), collector.output())

    def test_collector_restarted(self) -> None:
        """
        C{rpcapcollect} stops (SIGTERM) and starts again on the same port:
        the fork, hung up on without CLOSE, dials again at once and the new
        collector's file gets the new packets (and the old one's kept the
        old ones).
        """
        listener = self.held_listener()
        port = listener.getsockname()[1]
        traffic, other = self.traffic(), self.traffic()
        options = ("--interface", "lo", "--filter", f"udp dst port {traffic.port}")
        first_dir, second_dir = self.make_dir(), self.make_dir()
        collector = self.collector(listener, first_dir, *options)
        fork = self.fork("-n", "-v", "-a", f"127.0.0.1,{port}")
        collector.wait_for_output(CAPTURING)
        first = self.deliver(first_dir, "first", traffic, other)
        self.stop_collector(collector)
        self.assertRegex(
            collector.output(), rf"daemon=127\.0\.0\.1:\d+ interface=lo gone: packets={len(SIZES)} files=1"
        )

        restarted = self.collector(listener, second_dir, *options)
        took = restarted.wait_for_output(CAPTURING)
        self.assertLess(took, RECONNECT_WITHIN)
        second = self.deliver(second_dir, "second", traffic, other)
        self.stop_collector(restarted)
        self.assertTrue(fork.alive(), fork.output())
        self.assert_directory_holds(first_dir, *first)
        self.assert_directory_holds(second_dir, *second)

    def test_refused_then_served(self) -> None:
        """
        A collector that cannot capture what it asks for (no such
        interface: the fork answers the open with an error) holds the fork
        for C{--retry-refused} seconds and hangs up without CLOSE; the fork
        dials again.  Restarted to ask for lo, the collector gets the fork
        and its packets.
        """
        listener = self.held_listener()
        port = listener.getsockname()[1]
        traffic, other = self.traffic(), self.traffic()
        refusing_dir, serving_dir = self.make_dir(), self.make_dir()
        refusing = self.collector(listener, refusing_dir, "--interface", "nosuch0", "--retry-refused", "1")
        fork = self.fork("-n", "-v", "-a", f"127.0.0.1,{port}")
        # Refused twice: the fork came back after the first hang-up.
        refusing.wait_for_output("interface=nosuch0 capture not started", count=2)
        # RPCAP error 6: the open failed.
        self.assertIn("capture not started: RPCAP error 6: ", refusing.output())
        self.assertIn("trying again in 1 s", refusing.output())
        connected = re.findall(r"daemon=127\.0\.0\.1:\d+ connected", refusing.output())
        self.assertGreaterEqual(len(connected), 2, refusing.output())
        self.stop_collector(refusing)
        self.assertEqual(os.listdir(refusing_dir), [], "a refused daemon leaves no files")

        serving = self.collector(
            listener, serving_dir, "--interface", "lo", "--filter", f"udp dst port {traffic.port}"
        )
        took = serving.wait_for_output(CAPTURING)
        self.assertLess(took, RECONNECT_WITHIN)
        served = self.deliver(serving_dir, "served", traffic, other)
        self.stop_collector(serving)
        self.assertTrue(fork.alive(), fork.output())
        self.assert_directory_holds(serving_dir, *served)

    def test_one_rpcap_dump_after_another(self) -> None:
        """
        C{rpcap-dump --active PORT -c N} ends; the next one, already
        listening on the same port (the first stops listening once the
        fork is in), gets the fork at once.
        """
        port = free_port()
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        traffic, other = self.traffic(), self.traffic()
        directory = self.make_dir()
        paths = [os.path.join(directory, f"{n}.pcap") for n in ("first", "second")]

        def dump(path: str) -> Dump:
            d = self.dump(
                "--active",
                endpoint,
                "-c",
                str(len(SIZES)),
                "-w",
                path,
                "-i",
                "lo",
                f"udp dst port {traffic.port}",
            )
            d.wait_for_stderr(f"waiting for a daemon on {endpoint}")
            return d

        first = dump(paths[0])
        fork = self.fork("-n", "-v", "-a", f"127.0.0.1,{port}")
        first.wait_for_stderr("capturing on lo")
        second = dump(paths[1])
        batches = []
        for prefix, d in (("first", first), ("second", second)):
            d.wait_for_stderr("capturing on lo", timeout=RECONNECT_WITHIN)
            sniffer = self.sniffer(traffic)
            sent = send_batch(traffic, other, prefix, SIZES)
            self.assertEqual(d.wait(), 0, d.stderr())
            self.assertRegex(d.stderr(), rf"rpcap-dump: {len(SIZES)} packets captured, \d+ dropped")
            batches.append((sniffer.stop(), sent))
        self.assertTrue(fork.alive(), fork.output())
        for path, (frames, sent) in zip(paths, batches):
            self.assert_file_holds(path, frames, sent)
