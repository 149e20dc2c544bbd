"""
Forwarding benchmark: libpcap's rpcapd and rpcapsvc side by side.

For each daemon in turn, and for each data channel (TCP, UDP), packet size and
rate, the same UDP packets are replayed onto a private wire while one RPCAP
client captures them through the daemon.  Recorded per case:

- packets replayed (tcpreplay) and packets that arrived on the capture end of
  the wire (the interface's rx counter);
- packets the client received, and the loss between the two;
- the daemon's CPU time during the case (every thread of the daemon and of its
  children, from /proc/PID/task/TID/schedstat), per forwarded packet and as a
  share of one core over the replay time;
- the client's pcap_stats (the daemon's kernel drops) and its own CPU time.

The wire is a veth pair: ``rpcb1`` inside the network namespace
``rpcbench-ns`` (tcpreplay sends there) and ``rpcb0`` in the root namespace
(the daemons capture there), with addresses from the benchmark range
198.18.0.0/15 and nothing routed.  It is removed on exit, Ctrl-C included.

The client is ``bench-client.c`` (next to this file), compiled on the fly
against the static libpcap of the reference peers (``make peers``): it counts
packets instead of printing them (printing every packet as the interop client
does would make the client, not the daemon, the slow part).

Run as root (namespaces, veth, capture)::

    python benchmarks/forwarding.py                      # default matrix
    python benchmarks/forwarding.py --rate 50k --size 64 --channel tcp --seconds 3

Results: a table on stdout and JSON in benchmarks/results/<timestamp>.json.
Needs: ip (iproute2), tcpreplay, a C compiler, and .peers/ (rpcapd and the
static libpcap, from scripts/build-reference-peers.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
CLIENT_SOURCE = BENCH_DIR / "bench-client.c"

_RUN = os.getpid() % 100000  # two runs at once get wires of their own
NETNS = f"rpcbench-{_RUN}"
WIRE_IFACE = f"rpcb{_RUN}a"  # root namespace: the daemons capture here
NS_IFACE = f"rpcb{_RUN}b"  # inside NETNS: tcpreplay sends here
WIRE_ADDR = "198.18.0.2"
NS_ADDR = "198.18.0.1"
PREFIX_LEN = 30
# The replayed frames are addressed to a MAC nobody has, so the receiving
# kernel drops them right after the capture taps (no UDP or ICMP work).
SRC_MAC = bytes.fromhex("020000b11801")
DST_MAC = bytes.fromhex("020000b118fe")
UDP_SRC_PORT = 40000
UDP_DST_PORT = 9  # discard
CAPTURE_FILTER = f"udp and dst port {UDP_DST_PORT}"
DISTINCT_PACKETS = 1000  # packets in the pcap; tcpreplay loops over it
# tcpreplay's default timer (gtod) spins: it would take a whole core of the
# two, whatever the rate.  nanosleep holds the rate as well at a fraction.
REPLAY_TIMER = "nano"

CLIENT_TIMEOUT_MS = 100  # pcap read timeout, sent to the daemon in startcap
CLIENT_IDLE_MS = 1000  # after the replay, the client stops after this long without packets
SETTLE_SECONDS = 0.5  # between "capture running" and the replay

DAEMONS = ("libpcap", "rpcapsvc", "rpcapsvc-nogso", "extrahop")
DEFAULT_DAEMONS = ("libpcap", "rpcapsvc")
CHANNELS = ("tcp", "udp", "udpstr")
DEFAULT_CHANNELS = ("tcp", "udp")
UDPSTR_MTU = 1472
UDPSTR_CLIENT = BENCH_DIR / "udpstr-client.py"
MAX_LOSS_PCT = 0.1  # --max-rate: the most a rate may lose and still count as forwarded
# Which channels each daemon speaks: libpcap's rpcapd has no udpstr; ExtraHop's
# fork is run for udpstr only (with -t it frames every channel that way).
DAEMON_CHANNELS = {
    "libpcap": ("tcp", "udp"),
    "rpcapsvc": CHANNELS,
    "rpcapsvc-nogso": ("udp", "udpstr"),
    "extrahop": ("udpstr",),
}


# --- small helpers -------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command, capturing its output."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def in_netns(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *cmd]


def parse_count(text: str) -> int:
    """'50000', '50k' or '1M' as an integer."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


# --- the wire ------------------------------------------------------------------


