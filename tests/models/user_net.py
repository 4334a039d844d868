"""A user's model file, loaded as `hpc train --model tests/models/user_net.py:FACTORY` (no hpc import).

`net` is a small conv net with BatchNorm (running statistics = buffers) and keyword arguments;
`skewed` the same net starting from a different state on every rank; `tiny_lm` a token model; the
rest are broken factories for the bad-input tests.
"""

import os

import torch
from torch import nn


class Net(nn.Module):
    """conv -> BatchNorm2d -> pool -> linear -> BatchNorm1d -> linear (logits over `classes`)."""

    def __init__(self, channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(hidden), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, classes))
        self.register_buffer("shift", torch.zeros(1))  # a buffer training never changes

    def forward(self, x):
        return self.head(self.features(x + self.shift))


def net(channels: int = 3, hidden: int = 8, classes: int = 4) -> nn.Module:
    return Net(channels, hidden, classes)


def skewed(**kwargs) -> nn.Module:
    """net(), with every floating-point parameter and buffer offset by this process's MPI rank (as a
    factory seeding from the clock would): training must start every rank from rank 0's state."""
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
    model = net(**kwargs)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(rank)
    return model


def tiny_lm(vocab: int = 16, width: int = 16) -> nn.Module:
    """Embedding -> LayerNorm -> Linear: logits (batch, tokens, vocab)."""
    return nn.Sequential(nn.Embedding(vocab, width), nn.LayerNorm(width), nn.Linear(width, vocab))


def broken(**kwargs) -> nn.Module:
    raise RuntimeError("this factory is broken on purpose")


def not_a_module() -> int:
    return 42


def exits_on_rank1(**kwargs) -> nn.Module:
    """net(), but rank 1 calls sys.exit(5) while building it (a user's "bail out" path)."""
    import sys

    if int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0"))) == 1:
        sys.exit(5)
    return net(**kwargs)


def with_unused(**kwargs) -> nn.Module:
    """net() plus a layer the forward never uses (a frozen head, an auxiliary branch left off)."""
    model = net(**kwargs)
    model.unused = nn.Linear(3, 3)
    return model
