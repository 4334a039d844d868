"""Single-node allreduce through an MPI-3 shared window: no messages, each rank reduces 1/p of it.

Small messages (<= `_shm.SMALL_BYTES`): every rank writes its input into its slot and, after one flag
sync, reduces all p slots itself (cheaper than a second sync). Larger ones stream through the window
in rounds of `_shm.ROUND_BYTES` (`_shm.reduce_rounds`): copy a round in, one sync, reduce this rank's
1/p of it chunk by chunk (result straight into recvbuf too), copy the other portions out while the
next round is copied in. 4 MB rounds beat 0.5-2 MB ones (kernels.tune bandwidth, p=4).

Bytes: per rank and call, copy-in (p-1)/p*n read + written, the reduce reads n and writes 2n/p, the
copy-out (p-1)/p*n read + written: 4.5n at p=4, the least any copy-in/copy-out scheme moves. On the
2-core development VM a 4 MB call (72 MB over 4 ranks) takes 1.5-1.9 ms, i.e. 38-48 GB/s, that
machine's rate for data written on one core and read on the other (41-63 GB/s measured): there shm
is memory-bound: 1.4-1.5x native busbw at 4-16 MB, 1.7-1.8x at 32-64 MB (medians of five runs with
interleaved batches; results/2026-11-29.md). Measured no better there: reading peers' sendbufs directly
with process_vm_readv (3n bytes, but page pinning costs it back), 1 MB rounds, non-temporal stores,
ranks bound to cores (worse).
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
