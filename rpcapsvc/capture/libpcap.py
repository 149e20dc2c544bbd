"""
The slow libpcap calls, made without holding the GIL.

pcapy-ng holds the GIL in every call but the packet reads: activating a
capture (binding the packet socket, setting up its ring: about 20 ms waiting
in the kernel), and closing one (about 20 ms more) would stop every Python
thread, the reactor's included, even when made from a worker thread.
Measured with 10 worker threads and a thread ticking every millisecond:
64 pcapy activations took 1.8 s with the ticker stalled up to 620 ms; the
same through ctypes (which releases the GIL) took 0.2 s, the ticker never
late by more than 2 ms.

So the daemon makes those calls here, through ctypes, into the very libpcap
pcapy-ng is linked with (found in this process's memory map), on the
C{pcap_t} of a pcapy reader.  The reader object's layout (the pointer just
after the object header) is checked once against a reader whose link type
and snapshot length are known; if the library or the layout cannot be
confirmed, the pcapy calls are used as they are.  Closing needs no pointer:
a duplicate of the capture's descriptor keeps the socket alive through
C{pcap_close}, and the final C{os.close}, where the kernel waits, releases
the GIL.
"""

from __future__ import annotations

import ctypes
import os
import struct
import tempfile
import threading
from typing import Any, Optional

from twisted.logger import Logger

log = Logger()

PCAP_ERROR = -1
PCAP_ERROR_NO_SUCH_DEVICE = -5
PCAP_ERROR_PERM_DENIED = -8
PCAP_ERROR_PROMISC_PERM_DENIED = -11
_ERRBUF_SIZE = 256
_OBJECT_HEADER = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)


class _Library:
    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        p = ctypes.c_void_p
        lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.pcap_create.restype = p
        for name in ("pcap_activate", "pcap_datalink", "pcap_snapshot"):
            getattr(lib, name).argtypes = [p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("pcap_set_snaplen", "pcap_set_timeout"):
            getattr(lib, name).argtypes = [p, ctypes.c_int]
            getattr(lib, name).restype = ctypes.c_int
        lib.pcap_close.argtypes = [p]
        lib.pcap_close.restype = None
        lib.pcap_geterr.argtypes = [p]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_statustostr.argtypes = [ctypes.c_int]
        lib.pcap_statustostr.restype = ctypes.c_char_p
        self.lib = lib
        self.path = path
        self.readers_checked = False
        """Whether a pcapy reader's C{pcap_t} can be taken from the object (checked once)."""


_lock = threading.Lock()
_library: Optional[_Library] = None
_looked_up = False


def _pcapy_libpcap_path() -> Optional[str]:
    import pcapy  # noqa: F401  (loads its libpcap)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path).startswith("libpcap") and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def _reader_layout_ok(library: _Library) -> bool:
    """Does a pcapy reader keep its C{pcap_t} right after its object header?"""
    import pcapy

    linktype, snaplen = 147, 4242  # DLT_USER0 and a length no default has
    header = struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
    fd, path = tempfile.mkstemp(prefix="rpcapsvc-probe-", suffix=".pcap")
    try:
        os.write(fd, header)
        os.close(fd)
        reader = pcapy.open_offline(path)
    except Exception:
        return False
    finally:
        os.unlink(path)
    try:
        if type(reader).__basicsize__ < _OBJECT_HEADER + ctypes.sizeof(ctypes.c_void_p):
            return False
        pointer = _pcap_pointer(reader)
        return bool(pointer) and (
            library.lib.pcap_datalink(pointer) == linktype and library.lib.pcap_snapshot(pointer) == snaplen
        )
    finally:
        reader.close()


def _pcap_pointer(reader: object) -> Optional[int]:
    return ctypes.c_void_p.from_address(id(reader) + _OBJECT_HEADER).value


def library() -> Optional[_Library]:
    """pcapy's libpcap through ctypes, or C{None} where it cannot be had."""
    global _library, _looked_up
    with _lock:
        if not _looked_up:
            _looked_up = True
            try:
                path = _pcapy_libpcap_path()
                if path is not None:
                    candidate = _Library(path)
                    candidate.readers_checked = _reader_layout_ok(candidate)
                    _library = candidate
            except (OSError, AttributeError):
                _library = None
            if _library is None or not _library.readers_checked:
                log.info(
                    "libpcap's slow calls are made through pcapy-ng, holding the GIL "
                    "(the library or pcapy-ng's reader layout could not be confirmed)"
                )
        return _library


def status_text(device: str, status: int, detail: str) -> str:
    """The message libpcap's C{pcap_open_live} gives for a failed activation."""
    lib = library()
    described = lib.lib.pcap_statustostr(status).decode(errors="replace") if lib else f"error {status}"
    if status == PCAP_ERROR:
        return f"{device}: {detail}"
    if (
        status in (PCAP_ERROR_NO_SUCH_DEVICE, PCAP_ERROR_PERM_DENIED, PCAP_ERROR_PROMISC_PERM_DENIED)
        and detail
    ):
        return f"{device}: {described} ({detail})"
    return f"{device}: {described}"


def activate(reader: Any, device: str) -> None:
    """
    Activate a pcapy reader made with C{pcapy.create}, without the GIL where
    possible.  (pcapy's C{activate} returns libpcap's status, which the caller
    must check: it is checked here.)

    @raise ValueError: libpcap refused; the text says why, as libpcap says it.
    """
    lib = library()
    if lib is None or not lib.readers_checked:
        status = int(reader.activate())
        if status < 0:
            raise ValueError(status_text(device, status, ""))
        return
    pointer = _pcap_pointer(reader)
    status = lib.lib.pcap_activate(pointer)
    if status < 0:
        detail = (lib.lib.pcap_geterr(pointer) or b"").decode(errors="replace")
        raise ValueError(status_text(device, status, detail))


def probe_linktype(device: str, snaplen: int, timeout_ms: int) -> int:
    """
    Open C{device} briefly, as C{pcap_open_live} would, and return its link
    type; without the GIL where possible.

    @raise ValueError: libpcap refused; the text says why.
    """
    lib = library()
    if lib is None:
        import pcapy

        try:
            reader = pcapy.open_live(device, snaplen, 0, timeout_ms)
        except pcapy.PcapError as e:
            raise ValueError(str(e)) from e
        try:
            return int(reader.datalink())
        finally:
            close(reader)
    errbuf = ctypes.create_string_buffer(_ERRBUF_SIZE)
    pcap = lib.lib.pcap_create(device.encode(), errbuf)
    if not pcap:
        raise ValueError(errbuf.value.decode(errors="replace"))
    try:
        lib.lib.pcap_set_snaplen(pcap, snaplen)
        lib.lib.pcap_set_timeout(pcap, timeout_ms)
        status = lib.lib.pcap_activate(pcap)
        if status < 0:
            detail = (lib.lib.pcap_geterr(pcap) or b"").decode(errors="replace")
            raise ValueError(status_text(device, status, detail))
        return int(lib.lib.pcap_datalink(pcap))
    finally:
        lib.lib.pcap_close(pcap)


def close(reader: Any) -> None:
    """
    Close a pcapy reader; the kernel's wait as its packet socket goes happens
    in C{os.close}, without the GIL.
    """
    try:
        spare = os.dup(reader.getfd())
    except Exception:
        spare = -1  # not activated, or already closed: nothing slow to come
    try:
        reader.close()
    finally:
        if spare >= 0:
            os.close(spare)
