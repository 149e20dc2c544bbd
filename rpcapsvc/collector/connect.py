"""
Reaching an RPCAP daemon and saying why not: what C{rpcap-dump} and
C{rpcap-extcap} share, from connecting to a daemon to letting it go.

  - L{client_endpoint}: the endpoint for a daemon, plain TCP, or TLS
    (C{rpcaps://}, C{--tls}) checked against C{--ca} or the system's CAs.
  - L{Daemon}: a daemon as the messages name it, and each way reaching it,
    agreeing on TLS with it, logging in to it or starting the capture can
    fail (refused, a name that does not resolve, a certificate not trusted,
    a wrong password, a server that accepts and says nothing, an interface
    it does not have, a data connection a firewall stops), said in one line
    with what to do about it.  What to do is said in the command's own
    words (L{Advice}): a URL and C{--timeout} for rpcap-dump, the fields of
    Wireshark's dialog for rpcap-extcap.
  - L{Ending}, L{stop_at_daemon}, L{data_channel_trouble}, L{ended_by}: the
    end of a capture, at the daemon and in the line that says how it ended.

Nothing heavier than the standard library and attrs is imported until a call
needs it: rpcap-extcap imports this module for the listing calls Wireshark
makes each time it starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Sequence, Union

import attrs

from ..logtext import escaped

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IStreamClientEndpoint

    from ..protocol.wire import ErrorReply, InterfaceInfo, RemoteError, StatsReply
    from .client import RemoteCapture, RpcapClientProtocol


# --- the endpoint --------------------------------------------------------------------------


class UnusableCA(Exception):
    """The CA certificate given cannot be read, or holds no certificate: the message says which."""


def client_endpoint(
    reactor: Any, host: str, port: int, tls: bool, ca: Optional[str], timeout: float
) -> IStreamClientEndpoint:
    """
    The endpoint for the daemon at C{host}:C{port}: plain TCP, or with
    C{tls} TLS, whose certificate must name C{host} and be signed by the CA
    in the PEM file C{ca} (without one, by one the system trusts).

    @raise UnusableCA: C{ca} cannot be read, or holds no PEM certificate.
    """
    from twisted.internet.endpoints import HostnameEndpoint

    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if not tls:
        return endpoint
    from twisted.internet import ssl
    from twisted.internet.endpoints import wrapClientTLS

    if ca:
        try:
            with open(ca, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
        except OSError as e:
            raise UnusableCA(f"cannot read the CA certificate {ca}: {e.strerror or e}") from None
        except Exception as e:
            raise UnusableCA(
                f"{ca} holds no PEM certificate ({e}): give the CA's certificate to --ca"
            ) from None
        options = ssl.optionsForClientTLS(host, trustRoot=trust)
    else:
        options = ssl.optionsForClientTLS(host)
    return wrapClientTLS(options, endpoint)


# --- why not, in one line ---------------------------------------------------------------------


def is_tls_error(error: BaseException) -> bool:
    """Whether C{error} is a TLS failure: OpenSSL's, or a certificate that does not name the host."""
    try:
        from OpenSSL.SSL import Error as TLSError
        from service_identity import VerificationError
    except ImportError:
        return False
    return isinstance(error, (TLSError, VerificationError))


def tls_reasons(error: BaseException) -> str:
    """The reasons in an OpenSSL error (a list of (library, function, reason))."""
    reasons = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return ", ".join(r for r in reasons if r) or str(error) or type(error).__name__


@attrs.frozen
class Advice:
    """
    What a command tells its user to do about a failure, in its own words
    (its options, or the fields of Wireshark's dialog): each a few words
    that end a message, after a colon or a semicolon.
    """

    give_ca: str
    """For a certificate that no CA trusted here signed (C{give the CA that signed it with --ca PEM})."""
    without_tls: str
    """For TLS to a daemon that does not speak it (C{use rpcap:// instead of rpcaps://})."""
    with_tls: str
    """For a daemon that wants TLS (C{use rpcaps://HOST:PORT/}); empty where TLS is not ours to ask for."""
    tls_hint: str
    """The same in a word or two, before C{if it listens with TLS} (C{rpcaps://}); empty likewise."""
    log_in: str
    """For a daemon that wants a password, given no user (C{log in with --auth USER ...})."""
    check_login: str
    """For a daemon that refused the user and password given."""
    try_udp: str
    """For a data connection that could not be made (C{try --udp})."""
    wait_longer: str = ""
    """For a deadline that passed (C{--timeout to wait longer}); empty where there is no changing it."""


