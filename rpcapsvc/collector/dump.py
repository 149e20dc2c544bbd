"""
C{rpcap-dump}: capture from a remote interface into a pcapng or pcap file,
with options that feel like tcpdump's and dumpcap's.

    rpcap-dump -D rpcap://server/                     # list interfaces
    rpcap-dump -w out.pcapng -c 100 rpcap://server/eth0 'tcp port 80'
    rpcap-dump -w - rpcap://server/eth0 | wireshark -k -i -
    rpcap-dump -w ring.pcapng -C 100 -W 10 rpcap://server/eth0   # ten files of 100 MB at most
    rpcap-dump --active 2003 --udp -w fleet.pcapng eth0 icmp     # wait for a daemon to connect

Every way a run ends is told on its last line of standard error, and by its
exit status (L{EXIT_CODES}); no error a user can cause ends in a traceback.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import os
import signal
import sys
import time
from typing import Any, BinaryIO, Callable, NoReturn, Optional, TypeVar, Union
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import connectProtocol, serverFromString
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from .. import __version__
from ..logtext import escaped
from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.datachannel import CapturedPacket
from ..protocol.wire import (
    AuthRequest,
    EndCaptureRequest,
    ErrorReply,
    FindAllInterfacesRequest,
    InterfaceFlags,
    InterfaceInfo,
    Message,
    OpenRequest,
    RemoteError,
    RpcapError,
    SetSamplingRequest,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
    UpdateFilterRequest,
)
from .client import (
    CaptureSettings,
    RemoteCapture,
    RpcapClientFactory,
    RpcapClientProtocol,
    protocol_broken,
    start_capture,
)
from .connect import (
    Advice,
    Daemon,
    Ending,
    UnusableCA,
    data_channel_trouble,
    ended_by,
    is_tls_error,
    stop_at_daemon,
    tls_reasons,
)
from .connect import client_endpoint as _client_endpoint
from .files import CaptureFileWriter, RotatingCaptureFiles

DEFAULT_PORT = 2002
DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a connection, and for each reply, before giving up."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA_CHANNEL = 3
EXIT_VANISHED = 4
EXIT_DAEMON_ENDED = 5
EXIT_PROTOCOL = 6
EXIT_SIGNAL_BASE = 128
"""Interrupted before the capture started: 128 + the signal's number (130 for SIGINT), as a shell reports it."""

EXIT_CODES = {
    EXIT_OK: "the capture ended as asked: count, duration or file limit reached, Ctrl-C or SIGTERM"
    " during the capture, or the program reading standard output closed it",
    EXIT_FAILED: "the capture could not start (the daemon refused, could not be reached or did not answer,"
    " TLS failed, the --active port is taken), or the output could not be written",
    EXIT_USAGE: "a usage error, or a filter libpcap cannot compile",
    EXIT_DATA_CHANNEL: "the data channel could not be read",
    EXIT_VANISHED: "the daemon vanished mid-capture (its connection closed or was lost, or it stopped answering)",
    EXIT_DAEMON_ENDED: "the daemon ended the capture itself (an error it reported, or it closed the data connection)",
    EXIT_PROTOCOL: "the daemon broke the protocol (a reply too large for its kind, a flood of messages that"
    " answer no request, a link type no capture file can hold); the file so far is complete",
}

MAX_INTERFACE_NAME = 1024
"""Bytes of an interface name the daemon lists that rpcap-dump opens by default (Linux allows 15, Windows about 50)."""

SIGNAL_GRACE = 0.5
"""Seconds a capture ended by Ctrl-C or SIGTERM waits for the daemon's last counters and endcap, together."""

_T = TypeVar("_T")


# --- errors: each one line, with an exit status ----------------------------------


class DumpError(Exception):
    """An error rpcap-dump reports in one line (its message) and exits with C{code}."""

    code = EXIT_FAILED


class UsageError(DumpError):
    code = EXIT_USAGE


class DataChannelError(DumpError):
    """The capture's data channel could not be read: exit status 3."""

    code = EXIT_DATA_CHANNEL


class CaptureCutShort(DumpError):
    """The daemon's side ended the capture before we did: exit status 4 or 5."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(DumpError):
    """A signal (Ctrl-C, SIGTERM) before the capture started."""

    def __init__(self, signame: str, waiting_for: str) -> None:
        how = "interrupted by Ctrl-C (SIGINT)" if signame == "SIGINT" else f"stopped by {signame}"
        super().__init__(f"{how} {waiting_for}; nothing captured")
        self.code = EXIT_SIGNAL_BASE + int(getattr(signal.Signals, signame, signal.SIGTERM))


class ProtocolError(DumpError):
    """The daemon broke the protocol: exit status 6."""

    code = EXIT_PROTOCOL


class NoReply(Exception):
    """The daemon did not answer a request in time."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"the daemon did not answer the {what} within {seconds:g} s")
        self.what = what
        self.seconds = seconds


# --- the command line ----------------------------------------------------------------


@attrs.frozen
class Source:
    scheme: str
    host: str
    port: int
    interface: str

    @property
    def tls(self) -> bool:
        return self.scheme == "rpcaps"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, interface: Optional[str] = None) -> str:
        return f"{self.scheme}://{self.address}/{interface if interface is not None else self.interface}"


def is_source(text: str) -> bool:
    return urlsplit(text).scheme in ("rpcap", "rpcaps")


def parse_source(text: str) -> Source:
    """C{rpcap[s]://HOST[:PORT]/IFACE}, IFACE optional (for -D)."""
    parts = urlsplit(text)
    if parts.scheme not in ("rpcap", "rpcaps") or not parts.hostname:
        raise UsageError(
            f"{text!r} is not an rpcap://HOST[:PORT]/INTERFACE source: give the daemon's URL,"
            " e.g. rpcap://HOST/eth0 (or --active PORT to wait for a daemon to connect)"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UsageError(f"bad port in {text!r}: give a number from 1 to 65535") from None
    return Source(parts.scheme, parts.hostname, port, parts.path.lstrip("/"))


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid packet count {text!r}: give a whole number, 1 or more")
    return int(text)


def _snaplen(text: str) -> int:
    # 0 as for tcpdump -s 0: a BPF program returning 0 would drop every packet.
    if not text.isdigit() or int(text) > MAXIMUM_SNAPLEN:
        raise argparse.ArgumentTypeError(f"invalid snaplen {text!r}: give 0 to {MAXIMUM_SNAPLEN}")
    return int(text) or MAXIMUM_SNAPLEN


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}: give a number above 0")
    return value


