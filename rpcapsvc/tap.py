"""
Command-line options of C{twistd rpcapd}, mapped onto L{RpcapdService}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred import credentials, strcred
from twisted.python import usage

from .server.session import SessionPolicy
from .service import DEFAULT_LISTEN, RpcapdService


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = (
        "An RPCAP (libpcap remote capture) daemon.  libpcap programs, Wireshark "
        "and tshark capture from it with rpcap://HOST:PORT/INTERFACE."
    )
    supportedInterfaces = (credentials.IUsernamePassword,)

    optFlags = [
        ["null-auth", "n", "Let clients in without a password (RPCAP null authentication)."],
    ]
    optParameters = [
        ["buffer-size", None, 2 * 1024 * 1024, "Kernel capture buffer per capture, in bytes.", int],
        ["auth-timeout", None, 90.0, "Seconds a client has to authenticate.", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Listen for clients on this endpoint (repeatable; default tcp:2002)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["null-auth"] and not self.get("credCheckers"):
            raise usage.UsageError(
                "choose how clients log in: --null-auth, or --auth (e.g. --auth memory:USER:PASS)"
            )
        if self["buffer-size"] <= 0:
            raise usage.UsageError("--buffer-size must be positive")


def makeService(options: Options) -> RpcapdService:
    from twisted.internet import reactor

    reactor_: Any = reactor
    policy = SessionPolicy(
        null_auth=bool(options["null-auth"]),
        checkers=tuple(options.get("credCheckers", ())),
        buffer_size=options["buffer-size"],
        auth_timeout=options["auth-timeout"],
    )
    return RpcapdService(reactor_, listen=options["listen"], policy=policy)
