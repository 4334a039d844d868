"""Own gradient sync: fusion buckets reduced with any allreduce SPEC, overlapped with backward.

Like DDP, gradients end up as views into one flat buffer cut into buckets of about `--bucket-mb`, in
reverse parameter order (the order backward produces them). A post-accumulate-grad hook copies each
fresh gradient into its bucket slot, already divided by the world size (so averaging costs no extra
pass), and counts the gradients still missing per bucket; a communication thread reduces bucket i as
soon as it is complete, always in bucket order so every rank issues the same collectives. All MPI calls of a step come from
that one thread (MPI_THREAD_SERIALIZED is enough). The allreduce works on host numpy buffers: on CPU
they are the gradient memory itself; with `--device cuda` (or `--host-staging`) buckets are staged
through (pinned) host buffers, unless the MPI is CUDA-aware and the collective has a device version
(workloads/device.py: `mpi`, `ring`): then the device buckets themselves go to MPI (`cuda_path` in
the record says which). `--fp16-compress` halves the bytes on the wire (the fp16 codec of
compression.py). hpc.torch's DistributedOptimizer drives the same engine (auto_start, passes).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hpc.errors import HpcError
from hpc.gpu import CUDA_AWARE
from hpc.workloads.models import loss_fn
from hpc.workloads.sync.base import (SchemeFacts, StepResult, TrainContext, Trainer, broadcast_params,
                                    make_optimizer)
from hpc.workloads.sync.compression import FP16Compressor, NoneCompressor, check_codec, wire_dtype

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI


@dataclass
class Bucket:
    """A contiguous slice [start, stop) of the flat gradient buffer and how many params it holds."""

    index: int
    start: int
    stop: int
    n_params: int

    @property
    def numel(self) -> int:
        return self.stop - self.start


def plan_buckets(sizes: list[int], bucket_bytes: int, itemsize: int = 4) -> list[list[int]]:
    """Group parameter indices (given in reduction order) into buckets of at most `bucket_bytes`.

    A parameter larger than a bucket gets a bucket of its own; order is kept (pure function).
    """
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    for i, n in enumerate(sizes):
        nbytes = n * itemsize
        if cur and cur_bytes + nbytes > bucket_bytes:
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nbytes
    if cur:
        groups.append(cur)
    return groups


def bucket_groups(params: list["torch.Tensor"], bucket_bytes: int) -> tuple[list["torch.Tensor"], list[list[int]]]:
    """How BucketEngine buckets `params` (given in the model's order): the reduction order (reversed:
    backward produces the last layers' gradients first) and the groups of indices into it. The one
    place that decides, so that verifying a plug-in on "the bucket sizes training will use"
    (`bucket_sizes`) can never drift from what training hands it."""
    order = list(reversed(params))
    return order, plan_buckets([p.numel() for p in order], max(1, int(bucket_bytes)))


def bucket_sizes(params: list["torch.Tensor"], bucket_bytes: int) -> list[int]:
    """Element counts of the buckets BucketEngine reduces for `params`, in reduction order."""
    order, groups = bucket_groups(params, bucket_bytes)
    return [sum(order[i].numel() for i in group) for group in groups]


class Wire:
    """Moves a bucket between the device gradients and the host buffer that the allreduce sees.

    pack(b) -> numpy view to reduce in place (SUM); unpack(b) puts the reduced values back. What
    travels is what the codec's compress() makes of the bucket (compression.py: none or fp16, the
    same classes hpc.torch's `Compression` names); its decompress() turns it back. Without staging on
    CPU and without compression the host buffer *is* the gradient memory (no copy). With staging (and
    always on CUDA) buckets go through a preallocated (pinned) host buffer of the wire dtype; the codec
    runs on the device, so a compressed bucket crosses the bus at its compressed size. `direct`
    (CUDA-aware MPI and a device collective): pack() returns the device wire tensor itself, no host copy.
    """

    def __init__(self, flat: "torch.Tensor", codec: Any = NoneCompressor, staging: bool = False,
                 direct: bool = False) -> None:
        import torch

        check_codec(codec)
        self.flat = flat
        self.codec = codec
        self.cuda = flat.is_cuda
        self.direct = direct and self.cuda and not staging
        self.staging = (staging or self.cuda) and not self.direct
        self.dtype = wire_dtype(codec, flat)
        self.itemsize = torch.empty(0, dtype=self.dtype).element_size()
        n = flat.numel()
        self.host = torch.empty(n, dtype=self.dtype, pin_memory=self.cuda) if self.staging else None
        self.host_np: np.ndarray | None = self.host.numpy() if self.host is not None else None
        self.stream = torch.cuda.Stream(device=flat.device) if self.cuda else None
        self.ready_events: dict[int, Any] = {}
        self.done_events: dict[int, Any] = {}
        self._held: dict[int, tuple["torch.Tensor", Any]] = {}  # bucket -> (wire tensor, ctx)

    @property
    def compressed(self) -> bool:
        """True when fewer bytes travel than the gradients hold (e.g. fp16)."""
        return self.itemsize < self.flat.element_size()

    def mark_ready(self, b: Bucket) -> None:
        """Called when a bucket's last gradient was produced: remember where the device stream is."""
        if self.cuda:
            import torch

            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.flat.device))
            self.ready_events[b.index] = ev

    def pack(self, b: Bucket) -> Any:
        """Device gradients of bucket b -> host wire buffer (compressed by the codec); returns the view
        (with `direct`: the device wire tensor, once the stream has produced it)."""
        import torch

        s = slice(b.start, b.stop)
        if self.direct:
            with torch.cuda.stream(self.stream):
                ev = self.ready_events.pop(b.index, None)
                if ev is not None:
                    self.stream.wait_event(ev)
                wire = self._compress(b, s)
                self.stream.synchronize()
            return wire
        if self.cuda:
            with torch.cuda.stream(self.stream):
                ev = self.ready_events.pop(b.index, None)
                if ev is not None:
                    self.stream.wait_event(ev)
                wire = self._compress(b, s)
                self.host[s].copy_(wire, non_blocking=True)
                self.stream.synchronize()
            return self.host_np[s]
        wire = self._compress(b, s)
        if self.staging:
            self.host[s].copy_(wire)
            return self.host_np[s]
        return wire.numpy()

    def _compress(self, b: Bucket, s: slice) -> "torch.Tensor":
        wire, ctx = self.codec.compress(self.flat[s])
        wire = wire.contiguous()
        self._held[b.index] = (wire, ctx)
        return wire

    def unpack(self, b: Bucket) -> None:
        """Reduced host values of bucket b -> device gradients (a no-op on CPU without staging/codec)."""
        import torch

        s = slice(b.start, b.stop)
        if self.cuda:
            with torch.cuda.stream(self.stream):
                self._unpack_ops(b, s)
                ev = torch.cuda.Event()
                ev.record(self.stream)
                self.done_events[b.index] = ev
        else:
            self._unpack_ops(b, s)

    def _unpack_ops(self, b: Bucket, s: slice) -> None:
        wire, ctx = self._held.pop(b.index)
        if self.staging:
            wire.copy_(self.host[s], non_blocking=self.cuda)
        out = self.codec.decompress(wire, ctx)
        dst = self.flat[s]
        if out.dtype != dst.dtype or out.data_ptr() != dst.data_ptr():
            dst.copy_(out.reshape(-1))

    def join_device(self) -> None:
        """Make the compute stream wait for every bucket's copy back (CUDA); no-op on CPU."""
        if self.cuda:
            import torch

            cur = torch.cuda.current_stream(self.flat.device)
            for ev in self.done_events.values():
                cur.wait_event(ev)
            self.done_events.clear()


