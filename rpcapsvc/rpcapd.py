"""
The C{rpcapd} command: ExtraHop's rpcapd command line over the service that
C{twistd rpcapd} runs, so that init scripts, unit files and fleets written
for the fork (or for libpcap's rpcapd, where the two agree) run it unchanged.

    rpcapd -v -d -L -f /etc/rpcapd.ini     # active only, daemon, syslog, config file
    rpcapd -n -a collector.example,2003 -i eth1

L{translate} turns the fork's switches into a C{twistd} command line
(daemonizing, pidfile, syslog) and a C{twistd rpcapd} one (everything else);
L{main} checks both and runs twistd.  The fork's defaults come along: udpstr
framing at MTU 1472 on every data channel, TCP included (C{-t 0} gives
libpcap's classic framing, which Wireshark needs), a 16 MiB capture buffer
and an 8 MiB send buffer.  Where the fork and libpcap's rpcapd give a letter
different meanings (C{-i}, C{-S}), the fork's wins; libpcap's TLS and inetd
modes are reached through C{twistd rpcapd}.  docs/extrahop-migration.md maps
every switch.
"""

from __future__ import annotations

import getopt
import ipaddress
import os
import socket
import sys
from typing import Callable, Optional

import attrs

from .config import DEFAULT_ACTIVE_PORT, ActiveTarget, ConfigError, DaemonConfig, format_config

DEFAULT_PORT = 2002
FORK_MTU = 1472
"""The fork's C{-t} default: udpstr datagrams for a 1500-byte Ethernet MTU."""
FORK_MAX_MTU = 65000
"""The fork caps C{-t} here."""
FORK_BUFFER_SIZE = 16 * 1024 * 1024
"""The fork's C{-z} default: libpcap's capture buffer."""
FORK_SNDBUF = 8 * 1024 * 1024
"""The fork's C{-u} default: the UDP data socket's send buffer."""

_OPTSTRING = "b:p:46l:na:vds:f:i:t:u:z:SLhc:e:m:k:gyD"
_LONG_OPTIONS = ["metrics="]
"""Ours, not the fork's (which has no long options): C{--metrics=ENDPOINT} or C{--metrics ENDPOINT}."""
_HOSTLIST_SEPARATORS = " ,;\n\r"
"""The fork's C{RPCAP_HOSTLIST_SEP}: what separates hosts and ports in C{-a} and C{-l}."""
_IGNORED = {
    "-c": "thread mode and CPU affinity",
    "-e": "thread nice values",
    "-m": "ring buffer size",
    "-k": "ring buffer packet count",
    "-g": "blocking UDP socket",
    "-y": "dry run",
    "-D": "debug output",
}
"""Switches that tune the fork's threads (and libpcap's -D): accepted, logged as ignored."""

