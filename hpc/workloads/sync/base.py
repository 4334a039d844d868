"""What every sync scheme shares: the context it is built from, the step interface, parameter helpers.

A Trainer takes one batch per `step`, does forward, backward, gradient synchronisation and the
optimizer update, and says how long computing and *exposed* communication (time spent waiting for
reductions once the local gradients are ready) took. `params()` returns the full parameter vector
(collective for schemes that shard parameters) so ranks can be compared bit for bit.

Each scheme module also declares `FACTS`, a SchemeFacts: what the driver must know about it before
and while running it (lock-step or not, GPU support, server ranks, its layout check), so the driver
never branches on a scheme's name.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from hpc.errors import HpcError
from hpc.workloads.models import ModelConfig

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI


@dataclass
class TrainOptions:
    """The `hpc train` flags a scheme may read."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    bucket_mb: float = 25.0
    fp16_compress: bool = False
    find_unused: bool = False  # ddp: parameters that get no gradient (find_unused_parameters)
    overlap: bool = True
    host_staging: bool = False
    servers: int = 1
    staleness: int = 2


@dataclass
class TrainContext:
    """Everything a scheme is built from: world communicator, model (already on `device`), options."""

    comm: "MPI.Comm"
    cfg: ModelConfig
    model: "torch.nn.Module"
    device: "torch.device"
    opts: TrainOptions
    collective: Any = None  # hpc.plugins.registry.Collective for `own`
    option: str = ""        # the scheme's option from --sync (collective SPEC, DeepSpeed ZeRO stage)
    stage: int = 0          # DeepSpeed ZeRO stage (kept for callers that set it; `option` wins)
    batch: int = 1          # samples per rank per step
    local_rank: int = 0
    local_size: int = 1
    sync: str = ""          # the --sync name, for messages


@dataclass
class StepResult:
    """One step on this rank: local mean loss and where the time went (seconds)."""

    loss: float
    compute_s: float
    comm_s: float
    extra: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Base class: data-parallel role, the step, the parameters, and clean-up."""

    name = "base"
    #: True on ranks that consume data and run steps (False on dedicated parameter servers).
    is_worker = True

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.comm = ctx.comm

    @property
    def data_rank(self) -> int:
        """This rank's index among the ranks that read data."""
        return self.comm.Get_rank()

    @property
    def data_world(self) -> int:
        """How many ranks read data (each gets its own shard)."""
        return self.comm.Get_size()

    def step(self, x: "torch.Tensor", y: "torch.Tensor") -> StepResult:
        raise NotImplementedError

    def run_server(self, steps: int) -> None:
        """Serve until the workers are done (only schemes with server ranks)."""
        raise NotImplementedError

    def finish_worker(self) -> None:
        """After a worker's last step (asynchronous schemes fetch the final parameters here)."""

    def params(self) -> np.ndarray | None:
        """The full flat parameter vector (float32) on this rank; None where a rank holds none."""
        return flat_params(self.ctx.model.parameters())

    def bytes_per_step(self) -> int:
        """Gradient payload this rank sends into the reduction per step (bytes)."""
        return sum(p.numel() for p in self.ctx.model.parameters() if p.requires_grad) * 4

    def summary(self) -> dict[str, Any]:
        """Scheme-specific figures for the record (e.g. buckets, observed staleness)."""
        return {}

    #: set by hpc.workloads.memory.Probe during the step it looks at; schemes whose states change inside
    #: the step (gathered or freed) call it there: `if self.memory_mark: self.memory_mark("backward")`
    memory_mark: Callable[[str], None] | None = None

    def memory_tensors(self) -> dict[str, list[Any]]:
        """What this rank keeps, by category (params, grads, optimizer, buffers), for the memory
        block: tensors/arrays (each storage counted once) or ints (bytes held out of Python's sight)."""
        from hpc.workloads.memory_count import module_tensors

        return module_tensors(self.ctx.model, getattr(self, "optimizer", None))

    def memory_layout(self) -> Any:
        """The share of the model states this rank holds (hpc.workloads.memory.Layout): replicated."""
        from hpc.workloads.memory_count import Layout

        return Layout()

    def close(self) -> None:
        """Release threads, communicators and process groups."""


# -- what the driver knows about a scheme -----------------------------------------------------------

def check_no_servers(world: int | None, opts: TrainOptions, sync: str) -> None:
    """Layout check of schemes without parameter servers: --servers does not apply."""
    if opts.servers:
        raise HpcError(f"--servers is for --sync ps or ps-async, not '{sync}'")


