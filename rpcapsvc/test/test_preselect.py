"""
Tests for L{RpcapServerFactory.preselected_interface}: the interface a
collector configured with C{ifname=} and/or C{ifaddr=ADDR[/PREFIX]} is
limited to, chosen as ExtraHop's rpcapd chooses it (fileconf.c,
C{fileconf_select_ifname}): the first interface with an address in the
network and, with C{ifname=} too, that name.  When none matches, the fork
allows any interface; this daemon allows none, and says so.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.config import ActiveTarget, parse_config
from rpcapsvc.protocol.wire import (
    AuthReply,
    AuthRequest,
    ErrorCode,
    ErrorReply,
    FindAllInterfacesReply,
    FindAllInterfacesRequest,
    InterfaceAddress,
    InterfaceInfo,
    OpenReply,
    OpenRequest,
)
from rpcapsvc.server.control import RpcapServerFactory
from rpcapsvc.server.session import SessionPolicy
from rpcapsvc.testing import FakeCaptureSystem, FakeDataChannels

from ._fixtures import Client


def interface(name: str, *addresses: str, scope_id: int = 0) -> InterfaceInfo:
    return InterfaceInfo(
        name, "", 0, tuple(InterfaceAddress(ipaddress.ip_address(a), scope_id=scope_id) for a in addresses)
    )


LO = interface("lo", "127.0.0.1", "::1")
ETH0 = interface("eth0", "192.0.2.2", "fd00::2")
ETH1 = interface("eth1", "192.0.2.130", "198.51.100.7")
V6ONLY = interface("v6only", "2001:db8::1")
LINK_LOCAL = interface("eth2", "fe80::fc:ff:fe00:1", scope_id=4)

NO_MATCH = (
    "No interface{named} carries {what}; nothing can be opened until one does "
    "(ExtraHop's rpcapd would allow any interface)"
)


class CountingSystem(FakeCaptureSystem):
    """A fake capture system that counts how often its interfaces were listed."""

    listed = 0

    def list_interfaces(self) -> list[InterfaceInfo]:
        self.listed += 1
        return super().list_interfaces()


class PreselectedInterfaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.system = CountingSystem([V6ONLY, ETH0, ETH1, LO, LINK_LOCAL])

    def factory(self, ifname: Optional[str] = None, ifaddr: Optional[str] = None) -> RpcapServerFactory:
        return RpcapServerFactory(
            MemoryReactorClock(),
            self.system,
            SessionPolicy(null_auth=True),
            FakeDataChannels(),  # type: ignore[arg-type]
            active=True,
            interface=ifname,
            interface_address=ifaddr,
        )

    def chosen(self, ifname: Optional[str] = None, ifaddr: Optional[str] = None) -> Optional[str]:
        return self.successResultOf(self.factory(ifname, ifaddr).preselected_interface())

    def test_neither(self) -> None:
        """No ifname, no ifaddr: no preselection of the collector's own (the policy decides)."""
        self.assertIsNone(self.chosen())
        self.assertEqual(self.system.listed, 0)

    def test_name_only(self) -> None:
        """A name is the preselection as it is, whether or not an interface has it now."""
        self.assertEqual(self.chosen("eth1"), "eth1")
        self.assertEqual(self.chosen("eth9"), "eth9")
        self.assertEqual(self.system.listed, 0)

    def test_plain_address(self) -> None:
        """A plain address (/32, /128): the interface carrying exactly that address."""
        self.assertEqual(self.chosen(ifaddr="192.0.2.130"), "eth1")
        self.assertEqual(self.chosen(ifaddr="192.0.2.130/32"), "eth1")
        self.assertEqual(self.chosen(ifaddr="::1"), "lo")
        self.assertEqual(self.chosen(ifaddr="fd00::2/128"), "eth0")

    def test_network(self) -> None:
        """A network: the first interface (in the capture system's order) with an address in it."""
        self.assertEqual(self.chosen(ifaddr="192.0.2.0/24"), "eth0")
        self.assertEqual(self.chosen(ifaddr="192.0.2.128/25"), "eth1")
        self.assertEqual(self.chosen(ifaddr="198.51.100.0/24"), "eth1")
        self.assertEqual(self.chosen(ifaddr="fd00::/64"), "eth0")

    def test_host_bits_ignored(self) -> None:
        """ADDR/PREFIX with host bits set is its network, as the fork masks both sides."""
        self.assertEqual(self.chosen(ifaddr="192.0.2.200/24"), "eth0")

    def test_families_kept_apart(self) -> None:
        """/0 is any address of its family: an interface with only IPv6 addresses is no IPv4 match."""
        self.assertEqual(self.chosen(ifaddr="0.0.0.0/0"), "eth0")
        self.assertEqual(self.chosen(ifaddr="::/0"), "v6only")

    def test_link_local_and_zone(self) -> None:
        """A link-local address matches whatever its scope; a zone in the setting plays no part."""
        self.assertEqual(self.chosen(ifaddr="fe80::/64"), "eth2")
        self.assertEqual(self.chosen(ifaddr="fe80::fc:ff:fe00:1%eth2"), "eth2")

    def test_name_and_address_both_match(self) -> None:
        """With both, one interface must have that name and such an address, as in the fork."""
        self.assertEqual(self.chosen("eth1", "192.0.2.0/24"), "eth1")  # eth0, listed first, is not eth1
        self.assertEqual(self.chosen("eth0", "192.0.2.2"), "eth0")
        self.assertEqual(self.chosen("lo", "::1"), "lo")

    def test_name_and_address_on_different_interfaces(self) -> None:
        """The name exists and the address exists, but not on one interface: no match."""
        with capturedLogs() as events:
            chosen = self.chosen("lo", "192.0.2.0/24")
        self.assertEqual(chosen, "(no interface named lo with an address in 192.0.2.0/24)")
        self.assertNotIn(chosen, {i.name for i in self.system.interfaces})
        self.assertEqual(
            [formatEvent(e) for e in events],
            [NO_MATCH.format(named=" named lo", what="an address in 192.0.2.0/24")],
        )

    def test_no_interface_carries_address(self) -> None:
        """No match: a name no interface has (so nothing opens), and one log line saying why."""
        with capturedLogs() as events:
            chosen = self.chosen(ifaddr="203.0.113.9")
        self.assertEqual(chosen, "(no interface with address 203.0.113.9)")
        self.assertEqual(
            [formatEvent(e) for e in events],
            [NO_MATCH.format(named="", what="203.0.113.9")],
        )

    def test_no_interface_in_network(self) -> None:
        with capturedLogs() as events:
            chosen = self.chosen(ifaddr="10.0.0.0/8")
        self.assertEqual(chosen, "(no interface with an address in 10.0.0.0/8)")
        self.assertEqual(
            [formatEvent(e) for e in events],
            [NO_MATCH.format(named="", what="an address in 10.0.0.0/8")],
        )

    def test_unreadable_address(self) -> None:
        """A setting that is no address (given to the factory directly) opens nothing; no exception."""
        with capturedLogs() as events:
            chosen = self.chosen(ifaddr="eth0")
        self.assertEqual(chosen, "(no interface with address eth0)")
        self.assertIn("not an address or network", formatEvent(events[0]))

    def test_looked_up_each_time(self) -> None:
        """Addresses move: each session looks again (the fork looks once, when it reads its file)."""
        factory = self.factory(ifaddr="198.51.100.0/24")
        self.assertEqual(self.successResultOf(factory.preselected_interface()), "eth1")
        self.system.interfaces = [LO, interface("eth1"), interface("eth3", "198.51.100.8")]
        self.assertEqual(self.successResultOf(factory.preselected_interface()), "eth3")
        self.system.interfaces = [LO]
        with capturedLogs():
            self.assertEqual(
                self.successResultOf(factory.preselected_interface()),
                "(no interface with an address in 198.51.100.0/24)",
            )

    def test_from_config(self) -> None:
        """The ifaddr an rpcapd.ini line gives (a network's text) is what the factory takes."""
        [target] = parse_config("ActiveClient = c, 2003, ifname=eth1, ifaddr=192.0.2.140/25").active
        self.assertEqual(target, ActiveTarget("c:2003", "eth1", "192.0.2.128/25"))
        self.assertEqual(self.chosen(target.ifname, target.ifaddr), "eth1")


