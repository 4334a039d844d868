"""Allreduce on torch tensors that live on a GPU: device buffers into a CUDA-aware MPI, or pinned host staging.

The plug-in contract (and every kernel in kernels/) works on host numpy arrays. On a GPU there are
three ways to reduce a device buffer, and the record says which ran (`cuda_path`, `reduce_on`):
- `mpi`: native MPI_Allreduce; the device tensor itself goes to a CUDA-aware MPI, else a pinned copy.
- `ring`: a ring (reduce-scatter + allgather) whose additions run on the GPU with torch; the chunks
  travel as device buffers through a CUDA-aware MPI, else through pinned host chunk buffers.
- any other SPEC: the device buffer is staged through a pinned host buffer and the (host) kernel runs
  on it (reduce_on "host").
MPI knows nothing of CUDA streams: every call first waits for the current stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from hpc.gpu import CUDA_AWARE, HOST_STAGING, cuda_path

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

#: collectives that have a device implementation here (device buffers, no whole-buffer staging)
DIRECT = ("mpi", "ring")


@dataclass(frozen=True)
class DeviceCollective:
    """`func(comm, send, recv, op)` on device tensors (recv may be send: in place), and how it runs."""

    name: str
    func: Callable[..., None]
    cuda_path: str     # CUDA_AWARE | HOST_STAGING
    reduce_on: str     # "device" (torch on the GPU), "mpi" (the MPI library) or "host" (a host kernel)


def plan(name: str, cuda_aware: bool, host_staging: bool = False, builtin: bool = True,
         dtype: str = "float32") -> tuple[str, str]:
    """(cuda_path, reduce_on) for collective `name` (pure: what `make` will build). float16 has no MPI
    datatype, so native MPI never gets it as a device buffer (the host kernel widens it)."""
    if builtin and name == "ring":
        return cuda_path("cuda", cuda_aware, True, host_staging) or HOST_STAGING, "device"
    if builtin and name == "mpi":
        direct_ok = dtype != "float16"
        return cuda_path("cuda", cuda_aware, direct_ok, host_staging) or HOST_STAGING, "mpi"
    return HOST_STAGING, "host"


def make(coll: Any, cuda_aware: bool, host_staging: bool = False, dtype: str = "float32") -> DeviceCollective:
    """The device version of a loaded Collective (hpc.plugins.registry) for this MPI."""
    path, where = plan(coll.name, cuda_aware, host_staging, coll.builtin, dtype)
    direct = path == CUDA_AWARE
    if coll.builtin and coll.name == "ring":
        func = _Ring(direct).allreduce
    elif coll.builtin and coll.name == "mpi" and direct:
        func = _native_direct
    else:
        func = _Staged(coll.func).allreduce
    return DeviceCollective(coll.name, func, path, where)


def _wait(t: "torch.Tensor") -> None:
    """MPI reads device memory outside CUDA's stream order: finish what the stream queued first."""
    import torch

    if t.is_cuda:
        torch.cuda.current_stream(t.device).synchronize()


def _native_direct(comm: "MPI.Comm", send: "torch.Tensor", recv: "torch.Tensor", op: "MPI.Op") -> None:
    from mpi4py import MPI

    _wait(recv)
    if recv.numel() == 0:
        return
    if send is recv or send.data_ptr() == recv.data_ptr():
        comm.Allreduce(MPI.IN_PLACE, recv, op)
    else:
        comm.Allreduce(send, recv, op)


