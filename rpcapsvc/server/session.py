"""
The server side of one RPCAP control session, as an explicit state machine.

L{ServerSession} is driven by framed messages (L{Received}) and reaches the
world only through small seams: an L{IControlChannel} to answer on, an
L{ICaptureSystem} to capture with, L{IDataChannels} to send packets through
and a clock.  Requests are handled one at a time, in order, by a
L{RequestQueue}; how a capture's data channel starts is a strategy of
L{rpcapsvc.server.datastart}; the capture itself is a L{SessionCapture}.

The whole life of a session is the two tables below: L{TRANSITIONS} (which
state may follow which, and on what) and L{REQUESTS} (what each request
does in each state; a request a state has no row for is answered with
WRONGMSG).  A move the first table does not allow raises
L{IllegalTransition}: a fault of ours, answered "internal server error".
"""

from __future__ import annotations

import enum
import ipaddress
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
from .datastart import data_start_for, own_traffic_expression
from .forwarded import ForwardedTraffic
from .requestqueue import REQUESTS_PER_TURN, RequestQueue
from .sessioncapture import SessionCapture

__all__ = [
    "REQUESTS_PER_TURN",
    "ForwardedTraffic",
    "IControlChannel",
    "IllegalTransition",
    "ServerSession",
    "SessionPolicy",
    "SessionState",
    "client_allowed",
]

PRESELECTED_SUFFIX = ";preselected"


class SessionState(enum.Enum):
    AUTHENTICATING = "authenticating"
    """Connected, not logged in: only auth is served."""
    READY = "ready"
    """Logged in, no device open."""
    OPEN = "open"
    """A device is open (open succeeded), no capture."""
    STARTING = "starting"
    """A startcap is under way: capture opening, filter being placed, data channel being connected or waited for."""
    CAPTURING = "capturing"
    """Packets flow through the data channel."""
    CLOSING = "closing"
    """A capture is being closed (its final counters come with it); requests wait."""
    CLOSED = "closed"
    """The session is over; the control connection is closed."""


AUTHENTICATING, READY, OPEN, STARTING, CAPTURING, CLOSING, CLOSED = SessionState

# fmt: off
TRANSITIONS: dict[SessionState, dict[SessionState, str]] = {
    # from            to: on what
    AUTHENTICATING: {READY: "login accepted (policy, checkers, session limit)"},
    READY:          {OPEN: "open: the device exists and its link type is known"},
    OPEN:           {OPEN: "open: another device",
                     STARTING: "startcap accepted"},
    STARTING:       {CAPTURING: "the data channel is up: the capture reads into it",
                     OPEN: "the start failed before the capture was the session's",
                     CLOSING: "endcap, or the data connection failed"},
    CAPTURING:      {CLOSING: "endcap, data channel lost, capture read error"},
    CLOSING:        {OPEN: "the capture's handle is closed"},
    CLOSED:         {},
}
"""Every move a session makes; besides, any state but CLOSED goes to CLOSED on close, connection lost, login or idle timeout, oversized message, or a session limit."""
# fmt: on

LOGGED_IN = (READY, OPEN, STARTING, CAPTURING, CLOSING)
"""The states of a logged-in session (admission counts them against C{max_sessions})."""

Handler = Callable[["ServerSession", Any], Optional[defer.Deferred[None]]]


def _refuse(code: ErrorCode, text: str) -> Handler:
    """A row's handler that answers with an error, and changes nothing."""

    def refuse(session: ServerSession, msg: Any) -> None:
        session._error(code, text)

    return refuse


def _rows(states: Sequence[SessionState], request: type, handler: Union[str, Handler]) -> dict[Any, Any]:
    return {(state, request): handler for state in states}


_NO_CAPTURE = (READY, OPEN)
_A_CAPTURE = (STARTING, CAPTURING)  # STARTING serves requests once the reply is sent (passive TCP)
_SERVING = _NO_CAPTURE + _A_CAPTURE  # CLOSING holds requests until the capture is closed

