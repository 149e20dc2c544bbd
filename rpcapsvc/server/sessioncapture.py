"""
L{SessionCapture}: one capture of a session, with its handle, reader and
data channel, and the blocking calls made on its handle.

Those calls (placing a filter, reading the counters, closing) run through
the capture system's runner, off the reactor thread, one at a time and in
the order they were asked for; a filter is built when its placement starts,
from the latest state, so the last placement always has it.  Once the
capture is stopped, filters still waiting are not placed, and closing comes
last: nothing touches a handle (or a descriptor number the kernel may have
reused) after it is closed.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any, Callable, Hashable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..capture.blocking import BlockingRunner
from ..capture.reader import CaptureReader
from ..capture.sampling import SAMPLING_NONE, Sampler, sampler_for
from ..capture.system import CaptureError, CaptureStats, ICaptureHandle, PrefixedProgram
from ..protocol import bpf
from ..protocol.wire import BpfProgram
from .counters import ForwardingCounts, capture_counts
from .datachannel import IPacketSink
from .forwarded import ForwardedTraffic

KERNEL_MAX_INSTRUCTIONS = 4096
"""Linux runs classic BPF programs of at most this many instructions (BPF_MAXINSNS)."""

Compiler = Callable[[str, int], BpfProgram]


def place_filter(handle: ICaptureHandle, programs: list[BpfProgram]) -> bool:
    """In a worker: the first of C{programs} the kernel takes (the last refusal raised)."""
    for program in programs[:-1]:
        try:
            handle.set_filter(program)
            return True
        except CaptureError:
            continue
    handle.set_filter(programs[-1])
    return True


def close_capture(handle: ICaptureHandle) -> Optional[CaptureStats]:
    """In a worker: the final counters (C{None} if libpcap has none), then close."""
    try:
        stats: Optional[CaptureStats] = handle.stats()
    except CaptureError:
        stats = None
    handle.close()
    return stats


def compile_clauses(compile: Compiler, clauses: list[str], linktype: int) -> list[Optional[BpfProgram]]:
    """In a worker: each clause compiled for C{linktype}, C{None} where libpcap cannot."""
    out: list[Optional[BpfProgram]] = []
    for clause in clauses:
        try:
            out.append(compile(clause, linktype))
        except ValueError:
            out.append(None)
    return out


def _placed_nothing() -> bool:
    return True


def _same(key: Any, other: Any) -> bool:
    """Two placement keys: the same exclusion (by serial numbers) and the very same client program."""
    return bool(key[0] == other[0] and key[1] is other[1])


def _fire(d: Deferred[Any], result: Any) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


class SessionCapture:
    """One capture of a session; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        handle: ICaptureHandle,
        snaplen: int,
        client_program: Optional[BpfProgram],
        run: BlockingRunner,
        compile: Compiler,
        forwarded: ForwardedTraffic,
        description: str = "",
    ) -> None:
        self.handle = handle
        self.snaplen = snaplen
        self.client_program = client_program
        self.reader: Optional[CaptureReader] = None
        self.sink: Optional[IPacketSink] = None
        self.pending_sink: Optional[Deferred[IPacketSink]] = None
        self.stopping = False
        self.description = description
        self.last_stats: Optional[CaptureStats] = None
        """The counters libpcap last reported for this capture (a client's stats request); C{None}: none yet."""
        self.sampler: Optional[Sampler] = None
        """RPCAP sampling (L{set_sampling}); C{None}: every packet is forwarded."""
        self._skipped_before = 0
        """Packets skipped by the samplers this capture had before L{sampler}."""
        self._run = run
        self._compile = compile
        self._forwarded = forwarded
        self._jobs: deque[tuple[Callable[[], Optional[Callable[[], Any]]], Deferred[Any]]] = deque()
        self._job_running = False
        self._draining = False
        self._closed: Optional[Deferred[Optional[CaptureStats]]] = None
        self._placed_key: Optional[Hashable] = None
        """What the last filter placed was made of (see L{place})."""
        self._closed_result: Any = None
        self._close_waiters: list[Deferred[Optional[CaptureStats]]] = []

    @property
    def linktype(self) -> int:
        return int(self.handle.linktype)

    def describe(self) -> str:
        return self.description

    # --- the handle's calls, one at a time ------------------------------------------

    def _submit(self, prepare: Callable[[], Optional[Callable[[], Any]]]) -> Deferred[Any]:
        """
        Queue a call on the handle.  C{prepare} runs in the reactor thread when
        the call's turn comes and gives the blocking call (C{None}: nothing
        to do, the result is C{False}).
        """
        d: Deferred[Any] = Deferred()
        self._jobs.append((prepare, d))
        self._next_job()
        return d

    def _next_job(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while self._jobs and not self._job_running:
                prepare, d = self._jobs.popleft()
                try:
                    call = prepare()
                except BaseException:
                    d.errback()
                    continue
                if call is None:
                    d.callback(False)
                    continue
                self._job_running = True
                self._run(call).addBoth(self._job_done, d)
        finally:
            self._draining = False

    def _job_done(self, result: Any, d: Deferred[Any]) -> None:
        self._job_running = False
        _fire(d, result)
        self._next_job()

    # --- filters --------------------------------------------------------------------

    def programs(self) -> list[BpfProgram]:
        """
        The filters to place, best first: the client's program behind every
        session's forwarded traffic, or failing that (the kernel's limits)
        behind this session's own; without exclusion, the client's alone.
        """
        return self._programs()[1]

    def _programs(self) -> tuple[Hashable, list[BpfProgram]]:
        client = self.client_program
        if self in self._forwarded:
            key, prefixes = self._forwarded.exclusion(self)
            size = len(client.instructions) if client is not None else 1
            body = (client or bpf.ACCEPT_ALL).instructions
            fitting = [p for p in prefixes if len(p) + size <= KERNEL_MAX_INSTRUCTIONS]
            if fitting:
                return (key, client), [PrefixedProgram(p + body, p) for p in fitting]
        return (None, client), [client] if client is not None else []

    def place(self, if_changed: bool = False) -> Deferred[bool]:
        """
        Place the filter L{programs} gives when this placement starts (with
        C{if_changed}, only if it differs from the last placed); C{False} if
        nothing was placed (the capture stopped first).
        """

        chosen: list[Hashable] = []

        def prepare() -> Optional[Callable[[], bool]]:
            if self.stopping:
                return None
            key, programs = self._programs()
            if if_changed and self._placed_key is not None and _same(key, self._placed_key):
                return None
            chosen.append(key)
            if not programs:
                return _placed_nothing
            return partial(place_filter, self.handle, programs)

        def placed(done: bool) -> bool:
            if done and chosen:
                self._placed_key = chosen[0]
            return done

        return self._submit(prepare).addCallback(placed)

    def place_first(self, own_traffic: str, exclude_own_traffic: bool) -> Deferred[bool]:
        """
        Give the capture its first filter: the client's program, behind a
        program that drops every capturing session's own traffic (unless
        the operator turned that off, or this session's, C{own_traffic}, is
        unknown: C{""}), so that forwarded packets are never captured again
        (L{ForwardedTraffic}).  Fires with whether the filter is in place
        (C{False}: the capture ended first); fails with the kernel's refusal.
        """
        if exclude_own_traffic and own_traffic:
            joined = self._forwarded.join(self, own_traffic)
            return joined.addCallback(lambda _: not self.stopping)
        return self.place()

    def compile_clauses(self, clauses: list[str], linktype: int) -> Deferred[list[Optional[BpfProgram]]]:
        return self._run(partial(compile_clauses, self._compile, clauses, linktype))

    # --- sampling -----------------------------------------------------------------------

    def set_sampling(self, method: int, value: int) -> None:
        """
        Sample this capture as a setsampling request asked (method 0: stop
        sampling), from the next batch read on; raises C{ValueError} for an
        unknown method.
        """
        sampler = sampler_for(method, value)
        if self.sampler is not None:
            self._skipped_before += self.sampler.skipped
        self.sampler = sampler
        if self.reader is not None:
            self.reader.sampler = sampler
        elsewhere = getattr(self.handle, "set_sampling", None)
        if elsewhere is not None:
            elsewhere(sampler)  # a capture worker reads and samples (--capture-workers)
        if sampler is not None:
            self.log.info("{capture}: sampling {how}", capture=self.description, how=sampler.describe())
        elif method != SAMPLING_NONE:
            # libpcap 1.9 to 1.10's client sends (uint16)htonl(value): 0 on a little-endian machine.
            self.log.warn(
                "{capture}: sampling method {method} asked for with value {value}, which samples "
                "nothing: every packet is forwarded (libpcap 1.9 and 1.10 clients on little-endian "
                "machines send 0 whatever value the application set)",
                capture=self.description,
                method=method,
                value=value,
            )

    @property
    def sampled_out(self) -> int:
        """Packets read but not forwarded because of sampling."""
        return self._skipped_before + (self.sampler.skipped if self.sampler is not None else 0)

    # --- counters and the end ----------------------------------------------------------

    def stats(self) -> Deferred[CaptureStats]:
        """libpcap's counters (raises L{CaptureError}); read before any close asked for later."""
        return self._submit(lambda: partial(self.handle.stats)).addCallback(self._reported)

    def _reported(self, stats: CaptureStats) -> CaptureStats:
        self.last_stats = stats
        return stats

    def counts(self) -> ForwardingCounts:
        """
        What this capture has forwarded and lost so far: its data channel's
        counts and the last counters libpcap reported (none are asked for).
        """
        counts = capture_counts(self.sink, self.last_stats)
        counts.sampled_out = self.sampled_out
        return counts

    def start_reading(self, reader: CaptureReader, sink: IPacketSink) -> None:
        """The data channel is up: forward the capture's packets to C{sink}, sampled."""
        hand_over = getattr(self.handle, "forward_to", None)
        if hand_over is not None:
            # --capture-workers: the worker sends on the channel, or relays its packets to C{reader}.
            hand_over(sink, self.sampler)
        self.pending_sink = None
        self.sink = sink
        self.reader = reader
        reader.sampler = self.sampler
        sink.attach_producer(reader)
        reader.start()

    def stop(self) -> Deferred[Optional[CaptureStats]]:
        """
        Stop reading and forwarding now; close the handle once the calls
        already asked for are done.  Fires with the final counters (C{None}
        if libpcap had none).
        """
        if self._closed is None:
            self.stopping = True
            self._forwarded.leave(self)
            if self.pending_sink is not None and not self.pending_sink.called:
                self.pending_sink.cancel()
            if self.reader is not None:
                self.reader.stopProducing()
            sink, later = self.sink, getattr(self.handle, "owns_data_channel", False)
            if sink is not None and not later:
                sink.close()
            self._closed = self._submit(lambda: partial(close_capture, self.handle))
            if sink is not None and later:
                # A capture worker sends on the data channel's socket: it flushes and closes
                # its copy as the handle closes; only then may ours go.
                def close_ours(result: object) -> object:
                    sink.close()
                    return result

                self._closed.addBoth(close_ours)
            self._closed.addBoth(self._handle_closed)
        return self.when_closed()

    def _handle_closed(self, result: Any) -> None:
        self._closed_result = result
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            _fire(d, result)

    def when_closed(self) -> Deferred[Optional[CaptureStats]]:
        """Fires with the final counters once the handle is closed (L{stop} was called)."""
        if self._closed is not None and self._closed.called:
            result = self._closed_result
            return defer.fail(result) if isinstance(result, Failure) else defer.succeed(result)
        d: Deferred[Optional[CaptureStats]] = Deferred()
        self._close_waiters.append(d)
        return d
