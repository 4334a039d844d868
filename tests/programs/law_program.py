"""A program whose time follows a cost law you choose, for checking predictions (`hpc predict`).

Every rank sleeps T(N) seconds and rank 0 prints `time=<seconds>` (the slowest rank's own sleep,
timed around the sleep only: start-up and barriers on an oversubscribed machine are not in it).
Sleeping keeps the law faithful on any number of ranks, even 32 ranks on 2 cores.

    T(N) = a + b·W(N) + log·log2 N + lin·N + nlogn·N·log2 N + quad·N² + ring·(N−1)/N + sqrt·√N
    W(N) = 1/N^pow under strong scaling (fixed total work), 1 under weak (HPC_SCALING=weak);
    --gustafson P replaces b·W(N) by b·N/(1 + (N−1)·P) (weak).
times a run-to-run factor exp(noise·z), z ~ N(0, 1), drawn once per run.

    hpc sweep strong --np 1,2,3,4,6,8 --reps 5 --out runs/log \\
        run --metric 'time=(\\S+)' -- python tests/programs/law_program.py --log 0.04
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from mpi4py import MPI


def law_time(n: int, a: float, b: float, weak: bool, pow_: float = 1.0, log: float = 0.0,
             lin: float = 0.0, nlogn: float = 0.0, quad: float = 0.0, ring: float = 0.0,
             sqrt: float = 0.0, gustafson: float | None = None) -> float:
    """T(N) of the law without noise (also used by the tests and the benchmark as the truth)."""
    if gustafson is not None:
        work = b * n / (1.0 + (n - 1.0) * gustafson)
    else:
        work = b if weak else b / n**pow_
    return (a + work + log * math.log2(n) + lin * n + nlogn * n * math.log2(n) + quad * n * n
            + ring * (n - 1.0) / n + sqrt * math.sqrt(n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("a", 0.1), ("b", 2.0), ("pow", 1.0), ("log", 0.0), ("lin", 0.0),
                          ("nlogn", 0.0), ("quad", 0.0), ("ring", 0.0), ("sqrt", 0.0), ("noise", 0.01)):
        p.add_argument(f"--{name}", type=float, default=default)
    p.add_argument("--gustafson", type=float, default=None, metavar="P")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    weak = os.environ.get("HPC_SCALING") == "weak"
    t = law_time(n, args.a, args.b, weak, args.pow, args.log, args.lin, args.nlogn, args.quad,
                 args.ring, args.sqrt, args.gustafson)
    factor = math.exp(args.noise * np.random.default_rng().standard_normal()) if comm.rank == 0 else None
    t *= comm.bcast(factor, root=0)
    comm.Barrier()
    t0 = time.perf_counter()
    time.sleep(t)
    mine = time.perf_counter() - t0
    # Rest before talking: ranks that wait in MPI busy-poll, and on an oversubscribed machine they
    # would keep the ranks still waking up off the cores, adding a delay that grows with N.
    time.sleep(0.2)
    slowest = comm.reduce(mine, op=MPI.MAX, root=0)
    if comm.rank == 0:
        print(f"time={slowest:.6f}", flush=True)


if __name__ == "__main__":
    main()
