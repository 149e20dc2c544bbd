"""
Small helpers for log lines and terminal lines a person reads: where a peer
is, and text a peer sent, made safe to print on one line.
"""

from __future__ import annotations

from typing import Union

PEER_TEXT_LIMIT = 512
"""Bytes of a peer's text shown (an interface name, an error message); the rest is cut and counted."""

_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_SHOWN = [chr(b) if 0x20 <= b < 0x7F else _NAMED.get(b, f"\\x{b:02x}") for b in range(256)]
"""How each byte is shown: printable ASCII as itself, as tcpdump prints, everything else escaped."""


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


def _bytes_of(text: Union[str, bytes]) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8", "surrogateescape")  # the peer's own bytes back
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def escaped(text: Union[str, bytes], limit: int = PEER_TEXT_LIMIT) -> str:
    """
    Text a peer sent (an interface name, an error message, a user name),
    safe on one line of a log or a terminal, as tcpdump prints what it
    did not write itself: printable ASCII as it is, C{\\n}, C{\\r}, C{\\t},
    and C{\\xNN} for every other byte of its UTF-8 (or its own bytes, where
    they were not UTF-8), so no escape sequence, line break or lookalike
    character reaches the reader.  Past C{limit} bytes it is cut, and says
    how long it was.
    """
    raw = _bytes_of(text)
    shown = "".join(_SHOWN[b] for b in raw[:limit])
    if len(raw) > limit:
        shown += f"...({len(raw)} bytes)"
    return shown


__all__ = ["PEER_TEXT_LIMIT", "escaped", "host_port"]
