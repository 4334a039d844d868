"""Model factories that misbehave the ways the third reliability sweep found (no hpc import).

`other_on_rank1`: rank 1 builds another architecture with exactly as many float32 bytes as rank 0's
(172 parameters), so a byte-count check cannot tell. `exits`: the factory calls sys.exit(0).
"""

import os
import sys

from torch import nn


def _rank() -> int:
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def other_on_rank1() -> nn.Module:
    """16 features -> 4 classes; rank 1: 16 -> 6 -> 6 -> 4 instead of 16 -> 8 -> 4 (172 params each)."""
    if _rank() == 1:
        return nn.Sequential(nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4))
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def exits() -> nn.Module:
    sys.exit(0)
