"""Single-node allreduce through an MPI-3 shared window: no messages, each rank reduces 1/p in place.

Small messages (<= `_shm.SMALL_BYTES`): every rank writes its input into its slot and, after one flag
sync, reduces all p slots itself (one ufunc call; cheaper than a second sync). Larger ones: every rank
copies its input into its slot S_j; after a sync each reduces its 1/p portion of all slots, chunk by
chunk so the result stays in cache, into the shared result R; after a second sync all copy R out.
Memory moved per rank ~ 3n (copy in, read p portions, copy out) against 2(p-1)/p n per step for ring.
Synchronisation and window caching: see `kernels._shm`.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from . import _shm
from ._common import flat, nothing_to_exchange, ufunc


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM,
              round_bytes: int = 0) -> None:
    """Allreduce on shared memory (same contract as `comm.Allreduce`); comm must be one node."""
    fn = ufunc(op)
    send, recv = flat(sendbuf, recvbuf)
    if nothing_to_exchange(send, recv, comm.Get_size()):
        return
    node = _shm.node_of(comm)
    if node.nodes > 1:
        raise ValueError(f"shm: the communicator spans {node.nodes} nodes (ranks that cannot share "
                         "memory); use 'hier' (shared memory within nodes, ring between them)")
    if send.nbytes <= _shm.SMALL_BYTES:
        _shm.reduce_small(node, send, recv, fn, op, "shm")
    else:
        sig = _shm.signature(send.nbytes, send.dtype, op)
        _shm.reduce_rounds(node, send, recv, fn, sig, "shm", round_bytes or _shm.ROUND_BYTES)
