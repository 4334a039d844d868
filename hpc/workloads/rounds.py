"""How `hpc bench collective` times a size's algorithms: their shared buffers, one timed batch, one
round of batches with the calls interleaved, the iterations a batch makes, and when `--batches auto`
stops adding rounds. Every rank makes the same calls in the same order (orders come from one seeded
generator; counts and decisions are agreed over MPI)."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc.errors import HpcError
from hpc.plugins.registry import Collective

if TYPE_CHECKING:
    from mpi4py import MPI


@dataclass
class Buffers:
    """One size's buffers, shared by every algorithm timed at it (memory for one, not one per algorithm)."""

    count: int
    send: np.ndarray
    pristine: np.ndarray  # what send must still hold after a call
    recv: np.ndarray
    expected: np.ndarray
    dsend: Any = None  # on the GPU with --device cuda
    drecv: Any = None

    def restore(self) -> None:
        """Put the send data back (after an algorithm that wrote into its sendbuf)."""
        np.copyto(self.send, self.pristine)
        if self.dsend is not None:
            self.dsend.copy_(self.dsend.new_tensor(self.pristine))


@dataclass
class Point:
    """One (algorithm, size) being timed: how to call it, whether it was right, its batches so far."""

    coll: Collective
    call: Any
    iters: int
    correct: bool
    clobbers: bool  # it changed its sendbuf: restored after each of its batches
    batches: list[float]
    dcoll: Any = None
    slowest: list[float] = field(default_factory=list)  # --batches auto: each batch's slowest rank


def _named(coll: Collective, bufs: Buffers, call: Any) -> None:
    """One call; an exception from a plug-in names it and the size (one error line, job ended)."""
    try:
        call()
    except HpcError:
        raise
    except Exception as exc:
        raise _raised(coll, bufs, exc) from None


def _raised(coll: Collective, bufs: Buffers, exc: Exception) -> HpcError:
    return HpcError(f"collective '{coll.spec}' raised {type(exc).__name__}: {exc} ({bufs.send.nbytes} B)")


def time_batch(comm: "MPI.Comm", pt: Point, bufs: Buffers) -> float:
    """Seconds per call over one batch of pt.iters calls on this rank, started together."""
    comm.Barrier()
    t0 = time.perf_counter()
    try:
        for _ in range(pt.iters):
            pt.call()
    except HpcError:
        raise
    except Exception as exc:
        raise _raised(pt.coll, bufs, exc) from None
    return (time.perf_counter() - t0) / pt.iters


def time_round(comm: "MPI.Comm", pts: list["Point"], bufs: Buffers, order: random.Random) -> None:
    """One batch of every algorithm with their calls interleaved (a weighted round robin over their
    iteration counts, each turn of the robin in a fresh random order, so no algorithm steadily
    follows another), each call timed on its own and summed per algorithm.

    Pairs of batches then see the same moments of the machine: at load average 29 on 2 cores the log
    ratio of an A/A pair of 1 MiB batches scattered with sd 0.70 taken batch after batch and 0.20
    call by call (100 calls, 30 rounds), so far fewer rounds decide a verdict. The clock costs well
    under a microsecond a call: nothing beside a 64 KiB allreduce, a few percent at 8 B."""
    sched = sorted(((j + 0.5) / pt.iters, order.random(), k) for k, pt in enumerate(pts) for j in range(pt.iters))
    spent = [0.0] * len(pts)
    clock = time.perf_counter
    comm.Barrier()
    for _, _, k in sched:
        pt = pts[k]
        t0 = clock()
        try:
            pt.call()
        except HpcError:
            raise
        except Exception as exc:
            raise _raised(pt.coll, bufs, exc) from None
        spent[k] += clock() - t0
        if pt.clobbers:  # untimed: the next call of any algorithm needs the input as it was
            bufs.restore()
    for pt, t in zip(pts, spent):
        pt.batches.append(t / pt.iters)


def same_iters(pts: list["Point"]) -> None:
    """Calls interleaved: every algorithm makes the median of their calibrated iteration counts, so
    each call of one sits beside a call of every other. Calibrated one after another on a busy
    machine the counts came out 1 and 52 for an A/A pair at 4 MiB: the lone call sampled one moment
    of the round, its partner the whole round, and the pair did not cancel the machine's swings."""
    common = int(statistics.median(pt.iters for pt in pts))
    for pt in pts:
        pt.iters = max(1, common)


def shuffled(pts: list["Point"], shuffle: Any) -> list["Point"]:
    order = list(pts)
    shuffle(order)
    return order


def auto_stop(comm: "MPI.Comm", pts: list["Point"], reference: str, done: int, spent: float,
              max_reps: int, max_time: float, least: int) -> str | None:
    """After a round of `--batches auto`: why to stop ("decided", "max-reps", "max-time") or None.
    Decided on the slowest rank's batches (what the records keep), by rank 0, for every rank."""
    from mpi4py import MPI

    from hpc.analysis.stats import NOISE_BAND_PCT, settled

    mine = np.array([pt.batches[-1] for pt in pts], dtype=float)
    slowest = np.empty_like(mine)
    comm.Allreduce(mine, slowest, op=MPI.MAX)
    for pt, t in zip(pts, slowest.tolist()):
        pt.slowest.append(t)
    why = None
    if comm.Get_rank() == 0:
        if done >= least and not settled({pt.coll.name: pt.slowest for pt in pts}, reference,
                                             float(np.log1p(NOISE_BAND_PCT / 100))):
            why = "decided"
        elif done >= max_reps:
            why = "max-reps"
        elif spent >= max_time:
            why = "max-time"
    return comm.bcast(why, root=0)


def iters_for(comm: "MPI.Comm", call: Any, target: float) -> int:
    """Iterations so one batch lasts about `target` seconds; the same on every rank.

    Calibrated on at least three groups of calls (1, 2, 4... calls while a group is short), from the
    fastest group's time per call: on a busy machine calls are descheduled, which only ever makes them
    slower, so the least-disturbed group is the best estimate of the call's own cost (one slow call
    once sized a 1 MiB batch at 2 iterations where its neighbours got 194; at load average 20 on 2
    cores even the median of the groups gave an A/A pair 4 and 145 iterations, and a batch of 4 calls
    samples the scheduler's noise quite differently from one of 145)."""
    from mpi4py import MPI

    n, spent, per_call = 1, 0.0, []
    while True:
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        dt = comm.allreduce(time.perf_counter() - t0, MPI.MAX)  # the same decisions on every rank
        per_call.append(dt / n)
        spent += dt
        if (len(per_call) >= 3 and spent >= target / 2) or n >= 1000 or len(per_call) >= 20:
            break
        if dt < target / 4:
            n *= 2
    return int(min(1000, max(1, round(target / max(min(per_call), 1e-7)))))