class BucketEngine:
    """Gradient buckets over a model's parameters, reduced with `allreduce` (overlapped or not).

    Two ways to drive it. `hpc train` calls begin() before backward and finish() after it.
    hpc.torch's DistributedOptimizer sets `auto_start`: the hooks are always armed, a step starts at
    the first gradient that is final, and `passes` backward passes accumulate into `p.grad` locally
    (as torch does) before a parameter's gradient counts as final, Horovod's
    `backward_passes_per_step`. finish() then reduces whatever is missing (a parameter that got no
    gradient is reduced as zeros, as Horovod does) and resets the counters for the next step.
    `average` divides by the world size on the way into the bucket (op Average); else the sum (op Sum).
    """

    def __init__(self, comm: "MPI.Comm", params: list["torch.nn.Parameter"],
                 allreduce: Callable[..., None], bucket_bytes: int, codec: Any = NoneCompressor,
                 overlap: bool = True, staging: bool = False, average: bool = True, passes: int = 1,
                 auto_start: bool = False, direct: bool = False) -> None:
        import torch
        from mpi4py import MPI

        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise HpcError("the model has no trainable parameters")
        bad = {str(p.dtype) for p in self.params if p.dtype != torch.float32}
        if bad:
            raise HpcError(f"own sync needs float32 parameters, the model has {', '.join(sorted(bad))}")
        devices = {p.device for p in self.params}
        if len(devices) > 1:
            raise HpcError(f"own sync needs every parameter on one device, got {sorted(map(str, devices))}")
        if passes < 1:
            raise HpcError(f"backward passes per step must be >= 1, got {passes}")
        self.comm = comm.Dup()  # gradient traffic never mixes with anything else on COMM_WORLD
        self.world = comm.Get_size()
        self.allreduce = allreduce
        self.sum = MPI.SUM
        order, groups = bucket_groups(self.params, bucket_bytes)
        total = sum(p.numel() for p in order)
        self.flat = torch.zeros(total, dtype=torch.float32, device=self.params[0].device)
        self.buckets: list[Bucket] = []
        self.bucket_of: dict[int, int] = {}
        self.views: dict[int, "torch.Tensor"] = {}
        off = 0
        for bi, group in enumerate(groups):
            start = off
            for i in group:
                p = order[i]
                n = p.numel()
                self.views[id(p)] = self.flat[off:off + n].view_as(p)  # p's gradient slot
                self.bucket_of[id(p)] = bi
                off += n
            self.buckets.append(Bucket(bi, start, off, len(group)))
        self.scale = 1.0 / self.world if average else 1.0
        self.passes = int(passes)
        self.auto_start = auto_start
        self.wire = Wire(self.flat, codec, staging, direct)
        self.overlap = overlap and MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        self._delay = {id(p): self.passes for p in self.params}
        self._fired: set[int] = set()
        self._pending = [b.n_params for b in self.buckets]
        self._ready = [threading.Event() for _ in self.buckets]
        self._done = threading.Event()
        self._started = False
        self._error: BaseException | None = None
        self._comm_busy = 0.0
        self._jobs: queue.Queue = queue.Queue()
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]
        self._active = auto_start
        self.before_reduce: Callable[[], None] | None = None  # called on the reducing thread per step
        self._thread: threading.Thread | None = None
        if self.overlap:
            self._thread = threading.Thread(target=self._serve, name="hpc-grad-comm", daemon=True)
            self._thread.start()

    # -- per step ------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Arm the hooks for one backward pass (`hpc train`); with overlap, queue the step for the comm
        thread.

        Gradients are set to None so autograd hands each hook a fresh tensor (no zeroing pass, no
        accumulation pass); the hook copies it, scaled, into the bucket.
        """
        for p in self.params:
            p.grad = None
        self._active = True
        self._start()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._done.clear()
        self._comm_busy = 0.0
        if self.overlap:
            self._jobs.put("step")

    def _on_grad(self, param: "torch.Tensor") -> None:
        if not self._active:
            return
        key = id(param)
        left = self._delay[key] - 1
        if left < 0:
            raise HpcError(f"gradients were computed more than backward_passes_per_step={self.passes} "
                           "times before step(): call optimizer.step() (or synchronize()) after every "
                           f"{self.passes} backward pass(es), or raise backward_passes_per_step")
        self._delay[key] = left
        if left:
            return  # accumulate locally (autograd adds into p.grad) until the last pass
        self._start()
        self._take(param)
        bi = self.bucket_of[key]
        self._pending[bi] -= 1
        if self._pending[bi] == 0:
            self.wire.mark_ready(self.buckets[bi])
            self._ready[bi].set()

    def _take(self, param: "torch.Tensor") -> None:
        """Put param's final local gradient into its bucket slot, scaled; p.grad becomes the slot."""
        import torch

        key = id(param)
        view = self.views[key]
        grad = param.grad
        if grad is None:
            view.zero_()
        elif grad is view:  # accumulated in place into the slot (set_to_none=False, or passes > 1)
            if self.scale != 1.0:
                view.mul_(self.scale)
        elif self.scale != 1.0:
            torch.mul(grad, self.scale, out=view)  # copy into the bucket, averaged on the way
        else:
            view.copy_(grad)
        param.grad = view
        self._fired.add(key)

    def finish(self) -> float:
        """After backward: make sure every bucket is reduced; return the seconds spent waiting."""
        t0 = time.perf_counter()
        self._active = self.auto_start
        if len(self._fired) < len(self.params):  # parameters with no (final) gradient: what they have
            for p in self.params:
                if id(p) not in self._fired:
                    self._take(p)
        for b in self.buckets:  # ... and their buckets are ready now
            if not self._ready[b.index].is_set():
                self.wire.mark_ready(b)
                self._ready[b.index].set()
        self._start()
        try:
            if self.overlap:
                self._done.wait()
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err
            else:
                self._reduce_all()
            self.wire.join_device()
        finally:
            self._reset()
        return time.perf_counter() - t0

    def _reset(self) -> None:
        """Counters back to 'nothing produced yet' for the next step."""
        for key in self._delay:
            self._delay[key] = self.passes
        self._fired.clear()
        for b in self.buckets:
            self._pending[b.index] = b.n_params
            self._ready[b.index].clear()
        self._started = False

    @property
    def in_step(self) -> bool:
        """True between the first final gradient of a step and finish() (gradients in flight)."""
        return self._started

    def reset_passes(self, passes: int | None = None) -> None:
        """Forget partial accumulation counts (optimizer.load_state_dict / set_backward_passes_per_step)."""
        if passes is not None:
            if passes < 1:
                raise HpcError(f"backward passes per step must be >= 1, got {passes}")
            self.passes = int(passes)
        if not self._started:
            self._reset()

    # -- communication -------------------------------------------------------------------------------
    def _reduce_all(self) -> None:
        t0 = time.perf_counter()
        if self.before_reduce is not None:  # hpc.torch: the ranks' per-step agreement, before bucket 0
            self.before_reduce()
        for b in self.buckets:
            self._ready[b.index].wait()
            self._reduce(b)
        self._comm_busy = time.perf_counter() - t0

    def _reduce(self, b: Bucket) -> None:
        buf = self.wire.pack(b)
        if self.wire.direct:  # device collective: its torch work on the wire's stream
            import torch

            with torch.cuda.stream(self.wire.stream):
                self.allreduce(self.comm, buf, buf, self.sum)
        else:
            self.allreduce(self.comm, buf, buf, self.sum)
        self.wire.unpack(b)

    def _serve(self) -> None:
        """Communication thread: one job per step, buckets in order as they become ready."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._reduce_all()
            except BaseException as exc:  # handed to the main thread by finish()
                self._error = exc
            finally:
                self._done.set()

    @property
    def comm_busy_s(self) -> float:
        """Seconds the last step's reductions took in total (hidden or not)."""
        return self._comm_busy

    def bytes_per_step(self) -> int:
        return self.flat.numel() * self.wire.itemsize

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self.comm is not None:
            self.comm.Free()
            self.comm = None


