"""The point-to-point choice by message size and rank count, shared by `auto` and `hier`'s
between-node step (its own module so neither imports the other). The thresholds are measured
crossovers; how and when is in auto.py's docstring."""
from __future__ import annotations

from . import rabenseifner, recursive_doubling, ring

KB, MB = 1024, 1024 * 1024
THRESHOLDS: dict[int, tuple[int, int]] = {2: (4 * MB, 8 * MB), 3: (256 * KB, 1 * MB), 4: (256 * KB, 4 * MB)}
DEFAULT = (1 * MB, 8 * MB)  # p >= 5


def point_to_point(nbytes: int, p: int, table: dict[int, tuple[int, int]] = THRESHOLDS):
    """recursive_doubling below `small`, rabenseifner below `large`, ring from `large` on."""
    small, large = table.get(p, DEFAULT)
    if nbytes < small:
        return recursive_doubling.allreduce
    return rabenseifner.allreduce if nbytes < large else ring.allreduce
