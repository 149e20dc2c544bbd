"""
L{PcapyHandle}'s filters, without a capture: its pcapy reader is a fake that
hands out packets the test gives, and its descriptor is a UDP socket's (the
kernel attaches classic BPF filters to any socket), so that the kernel side
is real.  What it filters in userland after a new filter is placed: the
packets taken in under the old one, unless only the daemon's own prefix
changed; and when the kernel is short of memory for the swap, those taken in
while no filter was attached.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from rpcapsvc.capture import system
from rpcapsvc.capture.compiler import compile_filter
from rpcapsvc.capture.system import REJECT_ALL, PcapyHandle, PrefixedProgram
from rpcapsvc.protocol import bpf
from rpcapsvc.protocol.datachannel import BATCH_RECORD, PacketBatch
from rpcapsvc.protocol.wire import BpfInstruction, BpfProgram
from rpcapsvc.server.forwarded import _prefix

from ._fixtures import ICMP_FILTER, ICMP_PACKET, UDP_FILTER, UDP_PACKET


class FakeReader:
    """The part of a pcapy reader that PcapyHandle uses."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.waiting: list[tuple[int, int, bytes]] = []
        self.closed = False

    def getfd(self) -> int:
        return self.fd

    def datalink(self) -> int:
        return 1

    def next_batch(self, n: int) -> tuple[bytes, bytes]:
        taken, self.waiting = self.waiting[:n], self.waiting[n:]
        batch = PacketBatch.from_packets(taken)
        return batch.data, batch.records

    def stats(self) -> tuple[int, int, int]:
        return (0, 0, 0)

    def close(self) -> None:
        self.closed = True


def prefix_leaving_out(expression: str) -> tuple[BpfInstruction, ...]:
    """A prefix that rejects what C{expression} matches, as the daemon makes them."""
    return _prefix(compile_filter(expression, 1))


def stamp(offset: float = 0.0) -> tuple[int, int]:
    t = time.time() + offset
    return int(t), int((t % 1) * 1_000_000)


def numbers(batch: PacketBatch) -> list[bytes]:
    return [batch.data[off : off + length] for _, _, off, length in BATCH_RECORD.iter_unpack(batch.records)]


class HandleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.reader = FakeReader(self.sock.fileno())
        self.handle = PcapyHandle(self.reader, "fake0")

    def taken_in_before(self, *packets: bytes) -> None:
        sec, usec = stamp(-1)
        self.reader.waiting.extend((sec, usec, p) for p in packets)

    def test_start_empty_attaches_a_filter_that_takes_nothing(self) -> None:
        self.taken_in_before(UDP_PACKET)
        self.handle.start_empty()
        self.assertEqual(self.reader.waiting, [])  # drained
        self.assertEqual(self.handle._kernel_code, system.kernel_code(REJECT_ALL))

    def test_a_new_client_filter_applies_to_what_was_taken_in_before(self) -> None:
        self.handle.start_empty()
        self.handle.set_filter(UDP_FILTER)
        self.taken_in_before(UDP_PACKET, ICMP_PACKET)
        self.handle.set_filter(ICMP_FILTER)
        self.assertEqual(numbers(self.handle.read_batch(10)), [ICMP_PACKET])

    def test_a_new_prefix_alone_does_not_filter_again(self) -> None:
        udp_out, icmp_out = prefix_leaving_out("udp"), prefix_leaving_out("icmp")
        body = bpf.ACCEPT_ALL.instructions
        self.handle.start_empty()
        self.handle.set_filter(PrefixedProgram(udp_out + body, udp_out))
        self.taken_in_before(UDP_PACKET, ICMP_PACKET)
        # Another prefix, the same body: nothing taken in is filtered again.
        self.handle.set_filter(PrefixedProgram(icmp_out + body, icmp_out))
        self.assertEqual(numbers(self.handle.read_batch(10)), [UDP_PACKET, ICMP_PACKET])
        # Another body: filtered again.
        self.taken_in_before(UDP_PACKET, ICMP_PACKET)
        self.handle.set_filter(PrefixedProgram(icmp_out + UDP_FILTER.instructions, icmp_out))
        self.assertEqual(numbers(self.handle.read_batch(10)), [UDP_PACKET])

    def test_short_of_memory_the_old_filter_comes_off_first(self) -> None:
        self.handle.start_empty()
        self.handle.set_filter(UDP_FILTER)
        calls: list[int] = []
        real = system.attach_kernel_code

        def attach(fd: int, code: bytes) -> None:
            calls.append(len(code) // 8)
            if len(calls) == 1:
                raise OSError(errno.ENOMEM, "Cannot allocate memory")
            real(fd, code)

        self.patch(system, "attach_kernel_code", attach)
        self.patch(PcapyHandle, "_swap_refused_at", 1 << 30)
        self.taken_in_before(UDP_PACKET)
        self.handle.set_filter(ICMP_FILTER)
        self.assertEqual(len(calls), 2)
        self.assertLessEqual(
            PcapyHandle._swap_refused_at, len(UDP_FILTER.instructions) + len(ICMP_FILTER.instructions)
        )
        self.assertEqual(numbers(self.handle.read_batch(10)), [])
        # Known now: the next swap that size detaches at once.
        self.handle.set_filter(UDP_FILTER)
        self.assertEqual(len(calls), 3)

    def test_packets_taken_in_with_no_filter_attached_are_filtered_with_the_new_one(self) -> None:
        udp_out, icmp_out = prefix_leaving_out("udp"), prefix_leaving_out("icmp")
        body = bpf.ACCEPT_ALL.instructions
        self.handle.start_empty()
        self.handle.set_filter(PrefixedProgram(udp_out + body, udp_out))
        real = system.detach_kernel_filter

        def detach(fd: int) -> None:
            real(fd)
            sec, usec = stamp()
            self.reader.waiting.extend([(sec, usec, UDP_PACKET), (sec, usec, ICMP_PACKET)])

        self.patch(system, "detach_kernel_filter", detach)
        self.patch(PcapyHandle, "_swap_refused_at", 1)  # always detach first
        self.taken_in_before(ICMP_PACKET)
        # Only the prefix changes: what came in before stays, what came in
        # while nothing was attached is filtered with the new program.
        self.handle.set_filter(PrefixedProgram(icmp_out + body, icmp_out))
        self.assertEqual(numbers(self.handle.read_batch(10)), [ICMP_PACKET, UDP_PACKET])

    def test_kernel_form_of_a_prefix_is_made_once(self) -> None:
        prefix = prefix_leaving_out("tcp port 2002")
        made: list[int] = []
        real = system._code_for

        def code_for(program: BpfProgram, cooked: bool) -> Any:
            made.append(len(program.instructions))
            return real(program, cooked)

        self.patch(system, "_code_for", code_for)
        for body in (UDP_FILTER, ICMP_FILTER, UDP_FILTER):
            program = PrefixedProgram(prefix + body.instructions, prefix)
            self.assertEqual(
                system.program_code(program), system.kernel_code(BpfProgram(program.instructions))
            )
        self.assertEqual(made.count(len(prefix)), 1)
        self.assertEqual(len(made), 4)

    def test_close_releases_the_reader(self) -> None:
        self.handle.close()
        self.handle.close()
        self.assertTrue(self.reader.closed)
