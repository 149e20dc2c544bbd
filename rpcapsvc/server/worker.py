"""
Capture workers (C{--capture-workers}): each capture's per-packet loop in a
process of its own, so that N clients capturing use N cores.

The daemon keeps everything but the packets: the control connections, auth,
the protocol, the session state machine, the filter rounds, the data
channels' setup.  A worker (C{python -m rpcapsvc.server.worker}) opens the
capture itself (it runs with the daemon's privileges: root or
C{CAP_NET_RAW}), and once the data channel is up it is handed the channel's
socket (C{SCM_RIGHTS}) and runs the same L{CaptureReader} and sinks as the
daemon would, in a small reactor of its own.

In the daemon, L{WorkerCaptureHandle} is the capture's L{ICaptureHandle}:

- C{set_filter}, C{stats} and C{close} are requests on the I{command}
  socket, answered by the worker, called in the capture threads as for a
  capture of the daemon's own (one at a time per handle);
- C{fileno} and C{read_batch} are the I{event} socket, read by the session's
  L{CaptureReader} in the reactor thread: the worker's counters (mirrored
  into the daemon's sink, so stats, the end-of-capture log and the metrics
  read them as before), its failure, its warnings, and (for a channel that
  cannot change process: TLS) the packets themselves, relayed;
- L{WorkerCaptureHandle.forward_to} hands the data channel over; the
  session calls it when the channel is up (its one hook).

A worker that dies fails its capture (RPCAP READEX to the client, the exit
status logged once); the service kills what is left when it stops; every
worker is waited for (no zombie).  Both ends frame messages the same way:
L{FRAME} (payload length, kind) then the payload.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Protocol

from twisted.internet import protocol
from twisted.internet.interfaces import IFileDescriptorReceiver, IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer, provider

from ..capture.blocking import BlockingRunner
from ..capture.reader import BATCH_PACKETS, CaptureReader
from ..capture.sampling import (
    SAMPLING_FIRST_AFTER_MS,
    SAMPLING_NONE,
    SAMPLING_ONE_IN_N,
    FirstAfterInterval,
    OneInEvery,
    Sampler,
    sampler_for,
)
from ..capture.system import (
    CaptureError,
    CaptureOptions,
    CaptureStats,
    Direction,
    ICaptureHandle,
    ICaptureSystem,
    PcapySystem,
    PrefixedProgram,
    keep_batch_buffers_in_heap,
)
from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.datachannel import BATCH_RECORD, PacketBatch
from ..protocol.wire import BpfInstruction, BpfProgram
from .datachannel import IPacketSink, TcpPacketSink, UdpPacketSink, sink_from_settings

# --- the pipe protocol ----------------------------------------------------------------

FRAME = struct.Struct("!IB")
"""Every message: its payload's length, its kind (one of the constants below), then the payload."""

REQUEST = 0x51  # 'Q' daemon -> worker, command socket: a JSON request
REPLY = 0x52  # 'R' worker -> daemon, command socket: its JSON answer
COUNTS = 0x43  # 'C' worker -> daemon, event socket: the sink's counters (COUNTS_BODY)
FAILED = 0x46  # 'F' worker -> daemon, event socket: the capture failed; UTF-8 text says why
WARNING = 0x57  # 'W' worker -> daemon, event socket: a line for the daemon's log
BATCH = 0x42  # 'B' worker -> daemon, event socket: relayed packets (BATCH_HEAD, records, data)
FORWARD = 0x48  # 'H' daemon -> worker, event socket: forward to this channel (JSON; the socket in SCM_RIGHTS)
SAMPLING = 0x53  # 'S' daemon -> worker, event socket: sample from now on (JSON: method, value)

COUNTS_BODY = struct.Struct("!QQQQ")
"""sent, dropped, bytes_sent, sampled out."""
BATCH_HEAD = struct.Struct("!I")
"""The length of the records that follow (the data is the rest)."""
MAX_FRAME = BATCH_HEAD.size + BATCH_PACKETS * (BATCH_RECORD.size + MAXIMUM_SNAPLEN)
"""
The biggest payload either end sends: a relayed batch, as many packets as a
worker's reader takes at once, each as big as a worker captures (about
128 MiB).  A frame said to be longer means the stream is broken.
"""

