"""
The RPCAP wire format, with no I/O: messages, control-stream framing,
data-channel framing and BPF programs.  Shared by the daemon and the collector.
"""

from .datachannel import CapturedPacket, PacketBatch, encode_packet_messages
from .framing import ControlStreamParser, MessageTooLarge, Received
from .wire import *  # noqa: F401,F403

__all__ = [
    "CapturedPacket",
    "ControlStreamParser",
    "MessageTooLarge",
    "PacketBatch",
    "Received",
    "encode_packet_messages",
]
