"""
Tests for L{RpcapdService}, the whole daemon as one service: what it listens
on, which collectors it keeps connected, how a config file (re)load changes
them and the client policy, SIGHUP; and, at the control-connection level,
who is refused (HOSTNOAUTH) and which interface a session is limited to.
All on a memory reactor: no sockets, no real capture.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
from typing import Any, Callable, Optional

from twisted.application.internet import ClientService, StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.config import ActiveTarget, DaemonConfig
from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    InterfaceAddress,
    InterfaceFlags,
    InterfaceInfo,
    Message,
    OpenReply,
    OpenRequest,
)
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.session import SessionPolicy
from rpcapsvc.service import RpcapdService, resolve_clients
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels

from ._fixtures import Client

LO = InterfaceInfo(
    "lo",
    "",
    InterfaceFlags.LOOPBACK | InterfaceFlags.UP | InterfaceFlags.RUNNING,
    (
        InterfaceAddress(ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("255.0.0.0")),
        InterfaceAddress(ipaddress.ip_address("::1")),
    ),
)
ETH0 = InterfaceInfo(
    "eth0",
    "Ethernet adapter",
    InterfaceFlags.UP | InterfaceFlags.RUNNING,
    (InterfaceAddress(ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("255.255.255.0")),),
)

A = ActiveTarget("a.example:2003")
B = ActiveTarget("b.example:2004")
C = ActiveTarget("c.example:2003", ifname="eth0")


class Reactor(MemoryReactorClock):
    """A memory reactor that queues C{callFromThread} calls (as a signal handler makes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_thread.append((f, args))

    def run_from_thread(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)


def fake_getaddrinfo(table: dict[str, list[str]]) -> Callable[..., Any]:
    """A C{socket.getaddrinfo} that knows only the names in C{table}."""

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in table[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, 0, 0, 0) if family == socket.AF_INET6 else (address, 0)
            out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    return getaddrinfo


def connect(factory: RpcapServerFactory, host: str = "192.0.2.10") -> Client:
    return Client(factory, host)


class ServiceTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.system = FakeCaptureSystem([ETH0, LO])
        self.addCleanup(self.close_handles)

    def close_handles(self) -> None:
        for handle in self.system.handles:
            handle.close()

    def service(self, **kwargs: Any) -> RpcapdService:
        kwargs.setdefault("listen", [])
        kwargs.setdefault("capture_system", self.system)
        service = RpcapdService(self.reactor, **kwargs)
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def started(self, **kwargs: Any) -> RpcapdService:
        service = self.service(**kwargs)
        service.startService()
        return service

    def dialled(self) -> list[tuple[str, int]]:
        return [(c[0], c[1]) for c in self.reactor.tcpClients]

    def assertError(self, message: Message | None, code: int) -> None:
        self.assertIsInstance(message, ErrorReply)
        assert isinstance(message, ErrorReply)
        self.assertEqual(message.code, code, message.text)


class ListenTests(ServiceTestBase):
    def test_active_only_listens_nowhere(self) -> None:
        """With only a collector, the daemon connects out and opens no listening port."""
        service = self.service(active=[ActiveTarget("127.0.0.1:2003")])
        [child] = list(service)
        self.assertIsInstance(child, ClientService)
        service.startService()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.dialled(), [("127.0.0.1", 2003)])

    def test_listens(self) -> None:
        service = self.started(listen=["tcp:0:interface=127.0.0.1"])
        self.assertEqual(len(self.reactor.tcpServers), 1)
        port, factory, _, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        self.assertIs(factory, service.passive_factory)
        self.assertFalse(service.passive_factory.active)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_several_listeners_and_a_collector(self) -> None:
        service = self.started(
            listen=["tcp:2002:interface=127.0.0.1", "tcp6:2002:interface=\\:\\:1"],
            active=[A],
        )
        self.assertEqual(
            [(p, i) for p, _, _, i in self.reactor.tcpServers], [(2002, "127.0.0.1"), (2002, "::1")]
        )
        self.assertEqual(len(service.listeners), 2)
        self.assertEqual(self.dialled(), [("127.0.0.1", 2003)])

    def test_default_listen(self) -> None:
        """Built with nothing but a reactor, the daemon listens on TCP port 2002, every address."""
        service = RpcapdService(self.reactor, capture_system=self.system)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([(p, i) for p, _, _, i in self.reactor.tcpServers], [(2002, "")])
        [listener] = list(service)
        self.assertIsInstance(listener, StreamServerEndpointService)

    def test_stop_stops_listening(self) -> None:
        service = self.started(listen=["tcp:0"])
        service.stopService()
        [listener] = service.listeners
        self.assertFalse(listener.running)


