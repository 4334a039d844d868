"""Sleep until a word of shared memory changes, and wake its sleepers (Linux futex), for `_shm`.

Why: a wait that lasts (a peer still computing, a late rank) should neither keep a core busy nor
wake up thousands of times a second to look; a futex sleeps in the kernel until the writer's wake.
The word must be 4-byte aligned in memory every process maps (an MPI shared window is), and
FUTEX_WAIT compares it with the expected value atomically, so a wake that comes between the
caller's last look and the sleep is never lost.
"""
from __future__ import annotations

import ctypes
import errno
import platform
import sys

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "ppc64le": 221, "riscv64": 98,
              "s390x": 238}
FUTEX_WAIT, FUTEX_WAKE = 0, 1  # not the _PRIVATE variants: the word is shared between processes
LOW_WORD = 0 if sys.byteorder == "little" else 4  # offset of an int64's low 32 bits
_BENIGN = {errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR}  # FUTEX_WAIT: word changed, timed out, signal


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _syscall():
    nr = _SYS_FUTEX.get(platform.machine().lower()) if sys.platform == "linux" else None
    if nr is None:
        return None, 0
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None, 0
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.POINTER(_Timespec), ctypes.c_void_p, ctypes.c_int]
    return fn, nr


_fn, _NR = _syscall()


def available() -> bool:
    """True where futexes can be used (Linux on a known architecture); else callers poll."""
    return _fn is not None


def wait(addr: int, expected: int, timeout_s: float) -> bool:
    """Sleep while the 32-bit word at addr equals `expected` (low 32 bits), at most timeout_s.

    Returns on a wake, a timeout, a signal, or at once if the word differs: callers re-check.
    False when the kernel refused the call itself (no futex support, a seccomp filter, memory it
    cannot key): the caller should stop using futexes rather than spin on failing calls.
    """
    v = expected & 0xFFFFFFFF
    ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    rc = _fn(_NR, addr, FUTEX_WAIT, v - (1 << 32) if v >= 1 << 31 else v, ctypes.byref(ts), None, 0)
    return rc == 0 or ctypes.get_errno() in _BENIGN


def wake(addr: int) -> None:
    """Wake every process sleeping on the word at addr."""
    _fn(_NR, addr, FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)
