"""
The rpcapd.ini configuration file: libpcap's rpcapd-config format with
ExtraHop's per-collector interface extensions.

    # one item a line; '#' starts a comment
    ActiveClient = collector.example,2003
    ActiveClient = 10.0.0.5,2003,ifname=eth1
    ActiveClient = 10.0.0.5 2003 ifaddr=192.0.2.10
    PassiveClient = trusted-host.example
    NullAuthPermit = YES

Keys are matched without regard to case; host and port are separated by
commas, spaces or semicolons, as libpcap's parser allows.  A line that cannot
be used raises L{ConfigError} naming the file and line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

import attrs

DEFAULT_ACTIVE_PORT = 2003


class ConfigError(ValueError):
    """A configuration line that cannot be used; the message names it."""


@attrs.frozen
class ActiveTarget:
    """One collector the daemon connects out to."""

    endpoint: str
    """A Twisted client endpoint string, or C{HOST[:PORT]} / C{[V6ADDR]:PORT}."""
    ifname: Optional[str] = None
    ifaddr: Optional[str] = None

    def describe(self) -> str:
        extra = f" (interface {self.ifname})" if self.ifname else ""
        extra = f" (interface with address {self.ifaddr})" if self.ifaddr else extra
        return self.endpoint + extra


@attrs.frozen
class DaemonConfig:
    active: tuple[ActiveTarget, ...] = ()
    passive_clients: tuple[str, ...] = ()
    null_auth: Optional[bool] = None
    """C{None} when the file does not say."""


_SEPARATORS = re.compile(r"[\s,;]+")


def _parse_active(value: str, where: str) -> ActiveTarget:
    fields = [f for f in _SEPARATORS.split(value.strip()) if f]
    if not fields:
        raise ConfigError(f"{where}: ActiveClient needs a host")
    host = fields[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [V6ADDR], as on the command line
    if not host or "[" in host or "]" in host:
        raise ConfigError(f"{where}: {fields[0]!r} is not a host name or address")
    port = DEFAULT_ACTIVE_PORT
    ifname = ifaddr = None
    rest = fields[1:]
    if rest and "=" not in rest[0]:
        try:
            port = int(rest[0])
        except ValueError:
            raise ConfigError(f"{where}: {rest[0]!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ConfigError(f"{where}: port {port} is out of range")
        rest = rest[1:]
    for item in rest:
        key, sep, val = item.partition("=")
        key = key.strip().lower()
        if not sep or not val:
            raise ConfigError(f"{where}: expected ifname=NAME or ifaddr=ADDRESS, not {item!r}")
        if key == "ifname":
            ifname = val
        elif key == "ifaddr":
            try:
                ipaddress.ip_address(val)
            except ValueError:
                raise ConfigError(f"{where}: ifaddr={val!r} is not an IP address") from None
            ifaddr = val
        else:
            raise ConfigError(f"{where}: unknown ActiveClient option {key!r}")
    if ifname and ifaddr:
        raise ConfigError(f"{where}: give ifname= or ifaddr=, not both")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ActiveTarget(target, ifname, ifaddr)


def _parse_bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in ("yes", "true", "1", "on"):
        return True
    if v in ("no", "false", "0", "off"):
        return False
    raise ConfigError(f"{where}: NullAuthPermit must be YES or NO, not {value.strip()!r}")


def parse_config(text: str, source: str = "<config>") -> DaemonConfig:
    active: list[ActiveTarget] = []
    passive: list[str] = []
    null_auth: Optional[bool] = None
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{source}, line {number}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected 'Name = value', got {raw.strip()!r}")
        key = key.strip().lower()
        if key == "activeclient":
            active.append(_parse_active(value, where))
        elif key == "passiveclient":
            hosts = [h for h in _SEPARATORS.split(value.strip()) if h]
            if not hosts:
                raise ConfigError(f"{where}: PassiveClient needs a host")
            passive.extend(hosts)
        elif key == "nullauthpermit":
            null_auth = _parse_bool(value, where)
        else:
            raise ConfigError(f"{where}: unknown setting {key!r}")
    return DaemonConfig(tuple(active), tuple(passive), null_auth)


def read_config(path: str) -> DaemonConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text: {e}") from e
    return parse_config(text, path)
