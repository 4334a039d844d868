"""Start-of-training helpers with Horovod's meanings: broadcast_parameters, broadcast_optimizer_state,
broadcast_object, allgather_object.

broadcast_parameters is one negotiated broadcast of all tensors (one fused MPI_Bcast): the ranks must
agree on every tensor's name, dtype and shape first, so a different model on one rank (even one with
the same byte count) raises the same HorovodInternalError on every rank instead of being reinterpreted.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import TYPE_CHECKING, Any, Iterable

from hpc.torch._basics import rank, size
from hpc.torch._ops import broadcast_, broadcast_group
from hpc.torch._process_sets import global_process_set

if TYPE_CHECKING:
    import torch


def broadcast_parameters(params: Any, root_rank: int) -> None:
    """Make every rank hold root's tensors: `model.state_dict()` (buffers included, as Horovod, sorted
    by name), `model.named_parameters()` or `model.parameters()` (a list, or any iterable)."""
    import torch

    if isinstance(params, dict):
        items = sorted(params.items())
    elif isinstance(params, Iterable) and not isinstance(params, (str, bytes, torch.Tensor)):
        items = [p if isinstance(p, tuple) else (None, p) for p in params]
    else:
        raise ValueError(f"invalid params of type: {type(params)}")
    named = [(str(k) if k is not None else f"tensor.{i}", t) for i, (k, t) in enumerate(items)
             if torch.is_tensor(t)]
    if named:
        broadcast_group([t for _, t in named], [k for k, _ in named], root_rank, "broadcast_parameters")


def broadcast_optimizer_state(optimizer: "torch.optim.Optimizer", root_rank: int, model: Any = None) -> None:
    """Make every rank's optimizer state (tensors, scalars, hyper-parameters) equal root's.

    As Horovod: a fresh optimizer's state is created first by one step on zero gradients (without
    gradient synchronisation), so every rank has the same structure to receive into.
    """
    import torch

    from hpc.torch._optimizer import plain_step

    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
    state_dict = optimizer.state_dict()
    if len(state_dict["state"]) == 0:
        sparse = set()
        if model is not None:
            for m in model.modules():
                if isinstance(m, torch.nn.Embedding) and m.sparse:
                    sparse.update(id(p) for p in m.parameters())
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    p.grad = p.data.new(p.size()).zero_()
                    if isinstance(optimizer, torch.optim.SparseAdam) or \
                            (isinstance(optimizer, torch.optim.SGD) and id(p) in sparse):
                        p.grad = p.grad.to_sparse()
        plain_step(optimizer)
        state_dict = optimizer.state_dict()
    if len(state_dict["state"]) == 0:
        return  # a stateless optimizer: nothing to send

    tensors: list[tuple[str, "torch.Tensor"]] = []
    scalars: dict[str, Any] = {}
    setters: dict[str, Any] = {}
    seen: dict[str, int] = collections.defaultdict(int)

    def set_option(index: int, key: str):
        return lambda v: optimizer.param_groups[index].__setitem__(key, v)

    def set_state(pid: Any, key: str):
        return lambda v: state_dict["state"][pid].__setitem__(key, v)

    for index, group in enumerate(state_dict["param_groups"]):
        for key, value in group.items():
            if key != "params":
                name = f"{key}.{index}"
                scalars[name], setters[name] = value, set_option(index, key)
        for pid in group["params"]:
            if pid not in state_dict["state"]:
                continue
            for key, value in state_dict["state"][pid].items():
                seen[key] += 1
                name = f"{key}.{seen[key]}"
                if torch.is_tensor(value):
                    tensors.append((name, value))
                else:
                    scalars[name], setters[name] = value, set_state(pid, key)
    broadcast_parameters(tensors, root_rank)
    for name, value in broadcast_object(scalars, root_rank).items():
        setters[name](value)


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle  # lambdas and local classes, as Horovod
    except ImportError:
        return pickle.dumps(obj)
    buf = io.BytesIO()
    cloudpickle.dump(obj, buf)
    return buf.getvalue()


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None,
                     process_set: Any = global_process_set) -> Any:
    """Root's object on every member (cloudpickled; root gets its own object back), as Horovod does it:
    a broadcast of the size, then of the bytes."""
    import torch

    name = name or type(obj).__name__
    if rank() == root_rank:
        data = torch.frombuffer(bytearray(_dumps(obj)), dtype=torch.uint8)
        sz = torch.tensor([data.numel()], dtype=torch.int64)
        broadcast_(sz, root_rank, name + ".sz", process_set)
    else:
        sz = torch.zeros(1, dtype=torch.int64)
        broadcast_(sz, root_rank, name + ".sz", process_set)
        data = torch.empty(int(sz.item()), dtype=torch.uint8)
    broadcast_(data, root_rank, name + ".t", process_set)
    return obj if rank() == root_rank else pickle.loads(data.numpy().tobytes())


def allgather_object(obj: Any, name: str | None = None) -> list[Any]:
    """Every rank's object, in rank order (an allgather of the sizes, then of the bytes)."""
    import torch

    from hpc.torch._autograd import allgather

    name = name or type(obj).__name__
    data = torch.frombuffer(bytearray(_dumps(obj)), dtype=torch.uint8)
    sizes = allgather(torch.tensor([data.numel()], dtype=torch.int64), name=name + ".sz").tolist()
    gathered = allgather(data, name=name + ".t").numpy()
    offs = [sum(sizes[:i]) for i in range(size() + 1)]
    return [pickle.loads(gathered[offs[i]:offs[i + 1]].tobytes()) for i in range(size())]