class CollectorTests(ServiceTestBase):
    def test_add_collector(self) -> None:
        """A collector added to a running daemon is dialled at once; the others are not redialled."""
        service = self.started(active=[A])
        kept = service.collectors[A]
        service.set_collectors([A, B])
        self.assertIs(service.collectors[A], kept)
        self.assertTrue(service.collectors[B].running)
        self.assertIn(service.collectors[B], list(service))
        self.assertEqual(self.dialled(), [("127.0.0.1", 2003), ("127.0.0.1", 2004)])

    def test_remove_collector(self) -> None:
        """Removing a collector stops only its service."""
        service = self.started()
        service.set_collectors([A, B])
        a, b = service.collectors[A], service.collectors[B]
        service.set_collectors([B])
        self.assertEqual(list(service.collectors), [B])
        self.assertFalse(a.running)
        self.assertIsNone(a.parent)
        self.assertNotIn(a, list(service))
        self.assertIs(service.collectors[B], b)
        self.assertTrue(b.running)

    def test_removed_collector_not_redialled(self) -> None:
        service = self.started()
        service.set_collectors([A])
        # The collector is down: a retry is scheduled.  Removing it cancels the retry.
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            None,  # type: ignore[arg-type]
            Failure(ConnectionRefusedError()),
        )
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        service.set_collectors([])
        self.reactor.advance(120)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_unchanged_collectors_keep_their_service(self) -> None:
        service = self.started()
        service.set_collectors([A, B])
        before = dict(service.collectors)
        service.set_collectors([B, A])
        self.assertEqual(service.collectors, before)
        for target, collector in before.items():
            self.assertIs(service.collectors[target], collector)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_changed_interface_is_a_new_collector(self) -> None:
        """The same collector with another interface option is replaced, not kept."""
        service = self.started()
        plain = ActiveTarget("c.example:2003")
        service.set_collectors([plain])
        old = service.collectors[plain]
        service.set_collectors([C])
        self.assertEqual(list(service.collectors), [C])
        self.assertFalse(old.running)

    def test_duplicates_collapse(self) -> None:
        service = self.started()
        service.set_collectors([A, A, B, A])
        self.assertEqual(list(service.collectors), [A, B])
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_collectors_wait_for_start(self) -> None:
        service = self.service(active=[A])
        service.set_collectors([A, B])
        self.assertEqual(self.reactor.tcpClients, [])
        service.startService()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_stop_stops_collectors(self) -> None:
        service = self.started(active=[A, B])
        collectors = list(service.collectors.values())
        service.stopService()
        self.assertFalse(any(c.running for c in collectors))

    def test_apply_keeps_command_line_settings(self) -> None:
        """A config file adds to what the command line gave; it never takes it away."""
        service = self.started(
            active=[A], allowed_clients=["192.0.2.0/24"], policy=SessionPolicy(null_auth=True)
        )
        service.apply(DaemonConfig(active=(B,), passive_clients=("198.51.100.7",), null_auth=False))
        self.assertEqual(list(service.collectors), [A, B])
        self.assertTrue(service.policy.null_auth)
        self.assertEqual(
            service.policy.allowed_clients,
            (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.7/32")),
        )
        service.apply(DaemonConfig())
        self.assertEqual(list(service.collectors), [A])
        self.assertEqual(service.policy.allowed_clients, (ipaddress.ip_network("192.0.2.0/24"),))

    def test_collector_session_preselects_ifname(self) -> None:
        """A collector configured with ifname= gets that interface listed first and only it opened."""
        service = self.started(active=[ActiveTarget("127.0.0.1:2003", ifname="lo")])
        service.policy.null_auth = True
        client = Client(self.reactor.tcpClients[0][2], IPv4Address("TCP", "127.0.0.1", 2003))
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        reply = client.request(FindAllInterfacesRequest())
        assert isinstance(reply, FindAllInterfacesReply)
        self.assertEqual([i.name for i in reply.interfaces], ["lo", "eth0"])
        self.assertEqual(reply.interfaces[0].description, ";preselected")
        self.assertError(client.request(OpenRequest("eth0")), ErrorCode.OPEN)
        self.assertIsInstance(client.request(OpenRequest("lo")), OpenReply)


class ReloadTests(ServiceTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.path = self.mktemp()
        self.patch(
            socket,
            "getaddrinfo",
            fake_getaddrinfo({"trusted.example": ["198.51.100.7", "2001:db8::7"]}),
        )

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def test_initial_config(self) -> None:
        self.write("ActiveClient = a.example\nPassiveClient = 192.0.2.10\nNullAuthPermit = YES\n")
        service = self.started(config_path=self.path)
        self.assertEqual(list(service.collectors), [A])
        self.assertTrue(service.policy.null_auth)
        self.assertEqual(service.policy.allowed_clients, (ipaddress.ip_network("192.0.2.10/32"),))

    def test_reload_collectors(self) -> None:
        """Editing ActiveClient lines and reloading adds and removes just those collectors."""
        self.write("ActiveClient = a.example\nActiveClient = b.example,2004\n")
        service = self.started(config_path=self.path)
        a = service.collectors[A]
        b = service.collectors[B]
        self.write("ActiveClient = a.example # kept\nActiveClient = c.example,ifname=eth0\n")
        service.reload()
        self.assertEqual(list(service.collectors), [A, C])
        self.assertIs(service.collectors[A], a)
        self.assertFalse(b.running)
        self.assertTrue(service.collectors[C].running)

    def test_reload_null_auth(self) -> None:
        self.write("NullAuthPermit = YES\n")
        service = self.started(config_path=self.path)
        self.assertTrue(service.policy.null_auth)
        self.write("NullAuthPermit = NO\n")
        service.reload()
        self.assertFalse(service.policy.null_auth)
        self.write("")
        service.reload()
        self.assertFalse(service.policy.null_auth)
        self.write("nullauthpermit = YES\n")
        service.reload()
        self.assertTrue(service.policy.null_auth)
        # Only YES, in capitals, permits it, as in ExtraHop's and libpcap's rpcapd.
        self.write("NullAuthPermit = yes\n")
        service.reload()
        self.assertFalse(service.policy.null_auth)

    def test_reload_null_auth_reaches_new_sessions(self) -> None:
        """After a reload turns null auth off, a new client's null login is refused."""
        self.write("NullAuthPermit = YES\n")
        service = self.started(config_path=self.path)
        self.assertIsInstance(connect(service.passive_factory).request(AuthRequest(0)), AuthReply)
        self.write("NullAuthPermit = NO\n")
        service.reload()
        client = connect(service.passive_factory)
        client.protocol.dataReceived(AuthRequest(0).encode())
        self.reactor.advance(service.policy.failed_auth_delay)
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.AUTH_FAILED)

    def test_reload_passive_clients(self) -> None:
        """PassiveClient lines decide who may connect, from the next connection after a reload."""
        self.write("PassiveClient = 192.0.2.10\nNullAuthPermit = YES\n")
        service = self.started(config_path=self.path)
        self.assertIsInstance(
            connect(service.passive_factory, "192.0.2.10").request(AuthRequest(0)), AuthReply
        )
        self.write("PassiveClient = trusted.example\nNullAuthPermit = YES\n")
        service.reload()
        self.assertEqual(
            service.policy.allowed_clients,
            (ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_network("2001:db8::7/128")),
        )
        refused = connect(service.passive_factory, "192.0.2.10")
        self.assertError(refused.replies()[0], ErrorCode.HOSTNOAUTH)
        self.assertFalse(refused.connected)
        allowed = connect(service.passive_factory, "2001:db8::7")
        self.assertIsInstance(allowed.request(AuthRequest(0)), AuthReply)
        self.write("NullAuthPermit = YES\n")
        service.reload()
        self.assertEqual(service.policy.allowed_clients, ())
        self.assertIsInstance(
            connect(service.passive_factory, "192.0.2.10").request(AuthRequest(0)), AuthReply
        )

    def assertNotReloaded(self, text: Optional[str], *words: str) -> None:
        self.write("ActiveClient = a.example\nPassiveClient = 192.0.2.10\nNullAuthPermit = YES\n")
        service = self.started(config_path=self.path)
        before = (dict(service.collectors), service.policy.allowed_clients, service.policy.null_auth)
        if text is None:
            os.remove(self.path)
        else:
            self.write(text)
        with capturedLogs() as events:
            service.reload()
        self.assertEqual(
            (dict(service.collectors), service.policy.allowed_clients, service.policy.null_auth), before
        )
        self.assertTrue(service.collectors[A].running)
        messages = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("Configuration not reloaded", messages[0])
        for word in words:
            self.assertIn(word, messages[0])

    def test_broken_file_keeps_previous(self) -> None:
        """A file with a bad line is logged (with its line number) and the running setup stays."""
        self.assertNotReloaded(
            "ActiveClient = b.example\nNullAuthPermit = NO\nActiveClient = c.example,0\n",
            self.path,
            "line 3",
        )

    def test_missing_file_keeps_previous(self) -> None:
        self.assertNotReloaded(None, self.path)

    def test_unresolvable_client_keeps_previous(self) -> None:
        """A PassiveClient name that does not resolve changes nothing, collectors included."""
        self.assertNotReloaded(
            "ActiveClient = b.example\nPassiveClient = nosuch.example\nNullAuthPermit = NO\n",
            "nosuch.example",
        )

    def test_successful_reload_logged(self) -> None:
        self.write("ActiveClient = a.example\n")
        service = self.started(config_path=self.path)
        self.write(
            "ActiveClient = a.example\nActiveClient = b.example,2004\nPassiveClient = trusted.example\n"
        )
        with capturedLogs() as events:
            service.reload()
        messages = [formatEvent(e) for e in events]
        self.assertIn(f"Reloaded {self.path}: collectors=2 allowed_clients=2 null_auth=refused", messages)

    def test_reload_without_config_does_nothing(self) -> None:
        service = self.started(active=[A])
        collector = service.collectors[A]
        service.reload()
        self.assertEqual(service.collectors, {A: collector})


class SighupTests(ServiceTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write("ActiveClient = a.example\n")
        self.previous = signal.getsignal(signal.SIGHUP)
        if self.previous is not None:
            self.addCleanup(signal.signal, signal.SIGHUP, self.previous)

    def test_handler_reloads(self) -> None:
        """SIGHUP re-reads the file, from the reactor thread rather than inside the signal handler."""
        service = self.started(config_path=self.path, reload_on_sighup=True)
        handler = signal.getsignal(signal.SIGHUP)
        self.assertEqual(handler, service.sighup)
        with open(self.path, "w") as f:
            f.write("ActiveClient = b.example,2004\n")
        assert callable(handler)
        handler(signal.SIGHUP, None)
        self.assertEqual(list(service.collectors), [A])  # not yet: only queued
        self.assertEqual(self.reactor.from_thread, [(service.reload, ())])
        self.reactor.run_from_thread()
        self.assertEqual(list(service.collectors), [B])

    def test_stop_restores_handler(self) -> None:
        service = self.started(config_path=self.path, reload_on_sighup=True)
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), self.previous)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.previous)

    def test_restores_python_handler(self) -> None:
        """An embedding application's own SIGHUP handler comes back after the service stops."""
        seen: list[int] = []

        def theirs(signum: int, frame: object) -> None:
            seen.append(signum)

        signal.signal(signal.SIGHUP, theirs)
        service = self.started(config_path=self.path, reload_on_sighup=True)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), theirs)

    def test_installed_before_the_port_opens(self) -> None:
        """
        The handler is in place before clients can connect: a SIGHUP sent as
        soon as the port answers (a reload right after start) must not meet
        the default action, which ends the process.
        """
        service = self.service(listen=["tcp:0:interface=127.0.0.1"], reload_on_sighup=True)
        at_listen: list[object] = []
        listen = self.reactor.listenTCP

        def recording(*args: Any, **kwargs: Any) -> Any:
            at_listen.append(signal.getsignal(signal.SIGHUP))
            return listen(*args, **kwargs)

        self.reactor.listenTCP = recording  # type: ignore[method-assign]
        service.privilegedStartService()
        self.assertEqual(at_listen, [service.sighup])
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), service.sighup)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.previous)

    def test_given_back_when_the_port_cannot_open(self) -> None:
        """A daemon that cannot listen exits in one line and leaves SIGHUP as it found it (an embedder's)."""
        service = self.service(listen=["tcp:2002:interface=127.0.0.1"], reload_on_sighup=True)

        def busy(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("127.0.0.1", 2002, OSError(errno.EADDRINUSE, "Address already in use"))

        self.reactor.listenTCP = busy  # type: ignore[method-assign]
        self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.previous)

    def test_not_installed_unless_asked(self) -> None:
        self.started(config_path=self.path)
        self.assertEqual(signal.getsignal(signal.SIGHUP), self.previous)

    def test_harmless_without_config(self) -> None:
        """
        With no file to re-read, SIGHUP (systemctl reload) must not end the
        daemon, as its default action would: it is handled, and logged.
        """
        service = self.started(reload_on_sighup=True)
        handler = signal.getsignal(signal.SIGHUP)
        self.assertEqual(handler, service.sighup)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        with capturedLogs() as events:
            self.reactor.run_from_thread()
        [line] = [formatEvent(e) for e in events]
        self.assertIn("SIGHUP: no configuration file to reload", line)
        self.assertTrue(service.running)


class ResolveClientsTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        self.assertEqual(
            resolve_clients(["192.0.2.10", "2001:db8::1"]),
            (ipaddress.ip_network("192.0.2.10/32"), ipaddress.ip_network("2001:db8::1/128")),
        )

    def test_cidr(self) -> None:
        """A block may be written with host bits set, as people do."""
        self.assertEqual(
            resolve_clients(["10.0.0.0/8", "192.0.2.77/24", "2001:db8::/32"]),
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.0.2.0/24"),
                ipaddress.ip_network("2001:db8::/32"),
            ),
        )

    def test_duplicates_removed(self) -> None:
        self.assertEqual(
            resolve_clients(["192.0.2.10", "192.0.2.10/32", "192.0.2.10"]),
            (ipaddress.ip_network("192.0.2.10/32"),),
        )

    def test_empty(self) -> None:
        self.assertEqual(resolve_clients([]), ())

    def test_localhost(self) -> None:
        """localhost resolves (from the hosts file) to the loopback address."""
        self.assertIn(ipaddress.ip_network("127.0.0.1/32"), resolve_clients(["localhost"]))

    def test_name_with_several_addresses(self) -> None:
        """A name stands for each of its addresses; a scope id on a link-local one is dropped."""
        self.patch(
            socket,
            "getaddrinfo",
            fake_getaddrinfo({"host.example": ["198.51.100.7", "fe80::7%eth0", "198.51.100.7"]}),
        )
        self.assertEqual(
            resolve_clients(["host.example"]),
            (ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_network("fe80::7/128")),
        )

    def test_unresolvable(self) -> None:
        self.patch(socket, "getaddrinfo", fake_getaddrinfo({}))
        with self.assertRaises(ValueError) as caught:
            resolve_clients(["192.0.2.1", "nosuch.example"])
        self.assertIn("nosuch.example", str(caught.exception))


