"""
C{twistd rpcapcollect}: a long-running collector for a fleet of active daemons.

Daemons started with C{--active COLLECTOR:2003} connect here; for each
connection the collector logs in, picks the interface (the one named for
that host, else the one named for all, else the daemon's first, which is its
preselected interface when it has one), starts a capture and writes it to
rotating pcapng files named after the daemon and the interface.  It logs who
connected, and every so often the packet, drop and loss counts; a daemon that
vanishes or misbehaves ends only its own capture.

Anyone who can reach the port can dial in, so the collector bounds what a
daemon may cost it, as the daemon bounds its clients (L{rpcapsvc.server.admission}):
a deadline to be capturing, per-address and total limits on connections (a
daemon already capturing is never closed to make room), a bound on what each
connection and all of them may make it buffer, a deadline for each stats
reply, messages nobody asked for counted and their log lines summarised, and
a L{DirectoryBudget} over the files whatever interface names daemons send.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from typing import Any, Optional, Sequence

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ConnectionClosed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..logtext import escaped, host_port
from ..metrics import MetricsListener, new_registry
from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.datachannel import CapturedPacket
from ..server.admission import host_key, ticket
from ..sighup import SighupHandler
from ..usage import cannot_start, listen_failure_hint
from .client import (
    CaptureSettings,
    RemoteCapture,
    RpcapClientFactory,
    RpcapClientProtocol,
    protocol_broken,
    start_capture,
)
from .files import DirectoryBudget, FileHistory, RotatingCaptureFiles
from .metrics import MAX_SERIES, CollectorMetrics, SeriesKey, SeriesTable, series_key

DEFAULT_LISTEN = "tcp:2003"
STOP_GRACE = 2.0
"""Seconds a stopping collector waits for daemons to see their control connections close."""

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
"""
The largest message a daemon may send (bytes of payload): a findalldevs
reply of a host with thousands of interfaces fits; was 16 MiB, which each
connection could make the collector buffer.
"""

REFUSALS_LOGGED = 10
"""Connections refused or hung up on that are logged one by one in each L{SUMMARY_INTERVAL}."""

SUMMARY_INTERVAL = 10.0
"""Seconds over which lines a peer can provoke at will are summarised."""

MAX_FILE_NAME_PART = 64
"""Characters of an interface name kept in a file name (file names are at most 255 bytes)."""

_BUFFER_CHECKED_FROM = 64 * 1024
"""A connection holding less is not worth summing every connection for (bounds the slack)."""


@attrs.define
class CollectorSettings:
    directory: str
    interface: Optional[str] = None
    host_interfaces: dict[str, str] = attrs.field(factory=dict)
    filter: str = ""
    snaplen: int = MAXIMUM_SNAPLEN
    udp: bool = False
    format: str = "pcapng"
    rotate_bytes: Optional[int] = None
    rotate_seconds: Optional[float] = None
    max_files: Optional[int] = None
    username: Optional[bytes] = None
    password: bytes = b""
    stats_interval: float = 10.0
    refused_hold: float = 30.0
    """
    Seconds to keep a daemon whose capture could not start connected (idle)
    before hanging up: daemons dial again at once after a hang-up, so this
    is how often each one is retried.
    """
    login_timeout: float = 10.0
    """Seconds a daemon has, from connecting, to log in and start its capture."""
    max_daemons: int = 256
    """Daemons capturing at once; past it, a new connection is refused."""
    max_daemons_per_host: int = 16
    """Daemons of one address (an IPv6 /64) capturing at once; past it, its new connections are refused."""
    max_unanswered: int = 32
    """Connections not capturing (yet); past it, the one connected longest is closed to make room."""
    max_unanswered_per_host: int = 8
    """The same, for one address (an IPv6 /64)."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """The largest message a daemon may send; a larger one ends its session."""
    max_buffered: int = 64 * 1024 * 1024
    """
    Bytes of unfinished messages all connections together may hold; past
    it, the connection holding the most is closed.
    """
    max_daemon_files: Optional[int] = None
    """Files kept per daemon (address), all its interfaces together; see L{DirectoryBudget}."""
    max_total_files: Optional[int] = None
    """Files kept in all."""
    max_total_bytes: Optional[int] = None
    """Bytes of files kept in all (closed files are deleted; rotation lets it hold)."""


def _unmapped(host: str) -> str:
    """An IPv4 daemon seen through a dual-stack IPv6 socket (::ffff:a.b.c.d) is a.b.c.d."""
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped is not None else host


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"


def host_file_name(host: str) -> str:
    """
    A daemon's address as the first part of its file names, one to one:
    an IP address in its compressed form (C{1:2:0::3} is C{1:2::3}) with
    each colon a dash, so C{1:2::3} (C{1-2--3}) and C{1::2:3} (C{1--2-3})
    never share a prefix, nor a C{--max-files} history.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _safe(host)
    compressed, _, scope = address.compressed.partition("%")
    name = compressed.replace(":", "-")
    return f"{name}-scope-{_safe(scope)}" if scope else name