USAGE = """\
Usage: rpcapd [-b ADDRESS] [-p PORT] [-4|-6] [-l HOSTS] [-a HOST[,PORT]]...
              [-n] [-v] [-d] [-L] [-s FILE] [-f FILE] [-i IFACE]
              [-t MTU] [-u SNDBUF] [-z BUFSIZE] [-S] [-h] [--metrics=ENDPOINT]

An RPCAP remote capture daemon with ExtraHop's rpcapd command line.

  -b ADDRESS  listen on this address (numeric or a name); default all IPv4 addresses
  -p PORT     listen on this port; default 2002
  -4          listen on IPv4 only (the default)
  -6          listen on IPv6 (and IPv4, where the system maps it)
  -l HOSTS    only these clients may connect: a file with one host a line,
              or hosts separated by commas
  -n          permit NULL authentication (without it, system accounts log in)
  -a HOST[,PORT]  active mode: connect to the collector HOST on PORT
              (default 2003, also DEFAULT); repeatable, and several
              HOST,PORT pairs may share one -a
  -v          active mode only: accept no passive clients
  -d          run as a daemon (pidfile, log file or syslog; no output)
  -L          log to syslog
  -s FILE     save the configuration given on the command line to FILE (rpcapd.ini)
  -f FILE     read the configuration from FILE (rpcapd.ini); SIGHUP re-reads it
  -i IFACE    preselect IFACE: listed first, the only interface clients may open
  -t MTU      udpstr framing on every data channel, datagrams of at most MTU
              bytes; default 1472; 0 gives libpcap's classic framing (for Wireshark)
  -u SNDBUF   send buffer of UDP data channels in bytes; default 8 MiB
  -z BUFSIZE  kernel capture buffer in bytes; default 16 MiB
  -S          log the counters each time a client asks for them
  -h          print this help
  --metrics=ENDPOINT
              serve Prometheus metrics at /metrics on ENDPOINT, such as
              127.0.0.1:9102 or tcp:9102:interface=127.0.0.1 (ours, not the
              fork's; off by default)

Accepted and ignored (they tune the fork's threads): -c -e -m -k -g -y, and -D.
Everything else (TLS, inetd-style sockets, password files, limits):
twistd rpcapd --help.
"""


class CommandLineError(Exception):
    """A command line the daemon cannot run with; the message says why."""


@attrs.define
class Invocation:
    """What an C{rpcapd} command line asks for."""

    twistd_args: list[str] = attrs.Factory(list)
    """Options of twistd itself: foreground or daemon, pidfile, logging."""
    rpcapd_args: list[str] = attrs.Factory(list)
    """Options of C{twistd rpcapd}."""
    notices: list[str] = attrs.Factory(list)
    """Lines to log once the daemon runs (switches ignored, settings adjusted)."""
    summary: str = ""
    """One line saying which of the fork's defaults are in force."""
    save_to: Optional[str] = None
    command_line_config: DaemonConfig = DaemonConfig()
    """The configuration the command line gives, as C{-s} saves it."""
    help: bool = False


def parse_active_list(value: str) -> list[ActiveTarget]:
    """
    C{-a}'s argument as the fork reads it: hosts and ports alternating,
    separated by commas, semicolons or spaces; a missing port or C{DEFAULT}
    is 2003.  C{-a 127.0.0.1,2003} is one collector, never a host named so.
    """
    words = [w for w in _split(value) if w]
    if not words:
        raise CommandLineError("-a needs HOST[,PORT]")
    targets = []
    for host, port_text in zip(words[::2], [*words[1::2], "DEFAULT"][: len(words[::2])]):
        if port_text.upper() == "DEFAULT":
            port = DEFAULT_ACTIVE_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise CommandLineError(f"-a {value}: {port_text!r} is not a port number")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        targets.append(ActiveTarget(endpoint))
    return targets


def read_host_list(value: str) -> list[str]:
    """
    C{-l}'s argument: the fork's help calls it a file of hosts, one a line,
    while its code (and libpcap's) takes the list itself; both are read.
    """
    text = value
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise CommandLineError(f"-l {value}: cannot read the host list: {e}") from None
        text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    hosts = [h for h in _split(text) if h]
    if not hosts:
        raise CommandLineError(f"-l {value}: no hosts in the list")
    return hosts


def _split(text: str) -> list[str]:
    for sep in _HOSTLIST_SEPARATORS[1:]:
        text = text.replace(sep, _HOSTLIST_SEPARATORS[0])
    return text.split(_HOSTLIST_SEPARATORS[0])


