"""Single-node allreduce through an MPI-3 shared window: no messages, each rank reduces 1/p of it.

Small messages (<= `_shm.SMALL_BYTES`): every rank writes its input into its slot and, after one flag
sync, reduces all p slots itself (one ufunc call; cheaper than a second sync). Larger ones stream
through the window in rounds of `_shm.ROUND_BYTES` (`_shm.reduce_rounds`): copy a round in, one
sync, reduce this rank's 1/p of it chunk by chunk (result straight into recvbuf too), copy the
other portions out while the next round is copied in. Measured (kernels.tune bandwidth, p=4,
2026-11-29): 1.4x native busbw at 4-8 MB, 1.6-1.7x at 16-64 MB; 4 MB rounds beat 0.5-2 MB ones.
A communicator spanning nodes is refused (use `hier`); what a "node" is: `_shm.node_color`.
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
