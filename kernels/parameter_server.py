"""Parameter-server allreduce: owners (servers) reduce their shard of the buffer and send it back.

servers=0: sharded, every rank owns 1/p of the buffer. servers=k: ranks 0..k-1 are dedicated servers,
each owning 1/k; the other ranks are workers that push their shards and pull the results. Servers'
own sendbuf is reduced too, so the `comm.Allreduce` contract holds on every rank.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ._common import BYTE, blocks, flat, nothing_to_exchange, scratch, ufunc

TAG = 7501


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM,
              servers: int = 0) -> None:
    """Allreduce through parameter servers (push shards to owners, owners reduce, pull results)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    rank, p, n = comm.Get_rank(), comm.Get_size(), send.size
    if servers < 0:
        raise ValueError(f"servers must be >= 0, got {servers}")
    if servers and p < servers + 1:
        raise ValueError(f"parameter server with servers={servers} needs at least {servers + 1} ranks "
                         f"(one worker or more), got {p}")
    k = servers or p  # number of owners: ranks 0..k-1, owner j holds shard j
    if nothing_to_exchange(send, recv, p):
        return
    off = blocks(n, k)
    # push: every rank sends shard j to owner j (an owner keeps its own shard in place)
    pushes = [comm.Isend([send[off[j]:off[j + 1]], BYTE], j, TAG) for j in range(k) if j != rank]
    reqs = []
    if rank < k:
        a, b = off[rank], off[rank + 1]
        m = b - a
        parts = scratch(send.dtype, p * m).reshape(p, m)  # row r: rank r's shard
        others = [r for r in range(p) if r != rank]
        reqs += [comm.Irecv([parts[r], BYTE], r, TAG) for r in others]
        out = recv[a:b]
        if send is recv:  # in place: keep own shard aside, out is overwritten while reducing
            np.copyto(parts[rank], out)
        contrib = [send[a:b] if r == rank and send is not recv else parts[r] for r in range(p)]
        MPI.Request.Waitall(reqs)
        reqs = []
        fn(contrib[0], contrib[1], out=out)  # rank order: ((x0 op x1) op x2) ..., deterministic
        for c in contrib[2:]:
            fn(out, c, out=out)
        # pull: owner sends its reduced shard to every other rank
        reqs += [comm.Isend([out, BYTE], r, TAG + 1) for r in others]
    MPI.Request.Waitall(pushes)  # in place, pulled shards land where the pushed ones were read
    # every rank receives the shards it does not own
    for j in range(k):
        if j != rank:
            reqs.append(comm.Irecv([recv[off[j]:off[j + 1]], BYTE], j, TAG + 1))
    MPI.Request.Waitall(reqs)
