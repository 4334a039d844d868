"""Baseline: real Horovod (`horovod.torch.DistributedOptimizer`) on the MPI world of this job.

Horovod is initialised on mpi4py's COMM_WORLD, rank 0's parameters and optimizer state are
broadcast, and its fusion buffer is set to `--bucket-mb` so it fuses like our own buckets. Exposed
communication = time in `optimizer.synchronize()` after backward (its allreduces start in hooks).
On cuda it needs a Horovod built with GPU operations (`hvd.cuda_built()`; hpc.horovod_build builds
them with NCCL when nvcc and a CUDA torch are present), else one clear error before anything starts.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from hpc.errors import HpcError
from hpc.workloads.models import loss_fn
from hpc.workloads.sync.base import SchemeFacts, StepResult, TrainContext, Trainer, make_optimizer


NO_GPU_OPS = ("horovod on cuda: this Horovod was built without GPU operations (horovod.torch.cuda_built() "
              "is False); rebuild it on a machine with nvcc and a CUDA torch: `python -m hpc.horovod_build "
              "--force` (it builds HOROVOD_GPU_OPERATIONS=NCCL there), or use --device cpu")


def gpu_ops(hvd) -> dict[str, Any]:
    """What the imported horovod.torch was built with: CUDA (GPU operations) and NCCL (version or 0)."""
    cuda = bool(getattr(hvd, "cuda_built", lambda: False)())
    nccl = getattr(hvd, "nccl_built", lambda: 0)()
    return {"cuda_built": cuda, "nccl_built": int(nccl) if not isinstance(nccl, bool) else int(nccl)}


def check_gpu_ops(built: dict[str, Any]) -> None:
    """Refuse --device cuda with a CPU-only Horovod (pure: takes gpu_ops()'s answer)."""
    if not built.get("cuda_built"):
        raise HpcError(NO_GPU_OPS)


def _check_cuda() -> None:
    """Before mpirun: the installed Horovod has GPU operations (importing it initialises no MPI)."""
    from hpc.workloads import sync

    sync.require(sync.resolve("horovod"))
    import horovod.torch as hvd

    check_gpu_ops(gpu_ops(hvd))


# lock-step; on cuda its GPU operations are NCCL (as hpc.horovod_build builds them): a GPU per rank
FACTS = SchemeFacts(cuda=True, gpu_exclusive=True, check_cuda=_check_cuda)

if TYPE_CHECKING:
    import torch


class HorovodTrainer(Trainer):
    name = "horovod"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(ctx.opts.bucket_mb * (1 << 20)))
        import horovod.torch as hvd

        self.hvd = hvd
        self.built = gpu_ops(hvd)
        if ctx.device.type == "cuda":
            check_gpu_ops(self.built)
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
                "overlap": True, "horovod": _version(), **self.built}

    def memory_tensors(self) -> dict[str, list[Any]]:
        """Plus Horovod's fusion buffer, allocated in C++ at its first fused allreduce (more than one
        gradient): HOROVOD_FUSION_THRESHOLD rounded up to a multiple of local size · 8 · 64 bytes
        (Controller::TensorFusionThresholdBytes), counted at that size."""
        out = super().memory_tensors()
        if sum(p.requires_grad for p in self.ctx.model.parameters()) > 1:
            div = max(1, self.ctx.local_size) * 8 * 64
            out["buffers"].append(-(-int(self.ctx.opts.bucket_mb * (1 << 20)) // div) * div)
        return out

    def memory_layout(self) -> Any:
        from hpc.workloads.memory_count import Layout

        return Layout(note="horovod: the fusion buffer lives in C++; it is counted at the size Horovod "
                           "allocates (the fusion threshold rounded up), not read from a tensor")

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