def remove_wire() -> None:
    """Delete the namespace (and the veth end in it) and the root end; idempotent."""
    run("ip", "netns", "del", NETNS, check=False)
    run("ip", "link", "del", WIRE_IFACE, check=False)


def create_wire() -> None:
    remove_wire()
    run("ip", "netns", "add", NETNS)
    run("ip", "link", "add", WIRE_IFACE, "type", "veth", "peer", "name", NS_IFACE, "netns", NETNS)
    # No IPv6 on either end: no router solicitations or MLD on the wire.
    run("sysctl", "-qw", f"net.ipv6.conf.{WIRE_IFACE}.disable_ipv6=1", check=False)
    run(*in_netns("sysctl", "-qw", f"net.ipv6.conf.{NS_IFACE}.disable_ipv6=1"), check=False)
    run("ip", "addr", "add", f"{WIRE_ADDR}/{PREFIX_LEN}", "dev", WIRE_IFACE)
    run(*in_netns("ip", "addr", "add", f"{NS_ADDR}/{PREFIX_LEN}", "dev", NS_IFACE))
    run(*in_netns("ip", "link", "set", NS_IFACE, "address", SRC_MAC.hex(":")))
    run("ip", "link", "set", WIRE_IFACE, "up")
    run(*in_netns("ip", "link", "set", NS_IFACE, "up"))
    run(*in_netns("ip", "link", "set", "lo", "up"))


def wire_rx_packets() -> int:
    return int(Path(f"/sys/class/net/{WIRE_IFACE}/statistics/rx_packets").read_text())


# --- the traffic ---------------------------------------------------------------


def ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(size: int, seq: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of C{size} bytes (no FCS), numbered C{seq}."""
    payload_len = size - 14 - 20 - 8
    if payload_len < 4:
        raise ValueError("frames must be at least 46 bytes")
    payload = struct.pack("!I", seq) + bytes(payload_len - 4)
    udp = struct.pack("!HHHH", UDP_SRC_PORT, UDP_DST_PORT, 8 + payload_len, 0) + payload
    ip_head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), seq & 0xFFFF, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(NS_ADDR), socket.inet_aton(WIRE_ADDR),
    )  # fmt: skip
    ip_head = ip_head[:10] + struct.pack("!H", ipv4_checksum(ip_head)) + ip_head[12:]
    return DST_MAC + SRC_MAC + struct.pack("!H", 0x0800) + ip_head + udp


def write_pcap(path: Path, count: int, size: int) -> None:
    """A classic pcap file (microsecond timestamps, Ethernet) of C{count} frames."""
    with path.open("wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for seq in range(count):
            frame = udp_frame(size, seq)
            f.write(struct.pack("=IIII", 1_700_000_000, seq, len(frame), len(frame)))
            f.write(frame)


@dataclass
class Replay:
    sent: int
    failed: int
    seconds: float
    pps: float


def replay(pcap: Path, rate: int, loops: int) -> Replay:
    """Replay C{pcap} C{loops} times at C{rate} packets/s from inside the namespace."""
    cmd = in_netns(
        "tcpreplay", f"--timer={REPLAY_TIMER}", "--preload-pcap",
        f"--pps={rate}", f"--loop={loops}", "-i", NS_IFACE, str(pcap),
    )  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    actual = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", out)
    rated = re.search(r"Rated: .*?([\d.]+) pps", out)
    failed = re.search(r"Failed packets:\s+(\d+)", out)
    if not actual:
        raise RuntimeError(f"cannot read tcpreplay's report:\n{out}")
    return Replay(
        sent=int(actual.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        seconds=float(actual.group(2)),
        pps=float(rated.group(1)) if rated else 0.0,
    )


# --- CPU time --------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """C{pid} and all its descendants (from the parent pids in /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Field 4 (ppid) comes after the command name, which may hold spaces.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process just ended
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += parents.get(p, [])
    return pids


@dataclass(frozen=True)
class Usage:
    """
    What a process used: CPU seconds (C{cpu} from schedstat, nanosecond
    resolution; C{user}/C{system} from stat, clock-tick resolution) and minor
    page faults.
    """

    cpu: float = 0.0
    user: float = 0.0
    system: float = 0.0
    minor_faults: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(a - b for a, b in zip(astuple(self), astuple(other))))


_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> Usage:
    """What every thread of C{pid} used so far (zero for a process that is gone)."""
    total = 0
    for sched in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(sched.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # the thread just ended
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = int(fields[11]) * _TICK, int(fields[12]) * _TICK
        faults = int(fields[7])
    except (OSError, IndexError, ValueError):
        user = system = 0.0
        faults = 0
    return Usage(total / 1e9, user, system, faults)


def tree_usage(pid: int) -> dict[int, Usage]:
    """L{usage} of C{pid} and of each of its live descendants (rpcapd forks per client)."""
    return {p: usage(p) for p in process_tree(pid)}


def used_between(before: dict[int, Usage], after: dict[int, Usage]) -> Usage:
    """What the processes in both L{tree_usage} samples used between them."""
    used = Usage()
    for p in before.keys() & after.keys():
        used += after[p] - before[p]
    return used


# --- the daemons -------------------------------------------------------------------


class Daemon:
    """A daemon under test, listening on 127.0.0.1:port with null auth."""

    name = ""

    def __init__(self, port: int, logdir: Path) -> None:
        self.port = port
        self.logfile = logdir / f"{self.name}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def configure(self, channel: str) -> bool:
        """Set the daemon up for C{channel}'s cases; whether it must be restarted for that."""
        return False

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self._log = self.logfile.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            cwd=self.logfile.parent,
            # Its own process group: libpcap's rpcapd ends with kill(0, SIGKILL).
            start_new_session=True,
        )
        wait_for(lambda: self._listening() or not self.alive(), 30, f"{self.name} to listen")
        if not self.alive():
            raise RuntimeError(f"{self.name} exited at start; see {self.logfile}")

    def _listening(self) -> bool:
        """Is a socket in LISTEN state on 127.0.0.1:port (from /proc/net/tcp)?"""
        wanted = f"0100007F:{self.port:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            # Children it may have left (rpcapd's per-client processes).
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None


class LibpcapRpcapd(Daemon):
    """libpcap 1.10.5's rpcapd, in the foreground (it forks one child per client)."""

    name = "libpcap"
    program = "rpcapd"

    def __init__(self, port: int, logdir: Path, peers: Path) -> None:
        super().__init__(port, logdir)
        self.binary = peers / "bin" / self.program

    def command(self) -> list[str]:
        return [str(self.binary), "-4", "-n", "-b", "127.0.0.1", "-p", str(self.port)]


class ExtrahopRpcapd(LibpcapRpcapd):
    """ExtraHop's fork of rpcapd (udpstr at MTU 1472, its own 8 MiB send and 16 MiB capture buffers)."""

    name = "extrahop"
    program = "extrahop-rpcapd"

    def command(self) -> list[str]:
        return super().command() + ["-t", str(UDPSTR_MTU)]


class Rpcapsvc(Daemon):
    """This project's daemon under twistd -n, with whichever Python runs the benchmark."""

    name = "rpcapsvc"
    udpstr = False
    gso = True  # UDP GSO, the default (False: --no-udp-gso)
    workers = False  # --capture-workers: a process per capture
    extra: list[str] = []  # --rpcapsvc-arg: options of the benchmark's caller, as given

    def configure(self, channel: str) -> bool:
        wanted = channel == "udpstr"
        changed = wanted != self.udpstr
        self.udpstr = wanted
        return changed

    def command(self) -> list[str]:
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "rpcapd",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--null-auth",
        ]  # fmt: skip
        if self.udpstr:
            command += ["--udp-mtu", str(UDPSTR_MTU)]
        if not self.gso:
            command.append("--no-udp-gso")
        if self.workers:
            command.append("--capture-workers")
        return command + self.extra

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env


# --- the client ----------------------------------------------------------------------


def build_client(peers: Path, outdir: Path) -> Path:
    """Compile bench-client.c against the reference peers' static libpcap."""
    pcap_config = peers / "bin" / "pcap-config"
    static_lib = peers / "lib" / "libpcap.a"
    if not pcap_config.exists() or not static_lib.exists():
        raise SystemExit(f"no static libpcap in {peers}: run `make peers` first")
    cflags = run(str(pcap_config), "--cflags").stdout.split()
    libs = run(str(pcap_config), "--static-pcap-only", "--libs").stdout.split()
    # Link the .a by path so the system's libpcap.so can never be picked.
    libs = [str(static_lib) if lib == "-lpcap" else lib for lib in libs if lib != f"-L{peers}/lib"]
    binary = outdir / "bench-client"
    cc = os.environ.get("CC", "cc")
    run(
        cc,
        "-std=gnu11",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        *cflags,
        "-o",
        str(binary),
        str(CLIENT_SOURCE),
        *libs,
    )
    return binary


