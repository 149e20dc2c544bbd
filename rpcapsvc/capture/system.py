"""
The capture system: what the daemon needs from the OS to capture packets.

L{ICaptureSystem} and L{ICaptureHandle} are the seam between the session and
libpcap.  L{PcapySystem} is the real one, over pcapy-ng; tests and embedders
use L{rpcapsvc.testing.FakeCaptureSystem}.
"""

from __future__ import annotations

import ctypes
import enum
import socket
import time
from typing import Optional

import attrs
from zope.interface import Attribute, Interface, implementer

from ..protocol import bpf
from ..protocol.datachannel import BATCH_RECORD, PacketBatch
from ..protocol.wire import BpfProgram, InterfaceInfo

DEFAULT_BUFFER_SIZE = 2 * 1024 * 1024
PROBE_SNAPLEN = 1500


class CaptureError(Exception):
    """The OS or libpcap refused a capture operation; the text says why."""


class Direction(enum.Enum):
    BOTH = "inout"
    IN = "in"
    OUT = "out"


@attrs.frozen
class CaptureOptions:
    snaplen: int = bpf.MAXIMUM_SNAPLEN
    promiscuous: bool = False
    read_timeout_ms: int = 1000
    direction: Direction = Direction.BOTH
    buffer_size: int = DEFAULT_BUFFER_SIZE


@attrs.frozen
class CaptureStats:
    received: int = 0
    dropped: int = 0
    interface_dropped: int = 0


class ICaptureHandle(Interface):
    """One open, activated, non-blocking capture."""

    linktype = Attribute("The DLT_* link type of the capture.")

    def fileno() -> int:
        """A descriptor that becomes readable when packets are waiting."""

    def read_batch(max_packets: int) -> PacketBatch:
        """Up to C{max_packets} packets; an empty batch when none are waiting."""

    def set_filter(program: BpfProgram) -> None:
        """Replace the capture's filter (validated by the caller)."""

    def stats() -> CaptureStats:
        """libpcap's counters for this capture."""

    def close() -> None:
        """Release the capture; idempotent."""


class ICaptureSystem(Interface):
    def list_interfaces() -> list[InterfaceInfo]:
        """Every interface libpcap can capture on, with its addresses."""

    def probe_linktype(device: str) -> int:
        """Open C{device} briefly and return its link type (raise L{CaptureError})."""

    def open(device: str, options: CaptureOptions) -> ICaptureHandle:
        """Open and activate a capture (raise L{CaptureError})."""