def interface_file_name(name: str) -> str:
    """
    An interface name as part of a file name: kept when it is letters,
    digits, C{.}, C{_} and C{-} (at most L{MAX_FILE_NAME_PART} of them);
    otherwise made so, with a hash of the real name, so that two names never
    share files and no name reaches outside the directory.
    """
    safe = _safe(name)
    if safe == name and len(name) <= MAX_FILE_NAME_PART and name not in (".", ".."):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe[:MAX_FILE_NAME_PART]}-{digest}"


class LineBudget:
    """
    Lines a peer can provoke at will (refusals, errors nobody asked for):
    the first C{per_interval} of each C{interval} are logged, the rest only
    counted, and the count said in the next line that is logged.
    """

    def __init__(self, clock: Any, per_interval: int, interval: float = SUMMARY_INTERVAL) -> None:
        self.clock = clock
        self.per_interval = per_interval
        self.interval = interval
        self._started = -interval
        self._logged = 0
        self.suppressed = 0
        """Lines not logged since the last one that was."""

    def allow(self) -> bool:
        now = self.clock.seconds()
        if now - self._started >= self.interval:
            self._started, self._logged = now, 0
        if self._logged < self.per_interval:
            self._logged += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> str:
        """C{" (N more not logged)"} for the next line logged, once."""
        n, self.suppressed = self.suppressed, 0
        return f" ({n} more not logged)" if n else ""


class CollectorClientProtocol(RpcapClientProtocol):
    """
    The control connection of a daemon that dialled in: RPCAP's client,
    with the collector's bounds on what the daemon may make it hold and log.
    """

    def __init__(self, collector: CollectorService) -> None:
        super().__init__(max_payload=collector.settings.max_message_size, active=True)
        self.collector = collector

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.collector.check_buffered(self)


