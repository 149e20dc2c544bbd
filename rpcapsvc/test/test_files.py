"""
Tests for L{rpcapsvc.collector.files}: capture files written from known
packets and read back by Wireshark's own tools (tshark, capinfos), which is
what users will open them with.  Tests that need a tool skip, saying so,
where it is not installed.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rpcapsvc.collector.files import (
    USER_APPLICATION,
    CaptureFileWriter,
    FileHistory,
    RotatingCaptureFiles,
)
from rpcapsvc.protocol.datachannel import CapturedPacket

TSHARK = shutil.which("tshark")
CAPINFOS = shutil.which("capinfos")
NO_TSHARK = None if TSHARK else "tshark (Wireshark) is not installed: cannot read the files back"
NO_CAPINFOS = None if CAPINFOS else "capinfos (Wireshark) is not installed: cannot read the files back"

DLT_EN10MB = 1
DLT_NULL = 0
DLT_RAW = 101
ETH0_URL = "rpcap://capture.example:2002/eth0"
LO_URL = "rpcap://capture.example:2002/lo"


def require(*reasons: Optional[str]) -> None:
    """Skip the test, saying why, if a tool it needs is missing."""
    for reason in reasons:
        if reason:
            raise SkipTest(reason)


FRAME_FIELDS = (
    "frame.len",
    "frame.cap_len",
    "frame.time_epoch",
    "frame.interface_name",
    "frame.interface_description",
)
# tshark dissects a pcapng file's own blocks with this "file format" reader.
FILE_STRUCTURE = ("-X", "read_format:MIME Files Format")


def make_packets(count: int, start: int = 0, snaplen: int = 96) -> list[CapturedPacket]:
    """
    C{count} distinct packets numbered from C{start}: lengths cycle through
    every padding case, some are cut short by C{snaplen}, timestamps step by
    an odd number of microseconds and cross second boundaries.
    """
    packets = []
    for n in range(start, start + count):
        length = 40 + (n * 13) % 120
        data = (n.to_bytes(4, "big") * (length // 4 + 1))[: min(length, snaplen)]
        usec = 1_700_000_000_000_000 + n * 250_003
        packets.append(CapturedPacket(usec // 1_000_000, usec % 1_000_000, len(data), length, n, data))
    return packets


def expected_frame(packet: CapturedPacket, name: str, description: str) -> list[str]:
    return [
        str(packet.length),
        str(packet.caplen),
        f"{packet.ts_sec}.{packet.ts_usec:06d}000",
        name,
        description,
    ]


def run(args: Sequence[str], stdin: Optional[bytes] = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def tshark_fields(
    source: str, fields: Sequence[str], *options: str, stdin: Optional[bytes] = None
) -> list[list[str]]:
    """One row per packet (or, with L{FILE_STRUCTURE}, per file) of C{fields}."""
    args = [
        TSHARK or "tshark",
        "-r",
        source,
        *options,
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "aggregator=|",
    ]
    for field in fields:
        args += ["-e", field]
    return [line.split("\t") for line in run(args, stdin).splitlines()]


def tshark_frames_of(paths: Sequence[str]) -> list[list[list[str]]]:
    """L{FRAME_FIELDS} of every packet of each file, the tsharks run side by side."""
    procs = []
    for path in paths:
        args = [TSHARK or "tshark", "-r", path, "-T", "fields", "-E", "separator=/t"]
        for field in FRAME_FIELDS:
            args += ["-e", field]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for path, proc in zip(paths, procs):
        out, err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise AssertionError(f"tshark cannot read {path}: {err.decode(errors='replace')}")
        results.append([line.split("\t") for line in out.decode().splitlines()])
    return results


def capinfos(path: str) -> str:
    return run([CAPINFOS or "capinfos", "-M", path])


def capinfos_interfaces(path: str) -> list[dict[str, str]]:
    """capinfos' per-interface "key = value" lines, one dict per interface."""
    interfaces: list[dict[str, str]] = []
    for line in capinfos(path).splitlines():
        if re.match(r"Interface #\d+ info:", line):
            interfaces.append({})
        elif interfaces and " = " in line:
            key, _, value = line.strip().partition(" = ")
            interfaces[-1][key] = value
    return interfaces