_SIZE_UNITS = {"": 1_000_000, "k": 1024, "m": 1024 * 1024, "g": 1024 * 1024 * 1024}


def _file_size(text: str) -> int:
    """tcpdump's -C: millions of bytes, or KiB, MiB, GiB with a k, m or g after the number."""
    unit = text[-1:].lower() if text[-1:].isalpha() else ""
    number = text[: len(text) - len(unit)]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        value = 0
    if not value >= 1:
        raise argparse.ArgumentTypeError(
            f"invalid file size {text!r}: give millions of bytes (-C 100), or a number with k, m or g"
        )
    return int(value)


_AUTOSTOP = {"duration": _seconds, "packets": _count, "filesize": _count, "files": _count}


def _autostop(text: str) -> tuple[str, Union[int, float]]:
    key, sep, value = text.partition(":")
    if not sep or key not in _AUTOSTOP:
        raise argparse.ArgumentTypeError(
            f"invalid stop condition {text!r}: give duration:SECONDS, packets:N, filesize:KB or files:N"
        )
    return key, _AUTOSTOP[key](value)


def _files(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid file count {text!r}: give a whole number, 1 or more")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as every other error: what is wrong, and where to look."""
        sys.stderr.write(f"rpcap-dump: {message} (rpcap-dump --help lists the options)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rpcap-dump",
        description="Capture from a remote interface through an RPCAP daemon, as tcpdump -w does from a local one.",
        epilog="Exit status: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
        + "; 130 (143 for SIGTERM) interrupted before the capture started."
        " Pipe into Wireshark: rpcap-dump -w - rpcap://HOST/IFACE | wireshark -k -i -",
    )
    p.add_argument("source", nargs="?", help="rpcap://HOST[:PORT]/INTERFACE (rpcaps:// for TLS)")
    p.add_argument(
        "expression",
        nargs="*",
        help="capture filter, as for tcpdump (with --active: the interface, then the filter)",
    )
    p.add_argument("--version", action="version", version=f"rpcap-dump (rpcapsvc) {__version__}")
    p.add_argument("-D", "--list-interfaces", action="store_true", help="list the remote interfaces and exit")
    p.add_argument(
        "-w",
        "--write",
        metavar="FILE",
        help="write packets to FILE (pcapng; pcap if it ends in .pcap); - for standard output",
    )
    p.add_argument("-c", "--count", type=_count, help="stop after COUNT packets")
    p.add_argument("-f", "--filter", help="capture filter (instead of the trailing expression)")
    p.add_argument(
        "-s",
        "--snaplen",
        type=_snaplen,
        default=MAXIMUM_SNAPLEN,
        help="bytes to keep of each packet (0: 262144)",
    )
    p.add_argument(
        "-p", "--no-promisc", action="store_true", help="do not put the interface in promiscuous mode"
    )
    p.add_argument(
        "-i",
        "--interface",
        help="interface to capture (default: the one in the URL, or with --active the first word,"
        " else the daemon's first); an rpcap:// URL here is the source",
    )
    p.add_argument(
        "-G",
        "--rotate-seconds",
        metavar="SECONDS",
        type=_seconds,
        help="with -w FILE: start a new file every SECONDS (a %%-pattern in FILE is strftime'd)",
    )
    p.add_argument(
        "-C",
        "--rotate-size",
        metavar="MB",
        type=_file_size,
        help="with -w FILE: start a new file once one holds MB million bytes (k, m, g: KiB, MiB, GiB)",
    )
    p.add_argument(
        "-W",
        "--max-files",
        metavar="N",
        type=_files,
        help="with -C: keep only the newest N files; with -G alone: stop after N files (as tcpdump)",
    )
    p.add_argument(
        "-a",
        "--autostop",
        metavar="COND",
        type=_autostop,
        action="append",
        default=[],
        help="stop at duration:SECONDS, packets:N, filesize:KB (of the current file) or files:N, as dumpcap",
    )
    p.add_argument("--duration", type=_seconds, metavar="SECONDS", help="stop after SECONDS (-a duration:)")
    p.add_argument("--udp", action="store_true", help="receive packets over UDP (classic or udpstr)")
    p.add_argument(
        "--active", metavar="PORT", help="wait for a daemon to connect on PORT (or a server endpoint string)"
    )
    p.add_argument(
        "--auth",
        metavar="USER",
        help="log in as USER; password from --password-file, $RPCAP_PASSWORD or a prompt",
    )
    p.add_argument("--password-file", help="read the password from this file")
    p.add_argument(
        "--ca", metavar="PEM", help="for rpcaps://: verify the daemon's certificate against this CA"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a connection or a reply after SECONDS (default {DEFAULT_TIMEOUT:g}); the capture never times out",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no live status line: only errors and the summary"
    )
    return p


@attrs.frozen
class Limits:
    """When a capture stops on its own, and how its files rotate."""

    count: Optional[int] = None
    duration: Optional[float] = None
    duration_option: str = ""
    filesize: Optional[int] = None
    """Bytes."""
    files: Optional[int] = None
    files_option: str = ""
    rotate_seconds: Optional[float] = None
    rotate_bytes: Optional[int] = None
    keep_files: Optional[int] = None

    @property
    def rotating(self) -> bool:
        return self.rotate_seconds is not None or self.rotate_bytes is not None


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """
    Work out what the words of the command line mean, or raise L{UsageError}:
    C{args.url} (a L{Source}, or C{None} with C{--active}), C{args.device}
    (the interface, C{""} for the daemon's first), C{args.device_from_word}
    (C{--active}'s interface came from the first word), C{args.expression_text}
    and C{args.limits}.  Running it again changes nothing.
    """
    if getattr(args, "resolved", False):
        return args
    words = ([args.source] if args.source else []) + list(args.expression)
    url: Optional[Source] = None
    device = args.interface or ""
    from_word = False
    if device and is_source(device):  # tcpdump's -i rpcap://HOST/IFACE
        url = parse_source(device)
        device = url.interface
    if args.active:
        if url is not None or (words and is_source(words[0])):
            raise UsageError(
                "--active takes no rpcap:// source: the daemon connects to rpcap-dump;"
                " name the interface as the first word after the options, or with -i"
            )
        # The first word is the interface, unless -i gave one or it holds a
        # space (a quoted filter: an interface name never does).
        if not device and words and not any(c.isspace() for c in words[0]):
            device = words.pop(0)
            from_word = True
    elif url is None:
        if not words:
            raise UsageError(
                "give the daemon's URL: rpcap-dump [options] rpcap://HOST[:PORT]/INTERFACE [filter]"
                " (or --active PORT to wait for a daemon to connect)"
            )
        url = parse_source(words.pop(0))
        device = device or url.interface
    if args.filter is not None and words:
        raise UsageError(
            f"two filters: -f {args.filter!r} and {' '.join(words)!r}; give the filter with -f or after the source"
        )
    args.url = url
    args.device = device
    args.device_from_word = from_word
    args.expression_text = args.filter if args.filter is not None else " ".join(words)
    args.limits = _limits(args)
    if args.password_file and not args.auth:
        raise UsageError("--password-file is the password of --auth USER: give --auth too")
    args.resolved = True
    return args


def _limits(args: argparse.Namespace) -> Limits:
    stops: dict[str, list[Union[int, float]]] = {}
    for key, value in args.autostop:
        stops.setdefault(key, []).append(value)
    counts = [c for c in [args.count, *stops.get("packets", [])] if c is not None]
    durations: list[tuple[float, str]] = [(float(d), f"-a duration:{d:g}") for d in stops.get("duration", [])]
    if args.duration is not None:
        durations.append((args.duration, f"--duration {args.duration:g}"))
    duration, duration_option = min(durations) if durations else (None, "")
    rotating = args.rotate_seconds is not None or args.rotate_size is not None
    to_file = bool(args.write) and args.write != "-"
    if rotating and not to_file:
        if args.rotate_seconds is not None:
            raise UsageError(
                "-G starts a new file every N seconds and needs -w FILE (not -w -);"
                " to stop after N seconds, use -a duration:N"
            )
        raise UsageError("-C starts a new file at a size and needs -w FILE (not -w -)")
    if args.max_files is not None and not rotating:
        raise UsageError("-W limits the files of -C or -G: give one of them with it")
    files = min(stops["files"]) if "files" in stops else None
    files_option = f"-a files:{files}" if files is not None else ""
    if files is not None and not rotating:
        raise UsageError("-a files:N counts the files of -C or -G: give one of them")
    keep = None
    if args.max_files is not None:
        if args.rotate_size is not None:
            keep = args.max_files  # a ring of files, as tcpdump -C -W
        elif files is None or args.max_files < files:
            files, files_option = args.max_files, f"-W {args.max_files}"  # tcpdump -G -W: stop after N files
    filesize = min(stops["filesize"]) * 1000 if "filesize" in stops else None
    if filesize is not None and not args.write:
        raise UsageError("-a filesize:KB stops at a file's size: give -w FILE")
    return Limits(
        count=int(min(counts)) if counts else None,
        duration=duration,
        duration_option=duration_option,
        filesize=int(filesize) if filesize is not None else None,
        files=int(files) if files is not None else None,
        files_option=files_option,
        rotate_seconds=args.rotate_seconds,
        rotate_bytes=args.rotate_size,
        keep_files=keep,
    )


_prompting = False
"""Whether the password prompt is waiting for the user (a signal ends the run there and then)."""


def _terminal() -> bool:
    """Whether there is a terminal to ask for a password on (getpass would read standard input otherwise)."""
    try:
        open("/dev/tty").close()
    except OSError:
        return False
    return True


def password_for(args: argparse.Namespace) -> Optional[bytes]:
    if not args.auth:
        return None
    if args.password_file:
        try:
            with open(args.password_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(
                f"cannot read the password file {args.password_file}: {e.strerror or e}"
            ) from None
    env = os.environ.get("RPCAP_PASSWORD")
    if env is not None:
        return env.encode()
    no_password = UsageError(
        f"no password for {args.auth}: give it with --password-file FILE or $RPCAP_PASSWORD"
        " (there is no terminal to ask on)"
    )
    if not _terminal():
        raise no_password
    global _prompting
    _prompting = True
    try:
        return getpass.getpass(f"Password for {args.auth}: ").encode()
    except EOFError:
        raise no_password from None
    except KeyboardInterrupt:
        raise Interrupted("SIGINT", "at the password prompt") from None
    finally:
        _prompting = False


# --- connections with deadlines --------------------------------------------------------


_REQUESTS: dict[type, str] = {
    AuthRequest: "login",
    FindAllInterfacesRequest: "request for its interfaces",
    OpenRequest: "request to open the interface",
    StartCaptureRequest: "request to start the capture",
    UpdateFilterRequest: "new filter",
    StatsRequest: "request for its counters",
    EndCaptureRequest: "request to end the capture",
    SetSamplingRequest: "sampling request",
}


class DumpClient(RpcapClientProtocol):
    """
    The control connection, where every request fails with L{NoReply} when
    its answer takes longer than C{timeout}; C{on_error} hears each error the
    daemon sends that answers no request (a capture that ended at its end).
    """

    def __init__(self, clock: Any, timeout: Optional[float], active: bool = False) -> None:
        super().__init__(active=active)
        self.clock = clock
        self.timeout = timeout
        self.on_error: Optional[Callable[[ErrorReply], None]] = None
        self.first_bytes = b""
        self.lost_reason: Optional[Failure] = None
        """Why the connection was lost, once it has been."""
        self.hung_up = False

    def dataReceived(self, data: bytes) -> None:
        if len(self.first_bytes) < 8:
            self.first_bytes += data[: 8 - len(self.first_bytes)]
        before = len(self.errors)
        super().dataReceived(data)
        for error in self.errors[before:]:
            # Heard one by one: the first may end the capture, and stop the hearing.
            if self.on_error is not None:
                self.on_error(error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    def request(self, message: Message, reply_type: int) -> defer.Deferred[Any]:
        d = super().request(message, reply_type)
        if self.timeout is not None and not d.called:
            what = _REQUESTS.get(type(message), "request")

            def no_reply(result: Any, seconds: float) -> Any:
                if isinstance(result, Failure) and result.check(defer.CancelledError):
                    return Failure(NoReply(what, seconds))
                return result

            d.addTimeout(self.timeout, self.clock, onTimeoutCancel=no_reply)
        return d

    @property
    def spoke_tls(self) -> bool:
        """Whether the daemon's first bytes were a TLS record (an alert, a handshake)."""
        return len(self.first_bytes) >= 2 and self.first_bytes[0] in (0x15, 0x16) and self.first_bytes[1] == 3


class DumpClientFactory(RpcapClientFactory):
    """Active daemons connecting to us, each on a L{DumpClient}."""

    def __init__(
        self, on_connect: Callable[[RpcapClientProtocol], object], clock: Any, timeout: float
    ) -> None:
        super().__init__(on_connect)
        self.clock = clock
        self.timeout = timeout

    def new_protocol(self) -> DumpClient:
        return DumpClient(self.clock, self.timeout, active=True)


def client_endpoint(
    reactor: Any, source: Source, ca: Optional[str], timeout: float = 30.0
) -> IStreamClientEndpoint:
    """The endpoint for C{source}'s daemon (L{connect.client_endpoint}); a bad C{--ca} is a usage error."""
    try:
        return _client_endpoint(reactor, source.host, source.port, source.tls, ca, timeout)
    except UnusableCA as e:
        raise UsageError(str(e)) from None


def advice(url: Optional[Source]) -> Advice:
    """What rpcap-dump tells its user to do, in its options; for TLS, the URL to give (none with --active)."""
    return Advice(
        give_ca="give the CA that signed it with --ca PEM",
        without_tls="use rpcap:// instead of rpcaps://",
        with_tls=f"use {_with_tls(url)}" if url is not None else "",
        tls_hint="rpcaps://" if url is not None else "",
        log_in="log in with --auth USER (the password from --password-file, $RPCAP_PASSWORD or a prompt)",
        check_login="check the user (--auth) and the password (--password-file or $RPCAP_PASSWORD)",
        try_udp="try --udp",
        wait_longer="--timeout to wait longer",
    )


def _with_tls(source: Source) -> str:
    return Source("rpcaps", source.host, source.port, source.interface).url()


# --- a capture -----------------------------------------------------------------------


def _signal_ending(signame: str) -> Ending:
    if signame == "SIGINT":
        return Ending(EXIT_OK, "interrupted by Ctrl-C (SIGINT)", "signal")
    return Ending(EXIT_OK, f"stopped by {signame}", "signal")


OUTPUT_CLOSED = Ending(EXIT_OK, "the output was closed (the program reading it exited)", "output")
DATA_CLOSED = Ending(
    EXIT_DAEMON_ENDED, "the daemon ended the capture: it closed the data connection", "data-closed"
)


def _vanished(reason: Optional[Failure]) -> Ending:
    if reason is None or reason.check(ConnectionDone):
        why = "its connection closed without the capture being ended"
    elif reason.check(ConnectionLost):
        why = "its connection was cut (reset)"
    else:
        why = f"the connection was lost ({reason.getErrorMessage()})"
    return Ending(EXIT_VANISHED, f"the daemon vanished mid-capture: {why}", "vanished")


def _silent(error: NoReply) -> Ending:
    return Ending(
        EXIT_VANISHED,
        f"the daemon stopped answering mid-capture: no reply to a {error.what} within {error.seconds:g} s",
        "vanished",
    )


def _broke_protocol(why: str) -> Ending:
    return Ending(EXIT_PROTOCOL, f"the daemon broke the protocol: {why}", "broken")


def _daemon_ended(error: ErrorReply) -> Ending:
    return Ending(EXIT_DAEMON_ENDED, ended_by("the daemon", error), "ended")


class Output:
    """
    Where the packets go: one file (or standard output), or with -G/-C a
    series of files (L{RotatingCaptureFiles}), each complete on its own.
    """

    def __init__(
        self, target: Union[CaptureFileWriter, RotatingCaptureFiles], path: str, files_limit: Optional[int]
    ) -> None:
        self.target = target
        self.path = path
        self.files_limit = files_limit
        self.files_opened = 1

    @property
    def rotating(self) -> Optional[RotatingCaptureFiles]:
        return self.target if isinstance(self.target, RotatingCaptureFiles) else None

    def current(self) -> Optional[CaptureFileWriter]:
        """The file to write to now, rotated first if due; C{None} once the file limit is reached."""
        files = self.rotating
        if files is None:
            assert isinstance(self.target, CaptureFileWriter)
            return self.target
        if files.due():
            if self.files_limit is not None and self.files_opened >= self.files_limit:
                return None
            files.tick()
            self.files_opened += 1
        return files.current

    def add_interface(self, name: str, linktype: int, snaplen: int, description: str) -> int:
        return self.target.add_interface(name, linktype, snaplen, description)

    def set_stats(self, interface_id: int, stats: StatsReply) -> None:
        self.target.set_stats(interface_id, stats.ifrecv, stats.krnldrop, stats.ifdrop)

    def close(self) -> None:
        self.target.close()


def _format_of(path: str) -> str:
    return "pcap" if path.endswith(".pcap") else "pcapng"


def rotation_name(
    path: str, localtime: Callable[[float], time.struct_time] = time.localtime
) -> Callable[[float, int], str]:
    """
    How rotated files are named: a C{%} pattern in C{path} is given to
    strftime (local time), as tcpdump does, with C{_2}, C{_3}, ... before
    the extension when that name is taken; otherwise dumpcap's
    C{STEM_NNNNN_YYYYmmddHHMMSS.EXT}.
    """
    if "%" in path:

        def by_pattern(when: float, sequence: int) -> str:
            name = time.strftime(path, localtime(when))
            stem, ext = os.path.splitext(name)
            n = 1
            while os.path.lexists(name):
                n += 1
                name = f"{stem}_{n}{ext}"
            return name

        return by_pattern
    stem, ext = os.path.splitext(path)

    def numbered(when: float, sequence: int) -> str:
        return f"{stem}_{sequence:05d}_{time.strftime('%Y%m%d%H%M%S', localtime(when))}{ext}"

    return numbered


def open_output(args: argparse.Namespace, clock: Callable[[], float]) -> Optional[Output]:
    """The output -w asks for (C{None} without -w: a line per packet)."""
    path = args.write
    if not path:
        return None
    limits: Limits = args.limits
    if path == "-":
        return Output(CaptureFileWriter(sys.stdout.buffer, "pcapng", close_stream=False), path, None)
    fmt = _format_of(path)
    if not limits.rotating:
        return Output(CaptureFileWriter(open(path, "wb"), fmt), path, None)
    files = RotatingCaptureFiles(
        os.path.dirname(path) or ".",
        os.path.basename(path),
        fmt,
        max_bytes=limits.rotate_bytes,
        max_seconds=limits.rotate_seconds,
        clock=clock,
        max_files=limits.keep_files,
        name=rotation_name(path),
    )
    return Output(files, path, limits.files)


def check_writable(path: str) -> None:
    """Fail before connecting if -w's file cannot be created (a missing directory, no permission)."""
    if not path or path == "-":
        return
    target = path if "%" not in path else time.strftime(path)
    directory = os.path.dirname(target) or "."
    if not os.path.isdir(directory):
        raise DumpError(f"cannot write {path}: there is no directory {directory}")
    if os.path.isdir(target):
        raise DumpError(f"cannot write {path}: it is a directory; give a file name to -w")
    if not os.access(directory, os.W_OK | os.X_OK) or (
        os.path.exists(target) and not os.access(target, os.W_OK)
    ):
        raise DumpError(f"cannot write {path}: permission denied")


def _silence_stdout() -> None:
    """Standard output's reader is gone: send whatever is still buffered nowhere, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class Dump:
    """One rpcap-dump capture: packets into the output, counters, limits and the status line."""

    def __init__(
        self,
        reactor: Any,
        args: argparse.Namespace,
        out: Optional[Output],
        status: Optional[BinaryIO],
    ) -> None:
        self.reactor = reactor
        self.args = resolve(args)
        self.limits: Limits = self.args.limits
        self.out = out
        self.status = status
        self.packets = 0
        self.bytes = 0
        self.drops = 0
        self.started = time.monotonic()
        self.capture: Optional[RemoteCapture] = None
        self.interface_id = 0
        self.done: defer.Deferred[Ending] = defer.Deferred()

    def end(self, ending: Ending) -> None:
        """End the capture for this reason, unless it has ended already."""
        if not self.done.called:
            self.done.callback(ending)

    def on_packets(self, packets: list[CapturedPacket]) -> None:
        if self.done.called:
            return
        try:
            self._take(packets)
        except BrokenPipeError:
            self._output_closed()
        except Exception as e:  # a full disk; and never a traceback from inside the reactor
            self._write_failed(e)

    def _take(self, packets: list[CapturedPacket]) -> None:
        count = self.limits.count
        if count is not None and self.packets + len(packets) >= count:
            packets = packets[: count - self.packets]
        writer: Optional[CaptureFileWriter] = None
        if self.out is not None:
            writer = self.out.current()
            if writer is None:
                self._files_reached()
                return
            writer.write_packets(self.interface_id, packets)
        else:
            for p in packets:
                stamp = time.strftime("%H:%M:%S", time.localtime(p.ts_sec))
                sys.stdout.write(f"{stamp}.{p.ts_usec:06d} length {p.length} captured {p.caplen}\n")
            sys.stdout.flush()
        self.packets += len(packets)
        self.bytes += sum(p.caplen for p in packets)
        limits = self.limits
        if count is not None and self.packets >= count:
            option = f"-c {count}" if self.args.count == count else f"-a packets:{count}"
            self.end(Ending(EXIT_OK, f"stopped after {count} packets ({option})", "count"))
        elif limits.filesize is not None and writer is not None and writer.bytes_written >= limits.filesize:
            kb = limits.filesize // 1000
            self.end(Ending(EXIT_OK, f"stopped: the file reached {kb} kB (-a filesize:{kb})", "filesize"))

    def _files_reached(self) -> None:
        n = self.limits.files
        files = "file" if n == 1 else "files"
        self.end(Ending(EXIT_OK, f"stopped after {n} {files} ({self.limits.files_option})", "files"))

    @property
    def output_name(self) -> str:
        return "standard output" if self.args.write in (None, "-") else str(self.args.write)

    def _write_failed(self, e: Exception) -> None:
        why = getattr(e, "strerror", None) or e
        self.end(Ending(EXIT_FAILED, f"cannot write {self.output_name}: {why}", "write"))

    def _output_closed(self) -> None:
        if self.args.write in (None, "-"):
            _silence_stdout()
        self.end(OUTPUT_CLOSED)

    def tick(self) -> None:
        """Now and then: rotate a quiet capture's file on time, and stop at -a files:N."""
        if self.done.called or self.out is None or self.out.rotating is None:
            return
        try:
            if self.out.current() is None:
                self._files_reached()
        except Exception as e:
            self._write_failed(e)

    def duration_reached(self) -> None:
        seconds = self.limits.duration
        self.end(Ending(EXIT_OK, f"stopped after {seconds:g} s ({self.limits.duration_option})", "duration"))

    def show_status(self) -> None:
        if self.status is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        loss = self.capture.loss.lost_packets if self.capture else 0
        line = (
            f"\r{self.packets} packets, {self.packets / elapsed:.0f}/s, {self.bytes / 1e6:.1f} MB, "
            f"{self.drops + loss} dropped "
        )
        try:
            self.status.write(line.encode())
            self.status.flush()
        except OSError:
            self.status = None

    async def poll(self) -> None:
        """The daemon's counters, every few seconds: its drops, and a sign of life."""
        if self.capture is None or self.done.called:
            return
        try:
            stats = await self.capture.stats()
        except NoReply as e:
            self.end(_silent(e))
            return
        except Exception:
            return  # the connection is gone: its own callback ends the capture
        self.drops = stats.dropped
        if self.out is not None and not self.done.called:
            try:
                self.out.set_stats(self.interface_id, stats)
            except ValueError:
                pass

    def summary(self) -> str:
        line = f"{self.packets} packets captured, {self.drops} dropped by the daemon's kernel"
        if self.args.udp and self.capture is not None:
            line += f", {self.capture.loss.lost_packets} lost in transit"
        if self.capture is not None:
            # What the data channel refused; said only when it happened.
            loss = self.capture.loss
            for count, one, many in (
                (
                    loss.foreign,
                    "datagram from another host or port dropped",
                    "datagrams from another host or port dropped",
                ),
                (loss.malformed, "malformed skipped", "malformed skipped"),
                (loss.resyncs, "packet-number resync", "packet-number resyncs"),
            ):
                if count:
                    line += f", {count} {one if count == 1 else many}"
        return line


# --- a run ----------------------------------------------------------------------------


_runs: list[Run] = []


def interrupt_all(signame: str) -> None:
    """A signal arrived: every run in progress stops as it should (see L{Run.interrupt})."""
    for r in list(_runs):
        r.interrupt(signame)


_FIRST_WORD_IS_THE_INTERFACE = (
    "with --active the first word is the interface: put the filter after it, or name the interface with -i"
)
"""Said when the daemon has no interface named as --active's first word."""


class Run:
    """One invocation of rpcap-dump, from connecting to the last line."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.timeout: float = getattr(args, "timeout", DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT
        self.client: Optional[DumpClient] = None
        self.dump: Optional[Dump] = None
        self.interrupted: Optional[str] = None
        self._pending: Optional[defer.Deferred[Any]] = None
        self._listening: Any = None
        self._early: list[CapturedPacket] = []

    def say(self, text: str) -> None:
        """An informational line (-q leaves them out)."""
        if not self.args.quiet:
            sys.stderr.write(f"rpcap-dump: {text}\n")

    def interrupt(self, signame: str) -> None:
        """
        Ctrl-C or SIGTERM.  A capture ends as at its count (endcap, the file
        finished, the summary); before it has started, whatever is awaited
        is given up; while a capture is finishing, a second signal stops
        waiting for the daemon.
        """
        first = self.interrupted is None
        self.interrupted = self.interrupted or signame
        if first and self.dump is not None and not self.dump.done.called:
            self.dump.end(_signal_ending(signame))
        elif self._pending is not None and not self._pending.called:
            self._pending.cancel()

    async def wait(self, d: defer.Deferred[_T], waiting_for: str) -> _T:
        """C{await d}; before the capture, given up with L{Interrupted} on a signal."""
        if self.interrupted and self.dump is None:
            d.cancel()
            raise Interrupted(self.interrupted, waiting_for)
        self._pending = d
        try:
            return await d
        except defer.CancelledError:
            if self.interrupted and self.dump is None:
                raise Interrupted(self.interrupted, waiting_for) from None
            raise
        finally:
            self._pending = None

    async def run(self) -> int:
        _runs.append(self)
        try:
            return await self._run()
        finally:
            _runs.remove(self)
            if self._listening is not None:
                self._listening.stopListening()
                self._listening = None
            self._hang_up()

    def _hang_up(self) -> None:
        client = self.client
        if client is not None and client.transport is not None and client.lost_reason is None:
            if not client.hung_up:
                client.hung_up = True
                client.close()

    async def _run(self) -> int:
        args = resolve(self.args)
        check_writable(args.write)
        password = password_for(args)
        user = args.auth.encode() if args.auth else None
        client = await (self._wait_for_daemon() if args.active else self._connect())
        self.client = client

        try:
            await self.wait(
                client.authenticate(user, password or b""),
                "while waiting for the daemon's answer to the login",
            )
            interfaces = await self.wait(
                client.find_interfaces(), "while waiting for the daemon's list of interfaces"
            )
        except (Interrupted, DumpError):
            raise
        except RemoteError as e:
            raise DumpError(self._peer().refused(e)) from None
        except NoReply as e:
            if args.active or e.what != "login":
                raise DumpError(f"{e} (--timeout to wait longer)") from None
            raise DumpError(self._peer().silent(e.seconds)) from None
        except Exception as e:
            raise self._gone_before_capture(e) from None

        if args.list_interfaces:
            lines = []
            for n, iface in enumerate(interfaces, 1):
                flags = InterfaceFlags(iface.flags)
                state = "Up" if InterfaceFlags.UP in flags else "Down"
                # The daemon's words, as tcpdump -D would print them: no escape sequence reaches the terminal.
                desc = f" ({escaped(iface.description)})" if iface.description else ""
                addrs = ", ".join(escaped(str(a.address)) for a in iface.addresses)
                lines.append(f"{n}.{escaped(iface.name)}{desc} [{state}]{' ' + addrs if addrs else ''}\n")
            try:
                sys.stdout.write("".join(lines))
                sys.stdout.flush()
            except BrokenPipeError:
                _silence_stdout()  # `rpcap-dump -D ... | head -3`: the reader had what it wanted
            return EXIT_OK

        interface = args.device
        if not interface:
            if not interfaces:
                raise DumpError(f"{self._peer().name} lists no interfaces: name one with -i")
            interface = interfaces[0].name  # a preselected interface is listed first
            name_bytes = len(interface.encode("utf-8", "surrogateescape"))
            if name_bytes > MAX_INTERFACE_NAME:
                raise ProtocolError(
                    f"{self._peer().name} broke the protocol: its first interface has a name of"
                    f" {name_bytes} bytes, longer than any system's"
                    f" ({MAX_INTERFACE_NAME} at most); name the interface with -i"
                )
        settings = CaptureSettings(
            interface,
            snaplen=args.snaplen,
            promiscuous=not args.no_promisc,
            filter=args.expression_text,
            udp=args.udp,
        )
        capture = await self._start(client, settings, interfaces)
        return await self._capture(client, capture, interface)

    def _peer(self) -> Daemon:
        """The daemon: the URL's, or (with --active) the one that connected, if one has."""
        url: Optional[Source] = self.args.url
        if url is not None:
            return Daemon(advice(url), url.address, url.host, url.tls, self.args.auth)
        host = self.client.peer_host if self.client is not None else ""
        return Daemon(advice(None), host=host, user=self.args.auth)

    async def _connect(self) -> DumpClient:
        source: Source = self.args.url
        endpoint = client_endpoint(self.reactor, source, self.args.ca, self.timeout)
        client = DumpClient(self.reactor, self.timeout)
        connecting = connectProtocol(endpoint, client)
        connecting.addTimeout(self.timeout, self.reactor)
        try:
            await self.wait(connecting, f"while connecting to {source.address}")
        except Interrupted:
            raise
        except Exception as e:
            raise DumpError(self._peer().unreachable(e, self.timeout)) from None
        return client

    async def _wait_for_daemon(self) -> DumpClient:
        from twisted.internet.error import CannotListenError

        active = self.args.active
        description = active if ":" in active else f"tcp:{active}"
        arrived: defer.Deferred[DumpClient] = defer.Deferred()

        def connected(p: RpcapClientProtocol) -> None:
            if not arrived.called:
                assert isinstance(p, DumpClient)
                arrived.callback(p)
            else:
                p.transport.loseConnection()  # type: ignore[union-attr]

        try:
            endpoint = serverFromString(self.reactor, description)
        except (ValueError, TypeError, KeyError) as e:
            raise UsageError(f"--active {active}: not a port or a server endpoint string ({e})") from None
        try:
            self._listening = await endpoint.listen(DumpClientFactory(connected, self.reactor, self.timeout))
        except CannotListenError as e:
            error = e.socketError
            why = str(getattr(error, "strerror", None) or error).lower()
            if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
                hint = "another program has it (another rpcap-dump, rpcapcollect?): pick another port with --active"
            else:
                hint = "pick another port with --active"
            raise DumpError(f"cannot listen on {description}: {why}; {hint}") from None
        except Exception as e:
            raise DumpError(f"cannot listen on {description}: {e}") from None
        self.say(f"waiting for a daemon on {description}")
        client = await self.wait(arrived, f"while waiting for a daemon on {description}")
        listening, self._listening = self._listening, None
        listening.stopListening()
        self.say(f"daemon connected from {client.peer_host}")
        return client

    def _gone_before_capture(self, e: BaseException) -> DumpError:
        """Why the control connection failed before the capture started."""
        client = self.client
        why = self._peer().gone(e, client, client is not None and client.spoke_tls)
        if protocol_broken(e, client):
            return ProtocolError(why)
        return DumpError(why)

    async def _start(
        self, client: DumpClient, settings: CaptureSettings, interfaces: tuple[InterfaceInfo, ...]
    ) -> RemoteCapture:
        args = self.args
        starting = defer.ensureDeferred(
            start_capture(
                self.reactor,
                client,
                settings,
                self._packets,
                active=bool(args.active),
                connect_timeout=self.timeout,
            )
        )
        try:
            return await self.wait(
                starting, f"while waiting for the daemon to start the capture on {settings.device}"
            )
        except (Interrupted, DumpError):
            raise
        except NoReply as e:
            raise DumpError(f"{e} (--timeout to wait longer)") from None
        except Exception as e:
            hint = _FIRST_WORD_IS_THE_INTERFACE if args.device_from_word else ""
            why = self._peer().not_started(e, settings.device, interfaces, self.timeout, hint)
            if why is None:
                raise self._gone_before_capture(e) from None
            raise (UsageError if isinstance(e, ValueError) else DumpError)(why) from None

    def _packets(self, packets: list[CapturedPacket]) -> None:
        if self.dump is not None:
            self.dump.on_packets(packets)
        else:  # datagrams that came before the startcap reply
            self._early.extend(packets)

    async def _capture(self, client: DumpClient, capture: RemoteCapture, interface: str) -> int:
        args = self.args
        try:
            out = open_output(args, self.reactor.seconds)
        except (OSError, ValueError) as e:
            await self._stop(capture)
            raise DumpError(f"cannot write {args.write}: {getattr(e, 'strerror', None) or e}") from None
        status = sys.stderr.buffer if (not args.quiet and sys.stderr.isatty()) else None
        dump = Dump(self.reactor, args, out, status)
        dump.capture = capture
        if out is not None:
            url = (
                args.url.url(interface) if args.url is not None else f"rpcap://{client.peer_host}/{interface}"
            )
            dump.interface_id = out.add_interface(interface, capture.linktype, args.snaplen, url)
        self.dump = dump
        self.say(f"capturing on {escaped(interface)} (link type {capture.linktype})")
        if self.interrupted:
            dump.end(_signal_ending(self.interrupted))
        early, self._early = self._early, []
        if early:
            dump.on_packets(early)

        ticker = task.LoopingCall(self._tick)
        ticker.clock = self.reactor
        ticker.start(0.5)
        poller = task.LoopingCall(lambda: defer.ensureDeferred(dump.poll()))
        poller.clock = self.reactor
        poller.start(2.0, now=False)
        client.disconnected.addCallback(
            lambda _: dump.end(
                _broke_protocol(client.broken) if client.broken is not None else _vanished(client.lost_reason)
            )
        )
        client.on_error = lambda error: dump.end(_daemon_ended(error))
        if capture.data_lost is not None:
            capture.data_lost.addCallback(lambda _: dump.end(DATA_CLOSED))
        deadline = None
        if args.limits.duration is not None:
            deadline = self.reactor.callLater(args.limits.duration, dump.duration_reached)

        ending = await dump.done
        if deadline is not None and deadline.active():
            deadline.cancel()
        for loop in (ticker, poller):
            if loop.running:
                loop.stop()
        ending = await self._finish(client, capture, dump, ending)
        trouble = data_channel_trouble(capture)
        if trouble is not None:
            raise DataChannelError(trouble)
        if ending.code != EXIT_OK:
            raise CaptureCutShort(ending.text, ending.code)
        sys.stderr.write(f"rpcap-dump: {ending.text}\n")
        return EXIT_OK

    def _tick(self) -> None:
        if self.dump is not None:
            self.dump.show_status()
            self.dump.tick()

    async def _stop(self, capture: RemoteCapture) -> Union[StatsReply, Exception]:
        """
        End the capture at the daemon (L{stop_at_daemon}), each reply awaited
        as L{wait} does; after Ctrl-C or SIGTERM, both within L{SIGNAL_GRACE}
        seconds, so a daemon that never answers cannot hold the user.
        """
        give_up_at = self.reactor.seconds() + SIGNAL_GRACE

        def wait(d: defer.Deferred[Any], what: str) -> Any:
            if self.interrupted:
                d.addTimeout(max(0.0, give_up_at - self.reactor.seconds()), self.reactor)
            return self.wait(d, f"while waiting for {what}")

        return await stop_at_daemon(capture, wait)

    async def _finish(self, client: DumpClient, capture: RemoteCapture, dump: Dump, ending: Ending) -> Ending:
        """The capture is over: end it at the daemon, finish the output, say the summary; the ending, as now known."""
        client.on_error = None
        stats: Optional[StatsReply] = None
        if ending.kind != "vanished" and not client.disconnected.called:
            result = await self._stop(capture)
            if isinstance(result, StatsReply):
                stats = result
            elif ending.kind == "data-closed":
                # The data connection closed, and the control connection did too, or is silent: gone.
                ending = _silent(result) if isinstance(result, NoReply) else _vanished(Failure(result))
        else:
            capture.close_data()
        if ending.kind == "data-closed" and client.errors:
            ending = _daemon_ended(client.errors[-1])
        if dump.status is not None:
            dump.show_status()
            try:
                dump.status.write(b"\n")
            except OSError:
                pass
        if stats is not None:
            dump.drops = stats.dropped
        out = dump.out
        if out is not None:
            try:
                if stats is not None:
                    out.set_stats(dump.interface_id, stats)
                out.close()
            except BrokenPipeError:
                _silence_stdout()
            except (OSError, ValueError) as e:
                if ending.code == EXIT_OK and ending is not OUTPUT_CLOSED:
                    why = getattr(e, "strerror", None) or e
                    ending = Ending(EXIT_FAILED, f"cannot write {dump.output_name}: {why}", "write")
        elif ending is not OUTPUT_CLOSED:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _silence_stdout()
        sys.stderr.write(f"rpcap-dump: {dump.summary()}\n")
        self._hang_up()
        return ending


async def run(reactor: Any, args: argparse.Namespace) -> int:
    """One rpcap-dump run: its exit status, or an exception that L{main} turns into a line and one."""
    return await Run(reactor, args).run()


def report(error: BaseException) -> int:
    """Say what went wrong, on one line; the exit status for it."""
    from twisted.internet.error import ConnectError

    if isinstance(error, DumpError):
        message, code = str(error), error.code
    elif isinstance(error, ValueError):  # a filter libpcap cannot compile
        message, code = str(error), EXIT_USAGE
    elif isinstance(error, RemoteError):
        message, code = f"the daemon refused: {error.text} (error {error.code})", EXIT_FAILED
    elif isinstance(error, NoReply):
        message, code = f"{error} (--timeout to wait longer)", EXIT_FAILED
    elif isinstance(error, ConnectError):
        message, code = f"cannot connect: {error}", EXIT_FAILED
    elif is_tls_error(error):
        message, code = f"TLS with the daemon failed: {tls_reasons(error)}", EXIT_FAILED
    elif isinstance(error, (RpcapError, OSError)):
        message, code = str(error), EXIT_FAILED
    elif isinstance(error, KeyboardInterrupt):
        message, code = "interrupted by Ctrl-C (SIGINT); nothing captured", EXIT_SIGNAL_BASE + signal.SIGINT
    else:
        message, code = f"unexpected error, please report it: {type(error).__name__}: {error}", EXIT_FAILED
    sys.stderr.write(f"rpcap-dump: {message}\n")
    return code


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_ignored_signals: Optional[set[int]] = None
"""The signals ignored when rpcap-dump started (a background job's SIGINT, nohup's SIGHUP): they stay so."""


def install_signal_handlers(reactor: Any) -> None:
    """
    Ctrl-C, SIGTERM and SIGHUP end the run as L{Run.interrupt} says, in the
    reactor's thread; at the password prompt (before the reactor runs), they
    end it there.  Called before the reactor starts, and again as it starts,
    over the handlers it installs, which would stop it at once.
    """
    global _ignored_signals
    if _ignored_signals is None:
        _ignored_signals = {s for s in _SIGNALS if signal.getsignal(s) == signal.SIG_IGN}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if _prompting:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt()
            raise Interrupted(name, "at the password prompt")
        reactor.callFromThread(interrupt_all, name)

    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN if sig in _ignored_signals else handler)


def main(argv: Optional[list[str]] = None) -> None:
    # Options may follow the source, as tcpdump takes them after its expression.
    args = build_parser().parse_intermixed_args(argv)

    async def _main(reactor: Any) -> None:
        from twisted.internet.base import ReactorBase

        if isinstance(reactor, ReactorBase):  # a real one (not a test's)
            install_signal_handlers(reactor)
            # Again after the reactor's own, installed as it starts (its triggers come first).
            reactor.addSystemEventTrigger("during", "startup", install_signal_handlers, reactor)
        try:
            code = await run(reactor, args)
        except Exception as e:  # every error is one line and an exit status, never a traceback
            code = report(e)
        except KeyboardInterrupt as e:
            code = report(e)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(_main(reactor)))


if __name__ == "__main__":
    main()