# fmt: off
REQUESTS: dict[tuple[SessionState, type], Union[str, Handler]] = {
    (AUTHENTICATING, AuthRequest): "_auth",
    **_rows(_SERVING,    AuthRequest,              _refuse(ErrorCode.WRONGMSG, "already authenticated")),
    **_rows(_SERVING,    FindAllInterfacesRequest, "_findalldevs"),
    **_rows(_SERVING,    SetSamplingRequest,       "_setsampling"),
    **_rows(_NO_CAPTURE, OpenRequest,              "_open"),
    **_rows(_A_CAPTURE,  OpenRequest,              _refuse(ErrorCode.OPEN, "a capture is running; end it before opening another device")),  # noqa: E501
    (READY,             StartCaptureRequest):      _refuse(ErrorCode.STARTCAPTURE, "no device is open"),
    (OPEN,              StartCaptureRequest):      "_startcap",
    **_rows(_A_CAPTURE,  StartCaptureRequest,      _refuse(ErrorCode.STARTCAPTURE, "a capture is already running")),
    **_rows(_NO_CAPTURE, UpdateFilterRequest,      _refuse(ErrorCode.UPDATEFILTER, "no capture is running")),
    **_rows(_A_CAPTURE,  UpdateFilterRequest,      "_updatefilter"),
    **_rows(_NO_CAPTURE, StatsRequest,             "_stats_of_last_capture"),
    **_rows(_A_CAPTURE,  StatsRequest,             "_stats"),
    **_rows(_NO_CAPTURE, EndCaptureRequest,        _refuse(ErrorCode.ENDCAPTURE, "no capture is running")),
    **_rows(_A_CAPTURE,  EndCaptureRequest,        "_endcap"),
}
"""
What each request does in each state.  Close, and an error the client
reports, are served in every state; a malformed or oversized message, or
one of another protocol version, is refused in every state (L{ServerSession._dispatch}).
"""
# fmt: on


