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


def e2e_skip_reason(need_capture: bool = True) -> Optional[str]:
    """Why end-to-end tests against libpcap's client cannot run here, if they cannot."""
    reason = _peers.skip_reason_for_client()
    if reason:
        return reason
    if need_capture:
        ok, why = _peers.can_capture()
        if not ok:
            return why
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


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
