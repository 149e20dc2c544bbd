"""
C{rpcap-extcap}: remote capture from an RPCAP daemon as a Wireshark extcap
interface, so that Wireshark and tshark built without libpcap's remote
capture (Debian's, Ubuntu's) list C{rpcap} beside their local interfaces.

Wireshark runs every program in its extcap folder in four ways (its
C{doc/extcap.adoc} and C{doc/README.extcap}):

    rpcap-extcap --extcap-interfaces [--extcap-version=4.0]
    rpcap-extcap --extcap-dlts --extcap-interface rpcap
    rpcap-extcap --extcap-config --extcap-interface rpcap [--extcap-reload-option remote-interface ARGS]
    rpcap-extcap --capture --extcap-interface rpcap --fifo FIFO [--extcap-capture-filter F] ARGS

and, to colour the capture filter field, C{--extcap-capture-filter F
--extcap-interface rpcap} alone.  Two interfaces: C{rpcap} connects to a
daemon (port 2002), C{rpcap-active} waits for a daemon in active mode to
connect (port 2003).  C{rpcap-extcap --install} links this program into the
extcap folder C{tshark -G folders} names.

What Wireshark reads, as its sources have it (Wireshark 4.0, C{extcap.c} and
C{ws_pipe.c}): the output of the listing, config and filter calls only when
the program exits 0 (its standard error is dropped); a filter is valid when
the filter call prints nothing, invalid when it prints a line (the message
shown); during a capture, anything on standard error is shown in a dialog, so
this program writes there only when it fails.  Wireshark stops a capture with
SIGTERM (and SIGKILL some seconds later), closes the fifo, and closes the
control pipes, which it creates only for an interface that declares a
toolbar control: C{rpcap} declares a log button, where the capture reports
how it goes.

Nothing heavier than the standard library is imported until a call needs it:
Wireshark runs the listing calls of every extcap each time it starts.
"""

from __future__ import annotations

import argparse
import errno
import os
import queue
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, NoReturn, Optional, Sequence, TypeVar

import attrs

