"""
C{rpcap-dump}: capture from a remote interface into a pcapng or pcap file,
with options that feel like tcpdump's and dumpcap's.

    rpcap-dump -D rpcap://server/                     # list interfaces
    rpcap-dump -w out.pcapng -c 100 rpcap://server/eth0 'tcp port 80'
    rpcap-dump -w - rpcap://server/eth0 | wireshark -k -i -
    rpcap-dump --active 2003 --udp -w fleet.pcapng     # wait for a daemon to connect
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from typing import Any, BinaryIO, Optional
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import IStreamClientEndpoint

from ..protocol.bpf import MAXIMUM_SNAPLEN
from ..protocol.datachannel import CapturedPacket
from ..protocol.wire import InterfaceFlags, RemoteError, RpcapError
from .client import (
    CaptureSettings,
    RemoteCapture,
    RpcapClientFactory,
    RpcapClientProtocol,
    start_capture,
)
from .files import CaptureFileWriter

DEFAULT_PORT = 2002


class UsageError(Exception):
    pass


class DataChannelError(Exception):
    """The capture's data channel could not be read: exit status 3."""


EXIT_DATA_CHANNEL = 3


@attrs.frozen
class Source:
    scheme: str
    host: str
    port: int
    interface: str

    @property
    def tls(self) -> bool:
        return self.scheme == "rpcaps"

    def url(self, interface: Optional[str] = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{interface if interface is not None else self.interface}"


def parse_source(text: str) -> Source:
    """C{rpcap[s]://HOST[:PORT]/IFACE}, IFACE optional (for -D)."""
    parts = urlsplit(text)
    if parts.scheme not in ("rpcap", "rpcaps") or not parts.hostname:
        raise UsageError(f"{text!r} is not an rpcap://HOST[:PORT]/INTERFACE source")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UsageError(f"bad port in {text!r}") from None
    return Source(parts.scheme, parts.hostname, port, parts.path.lstrip("/"))


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid packet count {text!r}")
    return int(text)


def _snaplen(text: str) -> int:
    # 0 as for tcpdump -s 0: a BPF program returning 0 would drop every packet.
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid snaplen {text!r}")
    return int(text) or MAXIMUM_SNAPLEN


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rpcap-dump",
        description="Capture from a remote interface through an RPCAP daemon.",
        epilog="Pipe into Wireshark: rpcap-dump -w - rpcap://HOST/IFACE | wireshark -k -i -",
    )
    p.add_argument("source", nargs="?", help="rpcap://HOST[:PORT]/INTERFACE (rpcaps:// for TLS)")
    p.add_argument("expression", nargs="*", help="capture filter, as for tcpdump")
    p.add_argument("-D", "--list-interfaces", action="store_true", help="list the remote interfaces and exit")
    p.add_argument(
        "-w",
        "--write",
        metavar="FILE",
        help="write packets to FILE (pcapng; pcap if it ends in .pcap); - for stdout",
    )
    p.add_argument("-c", "--count", type=_count, help="stop after COUNT packets")
    p.add_argument("-f", "--filter", help="capture filter (same as the trailing expression)")
    p.add_argument(
        "-s",
        "--snaplen",
        type=_snaplen,
        default=MAXIMUM_SNAPLEN,
        help="bytes to keep of each packet (0: 262144)",
    )
    p.add_argument(
        "-p", "--no-promisc", action="store_true", help="do not put the interface in promiscuous mode"
    )
    p.add_argument(
        "-i",
        "--interface",
        help="interface to capture (default: the one in the URL, or in --active mode the daemon's first)",
    )
    p.add_argument("--udp", action="store_true", help="receive packets over UDP (classic or udpstr)")
    p.add_argument(
        "--active", metavar="PORT", help="wait for a daemon to connect on PORT (or a server endpoint string)"
    )
    p.add_argument(
        "--auth",
        metavar="USER",
        help="log in as USER; password from --password-file, $RPCAP_PASSWORD or a prompt",
    )
    p.add_argument("--password-file", help="read the password from this file")
    p.add_argument(
        "--ca", metavar="PEM", help="for rpcaps://: verify the daemon's certificate against this CA"
    )
    p.add_argument("-G", "--duration", type=float, help="stop after this many seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="no live status line")
    return p


def password_for(args: argparse.Namespace) -> Optional[bytes]:
    if not args.auth:
        return None
    if args.password_file:
        with open(args.password_file, "rb") as f:
            return f.read().rstrip(b"\r\n")
    env = os.environ.get("RPCAP_PASSWORD")
    if env is not None:
        return env.encode()
    return getpass.getpass(f"Password for {args.auth}: ").encode()


def client_endpoint(reactor: Any, source: Source, ca: Optional[str]) -> IStreamClientEndpoint:
    endpoint = HostnameEndpoint(reactor, source.host, source.port, timeout=30)
    if not source.tls:
        return endpoint
    from twisted.internet import ssl
    from twisted.internet.endpoints import wrapClientTLS

    if ca:
        with open(ca, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        options = ssl.optionsForClientTLS(source.host, trustRoot=trust)
    else:
        options = ssl.optionsForClientTLS(source.host)
    return wrapClientTLS(options, endpoint)


class Dump:
    """One rpcap-dump run: a capture into a writer, with counters and a status line."""

    def __init__(
        self,
        reactor: Any,
        args: argparse.Namespace,
        out: Optional[CaptureFileWriter],
        status: Optional[BinaryIO],
    ) -> None:
        self.reactor = reactor
        self.args = args
        self.out = out
        self.status = status
        self.packets = 0
        self.bytes = 0
        self.drops = 0
        self.started = time.monotonic()
        self.capture: Optional[RemoteCapture] = None
        self.interface_id = 0
        self.done: defer.Deferred[None] = defer.Deferred()

    def on_packets(self, packets: list[CapturedPacket]) -> None:
        if self.done.called:
            return
        count = self.args.count
        if count is not None and self.packets + len(packets) >= count:
            packets = packets[: count - self.packets]
        self.packets += len(packets)
        self.bytes += sum(p.caplen for p in packets)
        if self.out is not None:
            self.out.write_packets(self.interface_id, packets)
        elif not self.args.quiet:
            for p in packets:
                stamp = time.strftime("%H:%M:%S", time.localtime(p.ts_sec))
                sys.stdout.write(f"{stamp}.{p.ts_usec:06d} length {p.length} captured {p.caplen}\n")
            sys.stdout.flush()
        if count is not None and self.packets >= count:
            self.stop()

    def stop(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def show_status(self) -> None:
        if self.status is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        loss = self.capture.loss.lost_packets if self.capture else 0
        line = (
            f"\r{self.packets} packets, {self.packets / elapsed:.0f}/s, {self.bytes / 1e6:.1f} MB, "
            f"{self.drops + loss} dropped "
        )
        self.status.write(line.encode())
        self.status.flush()

    async def refresh_drops(self) -> None:
        if self.capture is None:
            return
        try:
            stats = await self.capture.stats()
        except Exception:
            return
        self.drops = stats.dropped


async def run(reactor: Any, args: argparse.Namespace) -> int:
    if args.active and args.source and urlsplit(args.source).scheme not in ("rpcap", "rpcaps"):
        # With --active there need be no source: the first word is the filter's.
        args.expression = [args.source, *args.expression]
        args.source = None
    source: Optional[Source] = parse_source(args.source) if args.source else None
    password = password_for(args)
    user = args.auth.encode() if args.auth else None

    if args.active:
        description = args.active if ":" in args.active else f"tcp:{args.active}"
        arrived: defer.Deferred[RpcapClientProtocol] = defer.Deferred()

        def connected(p: RpcapClientProtocol) -> None:
            if not arrived.called:
                arrived.callback(p)
            else:
                p.transport.loseConnection()  # type: ignore[union-attr]

        listening = await serverFromString(reactor, description).listen(RpcapClientFactory(connected))
        sys.stderr.write(f"rpcap-dump: waiting for a daemon on {description}\n")
        client = await arrived
        await listening.stopListening()
        sys.stderr.write(f"rpcap-dump: daemon connected from {client.peer_host}\n")
        url_base = Source("rpcap", client.peer_host, 0, "")
    else:
        if source is None:
            raise UsageError("give an rpcap://HOST[:PORT]/INTERFACE source (or --active PORT)")
        client = await connectProtocol(client_endpoint(reactor, source, args.ca), RpcapClientProtocol())
        await client.when_connected
        url_base = source

    await client.authenticate(user, password or b"")
    interfaces = await client.find_interfaces()
    if args.list_interfaces:
        for n, iface in enumerate(interfaces, 1):
            flags = InterfaceFlags(iface.flags)
            state = "Up" if InterfaceFlags.UP in flags else "Down"
            desc = f" ({iface.description})" if iface.description else ""
            addrs = ", ".join(str(a.address) for a in iface.addresses)
            sys.stdout.write(f"{n}.{iface.name}{desc} [{state}]{' ' + addrs if addrs else ''}\n")
        client.close()
        return 0

    interface = args.interface or (source.interface if source else "")
    if not interface:
        if not interfaces:
            raise UsageError("the daemon lists no interfaces")
        interface = interfaces[0].name  # a preselected interface is listed first
    expression = args.filter or " ".join(args.expression)
    settings = CaptureSettings(
        interface, snaplen=args.snaplen, promiscuous=not args.no_promisc, filter=expression, udp=args.udp
    )

    out: Optional[CaptureFileWriter] = None
    if args.write:
        fmt = "pcap" if args.write.endswith(".pcap") else "pcapng"
        if args.write == "-":
            out = CaptureFileWriter(sys.stdout.buffer, fmt, close_stream=False)
        else:
            out = CaptureFileWriter(open(args.write, "wb"), fmt)
    status = sys.stderr.buffer if (not args.quiet and sys.stderr.isatty()) else None
    dump = Dump(reactor, args, out, status)

    capture = await start_capture(reactor, client, settings, dump.on_packets, active=bool(args.active))
    dump.capture = capture
    if out is not None:
        dump.interface_id = out.add_interface(
            interface,
            capture.linktype,
            args.snaplen,
            url_base.url(interface) if url_base.port else f"rpcap://{client.peer_host}/{interface}",
        )
    sys.stderr.write(f"rpcap-dump: capturing on {interface} (link type {capture.linktype})\n")

    ticker = task.LoopingCall(dump.show_status)
    ticker.clock = reactor
    if status is not None:
        ticker.start(0.5)
    poller = task.LoopingCall(lambda: defer.ensureDeferred(dump.refresh_drops()))
    poller.clock = reactor
    poller.start(2.0, now=False)
    client.disconnected.addCallback(lambda _: dump.stop())
    if capture.data_lost is not None:
        capture.data_lost.addCallback(lambda _: dump.stop())  # the daemon ended the capture
    if args.duration:
        reactor.callLater(args.duration, dump.stop)

    finished: list[bool] = []

    async def finish() -> None:
        if finished:
            return
        finished.append(True)
        stats = await capture.stop()
        if ticker.running:
            ticker.stop()
        if poller.running:
            poller.stop()
        dump.show_status()
        if status is not None:
            status.write(b"\n")
        drops = dump.drops
        if stats is not None:
            drops = stats.dropped
            if out is not None:
                out.set_stats(dump.interface_id, stats.ifrecv, stats.krnldrop, stats.ifdrop)
        if out is not None:
            out.close()
        loss = capture.loss
        sys.stderr.write(
            f"rpcap-dump: {dump.packets} packets captured, {drops} dropped by the daemon's kernel"
            + (f", {loss.lost_packets} lost in transit" if args.udp else "")
            + "\n"
        )
        client.close()

    shutdown = reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(finish()))
    await dump.done
    if not finished:  # else shutdown (Ctrl-C) is finishing, and its trigger is spent
        reactor.removeSystemEventTrigger(shutdown)
    await finish()
    if capture.data_error is not None:
        raise DataChannelError(f"the data channel could not be read: {capture.data_error}")
    if capture.nothing_decoded:
        raise DataChannelError("the data channel carried data, but not one packet could be decoded from it")
    return 0


def main(argv: Optional[list[str]] = None) -> None:
    # Options may follow the source, as tcpdump takes them after its expression.
    args = build_parser().parse_intermixed_args(argv)

    async def _main(reactor: Any) -> None:
        try:
            code = await run(reactor, args)
        except (UsageError, ValueError) as e:
            sys.stderr.write(f"rpcap-dump: {e}\n")
            code = 2
        except DataChannelError as e:
            sys.stderr.write(f"rpcap-dump: {e}\n")
            code = EXIT_DATA_CHANNEL
        except RemoteError as e:
            sys.stderr.write(f"rpcap-dump: the daemon refused: {e.text} (error {e.code})\n")
            code = 1
        except (RpcapError, OSError) as e:
            sys.stderr.write(f"rpcap-dump: {e}\n")
            code = 1
        except Exception as e:
            from OpenSSL.SSL import Error as TLSError
            from service_identity import VerificationError
            from twisted.internet.error import ConnectError

            if isinstance(e, ConnectError):
                sys.stderr.write(f"rpcap-dump: cannot connect: {e}\n")
                code = 1
            elif isinstance(e, (TLSError, VerificationError)):
                # rpcaps://: most often a certificate that --ca (or the system's CAs) did not vouch for.
                sys.stderr.write(f"rpcap-dump: TLS with the daemon failed: {e}\n")
                code = 1
            else:
                raise
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(_main(reactor)))


if __name__ == "__main__":
    main()
