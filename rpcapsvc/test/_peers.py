"""
Where the reference peers are, for the interop tests and benchmarks.

The peers are libpcap 1.10.5 built with remote capture: its ``rpcapd`` and
``rpcap-peer-client`` (``interop/rpcap-peer-client.c``, libpcap's own client
API driven from the command line, printing JSON lines); and ExtraHop's fork
of rpcapd, ``extrahop-rpcapd``.  ``make peers``
(``scripts/build-reference-peers.sh``) builds them into ``<repo>/.peers``;
set C{RPCAPSVC_PEERS} to use another prefix.  ``tshark`` comes from the
system (``scripts/install-system-deps.sh``).

Nothing here imports anything outside the standard library, so it can be
used to decide whether to skip a test before anything else is imported.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Environment variable naming the prefix the peers were built into.
PEERS_ENV = "RPCAPSVC_PEERS"

_BUILD_HINT = "run `make peers` (scripts/build-reference-peers.sh)"


def peer_prefix() -> Path:
    """
    The prefix the reference peers are (or would be) built into:
    C{$RPCAPSVC_PEERS} if set, else C{<repo>/.peers}.  It may not exist.
    """
    env = os.environ.get(PEERS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT / ".peers"


def _executable(path: Path) -> Optional[Path]:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def peer_client_path() -> Optional[Path]:
    """The built C{rpcap-peer-client} (libpcap's client API), or C{None}."""
    return _executable(peer_prefix() / "bin" / "rpcap-peer-client")


def reference_rpcapd_path() -> Optional[Path]:
    """The built libpcap C{rpcapd}, or C{None}."""
    prefix = peer_prefix()
    return _executable(prefix / "bin" / "rpcapd") or _executable(prefix / "sbin" / "rpcapd")


def extrahop_rpcapd_path() -> Optional[Path]:
    """The built C{extrahop-rpcapd} (ExtraHop's fork of rpcapd), or C{None}."""
    return _executable(peer_prefix() / "bin" / "extrahop-rpcapd")


def tshark_path() -> Optional[Path]:
    """The system's C{tshark} (it has an RPCAP dissector), or C{None}."""
    found = shutil.which("tshark")
    return Path(found) if found else None


def skip_reason_for_client() -> Optional[str]:
    """
    Why tests driving libpcap's client cannot run here, or C{None} if they can.
    """
    if peer_client_path() is None:
        return f"libpcap 1.10.5 client not built (no {peer_prefix() / 'bin' / 'rpcap-peer-client'}): {_BUILD_HINT}"
    return None


def skip_reason_for_rpcapd() -> Optional[str]:
    """
    Why tests against libpcap's own C{rpcapd} cannot run here, or C{None} if they can.
    """
    if reference_rpcapd_path() is None:
        return f"libpcap 1.10.5 rpcapd not built (no {peer_prefix() / 'bin' / 'rpcapd'}): {_BUILD_HINT}"
    return None


def skip_reason_for_extrahop() -> Optional[str]:
    """
    Why tests against ExtraHop's C{rpcapd} cannot run here, or C{None} if they can.
    """
    if extrahop_rpcapd_path() is None:
        return f"ExtraHop's rpcapd not built (no {peer_prefix() / 'bin' / 'extrahop-rpcapd'}): {_BUILD_HINT}"
    return None


def can_capture() -> Tuple[bool, str]:
    """
    Whether this process may capture packets (root, or C{CAP_NET_RAW}),
    found out by opening an C{AF_PACKET} socket.  Returns C{(ok, reason)};
    the reason says why not, or what allowed it.
    """
    family = getattr(socket, "AF_PACKET", None)
    if family is None:
        return False, "packet capture tests need Linux (no AF_PACKET sockets here)"
    eth_p_all = 0x0003
    try:
        sock = socket.socket(family, socket.SOCK_RAW, socket.htons(eth_p_all))
    except PermissionError:
        return False, "capturing packets needs root or CAP_NET_RAW (cannot open an AF_PACKET socket)"
    except OSError as e:
        return False, f"cannot open an AF_PACKET socket: {e}"
    sock.close()
    return True, "root" if os.geteuid() == 0 else "CAP_NET_RAW"


def skip_reason_for_capture() -> Optional[str]:
    """
    Why tests that capture packets cannot run here, or C{None} if they can.
    """
    ok, why = can_capture()
    return None if ok else why


def start_reference_rpcapd(*args: str, **popen_kwargs: object) -> subprocess.Popen[bytes]:
    """
    Start libpcap's C{rpcapd} with C{args} (e.g. C{"-n", "-b", "127.0.0.1",
    "-p", "12002"}; it stays in the foreground unless given C{-d}).

    Always in a new session: when it exits, libpcap's rpcapd sends C{SIGKILL}
    to its whole process group (C{kill(0, SIGKILL)}), which would otherwise
    include the test runner.  With C{-a HOST,PORT} also give C{-b}/C{-p}:
    active-only mode (C{-v}) exits, killing its active child, at once.
    """
    rpcapd = reference_rpcapd_path()
    if rpcapd is None:
        raise RuntimeError(skip_reason_for_rpcapd())
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    popen_kwargs["start_new_session"] = True
    return subprocess.Popen([str(rpcapd), *args], **popen_kwargs)  # type: ignore[call-overload,no-any-return]


def start_extrahop_rpcapd(*args: str, **popen_kwargs: object) -> subprocess.Popen[bytes]:
    """
    Start ExtraHop's C{rpcapd} with C{args} (e.g. C{"-n", "-b", "127.0.0.1",
    "-p", "12002"}, or C{"-n", "-v", "-a", "127.0.0.1,12003"}); give no C{-d},
    so that it stays in the foreground.

    Always in a new session: like libpcap's, it kills its whole process
    group when it stops, which would otherwise include the test runner.
    Stop it with C{os.killpg(process.pid, ...)}: that reaches the children
    it forks too.
    """
    rpcapd = extrahop_rpcapd_path()
    if rpcapd is None:
        raise RuntimeError(skip_reason_for_extrahop())
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    popen_kwargs["start_new_session"] = True
    return subprocess.Popen([str(rpcapd), *args], **popen_kwargs)  # type: ignore[call-overload,no-any-return]