class DaemonSession:
    """One connected daemon: its capture and its files."""

    log = Logger()

    def __init__(self, collector: CollectorService, client: RpcapClientProtocol) -> None:
        self.collector = collector
        self.client = client
        self.host = _unmapped(client.peer_host)
        self.host_key = host_key(self.host)
        """What per-address limits count by (an IPv6 daemon's /64)."""
        self.ticket = ticket()
        """Larger for a later connection: its age."""
        self.daemon = host_port(self.host, client.peer_port)
        """The daemon's C{host:port}, for the log."""
        self.interface: Optional[str] = None
        """The interface captured on, once chosen."""
        self.capture: Optional[RemoteCapture] = None
        self.files: Optional[RotatingCaptureFiles] = None
        self.prefix: Optional[str] = None
        self.interface_id = 0
        self.packets = 0
        self.drops = 0
        self.written = 0
        """Packets written to the files (metrics)."""
        self.series_key: Optional[SeriesKey] = None
        """The metrics series this session counts in, once its capture is being written."""
        self._ticker: Optional[task.LoopingCall] = None
        self._hold: Optional[IDelayedCall] = None
        self._deadline: Optional[IDelayedCall] = None
        self._running: Optional[defer.Deferred[None]] = None
        self.hung_up: Optional[str] = None
        """Why the collector hung up on the daemon, if it did (its limits)."""
        self._accounted = False

    @property
    def capturing(self) -> bool:
        """Whether the daemon's capture is being written (it is never closed to make room)."""
        return self.files is not None

    def start(self) -> None:
        """Run the session, with L{CollectorSettings.login_timeout} to be capturing."""
        self._deadline = self.collector.reactor.callLater(
            self.collector.settings.login_timeout, self._too_slow
        )
        self._running = defer.ensureDeferred(self.run())

    def _too_slow(self) -> None:
        self._deadline = None
        self.hang_up(
            "login-timeout",
            f"not capturing {self.collector.settings.login_timeout:g} s after connecting (--login-timeout)",
        )

    def hang_up(self, reason: str, why: str) -> None:
        """
        End the session for breaking one of the collector's limits: counted
        under C{reason}, logged (within the collector's line budget), the
        connection aborted (a daemon that reads nothing cannot hold it).
        """
        if self.hung_up is not None or self.client.disconnected.called:
            return
        self.hung_up = reason
        self.collector.count_closed(reason)
        if self.collector.refusal_lines.allow():
            self.log.warn(
                "{tag} closed: {why}{more}",
                tag=self._tag(),
                why=why,
                more=self.collector.refusal_lines.take_suppressed(),
            )
        running = self._running
        if running is not None:
            # Once the connection is lost every reply has failed; what the session
            # may still wait for is the data connection: stop waiting for it too.
            self.client.disconnected.addCallback(lambda _: running.cancel())
        self.client.abort()

    async def run(self) -> None:
        settings = self.collector.settings
        self.log.info("{tag} connected", tag=self._tag())
        try:
            await self.client.authenticate(settings.username, settings.password)
            interfaces = await self.client.find_interfaces()
            wanted = settings.host_interfaces.get(self.host) or settings.interface
            if wanted is None:
                if not interfaces:
                    raise ValueError("the daemon lists no interfaces")
                wanted = interfaces[0].name
            self.interface = wanted
            self.client.log_tag = self._tag()
            capture_settings = CaptureSettings(
                wanted, snaplen=settings.snaplen, filter=settings.filter, udp=settings.udp
            )
            self.capture = await start_capture(
                self.collector.reactor,
                self.client,
                capture_settings,
                self.on_packets,
                active=True,
                connect_timeout=settings.login_timeout,
            )
            # Only now: a daemon that is refused (and retries) leaves no empty files.
            # No packet can arrive before the reactor runs again.
            prefix = self.collector.claim_prefix(f"{host_file_name(self.host)}_{interface_file_name(wanted)}")
            self.prefix = prefix
            self.files = RotatingCaptureFiles(
                settings.directory,
                prefix,
                format=settings.format,
                max_bytes=settings.rotate_bytes,
                max_seconds=settings.rotate_seconds,
                max_files=settings.max_files,
                history=self.collector.history(prefix),
                budget=self.collector.budget,
                owner=self.host_key,
            )
            self.interface_id = self.files.add_interface(
                wanted, self.capture.linktype, settings.snaplen, f"rpcap://{self.host}/{wanted}"
            )
        except Exception as e:
            self._cancel_deadline()
            broken = protocol_broken(e, self.client)
            gone = isinstance(e, ConnectionClosed) or self.client.disconnected.called
            if self.hung_up is not None or gone or broken:
                # Hung up on (said so then), or gone by itself: nothing to hold.
                if self.capture is not None:
                    self.capture.close_data()
                if self.hung_up is None and not broken:  # the client said why it broke off
                    self.log.info(
                        "{tag} gone before capturing: {why}", tag=self._tag(), why=escaped(str(e) or repr(e))
                    )
                self.client.disconnected.addCallback(lambda _: self.finish())
                return
            self.log.warn(
                "{tag} capture not started: {why}; trying again in {hold:g} s",
                tag=self._tag(),
                why=escaped(str(e) or repr(e)),
                hold=settings.refused_hold,
            )
            if self.capture is not None:
                self.capture.close_data()
            # Hung up on at once, an active daemon would dial again at once:
            # hold it idle for a while, then hang up (never CLOSE, which would
            # stop libpcap's and ExtraHop's daemons for good).
            self._hold = self.collector.reactor.callLater(settings.refused_hold, self.client.close)
            self.client.disconnected.addCallback(lambda _: self.finish())
            return
        self.log.info(
            "{tag} capturing into {files}",
            tag=self._tag(),
            files=os.path.join(settings.directory, f"{prefix}_*.{settings.format}"),
        )
        self._cancel_deadline()
        self.series_key = series_key(self.host, wanted)
        self.collector.series.session_started(self.series_key)
        self._ticker = task.LoopingCall(lambda: defer.ensureDeferred(self.report()))
        self._ticker.clock = self.collector.reactor
        self._ticker.start(settings.stats_interval, now=False)
        self.client.disconnected.addCallback(lambda _: self.finish())
        if self.capture.data_lost is not None:
            self.capture.data_lost.addCallback(lambda _: self._data_lost())

    def _data_lost(self) -> None:
        if self.files is not None:  # not our own doing: hang up, and the daemon reconnects
            why = self.capture.data_error if self.capture is not None else None
            self.log.warn(
                "{tag} data connection {what}; ending the session",
                tag=self._tag(),
                what=f"unreadable ({escaped(why)})" if why else "lost",
            )
            self.client.close()

    def on_packets(self, packets: list[CapturedPacket]) -> None:
        self.packets += len(packets)
        if self.files is not None:
            try:
                self.files.write_packets(self.interface_id, packets)
                self.written += len(packets)
            except OSError as e:
                self.log.error("{tag} cannot write: {why}; capture ended", tag=self._tag(), why=e)
                self.client.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    async def report(self) -> None:
        if self.files is not None:
            self.files.tick()
        if self.capture is None:
            return
        # Requests would pile up behind one never answered: a reply is due before the next one.
        interval = self.collector.settings.stats_interval
        deadline = self.collector.reactor.callLater(
            interval,
            self.hang_up,
            "reply-timeout",
            f"no stats reply within {interval:g} s (--stats-interval)",
        )
        try:
            stats = await self.capture.stats()
        except Exception:
            return
        finally:
            if deadline.active():
                deadline.cancel()
        self.drops = stats.dropped
        if self.files is not None:
            self.files.set_stats(self.interface_id, stats.ifrecv, stats.krnldrop, stats.ifdrop)
        loss = self.capture.loss
        self.log.info(
            "{tag} stats: file_prefix={prefix} packets={packets} kernel_dropped={drops} "
            "lost_in_transit={lost} lost_datagrams={datagrams}",
            tag=self._tag(),
            prefix=self.prefix,
            packets=self.packets,
            drops=self.drops,
            lost=loss.lost_packets,
            datagrams=loss.lost_datagrams,
        )

    @property
    def lost_packets(self) -> int:
        """Packets lost in transit (UDP, udpstr) and those the daemon last reported dropping."""
        return (self.capture.loss.lost_packets if self.capture is not None else 0) + self.drops

    def _account(self) -> None:
        """The session ends: what it wrote and lost goes into the collector's totals (metrics)."""
        if self._accounted:
            return
        self._accounted = True
        if self.series_key is not None:
            self.collector.series.session_ended(self.series_key, self.written, self.lost_packets)
            self.series_key = None
        if self.files is not None:
            self.collector.files_ended += self.files.files_opened
        self.collector.unsolicited_ended += self.unsolicited
        self.collector.foreign_ended += self.foreign
        if self.client.broken is not None:
            self.collector.count_closed("protocol")

    @property
    def unsolicited(self) -> int:
        """Messages the daemon sent that answered no request (or not the one asked)."""
        return self.client.unexpected

    @property
    def foreign(self) -> int:
        """Datagrams and connections from others than the daemon, turned away on its data channel."""
        return self.capture.loss.foreign if self.capture is not None else 0

    def _tag(self) -> str:
        """What every log line of the session starts with: C{daemon=HOST:PORT interface=NAME}."""
        if self.interface is None:
            return f"daemon={self.daemon}"
        return f"daemon={self.daemon} interface={escaped(self.interface)}"

    def finish(self) -> None:
        self._cancel_deadline()
        if self._hold is not None and self._hold.active():
            self._hold.cancel()
        self._hold = None
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self.capture is not None:
            self.capture.close_data()
        self._account()
        if self.files is not None:
            self.files.close()
            self.log.info(
                "{tag} gone: packets={packets} files={n}",
                tag=self._tag(),
                packets=self.packets,
                n=len(self.files.files),
            )
            self.files = None
        self.collector.sessions.discard(self)
        if self.prefix is not None:
            self.collector.prefixes.discard(self.prefix)
            self.collector.forget_empty_histories()
            self.prefix = None


