"""
The server side of one RPCAP control session, as a state machine.

L{ServerSession} is driven by framed messages (L{Received}) and reaches the
world only through small seams: an L{IControlChannel} to answer on, an
L{ICaptureSystem} to capture with, L{DataChannels} to send packets through
and a clock.  It handles one request at a time, in order, as RPCAP requires;
while a request waits on I/O (a login check, a data connection, a call to
the capture system, which runs off the reactor thread) reading from the
control connection is paused, which bounds what a peer can queue.

States::

    AWAITING_AUTH --auth ok--> READY --open--> OPENED --startcap--> CAPTURING
                                  ^               ^  <----endcap------'
    any state --close / connection lost--> CLOSED
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from functools import partial
from typing import Any, Callable, Optional, Sequence, Union

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from ..capture.blocking import runner_of
from ..capture.compiler import compile_filter
from ..capture.reader import CaptureReader
from ..capture.system import (
    CaptureError,
    CaptureOptions,
    CaptureStats,
    Direction,
    ICaptureSystem,
)
from ..logtext import escaped, host_port
from ..protocol import bpf
from ..protocol.framing import DEFAULT_MAX_PAYLOAD, MessageTooLarge, Received
from ..protocol.wire import (
    PROTOCOL_VERSION,
    AuthReply,
    AuthRequest,
    AuthType,
    BpfProgram,
    CloseRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    InterfaceInfo,
    Message,
    MessageType,
    OpenReply,
    OpenRequest,
    SamplingMethod,
    SetSamplingReply,
    SetSamplingRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
    UpdateFilterReply,
    UpdateFilterRequest,
)
from .counters import ServiceCounters
from .datachannel import IDataChannels, IPacketSink
from .forwarded import ForwardedTraffic
from .sessioncapture import SessionCapture

PRESELECTED_SUFFIX = ";preselected"


class SessionState(enum.Enum):
    AWAITING_AUTH = "awaiting auth"
    READY = "ready"
    OPENED = "opened"
    CAPTURING = "capturing"
    CLOSED = "closed"


class IControlChannel(Interface):
    """What a session needs from its control connection."""

    peer_host = Attribute("The client's address, as a string.")
    local_host = Attribute("Our address on this connection, as a string.")
    active = Attribute("True when we made this connection (active mode).")
    tls = Attribute("The connection's TlsSettings, or None when it is plaintext.")
    local_port = Attribute("Our port on this connection (0 when it has none).")
    peer_port = Attribute("The client's port on this connection (0 when it has none).")

    def send_message(message: Message) -> None:
        """Send one control message."""

    def close() -> None:
        """Close the control connection."""

    def pause_reading() -> None:
        """Stop delivering messages until L{resume_reading}."""

    def resume_reading() -> None:
        """Deliver messages again."""


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@attrs.define
class SessionPolicy:
    """What the operator allows; shared by every session of a service."""

    null_auth: bool = False
    allowed_clients: tuple[Network, ...] = ()
    """Passive clients must come from one of these; empty allows everyone."""
    checkers: Sequence[ICredentialsChecker] = ()
    preselected_interface: Optional[str] = None
    buffer_size: int = 2 * 1024 * 1024
    failed_auth_delay: float = 1.0
    auth_timeout: float = 10.0
    """Seconds a connection has to log in (libpcap's client logs in as soon as it connects)."""
    idle_timeout: float = 300.0
    """Seconds a logged-in passive session may go without a request while it captures nothing; 0: no limit."""
    exclude_own_traffic: bool = True
    """Keep the session's own control and data packets out of its captures."""
    max_sessions: int = 64
    """Logged-in sessions served at once, across every listener and collector of a service."""
    max_unauthenticated: int = 32
    """Passive connections waiting to log in; a new one closes the one that has waited longest."""
    max_unauthenticated_per_host: int = 8
    """Of those, from one client address (an IPv6 /64); a new one closes that address's oldest."""
    reclaim_idle_after: float = 1.0
    """
    When logged-in sessions fill C{max_sessions}, a login closes the passive
    session idle longest if it has been idle this long (no capture, no
    request); 0: never.
    """
    max_message_size: int = DEFAULT_MAX_PAYLOAD
    log_stats: bool = False
    """Log the counters a client asks for (ExtraHop's rpcapd -S)."""


REQUESTS_PER_TURN = 32
"""Requests handled back to back before other sessions get a turn of the reactor."""
_SLOW_REQUESTS = {MessageType.OPEN_REQ, MessageType.STARTCAP_REQ, MessageType.ENDCAP_REQ}

# A request payload that cannot be decoded is answered with its operation's code.
_MALFORMED_CODES = {
    MessageType.AUTH_REQ: ErrorCode.AUTH,
    MessageType.OPEN_REQ: ErrorCode.OPEN,
    MessageType.STARTCAP_REQ: ErrorCode.STARTCAPTURE,
    MessageType.UPDATEFILTER_REQ: ErrorCode.UPDATEFILTER,
    MessageType.SETSAMPLING_REQ: ErrorCode.SETSAMPLING,
    MessageType.STATS_REQ: ErrorCode.GETSTATS,
}


def client_allowed(policy: SessionPolicy, host: str) -> bool:
    if not policy.allowed_clients:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in policy.allowed_clients)