from .. import __version__
from ..logtext import escaped
from .connect import (
    Advice,
    Daemon,
    Ending,
    UnusableCA,
    client_endpoint,
    data_channel_trouble,
    ended_by,
    stop_at_daemon,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from ..protocol.datachannel import CapturedPacket
    from ..protocol.wire import InterfaceInfo, StatsReply
    from .client import RemoteCapture, RpcapClientProtocol
    from .files import CaptureFileWriter

PROG = "rpcap-extcap"

PASSIVE = "rpcap"
ACTIVE = "rpcap-active"
INTERFACES = {
    PASSIVE: "Remote capture (RPCAP) from a daemon",
    ACTIVE: "Remote capture (RPCAP), waiting for an active daemon",
}

DEFAULT_PORT = 2002
DEFAULT_ACTIVE_PORT = 2003
MAXIMUM_SNAPLEN = 262144
"""libpcap's and rpcapsvc's largest snapshot length: what snaplen 0 means."""
DLT_EN10MB = 1

LOOKUP_TIMEOUT = 5.0
"""Seconds the config call may take to list a daemon's interfaces: Wireshark's dialog waits for it."""
CONNECT_TIMEOUT = 10.0
"""Seconds to connect to a daemon, and for each of its replies before the capture."""
STOP_TIMEOUT = 3.0
"""Seconds to wait for each of the daemon's replies when the capture stops (Wireshark kills us later)."""
STATS_INTERVAL = 5.0
FIFO_POLL_INTERVAL = 0.5

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_T = TypeVar("_T")


class ExtcapError(Exception):
    """An error said in one line on standard error, with exit status C{code}."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- what Wireshark reads: sentences -------------------------------------------------------


SENTENCE_VALUE_LIMIT = 4096
"""Bytes of one value in a sentence; a daemon's words are cut shorter where they come in (L{escaped})."""


def _clean(value: object) -> str:
    """
    A value as a sentence may hold it: printable ASCII on one line (the
    rest escaped, as tcpdump prints), no braces (they end fields).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    text = escaped(str(value), SENTENCE_VALUE_LIMIT)
    for old, new in (("{", "("), ("}", ")")):
        text = text.replace(old, new)
    return text


def sentence(kind: str, *fields: tuple[str, object]) -> str:
    """C{kind {key=value}{key=value}...}, leaving out fields whose value is C{None}."""
    return kind + " " + "".join(f"{{{key}={_clean(value)}}}" for key, value in fields if value is not None)


@attrs.frozen
class Arg:
    """One option of an interface's dialog (an C{arg} sentence)."""

    call: str
    display: str
    type: str
    tooltip: str
    group: str
    default: Optional[str] = None
    range: Optional[str] = None
    required: bool = False
    placeholder: Optional[str] = None
    mustexist: Optional[bool] = None
    reload: bool = False

    def line(self, number: int) -> str:
        return sentence(
            "arg",
            ("number", number),
            ("call", self.call),
            ("display", self.display),
            ("type", self.type),
            ("range", self.range),
            ("default", self.default),
            ("tooltip", self.tooltip),
            ("placeholder", self.placeholder),
            ("required", True if self.required else None),
            ("mustexist", self.mustexist),
            ("reload", True if self.reload else None),
            ("group", self.group),
        )


_PORT_RANGE = "1,65535"

_USERNAME = Arg(
    "--remote-username",
    "Username",
    "string",
    "Log in to the daemon as this user; leave empty for null authentication (rpcapd -n, --null-auth)",
    "Authentication",
)
_PASSWORD = Arg("--remote-password", "Password", "password", "The password of the user", "Authentication")
_INTERFACE = Arg(
    "--remote-interface",
    "Remote interface",
    "string",
    "The daemon's interface to capture (rpcap-dump -D rpcap://HOST/ lists them);"
    " empty for its first one, which is the preselected one when it has one",
    "Capture",
    placeholder="the daemon's first interface",
)
_FILTER = Arg(
    "--remote-filter",
    "Remote capture filter",
    "string",
    "A pcap filter the daemon's kernel runs (compiled here for the interface's link type);"
    " the capture filter of Wireshark's capture dialog is added to it with 'and'",
    "Capture",
)
_NOPROM = Arg(
    "--remote-noprom",
    "No promiscuous mode",
    "boolflag",
    "Do not put the remote interface in promiscuous mode",
    "Capture",
)
_SNAPLEN = Arg(
    "--snaplen",
    "Snapshot length",
    "integer",
    "Bytes to keep of each packet; 0 keeps whole packets (262144 bytes)",
    "Capture",
    default="0",
    range=f"0,{MAXIMUM_SNAPLEN}",
)
_UDP = Arg(
    "--udp",
    "Packets over UDP",
    "boolflag",
    "The daemon sends packets over UDP to a port chosen here, instead of over a TCP connection",
    "Capture",
)
_LOG_FILE = Arg(
    "--log-file",
    "Log file",
    "fileselect",
    "Also write the capture's log (what the Log button shows) to this file",
    "Debug",
)

_DAEMON_AND_CAPTURE = (_USERNAME, _PASSWORD, _INTERFACE, _FILTER, _NOPROM, _SNAPLEN, _UDP, _LOG_FILE)
"""The options of both interfaces, after those that say where the daemon is."""

ARGS: dict[str, tuple[Arg, ...]] = {
    PASSIVE: (
        Arg(
            "--remote-host",
            "Remote host",
            "string",
            "The host name or address of the RPCAP daemon",
            "Server",
            required=True,
        ),
        Arg(
            "--remote-port",
            "Remote port",
            "unsigned",
            f"The port the daemon listens on (1-65535; {DEFAULT_PORT} by default)",
            "Server",
            default=str(DEFAULT_PORT),
            range=_PORT_RANGE,
        ),
        Arg(
            "--tls",
            "TLS (rpcaps://)",
            "boolflag",
            "Connect with TLS, to a daemon that listens with TLS",
            "Server",
        ),
        Arg(
            "--ca",
            "CA certificate",
            "fileselect",
            "With TLS: check the daemon's certificate against this CA (PEM); without it, against"
            " the system's CAs. The certificate must name the remote host",
            "Server",
            mustexist=True,
        ),
        *_DAEMON_AND_CAPTURE,
    ),
    ACTIVE: (
        Arg(
            "--listen-port",
            "Listen port",
            "unsigned",
            "Wait for a daemon in active mode to connect to this port"
            f" (twistd rpcapd --active HOST:PORT, rpcapd -a HOST,PORT; {DEFAULT_ACTIVE_PORT} by default)",
            "Server",
            default=str(DEFAULT_ACTIVE_PORT),
            range=_PORT_RANGE,
        ),
        Arg(
            "--listen-address",
            "Listen address",
            "string",
            "Accept daemons on this local address only; empty for every IPv4 address",
            "Server",
            placeholder="every IPv4 address",
        ),
        *_DAEMON_AND_CAPTURE,
    ),
}

#: The log button of the interface toolbar (see L{Control}).
LOGGER_CONTROL = 0
CONTROLS = (
    sentence(
        "control",
        ("number", LOGGER_CONTROL),
        ("type", "button"),
        ("role", "logger"),
        ("display", "Log"),
        ("tooltip", "Show the remote capture's log"),
    ),
)


def help_url() -> Optional[str]:
    """docs/wireshark.md as a file URL, where the package runs from its source tree."""
    page = Path(__file__).resolve().parents[2] / "docs" / "wireshark.md"
    return page.as_uri() if page.is_file() else None


def interfaces_output() -> list[str]:
    """What C{--extcap-interfaces} prints."""
    lines = [
        sentence(
            "extcap", ("version", __version__), ("help", help_url()), ("display", "Remote capture (RPCAP)")
        )
    ]
    lines += [sentence("interface", ("value", name), ("display", text)) for name, text in INTERFACES.items()]
    lines += CONTROLS
    return lines


def version_output() -> list[str]:
    """What C{--extcap-version} alone prints."""
    return [sentence("extcap", ("version", __version__), ("help", help_url()))]


def dlts_output(interface: str) -> list[str]:
    """
    What C{--extcap-dlts} prints: Ethernet.  Wireshark asks before anything
    is known of the daemon; the pcapng written names each interface's real
    link type, and that is what Wireshark dissects.
    """
    return [sentence("dlt", ("number", DLT_EN10MB), ("name", "EN10MB"), ("display", "Ethernet"))]


def _arg_number(interface: str, call: str) -> int:
    for number, arg in enumerate(ARGS[interface]):
        if arg.call == call:
            return number
    raise KeyError(call)


def describe_interface(info: InterfaceInfo) -> str:
    """One remote interface, as the selector shows it: as C{rpcap-dump -D} lists it."""
    from ..protocol.wire import InterfaceFlags

    state = "Up" if InterfaceFlags.UP in InterfaceFlags(info.flags) else "Down"
    description = f" ({escaped(info.description)})" if info.description else ""
    addresses = " ".join(escaped(str(a.address)) for a in info.addresses)
    return f"{escaped(info.name)}{description} [{state}]" + (f" {addresses}" if addresses else "")


def interface_values(interface: str, found: Sequence[InterfaceInfo]) -> list[str]:
    """The C{value} sentences of the remote-interface selector, the daemon's first interface the default."""
    number = _arg_number(interface, "--remote-interface")
    return [
        sentence(
            "value",
            ("arg", number),
            ("value", escaped(info.name)),  # cut as a display is; daemon_name_of maps it back
            ("display", describe_interface(info)),
            ("default", True if n == 0 else None),
        )
        for n, info in enumerate(found)
    ]


def daemon_name_of(chosen: Optional[str], found: Sequence[InterfaceInfo]) -> Optional[str]:
    """
    The daemon's own name for the interface Wireshark gives back: the
    selector offered each name as a sentence may hold it (escaped, braces
    as parentheses: C{\\Device\\NPF_(GUID)} for a Windows daemon's
    C{\\Device\\NPF_{GUID}}), so that form is mapped back; a name typed
    by hand is taken as it is.
    """
    if not chosen or any(info.name == chosen for info in found):
        return chosen
    for info in found:
        if _clean(escaped(info.name)) == chosen:
            return info.name
    return chosen


def config_output(interface: str, found: Optional[Sequence[InterfaceInfo]] = None) -> list[str]:
    """
    What C{--extcap-config} prints.  With the daemon's interfaces
    (C{found}: the remote host was given, and it answered) the remote
    interface is a selector of them, which Wireshark can reload; otherwise
    a string field.
    """
    lines = []
    for number, arg in enumerate(ARGS[interface]):
        if arg.call == "--remote-interface" and found is not None:
            arg = attrs.evolve(arg, type="selector", reload=True, placeholder="Reload interfaces")
        lines.append(arg.line(number))
    if found is not None:
        lines += interface_values(interface, found)
    return lines


def check_filter(expression: str) -> Optional[str]:
    """Why libpcap cannot compile C{expression} for Ethernet, or C{None} if it can."""
    from ..capture.compiler import compile_filter

    try:
        compile_filter(expression, DLT_EN10MB)
    except ValueError as e:
        return str(e)
    return None


def combined_filter(capture_filter: Optional[str], remote_filter: Optional[str]) -> str:
    """The dialog's capture filter and the remote filter, both applying (as sshdump joins them)."""
    parts = [f.strip() for f in (capture_filter, remote_filter) if f and f.strip()]
    if len(parts) == 2:
        return f"({parts[0]}) and ({parts[1]})"
    return parts[0] if parts else ""


# --- the command line ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ExtcapError(f"{message} ({PROG} --help lists the options)", EXIT_USAGE)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give 1 to 65535")
    return int(text)


def _snaplen(text: str) -> int:
    if not text.isdigit() or int(text) > MAXIMUM_SNAPLEN:
        raise argparse.ArgumentTypeError(f"invalid snapshot length {text!r}: give 0 to {MAXIMUM_SNAPLEN}")
    return int(text) or MAXIMUM_SNAPLEN


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Wireshark's extcap interface to RPCAP daemons: rpcap (connect to a daemon) and"
        " rpcap-active (wait for a daemon in active mode). Wireshark runs it; "
        f"'{PROG} --install' links it into Wireshark's extcap folder.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} (rpcapsvc) {__version__}")
    extcap = p.add_argument_group("extcap (what Wireshark passes)")
    extcap.add_argument("--extcap-interfaces", action="store_true", help="list the interfaces")
    extcap.add_argument(
        "--extcap-version", nargs="?", const="", metavar="VERSION", help="Wireshark's version; print ours"
    )
    extcap.add_argument("--extcap-interface", metavar="IFACE", help="rpcap or rpcap-active")
    extcap.add_argument("--extcap-dlts", action="store_true", help="list the interface's link types")
    extcap.add_argument("--extcap-config", action="store_true", help="list the interface's options")
    extcap.add_argument(
        "--extcap-reload-option",
        metavar="OPTION",
        help="with --extcap-config: the values of this option only",
    )
    extcap.add_argument("--capture", action="store_true", help="capture into --fifo")
    extcap.add_argument("--fifo", metavar="PATH", help="where the pcapng goes (Wireshark's fifo, or a file)")
    extcap.add_argument(
        "--extcap-capture-filter",
        metavar="FILTER",
        help="the capture filter; without --capture, check it (prints why it is not valid)",
    )
    extcap.add_argument("--extcap-control-in", metavar="PATH", help="Wireshark's control pipe to us")
    extcap.add_argument("--extcap-control-out", metavar="PATH", help="our control pipe to Wireshark")
    remote = p.add_argument_group("the daemon and the capture (the interface's options)")
    remote.add_argument("--remote-host", metavar="HOST", help="rpcap: the daemon's host")
    remote.add_argument(
        "--remote-port", type=_port, default=DEFAULT_PORT, metavar="PORT", help="rpcap: its port"
    )
    remote.add_argument("--tls", action="store_true", help="rpcap: connect with TLS (rpcaps://)")
    remote.add_argument("--ca", metavar="PEM", help="with --tls: the CA that signed the daemon's certificate")
    remote.add_argument(
        "--listen-port", type=_port, default=DEFAULT_ACTIVE_PORT, metavar="PORT", help="rpcap-active: port"
    )
    remote.add_argument("--listen-address", metavar="ADDRESS", help="rpcap-active: local address")
    remote.add_argument("--remote-username", metavar="USER", help="log in as USER (else null auth)")
    remote.add_argument("--remote-password", metavar="PASSWORD", help="the password of USER")
    remote.add_argument("--remote-interface", metavar="IFACE", help="remote interface (default: its first)")
    remote.add_argument("--remote-filter", metavar="FILTER", help="capture filter, joined with 'and'")
    remote.add_argument("--remote-noprom", action="store_true", help="no promiscuous mode")
    remote.add_argument(
        "--snaplen", type=_snaplen, default=MAXIMUM_SNAPLEN, help="bytes to keep of each packet (0: all)"
    )
    remote.add_argument("--udp", action="store_true", help="receive packets over UDP")
    remote.add_argument("--log-file", metavar="PATH", help="also write the capture's log here")
    setup = p.add_argument_group("setting up Wireshark")
    setup.add_argument(
        "--install",
        action="store_true",
        help="link this program into the extcap folder tshark -G folders names",
    )
    setup.add_argument("--uninstall", action="store_true", help="remove that link")
    setup.add_argument("--extcap-dir", metavar="DIR", help="with --install/--uninstall: this folder instead")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """
    The command line; options Wireshark may add that this version does not
    know (C{--extcap-*}) are let pass, others are a usage error.
    """
    args, unknown = build_parser().parse_known_args(argv)
    strangers = [u for u in unknown if not u.startswith("--extcap-")]
    if strangers:
        raise ExtcapError(
            f"unrecognized arguments: {' '.join(strangers)} ({PROG} --help lists the options)", 2
        )
    if args.extcap_interface is not None and args.extcap_interface not in INTERFACES:
        raise ExtcapError(
            f"no interface {args.extcap_interface!r}: this program has {' and '.join(INTERFACES)}", EXIT_USAGE
        )
    return args


