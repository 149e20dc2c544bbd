"""
CPU cost of framing captured packets as udpstr datagrams: what
``UdpStrFramer.pack_batch`` costs per packet, for batches of equal-sized
frames (and one batch of mixed sizes), no I/O.

Run from the repository::

    .venv/bin/python benchmarks/udpstr_framer.py
    .venv/bin/python benchmarks/udpstr_framer.py --sizes 64 1000 --mtu 1472 --snaplen 65535

Prints one line per batch: microseconds per packet, the best of many short
timed runs (the machine's other load only ever adds time).
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rpcapsvc.protocol.datachannel import PacketBatch  # noqa: E402
from rpcapsvc.protocol.udpstr import UdpStrFramer  # noqa: E402

MIXED_SIZES = (60, 66, 200, 590, 1000, 1514)
"""Frame sizes of the mixed batch: acknowledgements, small and full-sized packets."""


def batch_of(sizes: list[int]) -> PacketBatch:
    """A batch of frames of these sizes, back to back in one buffer as the capture leaves them."""
    return PacketBatch.from_packets(
        [(n, n % 1_000_000, bytes([n & 0xFF]) * size) for n, size in enumerate(sizes)]
    )


def per_packet(batch: PacketBatch, mtu: int, snaplen: int, number: int, repeat: int) -> float:
    """Best time of C{pack_batch} per packet, in microseconds (packet numbers go on from batch to batch)."""
    framer = UdpStrFramer(mtu)
    count = len(batch)
    npkt = [1]

    def pack() -> None:
        framer.pack_batch(batch, snaplen, npkt[0])
        npkt[0] += count

    best = min(timeit.repeat(pack, number=number, repeat=repeat))
    return best / number / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 1000], help="frame sizes, one batch each"
    )
    parser.add_argument("--count", type=int, default=512, help="packets per batch")
    parser.add_argument("--mtu", type=int, default=1472)
    parser.add_argument("--snaplen", type=int, default=65535)
    parser.add_argument("--number", type=int, default=10, help="batches per timed run")
    parser.add_argument("--repeat", type=int, default=100, help="timed runs (the best counts)")
    parser.add_argument("--no-mixed", action="store_true", help="leave out the batch of mixed sizes")
    args = parser.parse_args()

    batches = [(f"{size} B", batch_of([size] * args.count)) for size in args.sizes]
    if not args.no_mixed:
        rng = random.Random(1)
        batches.append(("mixed", batch_of([rng.choice(MIXED_SIZES) for _ in range(args.count)])))
    for label, batch in batches:
        cost = per_packet(batch, args.mtu, args.snaplen, args.number, args.repeat)
        print(
            f"{label:>8}: {cost:.3f} us/packet "
            f"({args.count}-packet batches, MTU {args.mtu}, snaplen {args.snaplen})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
