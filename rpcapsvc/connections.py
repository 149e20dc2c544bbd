"""
What both ends of an RPCAP TCP data connection need from Twisted: accept
exactly one connection, from the control peer only; and do TLS on it in the
same role, with the same certificate and trust roots, as the control
connection.  The daemon (L{rpcapsvc.server.datachannel}) and the collector
(L{rpcapsvc.collector.client}) both use these.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IProtocol, ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol


@attrs.frozen
class TlsSettings:
    """
    How a control connection does TLS, so that its data connection does the
    same: the control connection's TLS factory, which holds the certificate,
    the trust roots and our role (TLS client or server).
    """

    factory: TLSMemoryBIOFactory


def tls_settings_of(transport: object) -> Optional[TlsSettings]:
    """The TLS settings of a control connection; C{None} when it is plaintext."""
    factory = getattr(transport, "factory", None)
    if ISSLTransport.providedBy(transport) and isinstance(factory, TLSMemoryBIOFactory):
        return TlsSettings(factory)
    return None


class SingleProtocolFactory(protocol.Factory):
    """
    Hands out one protocol instance, wrapped in TLS like the control
    connection when C{tls} is given.  With C{allowed_host}, it is for an
    accepting port: connections from anyone else, and any after the first,
    are refused.
    """

    noisy = False

    def __init__(
        self, proto: IProtocol, tls: Optional[TlsSettings] = None, allowed_host: Optional[str] = None
    ) -> None:
        self.proto: Optional[IProtocol] = proto
        self.tls = tls
        self.allowed_host = allowed_host

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[IProtocol]:  # type: ignore[override]
        if self.proto is None:
            return None
        if self.allowed_host is not None and getattr(addr, "host", None) != self.allowed_host:
            return None
        proto, self.proto = self.proto, None
        if self.tls is None:
            return proto
        return TLSMemoryBIOProtocol(self.tls.factory, proto)


def server_endpoint_string(reactor: object, spec: str) -> str:
    """
    A C{--listen} argument as a Twisted server endpoint string: C{PORT}
    (every IPv4 address), C{HOST:PORT} (an IPv4 address), C{[V6ADDR]:PORT},
    or an endpoint string as it is (C{tcp:2002:interface=127.0.0.1},
    C{ssl:...}, C{unix:...}, C{systemd:...}), checked without listening.

    @raise ValueError: none of those; the message says what is expected.
    """
    import ipaddress

    from twisted.internet.endpoints import serverFromString

    expected = (
        "expected PORT, ADDRESS:PORT, [IPV6]:PORT or an endpoint such as "
        "tcp:2002:interface=127.0.0.1 (see --help)"
    )

    def port_of(text: str) -> int:
        if not text.isdigit() or not 0 <= int(text) < 65536:
            raise ValueError(f"{spec!r}: {text!r} is not a port number; {expected}")
        return int(text)

    if spec.isdigit():
        return f"tcp:{port_of(spec)}"
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{spec!r}: {expected}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{spec!r}: {host!r} is not an IPv6 address; {expected}") from None
        return f"tcp6:{port_of(rest[1:])}:interface={host.replace(':', chr(92) + ':')}"
    head, sep, tail = spec.rpartition(":")
    if sep and head.count(":") == 0 and tail.isdigit():
        try:
            ipaddress.IPv4Address(head)
        except ValueError:
            pass  # an endpoint type with a port, e.g. tcp:2002
        else:
            return f"tcp:{port_of(tail)}:interface={head}"
    try:
        endpoint = serverFromString(reactor, spec)
    except Exception as e:  # Twisted's parsers raise ValueError, KeyError, TypeError...
        if spec.startswith("systemd:"):
            raise ValueError(
                f"{spec!r}: systemd passed no socket at that index (run it from a .socket unit)"
            ) from None
        raise ValueError(f"{spec!r}: {e}; {expected}") from None
    # Twisted's TCP and SSL parsers take any integer; bind() would refuse it
    # at start, with a traceback.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port < 65536:
        raise ValueError(f"{spec!r}: {port} is not a port number; {expected}")
    return spec