class Client:
    """
    bench-client capturing rpcap://127.0.0.1:PORT/rpcb0 (see bench-client.c);
    for udpstr, udpstr-client.py (rpcapsvc's decoder), which speaks the same way.
    """

    def __init__(self, binary: Path, port: int, channel: str, expected: int, max_seconds: float) -> None:
        common = [
            "--filter", CAPTURE_FILTER,
            "--timeout-ms", str(CLIENT_TIMEOUT_MS), "--idle-ms", str(CLIENT_IDLE_MS),
            "--count", str(expected), "--max-seconds", str(max_seconds),
        ]  # fmt: skip
        if channel == "udpstr":
            cmd = [sys.executable, str(UDPSTR_CLIENT), "--port", str(port), "--iface", WIRE_IFACE, *common]
        else:
            cmd = [str(binary), f"rpcap://127.0.0.1:{port}/{WIRE_IFACE}", *common]
        if channel == "udp":
            cmd.append("--udp")
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def read_line(self, timeout: float) -> dict[str, object]:
        """The client's next JSON line; it is killed if none comes within C{timeout} seconds."""
        assert self.process.stdout is not None
        watchdog = threading.Timer(timeout, self.process.kill)
        watchdog.start()
        try:
            line = self.process.stdout.readline()
        finally:
            watchdog.cancel()
        if not line:
            err = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"bench-client ended early or hung: {err.strip()}")
        message: dict[str, object] = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"bench-client: {message['error']}")
        return message

    def replay_done(self) -> None:
        """Tell the client to stop once no packet has come for CLIENT_IDLE_MS."""
        assert self.process.stdin is not None
        self.process.stdin.write("drain\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """Let the client end its session and exit."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- profiling (optional) ------------------------------------------------------------


class Profiler:
    """py-spy recording one process (rpcapsvc) until stopped, in py-spy's raw format."""

    def __init__(self, py_spy: str, pid: int, output: Path, native: bool) -> None:
        self.output = output
        cmd = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "-o", str(output)]
        if native:
            cmd.append("--native")
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # let it attach

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def profile_summary(path: Path, top: int = 12) -> str:
    """
    The frames with the most samples in a py-spy raw file: on top of the stack
    (where the time is spent), and anywhere in it (which code it is spent
    under; frames in 90% of the samples or more, the reactor loop, left out).
    """
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples"]
    under = {frame: count for frame, count in anywhere.items() if count < 0.9 * total}
    for title, table in (("on top of the stack (self)", own), ("anywhere in the stack (inclusive)", under)):
        lines.append(f"  {title}:")
        for frame, count in sorted(table.items(), key=lambda item: -item[1])[:top]:
            lines.append(f"    {100.0 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


# --- one case ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    daemon: str
    channel: str
    size: int
    rate: int
    packets: int
    clients: int = 1


@dataclass
class Result:
    case: Case
    repetition: int = 1
    sent: int = 0
    failed: int = 0
    arrived: int = 0
    received: int = 0
    loss_pct: float = 0.0
    replay_seconds: float = 0.0
    replay_pps: float = 0.0
    daemon_cpu_seconds: float = 0.0
    daemon_user_seconds: float = 0.0
    daemon_system_seconds: float = 0.0
    daemon_minor_faults: int = 0
    daemon_processes: int = 0
    cpu_us_per_packet: Optional[float] = None
    cpu_pct: float = 0.0
    client_cpu_seconds: float = 0.0
    machine_busy_pct: float = 0.0  # all CPUs, everything: tcpreplay, daemon, client, kernel, others
    client_stats: dict[str, object] = field(default_factory=dict)
    per_client_received: list[int] = field(default_factory=list)
    lost_in_transit: Optional[int] = None  # udpstr: packets missing from the sequence numbers
    udp_rcvbuf_errors: int = 0
    profile: Optional[str] = None
    error: Optional[str] = None

    @property
    def system_share_pct(self) -> Optional[float]:
        """The kernel's share of the daemon's CPU time; None below 20 clock ticks (too coarse)."""
        ticked = self.daemon_user_seconds + self.daemon_system_seconds
        return 100.0 * self.daemon_system_seconds / ticked if ticked >= 20 * _TICK else None


@dataclass
class Profiling:
    py_spy: str
    directory: Path
    native: bool


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat), to spot other load."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) * _TICK


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer."""
    lines = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")
    ]
    return int(dict(zip(lines[0], lines[1]))["RcvbufErrors"])


def run_case(
    daemon: Daemon, client_binary: Path, pcap: Path, case: Case, profile: Optional[Profiling] = None
) -> Result:
    result = Result(case)
    profiler: Optional[Profiler] = None
    loops = case.packets // DISTINCT_PACKETS
    clients: list[Client] = []
    summaries: list[dict[str, object]] = []
    try:
        for _ in range(case.clients):
            clients.append(
                Client(
                    client_binary,
                    daemon.port,
                    case.channel,
                    case.packets,
                    max_seconds=30 + 3 * case.packets / case.rate,
                )  # fmt: skip
            )
        for client in clients:
            client.read_line(timeout=30)  # {"ready": true}: the daemon is capturing
        if profile is not None:
            result.profile = str(
                profile.directory / f"{case.daemon}-{case.channel}-{case.size}B-{case.rate}pps.txt"
            )
            profiler = Profiler(profile.py_spy, daemon.pid, Path(result.profile), profile.native)
        time.sleep(SETTLE_SECONDS)
        rx_before, rcvbuf_before = wire_rx_packets(), udp_rcvbuf_errors()
        usage_before = tree_usage(daemon.pid)
        busy_before, wall_before = machine_busy_seconds(), time.monotonic()
        replayed = replay(pcap, case.rate, loops)
        for client in clients:
            client.replay_done()
        # The clients have drained; the sessions are still open.
        for client in clients:
            summaries.append(client.read_line(timeout=30 + 2 * case.packets / case.rate))
        usage_after = tree_usage(daemon.pid)
        busy = machine_busy_seconds() - busy_before
        result.machine_busy_pct = 100.0 * busy / (time.monotonic() - wall_before) / (os.cpu_count() or 1)
        result.client_cpu_seconds = sum(usage(client.process.pid).cpu for client in clients)
        result.arrived = wire_rx_packets() - rx_before
        result.udp_rcvbuf_errors = udp_rcvbuf_errors() - rcvbuf_before
    finally:
        if profiler is not None:
            profiler.stop()
        for client in clients:
            client.close()

    result.sent, result.failed = replayed.sent, replayed.failed
    result.replay_seconds, result.replay_pps = replayed.seconds, replayed.pps
    result.per_client_received = [int(summary["packets"]) for summary in summaries]  # type: ignore[call-overload]
    result.received = sum(result.per_client_received)
    result.client_stats = summaries[0].get("stats", {})  # type: ignore[assignment]
    if case.clients > 1:
        drops = [summary.get("stats", {}).get("ps_drop", 0) for summary in summaries]  # type: ignore[attr-defined,union-attr]
        result.client_stats = dict(result.client_stats, ps_drop=sum(drops))
    if case.channel == "udpstr":
        result.lost_in_transit = sum(int(summary.get("lost_packets", 0)) for summary in summaries)  # type: ignore[call-overload]
    expected = result.sent * case.clients
    result.loss_pct = 100.0 * (expected - result.received) / expected if expected else 0.0
    used = used_between(usage_before, usage_after)
    result.daemon_cpu_seconds = used.cpu
    result.daemon_user_seconds, result.daemon_system_seconds = used.user, used.system
    result.daemon_minor_faults = used.minor_faults
    result.daemon_processes = len(usage_before.keys() & usage_after.keys())
    if result.received:
        result.cpu_us_per_packet = result.daemon_cpu_seconds * 1e6 / result.received
    if replayed.seconds:
        result.cpu_pct = 100.0 * result.daemon_cpu_seconds / replayed.seconds
    return result


# --- the report ----------------------------------------------------------------------


TABLE_COLUMNS: tuple[tuple[str, int, Callable[[Result], object]], ...] = (
    # heading, width, cell(result)
    ("daemon", -9, lambda r: r.case.daemon),
    ("chan", -6, lambda r: r.case.channel),
    ("cl", 2, lambda r: r.case.clients),
    ("size", 5, lambda r: r.case.size),
    ("rate", 7, lambda r: r.case.rate),
    ("sent", 8, lambda r: r.sent),
    ("arrived", 8, lambda r: r.arrived),
    ("received", 8, lambda r: r.received),
    ("loss %", 7, lambda r: f"{r.loss_pct:.2f}"),
    ("CPU µs/pkt", 10, lambda r: "-" if r.cpu_us_per_packet is None else f"{r.cpu_us_per_packet:.2f}"),
    ("CPU %", 6, lambda r: f"{r.cpu_pct:.1f}"),
    ("sys %", 5, lambda r: "-" if r.system_share_pct is None else f"{r.system_share_pct:.0f}"),
    ("krnl drop", 9, lambda r: r.client_stats.get("ps_drop", "-")),
    ("rcvbuf drop", 11, lambda r: r.udp_rcvbuf_errors if r.case.channel != "tcp" else "-"),
    ("seq gaps", 8, lambda r: "-" if r.lost_in_transit is None else r.lost_in_transit),
)


def median_runs(results: list[Result]) -> list[Result]:
    """Per case, in first-run order, the run with the median CPU µs/pkt (errors sort last)."""
    runs: dict[Case, list[Result]] = {}
    for r in results:
        runs.setdefault(r.case, []).append(r)
    chosen = []
    for case_runs in runs.values():
        ordered = sorted(case_runs, key=lambda r: (r.error is not None, r.cpu_us_per_packet or 0.0))
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def format_table(results: list[Result]) -> str:
    """One line per case; a negative width means left-aligned."""

    def cell(text: object, width: int) -> str:
        return f"{text!s:<{-width}}" if width < 0 else f"{text!s:>{width}}"

    head = " ".join(cell(title, width) for title, width, _ in TABLE_COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error:
            lines.append(
                " ".join(cell(get(r), width) for _, width, get in TABLE_COLUMNS[:5]) + f" ERROR: {r.error}"
            )
        else:
            lines.append(" ".join(cell(get(r), width) for _, width, get in TABLE_COLUMNS))
    return "\n".join(lines)


def format_ratios(results: list[Result]) -> str:
    """rpcapsvc's CPU per packet over the other daemons', case by case, from the same run."""
    by_case = {(r.case.daemon, r.case.channel, r.case.size, r.case.rate, r.case.clients): r for r in results}
    lines = ["CPU µs/pkt side by side (rpcapsvc ÷ other):"]
    for (daemon, channel, size, rate, clients), ours in by_case.items():
        if not daemon.startswith("rpcapsvc") or ours.cpu_us_per_packet is None:
            continue
        for other in ("libpcap", "extrahop"):
            theirs = by_case.get((other, channel, size, rate, clients))
            if theirs is None or not theirs.cpu_us_per_packet:
                continue
            lines.append(
                f"  {channel:6} x{clients} {size:5} B {rate:>7} pps: {daemon} {ours.cpu_us_per_packet:.2f} "
                f"{other} {theirs.cpu_us_per_packet:.2f} ratio {ours.cpu_us_per_packet / theirs.cpu_us_per_packet:.2f}"
                f"  (loss {ours.loss_pct:.2f} % / {theirs.loss_pct:.2f} %)"
            )
    return "\n".join(lines)


def format_max_rates(results: list[Result], repeat: int) -> str:
    """Per daemon and series, the highest rate forwarded with at most MAX_LOSS_PCT lost (median over runs)."""
    best: dict[tuple[str, str, int, int], dict[int, int]] = {}
    for r in results:
        key = (r.case.daemon, r.case.channel, r.case.size, r.case.clients)
        per_run = best.setdefault(key, {})
        per_run.setdefault(r.repetition, 0)
        if not r.error and r.loss_pct <= MAX_LOSS_PCT:
            per_run[r.repetition] = max(per_run[r.repetition], r.case.rate)
    lines = [f"Highest rate with loss <= {MAX_LOSS_PCT} % (median of {repeat} run(s); 0: none of the rates):"]
    for (daemon, channel, size, clients), per_run in best.items():
        rates = sorted(per_run.values())
        median = rates[(len(rates) - 1) // 2]
        lines.append(f"  {daemon:9} {channel:6} x{clients} {size:5} B: {median:>7} pps  (runs: {rates})")
    return "\n".join(lines)


def source_description() -> dict[str, object]:
    """The commit measured, and whether rpcapsvc had uncommitted changes."""
    commit = run("git", "-C", str(REPO), "rev-parse", "HEAD", check=False).stdout.strip()
    dirty = run("git", "-C", str(REPO), "status", "--porcelain", "--", "rpcapsvc", check=False).stdout
    return {"commit": commit, "rpcapsvc_uncommitted_changes": bool(dirty.strip())}


def tool_version(*cmd: str, line: int = 0) -> str:
    """One line of what C{cmd} prints about itself (stdout and stderr)."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[line].strip() if len(lines) > line else ""


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def machine_description(peers: Path) -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "tcpreplay": tool_version("tcpreplay", "-V"),
        "libpcap_rpcapd": tool_version(str(peers / "bin" / "rpcapd"), "-h", line=1),
    }


