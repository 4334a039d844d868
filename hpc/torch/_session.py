"""init() and shutdown(): start and end an hpc.torch session (Horovod's semantics).

init() duplicates the world communicator, registers the global process set, starts the background
thread that negotiates and runs named collectives, refuses an unwritable HPC_RECORD up front and makes
an uncaught exception on any rank end the whole job. shutdown() (also at interpreter exit) tells the
other ranks this one is leaving, so their pending or later collectives fail naming it instead of
hanging, then writes the HPC_RECORD record.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import TYPE_CHECKING, Any, Sequence

from hpc.errors import HpcError
from hpc.torch._basics import DEFAULT_COLLECTIVE, _State, is_initialized, set_state, state

if TYPE_CHECKING:
    from mpi4py import MPI


def init(comm: Any = None, process_sets: Sequence[Any] | None = None, collective: str | None = None) -> None:
    """Start hpc.torch on `comm` (default MPI.COMM_WORLD; Horovod's signature) with collective SPEC
    (default: HPC_COLLECTIVE, else auto). Calling it again is a no-op, as in Horovod."""
    if is_initialized():
        return
    if isinstance(comm, str):  # hpc's own init("ring")
        collective, comm = comm, None
    from hpc.env import check, get

    _install_excepthook()  # from here on, an uncaught exception on one rank ends the job with one line
    check()  # a mistyped HPC_* variable is one line, not a surprise later
    spec = collective or get("HPC_COLLECTIVE") or DEFAULT_COLLECTIVE
    if "mpi4py.MPI" not in sys.modules:
        # Open MPI's UCX one-sided component prints an error line per rank whenever a shared window is
        # created (shm, auto); the sm component works silently. Only possible before MPI_Init.
        os.environ.setdefault("OMPI_MCA_osc", "^ucx")
    from mpi4py import MPI

    from hpc.plugins import registry
    from hpc.torch import _process_sets
    from hpc.torch._exec import zero_run
    from hpc.torch._record import check_writable
    from hpc.torch._runtime import Runtime
    from hpc.workloads.sync.base import local_layout

    base = _base_comm(comm)
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise HpcError("hpc.torch needs MPI_THREAD_MULTIPLE (its collectives run on a background thread "
                       f"beside the gradient thread); this MPI gives level {MPI.Query_thread()}")
    check_writable(base)
    coll = registry.load(spec)
    lr, ls = local_layout(base)
    st = _State(comm=base.Dup(), coll=coll, local_rank=lr, local_size=ls)
    _process_sets.setup_global(st)
    st.runtime = Runtime(st.comm, st.sets, zero_run)
    set_state(st)
    _process_sets.register_initial(st, process_sets)
    atexit.register(_at_exit)


def _base_comm(comm: Any) -> "MPI.Comm":
    from mpi4py import MPI

    if comm is None:
        return MPI.COMM_WORLD
    if isinstance(comm, MPI.Comm):
        return comm
    ranks = sorted(int(r) for r in comm)  # Horovod's init(comm=[ranks])
    me = MPI.COMM_WORLD.Get_rank()
    sub = MPI.COMM_WORLD.Split(0 if me in ranks else MPI.UNDEFINED, me)
    if sub == MPI.COMM_NULL:
        raise ValueError(f"rank {me} is not in init(comm={ranks})")
    return sub


def shutdown() -> None:
    """End hpc.torch on this rank: other ranks' pending and later collectives fail naming this rank
    (as in Horovod), gradient engines say goodbye to their peers, the HPC_RECORD record is written."""
    if not is_initialized():
        return
    st = state()
    try:
        leaving = [g.leave() for g in st.grads]  # posted first: a peer may be waiting in a step
        st.runtime.shutdown()
        for wait in leaving:
            wait()
        from hpc.torch._record import write_record

        write_record(st)
    finally:
        for eng in st.engines:
            eng.close()
        st.engines.clear()
        st.grads.clear()
        set_state(None)


def _at_exit() -> None:
    if not is_initialized():
        return
    try:
        shutdown()
    except Exception as exc:  # noqa: BLE001 - at exit, a lost record must still fail the process
        from hpc.comm import rank_prefix

        sys.stderr.write(f"hpc: error: {rank_prefix()}{exc}\n")
        sys.stderr.flush()
        os._exit(1)


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
