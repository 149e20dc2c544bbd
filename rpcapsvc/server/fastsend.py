"""
Batch sends through libc, for the per-packet path of the data channels.

Python's socket module sends one buffer per call, so a batch of captured
packets costs a Python-level loop, a copy per packet and, over UDP, one
system call per datagram.  Here a whole batch goes out in one call, with no
per-packet Python object:

- L{packet_vectors} lays a batch's type-7 messages out as an iovec array:
  each packet's 28-byte header (all headers packed in one C{array} by
  strided, C-level copies) and its bytes where the capture left them.
- L{send_stream} gives those iovecs to C{sendmsg} (TCP: the kernel's copy is
  the only one).
- L{send_datagrams} gives them to C{sendmmsg}, two iovecs per message (classic
  UDP: one system call per batch); L{send_buffers} does the same for whole
  datagrams (udpstr), and L{send_segmented} sends them with UDP GSO
  (C{UDP_SEGMENT}, Linux >= 4.18), the kernel cutting runs of equal-sized
  datagrams out of one send.

Errors are the caller's to judge: a datagram the kernel refuses is handed to
an C{on_refused} callback (the sinks count the network's errors as drops and
raise anything else), and a stream send stops where the socket filled.

Everything is ctypes and the standard library (no compiler at install
time).  L{AVAILABLE} is false where the layout assumed here does not hold
(not Linux, not 64-bit, a libc without C{sendmmsg}); the sinks then keep
their portable paths.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from array import array
from bisect import bisect_right
from itertools import accumulate, chain, repeat
from operator import add
from typing import Any, Callable, Optional, Sequence

from ..protocol.arrays import LOW_HALF, capped, contiguous, counting, multiples, plus, widened
from ..protocol.datachannel import PacketBatch

MESSAGE_HEADER_SIZE = 28
"""The RPCAP header (8 bytes) and C{rpcap_pkthdr} (20) before each packet's bytes."""

IOV_MAX = 1024
"""Linux's limit on iovecs per C{sendmsg} and on messages per C{sendmmsg}."""

MSG_DONTWAIT = 0x40
MSG_NOSIGNAL = 0x4000
_SEND_FLAGS = MSG_DONTWAIT | MSG_NOSIGNAL
_U32 = 0xFFFFFFFF
_LITTLE_ENDIAN = sys.byteorder == "little"
_PACKET_WORD0 = 0x00070000
"""The first 4 header bytes (version 0, type 7, value 0), as a big-endian u32."""

_IOVEC_WORDS = 2  # iov_base, iov_len
_MMSGHDR_WORDS = 8  # msghdr (7 words: name, namelen, iov, iovlen, control, controllen, flags) + msg_len
_MSGHDR_IOV, _MSGHDR_IOVLEN = 2, 3


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    # The arrays below are built as 64-bit words: pointers and size_t must be 64 bits.
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_size_t) != 8:
        return None
    if array("Q").itemsize != 8 or array("I").itemsize != 4:
        return None
    if ctypes.sizeof(_MsgHdr) != 8 * (_MMSGHDR_WORDS - 1):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sendmsg, sendmmsg = libc.sendmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    sendmsg.restype = ctypes.c_ssize_t
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return libc


_libc = _load_libc()
AVAILABLE = _libc is not None
"""Whether this platform has the batch sends (Linux, 64-bit, glibc or musl with C{sendmmsg})."""


