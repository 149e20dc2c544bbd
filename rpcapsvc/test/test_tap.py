"""
Tests for C{twistd rpcapd}'s command line: which options are accepted, what
the daemon listens on and connects to by default, and the service
L{makeService} builds from them (built, never started: no sockets).
"""

from __future__ import annotations

import builtins
import ipaddress
import socket
from typing import Any

from twisted.application.internet import ClientService
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.config import ActiveTarget
from rpcapsvc.service import DEFAULT_LISTEN, RpcapdService
from rpcapsvc.tap import Options, makeService


def unresolvable(host: str, *args: Any, **kwargs: Any) -> Any:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class OptionsTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        # No test here may depend on (or wait for) DNS.
        self.patch(socket, "getaddrinfo", unresolvable)

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def refused(self, *argv: str) -> str:
        with self.assertRaises(UsageError) as caught:
            self.parse(*argv)
        return str(caught.exception)

    def config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class ListenDefaultTests(OptionsTestBase):
    def test_default_listen(self) -> None:
        """With nothing said about where, the daemon listens on TCP port 2002."""
        self.assertEqual(DEFAULT_LISTEN, "tcp:2002")
        self.assertEqual(self.parse("--null-auth")["listen"], ["tcp:2002"])

    def test_listen_given(self) -> None:
        options = self.parse("-n", "--listen", "tcp:2010:interface=127.0.0.1", "-l", "unix:/run/rpcapd.sock")
        self.assertEqual(options["listen"], ["tcp:2010:interface=127.0.0.1", "unix:/run/rpcapd.sock"])

    def test_listen_shorthands(self) -> None:
        """PORT, ADDRESS:PORT and [IPV6]:PORT, as --active takes them."""
        cases = {
            "2002": "tcp:2002",
            "127.0.0.1:2010": "tcp:2010:interface=127.0.0.1",
            "[::1]:2011": "tcp6:2011:interface=\\:\\:1",
            "tcp6:2002:interface=\\:\\:": "tcp6:2002:interface=\\:\\:",
        }
        for given, endpoint in cases.items():
            self.assertEqual(self.parse("-n", "--listen", given)["listen"], [endpoint], given)

    def test_listen_mistakes(self) -> None:
        for spec in (
            "tcp:notaport", "foo:bar", "127.0.0.1:70000", "[::1]", "[nothost]:2002",
            "tcp:99999", "tcp6:70000:interface=\\:\\:1",
        ):  # fmt: skip
            self.assertIn("expected PORT, ADDRESS:PORT", self.refused("-n", "--listen", spec), spec)
        # Endpoint strings Twisted parses with any integer: refused here, not by bind() at start.
        self.assertIn("99999 is not a port number", self.refused("-n", "--listen", "tcp:99999"))
        self.assertIn("70000 is not a port number", self.refused("-n", "--metrics", "tcp:70000"))

    def test_active_alone_listens_nowhere(self) -> None:
        """--active alone is active-only mode: no listening port is opened."""
        options = self.parse("-n", "--active", "collector.example")
        self.assertEqual(options["listen"], [])
        self.assertEqual(options["active"], ["collector.example"])

    def test_active_and_listen(self) -> None:
        options = self.parse(
            "-n", "--active", "collector.example:2004", "--listen", "tcp:2010", "-a", "[::1]"
        )
        self.assertEqual(options["listen"], ["tcp:2010"])
        self.assertEqual(options["active"], ["collector.example:2004", "[::1]"])

    def test_config_with_only_active_clients(self) -> None:
        path = self.config("ActiveClient = collector.example\nNullAuthPermit = YES\n")
        self.assertEqual(self.parse("-f", path)["listen"], [])

    def test_config_with_passive_clients(self) -> None:
        """A config file naming passive clients wants them served: the default listener is kept."""
        path = self.config("ActiveClient = collector.example\nPassiveClient = 192.0.2.10\n")
        self.assertEqual(self.parse("-n", "-f", path)["listen"], ["tcp:2002"])

    def test_config_without_collectors(self) -> None:
        path = self.config("NullAuthPermit = YES\n")
        self.assertEqual(self.parse("--config", path)["listen"], ["tcp:2002"])

    def test_config_and_listen(self) -> None:
        path = self.config("PassiveClient = 192.0.2.10\nNullAuthPermit = YES\n")
        self.assertEqual(self.parse("-f", path, "-l", "tcp:2010")["listen"], ["tcp:2010"])


