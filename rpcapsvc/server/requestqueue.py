"""
The requests of one control connection, handled one at a time, in order.

RPCAP answers requests in the order they came, and a request may wait on
I/O (a login check, a data connection, the capture system's thread).  A
L{RequestQueue} hands its owner one request at a time and reads the
control connection only while nothing waits, which bounds what a peer can
queue.  It also:

- yields the reactor after L{REQUESTS_PER_TURN} requests, so that one
  greedy client cannot starve the other sessions;
- holds requests while work started by an earlier one finishes (L{hold}:
  a capture closing in the capture system's thread);
- stops handling requests while the client does not read its replies
  (L{replies_backed_up}), so replies cannot pile up in memory;
- after the client half-closed (L{input_ended}), answers what it sent, then
  tells its owner that the conversation is over.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ..protocol.framing import Received
from ..protocol.wire import MessageType

REQUESTS_PER_TURN = 32
"""Requests handled back to back before other sessions get a turn of the reactor."""

_SLOW_REQUESTS = {MessageType.OPEN_REQ, MessageType.STARTCAP_REQ, MessageType.ENDCAP_REQ}


def request_cost(request: Received) -> int:
    """A request's share of a turn: opening or closing a capture is slow, two are a turn's worth."""
    return REQUESTS_PER_TURN // 2 if request.header.type in _SLOW_REQUESTS else 1


class Reading(Protocol):
    """The control connection's reading side, as the queue drives it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class RequestQueue:
    """
    Requests waiting to be handled.  C{handle} handles one and returns a
    Deferred when it goes on after returning (the next request waits for
    it); C{fault} is told of an exception C{handle} raised or its Deferred
    failed with; C{finished} is called once the client half-closed and every
    request it sent is handled.
    """

    def __init__(
        self,
        clock: IReactorTime,
        reading: Reading,
        handle: Callable[[Received], Optional[defer.Deferred[Any]]],
        fault: Callable[[Failure], None],
        finished: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._reading = reading
        self._handle = handle
        self._fault = fault
        self._finished = finished
        self._queue: deque[Received] = deque()
        self.busy = False
        """A request is under way (its Deferred has not fired)."""
        self._holds = 0
        self._draining = False
        self._backed_up = False
        self._input_ended = False
        self._stopped = False
        self._yield_call: Optional[IDelayedCall] = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def held(self) -> bool:
        """Work started by an earlier request holds the next one back (L{hold})."""
        return self._holds > 0

    def received(self, requests: list[Received]) -> None:
        self._queue.extend(requests)
        self._drain()

    def replies_backed_up(self, backed_up: bool) -> None:
        """The client stopped reading its replies (C{True}) or caught up (C{False})."""
        self._backed_up = backed_up
        if backed_up:
            self._set_reading()
        else:
            self._drain()

    def input_ended(self) -> None:
        """The client half-closed: it sends nothing more.  Answer what it sent, then finish."""
        self._input_ended = True
        self._drain()

    def hold(self, d: defer.Deferred[Any]) -> None:
        """Handle no request until C{d} has fired."""
        if d.called:
            return
        self._holds += 1

        def release(result: object) -> object:
            self._holds -= 1
            self._drain()
            return result

        d.addBoth(release)

    def stop(self) -> None:
        """The session ended: drop what waits, handle nothing more, touch the connection no more."""
        self._stopped = True
        self._queue.clear()
        if self._yield_call is not None and self._yield_call.active():
            self._yield_call.cancel()
        self._yield_call = None

    def _drain(self) -> None:
        if self._draining:
            return  # a request finished inside the loop below, which goes on
        self._draining = True
        handled = 0
        try:
            while self._queue and not self.busy and not self._holds and not self._stopped:
                if self._backed_up:
                    break  # replies_backed_up(False) goes on
                if handled >= REQUESTS_PER_TURN:
                    # Let other sessions have the reactor before going on.
                    if self._yield_call is None:
                        self._yield_call = self._clock.callLater(0, self._after_yield)
                    break
                request = self._queue.popleft()
                try:
                    result = self._handle(request)
                except Exception:
                    # A fault of ours: the owner answers it; the session and the reactor go on.
                    self._fault(Failure())
                    result = None
                handled += request_cost(request)
                if isinstance(result, defer.Deferred):
                    self.busy = True
                    result.addErrback(self._fault)
                    result.addBoth(self._request_done)
        finally:
            self._draining = False
        self._set_reading()

    def _after_yield(self) -> None:
        self._yield_call = None
        self._drain()

    def _request_done(self, _: object) -> None:
        self.busy = False
        self._drain()

    def _set_reading(self) -> None:
        """Read the control connection only when nothing is waiting to be handled."""
        if self._stopped:
            return
        if self.busy or self._holds or self._backed_up or self._queue:
            self._reading.pause_reading()
        elif self._input_ended:
            self._finished()  # every request the client sent is answered
        else:
            self._reading.resume_reading()
