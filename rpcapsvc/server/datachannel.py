"""
Data channels: where a session's captured packets go.

A sink takes whole L{PacketBatch}es from the capture reader and writes each
as few times as it can: one C{write} per batch over TCP, one datagram per
packet over classic UDP, MTU-sized datagrams packed with many packets over
udpstr (ExtraHop's format, C{--udp-mtu}; over TCP too with C{--udpstr-tcp},
as the fork frames every channel).  On Linux a batch goes to the kernel in
one system call with no copy in Python (L{rpcapsvc.server.fastsend}):
C{sendmsg} over TCP while Twisted's buffer is empty, C{sendmmsg} over UDP,
UDP GSO for runs of equal-sized datagrams (unless C{--no-udp-gso}).  L{DataChannels} opens sinks
with a reactor; the session only sees L{IPacketSink}.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Callable, ClassVar, Optional, Union

from twisted.internet import defer, protocol
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from ..connections import SingleProtocolFactory, TlsSettings
from ..protocol.datachannel import PacketBatch, encode_packet_messages, encode_packet_stream
from ..protocol.udpstr import UdpStrFramer, packets_touched
from . import fastsend
from .fastsend import BATCH_SENDER, packet_vectors


class IPacketSink(Interface):
    """The sending end of a data channel."""

    sent = Attribute("Packets handed to the channel.")
    dropped = Attribute(
        "Packets the channel could not send whole (UDP only; with udpstr, those in refused datagrams)."
    )
    bytes_sent = Attribute(
        "Bytes written to the channel: packet messages or udpstr datagrams, RPCAP headers included "
        "(counted once per batch, for the metrics)."
    )

    def write_batch(batch: PacketBatch) -> None:
        """Frame and send a batch."""

    def attach_producer(producer: IPushProducer) -> None:
        """Let the channel pause C{producer} while it cannot keep up."""

    def close() -> None:
        """Close the channel; idempotent."""

    def set_lost_callback(callback: Callable[[str], None]) -> None:
        """Call C{callback} with a reason when the peer closes the channel."""

    log_tag = Attribute(
        "Whose channel this is, for its log lines (C{session=N peer=HOST:PORT}); set by the session."
    )


class IDataChannels(Interface):
    """Opens a session's data channel; see L{DataChannels}."""

    def listen_tcp(
        interface: str,
        allowed_host: str,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> tuple[int, defer.Deferred[IPacketSink]]:
        """
        Listen on a fresh port for the client's data connection: the port, and the sink to come.
        C{read_timeout_ms} is the capture's: how long a partly filled udpstr datagram may wait.
        """

    def connect_tcp(
        host: str, port: int, snaplen: int, tls: Optional[TlsSettings] = None, read_timeout_ms: int = 1000
    ) -> defer.Deferred[IPacketSink]:
        """Connect to the client's data port."""

    def open_udp(host: str, port: int, snaplen: int, read_timeout_ms: int) -> tuple[int, IPacketSink]:
        """Send datagrams to the client's data port: our port, and the sink."""


def set_send_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a C{size}-byte send buffer, past the sysctl cap when we may (root)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

DEFAULT_UDP_SNDBUF = 8 * 1024 * 1024
"""
The send buffer of UDP data channels unless told otherwise: ExtraHop's
rpcapd forces the same.  A capture ring hands over packets a block at a time
(hundreds at once), and the batch sends put them on the wire as fast: with the
kernel's default (208 KiB) a burst towards a real NIC overflows it and the
datagrams are refused.  Memory is taken only while datagrams wait.
"""


def send_buffer_size(sock: socket.socket) -> int:
    """The send buffer the kernel gave C{sock}, in bytes (Linux reports twice the usable size)."""
    reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return int(reported) // 2 if sys.platform.startswith("linux") else int(reported)


class _SinkBase:
    batch_sender: Optional[fastsend.LibcBatchSender] = BATCH_SENDER
    """The batch system calls (L{fastsend}); C{None} where the platform has none, and for tests."""
    kind: ClassVar[str]
    """The name L{settings} gives this class, for L{sink_from_settings}."""

    def __init__(self, snaplen: int) -> None:
        self.snaplen = snaplen
        self.sent = 0
        self.dropped = 0
        self.bytes_sent = 0
        self.log_tag = ""
        self._on_lost: Optional[Callable[[str], None]] = None
        self._closing = False

    def set_lost_callback(self, callback: Callable[[str], None]) -> None:
        self._on_lost = callback

    def _lost(self, why: str) -> None:
        if not self._closing and self._on_lost is not None:
            self._closing = True
            self._on_lost(why)


@implementer(IPacketSink)
class TcpPacketSink(_SinkBase, protocol.Protocol):
    """Classic framing over a TCP data connection."""

    log = Logger()
    kind = "tcp"

    def __init__(self, snaplen: int) -> None:
        super().__init__(snaplen)
        self.connected_deferred: defer.Deferred[TcpPacketSink] = defer.Deferred()

    def settings(self) -> dict[str, Any]:
        """What makes this sink again (L{sink_from_settings}; a capture worker's copy): JSON types."""
        return {"kind": self.kind, "snaplen": self.snaplen}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], clock: IReactorTime) -> TcpPacketSink:
        return cls(settings["snaplen"])

    def connectionMade(self) -> None:
        self.connected_deferred.callback(self)

    def dataReceived(self, data: bytes) -> None:
        """The client never sends on the data channel; ignore it."""

    def write_batch(self, batch: PacketBatch) -> None:
        sender = self.batch_sender
        fd = sender.writable_fd(self.transport) if sender is not None else None
        if fd is None:
            data = encode_packet_stream(batch, self.snaplen, self.sent + 1)
            self.transport.write(data)  # type: ignore[union-attr]
            self.sent += len(batch)
            self.bytes_sent += len(data)
            return
        assert sender is not None
        # Twisted's buffer is empty: the batch goes straight to the socket,
        # and only what the kernel did not take goes through the transport,
        # which buffers it and pauses the capture reader while it is full.
        vectors = packet_vectors(batch, self.snaplen, self.sent + 1)
        try:
            done = sender.send_stream(fd, vectors)
        except OSError:
            done = 0  # a broken connection: Twisted finds out on its write and closes
        if done < vectors.total:
            self.transport.write(vectors.tail(done))  # type: ignore[union-attr]
        self.sent += len(batch)
        self.bytes_sent += vectors.total

    def attach_producer(self, producer: IPushProducer) -> None:
        self.transport.registerProducer(producer, True)  # type: ignore[union-attr]

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            try:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
            except RuntimeError:
                pass
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost(f"data connection closed: {reason.getErrorMessage()}")


