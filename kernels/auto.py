"""Automatic choice of allreduce algorithm by message size (bytes), rank count and node layout.

One node (all ranks share memory): `shm` below SHM_MAX[p], else point-to-point. Several nodes:
`hier` from HIER_MIN on when some node has more than one rank, else point-to-point. Point-to-point:
recursive_doubling below `small`, rabenseifner below `large`, ring from `large` on (THRESHOLDS).
Thresholds are crossovers measured on the development machine (2 cores, Open MPI 5.0.11 shared
memory, float32, SUM; ranks beyond 2 share cores), medians of interleaved repetitions, with
  mpirun -n P python -m mpi4py -m kernels.tune crossover      (prints the shm/ring crossover too)
Point-to-point, 2026-11-23, 9 reps:
  p=2: rabenseifner beats recursive_doubling from 4 MB, ring beats rabenseifner from 8 MB
  p=3: 256 KB and 1 MB (the non-power-of-two fold makes rabenseifner lose to ring early)
  p=4: 128-256 KB and 4 MB (three runs; at 4 MB ring and rabenseifner are within noise)
  p=6: 4 MB / 4 MB; p=8: 1 MB / 16 MB (one noisy run each) -> p >= 5 uses 1 MB and 8 MB.
shm against ring (machine shared with other work, load 4-8), 2026-11-29, 5 reps, 1-64 MB:
  p=2: ring beats shm from 4 MB (one rank per core: the kernel's CMA copies beat two passes
       through shared memory); p=3: from 4 MB; p=4: from 32 MB (shm 1.1-1.5x faster than ring
       at 1-16 MB); below 1 MB shm wins at every p (one flag sync instead of log2(p) messages).
  -> SHM_MAX 4 MB for p <= 3, 32 MB for p = 4, 8 MB (unmeasured) beyond.
hier (2 simulated nodes of 2 ranks, HPC_HIER_NODES=2, p=4): within noise of ring/mpi at 1-4 MB,
  behind recursive_doubling below 64 KB (here "between nodes" is shared memory too, so the
  inter-node step saves nothing); on real nodes it sends 1/local_size of the bytes between nodes.
  -> HIER_MIN 1 MB.
Re-measure on a new machine and pass the result to `choose(..., table=...)` or edit the tables.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from . import _shm, hier, shm
from ._common import flat, ufunc
from ._pick import DEFAULT, KB, MB, THRESHOLDS  # noqa: F401 (public names)
from ._pick import point_to_point as choose

SHM_MAX: dict[int, int] = {2: 4 * MB, 3: 4 * MB, 4: 32 * MB}  # one node: shm below, point-to-point from
SHM_MAX_DEFAULT = 8 * MB  # p >= 5
HIER_MIN = 1 * MB  # several nodes: hier from here on
_OK_OPS = {op.py2f() for op in (MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN, MPI.LAND, MPI.LOR, MPI.LXOR,
                                MPI.BAND, MPI.BOR, MPI.BXOR)}


def choose_node(nbytes: int, p: int, node: _shm.Node):
    """`shm` on one node below SHM_MAX; `hier` across nodes from HIER_MIN when some node has more
    than one rank; else the point-to-point `choose`."""
    if node.nodes == 1:
        return shm.allreduce if nbytes < SHM_MAX.get(p, SHM_MAX_DEFAULT) else choose(nbytes, p)
    return hier.allreduce if nbytes >= HIER_MIN and node.nodes < p else choose(nbytes, p)


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce with the algorithm `choose_node` picks (same contract as `comm.Allreduce`).

    Every rank must pass the same size, as for any kernel: sizes on either side of a threshold
    would pick different algorithms (the chosen kernel's own check cannot see that).
    """
    p = comm.Get_size()
    nbytes = getattr(recvbuf, "nbytes", 0)
    if p == 1 or not isinstance(op, MPI.Op) or op.py2f() not in _OK_OPS:
        return choose(nbytes, p)(comm, sendbuf, recvbuf, op)  # these raise or copy; no window needed
    node = _shm.node_of(comm)
    if node.nodes == 1 and nbytes <= _shm.SMALL_BYTES:  # latency-bound: shm's body, minus lookups
        send, recv = flat(sendbuf, recvbuf)
        if send.size:
            _shm.reduce_small(node, send, recv, ufunc(op), op, "auto")
        return None
    choose_node(nbytes, p, node)(comm, sendbuf, recvbuf, op)
