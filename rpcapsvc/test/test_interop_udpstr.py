"""
End-to-end udpstr: ``twistd -n rpcapd --active ... --udp-mtu 1472`` serving a
collector written here from the format alone (ExtraHop's datagram layout as
docs/protocol.md states it), with no code shared with the daemon's framer.
"""

from __future__ import annotations

import socket
import struct
import time

import pcapy
from twisted.trial.unittest import SynchronousTestCase

from ._e2e import Daemon, Traffic, e2e_skip_reason

MTU = 1472


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("control connection closed")
        data += chunk
    return data


def _request(sock: socket.socket, mtype: int, payload: bytes = b"") -> tuple[int, int, bytes]:
    sock.sendall(struct.pack("!BBHI", 0, mtype, 0, len(payload)) + payload)
    _, rtype, value, plen = struct.unpack("!BBHI", _recv_exact(sock, 8))
    return rtype, value, _recv_exact(sock, plen)


def _decode_stream(datagrams: list[bytes]) -> tuple[list[tuple[int, int, int, bytes]], list[int]]:
    """
    Rebuild packets from in-order, loss-free datagrams using only the format:
    8-byte header {ver, type=110, firsthdridx, seqno}, then a slice of the
    stream of 20-byte packet headers and packet bytes.  Returns the packets
    (caplen, len, npkt, data) and each datagram's firsthdridx as found by
    walking the stream, to compare with what the header claimed.
    """
    stream = b""
    starts: list[int] = []  # offsets in `stream` where each datagram's payload begins
    for d in datagrams:
        starts.append(len(stream))
        stream += d[8:]
    packets = []
    header_positions = []
    offset = 0
    while offset + 20 <= len(stream):
        _, _, caplen, length, npkt = struct.unpack_from("!IIIII", stream, offset)
        if offset + 20 + caplen > len(stream):
            break
        header_positions.append(offset)
        packets.append((caplen, length, npkt, stream[offset + 20 : offset + 20 + caplen]))
        offset += 20 + caplen
    expected_first = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(stream)
        inside = [p for p in header_positions if start <= p < end]
        expected_first.append(inside[0] - start + 8 if inside else 0xFFFF)
    return packets, expected_first


class UdpStrActiveTests(SynchronousTestCase):
    skip = e2e_skip_reason(need_capture=True)

    def test_a_format_only_receiver_rebuilds_every_packet(self) -> None:
        collector = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(collector.close)
        port = collector.getsockname()[1]
        daemon = Daemon("--active", f"127.0.0.1:{port}", "--udp-mtu", str(MTU), "--null-auth")
        self.addCleanup(daemon.stop)
        collector.settimeout(15)
        control, _ = collector.accept()
        self.addCleanup(control.close)
        control.settimeout(10)

        rtype, _, _ = _request(control, 8, struct.pack("!HHHH", 0, 0, 0, 0))
        self.assertEqual(rtype, 0x88)
        rtype, _, _ = _request(control, 3, b"lo")
        self.assertEqual(rtype, 0x83)

        data_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(data_sock.close)
        data_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        data_sock.bind(("127.0.0.1", 0))
        traffic = Traffic()
        self.addCleanup(traffic.close)
        program = pcapy.compile(1, 65535, f"udp dst port {traffic.port}", 1, 0).get_bpf()
        bpf = struct.pack("!HHI", 1, 0, len(program)) + b"".join(struct.pack("!HBBi", *i) for i in program)
        startcap = struct.pack("!IIHH", 65535, 100, 1 | 2, data_sock.getsockname()[1]) + bpf
        rtype, value, payload = _request(control, 4, startcap)
        self.assertEqual(rtype, 0x84, payload)

        sizes = {f"small-{n}": 30 for n in range(400)}
        sizes.update({f"large-{n}": 4000 for n in range(10)})
        time.sleep(0.3)
        for marker, size in sizes.items():
            traffic.send(marker, size)

        datagrams = []
        data_sock.settimeout(3)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                datagrams.append(data_sock.recv(65535))
            except socket.timeout:
                break
            if b"large-9" in b"".join(datagrams[-4:]):
                deadline = min(
                    deadline, time.monotonic() + 1.5
                )  # the tail is flushed within the read timeout

        self.assertTrue(datagrams)
        for d in datagrams:
            self.assertLessEqual(len(d), MTU)
            self.assertEqual(d[:2], b"\x00\x6e")
        seqnos = [struct.unpack_from("!I", d, 4)[0] for d in datagrams]
        self.assertEqual(seqnos, list(range(len(datagrams))))
        packets, expected_first = _decode_stream(datagrams)
        self.assertEqual([struct.unpack_from("!H", d, 2)[0] for d in datagrams], expected_first)
        self.assertEqual([p[2] for p in packets], list(range(1, len(packets) + 1)))

        by_marker = {}
        for caplen, length, _, frame in packets:
            self.assertEqual(caplen, len(frame))
            self.assertEqual(length, caplen)
            body = frame[14 + 20 + 8 :]
            marker = body.split(b".", 1)[0].decode(errors="replace")
            by_marker[marker] = body
        for marker, size in sizes.items():
            self.assertEqual(by_marker.get(marker), marker.encode().ljust(size, b"."), marker)
        small_datagrams = [d for d in datagrams if b"small-" in d and b"large-" not in d]
        per_datagram = sum(d.count(b"small-") for d in small_datagrams) / len(small_datagrams)
        self.assertGreater(per_datagram, 15)
        large_split = [d for d in datagrams if struct.unpack_from("!H", d, 2)[0] == 0xFFFF]
        self.assertTrue(large_split, "a 4 KB frame must span a datagram with no header in it")
        _request(control, 10)  # endcap
        self.assertTrue(daemon.alive())