@implementer(IPacketSink)
class TcpUdpStrPacketSink(TcpPacketSink):
    """
    udpstr over a TCP data connection, as ExtraHop's rpcapd frames every
    data channel: the datagrams of L{UdpStrFramer} written back to back, one
    C{write} per batch.  As over UDP, a partly filled datagram goes out when
    the capture has been quiet for the read timeout, and on close.
    """

    kind = "tcp-udpstr"

    def __init__(self, snaplen: int, mtu: int, clock: IReactorTime, flush_after: float) -> None:
        super().__init__(snaplen)
        self.framer = UdpStrFramer(mtu)
        self._clock = clock
        self._flush_after = flush_after
        self._flush_call: Optional[IDelayedCall] = None

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "mtu": self.framer.mtu, "flush_after": self._flush_after}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], clock: IReactorTime) -> TcpUdpStrPacketSink:
        return cls(settings["snaplen"], settings["mtu"], clock, settings["flush_after"])

    def write_batch(self, batch: PacketBatch) -> None:
        datagrams = self.framer.pack_batch(batch, self.snaplen, self.sent + 1)
        self.sent += len(batch)
        if datagrams:
            data = b"".join(datagrams)
            self.transport.write(data)  # type: ignore[union-attr]
            self.bytes_sent += len(data)
        if self.framer.pending and self._flush_call is None:
            self._flush_call = self._clock.callLater(self._flush_after, self.flush)

    def flush(self) -> None:
        """Send the partly filled datagram, if there is one."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.transport is None:
            return
        datagram = self.framer.flush()
        if datagram is not None:
            self.transport.write(datagram)
            self.bytes_sent += len(datagram)

    def close(self) -> None:
        if not self._closing:
            self.flush()
        super().close()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        super().connectionLost(reason)


NETWORK_SEND_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN",
        "EWOULDBLOCK",
        "EINTR",
        "ENOBUFS",
        "ENOMEM",
        "EMSGSIZE",
        "ECONNREFUSED",  # ICMP port unreachable
        "EHOSTUNREACH",  # ICMP host unreachable or administratively prohibited (a firewall's reject)
        "ENETUNREACH",
        "EHOSTDOWN",
        "ENETDOWN",
        "EACCES",  # ICMP prohibited codes on some kernels
        "EPERM",  # a local firewall rule
        "ENONET",
        "EPROTO",
        "EOPNOTSUPP",
    )
    if hasattr(errno, name)
)
"""
Send errors that a network or the kernel's state can produce: each loses the
datagram and is counted; the capture goes on.  Anything else (a closed
socket) is a fault and ends the capture with an error.
"""


@implementer(IPacketSink)
class UdpPacketSink(_SinkBase, protocol.DatagramProtocol):
    """
    Classic framing over UDP: one datagram per packet.  UDP has no
    backpressure, so a datagram the kernel will not take is dropped and
    counted (the client sees it in the stats' kernel drops).
    """

    log = Logger()
    noisy = False
    kind = "udp"

    def _sender(self) -> Callable[[bytes], object]:
        # The port's own socket, straight: Twisted's write() adds a Python
        # layer per datagram to the one system call that is the whole job.
        sock = getattr(self.transport, "socket", None)
        return sock.send if sock is not None else self.transport.write  # type: ignore[union-attr,return-value]

    def __init__(self, snaplen: int, segmenting: bool = False) -> None:
        super().__init__(snaplen)
        self.send_errors: dict[str, int] = {}
        """Datagrams refused, by the reason the kernel gave (each reason logged once)."""
        self.segmenting = segmenting
        """
        Whether to send with UDP GSO (unless C{--no-udp-gso}); off for good
        once the kernel refuses it.
        """
        self._segments_up_to = 1 << 16
        """The largest datagram the path has not refused to segment."""

    def settings(self) -> dict[str, Any]:
        """What makes this sink again (L{sink_from_settings}; a capture worker's copy): JSON types."""
        return {"kind": self.kind, "snaplen": self.snaplen, "segmenting": self.segmenting}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], clock: IReactorTime) -> UdpPacketSink:
        return cls(settings["snaplen"], settings.get("segmenting", False))

    def _segmenting_refused(self) -> None:
        self.segmenting = False
        self.log.info(
            "{tag}UDP data channel to {to}: the kernel will not segment (UDP GSO); "
            "sending each datagram on its own",
            tag=f"{self.log_tag} " if self.log_tag else "",
            to=self._peer(),
        )

    def _refused(self, error: Exception) -> None:
        # The network or the kernel's state (a full buffer, an ICMP
        # unreachable or prohibited from a firewall, no route, a local
        # firewall's EPERM): the datagram is lost, the capture goes on, and
        # the client sees the loss in the stats.
        why = errno.errorcode.get(getattr(error, "errno", None) or 0, "") or type(error).__name__
        if why not in self.send_errors:
            self.log.warn(
                "{tag}UDP data channel to {to}: datagrams refused ({why}: {error}); counted as drops",
                tag=f"{self.log_tag} " if self.log_tag else "",
                to=self._peer(),
                why=why,
                error=error,
            )
        self.send_errors[why] = self.send_errors.get(why, 0) + 1

    def _peer(self) -> str:
        try:
            host, port = self.transport.socket.getpeername()[:2]  # type: ignore[union-attr]
        except Exception:
            return "the client"
        return f"{host}:{port}"

    def _send(self, datagram: bytes, send: Optional[Callable[[bytes], object]] = None) -> bool:
        """Send one datagram (with C{send}, a batch's L{_sender}); whether it went, a network's refusal counted."""
        try:
            (send or self._sender())(datagram)
        except MessageLengthError as e:
            self._refused(e)
            return False
        except OSError as e:
            if e.errno not in NETWORK_SEND_ERRORS:
                raise
            self._refused(e)
            return False
        return True

    def _socket_fd(self) -> Optional[int]:
        if self.batch_sender is None:
            return None
        return fastsend.optional_fd(getattr(self.transport, "socket", None))

    def _refused_in_batch(self, index: int, error: OSError) -> bool:
        """C{on_refused} of the batch sends: count a network's error and go on, raise anything else."""
        if error.errno not in NETWORK_SEND_ERRORS:
            raise error
        self._refused(error)
        return True

    def write_batch(self, batch: PacketBatch) -> None:
        fd = self._socket_fd()
        if fd is not None and self.batch_sender is not None:
            # One sendmmsg for the batch: each message a datagram, its header
            # and the packet's bytes given to the kernel where they lie.
            vectors = packet_vectors(batch, self.snaplen, self.sent + self.dropped + 1)
            if self.segmenting:
                # UDP GSO: each run of equal-sized datagrams down the stack as one.
                refused, largest = self.batch_sender.send_datagrams_segmented(
                    fd, vectors, self._segments_up_to, self._refused_in_batch
                )
                if largest is None:
                    self._segmenting_refused()
                else:
                    self._segments_up_to = largest
            else:
                refused = self.batch_sender.send_datagrams(fd, vectors, self._refused_in_batch)
            self.sent += vectors.count - len(refused)
            self.dropped += len(refused)
            self.bytes_sent += vectors.total - sum(map(vectors.message_length, refused))
            return
        send = self._sender()
        messages = encode_packet_messages(batch, self.snaplen, self.sent + self.dropped + 1)
        lost = [message for message in messages if not self._send(message, send)]
        self.sent += len(messages) - len(lost)
        self.dropped += len(lost)
        self.bytes_sent += sum(map(len, messages)) - sum(map(len, lost))

    def connectionRefused(self) -> None:
        """The collector has no socket there (yet): the datagram is lost."""
        self.dropped += 1
        self.sent -= 1

    def attach_producer(self, producer: IPushProducer) -> None:
        """UDP cannot push back."""

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.stopListening()  # type: ignore[attr-defined]


