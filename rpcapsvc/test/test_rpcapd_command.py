"""
Tests for the C{rpcapd} command (L{rpcapsvc.rpcapd}): ExtraHop's rpcapd
command line, translated into twistd's and C{twistd rpcapd}'s, checked by
C{twistd rpcapd}'s own option parser.  Nothing is started.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc import rpcapd
from rpcapsvc.config import ActiveTarget, DaemonConfig, read_config
from rpcapsvc.rpcapd import (
    FORK_BUFFER_SIZE,
    FORK_MTU,
    FORK_SNDBUF,
    CommandLineError,
    Invocation,
    parse_active_list,
    read_host_list,
    translate,
)
from rpcapsvc.tap import Options


def option_values(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


class ActiveListTests(SynchronousTestCase):
    def test_host_and_port(self) -> None:
        """-a 127.0.0.1,2003 is a collector at that address and port, not a host named so."""
        self.assertEqual(parse_active_list("127.0.0.1,2003"), [ActiveTarget("127.0.0.1:2003")])

    def test_default_port(self) -> None:
        for value in ("collector.example", "collector.example,DEFAULT", "collector.example,default"):
            self.assertEqual(parse_active_list(value), [ActiveTarget("collector.example:2003")])

    def test_several_pairs(self) -> None:
        """The fork reads host,port pairs in turn; the last host may leave its port out."""
        self.assertEqual(
            parse_active_list("a.example,2004;b.example 2005,c.example"),
            [ActiveTarget("a.example:2004"), ActiveTarget("b.example:2005"), ActiveTarget("c.example:2003")],
        )

    def test_ipv6(self) -> None:
        self.assertEqual(parse_active_list("::1,2010"), [ActiveTarget("[::1]:2010")])
        self.assertEqual(parse_active_list("[2001:db8::5]"), [ActiveTarget("[2001:db8::5]:2003")])

    def test_bad(self) -> None:
        for value in ("", ",", "host,port", "host,0", "host,65536"):
            self.assertRaises(CommandLineError, parse_active_list, value)


class HostListTests(SynchronousTestCase):
    def test_inline(self) -> None:
        self.assertEqual(read_host_list("192.0.2.1,trusted.example"), ["192.0.2.1", "trusted.example"])

    def test_file(self) -> None:
        """The fork's help says a file, one host a line; comments are allowed here."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("192.0.2.1\n# the analysis box\n10.0.0.0/8\n\n")
        self.assertEqual(read_host_list(path), ["192.0.2.1", "10.0.0.0/8"])

    def test_empty(self) -> None:
        path = self.mktemp()
        open(path, "w").close()
        self.assertRaises(CommandLineError, read_host_list, path)


