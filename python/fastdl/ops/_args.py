"""Integer arguments as the ops take them: an int, or an int or a pair of ints (torch's _pair) for the
window sizes, checked once for convolution and pooling alike."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

IntOrPair = int | Sequence[int]


def is_int(value) -> bool:
    """An int as torch's arguments take one: Python's or numpy's integers, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_pair(value: IntOrPair, name: str, op: str) -> list[int]:
    """[a, b] from an int a (a == b), or a sequence of one or two ints; anything else is a ValueError
    naming the op and the argument."""
    values = list(value) if isinstance(value, Sequence) else [value]
    if len(values) in (1, 2) and all(is_int(v) for v in values):
        return [int(values[0]), int(values[-1])]
    raise ValueError(f"fastdl.{op}: {name} must be an int or a pair of ints, but got {value!r}")
