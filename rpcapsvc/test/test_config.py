"""
Tests for the rpcapd.ini parser and writer: every line form ExtraHop's
rpcapd (fileconf.c at 9b0a405) and libpcap's rpcapd-config accept, with
ExtraHop's C{ifname=}/C{ifaddr=} options; a warning naming the file and line
for what is ignored or read in an unusual way; an error naming the file and
line for every line that cannot be used; and L{format_config}, which writes
what the fork's C{-s FILE} writes.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rpcapsvc.config import (
    DEFAULT_ACTIVE_PORT,
    ActiveTarget,
    ConfigError,
    DaemonConfig,
    format_config,
    parse_config,
    read_config,
)
from rpcapsvc.server.active import parse_active_target
from rpcapsvc.server.session import SessionPolicy
from rpcapsvc.service import RpcapdService
from rpcapsvc.testing import FakeCaptureSystem


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

    def test_default_port(self) -> None:
        """DEFAULT as the port is 2003, as in the fork (which knows it in capitals only)."""
        for word in ("DEFAULT", "default", "Default"):
            config = parse_config(f"ActiveClient = a, {word}")
            self.assertEqual(config.active, (ActiveTarget("a:2003"),), word)
            self.assertEqual(config.warnings, ())

    def test_service_name_port(self) -> None:
        """The fork hands the port to getaddrinfo, which knows service names: so does this parser."""
        try:
            http = socket.getservbyname("http", "tcp")
        except OSError:
            raise SkipTest("this machine knows no 'http' service") from None
        self.assertEqual(active("ActiveClient = a,http"), ActiveTarget(f"a:{http}"))

    def test_ifname_and_ifaddr(self) -> None:
        """Both may be given: the interface must have that name and such an address."""
        target = active("ActiveClient = 10.0.0.5,2003,ifname=eth1,ifaddr=192.0.2.10")
        self.assertEqual(target, ActiveTarget("10.0.0.5:2003", ifname="eth1", ifaddr="192.0.2.10/32"))
        self.assertEqual(target.describe(), "10.0.0.5:2003 (interface eth1 with address 192.0.2.10)")
        target = active("ActiveClient = 10.0.0.5,2003,ifaddr=192.0.2.0/24,ifname=eth1")
        self.assertEqual(target.describe(), "10.0.0.5:2003 (interface eth1 with an address in 192.0.2.0/24)")

    def test_no_limit_on_collectors(self) -> None:
        """The fork uses the first 10 ActiveClient lines; here every one counts."""
        config = parse_config("".join(f"ActiveClient = c{i}.example, {3000 + i}\n" for i in range(25)))
        self.assertEqual(len(config.active), 25)
        self.assertEqual(config.active[-1], ActiveTarget("c24.example:3024"))
        self.assertEqual(config.warnings, ())

    def test_last_option_wins(self) -> None:
        """A repeated option replaces the earlier one, as in the fork."""
        self.assertEqual(
            active("ActiveClient = a,2003,ifname=lo,ifname=eth0,ifaddr=10.0.0.1,ifaddr=192.0.2.1"),
            ActiveTarget("a:2003", ifname="eth0", ifaddr="192.0.2.1"),
        )

    def test_spaces_around_option_equals(self) -> None:
        """
        C{ifname = eth1} is C{ifname=eth1} (the fork warns "no spaces on
        ActiveClient lines" and ignores the options, allowing any interface).
        """
        config = parse_config("ActiveClient = a , 2003 , ifname = eth1 ,ifaddr =192.0.2.1")
        self.assertEqual(config.active, (ActiveTarget("a:2003", "eth1", "192.0.2.1"),))
        self.assertEqual(config.warnings, ())


class InterfaceAddressOptionTests(SynchronousTestCase):
    """C{ifaddr=ADDR[/PREFIX]} as the fork's ipaddr_spec_parse reads it."""

    def ifaddr(self, value: str) -> str | None:
        config = parse_config(f"ActiveClient = a,2003,ifaddr={value}")
        self.assertEqual(config.warnings, ())
        return config.active[0].ifaddr

    def test_plain_address_is_one_address(self) -> None:
        """A plain ADDR is /32 (or /128): the interface must carry that very address."""
        self.assertEqual(self.ifaddr("192.0.2.10"), "192.0.2.10/32")
        self.assertEqual(self.ifaddr("2001:db8::5"), "2001:db8::5/128")
        self.assertEqual(
            active("ActiveClient = a,2003,ifaddr=192.0.2.10").ifaddr_network,
            ipaddress.ip_network("192.0.2.10/32"),
        )

    def test_network(self) -> None:
        self.assertEqual(self.ifaddr("192.0.2.0/24"), "192.0.2.0/24")
        self.assertEqual(self.ifaddr("fd00::/64"), "fd00::/64")
        target = active("ActiveClient = a,2003,ifaddr=192.0.2.0/24")
        self.assertEqual(target.describe(), "a:2003 (interface with an address in 192.0.2.0/24)")

    def test_host_bits_do_not_matter(self) -> None:
        """The fork masks both sides: 192.0.2.77/24 is the network 192.0.2.0/24."""
        self.assertEqual(self.ifaddr("192.0.2.77/24"), "192.0.2.0/24")
        self.assertEqual(self.ifaddr("fd00::1:2/64"), "fd00::/64")

    def test_whole_family(self) -> None:
        """/0: any address of that family."""
        self.assertEqual(self.ifaddr("10.0.0.0/0"), "0.0.0.0/0")
        self.assertEqual(self.ifaddr("::/0"), "::/0")

    def test_zone(self) -> None:
        """An IPv6 zone is accepted (getaddrinfo does) and plays no part in matching (nor in the fork)."""
        self.assertEqual(self.ifaddr("fe80::1%eth0"), "fe80::1/128")
        self.assertEqual(self.ifaddr("fe80::%eth0/64"), "fe80::/64")

    def test_old_ipv4_forms(self) -> None:
        """The fork's getaddrinfo(AI_NUMERICHOST) takes inet_aton's forms; so does this parser."""
        self.assertEqual(self.ifaddr("192.0.514"), "192.0.2.2/32")
        self.assertEqual(self.ifaddr("0300.0.2.2/24"), "192.0.2.0/24")
        self.assertEqual(self.ifaddr("0xc0.0.2.2"), "192.0.2.2/32")

    def test_prefix_read_as_atoi_reads_it(self) -> None:
        """The fork reads the prefix with atoi: trailing junk is dropped, no digits is /0; with a warning."""
        for prefix, network in [("24x", "192.0.2.0/24"), ("", "0.0.0.0/0"), ("abc", "0.0.0.0/0")]:
            config = parse_config(f"ActiveClient = a,2003,ifaddr=192.0.2.9/{prefix}", "f.ini")
            self.assertEqual(config.active[0].ifaddr, network, prefix)
            [warning] = config.warnings
            self.assertIn("f.ini, line 1: ifaddr prefix", warning)
            self.assertIn(f"'/{prefix}'", warning)
        self.assertEqual(self.ifaddr("192.0.2.9/+24"), "192.0.2.0/24")

    def test_target_takes_networks_and_addresses(self) -> None:
        """ActiveTarget keeps ifaddr as the network's text, whichever way it was given."""
        network = ipaddress.ip_network("192.0.2.0/24")
        self.assertEqual(ActiveTarget("h:1", ifaddr=network).ifaddr, "192.0.2.0/24")
        self.assertEqual(ActiveTarget("h:1", ifaddr="192.0.2.99/24"), ActiveTarget("h:1", ifaddr=network))
        self.assertEqual(
            ActiveTarget("h:1", ifaddr=ipaddress.ip_address("::1")), ActiveTarget("h:1", ifaddr="::1/128")
        )
        self.assertEqual(hash(ActiveTarget("h:1", ifaddr="::1")), hash(ActiveTarget("h:1", ifaddr="::1/128")))
        self.assertIsNone(ActiveTarget("h:1").ifaddr_network)
        self.assertRaises(ValueError, ActiveTarget, "h:1", None, "eth0")


class WarningTests(SynchronousTestCase):
    """
    What ExtraHop's rpcapd ignores or reads in an unusual way is read the same
    way here (or more usefully), never refused, and named in a warning.
    """

    def parse(self, line: str) -> DaemonConfig:
        """C{line} as line 4 of a file whose other lines still count."""
        text = f"# header\nNullAuthPermit = YES\n\n{line}\nActiveClient = fine.example\n"
        config = parse_config(text, "/etc/rpcapd.ini")
        self.assertIn(ActiveTarget("fine.example:2003"), config.active)
        return config

    def assertWarned(self, line: str, *words: str) -> DaemonConfig:
        config = self.parse(line)
        [warning] = config.warnings
        self.assertTrue(warning.startswith("/etc/rpcapd.ini, line 4: "), warning)
        for word in words:
            self.assertIn(word, warning)
        return config

    def test_unknown_setting(self) -> None:
        config = self.assertWarned("Foo = bar")
        self.assertEqual(config.warnings, ("/etc/rpcapd.ini, line 4: unknown setting 'Foo' ignored",))
        self.assertEqual(config, self.parse(""))
        self.assertWarned("activeclients = a", "'activeclients'", "ignored")  # the fork ignores it too
        self.assertWarned("= a", "unknown setting ''")

    def test_not_a_setting(self) -> None:
        config = self.assertWarned("garbage here", "'garbage here' is not a setting", "ignored")
        self.assertEqual(config, self.parse(""))

    def test_name_containing_a_setting(self) -> None:
        """The fork looks for the name with strstr: ActiveClients, ;ActiveClient are ActiveClient."""
        config = self.assertWarned("ActiveClients = a", "'ActiveClients' read as ActiveClient")
        self.assertIn(ActiveTarget("a:2003"), config.active)
        config = self.assertWarned(";ActiveClient = b, 2004", "';ActiveClient' read as ActiveClient")
        self.assertIn(ActiveTarget("b:2004"), config.active)
        config = self.assertWarned("MyPassiveClient = h", "read as PassiveClient")
        self.assertEqual(config.passive_clients, ("h",))

    def test_no_equals(self) -> None:
        """The fork reads C{NullAuthPermit YES}; this parser reads every setting without C{=}."""
        config = self.assertWarned("ActiveClient a,2004", "no '=' after ActiveClient")
        self.assertIn(ActiveTarget("a:2004"), config.active)
        config = self.assertWarned("PassiveClient h1 h2", "no '=' after PassiveClient")
        self.assertEqual(config.passive_clients, ("h1", "h2"))
        config = parse_config("NullAuthPermit YES")
        self.assertIs(config.null_auth, True)
        self.assertIn("no '=' after NullAuthPermit", config.warnings[0])

    def test_unknown_option(self) -> None:
        """The fork ignores it (and the line's other options); here only it is ignored."""
        config = self.assertWarned("ActiveClient = a,2003,ifindex=2", "unknown ActiveClient option 'ifindex'")
        self.assertIn(ActiveTarget("a:2003"), config.active)
        config = self.assertWarned("ActiveClient = a,2003,ifname=eth0,IFINDEX=2", "'IFINDEX'")
        self.assertIn(ActiveTarget("a:2003", ifname="eth0"), config.active)

    def test_option_without_value(self) -> None:
        config = self.assertWarned("ActiveClient = a,2003,ifname=", "ifname= without a value")
        self.assertIn(ActiveTarget("a:2003"), config.active)
        config = self.assertWarned("ActiveClient = a,2003,ifaddr=", "ifaddr= without a value")
        self.assertIn(ActiveTarget("a:2003"), config.active)

    def test_word_that_is_not_an_option(self) -> None:
        config = self.assertWarned("ActiveClient = a,2003,eth0", "'eth0' is not an ActiveClient option")
        self.assertIn(ActiveTarget("a:2003"), config.active)

    def test_passive_without_host(self) -> None:
        config = self.assertWarned("PassiveClient = ", "PassiveClient without a host")
        self.assertEqual(config.passive_clients, ())

    def test_null_auth_other_values(self) -> None:
        """Anything but YES is NO, as in the fork; said when it is not plainly NO."""
        for value in ("maybe", "", "YES,", "yes please"):
            text = f"NullAuthPermit = YES\nNullAuthPermit = {value}\n"
            config = parse_config(text, "f.ini")
            self.assertIs(config.null_auth, False, value)
            [warning] = config.warnings
            self.assertIn(f"f.ini, line 2: NullAuthPermit {value!r} read as NO", warning)

    def test_null_auth_where_the_fork_finds_yes(self) -> None:
        """
        The fork permits null authentication when YES is anywhere after the
        name, a comment included; this parser does not, and says so.
        """
        for line in ("NullAuthPermit = NO # YES to allow", "NullAuthPermit = NOT YES"):
            config = parse_config(line)
            self.assertIs(config.null_auth, False, line)
            [warning] = config.warnings
            self.assertIn("ExtraHop's rpcapd reads this line as YES", warning)

    def test_clean_file_no_warnings(self) -> None:
        self.assertEqual(self.parse("PassiveClient = h").warnings, ())


class LineReadingTests(SynchronousTestCase):
    """Comments, white space and line length: as the fork reads them, or more tolerantly."""

    def test_long_lines(self) -> None:
        """
        No length limit (the fork reads 2047 characters at a time and takes
        the rest of a longer line as another line).
        """
        hosts = [f"host{i}.example" for i in range(500)]
        text = "#" + "x" * 5000 + " ActiveClient = not.a.collector\n" + "PassiveClient = " + ",".join(hosts)
        config = parse_config(text)
        self.assertEqual(config.active, ())
        self.assertEqual(config.passive_clients, tuple(hosts))
        self.assertEqual(config.warnings, ())

    def test_indented_comment(self) -> None:
        """A comment after indentation is a comment (the fork reads it as a setting)."""
        config = parse_config("   # ActiveClient = a, 2003\n\t#NullAuthPermit = YES\n")
        self.assertEqual(config, DaemonConfig())
        self.assertEqual(config.warnings, ())

    def test_trailing_comment_keeps_options(self) -> None:
        """A comment after the options is no option (the fork then ignores the line's options)."""
        config = parse_config("ActiveClient = a,2003,ifname=lo # the collector\n")
        self.assertEqual(config.active, (ActiveTarget("a:2003", ifname="lo"),))
        self.assertEqual(config.warnings, ())

    def test_line_numbers(self) -> None:
        """Lines are counted by LF, CRLF included."""
        config = parse_config("# one\r\n\r\nFoo = 3\r\n\nBar = 5\r\n", "f.ini")
        self.assertEqual(
            config.warnings,
            ("f.ini, line 3: unknown setting 'Foo' ignored", "f.ini, line 5: unknown setting 'Bar' ignored"),
        )

    def test_warnings_not_compared(self) -> None:
        """Two readings of the same settings are equal, whatever was warned about."""
        self.assertEqual(parse_config("Foo = 1\nActiveClient = a"), parse_config("ActiveClient = a"))
        self.assertEqual(
            hash(parse_config("Foo = 1\nActiveClient = a")), hash(parse_config("ActiveClient = a"))
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
        for value, expected in [("YES", True), (" YES ", True), ("NO", False), ("no", False), ("off", False)]:
            config = parse_config(f"NullAuthPermit = {value}")
            self.assertEqual(config.null_auth, expected, value)
            self.assertEqual(config.warnings, (), value)

    def test_null_auth_only_capital_yes(self) -> None:
        """
        Only YES permits it, as in ExtraHop's and libpcap's rpcapd (which
        compare with "YES"): yes, true, on and 1 are read as NO, with a
        warning, so a file never opens the daemon wider than they would.
        """
        for value in ("yes", " Yes ", "TRUE", "on", "1"):
            config = parse_config(f"NullAuthPermit = {value}", "f.ini")
            self.assertIs(config.null_auth, False, value)
            self.assertEqual(
                config.warnings,
                (
                    f"f.ini, line 1: NullAuthPermit {value.strip()!r} read as NO"
                    " (only YES permits null authentication)",
                ),
            )

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
            "nullAUTHpermit = YES # allow null auth\n"
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

    def test_bad_port(self) -> None:
        """Neither a number nor a TCP service name: the fork would never connect."""
        self.assertBadLine("ActiveClient = a,no-such-service", "'no-such-service' is not a port number")
        self.assertBadLine("ActiveClient = a,-5", "'-5'")
        self.assertBadLine("ActiveClient = a,eth0", "'eth0'")

    def test_port_zero(self) -> None:
        self.assertBadLine("ActiveClient = a,0", "port 0")

    def test_port_too_big(self) -> None:
        self.assertBadLine("ActiveClient = a,65536", "65536")

    def test_highest_port_is_fine(self) -> None:
        self.assertEqual(active("ActiveClient = a,65535"), ActiveTarget("a:65535"))

    def test_active_without_host(self) -> None:
        """The fork keeps an empty entry, which ends its list of collectors: an error here."""
        self.assertBadLine("ActiveClient =", "needs a host")
        self.assertBadLine("ActiveClient = , ;", "needs a host")
        self.assertBadLine("ActiveClient = ifname=eth0", "needs a host", "ifname=eth0")

    def test_ifaddr_not_an_address(self) -> None:
        """
        The fork logs an error and then lets the collector open any interface;
        this daemon never widens a restriction it cannot read.
        """
        self.assertBadLine(
            "ActiveClient = a,2003,ifaddr=300.1.1.1", "ifaddr='300.1.1.1' is not an IP address"
        )
        self.assertBadLine("ActiveClient = a,2003,ifaddr=eth0", "ifaddr='eth0' is not an IP address")
        self.assertBadLine("ActiveClient = a,2003,ifaddr=/24", "ifaddr='/24' is not an IP address")
        self.assertBadLine("ActiveClient = a,2003,ifaddr=1.2.3.4x", "'1.2.3.4x'")

    def test_ifaddr_prefix_out_of_range(self) -> None:
        """The fork's ERROR: bad prefix: beyond /32 (/128), or negative."""
        self.assertBadLine("ActiveClient = a,2003,ifaddr=192.0.2.1/33", "/33", "out of range")
        self.assertBadLine("ActiveClient = a,2003,ifaddr=2001:db8::/129", "/129")
        self.assertBadLine("ActiveClient = a,2003,ifaddr=192.0.2.1/-1", "/-1")

    def test_unusable_host(self) -> None:
        """Stray brackets would make an address the endpoint parser refuses later: refused now."""
        self.assertBadLine("ActiveClient = [::1,2003", "[::1")
        self.assertBadLine("ActiveClient = a]b", "a]b")
        self.assertBadLine("ActiveClient = []", "[]")

    def test_default_source(self) -> None:
        """Text with no file behind it is still located by line."""
        with self.assertRaises(ConfigError) as caught:
            parse_config("\nActiveClient =")
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
        """The fork reads bytes: a file that is not UTF-8 is read as Latin-1, with a warning."""
        path = self.write(b"ActiveClient = a\n# caf\xe9 (Latin-1)\nFoo = 1\n")
        config = read_config(path)
        self.assertEqual(config, DaemonConfig(active=(ActiveTarget("a:2003"),)))
        self.assertEqual(len(config.warnings), 2)
        self.assertIn(path, config.warnings[0])
        self.assertIn("not UTF-8", config.warnings[0])
        self.assertIn("Latin-1", config.warnings[0])
        self.assertEqual(config.warnings[1], f"{path}, line 3: unknown setting 'Foo' ignored")

    def test_byte_order_mark(self) -> None:
        """A UTF-8 byte-order mark (as Windows editors write) is no part of the first name."""
        path = self.write(b"\xef\xbb\xbfActiveClient = a, 2004\r\nNullAuthPermit = YES\r\n")
        config = read_config(path)
        self.assertEqual(config, DaemonConfig(active=(ActiveTarget("a:2004"),), null_auth=True))
        self.assertEqual(config.warnings, ())

    def test_warnings_name_the_file(self) -> None:
        path = self.write(b"# x\nActiveClient = a, 2004, ifindex=2\n")
        self.assertEqual(
            read_config(path).warnings, (f"{path}, line 2: unknown ActiveClient option 'ifindex' ignored",)
        )


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


# What ExtraHop's rpcapd 9b0a405 writes with
#   rpcapd -n -l "a.example,10.0.0.1;b" -a "c.example,2004,d.example,DEFAULT" -s FILE
# (fileconf_save, fileconf.c:486-542), byte for byte.
_FORK_SAVED = (
    "# Configuration file help.\n"
    "\n"
    "# Hosts which are allowed to connect to this server (passive mode)\n"
    "# Format: PassiveClient = <name or address>\n"
    "\n"
    "PassiveClient = a.example\n"
    "PassiveClient = 10.0.0.1\n"
    "PassiveClient = b\n"
    "\n"
    "\n"
    "# Hosts to which this server is trying to connect to (active mode)\n"
    "# Format: ActiveClient = <name or address>, <port | DEFAULT>\n"
    "\n"
    "ActiveClient = c.example, 2004\n"
    "ActiveClient = d.example, 2003\n"
    "\n"
    "\n"
    "# Permit NULL authentication: YES or NOT\n"
    "\n"
    "NullAuthPermit = YES\n"
)


class FormatConfigTests(SynchronousTestCase):
    def test_fork_layout(self) -> None:
        """The same text as the fork's C{-s FILE} for the same settings."""
        config = DaemonConfig(
            active=(ActiveTarget("c.example:2004"), ActiveTarget("d.example:2003")),
            passive_clients=("a.example", "10.0.0.1", "b"),
            null_auth=True,
        )
        self.assertEqual(format_config(config), _FORK_SAVED)
        self.assertEqual(parse_config(_FORK_SAVED), config)

    def test_interface_options(self) -> None:
        """ifname= and ifaddr= (which the fork reads but never writes) follow the port; a /32 is a plain address."""
        config = DaemonConfig(
            active=(
                ActiveTarget("a:2003", ifname="eth1"),
                ActiveTarget("[2001:db8::5]:2004", ifaddr="2001:db8::/32"),
                ActiveTarget("b:2005", ifname="eth0", ifaddr="192.0.2.10"),
            )
        )
        text = format_config(config)
        self.assertIn(
            "ActiveClient = a, 2003, ifname=eth1\n"
            "ActiveClient = 2001:db8::5, 2004, ifaddr=2001:db8::/32\n"
            "ActiveClient = b, 2005, ifname=eth0, ifaddr=192.0.2.10\n",
            text,
        )
        self.assertEqual(parse_config(text), config)
        self.assertEqual(parse_config(text).warnings, ())

    def test_null_auth(self) -> None:
        """NO is written as NO; unsaid (None) writes no NullAuthPermit line at all."""
        self.assertTrue(format_config(DaemonConfig(null_auth=False)).endswith("\n\nNullAuthPermit = NO\n"))
        unsaid = format_config(DaemonConfig())
        self.assertNotIn("NullAuthPermit =", unsaid)
        self.assertTrue(unsaid.endswith("# Permit NULL authentication: YES or NOT\n\n"))
        self.assertEqual(parse_config(unsaid), DaemonConfig())
        self.assertIsNone(parse_config(unsaid).null_auth)

    def test_port_2003_when_unsaid(self) -> None:
        """A collector given without a port (as --active takes it) is written with 2003."""
        text = format_config(DaemonConfig(active=(ActiveTarget("a.example"),)))
        self.assertIn("ActiveClient = a.example, 2003\n", text)

    def test_warnings_not_written(self) -> None:
        config = parse_config("Foo = 1\nPassiveClient = h")
        self.assertNotIn("Foo", format_config(config))
        self.assertEqual(parse_config(format_config(config)), config)

    def test_unwritable(self) -> None:
        """What would not read back the same is refused, not written."""
        for target in [
            ActiveTarget("tls:c.example:2003:trustRoots=/etc/ssl"),
            ActiveTarget("tcp:c.example:2003"),
            ActiveTarget("c.example:http"),
            ActiveTarget("two words:2003"),
            ActiveTarget("a#b:2003"),
            ActiveTarget("a:2003", ifname="eth0 eth1"),
            ActiveTarget("a:2003", ifname="eth0,ifaddr=10.0.0.1"),
            ActiveTarget("a:2003", ifname="eth#0"),
            ActiveTarget("a:2003", ifname=""),
            ActiveTarget("ifname=x:2003"),
        ]:
            self.assertRaises(ValueError, format_config, DaemonConfig(active=(target,)))
        for host in ["", "a b", "a,b", "a;b", "a#b", "a\nb"]:
            self.assertRaises(ValueError, format_config, DaemonConfig(passive_clients=(host,)))


_NAMES = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
_IFNAMES = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=",;#"),
    min_size=1,
    max_size=15,
)


