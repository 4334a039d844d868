"""Shared helpers for the point-to-point allreduce kernels: op mapping, partitioning, scratch."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
from mpi4py import MPI

from . import blocks  # noqa: F401 (re-exported for the kernels)

# MPI.Op is unhashable: key on the Fortran handle, an int that is fixed for predefined ops.
_OPS = (
    ("SUM", MPI.SUM, np.add), ("PROD", MPI.PROD, np.multiply), ("MAX", MPI.MAX, np.maximum),
    ("MIN", MPI.MIN, np.minimum), ("LAND", MPI.LAND, np.logical_and), ("LOR", MPI.LOR, np.logical_or),
    ("LXOR", MPI.LXOR, np.logical_xor), ("BAND", MPI.BAND, np.bitwise_and),
    ("BOR", MPI.BOR, np.bitwise_or), ("BXOR", MPI.BXOR, np.bitwise_xor),
)
_UFUNCS = {op.py2f(): fn for _, op, fn in _OPS}
_OP_NAMES = {op.py2f(): name for name, op, _ in _OPS}

BYTE = MPI.BYTE
_scratch = threading.local()
SPIN_S = 1e-3  # wait: poll (yielding the core) this long, then sleep between polls (`backoff`)
SLEEP_S = 30e-6  # shortest sleep between polls
SLEEP_FRACTION = 0.05  # ... and at most this fraction of the time waited so far,
SLEEP_MAX_S = 2e-3  # ... capped here
_yield = getattr(os, "sched_yield", lambda: None)
POLL_BYTES = 32 * 1024  # *_bytes helpers: below this, blocking MPI calls (lowest latency)


def ufunc(op: MPI.Op) -> np.ufunc:
    """Return the numpy ufunc equivalent to a predefined MPI op; ValueError for any other op."""
    fn = _UFUNCS.get(op.py2f()) if isinstance(op, MPI.Op) else None
    if fn is None:
        raise ValueError(
            f"unsupported reduction op {op!r}: point-to-point kernels support only the predefined "
            f"ops {', '.join(_OP_NAMES.values())}; use the 'mpi' algorithm for user-defined ops"
        )
    return fn


def op_name(op: MPI.Op) -> str:
    """Name of a predefined MPI op ('SUM', 'MAX', ...), for messages and records."""
    return _OP_NAMES.get(op.py2f(), repr(op)) if isinstance(op, MPI.Op) else repr(op)


def backoff(waited_s: float) -> float:
    """Seconds to sleep before the next poll, once a wait is past SPIN_S: a fixed fraction of the
    time waited so far, so a long wait (a peer still computing, a late rank) costs a few hundred
    wake-ups a second instead of 30 000 (~20% of a core here) and is noticed at most 5% late."""
    return min(SLEEP_MAX_S, max(SLEEP_S, SLEEP_FRACTION * waited_s))


def wait(req: MPI.Request) -> None:
    """Complete a request: poll with sched_yield for SPIN_S, then sleep between polls (`backoff`).

    Yielding lets a peer that shares our core run; sleeping after a long wait frees the core for other
    work (a loaded machine, a training thread). Measured on 4 ranks / 2 cores: sleeping at once costs
    ~20% at 4 MB on a quiet machine, spinning for ever loses ~30% on a loaded one. (MPI has no way to
    sleep until a request completes; `_shm` waits on shared words and can, with a futex.)
    """
    if req.Test():
        return
    t0 = time.perf_counter()
    while not req.Test():
        dt = time.perf_counter() - t0
        if dt > SPIN_S:
            time.sleep(backoff(dt))
        else:
            _yield()


def waitall(reqs: list[MPI.Request]) -> None:
    """`wait` on each request in turn."""
    for req in reqs:
        wait(req)


def sendrecv_bytes(comm: MPI.Comm, sbuf: np.ndarray, dest: int, rbuf: np.ndarray, source: int,
                   tag: int) -> None:
    """Exchange raw bytes: blocking MPI_Sendrecv for small messages, Isend/Irecv + `wait` for large ones."""
    if rbuf.nbytes < POLL_BYTES and sbuf.nbytes < POLL_BYTES:
        comm.Sendrecv([sbuf, BYTE], dest, tag, [rbuf, BYTE], source, tag)
        return
    rreq = comm.Irecv([rbuf, BYTE], source, tag)
    sreq = comm.Isend([sbuf, BYTE], dest, tag)
    wait(rreq)
    wait(sreq)


def send_bytes(comm: MPI.Comm, buf: np.ndarray, dest: int, tag: int) -> None:
    """Send raw bytes: blocking for small messages, Isend + `wait` for large ones."""
    if buf.nbytes < POLL_BYTES:
        comm.Send([buf, BYTE], dest, tag)
    else:
        wait(comm.Isend([buf, BYTE], dest, tag))


def recv_bytes(comm: MPI.Comm, buf: np.ndarray, source: int, tag: int) -> None:
    """Receive raw bytes: blocking for small messages, Irecv + `wait` for large ones."""
    if buf.nbytes < POLL_BYTES:
        comm.Recv([buf, BYTE], source, tag)
    else:
        wait(comm.Irecv([buf, BYTE], source, tag))


def flat(sendbuf, recvbuf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check the buffers and return 1-D views (send, recv); `send is recv` when in place.

    `sendbuf` may be `recvbuf` itself or `MPI.IN_PLACE`; shapes may differ but sizes and dtypes must match.
    """
    if sendbuf is MPI.IN_PLACE or sendbuf is recvbuf:
        recv = _view1d(recvbuf, "recvbuf")
        return recv, recv
    send, recv = _view1d(sendbuf, "sendbuf"), _view1d(recvbuf, "recvbuf")
    if send.dtype != recv.dtype or send.size != recv.size:
        raise ValueError(
            f"sendbuf ({send.size} x {send.dtype}) and recvbuf ({recv.size} x {recv.dtype}) "
            "must have the same size and dtype"
        )
    # Two arrays that own their memory are separate allocations; else bounds (exact for contiguous).
    if (sendbuf.base is not None or recvbuf.base is not None) and np.may_share_memory(send, recv):
        raise ValueError("sendbuf and recvbuf overlap; pass the same array (or MPI.IN_PLACE) for in place")
    return send, recv


