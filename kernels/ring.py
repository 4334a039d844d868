"""Ring allreduce: reduce-scatter then allgather over p-1 + p-1 neighbour steps (bandwidth-optimal).

Each block is reduced once, in ring order, by one rank and then passed around, so every rank ends
bit-identical. Blocks are cut into segments so that, within a step, reducing one segment overlaps
the transfer of the next (two cache-sized scratch buffers, no per-step allocation, no copy of sendbuf).
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from kernels._common import BYTE, blocks, flat, scratch, ufunc

TAG = 7401
SEGMENT_BYTES = 512 * 1024  # reduce-scatter pipeline segment; cache-sized


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM,
              segment_bytes: int = SEGMENT_BYTES) -> None:
    """Allreduce by the pipelined ring algorithm (same contract as `comm.Allreduce`)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    rank, p, n = comm.Get_rank(), comm.Get_size(), send.size
    if p == 1 or n == 0:
        if send is not recv:
            np.copyto(recv, send)
        return
    off = blocks(n, p)
    right, left = (rank + 1) % p, (rank - 1) % p
    maxcount = off[1] - off[0]
    nseg = max(1, -(-maxcount * send.itemsize // max(segment_bytes, 1)))
    seglen = -(-maxcount // nseg)
    tmp = (scratch(send.dtype, seglen, 0), scratch(send.dtype, seglen, 1))

    # Reduce-scatter: at step s send block rank-s, receive block rank-s-1 and reduce it into recv.
    # The block sent at step s was reduced at step s-1 (or is own data at s == 0), so the sendbuf is
    # read directly and never copied; recv is written once per block.
    src = send
    for s in range(p - 1):
        sb, rb = (rank - s) % p, (rank - s - 1) % p
        if nseg == 1:
            t = tmp[0][: off[rb + 1] - off[rb]]
            comm.Sendrecv([src[off[sb]:off[sb + 1]], BYTE], right, TAG, [t, BYTE], left, TAG)
            fn(send[off[rb]:off[rb + 1]], t, out=recv[off[rb]:off[rb + 1]])
        else:
            _pipelined_step(comm, fn, send, recv, src, sb, rb, off, nseg, tmp, left, right)
        src = recv

    # Allgather: block rank+1 is final here; pass final blocks around the ring straight into recv.
    for s in range(p - 1):
        sb, rb = (rank + 1 - s) % p, (rank - s) % p
        comm.Sendrecv([recv[off[sb]:off[sb + 1]], BYTE], right, TAG + 1,
                      [recv[off[rb]:off[rb + 1]], BYTE], left, TAG + 1)


def _pipelined_step(comm, fn, send, recv, src, sb, rb, off, nseg, tmp, left, right) -> None:
    """One reduce-scatter step in segments: post segment j+1, then reduce segment j."""
    ss, rs = blocks(off[sb + 1] - off[sb], nseg), blocks(off[rb + 1] - off[rb], nseg)
    s0, r0 = off[sb], off[rb]
    sends = []
    rreq = None

    def post(j):
        t = tmp[j & 1][: rs[j + 1] - rs[j]]
        r = comm.Irecv([t, BYTE], left, TAG)
        sends.append(comm.Isend([src[s0 + ss[j]:s0 + ss[j + 1]], BYTE], right, TAG))
        return r, t

    rreq, t = post(0)
    for j in range(nseg):
        if j + 1 < nseg:
            nxt = post(j + 1)
        rreq.Wait()
        a, b = r0 + rs[j], r0 + rs[j + 1]
        fn(send[a:b], t, out=recv[a:b])
        if j + 1 < nseg:
            rreq, t = nxt
    MPI.Request.Waitall(sends)
