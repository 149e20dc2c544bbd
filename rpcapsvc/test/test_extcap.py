"""
Unit tests of C{rpcap-extcap} (L{rpcapsvc.collector.extcap}): what it prints
for Wireshark's listing, config, DLT and filter calls, how it reads its
command line and Wireshark's control protocol, and where C{--install} puts
its link.  No sockets: the end-to-end tests are in C{test_interop_extcap}.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from ipaddress import ip_address
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .. import __version__
from ..collector import extcap
from ..protocol.wire import InterfaceAddress, InterfaceFlags, InterfaceInfo

SENTENCE = re.compile(r"^(extcap|interface|control|arg|value|dlt) (\{[a-z]+=[^{}]*\})+$")


def fields(line: str) -> dict[str, str]:
    """The C{{key=value}} fields of a sentence, as Wireshark's tokenizer splits them."""
    return dict(re.findall(r"\{([a-z]+)=([^{}]*)\}", line))


def run(*argv: str) -> tuple[int, str, str]:
    """C{rpcap-extcap ARGV}: exit status, standard output, standard error."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            extcap.main(list(argv))
        except SystemExit as e:
            code = e.code
    assert isinstance(code, int)
    return code, out.getvalue(), err.getvalue()


LO = InterfaceInfo(
    "lo", "", InterfaceFlags.UP | InterfaceFlags.LOOPBACK, (InterfaceAddress(ip_address("127.0.0.1")),)
)
ETH = InterfaceInfo("eth0", "First {Ethernet}", InterfaceFlags.UP)
DOWN = InterfaceInfo("nflog", "Linux netfilter log", 0)


class DiscoveryTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        code, out, err = run("--extcap-interfaces", "--extcap-version=4.0")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        for line in lines:
            self.assertRegex(line, SENTENCE)
        self.assertEqual(fields(lines[0])["version"], __version__)
        self.assertTrue(lines[0].startswith("extcap {version="))
        self.assertIn("interface {value=rpcap}{display=Remote capture (RPCAP) from a daemon}", lines)
        self.assertIn(
            "interface {value=rpcap-active}{display=Remote capture (RPCAP), waiting for an active daemon}",
            lines,
        )
        [control] = [fields(line) for line in lines if line.startswith("control ")]
        self.assertEqual((control["type"], control["role"]), ("button", "logger"))

    def test_help_is_the_wireshark_page(self) -> None:
        """The source tree's docs/wireshark.md, which Wireshark's help button opens."""
        url = fields(extcap.interfaces_output()[0]).get("help")
        self.assertIsNotNone(url)
        assert url is not None
        self.assertTrue(url.startswith("file://") and url.endswith("/docs/wireshark.md"), url)

    def test_version_alone(self) -> None:
        code, out, _ = run("--extcap-version=4.0")
        self.assertEqual(code, 0)
        [line] = out.splitlines()
        self.assertEqual(fields(line)["version"], __version__)

    def test_dlts(self) -> None:
        for interface in ("rpcap", "rpcap-active"):
            code, out, _ = run("--extcap-dlts", "--extcap-interface", interface)
            self.assertEqual((code, out), (0, "dlt {number=1}{name=EN10MB}{display=Ethernet}\n"))

    def test_unknown_interface(self) -> None:
        code, out, err = run("--extcap-dlts", "--extcap-interface", "rpcap2")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err, "rpcap-extcap: no interface 'rpcap2': this program has rpcap and rpcap-active\n"
        )

    def test_no_interface(self) -> None:
        code, _, err = run("--extcap-config")
        self.assertEqual(code, 2)
        self.assertIn("--extcap-interface rpcap or rpcap-active", err)

    def test_nothing_to_do(self) -> None:
        code, _, err = run()
        self.assertEqual(code, 2)
        self.assertEqual(len(err.splitlines()), 1)


class ConfigTests(SynchronousTestCase):
    def args(self, *argv: str) -> dict[str, dict[str, str]]:
        code, out, err = run("--extcap-config", *argv)
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        for line in lines:
            self.assertRegex(line, SENTENCE)
        return {fields(line)["call"]: fields(line) for line in lines if line.startswith("arg ")}

    def test_passive(self) -> None:
        args = self.args("--extcap-interface", "rpcap")
        self.assertEqual(
            list(args),
            [
                "--remote-host",
                "--remote-port",
                "--tls",
                "--ca",
                "--remote-username",
                "--remote-password",
                "--remote-interface",
                "--remote-filter",
                "--remote-noprom",
                "--snaplen",
                "--udp",
                "--log-file",
            ],
        )
        self.assertEqual([a["number"] for a in args.values()], [str(n) for n in range(len(args))])
        self.assertEqual(args["--remote-host"]["required"], "true")
        self.assertEqual(
            (args["--remote-port"]["type"], args["--remote-port"]["default"], args["--remote-port"]["range"]),
            ("unsigned", "2002", "1,65535"),
        )
        self.assertEqual(args["--remote-password"]["type"], "password")
        self.assertEqual(args["--tls"]["type"], "boolflag")
        self.assertEqual(args["--udp"]["type"], "boolflag")
        self.assertEqual(args["--ca"]["type"], "fileselect")
        self.assertEqual((args["--snaplen"]["type"], args["--snaplen"]["default"]), ("integer", "0"))
        # Without the daemon's host, the interface is typed in.
        self.assertEqual(args["--remote-interface"]["type"], "string")
        self.assertNotIn("reload", args["--remote-interface"])
        for arg in args.values():
            self.assertIn(arg["group"], ("Server", "Authentication", "Capture", "Debug"))
            self.assertTrue(arg["display"] and arg["tooltip"])

    def test_active(self) -> None:
        args = self.args("--extcap-interface", "rpcap-active")
        self.assertNotIn("--remote-host", args)
        self.assertNotIn("--tls", args)
        self.assertEqual(list(args)[:2], ["--listen-port", "--listen-address"])
        self.assertEqual(
            (args["--listen-port"]["default"], args["--listen-port"]["range"]), ("2003", "1,65535")
        )
        self.assertEqual(args["--remote-interface"]["type"], "string")
        self.assertEqual(args["--listen-port"]["number"], "0")

    def test_selector_of_the_daemons_interfaces(self) -> None:
        """With the daemon's interfaces (host and port given), a selector Wireshark can reload."""
        lines = extcap.config_output("rpcap", [ETH, LO, DOWN])
        args = {fields(line)["call"]: fields(line) for line in lines if line.startswith("arg ")}
        interface = args["--remote-interface"]
        self.assertEqual((interface["type"], interface["reload"]), ("selector", "true"))
        values = [fields(line) for line in lines if line.startswith("value ")]
        self.assertEqual({v["arg"] for v in values}, {interface["number"]})
        self.assertEqual([v["value"] for v in values], ["eth0", "lo", "nflog"])
        self.assertEqual([v.get("default") for v in values], ["true", None, None])
        self.assertEqual(
            [v["display"] for v in values],
            [
                "eth0 (First (Ethernet)) [Up]",
                "lo [Up] 127.0.0.1",
                "nflog (Linux netfilter log) [Down]",
            ],
        )
        for line in lines:
            self.assertRegex(line, SENTENCE)

    def test_host_that_cannot_be_reached(self) -> None:
        """The lookup fails: the config still comes, exit 0, with a string field."""
        calls = []

        def fail(args: Any) -> tuple[None, str]:
            calls.append((args.remote_host, args.remote_port))
            return None, "cannot connect to 192.0.2.1:2010: connection refused"

        self.patch(extcap, "_lookup", fail)
        args = self.args("--extcap-interface", "rpcap", "--remote-host", "192.0.2.1", "--remote-port", "2010")
        self.assertEqual(calls, [("192.0.2.1", 2010)])
        self.assertEqual(args["--remote-interface"]["type"], "string")

    def test_looked_up(self) -> None:
        self.patch(extcap, "_lookup", lambda args: ((LO, ETH), None))
        code, out, _ = run("--extcap-config", "--extcap-interface", "rpcap", "--remote-host", "h")
        self.assertEqual(code, 0)
        self.assertIn("value {arg=6}{value=lo}{display=lo [Up] 127.0.0.1}{default=true}", out.splitlines())

    def test_active_never_looks_up(self) -> None:
        self.patch(extcap, "_lookup", lambda args: self.fail("looked up"))
        self.args("--extcap-interface", "rpcap-active", "--remote-host", "h")

    def test_reload(self) -> None:
        """Wireshark's reload button: the values of the remote interface only."""
        self.patch(extcap, "_lookup", lambda args: ((LO,), None))
        code, out, _ = run(
            "--extcap-config",
            "--extcap-interface",
            "rpcap",
            "--extcap-reload-option",
            "remote-interface",
            "--remote-host",
            "h",
            "--remote-port",
            "2002",
        )
        self.assertEqual(
            (code, out), (0, "value {arg=6}{value=lo}{display=lo [Up] 127.0.0.1}{default=true}\n")
        )

    def test_reload_fails(self) -> None:
        """Why, shown in the emptied selector; exit 0, or Wireshark would read nothing."""
        self.patch(
            extcap, "_lookup", lambda args: (None, "cannot connect to h:2002: the name does not resolve")
        )
        code, out, _ = run(
            "--extcap-config", "--extcap-interface", "rpcap", "--extcap-reload-option", "remote-interface"
        )
        self.assertEqual(code, 0)
        self.assertEqual(
            out, "value {arg=6}{value=}{display=(cannot connect to h:2002: the name does not resolve)}\n"
        )

    def test_reload_without_host(self) -> None:
        code, out, _ = run(
            "--extcap-config", "--extcap-interface", "rpcap", "--extcap-reload-option", "remote-interface"
        )
        self.assertEqual(code, 0)
        self.assertIn("fill in Remote host first", out)

    def test_reload_of_another_option(self) -> None:
        code, out, _ = run(
            "--extcap-config", "--extcap-interface", "rpcap", "--extcap-reload-option", "snaplen"
        )
        self.assertEqual((code, out), (0, ""))


