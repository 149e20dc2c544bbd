"""
Fair admission: who gets a session when the daemon is busy.

Connections that have not logged in yet and logged-in sessions are counted
apart, so that neither can lock the other out:

- Connections waiting to log in (passive ones only) share a pool of
  C{max_unauthenticated} slots, of which one client address (an IPv6 /64)
  holds at most C{max_unauthenticated_per_host}.  A new connection is never
  turned away for them: when its address's share, or the pool, is full, the
  connection that has waited longest (of that address, or of the pool) is
  closed with error 2 to make room.  A real client logs in within
  milliseconds of connecting, so the one that has waited longest is a
  staller; stallers cannot keep a real client out, whatever their number.
- Logged-in sessions, passive and active, count against C{max_sessions}.
  When they fill it, a login closes the passive session that has been idle
  longest (no capture running, no request for C{reclaim_idle_after} seconds)
  with error 14; when none is idle, the login, and any new connection, is
  refused with error 1.  A session that captures is never closed to make room.
- Active sessions (the daemon connected to a collector) are never in the
  pool and never closed to make room.

The members are the service's control connections (L{RpcapServerProtocol}),
shared by all its factories; their sessions' states say which count where.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Collection, Iterable, Optional, Protocol

from twisted.logger import Logger

from ..protocol.wire import ErrorCode, ErrorReply, Message
from .session import LOGGED_IN, ServerSession, SessionPolicy, SessionState

TOO_MANY_SESSIONS = "too many sessions; try again later"

_tickets = itertools.count(1)


def ticket() -> int:
    """A number for a new connection, larger than every earlier one's: its age."""
    return next(_tickets)


class Member(Protocol):
    """What admission needs of a control connection."""

    active: bool
    peer_host: str
    ticket: int
    session: Optional[ServerSession]

    def send_message(self, message: Message) -> None: ...


def host_key(host: str) -> str:
    """
    The address a per-host limit counts by: an IPv4 address (IPv4-mapped
    IPv6 ones too), an IPv6 address's /64 (one host's share of addresses),
    or the host string as it is (UNIX sockets: "").
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class Admission:
    """The admission rules over C{members}, the service's control connections."""

    log = Logger()

    def __init__(self, policy: SessionPolicy, members: Collection[Member]) -> None:
        self.policy = policy
        self.members = members

    # --- who is where ---------------------------------------------------------------

    def waiting(self) -> list[Member]:
        """Passive connections not logged in yet, oldest first."""
        waiting = [
            m
            for m in self.members
            if not m.active and m.session is not None and m.session.state is SessionState.AUTHENTICATING
        ]
        return sorted(waiting, key=lambda m: m.ticket)

    def logged_in(self) -> list[Member]:
        return [m for m in self.members if m.session is not None and m.session.state in LOGGED_IN]

    def reclaimable(self) -> Optional[Member]:
        """The passive session idle longest, if it has been idle long enough to make room."""
        after = self.policy.reclaim_idle_after
        if after <= 0:
            return None
        best: Optional[Member] = None
        best_idle = 0.0
        for m in self.logged_in():
            if m.active or m.session is None:
                continue
            idle = m.session.idle_for()
            if idle is not None and idle >= after and (best is None or idle > best_idle):
                best, best_idle = m, idle
        return best

    # --- the rules ------------------------------------------------------------------

    def admit(self, newcomer: Member) -> Optional[str]:
        """
        A new connection, not yet a member: make room for it in the pool of
        connections waiting to log in.  C{None} admits it; otherwise why it
        is refused (only when logged-in sessions fill C{max_sessions} and
        none of them is idle).
        """
        if len(self.logged_in()) >= self.policy.max_sessions and self.reclaimable() is None:
            return TOO_MANY_SESSIONS
        if newcomer.active:
            return None
        waiting = self.waiting()
        key = host_key(newcomer.peer_host)
        same_host = [m for m in waiting if host_key(m.peer_host) == key]
        self._evict(same_host, max(self.policy.max_unauthenticated_per_host, 1) - 1, f"from {key}")
        self._evict(self.waiting(), max(self.policy.max_unauthenticated, 1) - 1, "in all")
        return None

    def _evict(self, oldest_first: Iterable[Member], keep: int, where: str) -> None:
        pool = list(oldest_first)
        for victim in pool[: max(len(pool) - keep, 0)]:
            assert victim.session is not None
            # The session's own "closed" line says so, with its id and peer.
            victim.send_message(
                ErrorReply(
                    ErrorCode.INITTIMEOUT,
                    "not logged in, and too many connections are waiting to log in: closed to make room",
                )
            )
            victim.session.close(
                f"not logged in; made room for a newer connection (too many waiting to log in, {where})"
            )

    def admit_login(self, session: ServerSession) -> bool:
        """
        C{session} has proved who it is: may it become a logged-in session?
        When logged-in sessions fill C{max_sessions}, the one idle longest
        is closed to make room, if there is one; otherwise, no.
        """
        if len(self.logged_in()) < self.policy.max_sessions:
            return True
        victim = self.reclaimable()
        if victim is None or victim.session is None:
            return False
        idle = victim.session.idle_for() or 0.0
        # The session's own "closed" line says so, with its id and peer.
        victim.send_message(
            ErrorReply(
                ErrorCode.RUNTIMETIMEOUT,
                f"idle for {idle:.0f} s while the daemon is full: closed to make room for another client",
            )
        )
        victim.session.close(f"idle for {idle:.1f} s; made room for a new login (sessions full)")
        return True


__all__ = ["Admission", "TOO_MANY_SESSIONS", "host_key", "ticket"]
