"""
The control connection: a thin Twisted C{Protocol} that frames bytes with
L{ControlStreamParser} and hands messages to a L{ServerSession}; and the
factory that makes one per connection, in passive and active mode alike.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..capture.blocking import runner_of
from ..capture.system import CaptureError, ICaptureSystem
from ..connections import TlsSettings, tls_settings_of
from ..logtext import host_port
from ..protocol.framing import ControlStreamParser
from ..protocol.wire import ErrorCode, ErrorReply, InterfaceInfo, Message
from .active import ReconnectPolicy
from .admission import Admission, ticket
from .counters import ServiceCounters
from .datachannel import DataChannels, IDataChannels
from .session import ForwardedTraffic, IControlChannel, Network, ServerSession, SessionPolicy, client_allowed


def _host(address: Optional[IAddress]) -> str:
    return str(getattr(address, "host", "") or "")


@implementer(IControlChannel, IPushProducer, IHalfCloseableProtocol)
class RpcapServerProtocol(protocol.Protocol):
    """
    One RPCAP control connection, server side.  It is the producer of its
    own replies: when the client stops reading them, the transport pauses
    it, and the session handles no more requests until the client catches up.
    """

    log = Logger()
    session: Optional[ServerSession] = None
    ticket = 0
    """
    Larger for every newer connection (admission closes the oldest waiting
    one first); it is the session's id in the log (C{session=N}).
    """

    def __init__(self, factory: RpcapServerFactory) -> None:
        self.factory = factory
        self.parser = ControlStreamParser(factory.policy.max_message_size)
        self.peer_host = ""
        self.local_host = ""
        self.active = factory.active
        self.tls: Optional[TlsSettings] = None
        self.local_port = 0
        self.peer_port = 0
        self._lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer_host = _host(self.transport.getPeer())
        self.local_host = _host(self.transport.getHost())
        self.tls = tls_settings_of(self.transport)
        self.local_port = int(getattr(self.transport.getHost(), "port", 0) or 0)
        self.peer_port = int(getattr(self.transport.getPeer(), "port", 0) or 0)
        self.ticket = ticket()
        if not self.active and not client_allowed(self.factory.policy, self.peer_host):
            self.log.warn(
                "session={session} peer={peer} control connection refused: not an allowed client",
                session=self.ticket,
                peer=self.peer,
            )
            self.send_message(
                ErrorReply(ErrorCode.HOSTNOAUTH, f"host {self.peer_host} is not allowed to connect")
            )
            self.close()
            return
        refusal = self.factory.admission.admit(self)
        if refusal is not None:
            self.log.warn(
                "session={session} peer={peer} control connection refused: sessions full, none idle (logged_in={n})",
                session=self.ticket,
                peer=self.peer,
                n=len(self.factory.admission.logged_in()),
            )
            self.send_message(ErrorReply(ErrorCode.NETWORK, refusal))
            self.close()
            return
        self.factory.sessions.add(self)
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if self.active:
            reconnect = self.factory.reconnect
            self.log.info(
                "session={session} peer={peer} connected to collector {target}",
                session=self.ticket,
                peer=self.peer,
                target=reconnect.name if reconnect is not None else self.peer,
            )
        else:
            self.log.info(
                "session={session} peer={peer} client connected", session=self.ticket, peer=self.peer
            )
        # Choosing the interface may list the machine's interfaces: off the
        # reactor thread.  Nothing is read until the session exists.
        choosing = self.factory.preselected_interface()
        waiting = not choosing.called
        if waiting:
            self.pause_reading()
        choosing.addCallbacks(self._begin_session, self._no_interface, callbackArgs=(waiting,))

    def _begin_session(self, interface: Optional[str], waited: bool) -> None:
        if self._lost:
            return  # the connection went while the interface was chosen
        self.session = ServerSession(
            self,
            self.factory.capture_system,
            self.factory.data_channels,
            self.factory.policy,
            self.factory.reactor,
            interface=interface,
            forwarded=self.factory.forwarded,
            counters=self.factory.counters,
            login_gate=self.factory.admission.admit_login,
            session_id=self.ticket,
        )
        if waited:
            self.resume_reading()

    def _no_interface(self, failure: Failure) -> None:
        # Never let a fault here escape: in active mode it would stop
        # ClientService from ever reconnecting to this collector.
        if failure.check(CaptureError):
            self.log.warn(
                "session={session} peer={peer} cannot list interfaces to choose the preselected one ({why}); "
                "closing",
                session=self.ticket,
                peer=self.peer,
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "session={session} peer={peer} cannot choose the preselected interface; closing",
                failure,
                session=self.ticket,
                peer=self.peer,
            )
        self.factory.sessions.discard(self)
        if not self._lost:
            self.close()

    @property
    def peer(self) -> str:
        """The peer's C{host:port}, for the log."""
        return host_port(self.peer_host, self.peer_port)

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.received(self.parser.feed(data))

    # IHalfCloseableProtocol: a client may send its requests, then shut down
    # its sending side; it still reads the replies.
    def readConnectionLost(self) -> None:
        if self.session is not None:
            self.session.input_ended()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """We never half-close our side; nothing to do."""

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self.factory.sessions.discard(self)
        if self.session is not None:
            self.session.close(f"connection lost: {reason.getErrorMessage()}")
        if self.factory.reconnect is not None:
            forwarded = self.session.packets_forwarded if self.session is not None else 0
            self.factory.reconnect.session_ended(forwarded)

    # IPushProducer: the transport's write buffer is full, or empty again.
    def pauseProducing(self) -> None:
        if self.session is not None:
            self.session.replies_backed_up(True)

    def resumeProducing(self) -> None:
        if self.session is not None:
            self.session.replies_backed_up(False)

    def stopProducing(self) -> None:
        """The connection is going; connectionLost ends the session."""

    # IControlChannel
    def send_message(self, message: Message) -> None:
        if self.transport is not None:
            self.transport.write(message.encode())

    def close(self) -> None:
        if self.transport is not None:
            # A registered producer keeps a TLS connection open: let go first.
            try:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
            except RuntimeError:
                pass  # none was registered (refused before the session began)
            self.transport.loseConnection()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]


