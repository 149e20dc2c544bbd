"""
Tests for the rpcapd.ini parser: every line form libpcap's rpcapd-config
accepts plus ExtraHop's C{ifname=}/C{ifaddr=} options, and an error naming
the file and line for every line that cannot be used.
"""

from __future__ import annotations

import os

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.config import (
    DEFAULT_ACTIVE_PORT,
    ActiveTarget,
    ConfigError,
    DaemonConfig,
    parse_config,
    read_config,
)
from rpcapsvc.server.active import parse_active_target


def active(line: str) -> ActiveTarget:
    """The one collector a one-line configuration names."""
    [target] = parse_config(line).active
    return target


class ActiveClientTests(SynchronousTestCase):
    def test_host_only_uses_port_2003(self) -> None:
        """A collector given without a port is reached on port 2003, as libpcap's rpcapd does."""
        self.assertEqual(DEFAULT_ACTIVE_PORT, 2003)
        self.assertEqual(active("ActiveClient = collector.example"), ActiveTarget("collector.example:2003"))

    def test_host_comma_port(self) -> None:
        self.assertEqual(
            active("ActiveClient = collector.example,2004"), ActiveTarget("collector.example:2004")
        )

    def test_host_space_port(self) -> None:
        self.assertEqual(
            active("ActiveClient = collector.example 2004"), ActiveTarget("collector.example:2004")
        )

    def test_host_semicolon_port(self) -> None:
        self.assertEqual(
            active("ActiveClient = collector.example;2004"), ActiveTarget("collector.example:2004")
        )

    def test_separators_with_spaces(self) -> None:
        """Separators may be mixed and surrounded by spaces or tabs."""
        self.assertEqual(
            active("ActiveClient =\t10.0.0.5 ,  2004 ;\tifname=eth1  "),
            ActiveTarget("10.0.0.5:2004", ifname="eth1"),
        )

    def test_ifname(self) -> None:
        target = active("ActiveClient = 10.0.0.5,2003,ifname=eth1")
        self.assertEqual(target, ActiveTarget("10.0.0.5:2003", ifname="eth1", ifaddr=None))
        self.assertEqual(target.describe(), "10.0.0.5:2003 (interface eth1)")

    def test_ifaddr(self) -> None:
        target = active("ActiveClient = 10.0.0.5 2003 ifaddr=192.0.2.10")
        self.assertEqual(target, ActiveTarget("10.0.0.5:2003", ifname=None, ifaddr="192.0.2.10"))
        self.assertEqual(target.describe(), "10.0.0.5:2003 (interface with address 192.0.2.10)")

    def test_option_without_port(self) -> None:
        """An interface option may follow the host directly; the port stays 2003."""
        self.assertEqual(
            active("ActiveClient = collector.example,ifname=eth1"),
            ActiveTarget("collector.example:2003", ifname="eth1"),
        )

    def test_option_key_any_case(self) -> None:
        self.assertEqual(active("ActiveClient = h,2003,IfName=eth1"), ActiveTarget("h:2003", ifname="eth1"))
        self.assertEqual(active("ActiveClient = h,2003,IFADDR=::1"), ActiveTarget("h:2003", ifaddr="::1"))

    def test_ipv6_host(self) -> None:
        """An IPv6 collector address becomes [V6ADDR]:PORT, which the endpoint parser reads back."""
        self.assertEqual(active("ActiveClient = 2001:db8::5,2004"), ActiveTarget("[2001:db8::5]:2004"))
        self.assertEqual(active("ActiveClient = ::1"), ActiveTarget("[::1]:2003"))

    def test_bracketed_ipv6_host(self) -> None:
        """[V6ADDR], as written on the command line, is accepted too (not doubly bracketed)."""
        self.assertEqual(active("ActiveClient = [2001:db8::5],2004"), ActiveTarget("[2001:db8::5]:2004"))
        self.assertEqual(active("ActiveClient = [::1]"), ActiveTarget("[::1]:2003"))

    def test_several_collectors_in_order(self) -> None:
        config = parse_config("ActiveClient = a\nActiveClient = b,2004\nActiveClient = c,2005,ifname=lo\n")
        self.assertEqual(
            config.active,
            (ActiveTarget("a:2003"), ActiveTarget("b:2004"), ActiveTarget("c:2005", ifname="lo")),
        )


