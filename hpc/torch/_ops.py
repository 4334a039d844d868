"""Horovod's asynchronous tensor operations: *_async return a handle at once, poll() says whether it
finished, synchronize() waits and returns the result (or raises the error every rank got).

An operation is keyed by its name (`kind.name`, or `kind.noname.N`); ranks negotiate it first
(_negotiate: same dtype, shape, op, root, scale factors on every rank, else the same
HorovodInternalError everywhere), then the background thread runs it (_exec). Arguments, defaults and
checks are Horovod 0.28's; a tensor type Horovod refuses for an operation is refused with its
ValueError, complex tensors always (Horovod has no complex types either; the imaginary part would be
lost). Beyond Horovod: allreduce also takes bool/int8/uint8/int16/bfloat16 (reduced widened).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from hpc.torch import _exec
from hpc.torch._basics import Adasum, Average, Sum, mpi_op, resolve_op, state
from hpc.torch._errors import HorovodInternalError
from hpc.torch._negotiate import Request
from hpc.torch._process_sets import SetInfo, global_process_set, resolve

if TYPE_CHECKING:
    import torch

_MOVE = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")  # Horovod's
REDUCE_DTYPES = ("int32", "int64", "float16", "float32", "float64",                   # Horovod's
                 "uint8", "int8", "int16", "bool", "bfloat16")                         # hpc: widened
MOVE_DTYPES = _MOVE + ("bool", "bfloat16")


def check_tensor(t: Any, kind: str, dtypes: Sequence[str]) -> None:
    """Horovod's refusals, as ValueError before anything is sent."""
    import torch

    if not torch.is_tensor(t):
        raise ValueError(f"{kind} expects a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise ValueError(f"Tensor type {t.type()} is not supported: hpc.torch, like Horovod, has no complex "
                         f"collectives (the imaginary part would be lost); {kind} torch.view_as_real(t) "
                         "and torch.view_as_complex() the result")
    if t.layout != torch.strided:
        raise ValueError(f"Tensor type {t.type()} is not supported ({t.layout}): use "
                         "hvd.sparse_allreduce_async for sparse tensors")
    if _exec.dtype_name(t.dtype) not in dtypes:
        raise ValueError(f"Tensor type {t.type()} is not supported.")


def _one_device(tensors: Sequence["torch.Tensor"], kind: str) -> None:
    if len({t.device.type for t in tensors}) > 1:
        raise HorovodInternalError(f"{kind}: the tensors of one grouped operation must all be on the CPU or "
                                   f"all on a GPU, got {sorted({str(t.device) for t in tensors})}")


def _submit(kind: str, name: str | None, info: SetInfo, sig: tuple, req_info: Any,
            run: Callable[[Any], Any]) -> int:
    rt = state().runtime
    full = rt.name_for(kind, name, info.set_id)
    return rt.submit(Request(kind, full, info.set_id, sig, req_info), run)


def _check_op(op: int, kind: str) -> None:
    if op == Adasum:
        raise NotImplementedError(f"Adasum {kind} is not supported by hpc.torch (use Average or Sum)")
    mpi_op(op)


# -- allreduce ---------------------------------------------------------------------------------------

def _allreduce_async(tensors: list, outputs: list, name: str | None, op: int, pre: float, post: float,
                     process_set: Any, grouped: bool) -> int:
    info = resolve(process_set)
    _check_op(op, "allreduce")
    if not tensors:
        raise ValueError("grouped_allreduce needs at least one tensor")
    for t in tensors:
        check_tensor(t, "allreduce", REDUCE_DTYPES)
    _one_device(tensors, "allreduce")
    coll = _exec.collective_for(info)

    def run(resp):
        out = _exec.allreduce(info, tensors, outputs, op, pre, post, coll)
        return out if grouped else out[0]

    return _submit("allreduce", name, info, _exec.allreduce_sig(tensors, op, pre, post), None, run)


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                    process_set=global_process_set) -> int:
    """Reduce `tensor` over the process set into a new tensor; returns a handle."""
    op = resolve_op(op, average)
    return _allreduce_async([tensor], [tensor.new(tensor.shape)], name, op, prescale_factor,
                            postscale_factor, process_set, False)


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                     process_set=global_process_set) -> int:
    """In-place allreduce_async: `tensor` holds the result once synchronized."""
    op = resolve_op(op, average)
    return _allreduce_async([tensor], [tensor], name, op, prescale_factor, postscale_factor, process_set, False)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
               process_set=global_process_set):
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor,
                                        process_set))


