"""Plug-ins that misbehave the ways the reliability trials found (each a plain user function)."""

import sys

import numpy as np
from mpi4py import MPI

MIB = 1 << 20


def _ok(comm, sendbuf, recvbuf, op):
    comm.Allreduce(sendbuf if sendbuf is not recvbuf else MPI.IN_PLACE, recvbuf, op)


def wrong_above_1mib(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right on small buffers, wrong from 1 MiB up (quick checks alone would miss it)."""
    _ok(comm, sendbuf, recvbuf, op)
    if recvbuf.nbytes > MIB:
        recvbuf[-1] += 1


def deadlocks_above_1mib(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right on small buffers, hangs from 1 MiB up."""
    if recvbuf.nbytes > MIB and comm.size > 1:
        comm.Recv(np.empty(1), source=(comm.rank + 1) % comm.size, tag=98)
    _ok(comm, sendbuf, recvbuf, op)


def exits_on_rank1(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Rank 1 leaves the program quietly (exit code 0) in the middle of the job."""
    if comm.rank == 1:
        sys.exit(0)
    _ok(comm, sendbuf, recvbuf, op)


def finalizes_on_rank1(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Rank 1 shuts MPI down under everybody's feet."""
    if comm.rank == 1:
        MPI.Finalize()
        sys.exit(0)
    _ok(comm, sendbuf, recvbuf, op)


def stray_message(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right answer, but leaves an unreceived message on tag 0 behind (could corrupt the next call)."""
    _ok(comm, sendbuf, recvbuf, op)
    if comm.size > 1:
        comm.Isend(np.zeros(4, dtype=np.int64), dest=(comm.rank + 1) % comm.size, tag=0)


def wrong_in_float16(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right for every dtype but float16 (fp16-compressed gradients)."""
    if recvbuf.dtype == np.float16:
        wide = np.asarray(sendbuf, dtype=np.float32)
        out = np.empty_like(wide)
        comm.Allreduce(wide, out, op)
        recvbuf[...] = (out * 1.5).astype(np.float16)
        return
    _ok(comm, sendbuf, recvbuf, op)


def writes_sendbuf(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right result, but it scribbles on its input afterwards (the buffer timing shares with others)."""
    _ok(comm, sendbuf, recvbuf, op)
    if sendbuf is not recvbuf:
        sendbuf[0] = -7


def raises_above_1kib(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right on small buffers; above 1 KiB rank 1 raises (a bug in one code path, on one rank)."""
    if recvbuf.nbytes > 1024 and comm.Get_rank() == 1:
        raise RuntimeError("boom above 1 KiB on rank 1")
    _ok(comm, sendbuf, recvbuf, op)


def wrong_in_float64(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Reduces float64 in float32 (precision lost): every other dtype is right."""
    if recvbuf.dtype == np.float64 and op == MPI.SUM:
        tmp = np.asarray(sendbuf, dtype=np.float32).copy()
        comm.Allreduce(MPI.IN_PLACE, tmp, op)
        recvbuf[...] = tmp + np.float64(1e-3)
        return
    _ok(comm, sendbuf, recvbuf, op)


def only_sum(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Refuses every op but SUM (a documented refusal, not a bug)."""
    if op != MPI.SUM:
        raise NotImplementedError("only SUM")
    _ok(comm, sendbuf, recvbuf, op)