@attrs.frozen
class Daemon:
    """
    A daemon as a command's messages name it, and each way it could not be
    reached, spoken to in TLS, logged in to or made to start the capture,
    in one line that ends with what to do (L{Advice}).
    """

    advice: Advice
    address: str = ""
    """C{HOST:PORT} of a daemon we connect to; empty for one that dialled in (active mode)."""
    host: str = ""
    """The name we connect to (its certificate must hold it), or the address a daemon dialled in from."""
    tls: bool = False
    """Whether we asked for TLS."""
    user: Optional[str] = None
    """Who we log in as (C{None}: null authentication)."""

    @property
    def name(self) -> str:
        """The daemon, as messages name it."""
        if self.address:
            return f"the daemon at {self.address}"
        return f"the daemon at {self.host}" if self.host else "the daemon"

    def unreachable(self, error: BaseException, timeout: float) -> str:
        """Why the connection to the daemon failed: refused, no answer in time, a name that does not resolve, TLS."""
        from twisted.internet import defer
        from twisted.internet import error as net

        if is_tls_error(error):
            return self.tls_failed(error)
        where = self.address or self.host
        if isinstance(error, (defer.TimeoutError, net.TimeoutError)):
            wait = f" ({self.advice.wait_longer})" if self.advice.wait_longer else ""
            return f"cannot connect to {where}: no answer within {timeout:g} s{wait}"
        if isinstance(error, net.ConnectionRefusedError):
            return (
                f"cannot connect to {where}: connection refused (is the daemon running and listening there?)"
            )
        if isinstance(error, net.DNSLookupError):
            return f"cannot connect to {where}: the name does not resolve (check the host name)"
        if isinstance(error, net.ConnectError):
            os_error = getattr(error, "osError", None)
            reason = (
                getattr(os_error, "strerror", None) if os_error else (error.args[0] if error.args else "")
            )
            return f"cannot connect to {where}: {reason or error}"
        return f"cannot connect to {where}: {error}"

    def tls_failed(self, error: BaseException) -> str:
        """A TLS failure (L{is_tls_error}): what went wrong, and what to do."""
        from service_identity import VerificationError

        reasons = tls_reasons(error)
        if not self.address:  # it dialled in: it is the one that checked a certificate
            return f"TLS with {self.name} failed: {reasons}"
        where = self.address
        if isinstance(error, VerificationError):
            return (
                f"the certificate of the daemon at {where} does not name {self.host}:"
                " connect with a name or address the certificate holds"
            )
        if "certificate verify failed" in reasons:
            return (
                f"the certificate of the daemon at {where} is not trusted ({reasons}): {self.advice.give_ca}"
            )
        if (
            "wrong version number" in reasons
            or "unexpected eof" in reasons
            or "record layer failure" in reasons
        ):
            return (
                f"TLS with {where} failed ({reasons}): if the daemon does not listen with TLS,"
                f" {self.advice.without_tls}"
            )
        return f"TLS with the daemon at {where} failed: {reasons}"

    def refused(self, error: RemoteError) -> str:
        """The daemon's refusal of a request: a password it wants, a wrong one, TLS it requires, this host."""
        from ..protocol.wire import ErrorCode

        said = f"{escaped(error.text)} (error {error.code})"
        daemon = self.name
        if error.code in (ErrorCode.AUTH, ErrorCode.AUTH_FAILED, ErrorCode.AUTH_TYPE_NOTSUP):
            if not self.user:
                return f"{daemon} wants a password: {said}; {self.advice.log_in}"
            return f"{daemon} refused the login as {self.user}: {said}; {self.advice.check_login}"
        if error.code == ErrorCode.TLS_REQUIRED and self.advice.with_tls:
            return f"{daemon} requires TLS: {said}; {self.advice.with_tls}"
        if error.code == ErrorCode.HOSTNOAUTH:
            return f"{daemon} does not let this host in: {said}; its allow list must name this host"
        return f"{daemon} refused: {said}"

    def silent(self, seconds: float) -> str:
        """The daemon let us connect, then did not answer the login within C{seconds}."""
        hints = []
        if not self.tls and self.advice.tls_hint:
            hints.append(f"{self.advice.tls_hint} if it listens with TLS")
        if self.advice.wait_longer:
            hints.append(self.advice.wait_longer)
        said = f" ({'; '.join(hints)})" if hints else ""
        if not self.address:
            return f"{self.name} did not answer the login within {seconds:g} s{said}"
        return (
            f"{self.address} accepted the connection but did not answer the login"
            f" within {seconds:g} s: is it an RPCAP daemon?{said}"
        )

    def gone(
        self, error: BaseException, client: Optional[RpcapClientProtocol], spoke_tls: bool = False
    ) -> str:
        """
        Why the control connection failed before the capture started: TLS,
        an error the daemon sent (kept by C{client}), the connection closed
        or lost without an answer (C{spoke_tls}: the daemon's first bytes
        were TLS), bytes that are not RPCAP.
        """
        from twisted.internet.error import ConnectionDone, ConnectionLost

        from ..protocol.wire import RemoteError, RpcapError
        from .client import protocol_broken

        if is_tls_error(error):
            return self.tls_failed(error)
        if protocol_broken(error, client):
            return self.broke_protocol(error, client)
        if client is not None and client.errors:
            first = client.errors[0]
            return self.refused(RemoteError(first.code, first.text))
        if isinstance(error, (ConnectionDone, ConnectionLost)):
            what = "closed the connection" if isinstance(error, ConnectionDone) else "lost the connection"
            if not self.address:
                return f"{self.name} {what} without answering"
            with_tls = "" if self.tls else self.advice.with_tls
            if spoke_tls and with_tls:
                return f"{self.address} answered with TLS: {with_tls}"
            if with_tls:
                return f"{self.address} {what} without answering: if the daemon listens with TLS, {with_tls}"
            return f"{self.address} {what} without answering"
        if isinstance(error, RpcapError):
            return f"{self.name} sent something that is not RPCAP: {escaped(str(error))}"
        return f"{self.name}: {escaped(str(error))}"

    def broke_protocol(self, error: BaseException, client: Optional[RpcapClientProtocol] = None) -> str:
        """The daemon broke the protocol (L{ProtocolBroken}): what it did."""
        why = client.broken if client is not None and client.broken is not None else str(error)
        return f"{self.name} broke the protocol: {why}"

    def not_started(
        self,
        error: BaseException,
        device: str,
        interfaces: Sequence[InterfaceInfo],
        timeout: float,
        no_such_interface: str = "",
    ) -> Optional[str]:
        """
        Why the capture on C{device} did not start: a filter that does not
        compile (a L{ValueError}: the command's usage error), the daemon's
        refusal (with C{interfaces}, the ones it has, and C{no_such_interface}
        if it has not C{device}), a data connection that did not come within
        C{timeout} or could not be made; C{None} for any other C{error}.
        """
        from twisted.internet import defer
        from twisted.internet.error import ConnectError

        from ..protocol.wire import ErrorCode, RemoteError

        daemon = self.name
        if isinstance(error, ValueError):  # the filter, compiled here for the daemon's link type
            return f"{error} (man pcap-filter gives the syntax)"
        if isinstance(error, RemoteError):
            said = f"{escaped(error.text)} (error {error.code})"
            if error.code == ErrorCode.OPEN:
                names = interface_names(interfaces)
                more = f"; {no_such_interface}" if no_such_interface else ""
                return f"{daemon} cannot open {device}: {said}; its interfaces: {names}{more}"
            if error.code == ErrorCode.STARTCAPTURE:
                return f"{daemon} cannot start the capture: {said}"
            return self.refused(error)
        if isinstance(error, defer.TimeoutError):
            return (
                f"{daemon} did not open the data connection within {timeout:g} s:"
                f" a firewall between it and here? ({self.advice.try_udp})"
            )
        if isinstance(error, ConnectError):
            return (
                f"cannot make the data connection to {daemon} ({error}):"
                f" a firewall between here and it? ({self.advice.try_udp})"
            )
        return None