class AuthChoiceTests(OptionsTestBase):
    def test_no_auth_choice(self) -> None:
        """Leaving authentication unsaid is an error that says what to choose."""
        message = self.refused()
        self.assertIn("--null-auth", message)
        self.assertIn("--auth", message)
        self.assertIn("NullAuthPermit", message)

    def test_null_auth(self) -> None:
        self.assertTrue(self.parse("--null-auth")["null-auth"])
        self.assertTrue(self.parse("-n")["null-auth"])

    def test_password_auth(self) -> None:
        options = self.parse("--auth", "memory:alice:secret")
        self.assertEqual(len(options["credCheckers"]), 1)
        self.assertFalse(options["null-auth"])

    def test_config_permits_null_auth(self) -> None:
        self.parse("-f", self.config("NullAuthPermit = YES\n"))
        self.parse("-f", self.config("nullauthpermit = YES\n"))
        self.refused("-f", self.config("NullAuthPermit = yes\n"))  # only YES, as in the real daemons

    def test_config_refusing_null_auth_is_no_choice(self) -> None:
        self.refused("-f", self.config("NullAuthPermit = NO\n"))
        self.refused("-f", self.config("ActiveClient = c.example\n"))


class BadOptionTests(OptionsTestBase):
    def test_bad_config_line(self) -> None:
        """A bad config line is a usage error naming the file and line: the daemon does not start."""
        path = self.config("NullAuthPermit = YES\nActiveClient = c.example,99999\n")
        message = self.refused("-f", path)
        self.assertIn(f"{path}, line 2", message)

    def test_missing_config(self) -> None:
        path = self.mktemp()
        self.assertIn(path, self.refused("-n", "-f", path))

    def test_bad_active(self) -> None:
        for spec in ["host:0", "host:99999", "[::1", "[::1]x", "nosuchtype:x", "tcp:host"]:
            message = self.refused("-n", "--active", spec)
            self.assertIn(f"--active {spec}", message)

    def test_unresolvable_allow(self) -> None:
        message = self.refused("-n", "--allow", "192.0.2.0/24", "--allow", "nosuch.example")
        self.assertIn("nosuch.example", message)

    def test_unresolvable_passive_client(self) -> None:
        """A PassiveClient name that does not resolve stops the daemon with a usage error, not a traceback."""
        path = self.config("PassiveClient = nosuch.example\nNullAuthPermit = YES\n")
        self.assertIn("nosuch.example", self.refused("-f", path))

    def test_allow_addresses(self) -> None:
        options = self.parse("-n", "--allow", "192.0.2.0/24", "--allow", "2001:db8::1")
        self.assertEqual(options["allow"], ["192.0.2.0/24", "2001:db8::1"])

    def test_buffer_size(self) -> None:
        self.assertEqual(self.parse("-n", "--buffer-size", "65536")["buffer-size"], 65536)
        self.refused("-n", "--buffer-size", "0")
        self.refused("-n", "--buffer-size", "lots")

    def test_unknown_option(self) -> None:
        self.refused("-n", "--no-such-option")

    def test_a_value_of_the_wrong_type_names_its_option(self) -> None:
        """Twisted's own words ("Parameter type enforcement failed") name neither the option nor what it takes."""
        self.assertEqual(
            self.refused("-n", "--auth-timeout", "abc"), "--auth-timeout takes a number, not 'abc'"
        )
        self.assertEqual(
            self.refused("-n", "--max-sessions=many"), "--max-sessions takes a whole number, not 'many'"
        )
        self.assertEqual(self.parse("-n", "--auth-timeout", "2.5")["auth-timeout"], 2.5)