@implementer(IPacketSink)
class UdpStrPacketSink(UdpPacketSink):
    """
    ExtraHop's udpstr framing: packets packed into datagrams of at most
    C{mtu} bytes.  A partly filled datagram goes out when the capture has been
    quiet for the read timeout, so a trickle of packets is not held back.
    C{dropped} counts the packets that lost bytes in datagrams the kernel
    would not take.
    """

    kind = "udpstr"

    def __init__(
        self, snaplen: int, mtu: int, clock: IReactorTime, flush_after: float, segmenting: bool = False
    ) -> None:
        super().__init__(snaplen, segmenting)
        self.framer = UdpStrFramer(mtu)
        self.datagrams = 0
        self._clock = clock
        self._flush_after = flush_after
        self._flush_call: Optional[IDelayedCall] = None
        self._last_datagram = b""

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "mtu": self.framer.mtu,
            "flush_after": self._flush_after,
        }

    @classmethod
    def from_settings(cls, settings: dict[str, Any], clock: IReactorTime) -> UdpStrPacketSink:
        return cls(
            settings["snaplen"], settings["mtu"], clock, settings["flush_after"], settings["segmenting"]
        )

    def write_batch(self, batch: PacketBatch) -> None:
        datagrams = self.framer.pack_batch(batch, self.snaplen, self.sent + 1)
        self.sent += len(batch)
        fd = self._socket_fd() if len(datagrams) > 1 else None
        if fd is not None and self.batch_sender is not None:
            if self.segmenting:
                # UDP GSO: runs of MTU-sized datagrams in one send each.
                refused, self.segmenting = self.batch_sender.send_segmented(
                    fd, datagrams, self._refused_in_batch
                )
                if not self.segmenting:
                    self._segmenting_refused()
            else:
                refused = self.batch_sender.send_buffers(fd, datagrams, self._refused_in_batch)
            lost = [datagrams[i] for i in refused]
        else:
            lost = [datagram for datagram in datagrams if not self._send_datagram(datagram)]
        self._count(datagrams, lost)
        if self.framer.pending and self._flush_call is None:
            self._flush_call = self._clock.callLater(self._flush_after, self.flush)

    def _send_datagram(self, datagram: bytes) -> bool:
        self._last_datagram = datagram  # for connectionRefused, which Twisted calls from inside the send
        return self._send(datagram)

    def _count(self, datagrams: list[bytes], lost: list[bytes]) -> None:
        """Count C{datagrams} sent but for C{lost}, whose packets are dropped."""
        self.datagrams += len(datagrams) - len(lost)
        self.bytes_sent += sum(map(len, datagrams)) - sum(map(len, lost))
        self.dropped += sum(map(packets_touched, lost))

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        datagram = self.framer.flush()
        if datagram is not None and self.transport is not None:
            self._count([datagram], [] if self._send_datagram(datagram) else [datagram])

    def connectionRefused(self) -> None:
        # Twisted reports the refusal from inside the send of this datagram.
        self.dropped += packets_touched(self._last_datagram)
        self.datagrams -= 1
        self.bytes_sent -= len(self._last_datagram)

    def close(self) -> None:
        if not self._closing:
            self.flush()
        super().close()


