"""
Command-line errors in one line.

twistd answers a plugin's L{usage.UsageError} with its whole help screen
and then the message; a user who mistyped one option should see one line
naming the problem and what to do.  L{OneLineErrors} gives a plugin's
options that: under twistd (which sets C{parent}) an error is written as
C{twistd PLUGIN: MESSAGE} and the process exits with status 2.  Parsed on
their own (tests, the C{rpcapd} front end), the options raise as usual.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.python import usage

USAGE_ERROR_EXIT = 2


class _NamedCoerceParameter(usage.CoerceParameter):
    """A typed option whose error names the option and what it takes (Twisted's names neither)."""

    _KINDS = {int: "a whole number", float: "a number"}

    def dispatch(self, parameterName: str, value: Optional[str]) -> None:
        if value is not None:
            try:
                self.coerce(value)
            except ValueError as e:
                kind = self._KINDS.get(self.coerce)  # type: ignore[call-overload]
                why = f"takes {kind}, not {value!r}" if kind else str(e)
                raise usage.UsageError(f"--{parameterName} {why}") from None
        super().dispatch(parameterName, value)


class OneLineErrors(usage.Options):
    command = "twistd"
    """How the message names the command (e.g. C{twistd rpcapd})."""

    def __init__(self) -> None:
        super().__init__()
        for name, handler in self._dispatch.items():
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _NamedCoerceParameter(self, handler.coerce)

    def parseOptions(self, options: Optional[Any] = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(f"{self.command}: {e}\n")
            raise SystemExit(USAGE_ERROR_EXIT) from None


START_FAILURE_EXIT = 1


def cannot_start(command: str, message: str) -> SystemExit:
    """
    What a service raises when it cannot start for a reason the operator
    can fix (a port in use): one line on the real standard error (twistd
    has redirected C{sys.stderr} into its log by then) and in the log, and
    exit status 1, where twistd would print a traceback.
    """
    from twisted.logger import Logger

    Logger(namespace=command.replace(" ", ".")).error("{message}", message=message)
    real_stderr = sys.__stderr__
    if real_stderr is not None:
        real_stderr.write(f"{command}: {message}\n")
        real_stderr.flush()
    return SystemExit(START_FAILURE_EXIT)


def listen_failure_hint(error: BaseException, option: str = "--listen") -> str:
    """A L{CannotListenError} as a sentence with what to do (choose another port with C{option})."""
    from twisted.internet.error import CannotListenError

    if isinstance(error, CannotListenError):
        where = f"{error.interface or 'every address'} port {error.port}"
        why = getattr(error.socketError, "strerror", None) or str(error.socketError)
        hint = ""
        errno_ = getattr(error.socketError, "errno", None)
        if errno_ == 98:
            hint = f"; is another daemon running there? choose another port with {option}"
        elif errno_ == 13:
            hint = "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
        elif errno_ == 99:
            hint = "; that address is not on this machine"
        return f"cannot listen on {where}: {why}{hint}"
    return f"cannot listen: {error}"


def endpoint_option(option: str, description: str) -> str:
    """
    The server endpoint string for a C{--listen}/C{--metrics} argument
    (shorthands expanded), or a L{usage.UsageError} naming the option.
    """
    from twisted.internet import reactor

    from .connections import server_endpoint_string

    try:
        return server_endpoint_string(reactor, description)
    except ValueError as e:
        raise usage.UsageError(f"{option} {e}") from None
