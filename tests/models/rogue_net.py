"""Model factories that misbehave the ways the third reliability sweep found (no hpc import).

`other_on_rank1`: rank 1 builds another architecture with exactly as many float32 bytes as rank 0's
(172 parameters), so a byte-count check cannot tell; `transposed_on_rank1`: the same names, count and
bytes, rank 1's weights stored transposed. `exits`: the factory calls sys.exit(0).
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


class _Shaped(nn.Module):
    """Linear layers whose weights are stored (8, 16) and (4, 8), or transposed: same names and bytes."""

    def __init__(self, transposed: bool) -> None:
        super().__init__()
        import torch

        self.transposed = transposed
        self.w1 = nn.Parameter(torch.randn((16, 8) if transposed else (8, 16)) * 0.1)
        self.w2 = nn.Parameter(torch.randn((8, 4) if transposed else (4, 8)) * 0.1)

    def forward(self, x):
        w1 = self.w1.t() if self.transposed else self.w1
        w2 = self.w2.t() if self.transposed else self.w2
        return (x @ w1.t()).relu() @ w2.t()


def transposed_on_rank1() -> nn.Module:
    """Same parameter names, count and bytes on every rank; rank 1 stores them transposed."""
    return _Shaped(_rank() == 1)
