"""
The collector's metrics: a C{prometheus_client} collector that reads a
L{CollectorService}'s state when it is scraped (docs/monitoring.md).

Packets written and lost are counted per daemon (its address, never its
port) and interface.  A hostile daemon can make up interface names (the
collector captures a daemon's first interface unless told which), so the
series are kept in a L{SeriesTable} of bounded size: past L{MAX_SERIES}, the
series updated longest ago with no session running is forgotten (its
counters start again from 0 should that daemon and interface come back).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterator

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from .service import CollectorService

MAX_SERIES = 1000
"""The most (daemon, interface) series kept; see L{SeriesTable}."""

MAX_LABEL = 128
"""Interface names longer than this are cut, in the labels only."""

SeriesKey = tuple[str, str]


def series_key(daemon: str, interface: str) -> SeriesKey:
    return daemon, interface[:MAX_LABEL]


@attrs.define(eq=False)
class SeriesTotals:
    """What the ended sessions of one daemon and interface wrote and lost."""

    written: int = 0
    lost: int = 0
    live: int = 0
    """Sessions of this daemon and interface capturing now: the series is kept while there are any."""


class SeriesTable:
    """
    The (daemon, interface) series, most recently used last, at most
    C{limit} of them plus those with a session running.
    """

    def __init__(self, limit: int = MAX_SERIES) -> None:
        self.limit = limit
        self._series: OrderedDict[SeriesKey, SeriesTotals] = OrderedDict()
        self.evicted = 0
        """Series forgotten to stay within the limit."""

    def __len__(self) -> int:
        return len(self._series)

    def items(self) -> list[tuple[SeriesKey, SeriesTotals]]:
        return list(self._series.items())

    def session_started(self, key: SeriesKey) -> None:
        totals = self._series.get(key)
        if totals is None:
            totals = self._series[key] = SeriesTotals()
        else:
            self._series.move_to_end(key)
        totals.live += 1
        self._evict()

    def session_ended(self, key: SeriesKey, written: int, lost: int) -> None:
        totals = self._series.get(key)
        if totals is None:  # cannot happen: a series with a live session is kept
            totals = self._series[key] = SeriesTotals(live=1)
        totals.written += written
        totals.lost += lost
        totals.live = max(0, totals.live - 1)
        self._series.move_to_end(key)
        self._evict()

    def _evict(self) -> None:
        if len(self._series) <= self.limit:
            return
        for key in list(self._series):
            if len(self._series) <= self.limit:
                return
            if self._series[key].live == 0:
                del self._series[key]
                self.evicted += 1


class CollectorMetrics:
    """The metrics of one L{CollectorService}, read from it at each scrape."""

    def __init__(self, collector: CollectorService) -> None:
        self.collector = collector

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def _families(self) -> dict[str, Any]:
        return {
            "connected": GaugeMetricFamily(
                "rpcapcollect_daemons_connected",
                "Daemons connected now (capturing, or held after their capture could not start).",
            ),
            "capturing": GaugeMetricFamily(
                "rpcapcollect_daemons_capturing",
                "Daemons whose capture is being written now.",
            ),
            "written": CounterMetricFamily(
                "rpcapcollect_packets_written",
                "Packets written to capture files, by daemon address and interface.",
                labels=["daemon", "interface"],
            ),
            "lost": CounterMetricFamily(
                "rpcapcollect_packets_lost",
                "Packets lost, by daemon address and interface: gaps in the packet numbers of UDP "
                "and udpstr data (lost in transit) plus what the daemon reported dropping "
                "(its kernel and interface).",
                labels=["daemon", "interface"],
            ),
            "files": CounterMetricFamily(
                "rpcapcollect_files_written",
                "Capture files started: one per capture, and one more at each rotation.",
            ),
            "connections": CounterMetricFamily(
                "rpcapcollect_connections",
                "Connections daemons (or anyone) made to the collector.",
            ),
            "refused": CounterMetricFamily(
                "rpcapcollect_connections_refused",
                "Connections refused at once because daemons capturing filled a limit, by reason "
                "(max-daemons, max-daemons-per-host).",
                labels=["reason"],
            ),
            "closed": CounterMetricFamily(
                "rpcapcollect_connections_closed",
                "Connections the collector hung up on, by reason: login-timeout (not capturing in "
                "time), made-room (not capturing, closed for a newer connection), max-buffered, "
                "reply-timeout (a stats request unanswered), protocol (the daemon broke RPCAP).",
                labels=["reason"],
            ),
            "unsolicited": CounterMetricFamily(
                "rpcapcollect_unexpected_messages",
                "Messages daemons sent that answered no request, or not the one asked.",
            ),
            "foreign": CounterMetricFamily(
                "rpcapcollect_foreign_data",
                "Datagrams and data connections from others than the daemon, turned away unwritten.",
            ),
            "buffered": GaugeMetricFamily(
                "rpcapcollect_buffered_bytes",
                "Bytes of unfinished messages the daemons' connections hold now (bounded by --max-buffered).",
            ),
            "deleted": CounterMetricFamily(
                "rpcapcollect_files_deleted_by_budget",
                "Capture files deleted to keep the directory within --max-daemon-files, "
                "--max-total-files and --max-size.",
            ),
            "evicted": CounterMetricFamily(
                "rpcapcollect_metric_series_evicted",
                f"(daemon, interface) series forgotten to keep at most {self.collector.series.limit} "
                "(with no session running): a daemon inventing interface names shows here.",
            ),
        }

    def collect(self) -> Iterator[Metric]:
        collector = self.collector
        families = self._families()
        live_written: dict[SeriesKey, int] = {}
        live_lost: dict[SeriesKey, int] = {}
        files = collector.files_ended
        unsolicited = collector.unsolicited_ended
        foreign = collector.foreign_ended
        connected = capturing = 0
        for session in list(collector.sessions):
            connected += 1
            unsolicited += session.unsolicited
            foreign += session.foreign
            if session.files is not None:
                capturing += 1
                files += session.files.files_opened
            key = session.series_key
            if key is not None:
                live_written[key] = live_written.get(key, 0) + session.written
                live_lost[key] = live_lost.get(key, 0) + session.lost_packets
        families["connected"].add_metric([], connected)
        families["capturing"].add_metric([], capturing)
        for key, totals in collector.series.items():
            labels = list(key)
            families["written"].add_metric(labels, totals.written + live_written.get(key, 0))
            families["lost"].add_metric(labels, totals.lost + live_lost.get(key, 0))
        families["files"].add_metric([], files)
        families["evicted"].add_metric([], collector.series.evicted)
        families["connections"].add_metric([], collector.connections)
        for reason, count in sorted(collector.refused.items()):
            families["refused"].add_metric([reason], count)
        for reason, count in sorted(collector.closed.items()):
            families["closed"].add_metric([reason], count)
        families["unsolicited"].add_metric([], unsolicited)
        families["foreign"].add_metric([], foreign)
        families["buffered"].add_metric([], collector.buffered())
        families["deleted"].add_metric([], collector.budget.deleted)
        return iter(families.values())