def grouped_allreduce_async(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                            postscale_factor=1.0, process_set=global_process_set) -> int:
    """One negotiated, fused allreduce of a list of tensors (into new tensors)."""
    op = resolve_op(op, average)
    tensors = list(tensors)
    return _allreduce_async(tensors, [t.new(t.shape) for t in tensors], name, op, prescale_factor,
                            postscale_factor, process_set, True)


def grouped_allreduce_async_(tensors, average=None, name=None, op=None, prescale_factor=1.0,
                             postscale_factor=1.0, process_set=global_process_set) -> int:
    op = resolve_op(op, average)
    tensors = list(tensors)
    return _allreduce_async(tensors, tensors, name, op, prescale_factor, postscale_factor, process_set, True)


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                       process_set=global_process_set):
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor,
                                                postscale_factor, process_set))


def sparse_allreduce_async(tensor, name, op, process_set=global_process_set) -> Callable[[], Any]:
    """Horovod's sparse allreduce: allgather of indices and values; returns a callable that waits and
    builds the (uncoalesced) sparse sum or average."""
    t = tensor
    indices = allgather_async(t._indices().transpose(0, 1).contiguous(), name=f"{name}.indices",
                              process_set=process_set)
    values = allgather_async(t._values(), name=f"{name}.values", process_set=process_set)
    n = resolve(process_set).ranks

    def handle():
        vals = synchronize(values)
        idx = synchronize(indices)
        vals = vals / len(n) if op == Average else vals
        if idx.dim() == 0 or vals.dim() == 0:
            return t.new().resize_as_(t)
        return t.new(idx.transpose(0, 1), vals, t.size())

    return handle


# -- allgather, broadcast, alltoall, reducescatter -----------------------------------------------------

def _allgather_async(tensors: list, name: str | None, process_set: Any, grouped: bool) -> int:
    info = resolve(process_set)
    for t in tensors:
        check_tensor(t, "allgather", MOVE_DTYPES)
        if t.dim() == 0:
            raise ValueError("allgather needs tensors with at least one dimension (it concatenates along "
                             "the first)")
    _one_device(tensors, "allgather")
    sig = _exec.tensor_fields(tensors, shape="rank and dims after the first")

    def run(resp):
        out = _exec.allgather(info, resp, tensors)
        return out if grouped else out[0]

    return _submit("allgather", name, info, sig, tuple(int(t.shape[0]) for t in tensors), run)


def allgather_async(tensor, name=None, process_set=global_process_set) -> int:
    """Concatenate every member's tensor along dim 0 (first dims may differ); returns a handle."""
    return _allgather_async([tensor], name, process_set, False)


def grouped_allgather_async(tensors, name=None, process_set=global_process_set) -> int:
    return _allgather_async(list(tensors), name, process_set, True)


def _broadcast_async(tensor, output, root_rank: int, name: str | None, process_set: Any) -> int:
    info = resolve(process_set)
    check_tensor(tensor, "broadcast", MOVE_DTYPES)
    if root_rank not in info.ranks:
        raise ValueError(f"broadcast root_rank {root_rank} is not a rank of the process set {info.ranks}")
    sig = (("root rank", int(root_rank)), *_exec.tensor_fields([tensor]))
    return _submit("broadcast", name, info, sig, None,
                   lambda resp: _exec.broadcast(info, root_rank, [tensor], [output])[0])


def broadcast_async(tensor, root_rank, name=None, process_set=global_process_set) -> int:
    """Root's tensor on every member, into a new tensor; returns a handle."""
    return _broadcast_async(tensor, tensor.new(tensor.shape), root_rank, name, process_set)


def broadcast_async_(tensor, root_rank, name=None, process_set=global_process_set) -> int:
    return _broadcast_async(tensor, tensor, root_rank, name, process_set)


def broadcast_(tensor, root_rank, name=None, process_set=global_process_set):
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


def broadcast_group(tensors: list, names: list[str], root_rank: int, name: str) -> None:
    """Overwrite every tensor with root's in one negotiated, fused broadcast; the ranks must agree on
    every tensor's name, dtype and shape (broadcast_parameters / broadcast_optimizer_state)."""
    info = resolve(global_process_set)
    for t in tensors:
        check_tensor(t, "broadcast", MOVE_DTYPES)
    if root_rank not in info.ranks:
        raise ValueError(f"broadcast root_rank {root_rank} is not a rank in [0, {len(info.ranks)})")
    sig = (("root rank", int(root_rank)), *_exec.tensor_fields(tensors, names=names))
    synchronize(_submit("broadcast", name, info, sig, None,
                        lambda resp: _exec.broadcast(info, root_rank, tensors, tensors)))