@st.composite
def _networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address = draw(st.ip_addresses())
    prefix = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_network((address, prefix), strict=False)


@st.composite
def _targets(draw: st.DrawFn) -> ActiveTarget:
    host = draw(_NAMES | st.ip_addresses().map(str))
    port = draw(st.integers(1, 65535))
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ActiveTarget(endpoint, draw(st.none() | _IFNAMES), draw(st.none() | _networks()))


_CONFIGS = st.builds(
    DaemonConfig,
    active=st.lists(_targets(), max_size=12).map(tuple),
    passive_clients=st.lists(_NAMES | _networks().map(str), max_size=5).map(tuple),
    null_auth=st.sampled_from([None, True, False]),
)


class FormatPropertyTests(SynchronousTestCase):
    @given(_CONFIGS)
    def test_round_trip(self, config: DaemonConfig) -> None:
        """Whatever format_config writes reads back as the same configuration, with no warning."""
        reread = parse_config(format_config(config), "written.ini")
        self.assertEqual(reread, config)
        self.assertEqual(reread.warnings, ())

    @given(_CONFIGS)
    def test_written_files_are_stable(self, config: DaemonConfig) -> None:
        """Writing what was read back gives the same text."""
        text = format_config(config)
        self.assertEqual(format_config(parse_config(text)), text)


