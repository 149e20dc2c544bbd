"""
What a daemon has forwarded and lost, for its metrics (L{rpcapsvc.server.metrics}).

Nothing here is counted per packet.  A running capture's counts are read
when they are asked for, from its data channel (packets and bytes sent,
datagrams refused) and from the last counters libpcap reported for it (a
client's stats request, or the final ones at close): libpcap is never
called for the metrics.  When a capture ends, what it counted moves into
the service's L{ServiceCounters}, so the totals outlive the sessions.
"""

from __future__ import annotations

from typing import Optional

import attrs

from ..capture.system import CaptureStats


@attrs.define
class ForwardingCounts:
    """What one capture, or many, forwarded and lost."""

    packets: int = 0
    """Packets handed to the data channel."""
    bytes: int = 0
    """Bytes written to the data channel: RPCAP packet messages (or udpstr datagrams), headers included."""
    send_dropped: int = 0
    """Packets the data channel could not send (UDP datagrams the kernel or the network refused)."""
    kernel_dropped: int = 0
    """libpcap's C{ps_drop}: packets the capture's kernel buffer had no room for."""
    interface_dropped: int = 0
    """libpcap's C{ps_ifdrop}: packets the interface dropped."""
    sampled_out: int = 0
    """Packets read but not forwarded because the client asked for sampling (not a loss)."""

    def add(self, other: ForwardingCounts) -> None:
        self.packets += other.packets
        self.bytes += other.bytes
        self.send_dropped += other.send_dropped
        self.kernel_dropped += other.kernel_dropped
        self.interface_dropped += other.interface_dropped
        self.sampled_out += other.sampled_out


def capture_counts(sink: object, stats: Optional[CaptureStats]) -> ForwardingCounts:
    """The counts of a capture with this data channel (C{None}: none yet) and these last libpcap counters."""
    counts = ForwardingCounts()
    if sink is not None:
        counts.packets = int(getattr(sink, "sent", 0))
        counts.bytes = int(getattr(sink, "bytes_sent", 0))  # an embedder's own sink may not count bytes
        counts.send_dropped = int(getattr(sink, "dropped", 0))
    if stats is not None:
        counts.kernel_dropped = stats.dropped
        counts.interface_dropped = stats.interface_dropped
    return counts


@attrs.define
class ServiceCounters:
    """
    A service's totals that outlive its sessions: what its ended captures
    forwarded and lost, and the logins that failed.  Shared by every session
    of the service; a running capture's counts are added at scrape time
    (L{rpcapsvc.server.metrics}).
    """

    ended: ForwardingCounts = attrs.field(factory=ForwardingCounts)
    """Every ended capture's counts."""
    auth_failures: int = 0
    """Logins refused: a wrong password, an unknown user, null auth where it is not allowed."""

    def capture_ended(self, counts: ForwardingCounts) -> None:
        """A capture stopped, having counted C{counts} (with the last libpcap counters it reported)."""
        self.ended.add(counts)

    def capture_closed(self, counted: ForwardingCounts, final: Optional[CaptureStats]) -> None:
        """
        Its handle closed with C{final} counters (C{None}: libpcap had none):
        add what they have beyond what L{capture_ended} counted, so the
        totals never go down.
        """
        if final is None:
            return
        self.ended.kernel_dropped += max(0, final.dropped - counted.kernel_dropped)
        self.ended.interface_dropped += max(0, final.interface_dropped - counted.interface_dropped)
