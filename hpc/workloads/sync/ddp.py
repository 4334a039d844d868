"""Baseline: torch DistributedDataParallel, set up from MPI (no torchrun needed): NCCL on GPUs, gloo on CPUs.

RANK/WORLD_SIZE/LOCAL_RANK come from MPI, rank 0 picks a free MASTER_PORT and an address every rank
reaches (hpc.workloads.sync.rendezvous). DDP broadcasts rank 0's parameters at construction and
overlaps its bucket allreduces with backward; exposed communication = time from the last gradient to the end of backward.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hpc.errors import HpcError
from hpc.workloads.models import loss_fn
from hpc.workloads.sync.base import (LastGradClock, SchemeFacts, StepResult, TrainContext, Trainer, apply_env,
                                    make_optimizer)
from hpc.workloads.sync.rendezvous import torch_dist_env

FACTS = SchemeFacts(cuda=True, gpu_exclusive=True)  # lock-step; NCCL on cuda (a GPU per rank), gloo on cpu

if TYPE_CHECKING:
    import torch


def ensure_process_group(ctx: TrainContext) -> None:
    """A process group over the same ranks as the MPI world, created once per process: NCCL when the
    model is on a GPU (as DDP and DeepSpeed users run it; one GPU per rank), gloo on CPU.

    It is kept for later runs in the same process (DeepSpeed caches its groups and cannot start
    over after a destroy) and destroyed once at exit (without that, gloo may abort at exit).
    """
    import atexit
    import datetime

    import torch.distributed as dist

    from hpc.gpu import check_gpu_sharing, dist_backend

    backend = dist_backend(ctx.device.type)
    if dist.is_initialized():
        if dist.get_world_size() != ctx.comm.Get_size() or dist.get_rank() != ctx.comm.Get_rank():
            raise HpcError("torch.distributed is already initialised with another rank layout")
        if dist.get_backend() != backend:
            raise HpcError(f"torch.distributed is already initialised with {dist.get_backend()}, not {backend}")
        return
    if backend == "nccl":
        import torch

        check_gpu_sharing(ctx.sync or "ddp", ctx.local_size, torch.cuda.device_count())
    apply_env(torch_dist_env(ctx.comm, ctx.local_rank, ctx.local_size))
    dist.init_process_group(backend, rank=ctx.comm.Get_rank(), world_size=ctx.comm.Get_size(),
                            timeout=datetime.timedelta(minutes=10))
    atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    """End the process group (once; a no-op when there is none)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class DDPTrainer(Trainer):
    name = "ddp"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        from torch.nn.parallel import DistributedDataParallel

        ensure_process_group(ctx)
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(ctx.model, device_ids=ids, bucket_cap_mb=ctx.opts.bucket_mb,
                                           gradient_as_bucket_view=True,
                                           find_unused_parameters=ctx.opts.find_unused)
        if ctx.opts.fp16_compress:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            self.ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        self.optimizer = make_optimizer(self.ddp.parameters(), ctx.opts)
        self.clock = LastGradClock(ctx.model.parameters())

    def step(self, x: "torch.Tensor", y: "torch.Tensor") -> StepResult:
        t0 = time.perf_counter()
        self.optimizer.zero_grad()
        loss = loss_fn(self.ctx.cfg, self.ddp(x), y)
        self.clock.reset()
        loss.backward()  # DDP waits for its last allreduce at the end of backward
        t1 = time.perf_counter()
        exposed = self.clock.exposed_since(t1, t0)
        self.optimizer.step()
        value = float(loss.detach())
        t2 = time.perf_counter()
        return StepResult(value, (t2 - t0) - exposed, exposed)

    def bytes_per_step(self) -> int:
        return super().bytes_per_step() // (2 if self.ctx.opts.fp16_compress else 1)

    def summary(self) -> dict[str, Any]:
        import torch.distributed as dist

        return {"bucket_mb": self.ctx.opts.bucket_mb, "fp16_compress": self.ctx.opts.fp16_compress,
                "overlap": True, "backend": dist.get_backend()}

    def memory_layout(self) -> Any:
        from hpc.workloads.memory_count import Layout

        return Layout(note="ddp: gradients are views into DDP's buckets (gradient_as_bucket_view): the "
                           "buckets are counted as gradients")

    def close(self) -> None:
        self.clock.remove()


def make(ctx: TrainContext) -> Trainer:
    return DDPTrainer(ctx)