class SentenceTests(SynchronousTestCase):
    def test_braces_and_lines_cannot_break_a_sentence(self) -> None:
        line = extcap.sentence("value", ("arg", 1), ("display", "a{b}c\nd"), ("default", True), ("x", None))
        self.assertEqual(line, "value {arg=1}{display=a(b)c\\nd}{default=true}")

    def test_a_daemons_interfaces_are_escaped(self) -> None:
        """
        Names and descriptions with escape sequences, line breaks and braces
        reach Wireshark as one sentence each, in printable ASCII.
        """
        hostile = (
            InterfaceInfo("eth0\x1b]0;pwned\x07}{arg=9}", "desc\r\nvalue {arg=1}{value=x}", 6),
            InterfaceInfo("e" * 70000, "", 6),
        )
        lines = extcap.interface_values("rpcap", hostile)
        self.assertEqual(len(lines), 2)
        for line in lines:
            line.encode("ascii")
            self.assertFalse(any(c < " " for c in line), line)
            self.assertEqual(line.count("{"), line.count("}"))
        number = lines[0].split("}")[0]
        self.assertEqual(
            lines[0],
            number + "}{value=eth0\\x1b]0;pwned\\x07)(arg=9)}"
            "{display=eth0\\x1b]0;pwned\\x07)(arg=9) (desc\\r\\nvalue (arg=1)(value=x)) [Up]}{default=true}",
        )
        self.assertLess(len(lines[1]), 2000)

    def test_the_name_wireshark_gives_back_is_the_daemons(self) -> None:
        """
        A Windows daemon's names hold braces and backslashes, others may not
        be ASCII: the selector offers them escaped, and the capture opens
        the interface under the daemon's own name.
        """
        found = (
            InterfaceInfo("\\Device\\NPF_{4E273621-5161-46C8}", "Intel", 6),
            InterfaceInfo("eth\u00e90", "", 6),
            InterfaceInfo("lo", "", 6),
        )
        for line, info in zip(extcap.interface_values("rpcap", found), found):
            offered = line.split("{value=")[1].split("}")[0]
            self.assertEqual(extcap.daemon_name_of(offered, found), info.name)
        self.assertEqual(extcap.daemon_name_of("typed-by-hand", found), "typed-by-hand")
        self.assertIsNone(extcap.daemon_name_of(None, found))