def _when_disconnected(client: RpcapClientProtocol) -> defer.Deferred[None]:
    """A Deferred of our own for C{client.disconnected}: it may time out without touching the original."""
    d: defer.Deferred[None] = defer.Deferred()

    def fire(result: object) -> object:
        if not d.called:
            d.callback(None)
        return result

    client.disconnected.addBoth(fire)
    return d


class _DaemonFactory(RpcapClientFactory):
    """Builds the collector's control connections for the daemons that dial in."""

    def __init__(self, collector: CollectorService) -> None:
        super().__init__(collector._daemon_connected)
        self.collector = collector

    def new_protocol(self) -> RpcapClientProtocol:
        return CollectorClientProtocol(self.collector)


class CollectorService(MultiService):
    """Accepts active daemons on every C{listen} endpoint and records their captures."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: CollectorSettings,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        reload_on_sighup: bool = False,
        metrics: Optional[str] = None,
        max_metric_series: int = MAX_SERIES,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.sighup = SighupHandler(reactor, self.reopen_files, enabled=reload_on_sighup)
        """SIGHUP starts new capture files (L{reopen_files}), with C{reload_on_sighup}."""
        self.settings = settings
        self.sessions: set[DaemonSession] = set()
        self._histories: dict[str, FileHistory] = {}
        self.prefixes: set[str] = set()
        """File-name prefixes of the sessions writing now."""
        self.series = SeriesTable(max_metric_series)
        """Packets written and lost by ended sessions, per daemon and interface (metrics)."""
        self.files_ended = 0
        """Capture files started by sessions that have ended (metrics)."""
        self.budget = DirectoryBudget(
            settings.max_daemon_files, settings.max_total_files, settings.max_total_bytes
        )
        """Bounds every daemon's files together, whatever interface names they send."""
        self.connections = 0
        """Daemons that connected (metrics)."""
        self.refused: dict[str, int] = {}
        """Connections refused at once, by reason (metrics)."""
        self.closed: dict[str, int] = {}
        """Connections the collector hung up on for breaking a limit, by reason (metrics)."""
        self.unsolicited_ended = 0
        """Messages daemons sent that answered no request, of sessions that have ended (metrics)."""
        self.foreign_ended = 0
        """Datagrams and connections from others than the daemon, of sessions that have ended (metrics)."""
        self.refusal_lines = LineBudget(reactor, REFUSALS_LOGGED)
        self.metrics_registry = new_registry()
        """The collector's own Prometheus registry, served at C{/metrics} on C{metrics} when given."""
        self.metrics_registry.register(CollectorMetrics(self))
        factory = _DaemonFactory(self)
        for description in listen:
            listener = StreamServerEndpointService(serverFromString(reactor, description), factory)
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
        if metrics:
            MetricsListener(reactor, metrics, self.metrics_registry, "twistd rpcapcollect").setServiceParent(
                self
            )

    def claim_prefix(self, base: str) -> str:
        """
        The file-name prefix for a new session: C{base}, or C{base-2},
        C{base-3}... while other sessions of the same daemon and interface
        are writing, so that each series of files can be told apart.
        """
        prefix, n = base, 1
        while prefix in self.prefixes:
            n += 1
            prefix = f"{base}-{n}"
        self.prefixes.add(prefix)
        return prefix

    def history(self, prefix: str) -> FileHistory:
        """The file series of one daemon and interface, kept across its reconnections."""
        return self._histories.setdefault(prefix, FileHistory())

    def forget_empty_histories(self) -> None:
        """Series whose files are all gone need not be remembered (daemons can make up many)."""
        for prefix in [p for p, h in self._histories.items() if not h.paths and not h.open]:
            del self._histories[prefix]

    def count_closed(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1

    def _daemon_connected(self, client: RpcapClientProtocol) -> None:
        self.connections += 1
        session = DaemonSession(self, client)
        refusal = self._admit(session)
        if refusal is not None:
            reason, why = refusal
            self.refused[reason] = self.refused.get(reason, 0) + 1
            if self.refusal_lines.allow():
                self.log.warn(
                    "daemon={daemon} refused: {why}{more}",
                    daemon=session.daemon,
                    why=why,
                    more=self.refusal_lines.take_suppressed(),
                )
            client.abort()
            return
        self.sessions.add(session)
        session.start()

    def _admit(self, newcomer: DaemonSession) -> Optional[tuple[str, str]]:
        """
        Make room for a new connection, or say why there is none.  Daemons
        capturing are never closed: when they fill C{max_daemons} (or their
        address's C{max_daemons_per_host}) the newcomer is refused.  Those
        not capturing (logging in, or held after a refusal) share
        C{max_unanswered} (C{max_unanswered_per_host} per address): when
        full, the one connected longest is closed, as a genuine daemon
        starts its capture within milliseconds and only stallers grow old.
        """
        settings = self.settings
        capturing = [s for s in self.sessions if s.capturing]
        if len(capturing) >= settings.max_daemons:
            return "max-daemons", f"{len(capturing)} daemons capturing already (--max-daemons)"
        same_host = [s for s in capturing if s.host_key == newcomer.host_key]
        if len(same_host) >= settings.max_daemons_per_host:
            return (
                "max-daemons-per-host",
                f"{len(same_host)} daemons of {newcomer.host_key} capturing already (--max-daemons-per-host)",
            )
        waiting = sorted((s for s in self.sessions if not s.capturing), key=lambda s: s.ticket)
        waiting_here = [s for s in waiting if s.host_key == newcomer.host_key]
        for victim in waiting_here[: max(len(waiting_here) - settings.max_unanswered_per_host + 1, 0)]:
            victim.hang_up(
                "made-room",
                f"not capturing; made room for a newer connection (--max-unanswered-per-host "
                f"{settings.max_unanswered_per_host} from {newcomer.host_key})",
            )
        waiting = [s for s in waiting if s.hung_up is None]
        for victim in waiting[: max(len(waiting) - settings.max_unanswered + 1, 0)]:
            victim.hang_up(
                "made-room",
                f"not capturing; made room for a newer connection (--max-unanswered {settings.max_unanswered})",
            )
        return None

    def check_buffered(self, client: RpcapClientProtocol) -> None:
        """
        After a connection's bytes were read: if all connections together hold
        more than C{max_buffered} bytes of unfinished messages, close the one
        holding the most.
        """
        if client.parser.buffered < _BUFFER_CHECKED_FROM:
            return  # a small holder: the total was checked when the large ones grew
        total = 0
        largest: Optional[DaemonSession] = None
        for session in self.sessions:
            held = session.client.parser.buffered
            total += held
            if largest is None or held > largest.client.parser.buffered:
                largest = session
        if total > self.settings.max_buffered and largest is not None:
            largest.hang_up(
                "max-buffered",
                f"holds {largest.client.parser.buffered} bytes of an unfinished message while "
                f"connections hold {total} in all (over {self.settings.max_buffered}, --max-buffered)",
            )

    def buffered(self) -> int:
        """Bytes of unfinished messages the connections hold (metrics)."""
        return sum(session.client.parser.buffered for session in self.sessions)

    def privilegedStartService(self) -> None:
        # Before the port opens: a SIGHUP as soon as daemons can connect
        # (logrotate right after start) must not end the collector.
        self.sighup.install()
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self.sighup.restore()
            raise cannot_start("twistd rpcapcollect", listen_failure_hint(e)) from None

    def startService(self) -> None:
        # Here, not in the constructor: twistd has dropped privileges by now,
        # so the directory belongs to the user the collector runs as.
        os.makedirs(self.settings.directory, exist_ok=True)
        super().startService()
        self.sighup.install()  # an embedder may start the service without privilegedStartService

    def reopen_files(self) -> None:
        """SIGHUP: every capture finishes its file and goes on in a new one."""
        writing = [session for session in self.sessions if session.files is not None]
        for session in writing:
            assert session.files is not None
            session.files.rotate()
        self.log.info("SIGHUP: capture files closed and new ones opened: files={n}", n=len(writing))

    def stopService(self) -> Any:
        self.sighup.restore()
        # Stop accepting first: a daemon redialling during the grace below
        # must meet a closed port (it retries later), not a collector that
        # is about to vanish in the middle of its session.
        listeners_stopped = super().stopService()
        # Hang up without RPCAP CLOSE (see RpcapClientProtocol.close): the
        # daemons dial again, and a restarted collector gets its fleet back.
        # Control connections go first and data connections only once the
        # daemons have seen that: ExtraHop's rpcapd dies of SIGPIPE when its
        # data connection is closed under it, and never dials again.
        sessions = list(self.sessions)
        for session in sessions:
            session.client.close()
        waits = [_when_disconnected(session.client) for session in sessions]
        gone = defer.DeferredList(waits, consumeErrors=True)
        gone.addTimeout(STOP_GRACE, self.reactor)

        def finish(_: object) -> Any:
            for session in sessions:
                session.finish()
            return listeners_stopped

        return gone.addBoth(finish)