COMMAND_TIMEOUT = 10.0
"""Seconds a worker has to answer a request (opening a capture waits on the kernel)."""
EXIT_TIMEOUT = 5.0
REAP_GRACE = 0.1
"""Seconds a worker whose socket closed has to become reapable, so its end can be named."""
COUNTS_INTERVAL = 0.1
"""How often a worker reports its counters while they change (the daemon's view lags by at most this)."""


class WorkerGone(Exception):
    """The worker did not answer: it died, or its socket broke."""


class WorkerBroken(WorkerGone):
    """The worker's stream makes no sense (or it reads nothing): it cannot be talked to any more."""


def encode_frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), kind) + payload


class FrameDecoder:
    """Frames out of a byte stream, fed as it comes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= FRAME.size:
            length, kind = FRAME.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ValueError(f"capture worker frame of {length} bytes")
            end = FRAME.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, bytes(self._buffer[FRAME.size : end])))
            del self._buffer[:end]
        return frames


def encode_json(kind: int, message: dict[str, Any]) -> bytes:
    return encode_frame(kind, json.dumps(message).encode())


def program_to_json(program: BpfProgram) -> dict[str, Any]:
    prefix = len(program.prefix) if isinstance(program, PrefixedProgram) else None
    return {"insns": [[i.code, i.jt, i.jf, i.k] for i in program.instructions], "prefix": prefix}


def program_from_json(message: dict[str, Any]) -> BpfProgram:
    instructions = tuple(BpfInstruction(*i) for i in message["insns"])
    prefix = message.get("prefix")
    if prefix is None:
        return BpfProgram(instructions)
    return PrefixedProgram(instructions, instructions[:prefix])


def options_to_json(options: CaptureOptions) -> dict[str, Any]:
    return {
        "snaplen": options.snaplen,
        "promiscuous": options.promiscuous,
        "read_timeout_ms": options.read_timeout_ms,
        "direction": options.direction.value,
        "buffer_size": options.buffer_size,
    }


def options_from_json(message: dict[str, Any]) -> CaptureOptions:
    return CaptureOptions(
        snaplen=message["snaplen"],
        promiscuous=message["promiscuous"],
        read_timeout_ms=message["read_timeout_ms"],
        direction=Direction(message["direction"]),
        buffer_size=message["buffer_size"],
    )


def sampling_of(sampler: Optional[Sampler]) -> tuple[int, int]:
    """The RPCAP (method, value) a sampler applies (L{sampler_for} makes it again); (0, 0): none."""
    if isinstance(sampler, OneInEvery):
        return SAMPLING_ONE_IN_N, sampler.n
    if isinstance(sampler, FirstAfterInterval):
        return SAMPLING_FIRST_AFTER_MS, sampler.ms
    return SAMPLING_NONE, 0


def encode_batch(batch: PacketBatch) -> bytes:
    return encode_frame(BATCH, BATCH_HEAD.pack(len(batch.records)) + batch.records + batch.data)


def decode_batch(payload: bytes) -> PacketBatch:
    (size,) = BATCH_HEAD.unpack_from(payload)
    start = BATCH_HEAD.size
    return PacketBatch(payload[start + size :], payload[start : start + size])


def sink_spec(sink: IPacketSink, options: CaptureOptions) -> tuple[dict[str, Any], Optional[socket.socket]]:
    """
    What a worker needs to make the same sink as C{sink} on its socket: the
    sink's own settings (L{sink_from_settings} makes it again) and the
    socket, or kind C{"relay"} and no socket for a channel that cannot move
    to another process (TLS: its session state is here).
    """
    spec: dict[str, Any] = {
        "kind": "relay",
        "snaplen": options.snaplen,
        "flush_after": options.read_timeout_ms / 1000.0,
        "log_tag": getattr(sink, "log_tag", ""),
    }
    transport = getattr(sink, "transport", None)
    if not isinstance(sink, (TcpPacketSink, UdpPacketSink)) or isinstance(transport, TLSMemoryBIOProtocol):
        return spec, None
    sock: Optional[socket.socket] = getattr(transport, "socket", None)
    if sock is None:
        return spec, None
    spec.update(sink.settings(), family=int(sock.family))
    return spec, sock


# --- the daemon's side ----------------------------------------------------------------


class ProcessLike(Protocol):
    """What the handle needs of a worker process (C{subprocess.Popen} has it)."""

    pid: int
    returncode: Optional[int]

    def poll(self) -> Optional[int]: ...

    def wait(self, timeout: Optional[float] = None) -> int: ...

    def kill(self) -> None: ...


class EventEnd(Protocol):
    """The daemon's end of the event socket."""

    def fileno(self) -> int: ...

    def receive(self) -> Optional[tuple[int, bytes]]:
        """The next whole frame; C{None} when none waits; raises L{WorkerGone} at the end."""

    def send(self, frame: bytes, fd: Optional[int] = None) -> None:
        """Send C{frame} (and C{fd}) without waiting; raises L{WorkerBroken} if the worker reads nothing."""

    def close(self) -> None: ...


