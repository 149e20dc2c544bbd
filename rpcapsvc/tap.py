"""
Command-line options of C{twistd rpcapd}, mapped onto L{RpcapdService}.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.cred import checkers, credentials, strcred
from twisted.python import usage

from .config import ActiveTarget, ConfigError, DaemonConfig, read_config
from .protocol.udpstr import MAX_MTU, MIN_MTU
from .server.active import parse_active_target
from .server.datachannel import DEFAULT_UDP_SNDBUF, DataChannels
from .server.session import SessionPolicy
from .service import DEFAULT_LISTEN, RpcapdService, resolve_clients
from .usage import OneLineErrors, endpoint_option

_POLICY = SessionPolicy()  # the defaults of every limit, defined once, there


class Options(OneLineErrors, strcred.AuthOptionMixin):
    command = "twistd rpcapd"

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
        [
            "no-passive",
            None,
            "Active mode only: listen for no clients, whatever the config file says (rpcapd -v).",
        ],
        ["log-stats", None, "Log the counters each time a client asks for them (rpcapd -S)."],
        [
            "capture-own-traffic",
            None,
            "Let captures include the daemon's own control and data packets "
            "(by default they are filtered out in the kernel, so forwarded packets are never captured again).",
        ],
        [
            "udpstr-tcp",
            None,
            "Also frame TCP data channels as udpstr, as ExtraHop's rpcapd does; needs --udp-mtu.",
        ],
        [
            "no-udp-gso",
            None,
            "Send each UDP data datagram on its own.  By default runs of equal-sized datagrams (classic "
            "and udpstr) go with UDP GSO (Linux >= 4.18; elsewhere one by one), the kernel cutting them "
            "from one send: the same datagrams reach the collector for about half the CPU, but a "
            "capture on this host shows the uncut sends (up to 64 KiB).",
        ],
        ["udp-gso", None, "UDP GSO (the default; for older command lines)."],
        [
            "capture-workers",
            None,
            "Run each capture's packet forwarding in a worker process of its own, so that several "
            "clients use several cores (the workers open captures with the daemon's privileges).",
        ],
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
        ["buffer-size", None, _POLICY.buffer_size, "Kernel capture buffer per capture, in bytes.", int],
        [
            "auth-timeout",
            None,
            _POLICY.auth_timeout,
            "Seconds a connection has to log in; then error 2 and closed.",
            float,
        ],
        [
            "idle-timeout",
            None,
            _POLICY.idle_timeout,
            "Seconds a logged-in client that captures nothing may send no request; "
            "then error 14 and closed (0: no limit; active sessions have none).",
            float,
        ],
        [
            "udp-mtu",
            "t",
            0,
            "Pack UDP data into udpstr datagrams of at most this many bytes "
            "(ExtraHop's format; 1472 suits a 1500-byte MTU). 0 keeps one packet per datagram, "
            "which libpcap's client expects.",
            int,
        ],
        [
            "udp-sndbuf",
            None,
            DEFAULT_UDP_SNDBUF,
            "Kernel send buffer of UDP data channels, in bytes (the fork's 8 MiB: a capture's bursts fit).",
            int,
        ],
        [
            "max-sessions",
            None,
            _POLICY.max_sessions,
            "Most logged-in sessions at once (passive and active). When full, a login closes "
            "the session idle longest (see --reclaim-idle-after), or is refused with error 1.",
            int,
        ],
        [
            "max-unauthenticated",
            None,
            _POLICY.max_unauthenticated,
            "Most connections waiting to log in; one more closes the one that has waited longest.",
            int,
        ],
        [
            "max-unauthenticated-per-host",
            None,
            _POLICY.max_unauthenticated_per_host,
            "Most connections waiting to log in from one address (an IPv6 /64); "
            "one more closes that address's oldest.",
            int,
        ],
        [
            "reclaim-idle-after",
            None,
            _POLICY.reclaim_idle_after,
            "When logged-in sessions fill --max-sessions, a login closes a session that captures "
            "nothing and has sent no request for this many seconds (0: never).",
            float,
        ],
        [
            "max-message-size",
            None,
            _POLICY.max_message_size,
            "Largest control message accepted, in bytes.",
            int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["active"] = []
        self["allow"] = []
        self["metrics"] = None
        self.config: DaemonConfig = DaemonConfig()

    def opt_listen(self, description: str) -> None:
        """
        Listen for clients on this endpoint (repeatable).  Default tcp:2002,
        unless only --active or a config file without PassiveClient lines is given.
        PORT and ADDRESS:PORT are short for tcp:PORT and tcp:PORT:interface=ADDRESS.
        """
        self["listen"].append(endpoint_option("--listen", description))

    opt_l = opt_listen

    def opt_metrics(self, description: str) -> None:
        """
        Serve Prometheus metrics at /metrics on this endpoint (off by default),
        e.g. tcp:9102:interface=127.0.0.1; PORT and ADDRESS:PORT as for --listen.
        """
        self["metrics"] = endpoint_option("--metrics", description)

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

    def opt_auth(self, description: str) -> None:
        """
        Let clients log in with a password (repeatable; each method is tried in
        turn): memory:USER:PASS[:USER:PASS...], file:PATH (plain-text USER:PASS
        lines), hashfile:PATH (crypt-style hashes, written by rpcapd-passwd), or
        unix (system accounts, as libpcap's rpcapd; needs root).  --help-auth
        lists every method.
        """
        auth_type, _, argstring = description.partition(":")
        if auth_type == "unix":
            # Twisted's own unix checker needs the crypt and spwd modules, gone in Python 3.13.
            from .auth import CryptUnavailable, SystemAccountChecker

            if argstring:
                raise usage.UsageError("--auth unix takes no argument")
            try:
                self.addChecker(SystemAccountChecker())
            except CryptUnavailable as e:
                raise usage.UsageError(f"--auth unix: {e}") from None
        elif auth_type == "memory":
            # Twisted's memory checker keeps str names, which never equal the bytes a client sends.
            self.addChecker(_memory_checker(argstring))
        else:
            strcred.AuthOptionMixin.opt_auth(self, description)

    def opt_allow(self, host: str) -> None:
        """Only let clients from this host, address or CIDR block connect (repeatable)."""
        self["allow"].append(host)

    def postOptions(self) -> None:
        if self["config"]:
            try:
                self.config = read_config(self["config"])
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        if self["no-passive"]:
            if self["listen"]:
                raise usage.UsageError("--no-passive and --listen contradict each other")
            if not (self["active"] or self["config"]):
                raise usage.UsageError(
                    "--no-passive leaves nothing to do: give --active COLLECTOR or a --config file"
                )
        elif not self["listen"]:
            only_active = bool(self["active"] or self.config.active)
            if not only_active or self.config.passive_clients:
                self["listen"] = [DEFAULT_LISTEN]
        if not self["null-auth"] and not self.get("credCheckers") and not self.config.null_auth:
            raise usage.UsageError(
                "choose how clients log in: --null-auth, or --auth (e.g. --auth memory:USER:PASS), "
                "or NullAuthPermit = YES in the config file"
            )
        mtu = self["udp-mtu"]
        if mtu and not MIN_MTU <= mtu <= MAX_MTU:
            raise usage.UsageError(f"--udp-mtu must be 0 or between {MIN_MTU} and {MAX_MTU}")
        if self["udpstr-tcp"] and not mtu:
            raise usage.UsageError("--udpstr-tcp needs --udp-mtu: the MTU its datagrams are cut at")
        if self["udp-gso"] and self["no-udp-gso"]:
            raise usage.UsageError("--udp-gso and --no-udp-gso: choose one")
        if self["udp-sndbuf"] is not None and self["udp-sndbuf"] <= 0:
            raise usage.UsageError("--udp-sndbuf must be positive")
        for name in ("max-sessions", "max-unauthenticated", "max-unauthenticated-per-host", "auth-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        for name in ("idle-timeout", "reclaim-idle-after"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must be 0 or more")
        if self["max-message-size"] < 65556:
            raise usage.UsageError(
                "--max-message-size must be at least 65556 (a full 8192-instruction filter)"
            )
        if self["buffer-size"] <= 0:
            raise usage.UsageError("--buffer-size must be positive")
        # Names are looked up once, here; the service gets the addresses.
        try:
            self.allowed_networks = resolve_clients(self["allow"])
            passive = resolve_clients(self.config.passive_clients)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.config = attrs.evolve(self.config, passive_clients=tuple(str(n) for n in passive))


def _memory_checker(argstring: str) -> checkers.InMemoryUsernamePasswordDatabaseDontUse:
    pieces = argstring.split(":") if argstring else []
    if len(pieces) % 2:
        raise usage.UsageError("--auth memory: expected USER:PASS[:USER:PASS...]")
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    for user, password in zip(pieces[::2], pieces[1::2]):
        checker.addUser(user.encode("utf-8"), password.encode("utf-8"))
    return checker


def makeService(options: Options) -> RpcapdService:
    from twisted.internet import reactor

    from .capture.system import keep_batch_buffers_in_heap

    keep_batch_buffers_in_heap()

    reactor_: Any = reactor
    interface: Optional[str] = options["interface"]
    policy = SessionPolicy(
        null_auth=bool(options["null-auth"]),
        checkers=tuple(options.get("credCheckers", ())),
        preselected_interface=interface,
        buffer_size=options["buffer-size"],
        auth_timeout=options["auth-timeout"],
        idle_timeout=options["idle-timeout"],
        exclude_own_traffic=not options["capture-own-traffic"],
        max_sessions=options["max-sessions"],
        max_unauthenticated=options["max-unauthenticated"],
        max_unauthenticated_per_host=options["max-unauthenticated-per-host"],
        reclaim_idle_after=options["reclaim-idle-after"],
        max_message_size=options["max-message-size"],
        log_stats=bool(options["log-stats"]),
    )
    return RpcapdService(
        reactor_,
        listen=options["listen"],
        policy=policy,
        active=[ActiveTarget(t) for t in options["active"]],
        config_path=options["config"],
        config=options.config,
        allowed_clients=[str(n) for n in options.allowed_networks],
        data_channels=DataChannels(
            reactor_,
            udp_mtu=options["udp-mtu"],
            udp_sndbuf=options["udp-sndbuf"],
            tcp_udpstr=bool(options["udpstr-tcp"]),
            udp_gso=not options["no-udp-gso"],
        ),
        reload_on_sighup=True,
        metrics=options["metrics"],
        capture_workers=bool(options["capture-workers"]),
    )
