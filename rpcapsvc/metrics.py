"""
Prometheus metrics over HTTP, for C{twistd rpcapd --metrics} and C{twistd
rpcapcollect --metrics}: C{/metrics} in the Prometheus text format (or
OpenMetrics, when the scraper asks for it), served by twisted.web on any
Twisted server endpoint.

Each service has a C{CollectorRegistry} of its own (never the process-wide
one, so that an embedding program or a test can run several services), whose
collector reads the service's state when a scrape asks: nothing is counted
for the metrics on the forwarding path beyond a byte count per batch.

The page is rendered in the reactor thread, where the state it reads
changes: C{prometheus_client.twisted.MetricsResource} would render it in
the reactor's thread pool, reading sets and counters while the reactor
changes them (and queueing behind password checks).  A scrape costs a
walk over the sessions, or the collector's series, and no I/O.
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .usage import cannot_start, listen_failure_hint

METRICS_PATH = b"metrics"


def url_host(host: str) -> str:
    """
    The host part of a URL that reaches, from this machine, a port listening
    on C{host}: a wildcard address as loopback, an IPv6 address in brackets.
    """
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def new_registry() -> CollectorRegistry:
    """A registry of a service's own (its collectors say which names they have, in C{describe})."""
    return CollectorRegistry()


class MetricsPage(Resource):
    """C{/metrics}: the registry's metrics, in the format the scraper asks for."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        output: bytes = encoder(self.registry)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return output


class MetricsRoot(Resource):
    """C{/}: a pointer to C{/metrics}; C{/metrics}: the metrics."""

    def __init__(self, registry: CollectorRegistry, title: str) -> None:
        super().__init__()
        self.title = title
        self.putChild(METRICS_PATH, MetricsPage(registry))

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            f"<html><head><title>{self.title}</title></head><body><h1>{self.title}</h1>"
            f'<p><a href="/metrics">Metrics</a></p></body></html>\n'
        ).encode()


class MetricsSite(Site):
    """A site that logs neither each scrape nor its own start and stop."""

    noisy = False

    def log(self, request: Any) -> None:
        """Scrapes every few seconds would drown the log."""


class MetricsListener(StreamServerEndpointService):
    """
    Serves a registry at C{/metrics} on the server endpoint C{description};
    a port that cannot be had stops the program at start, in one line.
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, registry: CollectorRegistry, command: str) -> None:
        super().__init__(serverFromString(reactor, description), MetricsSite(MetricsRoot(registry, command)))
        self._raiseSynchronously = True
        self.description = description
        self.command = command
        self.port: Optional[Any] = None
        """The listening port, once listening."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise cannot_start(self.command, f"--metrics: {listen_failure_hint(e, '--metrics')}") from None
        waiting = getattr(self, "_waitingForPort", None)
        if waiting is not None:
            waiting.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.port = port
        address = port.getHost()
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        if number is None:
            self.log.info("Serving metrics on {address} at /metrics", address=address)
        else:
            self.log.info(
                "Serving metrics on {host} port {port}: http://{shown}:{port}/metrics",
                host=host or "every address",
                port=number,
                shown=url_host(host or ""),
            )
        return port