def keep_batch_buffers_in_heap() -> bool:
    """
    Ask glibc to serve large allocations from its heap and keep freed memory
    there.  Every batch read from a capture is a buffer of hundreds of KB;
    by default glibc maps each one fresh and unmaps it when freed, and the
    page faults of mapping it again cost more than forwarding the packets
    (measured: 1000-byte TCP forwarding at 10k pps went from 5.5 to 4 us of
    CPU a packet).  Process-wide, so the daemon calls it, not the library.
    Returns whether the allocator took the settings.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(
        mallopt(m_trim_threshold, 128 * 1024 * 1024)
    )


# --- Linux kernel filters ----------------------------------------------------

SO_ATTACH_FILTER = 26


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def attach_kernel_filter(fd: int, program: BpfProgram) -> None:
    """Attach a classic BPF program to the packet socket C{fd}."""
    insns = (_SockFilter * len(program.instructions))(
        *(_SockFilter(i.code, i.jt, i.jf, i.k & 0xFFFFFFFF) for i in program.instructions)
    )
    fprog = _SockFprog(len(program.instructions), insns)
    sock = socket.socket(fileno=socket.dup(fd))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    finally:
        sock.close()


@implementer(ICaptureHandle)
class PcapyHandle:
    """
    A live pcapy-ng capture.  It captures whole frames (the client's snaplen
    is applied when packets are framed, so original lengths survive) and
    filters in the kernel.  Packets already taken off the wire when a filter
    is placed are filtered here with the same program, so a new filter holds
    from the moment it is set.
    """

    def __init__(self, reader: object) -> None:
        self._reader = reader
        self._fd: int = reader.getfd()  # type: ignore[attr-defined]
        self.linktype: int = reader.datalink()  # type: ignore[attr-defined]
        self._program: Optional[BpfProgram] = None
        self._userland_before_us = 0
        self._userland_always = False
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    def set_filter(self, program: BpfProgram) -> None:
        kernel_program: Optional[BpfProgram] = bpf.for_kernel(program)
        if self.linktype == bpf.DLT_LINUX_SLL and kernel_program is not None:
            kernel_program = bpf.for_cooked_kernel(kernel_program)
        try:
            attach_kernel_filter(self._fd, bpf.ACCEPT_ALL if kernel_program is None else kernel_program)
        except OSError as e:
            raise CaptureError(f"the kernel refused the filter: {e}") from e
        self._program = program
        self._userland_always = kernel_program is None
        # Everything stamped before now may have been captured under the old
        # filter: filter it here with the new one.
        self._userland_before_us = int(time.time() * 1_000_000) + 1

    def read_batch(self, max_packets: int) -> PacketBatch:
        import pcapy

        try:
            data, records = self._reader.next_batch(max_packets)  # type: ignore[attr-defined]
        except pcapy.PcapError as e:
            raise CaptureError(str(e)) from e
        batch = PacketBatch(data, records)
        if self._program is not None and records and self._needs_userland(records):
            batch = self._filter_in_userland(batch)
        return batch

    def _needs_userland(self, records: bytes) -> bool:
        if self._userland_always:
            return True
        # Records are in capture order: only the first can be the oldest.
        sec, usec, _, _ = BATCH_RECORD.unpack_from(records, 0)
        return sec * 1_000_000 + usec < self._userland_before_us

    def _filter_in_userland(self, batch: PacketBatch) -> PacketBatch:
        assert self._program is not None
        kept = []
        cutoff = 0 if self._userland_always else self._userland_before_us
        for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records):
            packet = batch.data[off : off + length]
            if cutoff and sec * 1_000_000 + usec >= cutoff:
                kept.append((sec, usec, packet))
            elif bpf.run(self._program, packet):
                kept.append((sec, usec, packet))
        return PacketBatch.from_packets(kept)

    def stats(self) -> CaptureStats:
        import pcapy

        try:
            recv, drop, ifdrop = self._reader.stats()  # type: ignore[attr-defined]
        except pcapy.PcapError as e:
            raise CaptureError(str(e)) from e
        return CaptureStats(recv, drop, ifdrop)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._reader.close()  # type: ignore[attr-defined]


_DIRECTIONS = {Direction.IN: 1, Direction.OUT: 2, Direction.BOTH: 0}


@implementer(ICaptureSystem)
class PcapySystem:
    """The real capture system: libpcap through pcapy-ng."""

    def list_interfaces(self) -> list[InterfaceInfo]:
        import pcapy

        from .interfaces import list_interfaces

        try:
            return list_interfaces()
        except pcapy.PcapError as e:
            raise CaptureError(f"cannot list interfaces: {e}") from e

    def probe_linktype(self, device: str) -> int:
        import pcapy

        try:
            reader = pcapy.open_live(device, PROBE_SNAPLEN, 0, 1000)
        except pcapy.PcapError as e:
            raise CaptureError(str(e)) from e
        try:
            return int(reader.datalink())
        finally:
            reader.close()

    def open(self, device: str, options: CaptureOptions) -> ICaptureHandle:
        import pcapy

        try:
            reader = pcapy.create(device)
        except pcapy.PcapError as e:
            raise CaptureError(str(e)) from e
        try:
            reader.set_snaplen(bpf.MAXIMUM_SNAPLEN)
            reader.set_promisc(1 if options.promiscuous else 0)
            # libpcap takes an int: a client's u32 timeout would overflow it.
            reader.set_timeout(min(max(1, options.read_timeout_ms), 2**31 - 1))
            reader.set_buffer_size(options.buffer_size)
            reader.activate()
            reader.setnonblock(1)
            if options.direction is not Direction.BOTH:
                reader.setdirection(_DIRECTIONS[options.direction])
        except pcapy.PcapError as e:
            reader.close()
            raise CaptureError(str(e)) from e
        return PcapyHandle(reader)