Call = Callable[[dict[str, Any], float], dict[str, Any]]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise WorkerGone("the capture worker closed its socket")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class CommandSocket:
    """The daemon's end of the command socket: one request, one reply, under a lock (capture threads)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            try:
                self._sock.settimeout(timeout)
                self._sock.sendall(encode_json(REQUEST, request))
                length, kind = FRAME.unpack(_recv_exact(self._sock, FRAME.size))
                payload = _recv_exact(self._sock, length)
            except (OSError, ValueError) as e:  # socket.timeout is an OSError
                raise WorkerGone(str(e) or type(e).__name__) from e
        if kind != REPLY:
            raise WorkerGone(f"unexpected message kind {kind} on the command socket")
        reply: dict[str, Any] = json.loads(payload)
        return reply

    def close(self) -> None:
        self._sock.close()


class EventSocket:
    """
    The daemon's end of the event socket, read and written in the reactor
    thread, so never blocking: the socket is non-blocking throughout.

    C{receive} reads one frame at a time and never past its end: its header,
    then exactly the length it declares, as much as has come.  A frame only
    partly come stays here (the socket drained, so the reactor waits for the
    rest instead of spinning); the frames after a whole one stay in the
    socket, which therefore stays readable for the reactor: no whole frame
    is ever held here unseen, even while the reader is paused.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._header = bytearray(FRAME.size)
        self._kind = 0
        self._payload: Optional[bytearray] = None
        """The frame being read, once its header is in (C{None}: reading a header)."""
        self._have = 0
        """How much of the header, or of the payload, is in."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self) -> Optional[tuple[int, bytes]]:
        """The next whole frame; C{None} when it has not all come yet; raises L{WorkerGone} at the end."""
        while True:
            if self._payload is None:
                if not self._read_into(memoryview(self._header)[self._have :]):
                    return None
                if self._have < FRAME.size:
                    continue
                length, self._kind = FRAME.unpack(self._header)
                if length > MAX_FRAME:
                    raise WorkerBroken(
                        f"it sent a message of {length} bytes (at most {MAX_FRAME} make sense)"
                    )
                self._payload, self._have = bytearray(length), 0
            if self._have == len(self._payload):
                frame = self._kind, bytes(self._payload)
                self._payload, self._have = None, 0
                return frame
            if not self._read_into(memoryview(self._payload)[self._have :]):
                return None

    def _read_into(self, room: memoryview) -> bool:
        """Read what has come into C{room}: C{False} when nothing has."""
        try:
            count = self._sock.recv_into(room)
        except BlockingIOError:
            return False
        except OSError as e:
            raise WorkerGone(str(e) or type(e).__name__) from e
        if not count:
            midway = self._have or self._payload is not None
            raise WorkerGone(
                "the capture worker closed its socket" + (" in the middle of a message" if midway else "")
            )
        self._have += count
        return True

    def send(self, frame: bytes, fd: Optional[int] = None) -> None:
        """
        Send a frame at once, or raise L{WorkerBroken}: the worker has left
        the socket's whole buffer unread, hundreds of frames (the daemon
        sends one per data channel and per setsampling, each well under the
        socket's buffer, so each goes as one piece or not at all): it is stuck.
        """
        try:
            sent = socket.send_fds(self._sock, [frame], [fd] if fd is not None else [])
        except BlockingIOError:
            sent = 0
        if sent < len(frame):
            raise WorkerBroken("it does not read what the daemon sends it")

    def close(self) -> None:
        self._sock.close()


def _status(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


_EMPTY = PacketBatch(b"", b"")


@implementer(ICaptureHandle)
class WorkerCaptureHandle:
    """A capture run by a worker process; see the module docstring."""

    log = Logger()

    def __init__(self, process: ProcessLike, call: Call, events: EventEnd, description: str = "") -> None:
        self.process = process
        self.linktype = 0
        self.description = description
        self.options = CaptureOptions()
        self.relayed = False
        """The packets come through the event socket (a channel that cannot be handed over)."""
        self._call = call
        self._events = events
        self._sink: Optional[IPacketSink] = None
        self._sampler: Optional[Sampler] = None
        self._closed = False
        self._closing = False
        self._killed = False
        """Killed by the service as it stopped (a close under way then says nothing of it)."""
        self._on_closed: Optional[Callable[[WorkerCaptureHandle], None]] = None
        self._ended_because: Optional[str] = None
        """Why the daemon ended a worker it could no longer talk to (see L{_end_broken})."""

    # --- requests (capture threads) -----------------------------------------------

    def _request(self, request: dict[str, Any], timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        if self._closed:
            raise CaptureError("the capture is closed")
        try:
            reply = self._call(request, timeout)
        except WorkerGone as e:
            raise CaptureError(self._gone_text(str(e))) from e
        counts = reply.get("counts")
        if counts is not None:
            self._mirror(*counts)
        if "error" in reply:
            raise CaptureError(str(reply["error"]))
        return reply

    def _gone_text(self, why: str) -> str:
        if self._ended_because is not None:
            return f"the capture worker (pid {self.process.pid}) was ended: {self._ended_because}"
        code = self.process.poll()
        # A worker's socket closes as it exits, a moment before it can be
        # reaped: wait that moment (bounded; only on this failure path) so
        # the client is told how the worker ended, not just that it went.
        deadline = time.monotonic() + REAP_GRACE
        while code is None and time.monotonic() < deadline:
            time.sleep(0.002)
            code = self.process.poll()
        if code is not None:
            return f"the capture worker (pid {self.process.pid}) ended: {_status(code)}"
        return f"the capture worker (pid {self.process.pid}) does not answer: {why}"

    def open(self, device: str, options: CaptureOptions) -> None:
        """Have the worker open and activate the capture (raises L{CaptureError})."""
        self.options = options
        self.linktype = int(
            self._request({"op": "open", "device": device, "options": options_to_json(options)})["linktype"]
        )

    def set_filter(self, program: BpfProgram) -> None:
        self._request({"op": "filter", "program": program_to_json(program)})

    def stats(self) -> CaptureStats:
        reply = self._request({"op": "stats"})
        return CaptureStats(reply["received"], reply["dropped"], reply["interface_dropped"])

    def close(self) -> None:
        """Ask the worker to stop, then wait for it (killed if it will not go): never a zombie."""
        if self._closed or self._closing:
            return
        self._closing = True
        died_first = self.process.poll() is not None
        if not died_first:
            try:
                self._call({"op": "close"}, COMMAND_TIMEOUT)
            except WorkerGone:
                died_first = True
        self._closed = True
        try:
            code = self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if (died_first or code != 0) and not self._killed:
            self.log.warn(
                "{capture}: capture worker pid={pid} ended on its own ({status})",
                capture=self.description or "capture",
                pid=self.process.pid,
                status=_status(code),
            )
        self._release()

    def expect_end(self) -> None:
        """The worker may end now without that being a fault (the service is stopping)."""
        self._killed = True

    def kill(self) -> None:
        """The service is stopping: end the worker now, and wait for it."""
        if self._closed:
            return
        self._closed = self._killed = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._release()

    def _release(self) -> None:
        self._events.close()
        closer = getattr(self._call, "close", None)
        if closer is not None:
            closer()
        if self._on_closed is not None:
            self._on_closed(self)

    # --- the reactor thread ------------------------------------------------------------

    def forward_to(self, sink: IPacketSink, sampler: Optional[Sampler]) -> None:
        """
        The data channel is up: the worker forwards to it from now on (its
        socket handed over), or relays the packets here for C{sink} to send.
        """
        self._sink, self._sampler = sink, sampler
        spec, sock = sink_spec(sink, self.options)
        self.relayed = sock is None
        # Relayed packets go through the session's own reader, which samples them.
        spec["sampling"] = (0, 0) if self.relayed else sampling_of(sampler)
        try:
            self._events.send(encode_json(FORWARD, spec), sock.fileno() if sock is not None else None)
        except WorkerBroken as e:
            self._end_broken(str(e))
        except OSError:
            pass  # the worker is gone: the next read says so

    @property
    def owns_data_channel(self) -> bool:
        """
        Whether the worker sends on the data channel's socket itself: then
        it must flush and close first, and the daemon's copy after (an
        orderly close here would shut the shared socket down under it).
        """
        return self._sink is not None and not self.relayed

    def set_sampling(self, sampler: Optional[Sampler]) -> None:
        """A setsampling during the capture: the worker samples from its next batch on."""
        self._sampler = sampler
        if not self.owns_data_channel:
            return  # not forwarding yet (the spec carries it), or relayed: sampled here
        try:
            self._events.send(encode_json(SAMPLING, {"sampling": sampling_of(sampler)}), None)
        except WorkerBroken as e:
            self._end_broken(str(e))
        except OSError:
            pass  # the worker is gone: the next read says so

    def _end_broken(self, why: str) -> None:
        """
        The worker reads nothing (stopped, or wedged), or its stream makes
        no sense: end it rather than wait on it in the reactor.  Its capture
        fails with this reason (the event socket closes: the next read).
        """
        if self._closed or self._ended_because is not None:
            return
        self._ended_because = why
        self._killed = True  # said here, once: not again as the handle closes
        self.log.warn(
            "{capture}: capture worker pid={pid} ended: {why}",
            capture=self.description or "capture",
            pid=self.process.pid,
            why=why,
        )
        self.process.kill()

    def fileno(self) -> int:
        return self._events.fileno()

    def read_batch(self, max_packets: int) -> PacketBatch:
        """
        Relayed packets, if any; meanwhile the worker's counters, warnings
        and failure.  Never waits: what has not come yet, or is left after
        a bounded turn, keeps the socket readable for the next one.
        """
        for _ in range(64):
            try:
                frame = self._events.receive()
            except WorkerBroken as e:
                self._end_broken(str(e))
                raise CaptureError(self._gone_text(str(e))) from e
            except WorkerGone as e:
                raise CaptureError(self._gone_text(str(e))) from e
            if frame is None:
                return _EMPTY
            kind, payload = frame
            if kind == BATCH:
                return decode_batch(payload)
            if kind == COUNTS:
                self._mirror(*COUNTS_BODY.unpack(payload))
            elif kind == FAILED:
                raise CaptureError(payload.decode("utf-8", "replace"))
            elif kind == WARNING:
                self.log.warn("{text}", text=payload.decode("utf-8", "replace"))
        return _EMPTY

    def _mirror(self, sent: int, dropped: int, bytes_sent: int, skipped: int) -> None:
        """The worker's counters, where the session reads them (unless the sink here counts itself)."""
        sink = self._sink
        if sink is None or self.relayed:
            return
        sink.sent, sink.dropped, sink.bytes_sent = sent, dropped, bytes_sent
        if self._sampler is not None:
            self._sampler.skipped = skipped


