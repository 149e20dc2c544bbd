"""
A scripted fake RPCAP daemon that misbehaves on purpose, for testing that
the collector (C{rpcap-dump}, C{twistd rpcapcollect}, the extcap) holds
against a hostile or broken daemon.

Run it as a subprocess::

    python -m rpcapsvc.test._hostile_daemon --port 0 --behaviour NAME
    python -m rpcapsvc.test._hostile_daemon --behaviour NAME --active 127.0.0.1:2003

It prints one line, C{listening PORT} (passive) or C{connecting HOST:PORT}
(active), on standard output once it is ready, then serves every
connection (passive) or dials once (active) with the behaviour's script.
L{HostileDaemon} in this module starts it and waits for that line;
L{run_measured} runs a collector subprocess and reports its exit status,
peak RSS and wall time.

It is plain blocking sockets and threads, no reactor, so a behaviour reads
as the script it is.

How to add a behaviour
======================

Write a function taking a L{Session} and register it::

    @behaviour("never-answers-stats")
    def never_answers_stats(session: Session) -> None:
        \"\"\"Captures normally, then ignores stats and endcap.\"\"\"
        data = session.serve_until_capture()   # auth, findalldevs, open, startcap answered
        session.send_packets(data, genuine_packets(3))
        session.serve_rest(ignore={MessageType.STATS_REQ, MessageType.ENDCAP_REQ})

The function runs once per control connection, in its own thread; the
session closes when it returns.  Useful pieces:

 - L{Session.read} a request (C{None} once the peer hangs up), L{Session.send}
   a L{Message} or raw bytes, L{Session.answer} the standard reply to a
   request;
 - L{Session.serve_until_capture} plays a well-behaved daemon up to and
   including startcap and returns the L{DataChannel} the request asked for
   (classic UDP, TCP opened by either side), with C{linktype=} and
   C{interfaces=} to lie about; its C{on_request} may return bytes to send
   instead of the standard reply;
 - L{Session.send_packets} sends classic type-7 packets on it, L{DataChannel.send}
   raw bytes (one datagram over UDP), L{Session.udp_socket} a UDP socket bound
   elsewhere (another port, C{127.0.0.2}) to inject from;
 - L{Session.serve_rest} answers stats, endcap, updatefilter until the peer
   closes, with a deadline.

C{genuine_packets}, L{udpstr_datagrams} and L{packet_record} build what goes
on the data channel.  Genuine packets carry C{GENUINE} in their UDP payload and
forged ones C{FORGED}, so a test reads the capture file with tshark and
checks that only C{GENUINE} ones are in it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Callable, Iterable, Optional, Sequence, Union

import attrs

from rpcapsvc.protocol.datachannel import PKTHDR, PacketBatch
from rpcapsvc.protocol.framing import ControlStreamParser, Received
from rpcapsvc.protocol.udpstr import UdpStrFramer
from rpcapsvc.protocol.wire import (
    AuthReply,
    EndCaptureReply,
    ErrorReply,
    FindAllInterfacesReply,
    InterfaceInfo,
    Message,
    MessageType,
    OpenReply,
    SetSamplingReply,
    StartCapFlags,
    StartCaptureReply,
    StartCaptureRequest,
    StatsReply,
    UpdateFilterReply,
    frame,
)
from rpcapsvc.test._e2e import stop_process
from rpcapsvc.test._fixtures import internet_checksum

LINKTYPE_ETHERNET = 1
GENUINE = b"GENUINE"
FORGED = b"FORGED"
"""Markers in the UDP payload of what the fake sends: a test keeps only C{GENUINE} ones."""


# --- what goes on the wire ---------------------------------------------------------


def ethernet_udp_frame(payload: bytes, src_port: int = 40000, dst_port: int = 40001) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying C{payload}, 10.0.0.1 to 10.0.0.2: tshark shows C{udp.payload}."""
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    head = head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:]
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + head + udp


def marked_frame(marker: bytes, number: int) -> bytes:
    """A frame whose UDP payload is C{MARKER-NNNN}."""
    return ethernet_udp_frame(marker + b"-%04d" % number)


