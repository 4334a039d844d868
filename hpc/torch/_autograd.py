"""The blocking, differentiable forms (allreduce, allgather, broadcast, alltoall, reducescatter and
their grouped versions) with Horovod's gradients: allreduce's is the same allreduce of the gradient;
allgather's the average of the gradient, sliced to this rank's rows; broadcast's the average, kept on
the root only; alltoall's the alltoall back with the received splits; reducescatter's the allgather.
"""

from __future__ import annotations

from typing import Any

from hpc.torch._basics import Sum, rank
from hpc.torch._ops import (allgather_async, allreduce_async, alltoall_async, broadcast_async,
                            grouped_allgather_async, grouped_allreduce_async, grouped_reducescatter_async,
                            reducescatter_async, synchronize)
from hpc.torch._process_sets import global_process_set
from hpc.workloads.sync.compression import Compression

_F: dict[str, Any] = {}


def _functions() -> dict[str, Any]:
    """The torch.autograd.Function classes, made on first use (torch is imported lazily)."""
    if _F:
        return _F
    import torch

    class Allreduce(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, average, name, op, prescale, postscale, process_set):
            ctx.args = (average, op, prescale, postscale, process_set)
            return synchronize(allreduce_async(tensor, average, name, op, prescale, postscale, process_set))

        @staticmethod
        def backward(ctx, grad):
            average, op, pre, post, ps = ctx.args
            return (allreduce(grad, average=average, op=op, prescale_factor=pre, postscale_factor=post,
                              process_set=ps), None, None, None, None, None, None)

    class GroupedAllreduce(torch.autograd.Function):
        @staticmethod
        def forward(ctx, average, name, op, prescale, postscale, process_set, *tensors):
            ctx.args = (average, op, prescale, postscale, process_set)
            return tuple(synchronize(grouped_allreduce_async(list(tensors), average, name, op, prescale,
                                                             postscale, process_set)))

        @staticmethod
        def backward(ctx, *grads):
            average, op, pre, post, ps = ctx.args
            return (None,) * 6 + tuple(grouped_allreduce(list(grads), average=average, op=op,
                                                         prescale_factor=pre, postscale_factor=post,
                                                         process_set=ps))

    class Allgather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, name, process_set):
            ctx.dim, ctx.ps = tensor.shape[0], process_set
            return synchronize(allgather_async(tensor, name, process_set))

        @staticmethod
        def backward(ctx, grad):
            reduced = allreduce(grad, average=True, process_set=ctx.ps)
            dims = allgather(torch.IntTensor([ctx.dim]), process_set=ctx.ps).view(-1)
            r = ctx.ps.rank()
            offset = int(torch.sum(dims.narrow(0, 0, r)).item()) if r else 0
            return reduced.narrow(0, offset, ctx.dim), None, None

    class GroupedAllgather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, name, process_set, *tensors):
            ctx.dims, ctx.ps = [t.shape[0] for t in tensors], process_set
            return tuple(synchronize(grouped_allgather_async(list(tensors), name, process_set)))

        @staticmethod
        def backward(ctx, *grads):
            reduced = grouped_allreduce(list(grads), average=True, process_set=ctx.ps)
            dims = [d.view(-1) for d in grouped_allgather([torch.IntTensor([d]) for d in ctx.dims],
                                                          process_set=ctx.ps)]
            r = ctx.ps.rank()
            offsets = [int(torch.sum(d.narrow(0, 0, r)).item()) if r else 0 for d in dims]
            return (None, None, *[g.narrow(0, o, d) for g, o, d in zip(reduced, offsets, ctx.dims)])

    class Broadcast(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, root_rank, name, process_set):
            ctx.root, ctx.ps = root_rank, process_set
            return synchronize(broadcast_async(tensor, root_rank, name, process_set))

        @staticmethod
        def backward(ctx, grad):
            reduced = allreduce(grad, average=True, process_set=ctx.ps)
            if rank() != ctx.root:
                reduced = reduced * 0
            return reduced, None, None, None

    class Alltoall(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, splits, name, process_set):
            out, received = synchronize(alltoall_async(tensor, splits, name, process_set))
            ctx.ps, ctx.recv = process_set, received
            if splits is None:
                return out
            ctx.mark_non_differentiable(received)
            return out, received

        @staticmethod
        def backward(ctx, grad, *dead):
            back, _ = alltoall(grad.contiguous(), splits=ctx.recv, process_set=ctx.ps)
            return back, None, None, None

    class Reducescatter(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, name, op, process_set, prescale, postscale):
            ctx.args = (op, process_set, prescale, postscale)
            return synchronize(reducescatter_async(tensor, name, op, process_set, prescale, postscale))

        @staticmethod
        def backward(ctx, grad):
            op, ps, pre, post = ctx.args
            grad = grad * (ps.size() if op == Sum else 1) * pre * post
            return allgather(grad.contiguous(), process_set=ps), None, None, None, None, None

    class GroupedReducescatter(torch.autograd.Function):
        @staticmethod
        def forward(ctx, name, op, process_set, prescale, postscale, *tensors):
            ctx.args = (op, process_set, prescale, postscale)
            return tuple(synchronize(grouped_reducescatter_async(list(tensors), name, op, process_set,
                                                                 prescale, postscale)))

        @staticmethod
        def backward(ctx, *grads):
            op, ps, pre, post = ctx.args
            grads = [(g * (ps.size() if op == Sum else 1) * pre * post).contiguous() for g in grads]
            return (None,) * 5 + tuple(grouped_allgather(grads, process_set=ps))

    _F.update(allreduce=Allreduce, grouped_allreduce=GroupedAllreduce, allgather=Allgather,
              grouped_allgather=GroupedAllgather, broadcast=Broadcast, alltoall=Alltoall,
              reducescatter=Reducescatter, grouped_reducescatter=GroupedReducescatter)
    return _F


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None, prescale_factor=1.0,
              postscale_factor=1.0, process_set=global_process_set):
    """Average (default) or op-reduce `tensor` over the process set into a new tensor; differentiable."""
    wire, ctx = compression.compress(tensor)
    out = _functions()["allreduce"].apply(wire, average, name, op, prescale_factor, postscale_factor,
                                          process_set)
    return compression.decompress(out, ctx)


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=global_process_set):
    wires, ctxs = zip(*[compression.compress(t) for t in tensors])
    outs = _functions()["grouped_allreduce"].apply(average, name, op, prescale_factor, postscale_factor,
                                                   process_set, *wires)
    return [compression.decompress(t, c) for t, c in zip(outs, ctxs)]