class _Staged:
    """A host allreduce on a device tensor: pinned host buffer in, host kernel, result back."""

    def __init__(self, host_func: Callable[..., None]) -> None:
        self.host_func = host_func
        self.buf: "torch.Tensor | None" = None

    def _host(self, like: "torch.Tensor") -> "torch.Tensor":
        import torch

        b = self.buf
        if b is None or b.dtype != like.dtype or b.numel() < like.numel():
            b = self.buf = torch.empty(like.numel(), dtype=like.dtype, pin_memory=like.is_cuda)
        return b[:like.numel()]

    def allreduce(self, comm: "MPI.Comm", send: "torch.Tensor", recv: "torch.Tensor", op: "MPI.Op") -> None:
        host = self._host(recv)
        host.copy_(send.reshape(-1))  # blocking: the host kernel reads it next
        arr = host.numpy()
        self.host_func(comm, arr, arr, op)
        recv.reshape(-1).copy_(host)


_TORCH_OPS = {"SUM": "add", "MAX": "maximum", "MIN": "minimum", "PROD": "mul"}


def _op_name(op: "MPI.Op") -> str:
    from mpi4py import MPI

    for name in _TORCH_OPS:
        if op == getattr(MPI, name):
            return name
    raise ValueError("the device ring reduces with SUM, MAX, MIN or PROD")


class _Ring:
    """Ring allreduce with the reductions on the device: p-1 reduce-scatter steps (receive the left
    neighbour's partial chunk, combine it into ours with torch), p-1 allgather steps. Chunks cross
    MPI as device buffers (`direct`, CUDA-aware MPI) or through pinned host chunk buffers."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct
        self.tmp: "torch.Tensor | None" = None
        self.hsend: "torch.Tensor | None" = None
        self.hrecv: "torch.Tensor | None" = None

    def _scratch(self, n: int, like: "torch.Tensor") -> None:
        import torch

        if self.tmp is None or self.tmp.numel() < n or self.tmp.dtype != like.dtype or self.tmp.device != like.device:
            self.tmp = torch.empty(max(n, 1), dtype=like.dtype, device=like.device)
            if not self.direct:
                pin = like.is_cuda
                self.hsend = torch.empty(max(n, 1), dtype=like.dtype, pin_memory=pin)
                self.hrecv = torch.empty(max(n, 1), dtype=like.dtype, pin_memory=pin)

    def _sendrecv(self, comm: "MPI.Comm", src: "torch.Tensor", dest: int, dst: "torch.Tensor", source: int) -> None:
        if self.direct:
            _wait(src)
            sbuf = src if src.numel() else src.cpu().numpy()
            rbuf = dst if dst.numel() else dst.cpu().numpy()
            comm.Sendrecv(sbuf, dest, 0, rbuf, source, 0)
            return
        hs, hr = self.hsend[:src.numel()], self.hrecv[:dst.numel()]
        hs.copy_(src)
        comm.Sendrecv(hs.numpy(), dest, 0, hr.numpy(), source, 0)
        dst.copy_(hr)

    def allreduce(self, comm: "MPI.Comm", send: "torch.Tensor", recv: "torch.Tensor", op: "MPI.Op") -> None:
        import torch

        flat = recv.reshape(-1)
        if send.data_ptr() != recv.data_ptr():
            flat.copy_(send.reshape(-1))
        p, r = comm.Get_size(), comm.Get_rank()
        if p == 1 or flat.numel() == 0:
            return
        combine = getattr(torch, _TORCH_OPS[_op_name(op)])
        chunks = list(torch.tensor_split(flat, p))
        self._scratch(max(c.numel() for c in chunks), flat)
        right, left = (r + 1) % p, (r - 1) % p
        for s in range(p - 1):  # reduce-scatter: afterwards chunk (r + 1) % p is complete here
            out_i, in_i = (r - s) % p, (r - s - 1) % p
            tmp = self.tmp[:chunks[in_i].numel()]
            self._sendrecv(comm, chunks[out_i], right, tmp, left)
            combine(chunks[in_i], tmp, out=chunks[in_i])
        for s in range(p - 1):  # allgather: pass the complete chunks round
            out_i, in_i = (r + 1 - s) % p, (r - s) % p
            self._sendrecv(comm, chunks[out_i], right, chunks[in_i], left)
        _wait(flat)
