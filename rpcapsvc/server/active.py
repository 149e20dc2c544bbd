"""
Active mode: the daemon connects out to collectors and serves an RPCAP
session on each connection, reconnecting after every failure and after every
session ends (Twisted's C{ClientService}): at once after a session that
forwarded packets, with a jittered backoff otherwise (L{ReconnectPolicy}).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

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
    """
    Says which collector it is connecting to, and why a connection failed:
    with a C{policy}, that is left to it, to say on one line with the delay
    before the next attempt.  A connection made is said by its session
    (C{session=N peer=HOST:PORT connected to collector ...}).
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, name: str, policy: Optional[ReconnectPolicy] = None
    ) -> None:
        self._endpoint = endpoint
        self._name = name
        self._policy = policy

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        log.info("Connecting to collector {target}", target=self._name)

        def failed(f: Failure) -> Failure:
            if f.check(CancelledError):
                return f  # the service is stopping: no retry to announce
            if self._policy is not None:
                self._policy.connect_failed(f.getErrorMessage())
            else:
                log.warn(
                    "Cannot connect to collector {target}: {why}", target=self._name, why=f.getErrorMessage()
                )
            return f

        d = self._endpoint.connect(factory)
        d.addErrback(failed)
        return d

    def __repr__(self) -> str:
        return f"<collector {self._name}>"


class ReconnectPolicy:
    """
    When to connect to one collector again.

    A collector that ends a session which delivered packets is reconnected
    at once: it was working, and a restarted collector should get its fleet
    back without waiting.  Everything else (a refused connection, a session
    that ended before any packet was forwarded, because the collector refused
    or failed the capture) backs off from about a second to C{MAX_RETRY},
    with jitter so that a fleet does not reconnect in step.  Only a capture
    that delivered packets resets the backoff.

    C{ClientService} calls it with its own attempt count, which restarts at
    every successful connection; the policy keeps its own count instead,
    told by L{session_ended} how each session went.
    """

    def __init__(self, name: str, jitter: Callable[[], float] = lambda: random.uniform(0, 0.5)) -> None:
        self.name = name
        self._backoff = backoffPolicy(FIRST_RETRY, MAX_RETRY, BACKOFF_FACTOR, jitter)
        self.failures = 0
        """Connections and sessions in a row that forwarded nothing."""
        self.reconnects = 0
        """Times the collector was dialled again: after a failed attempt or an ended session (metrics)."""
        self._immediate = False
        self._connect_error: Optional[str] = None

    def connect_failed(self, why: str) -> None:
        """The last attempt did not connect, for C{why}: said with the delay when it is asked for."""
        self._connect_error = why.rstrip(".")  # Twisted's end in a full stop; the delay follows

    def session_ended(self, packets_forwarded: int) -> None:
        """A session with this collector ended, having forwarded C{packets_forwarded} packets."""
        if packets_forwarded:
            self.failures = 0
            self._immediate = True

    def __call__(self, attempt: int) -> float:
        self.reconnects += 1
        why, self._connect_error = self._connect_error, None
        if self._immediate:
            self._immediate = False
            log.info("Collector {target} ended a working session; reconnecting now", target=self.name)
            return 0.0
        self.failures += 1
        delay: float = self._backoff(self.failures)
        if why is not None:
            log.warn(
                "Cannot connect to collector {target}: {why}; retrying in {delay:.1f} s (failures={failures})",
                target=self.name,
                why=why,
                delay=delay,
                failures=self.failures,
            )
        else:
            log.info(
                "Collector {target}: session ended without a capture; retrying in {delay:.1f} s "
                "(failures={failures})",
                target=self.name,
                delay=delay,
                failures=self.failures,
            )
        return delay


@provider(ILogObserver)
def _warnings_only(event: dict[str, object]) -> None:
    """ClientService's own log but for its retry lines: L{ReconnectPolicy} says each retry, once."""
    level = event.get("log_level")
    if isinstance(level, LogLevel) and level >= LogLevel.warn:
        globalLogPublisher(event)


class _CollectorService(ClientService):
    _log = Logger(observer=_warnings_only)


def collector_service(
    reactor: Any,
    spec: str,
    factory: IProtocolFactory,
    name: str = "",
    policy: Optional[ReconnectPolicy] = None,
) -> ClientService:
    """
    A service that keeps one connection to the collector C{spec} open,
    reconnecting as C{policy} says (the factory's sessions report to it).
    """
    name = name or spec
    policy = policy or ReconnectPolicy(name)
    endpoint = _LoggingEndpoint(parse_active_target(reactor, spec), name, policy)
    return _CollectorService(endpoint, factory, retryPolicy=policy, clock=reactor)
