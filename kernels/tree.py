"""Binomial-tree allreduce: reduce to rank 0, then broadcast from rank 0 (point-to-point only).

log2(p) latency each way but the whole buffer on every edge: a baseline for small messages.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ._common import flat, nothing_to_exchange, recv_bytes, scratch, send_bytes, ufunc

TAG = 7301


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce by binomial reduce + binomial broadcast (same contract as `comm.Allreduce`)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    rank, p = comm.Get_rank(), comm.Get_size()
    if nothing_to_exchange(send, recv, p):
        return
    tmp = scratch(send.dtype, send.size)
    cur = send
    mask = 1
    while mask < p:  # reduce: children rank+mask send to rank; a rank with bit `mask` set sends up
        if rank & mask:
            send_bytes(comm, cur, rank - mask, TAG)
            break
        if rank + mask < p:
            recv_bytes(comm, tmp, rank + mask, TAG)
            fn(cur, tmp, out=recv)  # own (lower ranks') data first
            cur = recv
        mask <<= 1
    # broadcast: rank 0 holds the result; a rank receives from the parent it sent to, then forwards
    if rank:
        recv_bytes(comm, recv, rank - mask, TAG)
    mask >>= 1
    while mask:
        if rank + mask < p:
            send_bytes(comm, recv, rank + mask, TAG)
        mask >>= 1