class FilterTests(SynchronousTestCase):
    """Wireshark reads the output only after exit 0: nothing means valid, a line is why not."""

    def test_valid(self) -> None:
        self.assertEqual(
            run("--extcap-interface", "rpcap", "--extcap-capture-filter", "udp port 53"), (0, "", "")
        )

    def test_empty(self) -> None:
        self.assertEqual(run("--extcap-interface", "rpcap", "--extcap-capture-filter", ""), (0, "", ""))

    def test_invalid(self) -> None:
        code, out, err = run("--extcap-capture-filter", "udp prot 53", "--extcap-interface", "rpcap")
        self.assertEqual((code, err), (0, ""))
        [line] = out.splitlines()
        self.assertIn("cannot compile filter 'udp prot 53'", line)
        self.assertIn("syntax error", line)

    def test_combined(self) -> None:
        self.assertEqual(extcap.combined_filter(None, None), "")
        self.assertEqual(extcap.combined_filter("icmp", ""), "icmp")
        self.assertEqual(extcap.combined_filter(" ", "udp"), "udp")
        self.assertEqual(
            extcap.combined_filter("icmp or udp", "not port 22"), "(icmp or udp) and (not port 22)"
        )


class CommandLineTests(SynchronousTestCase):
    def test_as_wireshark_calls_a_capture(self) -> None:
        args = extcap.parse_args(
            [
                "--capture",
                "--extcap-interface",
                "rpcap",
                "--extcap-capture-filter",
                "icmp",
                "--fifo",
                "/tmp/wireshark_extcap_rpcap_X",
                "--extcap-control-out",
                "/tmp/c1",
                "--extcap-control-in",
                "/tmp/c2",
                "--remote-host",
                "192.0.2.7",
                "--remote-port",
                "2002",
                "--remote-interface",
                "eth0",
                "--snaplen",
                "0",
                "--udp",
            ]
        )
        self.assertEqual(
            (args.capture, args.fifo, args.remote_host, args.remote_port, args.remote_interface),
            (True, "/tmp/wireshark_extcap_rpcap_X", "192.0.2.7", 2002, "eth0"),
        )
        self.assertEqual((args.extcap_control_in, args.extcap_control_out), ("/tmp/c2", "/tmp/c1"))
        self.assertEqual(args.snaplen, 262144)  # 0: whole packets
        self.assertTrue(args.udp)
        self.assertFalse(args.tls)

    def test_defaults(self) -> None:
        args = extcap.parse_args(["--capture", "--extcap-interface", "rpcap-active", "--fifo", "f"])
        self.assertEqual((args.listen_port, args.remote_port, args.snaplen), (2003, 2002, 262144))

    def test_new_extcap_options_pass(self) -> None:
        """A later Wireshark may pass an --extcap-* option this version does not know."""
        args = extcap.parse_args(["--extcap-interfaces", "--extcap-something-new", "--extcap-version=9.9"])
        self.assertTrue(args.extcap_interfaces)

    def test_unknown_option(self) -> None:
        code, _, err = run("--extcap-interfaces", "--remote-hots", "x")
        self.assertEqual(code, 2)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("--remote-hots", err)

    def test_bad_numbers(self) -> None:
        for argv in (
            ["--remote-port", "0"],
            ["--listen-port", "70000"],
            ["--snaplen", "262145"],
            ["--snaplen", "-1"],
        ):
            code, _, err = run("--extcap-interfaces", *argv)
            self.assertEqual(code, 2, argv)
            self.assertTrue(err.startswith("rpcap-extcap: "), err)
            self.assertEqual(len(err.splitlines()), 1)

    def test_capture_needs_a_fifo(self) -> None:
        code, _, err = run("--capture", "--extcap-interface", "rpcap", "--remote-host", "h")
        self.assertEqual((code, err), (2, "rpcap-extcap: --capture needs --fifo PATH (Wireshark gives it)\n"))


