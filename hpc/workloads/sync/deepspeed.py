"""Baseline: real DeepSpeed ZeRO stage 1/2/3 on CPU or GPU, set up from MPI.

Rank variables come from MPI (never DeepSpeed's own mpi4py discovery, which hangs on 4 oversubscribed
ranks), rank 0 picks a free MASTER_PORT, the backend is NCCL on GPUs (a GPU per rank) and gloo on CPUs, the shared-memory op build is skipped,
warnings are filtered and the process group is destroyed at exit. Exposed communication = time
from the last gradient to the end of `engine.backward` (ZeRO's parameter gathers count as compute).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc.workloads.models import loss_fn
from hpc.workloads.sync.base import (LastGradClock, SchemeFacts, StepResult, TrainContext, Trainer,
                                    flat_params, make_optimizer)
from hpc.workloads.sync.ddp import ensure_process_group

FACTS = SchemeFacts(cuda=True, gpu_exclusive=True)  # lock-step; NCCL on cuda (a GPU per rank), gloo on cpu

if TYPE_CHECKING:
    import torch


def before_import(device: str = "cpu") -> None:
    """DeepSpeed is chatty (ZeRO-3 alone prints ~100 FutureWarnings per run): keep errors only. Its
    accelerator follows the device (it is chosen once per process, at the first DeepSpeed import)."""
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ["DS_ACCELERATOR"] = device
    for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ds_config(batch: int, world: int, stage: int, bucket_bytes: int, fp16_compress: bool) -> dict[str, Any]:
    """The DeepSpeed config: micro batch per rank, ZeRO stage, buckets the size of ours, no logging."""
    elems = max(1, bucket_bytes // 4)
    zero: dict[str, Any] = {"stage": stage, "reduce_bucket_size": elems, "allgather_bucket_size": elems}
    if stage == 3:
        # ZeRO-3 as memory-bound users run it: a gathered layer is released once used (DeepSpeed's
        # default keeps up to 1e9 gathered parameters live, i.e. the whole model of a test run: its
        # model states measured 40% above the ZeRO accounting, results/memory/README.md)
        zero.update(stage3_prefetch_bucket_size=elems, stage3_param_persistence_threshold=0,
                    stage3_max_live_parameters=elems, stage3_max_reuse_distance=elems)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": batch * world,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at 1.0 unless told otherwise; no scheme else does
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if fp16_compress:
        cfg["communication_data_type"] = "fp16"
    return cfg


ZERO3_CPU_RSS = ("ZeRO-3 on CPU, peak RSS: it gathers and frees every layer each step; glibc keeps freed "
                 "blocks under its 32 MiB mmap limit in its heap, so RSS can stay well above what is held "
                 "(measured 1.5 vs 0.9 GiB, results/memory/README.md); MALLOC_MMAP_THRESHOLD_=65536 hands them "
                 "back, at some speed")


class DeepSpeedTrainer(Trainer):
    name = "deepspeed"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        before_import(ctx.device.type)
        import deepspeed
        import torch

        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
        # The shm allreduce op compiles for ~20 s on first use; gloo does the job without it.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        threads = torch.get_num_threads()
        ensure_process_group(ctx)  # env from MPI, free port from rank 0; DeepSpeed adopts the group
        from hpc.gpu import dist_backend

        deepspeed.init_distributed(dist_backend=dist_backend(ctx.device.type), auto_mpi_discovery=False,
                                   verbose=False)
        self.deepspeed = deepspeed
        self.stage = int(ctx.option) if ctx.option else ctx.stage
        config = ds_config(ctx.batch, ctx.comm.Get_size(), self.stage, int(ctx.opts.bucket_mb * (1 << 20)),
                           ctx.opts.fp16_compress)
        opt = make_optimizer(ctx.model.parameters(), ctx.opts)
        self.engine, _, _, _ = deepspeed.initialize(model=ctx.model, optimizer=opt, config=config)
        torch.set_num_threads(threads)  # DeepSpeed may change it; keep the per-rank share
        self.clock = LastGradClock(self.engine.module.parameters())

    def step(self, x: "torch.Tensor", y: "torch.Tensor") -> StepResult:
        t0 = time.perf_counter()
        eng = self.engine
        loss = loss_fn(self.ctx.cfg, eng(x), y)
        if self.memory_mark:  # ZeRO-3 may keep gathered parameters live until backward
            self.memory_mark("forward")
        self.clock.reset()
        marks = self._mark_at_last_grad() if self.memory_mark else []
        eng.backward(loss)  # gradient reduction (ZeRO reduce-scatter / allreduce) ends inside
        t1 = time.perf_counter()
        for h in marks:
            h.remove()
        if self.memory_mark:  # gradients are freed inside step(): the memory probe looks now
            self.memory_mark("backward")
        exposed = self.clock.exposed_since(t1, t0)
        eng.step()
        value = float(loss.detach())
        t2 = time.perf_counter()
        return StepResult(value, (t2 - t0) - exposed, exposed)

    def _mark_at_last_grad(self) -> list[Any]:
        """Hooks that let the memory probe look once every local gradient exists, before DeepSpeed
        reduces them: ZeRO-1 holds its full gradients at that moment (it partitions them only
        afterwards, inside engine.backward), ZeRO-2/3 their partitions and what waits in the reduce bucket."""
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        left = [len(params)]

        def tick(_p: Any) -> None:
            left[0] -= 1
            if left[0] == 0 and self.memory_mark:
                self.memory_mark("gradients")

        return [p.register_post_accumulate_grad_hook(tick) for p in params]

    def params(self) -> np.ndarray:
        params = list(self.engine.module.parameters())
        if self.stage == 3:  # each rank holds a partition: gather (collective) to read them whole
            with self.deepspeed.zero.GatheredParameters(params):
                return flat_params(params)
        return flat_params(params)

    def bytes_per_step(self) -> int:
        """Gradient bytes of the whole model (ZeRO-3 parameters report their full size as ds_numel)."""
        n = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters() if p.requires_grad)
        return n * (2 if self.ctx.opts.fp16_compress else 4)

    def summary(self) -> dict[str, Any]:
        from hpc.gpu import dist_backend

        return {"zero_stage": self.stage, "bucket_mb": self.ctx.opts.bucket_mb,
                "fp16_compress": self.ctx.opts.fp16_compress, "deepspeed": self.deepspeed.__version__,
                "backend": dist_backend(self.ctx.device.type)}

    def memory_tensors(self) -> dict[str, list[Any]]:
        """The model's tensors and ZeRO's own: flat 16/32-bit groups and partitions, gradient partitions
        and buckets (found by walking the ZeRO optimizer), the inner optimizer's fp32 partitions and state.
        The reduce bucket is a buffer of --bucket-mb whatever the model: gradients waiting in it as views
        count as gradients by their own size, the rest of it as a buffer (split_buckets)."""
        from hpc.workloads.memory_count import module_tensors, split_buckets, storage, tensors_in

        zero = self.engine.optimizer
        out = module_tensors(self.engine.module, getattr(zero, "optimizer", zero))
        out["params"] += [p.ds_tensor for p in self.engine.module.parameters() if hasattr(p, "ds_tensor")]
        buckets: dict[tuple, int] = {}
        for path, t in tensors_in(zero, "deepspeed"):
            low = path.lower()  # ZeRO's own names: *grad*, bit16/fp16 (parameters), fp32 (master copy)
            found = storage(t)
            if "ipg" in low and "buffer" in low and found is not None:
                buckets[found[0]] = found[1]
                continue
            kind = ("grads" if "grad" in low else "params" if "bit16" in low or "fp16" in low
                    else "optimizer" if "fp32" in low else "buffers")
            out[kind].append(t)
        return split_buckets(out, buckets)

    def memory_layout(self) -> Any:
        """ZeRO's shares over the data ranks, with DeepSpeed's own estimate beside them (stages 2, 3)."""
        from hpc.workloads.memory_count import zero_layout

        layout = zero_layout(self.stage, self.comm.Get_size(), self._estimate())
        if self.stage == 3 and self.ctx.device.type == "cpu":
            from dataclasses import replace

            return replace(layout, note=ZERO3_CPU_RSS)
        return layout

    def _estimate(self) -> dict[str, Any] | None:
        """DeepSpeed's estimate_zero2/3_model_states_mem_needs (no offload): its per-device bytes, which
        assume 16-bit parameters and gradients (mixed precision), for this model and world."""
        params = list(self.engine.module.parameters())
        total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        n, local = self.comm.Get_size(), max(1, self.ctx.local_size)
        nodes = max(1, n // local)
        if self.stage == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            _, dev = estimate_zero2_model_states_mem_needs(total, local, nodes, cpu_offload=False)
            name = "estimate_zero2_model_states_mem_needs"
        elif self.stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            largest = max(sum(getattr(p, "ds_numel", p.numel()) for p in m.parameters(recurse=False))
                          for m in self.engine.module.modules())
            _, dev, _ = estimate_zero3_model_states_mem_needs(total, largest, local, nodes, cpu_offload=False,
                                                              cpu_offload_params=False)
            name = "estimate_zero3_model_states_mem_needs"
        else:
            return None  # DeepSpeed has no estimate for stage 1
        return {"source": f"deepspeed {name}", "bytes": int(dev),
                "assumes": "16-bit parameters and gradients, fp32 master copy and Adam state; no offload"}

    def close(self) -> None:
        self.clock.remove()  # the process group stays for later runs; it is destroyed at exit


def make(ctx: TrainContext) -> Trainer:
    return DeepSpeedTrainer(ctx)
