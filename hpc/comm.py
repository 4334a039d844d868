"""Rank-side helpers: the communicator, ending the job from one rank, watchdogs, buffer checks."""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import numpy as np

from hpc.errors import HpcError

if TYPE_CHECKING:
    from mpi4py import MPI
    from rich.console import Console


def world() -> "MPI.Comm":
    """COMM_WORLD, initialising MPI on first use (never at import time)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def mpi_active() -> bool:
    """True when mpi4py has initialised MPI in this process (and not finalised it)."""
    mod = sys.modules.get("mpi4py.MPI")
    return bool(mod and mod.Is_initialized() and not mod.Is_finalized())


def abort(code: int) -> None:
    """End the whole MPI job from this rank (no hang in the others), or just exit when alone."""
    sys.stdout.flush()
    sys.stderr.flush()
    if mpi_active() and world().Get_size() > 1:
        world().Abort(code)
    os._exit(code)


def rank_prefix() -> str:
    """`rank R: ` inside a multi-rank job, so an error line names the rank it came from."""
    if mpi_active() and world().Get_size() > 1:
        return f"rank {world().Get_rank()}: "
    return ""


@contextmanager
def deadline(seconds: float | None, what: str) -> Iterator[None]:
    """End the whole job (one line naming `what`) if the block does not finish in `seconds`: a
    deadlocked collective, a rendezvous or a process group's first handshake can wait forever."""
    if not seconds:
        yield
        return

    def fire() -> None:
        sys.stderr.write(f"hpc: error: {rank_prefix()}{what} did not finish within {seconds:g} s "
                         "(deadlock or a rank stuck?)\n")
        abort(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class Watchdog:
    """`deadline` for a loop: one thread for the whole run, re-armed per iteration by two attribute
    writes (a Timer thread per training step would cost ~0.1 ms on every step of a fast model)."""

    def __init__(self) -> None:
        self._due: float | None = None
        self._what = ""
        self._limit = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def arm(self, seconds: float, what: str) -> None:
        import time

        self._what, self._limit = what, seconds
        self._due = time.monotonic() + seconds

    def disarm(self) -> None:
        self._due = None

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        import time

        while not self._stop.wait(0.5):
            due = self._due
            if due is not None and time.monotonic() > due:
                sys.stderr.write(f"hpc: error: {rank_prefix()}{self._what} did not finish within "
                                 f"{self._limit:g} s (deadlock or a rank stuck?)\n")
                abort(3)


def check_uniform(comm: "MPI.Comm", buf: np.ndarray, what: str = "buffer") -> None:
    """Raise the same HpcError on every rank if buffer lengths or dtypes differ across ranks.

    Runs before a collective, because a mismatch inside one either hangs or silently gives a wrong
    answer.
    """
    mine = (int(buf.size), buf.dtype.str)
    everyone = comm.allgather(mine)
    if len(set(everyone)) > 1:
        shown = ", ".join(f"rank {r} has {n} x {np.dtype(d).name}" for r, (n, d) in enumerate(everyone))
        raise HpcError(f"{what} differs across ranks: {shown}")


def console(comm: "MPI.Comm | None" = None, stderr: bool = False) -> "Console":
    """A rich console for rank 0 (terminal styling when the user's terminal is one); quiet elsewhere."""
    from rich.console import Console

    from hpc.env import get

    quiet = comm is not None and comm.Get_rank() != 0
    tty = get("HPC_TTY")
    if tty is None and comm is not None and comm.Get_size() > 1:
        tty = "0"  # started by a user's mpirun/srun: Open MPI gives ranks a pty even when the job's
        #            output goes to a file (a Slurm .out), so a rank cannot tell; never colour it
    force = True if tty == "1" else False if tty == "0" else None
    width = 120 if tty == "0" else None  # through pipes rich would assume 80 columns and squeeze tables
    return Console(quiet=quiet, force_terminal=force, highlight=False, width=width, stderr=stderr)