class TranslateTests(SynchronousTestCase):
    def translate(self, *argv: str) -> Invocation:
        inv = translate(list(argv), is_root=True)
        Options().parseOptions(list(inv.rpcapd_args))  # twistd rpcapd takes what we made
        return inv

    def refused(self, *argv: str) -> str:
        with self.assertRaises(CommandLineError) as caught:
            translate(list(argv), is_root=True)
        return str(caught.exception)

    def test_fork_defaults(self) -> None:
        """udpstr at 1472 on every channel, 16 MiB capture buffer, 8 MiB send buffer, port 2002."""
        args = self.translate("-n").rpcapd_args
        self.assertEqual(option_values(args, "--udp-mtu"), [str(FORK_MTU)])
        self.assertIn("--udpstr-tcp", args)
        self.assertEqual(option_values(args, "--udp-sndbuf"), [str(FORK_SNDBUF)])
        self.assertEqual(option_values(args, "--buffer-size"), [str(FORK_BUFFER_SIZE)])
        self.assertEqual(option_values(args, "--listen"), ["tcp:2002"])
        self.assertEqual(option_values(args, "--auth"), ["unix"])
        self.assertIn("--null-auth", args)
        self.assertIn("--no-udp-gso", args)  # each datagram sent on its own, as the fork sends them

    def test_summary(self) -> None:
        """The framing and buffer sizes in force are logged in one line at start."""
        self.assertIn("udpstr at MTU 1472", self.translate("-n").summary)
        self.assertIn("16777216", self.translate("-n").summary)
        self.assertIn("classic", self.translate("-n", "-t", "0").summary)

    def test_classic_framing(self) -> None:
        args = self.translate("-n", "-t", "0").rpcapd_args
        self.assertEqual(option_values(args, "--udp-mtu"), [])
        self.assertNotIn("--udpstr-tcp", args)

    def test_mtu_capped(self) -> None:
        inv = self.translate("-n", "-t", "70000")
        self.assertEqual(option_values(inv.rpcapd_args, "--udp-mtu"), ["65000"])
        self.assertTrue(any("capped" in n for n in inv.notices))

    def test_fleet_line(self) -> None:
        """rpcapd -v -d -L -f rpcapd.ini: active only, a daemon with a pidfile, syslog, the file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("ActiveClient = 127.0.0.1,2003\nNullAuthPermit = YES\n")
        inv = self.translate("-v", "-d", "-L", "-f", path)
        self.assertIn("--no-passive", inv.rpcapd_args)
        self.assertEqual(option_values(inv.rpcapd_args, "--listen"), [])
        self.assertEqual(option_values(inv.rpcapd_args, "--config"), [path])
        self.assertNotIn("--nodaemon", inv.twistd_args)
        self.assertEqual(option_values(inv.twistd_args, "--pidfile"), ["/run/rpcapd.pid"])
        self.assertIn("--syslog", inv.twistd_args)

    def test_foreground(self) -> None:
        inv = self.translate("-n")
        self.assertEqual(inv.twistd_args[:2], ["--nodaemon", "--pidfile="])
        self.assertNotIn("--syslog", inv.twistd_args)

    def test_daemon_without_syslog_logs_to_a_file(self) -> None:
        inv = translate(["-n", "-d"], is_root=False)
        self.assertEqual(option_values(inv.twistd_args, "--logfile"), [os.path.join(".", "rpcapd.log")])
        self.assertEqual(option_values(inv.twistd_args, "--pidfile"), [os.path.join(".", "rpcapd.pid")])

    def test_active_keeps_passive(self) -> None:
        """-a alone still accepts passive clients, as the fork does; -v turns them off."""
        args = self.translate("-n", "-a", "127.0.0.1,2003").rpcapd_args
        self.assertEqual(option_values(args, "--active"), ["127.0.0.1:2003"])
        self.assertEqual(option_values(args, "--listen"), ["tcp:2002"])
        args = self.translate("-n", "-v", "-a", "127.0.0.1,2003", "-a", "::1").rpcapd_args
        self.assertEqual(option_values(args, "--active"), ["127.0.0.1:2003", "[::1]:2003"])
        self.assertEqual(option_values(args, "--listen"), [])

    def test_listen_address(self) -> None:
        cases = {
            ("-b", "127.0.0.1", "-p", "2010"): "tcp:2010:interface=127.0.0.1",
            ("-b", "::1"): "tcp6:2002:interface=\\:\\:1",
            ("-6",): "tcp6:2002:interface=\\:\\:",
            ("-4", "-p", "2011"): "tcp:2011",
            ("-b", "localhost", "-4"): "tcp:2002:interface=127.0.0.1",
        }
        for argv, endpoint in cases.items():
            args = self.translate("-n", *argv).rpcapd_args
            self.assertEqual(option_values(args, "--listen"), [endpoint], argv)

    def test_allowed_hosts(self) -> None:
        args = self.translate("-n", "-l", "127.0.0.1,10.0.0.0/8").rpcapd_args
        self.assertEqual(option_values(args, "--allow"), ["127.0.0.1", "10.0.0.0/8"])

    def test_fork_switches(self) -> None:
        args = self.translate("-n", "-i", "lo", "-S", "-u", "1048576", "-z", "4194304").rpcapd_args
        self.assertEqual(option_values(args, "--interface"), ["lo"])
        self.assertIn("--log-stats", args)
        self.assertEqual(option_values(args, "--udp-sndbuf"), ["1048576"])
        self.assertEqual(option_values(args, "--buffer-size"), ["4194304"])

    def test_thread_switches_ignored(self) -> None:
        """-c -e -m -k -g -y tune the fork's threads: accepted, and each logged as ignored."""
        inv = self.translate("-n", "-c", "1,0", "-e", "-15,10", "-m", "64", "-k", "4096", "-g", "-y")
        self.assertEqual(len(inv.notices), 6)
        self.assertTrue(all("ignored" in n for n in inv.notices), inv.notices)
        self.assertIn("-c 1,0 ignored", inv.notices[0])

    def test_config_file_replaces_active_and_allowed(self) -> None:
        """As in the fork, -f's file replaces -a and -l; the other switches stay."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("NullAuthPermit = YES\n")
        inv = self.translate("-a", "192.0.2.1,2003", "-l", "192.0.2.9", "-f", path, "-p", "2010")
        self.assertEqual(option_values(inv.rpcapd_args, "--active"), [])
        self.assertEqual(option_values(inv.rpcapd_args, "--allow"), [])
        self.assertEqual(option_values(inv.rpcapd_args, "--listen"), ["tcp:2010"])
        self.assertIn("replaced", inv.notices[0])

    def test_missing_config_file(self) -> None:
        """As in the fork, a -f file that does not exist leaves the command line's settings."""
        inv = self.translate("-n", "-f", "/nonexistent/rpcapd.ini")
        self.assertEqual(option_values(inv.rpcapd_args, "--config"), [])
        self.assertIn("no such file", inv.notices[0])

    def test_refused(self) -> None:
        self.assertIn("option -x not recognized", self.refused("-x"))
        self.assertIn("needs a collector", self.refused("-n", "-v"))
        self.assertIn("not a port", self.refused("-p", "70000"))
        self.assertIn("not a number", self.refused("-z", "lots"))
        self.assertIn("contradict", self.refused("-4", "-b", "::1"))
        self.assertIn("unexpected argument", self.refused("-n", "eth0"))

    def test_help(self) -> None:
        self.assertTrue(translate(["-n", "-h"]).help)

    def test_saved_configuration(self) -> None:
        """-s FILE saves what the command line says, in rpcapd.ini form, readable by -f."""
        inv = self.translate("-n", "-a", "127.0.0.1,2004", "-l", "192.0.2.1")
        self.assertEqual(
            inv.command_line_config,
            DaemonConfig((ActiveTarget("127.0.0.1:2004"),), ("192.0.2.1",), True),
        )
        path = self.mktemp()
        rpcapd.save_config(path, inv.command_line_config)
        self.assertEqual(read_config(path), inv.command_line_config)


class MainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "argv", ["rpcapd"])
        self.ran: list[list[str]] = []

    def main(self, *argv: str) -> Any:
        return rpcapd.main(list(argv), run=lambda: self.ran.append(list(sys.argv)))

    def test_help(self) -> None:
        self.main("-h")
        self.assertIn("-t MTU", self.stdout.getvalue())
        self.assertEqual(self.ran, [])

    def test_error_is_one_line(self) -> None:
        with self.assertRaises(SystemExit) as caught:
            self.main("-p", "x")
        self.assertEqual(caught.exception.code, 2)
        self.assertEqual(self.stderr.getvalue(), "rpcapd: -p x: not a number\n")
        self.assertEqual(self.ran, [])

    def test_twistd_rpcapd_refusal_is_one_line(self) -> None:
        """What twistd rpcapd refuses is reported in one line too, before anything runs."""
        with self.assertRaises(SystemExit):
            self.main("-n", "-t", "10")
        [line] = self.stderr.getvalue().splitlines()
        self.assertTrue(line.startswith("rpcapd: --udp-mtu"), line)

    def test_runs_twistd(self) -> None:
        self.main("-n", "-p", "2010")
        [argv] = self.ran
        self.assertEqual(argv[:3], ["rpcapd", "--nodaemon", "--pidfile="])
        self.assertEqual(argv[3], "rpcapd")
        self.assertIn("tcp:2010", argv)
        self.assertEqual(self.stderr.getvalue(), "")

    def test_save(self) -> None:
        path = self.mktemp()
        self.main("-n", "-s", path, "-a", "127.0.0.1")
        self.assertEqual(read_config(path).active, (ActiveTarget("127.0.0.1:2003"),))
