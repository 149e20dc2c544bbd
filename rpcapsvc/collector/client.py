"""
An RPCAP client: the collector's side of the control connection, and the
receivers for the packets a daemon sends.

L{RpcapClientProtocol} answers each request with a Deferred that fires with
its reply or fails with L{RemoteError}; requests may be pipelined, and replies
are matched to them in order.  It works on
a connection we made to a passive daemon, or on one an active daemon made to
us.  L{start_capture} drives a whole capture: open, a filter compiled here
for the remote link type, the data channel (TCP either way round, classic
UDP or udpstr, told apart by each datagram's header; over TCP, classic or
udpstr as ExtraHop's rpcapd sends it, told apart by the first bytes), and
packets delivered to a callback in batches.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any, Callable, Optional

import attrs
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..capture.compiler import compile_filter
from ..connections import SingleProtocolFactory, tls_settings_of
from ..logtext import escaped, host_port
from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.datachannel import CapturedPacket, ClassicDatagramDecoder
from ..protocol.framing import DEFAULT_MAX_PAYLOAD, ControlStreamParser, MessageTooLarge, Received
from ..protocol.udpstr import DataStreamParser, UdpStrDecoder, is_udpstr_datagram
from ..protocol.wire import (
    AuthReply,
    AuthRequest,
    AuthType,
    BpfProgram,
    CloseRequest,
    EndCaptureRequest,
    ErrorReply,
    FindAllInterfacesRequest,
    Header,
    InterfaceInfo,
    MalformedMessage,
    Message,
    MessageType,
    OpenReply,
    OpenRequest,
    RemoteError,
    SetSamplingRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
    UpdateFilterRequest,
)
from .files import MAX_LINKTYPE

PacketCallback = Callable[[list[CapturedPacket]], None]


MAX_UNEXPECTED = 8
"""Messages that answer no request (or not the one asked) a session takes before it ends: a daemon ending a capture sends one error."""

MAX_ERROR_PAYLOAD = 64 * 1024
"""An error message's text: libpcap's are under 256 bytes."""

MAX_SMALL_REPLY = 4 * 1024
"""Every reply but the interface list: auth, open, startcap, stats are 16 bytes at most, the rest empty."""


class ProtocolBroken(MalformedMessage):
    """The daemon broke the protocol in a way that ends the session (its message says how)."""


def protocol_broken(error: BaseException, client: Optional[RpcapClientProtocol]) -> bool:
    """Whether a request failed because the daemon broke the protocol: C{error} says so, or C{client} ended for it."""
    return isinstance(error, ProtocolBroken) or (client is not None and client.broken is not None)


class _ReplyParser(ControlStreamParser):
    """Frames the daemon's side: each reply type bounded, so an oversized one is refused before it is buffered."""

    def limit_for(self, header: Header) -> int:
        if header.type == MessageType.FINDALLIF_REPLY:
            return self.max_payload
        if header.type == MessageType.ERROR:
            return MAX_ERROR_PAYLOAD
        return MAX_SMALL_REPLY


_TYPE_NAMES: dict[int, str] = {
    MessageType.ERROR: "error message",
    MessageType.PACKET: "packet",
    MessageType.AUTH_REPLY: "login reply",
    MessageType.FINDALLIF_REPLY: "list of interfaces",
    MessageType.OPEN_REPLY: "open reply",
    MessageType.STARTCAP_REPLY: "startcap reply",
    MessageType.UPDATEFILTER_REPLY: "filter reply",
    MessageType.STATS_REPLY: "stats reply",
    MessageType.ENDCAP_REPLY: "endcap reply",
    MessageType.SETSAMPLING_REPLY: "sampling reply",
}


def _type_name(message_type: int) -> str:
    """A message type as messages name it (C{stats reply}, C{message of type 0x42})."""
    return _TYPE_NAMES.get(message_type, f"message of type {message_type:#x}")


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _check_linktype(reply: OpenReply) -> OpenReply:
    if not 0 <= reply.linktype <= MAX_LINKTYPE:
        raise ProtocolBroken(
            f"it opened the interface with link type {reply.linktype}, which is no link type"
            " (a capture file cannot hold it)"
        )
    return reply