def _interface_of(args: argparse.Namespace) -> str:
    if args.extcap_interface is None:
        raise ExtcapError(f"name the interface: --extcap-interface {' or '.join(INTERFACES)}", EXIT_USAGE)
    return str(args.extcap_interface)


# --- a daemon, with deadlines ------------------------------------------------------------------


def _within(d: Deferred[_T], seconds: float, reactor: Any, what: str) -> Deferred[_T]:
    """C{d}, failed with L{ExtcapError} saying C{what} did not come if it takes longer than C{seconds}."""
    from twisted.internet import defer
    from twisted.python.failure import Failure

    def late(result: Any, timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            return Failure(ExtcapError(f"{what} did not come within {timeout:g} s"))
        return result

    return d.addTimeout(seconds, reactor, onTimeoutCancel=late)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _advice(active: bool) -> Advice:
    """What this program tells its user to do, in the fields of the interface's options (no TLS for rpcap-active)."""
    tls = "" if active else "tick TLS (--tls)"
    return Advice(
        give_ca="give the CA that signed it as CA certificate (--ca)",
        without_tls="untick TLS (--tls)",
        with_tls=tls,
        tls_hint=tls,
        log_in="give a Username (--remote-username) and its Password (--remote-password)",
        check_login="check the username and password",
        try_udp="try UDP",
    )


def daemon_of(args: argparse.Namespace, peer_host: Optional[str] = None) -> Daemon:
    """
    The daemon of C{--remote-host}, or with C{peer_host} the one that
    dialled in from there (rpcap-active), as messages name it.
    """
    user = args.remote_username or None
    if peer_host is not None:
        return Daemon(_advice(active=True), host=peer_host, user=user)
    host = args.remote_host or ""
    return Daemon(_advice(active=False), _address(host, args.remote_port), host, args.tls, user)


async def connect(reactor: Any, args: argparse.Namespace, timeout: float) -> RpcapClientProtocol:
    """A logged-in control connection to the daemon of C{--remote-host}."""
    from twisted.internet.endpoints import connectProtocol

    from .client import RpcapClientProtocol

    if not args.remote_host:
        raise ExtcapError(
            "no remote host: set Remote host (--remote-host) in the interface's options", EXIT_USAGE
        )
    daemon = daemon_of(args)
    try:
        endpoint = client_endpoint(reactor, args.remote_host, args.remote_port, args.tls, args.ca, timeout)
    except UnusableCA as e:
        raise ExtcapError(str(e), EXIT_USAGE) from None
    client = RpcapClientProtocol()
    try:
        await connectProtocol(endpoint, client).addTimeout(timeout, reactor)
    except Exception as e:
        raise ExtcapError(daemon.unreachable(e, timeout)) from None
    try:
        await login(reactor, client, args, daemon, timeout)
    except BaseException:
        client.close()
        raise
    return client


async def login(
    reactor: Any, client: RpcapClientProtocol, args: argparse.Namespace, daemon: Daemon, timeout: float
) -> None:
    from twisted.internet import defer

    from ..protocol.wire import RemoteError

    user = args.remote_username.encode() if args.remote_username else None
    password = (args.remote_password or "").encode()
    try:
        await client.authenticate(user, password).addTimeout(timeout, reactor)
    except RemoteError as e:
        raise ExtcapError(daemon.refused(e)) from None
    except defer.TimeoutError:
        raise ExtcapError(daemon.silent(timeout)) from None
    except Exception as e:
        raise ExtcapError(daemon.gone(e, client)) from None


async def find_interfaces(
    reactor: Any, client: RpcapClientProtocol, daemon: Daemon, timeout: float
) -> tuple[InterfaceInfo, ...]:
    from ..protocol.wire import RemoteError

    try:
        return await _within(
            client.find_interfaces(), timeout, reactor, f"the list of interfaces of {daemon.name}"
        )
    except RemoteError as e:
        raise ExtcapError(daemon.refused(e)) from None
    except ExtcapError:
        raise
    except Exception as e:
        raise ExtcapError(daemon.gone(e, client)) from None


async def lookup_interfaces(reactor: Any, args: argparse.Namespace) -> tuple[InterfaceInfo, ...]:
    """The interfaces of the daemon of C{--remote-host}, asked within L{LOOKUP_TIMEOUT}."""
    client = await connect(reactor, args, LOOKUP_TIMEOUT)
    try:
        return await find_interfaces(reactor, client, daemon_of(args), LOOKUP_TIMEOUT)
    finally:
        client.close()


def _react(main: Callable[[Any], Any]) -> int:
    """Run C{main(reactor)} (a coroutine function) in the reactor; its exit status."""
    from twisted.internet import defer, task

    code = [EXIT_OK]

    async def wrapped(reactor: Any) -> None:
        code[0] = await main(reactor)

    try:
        task.react(lambda reactor: defer.ensureDeferred(wrapped(reactor)))
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    return code[0]


# --- Wireshark's control pipes ----------------------------------------------------------------


CONTROL_SYNC = ord("T")
COMMAND_INITIALIZED = 0
COMMAND_SET = 1
COMMAND_ADD = 2
COMMAND_STATUSBAR = 6
COMMAND_ERROR = 9


def control_frame(control: int, command: int, payload: bytes = b"") -> bytes:
    """One control message: C{T}, length (3 bytes, of what follows), control number, command, payload."""
    if len(payload) > 65535:
        payload = payload[:65535]
    return bytes([CONTROL_SYNC]) + (len(payload) + 2).to_bytes(3, "big") + bytes([control, command]) + payload


def parse_control(buffer: bytes) -> tuple[list[tuple[int, int, bytes]], bytes, bool]:
    """
    The whole control messages at the start of C{buffer}: a list of
    C{(control, command, payload)}, the bytes left over, and whether the
    stream is broken (a message without the sync byte, or too short).
    """
    messages: list[tuple[int, int, bytes]] = []
    offset = 0
    while len(buffer) - offset >= 4:
        if buffer[offset] != CONTROL_SYNC:
            return messages, b"", True
        length = int.from_bytes(buffer[offset + 1 : offset + 4], "big")
        if length < 2:
            return messages, b"", True
        if len(buffer) - offset - 4 < length:
            break
        body = buffer[offset + 4 : offset + 4 + length]
        messages.append((body[0], body[1], body[2:]))
        offset += 4 + length
    return messages, buffer[offset:], False


class Control:
    """
    Wireshark's control pipes for one capture.  Each is opened in a thread
    of its own: an open blocks until Wireshark opens the other end, which
    tshark never does.  What comes from Wireshark is read and ignored (the
    log button sends nothing), and its end of file - Wireshark stopping the
    capture or going away - calls C{on_closed} in the reactor's thread.
    Wireshark's control protocol has no message that means "stop": the pipe
    closing is the stop.  Lines logged go to the log button (and
    C{--log-file}).
    """

    def __init__(
        self,
        reactor: Any,
        in_path: Optional[str],
        out_path: Optional[str],
        on_closed: Callable[[], object],
        log_file: Optional[str] = None,
    ) -> None:
        self.reactor = reactor
        self.in_path = in_path
        self.out_path = out_path
        self.on_closed = on_closed
        self.received: list[tuple[int, int, bytes]] = []
        self._outgoing: queue.Queue[Optional[bytes]] = queue.Queue()
        self._log: Optional[IO[str]] = None
        if log_file:
            try:
                self._log = open(log_file, "a", encoding="utf-8")
            except OSError as e:
                raise ExtcapError(f"cannot write the log file {log_file}: {e.strerror or e}") from None

    def start(self) -> None:
        if self.in_path:
            threading.Thread(target=self._read, name="extcap-control-in", daemon=True).start()
        if self.out_path:
            threading.Thread(target=self._write, name="extcap-control-out", daemon=True).start()

    def _read(self) -> None:
        assert self.in_path is not None
        try:
            fd = os.open(self.in_path, os.O_RDONLY)
        except OSError:
            return
        buffer = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                messages, buffer, broken = parse_control(buffer + chunk)
                self.received.extend(messages)
                if broken:
                    buffer = b""
        finally:
            os.close(fd)
        self.reactor.callFromThread(self.on_closed)

    def _write(self) -> None:
        assert self.out_path is not None
        try:
            fd = os.open(self.out_path, os.O_WRONLY)
        except OSError:
            return
        try:
            while True:
                frame = self._outgoing.get()
                if frame is None:
                    break
                try:
                    os.write(fd, frame)
                except OSError:
                    break
        finally:
            os.close(fd)

    def log(self, text: str) -> None:
        """A line in the log (the toolbar's log button, and C{--log-file})."""
        stamp = time.strftime("%H:%M:%S")
        line = f"{stamp} {text}\n"
        if self.out_path:
            self._outgoing.put(control_frame(LOGGER_CONTROL, COMMAND_ADD, line.encode()))
        if self._log is not None:
            try:
                self._log.write(line)
                self._log.flush()
            except OSError:
                pass

    def status(self, text: str) -> None:
        """A message in Wireshark's status bar."""
        if self.out_path:
            self._outgoing.put(control_frame(LOGGER_CONTROL, COMMAND_STATUSBAR, text.encode()))

    def close(self) -> None:
        self._outgoing.put(None)
        if self._log is not None:
            self._log.close()
            self._log = None


# --- the capture -------------------------------------------------------------------------------


def reader_gone(fd: int) -> bool:
    """Whether the reading end of the pipe C{fd} writes to was closed (C{POLLERR}); never for a file."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


async def open_fifo(reactor: Any, path: str, stopping: Deferred[Any]) -> IO[bytes]:
    """
    C{path} for writing: a fifo once its reader (Wireshark's dumpcap) has
    opened it, without blocking the reactor meanwhile; anything else is
    created or truncated, as a file.  Gives up with L{defer.CancelledError}
    when C{stopping} fires first.
    """
    from twisted.internet import defer, task

    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        is_fifo = False
    except OSError as e:
        raise ExtcapError(f"cannot open the fifo {path}: {e.strerror or e}") from None
    if not is_fifo:
        try:
            return open(path, "wb")
        except OSError as e:
            raise ExtcapError(f"cannot write {path}: {e.strerror or e}") from None
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise ExtcapError(f"cannot open the fifo {path}: {e.strerror or e}") from None
        else:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "wb")
        if stopping.called:
            raise defer.CancelledError()
        await task.deferLater(reactor, 0.05, lambda: None)


class Capture:
    """
    One C{--capture}: the fifo, the daemon (connected to, or waited for),
    the capture, and its end.  Every way it ends is an L{Ending}: Wireshark
    stopping it (SIGTERM, SIGINT, the fifo or the control pipe closed) ends
    it with status 0 and nothing on standard error; the daemon refusing,
    vanishing or ending it, with status 1 and one line.
    """

    def __init__(self, reactor: Any, args: argparse.Namespace, interface: str) -> None:
        from twisted.internet import defer

        self.reactor = reactor
        self.args = args
        self.interface = interface
        self.active = interface == ACTIVE
        self.stopping: defer.Deferred[Ending] = defer.Deferred()
        """Fires with the ending once the capture is to end, for whatever reason."""
        self.control = Control(
            reactor, args.extcap_control_in, args.extcap_control_out, self._control_closed, args.log_file
        )
        self.client: Optional[RpcapClientProtocol] = None
        self.capture: Optional[RemoteCapture] = None
        self.out: Optional[CaptureFileWriter] = None
        self.stream: Optional[IO[bytes]] = None
        self.interface_id: Optional[int] = None
        self.packets = 0
        self.early: list[CapturedPacket] = []
        self._pending: Optional[defer.Deferred[Any]] = None
        self._listening: Any = None
        self._loops: list[Any] = []

    # --- ways to end

    def end(self, ending: Ending) -> None:
        if not self.stopping.called:
            self.control.log(ending.text)
            self.stopping.callback(ending)
            if self._pending is not None and not self._pending.called:
                self._pending.cancel()

    def request_stop(self, why: str) -> None:
        self.end(Ending(EXIT_OK, f"stopped: {why}"))

    def _control_closed(self) -> None:
        self.request_stop("Wireshark closed the control pipe")

    async def wait(self, d: Deferred[_T]) -> _T:
        """C{await d}, given up (L{defer.CancelledError}) when the capture is to end."""
        from twisted.internet import defer

        if self.stopping.called:
            d.cancel()
            raise defer.CancelledError()
        self._pending = d
        try:
            return await d
        finally:
            self._pending = None

    # --- the run

    async def run(self) -> int:
        from twisted.internet import defer

        self.control.start()
        try:
            try:
                await self._run()
            except defer.CancelledError:
                self.end(Ending(EXIT_FAILED, "the capture was given up"))  # unless it is ending already
            except ExtcapError as e:
                self.end(Ending(e.code, str(e)))
            except Exception as e:
                self.end(Ending(EXIT_FAILED, f"unexpected error, please report it: {type(e).__name__}: {e}"))
            ending = await self.stopping
            ending = await self._finish() or ending
        finally:
            self.control.close()
            if self._listening is not None:
                self._listening.stopListening()
                self._listening = None
        if ending.code != EXIT_OK:
            sys.stderr.write(f"{PROG}: {ending.text}\n")
        return ending.code

    async def _run(self) -> None:
        from twisted.internet import defer, task

        from .client import CaptureSettings
        from .files import CaptureFileWriter

        args = self.args
        self.stream = await open_fifo(self.reactor, args.fifo, self.stopping)
        self.out = CaptureFileWriter(self.stream, "pcapng")
        self._write(self.out.flush)
        if self.stopping.called:
            return

        if self.active:
            client, daemon = await self._wait_for_daemon()
            self.client = client
            await self.wait(defer.ensureDeferred(login(self.reactor, client, args, daemon, CONNECT_TIMEOUT)))
        else:
            daemon = daemon_of(args)
            self.control.log(f"connecting to {daemon.name}")
            client = await self.wait(defer.ensureDeferred(connect(self.reactor, args, CONNECT_TIMEOUT)))
            self.client = client
        interfaces = await self.wait(
            defer.ensureDeferred(find_interfaces(self.reactor, client, daemon, CONNECT_TIMEOUT))
        )
        device = daemon_name_of(args.remote_interface, interfaces) or (
            interfaces[0].name if interfaces else ""
        )
        if not device:
            raise ExtcapError(f"{daemon.name} lists no interfaces")
        settings = CaptureSettings(
            device,
            snaplen=args.snaplen,
            promiscuous=not args.remote_noprom,
            filter=combined_filter(args.extcap_capture_filter, args.remote_filter),
            udp=args.udp,
        )
        self.capture = await self._start(client, settings, daemon, interfaces)
        capture = self.capture

        host = client.peer_host
        if self.active:  # the daemon's port is its own business
            url = f"rpcap://{f'[{host}]' if ':' in host else host}/{device}"
        else:
            url = f"{'rpcaps' if args.tls else 'rpcap'}://{_address(host, args.remote_port)}/{device}"
        self.interface_id = self.out.add_interface(device, capture.linktype, args.snaplen, url)
        early, self.early = self.early, []
        self._write(lambda: self.out.write_packets(self.interface_id, early))  # type: ignore[union-attr,arg-type]
        how = "UDP" if args.udp else "TCP"
        self.control.log(
            f"capturing {escaped(device)} of {daemon.name} (link type {capture.linktype}, packets over {how})"
        )
        if settings.filter:
            self.control.log(f"filter: {settings.filter}")
        self.control.status(f"rpcap: capturing {escaped(device)} of {host}")

        client.disconnected.addCallback(
            lambda _: self.end(self._cut_short(daemon, "closed the connection mid-capture"))
        )
        if capture.data_lost is not None:
            capture.data_lost.addCallback(
                lambda _: self.end(self._cut_short(daemon, "closed the data connection mid-capture"))
            )
        for call, interval in ((self._poll_stats, STATS_INTERVAL), (self._watch_fifo, FIFO_POLL_INTERVAL)):
            loop = task.LoopingCall(call)
            loop.clock = self.reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    async def _wait_for_daemon(self) -> tuple[RpcapClientProtocol, Daemon]:
        from twisted.internet import defer
        from twisted.internet.error import CannotListenError

        from .client import RpcapClientFactory

        arrived: defer.Deferred[RpcapClientProtocol] = defer.Deferred()

        def connected(client: RpcapClientProtocol) -> None:
            if arrived.called:
                client.close()  # a second daemon: hung up on, it will come back (no CLOSE)
            else:
                arrived.callback(client)

        address = self.args.listen_address or ""
        port = self.args.listen_port
        where = _address(address or "*", port)
        try:
            self._listening = self.reactor.listenTCP(port, RpcapClientFactory(connected), interface=address)
        except CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or e.socketError
            raise ExtcapError(f"cannot listen on {where}: {why}") from None
        self.control.log(f"waiting for a daemon on {where}")
        self.control.status(f"rpcap: waiting for a daemon on {where}")
        client = await self.wait(arrived)
        self._listening.stopListening()
        self._listening = None
        daemon = daemon_of(self.args, client.peer_host)
        self.control.log(f"{daemon.name} connected")
        return client, daemon

    async def _start(
        self,
        client: RpcapClientProtocol,
        settings: Any,
        daemon: Daemon,
        interfaces: Sequence[InterfaceInfo],
    ) -> RemoteCapture:
        from twisted.internet import defer

        from .client import protocol_broken, start_capture

        starting = defer.ensureDeferred(
            start_capture(
                self.reactor,
                client,
                settings,
                self._packets,
                active=self.active,
                connect_timeout=CONNECT_TIMEOUT,
            )
        )
        try:
            return await self.wait(
                _within(starting, 2 * CONNECT_TIMEOUT, self.reactor, "the start of the capture")
            )
        except (ExtcapError, defer.CancelledError):
            raise
        except Exception as e:
            why = daemon.not_started(e, settings.device, interfaces, CONNECT_TIMEOUT)
            if why is not None:
                raise ExtcapError(why, EXIT_USAGE if isinstance(e, ValueError) else EXIT_FAILED) from None
            if protocol_broken(e, client) or client.errors:
                raise ExtcapError(daemon.gone(e, client)) from None  # how it broke the protocol, or its error
            raise ExtcapError(
                f"{daemon.name} closed the connection before the capture started ({escaped(str(e))})"
            ) from None

    def _cut_short(self, daemon: Daemon, what: str) -> Ending:
        """The daemon ended the capture: how it broke the protocol, or the error it sent, if it did."""
        from .client import ProtocolBroken

        if self.client is not None and self.client.broken is not None:
            return Ending(EXIT_FAILED, daemon.broke_protocol(ProtocolBroken(self.client.broken), self.client))
        if self.client is not None and self.client.errors:
            return Ending(EXIT_FAILED, ended_by(daemon.name, self.client.errors[-1]))
        return Ending(EXIT_FAILED, f"{daemon.name} {what}")

    # --- packets, and the fifo

    def _packets(self, packets: list[CapturedPacket]) -> None:
        if self.stopping.called:
            return
        if self.interface_id is None:
            self.early.extend(packets)  # UDP datagrams before the start reply
            return
        self.packets += len(packets)
        self._write(lambda: self.out.write_packets(self.interface_id, packets))  # type: ignore[union-attr,arg-type]

    def _write(self, write: Callable[[], object]) -> None:
        try:
            write()
        except BrokenPipeError:
            self.request_stop("Wireshark closed the capture pipe")
        except OSError as e:
            self.end(Ending(EXIT_FAILED, f"cannot write {self.args.fifo}: {e.strerror or e}"))

    def _watch_fifo(self) -> None:
        """Wireshark's reader may go while no packet comes to tell us (EPIPE)."""
        if self.stream is not None and reader_gone(self.stream.fileno()):
            self.request_stop("Wireshark closed the capture pipe")

    async def _poll_stats(self) -> None:
        client = self.client
        if client is None or self.stopping.called:
            return
        try:
            stats = await _within(client.stats(), CONNECT_TIMEOUT, self.reactor, "the daemon's counters")
        except Exception:
            return  # gone: its own callback ends the capture
        self._took_stats(stats)
        self.control.log(
            f"{self.packets} packets; the daemon's kernel received {stats.ifrecv}, dropped {stats.krnldrop}"
        )

    def _took_stats(self, stats: StatsReply) -> None:
        if self.out is not None and self.interface_id is not None and not self.out.closed:
            self.out.set_stats(self.interface_id, stats.ifrecv, stats.krnldrop, stats.ifdrop)

    async def _finish(self) -> Optional[Ending]:
        """
        End the capture at the daemon (last counters, endcap), finish the
        pcapng, hang up; what went wrong with the data channel, if anything.
        """
        problem = None
        for loop in self._loops:
            if loop.running:
                loop.stop()
        client, capture = self.client, self.capture
        if capture is not None:
            if not capture.client.disconnected.called:
                stopped = await stop_at_daemon(
                    capture, lambda d, what: _within(d, STOP_TIMEOUT, self.reactor, what)
                )
                if not isinstance(stopped, Exception):
                    self._took_stats(stopped)
            else:
                capture.close_data()
            trouble = data_channel_trouble(capture)
            if trouble is not None:
                problem = Ending(EXIT_FAILED, trouble)
        if self.out is not None:
            try:
                self.out.close()
            except (OSError, ValueError):
                pass  # Wireshark has gone
        elif self.stream is not None:
            try:
                self.stream.close()
            except OSError:
                pass
        if client is not None and not client.disconnected.called:
            client.close()  # RPCAP CLOSE for a passive daemon; an active one is only hung up on
        if problem is not None:
            self.control.log(problem.text)
        self.control.log(f"{self.packets} packets captured")
        return problem


def run_capture(args: argparse.Namespace, interface: str) -> int:
    if not args.fifo:
        raise ExtcapError("--capture needs --fifo PATH (Wireshark gives it)", EXIT_USAGE)
    # Anything else wrong is said after the fifo is open, so that Wireshark's reader is not left waiting.
    result = [EXIT_FAILED]

    async def main(reactor: Any) -> int:
        capture = Capture(reactor, args, interface)

        def stop_on(signum: int, frame: Any) -> None:
            reactor.callFromThread(capture.request_stop, signal.Signals(signum).name)

        def install() -> None:  # after the reactor's own handlers, which would stop it at once
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, stop_on)

        reactor.callWhenRunning(install)
        result[0] = await capture.run()
        return result[0]

    return _react(main)


def run_config(args: argparse.Namespace, interface: str) -> int:
    """C{--extcap-config}, and its C{--extcap-reload-option}."""
    reload = args.extcap_reload_option
    if reload is not None:
        if reload.lstrip("-") != "remote-interface" or interface != PASSIVE:
            return EXIT_OK  # nothing else reloads
        found, error = _lookup(args)
        if error is not None:
            # Shown in the emptied selector; choosing it captures the daemon's first interface.
            number = _arg_number(interface, "--remote-interface")
            _print([sentence("value", ("arg", number), ("value", ""), ("display", f"({error})"))])
            return EXIT_OK
        _print(interface_values(interface, found or ()))
        return EXIT_OK
    found = None
    if interface == PASSIVE and args.remote_host:
        found, _ = _lookup(args)
    _print(config_output(interface, found))
    return EXIT_OK


def _lookup(args: argparse.Namespace) -> tuple[Optional[tuple[InterfaceInfo, ...]], Optional[str]]:
    """The daemon's interfaces, or why there are none."""
    if not args.remote_host:
        return None, "no remote host: fill in Remote host first"
    found: list[tuple[InterfaceInfo, ...]] = []
    errors: list[str] = []

    async def main(reactor: Any) -> int:
        try:
            found.append(await lookup_interfaces(reactor, args))
        except ExtcapError as e:
            errors.append(str(e))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        return EXIT_OK

    _react(main)
    return (found[0] if found else None), (errors[0] if errors else None)


def _print(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


# --- install ------------------------------------------------------------------------------------


FOLDER_LABELS = ("Personal Extcap path", "Global Extcap path", "Extcap path")
"""The extcap folders of C{tshark -G folders}, in order of preference (4.2 and later name two, 4.0 one)."""


def parse_folders(text: str) -> dict[str, str]:
    """C{tshark -G folders}: label to path (the first of a label that appears twice)."""
    folders: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, path = line.partition(":")
        if sep and path.strip():
            folders.setdefault(label.strip(), path.strip())
    return folders


def choose_extcap_folder(folders: dict[str, str]) -> tuple[str, str]:
    """The folder to install into, and its label."""
    for label in FOLDER_LABELS:
        if label in folders:
            return folders[label], label
    raise ExtcapError("tshark -G folders names no extcap folder (is this Wireshark built with extcap?)")


def wireshark_folders(tshark: str = "tshark") -> dict[str, str]:
    path = shutil.which(tshark)
    if path is None:
        raise ExtcapError(
            "tshark is not installed: it tells where Wireshark looks for extcaps"
            " (apt install tshark), or name the folder with --extcap-dir"
        )
    try:
        out = subprocess.run([path, "-G", "folders"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExtcapError(f"tshark -G folders failed: {e}") from None
    if out.returncode != 0:
        raise ExtcapError(f"tshark -G folders failed (exit {out.returncode}): {out.stderr.strip()}")
    return parse_folders(out.stdout)


def script_path() -> str:
    """This program's console script, which the link points at."""
    argv0 = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0) == PROG and os.access(argv0, os.X_OK):
        return argv0
    beside = Path(sys.executable).with_name(PROG)
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(PROG)
    if found:
        return os.path.realpath(found)
    raise ExtcapError(f"the {PROG} command is not installed (pip install rpcapsvc puts it beside python)")


def _folder(args: argparse.Namespace) -> tuple[str, str]:
    if args.extcap_dir:
        return args.extcap_dir, "--extcap-dir"
    return choose_extcap_folder(wireshark_folders())


def install(args: argparse.Namespace) -> int:
    folder, label = _folder(args)
    target = script_path()
    link = os.path.join(folder, PROG)
    try:
        if label == "Personal Extcap path" or args.extcap_dir:
            os.makedirs(folder, exist_ok=True)
        if os.path.islink(link):
            os.unlink(link)
        elif os.path.lexists(link):
            raise ExtcapError(f"{link} exists and is not a link: remove it first")
        os.symlink(target, link)
    except PermissionError:
        raise ExtcapError(
            f"cannot write {folder} (Wireshark's {label}): permission denied;"
            f" run as root (sudo {target} --install): this Wireshark has no personal extcap folder"
        ) from None
    except OSError as e:
        raise ExtcapError(f"cannot link {link}: {e.strerror or e}") from None
    print(f"{PROG}: linked {link} -> {target} ({label})")
    print(f"{PROG}: restart Wireshark; tshark -D lists rpcap and rpcap-active")
    return EXIT_OK


def uninstall(args: argparse.Namespace) -> int:
    folder, label = _folder(args)
    link = os.path.join(folder, PROG)
    if not os.path.lexists(link):
        print(f"{PROG}: not installed in {folder} ({label}): nothing to remove")
        return EXIT_OK
    if not os.path.islink(link):
        raise ExtcapError(f"{link} is not a link {PROG} --install made: left alone")
    try:
        os.unlink(link)
    except OSError as e:
        raise ExtcapError(f"cannot remove {link}: {e.strerror or e}") from None
    print(f"{PROG}: removed {link} ({label})")
    return EXIT_OK


# --- main --------------------------------------------------------------------------------------


def run(argv: Optional[Sequence[str]] = None) -> int:
    """One run: its exit status.  Raises L{ExtcapError} for what L{main} says in one line."""
    args = parse_args(argv)
    if args.install:
        return install(args)
    if args.uninstall:
        return uninstall(args)
    if args.extcap_interfaces:
        _print(interfaces_output())
        return EXIT_OK
    if args.extcap_version is not None and not (args.extcap_dlts or args.extcap_config or args.capture):
        _print(version_output())
        return EXIT_OK
    if args.extcap_dlts:
        _print(dlts_output(_interface_of(args)))
        return EXIT_OK
    if args.extcap_config:
        return run_config(args, _interface_of(args))
    if args.capture:
        return run_capture(args, _interface_of(args))
    if args.extcap_capture_filter is not None:
        # Wireshark reads this output only after exit status 0: a line is the error, nothing is valid.
        error = check_filter(args.extcap_capture_filter)
        if error is not None:
            _print([error])
        return EXIT_OK
    raise ExtcapError(
        "nothing to do: Wireshark runs this program (see --install), or give --extcap-interfaces,"
        " --extcap-config, --capture ...",
        EXIT_USAGE,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    try:
        code = run(argv)
    except ExtcapError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        code = e.code
    except KeyboardInterrupt:
        code = EXIT_OK
    except Exception as e:  # never a traceback in Wireshark's dialog
        sys.stderr.write(f"{PROG}: unexpected error, please report it: {type(e).__name__}: {e}\n")
        code = EXIT_FAILED
    raise SystemExit(code)


if __name__ == "__main__":
    main()
