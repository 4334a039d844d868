"""Measure kernels against native MPI_Allreduce, to set `kernels.auto` thresholds and tune ring.

Run under MPI, e.g.
  mpirun -n 4 python -m mpi4py -m kernels.tune latency --sizes 8,64,1024,8192
  mpirun -n 4 python -m mpi4py -m kernels.tune bandwidth --sizes 4M,16M,64M
  mpirun -n 4 python -m mpi4py -m kernels.tune crossover   # thresholds for kernels.auto (+ shm on one node)
Algorithms are interleaved in every repetition so machine noise hits them alike; figures are medians
over repetitions of the slowest rank's time per call. Rank 0 prints one table row per size.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys

import numpy as np
from mpi4py import MPI

from hpc.units import parse_size

from . import BUILTINS

def resolve(name: str):
    """Registered name (optionally name:key=value for int keyword args) -> callable."""
    name, _, kw = name.partition(":")
    mod, func = BUILTINS[name][0].split(":")
    if mod.startswith("hpc.kernels."):  # this package, wherever it is installed (hpc.kernels or a checkout)
        mod = f"{__package__}.{mod.rsplit('.', 1)[1]}"
    fn = getattr(importlib.import_module(mod), func)
    if kw:
        key, val = kw.split("=")
        return lambda c, s, r, o=MPI.SUM, _f=fn: _f(c, s, r, o, **{key: int(val)})
    return fn


def time_calls(comm: MPI.Comm, fn, send: np.ndarray, recv: np.ndarray, iters: int) -> float:
    """Seconds per call on the slowest rank, after a barrier."""
    comm.Barrier()
    t0 = MPI.Wtime()
    for _ in range(iters):
        fn(comm, send, recv, MPI.SUM)
    dt = (MPI.Wtime() - t0) / iters
    return comm.allreduce(dt, op=MPI.MAX)


def measure(comm: MPI.Comm, algos: list[str], nbytes: int, reps: int, dtype: str = "float32",
            budget_s: float = 0.05) -> dict[str, float]:
    """Median seconds per call for each algorithm at one size (interleaved repetitions)."""
    return {a: statistics.median(t) for a, t in measure_reps(comm, algos, nbytes, reps, dtype, budget_s).items()}


def measure_reps(comm: MPI.Comm, algos: list[str], nbytes: int, reps: int, dtype: str = "float32",
                 budget_s: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call for each algorithm at one size, one entry per (interleaved) repetition."""
    n = max(nbytes // np.dtype(dtype).itemsize, 1)
    send = np.random.default_rng(comm.Get_rank()).standard_normal(n).astype(dtype)
    recv = np.empty_like(send)
    fns = {a: resolve(a) for a in algos}
    for fn in fns.values():  # warm-up: scratch buffers, MPI connections
        fn(comm, send, recv, MPI.SUM)
    probe = time_calls(comm, fns[algos[0]], send, recv, 1)
    iters = comm.bcast(max(1, min(1000, int(budget_s / max(probe, 1e-7)))), root=0)
    times: dict[str, list[float]] = {a: [] for a in algos}
    for _ in range(reps):
        for a, fn in fns.items():
            times[a].append(time_calls(comm, fn, send, recv, iters))
    return times


def crossover(comm: MPI.Comm, sizes: str, reps: int) -> int:
    """Print, per size, the medians of recursive_doubling / rabenseifner / ring and the first sizes
    from which rabenseifner beats recursive_doubling and ring beats rabenseifner (auto's thresholds)."""
    algos = ["recursive_doubling", "rabenseifner", "ring"]
    from . import _shm  # here, not at the top: only this mode builds the shared windows

    one_node = comm.Get_size() > 1 and _shm.node_of(comm).nodes == 1
    if one_node:
        algos.append("shm")
    rows = []
    for s in sizes.split(","):
        nbytes = parse_size(s)
        med = measure(comm, algos, nbytes, reps)
        rows.append((nbytes, med))
        if comm.Get_rank() == 0:
            cells = "  ".join(f"{a}={med[a] * 1e6:.1f}us" for a in algos)
            print(f"{nbytes:>10}  {cells}  best={min(med, key=med.get)}", flush=True)
    if comm.Get_rank() == 0:
        def first(fast: str, slow: str) -> int | None:
            """Smallest size from which `fast` wins at every larger measured size too."""
            wins = [med[fast] < med[slow] for _, med in rows]
            for i in range(len(rows)):
                if all(wins[i:]):
                    return rows[i][0]
            return None
        print(f"p={comm.Get_size()}: rabenseifner beats recursive_doubling from {first('rabenseifner', 'recursive_doubling')} B; "
              f"ring beats rabenseifner from {first('ring', 'rabenseifner')} B"
              + (f"; ring beats shm from {first('ring', 'shm')} B (auto.SHM_MAX)" if one_node else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpi4py -m kernels.tune", description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("latency", "bandwidth", "crossover"))
    ap.add_argument("--sizes", default=None, help="comma list of byte sizes (8,1KB,4M)")
    ap.add_argument("--algos", default=None, help="comma list of registered names; mpi is always first")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--spread", action="store_true", help="also the range of per-repetition ratios to mpi")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    if args.mode == "crossover":
        return crossover(comm, args.sizes or "4K,8K,16K,32K,64K,128K,256K,512K,1M,2M,4M,8M,16M", args.reps)
    if args.mode == "latency":
        sizes = args.sizes or "8,64,512,1K,4K,8K,16K,32K,64K,128K,256K,512K,1M"
        algos = args.algos or "recursive_doubling,rabenseifner,ring,tree,auto"
    else:
        sizes = args.sizes or "4M,16M,64M"
        algos = args.algos or "ring"
    algos_l = ["mpi"] + [a for a in algos.split(",") if a != "mpi"]
    if comm.Get_rank() == 0:
        unit = "us (ratio to mpi)" if args.mode == "latency" else "busbw GB/s (ratio to mpi)"
        print(f"# p={p} {args.dtype} {args.mode}: median of {args.reps} reps, {unit}")
        print("bytes".rjust(10) + "".join(a.rjust(34 if args.spread else 22) for a in algos_l))
    for s in sizes.split(","):
        nbytes = parse_size(s)
        reps = measure_reps(comm, algos_l, nbytes, args.reps, args.dtype, 0.05 if args.mode == "latency" else 0.3)
        if comm.Get_rank() == 0:
            med = {a: statistics.median(t) for a, t in reps.items()}
            base = med["mpi"]
            cells = []
            for a in algos_l:
                # ratio to mpi within each repetition (same moment of the machine): median [min-max]
                r = sorted(reps[a][i] / reps["mpi"][i] for i in range(args.reps))
                if args.mode != "latency":
                    r = sorted(1 / x for x in r)
                spread = f" [{r[0]:.2f}-{r[-1]:.2f}]" if args.spread else ""
                if args.mode == "latency":
                    cells.append(f"{med[a] * 1e6:9.1f} ({med[a] / base:4.2f}x{spread})")
                else:
                    bw = nbytes / med[a] * 2 * (p - 1) / p / 1e9
                    cells.append(f"{bw:9.2f} ({base / med[a]:4.2f}x{spread})")
            width = 34 if args.spread else 22
            print(str(nbytes).rjust(10) + "".join(c.rjust(width) for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
