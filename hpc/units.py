"""Message sizes as people write them (8B, 4KB, 64MB) and back.

Sizes are binary everywhere, as in OSU and nccl-tests: KB/KiB = 1024 B, MB/MiB = 2^20 B on input,
and printed as KiB/MiB/GiB so nobody has to guess. Bandwidths (algbw, busbw) are GB/s = 1e9 B/s,
as nccl-tests reports them."""

from __future__ import annotations

import re

from hpc.errors import HpcError

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
          "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """`64MB` -> 67108864 (binary units, as OSU and nccl-tests use)."""
    m = _SIZE.match(text)
    if not m or m.group(2).upper() not in _UNITS:
        raise HpcError(f"bad size '{text}': expected e.g. 8B, 4KB, 64MB, 1GB")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value != int(value):
        raise HpcError(f"bad size '{text}': not a whole number of bytes")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """`8B:64MB` (powers of 2), `1MB:16MB:4` (factor 4), or a list `1KB,1MB`; sorted, unique."""
    sizes: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        bits = part.split(":")
        if len(bits) == 1:
            sizes.add(parse_size(bits[0]))
            continue
        if len(bits) not in (2, 3):
            raise HpcError(f"bad size range '{part}': expected MIN:MAX or MIN:MAX:FACTOR")
        lo, hi = parse_size(bits[0]), parse_size(bits[1])
        factor = int(bits[2]) if len(bits) == 3 and bits[2].isdigit() else 2
        if len(bits) == 3 and not bits[2].isdigit() or factor < 2:
            raise HpcError(f"bad size range '{part}': FACTOR must be an integer >= 2")
        if lo > hi:
            raise HpcError(f"bad size range '{part}': MIN is larger than MAX")
        s = max(lo, 1) if lo == 0 else lo
        if lo == 0:
            sizes.add(0)
        while s <= hi:
            sizes.add(s)
            s *= factor
    if not sizes:
        raise HpcError(f"no sizes in '{text}'")
    return sorted(sizes)


def format_size(n: int) -> str:
    """67108864 -> `64MiB`; 1536 -> `1.5KiB`; 8 -> `8B` (binary units, as OSU and nccl-tests)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            v = n / scale
            return f"{v:g}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"