def genuine_packets(count: int, first: int = 1) -> list[bytes]:
    """C{count} frames marked C{GENUINE-0001}..."""
    return [marked_frame(GENUINE, n) for n in range(first, first + count)]


def packet_record(
    data: bytes,
    npkt: int,
    caplen: Optional[int] = None,
    length: Optional[int] = None,
    ts: tuple[int, int] = (1_700_000_000, 0),
) -> bytes:
    """C{rpcap_pkthdr} + C{data}; C{caplen}/C{length} default to C{len(data)} and may lie."""
    caplen = len(data) if caplen is None else caplen
    length = len(data) if length is None else length
    return PKTHDR.pack(ts[0], ts[1], caplen & 0xFFFFFFFF, length & 0xFFFFFFFF, npkt & 0xFFFFFFFF) + data


def packet_message(
    data: bytes, npkt: int, caplen: Optional[int] = None, length: Optional[int] = None
) -> bytes:
    """A classic type-7 message: the RPCAP header, then L{packet_record}."""
    return frame(MessageType.PACKET, packet_record(data, npkt, caplen, length))


def udpstr_datagrams(
    frames: Sequence[bytes], mtu: int = 200, first_npkt: int = 1, first_seqno: int = 0
) -> list[bytes]:
    """C{frames} framed as udpstr datagrams of at most C{mtu} bytes, the last one flushed."""
    framer = UdpStrFramer(mtu)
    framer._seqno = first_seqno  # a fake may start anywhere
    batch = PacketBatch.from_packets([(1_700_000_000, i, f) for i, f in enumerate(frames)])
    out = framer.pack_batch(batch, 262144, first_npkt)
    last = framer.flush()
    return out + ([last] if last is not None else [])


# --- the session -------------------------------------------------------------------


@attrs.define
class Options:
    """How the fake was started."""

    behaviour: str
    udp_from: list[tuple[str, int]] = attrs.Factory(list)
    """Where injected UDP datagrams come from (C{--udp-from}); behaviours choose their defaults."""
    timeout: float = 10.0
    """How long any one wait lasts, so a fake never outlives its test by much."""


@attrs.define(eq=False)
class DataChannel:
    """The data channel the startcap asked for: C{kind} is C{"udp"} or C{"tcp"}."""

    kind: str
    sock: socket.socket
    target: Optional[tuple[str, int]] = None
    """Where UDP datagrams go."""

    def send(self, data: bytes) -> None:
        """Raw bytes: one datagram over UDP, part of the stream over TCP."""
        try:
            if self.kind == "udp":
                assert self.target is not None
                self.sock.sendto(data, self.target)
            else:
                self.sock.sendall(data)
        except OSError:
            pass  # the collector went away: the script goes on to its end

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


Reply = Union[Message, bytes, None]
RequestHook = Callable[["Session", Received], Reply]


