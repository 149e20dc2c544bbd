"""
How fast the collector writes capture files: 100,000 64-byte packets in
batches of 1,000 (a busy link's second), to memory, in pcapng and pcap.

    .venv/bin/python benchmarks/filewrite.py [--packets N] [--rounds R]

Prints the median seconds and packets per second of each format.  A
benchmark, not a test: its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from rpcapsvc.collector.files import CaptureFileWriter
from rpcapsvc.protocol.datachannel import CapturedPacket

DLT_EN10MB = 1


def write_once(packets: list[CapturedPacket], format: str) -> float:
    writer = CaptureFileWriter(io.BytesIO(), format)
    writer.add_interface("eth0", DLT_EN10MB, 65535)
    started = time.perf_counter()
    for n in range(0, len(packets), 1000):
        writer.write_packets(0, packets[n : n + 1000])
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    payload = bytes(range(64))
    packets = [
        CapturedPacket(1_700_000_000 + n // 1000, n % 1000, 64, 64, n, payload) for n in range(args.packets)
    ]
    for format in ("pcapng", "pcap"):
        seconds = statistics.median(write_once(packets, format) for _ in range(args.rounds))
        print(
            f"{format:7} {seconds:.3f} s  {args.packets / seconds:,.0f} packets/s (median of {args.rounds})"
        )


if __name__ == "__main__":
    main()
