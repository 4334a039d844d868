"""Ring allreduce: reduce-scatter then allgather over p-1 + p-1 neighbour steps (bandwidth-optimal).

Each block is reduced once, in ring order, by one rank and then passed around, so every rank ends
bit-identical. Blocks are cut into segments that stream through the ring: a segment is forwarded as
soon as it is reduced (or, in the allgather, received), so no rank waits for a whole step. Receives
go to a few cache-sized scratch segments; sendbuf is read in place, never copied; no per-call allocation
besides MPI requests.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ._common import BYTE, blocks, flat, nothing_to_exchange, scratch, ufunc, wait, waitall

TAG = 7401
SEGMENT_BYTES = 512 * 1024  # pipeline unit: cache-sized, large enough to amortise a message
WINDOW = 2  # reduce-scatter receives posted ahead (scratch segments)


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM,
              segment_bytes: int = SEGMENT_BYTES) -> None:
    """Allreduce by the pipelined ring algorithm (same contract as `comm.Allreduce`)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    rank, p, n = comm.Get_rank(), comm.Get_size(), send.size
    if nothing_to_exchange(send, recv, p):
        return
    off = blocks(n, p)
    right, left = (rank + 1) % p, (rank - 1) % p
    maxcount = off[1] - off[0]
    nseg = max(1, min(maxcount, -(-maxcount * send.itemsize // max(segment_bytes, 1))))
    seg = []  # seg[b][j] = (start, stop) of segment j of block b; same cut on every rank
    for b in range(p):
        cut = blocks(off[b + 1] - off[b], nseg)
        seg.append([(off[b] + cut[j], off[b] + cut[j + 1]) for j in range(nseg)])
    units = (p - 1) * nseg  # unit u = (step u // nseg, segment u % nseg), in the order they flow
    w = min(WINDOW, units)
    tmp = [scratch(send.dtype, -(-maxcount // nseg), i) for i in range(w)]

    def rs_irecv(u: int) -> MPI.Request:
        a, b = seg[(rank - u // nseg - 1) % p][u % nseg]
        return comm.Irecv([tmp[u % w][: b - a], BYTE], left, TAG)

    # Reduce-scatter. Step s sends block rank-s and reduces block rank-s-1; a reduced segment is the
    # one to send at step s+1, so it goes right away. Step 0 sends own data straight from sendbuf.
    rreqs = [rs_irecv(u) for u in range(w)]
    sends = [comm.Isend([send[a:b], BYTE], right, TAG) for a, b in seg[rank]]
    agreqs: list[MPI.Request] = []
    for u in range(units):
        s, j = divmod(u, nseg)
        a, b = seg[(rank - s - 1) % p][j]
        wait(rreqs[u % w])
        fn(send[a:b], tmp[u % w][: b - a], out=recv[a:b])
        if u + w < units:
            rreqs[u % w] = rs_irecv(u + w)
        if s < p - 2:
            sends.append(comm.Isend([recv[a:b], BYTE], right, TAG))
            continue
        # Last step: block rank+1 is now final, segment by segment; start the allgather with it.
        # Every allgather receive lands in its own place in recv: post them all now. Some of those
        # places are still being sent from (pending Isends above, or sendbuf itself when in place),
        # but data for a block can only come back round the ring after the right neighbour has
        # received what we sent from it, so nothing is overwritten before it is delivered.
        if j == 0:
            for v in range(units):
                c, d = seg[(rank - v // nseg) % p][v % nseg]
                agreqs.append(comm.Irecv([recv[c:d], BYTE], left, TAG + 1))
        sends.append(comm.Isend([recv[a:b], BYTE], right, TAG + 1))

    # Allgather: forward each received segment of block rank-s at step s+1.
    for u in range(units):
        s, j = divmod(u, nseg)
        wait(agreqs[u])
        if s < p - 2:
            a, b = seg[(rank - s) % p][j]
            sends.append(comm.Isend([recv[a:b], BYTE], right, TAG + 1))
    waitall(sends)
