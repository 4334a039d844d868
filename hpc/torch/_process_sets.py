"""Process sets: collectives over a subset of the ranks, with Horovod's API (ProcessSet, add/remove).

A registered set has an id (0 = every rank, `global_process_set`), its sorted world ranks and, on
its members, two communicators made by one MPI_Comm_split of the world: `comm` for what the main
thread runs itself (DistributedOptimizer's gradient engine, plug-in verification) and `data` for the
background thread that executes the set's negotiated collectives. The two never share a
communicator, so their collectives cannot interleave. Adding and removing a set is collective over
every rank (as in Horovod); ids are handed out in call order, so they agree on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from mpi4py import MPI


class ProcessSet:
    """A subset of the ranks to restrict an operation to: `ProcessSet([0, 2])` (or an mpi4py
    communicator), registered on every rank with `add_process_set` or `init(process_sets=[...])`."""

    process_set_id: int | None = None
    ranks: list[int] | None = None
    mpi_comm: Any = None

    def __init__(self, ranks_or_comm: Any) -> None:
        if isinstance(ranks_or_comm, (list, tuple, range, set, frozenset)):
            ranks = sorted(ranks_or_comm)
            if any(not isinstance(r, int) for r in ranks):
                raise ValueError("ProcessSet should be initialized with a list of process ranks or an "
                                 "mpi4py Comm object")
            self.ranks = ranks
        else:
            from mpi4py import MPI

            if not isinstance(ranks_or_comm, MPI.Comm):
                raise ValueError("ProcessSet should be initialized with a list of process ranks or an "
                                 "mpi4py Comm object")
            self.mpi_comm = ranks_or_comm

    def _invalidate(self) -> None:
        self.process_set_id = None

    def size(self) -> int | None:
        """Number of ranks in the set (None while it is not registered)."""
        if self.process_set_id is None:
            return None
        return len(_registered(self.process_set_id).ranks)

    def rank(self) -> int | None:
        """This process's rank inside the set (None while unregistered; ValueError if not a member)."""
        if self.process_set_id is None:
            return None
        info = _registered(self.process_set_id)
        from hpc.torch._basics import rank

        if rank() not in info.ranks:
            raise ValueError("Process is not part of provided process set.")
        return info.ranks.index(rank())

    def included(self) -> bool | None:
        """True when this process belongs to the set."""
        if self.ranks is None:
            return None
        from hpc.torch._basics import rank

        return rank() in self.ranks

    def __str__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks}, mpi_comm={self.mpi_comm})"

    __repr__ = __str__


global_process_set = ProcessSet([])
global_process_set.process_set_id = 0


@dataclass
class SetInfo:
    """What one rank knows about a registered set; `comm`/`data` are None where it is not a member."""

    set_id: int
    ranks: list[int]
    comm: "MPI.Comm | None"
    data: "MPI.Comm | None"


def _registered(set_id: int) -> SetInfo:
    from hpc.torch._basics import state

    info = state().sets.get(set_id)
    if info is None:
        raise ValueError("Process set does not exist or has not been registered.")
    return info


def resolve(process_set: Any) -> SetInfo:
    """The registered set an operation's `process_set=` names (None means every rank)."""
    if process_set is None:
        return _registered(0)
    if not isinstance(process_set, ProcessSet):
        raise ValueError(f"process_set must be a ProcessSet, got {type(process_set).__name__}")
    if process_set.process_set_id is None:
        raise ValueError(f"{process_set} has not been registered: call hvd.add_process_set() on every rank")
    info = _registered(process_set.process_set_id)
    from hpc.torch._basics import rank

    if rank() not in info.ranks:
        raise ValueError(f"this rank ({rank()}) is not part of {process_set}")
    return info


def setup_global(st: Any) -> None:
    """Register set 0 (every rank) on init, with its own data communicator for the background thread."""
    ranks = list(range(st.comm.Get_size()))
    st.sets[0] = SetInfo(0, ranks, st.comm, st.comm.Dup())
    global_process_set.ranks = ranks
    global_process_set.process_set_id = 0


def _new_set(st: Any, ranks: list[int]) -> SetInfo:
    from mpi4py import MPI

    me = st.comm.Get_rank()
    comm = st.comm.Split(0 if me in ranks else MPI.UNDEFINED, me)  # collective over every rank
    set_id = st.next_set_id
    st.next_set_id += 1
    if comm == MPI.COMM_NULL:
        return SetInfo(set_id, ranks, None, None)
    return SetInfo(set_id, ranks, comm, comm.Dup())


def add_process_set(process_set: ProcessSet | Sequence[int]) -> ProcessSet:
    """Register a process set; call it on every rank, in the same order. Returns the ProcessSet."""
    from hpc.torch._basics import state

    st = state()
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if process_set.ranks is None and process_set.mpi_comm is not None:
        raise NotImplementedError("Dynamically adding process sets defined by an MPI communicator is not "
                                  "implemented. Please build the process set via a list of ranks.")
    ranks = list(process_set.ranks or [])
    size = st.comm.Get_size()
    if not ranks or any(r < 0 or r >= size for r in ranks) or len(set(ranks)) != len(ranks):
        raise ValueError(f"a process set needs distinct ranks in [0, {size}), got {ranks}")
    if any(info.ranks == ranks for info in st.sets.values()):
        raise ValueError(f"Attempted to add a duplicate process set: {process_set}")
    info = _new_set(st, ranks)
    st.sets[info.set_id] = info
    process_set.process_set_id = info.set_id
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Unregister a set (every rank, after its operations finished); the global set stays."""
    from hpc.torch._basics import state

    st = state()
    set_id = process_set.process_set_id
    if set_id is None or set_id == 0 or set_id not in st.sets:
        return False
    st.runtime.drain(set_id)  # its collectives are done here before its communicators go
    from hpc.torch._negotiate import Request

    # negotiated on every rank: no rank forgets the set while another still has requests for it
    rt = st.runtime
    hid = rt.submit(Request("barrier", f"process_set.remove.{set_id}", 0, (("process set", set_id),)),
                    lambda resp: None)
    rt.wait(rt.take(hid))
    info = st.sets.pop(set_id)
    process_set._invalidate()
    for c in (info.data, info.comm):
        if c is not None:
            c.Free()
    return True


def register_initial(st: Any, sets: Sequence[ProcessSet] | None) -> None:
    """`init(process_sets=[...])`: register them in list order (every rank passes the same list)."""
    for ps in sets or ():
        add_process_set(ps)
