"""
RPCAP sampling (the setsampling request), applied to each packet batch
between the capture reader and the data channel's framing.

Two methods, as WinPcap defined them and libpcap's client sends them:

- L{OneInEvery} (method 1, "1 in N"): the Nth, 2Nth, 3Nth... packet the
  capture reads is forwarded, the others skipped.  The count runs across
  batches, so where the reader happens to cut the stream changes nothing.
- L{FirstAfterInterval} (method 2, "first after N ms"): the first packet is
  forwarded, then the first whose timestamp is at least N ms past the one
  last forwarded; so at most one packet per N ms of traffic, and exactly
  one per window where traffic is continuous.  The windows follow the
  packets' own timestamps, never the wall clock: what a client sees does
  not depend on how late the daemon reads.

A sampler never copies packet bytes: the batch it returns shares the
original's C{data} and keeps only the chosen records (each names its
packet's offset in C{data}), so skipping a packet costs nothing per byte.

Skipped packets are counted (L{Sampler.skipped}), never as drops: a
client's stats reply counts them in C{ifrecv} (libpcap received them) and
in neither drop counter nor C{svrcapt} (the daemon did not send them); the
daemon's metrics count them as C{rpcapd_packets_sampled_out}.

Why not in the kernel: a classic BPF program keeps no state between
packets, so it cannot count to N or remember a time; Linux's
C{SKF_AD_RANDOM} extension would make 1-in-N a random 1/N, whose share of
100,000 packets varies by about +-1 % of N at N=10 and which no client
asked for.  Deterministic sampling here costs about 4 ns per packet read
(two strided copies of the batch's records), far below what the packets
forwarded cost.
"""

from __future__ import annotations

from typing import Optional, Protocol

from ..protocol.datachannel import BATCH_RECORD, PacketBatch

SAMPLING_NONE = 0
SAMPLING_ONE_IN_N = 1
SAMPLING_FIRST_AFTER_MS = 2

_RECORD_SIZE = BATCH_RECORD.size
_WORDS = _RECORD_SIZE // 8  # a record as 64-bit words: two
_record = BATCH_RECORD.unpack_from


class Sampler(Protocol):
    """Takes a batch, gives the batch of the packets to forward (possibly empty)."""

    skipped: int
    """Packets skipped so far."""

    def __call__(self, batch: PacketBatch) -> PacketBatch: ...

    def describe(self) -> str:
        """How it samples, for the log."""
        ...


class OneInEvery:
    """Method 1: forward every C{n}th packet (the Nth first, as WinPcap did)."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"1 in {n} is no sampling")
        self.n = n
        self.skipped = 0
        self._next = n - 1
        """Index, in the next batch, of the next packet to forward."""

    def describe(self) -> str:
        return f"1 packet in every {self.n}"

    def __call__(self, batch: PacketBatch) -> PacketBatch:
        records = batch.records
        count = len(records) // _RECORD_SIZE
        first, n = self._next, self.n
        if first >= count:
            self._next = first - count
            self.skipped += count
            return PacketBatch(batch.data, b"")
        kept = (count - 1 - first) // n + 1
        self._next = first + kept * n - count
        self.skipped += count - kept
        # Each record is two 64-bit words: copy both word columns with a stride,
        # in C, whatever the batch's size (no Python work per packet).
        words = memoryview(records).cast("Q")
        out = bytearray(kept * _RECORD_SIZE)
        out_words = memoryview(out).cast("Q")
        step = n * _WORDS
        for column in range(_WORDS):
            out_words[column::_WORDS] = words[first * _WORDS + column :: step]
        return PacketBatch(batch.data, bytes(out))


class FirstAfterInterval:
    """Method 2: forward the first packet at least C{ms} ms after the one last forwarded."""

    def __init__(self, ms: int) -> None:
        if ms < 1:
            raise ValueError(f"a window of {ms} ms is no sampling")
        self.ms = ms
        self.skipped = 0
        self._interval_us = ms * 1000
        self._due_us: Optional[int] = None
        """The timestamp from which the next packet is forwarded (C{None}: the next one)."""
        self._last_kept_us = 0

    def describe(self) -> str:
        return f"the first packet after each {self.ms} ms"

    def __call__(self, batch: PacketBatch) -> PacketBatch:
        records = batch.records
        count = len(records) // _RECORD_SIZE
        if not count:
            return batch
        due = self._due_us
        last_sec, last_usec = _record(records, (count - 1) * _RECORD_SIZE)[:2]
        last_us = last_sec * 1_000_000 + last_usec
        if due is not None and last_us < self._last_kept_us:
            due = None  # the clock was stepped back: start again rather than wait for it
        if due is not None and last_us < due:
            self.skipped += count  # the common case: the whole batch is inside the window
            return PacketBatch(batch.data, b"")
        kept: list[bytes] = []
        start = 0
        while start < count:
            index = start if due is None else _first_at_or_after(records, start, count, due)
            if index >= count:
                break
            offset = index * _RECORD_SIZE
            kept.append(records[offset : offset + _RECORD_SIZE])
            sec, usec = _record(records, offset)[:2]
            self._last_kept_us = sec * 1_000_000 + usec
            due = self._last_kept_us + self._interval_us
            start = index + 1
        self._due_us = due
        self.skipped += count - len(kept)
        return PacketBatch(batch.data, b"".join(kept))


def _first_at_or_after(records: bytes, low: int, high: int, due_us: int) -> int:
    """
    The index of the first record in C{[low, high)} timestamped at or after
    C{due_us} (C{high}: none), by bisection: a capture's timestamps do not
    go down, so a window's end costs log2(batch) reads, not one per packet.
    """
    while low < high:
        middle = (low + high) // 2
        sec, usec = _record(records, middle * _RECORD_SIZE)[:2]
        if sec * 1_000_000 + usec < due_us:
            low = middle + 1
        else:
            high = middle
    return low


def sampler_for(method: int, value: int) -> Optional[Sampler]:
    """
    The sampler for a setsampling request's C{method} and C{value}
    (C{None}: forward every packet).  A value that samples nothing (1 in 1,
    1 in 0, a 0 ms window) forwards every packet.  Raises C{ValueError}
    for a method RPCAP does not define.
    """
    if method == SAMPLING_NONE:
        return None
    if method == SAMPLING_ONE_IN_N:
        return OneInEvery(value) if value >= 2 else None
    if method == SAMPLING_FIRST_AFTER_MS:
        return FirstAfterInterval(value) if value >= 1 else None
    raise ValueError(f"unknown sampling method {method}")