class OtherSettingsTests(SynchronousTestCase):
    def test_passive_client_one_host(self) -> None:
        self.assertEqual(
            parse_config("PassiveClient = trusted.example").passive_clients, ("trusted.example",)
        )

    def test_passive_client_several_hosts(self) -> None:
        """One line may name several hosts; several lines add up."""
        config = parse_config("PassiveClient = a.example, 10.0.0.0/8;::1\nPassiveClient = b.example\n")
        self.assertEqual(config.passive_clients, ("a.example", "10.0.0.0/8", "::1", "b.example"))

    def test_null_auth_permit(self) -> None:
        for value, expected in [("YES", True), ("yes", True), ("NO", False), ("no", False), (" Yes ", True)]:
            self.assertEqual(parse_config(f"NullAuthPermit = {value}").null_auth, expected, value)

    def test_null_auth_unsaid(self) -> None:
        """A file that does not mention NullAuthPermit leaves the command line to decide."""
        self.assertIsNone(parse_config("ActiveClient = a").null_auth)

    def test_last_null_auth_wins(self) -> None:
        self.assertIs(parse_config("NullAuthPermit = YES\nNullAuthPermit = NO").null_auth, False)

    def test_empty(self) -> None:
        self.assertEqual(parse_config(""), DaemonConfig())
        self.assertEqual(parse_config("\n\n   \n\t\n"), DaemonConfig())

    def test_comments_blank_lines_and_case(self) -> None:
        """Comments (whole-line and trailing), blank lines and key case do not matter."""
        text = (
            "# rpcapd.ini\n"
            "\n"
            "   # indented comment = with an equals sign\n"
            "activeclient = a.example   # trailing comment\n"
            "ACTIVECLIENT=b.example,2004#no space before it\n"
            "  PassiveClient   =   c.example  \n"
            "nullAUTHpermit = yes # allow null auth\n"
            "\r\n"
        )
        self.assertEqual(
            parse_config(text),
            DaemonConfig(
                active=(ActiveTarget("a.example:2003"), ActiveTarget("b.example:2004")),
                passive_clients=("c.example",),
                null_auth=True,
            ),
        )

    def test_windows_line_endings(self) -> None:
        config = parse_config("ActiveClient = a,2004\r\nNullAuthPermit = NO\r\n")
        self.assertEqual(config, DaemonConfig(active=(ActiveTarget("a:2004"),), null_auth=False))


class BadLineTests(SynchronousTestCase):
    """Every unusable line is refused with the file name and line number in the message."""

    def assertBadLine(self, bad: str, *words: str) -> str:
        text = f"# header\nNullAuthPermit = YES\n\n{bad}\nActiveClient = fine.example\n"
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "/etc/rpcapd.ini")
        message = str(caught.exception)
        self.assertIn("/etc/rpcapd.ini, line 4", message)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_unknown_key(self) -> None:
        self.assertBadLine("ActiveClients = a", "activeclients")

    def test_missing_equals(self) -> None:
        self.assertBadLine("ActiveClient a,2003", "ActiveClient a,2003")

    def test_bad_port(self) -> None:
        self.assertBadLine("ActiveClient = a,http", "'http'")

    def test_port_zero(self) -> None:
        self.assertBadLine("ActiveClient = a,0", "port 0")

    def test_port_too_big(self) -> None:
        self.assertBadLine("ActiveClient = a,65536", "65536")

    def test_highest_port_is_fine(self) -> None:
        self.assertEqual(active("ActiveClient = a,65535"), ActiveTarget("a:65535"))

    def test_ifname_and_ifaddr(self) -> None:
        self.assertBadLine("ActiveClient = a,2003,ifname=eth0,ifaddr=192.0.2.1", "not both")

    def test_unknown_option(self) -> None:
        self.assertBadLine("ActiveClient = a,2003,ifindex=2", "ifindex")

    def test_option_without_value(self) -> None:
        self.assertBadLine("ActiveClient = a,2003,ifname=", "ifname=")

    def test_second_bare_word(self) -> None:
        """A word after the port that is not an option is an error, not silently dropped."""
        self.assertBadLine("ActiveClient = a,2003,eth0", "eth0")

    def test_active_without_host(self) -> None:
        self.assertBadLine("ActiveClient =", "needs a host")
        self.assertBadLine("ActiveClient = , ;", "needs a host")

    def test_unusable_host(self) -> None:
        """Stray brackets would make an address the endpoint parser refuses later: refused now."""
        self.assertBadLine("ActiveClient = [::1,2003", "[::1")
        self.assertBadLine("ActiveClient = a]b", "a]b")
        self.assertBadLine("ActiveClient = []", "[]")

    def test_passive_without_host(self) -> None:
        self.assertBadLine("PassiveClient = ", "needs a host")

    def test_bad_null_auth_value(self) -> None:
        self.assertBadLine("NullAuthPermit = maybe", "'maybe'")
        self.assertBadLine("NullAuthPermit =", "YES or NO")

    def test_default_source(self) -> None:
        """Text with no file behind it is still located by line."""
        with self.assertRaises(ConfigError) as caught:
            parse_config("\nbogus")
        self.assertIn("<config>, line 2", str(caught.exception))

    def test_config_error_is_value_error(self) -> None:
        """Callers catching ValueError (as the service's reload does) see config errors too."""
        self.assertTrue(issubclass(ConfigError, ValueError))


class ReadConfigTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_reads_file(self) -> None:
        path = self.write(b"ActiveClient = a,2004 # caf\xc3\xa9\nNullAuthPermit = YES\n")
        self.assertEqual(read_config(path), DaemonConfig(active=(ActiveTarget("a:2004"),), null_auth=True))

    def test_errors_name_the_file(self) -> None:
        path = self.write(b"ActiveClient = a\nActiveClient = a,0\n")
        with self.assertRaises(ConfigError) as caught:
            read_config(path)
        self.assertIn(f"{path}, line 2", str(caught.exception))

    def test_missing_file(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            read_config(path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("No such file", str(caught.exception))

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        with self.assertRaises(ConfigError) as caught:
            read_config(path)
        self.assertIn(path, str(caught.exception))

    def test_not_utf8(self) -> None:
        path = self.write(b"ActiveClient = a\n# caf\xe9 (Latin-1)\n")
        with self.assertRaises(ConfigError) as caught:
            read_config(path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("UTF-8", str(caught.exception))


# Characters a host name may be made of in these tests: printable, no separators or comments.
_HOST_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=",;#=")


class PropertyTests(SynchronousTestCase):
    @given(st.text())
    def test_only_config_errors(self, text: str) -> None:
        """Whatever the file holds, parsing either works or raises ConfigError: never a traceback."""
        try:
            parse_config(text, "fuzz.ini")
        except ConfigError as e:
            self.assertIn("fuzz.ini, line ", str(e))

    @given(
        lines=st.lists(
            st.tuples(
                st.sampled_from(["ActiveClient", "activeclient", "ACTIVECLIENT"]),
                # Any printable host, and many made of address characters and brackets.
                st.text(_HOST_CHARS, min_size=1, max_size=20)
                | st.text(st.sampled_from("a1:.[]%"), min_size=1, max_size=10),
                st.none() | st.integers(-5, 70000),
                st.sampled_from([",", " ", ";", " , ", "\t"]),
                st.sampled_from(["", ",ifname=eth0", " ifaddr=192.0.2.1", ";IFNAME=lo"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_accepted_collectors_are_reachable(
        self, lines: list[tuple[str, str, int | None, str, str]]
    ) -> None:
        """
        Every collector a file is allowed to name becomes an address the
        endpoint parser turns into a host-and-port connection on that port.
        """
        text = "\n".join(
            f"{key} = {host}{'' if port is None else sep + str(port)}{option}"
            for key, host, port, sep, option in lines
        )
        try:
            config = parse_config(text)
        except ConfigError:
            assume(False)
            return
        reactor = MemoryReactorClock()
        self.assertEqual(len(config.active), len(lines))
        for target, (_, _, port, _, _) in zip(config.active, lines):
            endpoint = parse_active_target(reactor, target.endpoint)
            self.assertIsInstance(endpoint, HostnameEndpoint)
            self.assertEqual(endpoint._port, DEFAULT_ACTIVE_PORT if port is None else port)  # type: ignore[attr-defined]

    @given(st.text(_HOST_CHARS.filter(lambda c: c not in "[]"), min_size=1, max_size=30))
    def test_any_plain_host_accepted(self, host: str) -> None:
        """A host without brackets is never refused, and is connected to by that name."""
        target = active(f"ActiveClient = {host}")
        endpoint = parse_active_target(MemoryReactorClock(), target.endpoint)
        self.assertIsInstance(endpoint, HostnameEndpoint)
        self.assertEqual(endpoint._port, 2003)  # type: ignore[attr-defined]
