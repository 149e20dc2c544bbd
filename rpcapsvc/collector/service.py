"""
C{twistd rpcapcollect}: a long-running collector for a fleet of active daemons.

Daemons started with C{--active COLLECTOR:2003} connect here; for each
connection the collector logs in, picks the interface (the one named for
that host, else the one named for all, else the daemon's first, which is its
preselected interface when it has one), starts a capture and writes it to
rotating pcapng files named after the daemon and the interface.  It logs who
connected, and every so often the packet, drop and loss counts; a daemon that
vanishes or misbehaves ends only its own capture.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
from typing import Any, Optional, Sequence

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..logtext import escaped, host_port
from ..metrics import MetricsListener, new_registry
from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.datachannel import CapturedPacket
from ..usage import cannot_start, listen_failure_hint
from .client import CaptureSettings, RemoteCapture, RpcapClientFactory, RpcapClientProtocol, start_capture
from .files import FileHistory, RotatingCaptureFiles
from .metrics import MAX_SERIES, CollectorMetrics, SeriesKey, SeriesTable, series_key

DEFAULT_LISTEN = "tcp:2003"
STOP_GRACE = 2.0
"""Seconds a stopping collector waits for daemons to see their control connections close."""


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


def _unmapped(host: str) -> str:
    """An IPv4 daemon seen through a dual-stack IPv6 socket (::ffff:a.b.c.d) is a.b.c.d."""
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped is not None else host


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unknown"


class DaemonSession:
    """One connected daemon: its capture and its files."""

    log = Logger()

    def __init__(self, collector: CollectorService, client: RpcapClientProtocol) -> None:
        self.collector = collector
        self.client = client
        self.host = _unmapped(client.peer_host)
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
                self.collector.reactor, self.client, capture_settings, self.on_packets, active=True
            )
            # Only now: a daemon that is refused (and retries) leaves no empty files.
            # No packet can arrive before the reactor runs again.
            prefix = self.collector.claim_prefix(f"{_safe(self.host)}_{_safe(wanted)}")
            self.prefix = prefix
            self.files = RotatingCaptureFiles(
                settings.directory,
                prefix,
                format=settings.format,
                max_bytes=settings.rotate_bytes,
                max_seconds=settings.rotate_seconds,
                max_files=settings.max_files,
                history=self.collector.history(prefix),
            )
            self.interface_id = self.files.add_interface(
                wanted, self.capture.linktype, settings.snaplen, f"rpcap://{self.host}/{wanted}"
            )
        except Exception as e:
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

    async def report(self) -> None:
        if self.files is not None:
            self.files.tick()
        if self.capture is None:
            return
        try:
            stats = await self.capture.stats()
        except Exception:
            return
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
        if self.series_key is not None:
            self.collector.series.session_ended(self.series_key, self.written, self.lost_packets)
            self.series_key = None
        if self.files is not None:
            self.collector.files_ended += self.files.files_opened

    def _tag(self) -> str:
        """What every log line of the session starts with: C{daemon=HOST:PORT interface=NAME}."""
        if self.interface is None:
            return f"daemon={self.daemon}"
        return f"daemon={self.daemon} interface={escaped(self.interface)}"

    def finish(self) -> None:
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
        self.reload_on_sighup = reload_on_sighup
        self._old_sighup: Any = None
        self.settings = settings
        self.sessions: set[DaemonSession] = set()
        self._histories: dict[str, FileHistory] = {}
        self.prefixes: set[str] = set()
        """File-name prefixes of the sessions writing now."""
        self.series = SeriesTable(max_metric_series)
        """Packets written and lost by ended sessions, per daemon and interface (metrics)."""
        self.files_ended = 0
        """Capture files started by sessions that have ended (metrics)."""
        self.metrics_registry = new_registry()
        """The collector's own Prometheus registry, served at C{/metrics} on C{metrics} when given."""
        self.metrics_registry.register(CollectorMetrics(self))
        factory = RpcapClientFactory(self._daemon_connected)
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

    def _daemon_connected(self, client: RpcapClientProtocol) -> None:
        session = DaemonSession(self, client)
        self.sessions.add(session)
        defer.ensureDeferred(session.run())

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise cannot_start("twistd rpcapcollect", listen_failure_hint(e)) from None

    def startService(self) -> None:
        # Here, not in the constructor: twistd has dropped privileges by now,
        # so the directory belongs to the user the collector runs as.
        os.makedirs(self.settings.directory, exist_ok=True)
        super().startService()
        if self.reload_on_sighup:
            self._old_sighup = signal.signal(signal.SIGHUP, self._sighup)

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reopen_files)

    def reopen_files(self) -> None:
        """SIGHUP: every capture finishes its file and goes on in a new one."""
        writing = [session for session in self.sessions if session.files is not None]
        for session in writing:
            assert session.files is not None
            session.files.rotate()
        self.log.info("SIGHUP: capture files closed and new ones opened: files={n}", n=len(writing))

    def stopService(self) -> Any:
        if self._old_sighup is not None:
            signal.signal(signal.SIGHUP, self._old_sighup)
            self._old_sighup = None
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
