"""
L{RpcapdService}: the whole daemon as one Twisted service.

It listens for clients on any number of endpoints (passive mode), keeps a
connection open to any number of collectors (active mode), and can take both
from an rpcapd.ini file that it re-reads on SIGHUP.  An embedding application
builds one and adds it to its own service tree::

    from twisted.application.service import Application
    from rpcapsvc.service import RpcapdService
    from rpcapsvc.server.session import SessionPolicy

    application = Application("capture")
    RpcapdService(
        reactor, listen=["tcp:2002:interface=127.0.0.1"],
        policy=SessionPolicy(null_auth=True),
    ).setServiceParent(application)
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, Optional, Sequence

from twisted.application.internet import ClientService, StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from .capture.blocking import CAPTURE_THREADS, capture_thread_pool, pool_runner
from .capture.system import ICaptureSystem, PcapySystem
from .config import ActiveTarget, ConfigError, DaemonConfig, read_config
from .logtext import escaped
from .metrics import MetricsListener, new_registry, url_host
from .server.active import ReconnectPolicy, collector_service
from .server.control import RpcapServerFactory
from .server.counters import ServiceCounters
from .server.datachannel import DataChannels
from .server.metrics import DaemonMetrics
from .server.session import ForwardedTraffic, Network, SessionPolicy
from .server.worker import WorkerCaptureSystem
from .sighup import SighupHandler
from .usage import cannot_start, listen_failure_hint

DEFAULT_LISTEN = "tcp:2002"


def resolve_clients(hosts: Iterable[str]) -> tuple[Network, ...]:
    """
    Addresses, CIDR blocks and host names as networks (a name stands for
    each of its addresses, looked up now).

    @raise ValueError: a name that does not resolve.
    """
    networks: list[Network] = []
    for host in hosts:
        try:
            networks.append(ipaddress.ip_network(host, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as e:
            raise ValueError(f"cannot resolve client host {host!r}: {e}") from e
        for info in infos:
            networks.append(ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]))
    return tuple(dict.fromkeys(networks))


class RpcapdService(MultiService):
    """Serves RPCAP on every C{listen} endpoint and to every C{active} collector."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        policy: Optional[SessionPolicy] = None,
        capture_system: Optional[ICaptureSystem] = None,
        active: Sequence[ActiveTarget] = (),
        config_path: Optional[str] = None,
        allowed_clients: Sequence[str] = (),
        data_channels: Optional[DataChannels] = None,
        reload_on_sighup: bool = False,
        config: Optional[DaemonConfig] = None,
        capture_threads: int = CAPTURE_THREADS,
        metrics: Optional[str] = None,
        capture_workers: bool = False,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.policy = policy or SessionPolicy()
        self.capture_pool: Optional[ThreadPool] = None
        """
        The threads that open, filter and close captures while the service
        runs: its own (C{capture_threads} of them), when it made its capture
        system; C{capture_threads=0} leaves that work to the reactor's pool.
        """
        self._capture_threads = capture_threads if capture_system is None else 0
        # capture_workers: each capture forwards from a process of its own (rpcapsvc.server.worker).
        system_class = WorkerCaptureSystem if capture_workers else PcapySystem
        self.capture_system = capture_system or system_class(
            run_blocking=pool_runner(reactor, lambda: self.capture_pool) if self._capture_threads else None,
            reactor=reactor,
        )
        self.data_channels = data_channels or DataChannels(reactor)
        self.config_path = config_path
        self._static_active = tuple(active)
        self._static_clients = tuple(allowed_clients)
        # An embedder's own SessionPolicy(allowed_clients=...) stays in force:
        # the config file and allowed_clients add to it, never replace it.
        self._policy_clients = tuple(self.policy.allowed_clients)
        self._static_null_auth = self.policy.null_auth
        self.sighup = SighupHandler(reactor, self.reload, enabled=reload_on_sighup)
        """SIGHUP re-reads the configuration file (L{reload}), with C{reload_on_sighup}."""
        self.collectors: dict[ActiveTarget, ClientService] = {}
        self.collector_factories: dict[ActiveTarget, RpcapServerFactory] = {}
        """The factory serving each collector's sessions (its C{reconnect} policy counts redials)."""
        self.counters = ServiceCounters()
        """What ended captures forwarded and lost, and failed logins: totals that outlive sessions."""
        self.metrics_registry = new_registry()
        """
        The service's own Prometheus registry (L{rpcapsvc.server.metrics}), read
        at each scrape; served at C{/metrics} on the endpoint C{metrics} when given.
        """
        self.metrics_registry.register(DaemonMetrics(self))
        self.sessions: set[Any] = set()
        """Every session, passive and active: the session limit counts them all."""
        self.forwarded = ForwardedTraffic()
        """What every capturing session forwards: no capture includes any of it."""
        self.passive_factory = RpcapServerFactory(
            reactor,
            self.capture_system,
            self.policy,
            self.data_channels,
            sessions=self.sessions,
            forwarded=self.forwarded,
            counters=self.counters,
        )
        self.listeners: list[StreamServerEndpointService] = []
        self._listen = tuple(listen)
        for description in listen:
            endpoint = serverFromString(reactor, description)
            listener = StreamServerEndpointService(endpoint, self.passive_factory)
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
            self.listeners.append(listener)
        self.metrics_listener: Optional[MetricsListener] = None
        if metrics:
            self.metrics_listener = MetricsListener(reactor, metrics, self.metrics_registry, "twistd rpcapd")
            self.metrics_listener.setServiceParent(self)
        self._pending_config = config
        if config is not None or not config_path:
            # Given (already read, as twistd rpcapd does) or none at all:
            # apply now.  A file still to be read is read at start, so that
            # the constructor does no I/O.
            self._apply_first(config or DaemonConfig())

    # --- configuration -----------------------------------------------------------

    def apply(self, config: DaemonConfig) -> None:
        """
        Make C{config} (plus what was given on the command line) current:
        who may connect, whether null auth is allowed, and which collectors
        to keep connected.  Unchanged collectors keep their sessions.

        @raise ValueError: a client host name that does not resolve.
        """
        clients = resolve_clients(self._static_clients + config.passive_clients)
        self.policy.allowed_clients = tuple(dict.fromkeys(self._policy_clients + clients))
        self.policy.null_auth = self._static_null_auth or bool(config.null_auth)
        self.set_collectors(self._static_active + config.active)

    def set_collectors(self, targets: Sequence[ActiveTarget]) -> None:
        wanted = list(dict.fromkeys(targets))
        for target in list(self.collectors):
            if target not in wanted:
                self.log.info("Collector {target} removed", target=target.describe())
                self.collectors.pop(target).disownServiceParent()
                self.collector_factories.pop(target, None)
        for target in wanted:
            if target in self.collectors:
                continue
            factory = RpcapServerFactory(
                self.reactor,
                self.capture_system,
                self.policy,
                self.data_channels,
                active=True,
                interface=target.ifname,
                interface_address=target.ifaddr,
                sessions=self.sessions,
                forwarded=self.forwarded,
                reconnect=ReconnectPolicy(target.describe()),
                counters=self.counters,
            )
            service = collector_service(
                self.reactor, target.endpoint, factory, target.describe(), factory.reconnect
            )
            service.setServiceParent(self)
            self.collectors[target] = service
            self.collector_factories[target] = factory

    def reload(self) -> None:
        """
        SIGHUP: re-read the configuration file (a bad file is logged and the
        old configuration kept).  Without one there is nothing to re-read:
        password files are re-read whenever they change, and twistd rotates
        its log file on SIGUSR1.  Either way the daemon goes on.
        """
        if not self.config_path:
            self.log.info(
                "SIGHUP: no configuration file to reload (password files are re-read when they "
                "change; twistd rotates its log file on SIGUSR1)"
            )
            return
        try:
            config = read_config(self.config_path)
            for warning in config.warnings:
                self.log.warn("{config_warning}", config_warning=warning)
            self.apply(config)
        except (ConfigError, ValueError) as e:
            self.log.error("Configuration not reloaded: {why}", why=str(e))
            return
        self.log.info(
            "Reloaded {path}: collectors={n} allowed_clients={m} null_auth={null}",
            path=self.config_path,
            n=len(self.collectors),
            m=len(self.policy.allowed_clients),
            null="allowed" if self.policy.null_auth else "refused",
        )

    # --- service -------------------------------------------------------------------

    def _apply_first(self, config: DaemonConfig) -> None:
        for warning in config.warnings:
            self.log.warn("{config_warning}", config_warning=warning)
        self.apply(config)
        self._pending_config = config

    def privilegedStartService(self) -> None:
        # Always, config file or not, and before the port opens: SIGHUP's
        # default action would end the daemon.
        self.sighup.install()
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self.sighup.restore()
            raise cannot_start("twistd rpcapd", listen_failure_hint(e)) from None

    def startService(self) -> None:
        if self._pending_config is None and self.config_path:
            self._apply_first(read_config(self.config_path))
        self._start_capture_pool()
        super().startService()
        self._check_settings()
        self._log_buffer_sizes()
        for listener, description in zip(self.listeners, self._listen):
            # StreamServerEndpointService keeps the port it is listening on here.
            waiting = getattr(listener, "_waitingForPort", None)
            if waiting is not None:
                tls = description.split(":", 1)[0] in ("ssl", "tls")
                waiting.addCallback(self._listening, tls)
        self.sighup.install()  # an embedder may start the service without privilegedStartService

    def _log_buffer_sizes(self) -> None:
        """The buffers that decide what a burst loses, said once at start."""
        sndbuf = getattr(self.data_channels, "udp_sndbuf", None)
        gso = getattr(self.data_channels, "udp_gso", False)
        self.log.info(
            "Buffers: capture {capture} bytes per capture (--buffer-size); UDP data channels: "
            "send {send} (--udp-sndbuf), {gso}",
            capture=self.policy.buffer_size,
            send=f"{sndbuf} bytes" if sndbuf else "the kernel's default",
            gso="UDP GSO where the kernel has it (--no-udp-gso: off)" if gso else "no UDP GSO",
        )

    def _check_settings(self) -> None:
        """
        Settings that cannot work are said once, at start: a preselected
        interface that does not exist, and no right to capture at all.
        """
        wanted = self.policy.preselected_interface
        if wanted is not None:
            try:
                names = [i.name for i in self.capture_system.list_interfaces()]
            except Exception:
                names = None
            if names is not None and wanted not in names:
                self.log.warn(
                    "--interface {wanted}: no such interface here ({names}); every open is refused until it exists",
                    wanted=escaped(wanted),
                    names=", ".join(names[:12]) + (", ..." if len(names) > 12 else ""),
                )
        if isinstance(self.capture_system, PcapySystem) and not may_capture():
            self.log.warn(
                "No right to capture (root or CAP_NET_RAW is needed): clients may list interfaces, "
                "but every capture will fail; run as root or give the daemon CAP_NET_RAW (docs/security.md)"
            )

    def _listening(self, port: Any, tls: bool = False) -> Any:
        """Say where clients connect, how they log in, and the command to try."""
        address = port.getHost()
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        if (
            self.policy.null_auth
            and host is not None
            and not _loopback(host)
            and not self.policy.allowed_clients
        ):
            self.log.warn(
                "Null auth on {host} port {port}, reachable from the network with no --allow list: "
                "anyone who can reach it may capture; listen on 127.0.0.1, add --allow HOST, or use --auth",
                host=host or "every address",
                port=number if number is not None else "?",
            )
        logins = []
        if self.policy.null_auth:
            logins.append("null auth (anyone who can connect)")
        if self.policy.checkers:
            logins.append("passwords")
        if number is None:
            self.log.info("Listening for RPCAP clients on {address}", address=address)
            return port
        scheme = "rpcaps" if tls else "rpcap"
        self.log.info(
            "Listening for RPCAP clients on {host} port {port}; logins: {logins}. "
            "Try: rpcap-dump -D {scheme}://{shown}:{port}/",
            host=host or "every address",
            port=number,
            logins=" and ".join(logins) or "none allowed yet",
            scheme=scheme,
            shown=url_host(host or ""),
        )
        return port

    def stopService(self) -> Any:
        self.passive_factory.close_sessions("the daemon is stopping")
        self.sighup.restore()
        return defer.maybeDeferred(super().stopService).addBoth(self._stop_capture_pool)

    # --- capture threads -------------------------------------------------------------

    def _start_capture_pool(self) -> None:
        if self._capture_threads and self.capture_pool is None:
            self.capture_pool = capture_thread_pool(self._capture_threads)
            self.capture_pool.start()

    def _stop_capture_pool(self, result: object) -> object:
        """Once the sessions are gone: the captures they were closing are closed, the threads end."""
        pool, self.capture_pool = self.capture_pool, None
        if isinstance(self.capture_system, WorkerCaptureSystem):
            self.capture_system.stopping()  # ending the threads below may end workers they started
        if pool is not None:
            pool.stop()
        if isinstance(self.capture_system, WorkerCaptureSystem):
            self.capture_system.stop_workers()  # any a close did not end
        return result


__all__ = ["DEFAULT_LISTEN", "ActiveTarget", "RpcapdService", "SessionPolicy"]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == ""  # a UNIX socket has no host: local only


def may_capture() -> bool:
    """Whether this process may open a packet socket (root or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return False
    except OSError:
        return True  # not a permission problem: let the capture say what it is
    return True