def nothing_to_exchange(send: np.ndarray, recv: np.ndarray, p: int) -> bool:
    """One rank or an empty buffer: the result is the input (copied when out of place)."""
    if p == 1 or send.size == 0:
        if send is not recv:
            np.copyto(recv, send)
        return True
    return False


def _view1d(buf, name: str) -> np.ndarray:
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(buf).__name__}")
    if buf.ndim == 1 and buf.flags.c_contiguous:
        return buf
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (shape {buf.shape}, strides {buf.strides})")
    return buf.reshape(-1)


def scratch(dtype: np.dtype, size: int, slot: int = 0) -> np.ndarray:
    """A reusable per-thread scratch array of `size` items; grows, never shrinks (one per dtype, slot)."""
    cache = getattr(_scratch, "bufs", None)
    if cache is None:
        cache = _scratch.bufs = {}
    key = (dtype, slot)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(max(size, 1), dtype=dtype)
    return buf[:size]


def clear_scratch() -> None:
    """Drop this thread's scratch buffers (they are kept between calls to avoid allocations)."""
    _scratch.bufs = {}


def fold(rank: int, p: int) -> tuple[int, int]:
    """MPICH-style fold of p to the largest power of two p2 <= p: return (p2, newrank or -1).

    The first 2*(p-p2) ranks pair up (even -> odd); even ones sit out (newrank -1).
    """
    p2 = 1 << (p.bit_length() - 1)
    rem = p - p2
    if rank < 2 * rem:
        return p2, (rank // 2 if rank % 2 else -1)
    return p2, rank - rem


def unfold(newrank: int, p: int) -> int:
    """Inverse of `fold`: the real rank of a participating newrank."""
    rem = p - (1 << (p.bit_length() - 1))
    return newrank * 2 + 1 if newrank < rem else newrank + rem