@dataclass(frozen=True)
class SchemeFacts:
    """What `hpc train`'s driver must know about a scheme, declared by the scheme's module as FACTS.

    lockstep: every data rank runs step s together (a global loss per step, a synchronous step time);
    cuda: runs with --device cuda; gpu_exclusive: on cuda each rank needs a GPU of its own (NCCL
    refuses two ranks of a communicator on one device), checked before anything starts; check_cuda():
    raise HpcError when this installation cannot run the scheme on cuda (parent side); collective: --sync names a collective SPEC that the scheme
    reduces with (loaded and verified before use; own-sync options such as --host-staging apply);
    server_ranks: the first `--servers` ranks hold parameter shards and
    read no data; default_servers: --servers when not given; check_layout(world, opts, sync): raise
    HpcError for a world size / options it cannot run (world None = not known yet, in the parent).
    """

    lockstep: bool = True
    cuda: bool = False
    gpu_exclusive: bool = False
    check_cuda: Callable[[], None] = lambda: None
    collective: bool = False
    server_ranks: bool = False
    default_servers: int = 0
    check_layout: Callable[[int | None, TrainOptions, str], None] = check_no_servers

    def data_ranks(self, world: int, servers: int) -> int:
        """How many of `world` ranks read data and step."""
        return world - (servers if self.server_ranks else 0)


# -- optimizer, loss -------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam")


def fused_update(params: list["torch.nn.Parameter"]) -> bool:
    """Whether torch's fused kernel can run the update: dense floating parameters, all on CPU or all on
    one CUDA device. Why fused: on CPU torch otherwise loops over the parameters (foreach is CUDA-only
    by default), and each update makes temporaries the size of the largest parameter — twice the flat
    partition DeepSpeed hands its optimizer, as much as ZeRO saves on 2 ranks — and runs ×5 slower
    (a 58.9 M-element tensor: 219 vs 40 ms, +449 MiB vs +0). Same arithmetic, elementwise."""
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def make_optimizer(params: Iterable["torch.nn.Parameter"], opts: TrainOptions) -> "torch.optim.Optimizer":
    """Plain SGD (optionally with momentum) or Adam: the same update for every scheme, through
    torch's fused kernel where it runs (fused_update)."""
    import torch

    params = list(params)
    fused = fused_update(params) or None
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, fused=fused)
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr, fused=fused)
    raise HpcError(f"unknown optimizer '{opts.optimizer}' (known: {', '.join(OPTIMIZERS)})")


# -- parameters ------------------------------------------------------------------------------------

def flat_params(params: Iterable["torch.Tensor"]) -> np.ndarray:
    """All parameters concatenated into one float32 host vector (a copy)."""
    import torch

    with torch.no_grad():
        parts = [p.detach().reshape(-1).to("cpu", torch.float32) for p in params]
    if not parts:
        return np.zeros(0, np.float32)
    return torch.cat(parts).numpy()


def set_flat_params(params: Iterable["torch.Tensor"], flat: np.ndarray) -> None:
    """Copy a flat float32 vector back into the parameters (inverse of flat_params)."""
    import torch

    src = torch.from_numpy(np.ascontiguousarray(flat))
    off = _unflatten_into(list(params), src)
    if off != src.numel():
        raise HpcError(f"parameter vector has {src.numel()} values, the model {off}")


def _unflatten_into(tensors: list["torch.Tensor"], src: "torch.Tensor") -> int:
    """Copy consecutive slices of the flat `src` into `tensors` in order; return how many were used."""
    import torch

    off = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(src[off:off + n].view_as(t))
            off += n
    return off


def broadcast_params(comm: "MPI.Comm", params: list["torch.Tensor"], root: int = 0) -> None:
    """Make every rank start from rank `root`'s parameters (one MPI broadcast of the flat vector)."""
    flat = flat_params(params)
    comm.Bcast(flat, root=root)
    set_flat_params(params, flat)


def model_layout(model: "torch.nn.Module") -> list[tuple[str, str, tuple[int, ...], str, bool]]:
    """(kind, name, shape, dtype, trainable) of every parameter and buffer, in the model's order."""
    out = [("parameter", n, tuple(t.shape), str(t.dtype), bool(t.requires_grad))
           for n, t in model.named_parameters()]
    return out + [("buffer", n, tuple(t.shape), str(t.dtype), False) for n, t in model.named_buffers()]


def check_same_model(comm: "MPI.Comm", model: "torch.nn.Module") -> None:
    """Every rank must hold the same model (each parameter's and buffer's name, shape, dtype and
    trainability) before training, or every rank raises the same HpcError naming the first difference.

    One allgather of a digest; the full layouts travel only when they differ. Byte counts per dtype
    (all the start broadcast can see) are not enough: a rank that built another architecture of the
    same size trained "successfully" under own sync, hung Horovod and garbled DDP's error output.
    """
    layout = model_layout(model)
    mine = hashlib.sha256(repr(layout).encode()).hexdigest()
    if len(set(comm.allgather(mine))) == 1:
        return
    layouts = comm.allgather(layout)

    def entry(e: tuple | None) -> str:
        return "nothing" if e is None else f"{e[0]} {e[1]!r} {list(e[2])} {e[3].removeprefix('torch.')}" + (
            "" if e[0] == "buffer" or e[4] else " (frozen)")

    ref = layouts[0]
    for r, other in enumerate(layouts):
        if other == ref:
            continue
        i = next(i for i in range(max(len(ref), len(other)) + 1)
                 if i >= len(ref) or i >= len(other) or ref[i] != other[i])
        theirs = other[i] if i < len(other) else None
        ours = ref[i] if i < len(ref) else None
        odd = [q for q, lay in enumerate(layouts) if lay != ref]
        raise HpcError(f"ranks hold different models: rank {r} has {entry(theirs)} where rank 0 has "
                       f"{entry(ours)} (ranks {odd} differ from rank 0; {len(other)} vs {len(ref)} "
                       "tensors): every rank must build the same model")


