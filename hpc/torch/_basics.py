"""The process-wide part of hpc.torch: the session state, ranks, the collective, reduce ops, build probes.

Horovod's API is module-level functions, so hpc.torch keeps one `_State` created by `init()` (_session): a
duplicate of the world communicator for what the main thread runs itself, the registered process
sets, the loaded collective and the background thread that negotiates and runs named collectives
(_runtime). The collective comes from `init(collective=...)`, else HPC_COLLECTIVE, else `auto`; a
plug-in is verified against native MPI (hpc.plugins.verify) on the communicator, dtype and sizes it
is about to be used with, before its first use (every rank reaches that point together).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from hpc.torch._errors import HorovodInternalError, NotInitializedError  # noqa: F401 (re-exported)

if TYPE_CHECKING:
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


@dataclass
class _State:
    comm: "MPI.Comm"            # hpc.torch's duplicate of the world communicator (main thread only)
    coll: "Collective"
    local_rank: int
    local_size: int
    verified: dict[Any, set[Any]] = field(default_factory=dict)  # (comm id) -> what was checked there
    engines: list[Any] = field(default_factory=list)      # the BucketEngines of DistributedOptimizers
    grads: list[Any] = field(default_factory=list)        # their _optimizer._GradEngine (agreement)
    step_times: list[float] = field(default_factory=list)  # perf_counter at each synchronised step
    info: dict[str, Any] = field(default_factory=dict)     # optimizer settings for the record
    lock: threading.Lock = field(default_factory=threading.Lock)
    sets: dict[int, Any] = field(default_factory=dict)     # process set id -> _process_sets.SetInfo
    next_set_id: int = 1
    runtime: Any = None                                    # _runtime.Runtime


_state: _State | None = None


def set_state(st: _State | None) -> None:
    """Install (init) or drop (shutdown) the session; _session does both."""
    global _state
    _state = st


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


def is_homogeneous() -> bool:
    """True when every node runs the same number of ranks."""
    return size() % max(1, local_size()) == 0


def mpi_threads_supported() -> bool:
    from mpi4py import MPI

    state()
    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


# Build probes: what this hpc.torch has (they work before init, as Horovod's do).
def mpi_built() -> bool:
    return True


def mpi_enabled() -> bool:
    return True


def gloo_built() -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built() -> int:
    return 0


def ddl_built() -> bool:
    return False


def ccl_built() -> bool:
    return False


def cuda_built() -> bool:
    return False


def rocm_built() -> bool:
    return False


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    """Horovod's timeline is not recorded by hpc.torch (refused with Horovod's error type)."""
    state()
    raise ValueError("hpc.torch does not record a Horovod timeline (use HPC_RECORD for step times)")


def stop_timeline() -> None:
    state()


def collective_spec() -> str:
    """The SPEC gradients and allreduce go through (hpc extension)."""
    return state().coll.spec


def collective(dtype: str = "float32", comm: "MPI.Comm | None" = None, sizes: Sequence[int] = ()) -> "Collective":
    """The collective, verified against native MPI on `comm` (default: the world) for `dtype` and the
    element counts `sizes` it will reduce, once per communicator, dtype and size (collective call)."""
    st = state()
    comm = comm if comm is not None else st.comm
    if st.coll.builtin:
        return st.coll
    done = st.verified.setdefault(id(comm), set())  # dtypes, and (dtype, size) pairs checked on comm
    checked = {x[1] for x in done if isinstance(x, tuple) and x[0] == dtype}
    new_sizes = tuple(sorted({int(n) for n in sizes} - checked))
    if dtype not in done or new_sizes:
        from hpc.plugins.verify import verify

        verify(comm, st.coll, ops=("SUM",), quick=bool(done), sub_comms=False, dtypes=(dtype,),
               sizes=new_sizes)
        done.add(dtype)
        done.update((dtype, n) for n in new_sizes)
    return st.coll


def check_dtype(comm: "MPI.Comm", coll: "Collective", dtype: str) -> None:
    """Check a collective on one more dtype (float16 for Compression.fp16) and raise naming the case."""
    from hpc.plugins.verify import verify

    verify(comm, coll, ops=("SUM",), quick=True, sub_comms=False, dtypes=(dtype,))


def mpi_op(op: int) -> "MPI.Op":
    from mpi4py import MPI

    table = {Average: MPI.SUM, Sum: MPI.SUM, Min: MPI.MIN, Max: MPI.MAX, Product: MPI.PROD}
    if op not in table:
        name = _OP_NAMES.get(op, repr(op))
        raise NotImplementedError(f"reduce op {name} is not supported by hpc.torch (use Average, Sum, Min, "
                                  "Max or Product)")
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
