"""
Small helpers for log lines a person reads: where a peer is, and text a
peer sent, made safe to print on one line.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def host_port(host: str, port: int = 0) -> str:
    """
    C{host:port} as a person reads it: C{[v6addr]:port} for IPv6, the host
    alone when there is no port, C{local} when there is no host (a UNIX
    socket).
    """
    if not host:
        return "local"
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def escaped(text: str) -> str:
    """
    Text a peer sent (an interface name, an error message, a user name),
    safe on one log line: what is not UTF-8 as backslash escapes, and so
    are line breaks and other control characters.
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


__all__ = ["escaped", "host_port"]
