"""
A capture-start storm against a running daemon, measured from outside.

One capture is already running, fed with marked datagrams on loopback, when
C{n} logged-in sessions with C{lo} open all send their startcap at once (UDP
data channels, a filter that matches nothing), then all their endcap at once.
Meanwhile a separate session times a findalldevs round trip every 50 ms (the
daemon's reactor stall), and a session that connects just after the storm
began times its login and findalldevs.  Used by the end-to-end test
(C{test_interop_storm}) and by C{benchmarks/storm.py}.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Optional

import attrs

from ..capture.compiler import compile_filter
from ..protocol.framing import ControlStreamParser
from ..protocol.wire import (
    AuthReply,
    AuthRequest,
    EndCaptureReply,
    EndCaptureRequest,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    Message,
    OpenReply,
    OpenRequest,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
)

DLT_EN10MB = 1


class Session:
    """One control connection, raw and blocking: a request, then its reply."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = ControlStreamParser()
        self.pending: list[Message] = []
        self.data: Optional[socket.socket] = None
        self.read_timeout_ms = 1000
        """The startcap's read timeout: tcpdump's 1000 ms."""

    def send(self, message: Message) -> None:
        self.sock.sendall(message.encode())

    def feed(self) -> bool:
        """Read what the daemon sent; False when it hung up."""
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        for received in self.parser.feed(chunk):
            if received.message is None:
                raise AssertionError(f"undecodable reply: {received.error}")
            self.pending.append(received.message)
        return True

    def reply(self, timeout: Optional[float] = None) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.pending:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no reply in time")
                self.sock.settimeout(left)
            try:
                if not self.feed():
                    raise EOFError("the daemon closed the connection")
            finally:
                self.sock.settimeout(10.0)
        return self.pending.pop(0)

    def request(self, message: Message, timeout: Optional[float] = None) -> Message:
        self.send(message)
        return self.reply(timeout)

    def login(self, timeout: float = 10.0) -> None:
        reply = self.request(AuthRequest(0), timeout)
        if not isinstance(reply, AuthReply):
            raise AssertionError(f"login refused: {reply}")

    def open(self, device: str = "lo") -> None:
        reply = self.request(OpenRequest(device), 10.0)
        if not isinstance(reply, OpenReply):
            raise AssertionError(f"open refused: {reply}")

    def data_socket(self, rcvbuf: int = 0) -> socket.socket:
        self.data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if rcvbuf:
            self.data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.data.bind(("127.0.0.1", 0))
        return self.data

    def startcap_request(self, filter_expression: str) -> StartCaptureRequest:
        data = self.data or self.data_socket()
        program = compile_filter(filter_expression, DLT_EN10MB, 65535)
        return StartCaptureRequest(
            65535, self.read_timeout_ms, StartCapFlags.DGRAM, data.getsockname()[1], program
        )

    def close(self) -> None:
        self.sock.close()
        if self.data is not None:
            self.data.close()


