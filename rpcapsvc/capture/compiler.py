"""
pcap filter expressions compiled to BPF with libpcap (through pcapy-ng),
for a given link type, without opening a device.  The collector compiles its
users' filters here; the daemon compiles the filter that keeps its own
traffic out of its captures.
"""

from __future__ import annotations

from ..protocol import bpf
from ..protocol.wire import BpfProgram


def compile_filter(expression: str, linktype: int, snaplen: int = bpf.MAXIMUM_SNAPLEN) -> BpfProgram:
    """
    Compile C{expression} for C{linktype}; an empty expression gives a
    one-instruction accept-all program (some servers refuse an empty one).

    @raise ValueError: libpcap cannot compile it.
    """
    if not expression.strip():
        return BpfProgram.from_tuples([(bpf.BPF_RET | bpf.BPF_K, 0, 0, snaplen)])
    import pcapy

    try:
        program = pcapy.compile(linktype, snaplen, expression, 1, 0xFFFFFFFF)
    except pcapy.PcapError as e:
        raise ValueError(f"cannot compile filter {expression!r}: {e}") from e
    return BpfProgram.from_tuples([tuple(i) for i in program.get_bpf()])
