"""A correct allreduce that does 1.25x native MPI's work: the answer from native MPI_Allreduce,
plus a quarter-size Allreduce whose result is thrown away (issue 21's benchmark)."""

import numpy as np
from mpi4py import MPI

_scratch: dict = {}


def _spare(buf: np.ndarray, n: int) -> np.ndarray:
    """A reusable scratch buffer (allocating per call would time the allocator)."""
    key = (n, buf.dtype.str)
    if key not in _scratch:
        _scratch.clear()
        _scratch[key] = np.empty(n, dtype=buf.dtype)
    return _scratch[key]


def allreduce(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Native MPI_Allreduce, then the same on the first quarter of the input into scratch."""
    quarter = sendbuf.size // 4
    if quarter:
        comm.Allreduce(sendbuf.reshape(-1)[:quarter], _spare(sendbuf, quarter), op)
    comm.Allreduce(MPI.IN_PLACE if recvbuf is sendbuf else sendbuf, recvbuf, op)