class ControlProtocolTests(SynchronousTestCase):
    def test_frame(self) -> None:
        self.assertEqual(extcap.control_frame(0, 2, b"hi\n"), b"T\x00\x00\x05\x00\x02hi\n")
        self.assertEqual(extcap.control_frame(3, 0), b"T\x00\x00\x02\x03\x00")

    def test_parse(self) -> None:
        stream = extcap.control_frame(0, 0) + extcap.control_frame(1, 1, b"value") + b"T\x00\x00\x09\x02"
        messages, rest, broken = extcap.parse_control(stream)
        self.assertEqual(messages, [(0, 0, b""), (1, 1, b"value")])
        self.assertEqual((rest, broken), (b"T\x00\x00\x09\x02", False))
        messages, rest, broken = extcap.parse_control(rest + b"\x01payload")
        self.assertEqual((messages, rest, broken), ([(2, 1, b"payload")], b"", False))

    def test_broken(self) -> None:
        self.assertEqual(extcap.parse_control(b"X\x00\x00\x02\x00\x00"), ([], b"", True))
        self.assertEqual(extcap.parse_control(b"T\x00\x00\x01\x00"), ([], b"", True))

    def test_log_lines_to_file(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "log")
        control = extcap.Control(None, None, None, lambda: None, log_file=path)
        control.log("capturing lo")
        control.status("not to the file")
        control.close()
        with open(path) as f:
            [line] = f.read().splitlines()
        self.assertRegex(line, r"^\d\d:\d\d:\d\d capturing lo$")

    def test_reader_gone(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, write)
        self.assertFalse(extcap.reader_gone(write))
        os.close(read)
        self.assertTrue(extcap.reader_gone(write))


