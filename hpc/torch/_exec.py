"""Running a negotiated collective on one rank: host buffers, Horovod's scaling rules, the MPI calls.

Called on the background thread once every rank of the set agreed (_negotiate). Allreduce SUM and
Average go through hpc's collective (kernels/ or a verified plug-in); Min/Max/Product, allgather,
broadcast, alltoall and reducescatter use native MPI (kernels/ holds allreduce algorithms only).
Tensors travel as bytes where the operation only moves data, so every dtype works the same way.
Scaling follows Horovod's CPU code: float32/float64 multiply in their own precision, float16 in
float32, integers in float64 and truncate; Average is a post-scale by 1/size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hpc.torch._basics import Average, Sum, mpi_op

if TYPE_CHECKING:
    import torch

    from hpc.torch._negotiate import Response
    from hpc.torch._process_sets import SetInfo

# dtypes every allreduce plug-in handles directly (float16 after its own check); the rest are widened.
DIRECT = ("float32", "float64", "int32", "int64", "float16")


def dtype_name(dtype: "torch.dtype") -> str:
    return str(dtype).replace("torch.", "")


# -- signatures (what every rank must agree on) --------------------------------------------------------

def tensor_fields(tensors: list["torch.Tensor"], shape: str = "shape", names: list[str] | None = None) -> tuple:
    """(label, value) pairs describing tensors: dtype, shape (or the dims after the first), device."""
    out: list[tuple[str, Any]] = [("number of tensors", len(tensors))]
    for i, t in enumerate(tensors):
        pre = f"'{names[i]}' " if names else ("" if len(tensors) == 1 else f"tensor {i} ")
        if names:
            out.append((f"tensor {i} name", names[i]))
        dims = tuple(t.shape) if shape == "shape" else (t.dim(), tuple(t.shape[1:]))
        out += [(f"{pre}dtype", dtype_name(t.dtype)), (f"{pre}{shape}", dims), (f"{pre}device", t.device.type)]
    return tuple(out)


def zeros_from(sig: tuple) -> list["torch.Tensor"]:
    """The tensors an allreduce signature describes, as zeros (a joined rank's contribution)."""
    import torch

    fields = list(sig)
    n = dict(fields)["number of tensors"]
    dtypes = [v for k, v in fields if k.endswith("dtype")]
    shapes = [v for k, v in fields if k.endswith("shape")]
    return [torch.zeros(shapes[i], dtype=getattr(torch, dtypes[i])) for i in range(n)]


# -- scaling and reduction --------------------------------------------------------------------------

def scale(t: "torch.Tensor", factor: float) -> None:
    """Multiply in place as Horovod's ScaleBuffer does for this dtype."""
    import torch

    if factor == 1.0:
        return
    if t.dtype in (torch.float32, torch.float64):
        t.mul_(factor)
    elif t.is_floating_point():
        t.copy_(t.float().mul_(factor))
    else:
        t.copy_(t.double().mul_(factor))  # the cast back truncates toward zero, as C++ does


def reduce_host(buf: "torch.Tensor", op: int, comm: Any, collective: Callable[[str], Any]) -> None:
    """Reduce a contiguous 1-D CPU tensor in place over `comm` (no scaling). SUM/Average: the collective
    `collective(dtype)` returns (verified); other ops: native MPI. Dtypes MPI/numpy lack are widened."""
    import torch
    from mpi4py import MPI

    name = dtype_name(buf.dtype)
    summing = op in (Average, Sum)
    if name in DIRECT and (summing or name != "float16"):
        arr = buf.numpy()
        if summing:
            collective(name).func(comm, arr, arr, MPI.SUM)
        else:
            comm.Allreduce(MPI.IN_PLACE, arr, mpi_op(op))
        return
    wide = buf.to(torch.float32 if buf.is_floating_point() else torch.int64)
    reduce_host(wide, op, comm, collective)
    buf.copy_(wide)


# -- the collectives ---------------------------------------------------------------------------------

def allreduce(info: "SetInfo", tensors: list["torch.Tensor"], outputs: list["torch.Tensor"], op: int,
              pre: float, post: float, collective: Callable[[str], Any]) -> list["torch.Tensor"]:
    """Reduce each dtype group of `tensors` in one fused buffer; results land in `outputs`."""
    import torch

    size = len(info.ranks)
    final = post / size if op == Average else post
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    with torch.no_grad():
        for idx in groups.values():
            ins = [tensors[i].detach() for i in idx]
            outs = [outputs[i] for i in idx]
            direct = (len(idx) == 1 and outs[0] is tensors[idx[0]] and ins[0].device.type == "cpu"
                      and ins[0].is_contiguous())
            buf = ins[0].view(-1) if direct else torch.cat([t.reshape(-1).cpu() for t in ins])
            scale(buf, pre)
            reduce_host(buf, op, info.data, collective)
            scale(buf, final)
            if not direct:
                off = 0
                for o in outs:
                    n = o.numel()
                    o.copy_(buf[off:off + n].view(o.shape))
                    off += n
    return outputs


def _bytes(t: "torch.Tensor") -> np.ndarray:
    import torch

    return t.reshape(-1).view(torch.uint8).numpy()


def allgather(info: "SetInfo", resp: "Response", tensors: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """Concatenate every member's tensors along dim 0 (first dims may differ: resp.infos has them)."""
    import torch
    from mpi4py import MPI

    out = []
    for i, t in enumerate(tensors):
        host = t.detach().to("cpu").contiguous()
        rows = [resp.infos[r][i] for r in info.ranks]
        row_bytes = math.prod(host.shape[1:]) * host.element_size()
        counts = [n * row_bytes for n in rows]
        displs = [sum(counts[:j]) for j in range(len(counts))]
        res = torch.empty((sum(rows), *host.shape[1:]), dtype=host.dtype)
        info.data.Allgatherv(_bytes(host), [_bytes(res), counts, displs, MPI.BYTE])
        out.append(res.to(t.device))
    return out


def broadcast(info: "SetInfo", root: int, tensors: list["torch.Tensor"],
              outputs: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """Every member ends with root's values (root: a world rank) in `outputs`, in one fused Bcast."""
    import torch

    me = info.comm.Get_rank() if info.comm is not None else -1
    root_in_set = info.ranks.index(root)
    with torch.no_grad():
        hosts = [t.detach().to("cpu").contiguous() for t in tensors]
        if len(hosts) == 1:
            flat = hosts[0].reshape(-1).view(torch.uint8)
            if flat.data_ptr() == tensors[0].data_ptr() and outputs[0] is not tensors[0]:
                flat = flat.clone()  # never write into the caller's input
        else:
            flat = torch.cat([h.reshape(-1).view(torch.uint8) for h in hosts])
        info.data.Bcast(flat.numpy(), root=root_in_set)
        off = 0
        for t, inp, o in zip(hosts, tensors, outputs):
            nb = t.numel() * t.element_size()
            if me != root_in_set or o is not inp:  # the root's in-place tensors hold the answer already
                src = flat[off:off + nb].view(t.dtype).view(t.shape)
                if o.data_ptr() != src.data_ptr():
                    o.copy_(src)
            off += nb
    return outputs


def alltoall(info: "SetInfo", resp: "Response", tensor: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Rows split[j] of this rank's tensor go to member j; returns (received rows, received splits)."""
    import torch
    from mpi4py import MPI

    me = info.comm.Get_rank()
    host = tensor.detach().to("cpu").contiguous()
    row_bytes = math.prod(host.shape[1:]) * host.element_size()
    send_rows = list(resp.infos[info.ranks[me]])
    recv_rows = [list(resp.infos[r])[me] for r in info.ranks]
    sc = [n * row_bytes for n in send_rows]
    rc = [n * row_bytes for n in recv_rows]
    sd = [sum(sc[:j]) for j in range(len(sc))]
    rd = [sum(rc[:j]) for j in range(len(rc))]
    out = torch.empty((sum(recv_rows), *host.shape[1:]), dtype=host.dtype)
    info.data.Alltoallv([_bytes(host), sc, sd, MPI.BYTE], [_bytes(out), rc, rd, MPI.BYTE])
    return out.to(tensor.device), torch.tensor(recv_rows, dtype=torch.int32)


def scatter_rows(dim0: int, p: int) -> list[int]:
    """Horovod's split of the first dimension for reducescatter: the first dim0 % p ranks get one more."""
    q, r = divmod(dim0, p)
    return [q + (1 if j < r else 0) for j in range(p)]


def reducescatter(info: "SetInfo", tensors: list["torch.Tensor"], op: int, pre: float,
                  post: float) -> list["torch.Tensor"]:
    """Reduce over the members and keep this member's block of rows (native MPI_Reduce_scatter)."""
    import torch

    p = len(info.ranks)
    me = info.comm.Get_rank()
    final = post / p if op == Average else post
    out = []
    with torch.no_grad():
        for t in tensors:
            host = t.detach().to("cpu").contiguous().clone()
            scale(host, pre)
            rows = scatter_rows(host.shape[0], p)
            row = math.prod(host.shape[1:])
            name = dtype_name(host.dtype)
            wide = host if name in ("float32", "float64", "int32", "int64") else \
                host.to(torch.float32 if host.is_floating_point() else torch.int64)
            recv = torch.empty(rows[me] * row, dtype=wide.dtype)
            info.data.Reduce_scatter(wide.reshape(-1).numpy(), recv.numpy(), [n * row for n in rows],
                                     mpi_op(Sum if op == Average else op))
            res = recv.to(host.dtype).view(rows[me], *host.shape[1:])
            scale(res, final)
            out.append(res.to(t.device))
    return out


def collective_for(info: "SetInfo") -> Callable[[str], Any]:
    """dtype -> the collective, verified on this set's background communicator before first use."""
    from hpc.torch._basics import collective

    return lambda dtype: collective(dtype, info.data)


def allreduce_sig(tensors: list["torch.Tensor"], op: int, pre: float, post: float) -> tuple:
    return (("reduce op", op), ("prescale_factor", float(pre)), ("postscale_factor", float(post)),
            *tensor_fields(tensors))


def zero_run(resp: "Response") -> None:
    """A rank inside hvd.join() takes part in another rank's allreduce with zeros (and in barriers)."""
    from hpc.torch._basics import state

    info = state().sets[resp.set_id]
    if resp.kind == "barrier":
        info.data.Barrier()
        return
    fields = dict(resp.sig)
    tensors = zeros_from(resp.sig)
    allreduce(info, tensors, tensors, fields["reduce op"], fields["prescale_factor"],
              fields["postscale_factor"], collective_for(info))