def alltoall_async(tensor, splits=None, name=None, process_set=global_process_set) -> int:
    """Send rows splits[j] of `tensor` to member j (equal parts without splits); synchronize() gives
    (received rows, received splits)."""
    import torch

    info = resolve(process_set)
    check_tensor(tensor, "alltoall", MOVE_DTYPES)
    p = len(info.ranks)
    if tensor.dim() == 0:
        raise ValueError("alltoall needs a tensor with at least one dimension")
    dim0 = int(tensor.shape[0])
    like = None
    if splits is None:
        if dim0 % p:
            raise ValueError(f"alltoall without splits needs a first dimension divisible by the number of "
                             f"ranks ({p}), got {dim0}")
        rows = [dim0 // p] * p
    else:
        if torch.is_tensor(splits):
            if splits.dtype != torch.int32:
                raise ValueError(f"alltoall splits must be a tensor of int32, got {splits.dtype}")
            like = splits
            rows = [int(x) for x in splits.reshape(-1).tolist()]
        else:
            rows = [int(x) for x in splits]
        if len(rows) != p or any(r < 0 for r in rows):
            raise ValueError(f"alltoall splits must hold {p} non-negative counts, got {rows}")
        if sum(rows) > dim0:
            raise ValueError(f"the alltoall splits add up to {sum(rows)}, more than the tensor's first "
                             f"dimension {dim0}")
    sig = _exec.tensor_fields([tensor], shape="rank and dims after the first")

    def run(resp):
        out, recv = _exec.alltoall(info, resp, tensor[:sum(rows)])
        if like is not None:
            recv = recv.to(like.device)
        return out, recv

    return _submit("alltoall", name, info, sig, tuple(rows), run)


def _reducescatter_async(tensors: list, name: str | None, op: int, process_set: Any, pre: float,
                         post: float, grouped: bool) -> int:
    info = resolve(process_set)
    if op not in (Average, Sum):
        raise HorovodInternalError(f"reducescatter supports op=Average or op=Sum, not op={op}")
    for t in tensors:
        check_tensor(t, "reducescatter", REDUCE_DTYPES)
        if t.dim() == 0:
            raise ValueError("reducescatter needs tensors with at least one dimension (it splits the first)")
    _one_device(tensors, "reducescatter")
    sig = (("reduce op", op), ("prescale_factor", float(pre)), ("postscale_factor", float(post)),
           *_exec.tensor_fields(tensors))

    def run(resp):
        out = _exec.reducescatter(info, tensors, op, pre, post)
        return out if grouped else out[0]

    return _submit("reducescatter", name, info, sig, None, run)


def reducescatter_async(tensor, name=None, op=Average, process_set=global_process_set, prescale_factor=1.0,
                        postscale_factor=1.0) -> int:
    """Reduce over the members and keep this member's block of rows; returns a handle."""
    return _reducescatter_async([tensor], name, op, process_set, prescale_factor, postscale_factor, False)


def grouped_reducescatter_async(tensors, name=None, op=Average, process_set=global_process_set,
                                prescale_factor=1.0, postscale_factor=1.0) -> int:
    return _reducescatter_async(list(tensors), name, op, process_set, prescale_factor, postscale_factor, True)


# -- handles, join, barrier -------------------------------------------------------------------------

def poll(handle: int) -> bool:
    """True once the operation finished (it runs in the background)."""
    return state().runtime.poll(handle)


def synchronize(handle: int) -> Any:
    """Wait for the operation and return its result (None for an unknown handle, as Horovod)."""
    rt = state().runtime
    h = rt.take(handle) if isinstance(handle, int) else None
    if h is None:
        return None
    return rt.wait(h)


def join(device: int = -1) -> int:
    """Wait until every rank joined, taking part in the others' allreduces and DistributedOptimizer
    steps with zeros meanwhile (uneven data); returns the last rank to join (the same everywhere)."""
    import time

    from hpc.torch._optimizer import join_gradients

    st = state()
    rt = st.runtime
    engines_done = join_gradients(st.grads)  # posted before the coordinator can see this rank joined
    handle = rt.join()
    delay = 2e-5
    while not (engines_done() and handle.event.is_set()):
        if rt.down or not rt.thread.is_alive():
            break
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)
    return int(rt.wait(handle))


def barrier(process_set=global_process_set) -> None:
    """Wait until every member of the process set arrived."""
    info = resolve(process_set)
    synchronize(_submit("barrier", None, info, (), None, lambda resp: info.data.Barrier()))
