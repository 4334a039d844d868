"""Plug-ins as a user writes them: plain functions, no import of hpc, point-to-point only."""

import numpy as np
from mpi4py import MPI

_UFUNC = {"SUM": np.add, "MAX": np.maximum, "MIN": np.minimum, "PROD": np.multiply}


def _ufunc(op):
    for name, f in _UFUNC.items():
        if op == getattr(MPI, name):
            return f
    raise NotImplementedError("unsupported op")


def allreduce(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Gather to rank 0 with Send/Recv, reduce there in rank order, send the result back."""
    f = _ufunc(op)
    acc = np.array(sendbuf, copy=True)
    if comm.rank == 0:
        tmp = np.empty_like(acc)
        for r in range(1, comm.size):
            comm.Recv(tmp, source=r, tag=7)
            f(acc, tmp, out=acc)
        for r in range(1, comm.size):
            comm.Send(acc, dest=r, tag=8)
    else:
        comm.Send(acc, dest=0, tag=7)
        comm.Recv(acc, source=0, tag=8)
    recvbuf[...] = acc


def off_by_one(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Correct except one element on rank 1, for sizes above 3: the kind of bug verify must catch."""
    allreduce(comm, sendbuf, recvbuf, op)
    if comm.rank == 1 and recvbuf.size > 3:
        recvbuf[3] += 1


def sum_only(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Refuses every op but SUM, as the contract allows."""
    if op != MPI.SUM:
        raise NotImplementedError("only SUM")
    allreduce(comm, sendbuf, recvbuf, op)


def two_args(comm, buf):
    """Wrong signature."""


def raises_on_rank2(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Rank 2 dies while the others wait for it: the job must end, not hang."""
    if comm.rank == 2:
        raise RuntimeError("injected failure")
    comm.Barrier()


def deadlocks(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Every rank waits for a message nobody sends."""
    if comm.size > 1:
        comm.Recv(np.empty(1), source=(comm.rank + 1) % comm.size, tag=99)


def fails_with_two_ranks(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Correct on any rank count but two: a sweep must record that point failed and go on."""
    if comm.size == 2:
        raise RuntimeError("two ranks are not supported")
    allreduce(comm, sendbuf, recvbuf, op)
