"""
The rpcapd.ini configuration file, read as ExtraHop's rpcapd reads it
(its C{rpcapd/fileconf.c} at 9b0a405: C{fileconf_read},
C{fileconf_parse_activeclient_kv}, C{ipaddr_spec_parse},
C{fileconf_select_ifname}; libpcap's rpcapd-config format with ExtraHop's
per-collector interface options), and written as its C{-s FILE} writes it
(C{fileconf_save}; L{format_config}).

    # one item a line; '#' starts a comment
    ActiveClient = collector.example, 2003
    ActiveClient = 10.0.0.5,DEFAULT,ifname=eth1
    ActiveClient = 10.0.0.5 2003 ifaddr=192.0.2.0/24
    ActiveClient = 10.0.0.6,2003,ifname=eth1,ifaddr=192.0.2.10
    PassiveClient = trusted-host.example, 10.0.0.0/8
    NullAuthPermit = YES

C{ActiveClient = HOST[,PORT][,ifname=IF][,ifaddr=ADDR[/PREFIX]]}: a
collector to connect out to.  Fields are separated by commas, semicolons or
white space.  PORT is a number, C{DEFAULT} (any case) or a TCP service name
(the fork hands it to getaddrinfo); without one the port is 2003 (the fork
crashes on a line with no port, and reads an option in the port's place as
the port, so never connects).  An IPv6 collector is written bare or as
C{[V6ADDR]}.

Choosing the interface, as the fork's C{fileconf_select_ifname} does:

  - C{ifname=IF} limits the collector's sessions to the interface named IF.
  - C{ifaddr=ADDR/PREFIX} limits them to the first interface (in the capture
    system's order) that has an address inside ADDR/PREFIX: ADDR's host bits
    do not matter (C{192.0.2.77/24} is C{192.0.2.0/24}), a plain ADDR means
    /32 or /128 (that very address), /0 any address of that family.  ADDR may
    carry an IPv6 zone (C{%eth0}, ignored) or be an old-style IPv4 form that
    getaddrinfo accepts (C{192.0.514}).  A prefix is read as C{atoi} reads it,
    so C{/24x} is /24 and C{/} or C{/abc} is /0 (with a warning).
  - Both together: the interface must have that name I{and} an address in
    that network (the fork requires both to match the same interface).
  - When no interface matches, the fork logs it and lets the collector open
    any interface; this daemon refuses every open until one matches (see
    L{RpcapServerFactory.preselected_interface}).  The fork matches once,
    when it reads the file; this daemon again for every session, so an
    address that moves is followed.
  - The last of several C{ifname=} (or C{ifaddr=}) options wins, as in the
    fork; option names are matched in any case (the fork: lower case only).
    An option that is unknown or has no value is ignored alone, with a
    warning; the fork then ignores all of the line's options and lets the
    collector open any interface.

C{PassiveClient = HOST[,HOST...]}: clients allowed to connect (names,
addresses, and here CIDR blocks too); lines add up.  C{NullAuthPermit = YES}
lets clients in without a password: C{YES}, and (in any case) C{yes},
C{true}, C{on} or C{1}, which ExtraHop's and libpcap's rpcapd read as NO
(they take C{YES} only, in capitals): a warning says so.  C{NO}, C{false},
C{off}, C{0} and anything else mean NO, with a warning for anything else.
The fork also permits it when C{YES} appears anywhere later on the line
(C{NO # YES}, C{NOT YES}); here that is NO, with a warning.  The last
such line wins.

How lines are read, against the fork:

  - Lines end at LF; a trailing CR is dropped.  The fork reads lines of up
    to 2047 characters and takes the rest of a longer line as a new line;
    here lines have no length limit.
  - C{#} starts a comment anywhere: at the start of a line, after
    indentation, or after a value.  The fork knows only a C{#} in the first
    column; elsewhere it is part of the line, so it reads an indented
    C{# ActiveClient = x} as a collector, reads a trailing comment after an
    ActiveClient as options it cannot parse (and then ignores the line's
    ifname/ifaddr), and finds a C{YES} in a comment after NullAuthPermit.
  - Leading, trailing and surrounding white space (tabs included) does not
    matter.  The fork's separators are space, comma and semicolon, not tab,
    and spaces around an option's C{=} make it ignore the option; here
    C{ifname = eth1} is C{ifname=eth1}.
  - Setting names are matched in any case (the fork: exactly as spelled).
    Like the fork, a name that contains one of the three (C{ActiveClients},
    C{;ActiveClient}) is read as that setting, with a warning.  The fork
    looks for the name anywhere on the line, value included; here only
    before the C{=}.
  - The fork reads C{NullAuthPermit YES} without C{=}; so does this parser,
    for every setting (the fork crashes on an ActiveClient or PassiveClient
    line without one), with a warning.
  - The fork uses the first 10 ActiveClient lines and ignores the rest;
    here there is no limit.  PassiveClient hosts have no length limit either
    (the fork's list holds 64000 characters).
  - Files need not be UTF-8: other bytes are read as Latin-1, with a warning.
    A UTF-8 byte-order mark is skipped.

Warnings and errors.  What the fork ignores is ignored here too and
collected as a warning naming the file and line, in
L{DaemonConfig.warnings}, for the caller to log: unknown settings, lines
that are not settings, unknown or empty ActiveClient options, a
PassiveClient without a host, NullAuthPermit values other than YES and NO
or read otherwise by the fork.
A line that cannot be used raises L{ConfigError} naming the file and line:
an ActiveClient without a host (the fork keeps an empty entry that ends its
list of collectors), a port that is neither a number from 1 to 65535 nor a
service name (the fork never connects), an C{ifaddr} that is not an address
or whose prefix is out of range (the fork logs an error and lets the
collector open any interface, which this daemon never does).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Optional, Union

import attrs

DEFAULT_ACTIVE_PORT = 2003

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class ConfigError(ValueError):
    """A configuration line that cannot be used; the message names it."""


def interface_network(value: Union[str, Network, _Address]) -> Network:
    """
    An C{ifaddr} as a network: C{ADDR/PREFIX} (host bits allowed), a plain
    address (/32 or /128), an address with an IPv6 zone, or an C{ipaddress}
    address or network.

    @raise ValueError: anything else.
    """
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    address, slash, prefix = str(value).strip().partition("/")
    address = address.split("%", 1)[0]
    return ipaddress.ip_network(address + slash + prefix, strict=False)


def _network_text(value: Union[None, str, Network, _Address]) -> Optional[str]:
    return None if value is None else str(interface_network(value))


def _describe_network(network: Network) -> str:
    if network.prefixlen == network.max_prefixlen:
        return f"address {network.network_address}"
    return f"an address in {network}"


@attrs.frozen
class ActiveTarget:
    """One collector the daemon connects out to."""

    endpoint: str
    """A Twisted client endpoint string, or C{HOST[:PORT]} / C{[V6ADDR]:PORT}."""
    ifname: Optional[str] = None
    """Sessions may open only the interface of this name."""
    ifaddr: Optional[str] = attrs.field(default=None, converter=_network_text)
    """
    Sessions may open only an interface with an address in this network
    (and named C{ifname}, if that is given too).  Given as C{ADDR[/PREFIX]}
    or an C{ipaddress} address or network; kept as the network's text
    (C{"192.0.2.0/24"}, C{"192.0.2.10/32"}).
    """

    @property
    def ifaddr_network(self) -> Optional[Network]:
        return None if self.ifaddr is None else ipaddress.ip_network(self.ifaddr)

    def describe(self) -> str:
        network = self.ifaddr_network
        if network is None:
            return f"{self.endpoint} (interface {self.ifname})" if self.ifname else self.endpoint
        interface = f"interface {self.ifname}" if self.ifname else "interface"
        return f"{self.endpoint} ({interface} with {_describe_network(network)})"


@attrs.frozen
class DaemonConfig:
    active: tuple[ActiveTarget, ...] = ()
    passive_clients: tuple[str, ...] = ()
    null_auth: Optional[bool] = None
    """C{None} when the file does not say."""
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False)
    """
    What was ignored or read in an unusual way, each naming the file and
    line, for the caller to log.  Not part of equality: two readings of
    the same settings are the same configuration.
    """


_SEPARATORS = re.compile(r"[\s,;]+")
_SPACED_EQUALS = re.compile(r"\s*=\s*")
_FIRST_WORD = re.compile(r"([^\s,;]*)(.*)", re.DOTALL)
_ATOI = re.compile(r"\s*([+-]?[0-9]*)")

ACTIVE_CLIENT = "ActiveClient"
PASSIVE_CLIENT = "PassiveClient"
NULL_AUTH_PERMIT = "NullAuthPermit"
_SETTINGS = (ACTIVE_CLIENT, PASSIVE_CLIENT, NULL_AUTH_PERMIT)  # in the order the fork tries them


def _setting(name: str) -> tuple[Optional[str], bool]:
    """The setting C{name} stands for, and whether only because it contains it."""
    for setting in _SETTINGS:
        if name.lower() == setting.lower():
            return setting, False
    for setting in _SETTINGS:
        if setting in name:
            return setting, True
    return None, False


def _parse_port(text: str, where: str) -> int:
    if text.upper() == "DEFAULT":
        return DEFAULT_ACTIVE_PORT
    if re.fullmatch(r"[0-9]+", text):
        port = int(text)
        if not 0 < port < 65536:
            raise ConfigError(f"{where}: port {port} is out of range")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, ValueError):
        raise ConfigError(f"{where}: {text!r} is not a port number (nor a TCP service name)") from None


def _parse_address(text: str) -> Optional[_Address]:
    """An address as getaddrinfo with AI_NUMERICHOST reads it, or C{None}."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if ":" in text:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))  # 192.0.514, 0300.0.2.2
    except (OSError, ValueError):
        return None


