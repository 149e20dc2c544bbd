"""
L{ForwardedTraffic}: every capture of a service leaves out what every
capturing session of that service forwards.

Each capturing session's control and data traffic is one pcap expression (a
I{clause}: C{host PEER and (DATA or CONTROL)}).  Two sessions capturing the
interface their packets leave by would otherwise capture each other's
forwarded packets, without end; so every capture's filter starts with all
the clauses, then runs the client's program on what is left.

The clauses are compiled one by one, once per link type in use (a fraction
of a millisecond each, in the capture system's worker threads), and their
programs are chained in Python: a clause that matches rejects the packet, one
that does not falls through to the next clause, the last to the client's
program.  libpcap's optimiser gains nothing on such a disjunction (measured:
2005 instructions for 64 clauses compiled whole, 1984 chained), and compiling
the whole disjunction costs 80 to 400 ms at 64 sessions, holding the GIL.

When the set of clauses changes (a capture starts or ends), one I{round}
compiles what is missing and places the new filter on every capture; changes
made while a round is under way are all taken by one more round after it.
Each capture places its filters one at a time, in its own order (see
L{IExclusionMember.place}), computed when the placement starts, so the last
placement always has the latest set.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Hashable, Optional, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..protocol import bpf
from ..protocol.wire import BpfInstruction, BpfProgram

Prefix = tuple[BpfInstruction, ...]
"""Instructions that reject a packet matching some clause and fall through to what follows otherwise."""

_EMPTY = BpfProgram(())


class IExclusionMember(Protocol):
    """A capture whose filter leaves out the service's forwarded traffic (a session's)."""

    @property
    def linktype(self) -> int: ...

    def compile_clauses(self, clauses: list[str], linktype: int) -> Deferred[list[Optional[BpfProgram]]]:
        """Compile C{clauses} for C{linktype} off the reactor thread (C{None} where one cannot be)."""

    def place(self, if_changed: bool = False) -> Deferred[bool]:
        """
        Place this capture's filter (after any placement already under way),
        built when it starts from L{ForwardedTraffic.exclusion}; with
        C{if_changed}, only if that differs from what was placed last.
        C{False} if nothing was placed.  Fails with the kernel's refusal.
        """

    def describe(self) -> str:
        """Who this is, for the log (C{session=N peer=HOST:PORT capture on IFACE})."""


PLACEMENTS_AT_ONCE = 2
"""
Filters a round places at once.  Placing one is CPU work (the kernel checks
and compiles a program of a few thousand instructions: 1.5 to 4 ms), so more
at once only queue the other work of the capture threads (opening, closing,
listing interfaces) behind them.
"""

GATHER_SECONDS = 0.25
"""
How long a round about to place filters waits for captures still being
opened (each would need a round of its own): a storm of startcaps is served
by one round.
"""


class ForwardedTraffic:
    """What every capturing session of a service forwards; see the module docstring."""

    log = Logger()

    def __init__(self, placements_at_once: int = PLACEMENTS_AT_ONCE, gather: float = GATHER_SECONDS) -> None:
        self._clauses: dict[IExclusionMember, str] = {}
        self._programs: dict[tuple[str, int], Optional[tuple[int, Prefix]]] = {}
        """Each clause compiled for a link type: a serial number and the prefix; C{None} where it cannot be."""
        self._serials = itertools.count(1)
        self._composed: dict[int, tuple[tuple[int, ...], Prefix]] = {}
        """Per link type: the serial numbers of the clauses, and all of them as one prefix."""
        self._waiters: list[tuple[IExclusionMember, Deferred[None]]] = []
        self._version = 0
        """Changes to the set of clauses so far."""
        self._placed = 0
        """The version the last round placed."""
        self._round_running = False
        self._kicking = False
        self._placing = defer.DeferredSemaphore(placements_at_once)
        self._gather = gather
        self._opening = 0
        self._clock: Any = None
        self._news: Optional[Deferred[None]] = None
        self.rounds = 0
        """Rounds run so far (for tests and the curious)."""

    # --- membership ----------------------------------------------------------------

    def join(self, member: IExclusionMember, clause: str) -> Deferred[None]:
        """
        C{member}'s traffic is C{clause}, and its capture is to leave out
        everyone's.  Fires once a round that began after this call has placed
        the filters of every capture (C{member}'s included, so that it may
        start reading), or fails with the kernel's refusal of C{member}'s own
        filter, in which case C{member} has left again.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append((member, d))
        self._clauses[member] = clause
        self._changed()
        return d

    def leave(self, member: IExclusionMember) -> None:
        """C{member}'s capture has ended: its traffic is no longer left out, it gets no more filters."""
        if self._clauses.pop(member, None) is not None:
            self._changed()

    def opening(self, clock: Any) -> Callable[[], None]:
        """
        A capture is being opened, and will likely join soon: a round about
        to place filters waits for it, at most L{GATHER_SECONDS} (C{clock}
        tells the time).  Call what this returns when the open is over.
        """
        self._clock = clock
        self._opening += 1
        done = False

        def opened() -> None:
            nonlocal done
            if not done:
                done = True
                self._opening -= 1
                self._news_arrived()

        return opened

    def __contains__(self, member: object) -> bool:
        return member in self._clauses

    def __len__(self) -> int:
        return len(self._clauses)

    def clauses(self) -> list[str]:
        return list(self._clauses.values())

    # --- filters -------------------------------------------------------------------

    def exclusion(self, member: IExclusionMember) -> tuple[Hashable, list[Prefix]]:
        """
        What C{member}'s filter should start with, best first: every clause
        compiled for its link type, then its own clause alone (for when the
        kernel will not take everything); empty when its own clause cannot be
        compiled for its link type either.  And a key that is the same as
        long as these are.
        """
        linktype = member.linktype
        own = self._programs.get((self._clauses.get(member, ""), linktype))
        parts = [p for p in (self._programs.get((c, linktype)) for c in self._clauses.values()) if p]
        serials = tuple(serial for serial, _ in parts)
        composed = self._composed.get(linktype)
        if composed is None or composed[0] != serials:
            # The same tuple for every capture of the link type, until the next change.
            composed = (serials, tuple(itertools.chain.from_iterable(prefix for _, prefix in parts)))
            self._composed[linktype] = composed
        everything = composed[1]
        candidates = [everything] if everything else []
        if own and own[1] and len(own[1]) != len(everything):  # (as long: the same, own being in it)
            candidates.append(own[1])
        return (serials, own[0] if own else 0), candidates

    def prefixes(self, member: IExclusionMember) -> list[Prefix]:
        """L{exclusion}'s prefixes."""
        return self.exclusion(member)[1]

    # --- rounds --------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        self._news_arrived()
        self._kick()

    def _news_arrived(self) -> None:
        news, self._news = self._news, None
        if news is not None:
            news.callback(None)

    def _kick(self) -> None:
        if self._kicking:
            return  # a round ended inside the loop below, which goes on
        self._kicking = True
        try:
            while not self._round_running and (self._version != self._placed or self._waiters):
                self._round_running = True
                self._round().addBoth(self._round_ended)
        finally:
            self._kicking = False

    def _round_ended(self, result: object) -> None:
        self._round_running = False
        if isinstance(result, Failure):
            self._placed = self._version  # not again and again: the next change tries
            self.log.failure("Updating the filters that leave out forwarded traffic failed", result)
        self._kick()

    @defer.inlineCallbacks
    def _round(self) -> Any:
        self.rounds += 1
        waiters: list[tuple[IExclusionMember, Deferred[None]]] = []
        try:
            yield self._gathered()
            version = self._version
            waiters, self._waiters = self._waiters, []
            members = list(self._clauses)
            placements = yield defer.DeferredList([self._place(m) for m in members], consumeErrors=True)
            self._placed = version
            outcome = {m: result for m, (_, result) in zip(members, placements)}
        except BaseException:
            failure = Failure()
            for _, d in waiters:
                d.errback(failure)
            raise
        present = set(self._clauses.values())
        for key in [k for k in self._programs if k[0] not in present]:
            del self._programs[key]
        for member, d in waiters:
            result = outcome.get(member)
            if isinstance(result, Failure):
                self.leave(member)
                d.errback(result)
            else:
                d.callback(None)

    @defer.inlineCallbacks
    def _gathered(self) -> Any:
        """
        Compile until every clause is compiled for every link type in use
        (or has been tried), waiting a little for captures still opening:
        those that join meanwhile are served by this round too.
        """
        tried: set[tuple[str, int]] = set()
        deadline = self._clock.seconds() + self._gather if self._opening and self._clock is not None else 0.0
        while True:
            if (yield self._compile_missing(tried)):
                continue
            if not self._opening or self._clock is None or self._clock.seconds() >= deadline:
                return
            news: Deferred[None] = Deferred()
            self._news = news
            timer = self._clock.callLater(deadline - self._clock.seconds(), self._news_arrived)
            yield news
            if timer.active():
                timer.cancel()

    def _place(self, member: IExclusionMember) -> Deferred[bool]:
        d = self._placing.run(member.place, True)

        def refused(f: Failure) -> Failure:
            self.log.warn(
                "{member}: cannot update the filter that leaves out forwarded traffic: {why}",
                member=member.describe(),
                why=f.getErrorMessage(),
            )
            return f

        return d.addErrback(refused)

    def _compile_missing(self, tried: set[tuple[str, int]]) -> Deferred[bool]:
        """
        Compile, per link type in use, the clauses not compiled for it yet
        (and not in C{tried}, to which they are added); whether there were any.
        """
        jobs = []
        by_linktype: dict[int, IExclusionMember] = {}
        for member in self._clauses:
            by_linktype.setdefault(member.linktype, member)
        for linktype, member in by_linktype.items():
            missing = [
                c
                for c in dict.fromkeys(self._clauses.values())
                if (c, linktype) not in self._programs and (c, linktype) not in tried
            ]
            tried.update((c, linktype) for c in missing)
            if missing:
                jobs.append(self._compile(member, missing, linktype))
        return defer.gatherResults(jobs, consumeErrors=True).addCallback(lambda _: bool(jobs))

    def _compile(self, member: IExclusionMember, clauses: list[str], linktype: int) -> Deferred[None]:
        def compiled(programs: list[Optional[BpfProgram]]) -> None:
            for clause, program in zip(clauses, programs):
                entry = (next(self._serials), _prefix(program)) if program is not None else None
                self._programs[(clause, linktype)] = entry

        def failed(f: Failure) -> None:
            # Left uncompiled: placed without them now, tried again at the next round.
            self.log.failure(
                "Cannot compile the forwarded-traffic clauses for link type {lt}", f, lt=linktype
            )

        return member.compile_clauses(clauses, linktype).addCallbacks(compiled, failed)


def _prefix(program: BpfProgram) -> Prefix:
    """C{program} (a clause) as a prefix: its matches rejected, the rest passed on."""
    return bpf.exclude(program, _EMPTY).instructions
