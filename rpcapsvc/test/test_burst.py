"""
End to end: a burst forwarded over udpstr at the daemon's default settings
loses nothing.

``twistd rpcapd --udp-mtu 1472`` captures on lo while 20,000 UDP packets go
past at 10,000 a second; a raw receiver (the control channel by hand, a UDP
socket with a receive buffer that holds the burst, our udpstr decoder)
counts what arrives and the gaps in the sequence numbers.  The capture ring
hands packets over a block at a time, hundreds at once, and the daemon sends
each batch with one system call: what this proves is that nothing on the
daemon's side (capture buffer, batch sends, send buffer) drops any of them.
"""

from __future__ import annotations

import socket
import time

from twisted.trial.unittest import TestCase

from rpcapsvc.capture.compiler import compile_filter
from rpcapsvc.protocol.udpstr import UdpStrDecoder
from rpcapsvc.protocol.wire import MessageType, OpenRequest, StartCapFlags, StartCaptureRequest

from . import _peers
from ._e2e import NULL_AUTH, Daemon, RawRpcapClient, free_port

BURST_PACKETS = 20_000
BURST_RATE = 10_000  # packets a second
FRAME_PAYLOAD = 958  # 1000-byte frames on lo (14 + 20 + 8 + 958)
RECEIVE_BUFFER = 32 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
DLT_EN10MB = 1


class _BurstTestBase(TestCase):
    """A daemon forwarding udpstr, and the burst."""

    skip = _peers.skip_reason_for_capture()
    timeout = 60

    def start_daemon(self, *options: str) -> None:
        self.port = free_port()
        self.daemon = Daemon(
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--null-auth", "--udp-mtu", "1472",
            *options, wait_port=self.port,
        )  # fmt: skip
        self.addCleanup(self.daemon.stop)

    def receiver(self) -> socket.socket:
        """The data socket: a receive buffer the whole burst fits in, so any loss is the daemon's."""
        data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(data.close)
        try:
            data.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        data.bind(("127.0.0.1", 0))
        return data

    def start_capture(self, data_port: int, target_port: int) -> RawRpcapClient:
        control = RawRpcapClient(self.port)
        self.addCleanup(control.close)
        self.assertEqual(control.request(NULL_AUTH)[0], MessageType.AUTH_REPLY)
        self.assertEqual(control.request(OpenRequest("lo").encode())[0], MessageType.OPEN_REPLY)
        program = compile_filter(f"udp and dst port {target_port}", DLT_EN10MB)
        request = StartCaptureRequest(65535, 100, StartCapFlags.DGRAM, data_port, program)
        reply_type, _, payload = control.request(request.encode())
        self.assertEqual(reply_type, MessageType.STARTCAP_REPLY, payload)
        return control

    def send_burst(self, target_port: int) -> None:
        """BURST_PACKETS datagrams at BURST_RATE a second, in 10 ms slices."""
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        payload = b"b" * FRAME_PAYLOAD
        per_slice = BURST_RATE // 100
        started = time.monotonic()
        for slice_number in range(BURST_PACKETS // per_slice):
            delay = started + slice_number / 100 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _ in range(per_slice):
                sender.sendto(payload, ("127.0.0.1", target_port))


class UdpStrBurstTests(_BurstTestBase):
    def test_burst_arrives_whole(self) -> None:
        """At the defaults: an 8 MiB send buffer, UDP GSO (the kernel cuts the datagrams)."""
        self.start_daemon()
        self.burst_arrives_whole()
        self.assertIn("UDP GSO where the kernel has it", self.daemon.log())
        self.assertNotIn("will not segment", self.daemon.log())

    def test_burst_arrives_whole_without_gso(self) -> None:
        """With --no-udp-gso: one sendmmsg per batch, each datagram on its own."""
        self.start_daemon("--no-udp-gso")
        self.burst_arrives_whole()
        self.assertIn("no UDP GSO", self.daemon.log())

    def burst_arrives_whole(self) -> None:
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the burst, never read
        self.addCleanup(target.close)
        target.bind(("127.0.0.1", 0))
        target_port = target.getsockname()[1]
        data = self.receiver()
        self.start_capture(data.getsockname()[1], target_port)
        self.daemon.wait_for_log("UDP data channel to 127.0.0.1")
        self.assertIn("send buffer 8388608 bytes", self.daemon.log())  # the default, not capped as root
        self.assertIn("Buffers: capture", self.daemon.log())
        time.sleep(0.3)  # the filter is in place once the reply came; let the capture settle

        self.send_burst(target_port)

        decoder = UdpStrDecoder()
        received = 0
        data.settimeout(2.0)  # the partly filled datagram follows the 100 ms read timeout
        try:
            while received < BURST_PACKETS:
                received += len(decoder.feed(data.recv(65536)))
        except socket.timeout:
            pass
        self.assertEqual(
            (received, decoder.lost_packets, decoder.lost_datagrams), (BURST_PACKETS, 0, 0), "packets lost"
        )


class CollectorBurstTests(_BurstTestBase):
    """The same burst into rpcap-dump at its defaults: its data socket holds it too."""

    def test_burst_arrives_whole(self) -> None:
        import os
        import subprocess
        import sys
        import tempfile

        from .test_interop_collector import _env

        self.start_daemon()
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the burst, never read
        self.addCleanup(target.close)
        target.bind(("127.0.0.1", 0))
        target_port = target.getsockname()[1]
        path = os.path.join(tempfile.mkdtemp(prefix="rpcap-burst-"), "burst.pcap")
        dump = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "rpcap-dump"),
                "--udp", "-c", str(BURST_PACKETS), "-w", path,
                f"rpcap://127.0.0.1:{self.port}/lo", f"udp and dst port {target_port}",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        self.addCleanup(lambda: dump.poll() is None and dump.kill())
        self.daemon.wait_for_log("UDP data channel to 127.0.0.1")
        time.sleep(0.3)  # let the capture settle
        self.send_burst(target_port)
        try:
            _, stderr = dump.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            dump.kill()
            _, stderr = dump.communicate()
        self.assertEqual(dump.returncode, 0, stderr)
        self.assertIn(f"{BURST_PACKETS} packets captured", stderr)
        self.assertIn("0 lost in transit", stderr)
