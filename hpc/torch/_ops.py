"""Tensor collectives with Horovod's names and meanings: allreduce(_), broadcast(_), allgather, barrier.

They complete before returning (Horovod's *_async variants return a handle whose synchronize() gives
the result; here the handle already holds it). SUM/Average go through the chosen collective; the
rest (broadcast, allgather, Min/Max/Product) through native MPI, since a plug-in is an allreduce.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hpc.comm import check_uniform
from hpc.torch._basics import Average, reduce_inplace, resolve_op, state
from hpc.workloads.sync.compression import Compression

if TYPE_CHECKING:
    import torch


def _allreduce_copy(tensor: "torch.Tensor", op: int, prescale: float, postscale: float) -> "torch.Tensor":
    """A new tensor holding the reduction of `tensor` over all ranks (same device and dtype)."""
    host = tensor.detach().to("cpu", copy=True).contiguous()
    _reduce_host(host, op, prescale, postscale)
    return host.to(tensor.device)


def _reduce_host(host: "torch.Tensor", op: int, prescale: float, postscale: float) -> None:
    import torch

    st = state()
    check_uniform(st.comm, _shape_probe(host), "allreduce tensor")
    if prescale != 1.0:
        host.mul_(prescale)
    reduce_inplace(host, op)
    if op == Average:
        n = st.comm.Get_size()
        if host.dtype.is_floating_point:
            host.div_(n)
        else:
            host.copy_(torch.div(host, n, rounding_mode="trunc"))
    if postscale != 1.0:
        host.mul_(postscale)


def _shape_probe(host: "torch.Tensor") -> np.ndarray:
    """A zero-copy stand-in with the tensor's element count and dtype for check_uniform."""
    code = {"torch.bfloat16": "u2", "torch.bool": "?"}.get(str(host.dtype))
    dtype = np.dtype(code) if code else np.dtype(str(host.dtype).replace("torch.", ""))
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=(host.numel(),), strides=(0,))


def _autograd_allreduce():
    import torch

    class _Allreduce(torch.autograd.Function):
        """Allreduce in the graph: the gradient of an allreduce is the allreduce of the gradient."""

        @staticmethod
        def forward(ctx, tensor, op, prescale, postscale):
            ctx.args = (op, prescale, postscale)
            return _allreduce_copy(tensor, op, prescale, postscale)

        @staticmethod
        def backward(ctx, grad):
            return _allreduce_copy(grad, *ctx.args), None, None, None

    return _Allreduce


_FN: Any = None


def allreduce(tensor: "torch.Tensor", average: bool | None = None, name: str | None = None,
              compression: Any = Compression.none, op: int | None = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: Any = None) -> "torch.Tensor":
    """Average (default) or op-reduce `tensor` over all ranks into a new tensor; differentiable."""
    global _FN
    op = resolve_op(op, average)
    if _FN is None:
        _FN = _autograd_allreduce()
    wire, ctx = compression.compress(tensor)
    out = _FN.apply(wire, op, prescale_factor, postscale_factor)
    return compression.decompress(out, ctx)


def allreduce_(tensor: "torch.Tensor", average: bool | None = None, name: str | None = None,
               op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               process_set: Any = None) -> "torch.Tensor":
    """In-place allreduce: `tensor` holds the result (reduced in its own memory when it can)."""
    import torch

    op = resolve_op(op, average)
    with torch.no_grad():
        if tensor.device.type == "cpu" and tensor.is_contiguous():
            _reduce_host(tensor.detach(), op, prescale_factor, postscale_factor)
        else:
            tensor.copy_(_allreduce_copy(tensor, op, prescale_factor, postscale_factor))
    return tensor


class _Done:
    """A handle of an operation that already completed (hpc.torch runs collectives eagerly)."""

    def __init__(self, result: Any) -> None:
        self.result = result


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=None) -> _Done:
    import torch

    with torch.no_grad():
        return _Done(allreduce(tensor, average, name, op=op, prescale_factor=prescale_factor,
                               postscale_factor=postscale_factor))


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=None) -> _Done:
    return _Done(allreduce_(tensor, average, name, op, prescale_factor, postscale_factor))


def synchronize(handle: _Done) -> Any:
    return handle.result


def poll(handle: _Done) -> bool:
    return True


# -- broadcast, allgather, barrier -----------------------------------------------------------------

def broadcast_tensors(tensors: list["torch.Tensor"], root_rank: int) -> None:
    """Overwrite every tensor with root's values: one MPI broadcast of all their bytes (any dtypes)."""
    import torch

    st = state()
    if not tensors:
        return
    with torch.no_grad():
        parts = [t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8) for t in tensors]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
        check_uniform(st.comm, _shape_probe(flat), "broadcast tensors (parameters differ across ranks?)")
        st.comm.Bcast(flat.numpy(), root=root_rank)
        if st.comm.Get_rank() == root_rank:
            return
        off = 0
        for t, part in zip(tensors, parts):
            nb = part.numel()
            t.copy_(flat[off:off + nb].clone().view(t.dtype).view(t.shape))
            off += nb


def broadcast_(tensor: "torch.Tensor", root_rank: int, name: str | None = None,
               process_set: Any = None) -> "torch.Tensor":
    broadcast_tensors([tensor], root_rank)
    return tensor


def broadcast(tensor: "torch.Tensor", root_rank: int, name: str | None = None,
              process_set: Any = None) -> "torch.Tensor":
    out = tensor.detach().clone()
    broadcast_tensors([out], root_rank)
    return out


def broadcast_async_(tensor, root_rank, name=None, process_set=None) -> _Done:
    return _Done(broadcast_(tensor, root_rank))


def allgather(tensor: "torch.Tensor", name: str | None = None, process_set: Any = None) -> "torch.Tensor":
    """Concatenate every rank's tensor along dim 0 (first dims may differ, the rest must match)."""
    import torch

    st = state()
    parts = st.comm.allgather(tensor.detach().cpu())
    return torch.cat(parts).to(tensor.device)


def barrier(process_set: Any = None) -> None:
    state().comm.Barrier()


def join(device: int = -1) -> int:
    """All ranks arrive (no uneven-input support beyond that); returns the last rank, as Horovod."""
    st = state()
    st.comm.Barrier()
    return st.comm.Get_size() - 1
