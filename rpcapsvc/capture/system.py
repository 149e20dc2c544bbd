"""
The capture system: what the daemon needs from the OS to capture packets.

L{ICaptureSystem} and L{ICaptureHandle} are the seam between the session and
libpcap.  L{PcapySystem} is the real one, over pcapy-ng; tests and embedders
use L{rpcapsvc.testing.FakeCaptureSystem}.

Their calls block (libpcap and the kernel take tens of milliseconds to open,
probe or close a capture).  The daemon never makes them in the reactor
thread: it hands them to the system's C{run_blocking} (a thread pool for
L{PcapySystem}; see L{rpcapsvc.capture.blocking}), one call at a time per
handle.  Only C{read_batch} and C{fileno} are called in the reactor thread.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import struct
import time
from typing import Any, Optional

import attrs
from zope.interface import Attribute, Interface, implementer

from ..protocol import bpf
from ..protocol.datachannel import BATCH_RECORD, PacketBatch
from ..protocol.wire import BpfInstruction, BpfProgram, InterfaceInfo
from . import libpcap
from .blocking import BlockingRunner, pool_runner

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
    """
    One open, activated, non-blocking capture.  C{set_filter}, C{stats} and
    C{close} may be called from a worker thread (never two at once) while
    the reactor thread reads.
    """

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
    run_blocking = Attribute(
        "A BlockingRunner (rpcapsvc.capture.blocking) that runs this system's blocking calls, "
        "and its handles', and gives their results as Deferreds.  Optional: a system without "
        "one has its calls run in place."
    )

    def list_interfaces() -> list[InterfaceInfo]:
        """Every interface libpcap can capture on, with its addresses."""

    def probe_linktype(device: str) -> int:
        """Open C{device} briefly and return its link type (raise L{CaptureError})."""

    def open(device: str, options: CaptureOptions) -> ICaptureHandle:
        """Open and activate a capture (raise L{CaptureError})."""

    def compile(expression: str, linktype: int) -> BpfProgram:
        """
        Compile a pcap expression for C{linktype} (raise C{ValueError}).
        Optional: L{rpcapsvc.capture.compiler.compile_filter} stands in.
        """


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
SO_DETACH_FILTER = 27
SOL_SOCKET = 1
_SOCK_FILTER = struct.Struct("=HBBI")


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_libc: Any = None


def _setsockopt(fd: int, name: int, value: Any) -> None:
    """C{setsockopt(fd, SOL_SOCKET, name, value)} through ctypes: the kernel's work happens without the GIL."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.sizeof(value) if value is not None else 0
    pointer = ctypes.byref(value) if value is not None else None
    if _libc.setsockopt(fd, SOL_SOCKET, name, pointer, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def kernel_code(program: BpfProgram) -> bytes:
    """C{program} as the kernel takes it: an array of C{struct sock_filter}."""
    return b"".join([_SOCK_FILTER.pack(i.code, i.jt, i.jf, i.k & 0xFFFFFFFF) for i in program.instructions])


def attach_kernel_code(fd: int, code: bytes) -> None:
    """Attach a classic BPF program, in the kernel's form, to the packet socket C{fd}."""
    insns = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // _SOCK_FILTER.size, ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
    _setsockopt(fd, SO_ATTACH_FILTER, fprog)


def attach_kernel_filter(fd: int, program: BpfProgram) -> None:
    """Attach a classic BPF program to the packet socket C{fd}."""
    attach_kernel_code(fd, kernel_code(program))


@attrs.frozen
class PrefixedProgram(BpfProgram):
    """
    A program whose instructions begin with C{prefix}, a tuple shared by many
    captures' programs (the daemon's own traffic, which every capture leaves
    out): its kernel form is made once, not once per capture.

    When a capture's new program differs from its last in the prefix only,
    the packets it had already taken in are not filtered again: the new
    prefix leaves out the traffic of sessions that have not started
    forwarding yet (or no longer forward).
    """

    prefix: tuple[BpfInstruction, ...] = ()


_prefix_codes: dict[tuple[int, bool], tuple[tuple[BpfInstruction, ...], Optional[bytes]]] = {}
_FOREVER = 1 << 62


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def _same_body(program: BpfProgram, previous: Optional[BpfProgram]) -> bool:
    """Do C{program} and C{previous} differ in their prefixes only?"""
    if not isinstance(program, PrefixedProgram) or not isinstance(previous, PrefixedProgram):
        return False
    body = len(program.instructions) - len(program.prefix)
    return body == len(previous.instructions) - len(previous.prefix) and (
        program.instructions[len(program.prefix) :] == previous.instructions[len(previous.prefix) :]
    )


def _code_for(program: BpfProgram, cooked: bool) -> Optional[bytes]:
    """The kernel form of C{program}, or C{None} if the kernel cannot run it (a cooked capture's)."""
    kernel: Optional[BpfProgram] = bpf.for_kernel(program)
    if cooked and kernel is not None:
        kernel = bpf.for_cooked_kernel(kernel)
    return None if kernel is None else kernel_code(kernel)


def _prefix_code(prefix: tuple[BpfInstruction, ...], cooked: bool) -> Optional[bytes]:
    key = (id(prefix), cooked)
    cached = _prefix_codes.get(key)
    if cached is not None and cached[0] is prefix:
        return cached[1]
    code = _code_for(BpfProgram(prefix), cooked)
    if len(_prefix_codes) > 64:
        _prefix_codes.clear()
    _prefix_codes[key] = (prefix, code)  # (the tuple kept: its id is not reused meanwhile)
    return code


def program_code(program: BpfProgram, cooked: bool = False) -> Optional[bytes]:
    """
    The kernel form of C{program} (rewritten for a cooked capture if
    C{cooked}), or C{None} if the kernel cannot run it.
    """
    if isinstance(program, PrefixedProgram) and 0 < len(program.prefix) <= len(program.instructions):
        head = _prefix_code(program.prefix, cooked)
        body = _code_for(BpfProgram(program.instructions[len(program.prefix) :]), cooked)
        return None if head is None or body is None else head + body
    return _code_for(program, cooked)


def detach_kernel_filter(fd: int) -> None:
    """Take the packet socket C{fd}'s filter off (it then takes in everything)."""
    try:
        _setsockopt(fd, SO_DETACH_FILTER, ctypes.c_int(0))
    except OSError as e:
        if e.errno != errno.ENOENT:  # none was attached
            raise


@implementer(ICaptureHandle)
class PcapyHandle:
    """
    A live pcapy-ng capture.  It captures whole frames (the client's snaplen
    is applied when packets are framed, so original lengths survive) and
    filters in the kernel.  Packets already taken off the wire when a filter
    is placed are filtered here with the same program, so a new filter holds
    from the moment it is set.

    C{set_filter}, C{stats} and C{close} run in a worker thread while the
    reactor thread reads: what reading needs of the filter is one tuple,
    replaced whole.
    """

    _swap_refused_at = 1 << 30
    """
    Instructions, old and new together, at which the kernel refused to swap
    filters for want of socket memory (the same limit for every socket).
    """

    def __init__(self, reader: object, device: str = "") -> None:
        self._reader = reader
        self.device = device
        self._fd: int = reader.getfd()  # type: ignore[attr-defined]
        self.linktype: int = reader.datalink()  # type: ignore[attr-defined]
        self._program: Optional[BpfProgram] = None
        self._kernel_code: Optional[bytes] = None
        # What reading filters in userland: (program, from, until (us), everything).
        self._userland: tuple[Optional[BpfProgram], int, int, bool] = (None, 0, 0, False)
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    def start_empty(self) -> None:
        """
        Take in nothing until a filter is set, and drop what was taken in
        since activation, as libpcap does when it sets a filter: a new
        capture never delivers what no filter of its own let in (and the
        first filter set has no backlog to go through in userland).
        """
        try:
            self._attach(_REJECT_ALL_CODE, REJECT_ALL, True)
        except OSError as e:
            raise CaptureError(f"the kernel refused the filter: {e}") from e
        self._kernel_code = _REJECT_ALL_CODE
        import pcapy

        try:
            while self._reader.next_batch(4096)[1]:  # type: ignore[attr-defined]
                pass
        except pcapy.PcapError as e:
            raise CaptureError(str(e)) from e

    def set_filter(self, program: BpfProgram) -> None:
        code = program_code(program, cooked=self.linktype == bpf.DLT_LINUX_SLL)
        attached = _ACCEPT_ALL_CODE if code is None else code
        # Packets stamped before now may have been captured under the old
        # filter: they are filtered here with the new one.  Not when only
        # the daemon's own prefix changed (see PrefixedProgram).
        older_too = not _same_body(program, self._program)
        try:
            detached_at = self._attach(attached, program, older_too)
        except OSError as e:
            raise CaptureError(f"the kernel refused the filter: {e}") from e
        self._program, self._kernel_code = program, attached
        now = _now_us() + 1
        if code is None:
            self._userland = (program, 0, _FOREVER, True)
        elif older_too:
            self._userland = (program, 0, now, False)
        elif detached_at:
            self._userland = (program, detached_at, now, False)
        else:
            self._userland = (program, 0, 0, False)

    def _attach(self, code: bytes, new_program: BpfProgram, older_too: bool) -> int:
        """
        Put C{code} in the kernel (C{new_program} in the kernel's form).
        When the old filter had to come off first, the time it did (in us;
        0 otherwise): what came in after it was filtered by nothing.
        """
        # The kernel charges the old program and the new one to the socket
        # while it swaps them (net.core.optmem_max: 128 KiB holds about 2600
        # instructions of the daemon's filters): when both will not fit, take
        # the old one off first.  Whatever arrives meanwhile is filtered here,
        # in userland, with the new program.
        old = self._kernel_code
        both = (len(code) + (len(old) if old is not None else 0)) // _SOCK_FILTER.size
        if old is None or both < self._swap_refused_at:
            try:
                attach_kernel_code(self._fd, code)
                return 0
            except OSError as e:
                if e.errno != errno.ENOMEM or old is None:
                    raise
                PcapyHandle._swap_refused_at = min(PcapyHandle._swap_refused_at, both)
        assert old is not None
        before = self._userland
        detached_at = _now_us()
        self._userland = (new_program, 0 if older_too else detached_at, _FOREVER, False)
        detach_kernel_filter(self._fd)
        try:
            attach_kernel_code(self._fd, code)
        except OSError:
            try:
                attach_kernel_code(self._fd, old)
                # Back as it was; what came in meanwhile is filtered with the old program.
                low = min(before[1], detached_at) if before[2] else detached_at
                self._userland = (self._program, low, _now_us() + 1, False)
            except OSError:
                # Nothing in the kernel: filter everything here with the old program.
                self._userland = (self._program, 0, _FOREVER, True)
            raise
        return detached_at

    def read_batch(self, max_packets: int) -> PacketBatch:
        import pcapy

        try:
            data, records = self._reader.next_batch(max_packets)  # type: ignore[attr-defined]
        except pcapy.PcapError as e:
            raise CaptureError(str(e)) from e
        batch = PacketBatch(data, records)
        program, low, high, always = self._userland  # read once, after the packets were taken
        if program is not None and records and (always or self._first_before(records, high)):
            batch = self._filter_in_userland(batch, program, low, high, always)
        return batch

    @staticmethod
    def _first_before(records: bytes, high: int) -> bool:
        # Records are in capture order: only the first can be the oldest.
        sec, usec, _, _ = BATCH_RECORD.unpack_from(records, 0)
        return bool(sec * 1_000_000 + usec < high)

    @staticmethod
    def _filter_in_userland(
        batch: PacketBatch, program: BpfProgram, low: int, high: int, always: bool
    ) -> PacketBatch:
        """Run C{program} on the packets stamped in [C{low}, C{high}) us (all of them if C{always})."""
        kept = []
        for sec, usec, off, length in BATCH_RECORD.iter_unpack(batch.records):
            packet = batch.data[off : off + length]
            stamp = sec * 1_000_000 + usec
            if (always or low <= stamp < high) and not bpf.run(program, packet):
                continue
            kept.append((sec, usec, packet))
        return PacketBatch.from_packets(kept)

    def stats(self) -> CaptureStats:
        import pcapy

        try:
            recv, drop, ifdrop = self._reader.stats()  # type: ignore[attr-defined]
        except (pcapy.PcapError, ValueError) as e:
            raise CaptureError(str(e)) from e
        return CaptureStats(recv, drop, ifdrop)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            libpcap.close(self._reader)


_DIRECTIONS = {Direction.IN: 1, Direction.OUT: 2, Direction.BOTH: 0}
REJECT_ALL = BpfProgram((BpfInstruction(bpf.BPF_RET | bpf.BPF_K, 0, 0, 0),))
_REJECT_ALL_CODE = kernel_code(REJECT_ALL)
_ACCEPT_ALL_CODE = kernel_code(bpf.ACCEPT_ALL)


@implementer(ICaptureSystem)
class PcapySystem:
    """
    The real capture system: libpcap through pcapy-ng (its slow calls
    without the GIL, L{rpcapsvc.capture.libpcap}).

    @param run_blocking: where the daemon runs this system's calls; by
        default the reactor's thread pool (L{RpcapdService} gives it a
        pool of its own).
    """

    def __init__(self, run_blocking: Optional[BlockingRunner] = None, reactor: Any = None) -> None:
        self.run_blocking: BlockingRunner = run_blocking or pool_runner(reactor)

    def list_interfaces(self) -> list[InterfaceInfo]:
        import pcapy

        from .interfaces import list_interfaces

        try:
            return list_interfaces()
        except pcapy.PcapError as e:
            raise CaptureError(f"cannot list interfaces: {e}") from e

    def probe_linktype(self, device: str) -> int:
        try:
            return libpcap.probe_linktype(device, PROBE_SNAPLEN, 1000)
        except ValueError as e:
            raise CaptureError(str(e)) from e

    def compile(self, expression: str, linktype: int) -> BpfProgram:
        from .compiler import compile_filter

        return compile_filter(expression, linktype)

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
            libpcap.activate(reader, device)
            reader.setnonblock(1)
            if options.direction is not Direction.BOTH:
                reader.setdirection(_DIRECTIONS[options.direction])
        except (pcapy.PcapError, ValueError) as e:
            libpcap.close(reader)
            raise CaptureError(str(e)) from e
        handle = PcapyHandle(reader, device)
        try:
            handle.start_empty()
        except CaptureError:
            handle.close()
            raise
        return handle
