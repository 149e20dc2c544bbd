"""
Command-line options of C{twistd rpcapd}, mapped onto L{RpcapdService}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.cred import credentials, strcred
from twisted.python import usage

from .config import ActiveTarget, ConfigError, DaemonConfig, read_config
from .server.active import parse_active_target
from .server.session import SessionPolicy
from .service import DEFAULT_LISTEN, RpcapdService, resolve_clients


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = (
        "An RPCAP (libpcap remote capture) daemon.  libpcap programs, Wireshark "
        "and tshark capture from it with rpcap://HOST:PORT/INTERFACE.  It listens "
        "for clients (passive mode, --listen), connects out to collectors (active "
        "mode, --active), or both."
    )
    supportedInterfaces = (credentials.IUsernamePassword,)

    optFlags = [
        ["null-auth", "n", "Let clients in without a password (RPCAP null authentication)."],
    ]
    optParameters = [
        [
            "config",
            "f",
            None,
            "Read rpcapd.ini settings (ActiveClient, PassiveClient, NullAuthPermit); SIGHUP re-reads it.",
        ],
        [
            "interface",
            "i",
            None,
            "Preselect this interface: listed first, and the only one clients may open.",
        ],
        ["buffer-size", None, 2 * 1024 * 1024, "Kernel capture buffer per capture, in bytes.", int],
        ["auth-timeout", None, 90.0, "Seconds a client has to authenticate.", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["active"] = []
        self["allow"] = []
        self.config: DaemonConfig = DaemonConfig()

    def opt_listen(self, description: str) -> None:
        """
        Listen for clients on this endpoint (repeatable).  Default tcp:2002,
        unless only --active or a config file without PassiveClient lines is given.
        """
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_active(self, target: str) -> None:
        """
        Connect to this collector and serve it (repeatable): HOST, HOST:PORT,
        [V6ADDR]:PORT (port 2003 when left out), or a client endpoint string
        such as tls:HOST:PORT:trustRoots=DIR.
        """
        from twisted.internet import reactor

        try:
            parse_active_target(reactor, target)
        except ValueError as e:
            raise usage.UsageError(f"--active {target}: {e}") from None
        self["active"].append(target)

    opt_a = opt_active

    def opt_allow(self, host: str) -> None:
        """Only let clients from this host, address or CIDR block connect (repeatable)."""
        self["allow"].append(host)

    def postOptions(self) -> None:
        if self["config"]:
            try:
                self.config = read_config(self["config"])
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        if not self["listen"]:
            only_active = bool(self["active"] or self.config.active)
            if not only_active or self.config.passive_clients:
                self["listen"] = [DEFAULT_LISTEN]
        if not self["null-auth"] and not self.get("credCheckers") and not self.config.null_auth:
            raise usage.UsageError(
                "choose how clients log in: --null-auth, or --auth (e.g. --auth memory:USER:PASS), "
                "or NullAuthPermit = YES in the config file"
            )
        if self["buffer-size"] <= 0:
            raise usage.UsageError("--buffer-size must be positive")
        try:
            resolve_clients(self["allow"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> RpcapdService:
    from twisted.internet import reactor

    reactor_: Any = reactor
    interface: Optional[str] = options["interface"]
    policy = SessionPolicy(
        null_auth=bool(options["null-auth"]),
        checkers=tuple(options.get("credCheckers", ())),
        preselected_interface=interface,
        buffer_size=options["buffer-size"],
        auth_timeout=options["auth-timeout"],
    )
    return RpcapdService(
        reactor_,
        listen=options["listen"],
        policy=policy,
        active=[ActiveTarget(t) for t in options["active"]],
        config_path=options["config"],
        allowed_clients=options["allow"],
        reload_on_sighup=True,
    )