# --- the end of a capture -----------------------------------------------------------------------


@attrs.frozen
class Ending:
    """Why a capture ended: the exit status, the line that says so, and what kind of ending (if told apart)."""

    code: int
    text: str
    kind: str = ""


async def stop_at_daemon(
    capture: RemoteCapture, wait: Callable[[Deferred[Any], str], Awaitable[Any]]
) -> Union[StatsReply, Exception]:
    """
    End C{capture} at the daemon: its last counters (or why there are none),
    then, if they came, the end of the capture; the data channel closed.
    C{wait(d, what)} awaits each reply (C{what}: "the daemon's last counters",
    "the daemon to end the capture") as the command awaits one, with its deadline.
    """
    client = capture.client
    result: Union[StatsReply, Exception]
    try:
        result = await wait(client.stats(), "the daemon's last counters")
    except Exception as e:
        result = e
    else:
        try:
            await wait(client.end_capture(), "the daemon to end the capture")
        except Exception:
            pass
    capture.close_data()
    return result


def data_channel_trouble(capture: RemoteCapture) -> Optional[str]:
    """What went wrong with the capture's data channel, once it is over; C{None} if nothing did."""
    if capture.data_error is not None:
        return f"the data channel could not be read: {capture.data_error}"
    if capture.nothing_decoded:
        return "the data channel carried data, but not one packet could be decoded from it"
    return None


def ended_by(daemon: str, error: ErrorReply) -> str:
    """The line for a capture the daemon ended itself, with the error it sent."""
    return f"{daemon} ended the capture: {escaped(error.text)} (error {error.code})"


NAMES_SHOWN = 20
"""Interfaces named in a message that lists them; the rest are counted."""


def interface_names(interfaces: Sequence[InterfaceInfo]) -> str:
    """The daemon's interfaces, escaped, the first L{NAMES_SHOWN} of them by name."""
    names = [escaped(i.name, 64) for i in interfaces[:NAMES_SHOWN]]
    more = len(interfaces) - NAMES_SHOWN
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "none"
