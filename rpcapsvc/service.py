"""
L{RpcapdService}: the whole daemon as one Twisted service.

An embedding application builds one and adds it to its own service tree::

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

from typing import Any, Optional, Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString

from .capture.system import ICaptureSystem, PcapySystem
from .server.control import RpcapServerFactory
from .server.datachannel import DataChannels
from .server.session import SessionPolicy

DEFAULT_LISTEN = "tcp:2002"


class RpcapdService(MultiService):
    """Serves RPCAP on every C{listen} endpoint string."""

    def __init__(
        self,
        reactor: Any,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        policy: Optional[SessionPolicy] = None,
        capture_system: Optional[ICaptureSystem] = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.policy = policy or SessionPolicy()
        self.capture_system = capture_system or PcapySystem()
        self.data_channels = DataChannels(reactor)
        self.passive_factory = RpcapServerFactory(
            reactor, self.capture_system, self.policy, self.data_channels
        )
        self.listeners: list[StreamServerEndpointService] = []
        for description in listen:
            endpoint = serverFromString(reactor, description)
            listener = StreamServerEndpointService(endpoint, self.passive_factory)
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
            self.listeners.append(listener)
