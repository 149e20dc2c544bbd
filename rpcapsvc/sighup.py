"""
SIGHUP for a long-running service: what C{systemctl reload} and log-rotation
tools send.

Its default action ends the process, so a service that answers it must catch
it before anyone can reach the service (before its port opens: a reload may
come as soon as the port answers) and until it stops.  The handler only
schedules the service's action in the reactor thread; the action never runs
inside the signal handler.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.internet.interfaces import IReactorFromThreads


class SighupHandler:
    """
    Runs C{action} in the reactor thread on each SIGHUP, between L{install}
    and L{restore}; both do nothing unless C{enabled} (a service embedded in
    an application that handles its signals itself).
    """

    def __init__(
        self, reactor: IReactorFromThreads, action: Callable[[], object], enabled: bool = True
    ) -> None:
        self._reactor = reactor
        self._action = action
        self.enabled = enabled
        self._installed = False
        self._previous: Any = None

    def __call__(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self._action)

    def install(self) -> None:
        """Catch SIGHUP from now on (again: nothing)."""
        if self.enabled and not self._installed:
            self._previous = signal.signal(signal.SIGHUP, self)
            self._installed = True

    def restore(self) -> None:
        """Give SIGHUP back to the handler it had (one installed from C cannot be given back)."""
        if self._installed:
            if self._previous is not None:
                signal.signal(signal.SIGHUP, self._previous)
            self._installed = False
            self._previous = None
