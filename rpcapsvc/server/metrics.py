"""
The daemon's metrics: a C{prometheus_client} collector that reads an
L{RpcapdService}'s state when it is scraped (docs/monitoring.md).

Labels stay bounded: sessions are counted by state, never named by client;
collectors are named by their C{--active} target (or C{ActiveClient} line),
so there are as many as the configuration has.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .counters import ForwardingCounts
from .session import SessionState

if TYPE_CHECKING:
    from ..service import RpcapdService

_LABELS = {
    SessionState.AUTHENTICATING: "awaiting_auth",
    SessionState.READY: "ready",
    SessionState.OPEN: "opened",
    SessionState.STARTING: "capturing",
    SessionState.CAPTURING: "capturing",
    SessionState.CLOSING: "opened",
}

SESSION_STATES = tuple(dict.fromkeys(_LABELS.values()))
"""The labels a session is counted under (a closed session is gone from the service)."""

DROP_PLACES = ("kernel", "interface", "send")


def state_label(state: SessionState) -> str:
    """A session state's label (the labels predate STARTING and CLOSING, which count as capturing and opened)."""
    return _LABELS.get(state, state.value)


class DaemonMetrics:
    """The metrics of one L{RpcapdService}, read from it at each scrape."""

    def __init__(self, service: RpcapdService) -> None:
        self.service = service

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def _families(self) -> dict[str, Any]:
        return {
            "sessions": GaugeMetricFamily(
                "rpcapd_sessions",
                "Control sessions open now, passive and active, by state "
                "(awaiting_auth: not logged in yet; ready: logged in; opened: an interface open; "
                "capturing).",
                labels=["state"],
            ),
            "packets": CounterMetricFamily(
                "rpcapd_packets_forwarded",
                "Captured packets handed to data channels, by every capture the daemon has run.",
            ),
            "bytes": CounterMetricFamily(
                "rpcapd_bytes_forwarded",
                "Bytes written to data channels: RPCAP packet messages or udpstr datagrams, "
                "their headers included (not TCP/UDP/IP headers).",
            ),
            "dropped": CounterMetricFamily(
                "rpcapd_packets_dropped",
                "Packets lost on the daemon's side: kernel (the capture buffer was full), "
                "interface (dropped by the interface), send (UDP datagrams refused). Kernel and "
                "interface drops of a running capture are those libpcap last reported to its client.",
                labels=["where"],
            ),
            "sampled_out": CounterMetricFamily(
                "rpcapd_packets_sampled_out",
                "Captured packets not forwarded because the client asked for sampling (RPCAP "
                "setsampling): skipped on purpose, not lost.",
            ),
            "auth": CounterMetricFamily(
                "rpcapd_auth_failures",
                "Logins refused: a wrong password, an unknown user, null authentication where it is "
                "not allowed.",
            ),
            "connected": GaugeMetricFamily(
                "rpcapd_collector_connected",
                "1 while the daemon has a session with this collector (active mode), 0 otherwise.",
                labels=["collector"],
            ),
            "reconnects": CounterMetricFamily(
                "rpcapd_collector_reconnects",
                "Times the daemon dialled this collector again, after a failed attempt or an ended session.",
                labels=["collector"],
            ),
        }

    def collect(self) -> Iterator[Metric]:
        service = self.service
        families = self._families()
        states: Counter[str] = Counter()
        totals = ForwardingCounts()
        totals.add(service.counters.ended)
        connected_factories: set[int] = set()
        for protocol in list(service.sessions):
            session = getattr(protocol, "session", None)
            if session is None:
                continue
            states[state_label(session.state)] += 1
            if getattr(protocol, "active", False) and session.state is not SessionState.CLOSED:
                connected_factories.add(id(protocol.factory))
            capture = session.capture
            if capture is not None:
                totals.add(capture.counts())
        for label in SESSION_STATES:
            families["sessions"].add_metric([label], states[label])
        families["packets"].add_metric([], totals.packets)
        families["bytes"].add_metric([], totals.bytes)
        dropped = {
            "kernel": totals.kernel_dropped,
            "interface": totals.interface_dropped,
            "send": totals.send_dropped,
        }
        for where in DROP_PLACES:
            families["dropped"].add_metric([where], dropped[where])
        families["sampled_out"].add_metric([], totals.sampled_out)
        families["auth"].add_metric([], service.counters.auth_failures)
        # Two targets could describe themselves alike: one series for both, never a duplicate.
        connected: dict[str, int] = {}
        reconnects: dict[str, int] = {}
        for target, factory in list(service.collector_factories.items()):
            label = target.describe()
            connected[label] = max(connected.get(label, 0), int(id(factory) in connected_factories))
            policy = factory.reconnect
            reconnects[label] = reconnects.get(label, 0) + (policy.reconnects if policy is not None else 0)
        for label in connected:
            families["connected"].add_metric([label], connected[label])
            families["reconnects"].add_metric([label], reconnects[label])
        return iter(families.values())