class Session:
    """One control connection, as the daemon's side of it."""

    def __init__(self, control: socket.socket, options: Options, active: bool) -> None:
        self.control = control
        self.options = options
        self.active = active
        self.peer_host: str = control.getpeername()[0]
        self.local_host: str = control.getsockname()[0]
        self.parser = ControlStreamParser(16 * 1024 * 1024)
        self._pending: list[Received] = []
        self.data: Optional[DataChannel] = None
        self.startcap: Optional[StartCaptureRequest] = None
        self.sent_packets = 0
        control.settimeout(options.timeout)

    # control channel

    def send(self, message: Union[Message, bytes]) -> None:
        try:
            self.control.sendall(message if isinstance(message, bytes) else message.encode())
        except OSError:
            pass

    def read(self, timeout: Optional[float] = None) -> Optional[Received]:
        """The next request; C{None} once the peer has closed (or at the timeout)."""
        self.control.settimeout(self.options.timeout if timeout is None else timeout)
        while not self._pending:
            try:
                data = self.control.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self._pending.extend(self.parser.feed(data))
        return self._pending.pop(0)

    def answer(
        self, received: Received, linktype: int = LINKTYPE_ETHERNET, interfaces: Sequence[InterfaceInfo] = ()
    ) -> None:
        """The reply a well-behaved daemon gives (none to close)."""
        t = received.header.type
        if t == MessageType.AUTH_REQ:
            self.send(AuthReply())
        elif t == MessageType.FINDALLIF_REQ:
            self.send(FindAllInterfacesReply(tuple(interfaces) or (InterfaceInfo("eth0", "fake", 6),)))
        elif t == MessageType.OPEN_REQ:
            self.send(OpenReply(linktype))
        elif t == MessageType.STARTCAP_REQ:
            assert isinstance(received.message, StartCaptureRequest)
            self.start_capture(received.message)
        elif t == MessageType.UPDATEFILTER_REQ:
            self.send(UpdateFilterReply())
        elif t == MessageType.STATS_REQ:
            self.send(StatsReply(self.sent_packets, 0, 0, self.sent_packets))
        elif t == MessageType.ENDCAP_REQ:
            if self.data is not None:
                self.data.close()
            self.send(EndCaptureReply())
        elif t == MessageType.SETSAMPLING_REQ:
            self.send(SetSamplingReply())
        elif t != MessageType.CLOSE:
            self.send(ErrorReply(16, f"the fake has no answer to message type {t}"))

    def start_capture(self, request: StartCaptureRequest) -> None:
        """Open the data channel C{request} asks for, and answer it."""
        self.startcap = request
        flags = request.flag_set
        if flags & StartCapFlags.DGRAM:
            sock = socket.socket(
                socket.AF_INET6 if ":" in self.peer_host else socket.AF_INET, socket.SOCK_DGRAM
            )
            sock.bind((self.local_host, 0))
            self.data = DataChannel("udp", sock, (self.peer_host, request.portdata))
            self.send(StartCaptureReply(1 << 20, sock.getsockname()[1]))
        elif flags & StartCapFlags.SERVEROPEN or self.active:
            self.send(StartCaptureReply(1 << 20, 0))
            sock = socket.create_connection(
                (self.peer_host, request.portdata),
                timeout=self.options.timeout,
                source_address=(
                    self.local_host,
                    0,
                ),  # from the control connection's address, as a daemon does
            )
            self.data = DataChannel("tcp", sock)
        else:
            listener = socket.socket(socket.AF_INET6 if ":" in self.local_host else socket.AF_INET)
            listener.bind((self.local_host, 0))
            listener.listen(1)
            listener.settimeout(self.options.timeout)
            self.send(StartCaptureReply(1 << 20, listener.getsockname()[1]))
            try:
                sock, _ = listener.accept()
            finally:
                listener.close()
            self.data = DataChannel("tcp", sock)

    def serve_until_capture(
        self,
        linktype: int = LINKTYPE_ETHERNET,
        interfaces: Sequence[InterfaceInfo] = (),
        on_request: Optional[RequestHook] = None,
    ) -> DataChannel:
        """
        Answer as a good daemon until the capture has started; the data
        channel.  C{on_request} sees each request first: bytes or a message
        it returns are sent instead of the standard reply.

        @raise EOFError: the peer hung up first.
        """
        while self.data is None:
            received = self.read()
            if received is None:
                raise EOFError("the collector hung up before starting a capture")
            if on_request is not None:
                reply = on_request(self, received)
                if reply is not None:
                    self.send(reply)
                    continue
            self.answer(received, linktype, interfaces)
        return self.data

    def serve_rest(self, ignore: Iterable[int] = (), timeout: Optional[float] = None) -> None:
        """Answer requests (except those of the types in C{ignore}) until the peer closes or C{timeout} passes."""
        skip = set(ignore)
        deadline = time.monotonic() + (self.options.timeout if timeout is None else timeout)
        while (left := deadline - time.monotonic()) > 0:
            received = self.read(left)
            if received is None:
                return
            if received.header.type not in skip:
                self.answer(received)

    # data channel

    def send_packets(
        self,
        data: DataChannel,
        frames: Sequence[bytes],
        first_npkt: Optional[int] = None,
        pause: float = 0.002,
    ) -> None:
        """Classic type-7 packets, numbered on from the last one sent (or from C{first_npkt})."""
        npkt = self.sent_packets + 1 if first_npkt is None else first_npkt
        for f in frames:
            data.send(packet_message(f, npkt))
            npkt += 1
            if data.kind == "udp":
                time.sleep(pause)  # loopback drops a burst that outruns the reader
        self.sent_packets += len(frames)

    def udp_socket(self, host: str, port: int = 0) -> socket.socket:
        """A UDP socket bound to C{host:port}, to send datagrams the daemon did not."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        return sock

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        try:
            self.control.close()
        except OSError:
            pass


Behaviour = Callable[[Session], None]
BEHAVIOURS: dict[str, Behaviour] = {}
"""Every named behaviour; add one with L{behaviour}."""


def behaviour(name: str) -> Callable[[Behaviour], Behaviour]:
    """Register the decorated function as behaviour C{name}."""

    def register(function: Behaviour) -> Behaviour:
        if name in BEHAVIOURS:
            raise ValueError(f"behaviour {name!r} is registered twice")
        BEHAVIOURS[name] = function
        return function

    return register


# --- behaviours --------------------------------------------------------------------


@behaviour("genuine")
def genuine(session: Session) -> None:
    """A well-behaved daemon: five genuine packets, then stats and endcap answered."""
    data = session.serve_until_capture()
    session.send_packets(data, genuine_packets(5))
    session.serve_rest()


def _injectors(session: Session, defaults: Sequence[tuple[str, int]]) -> list[socket.socket]:
    return [session.udp_socket(host, port) for host, port in (session.options.udp_from or defaults)]


@behaviour("udp-inject")
def udp_inject(session: Session) -> None:
    """
    Over UDP: genuine packets from the daemon's data socket, interleaved with
    forged ones from another port of its address and from 127.0.0.2 (or the
    C{--udp-from} addresses) to the collector's data port.
    """
    data = session.serve_until_capture()
    assert data.kind == "udp" and data.target is not None
    injectors = _injectors(session, [(session.local_host, 0), ("127.0.0.2", 0)])
    forged = 0
    for n in range(1, 11):
        session.send_packets(data, [marked_frame(GENUINE, n)])
        for sock in injectors:
            forged += 1
            # Numbered as the next genuine one would be: a receiver that took it would lose that one.
            sock.sendto(packet_message(marked_frame(FORGED, forged), n + 1), data.target)
            time.sleep(0.002)
    session.serve_rest()


@behaviour("udp-inject-silent")
def udp_inject_silent(session: Session) -> None:
    """Over UDP: the daemon sends nothing; 20 forged packets come from 127.0.0.2 (or C{--udp-from})."""
    data = session.serve_until_capture()
    assert data.target is not None
    [sock] = _injectors(session, [("127.0.0.2", 0)])[:1]
    for n in range(1, 21):
        sock.sendto(packet_message(marked_frame(FORGED, n), n), data.target)
        time.sleep(0.002)
    session.serve_rest()


@behaviour("forged-seqno")
def forged_seqno(session: Session) -> None:
    """Classic framing: genuine 1-5, a packet numbered about 2^31 further, genuine 6-10."""
    data = session.serve_until_capture()
    session.send_packets(data, genuine_packets(5))
    data.send(packet_message(marked_frame(GENUINE, 99), 0x7FFFFFF0))
    session.send_packets(data, genuine_packets(5, first=6))
    session.serve_rest()


@behaviour("forged-udpstr")
def forged_udpstr(session: Session) -> None:
    """
    udpstr over UDP: 90 genuine packets in small datagrams, with one forged
    datagram 80 sequence numbers ahead after the tenth (from the daemon's own
    socket: what port filtering cannot stop).
    """
    data = session.serve_until_capture()
    datagrams = udpstr_datagrams(genuine_packets(90), mtu=200)
    forged = udpstr_datagrams([marked_frame(FORGED, 1)], mtu=200, first_npkt=5000, first_seqno=10 + 80)
    for i, datagram in enumerate(datagrams):
        data.send(datagram)
        if i == 10:
            data.send(forged[0])
        time.sleep(0.002)
    session.sent_packets = 90
    session.serve_rest()


@behaviour("bad-lengths")
def bad_lengths(session: Session) -> None:
    """
    Classic framing: six genuine packets between five records that lie
    about their lengths: caplen > the packet's length, caplen 4 GB, length
    0, caplen past the message's end, a message with plen 0.
    """
    data = session.serve_until_capture()
    genuine_frames = genuine_packets(6)
    forged = marked_frame(FORGED, 1)
    lies = [
        packet_message(forged, 2, caplen=len(forged), length=10),
        packet_message(forged, 3, caplen=0xFFFFFFFF),
        packet_message(forged, 4, length=0),
        frame(MessageType.PACKET, packet_record(forged, 5, caplen=len(forged) + 20)),
        frame(MessageType.PACKET),
    ]
    for n, genuine_frame in enumerate(genuine_frames, 1):
        data.send(packet_message(genuine_frame, n))
        if data.kind == "udp":
            time.sleep(0.002)
        if n <= len(lies):
            data.send(lies[n - 1])
            if data.kind == "udp":
                time.sleep(0.002)
    session.sent_packets = len(genuine_frames)
    session.serve_rest()


@behaviour("wrong-data-message")
def wrong_data_message(session: Session) -> None:
    """Two genuine packets, then a message of another type (an auth reply) on the data channel."""
    data = session.serve_until_capture()
    session.send_packets(data, genuine_packets(2))
    data.send(AuthReply().encode())
    if data.kind == "udp":
        time.sleep(0.002)
        session.send_packets(data, genuine_packets(2, first=3))
    session.serve_rest()


# Behaviours for rpcap-dump and rpcap-extcap's control channel (test_hostile_dump).

HOSTILE_NAMES = (
    InterfaceInfo("eth0\x1b[2J\x1b[H\x1b]0;pwned\x07", "clears the screen\r\nforged line {x}", 6),
    InterfaceInfo("lo", "\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\ \x9b31m", 6),
)
"""Interface names and descriptions with ANSI (CSI) and OSC sequences, line breaks and braces."""


@behaviour("error-flood")
def error_flood(session: Session) -> None:
    """Captures, then streams unsolicited error messages of 1 MB each (about 10 s of them) on the control connection."""
    data = session.serve_until_capture()
    session.send_packets(data, genuine_packets(3))
    time.sleep(0.3)  # the packets are in before the flood ends the session, however loaded the machine
    _flood_control(session, ErrorReply(9, "\x1b[31m" + "x" * (1 << 20)).encode(), pause=0.0)


@behaviour("small-error-flood")
def small_error_flood(session: Session) -> None:
    """Captures, then streams small unsolicited error messages on the control connection."""
    data = session.serve_until_capture()
    session.send_packets(data, genuine_packets(3))
    time.sleep(0.3)  # the packets are in before the flood ends the session, however loaded the machine
    _flood_control(session, ErrorReply(9, "late\nforged").encode() * 100, pause=0.001)


def _flood_control(session: Session, flood: bytes, pause: float) -> None:
    """Send C{flood} on the control connection again and again (C{pause} s apart) until it fails or C{--timeout}."""
    deadline = time.monotonic() + session.options.timeout
    while time.monotonic() < deadline:
        try:
            session.control.sendall(flood)
        except OSError:
            return
        if pause:
            time.sleep(pause)


def _answer_login(session: Session) -> None:
    """Answer the first request (the login) as a good daemon does."""
    received = session.read()
    if received is not None:
        session.answer(received)


def _read_until_closed(session: Session) -> None:
    while session.read() is not None:
        pass


@behaviour("silent-after-auth")
def silent_after_auth(session: Session) -> None:
    """Answers the login, then reads every request and answers none."""
    _answer_login(session)
    _read_until_closed(session)


def _answer_login_then_next_request_with(session: Session, raw: bytes) -> None:
    """Answer the login; send C{raw} for the next request (the interface list), then answer nothing."""
    _answer_login(session)
    if session.read() is None:
        return
    session.send(raw)
    _read_until_closed(session)


@behaviour("reply-one-byte-short")
def reply_one_byte_short(session: Session) -> None:
    """Answers the login; the interface list announces 16 MiB and sends all of it but its last byte."""
    size = 16 * 1024 * 1024
    _answer_login_then_next_request_with(
        session, frame(MessageType.FINDALLIF_REPLY, b"\0" * size, value=1)[:-1]
    )


@behaviour("oversized-reply")
def oversized_reply(session: Session) -> None:
    """Answers the login; the interface list announces 4 GB."""
    _answer_login_then_next_request_with(
        session, struct.pack("!BBHI", 0, MessageType.FINDALLIF_REPLY, 1, 0xFFFFFFFF) + b"\0" * 65536
    )


@behaviour("escape-sequences")
def escape_sequences(session: Session) -> None:
    """Lists interfaces named with terminal escape sequences; refuses to open any, with escapes in the error."""

    def refuse_open(session: Session, received: Received) -> Reply:
        if received.header.type == MessageType.OPEN_REQ:
            return ErrorReply(6, "no such device\x1b[2J\x1b]0;pwned\x07\nrpcap-dump: forged line")
        return None

    session.serve_until_capture(interfaces=HOSTILE_NAMES, on_request=refuse_open)


@behaviour("negative-linktype")
def negative_linktype(session: Session) -> None:
    """Opens the interface with link type -5, then captures as if nothing were wrong."""
    data = session.serve_until_capture(linktype=-5)
    session.send_packets(data, genuine_packets(4))
    session.serve_rest()


@behaviour("huge-interface-name")
def huge_interface_name(session: Session) -> None:
    """Lists one interface with a 64 KB name first, and opens whatever is asked."""
    data = session.serve_until_capture(interfaces=(InterfaceInfo("e" * 65535, "d" * 65535, 6),))
    session.send_packets(data, genuine_packets(2))
    session.serve_rest()


@behaviour("never-opens-data")
def never_opens_data(session: Session) -> None:
    """Answers startcap but never makes (or accepts) the data connection; answers the rest."""

    def no_data(session: Session, received: Received) -> Reply:
        if received.header.type == MessageType.STARTCAP_REQ:
            return StartCaptureReply(1 << 20, 9)  # a port nothing listens on, when we are the passive side
        return None

    try:
        session.serve_until_capture(on_request=no_data)
    except EOFError:
        pass


@behaviour("never-answers-endcap")
def never_answers_endcap(session: Session) -> None:
    """Captures, sends packets, then never answers stats or endcap (until the collector hangs up)."""
    data = session.serve_until_capture()
    session.send_packets(data, genuine_packets(3))
    session.serve_rest(ignore={MessageType.STATS_REQ, MessageType.ENDCAP_REQ})


_invented = iter(range(1, 1 << 62))


@behaviour("new-interface-name")
def new_interface_name(session: Session) -> None:
    """
    Lists one interface with a name never listed before (a path and a line
    break in it), captures three genuine packets on it, and hangs up.
    """
    name = f"../invented{next(_invented)}-{os.getpid()}\r\nforged line"
    data = session.serve_until_capture(interfaces=(InterfaceInfo(name, "made up", 6),))
    session.send_packets(data, genuine_packets(3))
    session.serve_rest(timeout=0.2)


@behaviour("packet-flood")
def packet_flood(session: Session) -> None:
    """
    Floods the data channel with genuine packets as fast as it can for
    C{--timeout} seconds at most (TCP: 1 MB writes; UDP: datagrams back to
    back), answering requests between writes, until the collector hangs up.
    """
    import select

    data = session.serve_until_capture()
    frames = genuine_packets(1000)
    chunk = b"".join(packet_message(f, n) for n, f in enumerate(frames, 1))
    deadline = time.monotonic() + session.options.timeout
    while time.monotonic() < deadline:
        if select.select([session.control], [], [], 0)[0]:
            try:
                received = session.control.recv(65536)
            except OSError:
                break
            if not received:
                break  # the collector hung up
            for request in session.parser.feed(received):
                session.answer(request)
        try:
            if data.kind == "udp":
                for f in frames:
                    data.sock.sendto(packet_message(f, 1), data.target)  # type: ignore[arg-type]
            else:
                data.sock.sendall(chunk)
        except OSError:
            break


# --- running it --------------------------------------------------------------------


def _serve_connection(sock: socket.socket, options: Options, active: bool) -> None:
    session = Session(sock, options, active)
    try:
        BEHAVIOURS[options.behaviour](session)
    except (EOFError, OSError):
        pass  # the collector went away: what a hostile daemon shrugs off
    finally:
        session.close()


def _parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="A scripted hostile RPCAP daemon, for tests.")
    parser.add_argument("--port", type=int, default=0, help="listen here (0: any free port), passive mode")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--behaviour", required=True, choices=sorted(BEHAVIOURS))
    parser.add_argument("--active", metavar="HOST:PORT", help="dial this collector instead of listening")
    parser.add_argument(
        "--udp-from", metavar="HOST[:PORT]", action="append", default=[], help="inject UDP from here"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds any wait lasts")
    args = parser.parse_args(argv)
    options = Options(args.behaviour, [_parse_host_port(a) for a in args.udp_from], args.timeout)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.active:
        host, port = _parse_host_port(args.active)
        print(f"connecting {host}:{port}", flush=True)
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=args.timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return 1
                time.sleep(0.05)
        _serve_connection(sock, options, active=True)
        return 0
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(64)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(sock, options, False), daemon=True).start()


# --- for tests: the fake and a measured collector ----------------------------------


class HostileDaemon:
    """The fake in a subprocess, its ready line read: C{port} (passive) or dialling (active)."""

    def __init__(
        self,
        name: str,
        *extra: str,
        active: Optional[str] = None,
        timeout: float = 10.0,
        prefix: Sequence[str] = (),
    ) -> None:
        command = [
            *prefix,  # e.g. `ip netns exec NS`: a namespace of its own
            sys.executable,
            "-m",
            "rpcapsvc.test._hostile_daemon",
            "--behaviour",
            name,
            "--timeout",
            str(timeout),
        ]
        command += ["--active", active] if active else ["--port", "0"]
        self.process = subprocess.Popen(
            command + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        ready = _read_line(self.process.stdout, 15.0)
        if not ready:
            self.stop()
            raise RuntimeError(f"the hostile daemon never got ready: {self.stderr()}")
        self.port = int(ready.split()[1]) if ready.startswith("listening") else 0
        self.url = f"rpcap://127.0.0.1:{self.port}/"

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.stderr and self.process.poll() is not None else ""

    def stop(self) -> None:
        stop_process(self.process, 5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _read_line(stream: IO[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else ""


@attrs.frozen
class Measured:
    """How a collector run went."""

    status: int
    """Exit status; -N for signal N; C{None}-like 999 if it had to be killed at the deadline."""
    max_rss_kib: int
    seconds: float
    stdout: bytes
    stderr: str
    killed: bool


def vm_hwm_kib(pid: int) -> int:
    """
    The process's peak resident memory since it ran its program (C{VmHWM});
    0 once it is gone.  Not C{ru_maxrss}: that counts the pages of the
    parent it was forked from (a test runner of hundreds of MB) as its own.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(
    command: Sequence[str], timeout: float = 20.0, env: Optional[dict[str, str]] = None
) -> Measured:
    """
    Run C{command} to its end (killed at C{timeout}); its status, peak RSS
    (L{vm_hwm_kib}, read every 10 ms, in KiB) and wall time.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
        killed = False
        peak = 0
        while True:
            peak = max(peak, vm_hwm_kib(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                killed = True
                os.kill(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        return Measured(
            process.returncode,
            peak,
            seconds,
            out.read(),
            err.read().decode(errors="replace"),
            killed,
        )


if __name__ == "__main__":
    sys.exit(main())
