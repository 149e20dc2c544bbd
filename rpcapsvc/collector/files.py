"""
Capture files for the collector: pcapng (the default) and classic pcap, to a
file or a pipe, and a rotating set of files like C{dumpcap -b}.

L{CaptureFileWriter} turns batches of L{CapturedPacket} into a capture file on
a binary stream it is given.  It never seeks, and flushes after every batch,
so C{rpcap-dump -w - | tshark -r -} shows packets as they arrive.  A pcapng
file gets a Section Header Block naming C{rpcapsvc} as the application, one
Interface Description Block per interface (name, description - the rpcap URL -,
link type, snaplen, microsecond timestamps), one Enhanced Packet Block per
packet, and at close one Interface Statistics Block per interface whose
counters are known (C{isb_ifrecv}, C{isb_ifdrop}, the time they were taken),
as dumpcap writes them.  A pcap file has one link type and snaplen, so it
holds only interfaces that share a link type.

L{RotatingCaptureFiles} writes a series of such files, each complete on its
own, starting the next when one grows past a size or has been open too long,
and keeps at most a number of them (a ring buffer).  A L{DirectoryBudget}
shared by every series of a collector bounds the whole directory, whatever
series daemons make up: files per daemon, files in all, bytes in all.

The blocks are written with C{struct} rather than a library.  Both candidates
were measured writing 100,000 64-byte packets to a C{BytesIO}
(CPython 3.11):

  - python-pcapng 2.1.1 writes correct files with every block and option we
    need, but builds an object per block: 3.6 s (36 us a packet), too slow
    for a collector that must keep up with a busy link.
  - dpkt 1.9.8's C{Writer.writepkts} is fast (0.14 s), but its batch path
    writes every packet on interface 0 with its captured length as its
    original length, from a float timestamp, and dpkt has no Interface
    Statistics Block at all; its per-packet path (C{writepkt}, 0.6 s) still
    cannot write the statistics.
  - Packing each block with a precompiled C{struct} and joining a batch into
    one write: 0.06 s (0.6 us a packet).

The formats are small and fixed (U{https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html},
U{https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html}), and the
tests read every file back with tshark and capinfos.
"""

from __future__ import annotations

import os
import struct
import time
from typing import IO, Callable, Iterable, Optional

import attrs
from twisted.logger import Logger

from .. import __version__
from ..protocol.datachannel import CapturedPacket

FORMATS = ("pcapng", "pcap")
"""The formats L{CaptureFileWriter} writes, the first being the default."""

USER_APPLICATION = f"rpcapsvc {__version__}"
"""What the Section Header Block's C{shb_userappl} says wrote the file."""

STATS_COMMENT = "Counters provided by rpcapsvc"

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_USEC = 1_000_000

# pcapng (all little-endian: readers take either byte order).
_BLOCK_SHB = 0x0A0D0D0A
_BLOCK_IDB = 0x00000001
_BLOCK_ISB = 0x00000005
_BLOCK_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END = 0
_OPT_COMMENT = 1
_OPT_SHB_USERAPPL = 4
_OPT_IF_NAME = 2
_OPT_IF_DESCRIPTION = 3
_OPT_IF_TSRESOL = 9
_OPT_ISB_STARTTIME = 2
_OPT_ISB_ENDTIME = 3
_OPT_ISB_IFRECV = 4
_OPT_ISB_IFDROP = 5
_TSRESOL_MICROSECONDS = b"\x06"

_BLOCK_HEAD = struct.Struct("<II")
_U32_LE = struct.Struct("<I")
_SHB_BODY = struct.Struct("<IHHq")
_IDB_BODY = struct.Struct("<HHI")
_ISB_BODY = struct.Struct("<III")
_OPTION_HEAD = struct.Struct("<HH")
_U64_LE = struct.Struct("<Q")
_EPB_HEAD = struct.Struct("<IIIIIII")
"""Block type, total length, interface id, timestamp high and low, caplen, length."""
_EPB_OVERHEAD = _EPB_HEAD.size + 4  # the head and the trailing length
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")
"""Zero bytes that bring C{n} bytes to a multiple of four, by C{n & 3}."""