TSHARK_40_FOLDERS = """\
Temp:                	/tmp
Personal configuration:	/root/.config/wireshark
Global configuration:	/usr/share/wireshark
Program:             	/usr/bin
Personal Plugins:    	/root/.local/lib/wireshark/plugins/4.0
Extcap path:         	/usr/lib/x86_64-linux-gnu/wireshark/extcap
MaxMind database path:	/usr/share/GeoIP
MaxMind database path:	/var/lib/GeoIP
"""

TSHARK_44_FOLDERS = """\
Temp:                     /tmp
Personal configuration:   /home/ann/.config/wireshark
Personal Extcap path:     /home/ann/.local/lib/wireshark/extcap
Global Extcap path:       /usr/lib/x86_64-linux-gnu/wireshark/extcap
"""


class InstallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rpcap-extcap-unit-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.script = os.path.join(self.directory, "bin", "rpcap-extcap")
        os.makedirs(os.path.dirname(self.script))
        with open(self.script, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.script, 0o755)
        self.patch(extcap, "script_path", lambda: self.script)

    def folders(self, text: str) -> None:
        self.patch(extcap, "wireshark_folders", lambda tshark="tshark": extcap.parse_folders(text))

    def test_parse_folders(self) -> None:
        folders = extcap.parse_folders(TSHARK_40_FOLDERS)
        self.assertEqual(folders["Extcap path"], "/usr/lib/x86_64-linux-gnu/wireshark/extcap")
        self.assertEqual(folders["MaxMind database path"], "/usr/share/GeoIP")
        self.assertEqual(
            extcap.choose_extcap_folder(folders),
            ("/usr/lib/x86_64-linux-gnu/wireshark/extcap", "Extcap path"),
        )
        self.assertEqual(
            extcap.choose_extcap_folder(extcap.parse_folders(TSHARK_44_FOLDERS)),
            ("/home/ann/.local/lib/wireshark/extcap", "Personal Extcap path"),
        )
        self.assertEqual(
            extcap.choose_extcap_folder({"Global Extcap path": "/g"}), ("/g", "Global Extcap path")
        )
        with self.assertRaises(extcap.ExtcapError):
            extcap.choose_extcap_folder({"Temp": "/tmp"})

    def test_install_into_the_personal_folder_and_uninstall(self) -> None:
        personal = os.path.join(self.directory, "home", ".local", "lib", "wireshark", "extcap")
        self.folders(f"Personal Extcap path:\t{personal}\nGlobal Extcap path:\t/nowhere/extcap\n")
        link = os.path.join(personal, "rpcap-extcap")
        code, out, err = run("--install")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(os.readlink(link), self.script)
        self.assertIn(f"linked {link} -> {self.script} (Personal Extcap path)", out)
        # Again: the link is replaced.
        self.assertEqual(run("--install")[0], 0)
        self.assertEqual(os.readlink(link), self.script)
        code, out, err = run("--uninstall")
        self.assertEqual((code, err), (0, ""))
        self.assertFalse(os.path.lexists(link))
        self.assertIn(f"removed {link}", out)
        code, out, _ = run("--uninstall")
        self.assertEqual(code, 0)
        self.assertIn("nothing to remove", out)

    def test_install_into_the_only_folder(self) -> None:
        """Wireshark 4.0 names one folder, which is not created: it comes with Wireshark."""
        folder = os.path.join(self.directory, "extcap")
        os.mkdir(folder)
        self.folders(TSHARK_40_FOLDERS.replace("/usr/lib/x86_64-linux-gnu/wireshark/extcap", folder))
        self.assertEqual(run("--install")[0], 0)
        self.assertEqual(os.readlink(os.path.join(folder, "rpcap-extcap")), self.script)
        self.assertEqual(run("--uninstall")[0], 0)
        self.assertEqual(os.listdir(folder), [])

    def test_missing_global_folder(self) -> None:
        self.folders(f"Extcap path:\t{self.directory}/none\n")
        code, _, err = run("--install")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.splitlines()), 1)

    def test_extcap_dir(self) -> None:
        self.patch(extcap, "wireshark_folders", lambda tshark="tshark": self.fail("asked tshark"))
        folder = os.path.join(self.directory, "mine")
        self.assertEqual(run("--install", "--extcap-dir", folder)[0], 0)
        self.assertTrue(os.path.islink(os.path.join(folder, "rpcap-extcap")))
        self.assertEqual(run("--uninstall", "--extcap-dir", folder)[0], 0)
        self.assertEqual(os.listdir(folder), [])

    def test_never_clobbers_a_file(self) -> None:
        folder = os.path.join(self.directory, "extcap")
        os.mkdir(folder)
        with open(os.path.join(folder, "rpcap-extcap"), "w") as f:
            f.write("someone else's\n")
        for action in ("--install", "--uninstall"):
            code, _, err = run(action, "--extcap-dir", folder)
            self.assertEqual(code, 1, action)
            self.assertIn("rpcap-extcap", err)
        with open(os.path.join(folder, "rpcap-extcap")) as f:
            self.assertEqual(f.read(), "someone else's\n")

    def test_without_tshark(self) -> None:
        self.patch(extcap.shutil, "which", lambda name: None)
        code, _, err = run("--install")
        self.assertEqual(code, 1)
        self.assertIn("tshark is not installed", err)


