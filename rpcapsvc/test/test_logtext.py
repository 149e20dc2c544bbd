"""
Tests for L{rpcapsvc.logtext}: peers and peer-supplied text as log lines show them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.logtext import PEER_TEXT_LIMIT, escaped, host_port


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
    """As tcpdump prints what it did not write: printable ASCII, the rest escaped, cut to a sane length."""

    def test_printable_ascii_unchanged(self) -> None:
        self.assertEqual(
            escaped("no such interface: eth9 {x} \\Device\\NPF_"),
            "no such interface: eth9 {x} \\Device\\NPF_",
        )

    def test_line_breaks_and_controls(self) -> None:
        self.assertEqual(escaped("a\nb\rc\td\x1b[0m\x00"), "a\\nb\\rc\\td\\x1b[0m\\x00")

    def test_not_ascii(self) -> None:
        """Everything past ASCII is its UTF-8 bytes, escaped: C1 controls, line separators, bidi overrides."""
        self.assertEqual(escaped("a\u2028b\x85c"), "a\\xe2\\x80\\xa8b\\xc2\\x85c")
        self.assertEqual(escaped("\u202eexe.txt"), "\\xe2\\x80\\xaeexe.txt")
        self.assertEqual(escaped("état"), "\\xc3\\xa9tat")

    def test_not_utf8(self) -> None:
        """Bytes that were not UTF-8 (surrogate escapes) show as the bytes they were."""
        self.assertEqual(escaped(b"eth\xff".decode("utf-8", "surrogateescape")), "eth\\xff")
        self.assertEqual(escaped(b"eth\xff\x1b"), "eth\\xff\\x1b")

    def test_cut(self) -> None:
        """Past the limit, the text is cut and says how long it was."""
        self.assertEqual(escaped("x" * 600), "x" * PEER_TEXT_LIMIT + "...(600 bytes)")
        self.assertEqual(escaped("\x1b" * 10, limit=2), "\\x1b\\x1b...(10 bytes)")