def allgather(tensor, name=None, process_set=global_process_set):
    """Every member's tensor concatenated along dim 0 (first dims may differ); differentiable."""
    return _functions()["allgather"].apply(tensor, name, process_set)


def grouped_allgather(tensors, name=None, process_set=global_process_set):
    return list(_functions()["grouped_allgather"].apply(name, process_set, *tensors))


def broadcast(tensor, root_rank, name=None, process_set=global_process_set):
    """Root's tensor on every member, as a new tensor; differentiable."""
    return _functions()["broadcast"].apply(tensor, root_rank, name, process_set)


def alltoall(tensor, splits=None, name=None, process_set=global_process_set):
    """Rows splits[j] to member j: the received rows, or (rows, received splits) when splits are given."""
    return _functions()["alltoall"].apply(tensor, splits, name, process_set)


def reducescatter(tensor, name=None, compression=Compression.none, op=None, process_set=global_process_set,
                  prescale_factor=1.0, postscale_factor=1.0):
    """Reduce over the members and keep this member's rows (op Average by default); differentiable."""
    from hpc.torch._basics import Average

    op = Average if op is None else op
    wire, ctx = compression.compress(tensor)
    out = _functions()["reducescatter"].apply(wire, name, op, process_set, prescale_factor, postscale_factor)
    return compression.decompress(out, ctx)


def grouped_reducescatter(tensors, name=None, compression=Compression.none, op=None,
                          process_set=global_process_set, prescale_factor=1.0, postscale_factor=1.0):
    from hpc.torch._basics import Average

    op = Average if op is None else op
    wires, ctxs = zip(*[compression.compress(t) for t in tensors])
    outs = _functions()["grouped_reducescatter"].apply(name, op, process_set, prescale_factor,
                                                       postscale_factor, *wires)
    return [compression.decompress(t, c) for t, c in zip(outs, ctxs)]