def capinfos_value(path: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}:\s*(.*)$", capinfos(path), re.MULTILINE)
    assert match, f"capinfos printed no {key!r} for {path}"
    return match.group(1).strip()


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TempDirMixin:
    mktemp: Callable[[], str]

    def make_directory(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path


def write_two_interface_pcapng(
    path: str, clock: Callable[[], float] = time.time
) -> tuple[list[CapturedPacket], list[CapturedPacket]]:
    """eth0 (Ethernet, snaplen 96) and lo (DLT_NULL, snaplen 65535), interleaved batches."""
    eth0 = make_packets(30, snaplen=96)
    lo = make_packets(7, start=1000, snaplen=65535)
    with open(path, "wb") as stream:
        writer = CaptureFileWriter(stream, clock=clock)
        eth0_id = writer.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        writer.write_packets(eth0_id, eth0[:10])
        lo_id = writer.add_interface("lo", DLT_NULL, 65535, LO_URL)
        writer.write_packets(lo_id, lo)
        writer.write_packets(eth0_id, eth0[10:])
        writer.write_packets(eth0_id, [])
        writer.set_stats(eth0_id, received=50, dropped=3, ifdropped=1)
        writer.set_stats(lo_id, received=9, dropped=0)
        writer.set_stats(eth0_id, received=1234, dropped=17, ifdropped=2)  # the last counters win
        writer.close()
    return eth0, lo


class PcapngReadBackTests(TempDirMixin, SynchronousTestCase):
    """What tshark and capinfos see in a pcapng file we wrote."""

    def setUp(self) -> None:
        self.path = os.path.join(self.make_directory(), "capture.pcapng")
        self.eth0, self.lo = write_two_interface_pcapng(self.path, FakeClock(1_700_000_100.5))

    def test_every_packet_with_lengths_times_and_interface(self) -> None:
        require(NO_TSHARK)
        expected = (
            [expected_frame(p, "eth0", ETH0_URL) for p in self.eth0[:10]]
            + [expected_frame(p, "lo", LO_URL) for p in self.lo]
            + [expected_frame(p, "eth0", ETH0_URL) for p in self.eth0[10:]]
        )
        self.assertEqual(tshark_fields(self.path, FRAME_FIELDS), expected)
        self.assertTrue(any(p.caplen < p.length for p in self.eth0), "no packet cut by snaplen")

    def test_interfaces_snaplen_link_type_and_application(self) -> None:
        require(NO_CAPINFOS)
        eth0, lo = capinfos_interfaces(self.path)
        self.assertEqual(
            (eth0["Name"], eth0["Description"], eth0["Capture length"], eth0["Encapsulation"]),
            ("eth0", ETH0_URL, "96", "Ethernet (1 - ether)"),
        )
        self.assertEqual((lo["Name"], lo["Description"], lo["Capture length"]), ("lo", LO_URL, "65535"))
        self.assertEqual((eth0["Time precision"], lo["Time precision"]), ("microseconds (6)",) * 2)
        self.assertEqual((eth0["Number of packets"], lo["Number of packets"]), ("30", "7"))
        self.assertEqual((eth0["Number of stat entries"], lo["Number of stat entries"]), ("1", "1"))
        self.assertEqual(capinfos_value(self.path, "Capture application"), USER_APPLICATION)
        self.assertTrue(USER_APPLICATION.startswith("rpcapsvc "))
        self.assertEqual(capinfos_value(self.path, "File type"), "pcapng")

    def test_drop_counts_in_interface_statistics(self) -> None:
        """
        The last counters set for each interface, in an Interface Statistics
        Block that tshark's pcapng file dissector decodes.
        """
        require(NO_TSHARK)
        [[block_types, received, dropped, comments]] = tshark_fields(
            self.path,
            [
                "pcapng.block.type",
                "pcapng.options.option.data.interface.received",
                "pcapng.options.option.data.interface.dropped",
                "pcapng.options.option.data.comment",
            ],
            *FILE_STRUCTURE,
        )
        types = block_types.split("|")
        self.assertEqual(types[:2], ["0x0a0d0d0a", "0x00000001"])  # SHB, then eth0's IDB
        self.assertEqual(types.count("0x00000006"), 37)  # EPBs
        self.assertEqual(types[-2:], ["0x00000005", "0x00000005"])  # one ISB per interface, last
        self.assertEqual((received, dropped), ("1234|9", "17|0"))
        self.assertEqual(
            comments.split("|"),
            [
                "Counters provided by rpcapsvc: 1234 received, 17 dropped, 2 dropped by the interface",
                "Counters provided by rpcapsvc: 9 received, 0 dropped, 0 dropped by the interface",
            ],
        )

    def test_a_second_reader_agrees(self) -> None:
        """python-pcapng, written apart from Wireshark, reads the same blocks."""
        try:
            from pcapng import FileScanner, blocks
        except ImportError:
            raise SkipTest("python-pcapng is not installed: no second reader") from None
        with open(self.path, "rb") as stream:
            read = list(FileScanner(stream))
        shb, eth0_idb = read[0], read[1]
        self.assertEqual(shb.options["shb_userappl"], USER_APPLICATION)
        self.assertEqual(
            (eth0_idb.link_type, eth0_idb.snaplen, eth0_idb.options["if_name"]),
            (DLT_EN10MB, 96, "eth0"),
        )
        self.assertEqual(eth0_idb.options["if_description"], ETH0_URL)
        self.assertEqual(eth0_idb.options["if_tsresol"], b"\x06")
        epbs = [b for b in read if isinstance(b, blocks.EnhancedPacket)]
        self.assertEqual(
            [
                (b.interface_id, b.packet_data, b.packet_len, b.timestamp_high << 32 | b.timestamp_low)
                for b in epbs
            ],
            [
                (i, p.data, p.length, p.ts_sec * 1_000_000 + p.ts_usec)
                for i, p in [(0, p) for p in self.eth0[:10]]
                + [(1, p) for p in self.lo]
                + [(0, p) for p in self.eth0[10:]]
            ],
        )
        isbs = [b for b in read if isinstance(b, blocks.InterfaceStatistics)]
        self.assertEqual(
            [(b.interface_id, b.options["isb_ifrecv"], b.options["isb_ifdrop"]) for b in isbs],
            [(0, 1234, 17), (1, 9, 0)],
        )
        self.assertEqual(isbs[0].timestamp, 1_700_000_100.5)  # when the counters were taken


class CaptureFileWriterTests(TempDirMixin, SynchronousTestCase):
    """The writer's API, on streams in memory."""

    def test_bytes_written_counts_the_whole_stream(self) -> None:
        for format in ("pcapng", "pcap"):
            stream = io.BytesIO()
            writer = CaptureFileWriter(stream, format, close_stream=False)
            writer.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
            writer.write_packets(0, make_packets(11))
            writer.set_stats(0, 11, 0)
            self.assertEqual(writer.bytes_written, len(stream.getvalue()))
            writer.close()
            self.assertEqual(writer.bytes_written, len(stream.getvalue()), format)
            self.assertEqual(writer.packets_written, 11)

    def test_pcapng_blocks_are_whole_and_aligned(self) -> None:
        """Every block's length is in its head and its tail, a multiple of four."""
        stream = io.BytesIO()
        writer = CaptureFileWriter(stream, close_stream=False)
        writer.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        writer.write_packets(0, make_packets(8))
        writer.set_stats(0, 8, 0)
        writer.close()
        data = stream.getvalue()
        offset = 0
        types = []
        while offset < len(data):
            block_type, length = struct.unpack_from("<II", data, offset)
            self.assertEqual(length % 4, 0)
            self.assertEqual(struct.unpack_from("<I", data, offset + length - 4), (length,))
            types.append(block_type)
            offset += length
        self.assertEqual(offset, len(data))
        self.assertEqual(types, [0x0A0D0D0A, 1] + [6] * 8 + [5])

    def test_names_longer_than_an_option_holds(self) -> None:
        """
        A name or URL past pcapng's 16-bit option length (given with -i, or
        sent by a daemon) is cut on a character boundary: the file is whole,
        tshark reads it, and the name it shows is the name's start.
        """
        require(NO_TSHARK)
        path = os.path.join(self.make_directory(), "long.pcapng")
        name = "\u00e9" * 40_000  # 80,000 bytes of UTF-8
        writer = CaptureFileWriter(open(path, "wb"))
        writer.add_interface(name, DLT_EN10MB, 96, "rpcap://host/" + name)
        writer.write_packets(0, make_packets(3))
        writer.close()
        [[shown, frames]] = tshark_fields(
            path, ["frame.interface_name", "frame.number"], "-Y", "frame.number == 3"
        )
        self.assertEqual(frames, "3")
        self.assertTrue(name.startswith(shown) and len(shown.encode()) >= 65_000, len(shown))

    def test_close_closes_the_stream_unless_told_not_to(self) -> None:
        owned = io.BytesIO()
        CaptureFileWriter(owned).close()
        self.assertTrue(owned.closed)
        stdout_like = io.BytesIO()
        CaptureFileWriter(stdout_like, close_stream=False).close()
        self.assertFalse(stdout_like.closed)
        per_call = io.BytesIO()
        CaptureFileWriter(per_call).close(close_stream=False)
        self.assertFalse(per_call.closed)

    def test_closed_writer(self) -> None:
        stream = io.BytesIO()
        writer = CaptureFileWriter(stream, close_stream=False)
        writer.add_interface("eth0", DLT_EN10MB, 96)
        writer.close()
        size = len(stream.getvalue())
        writer.close()  # twice is fine and writes nothing
        self.assertEqual(len(stream.getvalue()), size)
        self.assertRaises(ValueError, writer.write_packets, 0, make_packets(1))
        self.assertRaises(ValueError, writer.add_interface, "lo", DLT_NULL, 96)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, CaptureFileWriter, io.BytesIO(), "erf")
        writer = CaptureFileWriter(io.BytesIO())
        self.assertRaises(ValueError, writer.write_packets, 0, make_packets(1))
        writer.add_interface("eth0", DLT_EN10MB, 96)
        self.assertRaises(ValueError, writer.write_packets, 1, make_packets(1))
        self.assertRaises(ValueError, writer.set_stats, 1, 0, 0)
        self.assertRaises(ValueError, writer.add_interface, "big", 0x10000, 96)


