"""
The kernel floor: what forwarding captured packets over loopback costs at best.

``floor.c`` (next to this file) sends RPCAP packet messages laid out exactly
as a daemon forwards captured frames (over TCP the 8-byte RPCAP header, the
20-byte packet header and the frame, one after another in the stream; over
classic UDP the same 28 + frame bytes as one datagram) to a receiver process
on 127.0.0.1, paced at a packet rate, and measures the sender's CPU time: the
part of a daemon's cost that no daemon can avoid, its receive path on
loopback included, with no capture and no interpreter.  These figures sit
beside benchmarks/forwarding.py's CPU per forwarded packet.

Methods (see floor.c for the details):

- ``tcp send``: one copy and one ``send`` per packet, as libpcap 1.10.5's
  rpcapd does (``daemon_thrdatamain``);
- ``tcp sendmsg``: one ``sendmsg`` per 512 packets, two iovecs per packet,
  as rpcapsvc's ``fastsend.send_stream``;
- ``tcp copy64k``: messages copied into a 64000-byte buffer, one ``send``
  when it is full;
- ``udp send``: one ``send`` per datagram (libpcap's rpcapd over UDP);
- ``udp sendmmsg``: one ``sendmmsg`` per 256 datagrams, as rpcapsvc's
  ``fastsend.send_datagrams`` (rpcapsvc without UDP GSO);
- ``udp gso``: as rpcapsvc by default since UDP GSO
  (``fastsend.send_datagrams_segmented``): one ``sendmmsg`` per 256
  datagrams, each run of up to 64 of them (65000 bytes at most) one message
  with a ``UDP_SEGMENT`` cmsg, so the kernel cuts the datagrams; the receiver
  counts them as they arrive, cut.

The sender sleeps between bursts (a batch, or 1 ms of packets for the
per-packet methods).  Those sleeps cost CPU too, so each case is also run
with the method ``idle`` (the same pacing, nothing sent), and the table shows
the net figure (sends only) beside the total.

Run it (no root needed; loopback only)::

    python benchmarks/floor.py                     # TCP and UDP, 64 and 1000 B, 100k pps, 3 runs
    python benchmarks/floor.py --size 1000 --method tcp-sendmsg --rate 200k --seconds 5

Results: a table on stdout and JSON in benchmarks/results/<timestamp>-floor.json.
Needs a C compiler (``cc``, or ``$CC``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

# benchmarks/, first on the path of a script run from there
from forwarding import cpu_model, machine_busy_seconds, parse_count

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
SOURCE = BENCH_DIR / "floor.c"

METHODS = ("tcp-send", "tcp-sendmsg", "tcp-copy64k", "udp-send", "udp-sendmmsg", "udp-gso")
BATCHES = {"tcp-sendmsg": 512, "udp-sendmmsg": 256, "udp-gso": 256}
"""Packets per system call of the batch methods (floor.c's TCP_BATCH, UDP_BATCH)."""
WHO_DOES_IT = {
    "tcp-send": "libpcap rpcapd",
    "tcp-sendmsg": "rpcapsvc",
    "tcp-copy64k": "nobody (64000-byte buffer)",
    "udp-send": "libpcap rpcapd",
    "udp-sendmmsg": "rpcapsvc without GSO",
    "udp-gso": "rpcapsvc",
}


@dataclass(frozen=True)
class Case:
    """One line of the table: a method at a frame size."""

    method: str
    size: int

    @property
    def proto(self) -> str:
        return self.method.split("-", 1)[0]

    @property
    def call(self) -> str:
        return self.method.split("-", 1)[1]


@dataclass
class Run:
    """One run of floor.c for a case, and the idle run with the same pacing."""

    case: Case
    repetition: int
    rate: int
    burst: int
    floor: dict[str, object] = field(default_factory=dict)
    """floor.c's JSON line for the case."""
    idle: dict[str, object] = field(default_factory=dict)
    """floor.c's JSON line for the pacing alone."""
    machine_busy_pct: float = 0.0
    """All CPUs, everything (this run, the receiver, other engineers' tests), over the case's run."""
    loadavg: str = ""
    error: str = ""

    def _number(self, run: dict[str, object], key: str) -> float:
        value = run.get(key, 0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    @property
    def sent(self) -> int:
        return int(self._number(self.floor, "sent"))

    @property
    def received(self) -> int:
        return int(self._number(self.floor, "received"))

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    @property
    def cpu_us(self) -> float:
        """The sender's CPU µs per packet, pacing included."""
        sent = self.sent
        return 1e6 * self._number(self.floor, "sender_runtime_s") / sent if sent else 0.0

    @property
    def idle_us(self) -> float:
        """The pacing's CPU µs per packet."""
        sent = int(self._number(self.idle, "sent"))
        return 1e6 * self._number(self.idle, "sender_runtime_s") / sent if sent else 0.0

    @property
    def net_us(self) -> float:
        """The sends' CPU µs per packet: the floor."""
        return self.cpu_us - self.idle_us

    @property
    def calls_per_packet(self) -> float:
        return self._number(self.floor, "calls") / self.sent if self.sent else 0.0

    @property
    def segments_per_packet(self) -> float:
        return self._number(self.floor, "tcp_segments") / self.sent if self.sent else 0.0

    @property
    def receiver_us(self) -> float:
        """The receiver's CPU µs per packet received (the client's share, not the daemon's)."""
        received = self.received
        return 1e6 * self._number(self.floor, "receiver_runtime_s") / received if received else 0.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(workdir: Path) -> Path:
    """floor.c compiled with ``cc -O2`` into C{workdir}."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise SystemExit(f"{compiler} not found: a C compiler is needed to build floor.c")
    binary = workdir / "floor"
    done = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"floor.c does not compile:\n{done.stderr.strip()}")
    return binary


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_floor(
    binary: Path, proto: str, call: str, size: int, rate: int, seconds: float, burst: int
) -> dict[str, object]:
    """One floor.c run: its JSON line."""
    command = [str(binary), proto, call, str(size), str(rate), str(seconds), str(burst)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 10 + 30)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"floor exited with status {done.returncode}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def burst_for(case: Case, rate: int, burst: Optional[int]) -> int:
    """Packets a wake-up: the batch for batch methods, else C{burst} (default 1 ms of packets)."""
    if case.method in BATCHES:
        return BATCHES[case.method]
    return burst or max(1, rate // 1000)


def run_case(
    binary: Path, case: Case, repetition: int, rate: int, seconds: float, burst: Optional[int]
) -> Run:
    packets_per_wakeup = burst_for(case, rate, burst)
    run = Run(case, repetition, rate, packets_per_wakeup)
    busy, wall = machine_busy_seconds(), time.monotonic()
    try:
        run.floor = run_floor(binary, case.proto, case.call, case.size, rate, seconds, packets_per_wakeup)
        run.idle = run_floor(binary, case.proto, "idle", case.size, rate, seconds, packets_per_wakeup)
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        run.error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    run.machine_busy_pct = (
        100.0 * (machine_busy_seconds() - busy) / (time.monotonic() - wall) / (os.cpu_count() or 1)
    )
    run.loadavg = loadavg()
    return run


def spread(values: Sequence[float], digits: int = 2) -> str:
    """'median (min–max)' of C{values}."""
    if not values:
        return "-"
    middle = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def format_table(runs: list[Run]) -> str:
    lines = [
        "| channel | method | done by | frame | floor: CPU µs/pkt (sends) | with pacing | pacing "
        "| syscalls/pkt | TCP segs/pkt | received / sent | loss | receiver µs/pkt | machine busy |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    cases: list[Case] = []
    for run in runs:
        if run.case not in cases:
            cases.append(run.case)
    for case in cases:
        good = [r for r in runs if r.case == case and not r.error]
        errors = [r.error for r in runs if r.case == case and r.error]
        if not good:
            lines.append(
                f"| {case.proto} | {case.call} | {WHO_DOES_IT[case.method]} | {case.size} B | error: {errors[0]} |"
            )
            continue
        received = sum(r.received for r in good)
        sent = sum(r.sent for r in good)
        # Calls and segments per packet hardly vary between runs: the median says it.
        segments = (
            f"{statistics.median(r.segments_per_packet for r in good):.3f}" if case.proto == "tcp" else "-"
        )
        calls = f"{statistics.median(r.calls_per_packet for r in good):.4f}"
        lines.append(
            f"| {case.proto} | {case.call} | {WHO_DOES_IT[case.method]} | {case.size} B "
            f"| **{spread([r.net_us for r in good])}** | {spread([r.cpu_us for r in good])} "
            f"| {spread([r.idle_us for r in good])} | {calls} "
            f"| {segments} | {received} / {sent} | {100.0 * (sent - received) / sent if sent else 0.0:.2f} % "
            f"| {spread([r.receiver_us for r in good])} | {spread([r.machine_busy_pct for r in good], 0)} % |"
        )
        if errors:
            lines.append(f"|  | ({len(errors)} run(s) failed: {errors[0]}) |")
    return "\n".join(lines)


def machine_description() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "loadavg_at_end": loadavg(),
    }


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument(
        "--rate", type=parse_count, default=100_000, help="packets/s (100k; 0: as fast as possible)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each run (3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, the cases taken in turn (3)")
    parser.add_argument("--size", type=int, action="append", help="frame bytes (repeatable; 64, 1000)")
    parser.add_argument(
        "--method", choices=METHODS, action="append", help=f"repeatable; all: {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--burst",
        type=int,
        help="packets a wake-up for the per-packet methods (default: 1 ms of packets at --rate)",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON file (default benchmarks/results/<timestamp>-floor.json)"
    )
    args = parser.parse_args(argv)
    args.size = args.size or [64, 1000]
    args.method = args.method or list(METHODS)
    if args.repeat < 1 or args.seconds <= 0 or args.rate < 0:
        parser.error("--repeat must be at least 1, --seconds above 0, --rate at least 0")
    if args.burst is not None and args.burst < 1:
        parser.error("--burst must be at least 1")
    if any(size < 1 or size > 65000 for size in args.size):
        parser.error("--size must be between 1 and 65000")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%dT%H%M%S")
    output = args.output or BENCH_DIR / "results" / f"{started}-floor.json"
    cases = [Case(method, size) for method in args.method for size in args.size]
    runs: list[Run] = []
    log(f"load average at the start: {loadavg()}")
    try:
        with tempfile.TemporaryDirectory(prefix="rpcfloor-") as tmp:
            binary = build(Path(tmp))
            # Repetitions go round all the cases, so slow drift in the machine's
            # load weighs on all of them alike.
            for repetition in range(1, args.repeat + 1):
                for case in cases:
                    log(f"run {repetition}/{args.repeat}: {case.method} {case.size} B at {args.rate} pps")
                    run = run_case(binary, case, repetition, args.rate, args.seconds, args.burst)
                    if run.error:
                        log(f"  failed: {run.error}")
                    runs.append(run)
    except KeyboardInterrupt:
        log("interrupted: the table has the runs done so far")

    print(
        f"Sender CPU per packet over loopback at {args.rate} pps, {args.seconds:g} s a run; "
        f"median (min–max) of {args.repeat} run(s). Load average at the end: {loadavg()}."
    )
    print(format_table(runs))
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started": started,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(),
        "settings": {
            "rate": args.rate,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "burst": args.burst,
            "batches": BATCHES,
        },
        "runs": [
            {
                **asdict(run),
                "cpu_us_per_packet": run.cpu_us,
                "pacing_us_per_packet": run.idle_us,
                "floor_us_per_packet": run.net_us,
                "loss_pct": run.loss_pct,
            }
            for run in runs
        ],
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results: {output}")
    return 1 if any(run.error for run in runs) or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
