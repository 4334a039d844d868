"""`hpc bench collective`: OSU / nccl-tests style timing of allreduce algorithms side by side.

Per size: a correctness check, warm-up, iterations scaled to the message size, timed in batches
(every batch kept as a repetition); latency min/avg/max across ranks, algbw = bytes / time and
busbw = algbw * 2(p-1)/p, the figure that is comparable across rank counts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc import launch, records
from hpc.errors import HpcError
from hpc.registry import Collective

if TYPE_CHECKING:
    from mpi4py import MPI

OPS = ("SUM", "MAX", "MIN", "PROD")
DTYPES = ("float32", "float64", "int32", "int64")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: `hpc bench collective`")
    kinds = p.add_subparsers(dest="bench_kind", metavar="KIND", parser_class=type(p))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    c = kinds.add_parser("collective", help="time allreduce algorithms against native MPI")
    c.add_argument("--algo", default="ring,mpi", help="comma-separated SPECs (default ring,mpi)")
    c.add_argument("--sizes", default="8B:64MB", help="MIN:MAX[:FACTOR] or a list (default 8B:64MB)")
    c.add_argument("--dtype", default="float32", choices=DTYPES)
    c.add_argument("--op", default="SUM", type=str.upper, choices=OPS)
    c.add_argument("--iters", type=int, default=0, help="iterations per batch (default: by size)")
    c.add_argument("--batches", type=int, default=5, help="timed batches per size, each kept (default 5)")
    c.add_argument("--warmup", type=int, default=3, help="untimed calls per size (default 3)")
    c.add_argument("--target-time", type=float, default=0.05,
                   help="seconds one batch should take when --iters is not given (default 0.05)")
    c.add_argument("--servers", type=int, default=0, help="dedicated server ranks for ps")
    c.add_argument("--no-verify", action="store_true", help="skip verifying plug-ins before timing")
    c.add_argument("--json", metavar="FILE", help="append one record per (algo, size) to FILE")
    launch.add_np_argument(c, default_timeout=3600)
    c.set_defaults(func=run, precheck=_precheck)


def _precheck(args: argparse.Namespace) -> None:
    from hpc import registry
    from hpc.units import parse_sizes

    parse_sizes(args.sizes)
    for spec in _specs(args.algo):
        registry.precheck(spec)


def _specs(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise HpcError("--algo names no collective")
    return specs


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from hpc import registry
    from hpc.comm import console, world
    from hpc.units import parse_sizes
    from hpc.verify import verify

    comm = world()
    p = comm.Get_size()
    sizes = parse_sizes(args.sizes)
    colls = [registry.load(s, args.servers if s.startswith("ps") else 0) for s in _specs(args.algo)]
    for coll in colls:
        if not coll.builtin and not args.no_verify:
            verify(comm, coll, ops=(args.op,), quick=True, sub_comms=False)
    out = console(comm)
    prov = records.provenance(comm, records.command_line())
    nodes = len(prov["hosts"])
    rows: list[dict[str, Any]] = []
    with Progress(console=out, transient=True, disable=comm.Get_rank() != 0) as progress:
        task = progress.add_task("allreduce", total=len(sizes) * len(colls))
        for nbytes in sizes:
            for coll in colls:  # algorithms interleaved per size: the machine's noise hits all alike
                progress.update(task, description=f"{coll.name} {nbytes} B")
                rec = measure(comm, coll, nbytes, args)
                rec.update(provenance=prov, nodes=rec["nodes"] or nodes)
                rows.append(rec)
                progress.advance(task)
    if comm.Get_rank() == 0:
        if args.json:
            records.append(args.json, rows)
        out.print(table(rows, p))
        if args.json:
            out.print(f"records: {args.json}")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise HpcError(f"{len(failed)} point(s) gave wrong results, first: {failed[0]['algo']} "
                       f"at {failed[0]['size_bytes']} B")
    return 0


def measure(comm: "MPI.Comm", coll: Collective, nbytes: int, args: argparse.Namespace) -> dict[str, Any]:
    """Check, warm up and time one (algorithm, size) point; every rank returns the same record."""
    from mpi4py import MPI

    p, rank = comm.Get_size(), comm.Get_rank()
    dtype = np.dtype(args.dtype)
    count = nbytes // dtype.itemsize
    op = getattr(MPI, args.op)
    send, expected = _pattern(count, dtype, rank, p, args.op)
    recv = np.empty_like(send)
    coll.func(comm, send, recv, op)
    correct = bool(comm.allreduce(bool(np.array_equal(recv, expected)), MPI.LAND))
    for _ in range(args.warmup):
        coll.func(comm, send, recv, op)
    iters = args.iters or _iters_for(comm, coll, send, recv, op, args.target_time)
    batches: list[float] = []
    for _ in range(max(1, args.batches)):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            coll.func(comm, send, recv, op)
        batches.append((time.perf_counter() - t0) / iters)
    per_rank = np.array(comm.allgather(batches))          # [rank, batch] seconds per call
    slowest = per_rank.max(axis=0)                        # a collective ends when its last rank does
    t = statistics.median(slowest.tolist())
    lat = np.median(per_rank, axis=1) * 1e6
    algbw = nbytes / t / 1e9 if t > 0 else 0.0
    return records.new(
        "collective", p,
        algo=coll.name, spec=coll.spec, size_bytes=nbytes, count=count, dtype=dtype.name, op=args.op,
        iters=iters, batches=len(batches), time_s=t, times_s=slowest.tolist(),
        lat_min_us=float(lat.min()), lat_avg_us=float(lat.mean()), lat_max_us=float(lat.max()),
        algbw_GBps=algbw, busbw_GBps=algbw * 2 * (p - 1) / p, correct=correct,
        status="ok" if correct else "failed",
        error=None if correct else "result differs from the expected reduction",
    )


def _pattern(count: int, dtype: np.dtype, rank: int, p: int, op: str) -> tuple[np.ndarray, np.ndarray]:
    """Send data whose reduction is known exactly (small integers, exact in every dtype)."""
    base = (np.arange(count) % 7).astype(dtype)
    send = base + dtype.type(rank + 1)
    ranks = np.arange(1, p + 1)
    if op == "SUM":
        expected = base * p + dtype.type(ranks.sum())
    elif op == "MAX":
        expected = base + dtype.type(p)
    elif op == "MIN":
        expected = base + dtype.type(1)
    else:
        send = np.where(base == 1, 2, 1).astype(dtype)
        expected = np.where(base == 1, 2 ** p, 1)
    return send, expected.astype(dtype)


def _iters_for(comm: "MPI.Comm", coll: Collective, send: np.ndarray, recv: np.ndarray,
               op: "MPI.Op", target: float) -> int:
    """Iterations so one batch lasts about `target` seconds; the same on every rank."""
    from mpi4py import MPI

    comm.Barrier()
    t0 = time.perf_counter()
    coll.func(comm, send, recv, op)
    dt = comm.allreduce(time.perf_counter() - t0, MPI.MAX)
    return int(min(1000, max(1, round(target / max(dt, 1e-7)))))


def table(rows: list[dict[str, Any]], p: int):
    """The OSU-style table; with `mpi` in the run, each algorithm's speed relative to it."""
    from rich.table import Table

    from hpc.units import format_size

    native = {r["size_bytes"]: r["time_s"] for r in rows if r["algo"] == "mpi"}
    t = Table(title=f"allreduce on {p} ranks ({rows[0]['dtype']}, {rows[0]['op']})" if rows else "allreduce")
    for col in ("algo", "size", "iters", "min us", "avg us", "max us", "algbw GB/s", "busbw GB/s",
                "vs mpi", "check"):
        t.add_column(col, justify="left" if col in ("algo", "check") else "right")
    for r in rows:
        ref = native.get(r["size_bytes"])
        ratio = f"{ref / r['time_s']:.2f}x" if ref and r["time_s"] > 0 and r["algo"] != "mpi" else ""
        t.add_row(r["algo"], format_size(r["size_bytes"]), str(r["iters"]), _us(r["lat_min_us"]),
                  _us(r["lat_avg_us"]), _us(r["lat_max_us"]), f"{r['algbw_GBps']:.3f}",
                  f"{r['busbw_GBps']:.3f}", ratio, "ok" if r["correct"] else "[red]WRONG[/]")
    return t


def _us(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"