class PcapTests(TempDirMixin, SynchronousTestCase):
    """The classic libpcap format."""

    def write(self, packets: list[CapturedPacket], snaplen: int = 96) -> str:
        path = os.path.join(self.make_directory(), "capture.pcap")
        with open(path, "wb") as stream:
            writer = CaptureFileWriter(stream, "pcap")
            writer.add_interface("eth0", DLT_EN10MB, snaplen, ETH0_URL)
            writer.write_packets(0, packets[:5])
            writer.write_packets(0, packets[5:])
            writer.set_stats(0, 100, 3)  # pcap has nowhere to put these
            writer.close()
        return path

    def test_read_back(self) -> None:
        require(NO_TSHARK, NO_CAPINFOS)
        packets = make_packets(25)
        path = self.write(packets)
        self.assertEqual(
            tshark_fields(path, FRAME_FIELDS[:3]),
            [expected_frame(p, "", "")[:3] for p in packets],
        )
        self.assertEqual(capinfos_value(path, "File type"), "pcap")
        self.assertEqual(capinfos_value(path, "Packet size limit"), "file hdr: 96 bytes")
        self.assertEqual(capinfos_value(path, "File encapsulation"), "ether")
        self.assertEqual(capinfos_value(path, "File timestamp precision"), "microseconds (6)")

    def test_layout(self) -> None:
        """libpcap's own: microsecond magic in native order, records only, no statistics."""
        packets = make_packets(4)
        path = self.write(packets)
        with open(path, "rb") as stream:
            data = stream.read()
        self.assertEqual(struct.unpack_from("=IHHiIII", data), (0xA1B2C3D4, 2, 4, 0, 0, 96, DLT_EN10MB))
        self.assertEqual(len(data), 24 + sum(16 + p.caplen for p in packets))

    def test_one_link_type_only(self) -> None:
        writer = CaptureFileWriter(io.BytesIO(), "pcap")
        writer.add_interface("eth0", DLT_EN10MB, 96)
        with self.assertRaises(ValueError) as caught:
            writer.add_interface("tun0", DLT_RAW, 96)
        self.assertIn("pcapng", str(caught.exception))
        # The same link type is fine: the header takes the biggest snaplen...
        stream = io.BytesIO()
        writer = CaptureFileWriter(stream, "pcap", close_stream=False)
        writer.add_interface("eth0", DLT_EN10MB, 96)
        writer.add_interface("eth1", DLT_EN10MB, 1500)
        writer.write_packets(1, make_packets(1))
        self.assertEqual(struct.unpack_from("=I", stream.getvalue(), 16), (1500,))
        # ...but once written it cannot grow.
        self.assertRaises(ValueError, writer.add_interface, "eth2", DLT_EN10MB, 9000)
        writer.add_interface("eth2", DLT_EN10MB, 200)

    def test_no_packets(self) -> None:
        require(NO_CAPINFOS)
        path = self.write([], snaplen=262144)
        self.assertEqual(capinfos_value(path, "Number of packets"), "0")
        self.assertEqual(capinfos_value(path, "Packet size limit"), "file hdr: 262144 bytes")