# --- main ----------------------------------------------------------------------------


def packets_for(rate: int, seconds: float) -> int:
    wanted = max(DISTINCT_PACKETS, int(rate * seconds))
    return -(-wanted // DISTINCT_PACKETS) * DISTINCT_PACKETS


def cases(args: argparse.Namespace, daemon: str) -> Iterator[Case]:
    for channel in args.channel:
        if channel not in DAEMON_CHANNELS[daemon]:
            continue
        for clients in args.clients:
            for size in args.size:
                for rate in args.rate:
                    yield Case(daemon, channel, size, rate, packets_for(rate, args.seconds), clients)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rate", type=parse_count, action="append", help="packets/s (repeatable; 10k, 50k, 100k)"
    )
    parser.add_argument(
        "--size", type=int, action="append", help="frame size in bytes (repeatable; 64, 1000)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="replay time per case (default 2)")
    parser.add_argument(
        "--channel", choices=CHANNELS, action="append", help="data channel (repeatable; both)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run everything N times; the table shows each case's median run"
    )
    parser.add_argument(
        "--daemon",
        choices=DAEMONS,
        action="append",
        help="daemon (repeatable; libpcap and rpcapsvc; rpcapsvc-nogso, rpcapsvc with --no-udp-gso, runs UDP "
        "cases only; extrahop, ExtraHop's fork, udpstr cases only)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        action="append",
        help="clients capturing at once, each getting every packet (repeatable; 1)",
    )
    parser.add_argument(
        "--no-udp-gso",
        action="store_true",
        help="rpcapsvc with --no-udp-gso (each UDP datagram sent on its own)",
    )
    parser.add_argument(
        "--capture-workers",
        action="store_true",
        help="rpcapsvc with --capture-workers (a process per capture; their CPU is counted with the daemon's)",
    )
    parser.add_argument(
        "--rpcapsvc-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an option for rpcapsvc's twistd rpcapd (repeatable; --rpcapsvc-arg=--buffer-size=16777216)",
    )
    parser.add_argument(
        "--max-rate",
        action="store_true",
        help=f"instead of the matrix: per daemon, channel, size and client count, go up the --rate "
        f"ladder until a rate loses more than {MAX_LOSS_PCT} %%; report the highest that did not",
    )
    parser.add_argument("--peers", type=Path, default=REPO / ".peers", help="reference peers prefix (.peers)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/<timestamp>.json)")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile rpcapsvc with py-spy in every case (slows it down: its figures are then not comparable)",
    )
    parser.add_argument("--native", action="store_true", help="with --py-spy: C frames too (py-spy --native)")
    args = parser.parse_args(argv)
    args.rate = args.rate or [10_000, 50_000, 100_000]
    args.size = args.size or [64, 1000]
    args.channel = args.channel or list(DEFAULT_CHANNELS)
    args.daemon = args.daemon or list(DEFAULT_DAEMONS)
    args.clients = args.clients or [1]
    if args.max_rate:
        args.rate = sorted(set(args.rate))
    return args