def _parse_ifaddr(text: str, where: str, warnings: list[str]) -> Network:
    address_text, slash, prefix_text = text.partition("/")
    address = _parse_address(address_text)
    if address is None:
        raise ConfigError(f"{where}: ifaddr={text!r} is not an IP address")
    prefix: int = address.max_prefixlen
    if slash:
        match = _ATOI.match(prefix_text)
        digits = match[1] if match else ""
        prefix = int(digits) if digits.lstrip("+-") else 0
        if digits != prefix_text or not digits.lstrip("+-"):
            warnings.append(
                f"{where}: ifaddr prefix {'/' + prefix_text!r} read as /{prefix},"
                " as ExtraHop's rpcapd reads it"
            )
        if not 0 <= prefix <= address.max_prefixlen:
            raise ConfigError(f"{where}: ifaddr={text}: prefix /{prefix} is out of range")
    return ipaddress.ip_network((address, prefix), strict=False)


def _parse_active(value: str, where: str, warnings: list[str]) -> ActiveTarget:
    fields = [f for f in _SEPARATORS.split(_SPACED_EQUALS.sub("=", value.strip())) if f]
    if not fields:
        raise ConfigError(f"{where}: ActiveClient needs a host")
    host = fields[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [V6ADDR], as on the command line
    if "=" in host:
        raise ConfigError(f"{where}: ActiveClient needs a host before {fields[0]!r}")
    if not host or "[" in host or "]" in host:
        raise ConfigError(f"{where}: {fields[0]!r} is not a host name or address")
    port = DEFAULT_ACTIVE_PORT
    ifname: Optional[str] = None
    ifaddr: Optional[Network] = None
    rest = fields[1:]
    if rest and "=" not in rest[0]:
        port = _parse_port(rest[0], where)
        rest = rest[1:]
    for item in rest:
        key, sep, val = item.partition("=")
        option = key.lower()
        if not sep:
            warnings.append(
                f"{where}: {item!r} is not an ActiveClient option "
                "(ifname=NAME or ifaddr=ADDRESS[/PREFIX]); ignored"
            )
        elif option not in ("ifname", "ifaddr"):
            warnings.append(f"{where}: unknown ActiveClient option {key!r} ignored")
        elif not val:
            warnings.append(f"{where}: {key}= without a value ignored")
        elif option == "ifname":
            ifname = val
        else:
            ifaddr = _parse_ifaddr(val, where, warnings)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ActiveTarget(target, ifname, ifaddr)


_NO_WORDS = ("no", "false", "off", "0")


def _parse_null_auth(value: str, raw: str, where: str, warnings: list[str]) -> bool:
    setting = value.strip()
    words = setting.split()
    # ExtraHop's and libpcap's rpcapd permit it for YES only, in capitals.
    strict = bool(words) and words[0] == "YES"
    permit = strict  # fail closed: a value the real daemons read as NO never widens access here
    # The fork looks for YES anywhere after the name, comments included.
    at = raw.find(NULL_AUTH_PERMIT)
    fork_permits = strict if at < 0 else "YES" in raw[at:]
    if fork_permits == permit and (strict or setting.lower() in _NO_WORDS):
        return permit
    message = f"{where}: NullAuthPermit {setting!r} read as {'YES' if permit else 'NO'}"
    if not permit and setting.lower() not in _NO_WORDS:
        message += " (only YES permits null authentication)"
    if fork_permits != permit and permit:
        message += "; ExtraHop's rpcapd reads it as NO (it takes only YES, in capitals)"
    elif fork_permits != permit:
        message += (
            "; ExtraHop's rpcapd reads this line as YES"
            " (it looks for YES anywhere after the name, comments included)"
        )
    warnings.append(message)
    return permit


def parse_config(text: str, source: str = "<config>") -> DaemonConfig:
    """
    The settings in C{text}, an rpcapd.ini read from C{source} (which
    names it in messages); see the module's description.

    @raise ConfigError: a line that cannot be used.
    """
    active: list[ActiveTarget] = []
    passive: list[str] = []
    null_auth: Optional[bool] = None
    warnings: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        where = f"{source}, line {number}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            match = _FIRST_WORD.match(line)
            assert match is not None  # it matches any text
            name, value = match[1], match[2]
        setting, contained = _setting(name)
        if setting is None:
            if sep:
                warnings.append(f"{where}: unknown setting {name!r} ignored")
            else:
                warnings.append(f"{where}: {line!r} is not a setting (Name = value); ignored")
            continue
        if contained:
            warnings.append(f"{where}: {name!r} read as {setting}, as ExtraHop's rpcapd reads it")
        if not sep:
            warnings.append(f"{where}: no '=' after {name}; read as {setting} = {value.strip()}")
        if setting == ACTIVE_CLIENT:
            active.append(_parse_active(value, where, warnings))
        elif setting == PASSIVE_CLIENT:
            hosts = [h for h in _SEPARATORS.split(value.strip()) if h]
            if not hosts:
                warnings.append(f"{where}: PassiveClient without a host ignored")
            passive.extend(hosts)
        else:
            null_auth = _parse_null_auth(value, raw, where, warnings)
    return DaemonConfig(tuple(active), tuple(passive), null_auth, tuple(warnings))


def read_config(path: str) -> DaemonConfig:
    """
    The settings in the file at C{path}, with warnings naming it.

    @raise ConfigError: the file cannot be read, or has a line that cannot be used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    try:
        text = data.decode("utf-8-sig")
        decoding: tuple[str, ...] = ()
    except UnicodeDecodeError as e:
        text = data.decode("latin-1")
        decoding = (f"{path}: not UTF-8 text (byte {e.start}); read as Latin-1",)
    config = parse_config(text, path)
    return attrs.evolve(config, warnings=decoding + config.warnings)


# --- writing -------------------------------------------------------------------------


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    """C{HOST[:PORT]} or C{[V6ADDR][:PORT]} as host and port."""
    match = re.fullmatch(r"\[([^\[\]]+)\](?::([0-9]+))?|([^\[\]:]+)(?::([0-9]+))?", endpoint)
    if match is None:
        raise ValueError(f"collector {endpoint!r} cannot be written to rpcapd.ini: not HOST:PORT")
    host = match[1] or match[3]
    port = match[2] or match[4]
    return host, int(port) if port else DEFAULT_ACTIVE_PORT


def _format_active(target: ActiveTarget) -> str:
    host, port = _split_endpoint(target.endpoint)
    fields = [host, str(port)]
    if target.ifname is not None:
        fields.append(f"ifname={target.ifname}")
    network = target.ifaddr_network
    if network is not None:
        shown = network.network_address if network.prefixlen == network.max_prefixlen else network
        fields.append(f"ifaddr={shown}")
    value = ", ".join(fields)
    # Whatever is written must read back as the same collector, and silently.
    warnings: list[str] = []
    try:
        reread = _parse_active(value, "", warnings)
    except ConfigError:
        reread = None
    expected = attrs.evolve(target, endpoint=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if reread != expected or warnings or "#" in value:
        raise ValueError(f"collector {target.describe()!r} cannot be written to rpcapd.ini")
    return f"{ACTIVE_CLIENT} = {value}"


def format_config(config: DaemonConfig) -> str:
    """
    C{config} as an rpcapd.ini, in the layout ExtraHop's rpcapd writes with
    C{-s FILE} (its C{fileconf_save}: the same header comments, one
    C{PassiveClient} line per host, C{ActiveClient = HOST, PORT}), plus the
    C{ifname=} and C{ifaddr=} options the fork reads but does not write.
    C{parse_config(format_config(c)) == c}, and reads back without warnings;
    a collector given without a port is written with port 2003.  With
    C{null_auth} C{None} no NullAuthPermit line is written.  Warnings are
    not written.

    @raise ValueError: a collector that is not C{HOST[:PORT]} (a Twisted
        endpoint string such as C{tls:...}), or a host or interface name
        that would not read back the same (separators, C{#}, brackets).
    """
    out = [
        "# Configuration file help.\n\n",
        "# Hosts which are allowed to connect to this server (passive mode)\n",
        f"# Format: {PASSIVE_CLIENT} = <name or address>\n\n",
    ]
    for host in config.passive_clients:
        if not host or _SEPARATORS.search(host) or "#" in host:
            raise ValueError(f"passive client {host!r} cannot be written to rpcapd.ini")
        out.append(f"{PASSIVE_CLIENT} = {host}\n")
    out += [
        "\n\n",
        "# Hosts to which this server is trying to connect to (active mode)\n",
        f"# Format: {ACTIVE_CLIENT} = <name or address>, <port | DEFAULT>\n\n",
    ]
    for target in config.active:
        out.append(_format_active(target) + "\n")
    out += ["\n\n", "# Permit NULL authentication: YES or NOT\n\n"]
    if config.null_auth is not None:
        out.append(f"{NULL_AUTH_PERMIT} = {'YES' if config.null_auth else 'NO'}\n")
    return "".join(out)
