"""The user's own model and data for the Horovod-style scripts: a small conv net with a buffer, and a
deterministic global batch per step (every rank can cut its shard out of it)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES = 10


class Net(nn.Module):
    """conv-relu-conv-relu-pool-linear; `shift` is a buffer (random per rank until broadcast)."""

    def __init__(self, width: int = 8, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, CLASSES)
        self.register_buffer("shift", torch.randn(channels, 1, 1) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x + self.shift))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def global_batch(step: int, n: int, image: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s global batch of n images (the same on every rank and in the reference)."""
    g = torch.Generator().manual_seed(7919 * (step + 1))
    x = torch.randn(n, 3, image, image, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y


def flat_state(model: nn.Module) -> torch.Tensor:
    """Parameters and buffers, sorted by name, as one float64 vector."""
    return torch.cat([v.detach().reshape(-1).double() for _, v in sorted(model.state_dict().items())])


def reference(steps: int, n: int, width: int = 8, image: int = 16, lr: float = 0.05,
              momentum: float = 0.9) -> tuple[torch.Tensor, list[float]]:
    """Single-process training on the whole global batch (rank 0's initial model): the target."""
    torch.manual_seed(1000)
    model = Net(width)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    for step in range(steps):
        x, y = global_batch(step, n, image)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return flat_state(model), losses
