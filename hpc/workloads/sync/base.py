"""What every sync scheme shares: the context it is built from, the step interface, parameter helpers.

A Trainer takes one batch per `step`, does forward, backward, gradient synchronisation and the
optimizer update, and says how long computing and *exposed* communication (time spent waiting for
reductions once the local gradients are ready) took. `params()` returns the full parameter vector
(collective for schemes that shard parameters) so ranks can be compared bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

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
    stage: int = 0          # DeepSpeed ZeRO stage
    batch: int = 1          # samples per rank per step
    local_rank: int = 0
    local_size: int = 1


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

    def params(self) -> np.ndarray | None:
        """The full flat parameter vector (float32) on this rank; None where a rank holds none."""
        return flat_params(self.ctx.model.parameters())

    def bytes_per_step(self) -> int:
        """Gradient payload this rank sends into the reduction per step (bytes)."""
        return sum(p.numel() for p in self.ctx.model.parameters() if p.requires_grad) * 4

    def summary(self) -> dict[str, Any]:
        """Scheme-specific figures for the record (e.g. buckets, observed staleness)."""
        return {}

    def close(self) -> None:
        """Release threads, communicators and process groups."""


# -- optimizer, loss -------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(params: Iterable["torch.nn.Parameter"], opts: TrainOptions) -> "torch.optim.Optimizer":
    """Plain SGD (optionally with momentum) or Adam: the same update for every scheme."""
    import torch

    params = list(params)
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum)
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr)
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
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(src[off:off + n].view_as(p))
            off += n
    if off != src.numel():
        raise HpcError(f"parameter vector has {src.numel()} values, the model {off}")


def broadcast_params(comm: "MPI.Comm", params: list["torch.Tensor"], root: int = 0) -> None:
    """Make every rank start from rank `root`'s parameters (one MPI broadcast of the flat vector)."""
    flat = flat_params(params)
    comm.Bcast(flat, root=root)
    set_flat_params(params, flat)


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


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def torch_dist_env(comm: "MPI.Comm", local_rank: int, local_size: int) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for torch.distributed, agreed over MPI.

    Rank numbers come from MPI itself (the same values OMPI_COMM_WORLD_* or SLURM_PROCID hold);
    rank 0 picks a free port and its address and broadcasts them, so concurrent jobs never collide.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    if rank == 0:
        if len(set(hosts)) == 1:
            addr = "127.0.0.1"
        else:
            try:
                addr = socket.gethostbyname(hosts[0])
            except OSError:
                addr = hosts[0]
        info = (addr, free_port())
    else:
        info = None
    addr, port = comm.bcast(info, root=0)
    return {
        "RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_size), "MASTER_ADDR": addr, "MASTER_PORT": str(port),
    }


def apply_env(env: dict[str, str]) -> None:
    """Export the torch.distributed variables into this process."""
    os.environ.update(env)
