"""Rabenseifner allreduce: reduce-scatter by recursive halving, then allgather by recursive doubling.

Moves 2(p-1)/p of the buffer per rank in 2*log2(p) steps: good for medium and large messages.
Non-power-of-two p uses the same fold as `recursive_doubling`.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ._common import (
    blocks,
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

TAG = 7201


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce by recursive halving + recursive doubling (same contract as `comm.Allreduce`)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    rank, p, n = comm.Get_rank(), comm.Get_size(), send.size
    if nothing_to_exchange(send, recv, p):
        return
    p2, newrank = fold(rank, p)
    rem = p - p2
    cur = send  # this rank's data; after the first reduction the live data sits in recv
    if rank < 2 * rem:
        if newrank < 0:  # even: hand data to rank+1, wait for the result
            send_bytes(comm, send, rank + 1, TAG)
            recv_bytes(comm, recv, rank + 1, TAG)
            return
        tmp = scratch(send.dtype, n)
        recv_bytes(comm, tmp, rank - 1, TAG)
        fn(tmp, send, out=recv)
        cur = recv
    off = blocks(n, p2)
    tmp = scratch(send.dtype, off[p2 // 2])  # the largest half is the first one
    lo, hi = 0, p2  # block range [lo, hi) this rank is responsible for
    mask = p2 >> 1
    while mask:  # recursive halving: keep half of [lo, hi), send the other half to the partner
        partner_new = newrank ^ mask
        partner = unfold(partner_new, p)
        mid = lo + (hi - lo) // 2
        if newrank & mask:
            keep, give = (mid, hi), (lo, mid)
        else:
            keep, give = (lo, mid), (mid, hi)
        k0, k1 = off[keep[0]], off[keep[1]]
        g0, g1 = off[give[0]], off[give[1]]
        t = tmp[: k1 - k0]
        sendrecv_bytes(comm, cur[g0:g1], partner, t, partner, TAG)
        if partner_new < newrank:
            fn(t, cur[k0:k1], out=recv[k0:k1])
        else:
            fn(cur[k0:k1], t, out=recv[k0:k1])
        lo, hi = keep
        cur = recv
        mask >>= 1
    # recv[off[lo]:off[hi]] now holds the final values of block newrank (hi == lo + 1)
    mask = 1
    while mask < p2:  # recursive doubling allgather: swap ranges, the range doubles each step
        partner_new = newrank ^ mask
        partner = unfold(partner_new, p)
        size = hi - lo
        if newrank & mask:
            plo, phi = lo - size, lo
        else:
            plo, phi = hi, hi + size
        sendrecv_bytes(comm, recv[off[lo]:off[hi]], partner, recv[off[plo]:off[phi]], partner, TAG)
        lo, hi = min(lo, plo), max(hi, phi)
        mask <<= 1
    if rank < 2 * rem:
        send_bytes(comm, recv, rank - 1, TAG)
