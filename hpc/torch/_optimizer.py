"""DistributedOptimizer: Horovod's wrapper, with gradients reduced by hpc's bucket engine.

As in Horovod, DistributedOptimizer(opt) returns an instance of a new subclass of opt's class built
on opt's param_groups (so isinstance checks, LR schedulers and state_dict keep working). Gradients
are reduced during backward by hpc.workloads.sync.own.BucketEngine (the engine `hpc train --sync
SPEC` uses): fusion buckets in reverse parameter order, each reduced by the collective as soon as
its last gradient is final, on a communication thread; step() (or synchronize()) waits for them.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable

from hpc.errors import HpcError
from hpc.torch._basics import Average, Sum, size, state
from hpc.workloads.sync.compression import Compression, check_codec, wire_dtype

if TYPE_CHECKING:
    import torch

# Fusion bucket size. Horovod's fusion buffer is 64 MB; DDP's and `hpc train`'s default bucket is
# 25 MB. Smaller buckets start reducing earlier in backward (more overlap), larger ones make fewer
# calls; 25 MB keeps `hpc train --sync SPEC` and hpc.torch on the same setting.
BUCKET_MB = 25.0


class _DistributedOptimizer:
    """Mixed in front of the user's optimizer class; see DistributedOptimizer()."""

    def __init__(self, params: Any, named_parameters: Any, compression: Any,
                 backward_passes_per_step: int = 1, op: int = Average, bucket_mb: float = BUCKET_MB) -> None:
        super().__init__(params)  # the wrapped optimizer's class, on the same param group dicts
        check_codec(compression)
        self._compression = compression
        if named_parameters is not None:
            named_parameters = list(named_parameters)
        else:
            named_parameters = [(f"allreduce.noname.{i}.{j}", v) for i, group in enumerate(self.param_groups)
                                for j, v in enumerate(group["params"])]
        if any(not isinstance(p, tuple) for p in named_parameters):
            raise ValueError("named_parameters should be a sequence of tuples (name, parameter), "
                             "usually produced by model.named_parameters().")
        names = [k for k, _ in named_parameters]
        dups = sorted({k for k in names if names.count(k) > 1})
        if dups:
            raise ValueError("Parameter names in named_parameters must be unique. "
                             f"Found duplicates: {', '.join(dups)}")
        all_ids = {id(v) for group in self.param_groups for v in group["params"]}
        unnamed = all_ids - {id(v) for _, v in named_parameters}
        if unnamed:
            raise ValueError("named_parameters was specified, but one or more model parameters were "
                             f"not named. Python object ids: {', '.join(map(str, unnamed))}")
        if op not in (Average, Sum):
            raise ValueError("DistributedOptimizer supports op=Average or op=Sum")
        self._parameter_names = {id(v): k for k, v in named_parameters}
        self.backward_passes_per_step = backward_passes_per_step
        self.op = op
        self._synchronized = False
        self._should_synchronize = True
        self._engine = None
        if size() > 1:
            self._engine = self._make_engine(bucket_mb)

    def _make_engine(self, bucket_mb: float):
        import torch

        from hpc.torch._basics import collective
        from hpc.workloads.sync.own import BucketEngine

        st = state()
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        shapes = st.comm.allgather([tuple(p.shape) for p in params])
        if any(s != shapes[0] for s in shapes):
            shown = ", ".join(f"rank {r}: {len(s)} tensors / {sum(_numel(x) for x in s)} values"
                              for r, s in enumerate(shapes))
            raise HpcError(f"DistributedOptimizer: the parameters differ across ranks ({shown}); every "
                           "rank must build the same model and optimizer")
        dtype = str(wire_dtype(self._compression, torch.zeros(1))).replace("torch.", "")
        coll = collective(dtype)  # verified (collectively) before the first gradient travels
        engine = BucketEngine(st.comm, params, coll.func, int(bucket_mb * (1 << 20)),
                              codec=self._compression, overlap=True, average=self.op == Average,
                              passes=self.backward_passes_per_step, auto_start=True)
        st.engines.append(engine)
        st.info.update({"collective": coll.spec, "buckets": len(engine.buckets), "bucket_mb": bucket_mb,
                        "overlap": engine.overlap, "fp16_compress": engine.wire.compressed,
                        "backward_passes_per_step": self.backward_passes_per_step,
                        "op": "Average" if self.op == Average else "Sum",
                        "n_params": int(engine.flat.numel()),
                        "bytes_per_step": engine.bytes_per_step(),
                        "optimizer": type(self).__name__})
        return engine

    # -- Horovod's optimizer API ---------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait until every gradient is reduced (what step() does first)."""
        if self._engine is not None:
            self._engine.finish()
        self._synchronized = True

    @contextmanager
    def skip_synchronize(self):
        """For `synchronize(); clip gradients; with skip_synchronize(): step()`."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure: Any = None) -> Any:
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() context "
                              "after optimizer.synchronize(). This can cause training slowdown. You may "
                              "want to consider using optimizer.skip_synchronize() context if you use "
                              "optimizer.synchronize() in your code.")
            self.synchronize()
        self._synchronized = False
        st = state()
        st.step_times.append(time.perf_counter())
        return super().step(closure)

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        if self._engine is not None and self._engine.in_step:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before "
                                 "optimizer.step() or optimizer.synchronize(). This is prohibited as it "
                                 "can cause a race condition.")
        return super().zero_grad(*args, **kwargs)

    def set_backward_passes_per_step(self, passes: int) -> None:
        self.backward_passes_per_step = passes
        if self._engine is not None:
            self._engine.reset_passes(passes)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._synchronized = False
        self._should_synchronize = True
        if self._engine is not None:
            self._engine.reset_passes()
        return super().load_state_dict(*args, **kwargs)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plain_step(optimizer: "torch.optim.Optimizer") -> None:
    """The wrapped optimizer's own step, with no gradient synchronisation (optimizer-state setup)."""
    if isinstance(optimizer, _DistributedOptimizer):
        base = type(optimizer).__mro__[type(optimizer).__mro__.index(_DistributedOptimizer) + 1]
        base.step(optimizer)
    else:
        optimizer.step()


def DistributedOptimizer(optimizer: "torch.optim.Optimizer", named_parameters: Any = None,
                         compression: Any = Compression.none, backward_passes_per_step: int = 1,
                         op: int = Average, gradient_predivide_factor: float = 1.0, num_groups: int = 0,
                         groups: Any = None, sparse_as_dense: bool = False, process_set: Any = None,
                         bucket_mb: float = BUCKET_MB) -> "torch.optim.Optimizer":
    """Wrap `optimizer` so gradients are averaged (op=Average) or summed (op=Sum) over all ranks before
    each step, `backward_passes_per_step` local backward passes accumulating first.

    `compression` is a codec (Compression.none | Compression.fp16 | a class with static compress /
    decompress). `bucket_mb` (hpc extension) sets the fusion bucket size. Horovod's grouping options
    are accepted and ignored (buckets already fuse); gradient_predivide_factor != 1, Adasum and
    process sets are refused.
    """
    if backward_passes_per_step <= 0:
        raise ValueError("backward_passes_per_step must be > 0")
    if gradient_predivide_factor != 1.0:
        raise ValueError("gradient_predivide_factor is not supported by hpc.torch (gradients are "
                         "pre-divided by the world size already)")
    if process_set is not None:
        raise ValueError("process sets are not supported by hpc.torch: every rank takes part")
    cls = type(optimizer.__class__.__name__, (_DistributedOptimizer, optimizer.__class__), {})
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step, op,
               bucket_mb)
