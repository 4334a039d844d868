"""The process-wide part of hpc.torch: init/shutdown, ranks, the collective, reduce ops.

Horovod's API is module-level functions, so hpc.torch keeps one `_State` (a duplicate of the world
communicator, the loaded collective, the local layout) created by `init()`. The collective comes
from `init(collective=...)`, else HPC_COLLECTIVE, else `auto`; a non-built-in one is verified
against native MPI on its first use (every rank uses it at the same call, so verification, which is
collective, lines up).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc.errors import HpcError

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

    from hpc.plugins.registry import Collective

DEFAULT_COLLECTIVE = "auto"

# Reduce ops: the values of Horovod's ReduceOp enum, so `op == hvd.Average` reads the same.
Average = 0
Sum = 1
Adasum = 2
Min = 3
Max = 4
Product = 5
_OP_NAMES = {Average: "Average", Sum: "Sum", Adasum: "Adasum", Min: "Min", Max: "Max", Product: "Product"}

# dtypes every plug-in must reduce (the contract) plus float16 after its own check; others are widened.
_DIRECT = ("float32", "float64", "int32", "int64", "float16")


class NotInitializedError(HpcError, ValueError):
    """hpc.torch used before init() (a ValueError, as Horovod raises)."""


@dataclass
class _State:
    comm: "MPI.Comm"            # hpc.torch's own duplicate of the world communicator
    coll: "Collective"
    local_rank: int
    local_size: int
    verified: set[str] = field(default_factory=set)  # dtypes the collective was checked on
    engines: list[Any] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)  # perf_counter at each synchronised step
    info: dict[str, Any] = field(default_factory=dict)     # optimizer settings for the record
    lock: threading.Lock = field(default_factory=threading.Lock)


_state: _State | None = None


def init(collective: str | None = None, comm: "MPI.Comm | None" = None) -> None:
    """Start hpc.torch on `comm` (default MPI.COMM_WORLD) with collective SPEC (default: HPC_COLLECTIVE,
    else auto). Calling it again is a no-op, as in Horovod."""
    global _state
    if _state is not None:
        return
    if collective is not None and not isinstance(collective, str):  # Horovod's init(comm) positionally
        collective, comm = None, collective
    from hpc.env import get

    spec = collective or get("HPC_COLLECTIVE") or DEFAULT_COLLECTIVE
    if "mpi4py.MPI" not in sys.modules:
        # Open MPI's UCX one-sided component prints an error line per rank whenever a shared window is
        # created (shm, auto); the sm component works silently. Only possible before MPI_Init.
        os.environ.setdefault("OMPI_MCA_osc", "^ucx")
    from mpi4py import MPI

    from hpc.plugins import registry
    from hpc.workloads.sync.base import local_layout

    _install_excepthook()  # from here on, an exception on one rank ends the job with one line
    base = comm if comm is not None else MPI.COMM_WORLD
    coll = registry.load(spec)
    lr, ls = local_layout(base)
    _state = _State(comm=base.Dup(), coll=coll, local_rank=lr, local_size=ls)
    if coll.builtin:
        _state.verified.update(("float32", "float64", "int32", "int64", "float16"))
    atexit.register(_at_exit)


def shutdown() -> None:
    """Write the HPC_RECORD record (if asked), stop the gradient threads, free the communicator."""
    global _state
    st = _state
    if st is None:
        return
    try:
        from hpc.torch._record import write_record

        write_record(st)
    finally:
        for eng in st.engines:
            eng.close()
        st.engines.clear()
        from hpc.comm import mpi_active

        if mpi_active():
            st.comm.Free()
        _state = None


def _at_exit() -> None:
    if _state is not None:
        shutdown()


def is_initialized() -> bool:
    return _state is not None


def state() -> _State:
    """The live state, or the error Horovod gives when init() was not called."""
    if _state is None:
        raise NotInitializedError("hpc.torch has not been initialized; use hvd.init().")
    return _state


def rank() -> int:
    return state().comm.Get_rank()


def size() -> int:
    return state().comm.Get_size()


def local_rank() -> int:
    return state().local_rank


def local_size() -> int:
    return state().local_size


def cross_rank() -> int:
    return rank() // max(1, local_size())


def cross_size() -> int:
    return max(1, size() // max(1, local_size()))


def mpi_threads_supported() -> bool:
    from mpi4py import MPI

    state()
    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


def mpi_built() -> bool:
    return True


def mpi_enabled() -> bool:
    return True


def gloo_built() -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built() -> bool:
    return False


def cuda_built() -> bool:
    return False


def rocm_built() -> bool:
    return False


def collective_spec() -> str:
    """The SPEC gradients and allreduce go through (hpc extension)."""
    return state().coll.spec


def collective(dtype: str = "float32") -> "Collective":
    """The collective, verified against native MPI for `dtype` on first use (collective call)."""
    st = state()
    if dtype not in st.verified:
        from hpc.plugins.verify import verify

        if not st.verified:
            verify(st.comm, st.coll, ops=("SUM",), quick=False, sub_comms=False)
            st.verified.update(("float32", "float64", "int32", "int64"))
        if dtype not in st.verified:
            check_dtype(st.comm, st.coll, dtype)
            st.verified.add(dtype)
    return st.coll


def check_dtype(comm: "MPI.Comm", coll: "Collective", dtype: str) -> None:
    """Check a collective on a dtype outside the plug-in contract (float16 for Compression.fp16)
    against native MPI on the float64 values; raise naming the case on a wrong answer."""
    from mpi4py import MPI

    p, r = comm.Get_size(), comm.Get_rank()
    eps = float(np.finfo(dtype).eps) if np.dtype(dtype).kind == "f" else 0.0
    for n in (0, 1, p + 1, 100_003):
        x = np.random.default_rng([11, n, r, p]).uniform(-1, 1, n).astype(dtype)
        ref = np.empty(n, np.float64)
        comm.Allreduce(x.astype(np.float64), ref, MPI.SUM)
        for inplace in (False, True):
            send = x.copy()
            recv = send if inplace else np.zeros_like(x)
            coll.func(comm, send, recv, MPI.SUM)
            err = np.abs(recv.astype(np.float64) - ref)
            scale = np.empty(n, np.float64)
            comm.Allreduce(np.abs(x).astype(np.float64), scale, MPI.SUM)
            bad = np.flatnonzero(~(err <= 4 * p * eps * (scale + 1)))
            found = comm.allgather(int(bad[0]) if bad.size else None)
            who = next((i for i, b in enumerate(found) if b is not None), None)
            if who is not None:
                where = "in place" if inplace else "out of place"
                raise HpcError(f"collective '{coll.spec}' gave a wrong answer on {p} ranks, n={n} "
                               f"dtype={dtype} op=SUM {where}: rank {who}, index {found[who]}")


def mpi_op(op: int) -> "MPI.Op":
    from mpi4py import MPI

    table = {Average: MPI.SUM, Sum: MPI.SUM, Min: MPI.MIN, Max: MPI.MAX, Product: MPI.PROD}
    if op not in table:
        name = _OP_NAMES.get(op, repr(op))
        raise HpcError(f"reduce op {name} is not supported by hpc.torch (use Average, Sum, Min, Max "
                       "or Product)")
    return table[op]


def resolve_op(op: int | None, average: bool | None) -> int:
    """Horovod's rule for the deprecated `average` flag: op wins, both set is an error."""
    if op is not None:
        if average is not None:
            raise ValueError("The op parameter supersedes average. Please provide only one of them.")
        return op
    if average is not None:
        return Average if average else Sum
    return Average


