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
