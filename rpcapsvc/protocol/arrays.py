"""
Whole-batch arithmetic on C{array}s, with no per-element Python.

The per-packet paths (L{rpcapsvc.server.fastsend}'s iovecs, the udpstr
framer's headers) build every field of a batch at once: u32 fields moved
between arrays by strided memoryview copies, and element-wise additions done
as one big-integer addition over the whole array (each element in its own
lane, far from carrying into the next).  Measured: 10-18 ns a packet for an
addition, against 70 ns for C{map(add, ...)}.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, Literal

NATIVE: Literal["little", "big"] = "little" if sys.byteorder == "little" else "big"
LOW_HALF = 0 if NATIVE == "little" else 1
"""Which u32 of a native u64 holds its low bits."""


_U32 = 0xFFFFFFFF


def lanes(words: array[int]) -> int:
    """The elements of C{words} as one big integer, element I in the Ith lane of C{words.itemsize} bytes."""
    return int.from_bytes(words, NATIVE)


def from_lanes(value: int, count: int) -> array[int]:
    """The C{count} u64 lanes of C{value} as an array (the inverse of L{lanes} for u64s)."""
    return array("Q", value.to_bytes(8 * count, NATIVE))


def plus(words: array[int], constant: int) -> array[int]:
    """Every element of C{words} plus C{constant}, none of which may overflow: one big-integer addition."""
    pattern = array(words.typecode, [constant]) * len(words)
    total = lanes(words) + lanes(pattern)
    return array(words.typecode, total.to_bytes(len(words) * words.itemsize, NATIVE))


def widened(narrow: Any, count: int) -> array[int]:
    """The u32s of C{narrow} (a buffer of C{count}) as u64s, by a strided copy."""
    wide = array("Q", bytes(8 * count))
    memoryview(wide).cast("B").cast("I")[LOW_HALF::2] = narrow
    return wide


def contiguous(narrow: Any, count: int) -> array[int]:
    """The u32s of C{narrow} (a strided buffer of C{count}) in an array of their own."""
    copy = array("I", bytes(4 * count))
    memoryview(copy)[:] = narrow
    return copy


def capped(lengths: Any, count: int, limit: int) -> array[int]:
    """
    C{min(length, limit)} for each of the u32s C{lengths} (C{limit} from 0
    to 2**32 - 1), all at once on u64 lanes of big integers: bit 40 of
    C{length + 2**40 - limit} says whether the length reaches the limit, and
    masks the excess to take off.
    """
    ones = lanes(array("Q", [1]) * count)
    lengths_value = lanes(widened(lengths, count))
    biased = lengths_value + ones * ((1 << 40) - limit)
    reaches = (biased >> 40) & ones
    excess = (biased & (reaches * ((1 << 41) - 1))) - (reaches << 40)
    return contiguous(
        memoryview(from_lanes(lengths_value - excess, count)).cast("B").cast("I")[LOW_HALF::2], count
    )


def counting(first: int, count: int) -> array[int]:
    """C{count} u32s from C{first} up, wrapping past 2**32 - 1 as RPCAP's u32 counters do."""
    if first + count <= _U32 + 1:
        return plus(multiples("I", 1, count), first)
    return array("I", range(first, _U32 + 1)) + array("I", range(first + count - _U32 - 1))


_steps: dict[tuple[str, int], array[int]] = {}


def multiples(typecode: str, step: int, count: int) -> array[int]:
    """0, C{step}, 2 C{step}, ... (C{count} of them), from a cache."""
    cached = _steps.get((typecode, step))
    if cached is None or len(cached) < count:
        cached = _steps[typecode, step] = array(typecode, range(0, step * max(count, 1024), step))
    return cached[:count]
