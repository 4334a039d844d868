"""Native baseline: the MPI library's own `MPI_Allreduce` (what every kernel is compared against)."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """`comm.Allreduce`, with `recvbuf is sendbuf` mapped to MPI.IN_PLACE."""
    if sendbuf is recvbuf:
        sendbuf = MPI.IN_PLACE
    comm.Allreduce(sendbuf, recvbuf, op)