def reduce_inplace(host: "torch.Tensor", op: int) -> None:
    """Reduce a contiguous CPU tensor in place over the hpc.torch communicator.

    SUM/Average go through the collective (verified for the dtype on first use); Min/Max/Product through
    native MPI (a plug-in need only support SUM). dtypes numpy/MPI lack (bool, int8/16, uint8,
    bfloat16) are widened to int64/float32 and narrowed back.
    """
    import torch

    st = state()
    mop = mpi_op(op)
    name = str(host.dtype).replace("torch.", "")
    if name in _DIRECT:
        arr = host.reshape(-1).numpy()
        _reduce_np(st, arr, mop, op, name)
        return
    wide = torch.float32 if host.dtype.is_floating_point else torch.int64
    tmp = host.to(wide)
    _reduce_np(st, tmp.reshape(-1).numpy(), mop, op, str(wide).replace("torch.", ""))
    host.copy_(tmp)


def _reduce_np(st: _State, arr: np.ndarray, mop: "MPI.Op", op: int, dtype: str) -> None:
    from mpi4py import MPI

    if op in (Average, Sum):
        collective(dtype).func(st.comm, arr, arr, MPI.SUM)
    else:
        st.comm.Allreduce(MPI.IN_PLACE, arr, mop)


def _install_excepthook() -> None:
    """An exception on one rank ends the whole job (no hang), with one `hpc: error:` line for HpcError."""
    previous = sys.excepthook
    if getattr(previous, "hpc_torch", False):
        return

    def hook(exc_type, exc, tb) -> None:
        from hpc.comm import abort, mpi_active, rank_prefix
        from hpc.env import get

        if isinstance(exc, HpcError) and not get("HPC_DEBUG"):
            sys.stderr.write(f"hpc: error: {rank_prefix()}{exc}\n")
        else:
            previous(exc_type, exc, tb)
        if mpi_active():
            abort(1)  # MPI_Abort with more than one rank: the others are not left waiting

    hook.hpc_torch = True  # type: ignore[attr-defined]
    sys.excepthook = hook
