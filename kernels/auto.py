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

from kernels import rabenseifner, recursive_doubling, ring

KB, MB = 1024, 1024 * 1024
THRESHOLDS: dict[int, tuple[int, int]] = {2: (4 * MB, 8 * MB), 3: (256 * KB, 1 * MB), 4: (256 * KB, 4 * MB)}
DEFAULT = (1 * MB, 8 * MB)  # p >= 5


def choose(nbytes: int, p: int, table: dict[int, tuple[int, int]] = THRESHOLDS):
    """Return the allreduce function auto uses for a message of nbytes on p ranks."""
    small, large = table.get(p, DEFAULT)
    if nbytes < small:
        return recursive_doubling.allreduce
    return rabenseifner.allreduce if nbytes < large else ring.allreduce


def allreduce(comm: MPI.Comm, sendbuf: np.ndarray, recvbuf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """Allreduce with the algorithm `choose` picks (same contract as `comm.Allreduce`)."""
    choose(getattr(recvbuf, "nbytes", 0), comm.Get_size())(comm, sendbuf, recvbuf, op)