WORKER_MODULE = "rpcapsvc.server.worker"


def spawn_worker(description: str = "") -> WorkerCaptureHandle:
    """Start a worker process with its two sockets (in a capture thread: it forks)."""
    command_here, command_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    events_here, events_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(command_there.fileno()), str(events_there.fileno())],
            pass_fds=(command_there.fileno(), events_there.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError as e:
        for s in (command_here, command_there, events_here, events_there):
            s.close()
        raise CaptureError(f"cannot start a capture worker: {e}") from e
    command_there.close()
    events_there.close()
    return WorkerCaptureHandle(process, CommandSocket(command_here), EventSocket(events_here), description)


@implementer(ICaptureSystem)
class WorkerCaptureSystem(PcapySystem):
    """
    L{PcapySystem} whose captures each run in a worker process
    (C{--capture-workers}); listing and probing stay in the daemon.
    """

    log = Logger()

    def __init__(self, run_blocking: Optional[BlockingRunner] = None, reactor: Any = None) -> None:
        super().__init__(run_blocking, reactor)
        self.workers: set[WorkerCaptureHandle] = set()
        self._lock = threading.Lock()

    def open(self, device: str, options: CaptureOptions) -> ICaptureHandle:
        handle = spawn_worker(f"capture on {device}")
        with self._lock:
            self.workers.add(handle)
        handle._on_closed = self._forget
        try:
            handle.open(device, options)
        except CaptureError:
            handle.close()
            raise
        return handle

    def _forget(self, handle: WorkerCaptureHandle) -> None:
        with self._lock:
            self.workers.discard(handle)

    def stopping(self) -> None:
        """
        The service is stopping: whatever ends a worker from now on is
        expected, not a fault to log (a worker also dies with the capture
        thread that started it, and the service ends those threads).
        """
        with self._lock:
            left = list(self.workers)
        for handle in left:
            handle.expect_end()

    def stop_workers(self) -> None:
        """Kill every worker left (the service is stopping) and wait for each."""
        with self._lock:
            left = list(self.workers)
        for handle in left:
            handle.kill()
        if left:
            self.log.info("Stopped {count} capture worker(s)", count=len(left))


# --- the worker's side ------------------------------------------------------------------


class Sinks(Protocol):
    def __call__(self, spec: dict[str, Any], fd: Optional[int]) -> IPacketSink: ...


class _OneProtocol(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.proto


def adopt_sink(reactor: Any, spec: dict[str, Any], fd: int) -> IPacketSink:
    """The sink C{spec} describes, on the socket C{fd} (which it dups: the caller closes C{fd})."""
    sink = sink_from_settings(spec, reactor)
    family = socket.AddressFamily(spec["family"])
    if isinstance(sink, TcpPacketSink):
        reactor.adoptStreamConnection(fd, family, _OneProtocol(sink))
        return sink
    port = reactor.adoptDatagramPort(fd, family, sink)
    port.stopReading()  # as the daemon's: nothing is read, refusals come back from the sends
    return sink


@implementer(IPacketSink)
class RelaySink:
    """In a worker: packets back to the daemon, whose sink sends them (a TLS channel)."""

    def __init__(self, events: Any) -> None:
        self._events = events
        self.sent = 0
        self.dropped = 0
        self.bytes_sent = 0
        self.log_tag = ""

    def write_batch(self, batch: PacketBatch) -> None:
        self._events.write(encode_batch(batch))
        self.sent += len(batch)

    def attach_producer(self, producer: IPushProducer) -> None:
        self._events.registerProducer(producer, True)

    def close(self) -> None:
        try:
            self._events.unregisterProducer()
        except RuntimeError:
            pass

    def set_lost_callback(self, callback: Callable[[str], None]) -> None:
        pass


class CaptureWorker:
    """
    A worker's whole job, apart from its sockets: the requests it answers
    and the forwarding it runs.  C{send_event} writes a frame to the daemon.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        system: ICaptureSystem,
        send_event: Callable[[bytes], None],
        sinks: Optional[Sinks] = None,
        relay: Optional[Callable[[], IPacketSink]] = None,
    ) -> None:
        self.reactor = reactor
        self.system = system
        self.handle: Optional[ICaptureHandle] = None
        self.sink: Optional[IPacketSink] = None
        self.reader: Optional[CaptureReader] = None
        self._send_event = send_event
        self._sinks: Sinks = sinks or (lambda spec, fd: adopt_sink(reactor, spec, fd))  # type: ignore[arg-type]
        self._relay = relay
        self._reported: Optional[tuple[int, int, int, int]] = None
        self._counting: Optional[LoopingCall] = None
        self.finished = False

    def counts(self) -> tuple[int, int, int, int]:
        sink, reader = self.sink, self.reader
        if sink is None:
            return 0, 0, 0, 0
        skipped = reader.sampler.skipped if reader is not None and reader.sampler is not None else 0
        return int(sink.sent), int(sink.dropped), int(sink.bytes_sent), skipped

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        try:
            if op == "open":
                self.handle = self.system.open(request["device"], options_from_json(request["options"]))
                return {"linktype": int(self.handle.linktype)}
            if self.handle is None:
                return {"error": "no capture is open in this worker"}
            if op == "filter":
                self.handle.set_filter(program_from_json(request["program"]))
                return {}
            if op == "stats":
                s = self.handle.stats()
                return {
                    "received": s.received,
                    "dropped": s.dropped,
                    "interface_dropped": s.interface_dropped,
                    "counts": self.counts(),
                }
            if op == "close":
                return {"counts": self.finish()}
        except Exception as e:  # CaptureError, or a request this worker cannot take: the daemon says it
            return {"error": str(e) or type(e).__name__, "counts": self.counts()}
        return {"error": f"unknown request {op!r}"}

    def forward(self, spec: dict[str, Any], fd: Optional[int]) -> None:
        """Forward the capture to the channel C{spec} describes (C{fd}: its socket)."""
        if self.handle is None or self.reader is not None or self.finished:
            return
        try:
            if spec["kind"] == "relay" or fd is None:
                assert self._relay is not None, "no relay in this worker"
                sink = self._relay()
            else:
                sink = self._sinks(spec, fd)
        except Exception as e:
            self._send_event(
                encode_frame(FAILED, f"the capture worker cannot use the data channel: {e}".encode())
            )
            return
        sink.log_tag = spec.get("log_tag", "")
        reader = CaptureReader(self.reactor, self.handle, sink.write_batch, self._failed)
        reader.sampler = sampler_for(*spec.get("sampling", (0, 0)))
        # The daemon's end of the channel sees the peer go as well, and ends the capture.
        sink.set_lost_callback(lambda why: reader.stopProducing())
        self.sink, self.reader = sink, reader
        sink.attach_producer(reader)
        reader.start()
        self._counting = LoopingCall(self.report_counts)
        self._counting.clock = self.reactor
        self._counting.start(COUNTS_INTERVAL, now=False)

    def event_received(self, kind: int, payload: bytes, fd: Optional[int]) -> None:
        """An event from the daemon: forward to a channel (C{fd}: its socket), or sample anew."""
        if kind == FORWARD:
            self.forward(json.loads(payload), fd)
        elif kind == SAMPLING:
            self.set_sampling(*json.loads(payload)["sampling"])

    def set_sampling(self, method: int, value: int) -> None:
        """Sample from the next batch on (the daemon's setsampling during a capture)."""
        if self.reader is not None:
            self.reader.sampler = sampler_for(method, value)

    def report_counts(self) -> None:
        counts = self.counts()
        if counts != self._reported:
            self._reported = counts
            self._send_event(encode_frame(COUNTS, COUNTS_BODY.pack(*counts)))

    def _failed(self, why: str) -> None:
        self._send_event(encode_frame(FAILED, why.encode("utf-8", "replace")))

    def finish(self) -> tuple[int, int, int, int]:
        """Stop forwarding (a partly filled udpstr datagram goes out), close the capture; the final counts."""
        if not self.finished:
            self.finished = True
            if self._counting is not None and self._counting.running:
                self._counting.stop()
            if self.reader is not None:
                self.reader.stopProducing()
            if self.sink is not None:
                self.sink.close()
            if self.handle is not None:
                self.handle.close()
        return self.counts()


class _CommandProtocol(protocol.Protocol):
    def __init__(self, worker: CaptureWorker, on_end: Callable[[], None]) -> None:
        self.worker = worker
        self.on_end = on_end
        self.decoder = FrameDecoder()

    def dataReceived(self, data: bytes) -> None:
        for kind, payload in self.decoder.feed(data):
            if kind != REQUEST:
                continue
            request = json.loads(payload)
            reply = self.worker.handle_request(request)
            self.transport.write(encode_json(REPLY, reply))  # type: ignore[union-attr]
            if request.get("op") == "close":
                self.transport.loseConnection()  # type: ignore[union-attr]  # the reply goes first; then the end

    def connectionLost(self, reason: Any = None) -> None:
        self.on_end()  # the daemon closed it, or died


@implementer(IFileDescriptorReceiver)
class _EventProtocol(protocol.Protocol):
    def __init__(self, on_end: Callable[[], None]) -> None:
        self.worker: Optional[CaptureWorker] = None
        self.on_end = on_end
        self.decoder = FrameDecoder()
        self.fds: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        for kind, payload in self.decoder.feed(data):
            if self.worker is None:
                continue
            fd = self.fds.pop(0) if kind == FORWARD and self.fds else None
            try:
                self.worker.event_received(kind, payload, fd)
            finally:
                if fd is not None:
                    os.close(fd)  # the sink's transport holds its own copy

    def connectionLost(self, reason: Any = None) -> None:
        self.on_end()


def _die_with_parent() -> None:
    """The kernel kills this worker if the daemon dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """The worker process: C{python -m rpcapsvc.server.worker COMMAND_FD EVENT_FD}."""
    command_fd, event_fd = int(argv[0]), int(argv[1])
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon's group: the daemon decides
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as installed
    from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner

    keep_batch_buffers_in_heap()
    r: Any = installed
    ended: list[bool] = []

    def end() -> None:
        if not ended:
            ended.append(True)
            if not worker.finished:
                worker.finish()
            r.callLater(0, r.stop)

    events = _EventProtocol(end)
    worker = CaptureWorker(
        r,
        PcapySystem(reactor=r),
        lambda frame: events.transport.write(frame),  # type: ignore[union-attr]
        relay=lambda: RelaySink(events.transport),
    )
    events.worker = worker

    @provider(ILogObserver)
    def to_daemon(event: dict[str, Any]) -> None:
        # Warnings and worse go to the daemon's log, one line each (never a traceback).
        if event.get("log_level", LogLevel.info) >= LogLevel.warn and events.transport is not None:
            text = (formatEvent(event).splitlines() or [""])[0]
            events.transport.write(
                encode_frame(WARNING, f"capture worker pid={os.getpid()}: {text}".encode())
            )

    globalLogBeginner.beginLoggingTo([to_daemon], redirectStandardIO=False, discardBuffer=True)
    r.adoptStreamConnection(command_fd, socket.AF_UNIX, _OneProtocol(_CommandProtocol(worker, end)))
    r.adoptStreamConnection(event_fd, socket.AF_UNIX, _OneProtocol(events))
    os.close(command_fd)
    os.close(event_fd)
    r.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