class MakeServiceTests(OptionsTestBase):
    def make(self, *argv: str) -> RpcapdService:
        service = makeService(self.parse(*argv))
        self.assertIsInstance(service, RpcapdService)
        self.assertFalse(service.running)
        return service

    def test_policy(self) -> None:
        service = self.make("-n", "-i", "eth1", "--buffer-size", "65536", "--auth-timeout", "5")
        policy = service.policy
        self.assertTrue(policy.null_auth)
        self.assertEqual(policy.preselected_interface, "eth1")
        self.assertEqual(policy.buffer_size, 65536)
        self.assertEqual(policy.auth_timeout, 5.0)
        self.assertEqual(policy.checkers, ())
        self.assertEqual(policy.allowed_clients, ())
        self.assertIs(service.passive_factory.policy, policy)

    def test_defaults(self) -> None:
        service = self.make("-n")
        self.assertIsNone(service.policy.preselected_interface)
        self.assertEqual(service.policy.buffer_size, 2 * 1024 * 1024)
        self.assertEqual(service.policy.auth_timeout, 10.0)
        self.assertEqual(service.policy.idle_timeout, 300.0)
        self.assertEqual(service.policy.max_sessions, 64)
        self.assertEqual(service.policy.max_unauthenticated, 32)
        self.assertEqual(service.policy.max_unauthenticated_per_host, 8)
        self.assertEqual(service.policy.reclaim_idle_after, 1.0)
        self.assertEqual(len(service.listeners), 1)
        self.assertEqual(service.collectors, {})
        self.assertTrue(service.sighup.enabled)

    def test_udp_gso_by_default_and_off_when_asked(self) -> None:
        self.assertTrue(self.make("-n").data_channels.udp_gso)
        self.assertTrue(self.make("-n", "--udp-gso").data_channels.udp_gso)
        self.assertFalse(self.make("-n", "--no-udp-gso").data_channels.udp_gso)
        self.assertIn("choose one", self.refused("-n", "--udp-gso", "--no-udp-gso"))

    def test_password_checkers(self) -> None:
        service = self.make("--auth", "memory:alice:secret")
        self.assertFalse(service.policy.null_auth)
        self.assertEqual(len(service.policy.checkers), 1)

    def test_collectors(self) -> None:
        service = self.make("-n", "--active", "a.example", "--active", "b.example:2004")
        self.assertEqual(
            list(service.collectors), [ActiveTarget("a.example"), ActiveTarget("b.example:2004")]
        )
        self.assertTrue(all(isinstance(c, ClientService) for c in service.collectors.values()))
        self.assertEqual(service.listeners, [])

    def test_allowed_clients(self) -> None:
        service = self.make("-n", "--allow", "192.0.2.0/24")
        self.assertEqual(service.policy.allowed_clients, (ipaddress.ip_network("192.0.2.0/24"),))

    def test_names_and_file_read_once(self) -> None:
        """
        The config file and DNS are read once per load: twistd rpcapd's
        options read and resolve them, and the service takes the result.
        """
        lookups: list[str] = []

        def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
            lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.77", 0))]

        self.patch(socket, "getaddrinfo", getaddrinfo)
        path = self.config("PassiveClient = jump.example\nNullAuthPermit = YES\n")
        options = self.parse("-f", path, "--allow", "ops.example", "--no-passive")  # no real port
        opened: list[str] = []
        real_open = open
        self.patch(builtins, "open", lambda f, *a, **kw: (opened.append(str(f)), real_open(f, *a, **kw))[1])
        service = makeService(options)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sorted(lookups), ["jump.example", "ops.example"])
        self.assertNotIn(path, opened)
        self.assertEqual(service.policy.allowed_clients, (ipaddress.ip_network("192.0.2.77/32"),))

    def test_from_config(self) -> None:
        """The config file's collectors, clients and null-auth setting all reach the service."""
        path = self.config(
            "ActiveClient = c.example,2005,ifname=eth2\nPassiveClient = 198.51.100.0/24\nNullAuthPermit = YES\n"
        )
        service = self.make("-f", path, "--active", "a.example", "--allow", "192.0.2.10")
        self.assertEqual(service.config_path, path)
        self.assertTrue(service.policy.null_auth)
        self.assertEqual(
            list(service.collectors),
            [ActiveTarget("a.example"), ActiveTarget("c.example:2005", ifname="eth2")],
        )
        self.assertEqual(
            service.policy.allowed_clients,
            (ipaddress.ip_network("192.0.2.10/32"), ipaddress.ip_network("198.51.100.0/24")),
        )
        self.assertEqual(len(service.listeners), 1)