class IllegalTransition(RuntimeError):
    """A move L{TRANSITIONS} does not allow: a fault of ours."""


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
        self.state = AUTHENTICATING
        self.device: Optional[str] = None
        self.sampling = SetSamplingRequest(SamplingMethod.NONE, 0)
        self.user: Optional[bytes] = None
        self._capture: Optional[SessionCapture] = None
        self._starting: Optional[SessionCapture] = None
        """A capture being started (opened, its filter not yet in place)."""
        self._run = runner_of(capture_system)
        """Where the capture system's blocking calls run (a thread pool; in place for fakes)."""
        self._compile = getattr(capture_system, "compile", None) or compile_filter
        self.packets_forwarded = 0
        """Packets handed to the data channels of every capture this session has run."""
        self._last_stats = StatsReply(0, 0, 0, 0)
        self.requests = RequestQueue(
            self.reactor,
            channel,
            self._dispatch,
            self._internal_error,
            lambda: self.close("the client finished sending"),
        )
        self._auth_timer: Optional[IDelayedCall] = self.reactor.callLater(
            policy.auth_timeout, self._auth_timed_out
        )
        self._last_activity = self.reactor.seconds()
        self._idle_timer: Optional[IDelayedCall] = None

    def _enter(self, state: SessionState) -> None:
        """Move to C{state}, as L{TRANSITIONS} allows (closing is L{close}'s)."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"session {self.session_id}: {self.state.name} -> {state.name}")
        self.state = state

    @property
    def peer(self) -> str:
        """The client's C{host:port}, for the log."""
        return host_port(self.channel.peer_host, self.channel.peer_port)

    def _tag(self) -> dict[str, Any]:
        """The fields every log line of the session starts with: C{session=N peer=HOST:PORT}."""
        return {"session": self.session_id, "peer": self.peer}

    # --- input: the control connection's side of the request queue -------------------

    def received(self, messages: list[Received]) -> None:
        self.requests.received(messages)

    def replies_backed_up(self, backed_up: bool) -> None:
        """
        The client is not reading its replies (the control connection's
        write buffer is full), or has caught up: handle no more requests
        until it has, so that replies cannot pile up in memory.
        """
        self.requests.replies_backed_up(backed_up)

    def input_ended(self) -> None:
        """
        The client half-closed the control connection: it will send nothing
        more.  Answer what it sent (as libpcap's rpcapd does), then close.
        """
        self.requests.input_ended()

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
        """Handle one request: by L{REQUESTS}' row for the session's state and the request."""
        self._last_activity = self.reactor.seconds()
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
        handler = REQUESTS.get((self.state, type(msg)))
        if handler is None:
            if self.state is AUTHENTICATING:
                self._error(ErrorCode.WRONGMSG, "message received before authentication")
            else:
                self._error(ErrorCode.WRONGMSG, f"unexpected message type {mtype}")
            return None
        if isinstance(handler, str):
            return getattr(self, handler)(msg)  # type: ignore[no-any-return]
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
            if self.state is not CLOSED:
                self.channel.send_message(ErrorReply(ErrorCode.AUTH_FAILED, f"Authentication failed: {why}"))
            d.callback(None)

        self.reactor.callLater(self.policy.failed_auth_delay, answer)
        return d

    def _authenticated(self, user: Optional[bytes]) -> None:
        if self.state is not AUTHENTICATING:
            return  # closed (timeout, connection lost) while the login was being checked
        if self.login_gate is not None and not self.login_gate(self):
            self._error(ErrorCode.NETWORK, "too many sessions; try again later")
            self.close("too many sessions")
            return
        self.user = user
        self._enter(READY)
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
        if self.state is AUTHENTICATING:
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
        if self.state not in (READY, OPEN):
            return None
        if self._capture is not None or self.requests.busy:
            return None
        return self.reactor.seconds() - self._last_activity

    def _idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.policy.idle_timeout
        if self.state is CLOSED or timeout <= 0:
            return
        idle = self.idle_for()
        if idle is not None and idle >= timeout:
            self._error(ErrorCode.RUNTIMETIMEOUT, f"idle for {idle:.0f} s with no capture: session closed")
            self.close("idle timeout")
            return
        self._idle_timer = self.reactor.callLater(timeout - (idle or 0.0), self._idle_check)

    # --- requests ------------------------------------------------------------------

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
            if self.state is CLOSED:
                return
            if not interfaces:
                self._error(ErrorCode.NOREMOTEIF, "no interfaces found")
                return
            self.channel.send_message(FindAllInterfacesReply(tuple(interfaces)))

        def failed(f: Failure) -> None:
            # The OS listing failed; say so, keep serving.
            if self.state is not CLOSED:
                self._error(ErrorCode.FINDALLIF, f"cannot list interfaces: {f.getErrorMessage()}")

        return self._run(self._interfaces).addCallbacks(listed, failed)

    def _open(self, msg: OpenRequest) -> Optional[defer.Deferred[None]]:
        name = msg.device
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
            if self.state is CLOSED:
                return
            self.device = name
            self._enter(OPEN)
            self.log.info(
                "session={session} peer={peer} opened {device}", device=escaped(name), **self._tag()
            )
            self.channel.send_message(OpenReply(linktype, 0))

        def failed(f: Failure) -> None:
            f.trap(CaptureError)
            if self.state is not CLOSED:
                self._error(ErrorCode.OPEN, f.getErrorMessage())

        return self._run(probe).addCallbacks(probed, failed)

    def _startcap(self, msg: StartCaptureRequest) -> Optional[defer.Deferred[None]]:
        assert self.device is not None  # OPEN has a device
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
        self._enter(STARTING)
        return self._start_capture(self.device, msg, program, options).addBoth(self._start_ended)

    def _start_ended(self, result: object) -> object:
        """The startcap is answered: a start that went nowhere leaves the device open."""
        if self.state is STARTING and self._capture is None:
            self._enter(OPEN)
        return result

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
            if self.state is not CLOSED:
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
        capture.set_sampling(self.sampling.method, self.sampling.value)
        if self.state is CLOSED:
            capture.stop()  # the session ended while the capture opened
            return
        self._starting = capture
        try:
            yield data_start_for(msg, self.channel, self.data_channels, options).start(
                _Starting(self, capture, options)
            )
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
    def _filter_first(self, capture: SessionCapture, data_channel: str) -> Any:
        """
        Place the capture's filter, its session's own traffic kept out
        (L{SessionCapture.place_first}); whether the start may go on
        (C{False}: it was refused, and said so, or the session ended
        meanwhile).
        """
        channel = self.channel
        own = own_traffic_expression(channel.peer_host, channel.local_port, channel.peer_port, data_channel)
        try:
            placed = yield capture.place_first(own, self.policy.exclude_own_traffic)
        except CaptureError as e:
            capture.stop()
            if self.state is not CLOSED:
                self._error(ErrorCode.STARTCAPTURE, f"cannot filter on {self.device}: {e}")
            return False
        return bool(placed) and not capture.stopping and self.state is not CLOSED

    def _begin(self, capture: SessionCapture, options: CaptureOptions) -> None:
        self._capture = capture
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
        self._enter(CAPTURING)
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
        Stop the capture now (STARTING or CAPTURING -> CLOSING); its handle
        closes in the capture system's thread.  Until it has (its final
        counters come with it), the session handles no other request; then
        the device is open again (-> OPEN).
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
        if self.state is not CLOSED:
            self._enter(CLOSING)
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

        def closed(result: object) -> object:
            if self.state is CLOSING:
                self._enter(OPEN)
            return result

        def not_closed(failure: Failure) -> None:
            # A fault of ours (libpcap's close does not fail): said once, the session goes on.
            self.log.error(
                "session={session} peer={peer} closing the capture failed: {why}",
                why=escaped(f"{failure.value.__class__.__name__}: {failure.getErrorMessage()}"),
                **self._tag(),
            )

        d = capture.stop().addCallbacks(ended, not_closed)
        d.addBoth(closed)
        self.requests.hold(d)
        return d

    def _updatefilter(self, msg: UpdateFilterRequest) -> Optional[defer.Deferred[None]]:
        capture = self._capture
        assert capture is not None  # STARTING and CAPTURING have one (REQUESTS)
        program = msg.filter if msg.filter.instructions else bpf.ACCEPT_ALL
        try:
            bpf.validate(program)
        except bpf.InvalidFilter as e:
            self._error(ErrorCode.UPDATEFILTER, f"invalid filter: {e}")
            return None
        previous, capture.client_program = capture.client_program, program

        def placed(done: bool) -> None:
            if self.state is CLOSED:
                return
            if not done:
                self._error(ErrorCode.UPDATEFILTER, "the capture ended")
                return
            self.channel.send_message(UpdateFilterReply())

        def refused(f: Failure) -> None:
            f.trap(CaptureError)
            if capture.client_program is program:
                capture.client_program = previous  # the old filter is still the one in place
            if self.state is not CLOSED:
                self._error(ErrorCode.UPDATEFILTER, f"cannot place the filter: {f.getErrorMessage()}")

        return capture.place().addCallbacks(placed, refused)

    def _stats_of_last_capture(self, msg: StatsRequest) -> None:
        """No capture runs: the counters of the last one (zeros before any)."""
        self.channel.send_message(self._last_stats)

    def _stats(self, msg: StatsRequest) -> defer.Deferred[None]:
        capture = self._capture
        assert capture is not None  # STARTING and CAPTURING have one (REQUESTS)

        def counted(s: CaptureStats) -> None:
            if self.state is CLOSED:
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
            if self.state is not CLOSED:
                self._error(ErrorCode.GETSTATS, f.getErrorMessage())

        return capture.stats().addCallbacks(counted, failed)

    def _endcap(self, msg: EndCaptureRequest) -> defer.Deferred[None]:
        assert self._capture is not None  # STARTING and CAPTURING have one (REQUESTS)

        def ended(_: object) -> None:
            if self.state is not CLOSED:
                self.channel.send_message(EndCaptureReply())

        return self._end_capture().addCallback(ended)

    def _setsampling(self, msg: SetSamplingRequest) -> None:
        if msg.method not in tuple(SamplingMethod):
            self._error(ErrorCode.SETSAMPLING, f"unknown sampling method {msg.method}")
            return
        self.sampling = msg  # applied to the captures this session starts from now on
        if self._capture is not None:  # (no request is handled while a start is under way)
            self._capture.set_sampling(msg.method, msg.value)  # and to the one running
        self.channel.send_message(SetSamplingReply())

    # --- teardown ------------------------------------------------------------------

    def close(self, why: str) -> None:
        """End the session, from any state: stop any capture and close the control connection."""
        if self.state is CLOSED:
            return
        self._end_capture()
        if self._starting is not None:
            self._starting.stop()  # its start sees that, and goes no further
            self._starting = None
        self._cancel_auth_timer()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self.state = CLOSED
        self.requests.stop()
        self.log.info("session={session} peer={peer} closed: {why}", why=why, **self._tag())
        self.channel.close()


@attrs.frozen
class _Starting:
    """A session starting one capture, as its data-channel strategy sees it (L{CaptureStart})."""

    session: ServerSession
    capture: SessionCapture
    options: CaptureOptions

    def filter_first(self, data_channel: str) -> defer.Deferred[bool]:
        return self.session._filter_first(self.capture, data_channel)  # type: ignore[no-any-return]

    def begin(self) -> None:
        self.session._begin(self.capture, self.options)

    def answer(self, port: int) -> None:
        self.session.channel.send_message(StartCaptureReply(self.options.buffer_size, port))

    def sink_ready(self, sink: IPacketSink) -> None:
        self.session._sink_ready(self.capture, sink)

    def refuse(self, text: str) -> None:
        self.session._error(ErrorCode.STARTCAPTURE, text)

    def current(self) -> bool:
        return self.session._capture is self.capture

    def end(self) -> defer.Deferred[None]:
        return self.session._end_capture()
