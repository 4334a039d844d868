"""DistributedOptimizer: Horovod's wrapper, with gradients reduced by hpc's bucket engine.

As in Horovod, DistributedOptimizer(opt) returns an instance of a new subclass of opt's class built
on opt's param_groups (so isinstance checks, LR schedulers and state_dict keep working). Gradients
are reduced during backward by hpc.workloads.sync.own.BucketEngine (the engine `hpc train --sync
SPEC` uses): fusion buckets in reverse parameter order, each reduced by the collective as soon as
its last gradient is final, on a communication thread; step() (or synchronize()) waits for them.
Before each step's first bucket the ranks agree in one small exchange (_agree.StepAgreement), so a
different model, a rank that left, or a collective that gave ranks different answers is an error on
every rank. A plug-in collective is verified first on exactly the bucket sizes and dtype it will
reduce. Sparse gradients (nn.Embedding(sparse=True)) are reduced dense and handed back sparse.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable

from hpc.torch._basics import Adasum, Average, Sum, size, state
from hpc.torch._errors import HorovodInternalError
from hpc.torch._process_sets import global_process_set, resolve
from hpc.workloads.sync.compression import Compression, check_codec, wire_dtype

if TYPE_CHECKING:
    import torch

# Fusion bucket size. Horovod's fusion buffer is 64 MB; DDP's and `hpc train`'s default bucket is
# 25 MB. Smaller buckets start reducing earlier in backward (more overlap), larger ones make fewer
# calls; 25 MB keeps `hpc train --sync SPEC` and hpc.torch on the same setting.
BUCKET_MB = 25.0


class _GradEngine:
    """A BucketEngine plus its per-step agreement; what shutdown() says goodbye through."""

    def __init__(self, engine: Any, agreement: Any, check_sums: bool) -> None:
        from hpc.env import get

        self.engine, self.agreement, self.check_sums = engine, agreement, check_sums
        if get("HPC_TORCH_STEP_CHECK", "1") != "0":  # "0" only to measure what the check costs
            engine.before_reduce = agreement.before_step

    def finished_step(self) -> None:
        if self.check_sums:
            from hpc.torch._agree import sample_checksum

            self.agreement.checksum = sample_checksum(self.engine.flat)

    def leave(self) -> Callable[[], None]:
        if self.engine.comm is None or self.engine.in_step:
            return lambda: None  # mid-step (an error on the way out): nothing can be matched safely
        import torch

        from hpc.torch._agree import SAMPLE_STRIDE, sample_checksum

        with torch.no_grad():  # every SAMPLE_STRIDE-th value of each parameter, then one checksum
            sample = torch.cat([p.detach().reshape(-1)[::SAMPLE_STRIDE].cpu() for p in self.engine.params])
        return self.agreement.leave(sample_checksum(sample, stride=1))

    def zero_step(self) -> None:
        """Inside hvd.join(): the others' step, this rank's gradients all zero (same buckets, same order)."""
        import torch

        eng = self.engine
        for b in eng.buckets:
            buf = torch.zeros(b.numel, dtype=eng.wire.dtype, device=eng.flat.device if eng.wire.direct else "cpu")
            arr = buf if eng.wire.direct else buf.numpy()
            eng.allreduce(eng.comm, arr, arr, eng.sum)


def join_gradients(grads: list[_GradEngine]) -> Callable[[], bool]:
    """hvd.join() for DistributedOptimizers: offer every idle engine's 'joined' round; the returned
    progress() reduces zeros whenever the other ranks step and says True once every rank has joined."""
    pending = {g: g.agreement.post_joined() for g in grads
               if g.engine.comm is not None and not g.engine.in_step and not g.agreement.peer_left
               and g.engine.before_reduce is not None}

    def progress() -> bool:
        for g, req in list(pending.items()):
            if req.Test():
                if g.agreement.joined_round():
                    g.zero_step()
                    pending[g] = g.agreement.post_joined()
                else:
                    del pending[g]
        return not pending

    return progress


class _DistributedOptimizer:
    """Mixed in front of the user's optimizer class; see DistributedOptimizer()."""

    def __init__(self, params: Any, named_parameters: Any, compression: Any,
                 backward_passes_per_step: int = 1, op: int = Average, bucket_mb: float = BUCKET_MB,
                 process_set: Any = global_process_set) -> None:
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
        self._parameter_names = {v: k for k, v in sorted(named_parameters, key=lambda kv: kv[0])}
        self.backward_passes_per_step = backward_passes_per_step
        self.op = op
        self.process_set = process_set
        self._synchronized = False
        self._should_synchronize = True
        self._sparse: set[int] = set()
        self._grad: _GradEngine | None = None
        if process_set.included() is not False and size() > 1:
            self._grad = self._make_engine(bucket_mb)

    def _make_engine(self, bucket_mb: float) -> _GradEngine:
        import torch

        from hpc.torch._agree import StepAgreement, fingerprint
        from hpc.torch._basics import collective
        from hpc.workloads.sync.own import BucketEngine

        st = state()
        info = resolve(self.process_set)
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        layout = [(self._parameter_names[p], tuple(p.shape), str(p.dtype)) for p in params]
        everyone = info.comm.allgather(layout)
        if any(x != everyone[0] for x in everyone):
            r = next(i for i, x in enumerate(everyone) if x != everyone[0])
            diff = next((f"{a} vs {b}" for a, b in zip(everyone[0], everyone[r]) if a != b),
                        f"{len(everyone[0])} vs {len(everyone[r])} parameters")
            raise HorovodInternalError(
                f"DistributedOptimizer: rank {info.ranks[r]} holds different parameters than rank "
                f"{info.ranks[0]} (first difference: {diff}); every rank must build the same model")
        for p in params:  # registered before the engine's hooks, so they run first
            p.register_post_accumulate_grad_hook(self._densify)
        dtype = str(wire_dtype(self._compression, torch.zeros(1))).replace("torch.", "")
        engine = BucketEngine(info.comm, params, st.coll.func, int(bucket_mb * (1 << 20)),
                              codec=self._compression, overlap=True, average=self.op == Average,
                              passes=self.backward_passes_per_step, auto_start=True)
        try:  # a plug-in is verified (collectively) on this set's communicator, on the exact bucket
            #   sizes and wire dtype it is about to reduce, before it touches a gradient
            coll = collective(dtype, info.comm, [b.numel for b in engine.buckets])
        except BaseException:
            engine.close()
            raise
        sig = fingerprint([layout, self.op, getattr(self._compression, "__name__", str(self._compression)),
                           self.backward_passes_per_step, len(engine.buckets)])
        agreement = StepAgreement(engine.comm, sig, coll.spec, info.ranks)
        grad = _GradEngine(engine, agreement, check_sums=not coll.builtin)
        st.engines.append(engine)
        st.grads.append(grad)
        st.info.update({"collective": coll.spec, "buckets": len(engine.buckets), "bucket_mb": bucket_mb,
                        "overlap": engine.overlap, "fp16_compress": engine.wire.compressed,
                        "backward_passes_per_step": self.backward_passes_per_step,
                        "op": "Average" if self.op == Average else "Sum",
                        "n_params": int(engine.flat.numel()),
                        "bytes_per_step": engine.bytes_per_step(),
                        "optimizer": type(self).__name__})
        return grad

    def _densify(self, param: "torch.Tensor") -> None:
        """A sparse gradient goes into its bucket dense; synchronize() hands it back sparse."""
        if param.grad is not None and param.grad.is_sparse:
            self._sparse.add(id(param))
            param.grad = param.grad.to_dense()

    # -- Horovod's optimizer API ---------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait until every gradient is reduced (what step() does first)."""
        if self._grad is not None:
            self._grad.engine.finish()
            self._grad.finished_step()
            if self._sparse:
                for group in self.param_groups:
                    for p in group["params"]:
                        if id(p) in self._sparse and p.grad is not None:
                            p.grad = p.grad.to_sparse()
                self._sparse.clear()
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
        state().step_times.append(time.perf_counter())
        return super().step(closure)

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        if self._grad is not None and self._grad.engine.in_step:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before "
                                 "optimizer.step() or optimizer.synchronize(). This is prohibited as it "
                                 "can cause a race condition.")
        return super().zero_grad(*args, **kwargs)

    def set_backward_passes_per_step(self, passes: int) -> None:
        self.backward_passes_per_step = passes
        if self._grad is not None:
            self._grad.engine.reset_passes(passes)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._synchronized = False
        self._should_synchronize = True
        if self._grad is not None:
            self._grad.engine.reset_passes()
        return super().load_state_dict(*args, **kwargs)


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
                         groups: Any = None, sparse_as_dense: bool = False,
                         process_set: Any = global_process_set,
                         bucket_mb: float = BUCKET_MB) -> "torch.optim.Optimizer":
    """Wrap `optimizer` so gradients are averaged (op=Average) or summed (op=Sum) over the process set
    before each step, `backward_passes_per_step` local backward passes accumulating first.

    `compression` is a codec (Compression.none | Compression.fp16 | a class with static compress /
    decompress). `bucket_mb` (hpc extension) sets the fusion bucket size. Horovod's grouping options
    are accepted and have nothing to do (buckets already fuse); gradient_predivide_factor gives the
    same average (no separate pre/post scaling); sparse gradients are reduced dense either way;
    Adasum is refused (NotImplementedError).
    """
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    if backward_passes_per_step <= 0:
        raise ValueError("backward_passes_per_step must be > 0")
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by hpc.torch's DistributedOptimizer "
                                  "(use op=hvd.Average or op=hvd.Sum)")
    if process_set is None:
        process_set = global_process_set
    cls = type(optimizer.__class__.__name__, (_DistributedOptimizer, optimizer.__class__), {})
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step, op,
               bucket_mb, process_set)
