"""
End-to-end fair admission (issue 9): ``twistd -n rpcapd`` flooded with
connections that never log in, and filled with logged-in sessions that do
nothing, still lets a real client in within a second, as libpcap's rpcapd
(a process per session) does; and an idle session is closed with an error.
Raw control connections on loopback; no capture, so no privilege needed.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from ._e2e import FINDALLDEVS, NULL_AUTH, Daemon, RawRpcapClient, free_port, rpcap_message

ERROR, FINDALLDEVS_REPLY, AUTH_REPLY = 1, 0x82, 0x88
INITTIMEOUT, RUNTIMETIMEOUT = 2, 14
PASSWORD_AUTH = rpcap_message(8, struct.pack("!HHHH", 1, 0, 5, 6) + b"alice" + b"secret")
HALF_A_HEADER = NULL_AUTH[:3]


def skip_reason() -> Optional[str]:
    try:
        import pcapy  # noqa: F401  (the daemon lists interfaces with it)
    except ImportError:
        return "pcapy is not installed"
    return None


class AdmissionDaemonMixin:
    daemon: Daemon
    port: int

    def start(self, *args: str) -> None:
        self.port = free_port()
        self.daemon = Daemon("--listen", f"tcp:{self.port}:interface=127.0.0.1", *args, wait_port=self.port)
        self.addCleanup(self.daemon.stop)  # type: ignore[attr-defined]
        self.addCleanup(self.assert_clean_log)  # type: ignore[attr-defined]

    def assert_clean_log(self) -> None:
        log = self.daemon.log()
        for sign in ("Traceback", "Unhandled error", "Unhandled Error"):
            assert sign not in log, f"{sign!r} in the daemon's log:\n{log[-3000:]}"

    def raw(self) -> RawRpcapClient:
        client = RawRpcapClient(self.port)
        self.addCleanup(client.close)  # type: ignore[attr-defined]
        return client

    def stallers(self, n: int, sources: list[str]) -> list[socket.socket]:
        """C{n} connections, from C{sources} in turn, that send three bytes of a header and stall."""
        socks = []
        for i in range(n):
            s = socket.create_connection(
                ("127.0.0.1", self.port), timeout=5, source_address=(sources[i % len(sources)], 0)
            )
            self.addCleanup(s.close)  # type: ignore[attr-defined]
            s.sendall(HALF_A_HEADER)
            socks.append(s)
        return socks

    def log_in_and_list(self, login: bytes) -> tuple[list[int], float]:
        """A client connects, logs in, lists interfaces: the message types it got, and how long it took."""
        started = time.monotonic()
        client = RawRpcapClient(self.port, timeout=5)
        try:
            client.send(login + FINDALLDEVS)
            types = []
            try:
                for _ in range(2):
                    mtype, value, payload = client.read_message()
                    types.append(mtype)
                    if mtype == ERROR:
                        types.append(value)
                        break
            except (EOFError, OSError):
                pass
            return types, time.monotonic() - started
        finally:
            client.close()


class StallersTests(AdmissionDaemonMixin, SynchronousTestCase):
    """Connections that send three bytes of a header and stall do not keep real clients out."""

    skip = skip_reason()

    def check_real_clients_get_in(self, sources: list[str]) -> None:
        self.start("--null-auth", "--auth", "memory:alice:secret")
        stallers = self.stallers(200, sources)
        for login in (NULL_AUTH, PASSWORD_AUTH):
            types, took = self.log_in_and_list(login)
            self.assertEqual(types, [AUTH_REPLY, FINDALLDEVS_REPLY], f"took {took:.3f} s")
            self.assertLess(took, 1.0)
        # The oldest stallers were told why, and closed.
        first = stallers[0]
        first.settimeout(5)
        reply = first.recv(65536)
        self.assertEqual(reply[1], ERROR)
        self.assertEqual(struct.unpack_from("!H", reply, 2)[0], INITTIMEOUT)
        self.assertIn(b"too many connections are waiting to log in", reply)
        self.assertEqual(first.recv(65536), b"")
        self.assertTrue(self.daemon.alive())

    def test_two_hundred_stallers_from_the_clients_own_address(self) -> None:
        self.check_real_clients_get_in(["127.0.0.1"])

    def test_two_hundred_stallers_from_fifty_addresses(self) -> None:
        self.check_real_clients_get_in([f"127.0.0.{n}" for n in range(2, 52)])


class IdleSessionsTests(AdmissionDaemonMixin, SynchronousTestCase):
    skip = skip_reason()

    def test_sixty_four_idle_sessions_do_not_keep_a_client_out(self) -> None:
        """
        64 logged-in sessions (the default --max-sessions) that do nothing:
        a new login closes the one idle longest (error 14) and gets in.
        """
        self.start("--null-auth")
        idle = []
        for _ in range(64):
            client = self.raw()
            self.assertEqual(client.request(NULL_AUTH)[0], AUTH_REPLY)
            idle.append(client)
        time.sleep(1.2)  # idle for more than --reclaim-idle-after (1 s)
        types, took = self.log_in_and_list(NULL_AUTH)
        self.assertEqual(types, [AUTH_REPLY, FINDALLDEVS_REPLY], f"took {took:.3f} s")
        self.assertLess(took, 1.0)
        messages, closed = idle[0].read_until_closed(5)
        self.assertTrue(closed)
        self.assertEqual([(t, v) for t, v, _ in messages], [(ERROR, RUNTIMETIMEOUT)])
        self.assertIn(b"closed to make room for another client", messages[0][2])
        # The others are untouched.
        self.assertEqual(idle[-1].request(FINDALLDEVS)[0], FINDALLDEVS_REPLY)

    def test_the_idle_limit_closes_an_idle_session_with_an_error(self) -> None:
        self.start("--null-auth", "--idle-timeout", "1")
        idle, busy = self.raw(), self.raw()
        for client in (idle, busy):
            self.assertEqual(client.request(NULL_AUTH)[0], AUTH_REPLY)
        started = time.monotonic()
        # The busy one sends a request every 0.4 s: any request resets its limit.
        while time.monotonic() - started < 1.6:
            self.assertEqual(busy.request(FINDALLDEVS)[0], FINDALLDEVS_REPLY)
            time.sleep(0.4)
        messages, closed = idle.read_until_closed(3)
        took = time.monotonic() - started
        self.assertTrue(closed)
        self.assertEqual([(t, v) for t, v, _ in messages], [(ERROR, RUNTIMETIMEOUT)])
        self.assertIn(b"with no capture: session closed", messages[0][2])
        self.assertLess(took, 3.0)
        self.assertEqual(busy.request(FINDALLDEVS)[0], FINDALLDEVS_REPLY)
        self.daemon.wait_for_log("closed: idle timeout")
        self.assertRegex(self.daemon.log(), r"session=\d+ peer=127\.0\.0\.1:\d+ closed: idle timeout")
