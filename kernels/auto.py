"""Automatic choice of allreduce algorithm by message size and rank count.

Crossovers: TO BE MEASURED.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from kernels import rabenseifner, recursive_doubling, ring

SMALL_BYTES = 16 * 1024  # below: recursive doubling (latency-bound)
LARGE_BYTES = 512 * 1024  # from here: ring (bandwidth-bound); in between: Rabenseifner


def choose(nbytes: int, p: int):
    """Return the allreduce function auto uses for a message of nbytes on p ranks."""
    if nbytes < SMALL_BYTES or p <= 2:
        return recursive_doubling.allreduce if nbytes < SMALL_BYTES else ring.allreduce
    return rabenseifner.allreduce if nbytes < LARGE_BYTES else ring.allreduce


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce with the algorithm `choose` picks (same contract as `comm.Allreduce`)."""
    choose(recvbuf.nbytes, comm.Get_size())(comm, sendbuf, recvbuf, op)
