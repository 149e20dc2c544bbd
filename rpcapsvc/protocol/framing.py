"""
Incremental framing of an RPCAP control stream.

L{ControlStreamParser} is fed bytes as they arrive and returns the messages
they complete.  It buffers at most one message (bounded by
C{max_payload}), and knows libpcap's client quirk: a startcap sent with no
filter set promises one more BPF instruction than its header's length covers,
so a tolerant reader takes the instructions the filter block promised.
"""

from __future__ import annotations

from typing import Optional

import attrs

from .wire import (
    BPF_INSN,
    FILTER_HEADER,
    HEADER,
    HEADER_SIZE,
    MAX_BPF_INSTRUCTIONS,
    Header,
    MalformedMessage,
    Message,
    MessageType,
    decode_message,
)

DEFAULT_MAX_PAYLOAD = 256 * 1024
"""Generous for a full 8192-instruction filter plus headers (65,556 bytes)."""

_STARTCAP_FIXED = 12


class MessageTooLarge(MalformedMessage):
    """
    A header announced more payload than the parser is allowed to buffer.
    The stream cannot be followed past it: the parser stops there.
    """

    def __init__(self, header: Header, limit: int) -> None:
        super().__init__(f"message of {header.length} bytes exceeds the limit of {limit}")
        self.header = header
        self.limit = limit


@attrs.frozen
class Received:
    """One framed message: decoded, or the reason it could not be."""

    header: Header
    message: Optional[Message]
    error: Optional[MalformedMessage] = None


def _quirk_extra(header: Header, payload: "bytes | bytearray | memoryview") -> int:
    """
    How many bytes past C{plen} a startcap's filter block claims; 0 unless
    this is libpcap's short-length startcap.
    """
    if header.type != MessageType.STARTCAP_REQ:
        return 0
    if len(payload) < _STARTCAP_FIXED + FILTER_HEADER.size:
        return 0
    _, _, nitems = FILTER_HEADER.unpack_from(payload, _STARTCAP_FIXED)
    if nitems > MAX_BPF_INSTRUCTIONS:
        return 0  # the decoder reports it; do not wait for it
    promised = _STARTCAP_FIXED + FILTER_HEADER.size + nitems * BPF_INSN.size
    return max(0, promised - len(payload))


class ControlStreamParser:
    """Frames an RPCAP control stream into L{Received} messages."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.broken = False
        self._buffer = bytearray()

    def _break(self, out: list[Received], error: MessageTooLarge) -> list[Received]:
        self.broken = True
        self._buffer.clear()
        out.append(Received(error.header, None, error))
        return out

    def limit_for(self, header: Header) -> int:
        """The most payload a message with this header may carry (a client bounds each reply type)."""
        return self.max_payload

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Received]:
        """
        Add C{data}; return every message now complete, in order.

        A header announcing an oversized payload ends the list with a
        L{Received} whose error is L{MessageTooLarge}; the parser then
        discards everything it is fed, since the stream cannot be followed.
        """
        if self.broken:
            return []
        self._buffer += data
        out: list[Received] = []
        while len(self._buffer) >= HEADER_SIZE:
            header = Header(*HEADER.unpack_from(self._buffer))
            limit = self.limit_for(header)
            if header.length > limit:
                return self._break(out, MessageTooLarge(header, limit))
            end = HEADER_SIZE + header.length
            if len(self._buffer) < end:
                break
            extra = _quirk_extra(header, memoryview(self._buffer)[HEADER_SIZE:end])
            if extra:
                if header.length + extra > self.max_payload:
                    # What the filter header promises is over the limit too.
                    return self._break(
                        out,
                        MessageTooLarge(attrs.evolve(header, length=header.length + extra), self.max_payload),
                    )
                if len(self._buffer) < end + extra:
                    break
                end += extra
            payload = bytes(self._buffer[HEADER_SIZE:end])
            del self._buffer[:end]
            try:
                out.append(Received(header, decode_message(header, payload)))
            except MalformedMessage as e:
                out.append(Received(header, None, e))
        return out