def _number(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandLineError(f"{flag} {text}: not a number") from None


def listen_endpoint(address: Optional[str], port: int, family: Optional[int]) -> str:
    """The endpoint string for C{-b ADDRESS -p PORT} with C{-4} or C{-6}."""
    if address:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            try:
                infos = socket.getaddrinfo(
                    address, port, family or socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
                )
            except OSError as e:
                raise CommandLineError(f"-b {address}: cannot resolve: {e}") from None
            ip = ipaddress.ip_address(str(infos[0][4][0]))
        if family == socket.AF_INET and ip.version == 6:
            raise CommandLineError(f"-4 and -b {address} (an IPv6 address) contradict each other")
        if ip.version == 6:
            return f"tcp6:{port}:interface={str(ip).replace(':', chr(92) + ':')}"
        return f"tcp:{port}:interface={ip}"
    if family == socket.AF_INET6:
        return f"tcp6:{port}:interface=\\:\\:"
    return f"tcp:{port}"


def translate(argv: list[str], is_root: Optional[bool] = None) -> Invocation:
    """
    The twistd command line for C{rpcapd ARGV}.

    @raise CommandLineError: a switch that is not the fork's, a bad value.
    """
    if is_root is None:
        is_root = os.geteuid() == 0
    try:
        opts, rest = getopt.getopt(argv, _OPTSTRING, _LONG_OPTIONS)
    except getopt.GetoptError as e:
        raise CommandLineError(f"{e} (rpcapd -h lists the switches)") from None
    if rest:
        raise CommandLineError(f"unexpected argument {rest[0]!r} (rpcapd -h lists the switches)")
    inv = Invocation()
    address: Optional[str] = None
    port = DEFAULT_PORT
    family: Optional[int] = None
    active: list[ActiveTarget] = []
    hosts: list[str] = []
    null_auth = False
    passive = True
    daemon = syslog = False
    config: Optional[str] = None
    mtu = FORK_MTU
    sndbuf = FORK_SNDBUF
    bufsize = FORK_BUFFER_SIZE
    args = inv.rpcapd_args
    for flag, value in opts:
        if flag == "-h":
            inv.help = True
            return inv
        elif flag == "-b":
            address = value
        elif flag == "-p":
            port = _number(flag, value)
            if not 0 < port < 65536:
                raise CommandLineError(f"-p {value}: not a port number")
        elif flag == "-4":
            family = socket.AF_INET
        elif flag == "-6":
            family = socket.AF_INET6
        elif flag == "-l":
            hosts.extend(read_host_list(value))
        elif flag == "-n":
            null_auth = True
        elif flag == "-a":
            active.extend(parse_active_list(value))
        elif flag == "-v":
            passive = False
        elif flag == "-d":
            daemon = True
        elif flag == "-L":
            syslog = True
        elif flag == "-s":
            inv.save_to = value
        elif flag == "-f":
            config = value
        elif flag == "-i":
            args += ["--interface", value]
        elif flag == "-t":
            mtu = _number(flag, value)
            if mtu > FORK_MAX_MTU:
                inv.notices.append(f"-t {mtu}: capped at {FORK_MAX_MTU}, as ExtraHop's rpcapd does")
                mtu = FORK_MAX_MTU
        elif flag == "-u":
            size = _number(flag, value)
            if size > 0:
                sndbuf = size
            else:
                inv.notices.append(f"-u {value}: not a size; the send buffer stays {sndbuf} bytes")
        elif flag == "-z":
            size = _number(flag, value)
            if size <= 0:
                raise CommandLineError(f"-z {value}: the capture buffer must be a positive size")
            bufsize = size
        elif flag == "-S":
            args.append("--log-stats")
        elif flag == "--metrics":
            args += ["--metrics", value]
        else:
            inv.notices.append(f"{flag}{' ' + value if value else ''} ignored ({_IGNORED[flag]})")

    inv.command_line_config = DaemonConfig(tuple(active), tuple(hosts), null_auth)
    if config is not None and not os.path.exists(config):
        # The fork keeps the command line's settings when the file is missing.
        inv.notices.append(f"-f {config}: no such file; running with the command line's settings")
        config = None
    if config is not None and (active or hosts):
        # The fork's file replaces -a and -l (even when it has no such lines).
        inv.notices.append(
            f"-a and -l replaced by the ActiveClient and PassiveClient lines of {config}, "
            "as in ExtraHop's rpcapd"
        )
        active, hosts = [], []
    if passive:
        args += ["--listen", listen_endpoint(address, port, family)]
    else:
        if address or port != DEFAULT_PORT or family:
            inv.notices.append("-b, -p, -4 and -6 ignored: -v accepts no passive clients")
        if not active and config is None:
            raise CommandLineError("-v (active only) needs a collector: -a HOST[,PORT] or -f FILE")
        args.append("--no-passive")
    for target in active:
        args += ["--active", target.endpoint]
    for host in hosts:
        args += ["--allow", host]
    if null_auth:
        args.append("--null-auth")
    # As the fork does, system accounts may log in (with or without -n).
    args += ["--auth", "unix"]
    if config is not None:
        args += ["--config", config]
    if mtu:
        args += ["--udp-mtu", str(mtu), "--udpstr-tcp"]
    # Datagrams sent one by one, as the fork sends them (a capture on this
    # host sees the same datagrams as the collector does).
    args += ["--udp-sndbuf", str(sndbuf), "--buffer-size", str(bufsize), "--no-udp-gso"]
    framing = f"udpstr at MTU {mtu} (-t 0 for classic)" if mtu else "classic, as libpcap's (-t 0)"
    inv.summary = (
        f"ExtraHop-style rpcapd: data framing {framing} on TCP and UDP; "
        f"capture buffer {bufsize} bytes (-z), UDP send buffer {sndbuf} bytes (-u)"
    )

    twistd = inv.twistd_args
    if daemon:
        run_dir = "/run" if is_root and os.path.isdir("/run") else "."
        twistd += ["--pidfile", os.path.join(run_dir, "rpcapd.pid")]
        if not syslog:
            log_dir = "/var/log" if is_root and os.path.isdir("/var/log") else "."
            twistd += ["--logfile", os.path.join(log_dir, "rpcapd.log")]
    else:
        twistd += ["--nodaemon", "--pidfile="]
    if syslog:
        twistd += ["--syslog", "--prefix", "rpcapd"]
    return inv


def save_config(path: str, config: DaemonConfig) -> None:
    """Write C{config} as rpcapd.ini (C{-s FILE})."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(format_config(config))
    except OSError as e:
        raise CommandLineError(f"-s {path}: cannot save the configuration: {e.strerror}") from None
    except ValueError as e:
        raise CommandLineError(f"-s {path}: {e}") from None


def _check(inv: Invocation) -> None:
    """Let C{twistd rpcapd} judge its options now, so a mistake is one line, not a usage screen."""
    from twisted.python.usage import UsageError

    from .tap import Options

    try:
        Options().parseOptions(list(inv.rpcapd_args))
    except (UsageError, ConfigError, ValueError) as e:
        raise CommandLineError(str(e)) from None


def main(argv: Optional[list[str]] = None, run: Optional[Callable[[], object]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        inv = translate(argv)
        if inv.help:
            sys.stdout.write(USAGE)
            return
        if inv.save_to:
            save_config(inv.save_to, inv.command_line_config)
        _check(inv)
    except CommandLineError as e:
        sys.stderr.write(f"rpcapd: {e}\n")
        raise SystemExit(2) from None

    from twisted.internet import reactor
    from twisted.logger import Logger

    log = Logger(namespace="rpcapd")
    reactor.callWhenRunning(log.info, "{summary}", summary=inv.summary)  # type: ignore[attr-defined]
    for notice in inv.notices:
        reactor.callWhenRunning(log.warn, "{notice}", notice=notice)  # type: ignore[attr-defined]
    sys.argv = ["rpcapd", *inv.twistd_args, "rpcapd", *inv.rpcapd_args]
    if run is None:
        from twisted.scripts.twistd import run as twistd_run

        run = twistd_run
    run()


if __name__ == "__main__":
    main()