class HostNotAllowedTests(ServiceTestBase):
    """Passive clients from outside PassiveClient/--allow are turned away with HOSTNOAUTH."""

    def factory(
        self, active: bool = False, allowed: tuple[str, ...] = ("192.0.2.0/28",)
    ) -> RpcapServerFactory:
        policy = SessionPolicy(null_auth=True, allowed_clients=resolve_clients(allowed))
        return RpcapServerFactory(self.reactor, self.system, policy, FakeDataChannels(), active=active)  # type: ignore[arg-type]

    def test_refused(self) -> None:
        factory = self.factory()
        client = connect(factory, "198.51.100.1")
        [reply] = client.replies()
        self.assertError(reply, ErrorCode.HOSTNOAUTH)
        self.assertEqual(ErrorCode.HOSTNOAUTH, 10)
        assert isinstance(reply, ErrorReply)
        self.assertIn("198.51.100.1", reply.text)
        self.assertFalse(client.connected)
        self.assertEqual(factory.sessions, set())

    def test_refused_client_gets_nothing_more(self) -> None:
        client = connect(self.factory(), "198.51.100.1")
        client.replies()
        client.protocol.dataReceived(AuthRequest(0).encode() + FindAllInterfacesRequest().encode())
        self.assertEqual(client.replies(), [])

    def test_refusal_logged(self) -> None:
        with capturedLogs() as events:
            connect(self.factory(), "198.51.100.1")
        [line] = [formatEvent(e) for e in events if "refused" in formatEvent(e)]
        self.assertRegex(
            line, r"^session=\d+ peer=198\.51\.100\.1:5555 control connection refused: not an allowed client$"
        )

    def test_allowed_served(self) -> None:
        factory = self.factory()
        client = connect(factory, "192.0.2.10")
        self.assertEqual(client.replies(), [])
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        self.assertIsInstance(client.request(FindAllInterfacesRequest()), FindAllInterfacesReply)
        self.assertTrue(client.connected)
        self.assertEqual(len(factory.sessions), 1)

    def test_ipv4_mapped_peer(self) -> None:
        """On a dual-stack listener an IPv4 client shows up as ::ffff:a.b.c.d and is still recognised."""
        self.assertIsInstance(connect(self.factory(), "::ffff:192.0.2.10").request(AuthRequest(0)), AuthReply)
        self.assertError(connect(self.factory(), "::ffff:198.51.100.1").replies()[0], ErrorCode.HOSTNOAUTH)

    def test_ipv6_allowed(self) -> None:
        factory = self.factory(allowed=("2001:db8::/64",))
        self.assertIsInstance(connect(factory, "2001:db8::5").request(AuthRequest(0)), AuthReply)
        self.assertError(connect(factory, "2001:db8:1::5").replies()[0], ErrorCode.HOSTNOAUTH)
        self.assertError(connect(factory, "192.0.2.10").replies()[0], ErrorCode.HOSTNOAUTH)

    def test_empty_list_allows_everyone(self) -> None:
        factory = self.factory(allowed=())
        self.assertIsInstance(connect(factory, "198.51.100.1").request(AuthRequest(0)), AuthReply)

    def test_embedders_policy_respected(self) -> None:
        """
        An application's own SessionPolicy(allowed_clients=...) stays in
        force in the service it builds: the config file adds to it.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("PassiveClient = 198.51.100.7\n")
        policy = SessionPolicy(null_auth=True, allowed_clients=resolve_clients(["192.0.2.0/28"]))
        service = self.started(policy=policy, config_path=path)
        factory = service.passive_factory
        self.assertIsInstance(connect(factory, "192.0.2.10").request(AuthRequest(0)), AuthReply)
        self.assertIsInstance(connect(factory, "198.51.100.7").request(AuthRequest(0)), AuthReply)
        self.assertError(connect(factory, "198.51.100.1").replies()[0], ErrorCode.HOSTNOAUTH)
        with open(path, "w") as f:
            f.write("")
        service.reload()
        self.assertIsInstance(connect(factory, "192.0.2.10").request(AuthRequest(0)), AuthReply)
        self.assertError(connect(factory, "198.51.100.7").replies()[0], ErrorCode.HOSTNOAUTH)

    def test_active_never_refused(self) -> None:
        """A connection the daemon made to its own collector is served whatever the allow list says."""
        factory = self.factory(active=True)
        client = connect(factory, "198.51.100.1")
        self.assertEqual(client.replies(), [])
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        self.assertTrue(client.connected)


class StartupWarningTests(ServiceTestBase):
    """Settings that cannot work are said once, at start."""

    def warnings(self, **kwargs: Any) -> list[str]:
        with capturedLogs() as events:
            self.started(**kwargs)
        return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]

    def test_missing_preselected_interface(self) -> None:
        [line] = self.warnings(policy=SessionPolicy(null_auth=True, preselected_interface="nosuch0"))
        self.assertIn("--interface nosuch0: no such interface here (eth0, lo)", line)

    def test_existing_preselected_interface(self) -> None:
        self.assertEqual(self.warnings(policy=SessionPolicy(null_auth=True, preselected_interface="lo")), [])

    def test_null_auth_open_to_the_network(self) -> None:
        service = self.service(policy=SessionPolicy(null_auth=True), listen=["tcp:0"])
        with capturedLogs() as events:
            service._listening(FakePort(IPv4Address("TCP", "0.0.0.0", 2002)))
        [line] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertIn("Null auth on 0.0.0.0 port 2002, reachable from the network", line)
        with capturedLogs() as events:
            service._listening(FakePort(IPv4Address("TCP", "127.0.0.1", 2002)))
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])


class FakePort:
    def __init__(self, address: IPv4Address) -> None:
        self.address = address

    def getHost(self) -> IPv4Address:
        return self.address


class HalfCloseTests(ServiceTestBase):
    """A client that sends its requests and then shuts down its sending side still gets the replies."""

    def factory(self) -> RpcapServerFactory:
        return RpcapServerFactory(
            self.reactor, self.system, SessionPolicy(null_auth=True), FakeDataChannels()
        )  # type: ignore[arg-type]

    def test_replies_then_close(self) -> None:
        client = connect(self.factory())
        client.send(AuthRequest(0), FindAllInterfacesRequest(), OpenRequest("eth0"))
        client.protocol.readConnectionLost()
        replies = client.replies()
        self.assertEqual([type(r) for r in replies], [AuthReply, FindAllInterfacesReply, OpenReply])
        self.assertFalse(client.connected)

    def test_waits_for_a_slow_request(self) -> None:
        """A request still in progress (a failed login's delay) is answered before the close."""
        client = connect(self.factory())
        client.send(AuthRequest(1, b"mallory", b"guess"), FindAllInterfacesRequest())
        client.protocol.readConnectionLost()
        self.assertTrue(client.connected)
        self.reactor.advance(1.0)
        replies = client.replies()
        self.assertEqual([type(r) for r in replies], [ErrorReply, ErrorReply])
        self.assertFalse(client.connected)

    def test_idle_session_closes(self) -> None:
        client = connect(self.factory())
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        client.protocol.readConnectionLost()
        self.assertFalse(client.connected)


class InterfaceAddressTests(ServiceTestBase):
    """A collector configured with ifaddr= is limited to the interface carrying that address."""

    def factory(self, address: str) -> RpcapServerFactory:
        return RpcapServerFactory(
            self.reactor,
            self.system,
            SessionPolicy(null_auth=True),
            FakeDataChannels(),  # type: ignore[arg-type]
            active=True,
            interface_address=address,
        )

    def authed(self, factory: RpcapServerFactory) -> Client:
        client = connect(factory, "198.51.100.1")
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        return client

    def test_listed_first_and_only_one_opened(self) -> None:
        client = self.authed(self.factory("127.0.0.1"))
        reply = client.request(FindAllInterfacesRequest())
        assert isinstance(reply, FindAllInterfacesReply)
        self.assertEqual(
            [(i.name, i.description) for i in reply.interfaces],
            [("lo", ";preselected"), ("eth0", "Ethernet adapter")],
        )
        self.assertError(client.request(OpenRequest("eth0")), ErrorCode.OPEN)
        self.assertEqual(ErrorCode.OPEN, 6)
        self.assertEqual(client.request(OpenRequest("lo")), OpenReply(1, 0))

    def test_ipv6_address(self) -> None:
        client = self.authed(self.factory("::1"))
        self.assertError(client.request(OpenRequest("eth0")), ErrorCode.OPEN)
        self.assertIsInstance(client.request(OpenRequest("lo")), OpenReply)

    def test_with_description(self) -> None:
        client = self.authed(self.factory("192.0.2.1"))
        reply = client.request(FindAllInterfacesRequest())
        assert isinstance(reply, FindAllInterfacesReply)
        self.assertEqual(reply.interfaces[0].description, "Ethernet adapter ;preselected")
        self.assertError(client.request(OpenRequest("lo")), ErrorCode.OPEN)

    def test_no_interface_carries_it(self) -> None:
        """An address no interface carries leaves nothing that may be opened (and says so in the log)."""
        with capturedLogs() as events:
            client = self.authed(self.factory("203.0.113.9"))
        self.assertIn(
            "No interface carries 203.0.113.9; nothing can be opened until one does "
            "(ExtraHop's rpcapd would allow any interface)",
            [formatEvent(e) for e in events],
        )
        for name in ("lo", "eth0", "any"):
            self.assertError(client.request(OpenRequest(name)), ErrorCode.OPEN)
        self.assertEqual(self.system.handles, [])

    def test_looked_up_per_session(self) -> None:
        """An address that moves to another interface is followed by the next session."""
        factory = self.factory("192.0.2.1")
        self.assertIsInstance(self.authed(factory).request(OpenRequest("eth0")), OpenReply)
        moved = InterfaceInfo("eth1", "", 0, ETH0.addresses)
        self.system.interfaces = [InterfaceInfo("eth0", "Ethernet adapter", 0, ()), moved, LO]
        client = self.authed(factory)
        self.assertError(client.request(OpenRequest("eth0")), ErrorCode.OPEN)
        self.assertIsInstance(client.request(OpenRequest("eth1")), OpenReply)

    def test_name_and_address_must_both_match(self) -> None:
        """With ifname and ifaddr, as in ExtraHop's rpcapd, one interface must match both."""
        factory = self.factory("127.0.0.1")
        factory.interface = "eth0"
        client = self.authed(factory)
        for name in ("lo", "eth0"):
            self.assertError(client.request(OpenRequest(name)), ErrorCode.OPEN)
        factory = self.factory("192.0.2.1")
        factory.interface = "eth0"
        client = self.authed(factory)
        self.assertError(client.request(OpenRequest("lo")), ErrorCode.OPEN)
        self.assertIsInstance(client.request(OpenRequest("eth0")), OpenReply)
