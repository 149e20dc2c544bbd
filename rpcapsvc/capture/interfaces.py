"""
Interface listing for findalldevs: libpcap's names (so every device libpcap
can open is listed, pseudo-devices included), with flags and IPv4/IPv6
addresses from psutil.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Optional

from ..protocol.wire import InterfaceAddress, InterfaceFlags, InterfaceInfo, IPAddress

# libpcap's descriptions of Linux pseudo-devices.
_DESCRIPTIONS = {
    "any": "Pseudo-device that captures on all interfaces",
    "nflog": "Linux netfilter log (NFLOG) interface",
    "nfqueue": "Linux netfilter queue (NFQUEUE) interface",
    "dbus-system": "D-Bus system bus",
    "dbus-session": "D-Bus session bus",
    "bluetooth-monitor": "Bluetooth Linux Monitor",
}


def _address(text: Optional[str]) -> Optional[IPAddress]:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _flags(name: str, stats: object) -> int:
    flags = 0
    words = set(getattr(stats, "flags", "").split(",")) if stats is not None else set()
    if "loopback" in words:
        flags |= InterfaceFlags.LOOPBACK
    if stats is not None and getattr(stats, "isup", False):
        flags |= InterfaceFlags.UP
    if "running" in words:
        flags |= InterfaceFlags.RUNNING
    if "loopback" in words or name == "any" or stats is None:
        flags |= InterfaceFlags.CONNECTION_STATUS_NOT_APPLICABLE
    elif "running" in words:
        flags |= InterfaceFlags.CONNECTION_STATUS_CONNECTED
    else:
        flags |= InterfaceFlags.CONNECTION_STATUS_DISCONNECTED
    if name == "any":
        flags |= InterfaceFlags.UP | InterfaceFlags.RUNNING
    return flags


def list_interfaces() -> list[InterfaceInfo]:
    import pcapy
    import psutil

    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    out = []
    for name in pcapy.findalldevs():
        records = []
        for a in addrs.get(name, ()):
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = _address(a.address)
            if address is None:
                continue
            scope_id = 0
            if address.version == 6 and address.is_link_local:
                try:
                    scope_id = socket.if_nametoindex(name)
                except OSError:
                    scope_id = 0
            records.append(
                InterfaceAddress(
                    address,
                    _address(a.netmask),
                    _address(a.broadcast),
                    _address(a.ptp),
                    scope_id,
                )
            )
        out.append(
            InterfaceInfo(name, _DESCRIPTIONS.get(name, ""), _flags(name, stats.get(name)), tuple(records))
        )
    return out