def check_prerequisites(peers: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes a network namespace and captures")
    for tool in ("ip", "tcpreplay", os.environ.get("CC", "cc")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    if not (peers / "bin" / "rpcapd").exists():
        raise SystemExit(f"no rpcapd in {peers}/bin: run `make peers` first")


def run_daemon(
    daemon: Daemon,
    daemon_cases: list[Case],
    client_binary: Path,
    pcaps: dict[int, Path],
    profile: Optional[Profiling],
    max_rate: bool = False,
) -> list[Result]:
    """
    Run C{daemon_cases} against one daemon, (re)starting it as needed; stop it
    at the end.  With C{max_rate}, a series (channel, size, clients) stops at
    its first rate that loses more than MAX_LOSS_PCT.
    """
    results: list[Result] = []
    given_up: set[tuple[str, int, int]] = set()
    try:
        for case in daemon_cases:
            series = (case.channel, case.size, case.clients)
            if series in given_up:
                continue
            log(f"{daemon.name} {case.channel} x{case.clients} {case.size}B {case.rate} pps x {case.packets}")
            try:
                if daemon.configure(case.channel) and daemon.alive():
                    daemon.stop()
                if not daemon.alive():
                    if daemon.process is not None:
                        log(f"{daemon.name} is gone (exit status {daemon.process.returncode}): restarting it")
                    daemon.stop()
                    daemon.start()
                result = run_case(daemon, client_binary, pcaps[case.size], case, profile)
            except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as e:
                result = Result(case, error=str(e).strip().splitlines()[-1])
            results.append(result)
            if max_rate and (result.error or result.loss_pct > MAX_LOSS_PCT):
                given_up.add(series)
    finally:
        daemon.stop()
    if any(r.error for r in results) and daemon.logfile.exists():
        last_lines = daemon.logfile.read_text(errors="replace").splitlines()[-20:]
        log(f"{daemon.name} log (last lines):\n" + "\n".join(last_lines))
    return results


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: through the finally blocks that clean up."""
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    check_prerequisites(args.peers)
    started = time.strftime("%Y%m%dT%H%M%S")
    output = args.output or BENCH_DIR / "results" / f"{started}.json"
    signal.signal(signal.SIGTERM, interrupt)
    profiling: Optional[Profiling] = None
    if args.py_spy:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise SystemExit("py-spy not found: pip install py-spy")
        profiling = Profiling(py_spy, output.with_suffix(""), args.native)
        profiling.directory.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="rpcbench-") as tmp:
        workdir = Path(tmp)
        client_binary = build_client(args.peers, workdir)
        pcaps = {size: workdir / f"udp-{size}.pcap" for size in args.size}
        for size, pcap in pcaps.items():
            write_pcap(pcap, DISTINCT_PACKETS, size)
        try:
            create_wire()
            log(f"wire up: {NETNS}/{NS_IFACE} -> {WIRE_IFACE}")
            # Repetitions go round both daemons, each freshly started, so slow
            # drift on the machine weighs on both alike.
            for repetition in range(1, args.repeat + 1):
                if args.repeat > 1:
                    log(f"repetition {repetition} of {args.repeat}")
                for name in args.daemon:
                    daemon: Daemon
                    if name == "libpcap":
                        daemon = LibpcapRpcapd(free_tcp_port(), workdir, args.peers)
                    elif name == "extrahop":
                        daemon = ExtrahopRpcapd(free_tcp_port(), workdir, args.peers)
                    else:
                        daemon = Rpcapsvc(free_tcp_port(), workdir)
                        daemon.name = name  # rpcapsvc-nogso: the same with --no-udp-gso, in the same run
                        daemon.gso = not (args.no_udp_gso or name == "rpcapsvc-nogso")
                        daemon.workers = args.capture_workers
                        daemon.extra = list(args.rpcapsvc_arg)
                    profile = profiling if name.startswith("rpcapsvc") else None
                    daemon_cases = list(cases(args, name))
                    if not daemon_cases:
                        continue
                    done = run_daemon(daemon, daemon_cases, client_binary, pcaps, profile, args.max_rate)
                    for result in done:
                        result.repetition = repetition
                        results.append(result)
        except KeyboardInterrupt:
            log("interrupted")
            interrupted = True
        finally:
            remove_wire()

    if args.repeat > 1:
        print(f"Each line: the median of {args.repeat} runs by CPU µs/pkt (all runs are in the JSON).")
    print(format_table(median_runs(results)))
    print()
    print(format_ratios(median_runs(results)))
    if args.max_rate:
        print()
        print(format_max_rates(results, args.repeat))
    for result in results:
        if result.profile and Path(result.profile).exists():
            print()
            print(profile_summary(Path(result.profile)))
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started": started,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(args.peers),
        "source": source_description(),
        "settings": {
            "seconds": args.seconds,
            "clients": args.clients,
            "max_rate": args.max_rate,
            "no_udp_gso": args.no_udp_gso,
            "capture_workers": args.capture_workers,
            "rpcapsvc_args": args.rpcapsvc_arg,
            "repeat": args.repeat,
            "filter": CAPTURE_FILTER,
            "client_timeout_ms": CLIENT_TIMEOUT_MS,
            "client_idle_ms": CLIENT_IDLE_MS,
        },
        "results": [asdict(r) for r in results],
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results: {output}")
    if interrupted:
        return 130
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
