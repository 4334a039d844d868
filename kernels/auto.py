"""Automatic choice of allreduce algorithm by message size (bytes) and rank count.

recursive_doubling below `small`, rabenseifner below `large`, ring from `large` on. Thresholds are
crossovers measured on the development machine (2 cores, Open MPI 5.0.11 shared memory, float32,
SUM; ranks beyond 2 share cores), median of 9 interleaved repetitions, 2026-11-23, with
  mpirun -n P python -m mpi4py -m kernels.tune crossover
  p=2: rabenseifner beats recursive_doubling from 4 MB, ring beats rabenseifner from 8 MB
  p=3: 256 KB and 1 MB (the non-power-of-two fold makes rabenseifner lose to ring early)
  p=4: 128-256 KB and 4 MB (three runs; at 4 MB ring and rabenseifner are within noise)
  p=6: 4 MB / 4 MB; p=8: 1 MB / 16 MB (one noisy run each) -> p >= 5 uses 1 MB and 8 MB.
Re-measure on a new machine and pass the result to `choose(..., table=...)` or edit THRESHOLDS.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from . import _shm, hier, rabenseifner, recursive_doubling, ring, shm

KB, MB = 1024, 1024 * 1024
THRESHOLDS: dict[int, tuple[int, int]] = {2: (4 * MB, 8 * MB), 3: (256 * KB, 1 * MB), 4: (256 * KB, 4 * MB)}
DEFAULT = (1 * MB, 8 * MB)  # p >= 5
SHM_MAX: dict[int, int] = {}  # shm / hier below this many bytes (per p), point-to-point above
SHM_MAX_DEFAULT = 1 << 62
_OK_OPS = {op.py2f() for op in (MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN, MPI.LAND, MPI.LOR, MPI.LXOR,
                                MPI.BAND, MPI.BOR, MPI.BXOR)}


def choose(nbytes: int, p: int, table: dict[int, tuple[int, int]] = THRESHOLDS):
    """Return the allreduce function auto uses for a message of nbytes on p ranks."""
    small, large = table.get(p, DEFAULT)
    if nbytes < small:
        return recursive_doubling.allreduce
    return rabenseifner.allreduce if nbytes < large else ring.allreduce


def choose_node(nbytes: int, p: int, node: _shm.Node):
    """Shared memory where the ranks can use it: `shm` on one node, `hier` across nodes with more
    than one rank on some node (else point-to-point); `ring` from SHM_MAX on (see THRESHOLDS)."""
    if nbytes >= SHM_MAX.get(p, SHM_MAX_DEFAULT):
        return choose(nbytes, p)
    if node.nodes == 1:
        return shm.allreduce
    return hier.allreduce if node.nodes < p else choose(nbytes, p)


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce with the algorithm `choose_node` picks (same contract as `comm.Allreduce`)."""
    p = comm.Get_size()
    nbytes = getattr(recvbuf, "nbytes", 0)
    if p == 1 or not isinstance(op, MPI.Op) or op.py2f() not in _OK_OPS:
        return choose(nbytes, p)(comm, sendbuf, recvbuf, op)  # these raise or copy; no window needed
    choose_node(nbytes, p, _shm.node_of(comm))(comm, sendbuf, recvbuf, op)
