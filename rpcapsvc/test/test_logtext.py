"""
Tests for L{rpcapsvc.logtext}: peers and peer-supplied text as log lines show them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.logtext import escaped, host_port


class HostPortTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(host_port("192.0.2.7", 2002), "192.0.2.7:2002")

    def test_ipv6_in_brackets(self) -> None:
        self.assertEqual(host_port("2001:db8::7", 2002), "[2001:db8::7]:2002")

    def test_no_port(self) -> None:
        self.assertEqual(host_port("192.0.2.7"), "192.0.2.7")
        self.assertEqual(host_port("::1", 0), "[::1]")

    def test_no_host(self) -> None:
        """A UNIX socket's peer has no address."""
        self.assertEqual(host_port("", 0), "local")


class EscapedTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        self.assertEqual(escaped("no such interface: eth9 (état)"), "no such interface: eth9 (état)")

    def test_line_breaks_and_controls(self) -> None:
        self.assertEqual(escaped("a\nb\rc\td\x1b[0m\x00"), "a\\nb\\rc\\td\\x1b[0m\\x00")
        self.assertEqual(escaped("a\u2028b\x85c"), "a\\u2028b\\x85c")

    def test_not_utf8(self) -> None:
        """Bytes that were not UTF-8 (surrogate escapes) show as backslash escapes, as before."""
        self.assertEqual(escaped(b"eth\xff".decode("utf-8", "surrogateescape")), "eth\\udcff")
