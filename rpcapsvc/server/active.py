"""
Active mode: the daemon connects out to collectors and serves an RPCAP
session on each connection, reconnecting after every failure and after every
session ends (Twisted's C{ClientService} with a jittered backoff).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import DEFAULT_ACTIVE_PORT

FIRST_RETRY = 0.5
MAX_RETRY = 30.0
BACKOFF_FACTOR = 1.5

log = Logger()


def parse_active_target(reactor: Any, spec: str) -> IStreamClientEndpoint:
    """
    An endpoint for C{--active SPEC}: C{HOST}, C{HOST:PORT}, C{[V6ADDR]:PORT},
    a bare IPv6 address, or any Twisted client endpoint string
    (C{tls:collector.example:2003:trustRoots=/etc/ssl/ca}, C{unix:/path}).

    @raise ValueError: C{SPEC} is none of those.
    """
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad collector address {spec!r}: expected [V6ADDR]:PORT")
        return HostnameEndpoint(reactor, host, _port(rest[1:], spec) if rest else DEFAULT_ACTIVE_PORT)
    colons = spec.count(":")
    if colons == 0:
        return HostnameEndpoint(reactor, spec, DEFAULT_ACTIVE_PORT)
    head, _, tail = spec.partition(":")
    if colons == 1 and tail.isdigit():
        return HostnameEndpoint(reactor, head, _port(tail, spec))
    if colons > 1 and all(c in "0123456789abcdefABCDEF:." for c in spec):
        return HostnameEndpoint(reactor, spec, DEFAULT_ACTIVE_PORT)  # a bare IPv6 address
    try:
        return clientFromString(reactor, spec)
    except ValueError:
        raise  # already says what is wrong
    except Exception as e:  # e.g. TypeError for "tcp:HOST" without a port
        raise ValueError(f"bad collector endpoint {spec!r}: {e}") from e


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in collector address {spec!r}")
    return int(text)


@implementer(IStreamClientEndpoint)
class _LoggingEndpoint:
    """Says which collector it is connecting to, and why a connection failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, name: str) -> None:
        self._endpoint = endpoint
        self._name = name

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        log.info("Connecting to collector {target}", target=self._name)

        def failed(f: Failure) -> Failure:
            log.warn(
                "Cannot connect to collector {target}: {why}", target=self._name, why=f.getErrorMessage()
            )
            return f

        def connected(p: IProtocol) -> IProtocol:
            log.info("Connected to collector {target}", target=self._name)
            return p

        d = self._endpoint.connect(factory)
        d.addCallbacks(connected, failed)
        return d

    def __repr__(self) -> str:
        return f"<collector {self._name}>"


def retry_policy(
    name: str, jitter: Callable[[], float] = lambda: random.uniform(0, 0.5)
) -> Callable[[int], float]:
    """
    First retry within about a second, growing to C{MAX_RETRY}, with jitter so
    that a fleet of daemons does not reconnect in step.
    """
    base = backoffPolicy(FIRST_RETRY, MAX_RETRY, BACKOFF_FACTOR, jitter)

    def policy(attempt: int) -> float:
        delay = base(attempt)
        log.info(
            "Retrying collector {target} in {delay:.1f} s (attempt {attempt})",
            target=name,
            delay=delay,
            attempt=attempt,
        )
        return delay

    return policy


def collector_service(reactor: Any, spec: str, factory: IProtocolFactory, name: str = "") -> ClientService:
    """A service that keeps one connection to the collector C{spec} open."""
    name = name or spec
    endpoint = _LoggingEndpoint(parse_active_target(reactor, spec), name)
    return ClientService(endpoint, factory, retryPolicy=retry_policy(name), clock=reactor)
