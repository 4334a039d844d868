"""A correct allreduce that does exactly twice native MPI's work: the known 2x regression that
`hpc compare` must call worse (issue 21's benchmark, results/verdicts.md)."""

import numpy as np
from mpi4py import MPI


def allreduce(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Native MPI_Allreduce twice; the second gives the same answer again."""
    if recvbuf is sendbuf:  # in place: reduce a copy of the input first, then the input itself
        comm.Allreduce(np.array(sendbuf, copy=True), np.empty_like(recvbuf), op)
        comm.Allreduce(MPI.IN_PLACE, recvbuf, op)
        return
    comm.Allreduce(sendbuf, recvbuf, op)
    comm.Allreduce(sendbuf, recvbuf, op)