class SessionTests(SynchronousTestCase):
    """What a collector's client sees of the choice."""

    def setUp(self) -> None:
        self.system = FakeCaptureSystem([ETH0, ETH1, LO])
        self.addCleanup(self.close_handles)

    def close_handles(self) -> None:
        for handle in self.system.handles:
            handle.close()

    def client(self, ifname: Optional[str] = None, ifaddr: Optional[str] = None) -> Client:
        factory = RpcapServerFactory(
            MemoryReactorClock(),
            self.system,
            SessionPolicy(null_auth=True),
            FakeDataChannels(),  # type: ignore[arg-type]
            active=True,
            interface=ifname,
            interface_address=ifaddr,
        )
        client = Client(factory, "198.51.100.1")
        self.assertIsInstance(client.request(AuthRequest(0)), AuthReply)
        return client

    def assertRefused(self, client: Client, name: str) -> None:
        reply = client.request(OpenRequest(name))
        assert isinstance(reply, ErrorReply), reply
        self.assertEqual(reply.code, ErrorCode.OPEN)

    def test_chosen_interface_listed_first_and_only_one_opened(self) -> None:
        client = self.client(ifaddr="192.0.2.128/25")
        reply = client.request(FindAllInterfacesRequest())
        assert isinstance(reply, FindAllInterfacesReply)
        self.assertEqual(
            [(i.name, i.description) for i in reply.interfaces],
            [("eth1", ";preselected"), ("eth0", ""), ("lo", "")],
        )
        self.assertRefused(client, "eth0")
        self.assertIsInstance(client.request(OpenRequest("eth1")), OpenReply)

    def test_nothing_opens_without_a_match(self) -> None:
        with capturedLogs():
            client = self.client("eth0", "198.51.100.0/24")
        for name in ("eth0", "eth1", "lo"):
            self.assertRefused(client, name)
        self.assertEqual(self.system.handles, [])