def is_local_interface_name(name: str) -> bool:
    """A plain interface name: never a URL, a path or a pcap file."""
    return bool(name) and len(name) < 256 and "/" not in name and ":" not in name and "\0" not in name


class ServerSession:
    log = Logger()

    def __init__(
        self,
        channel: IControlChannel,
        capture_system: ICaptureSystem,
        data_channels: IDataChannels,
        policy: SessionPolicy,
        reactor: Any,
        interface: Optional[str] = None,
        forwarded: Optional[ForwardedTraffic] = None,
        counters: Optional[ServiceCounters] = None,
        login_gate: Optional[Callable[[ServerSession], bool]] = None,
        session_id: int = 0,
    ) -> None:
        self.channel = channel
        self.session_id = session_id
        """Names this session in the log (C{session=N}); unique in the daemon's lifetime."""
        self.login_gate = login_gate
        """Asked whether a client that proved who it is may log in (the service's session limit)."""
        self.forwarded = forwarded if forwarded is not None else ForwardedTraffic()
        self.counters = counters if counters is not None else ServiceCounters()
        """The service's totals (metrics): this session adds what its captures counted when they end."""
        self.capture_system = capture_system
        self.data_channels = data_channels
        self.policy = policy
        self.reactor: IReactorTime = reactor
        # A per-session preselected interface (active collectors) overrides the policy's.
        self.preselected = interface or policy.preselected_interface
        self.state = SessionState.AWAITING_AUTH
        self.device: Optional[str] = None
        self.sampling = SetSamplingRequest(SamplingMethod.NONE, 0)
        self.user: Optional[bytes] = None
        self._capture: Optional[SessionCapture] = None
        self._starting: Optional[SessionCapture] = None
        """A capture being started (opened, its filter not yet in place)."""
        self._run = runner_of(capture_system)
        """Where the capture system's blocking calls run (a thread pool; in place for fakes)."""
        self._compile = getattr(capture_system, "compile", None) or compile_filter
        self._holds = 0
        """Work to finish before the next request (a capture closing)."""
        self.packets_forwarded = 0
        """Packets handed to the data channels of every capture this session has run."""
        self._last_stats = StatsReply(0, 0, 0, 0)
        self._queue: deque[Received] = deque()
        self._busy = False
        self._draining = False
        self._replies_backed_up = False
        self._input_ended = False
        self._yield_call: Optional[IDelayedCall] = None
        self._auth_timer: Optional[IDelayedCall] = self.reactor.callLater(
            policy.auth_timeout, self._auth_timed_out
        )
        self._last_activity = self.reactor.seconds()
        self._idle_timer: Optional[IDelayedCall] = None

    @property
    def peer(self) -> str:
        """The client's C{host:port}, for the log."""
        return host_port(self.channel.peer_host, self.channel.peer_port)

    def _tag(self) -> dict[str, Any]:
        """The fields every log line of the session starts with: C{session=N peer=HOST:PORT}."""
        return {"session": self.session_id, "peer": self.peer}

    # --- input ---------------------------------------------------------------

    def received(self, messages: list[Received]) -> None:
        self._queue.extend(messages)
        self._drain()

    def replies_backed_up(self, backed_up: bool) -> None:
        """
        The client is not reading its replies (the control connection's
        write buffer is full), or has caught up: handle no more requests
        until it has, so that replies cannot pile up in memory.
        """
        self._replies_backed_up = backed_up
        if backed_up:
            self._set_reading()
        else:
            self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a request finished inside the loop below, which goes on
        self._draining = True
        handled = 0
        try:
            while (
                self._queue and not self._busy and not self._holds and self.state is not SessionState.CLOSED
            ):
                if self._replies_backed_up:
                    break  # replies_backed_up(False) goes on
                if handled >= REQUESTS_PER_TURN:
                    # Let other sessions have the reactor before going on.
                    if self._yield_call is None:
                        self._yield_call = self.reactor.callLater(0, self._after_yield)
                    break
                request = self._queue.popleft()
                self._last_activity = self.reactor.seconds()
                try:
                    result = self._dispatch(request)
                except Exception:
                    # A fault of ours: answer it, keep the session and the reactor going.
                    self._internal_error(Failure())
                    result = None
                # Opening or closing a capture blocks for tens of milliseconds: two are a turn's worth.
                handled += REQUESTS_PER_TURN // 2 if request.header.type in _SLOW_REQUESTS else 1
                if isinstance(result, defer.Deferred):
                    self._busy = True
                    result.addErrback(self._internal_error)
                    result.addBoth(self._request_done)
        finally:
            self._draining = False
        self._set_reading()

    def _after_yield(self) -> None:
        self._yield_call = None
        self._drain()

    def _set_reading(self) -> None:
        """Read the control connection only when nothing is waiting to be handled."""
        if self.state is SessionState.CLOSED:
            return
        if self._busy or self._holds or self._replies_backed_up or self._queue:
            self.channel.pause_reading()
        elif self._input_ended:
            # Every request the client sent is answered: now the session ends.
            self.close("the client finished sending")
        else:
            self.channel.resume_reading()

    def input_ended(self) -> None:
        """
        The client half-closed the control connection: it will send nothing
        more.  Answer what it sent (as libpcap's rpcapd does), then close.
        """
        self._input_ended = True
        self._drain()

    def _request_done(self, _: object) -> None:
        self._busy = False
        self._drain()

    def _internal_error(self, failure: Failure) -> None:
        self.log.failure("session={session} peer={peer} request failed", failure, **self._tag())
        self._error(ErrorCode.NETWORK, "internal server error")

    def _error(self, code: int, text: str) -> None:
        # A text may quote the client (an interface name that is not UTF-8).
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        self.log.info(
            "session={session} peer={peer} sent error {code}: {text}",
            code=code,
            text=escaped(text),
            **self._tag(),
        )
        self.channel.send_message(ErrorReply(code, text))

    def _dispatch(self, r: Received) -> Optional[defer.Deferred[None]]:
        mtype = r.header.type
        if r.header.version != PROTOCOL_VERSION and not isinstance(r.error, MessageTooLarge):
            self._error(ErrorCode.WRONGVER, f"RPCAP version {r.header.version} is not supported")
            return None
        if isinstance(r.error, MessageTooLarge):
            self._error(ErrorCode.WRONGMSG, str(r.error))
            self.close("oversized message")
            return None
        if r.error is not None:
            code = _MALFORMED_CODES.get(mtype, ErrorCode.WRONGMSG)  # type: ignore[call-overload]
            self._error(code, f"malformed message: {r.error}")
            return None
        msg = r.message
        if isinstance(msg, CloseRequest):
            self.close("client closed the session")
            return None
        if isinstance(msg, ErrorReply):
            self.log.info(
                "session={session} peer={peer} client reported error {code}: {text}",
                code=msg.code,
                text=escaped(msg.text),
                **self._tag(),
            )
            return None
        if self.state is SessionState.AWAITING_AUTH:
            if isinstance(msg, AuthRequest):
                return self._auth(msg)
            self._error(ErrorCode.WRONGMSG, "message received before authentication")
            return None
        handler = self._HANDLERS.get(type(msg))
        if handler is None:
            self._error(ErrorCode.WRONGMSG, f"unexpected message type {mtype}")
            return None
        return handler(self, msg)

    # --- auth ----------------------------------------------------------------

    def _auth(self, msg: AuthRequest) -> Optional[defer.Deferred[None]]:
        if msg.auth_type == AuthType.NULL:
            if self.policy.null_auth:
                self._authenticated(None)
                return None
            return self._auth_failed("NULL authentication not permitted")
        if msg.auth_type == AuthType.PASSWORD:
            if not self.policy.checkers:
                return self._auth_failed("password authentication is not configured")
            return self._check_password(msg.username, msg.password)
        self._error(ErrorCode.AUTH_TYPE_NOTSUP, f"authentication type {msg.auth_type} is not supported")
        return None

    @defer.inlineCallbacks
    def _check_password(self, user: bytes, password: bytes) -> Any:
        creds = UsernamePassword(user, password)
        reasons = []
        for checker in self.policy.checkers:
            if IUsernamePassword not in checker.credentialInterfaces:
                continue
            try:
                avatar = yield checker.requestAvatarId(creds)
            except UnauthorizedLogin as e:
                if str(e):
                    reasons.append(str(e))  # for the log, never for the client
                continue
            self._authenticated(avatar)
            return
        yield self._auth_failed("authentication failed", "; ".join(dict.fromkeys(reasons)))

    def _auth_failed(self, why: str, detail: str = "") -> defer.Deferred[None]:
        # Answer late, as libpcap does, to slow down password guessing.
        self.counters.auth_failures += 1
        self.log.info(
            "session={session} peer={peer} login failed: {why}",
            why=f"{why} ({escaped(detail)})" if detail else why,
            **self._tag(),
        )
        d: defer.Deferred[None] = defer.Deferred()

        def answer() -> None:
            if self.state is not SessionState.CLOSED:
                self.channel.send_message(ErrorReply(ErrorCode.AUTH_FAILED, f"Authentication failed: {why}"))
            d.callback(None)

        self.reactor.callLater(self.policy.failed_auth_delay, answer)
        return d

    def _authenticated(self, user: Optional[bytes]) -> None:
        if self.state is not SessionState.AWAITING_AUTH:
            return  # closed (timeout, connection lost) while the login was being checked
        if self.login_gate is not None and not self.login_gate(self):
            self._error(ErrorCode.NETWORK, "too many sessions; try again later")
            self.close("too many sessions")
            return
        self.user = user
        self.state = SessionState.READY
        self._cancel_auth_timer()
        self._last_activity = self.reactor.seconds()
        if self.policy.idle_timeout > 0 and not self.channel.active:
            self._idle_timer = self.reactor.callLater(self.policy.idle_timeout, self._idle_check)
        self.log.info(
            "session={session} peer={peer} logged in: user={how}",
            how="(null auth)" if user is None else escaped(user.decode("utf-8", "replace")),
            **self._tag(),
        )
        self.channel.send_message(AuthReply())

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.state is SessionState.AWAITING_AUTH:
            self._error(ErrorCode.INITTIMEOUT, "authentication timed out")
            self.close("authentication timed out")

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    # --- idle ----------------------------------------------------------------------

    @property
    def capture(self) -> Optional[SessionCapture]:
        """The capture running (started, not yet ended), if any."""
        return self._capture

    def idle_for(self) -> Optional[float]:
        """
        Seconds since this logged-in session last handled a request or ended
        a capture; C{None} while it works (a capture running, a request
        under way) or is not logged in.
        """
        if self.state not in (SessionState.READY, SessionState.OPENED):
            return None
        if self._capture is not None or self._busy:
            return None
        return self.reactor.seconds() - self._last_activity

    def _idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.policy.idle_timeout
        if self.state is SessionState.CLOSED or timeout <= 0:
            return
        idle = self.idle_for()
        if idle is not None and idle >= timeout:
            self._error(ErrorCode.RUNTIMETIMEOUT, f"idle for {idle:.0f} s with no capture: session closed")
            self.close("idle timeout")
            return
        self._idle_timer = self.reactor.callLater(timeout - (idle or 0.0), self._idle_check)

    # --- requests --------------------------------------------------------------

    def _again_auth(self, msg: AuthRequest) -> None:
        self._error(ErrorCode.WRONGMSG, "already authenticated")

    def _interfaces(self) -> list[InterfaceInfo]:
        interfaces = self.capture_system.list_interfaces()
        if self.preselected is None:
            return interfaces
        chosen = [i for i in interfaces if i.name == self.preselected]
        rest = [i for i in interfaces if i.name != self.preselected]
        marked = [
            attrs.evolve(
                i,
                description=f"{i.description} {PRESELECTED_SUFFIX}" if i.description else PRESELECTED_SUFFIX,
            )
            for i in chosen
        ]
        return marked + rest

    def _findalldevs(self, msg: FindAllInterfacesRequest) -> defer.Deferred[None]:
        def listed(interfaces: list[InterfaceInfo]) -> None:
            if self.state is SessionState.CLOSED:
                return
            if not interfaces:
                self._error(ErrorCode.NOREMOTEIF, "no interfaces found")
                return
            self.channel.send_message(FindAllInterfacesReply(tuple(interfaces)))

        def failed(f: Failure) -> None:
            # The OS listing failed; say so, keep serving.
            if self.state is not SessionState.CLOSED:
                self._error(ErrorCode.FINDALLIF, f"cannot list interfaces: {f.getErrorMessage()}")

        return self._run(self._interfaces).addCallbacks(listed, failed)

    def _open(self, msg: OpenRequest) -> Optional[defer.Deferred[None]]:
        name = msg.device
        if self.state is SessionState.CAPTURING:
            self._error(ErrorCode.OPEN, "a capture is running; end it before opening another device")
            return None
        if not is_local_interface_name(name):
            self._error(ErrorCode.OPEN, f"{name!r} is not a local interface name")
            return None
        if self.preselected is not None and name != self.preselected:
            self._error(ErrorCode.OPEN, f"only the preselected interface {self.preselected} may be opened")
            return None
        system = self.capture_system

        def probe() -> int:
            known = {i.name for i in system.list_interfaces()}
            if name not in known:
                raise CaptureError(f"no such interface: {name}")
            return system.probe_linktype(name)

        def probed(linktype: int) -> None:
            if self.state is SessionState.CLOSED:
                return
            self.device = name
            self.state = SessionState.OPENED
            self.log.info(
                "session={session} peer={peer} opened {device}", device=escaped(name), **self._tag()
            )
            self.channel.send_message(OpenReply(linktype, 0))

        def failed(f: Failure) -> None:
            f.trap(CaptureError)
            if self.state is not SessionState.CLOSED:
                self._error(ErrorCode.OPEN, f.getErrorMessage())

        return self._run(probe).addCallbacks(probed, failed)

    def _startcap(self, msg: StartCaptureRequest) -> Optional[defer.Deferred[None]]:
        if self.state is SessionState.CAPTURING:
            self._error(ErrorCode.STARTCAPTURE, "a capture is already running")
            return None
        if self.state is not SessionState.OPENED or self.device is None:
            self._error(ErrorCode.STARTCAPTURE, "no device is open")
            return None
        program = msg.filter
        if program is not None and not program.instructions:
            program = None  # an empty program: capture everything
        if program is not None:
            try:
                bpf.validate(program)
            except bpf.InvalidFilter as e:
                self._error(ErrorCode.STARTCAPTURE, f"invalid filter: {e}")
                return None
        flags = msg.flag_set
        direction = Direction.BOTH
        if StartCapFlags.INBOUND in flags and StartCapFlags.OUTBOUND not in flags:
            direction = Direction.IN
        elif StartCapFlags.OUTBOUND in flags and StartCapFlags.INBOUND not in flags:
            direction = Direction.OUT
        snaplen = msg.snaplen if 0 < msg.snaplen <= bpf.MAXIMUM_SNAPLEN else bpf.MAXIMUM_SNAPLEN
        options = CaptureOptions(
            snaplen=snaplen,
            promiscuous=StartCapFlags.PROMISC in flags,
            read_timeout_ms=msg.read_timeout_ms or 1000,
            direction=direction,
            buffer_size=self.policy.buffer_size,
        )
        if StartCapFlags.DGRAM in flags and self.channel.tls is not None:
            self._error(ErrorCode.STARTCAPTURE, "UDP data channels cannot be encrypted: use TCP with TLS")
            return None
        daemon_connects = (
            StartCapFlags.DGRAM in flags or StartCapFlags.SERVEROPEN in flags or self.channel.active
        )
        if daemon_connects and not msg.portdata:
            # Port 0 is nowhere: a UDP socket "connected" there is closed by the reactor at once.
            self._error(ErrorCode.STARTCAPTURE, "no data port given for the daemon to send to")
            return None
        return self._start_capture(self.device, msg, program, options)

    @defer.inlineCallbacks
    def _start_capture(
        self, device: str, msg: StartCaptureRequest, program: Optional[BpfProgram], options: CaptureOptions
    ) -> Any:
        """
        Open the capture, then its data channel, place its filter and only
        then start reading and answer.  Whatever arrives first, the session
        ending (L{close} stops the capture being started) or a refusal, the
        capture opened is closed.
        """
        opened = self.forwarded.opening(self.reactor)  # it will likely join soon
        try:
            handle = yield self._run(partial(self.capture_system.open, device, options))
        except CaptureError as e:
            if self.state is not SessionState.CLOSED:
                self._error(ErrorCode.STARTCAPTURE, f"cannot capture on {device}: {e}")
            return
        finally:
            opened()
        capture = SessionCapture(
            handle,
            options.snaplen,
            program,
            self._run,
            self._compile,
            self.forwarded,
            f"session={self.session_id} peer={self.peer} capture on {escaped(device)}",
        )
        if self.state is SessionState.CLOSED:
            capture.stop()  # the session ended while the capture opened
            return
        self._starting = capture
        try:
            yield self._start_data_channel(capture, msg, options)
        except Exception:
            if self._capture is capture:
                self._end_capture()
            else:
                capture.stop()
            raise
        finally:
            if self._starting is capture:
                self._starting = None

    @defer.inlineCallbacks
    def _start_data_channel(
        self, capture: SessionCapture, msg: StartCaptureRequest, options: CaptureOptions
    ) -> Any:
        flags = msg.flag_set
        peer = self.channel.peer_host
        snaplen = options.snaplen
        if StartCapFlags.DGRAM in flags:
            try:
                port, sink = self.data_channels.open_udp(peer, msg.portdata, snaplen, options.read_timeout_ms)
            except Exception as e:  # a socket we could not make
                capture.stop()
                self._error(ErrorCode.STARTCAPTURE, f"cannot open the data channel: {e}")
                return
            capture.sink = sink  # closed with the capture, should it go no further
            if not (yield self._filter_first(capture, f"udp and port {port} and port {msg.portdata}")):
                return
            self._begin(capture, options)
            self._sink_ready(capture, sink)
            self.channel.send_message(StartCaptureReply(options.buffer_size, port))
            return
        if StartCapFlags.SERVEROPEN in flags or self.channel.active:
            if not (yield self._filter_first(capture, f"tcp and port {msg.portdata}")):
                return
            d = self.data_channels.connect_tcp(
                peer, msg.portdata, snaplen, self.channel.tls, options.read_timeout_ms
            )
            capture.pending_sink = d
            self._begin(capture, options)
            try:
                sink = yield d
            except defer.CancelledError:
                return  # the session or capture ended first: nothing to report
            except Exception as e:
                if self._capture is capture:
                    yield self._end_capture()
                    self._error(ErrorCode.STARTCAPTURE, f"cannot connect the data channel: {e}")
                return
            if self._capture is not capture:
                sink.close()
                return
            self.channel.send_message(StartCaptureReply(options.buffer_size, msg.portdata))
            self._sink_ready(capture, sink)
            return
        try:
            port, listening = self.data_channels.listen_tcp(
                self.channel.local_host, peer, snaplen, self.channel.tls, options.read_timeout_ms
            )
        except Exception as e:  # a socket we could not make
            capture.stop()
            self._error(ErrorCode.STARTCAPTURE, f"cannot open the data channel: {e}")
            return
        capture.pending_sink = listening  # cancelled with the capture, should it go no further

        def accepted(sink: IPacketSink) -> None:
            if self._capture is capture:
                self._sink_ready(capture, sink)
            else:
                sink.close()

        def not_accepted(f: Failure) -> None:
            if f.check(defer.CancelledError):
                return
            if self._capture is capture:
                self._end_capture()
                self._error(ErrorCode.STARTCAPTURE, f.getErrorMessage())

        listening.addCallbacks(accepted, not_accepted)
        if not (yield self._filter_first(capture, f"tcp and port {port}")):
            return
        self._begin(capture, options)
        self.channel.send_message(StartCaptureReply(options.buffer_size, port))

    @defer.inlineCallbacks
    def _filter_first(self, capture: SessionCapture, data_channel: str) -> Any:
        """
        Place the capture's filter; whether the start may go on (C{False}:
        it was refused, and said so, or the session ended meanwhile).
        """
        try:
            placed = yield self._place_filter(capture, data_channel)
        except CaptureError as e:
            capture.stop()
            if self.state is not SessionState.CLOSED:
                self._error(ErrorCode.STARTCAPTURE, f"cannot filter on {self.device}: {e}")
            return False
        return bool(placed) and not capture.stopping and self.state is not SessionState.CLOSED

    def _place_filter(self, capture: SessionCapture, data_channel: str) -> defer.Deferred[bool]:
        """
        Give the capture its filter: the client's program, behind a program
        that drops every capturing session's control and data traffic (unless
        the operator turned that off), so that forwarded packets are never
        captured again (L{ForwardedTraffic}).  C{data_channel} is a pcap
        expression for the data channel's packets.  Fires with whether the
        filter is in place (C{False}: the capture ended first); fails with
        the kernel's refusal.
        """
        capture.data_channel = data_channel
        capture.own_traffic = self._own_traffic_expression(data_channel)
        if self.policy.exclude_own_traffic and capture.own_traffic:
            joined = self.forwarded.join(capture, capture.own_traffic)
            return joined.addCallback(lambda _: not capture.stopping)
        return capture.place()

    def _own_traffic_expression(self, data_channel: str) -> str:
        peer = self.channel.peer_host
        if not peer:
            return ""
        host = f"host {peer}"
        clauses = [f"({data_channel})"]
        if self.channel.local_port and self.channel.peer_port:
            clauses.append(f"(tcp and port {self.channel.local_port} and port {self.channel.peer_port})")
        return f"{host} and ({' or '.join(clauses)})"

    def _begin(self, capture: SessionCapture, options: CaptureOptions) -> None:
        self._capture = capture
        self.state = SessionState.CAPTURING
        self.log.info(
            "session={session} peer={peer} capture on {device} started: snaplen={snaplen} promiscuous={promisc}",
            device=escaped(self.device or ""),
            snaplen=options.snaplen,
            promisc="yes" if options.promiscuous else "no",
            **self._tag(),
        )

    def _sink_ready(self, capture: SessionCapture, sink: IPacketSink) -> None:
        reader = CaptureReader(
            self.reactor,  # type: ignore[arg-type]
            capture.handle,
            sink.write_batch,
            lambda why: self._capture_failed(capture, why),
        )
        sink.set_lost_callback(lambda why: self._data_channel_lost(capture, why))
        sink.log_tag = f"session={self.session_id} peer={self.peer}"
        capture.start_reading(reader, sink)

    def _capture_failed(self, capture: SessionCapture, why: str) -> None:
        if self._capture is capture:
            self._end_capture()
            self._error(ErrorCode.READEX, f"capture on {self.device} ended: {why}")

    def _data_channel_lost(self, capture: SessionCapture, why: str) -> None:
        if self._capture is capture:
            self.log.info("session={session} peer={peer} data channel lost: {why}", why=why, **self._tag())
            self._end_capture()

    def _end_capture(self) -> defer.Deferred[None]:
        """
        Stop the capture now; its handle closes in the capture system's
        thread.  Until it has (its final counters come with it), the session
        handles no other request.
        """
        capture, self._capture = self._capture, None
        if capture is None:
            return defer.succeed(None)
        self._last_activity = self.reactor.seconds()  # idle from now, not from the startcap
        sink = capture.sink
        sent, dropped = (sink.sent, sink.dropped) if sink is not None else (0, 0)
        self.packets_forwarded += sent
        counted = capture.counts()
        self.counters.capture_ended(counted)
        if self.state is SessionState.CAPTURING:
            self.state = SessionState.OPENED
        device = self.device

        def ended(stats: Optional[CaptureStats]) -> None:
            self.counters.capture_closed(counted, stats)
            if stats is not None:
                self._last_stats = StatsReply(
                    stats.received, stats.interface_dropped, stats.dropped + dropped, sent
                )
            last = self._last_stats
            self.log.info(
                "session={session} peer={peer} capture on {device} ended: received={received} "
                "interface_dropped={ifdrop} kernel_dropped={drop} sent={sent}",
                device=escaped(device or ""),
                received=last.ifrecv,
                ifdrop=last.ifdrop,
                drop=last.krnldrop,
                sent=last.svrcapt,
                **self._tag(),
            )

        d = capture.stop().addCallback(ended)
        self._hold(d)
        return d

    def _hold(self, d: defer.Deferred[Any]) -> None:
        """Handle no request until C{d} has fired."""
        if d.called:
            return
        self._holds += 1

        def release(result: object) -> object:
            self._holds -= 1
            self._drain()
            return result

        d.addBoth(release)

    def _updatefilter(self, msg: UpdateFilterRequest) -> Optional[defer.Deferred[None]]:
        if self._capture is None:
            self._error(ErrorCode.UPDATEFILTER, "no capture is running")
            return None
        program = msg.filter if msg.filter.instructions else bpf.ACCEPT_ALL
        capture = self._capture
        try:
            bpf.validate(program)
        except bpf.InvalidFilter as e:
            self._error(ErrorCode.UPDATEFILTER, f"invalid filter: {e}")
            return None
        previous, capture.client_program = capture.client_program, program

        def placed(done: bool) -> None:
            if self.state is SessionState.CLOSED:
                return
            if not done:
                self._error(ErrorCode.UPDATEFILTER, "the capture ended")
                return
            self.channel.send_message(UpdateFilterReply())

        def refused(f: Failure) -> None:
            f.trap(CaptureError)
            if capture.client_program is program:
                capture.client_program = previous  # the old filter is still the one in place
            if self.state is not SessionState.CLOSED:
                self._error(ErrorCode.UPDATEFILTER, f"cannot place the filter: {f.getErrorMessage()}")

        return capture.place().addCallbacks(placed, refused)

    def _stats(self, msg: StatsRequest) -> Optional[defer.Deferred[None]]:
        capture = self._capture
        if capture is None:
            self.channel.send_message(self._last_stats)
            return None

        def counted(s: CaptureStats) -> None:
            if self.state is SessionState.CLOSED:
                return
            sink = capture.sink
            sent, dropped = (sink.sent, sink.dropped) if sink is not None else (0, 0)
            stats = StatsReply(s.received, s.interface_dropped, s.dropped + dropped, sent)
            if self.policy.log_stats:
                self.log.info(
                    "session={session} peer={peer} stats on {device}: received={received} "
                    "interface_dropped={ifdrop} kernel_dropped={drop} sent={sent}",
                    device=escaped(self.device or ""),
                    received=stats.ifrecv,
                    ifdrop=stats.ifdrop,
                    drop=stats.krnldrop,
                    sent=stats.svrcapt,
                    **self._tag(),
                )
            self.channel.send_message(stats)

        def failed(f: Failure) -> None:
            f.trap(CaptureError)
            if self.state is not SessionState.CLOSED:
                self._error(ErrorCode.GETSTATS, f.getErrorMessage())

        return capture.stats().addCallbacks(counted, failed)

    def _endcap(self, msg: EndCaptureRequest) -> Optional[defer.Deferred[None]]:
        if self._capture is None:
            self._error(ErrorCode.ENDCAPTURE, "no capture is running")
            return None

        def ended(_: object) -> None:
            if self.state is not SessionState.CLOSED:
                self.channel.send_message(EndCaptureReply())

        return self._end_capture().addCallback(ended)

    def _setsampling(self, msg: SetSamplingRequest) -> None:
        if msg.method not in tuple(SamplingMethod):
            self._error(ErrorCode.SETSAMPLING, f"unknown sampling method {msg.method}")
            return
        self.sampling = msg  # stored, not applied (libpcap does the same on Linux)
        self.channel.send_message(SetSamplingReply())

    _HANDLERS: dict[type, Callable[[ServerSession, Any], Optional[defer.Deferred[None]]]] = {
        AuthRequest: _again_auth,
        FindAllInterfacesRequest: _findalldevs,
        OpenRequest: _open,
        StartCaptureRequest: _startcap,
        UpdateFilterRequest: _updatefilter,
        StatsRequest: _stats,
        EndCaptureRequest: _endcap,
        SetSamplingRequest: _setsampling,
    }

    # --- teardown ------------------------------------------------------------------

    def close(self, why: str) -> None:
        """End the session: stop any capture and close the control connection."""
        if self.state is SessionState.CLOSED:
            return
        self._end_capture()
        if self._starting is not None:
            self._starting.stop()  # its start sees that, and goes no further
            self._starting = None
        self._cancel_auth_timer()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._yield_call is not None and self._yield_call.active():
            self._yield_call.cancel()
        self._yield_call = None
        self.state = SessionState.CLOSED
        self._queue.clear()
        self.log.info("session={session} peer={peer} closed: {why}", why=why, **self._tag())
        self.channel.close()