class RpcapClientProtocol(protocol.Protocol):
    """
    The client end of an RPCAP control connection.

    Nothing the daemon sends is kept without bound: each reply type has a
    size limit (L{_ReplyParser}), at most L{MAX_UNEXPECTED} messages that
    answer no request are taken (errors ending a capture among them), and
    past that, or at an oversized message, the session ends: C{broken}
    says why, and every request waiting fails with L{ProtocolBroken}.
    """

    log = Logger()

    def __init__(self, max_payload: int = 16 * 1024 * 1024, active: bool = False) -> None:
        self.active = active
        """The daemon dialled in (active mode): it must be left free to dial again, see L{close}."""
        # findalldevs replies on a host with many interfaces can be large.
        self.parser = _ReplyParser(max(max_payload, DEFAULT_MAX_PAYLOAD))
        self._waiting: deque[tuple[int, defer.Deferred[Any]]] = deque()
        self.when_connected: defer.Deferred[RpcapClientProtocol] = defer.Deferred()
        self.disconnected: defer.Deferred[None] = defer.Deferred()
        self.peer_host = ""
        self.peer_port = 0
        self.local_host = ""
        self.log_tag = ""
        """Who this connection is with, for its log lines: C{daemon=HOST:PORT} (a collector adds C{interface=})."""
        self.errors: list[ErrorReply] = []
        """Errors the daemon sent that answered no request (a capture that failed); at most L{MAX_UNEXPECTED}."""
        self.unexpected = 0
        """Messages that answered no request, or not the one asked."""
        self.broken: Optional[str] = None
        """How the daemon broke the protocol, once the session has ended for it (C{it sent ...}; escaped: fit to print)."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer_host = str(getattr(self.transport.getPeer(), "host", ""))
        self.peer_port = int(getattr(self.transport.getPeer(), "port", 0) or 0)
        self.local_host = str(getattr(self.transport.getHost(), "host", ""))
        self.log_tag = f"daemon={host_port(self.peer_host, self.peer_port)}"
        self.when_connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self.broken is not None:
            return
        for received in self.parser.feed(data):
            if self.broken is not None:
                break
            self._answer(received)

    def _break(self, why: str) -> None:
        """End the session: the daemon broke the protocol (C{why}); hang up at once, whatever is unsent."""
        if self.broken is not None:
            return
        self.broken = why
        self.log.warn(
            "{tag} ending the session, the daemon broke the protocol: {why}", tag=self.log_tag, why=why
        )
        self.abort()

    def abort(self) -> None:
        """Hang up at once, whatever is unsent: a daemon that reads nothing cannot hold the connection."""
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def _unexpected(self, what: str) -> None:
        self.unexpected += 1
        if self.unexpected > MAX_UNEXPECTED:
            self._break(f"it sent {self.unexpected} messages that answer no request (the last: {what})")

    def _answer(self, r: Received) -> None:
        if isinstance(r.error, MessageTooLarge):
            why = (
                f"it sent an oversized {_type_name(r.header.type)}"
                f" ({r.header.length} bytes; {r.error.limit} at most)"
            )
            if self._waiting:
                self._waiting.popleft()[1].errback(ProtocolBroken(why))
            self._break(why)
            return
        if isinstance(r.message, ErrorReply) and (not self._waiting):
            text = escaped(r.message.text)
            self.log.warn(
                "{tag} daemon reported error {code}: {text}", tag=self.log_tag, code=r.message.code, text=text
            )
            if len(self.errors) < MAX_UNEXPECTED:
                self.errors.append(r.message)
            self._unexpected(f"error {r.message.code}: {text}")
            return
        if not self._waiting:
            self.log.warn(
                "{tag} unexpected message from the daemon: type={type}", tag=self.log_tag, type=r.header.type
            )
            self._unexpected(f"a {_type_name(r.header.type)}")
            return
        expected, d = self._waiting.popleft()
        if r.error is not None:
            d.errback(r.error)
        elif isinstance(r.message, ErrorReply):
            d.errback(RemoteError(r.message.code, r.message.text))
        elif r.header.type != expected:
            d.errback(
                ProtocolBroken(
                    f"it answered with {_a(_type_name(r.header.type))} where {_a(_type_name(expected))} was due"
                )
            )
            self._unexpected(f"a {_type_name(r.header.type)}")
        else:
            d.callback(r.message)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        waiting, self._waiting = self._waiting, deque()
        failure = Failure(ProtocolBroken(self.broken)) if self.broken is not None else reason
        for _, d in waiting:
            d.errback(failure)
        self.disconnected.callback(None)

    def request(self, message: Message, reply_type: int) -> defer.Deferred[Any]:
        """Send C{message}; the Deferred fires with the reply of C{reply_type}."""
        d: defer.Deferred[Any] = defer.Deferred()
        # After connectionLost no reply can come: fail at once, never hang.
        if self.transport is None or not self.when_connected.called or self.disconnected.called:
            d.errback(ConnectionDone("not connected"))
            return d
        self._waiting.append((reply_type, d))
        self.transport.write(message.encode())
        return d

    def authenticate(
        self, username: Optional[bytes] = None, password: bytes = b""
    ) -> defer.Deferred[AuthReply]:
        if username is None:
            return self.request(AuthRequest(AuthType.NULL), MessageType.AUTH_REPLY)
        return self.request(AuthRequest(AuthType.PASSWORD, username, password), MessageType.AUTH_REPLY)

    def find_interfaces(self) -> defer.Deferred[tuple[InterfaceInfo, ...]]:
        d = self.request(FindAllInterfacesRequest(), MessageType.FINDALLIF_REPLY)
        d.addCallback(lambda reply: reply.interfaces)
        return d

    def open(self, device: str) -> defer.Deferred[OpenReply]:
        d = self.request(OpenRequest(device), MessageType.OPEN_REPLY)
        d.addCallback(_check_linktype)
        return d

    def start_capture(self, request: StartCaptureRequest) -> defer.Deferred[StartCaptureReply]:
        return self.request(request, MessageType.STARTCAP_REPLY)

    def update_filter(self, program: BpfProgram) -> defer.Deferred[Any]:
        return self.request(UpdateFilterRequest(program), MessageType.UPDATEFILTER_REPLY)

    def stats(self) -> defer.Deferred[StatsReply]:
        return self.request(StatsRequest(), MessageType.STATS_REPLY)

    def end_capture(self) -> defer.Deferred[Any]:
        return self.request(EndCaptureRequest(), MessageType.ENDCAP_REPLY)

    def set_sampling(self, method: int, value: int) -> defer.Deferred[Any]:
        return self.request(SetSamplingRequest(method, value), MessageType.SETSAMPLING_REPLY)

    def close(self) -> None:
        """
        End the session.  A passive daemon is told so with RPCAP CLOSE (no
        reply comes).  An active daemon is only hung up on: after a CLOSE,
        libpcap's rpcapd and ExtraHop's never dial the collector again, so a
        collector that stops, restarts or refuses a capture would silence
        them for good; after a dropped connection they reconnect.
        """
        if self.transport is not None:
            if not self.active:
                self.transport.write(CloseRequest().encode())
            self.transport.loseConnection()


class RpcapClientFactory(protocol.Factory):
    """
    Builds client protocols for active daemons that connect to us;
    C{on_connect} is called with each connected protocol.
    """

    noisy = False

    def __init__(self, on_connect: Optional[Callable[[RpcapClientProtocol], object]] = None) -> None:
        self.on_connect = on_connect

    def new_protocol(self) -> RpcapClientProtocol:
        """The protocol for one daemon that dialled in (subclasses give their own)."""
        return RpcapClientProtocol(active=True)

    def buildProtocol(self, addr: Any) -> RpcapClientProtocol:
        p = self.new_protocol()
        if self.on_connect is not None:
            on_connect = self.on_connect
            p.when_connected.addCallback(lambda proto: (on_connect(proto), proto)[1])
        return p


# --- data channels -----------------------------------------------------------------


@attrs.define
class LossCounters:
    """
    What a data channel saw go missing or refused (UDP; over TCP, gaps in
    udpstr's packet numbers): C{lost_packets} and C{lost_datagrams} from
    gaps in the numbers; C{resyncs}, numbers that jumped further than any
    real loss (counted apart, not as lost); C{malformed}, datagrams or
    packets that cannot be right (skipped); C{foreign}, datagrams from an
    address or port other than the daemon's (never written).
    """

    lost_packets: int = 0
    lost_datagrams: int = 0
    malformed: int = 0
    foreign: int = 0
    resyncs: int = 0


class TcpPacketReceiver(protocol.Protocol):
    """
    Reads a TCP data connection: classic type-7 messages, or udpstr
    datagrams back to back as ExtraHop's rpcapd sends them, told apart by
    the first bytes (L{DataStreamParser}).  A stream that cannot be read
    sets C{error}, is logged and is closed.
    """

    noisy = False
    log = Logger()

    def __init__(self, on_packets: PacketCallback) -> None:
        self.on_packets = on_packets
        self.parser = DataStreamParser()
        self.connected_deferred: defer.Deferred[TcpPacketReceiver] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.error: Optional[str] = None
        self.bytes_received = 0
        self.packets = 0
        """Packets decoded and delivered."""

    @property
    def loss(self) -> LossCounters:
        return LossCounters(
            lost_packets=self.parser.lost_packets,
            malformed=self.parser.malformed,
            resyncs=self.parser.resyncs,
        )

    def connectionMade(self) -> None:
        self.connected_deferred.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self._deliver(self.parser.feed(data))
        if self.parser.error is not None and self.error is None:
            # Not logged here: its owner says so, once, with who it is (C{RemoteCapture.data_error}).
            self.error = self.parser.error
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _deliver(self, packets: list[CapturedPacket]) -> None:
        if packets:
            self.packets += len(packets)
            self.on_packets(packets)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.error is None:
            self._deliver(self.parser.end())  # a packet held back for bytes that will never come
        self.lost.callback(None)


UDP_RECEIVE_BUFFER = 8 * 1024 * 1024
"""
The receive buffer of a UDP data channel.  A daemon hands over a capture
ring's block at a time, hundreds of datagrams back to back: the kernel's
default (208 KiB) overflows on a burst the daemon sent whole (31 of a
20,000-packet burst at 10k pps were lost there).  Memory is taken only
while datagrams wait.
"""

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_receive_buffer(sock: Optional[socket.socket], size: int) -> None:
    """Ask for a C{size}-byte receive buffer, past the sysctl cap when we may (root)."""
    if sock is None:
        return  # not a real socket (a test's reactor)
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue  # not root: the kernel caps SO_RCVBUF at net.core.rmem_max


class DatagramPacketReceiver(protocol.DatagramProtocol):
    """
    Receives classic (one packet per datagram) and udpstr datagrams, telling
    them apart by their header, and counts what was lost.

    Only the daemon may write into the capture: with C{allowed_host}, a
    datagram from any other address is counted in C{foreign} and dropped,
    and once one from that address has decoded cleanly and moved its stream
    on (a lone datagram out of step, which may be forged, does not), its
    source port is the daemon's and datagrams from any other port are
    foreign too.  (The
    socket is not C{connect}ed: the kernel would drop foreign datagrams
    uncounted, and the daemon's port is not known until it sends.)

    A udpstr datagram held after a gap (see L{UdpStrDecoder}) is released
    after C{hold_seconds} with no datagram to confirm it, when a C{clock}
    is given; the release is cancelled once nothing is held.
    """

    noisy = False
    hold_seconds = 0.5

    def __init__(
        self, on_packets: PacketCallback, allowed_host: Optional[str] = None, clock: Optional[Any] = None
    ) -> None:
        self.on_packets = on_packets
        self.allowed_host = allowed_host
        self.daemon_port: Optional[int] = None
        """The daemon's source port, once its first clean datagram has fixed it."""
        self.clock = clock
        self.udpstr = UdpStrDecoder()
        self.classic = ClassicDatagramDecoder()
        self.datagrams = 0
        self.foreign = 0
        """Datagrams from anyone but the daemon: dropped."""
        self.packets = 0
        """Packets decoded and delivered."""
        self._release: Optional[Any] = None

    @property
    def loss(self) -> LossCounters:
        return LossCounters(
            self.classic.lost_packets + self.udpstr.lost_packets,
            self.udpstr.lost_datagrams,
            self.classic.malformed + self.udpstr.malformed,
            self.foreign,
            self.classic.resyncs + self.udpstr.resyncs,
        )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.allowed_host is not None:
            if addr[0] != self.allowed_host or (self.daemon_port is not None and addr[1] != self.daemon_port):
                self.foreign += 1
                return
        self.datagrams += 1
        udpstr = is_udpstr_datagram(datagram)
        decoder = self.udpstr if udpstr else self.classic
        if self.daemon_port is None and self.allowed_host is not None:
            malformed, position = decoder.malformed, self._position(udpstr)
            packets = decoder.feed(datagram)
            if decoder.malformed == malformed and self._position(udpstr) != position:
                self.daemon_port = addr[1]
        else:
            packets = decoder.feed(datagram)
        self._deliver(packets)
        if udpstr and self.clock is not None:
            holding = self.udpstr.holding
            if holding and self._release is None:
                self._release = self.clock.callLater(self.hold_seconds, self._release_held)
            elif not holding and self._release is not None:
                self.stop()  # confirmed or dropped: a later hold gets its whole time

    def _position(self, udpstr: bool) -> int:
        """The number the stream of that kind expects next: only a datagram in step moves it."""
        return self.udpstr.expected_seqno if udpstr else self.classic.sequence.expected

    def _release_held(self) -> None:
        self._release = None
        self._deliver(self.udpstr.release_held())

    def _deliver(self, packets: list[CapturedPacket]) -> None:
        if packets:
            self.packets += len(packets)
            self.on_packets(packets)

    def stop(self) -> None:
        """Cancel the release of a held datagram (no more datagrams will be read, or none is held)."""
        if self._release is not None and self._release.active():
            self._release.cancel()
        self._release = None


# --- a whole capture ---------------------------------------------------------------


@attrs.define
class CaptureSettings:
    device: str
    snaplen: int = MAXIMUM_SNAPLEN
    promiscuous: bool = True
    read_timeout_ms: int = 100
    filter: str = ""
    udp: bool = False


@attrs.define(eq=False)
class RemoteCapture:
    """A running capture: its control connection, data channel and counters."""

    client: RpcapClientProtocol
    settings: CaptureSettings
    linktype: int
    receiver: Any
    port: Optional[IListeningPort] = None

    @property
    def loss(self) -> LossCounters:
        return self.receiver.loss  # type: ignore[no-any-return]

    @property
    def data_error(self) -> Optional[str]:
        """Why the TCP data stream could not be read, if it could not (it is closed then)."""
        return self.receiver.error if isinstance(self.receiver, TcpPacketReceiver) else None

    @property
    def nothing_decoded(self) -> bool:
        """Whether the data channel carried bytes of which not one packet could be decoded."""
        if isinstance(self.receiver, TcpPacketReceiver):
            return self.receiver.bytes_received > 0 and self.receiver.packets == 0
        return bool(self.receiver.datagrams > 0 and self.receiver.packets == 0)

    @property
    def data_lost(self) -> Optional[defer.Deferred[None]]:
        """Fires when a TCP data connection closes (C{None} over UDP, which cannot tell)."""
        return self.receiver.lost if isinstance(self.receiver, TcpPacketReceiver) else None

    def update_filter(self, expression: str) -> defer.Deferred[Any]:
        return self.client.update_filter(compile_filter(expression, self.linktype, self.settings.snaplen))

    def stats(self) -> defer.Deferred[StatsReply]:
        return self.client.stats()

    async def stop(self) -> Optional[StatsReply]:
        """End the capture: last stats, endcap, data channel closed. Stats are None if the daemon is gone."""
        stats: Optional[StatsReply] = None
        try:
            stats = await self.client.stats()
            await self.client.end_capture()
        except Exception:
            pass
        self.close_data()
        return stats

    def close_data(self) -> None:
        if isinstance(self.receiver, DatagramPacketReceiver):
            self.receiver.stop()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        transport = getattr(self.receiver, "transport", None)
        if isinstance(self.receiver, TcpPacketReceiver) and transport is not None:
            transport.loseConnection()


async def start_capture(
    reactor: Any,
    client: RpcapClientProtocol,
    settings: CaptureSettings,
    on_packets: PacketCallback,
    active: bool = False,
    connect_timeout: float = 30.0,
) -> RemoteCapture:
    """
    Open C{settings.device} and start capturing; packets go to C{on_packets}.
    C{active} says the daemon connected to us, so it will also open the TCP
    data connection toward us.

    @raise RemoteError: the daemon refused; L{ValueError}: a bad filter.
    """
    opened = await client.open(settings.device)
    program = compile_filter(settings.filter, opened.linktype, settings.snaplen)
    flags = StartCapFlags.PROMISC if settings.promiscuous else StartCapFlags(0)
    local = client.local_host

    def request(data_flags: StartCapFlags, portdata: int) -> StartCaptureRequest:
        return StartCaptureRequest(
            settings.snaplen, settings.read_timeout_ms, flags | data_flags, portdata, program
        )

    if settings.udp:
        dgram = DatagramPacketReceiver(on_packets, allowed_host=client.peer_host, clock=reactor)
        port = reactor.listenUDP(0, dgram, interface=local, maxPacketSize=65535)
        set_receive_buffer(getattr(port, "socket", None), UDP_RECEIVE_BUFFER)
        try:
            await client.start_capture(request(StartCapFlags.DGRAM, port.getHost().port))
        except Exception:
            port.stopListening()
            raise
        return RemoteCapture(client, settings, opened.linktype, dgram, port)

    tcp = TcpPacketReceiver(on_packets)
    tls = tls_settings_of(client.transport)  # the data connection does TLS as the control one does
    if active:
        factory = SingleProtocolFactory(tcp, tls, allowed_host=client.peer_host)
        port = reactor.listenTCP(0, factory, backlog=1, interface=local)
        try:
            await client.start_capture(request(StartCapFlags.SERVEROPEN, port.getHost().port))
            await tcp.connected_deferred.addTimeout(connect_timeout, reactor)
        finally:
            port.stopListening()
        return RemoteCapture(client, settings, opened.linktype, tcp)

    reply = await client.start_capture(request(StartCapFlags(0), 0))
    from twisted.internet.endpoints import HostnameEndpoint

    endpoint = HostnameEndpoint(reactor, client.peer_host, reply.portdata, timeout=connect_timeout)
    await endpoint.connect(SingleProtocolFactory(tcp, tls))
    await tcp.connected_deferred.addTimeout(connect_timeout, reactor)
    return RemoteCapture(client, settings, opened.linktype, tcp)


__all__ = [
    "CaptureSettings",
    "DatagramPacketReceiver",
    "LossCounters",
    "ProtocolBroken",
    "protocol_broken",
    "RemoteCapture",
    "RpcapClientFactory",
    "RpcapClientProtocol",
    "TcpPacketReceiver",
    "compile_filter",
    "start_capture",
]