# pcap (native byte order, as libpcap writes it; readers take either).
_PCAP_MAGIC_USEC = 0xA1B2C3D4
_PCAP_HEADER = struct.Struct("=IHHiIII")
_PCAP_RECORD = struct.Struct("=IIII")

log = Logger()


_MAX_OPTION = 0xFFFC
"""The longest option value pcapng's 16-bit length holds, kept a multiple of 4."""


def _option(code: int, value: bytes) -> bytes:
    if len(value) > _MAX_OPTION:
        # Only text options get this long (a name or URL given on the command line): cut
        # on a character boundary so the value stays UTF-8.
        value = value[:_MAX_OPTION].decode("utf-8", "ignore").encode("utf-8")
    return _OPTION_HEAD.pack(code, len(value)) + value + _PADDING[len(value) & 3]


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    encoded = b"".join(_option(code, value) for code, value in options)
    return encoded + _OPTION_HEAD.pack(_OPT_END, 0) if encoded else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = _BLOCK_HEAD.size + len(body) + 4
    return _BLOCK_HEAD.pack(block_type, total) + body + _U32_LE.pack(total)


def _microseconds(seconds: float) -> int:
    return round(seconds * _USEC)


def section_header_block() -> bytes:
    """A pcapng Section Header Block of unknown length naming us as its writer."""
    options = _options([(_OPT_SHB_USERAPPL, USER_APPLICATION.encode())])
    return _block(_BLOCK_SHB, _SHB_BODY.pack(_BYTE_ORDER_MAGIC, 1, 0, -1) + options)


@attrs.frozen
class InterfaceInfo:
    """One interface of a capture file, as L{CaptureFileWriter.add_interface} took it."""

    name: str
    linktype: int
    snaplen: int
    description: str = ""
    started_at: Optional[float] = None
    """When capture on it started (C{isb_starttime}), if known."""

    def description_block(self) -> bytes:
        """The interface's pcapng Interface Description Block."""
        options = [(_OPT_IF_NAME, self.name.encode())]
        if self.description:
            options.append((_OPT_IF_DESCRIPTION, self.description.encode()))
        options.append((_OPT_IF_TSRESOL, _TSRESOL_MICROSECONDS))
        body = _IDB_BODY.pack(self.linktype, 0, self.snaplen) + _options(options)
        return _block(_BLOCK_IDB, body)


@attrs.frozen
class InterfaceStats:
    """An interface's counters since capture started, and when they were read."""

    received: int
    dropped: int
    ifdropped: int
    taken_at: float

    def statistics_block(self, interface_id: int, started_at: Optional[float]) -> bytes:
        """
        The pcapng Interface Statistics Block for these counters.

        C{isb_ifdrop} carries C{dropped} (libpcap's C{ps_drop}, packets the
        kernel had no room for), as dumpcap writes it and Wireshark shows it
        as the dropped count; C{ifdropped} (C{ps_ifdrop}) goes in the comment.
        """
        stamp = _microseconds(self.taken_at)
        options = [(_OPT_COMMENT, self.comment().encode())]
        if started_at is not None:
            options.append((_OPT_ISB_STARTTIME, self._timestamp(_microseconds(started_at))))
        options += [
            (_OPT_ISB_ENDTIME, self._timestamp(stamp)),
            (_OPT_ISB_IFRECV, _U64_LE.pack(self.received & _U64)),
            (_OPT_ISB_IFDROP, _U64_LE.pack(self.dropped & _U64)),
        ]
        body = _ISB_BODY.pack(interface_id, stamp >> 32, stamp & _U32) + _options(options)
        return _block(_BLOCK_ISB, body)

    def comment(self) -> str:
        return (
            f"{STATS_COMMENT}: {self.received} received, {self.dropped} dropped,"
            f" {self.ifdropped} dropped by the interface"
        )

    @staticmethod
    def _timestamp(usec: int) -> bytes:
        # isb_starttime/isb_endtime: high word first, then low, each in our byte order.
        return struct.pack("<II", usec >> 32, usec & _U32)


