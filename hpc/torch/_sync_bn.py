"""SyncBatchNorm: batch normalization with the statistics of the whole global batch (Horovod's class).

Horovod's version calls torch's CUDA-only batch-norm kernels and refuses CPU input. This one works on
any device: each rank's per-channel sum, sum of squares and count go through one differentiable
allreduce (Sum), so the backward pass is the allreduce of the gradients by construction (Horovod's
sum_dy / sum_dy_xmu exchange). Sums are taken in float64, so E[x^2] - E[x]^2 does not cancel badly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from hpc.torch._autograd import allreduce
from hpc.torch._basics import Sum, size


class SyncBatchNorm(_BatchNorm):
    """Like torch.nn.BatchNorm{1,2,3}d (input (N, C, ...)), normalized over every rank's batch."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        if (not self.training and self.track_running_stats) or size() == 1:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or not self.track_running_stats, self._factor(), self.eps)
        return self._synced(input)

    def _factor(self) -> float:
        if self.momentum is None:  # cumulative moving average, as _BatchNorm
            return 1.0 / float(self.num_batches_tracked) if self.num_batches_tracked > 0 else 0.0
        return float(self.momentum)

    def _synced(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        xd = x.double()
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           torch.tensor([x.numel() // x.size(1)], dtype=torch.float64, device=x.device)])
        total = allreduce(local, op=Sum, name="sync_batch_norm.stats")
        c = x.size(1)
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                f = self._factor()
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        shape = [1, c] + [1] * (x.dim() - 2)
        invstd = torch.rsqrt(var + self.eps)
        out = (xd - mean.view(shape)) * invstd.view(shape)
        out = out.to(x.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module: Any) -> Any:
        """Replace every BatchNorm layer of `module` by a SyncBatchNorm with the same state."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    out.weight.copy_(module.weight)
                    out.bias.copy_(module.bias)
            if module.track_running_stats:
                out.running_mean, out.running_var = module.running_mean, module.running_var
                out.num_batches_tracked = module.num_batches_tracked
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child))
        return out