class RefusalTests(SynchronousTestCase):
    """A daemon's refusals, said in one line that tells what to do, in the words of the dialog."""

    def refused(self, code: int, text: str = "nope", *argv: str, peer: Any = None) -> str:
        from ..protocol.wire import RemoteError

        args = extcap.parse_args(["--capture", "--remote-host", "h", *argv])
        return extcap.daemon_of(args, peer).refused(RemoteError(code, text))

    def test_login(self) -> None:
        self.assertEqual(
            self.refused(18, "bad password", "--remote-username", "alice"),
            "the daemon at h:2002 refused the login as alice: bad password (error 18);"
            " check the username and password",
        )

    def test_no_username(self) -> None:
        self.assertEqual(
            self.refused(18, "NULL authentication not permitted"),
            "the daemon at h:2002 wants a password: NULL authentication not permitted (error 18);"
            " give a Username (--remote-username) and its Password (--remote-password)",
        )

    def test_tls(self) -> None:
        self.assertIn("; tick TLS (--tls)", self.refused(19))
        # rpcap-active has no TLS to tick: the daemon that dialled in chose.
        self.assertEqual(
            self.refused(19, "TLS required", peer="192.0.2.5"),
            "the daemon at 192.0.2.5 refused: TLS required (error 19)",
        )

    def test_other(self) -> None:
        self.assertEqual(
            self.refused(6, "no such device"), "the daemon at h:2002 refused: no such device (error 6)"
        )


class UnreachedTests(SynchronousTestCase):
    """A daemon not reached, said as rpcap-dump says it, with what to do in the words of the dialog."""

    def daemon(self, *argv: str) -> Any:
        return extcap.daemon_of(extcap.parse_args(["--capture", "--remote-host", "h", *argv]))

    def test_silent(self) -> None:
        self.assertEqual(
            self.daemon().silent(10),
            "h:2002 accepted the connection but did not answer the login within 10 s:"
            " is it an RPCAP daemon? (tick TLS (--tls) if it listens with TLS)",
        )
        self.assertTrue(self.daemon("--tls").silent(10).endswith("is it an RPCAP daemon?"))

    def test_hung_up(self) -> None:
        from twisted.internet.error import ConnectionDone

        self.assertEqual(
            self.daemon().gone(ConnectionDone(), None),
            "h:2002 closed the connection without answering: if the daemon listens with TLS, tick TLS (--tls)",
        )

    def test_untrusted_certificate(self) -> None:
        from OpenSSL.SSL import Error as TLSError

        error = TLSError([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            self.daemon("--tls").gone(error, None),
            "the certificate of the daemon at h:2002 is not trusted (certificate verify failed):"
            " give the CA that signed it as CA certificate (--ca)",
        )

    def test_timeout(self) -> None:
        from twisted.internet.defer import TimeoutError

        self.assertEqual(
            self.daemon().unreachable(TimeoutError(), 5), "cannot connect to h:2002: no answer within 5 s"
        )