class OwnTrainer(Trainer):
    """Data-parallel training with BucketEngine over the chosen collective."""

    name = "own"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        model, opts = ctx.model, ctx.opts
        params = [p for p in model.parameters() if p.requires_grad]
        broadcast_params(ctx.comm, params)
        func, self.cuda_path = ctx.collective.func, None
        if ctx.device.type == "cuda":
            from hpc.gpu import agreed_cuda_aware
            from hpc.workloads import device

            dev = device.make(ctx.collective, agreed_cuda_aware(ctx.comm)[0], opts.host_staging,
                              "float16" if opts.fp16_compress else "float32")
            self.cuda_path = dev.cuda_path
            if dev.cuda_path == CUDA_AWARE:
                func = dev.func
        self.engine = BucketEngine(ctx.comm, params, func,
                                   int(opts.bucket_mb * (1 << 20)),
                                   codec=FP16Compressor if opts.fp16_compress else NoneCompressor,
                                   overlap=opts.overlap, staging=opts.host_staging,
                                   direct=self.cuda_path == CUDA_AWARE)
        self.optimizer = make_optimizer(params, opts)

    def step(self, x: "torch.Tensor", y: "torch.Tensor") -> StepResult:
        t0 = time.perf_counter()
        eng = self.engine
        out = self.ctx.model(x)
        loss = loss_fn(self.ctx.cfg, out, y)
        eng.begin()
        loss.backward()
        t1 = time.perf_counter()
        exposed = eng.finish()
        t2 = time.perf_counter()
        self.optimizer.step()
        value = float(loss.detach())
        t3 = time.perf_counter()
        return StepResult(value, (t1 - t0) + (t3 - t2), exposed, {"comm_total_s": eng.comm_busy_s})

    def bytes_per_step(self) -> int:
        return self.engine.bytes_per_step()

    def summary(self) -> dict[str, Any]:
        eng = self.engine
        return {"buckets": len(eng.buckets), "bucket_mb": self.ctx.opts.bucket_mb,
                "overlap": eng.overlap, "fp16_compress": eng.wire.compressed, "host_staging": eng.wire.staging,
                "collective": self.ctx.collective.spec, "cuda_path": self.cuda_path}

    def memory_tensors(self) -> dict[str, list[Any]]:
        """Plus the bucket buffer (the gradients are views into it: counted as gradients) and the
        host staging buffer (with --host-staging or cuda)."""
        out = super().memory_tensors()
        out["grads"].append(self.engine.flat)
        out["buffers"].append(self.engine.wire.host)
        return out

    def close(self) -> None:
        self.engine.close()


def _layout(world: int | None, opts, sync: str) -> None:
    """Own sync: --servers only for the `ps` collective, and it needs servers + 1 ranks."""
    if opts.servers and sync != "ps":
        raise HpcError(f"--servers is for --sync ps or ps-async, not '{sync}'")
    if opts.servers < 0:
        raise HpcError(f"--servers must be >= 0, got {opts.servers}")
    if opts.servers and world is not None and world < opts.servers + 1:
        raise HpcError(f"--sync ps with --servers {opts.servers} needs --np >= {opts.servers + 1}, got {world}")


FACTS = SchemeFacts(cuda=True, collective=True, check_layout=_layout)


def make(ctx: TrainContext) -> Trainer:
    return OwnTrainer(ctx)
