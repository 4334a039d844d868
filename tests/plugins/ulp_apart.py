"""A plug-in that is right within verification's tolerance but leaves rank 1 one ulp above rank 0:
ranks training with it would drift apart without noticing (hpc.torch must stop it)."""

import numpy as np
from mpi4py import MPI


def allreduce(comm, sendbuf, recvbuf, op=MPI.SUM):
    acc = np.array(sendbuf, copy=True)
    comm.Allreduce(MPI.IN_PLACE, acc, op)
    if comm.rank == 1 and acc.dtype.kind == "f":
        acc = np.nextafter(acc, np.inf).astype(acc.dtype)
    recvbuf[...] = acc
