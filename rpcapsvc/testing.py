"""
Test doubles for code that embeds rpcapsvc: an in-memory capture system
whose packets the test injects, and a recording data-channel opener.

    system = FakeCaptureSystem({"eth0": [FakeInterface(...)]})
    handle = system.handles[-1]; handle.inject([(sec, usec, b"frame")])

The fake capture system runs its calls in place, so a session driven with it
answers synchronously; give it a L{HeldRunner} to release each call by hand
instead, and so test what happens while one is under way.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Optional, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .capture.blocking import BlockingRunner, run_in_place
from .capture.compiler import compile_filter
from .capture.system import (
    CaptureError,
    CaptureOptions,
    CaptureStats,
    ICaptureHandle,
    ICaptureSystem,
)
from .connections import TlsSettings
from .protocol import bpf
from .protocol.datachannel import PacketBatch
from .protocol.wire import BpfProgram, InterfaceInfo
from .server.datachannel import IDataChannels, IPacketSink

DLT_EN10MB = 1

_T = TypeVar("_T")


def call_name(f: Callable[..., Any]) -> str:
    """The name of a call handed to a runner (the function a C{partial} wraps)."""
    return str(getattr(getattr(f, "func", f), "__name__", repr(f)))


@attrs.define(eq=False)
class HeldCall:
    """A blocking call a L{HeldRunner} holds, and the Deferred waiting for it."""

    f: Callable[[], Any]
    result: defer.Deferred[Any]

    @property
    def name(self) -> str:
        return call_name(self.f)


class HeldRunner:
    """
    A C{BlockingRunner} for tests: each call waits, in order, until the test
    releases it (runs it in place, delivering its result or exception),
    so a test can make results arrive in whatever order it wants.
    """

    def __init__(self) -> None:
        self.pending: list[HeldCall] = []
        self.ran: list[str] = []
        """The names of the calls released, in order."""

    def __call__(self, f: Callable[[], _T]) -> defer.Deferred[_T]:
        d: defer.Deferred[_T] = defer.Deferred()
        self.pending.append(HeldCall(f, d))
        return d

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.pending]

    def release(self, name: Optional[str] = None) -> Any:
        """Run the first held call (the first named C{name}); its result, or its exception."""
        for call in self.pending:
            if name is None or call.name == name:
                break
        else:
            raise AssertionError(f"no held call {name!r}; held: {self.names}")
        self.pending.remove(call)
        self.ran.append(call.name)
        try:
            value = call.f()
        except BaseException:
            failure = Failure()
            call.result.errback(failure)
            return failure.value
        call.result.callback(value)
        return value

    def release_all(self, limit: int = 10_000) -> None:
        """Release calls, those they lead to included, until none is held."""
        for _ in range(limit):
            if not self.pending:
                return
            self.release()
        raise AssertionError(f"calls still held after {limit}: {self.names}")


@implementer(ICaptureHandle)
class FakeCaptureHandle:
    """
    A capture fed by the test.  Its descriptor is a pipe that is readable
    while injected packets wait, so it works with a real reactor too.
    Filters run in Python with L{bpf.run}, as a kernel would run them.
    """

    def __init__(self, device: str, options: CaptureOptions, linktype: int = DLT_EN10MB) -> None:
        self.device = device
        self.options = options
        self.linktype = linktype
        self.filter: Optional[BpfProgram] = None
        self.filters_set: list[BpfProgram] = []
        self.closed = False
        self.received = 0
        self.dropped = 0
        self.fail_with: Optional[str] = None
        self.refuse_filter: Optional[str] = None
        """Refuse every C{set_filter} with this text."""
        self.max_filter_instructions: Optional[int] = None
        """Refuse longer programs, as a kernel short of socket memory does."""
        self.misuse: list[str] = []
        """Calls made after C{close}: there must be none (a real descriptor may be reused by then)."""
        self._pending: deque[tuple[int, int, bytes]] = deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def inject(self, packets: list[tuple[int, int, bytes]]) -> None:
        """Packets arrive on the wire: filtered, then queued for reading."""
        for packet in packets:
            self.received += 1
            if self.filter is None or bpf.run(self.filter, packet[2]):
                self._pending.append(packet)
        if self._pending and not self.closed:
            os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def read_batch(self, max_packets: int) -> PacketBatch:
        if self.fail_with is not None:
            raise CaptureError(self.fail_with)
        taken: list[tuple[int, int, bytes]] = []
        while self._pending and len(taken) < max_packets:
            taken.append(self._pending.popleft())
        if not self._pending:
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass
        return PacketBatch.from_packets(taken)

    def set_filter(self, program: BpfProgram) -> None:
        if self.closed:
            self.misuse.append("set_filter")
            raise CaptureError("the capture is closed")
        if self.refuse_filter is not None:
            raise CaptureError(self.refuse_filter)
        if (
            self.max_filter_instructions is not None
            and len(program.instructions) > self.max_filter_instructions
        ):
            raise CaptureError("the kernel refused the filter: [Errno 12] Cannot allocate memory")
        bpf.validate(program)
        self.filter = program
        self.filters_set.append(program)

    def stats(self) -> CaptureStats:
        if self.closed:
            self.misuse.append("stats")
            raise CaptureError("the capture is closed")
        return CaptureStats(self.received, self.dropped, 0)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)


@implementer(ICaptureSystem)
class FakeCaptureSystem:
    """
    A capture system with the interfaces it was given and no OS behind it.
    Its calls run in place unless it is given a runner (a L{HeldRunner}).
    Filters are compiled with libpcap, as the real system does; the
    expressions compiled are kept in C{compiled}.
    """

    def __init__(
        self,
        interfaces: list[InterfaceInfo],
        linktype: int = DLT_EN10MB,
        run_blocking: Optional[BlockingRunner] = None,
    ) -> None:
        self.interfaces = list(interfaces)
        self.linktype = linktype
        self.handles: list[FakeCaptureHandle] = []
        self.refuse_open: Optional[str] = None
        self.run_blocking: BlockingRunner = run_blocking or run_in_place
        self.compiled: list[tuple[str, int]] = []
        self.linktypes: dict[str, int] = {}
        """Link types of particular devices (others have C{linktype})."""

    def compile(self, expression: str, linktype: int) -> BpfProgram:
        self.compiled.append((expression, linktype))
        return compile_filter(expression, linktype)

    def list_interfaces(self) -> list[InterfaceInfo]:
        return list(self.interfaces)

    def _check(self, device: str) -> None:
        if device not in {i.name for i in self.interfaces}:
            raise CaptureError(f"{device}: No such device exists")
        if self.refuse_open is not None:
            raise CaptureError(self.refuse_open)

    def probe_linktype(self, device: str) -> int:
        self._check(device)
        return self.linktypes.get(device, self.linktype)

    def open(self, device: str, options: CaptureOptions) -> ICaptureHandle:
        self._check(device)
        handle = FakeCaptureHandle(device, options, self.linktypes.get(device, self.linktype))
        self.handles.append(handle)
        return handle


@implementer(IPacketSink)
@attrs.define(eq=False)
class RecordingSink:
    """A data channel that keeps what it was sent."""

    snaplen: int
    batches: list[PacketBatch] = attrs.field(factory=list)
    sent: int = 0
    dropped: int = 0
    bytes_sent: int = 0
    """The captured bytes of the batches (a real channel counts its framing too)."""
    closed: bool = False
    producer: Optional[IPushProducer] = None
    on_lost: object = None
    log_tag: str = ""

    def write_batch(self, batch: PacketBatch) -> None:
        self.batches.append(batch)
        self.sent += len(batch)
        self.bytes_sent += len(batch.data)

    def attach_producer(self, producer: IPushProducer) -> None:
        self.producer = producer

    def close(self) -> None:
        self.closed = True

    def set_lost_callback(self, callback: object) -> None:
        self.on_lost = callback


@implementer(IDataChannels)
class FakeDataChannels:
    """
    Opens L{RecordingSink}s instead of sockets and records how it was asked.
    A passive TCP channel connects when the test fires C{pending[-1]}.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, ...]] = []
        self.sinks: list[RecordingSink] = []
        self.pending: list[defer.Deferred[IPacketSink]] = []
        self.fail_connect: Optional[Exception] = None

    def listen_tcp(
        self,
        interface: str,
        allowed_host: str,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> tuple[int, defer.Deferred[IPacketSink]]:
        self.requests.append(("listen", interface, allowed_host))
        sink = RecordingSink(snaplen)
        self.sinks.append(sink)
        d: defer.Deferred[IPacketSink] = defer.Deferred()
        self.pending.append(d)
        d.addCallback(lambda _: sink)
        return 40000 + len(self.requests), d

    def connect_tcp(
        self,
        host: str,
        port: int,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> defer.Deferred[IPacketSink]:
        self.requests.append(("connect", host, str(port)))
        if self.fail_connect is not None:
            return defer.fail(self.fail_connect)
        sink = RecordingSink(snaplen)
        self.sinks.append(sink)
        return defer.succeed(sink)

    def open_udp(
        self, host: str, port: int, snaplen: int, read_timeout_ms: int = 1000
    ) -> tuple[int, IPacketSink]:
        self.requests.append(("udp", host, str(port)))
        sink = RecordingSink(snaplen)
        self.sinks.append(sink)
        return 50000, sink