class PipeTests(SynchronousTestCase):
    """Standard output is a pipe: no seeking, and data out after every batch."""

    def test_stream_through_a_pipe(self) -> None:
        require(NO_TSHARK)
        read_fd, write_fd = os.pipe()
        received = bytearray()
        arrived = threading.Condition()

        def reader() -> None:
            with os.fdopen(read_fd, "rb", buffering=0) as pipe:
                while chunk := pipe.read(65536):
                    with arrived:
                        received.extend(chunk)
                        arrived.notify_all()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        pipe = os.fdopen(write_fd, "wb")
        self.assertFalse(pipe.seekable())
        writer = CaptureFileWriter(pipe)
        writer.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        packets = make_packets(40)
        for start in range(0, 40, 10):
            writer.write_packets(0, packets[start : start + 10])
            with arrived:  # the batch is through before anything else is written
                self.assertTrue(
                    arrived.wait_for(lambda: len(received) == writer.bytes_written, timeout=10),
                    f"{len(received)} of {writer.bytes_written} bytes came through",
                )
        writer.set_stats(0, 40, 0)
        writer.close()
        self.assertTrue(pipe.closed)
        thread.join(10)
        self.assertEqual(
            tshark_fields("-", FRAME_FIELDS, stdin=bytes(received)),
            [expected_frame(p, "eth0", ETH0_URL) for p in packets],
        )

    def test_tshark_shows_packets_before_the_end(self) -> None:
        """C{rpcap-dump -w - | tshark -r -}: packets show up as they are written."""
        require(NO_TSHARK)
        tshark = subprocess.Popen(
            [TSHARK or "tshark", "-l", "-r", "-", "-T", "fields", "-e", "frame.len"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        watchdog = threading.Timer(15, tshark.kill)
        watchdog.start()
        self.addCleanup(watchdog.cancel)
        assert tshark.stdin is not None and tshark.stdout is not None
        writer = CaptureFileWriter(tshark.stdin)
        writer.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        packets = make_packets(6)
        writer.write_packets(0, packets[:3])
        first = [tshark.stdout.readline() for _ in range(3)]  # the file is still open
        self.assertEqual(first, [f"{p.length}\n".encode() for p in packets[:3]])
        writer.write_packets(0, packets[3:])
        writer.close()
        rest = tshark.stdout.read()
        self.assertEqual(tshark.wait(), 0)
        self.assertEqual(rest, b"".join(f"{p.length}\n".encode() for p in packets[3:]))


def file_packets(frames: list[list[str]]) -> list[str]:
    """The packets' timestamps, which L{make_packets} makes unique."""
    return [frame[2] for frame in frames]


class RotatingCaptureFilesTests(TempDirMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.make_directory()
        self.clock = FakeClock()

    def rotating(self, **kwargs: object) -> RotatingCaptureFiles:
        files = RotatingCaptureFiles(self.directory, "cap", clock=self.clock, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(files.close)
        return files

    def assert_standalone_files(
        self, paths: list[str], packets: list[CapturedPacket], interfaces: Sequence[tuple[str, str]]
    ) -> list[list[list[str]]]:
        """
        tshark reads each file on its own, every interface described in each,
        and together they hold every packet once, in order.  Only the last
        may be empty: it was opened when the one before it filled up.
        """
        frames = tshark_frames_of(paths)
        for path, per_file in zip(paths[:-1], frames):
            self.assertTrue(per_file, f"{path} holds no packets")
        for path, per_file in zip(paths, frames):
            for frame in per_file:
                self.assertIn((frame[3], frame[4]), interfaces, path)
        everything = [frame for per_file in frames for frame in per_file]
        self.assertEqual([f[:3] for f in everything], [expected_frame(p, "", "")[:3] for p in packets])
        self.assertEqual(len(set(file_packets(everything))), len(packets))
        return frames

    def test_rotate_by_size(self) -> None:
        require(NO_TSHARK, NO_CAPINFOS)
        files = self.rotating(max_bytes=4000)
        eth0 = files.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        lo = files.add_interface("lo", DLT_NULL, 65535, LO_URL)
        packets = make_packets(120)
        for n in range(0, 120, 10):
            files.write_packets(eth0 if n % 20 else lo, packets[n : n + 10])
            files.set_stats(eth0, received=n + 10, dropped=n // 10)
            self.clock.advance(0.4)
        files.close()
        paths = files.files
        self.assertGreaterEqual(len(paths), 4)
        frames = self.assert_standalone_files(paths, packets, [("eth0", ETH0_URL), ("lo", LO_URL)])
        for path in paths[:-1]:
            self.assertGreaterEqual(os.path.getsize(path), 4000)
            self.assertLess(os.path.getsize(path), 4000 + 10 * 200, "a file went on past its size")
        for path in paths:
            interfaces = capinfos_interfaces(path)
            self.assertEqual([i["Name"] for i in interfaces], ["eth0", "lo"])
            self.assertEqual([i["Capture length"] for i in interfaces], ["96", "65535"])
            self.assertEqual(interfaces[0]["Number of stat entries"], "1")
        self.assertEqual(sum(len(f) for f in frames), 120)
        self.assertEqual(sorted(os.listdir(self.directory)), [os.path.basename(p) for p in paths])

    def test_rotate_by_time(self) -> None:
        """
        Files end after max_seconds whether packets come or not (L{tick}), and
        each gets the counters known when it ended.
        """
        require(NO_TSHARK)
        files = self.rotating(max_seconds=60)
        eth0 = files.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        packets = make_packets(36)
        for n in range(0, 36, 4):  # four packets every 20 s: three batches a file
            files.write_packets(eth0, packets[n : n + 4])
            files.set_stats(eth0, received=n + 4, dropped=n)
            self.clock.advance(20)
            files.tick()
        self.assertEqual(len(files.files), 4)  # the fourth was opened by the last tick
        self.clock.advance(59)
        files.tick()
        self.assertEqual(len(files.files), 4)
        files.close()
        paths = files.files
        frames = self.assert_standalone_files(paths[:3], packets, [("eth0", ETH0_URL)])
        self.assertEqual([len(f) for f in frames], [12, 12, 12])
        self.assertEqual(tshark_fields(paths[3], ["frame.len"]), [])  # readable, though empty
        drops = [
            tshark_fields(path, ["pcapng.options.option.data.interface.dropped"], *FILE_STRUCTURE)[0][0]
            for path in paths
        ]
        self.assertEqual(drops, ["8", "20", "32", "32"])

    def test_names_sort_in_order_written(self) -> None:
        files = self.rotating(max_seconds=0.5)
        files.add_interface("eth0", DLT_EN10MB, 96)
        for step in (0.5, 0.5, 0.5, 1000.0, 0.5, 36000.0):
            files.write_packets(0, make_packets(1))
            self.clock.advance(step)
            files.tick()
        paths = files.files
        self.assertEqual(len(paths), 7)
        self.assertEqual(sorted(paths), paths)
        self.assertEqual(
            os.path.basename(paths[0]),
            f"cap_{time.strftime('%Y%m%dT%H%M%S', time.gmtime(1_700_000_000))}_00001.pcapng",
        )
        for path in paths:
            self.assertRegex(os.path.basename(path), r"^cap_\d{8}T\d{6}_\d{5}\.pcapng$")

    def test_never_overwrites(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        taken = os.path.join(self.directory, f"cap_{stamp}_00001.pcapng")
        with open(taken, "wb") as stream:
            stream.write(b"someone else's capture")
        files = self.rotating()
        files.add_interface("eth0", DLT_EN10MB, 96)
        files.close()
        self.assertEqual(files.files, [os.path.join(self.directory, f"cap_{stamp}_00002.pcapng")])
        with open(taken, "rb") as stream:
            self.assertEqual(stream.read(), b"someone else's capture")

    def test_max_files_keeps_the_newest(self) -> None:
        require(NO_TSHARK)
        files = self.rotating(max_seconds=10, max_files=3)
        eth0 = files.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        packets = make_packets(8)
        written = []
        for n in range(8):  # one packet a file
            files.tick()
            written.append(files.files[-1])
            files.write_packets(eth0, packets[n : n + 1])
            self.clock.advance(10)
        files.close()
        self.assertEqual(len(set(written)), 8)
        self.assertEqual(files.files, written[-3:])
        self.assertEqual(sorted(os.listdir(self.directory)), [os.path.basename(p) for p in files.files])
        self.assert_standalone_files(files.files, packets[5:], [("eth0", ETH0_URL)])

    def test_max_files_holds_across_reconnections(self) -> None:
        """
        Successive series of one daemon and interface share a history: the
        limit counts them all, and a file still being written is never deleted.
        """
        history = FileHistory()
        first = self.rotating(max_seconds=10, max_files=2, history=history)
        first.add_interface("eth0", DLT_EN10MB, 96)
        for _ in range(3):
            first.write_packets(0, make_packets(1))
            self.clock.advance(10)
            first.tick()
        first_open = first.files[-1]
        second = self.rotating(max_seconds=10, max_files=2, history=history)
        second.add_interface("eth0", DLT_EN10MB, 96)
        second.write_packets(0, make_packets(1))
        self.clock.advance(10)
        second.tick()
        # Both open files are kept even though the limit is 2 and three files exist.
        self.assertIn(first_open, history.paths)
        self.assertTrue(os.path.exists(first_open))
        first.close()
        second.close()
        self.assertEqual(len(history.paths), 2)
        self.assertEqual(
            sorted(os.listdir(self.directory)), sorted(os.path.basename(p) for p in history.paths)
        )

    def test_pcap_files_each_have_a_header(self) -> None:
        require(NO_TSHARK)
        files = self.rotating(format="pcap", max_bytes=1000)
        files.add_interface("eth0", DLT_EN10MB, 96, ETH0_URL)
        packets = make_packets(40)
        for n in range(0, 40, 5):
            files.write_packets(0, packets[n : n + 5])
        files.close()
        self.assertGreaterEqual(len(files.files), 3)
        self.assertTrue(all(p.endswith(".pcap") for p in files.files))
        self.assert_standalone_files(files.files, packets, [("", "")])

    def test_closed(self) -> None:
        files = self.rotating()
        files.add_interface("eth0", DLT_EN10MB, 96)
        files.close()
        files.close()
        self.assertRaises(ValueError, files.write_packets, 0, make_packets(1))
        self.assertRaises(ValueError, files.tick)
        self.assertRaises(ValueError, RotatingCaptureFiles, self.directory, "x", max_files=0)


if sys.platform == "win32":  # pragma: no cover - pipes and tools differ there
    PipeTests.skip = "POSIX pipes only"  # type: ignore[attr-defined]
