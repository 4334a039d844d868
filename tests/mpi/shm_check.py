"""MPI side of tests/test_kernels_shm.py: `shm`, `hier` and `auto` against native comm.Allreduce.

Run under mpirun: `python -m mpi4py tests/mpi/shm_check.py --algos shm,hier,auto [--refuse shm]`.
Node grouping comes from the environment (HPC_HIER_GROUP, HPC_HIER_NODES), as in a real run. Checks
results (exact for integers and MAX/MIN, rtol for float SUM/PROD), sendbuf unchanged, ranks
bit-identical, mismatched sizes raising on every rank, window growth, sub- and freed communicators.
Rank 0 prints one summary line; exit 1 on any failure.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import time

import numpy as np
from mpi4py import MPI

try:
    from hpc.kernels import _shm, auto, hier, shm
except ImportError:  # a plain checkout without the package installed
    from kernels import _shm, auto, hier, shm

COMM = MPI.COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()
OPS = {"SUM": MPI.SUM, "MAX": MPI.MAX, "MIN": MPI.MIN, "PROD": MPI.PROD}
ALGOS = {"shm": shm.allreduce, "hier": hier.allreduce, "hier-rails": functools.partial(hier.allreduce, slices=0),
         "auto": auto.allreduce}


def data(comm: MPI.Comm, n: int, dtype: str, opname: str) -> np.ndarray:
    """Rank-dependent input in a range where PROD neither overflows nor vanishes."""
    rng = np.random.default_rng([comm.Get_rank(), n, len(dtype)])
    if opname == "PROD":
        x = rng.uniform(0.5, 1.5, n) if dtype.startswith("float") else rng.integers(-2, 3, n)
    elif dtype.startswith("float"):
        x = rng.standard_normal(n)
    else:
        x = rng.integers(-1000, 1000, n)
    return x.astype(dtype)


def check(comm: MPI.Comm, name: str, n: int, dtype: str, opname: str, mode: str) -> str | None:
    """One case on every rank of comm; None if all pass, else a message naming the failing ranks."""
    op, x = OPS[opname], data(comm, n, dtype, opname)
    if dtype == "float16":  # no MPI reduction for float16: the expected sum comes from numpy
        expected = np.sum(comm.allgather(x), axis=0, dtype=np.float32).astype(dtype) if n else x.copy()
    else:
        expected = np.empty_like(x)
        comm.Allreduce(x, expected, op)
    send = x.copy()
    recv = send if mode == "same" else np.full_like(x, 7)
    err = None
    try:
        ALGOS[name](comm, MPI.IN_PLACE if mode == "IN_PLACE" else send, send if mode == "IN_PLACE" else recv, op)
        if mode == "IN_PLACE":
            recv = send
        if mode == "out" and not np.array_equal(send.view(np.uint8), x.view(np.uint8)):
            err = "sendbuf modified"
        elif dtype.startswith("float") and opname in ("SUM", "PROD"):
            tol = (1e-2 if dtype == "float16" else np.finfo(dtype).eps * 8) * comm.Get_size()
            if not np.allclose(recv, expected, rtol=tol, atol=tol):
                bad = int(np.argmax(~np.isclose(recv, expected, rtol=tol, atol=tol)))
                err = f"wrong at [{bad}]: {recv[bad]!r} != {expected[bad]!r}"
        elif not np.array_equal(recv, expected):
            bad = int(np.argmax(recv != expected))
            err = f"wrong at [{bad}]: {recv[bad]!r} != {expected[bad]!r}"
    except Exception as exc:  # noqa: BLE001 -- report on every rank instead of hanging the others
        err = f"raised {type(exc).__name__}: {exc}"
    digests = comm.allgather(hashlib.blake2b(recv.tobytes(), digest_size=16).hexdigest())
    errs = [f"rank {r}: {e}" for r, e in enumerate(comm.allgather(err)) if e]
    if not errs and len(set(digests)) != 1:
        errs = ["ranks differ bitwise"]
    return f"{name} p={comm.Get_size()} n={n} {dtype} {opname} {mode}: " + "; ".join(errs) if errs else None


def grid(comm: MPI.Comm, names: list[str], quick: bool = False) -> tuple[int, list[str]]:
    """Sizes 0, 1, p-1, p+1, 17, 4097 (around the small path), 100003, 3 MB of float32; every dtype;
    SUM/MAX on all sizes, MIN/PROD on small ones; out of place, same array, MPI.IN_PLACE.
    quick: float32/int64 only, no MIN/PROD (for slow launches such as Slurm jobs)."""
    p = comm.Get_size()
    small = sorted({0, 1, max(p - 1, 0), p + 1, 17, 4097})
    count, fails = 0, []
    dtypes = ("float32", "int64") if quick else ("float32", "float64", "int32", "int64", "float16")
    for n in small + [100_003, 786_433]:
        for dtype in dtypes:
            ops = ("SUM",) if dtype == "float16" else ("SUM", "MAX", "MIN", "PROD") if n in small and not quick \
                else ("SUM", "MAX")
            for opname in ops:
                for mode in ("out", "same", "IN_PLACE") if n in small or dtype == "float32" else ("out",):
                    for name in names:
                        count += 1
                        msg = check(comm, name, n, dtype, opname, mode)
                        if msg:
                            fails.append(msg)
    return count, fails


def mismatched(comm: MPI.Comm, name: str) -> list[str]:
    """Different sizes (or dtypes) on rank 0: every rank raises ValueError, then the kernel still works."""
    fails = []
    for n0, n1, dt0 in ((10, 11, "float32"), (10, 10, "float64"), (10, 300_000, "float32"),
                        (400_000, 3_000_000, "float32")):
        n, dt = (n0, dt0) if comm.Get_rank() == 0 else (n1, "float32")
        x = np.ones(n, dt)
        try:
            ALGOS[name](comm, x, np.empty_like(x), MPI.SUM)
            raised = False
        except ValueError:
            raised = True
        if not all(comm.allgather(raised)):
            fails.append(f"{name} mismatch rank0 {n0} {dt0} / others {n1}: not every rank raised")
    msg = check(comm, name, 1000, "float32", "SUM", "out")
    return fails + ([f"after mismatch: {msg}"] if msg else [])


def subcomms(names: list[str]) -> list[str]:
    """A split communicator and a run of Dup/Free (windows cached per communicator, freed with it)."""
    fails = []
    half = COMM.Split(RANK % 2, RANK)
    for name in names:
        for n in (5, 70_001):
            msg = check(half, name, n, "float64", "SUM", "out")
            if msg:
                fails.append("split: " + msg)
    half.Free()
    live = len(_shm._LIVE)
    for i in range(5):
        dup = COMM.Dup()
        for name in names:
            msg = check(dup, name, 20_000 * (i + 1), "float32", "SUM", "out")
            if msg:
                fails.append("dup: " + msg)
        dup.Free()
    if len(_shm._LIVE) != live:
        fails.append(f"windows of freed communicators still cached ({len(_shm._LIVE)} != {live})")
    return fails


def refused(name: str) -> list[str]:
    """`name` must refuse a communicator that spans nodes with a ValueError pointing to hier."""
    try:
        ALGOS[name](COMM, np.ones(100), np.empty(100), MPI.SUM)
    except ValueError as exc:
        return [] if "hier" in str(exc) else [f"{name} refusal does not point to hier: {exc}"]
    return [f"{name} did not refuse a communicator spanning {_shm.node_of(COMM).nodes} nodes"]


def idle(names: list[str], seconds: float) -> list[str]:
    """The last rank arrives `seconds` late: every waiting rank must get the right answer, and
    sleep meanwhile (CPU time under 10% of the wait), not poll."""
    fails = []
    for name in names:
        for n in (2, 1 << 20):  # one-sync path and the streamed one
            x = data(COMM, n, "float64", "SUM")
            want = np.empty_like(x)
            COMM.Allreduce(x, want)
            out = np.empty_like(x)
            ALGOS[name](COMM, x, out)  # windows built, first-call costs paid
            COMM.Barrier()
            if RANK == P - 1:
                time.sleep(seconds)
            cpu, t0 = time.process_time(), time.perf_counter()
            ALGOS[name](COMM, x, out)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - t0
            if not np.allclose(out, want, rtol=1e-12, atol=1e-12):
                fails.append(f"{name} n={n} after a late rank: wrong result")
            if RANK != P - 1 and cpu > 0.1 * max(wall, seconds / 2):
                fails.append(f"{name} n={n}: rank {RANK} used {cpu:.3f} s of CPU waiting {wall:.2f} s "
                             "for a late rank (expected to sleep)")
    return fails


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=float, default=0.0,
                    help="only check waiting for a rank this many seconds late")
    ap.add_argument("--algos", default="shm,hier,auto")
    ap.add_argument("--refuse", default="", help="kernels that must refuse this communicator")
    ap.add_argument("--nodes", type=int, default=0, help="expected number of nodes (0: do not check)")
    ap.add_argument("--quick", action="store_true", help="fewer dtypes and ops")
    args = ap.parse_args()
    names = [a for a in args.algos.split(",") if a]
    if args.idle:
        fails = sorted({f for rank_fails in COMM.allgather(idle(names, args.idle)) for f in rank_fails})
        if RANK == 0:
            for f in fails:
                print("FAIL", f, flush=True)
            print(f"p={P}: idle wait checked on {','.join(names)}, {len(fails)} failed", flush=True)
        return 1 if fails else 0
    fails = [f for name in filter(None, args.refuse.split(",")) for f in refused(name)]
    if P > 1 and args.nodes and _shm.node_of(COMM).nodes != args.nodes:
        fails.append(f"expected {args.nodes} nodes, found {_shm.node_of(COMM).nodes}")
    count, grid_fails = grid(COMM, names, args.quick)
    fails += grid_fails
    if P > 1 and _shm.node_of(COMM).nodes == 1:  # across nodes the inter-node step reports it (MPI error)
        for name in names:  # not auto: sizes on either side of a threshold pick different kernels
            if name != "auto":
                fails += mismatched(COMM, name)
    if P > 1:
        fails += subcomms(names)
    fails = sorted({f for rank_fails in COMM.allgather(fails) for f in rank_fails})
    if RANK == 0:
        for f in fails:
            print("FAIL", f, flush=True)
        nodes = _shm.node_of(COMM).nodes if P > 1 else 1
        print(f"p={P} nodes={nodes}: checked {count} cases on {','.join(names)}, {len(fails)} failed", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
