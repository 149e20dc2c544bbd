"""
L{CaptureReader}: a capture handle's descriptor in the reactor.

When the descriptor is readable it reads whole batches (a bounded number per
reactor turn, so one busy capture cannot starve other sessions) and hands
each batch to a consumer callable.  It is an C{IPushProducer}: a data
transport whose buffer fills pauses it, the kernel ring then fills, and the
kernel's drop counter (seen by the client's stats) records what was lost.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IPushProducer, IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..protocol.datachannel import PacketBatch
from .sampling import Sampler
from .system import CaptureError, ICaptureHandle

BATCH_PACKETS = 512
BATCHES_PER_TURN = 8


@implementer(IReadDescriptor, IPushProducer)
class CaptureReader:
    log = Logger()

    def __init__(
        self,
        reactor: IReactorFDSet,
        handle: ICaptureHandle,
        on_batch: Callable[[PacketBatch], None],
        on_error: Callable[[str], None],
        batch_packets: int = BATCH_PACKETS,
        batches_per_turn: int = BATCHES_PER_TURN,
    ) -> None:
        self._reactor = reactor
        self._handle = handle
        self._on_batch = on_batch
        self._on_error = on_error
        self._batch_packets = batch_packets
        self._batches_per_turn = batches_per_turn
        self._reading = False
        self._stopped = False
        self.delivered = 0
        self.sampler: Optional[Sampler] = None
        """RPCAP sampling, applied to each batch read before the consumer frames it (L{rpcapsvc.capture.sampling})."""

    # IReadDescriptor
    def fileno(self) -> int:
        return self._handle.fileno()

    def logPrefix(self) -> str:
        return "CaptureReader"

    def doRead(self) -> None:
        for _ in range(self._batches_per_turn):
            if not self._reading:
                return
            try:
                batch = self._handle.read_batch(self._batch_packets)
            except CaptureError as e:
                self._fail(str(e))
                return
            count = len(batch)
            if not count:
                return
            self.delivered += count
            try:
                if self.sampler is not None:
                    batch = self.sampler(batch)  # may keep nothing: then nothing to frame
                if batch.records:
                    self._on_batch(batch)
            except Exception:
                self.log.failure("Packet consumer failed; capture stopped")
                self._fail("internal error while forwarding packets")
                return
            if count < self._batch_packets:
                return

    def connectionLost(self, reason: Failure) -> None:
        if not self._stopped:
            # The reactor saw an error on the descriptor (epoll reports only
            # EPOLLERR when an interface goes away): libpcap can say which.
            why = f"capture descriptor lost: {reason.getErrorMessage()}"
            try:
                self._handle.read_batch(1)
            except CaptureError as e:
                why = str(e)
            except Exception:
                pass
            self._fail(why)

    def _fail(self, why: str) -> None:
        self.stopProducing()
        self._on_error(why)

    # control
    def start(self) -> None:
        if not self._stopped and not self._reading:
            self._reading = True
            self._reactor.addReader(self)

    # IPushProducer
    def pauseProducing(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def resumeProducing(self) -> None:
        self.start()

    def stopProducing(self) -> None:
        self.pauseProducing()
        self._stopped = True
