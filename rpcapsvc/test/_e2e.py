"""
Support for end-to-end tests: run ``twistd -n rpcapd`` as a subprocess, run
libpcap's own client (``rpcap-peer-client``) against it, and make marked
test traffic on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import _peers

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM C{process} if it still runs, and SIGKILL it if it has not ended C{timeout} seconds later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def e2e_skip_reason(need_capture: bool = True) -> Optional[str]:
    """Why end-to-end tests against libpcap's client cannot run here, if they cannot."""
    reason = _peers.skip_reason_for_client()
    if reason:
        return reason
    if need_capture:
        return _peers.skip_reason_for_capture()
    return None


class Daemon:
    """``twistd -n rpcapd ARGS`` in a subprocess, logging to a file."""

    def __init__(self, *args: str, plugin: str = "rpcapd", wait_port: Optional[int] = None) -> None:
        self.workdir = tempfile.mkdtemp(prefix="rpcapd-e2e-")
        self.log_path = os.path.join(self.workdir, "twistd.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.args = [sys.executable, "-m", "twisted", plugin, *args]
        cmd = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            self.log_path,
            plugin,
            *args,
        ]
        self.process = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if wait_port is not None:
            self.wait_for_port(wait_port)

    def wait_for_port(self, port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited early:\n{self.log()}\n{self.stderr()}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daemon did not listen on {port}:\n{self.log()}")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in the daemon's log:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process, 10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        log = self.log()
        shutil.rmtree(self.workdir, ignore_errors=True)
        # Whatever a test did to it, a daemon's log never holds a traceback:
        # every end-to-end test that runs one asserts this when it stops it.
        for word in ("Traceback", "Unhandled"):
            if word in log:
                at = log.index(word)
                raise AssertionError(f"{word!r} in the daemon's log:\n{log[max(0, at - 2000) : at + 3000]}")


def peer(*args: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Run the libpcap client to completion; its JSON lines."""
    client = _peers.peer_client_path()
    assert client is not None
    out = subprocess.run([str(client), *args], capture_output=True, timeout=timeout, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


class PeerCapture:
    """A libpcap client capture running in the background, its output collected as it comes."""

    def __init__(self, source: str, *options: str) -> None:
        client = _peers.peer_client_path()
        assert client is not None
        self.lines: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [str(client), "capture", source, "--timeout-ms", "50", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.lines.append(json.loads(line))

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(list(self.lines)):
                return
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"client output never satisfied the test: {self.lines[-5:]}")

    def wait(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        self.process.wait(timeout)
        self._reader.join(timeout)
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()
        return list(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)


class Traffic:
    """Marked UDP datagrams on loopback, to a port that has a receiver."""

    def __init__(self, family: int = socket.AF_INET) -> None:
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        self.receiver = socket.socket(family, socket.SOCK_DGRAM)
        self.receiver.bind((host, 0))
        self.receiver.setblocking(False)
        self.port = int(self.receiver.getsockname()[1])
        self.sender = socket.socket(family, socket.SOCK_DGRAM)
        self.host = host

    def send(self, marker: str, size: int = 0) -> None:
        payload = marker.encode().ljust(size, b".")
        self.sender.sendto(payload, (self.host, self.port))
        try:
            while self.receiver.recv(65535):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


def packets(lines: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "caplen" in line]


def payloads(lines: Sequence[dict[str, Any]]) -> list[bytes]:
    return [bytes.fromhex(line["data"]) for line in packets(lines)]


def has_marker(frame: bytes, marker: str) -> bool:
    return marker.encode() in frame


def udp_dst_port(frame: bytes) -> Optional[int]:
    """The UDP destination port of an Ethernet/IPv4 frame (loopback), if it is one."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    return int.from_bytes(frame[14 + ihl + 2 : 14 + ihl + 4], "big")


def warm_up(capture: PeerCapture, traffic: Traffic, timeout: float = 10.0) -> None:
    """
    Send marked warm-up datagrams until the client has certainly started
    capturing: libpcap starts the capture lazily, on the first read.
    """
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline and capture.process.poll() is None:
        traffic.send(f"warmup-{n}")
        n += 1
        time.sleep(0.1)
        if any(b"warmup-" in frame for frame in payloads(capture.lines)):
            return
    raise AssertionError(f"capture never started: {capture.lines[-5:]}")


class ActivePeerCapture(PeerCapture):
    """
    libpcap's client in active mode, in the background: it waits (with
    C{pcap_remoteact_accept}) for the daemon to connect to C{host:port},
    prints C{{"accepted": HOST}}, then captures C{interface} through that
    connection, its output collected as it comes.
    """

    def __init__(
        self, port: int, interface: str, *options: str, host: str = "127.0.0.1", timeout_s: int = 10
    ) -> None:
        client = _peers.peer_client_path()
        assert client is not None
        self.lines = []
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                str(client),
                "active",
                "--listen-host",
                host,
                "--listen-port",
                str(port),
                "--timeout-s",
                str(timeout_s),
                "capture",
                interface,
                "--timeout-ms",
                "50",
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def wait_accepted(self, timeout: float = 5.0) -> float:
        """Wait until the daemon has connected; the seconds it took."""
        self.wait_for(lambda lines: any("accepted" in line for line in lines), timeout)
        return time.monotonic() - self.started


def active_peer(port: int, *args: str, host: str = "127.0.0.1", timeout_s: int = 10) -> list[dict[str, Any]]:
    """
    Run libpcap's client in active mode to completion (C{findalldevs}, or
    C{capture IFACE ...}): it waits at most C{timeout_s} for the daemon to
    connect to C{host:port}.  Its JSON lines.
    """
    return peer(
        "active",
        "--listen-host",
        host,
        "--listen-port",
        str(port),
        "--timeout-s",
        str(timeout_s),
        *args,
        timeout=timeout_s + 30.0,
    )


# --- for the security tests: raw control connections, sniffing, wrapped daemons -----


def rpcap_message(msg_type: int, payload: bytes = b"", value: int = 0, version: int = 0) -> bytes:
    """One control message, header and payload, built by hand."""
    return struct.pack("!BBHI", version, msg_type, value, len(payload)) + payload


NULL_AUTH = rpcap_message(8, bytes(8))
FINDALLDEVS = rpcap_message(2)
CLOSE = rpcap_message(6)


class RawRpcapClient:
    """
    A control connection made by hand, plain or TLS (C{tls} is an
    C{ssl.SSLContext}), for what libpcap's client will not do or will not show:
    the raw replies.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", tls: Any = None, timeout: float = 5.0) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self._buffer += chunk

    def read_message(self) -> tuple[int, int, bytes]:
        """The next message: C{(type, value, payload)}; C{EOFError} when the daemon hung up."""
        self._fill(8)
        _, mtype, value, plen = struct.unpack_from("!BBHI", self._buffer)
        self._fill(8 + plen)
        payload = self._buffer[8 : 8 + plen]
        self._buffer = self._buffer[8 + plen :]
        return mtype, value, payload

    def request(self, data: bytes) -> tuple[int, int, bytes]:
        self.send(data)
        return self.read_message()

    def read_until_closed(self, timeout: float) -> tuple[list[tuple[int, int, bytes]], bool]:
        """Every message until the daemon hangs up or C{timeout} passes; and whether it hung up."""
        self.sock.settimeout(timeout)
        messages = []
        try:
            while True:
                messages.append(self.read_message())
        except EOFError:
            return messages, True
        except socket.timeout:
            return messages, False
        except OSError:  # reset, or a TLS connection cut short
            return messages, True

    def close(self) -> None:
        self.sock.close()


class Sniffer:
    """
    Frames matching a pcap expression on an interface, collected by a thread
    of this process (it needs the right to capture) until L{stop}.
    """

    def __init__(self, interface: str, expression: str) -> None:
        import pcapy

        self.frames: list[bytes] = []
        self._reader = pcapy.open_live(interface, 65535, 0, 10)
        self._reader.setfilter(expression)
        self._reader.setnonblock(1)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        record = struct.Struct("=IIII")
        while not self._stopping:
            data, records = self._reader.next_batch(256)
            if not records:
                time.sleep(0.005)
                continue
            for _, _, offset, length in record.iter_unpack(records):
                self.frames.append(bytes(data[offset : offset + length]))

    def stop(self) -> list[bytes]:
        if not self._stopping:
            self._stopping = True
            self._thread.join(5)
            self._reader.close()
        return list(self.frames)


def transport_fields(frame: bytes) -> Optional[tuple[int, int, int, bytes]]:
    """C{(protocol, source port, destination port, payload)} of an Ethernet/IPv4 TCP or UDP frame."""
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    l4 = frame[14 + ihl :]
    if proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        return proto, sport, dport, l4[8:]
    if proto == 6 and len(l4) >= 20:
        sport, dport = struct.unpack_from("!HH", l4)
        return proto, sport, dport, l4[(l4[12] >> 4) * 4 :]
    return None


def local_ports(pid: int, kind: str) -> set[int]:
    """The local ports of a process's C{kind} ("tcp", "udp") sockets."""
    import psutil

    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind=kind) if c.laddr}


class WrappedDaemon(Daemon):
    """
    ``twistd -n rpcapd ARGS`` started through a wrapper command (such as
    ``setpriv --reuid=...``), with a chosen interpreter, this repository and
    C{extra_path} on C{PYTHONPATH}, and a working directory anyone may write
    its log to.
    """

    def __init__(
        self,
        wrapper: Sequence[str],
        *args: str,
        interpreter: str = sys.executable,
        extra_path: Sequence[str] = (),
        plugin: str = "rpcapd",
        wait_port: Optional[int] = None,
    ) -> None:
        self.workdir = tempfile.mkdtemp(prefix="rpcapd-e2e-")
        os.chmod(self.workdir, 0o777)
        self.log_path = os.path.join(self.workdir, "twistd.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *extra_path])
        cmd = [
            *wrapper,
            interpreter,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            self.log_path,
            plugin,
            *args,
        ]
        self.args = cmd
        self.process = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if wait_port is not None:
            self.wait_for_port(wait_port)