class ServiceLogsWarningsTests(SynchronousTestCase):
    """RpcapdService logs the file's warnings when it reads it: at start and on every reload."""

    def write(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def test_start_and_reload(self) -> None:
        path = self.mktemp()
        # The file need not exist yet: the constructor does no I/O, start reads it.
        service = RpcapdService(
            MemoryReactorClock(),
            listen=[],
            policy=SessionPolicy(null_auth=True),
            capture_system=FakeCaptureSystem([]),
            config_path=path,
        )
        self.write(path, "Foo = 1\nPassiveClient = 127.0.0.1\n")
        with capturedLogs() as events:
            service.startService()
        self.addCleanup(service.stopService)
        warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warned, [f"{path}, line 1: unknown setting 'Foo' ignored"])

        self.write(path, "PassiveClient = 127.0.0.1\nNullAuthPermit = yes\nActiveClient = c, 2003, bogus\n")
        with capturedLogs() as events:
            service.reload()
        warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warned), 2, warned)
        self.assertTrue(warned[0].startswith(f"{path}, line 2: NullAuthPermit 'yes' read as NO"), warned)
        self.assertTrue(
            warned[1].startswith(f"{path}, line 3: 'bogus' is not an ActiveClient option"), warned
        )
        self.assertEqual(len(service.collectors), 1)
