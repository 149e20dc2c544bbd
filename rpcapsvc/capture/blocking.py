"""
Where the daemon's blocking capture work runs.

Opening, probing and closing a capture, compiling a filter, placing one in
the kernel, listing interfaces and reading counters all block: libpcap (and
the kernel under it) takes tens of milliseconds for some of them.  None of it
runs in the reactor thread: a capture system names a L{BlockingRunner} that
runs such a call elsewhere and gives its result back as a L{Deferred}.

A real capture system runs them in a thread pool (L{pool_runner}: the
reactor's, or one the service owns, L{capture_thread_pool}); an in-memory
one (L{rpcapsvc.testing.FakeCaptureSystem}) runs them in place
(L{run_in_place}), so that tests stay synchronous.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

_T = TypeVar("_T")

CAPTURE_THREADS = 16
"""
Threads of the service's capture pool.  Opening and closing a capture mostly
wait in the kernel (an RCU grace period, about 20 ms each) without the GIL,
so they overlap: 64 opens take about 220 ms on 10 threads, 140 ms on 16.
More threads contend with the reactor for the GIL each time a kernel call
returns: with 32, a storm of 64 startcaps stalled the reactor up to 670 ms,
against 230 ms with 16.
"""


class BlockingRunner(Protocol):
    """Runs a blocking call somewhere, its result (or exception) in a Deferred."""

    def __call__(self, f: Callable[[], _T]) -> Deferred[_T]: ...


def run_in_place(f: Callable[[], _T]) -> Deferred[_T]:
    """Run C{f} now, in this thread: for in-memory capture systems and tests."""
    return defer.execute(f)


def pool_runner(reactor: Any = None, pool: Any = None) -> BlockingRunner:
    """
    Run calls in C{pool}, results delivered in the reactor thread.  C{pool}
    is a C{ThreadPool}, or a callable giving the one to use now; where there
    is none, C{reactor}'s thread pool.
    """

    def run(f: Callable[[], _T]) -> Deferred[_T]:
        r = reactor
        if r is None:
            from twisted.internet import reactor as r
        chosen = pool() if callable(pool) else pool
        return threads.deferToThreadPool(r, chosen if chosen is not None else r.getThreadPool(), f)

    return run


def capture_thread_pool(threads: int = CAPTURE_THREADS) -> ThreadPool:
    """A thread pool for capture work, not yet started (its owner starts and stops it)."""
    return ThreadPool(0, threads, name="rpcapd-capture")


def runner_of(system: object) -> BlockingRunner:
    """
    How C{system} (an L{rpcapsvc.capture.system.ICaptureSystem}) wants its
    blocking calls run: its C{run_blocking}, or in place for a system that
    names none (an embedder's own, written before there was a choice).
    """
    run = getattr(system, "run_blocking", None)
    return run if run is not None else run_in_place
