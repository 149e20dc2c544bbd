"""
How a capture's data channel is started, one small strategy per mode.

A startcap request says where the packets go, and the answer picks one of:

- L{PassiveTcpStart}: we listen on a fresh port, name it in the reply, and
  the client connects to it (libpcap's default);
- L{ActiveTcpStart}: we connect to the client's data port (startcap's
  "server opens" flag, or any session of active mode);
- L{UdpStart}: we send datagrams to the client's data port.  Classic
  framing and ExtraHop's udpstr differ only in the sink that
  L{IDataChannels.open_udp} returns (C{UdpPacketSink} or
  C{UdpStrPacketSink}, by the service's C{--udp-mtu}); the start is the
  same.

TLS is a property of the TCP ones: the control connection's TLS settings,
which the data connection reuses.  UDP cannot carry TLS (the session refuses
the request first).

Each strategy's L{DataStart.start} opens the channel, gives the pcap
expression of its own packets (so that no capture forwards them again; see
L{own_traffic_expression}), and hands the sink and the port to the session
through a L{CaptureStart}, in the order its mode needs: a UDP socket and a
listening port exist before the filter is placed (their port is in it), a
data connection is made only once the filter is in place.  Which strategy
serves a request is L{data_start_for}'s choice.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from ..capture.system import CaptureOptions
from ..connections import TlsSettings
from ..protocol.wire import StartCapFlags, StartCaptureRequest
from .datachannel import IDataChannels, IPacketSink
from .sessioncapture import SessionCapture


class CaptureStart(Protocol):
    """What a data-channel strategy needs of the session starting a capture."""

    @property
    def capture(self) -> SessionCapture:
        """The capture being started."""

    def filter_first(self, data_channel: str) -> defer.Deferred[bool]:
        """Place the capture's filter, the data channel's packets (a pcap expression) kept out; whether to go on."""

    def begin(self) -> None:
        """The capture is the session's from now on (endcap, stats and updatefilter act on it)."""

    def answer(self, port: int) -> None:
        """Send the startcap reply naming the data port."""

    def sink_ready(self, sink: IPacketSink) -> None:
        """The data channel carries packets: start reading the capture into it."""

    def refuse(self, text: str) -> None:
        """Answer the startcap with a STARTCAPTURE error."""

    def current(self) -> bool:
        """Whether the capture is still the session's (not ended, session not closed)."""

    def end(self) -> defer.Deferred[None]:
        """End the capture (its handle closes in the capture system's thread)."""


class DataStart(Protocol):
    """One data-channel mode."""

    def start(self, starting: CaptureStart) -> defer.Deferred[None]:
        """Open the channel, place the filter, give the session the sink and the port."""


@attrs.frozen
class UdpStart:
    """We send datagrams from a fresh port to the client's C{portdata} (classic or udpstr framing)."""

    channels: IDataChannels
    peer: str
    portdata: int
    snaplen: int
    read_timeout_ms: int

    @defer.inlineCallbacks
    def start(self, starting: CaptureStart) -> Any:
        capture = starting.capture
        try:
            port, sink = self.channels.open_udp(self.peer, self.portdata, self.snaplen, self.read_timeout_ms)
        except Exception as e:  # a socket we could not make
            capture.stop()
            starting.refuse(f"cannot open the data channel: {e}")
            return
        capture.sink = sink  # closed with the capture, should it go no further
        if not (yield starting.filter_first(f"udp and port {port} and port {self.portdata}")):
            return
        starting.begin()
        starting.sink_ready(sink)
        starting.answer(port)


@attrs.frozen
class ActiveTcpStart:
    """We connect to the client's C{portdata}, over TLS when the control connection has it."""

    channels: IDataChannels
    peer: str
    portdata: int
    snaplen: int
    tls: Optional[TlsSettings]
    read_timeout_ms: int

    @defer.inlineCallbacks
    def start(self, starting: CaptureStart) -> Any:
        capture = starting.capture
        if not (yield starting.filter_first(f"tcp and port {self.portdata}")):
            return
        d = self.channels.connect_tcp(self.peer, self.portdata, self.snaplen, self.tls, self.read_timeout_ms)
        capture.pending_sink = d
        starting.begin()
        try:
            sink = yield d
        except defer.CancelledError:
            return  # the session or capture ended first: nothing to report
        except Exception as e:
            if starting.current():
                yield starting.end()
                starting.refuse(f"cannot connect the data channel: {e}")
            return
        if not starting.current():
            sink.close()
            return
        starting.answer(self.portdata)
        starting.sink_ready(sink)


@attrs.frozen
class PassiveTcpStart:
    """We listen on a fresh port of C{local_host} for the client (C{peer}) to connect, over TLS when the control connection has it."""

    channels: IDataChannels
    local_host: str
    peer: str
    snaplen: int
    tls: Optional[TlsSettings]
    read_timeout_ms: int

    @defer.inlineCallbacks
    def start(self, starting: CaptureStart) -> Any:
        capture = starting.capture
        try:
            port, listening = self.channels.listen_tcp(
                self.local_host, self.peer, self.snaplen, self.tls, self.read_timeout_ms
            )
        except Exception as e:  # a socket we could not make
            capture.stop()
            starting.refuse(f"cannot open the data channel: {e}")
            return
        capture.pending_sink = listening  # cancelled with the capture, should it go no further

        def accepted(sink: IPacketSink) -> None:
            if starting.current():
                starting.sink_ready(sink)
            else:
                sink.close()

        def not_accepted(f: Failure) -> None:
            if f.check(defer.CancelledError):
                return
            if starting.current():
                starting.end()
                starting.refuse(f.getErrorMessage())

        # Registered now: a connection before the reply (before begin) is not the client's.
        listening.addCallbacks(accepted, not_accepted)
        if not (yield starting.filter_first(f"tcp and port {port}")):
            return
        starting.begin()
        starting.answer(port)  # the client connects once it reads the port


class ControlSide(Protocol):
    """What the choice needs of the control connection."""

    peer_host: str
    local_host: str
    active: bool
    tls: Optional[TlsSettings]


def data_start_for(
    msg: StartCaptureRequest, control: ControlSide, channels: IDataChannels, options: CaptureOptions
) -> DataStart:
    """
    The mode a startcap asks for: UDP when flagged; otherwise TCP, which we
    connect when flagged "server opens" or in active mode, and on which we
    listen otherwise.
    """
    flags = msg.flag_set
    timeout = options.read_timeout_ms
    if StartCapFlags.DGRAM in flags:
        return UdpStart(channels, control.peer_host, msg.portdata, options.snaplen, timeout)
    if StartCapFlags.SERVEROPEN in flags or control.active:
        return ActiveTcpStart(
            channels, control.peer_host, msg.portdata, options.snaplen, control.tls, timeout
        )
    return PassiveTcpStart(
        channels, control.local_host, control.peer_host, options.snaplen, control.tls, timeout
    )


# --- filter composition -------------------------------------------------------------


def own_traffic_expression(peer_host: str, local_port: int, peer_port: int, data_channel: str) -> str:
    """
    A session's own packets as a pcap expression: its data channel's
    (C{data_channel}) and its control connection's, both with the client
    (C{""} when the client has no address: a UNIX socket).
    """
    if not peer_host:
        return ""
    clauses = [f"({data_channel})"]
    if local_port and peer_port:
        clauses.append(f"(tcp and port {local_port} and port {peer_port})")
    return f"host {peer_host} and ({' or '.join(clauses)})"
