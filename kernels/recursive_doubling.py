"""Recursive-doubling allreduce: log2(p) full-buffer exchanges; best for small messages.

Non-power-of-two p is folded MPICH-style: the first 2*(p - p2) ranks pair up, the even one hands its
data to the odd one, sits out the doubling, and gets the result back at the end.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ._common import (
    flat,
    fold,
    nothing_to_exchange,
    recv_bytes,
    scratch,
    send_bytes,
    sendrecv_bytes,
    ufunc,
    unfold,
)

TAG = 7101


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce by recursive doubling (same contract as `comm.Allreduce`)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    rank, p = comm.Get_rank(), comm.Get_size()
    if nothing_to_exchange(send, recv, p):
        return
    tmp = scratch(send.dtype, send.size)
    cur = send  # holds this rank's partial result; becomes recv after the first reduction
    p2, newrank = fold(rank, p)
    rem = p - p2
    if rank < 2 * rem:
        if newrank < 0:  # even: hand data to rank+1, wait for the result
            send_bytes(comm, send, rank + 1, TAG)
            recv_bytes(comm, recv, rank + 1, TAG)
            return
        recv_bytes(comm, tmp, rank - 1, TAG)
        fn(tmp, send, out=recv)  # lower rank's data first, as everywhere below
        cur = recv
    mask = 1
    while mask < p2:
        partner_new = newrank ^ mask
        partner = unfold(partner_new, p)
        sendrecv_bytes(comm, cur, partner, tmp, partner, TAG)
        if partner_new < newrank:
            fn(tmp, cur, out=recv)
        else:
            fn(cur, tmp, out=recv)
        cur = recv
        mask <<= 1
    if rank < 2 * rem:
        send_bytes(comm, recv, rank - 1, TAG)