def broadcast_state(comm: "MPI.Comm", model: "torch.nn.Module", root: int = 0) -> None:
    """Every rank starts from rank `root`'s parameters *and* buffers (BatchNorm running statistics ...),
    as Horovod's `broadcast_parameters(model.state_dict())`: one MPI broadcast per dtype."""
    import torch

    from hpc.comm import check_uniform

    tensors = _unique(list(model.parameters()) + list(model.buffers()))
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for dtype, ts in sorted(groups.items(), key=lambda kv: str(kv[0])):
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).to("cpu") for t in ts])
            raw = flat.view(torch.uint8).numpy().copy() if flat.numel() else np.zeros(0, np.uint8)
        check_uniform(comm, raw, f"model state ({dtype})")
        comm.Bcast(raw, root=root)
        _unflatten_into(ts, torch.from_numpy(raw).view(dtype))


def _unique(tensors: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """Tensors in order, each storage once (tied weights appear once)."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def flat_buffers(model: "torch.nn.Module") -> np.ndarray | None:
    """All buffers' bytes in one uint8 vector (for digests); None when the model has no buffers."""
    import torch

    bufs = [b for b in model.buffers()]
    if not bufs:
        return None
    with torch.no_grad():
        parts = [b.detach().reshape(-1).to("cpu").contiguous().view(torch.uint8) if b.numel() else
                 torch.zeros(0, dtype=torch.uint8) for b in bufs]
    return torch.cat(parts).numpy()


def average_buffers(comm: "MPI.Comm", model: "torch.nn.Module", contributes: bool) -> int:
    """Make floating-point buffers (BatchNorm running statistics) equal on every rank: the mean over
    the contributing (data) ranks, like timm's `distribute_bn(reduce=True)`.

    During data-parallel training each rank's running statistics follow its own batches (DDP and
    Horovod do not sync them either, short of SyncBatchNorm), so the model is "identical on all ranks"
    only after this. The mean is taken in float64 in rank order on every rank from the same gathered
    values, so all ranks get the same bits; buffers already equal everywhere are left untouched.
    Collective; returns how many buffers differed and were averaged.
    """
    import torch

    bufs = [b for b in model.buffers() if b.is_floating_point()]
    mine = [b.detach().to("cpu", torch.float64).numpy() for b in bufs] if contributes else None
    everyone = [m for m in comm.allgather(mine) if m is not None]
    changed = 0
    with torch.no_grad():
        for i, b in enumerate(bufs):
            values = [m[i] for m in everyone]
            if all(np.array_equal(values[0], v) for v in values[1:]):
                if not contributes and values:
                    b.copy_(torch.from_numpy(values[0]).view_as(b))
                continue
            mean = np.zeros_like(values[0])
            for v in values:
                mean += v
            mean /= len(values)
            b.copy_(torch.from_numpy(mean).view_as(b))
            changed += 1
    return changed


def digest(flat: np.ndarray) -> str:
    """SHA-256 of the parameter bytes: equal digests = bit-identical parameters."""
    return hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest()


def checksum(flat: np.ndarray) -> float:
    """A human-comparable number for the record: the float64 sum of the parameters."""
    return float(np.sum(flat, dtype=np.float64))


class LastGradClock:
    """Remembers when the last parameter gradient was accumulated (end of local backward compute).

    Schemes that reduce inside `backward()` (DDP, DeepSpeed) report exposed communication as the time
    from this moment until backward returns with synchronised gradients.
    """

    def __init__(self, params: Iterable["torch.Tensor"]) -> None:
        self.last = 0.0
        self.handles = []
        for p in params:
            if p.requires_grad and hasattr(p, "register_post_accumulate_grad_hook"):
                self.handles.append(p.register_post_accumulate_grad_hook(self._tick))

    def _tick(self, _param: "torch.Tensor") -> None:
        self.last = time.perf_counter()

    def reset(self) -> None:
        self.last = 0.0

    def exposed_since(self, end: float, start: float) -> float:
        """Seconds from the last gradient to `end`; 0 when no hook fired after `start`."""
        return max(0.0, end - self.last) if self.last >= start else 0.0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# -- torch.distributed on top of MPI ---------------------------------------------------------------

def local_layout(comm: "MPI.Comm") -> tuple[int, int]:
    """(local rank, ranks on this node), from the MPI shared-memory split (any launcher)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def apply_env(env: dict[str, str]) -> None:
    """Export the torch.distributed variables into this process."""
    os.environ.update(env)
