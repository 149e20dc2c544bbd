"""
udpstr benchmark client: bench-client.c's role for ExtraHop's udpstr framing,
which libpcap's client does not read.

It opens a capture over RPCAP by hand (null auth, UDP data channel), reads
the datagrams with rpcapsvc's own decoder (L{UdpStrDecoder}), counts packets
and the packets and datagrams lost (gaps in the sequence numbers), and speaks
to forwarding.py as bench-client does: a ``{"ready": true}`` line once the
capture runs, ``drain`` on standard input to stop after --idle-ms without
packets, then one JSON line with the counts and the daemon's stats; it holds
the session open until standard input closes.

Its data socket gets a 32 MiB receive buffer (SO_RCVBUFFORCE, as root): the
benchmark measures the daemon, not this client's socket.

    python benchmarks/udpstr-client.py --port 2002 --iface rpcb0 --filter 'udp and dst port 9'
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rpcapsvc.capture.compiler import compile_filter  # noqa: E402
from rpcapsvc.protocol.udpstr import UdpStrDecoder  # noqa: E402
from rpcapsvc.protocol.wire import (  # noqa: E402
    MessageType,
    OpenRequest,
    StartCapFlags,
    StartCaptureRequest,
    StatsReply,
    StatsRequest,
    frame,
)
from rpcapsvc.test._e2e import RawRpcapClient  # noqa: E402

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RECEIVE_BUFFER = 32 * 1024 * 1024


def ask(control: RawRpcapClient, data: bytes) -> bytes:
    """One request on the control connection: the reply's payload (an RPCAP error raised)."""
    mtype, _, payload = control.request(data)
    if mtype == MessageType.ERROR:
        raise RuntimeError(f"daemon error: {payload.decode(errors='replace')}")
    return payload


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--iface", required=True)
    parser.add_argument("--filter", required=True)
    parser.add_argument("--timeout-ms", type=int, default=100)
    parser.add_argument("--idle-ms", type=int, default=1000)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=60)
    args = parser.parse_args()

    data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        data.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    data.bind(("127.0.0.1", 0))
    data.setblocking(False)
    try:
        control = RawRpcapClient(args.port, timeout=10)
        ask(control, frame(MessageType.AUTH_REQ, bytes(8)))
        opened = ask(control, OpenRequest(args.iface).encode())
        linktype = struct.unpack("!i", opened[:4])[0]
        program = compile_filter(args.filter, linktype)
        request = StartCaptureRequest(
            65535,
            args.timeout_ms,
            StartCapFlags.DGRAM | StartCapFlags.PROMISC,
            data.getsockname()[1],
            program,
        )
        ask(control, request.encode())
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    print(json.dumps({"ready": True, "linktype": linktype}), flush=True)

    decoder = UdpStrDecoder()
    packets = 0
    started = time.monotonic()
    first = last = 0.0
    draining_since = 0.0
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([data, stdin] if not draining_since else [data], [], [], 0.05)
        now = time.monotonic()
        if data in readable:
            while True:
                try:
                    datagram = data.recv(65536)
                except BlockingIOError:
                    break
                got = len(decoder.feed(datagram))
                if got:
                    packets += got
                    last = now
                    first = first or now
        if stdin in readable:
            sys.stdin.readline()
            draining_since = now
        if args.count and packets >= args.count:
            break
        if now - started >= args.max_seconds:
            break
        if draining_since and (now - max(last, draining_since)) * 1000 >= args.idle_ms:
            break

    payload = ask(control, StatsRequest().encode())
    stats = StatsReply.decode(None, payload)  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "packets": packets,
                "seconds": last - first if packets else 0.0,
                "lost_packets": decoder.lost_packets,
                "lost_datagrams": decoder.lost_datagrams,
                "stats": {"ps_recv": stats.ifrecv, "ps_drop": stats.krnldrop, "ps_ifdrop": stats.ifdrop},
            }
        ),
        flush=True,
    )
    for _ in sys.stdin:  # hold the session until the harness closes standard input
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