class CaptureFileWriter:
    """
    Writes captured packets to C{stream} as a pcapng or pcap file.

    Call L{add_interface} for each interface, then L{write_packets} with
    batches of its packets, L{set_stats} whenever its counters are read, and
    L{close} at the end.  Nothing is read back from the stream and it is
    never seeked, so a pipe will do.

    @param close_stream: whether L{close} closes C{stream}; pass C{False} for
        standard output.
    @param clock: a C{time.time}-like callable, read for the time statistics
        were taken and capture started.
    """

    def __init__(
        self,
        stream: IO[bytes],
        format: str = "pcapng",
        *,
        close_stream: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown capture file format {format!r}: choose from {', '.join(FORMATS)}")
        self._stream = stream
        self._format = format
        self._close_stream = close_stream
        self._clock = clock
        self._interfaces: list[InterfaceInfo] = []
        self._stats: dict[int, InterfaceStats] = {}
        self._bytes_written = 0
        self._packets_written = 0
        self._closed = False
        # pcap's one header waits for the first packets, so that every
        # interface added by then counts towards its snaplen.
        self._pcap_header_written = False
        if format == "pcapng":
            self._write(section_header_block())

    @property
    def format(self) -> str:
        return self._format

    @property
    def bytes_written(self) -> int:
        """How many bytes of the file have gone to the stream."""
        return self._bytes_written

    @property
    def packets_written(self) -> int:
        return self._packets_written

    @property
    def interfaces(self) -> list[InterfaceInfo]:
        """The interfaces added so far, indexed by interface id."""
        return list(self._interfaces)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_interface(
        self,
        name: str,
        linktype: int,
        snaplen: int,
        description: str = "",
        *,
        started_at: Optional[float] = None,
    ) -> int:
        """
        Add an interface whose packets the file will hold, and return the id
        to write them under.

        @param description: for pcapng's C{if_description}; the collector
            puts the rpcap URL there (C{rpcap://host:2002/eth0}).
        @param started_at: when capture on it started, for the statistics;
            now if not given.
        @raise ValueError: for a pcap file, if the link type differs from the
            first interface's, or the snaplen is bigger than the one the
            file's header already gave.
        """
        self._check_open()
        if not 0 <= snaplen <= _U32:
            raise ValueError(f"snaplen {snaplen} does not fit in 32 bits")
        check_linktype(linktype)
        if self._format != "pcapng":
            self._check_pcap_interface(name, linktype, snaplen)
        info = InterfaceInfo(
            name,
            linktype,
            snaplen,
            description,
            self._clock() if started_at is None else started_at,
        )
        self._interfaces.append(info)
        if self._format == "pcapng":
            self._write(info.description_block())
        return len(self._interfaces) - 1

    def _check_pcap_interface(self, name: str, linktype: int, snaplen: int) -> None:
        if not self._interfaces:
            return
        first = self._interfaces[0]
        if linktype != first.linktype:
            raise ValueError(
                f"a pcap file holds one link type: {name} has {linktype} but"
                f" {first.name} has {first.linktype}; write pcapng instead"
            )
        if self._pcap_header_written and snaplen > self._pcap_snaplen():
            raise ValueError(
                f"this pcap file's snaplen is {self._pcap_snaplen()}, smaller than {name}'s {snaplen}"
            )

    def _pcap_snaplen(self) -> int:
        return max(i.snaplen for i in self._interfaces)

    def write_packets(self, interface_id: int, packets: Iterable[CapturedPacket]) -> None:
        """
        Write a batch of packets captured on interface C{interface_id} and
        flush the stream.  Each packet's bytes are written as they are, with
        C{packet.length} as its original length, except that a file never
        holds what its header does not promise: bytes past the snaplen the
        header gives (the interface's in pcapng, the file's in pcap; a
        daemon should not send them) are cut off, and the original length
        is never less than what is written.
        """
        self._check_open()
        if not 0 <= interface_id < len(self._interfaces):
            raise ValueError(f"no interface {interface_id} in this capture file")
        parts: list[bytes] = []
        append = parts.append
        count = 0
        if self._format == "pcapng":
            # An IDB snaplen of 0 means no limit (RFC 9708's pcapng).
            limit = self._interfaces[interface_id].snaplen or _U32
            head = _EPB_HEAD.pack
            tail = _U32_LE.pack
            padding = _PADDING
            for packet in packets:
                data = packet.data
                if len(data) > limit:
                    data = data[:limit]
                caplen = len(data)
                total = _EPB_OVERHEAD + caplen + (-caplen & 3)
                usec = packet.ts_sec * _USEC + packet.ts_usec
                length = packet.length if packet.length >= caplen else caplen
                append(head(_BLOCK_EPB, total, interface_id, usec >> 32, usec & _U32, caplen, length & _U32))
                append(data)
                append(padding[caplen & 3] + tail(total))
                count += 1
        else:
            if not self._pcap_header_written:
                append(self._pcap_header())
            limit = self._pcap_snaplen() or _U32
            record = _PCAP_RECORD.pack
            for packet in packets:
                data = packet.data
                if len(data) > limit:
                    data = data[:limit]
                length = packet.length if packet.length >= len(data) else len(data)
                append(record(packet.ts_sec, packet.ts_usec, len(data), length & _U32))
                append(data)
                count += 1
        if parts:
            self._write(b"".join(parts))
        self._packets_written += count
        self._stream.flush()

    def _pcap_header(self) -> bytes:
        first = self._interfaces[0]
        self._pcap_header_written = True
        return _PCAP_HEADER.pack(_PCAP_MAGIC_USEC, 2, 4, 0, 0, self._pcap_snaplen(), first.linktype)

    def set_stats(
        self,
        interface_id: int,
        received: int,
        dropped: int,
        ifdropped: int = 0,
        *,
        taken_at: Optional[float] = None,
    ) -> None:
        """
        Record interface C{interface_id}'s counters since capture started,
        replacing any recorded before.  A pcapng file gets the last ones as
        its Interface Statistics Blocks at L{close}; pcap has nowhere to put
        them.

        @param taken_at: when the counters were read; now if not given.
        """
        self._check_open()
        if not 0 <= interface_id < len(self._interfaces):
            raise ValueError(f"no interface {interface_id} in this capture file")
        self._stats[interface_id] = InterfaceStats(
            received, dropped, ifdropped, self._clock() if taken_at is None else taken_at
        )

    def flush(self) -> None:
        self._check_open()
        self._stream.flush()

    def close(self, close_stream: Optional[bool] = None) -> None:
        """
        Finish the file: write the statistics, flush, and close the stream
        unless told not to (here or when constructed).  Closing twice does
        nothing.
        """
        if self._closed:
            return
        try:
            if self._format == "pcapng":
                blocks = [
                    self._stats[i].statistics_block(i, self._interfaces[i].started_at)
                    for i in sorted(self._stats)
                ]
                if blocks:
                    self._write(b"".join(blocks))
            elif self._interfaces and not self._pcap_header_written:
                self._write(self._pcap_header())
            self._stream.flush()
        finally:
            self._closed = True
            if self._close_stream if close_stream is None else close_stream:
                self._stream.close()

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._bytes_written += len(data)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the capture file is closed")


MAX_LINKTYPE = 0xFFFF
"""Link types fit in 16 bits: a pcapng interface holds no more, a pcap header no more in its type bits."""


class UnsupportedLinkType(ValueError):
    """A link type no capture file can hold (negative, or past the 16 bits pcap and pcapng give it)."""

    def __init__(self, linktype: int) -> None:
        super().__init__(
            f"link type {linktype} cannot be written to a capture file"
            " (pcap and pcapng hold 0 to 65535): the daemon sent a link type that is not one"
        )
        self.linktype = linktype


def check_linktype(linktype: int) -> None:
    """
    Refuse a link type no capture file can hold; call it before a file is
    made, so a capture that cannot be written leaves no empty file behind.

    @raise UnsupportedLinkType: not 0 to 65535.
    """
    if not 0 <= linktype <= MAX_LINKTYPE:
        raise UnsupportedLinkType(linktype)


@attrs.define(eq=False)
class _KeptFile:
    path: str
    owner: str
    history: FileHistory
    size: int = 0
    open: bool = True


class DirectoryBudget:
    """
    Bounds the files a collector keeps, across all its series: at most
    C{max_files_per_owner} files of one owner (a daemon's address), at most
    C{max_files} and C{max_bytes} in all.  Over a bound, the oldest closed
    file of the owner holding the most (files, or bytes for C{max_bytes})
    is deleted, so a daemon that makes up interface names, or sends more
    than its share, loses its own files first.  A file being written is
    never deleted: with C{max_bytes}, rotation (by size or time) is what
    lets the budget hold.
    """

    def __init__(
        self,
        max_files_per_owner: Optional[int] = None,
        max_files: Optional[int] = None,
        max_bytes: Optional[int] = None,
    ) -> None:
        self.max_files_per_owner = max_files_per_owner
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._files: dict[str, _KeptFile] = {}
        """Every file kept, oldest first."""
        self.total_bytes = 0
        self.deleted = 0
        """Files deleted to keep within the budget (metrics)."""

    def __len__(self) -> int:
        return len(self._files)

    def opened(self, path: str, owner: str, history: FileHistory) -> None:
        self._files[path] = _KeptFile(path, owner, history)
        self.enforce()

    def grown(self, path: str, size: int) -> None:
        """The file at C{path} now holds C{size} bytes."""
        kept = self._files.get(path)
        if kept is not None:
            self.total_bytes += size - kept.size
            kept.size = size
            if self.max_bytes is not None and self.total_bytes > self.max_bytes:
                self.enforce()

    def closed(self, path: str, size: int) -> None:
        kept = self._files.get(path)
        if kept is not None:
            kept.open = False
        self.grown(path, size)
        self.enforce()

    def forget(self, path: str) -> None:
        """The file was deleted by its own series' C{max_files}."""
        kept = self._files.pop(path, None)
        if kept is not None:
            self.total_bytes -= kept.size

    def enforce(self) -> None:
        while True:
            victim = self._victim()
            if victim is None:
                return
            self._delete(victim)

    def _victim(self) -> Optional[tuple[_KeptFile, str]]:
        """The file to delete next and why, if a bound is exceeded and a closed file can go."""
        if (
            self.max_files_per_owner is None
            and (self.max_files is None or len(self._files) <= self.max_files)
            and (self.max_bytes is None or self.total_bytes <= self.max_bytes)
        ):
            return None  # within the totals, and no per-owner bound: nothing to count
        files_of: dict[str, int] = {}
        bytes_of: dict[str, int] = {}
        oldest_closed: dict[str, _KeptFile] = {}
        for kept in self._files.values():
            files_of[kept.owner] = files_of.get(kept.owner, 0) + 1
            bytes_of[kept.owner] = bytes_of.get(kept.owner, 0) + kept.size
            if not kept.open and kept.owner not in oldest_closed:
                oldest_closed[kept.owner] = kept
        if not oldest_closed:
            return None
        if self.max_files_per_owner is not None:
            over = [o for o in oldest_closed if files_of[o] > self.max_files_per_owner]
            if over:
                owner = max(over, key=lambda o: files_of[o])
                return oldest_closed[owner], f"max_daemon_files={self.max_files_per_owner}"
        if self.max_files is not None and len(self._files) > self.max_files:
            owner = max(oldest_closed, key=lambda o: files_of[o])
            return oldest_closed[owner], f"max_total_files={self.max_files}"
        if self.max_bytes is not None and self.total_bytes > self.max_bytes:
            owner = max(oldest_closed, key=lambda o: bytes_of[o])
            return oldest_closed[owner], f"max_size={self.max_bytes}"
        return None

    def _delete(self, victim: tuple[_KeptFile, str]) -> None:
        kept, why = victim
        self.forget(kept.path)
        if kept.path in kept.history.paths:
            kept.history.paths.remove(kept.path)
        try:
            os.remove(kept.path)
        except FileNotFoundError:
            pass
        self.deleted += 1
        log.info("Deleted capture file {path}: {why}", path=kept.path, why=why)


@attrs.define
class FileHistory:
    """
    The files of one series (one daemon and interface), shared by the
    successive L{RotatingCaptureFiles} that write it, so that C{max_files}
    holds across reconnections; files still open are never deleted.
    """

    paths: list[str] = attrs.field(factory=list)
    open: set[str] = attrs.field(factory=set)


class RotatingCaptureFiles:
    """
    Capture files in C{directory} named C{<prefix>_<YYYYmmddTHHMMSS>_<n>.<format>},
    the UTC time each was opened and a five-digit sequence number, so that
    the names sort in the order written.  An existing file is never
    overwritten: the sequence number moves on past it.

    The interface is L{CaptureFileWriter}'s.  When the current file holds
    packets and has reached C{max_bytes}, or has been open C{max_seconds},
    it is closed (with the statistics known so far) and the next one opened
    with every interface added again, so each file stands alone.  The limits
    are checked by L{write_packets} and by L{tick}, which a caller with a
    timer should call now and then so that a quiet capture still rotates on
    time.  With C{max_files}, only the newest that many files written are
    kept: older ones are deleted, as C{dumpcap -b files:N} does.

    C{name}, if given, names the files instead: it is called with the time
    a file is opened and its sequence number (1, 2, ...; a number whose
    file exists already is passed over) and returns the path.

    C{budget}, shared by the writers of a collector, bounds every series
    together; C{owner} is whose files these are for it (the daemon).
    """

    def __init__(
        self,
        directory: str,
        prefix: str,
        format: str = "pcapng",
        max_bytes: Optional[int] = None,
        max_seconds: Optional[float] = None,
        clock: Callable[[], float] = time.time,
        max_files: Optional[int] = None,
        history: Optional[FileHistory] = None,
        name: Optional[Callable[[float, int], str]] = None,
        budget: Optional[DirectoryBudget] = None,
        owner: str = "",
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown capture file format {format!r}: choose from {', '.join(FORMATS)}")
        if max_files is not None and max_files < 1:
            raise ValueError("max_files must be at least 1")
        self._directory = directory
        self._prefix = prefix
        self._format = format
        self._max_bytes = max_bytes
        self._max_seconds = max_seconds
        self._clock = clock
        self._max_files = max_files
        self._name = name
        self._budget = budget
        self._owner = owner
        self._interfaces: list[InterfaceInfo] = []
        self._stats: dict[int, InterfaceStats] = {}
        self._history = history if history is not None else FileHistory()
        self._mine: list[str] = []
        self._sequence = 0
        self._closed = False
        self.files_opened = 0
        """Files this writer has started (the rotations and the first), deleted ones included."""
        self._writer, self._opened_at = self._open_next()

    @property
    def files(self) -> list[str]:
        """The paths this writer wrote and are still kept, oldest first; the last is the current file."""
        kept = set(self._history.paths)
        return [p for p in self._mine if p in kept]

    @property
    def current(self) -> CaptureFileWriter:
        return self._writer

    @property
    def bytes_written(self) -> int:
        """Bytes written to the current file."""
        return self._writer.bytes_written

    def add_interface(self, name: str, linktype: int, snaplen: int, description: str = "") -> int:
        """See L{CaptureFileWriter.add_interface}."""
        self._check_open()
        interface_id = self._writer.add_interface(name, linktype, snaplen, description)
        self._interfaces.append(self._writer.interfaces[interface_id])
        return interface_id

    def write_packets(self, interface_id: int, packets: Iterable[CapturedPacket]) -> None:
        """See L{CaptureFileWriter.write_packets}; rotates first or after if due."""
        self._check_open()
        self.tick()
        self._writer.write_packets(interface_id, packets)
        self.tick()

    def set_stats(self, interface_id: int, received: int, dropped: int, ifdropped: int = 0) -> None:
        """See L{CaptureFileWriter.set_stats}: every later file gets these until replaced."""
        self._check_open()
        taken_at = self._clock()
        self._writer.set_stats(interface_id, received, dropped, ifdropped, taken_at=taken_at)
        self._stats[interface_id] = InterfaceStats(received, dropped, ifdropped, taken_at)

    def due(self) -> bool:
        """Whether the current file is due to end: L{tick} would start the next."""
        self._check_open()
        return self._due()

    def tick(self) -> None:
        """Start the next file if the current one is due to end."""
        self._check_open()
        if self._budget is not None:
            self._budget.grown(self._mine[-1], self._writer.bytes_written)
        if self._due():
            self._rotate()

    def flush(self) -> None:
        self._check_open()
        self._writer.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._history.open.discard(self._mine[-1])
        if self._budget is not None:
            self._budget.closed(self._mine[-1], self._writer.bytes_written)
        self._prune()

    def rotate(self) -> None:
        """Finish the current file and go on in a new one (SIGHUP, for log-rotation tools)."""
        self._check_open()
        self._rotate()

    def _due(self) -> bool:
        writer = self._writer
        if self._max_bytes is not None and writer.packets_written and writer.bytes_written >= self._max_bytes:
            return True
        return self._max_seconds is not None and self._clock() - self._opened_at >= self._max_seconds

    def _rotate(self) -> None:
        old = self._writer
        old.close()
        self._history.open.discard(self._mine[-1])
        if self._budget is not None:
            self._budget.closed(self._mine[-1], old.bytes_written)
        log.info(
            "Capture file {path} done: packets={packets} bytes={size}",
            path=self._mine[-1],
            packets=old.packets_written,
            size=old.bytes_written,
        )
        self._writer, self._opened_at = self._open_next()
        for info in self._interfaces:
            self._writer.add_interface(
                info.name, info.linktype, info.snaplen, info.description, started_at=info.started_at
            )
        for interface_id, stats in self._stats.items():
            self._writer.set_stats(
                interface_id, stats.received, stats.dropped, stats.ifdropped, taken_at=stats.taken_at
            )
        self._prune()

    def _open_next(self) -> tuple[CaptureFileWriter, float]:
        now = self._clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        while True:
            self._sequence += 1
            if self._name is not None:
                path = self._name(now, self._sequence)
            else:
                path = os.path.join(
                    self._directory, f"{self._prefix}_{stamp}_{self._sequence:05d}.{self._format}"
                )
            try:
                stream = open(path, "xb")
            except FileExistsError:
                continue
            break
        self._mine.append(path)
        self.files_opened += 1
        self._history.paths.append(path)
        self._history.open.add(path)
        writer = CaptureFileWriter(stream, self._format, clock=self._clock)
        if self._budget is not None:
            self._budget.opened(path, self._owner, self._history)
            self._budget.grown(path, writer.bytes_written)
        return writer, now

    def _prune(self) -> None:
        if self._max_files is None:
            return
        history = self._history
        while len(history.paths) > self._max_files:
            closed = [p for p in history.paths if p not in history.open]
            if not closed:
                return
            oldest = closed[0]
            history.paths.remove(oldest)
            if self._budget is not None:
                self._budget.forget(oldest)
            try:
                os.remove(oldest)
            except FileNotFoundError:
                pass
            log.info("Deleted capture file {path}: max_files={count}", path=oldest, count=self._max_files)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the capture files are closed")