class RpcapServerFactory(protocol.Factory):
    """
    Serves RPCAP sessions on the connections it is given: accepted ones in
    passive mode, or ones the daemon made itself when C{active} is true.
    """

    protocol = RpcapServerProtocol  # type: ignore[assignment]
    log = Logger()
    noisy = False  # no "Starting factory <...>" per connection; the service says where it listens

    def __init__(
        self,
        reactor: Any,
        capture_system: ICaptureSystem,
        policy: SessionPolicy,
        data_channels: Optional[IDataChannels] = None,
        active: bool = False,
        interface: Optional[str] = None,
        interface_address: Optional[str] = None,
        sessions: Optional[set[RpcapServerProtocol]] = None,
        forwarded: Optional[ForwardedTraffic] = None,
        reconnect: Optional[ReconnectPolicy] = None,
        counters: Optional[ServiceCounters] = None,
    ) -> None:
        self.reactor = reactor
        self.reconnect = reconnect
        """Active mode: the collector's reconnect policy, told how each session went."""
        self.capture_system = capture_system
        self.policy = policy
        self.data_channels = data_channels or DataChannels(reactor)
        self.active = active
        self.interface = interface
        self.interface_address = interface_address
        self.sessions: set[RpcapServerProtocol] = set() if sessions is None else sessions
        """Every session of the service (shared by its factories, for the session limits)."""
        self.admission = Admission(self.policy, self.sessions)
        """Who gets a session, and who makes room (L{rpcapsvc.server.admission})."""
        self.forwarded = forwarded if forwarded is not None else ForwardedTraffic()
        self.counters = counters if counters is not None else ServiceCounters()
        """The service's totals for its metrics (shared, like C{sessions})."""
        """What every capturing session of the service forwards (shared, so no capture includes any of it)."""

    def buildProtocol(self, addr: Optional[IAddress]) -> RpcapServerProtocol:
        return RpcapServerProtocol(self)

    def close_sessions(self, why: str) -> None:
        """End every session: captures stopped, connections closed."""
        for p in list(self.sessions):
            if p.session is not None:
                p.session.close(why)

    def preselected_interface(self) -> defer.Deferred[Optional[str]]:
        """
        The interface this factory's sessions are limited to; C{None} leaves
        it to the policy.  Without C{interface_address}, C{interface}.  With
        it (an address, or a network C{ADDR/PREFIX}), the first interface
        with an address in that network and, if C{interface} is given too,
        of that name: both must match one interface, as ExtraHop's rpcapd
        chooses it.  Looked up for each session, as addresses move; the
        interfaces are listed where the capture system runs its blocking
        calls (L{runner_of}: a thread pool), never in the reactor thread.
        When no interface matches, a name no interface has, so that nothing
        can be opened (ExtraHop's rpcapd would allow any interface instead).
        """
        if self.interface_address is None:
            return defer.succeed(self.interface)
        named = "" if self.interface is None else f" named {self.interface}"
        address, slash, prefix = str(self.interface_address).strip().partition("/")
        try:
            network = ipaddress.ip_network(address.split("%", 1)[0] + slash + prefix, strict=False)
        except ValueError:
            self.log.warn(
                "Interface address {address!r} is not an address or network; nothing can be opened",
                address=self.interface_address,
            )
            return defer.succeed(f"(no interface{named} with address {self.interface_address})")
        listing = runner_of(self.capture_system)(self.capture_system.list_interfaces)
        return listing.addCallback(self._interface_in, network, named)

    def _interface_in(self, interfaces: list[InterfaceInfo], network: Network, named: str) -> str:
        """Of C{interfaces}, the one L{preselected_interface} chooses."""
        for info in interfaces:
            if self.interface is not None and info.name != self.interface:
                continue
            if any(a.address.version == network.version and a.address in network for a in info.addresses):
                return info.name
        if network.prefixlen == network.max_prefixlen:
            address, wanted = str(network.network_address), f"address {network.network_address}"
        else:
            address = wanted = f"an address in {network}"
        self.log.warn(
            "No interface{named} carries {address}; nothing can be opened until one does "
            "(ExtraHop's rpcapd would allow any interface)",
            named=named,
            address=address,
        )
        return f"(no interface{named} with {wanted})"