SocketSink = Union[TcpPacketSink, UdpPacketSink]

SINK_KINDS: dict[str, type[TcpPacketSink] | type[UdpPacketSink]] = {
    sink.kind: sink for sink in (TcpPacketSink, TcpUdpStrPacketSink, UdpPacketSink, UdpStrPacketSink)
}


def sink_from_settings(settings: dict[str, Any], clock: IReactorTime) -> SocketSink:
    """
    A sink like the one whose C{settings()} these are, not yet on a
    transport: a capture worker makes its copy of the daemon's sink so.
    Raises C{KeyError} for settings no sink here gave.
    """
    return SINK_KINDS[settings["kind"]].from_settings(settings, clock)


@implementer(IDataChannels)
class DataChannels:
    """Opens data channels with a reactor."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        accept_timeout: float = 30.0,
        udp_mtu: int = 0,
        udp_sndbuf: Optional[int] = DEFAULT_UDP_SNDBUF,
        tcp_udpstr: bool = False,
        udp_gso: bool = True,
    ) -> None:
        self._reactor = reactor
        self.accept_timeout = accept_timeout
        self.udp_mtu = udp_mtu
        """Non-zero: UDP data channels use udpstr datagrams of at most this size."""
        self.udp_sndbuf = udp_sndbuf
        """The send buffer asked for each UDP data channel (C{None}: the kernel's default)."""
        self.tcp_udpstr = tcp_udpstr
        """With C{udp_mtu}: TCP data channels carry udpstr datagrams too, as ExtraHop's rpcapd does."""
        self._said_capped = False
        self.udp_gso = udp_gso
        """
        With C{udp_mtu}: send udpstr datagrams with UDP GSO (Linux >= 4.18),
        runs of MTU-sized datagrams in one send that the kernel cuts up.  The
        collector receives the same datagrams, at a fraction of the daemon's
        CPU; but a capture on the sending host (tcpdump on lo, or on a NIC that
        segments in hardware) shows the uncut sends, up to 64 KiB each, so it
        is off unless asked for.
        """

    def _tcp_sink(self, snaplen: int, read_timeout_ms: int) -> TcpPacketSink:
        if self.tcp_udpstr and self.udp_mtu:
            return TcpUdpStrPacketSink(snaplen, self.udp_mtu, self._reactor, read_timeout_ms / 1000.0)
        return TcpPacketSink(snaplen)

    def listen_tcp(
        self,
        interface: str,
        allowed_host: str,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> tuple[int, defer.Deferred[IPacketSink]]:
        """
        Listen on a fresh port of C{interface} for one connection from
        C{allowed_host}; the Deferred fires with the sink once it connects,
        or fails after the accept timeout.
        """
        sink = self._tcp_sink(snaplen, read_timeout_ms)
        port: IListeningPort = self._reactor.listenTCP(  # type: ignore[attr-defined]
            0, SingleProtocolFactory(sink, tls, allowed_host), backlog=1, interface=interface
        )

        stopped: list[bool] = []

        def stop_listening() -> None:
            # Once only: a port stopped twice fails inside Twisted ("'Port'
            # object has no attribute 'socket'"), in a Deferred no one reads.
            if not stopped:
                stopped.append(True)
                port.stopListening()

        def cancel(d: defer.Deferred[IPacketSink]) -> None:
            stop_listening()

        def time_out() -> None:
            if not result.called:
                result.errback(TimeoutError("the client did not open the data connection in time"))

        result: defer.Deferred[IPacketSink] = defer.Deferred(cancel)
        timeout = self._reactor.callLater(self.accept_timeout, time_out)  # type: ignore[attr-defined]

        def connected(s: TcpPacketSink) -> TcpPacketSink:
            stop_listening()
            if timeout.active():
                timeout.cancel()
            if not result.called:
                result.callback(s)
            return s

        def cleanup(r: object) -> object:
            stop_listening()
            if timeout.active():
                timeout.cancel()
            return r

        sink.connected_deferred.addCallback(connected)
        result.addErrback(cleanup)
        return port.getHost().port, result  # type: ignore[attr-defined]

    def connect_tcp(
        self,
        host: str,
        port: int,
        snaplen: int,
        tls: Optional[TlsSettings] = None,
        read_timeout_ms: int = 1000,
    ) -> defer.Deferred[IPacketSink]:
        from twisted.internet.endpoints import HostnameEndpoint

        sink = self._tcp_sink(snaplen, read_timeout_ms)
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self.accept_timeout)
        factory = SingleProtocolFactory(sink, tls)
        d: defer.Deferred[Any] = endpoint.connect(factory)
        d.addCallback(lambda _: sink.connected_deferred)
        return d

    def open_udp(
        self, host: str, port: int, snaplen: int, read_timeout_ms: int = 1000
    ) -> tuple[int, IPacketSink]:
        sink: UdpPacketSink
        if self.udp_mtu:
            sink = UdpStrPacketSink(
                snaplen, self.udp_mtu, self._reactor, read_timeout_ms / 1000.0, segmenting=self.udp_gso
            )
        else:
            sink = UdpPacketSink(snaplen, segmenting=self.udp_gso)
        interface = "::" if ":" in host else ""
        udp_port = self._reactor.listenUDP(0, sink, interface=interface)  # type: ignore[attr-defined]
        try:
            # Nothing is read from a data channel.  A port left reading that gets
            # an ICMP "port unreachable" is reported by epoll as an error and
            # closed by the reactor; not reading, the error comes back from the
            # next send as ECONNREFUSED, and that datagram is counted lost.
            udp_port.stopReading()
            if self.udp_sndbuf:
                set_send_buffer(udp_port.socket, self.udp_sndbuf)
            udp_port.connect(host, port)
        except Exception:
            udp_port.stopListening()
            raise
        self._log_send_buffer(udp_port.socket, host, port)
        return udp_port.getHost().port, sink

    def _log_send_buffer(self, sock: socket.socket, host: str, port: int) -> None:
        """Say what the channel got: a buffer the kernel capped loses bursts, and the user can fix that."""
        try:
            size = send_buffer_size(sock)
        except OSError:
            return
        framing = f"udpstr MTU {self.udp_mtu}" if self.udp_mtu else "classic"
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.udp_sndbuf and size < self.udp_sndbuf and not self._said_capped:
            self._said_capped = True  # once: the cap is the machine's, the same for every channel
            self.log.warn(
                "UDP data channel to {to} ({framing}): send buffer {size} bytes, not the {wanted} asked "
                "(without CAP_NET_ADMIN the kernel caps it at net.core.wmem_max): bursts beyond it are "
                "dropped; raise net.core.wmem_max or run with CAP_NET_ADMIN",
                to=shown,
                framing=framing,
                size=size,
                wanted=self.udp_sndbuf,
            )
        else:
            self.log.info(
                "UDP data channel to {to} ({framing}): send buffer {size} bytes",
                to=shown,
                framing=framing,
                size=size,
            )
