"""Baseline: real Horovod (`horovod.torch.DistributedOptimizer`) on the MPI world of this job.

Horovod is initialised on mpi4py's COMM_WORLD, rank 0's parameters and optimizer state are
broadcast, and its fusion buffer is set to `--bucket-mb` so it fuses like our own buckets. Exposed
communication = time in `optimizer.synchronize()` after backward (its allreduces start in hooks).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from hpc.workloads.models import loss_fn
from hpc.workloads.sync.base import SchemeFacts, StepResult, TrainContext, Trainer, make_optimizer

FACTS = SchemeFacts()  # lock-step, CPU here, no server ranks

if TYPE_CHECKING:
    import torch


class HorovodTrainer(Trainer):
    name = "horovod"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(ctx.opts.bucket_mb * (1 << 20)))
        import horovod.torch as hvd

        self.hvd = hvd
        hvd.init(comm=ctx.comm)
        model = ctx.model
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = make_optimizer(model.parameters(), ctx.opts)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        compression = hvd.Compression.fp16 if ctx.opts.fp16_compress else hvd.Compression.none
        self.optimizer = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                                  compression=compression, op=hvd.Average)

    def step(self, x: "torch.Tensor", y: "torch.Tensor") -> StepResult:
        t0 = time.perf_counter()
        opt = self.optimizer
        opt.zero_grad()
        loss = loss_fn(self.ctx.cfg, self.ctx.model(x), y)
        loss.backward()
        t1 = time.perf_counter()
        opt.synchronize()
        t2 = time.perf_counter()
        with opt.skip_synchronize():
            opt.step()
        value = float(loss.detach())
        t3 = time.perf_counter()
        return StepResult(value, (t1 - t0) + (t3 - t2), t2 - t1)

    def bytes_per_step(self) -> int:
        return super().bytes_per_step() // (2 if self.ctx.opts.fp16_compress else 1)

    def summary(self) -> dict[str, Any]:
        return {"bucket_mb": self.ctx.opts.bucket_mb, "fp16_compress": self.ctx.opts.fp16_compress,
                "overlap": True, "horovod": _version()}

    def close(self) -> None:
        self.hvd.shutdown()


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("horovod")
    except metadata.PackageNotFoundError:
        return None


def make(ctx: TrainContext) -> Trainer:
    return HorovodTrainer(ctx)
