"""Check a collective against native MPI_Allreduce before anyone times or trains with it.

Runs on every rank of `comm`: sizes {0, 1, p-1, p+1, a prime ~1e5, 4 MB}, four dtypes, SUM and MAX
(MAX is skipped when the algorithm refuses it on every rank), in place and out of place, random data,
also on smaller sub-communicators. A wrong answer raises HpcError naming the case; so does a result
that is right within tolerance but not bit-identical on every rank (ranks would drift apart), and a
non-daemon thread the plug-in leaves running (the process could not exit).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hpc.comm import deadline
from hpc.errors import HpcError
from hpc.plugins.registry import Collective

if TYPE_CHECKING:
    from mpi4py import MPI

DTYPES = ("float32", "float64", "int32", "int64")
PRIME = 100_003
FOUR_MB = 4 << 20
# Errors a plug-in may raise to say "this op is not supported" (then that op is skipped, not failed).
_REFUSALS = (NotImplementedError, ValueError, TypeError)


@dataclass(frozen=True)
class Case:
    n: int
    dtype: str
    op: str
    inplace: bool

    def __str__(self) -> str:
        where = "in place" if self.inplace else "out of place"
        return f"n={self.n} dtype={self.dtype} op={self.op} {where}"


@dataclass
class Report:
    """What was checked: how many cases passed on which rank counts, which ops were refused."""

    passed: int = 0
    rank_counts: list[int] = field(default_factory=list)
    refused_ops: set[str] = field(default_factory=set)


def cases(p: int, ops: tuple[str, ...] = ("SUM", "MAX"), quick: bool = False) -> list[Case]:
    """The verification matrix for p ranks; `quick` is the short one run before benchmarks/training."""
    dtypes = ("float32", "int64") if quick else DTYPES
    out = []
    for dtype in dtypes:
        big = FOUR_MB // np.dtype(dtype).itemsize
        sizes = sorted({0, 1, max(p - 1, 0), p + 1, PRIME} | (set() if quick else {big}))
        for op in ops:
            for n in sizes:
                for inplace in (False, True):
                    out.append(Case(n, dtype, op, inplace))
    return out


def verify(comm: "MPI.Comm", coll: Collective, ops: tuple[str, ...] = ("SUM", "MAX"),
           quick: bool = False, sub_comms: bool = True, case_timeout: float = 120.0,
           seed: int = 1234, dtypes: tuple[str, ...] | None = None,
           sizes: tuple[int, ...] = ()) -> Report:
    """Verify `coll` on `comm` (and on sub-communicators of the first k ranks); raise on a wrong answer.

    The plug-in runs on a duplicate of each communicator, so a message it leaves behind can never
    reach another algorithm (and is reported); every case, the checks after the call included, runs
    under a deadline, so a rank that hangs, exits or finalizes MPI ends the job instead of hanging it.
    `dtypes`/`sizes` add the cases a run will actually use (e.g. training's bucket sizes).
    """
    from mpi4py import MPI

    report = Report()
    threads_before = set(threading.enumerate())
    counts = [comm.Get_size()]
    if sub_comms:
        counts += [k for k in (1, 2, 3) if k < comm.Get_size()]
    for k in counts:
        sub = comm if k == comm.Get_size() else comm.Split(0 if comm.Get_rank() < k else MPI.UNDEFINED)
        if sub != MPI.COMM_NULL:
            full = k == comm.Get_size()
            _verify_on(sub, coll, ops, quick or not full, case_timeout, seed, report,
                       dtypes if full else None, sizes if full else ())
            if sub is not comm:
                sub.Free()
        with deadline(case_timeout, f"verifying '{coll.spec}': waiting for every rank"):
            comm.Barrier()
        report.rank_counts.append(k)
    _check_threads(comm, coll, threads_before)
    return report


def _check_threads(comm: "MPI.Comm", coll: Collective, before: set[threading.Thread]) -> None:
    """A plug-in must not leave a non-daemon thread running: Python waits for it at exit, so a job
    that printed success would hang until its timeout (and a training script would never end)."""
    left = sorted(t.name for t in threading.enumerate()
                  if t not in before and t.is_alive() and not t.daemon)
    everyone = comm.allgather(left)
    bad = [(r, names) for r, names in enumerate(everyone) if names]
    if bad:
        shown = "; ".join(f"rank {r}: {', '.join(names)}" for r, names in bad)
        raise HpcError(f"collective '{coll.spec}' left a non-daemon thread running ({shown}): the "
                       "process could not exit; start it with daemon=True or stop it before returning")


def _verify_on(comm: "MPI.Comm", coll: Collective, ops: tuple[str, ...], quick: bool,
               case_timeout: float, seed: int, report: Report, dtypes: tuple[str, ...] | None,
               sizes: tuple[int, ...]) -> None:
    p = comm.Get_size()
    todo = cases(p, ops, quick)
    seen = {(c.n, c.dtype, c.op, c.inplace) for c in todo}
    for dt in dtypes or ():
        for n in (*sizes, 100_003):
            for op in ops:
                if (n, dt, op, False) not in seen:
                    todo.append(Case(n, dt, op, False))
                    seen.add((n, dt, op, False))
    pcomm = comm.Dup()  # the plug-in's own communicator: its stray messages stay there
    try:
        for i, case in enumerate(todo):
            if case.op in report.refused_ops:
                continue
            with deadline(case_timeout, f"collective '{coll.spec}' on {p} ranks, {case}"):
                _one_case(comm, pcomm, coll, case, seed, i, report)
    finally:
        pcomm.Free()


def _one_case(comm: "MPI.Comm", pcomm: "MPI.Comm", coll: Collective, case: Case, seed: int, i: int,
              report: Report) -> None:
    from mpi4py import MPI

    p, rank = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng([seed, i, rank, p])
    x = _random(rng, case.n, case.dtype)
    op = getattr(MPI, case.op)
    ref = _native(comm, x, op)
    send = x.copy()
    recv = send if case.inplace else np.full_like(x, 7)
    refused = None
    try:
        coll.func(pcomm, send, recv, op)
    except _REFUSALS as exc:
        if case.op == "SUM":
            raise HpcError(f"collective '{coll.spec}' raised {type(exc).__name__}: {exc} "
                           f"({case}, {p} ranks)") from None
        refused = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug in the plug-in: say which one, and in which case
        raise HpcError(f"collective '{coll.spec}' raised {type(exc).__name__}: {exc} "
                       f"({case}, {p} ranks)") from None
    refusals = comm.allgather(refused)
    if any(refusals):
        if not all(refusals):
            raise HpcError(f"collective '{coll.spec}' refused op {case.op} on some ranks only "
                           f"({case}, {p} ranks)")
        report.refused_ops.add(case.op)
        return
    problem = _compare(comm, case, x, send, recv, ref, op)
    problem = _disagreement(comm, recv) or problem  # collective: every rank takes part
    pcomm.Barrier()
    if problem is None and pcomm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG):
        problem = "left an unreceived message behind (a stray send would corrupt the next call)"
    problems = comm.allgather(problem)
    bad = next(((r, m) for r, m in enumerate(problems) if m), None)
    if bad:
        raise HpcError(f"collective '{coll.spec}' gave a wrong answer on {p} ranks, {case}: "
                       f"rank {bad[0]}: {bad[1]}")
    report.passed += 1


def _disagreement(comm: "MPI.Comm", recv: np.ndarray) -> str | None:
    """Why this rank's result is not bit-identical to rank 0's, or None. Within tolerance of the
    native answer is not enough: ranks whose results differ by one ulp train apart step by step."""
    theirs = recv.copy() if comm.Get_rank() == 0 else np.empty_like(recv)
    comm.Bcast(theirs.view(np.uint8), root=0)
    if comm.Get_rank() == 0 or not recv.size:
        return None
    bits = np.dtype(f"u{recv.dtype.itemsize}")
    wrong = np.flatnonzero(recv.view(bits) != theirs.view(bits))
    if not wrong.size:
        return None
    i = int(wrong[0])
    return (f"holds different bits than rank 0 in {wrong.size} element(s), first at index {i}: "
            f"{recv[i].item()!r} vs rank 0's {theirs[i].item()!r} (every rank must hold the same answer)")


def _native(comm: "MPI.Comm", x: np.ndarray, op: "MPI.Op") -> np.ndarray:
    """Native MPI_Allreduce of x; float16 (no MPI type) is reduced in float32 and rounded back."""
    wide = x.astype(np.float32) if x.dtype == np.float16 else x
    out = np.empty_like(wide)
    comm.Allreduce(wide, out, op)
    return out.astype(x.dtype, copy=False)


def _random(rng: np.random.Generator, n: int, dtype: str) -> np.ndarray:
    if dtype.startswith("int"):
        return rng.integers(-1000, 1000, size=n, dtype=dtype)
    return rng.uniform(-1.0, 1.0, size=n).astype(dtype)


def _compare(comm: "MPI.Comm", case: Case, x: np.ndarray, send: np.ndarray, recv: np.ndarray,
             ref: np.ndarray, op: "MPI.Op") -> str | None:
    """Why this rank's result is wrong, or None. Exact for integers and MAX/MIN, scaled tolerance else."""
    if not case.inplace and not np.array_equal(send, x):
        return "sendbuf was modified"
    if case.dtype.startswith("int") or case.op in ("MAX", "MIN"):
        wrong = np.flatnonzero(recv != ref)
    else:
        from mpi4py import MPI

        scale = _native(comm, np.abs(x), MPI.SUM)
        eps = np.finfo(x.dtype).eps
        tol = 4 * comm.Get_size() * eps * (scale + 1)
        wrong = np.flatnonzero(~(np.abs(recv - ref) <= tol))
    if wrong.size:
        i = int(wrong[0])
        return f"{wrong.size} wrong element(s), first at index {i}: got {recv[i].item()!r}, expected {ref[i].item()!r}"
    return None
