"""Command-line options of C{twistd rpcapcollect}."""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage

from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.framing import DEFAULT_MAX_PAYLOAD
from ..usage import OneLineErrors, endpoint_option
from .files import FORMATS
from .service import DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE_SIZE, CollectorService, CollectorSettings

MIN_MESSAGE_SIZE = DEFAULT_MAX_PAYLOAD
"""The client takes messages up to this size whatever it is told (a full filter and more)."""

DAEMON_FILES_PER_MAX_FILES = 16
"""With --max-files N, a daemon keeps at most 16 N files whatever interface names it sends."""


class Options(OneLineErrors):
    command = "twistd rpcapcollect"
    synopsis = "[options]"
    longdesc = (
        "A collector for RPCAP daemons in active mode (twistd rpcapd --active HOST:2003): "
        "captures from each daemon that connects and writes rotating pcapng files."
    )
    optFlags = [["udp", "u", "Receive packets over UDP (classic or udpstr) instead of TCP."]]
    optParameters = [
        ["directory", "d", "captures", "Directory for the capture files."],
        [
            "interface",
            "i",
            None,
            "Interface to capture on every daemon (default: its first, or preselected, one).",
        ],
        ["filter", "f", "", "Capture filter (pcap syntax), compiled here."],
        ["snaplen", "s", MAXIMUM_SNAPLEN, "Bytes to keep of each packet.", int],
        ["format", None, "pcapng", "pcapng or pcap."],
        ["rotate-size", None, None, "Start a new file after this many megabytes.", float],
        ["rotate-seconds", None, None, "Start a new file after this many seconds.", float],
        [
            "max-files",
            None,
            None,
            "Keep only the newest N files per daemon and interface (across reconnections).",
            int,
        ],
        [
            "user",
            None,
            None,
            "Log in to daemons as this user (password from $RPCAP_PASSWORD or --password-file).",
        ],
        ["password-file", None, None, "File holding the password for --user."],
        ["stats-interval", None, 10.0, "Seconds between counter reports.", float],
        [
            "retry-refused",
            None,
            30.0,
            "Seconds to hold a daemon whose capture could not start before hanging up "
            "(it dials again at once, so this is how often it is retried).",
            float,
        ],
        [
            "login-timeout",
            None,
            10.0,
            "Seconds a daemon has, from connecting, to log in and start its capture.",
            float,
        ],
        ["max-daemons", None, 256, "Daemons capturing at once; more are refused.", int],
        [
            "max-daemons-per-host",
            None,
            16,
            "Daemons of one address (an IPv6 /64) capturing at once; more are refused.",
            int,
        ],
        [
            "max-unanswered",
            None,
            32,
            "Connections not capturing (yet); past it the oldest is closed to make room.",
            int,
        ],
        ["max-unanswered-per-host", None, 8, "The same, per address (an IPv6 /64).", int],
        [
            "max-message-size",
            None,
            DEFAULT_MAX_MESSAGE_SIZE,
            "Largest message (bytes) a daemon may send; a larger one ends its session.",
            int,
        ],
        [
            "max-buffered",
            None,
            64.0,
            "Megabytes of unfinished messages all connections may hold; past it the largest holder is closed.",
            float,
        ],
        [
            "max-daemon-files",
            None,
            None,
            "Keep at most N files per daemon, all its interfaces together (default 16 x --max-files).",
            int,
        ],
        ["max-total-files", None, None, "Keep at most N files in all.", int],
        [
            "max-size",
            None,
            None,
            "Keep at most this many megabytes of files in all (oldest closed files of the "
            "daemon holding the most go first; needs --rotate-size or --rotate-seconds).",
            float,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["host-interface"] = {}
        self["metrics"] = None

    def opt_listen(self, description: str) -> None:
        """
        Accept daemons on this endpoint (repeatable; default tcp:2003).
        PORT and ADDRESS:PORT are short for tcp:PORT and tcp:PORT:interface=ADDRESS.
        """
        self["listen"].append(endpoint_option("--listen", description))

    def opt_metrics(self, description: str) -> None:
        """
        Serve Prometheus metrics at /metrics on this endpoint (off by default),
        e.g. tcp:9103:interface=127.0.0.1; PORT and ADDRESS:PORT as for --listen.
        """
        self["metrics"] = endpoint_option("--metrics", description)

    def opt_host_interface(self, mapping: str) -> None:
        """HOST=IFACE: capture IFACE on the daemon connecting from HOST (repeatable)."""
        host, sep, iface = mapping.partition("=")
        if not sep or not host or not iface:
            raise usage.UsageError(f"--host-interface wants HOST=IFACE, not {mapping!r}")
        self["host-interface"][host] = iface

    def postOptions(self) -> None:
        self["listen"] = self["listen"] or [DEFAULT_LISTEN]
        if self["filter"]:
            # A filter libpcap cannot compile would refuse every daemon, for ever: say so now.
            # Checked for Ethernet, the link type of almost every daemon's interface.
            from ..capture.compiler import compile_filter

            try:
                compile_filter(self["filter"], 1)
            except ValueError as e:
                raise usage.UsageError(
                    f"--filter {self['filter']!r}: {e} (man pcap-filter gives the syntax)"
                ) from None
        if self["snaplen"] < 0:
            raise usage.UsageError("--snaplen must not be negative")
        # 0 as for tcpdump -s 0: a BPF program returning 0 would drop every packet.
        self["snaplen"] = self["snaplen"] or MAXIMUM_SNAPLEN
        if self["format"] not in FORMATS:
            raise usage.UsageError(f"--format must be one of {', '.join(FORMATS)}")
        for name in (
            "rotate-size",
            "rotate-seconds",
            "max-files",
            "stats-interval",
            "retry-refused",
            "login-timeout",
            "max-daemons",
            "max-daemons-per-host",
            "max-unanswered",
            "max-unanswered-per-host",
            "max-buffered",
            "max-daemon-files",
            "max-total-files",
            "max-size",
        ):
            if self[name] is not None and self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["max-message-size"] < MIN_MESSAGE_SIZE:
            raise usage.UsageError(
                f"--max-message-size must be at least {MIN_MESSAGE_SIZE} (the smallest any RPCAP client takes)"
            )
        if self["max-daemon-files"] is None and self["max-files"] is not None:
            self["max-daemon-files"] = DAEMON_FILES_PER_MAX_FILES * self["max-files"]
        self.password = b""
        if self["user"]:
            if self["password-file"]:
                with open(self["password-file"], "rb") as f:
                    self.password = f.read().rstrip(b"\r\n")
            else:
                self.password = os.environ.get("RPCAP_PASSWORD", "").encode()


def makeService(options: Options) -> CollectorService:
    from twisted.internet import reactor

    reactor_: Any = reactor
    size = options["rotate-size"]
    settings = CollectorSettings(
        directory=options["directory"],
        interface=options["interface"],
        host_interfaces=dict(options["host-interface"]),
        filter=options["filter"],
        snaplen=options["snaplen"],
        udp=bool(options["udp"]),
        format=options["format"],
        rotate_bytes=int(size * 1_000_000) if size else None,
        rotate_seconds=options["rotate-seconds"],
        max_files=options["max-files"],
        username=options["user"].encode() if options["user"] else None,
        password=options.password,
        stats_interval=options["stats-interval"],
        refused_hold=options["retry-refused"],
        login_timeout=options["login-timeout"],
        max_daemons=options["max-daemons"],
        max_daemons_per_host=options["max-daemons-per-host"],
        max_unanswered=options["max-unanswered"],
        max_unanswered_per_host=options["max-unanswered-per-host"],
        max_message_size=options["max-message-size"],
        max_buffered=int(options["max-buffered"] * 1_000_000),
        max_daemon_files=options["max-daemon-files"],
        max_total_files=options["max-total-files"],
        max_total_bytes=int(options["max-size"] * 1_000_000) if options["max-size"] else None,
    )
    return CollectorService(
        reactor_, settings, options["listen"], reload_on_sighup=True, metrics=options["metrics"]
    )