class MarkedTraffic:
    """
    Numbered datagrams to a loopback port at a steady rate, in a thread; and
    a data socket's reader that notes which numbers a capture delivered.
    """

    def __init__(self, rate: int = 1000) -> None:
        self.rate = rate
        self.target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.target.bind(("127.0.0.1", 0))
        self.target.setblocking(False)
        self.port = int(self.target.getsockname()[1])
        self.sent = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        self._sender.start()

    def _send(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        start = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                out.sendto(b"storm-mark-%08d." % self.sent, ("127.0.0.1", self.port))
                self.sent += 1
            try:
                while self.target.recv(2048):
                    pass
            except BlockingIOError:
                pass
            time.sleep(0.002)
        out.close()

    def stop(self) -> None:
        self._stop.set()
        self._sender.join(5)

    def read(self, data: socket.socket) -> None:
        """Collect marks from a data channel's datagrams until the socket closes."""

        def run() -> None:
            data.settimeout(0.2)
            while True:
                try:
                    datagram = data.recv(65536)
                except socket.timeout:
                    if self._stop.is_set() and self._drained:
                        return
                    continue
                except OSError:
                    return
                at = datagram.find(b"storm-mark-")
                if at >= 0:
                    self.seen.add(int(datagram[at + 11 : at + 19]))

        self._drained = False
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._readers.append(thread)

    def drain(self) -> None:
        self._drained = True
        for thread in self._readers:
            thread.join(5)

    def close(self) -> None:
        self.target.close()


class Prober:
    """A logged-in session timing a findalldevs round trip every C{interval} seconds."""

    def __init__(self, port: int, interval: float = 0.05, timeout: float = 30.0) -> None:
        self.session = Session(port)
        self.session.login()
        self.interval = interval
        self.timeout = timeout
        self.rtts: list[tuple[float, float]] = []
        self.failure: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                reply = self.session.request(FindAllInterfacesRequest(), self.timeout)
            except Exception as e:
                self.rtts.append((sent, time.monotonic() - sent))
                self.failure = f"findalldevs probe failed: {e}"
                return
            if not isinstance(reply, FindAllInterfacesReply):
                self.failure = f"findalldevs probe answered {reply}"
                return
            self.rtts.append((sent, time.monotonic() - sent))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        self.session.close()

    def max_between(self, start: float, end: float) -> float:
        """The longest round trip of a probe sent between C{start} and C{end} (monotonic)."""
        return max((rtt for sent, rtt in self.rtts if start <= sent <= end), default=0.0)


@attrs.define
class StormResult:
    sessions: int
    startcap_latencies: list[float] = attrs.field(factory=list)
    """Seconds from the storm's start to each startcap reply, in arrival order."""
    endcap_latencies: list[float] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    fresh_findalldevs: Optional[float] = None
    """Seconds from the storm's start until a session that connected then had its findalldevs reply."""
    probe_max: float = 0.0
    """The longest findalldevs round trip of the probe session during the storm."""
    probe_max_quiet: float = 0.0
    """The same before the storm began, for comparison."""
    marks_sent: int = 0
    marks_missing: int = 0
    running_stats: Optional[StatsReply] = None
    rss_after: int = 0

    def summary(self) -> dict[str, object]:
        def ms(values: list[float]) -> Optional[float]:
            return round(max(values) * 1000, 1) if values else None

        return {
            "sessions": self.sessions,
            "startcap_replies": len(self.startcap_latencies),
            "startcap_first_ms": round(min(self.startcap_latencies) * 1000, 1)
            if self.startcap_latencies
            else None,
            "startcap_last_ms": ms(self.startcap_latencies),
            "endcap_replies": len(self.endcap_latencies),
            "endcap_last_ms": ms(self.endcap_latencies),
            "fresh_findalldevs_ms": None
            if self.fresh_findalldevs is None
            else round(self.fresh_findalldevs * 1000, 1),
            "probe_max_quiet_ms": round(self.probe_max_quiet * 1000, 1),
            "probe_max_storm_ms": round(self.probe_max * 1000, 1),
            "marks_sent": self.marks_sent,
            "marks_missing": self.marks_missing,
            "running_capture_stats": None if self.running_stats is None else attrs.asdict(self.running_stats),
            "rss_after_mib": round(self.rss_after / 2**20, 1),
            "errors": self.errors[:5],
        }


def _collect(
    sessions: list[Session], start: float, expected: type, deadline: float, result: StormResult
) -> list[float]:
    """Each session's first reply, as seconds after C{start}; errors and silence noted in C{result}."""
    waiting = {s.sock.fileno(): s for s in sessions}
    latencies = []
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            session = waiting[fd]
            if not session.feed():
                result.errors.append(f"{expected.__name__}: connection closed")
                del waiting[fd]
                continue
            if session.pending:
                reply = session.pending.pop(0)
                del waiting[fd]
                if isinstance(reply, expected):
                    latencies.append(time.monotonic() - start)
                elif isinstance(reply, ErrorReply):
                    result.errors.append(f"{expected.__name__}: error {reply.code}: {reply.text}")
                else:
                    result.errors.append(f"{expected.__name__}: unexpected {reply}")
    if waiting:
        result.errors.append(f"{len(waiting)} {expected.__name__} replies missing after the deadline")
    return latencies


def storm(
    port: int,
    sessions: int = 64,
    rate: int = 1000,
    reply_deadline: float = 30.0,
    daemon_pid: Optional[int] = None,
) -> StormResult:
    """Run the storm against the daemon on C{127.0.0.1:port}; see the module docstring."""
    result = StormResult(sessions)
    traffic = MarkedTraffic(rate)
    running = Session(port)
    clients: list[Session] = []
    prober: Optional[Prober] = None
    try:
        running.login()
        running.open()
        running.data_socket(rcvbuf=8 * 1024 * 1024)
        reply = running.request(running.startcap_request(f"udp dst port {traffic.port}"), 30.0)
        if not isinstance(reply, StartCaptureReply):
            raise AssertionError(f"the running capture did not start: {reply}")
        assert running.data is not None
        traffic.read(running.data)
        traffic.start()
        deadline = time.monotonic() + 10
        while not traffic.seen and time.monotonic() < deadline:
            time.sleep(0.02)
        if not traffic.seen:
            raise AssertionError("the running capture delivered nothing")

        for _ in range(sessions):
            client = Session(port)
            client.login()
            clients.append(client)
        for client in clients:
            client.send(OpenRequest("lo"))
        for client in clients:
            if not isinstance(client.reply(60.0), OpenReply):
                raise AssertionError("a storm session could not open lo")
        requests = [c.startcap_request(f"udp dst port {c.data_socket().getsockname()[1]}") for c in clients]

        prober = Prober(port, timeout=min(30.0, max(5.0, reply_deadline)))
        time.sleep(0.5)
        quiet_end = time.monotonic()
        result.probe_max_quiet = prober.max_between(0, quiet_end)

        fresh: dict[str, float] = {}

        def fresh_session(start: float) -> None:
            try:
                s = Session(port, timeout=reply_deadline)
                s.login(reply_deadline)
                if isinstance(s.request(FindAllInterfacesRequest(), reply_deadline), FindAllInterfacesReply):
                    fresh["findalldevs"] = time.monotonic() - start
                s.close()
            except Exception as e:
                result.errors.append(f"fresh session: {e}")

        start = time.monotonic()
        for client, request in zip(clients, requests):
            client.send(request)
        late = threading.Thread(target=fresh_session, args=(start,), daemon=True)
        late.start()
        result.startcap_latencies = _collect(
            clients, start, StartCaptureReply, start + reply_deadline, result
        )
        late.join(reply_deadline)
        result.fresh_findalldevs = fresh.get("findalldevs")
        time.sleep(0.3)

        end_start = time.monotonic()
        for client in clients:
            client.send(EndCaptureRequest())
        result.endcap_latencies = _collect(
            clients, end_start, EndCaptureReply, end_start + reply_deadline, result
        )
        time.sleep(0.3)
        result.probe_max = prober.max_between(start, time.monotonic())
        if prober.failure:
            result.errors.append(prober.failure)

        traffic.stop()
        time.sleep(0.5)
        try:
            stats = running.request(StatsRequest(), reply_deadline)
        except (TimeoutError, EOFError) as e:
            result.errors.append(f"stats of the running capture: {e}")
        else:
            if isinstance(stats, StatsReply):
                result.running_stats = stats
            else:
                result.errors.append(f"stats: {stats}")
        time.sleep(0.3)
        traffic.drain()
        result.marks_sent = traffic.sent
        result.marks_missing = traffic.sent - len(traffic.seen)
        for client in clients:
            client.close()
        clients = []
        if daemon_pid is not None:
            import psutil

            time.sleep(0.5)
            result.rss_after = psutil.Process(daemon_pid).memory_info().rss
        return result
    finally:
        traffic.stop()
        if prober is not None:
            prober.stop()
        for client in clients:
            client.close()
        running.close()
        traffic.drain()
        traffic.close()