def address_of(data: bytes) -> int:
    """Where C{data}'s bytes are (valid while C{data} is alive)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _bytes_data_offset() -> Optional[int]:
    """
    How far into a C{bytes} object its bytes start, if this interpreter
    lays them out as CPython does (checked here against ctypes on bytes
    of several sizes); C{None} otherwise.
    """
    offset = bytes.__basicsize__ - 1  # PyBytesObject: the header, then ob_sval
    probes = [bytes(range(n % 256)) * (n // 256 + 1) for n in (1, 7, 300, 5000)]
    if all(id(p) + offset == address_of(p) for p in probes):
        return offset
    return None


_BYTES_DATA = _bytes_data_offset()


def addresses_of(buffers: Sequence[bytes]) -> array[int]:
    """
    Where each of C{buffers}' bytes are, as u64s: their ids plus the offset
    of a C{bytes} object's data, one big-integer addition for them all (the
    ctypes way, L{address_of}, costs about a microsecond each).
    """
    if _BYTES_DATA is not None and all(type(b) is bytes for b in buffers):
        return plus(array("Q", map(id, buffers)), _BYTES_DATA)
    return array("Q", map(address_of, buffers))


class PacketVectors:
    """
    A batch's classic type-7 messages as an iovec array: for packet I,
    iovec 2I is its header (in C{headers}) and iovec 2I+1 its bytes (in the
    batch's buffer).  Holds what the iovecs point to.
    """

    __slots__ = ("count", "total", "headers", "data", "iov", "offsets", "caplens")

    def __init__(
        self,
        count: int,
        total: int,
        headers: array[int],
        data: bytes,
        iov: array[int],
        offsets: Any,
        caplens: Any,
    ) -> None:
        self.count = count
        self.total = total
        """Bytes of all the messages."""
        self.headers = headers
        self.data = data
        self.iov = iov
        self.offsets = offsets
        """Where each packet's bytes start in C{data} (u32s)."""
        self.caplens = caplens
        """How many of them each message carries (u32s)."""

    def message_length(self, index: int) -> int:
        """The length of message C{index}: its header and packet bytes."""
        return MESSAGE_HEADER_SIZE + int(self.iov[index * 2 * _IOVEC_WORDS + 3])

    def message(self, index: int) -> bytes:
        """Message C{index} as bytes (tests, and whoever wants to see a refused datagram)."""
        base = index * 2 * _IOVEC_WORDS
        head = ctypes.string_at(self.iov[base], self.iov[base + 1])
        return head + ctypes.string_at(self.iov[base + 2], self.iov[base + 3])

    def tail(self, skip: int) -> bytes:
        """
        The messages' bytes from offset C{skip} on: what a short C{sendmsg}
        left unsent.  Headers and packets are cut from where they lie by
        C-level iteration (no call per iovec).
        """
        if skip >= self.total:
            return b""
        offsets, caplens = self.offsets, self.caplens
        ends = list(accumulate(map(add, caplens, repeat(MESSAGE_HEADER_SIZE))))
        first = bisect_right(ends, skip)
        headers = memoryview(self.headers).cast("B")
        data = memoryview(self.data)
        start = MESSAGE_HEADER_SIZE * first
        message = bytes(headers[start : start + MESSAGE_HEADER_SIZE]) + bytes(
            data[offsets[first] : offsets[first] + caplens[first]]
        )
        head = message[skip - (ends[first] - len(message)) :]
        rest_offsets = offsets[first + 1 :]
        header_cuts = map(
            slice,
            range(start + MESSAGE_HEADER_SIZE, MESSAGE_HEADER_SIZE * self.count, MESSAGE_HEADER_SIZE),
            range(start + 2 * MESSAGE_HEADER_SIZE, MESSAGE_HEADER_SIZE * self.count + 1, MESSAGE_HEADER_SIZE),
        )
        packet_cuts = map(slice, rest_offsets, map(add, rest_offsets, caplens[first + 1 :]))
        pieces = zip(map(headers.__getitem__, header_cuts), map(data.__getitem__, packet_cuts))
        return head + b"".join(chain.from_iterable(pieces))


def packet_vectors(batch: PacketBatch, snaplen: int, first_npkt: int) -> PacketVectors:
    """
    Lay out C{batch}'s type-7 messages, packets numbered from C{first_npkt}
    and cut to C{snaplen}, the same bytes as
    L{rpcapsvc.protocol.datachannel.encode_packet_stream}.  The per-packet
    work is strided copies between arrays and big-integer additions, all in C.
    """
    data = batch.data if type(batch.data) is bytes else bytes(batch.data)
    records = memoryview(batch.records).cast("I")  # sec, usec, offset, length: native u32s
    count = len(records) // 4
    lengths = records[3::4]
    caplens: Any = lengths
    if count and max(lengths) > snaplen:
        caplens = capped(lengths, count, snaplen)
    words = array("I", bytes(MESSAGE_HEADER_SIZE * count))
    view = memoryview(words)
    view[0::7] = array("I", [_PACKET_WORD0]) * count
    view[2::7] = records[0::4]
    view[3::7] = records[1::4]
    view[4::7] = caplens
    view[5::7] = lengths
    # plen: the caplen plus the 20-byte rpcap_pkthdr
    view[1::7] = plus(contiguous(caplens, count), MESSAGE_HEADER_SIZE - 8)
    view[6::7] = counting(first_npkt & _U32, count)  # wrapping in the batch, as libpcap's counter does
    if _LITTLE_ENDIAN:
        words.byteswap()  # to network byte order
    iov = array("Q", bytes(8 * 2 * _IOVEC_WORDS * count))
    vectors = memoryview(iov)
    vectors[0::4] = plus(multiples("Q", MESSAGE_HEADER_SIZE, count), words.buffer_info()[0])
    vectors[2::4] = plus(widened(records[2::4], count), address_of(data))
    halves = vectors.cast("B").cast("I")
    halves[2 + LOW_HALF :: 8] = array("I", [MESSAGE_HEADER_SIZE]) * count
    halves[6 + LOW_HALF :: 8] = caplens
    total = MESSAGE_HEADER_SIZE * count + sum(caplens)
    return PacketVectors(count, total, words, data, iov, records[2::4], caplens)


def _errno_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def send_stream(fd: int, vectors: PacketVectors) -> int:
    """
    Write the messages to the stream socket C{fd} without blocking: the
    bytes the kernel took (fewer than C{vectors.total} when its buffer
    filled).  Raises C{OSError} for anything but a full buffer, unless some
    bytes went: then it says how many (the caller must not send those
    again), and the error comes back from the next write.
    """
    iov = vectors.iov
    iov_at = iov.buffer_info()[0]
    count = len(iov) // _IOVEC_WORDS
    lengths = memoryview(iov)[1::_IOVEC_WORDS]
    header = _MsgHdr()
    sent = 0
    start = 0
    while start < count:
        end = min(count, start + IOV_MAX)
        header.msg_iov = iov_at + 8 * _IOVEC_WORDS * start
        header.msg_iovlen = end - start
        wanted = sum(lengths[start:end])
        done = _libc.sendmsg(fd, ctypes.addressof(header), _SEND_FLAGS)
        if done < 0:
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in (errno.EAGAIN, errno.EWOULDBLOCK) or sent:
                return sent
            raise _errno_error(code)
        sent += done
        if done < wanted:
            return sent
        start = end
    return sent


def _send_messages(
    fd: int, mmsg: array[int], count: int, on_refused: Callable[[int, OSError], bool]
) -> list[int]:
    """
    C{sendmmsg} the C{count} messages of C{mmsg} to C{fd}.  A message the
    kernel refuses goes to C{on_refused(index, error)}, which says whether to
    try the ones after it (C{False}: they are refused too, with the same
    error).  The indexes of the refused messages.
    """
    mmsg_at = mmsg.buffer_info()[0]
    refused: list[int] = []
    index = 0
    while index < count:
        chunk = min(IOV_MAX, count - index)
        done = _libc.sendmmsg(fd, mmsg_at + 8 * _MMSGHDR_WORDS * index, chunk, _SEND_FLAGS)
        if done > 0:
            index += done
            continue
        code = ctypes.get_errno() if done < 0 else errno.EAGAIN
        if code == errno.EINTR:
            continue
        error = _errno_error(code)
        refused.append(index)
        go_on = on_refused(index, error)
        index += 1
        if not go_on:
            refused.extend(range(index, count))
            index = count
    return refused


def _message_array(iov_at: int, count: int, vectors_each: int) -> array[int]:
    mmsg = array("Q", bytes(8 * _MMSGHDR_WORDS * count))
    view = memoryview(mmsg)
    step = 8 * _IOVEC_WORDS * vectors_each
    view[_MSGHDR_IOV::_MMSGHDR_WORDS] = array("Q", range(iov_at, iov_at + step * count, step))
    view[_MSGHDR_IOVLEN::_MMSGHDR_WORDS] = array("Q", [vectors_each]) * count
    return mmsg


def send_datagrams(fd: int, vectors: PacketVectors, on_refused: Callable[[int, OSError], bool]) -> list[int]:
    """
    Send each message of C{vectors} as one datagram on the connected
    datagram socket C{fd}, with as few C{sendmmsg} calls as the kernel
    allows.  Returns the indexes of the messages refused (see
    L{_send_messages} for C{on_refused}, which may raise to stop).
    """
    mmsg = _message_array(vectors.iov.buffer_info()[0], vectors.count, 2)
    return _send_messages(fd, mmsg, vectors.count, on_refused)


def send_buffers(
    fd: int, datagrams: Sequence[bytes], on_refused: Callable[[int, OSError], bool]
) -> list[int]:
    """L{send_datagrams} for datagrams already whole (udpstr's)."""
    count = len(datagrams)
    iov = array("Q", bytes(8 * _IOVEC_WORDS * count))
    view = memoryview(iov)
    view[0::2] = addresses_of(datagrams)
    view[1::2] = array("Q", map(len, datagrams))
    mmsg = _message_array(iov.buffer_info()[0], count, 1)
    return _send_messages(fd, mmsg, count, on_refused)


SOL_UDP = 17
UDP_SEGMENT = 103
"""Linux >= 4.18: the kernel cuts one send into datagrams of this size (UDP GSO)."""
GSO_MAX_SEGMENTS = 64
GSO_MAX_PAYLOAD = 65000
"""Below the 65,507 bytes an IPv4 UDP datagram holds (the limit applies to the whole send)."""
_CMSG = ctypes.sizeof(ctypes.c_size_t) + 8  # cmsghdr: len, level, type
_CMSG_SPACE_U16 = _CMSG + 8  # CMSG_SPACE(2)
GSO_REFUSED = frozenset(
    getattr(errno, name) for name in ("EINVAL", "EIO", "ENOPROTOOPT", "EOPNOTSUPP") if hasattr(errno, name)
)
"""What a kernel, device or path that cannot segment says: the datagrams then go one by one."""


def gso_groups(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """
    Cut a run of datagram sizes into UDP GSO sends, C{(start, end)} each:
    every datagram of a send but the last has the first's size, the last is
    no longer, and a send holds at most L{GSO_MAX_SEGMENTS} and
    L{GSO_MAX_PAYLOAD} bytes.  udpstr fills its datagrams to the MTU, so
    most of a batch goes in a few sends.
    """
    groups = []
    start = 0
    count = len(sizes)
    while start < count:
        size = sizes[start]
        end = start + 1
        limit = min(count, start + GSO_MAX_SEGMENTS, start + max(1, GSO_MAX_PAYLOAD // max(size, 1)))
        while end < limit and sizes[end] == size:
            end += 1
        if end < limit and sizes[end] < size:
            end += 1  # a shorter one may close the send
        groups.append((start, end))
        start = end
    return groups


def _send_each(
    fd: int, iov_at: int, vectors_each: int, start: int, end: int, on_refused: Callable[[int, OSError], bool]
) -> list[int]:
    """Datagrams C{start} to C{end - 1} (C{vectors_each} iovecs each from C{iov_at}), one message each."""

    def shifted(index: int, error: OSError) -> bool:
        return on_refused(start + index, error)

    mmsg = _message_array(iov_at + 8 * _IOVEC_WORDS * vectors_each * start, end - start, vectors_each)
    return [start + index for index in _send_messages(fd, mmsg, end - start, shifted)]


def _send_planned(
    fd: int,
    iov_at: int,
    vectors_each: int,
    plan: Sequence[tuple[int, int, bool]],
    sizes: Sequence[int],
    on_refused: Callable[[int, OSError], bool],
    cannot_segment: Callable[[int, int, OSError], bool],
) -> list[int]:
    """
    Send the datagrams of C{plan}, C{(start, end, segmented)} each: datagrams
    C{start} to C{end - 1} (C{vectors_each} iovecs each from C{iov_at}) as
    one message of C{sendmmsg}, cut by the kernel into C{sizes[start]}-byte
    segments if C{segmented}.  A segmented send the kernel will not segment
    (L{GSO_REFUSED}) goes to C{cannot_segment(start, end, error)}, which
    says whether to send its datagrams one by one now.  Any other error is
    what one send meets: the first datagram is refused, as it would be sent
    alone, and the others are tried as the next sends would be.  The refused
    indexes.
    """
    control = ctypes.create_string_buffer(_CMSG_SPACE_U16 * len(plan))
    control_at = ctypes.addressof(control)
    mmsg = array("Q", bytes(8 * _MMSGHDR_WORDS * len(plan)))
    step = 8 * _IOVEC_WORDS * vectors_each
    for number, (start, end, segmented) in enumerate(plan):
        base = number * _MMSGHDR_WORDS
        mmsg[base + _MSGHDR_IOV] = iov_at + step * start
        mmsg[base + _MSGHDR_IOVLEN] = vectors_each * (end - start)
        if segmented:
            cmsg = _CMSG_SPACE_U16 * number
            struct.pack_into("=QiiH", control, cmsg, _CMSG + 2, SOL_UDP, UDP_SEGMENT, sizes[start])
            mmsg[base + 4] = control_at + cmsg  # msg_control
            mmsg[base + 5] = _CMSG_SPACE_U16  # msg_controllen
    refused: list[int] = []

    def plan_refused(number: int, error: OSError) -> bool:
        start, end, segmented = plan[number]
        if segmented and error.errno in GSO_REFUSED:
            if cannot_segment(start, end, error):
                refused.extend(_send_each(fd, iov_at, vectors_each, start, end, on_refused))
            return True
        refused.append(start)
        on_refused(start, error)
        if end - start > 1:
            refused.extend(_send_each(fd, iov_at, vectors_each, start + 1, end, on_refused))
        return True

    _send_messages(fd, mmsg, len(plan), plan_refused)
    return refused


def send_segmented(
    fd: int, datagrams: Sequence[bytes], on_refused: Callable[[int, OSError], bool]
) -> tuple[list[int], bool]:
    """
    Send C{datagrams} (on a connected UDP socket) with UDP GSO: the runs
    of L{gso_groups}, each one message of C{sendmmsg} carrying the segment
    size, so the kernel builds the datagrams (the same bytes as one send
    each).  A run the kernel will not segment goes one by one at once, so
    the datagrams keep their order; a send that fails otherwise loses its
    first datagram, as a lone send would (L{_send_planned}).  Returns the
    refused indexes, and C{False} if the kernel cannot segment here (the
    caller then sends without GSO from now on; this batch is sent anyway).
    """
    count = len(datagrams)
    sizes = [len(d) for d in datagrams]
    iov = array("Q", bytes(8 * _IOVEC_WORDS * count))
    view = memoryview(iov)
    view[0::2] = addresses_of(datagrams)
    view[1::2] = array("Q", sizes)
    iov_at = iov.buffer_info()[0]
    plan = [(start, end, end - start > 1) for start, end in gso_groups(sizes)]
    unsegmented: list[tuple[int, int]] = []

    def cannot_segment(start: int, end: int, error: OSError) -> bool:
        unsegmented.append((start, end))
        return True  # one by one, at once: the datagrams keep their order

    refused = _send_planned(fd, iov_at, 1, plan, sizes, on_refused, cannot_segment)
    refused.sort()
    return refused, not unsegmented


def send_datagrams_segmented(
    fd: int, vectors: PacketVectors, largest: int, on_refused: Callable[[int, OSError], bool]
) -> tuple[list[int], Optional[int]]:
    """
    L{send_datagrams} with UDP GSO: each run of equal-sized messages (what
    captures of bulk traffic are made of) goes as one send that the kernel
    cuts into the same datagrams, so one pass down the stack carries up to
    L{GSO_MAX_SEGMENTS} of them.  Only runs of messages of at most
    C{largest} bytes are segmented (a path refuses segments above its MTU).

    Returns the refused indexes, and the new C{largest}: lowered below a
    size the path refused to segment, or C{None} if the kernel cannot
    segment at all (the caller then sends without GSO from now on).  A run
    the kernel will not segment is sent at once, datagram by datagram, so
    the order of the datagrams is kept.
    """
    count = vectors.count
    sizes = [MESSAGE_HEADER_SIZE + length for length in vectors.iov[3 :: 2 * _IOVEC_WORDS]]
    plan: list[tuple[int, int, bool]] = []  # (start, end, segmented)
    for start, end in gso_groups(sizes):
        if end - start > 1 and sizes[start] <= largest:
            plan.append((start, end, True))
        else:
            plan.extend((index, index + 1, False) for index in range(start, end))
    if len(plan) * 4 > count:
        # Few runs (packets of many sizes, or too big to segment): nothing to gain.
        return send_datagrams(fd, vectors, on_refused), largest
    still: list[Optional[int]] = [largest]

    def cannot_segment(start: int, end: int, error: OSError) -> bool:
        if error.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            still[0] = None  # no UDP GSO in this kernel
        elif still[0] is not None:
            still[0] = min(still[0], sizes[start] - 1)
        return True

    refused = _send_planned(fd, vectors.iov.buffer_info()[0], 2, plan, sizes, on_refused, cannot_segment)
    refused.sort()
    return refused, still[0]


def writable_fd(transport: object) -> Optional[int]:
    """
    The descriptor of C{transport} if it is a plain Twisted TCP connection,
    open, with nothing waiting in its own buffer: then bytes written to the
    socket directly keep their order.  C{None} otherwise (TLS, a test's
    transport, a connection closing or with data queued), and the caller
    writes through the transport, which then buffers and pauses producers.
    """
    from twisted.internet import tcp

    if not isinstance(transport, tcp.Connection):
        return None
    if not transport.connected or transport.disconnecting or transport._tempDataLen:
        return None
    if transport.offset != len(transport.dataBuffer):
        return None
    return transport.fileno()  # type: ignore[no-any-return]


def optional_fd(sock: Optional[object]) -> Optional[int]:
    """A socket's descriptor, if it is an open socket object."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except OSError:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class LibcBatchSender:
    """
    The batch sends above as one object, which the sinks call through (tests
    give them a fake with the same methods, as Twisted's tuntap takes a
    system object).
    """

    writable_fd = staticmethod(writable_fd)
    send_stream = staticmethod(send_stream)
    send_datagrams = staticmethod(send_datagrams)
    send_buffers = staticmethod(send_buffers)
    send_segmented = staticmethod(send_segmented)
    send_datagrams_segmented = staticmethod(send_datagrams_segmented)


BATCH_SENDER: Optional[LibcBatchSender] = LibcBatchSender() if AVAILABLE else None
"""What the sinks send with, where the platform allows; C{None}: their portable paths."""
