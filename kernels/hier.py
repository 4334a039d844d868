"""Hierarchical allreduce: shared-memory reduce in each node, allreduce between nodes, shared-memory
broadcast in each node (the shape of NCCL's and Horovod's hierarchical allreduce).

Small messages: one flag sync gives every local rank the node's sum; local rank 0 allreduces it with
the other nodes' rank 0 and publishes the result for one more sync. Large messages: the node's sum is
built in a shared vector R (see `shm`); then local rank j allreduces slice j of R with local rank j
of every other node (`slices` rails at once, so inter-node traffic is spread over local ranks instead
of funnelled through one leader); all copy R out after a last sync. Inter-node steps use the
point-to-point kernel `_pick.point_to_point` (auto's choice) picks for that size and node count.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from . import _shm
from ._common import blocks, flat, nothing_to_exchange, ufunc
from ._pick import point_to_point

# Inter-node rails for large messages: 0 = every local rank (min over nodes), 1 = leaders only.
# Measured (p=4, 2 simulated nodes, kernels.tune bandwidth, 5 reps): leaders 1.05-1.65 GB/s busbw at
# 1-4 MB against 0.93-1.37 for two rails, equal at 16 MB -> leaders. (Rails should pay off with
# several NICs per node; pass slices=0 to try.)
SLICES = 1


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM,
              slices: int = SLICES) -> None:
    """Allreduce: node-local shm reduce, inter-node allreduce, node-local copy-out (contract of Allreduce)."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    if nothing_to_exchange(send, recv, comm.Get_size()):
        return
    node = _shm.node_of(comm)
    if send.nbytes <= _shm.SMALL_BYTES:
        _shm.reduce_small(node, send, recv, fn, op, "hier")
        if node.nodes == 1:
            return
        _, mats, mine, _ = _shm.small_plan(node, send.size, send.dtype, op)
        q = (node.count + 1) & 1
        if node.rank == 0:
            rail = node.rails[0]
            point_to_point(recv.nbytes, rail.Get_size())(rail, recv, recv, op)
            np.copyto(mine[q], recv)
        node.arrive()
        if node.rank:
            np.copyto(recv, mats[q][0])
        return
    R = _shm.reduce_large(node, send, fn, _shm.signature(send.nbytes, send.dtype, op), "hier")
    if node.nodes > 1:
        s = min(slices or node.nslices, node.nslices)
        if node.rank < s:
            off = blocks(send.size, s)
            part = R[: send.size][off[node.rank]:off[node.rank + 1]]
            rail = node.rails[node.rank]
            point_to_point(part.nbytes, rail.Get_size())(rail, part, part, op)
        node.arrive()
    np.copyto(recv, R[: send.size])
