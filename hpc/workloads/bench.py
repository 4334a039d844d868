"""Collective benchmark (`hpc bench collective`): OSU / nccl-tests style timing of allreduce algorithms side by side.

Per size, for every algorithm: a correctness check, warm-up, iterations scaled to the message size;
then timed batches interleaved across the algorithms (batch b of each in a shuffled order, then b+1;
every batch kept as a repetition). With `--batches auto` batches are added until every algorithm's
paired verdict against the reference (`mpi` when listed, else the first) is clear, or the budget
(`--max-reps`, `--max-time`) runs out. Latency min/avg/max across ranks, algbw = bytes / time and
busbw = algbw * 2(p-1)/p, the figure that is comparable across rank counts. With `--device cuda` the
buffers are torch tensors on the rank's GPU, reduced as workloads/device.py says (`mpi`: the device
buffer into a CUDA-aware MPI; `ring`: additions on the GPU; other SPECs: staged through pinned host
memory); each record says which (`cuda_path`, `reduce_on`) and carries the GPU in its provenance.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc import records
from hpc.kernels import busbw_factor
from hpc.errors import HpcError
from hpc.plugins.registry import Collective
from hpc.workloads.rounds import (Buffers, Point, _named, auto_stop, iters_for, same_iters, shuffled,
                                  time_batch, time_round)

_iters_for = iters_for  # the name tests and older callers use

if TYPE_CHECKING:
    from mpi4py import MPI

OPS = ("SUM", "MAX", "MIN", "PROD")
DTYPES = ("float32", "float64", "int32", "int64")


@dataclass(frozen=True)
class BenchConfig:
    """One `bench collective` run: which algorithms, which sizes, how to time them."""

    algo: str = "ring,mpi"
    sizes: str = "8B:64MB"
    dtype: str = "float32"
    op: str = "SUM"
    iters: int = 0
    batches: int = 5
    warmup: int = 3
    target_time: float = 0.05
    servers: int = 0
    no_verify: bool = False
    json: str | None = None
    case_timeout: float = 120.0
    device: str = "cpu"
    batches_auto: bool = False      # --batches auto: add batches until the verdicts are clear
    interleave: str = "auto"        # batch | call | auto (call with --batches auto, else batch)
    max_reps: int | None = None     # auto: most batches per size (default AUTO_MAX_REPS)
    max_time: float | None = None   # auto: most seconds of batches per size (default AUTO_MAX_TIME)


# `--batches auto`: start with AUTO_MIN batches (from 5 the trimmed estimate sets an outlier aside), then
# add one round at a time. On 2 busy cores a 64 KiB-4 MiB point settled within ~10-40 batches
# (results/verdicts.md); the budget stops a point whose scatter would need far more.
AUTO_MIN = 5
AUTO_MAX_REPS = 100
AUTO_MAX_TIME = 60.0


def specs(text: str) -> list[str]:
    """The SPECs of a comma-separated --algo list."""
    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out:
        raise HpcError("--algo names no collective")
    return out


def sizes(cfg: BenchConfig) -> list[int]:
    """The message sizes in bytes; each must hold a whole number of `dtype` elements."""
    from hpc.units import format_size, parse_sizes

    out = parse_sizes(cfg.sizes)
    item = np.dtype(cfg.dtype).itemsize
    odd = [n for n in out if n % item]
    if odd:
        raise HpcError(f"--sizes {format_size(odd[0])} is not a whole number of {cfg.dtype} elements "
                       f"({item} bytes each)")
    return out


def precheck(cfg: BenchConfig) -> None:
    """Checks that need no MPI (the launching parent runs them before mpirun)."""
    from hpc.plugins import registry

    sizes(cfg)
    if not cfg.batches_auto and (cfg.max_reps is not None or cfg.max_time is not None):
        raise HpcError("--max-reps and --max-time bound --batches auto; give --batches auto too")
    if (cfg.max_reps is not None and cfg.max_reps < AUTO_MIN) or (cfg.max_time is not None and cfg.max_time <= 0):
        raise HpcError(f"--max-reps must be >= {AUTO_MIN} and --max-time > 0")
    if cfg.json:
        records.check_writable(cfg.json, "--json records file")
    if cfg.interleave not in ("auto", "batch", "call"):
        raise HpcError(f"unknown --interleave '{cfg.interleave}' (use auto, batch or call)")
    if cfg.device not in ("cpu", "cuda"):
        raise HpcError(f"unknown --device '{cfg.device}' (use cpu or cuda)")
    if cfg.device == "cuda":
        from hpc.gpu import require_cuda

        require_cuda()
    for spec in specs(cfg.algo):
        registry.precheck(spec)


def run(cfg: BenchConfig) -> int:
    """On every rank: verify plug-ins, time every (size, algorithm) point interleaved, print, record."""
    from rich.progress import Progress

    from hpc.comm import Watchdog, console, world
    from hpc.plugins import registry
    from hpc.plugins.verify import verify

    comm = world()
    p = comm.Get_size()
    points = sizes(cfg)
    colls = [registry.load(s, cfg.servers if s.startswith("ps") else 0) for s in specs(cfg.algo)]
    item = np.dtype(cfg.dtype).itemsize
    colls = _distinct_names(colls)
    for coll in colls:  # on the sizes and dtype this run will time, not only the quick matrix
        if not coll.builtin and not cfg.no_verify:
            rep = verify(comm, coll, ops=(cfg.op,), quick=True, sub_comms=False, case_timeout=cfg.case_timeout,
                         dtypes=(cfg.dtype,), sizes=tuple(sorted({n // item for n in points})))
            if cfg.op in rep.refused_ops:
                raise HpcError(f"collective '{coll.spec}' does not support --op {cfg.op} (it refused it "
                               "when verified)")
    out = console(comm, stderr=cfg.json == "-")  # `--json -`: stdout carries only the records
    dev, aware = _cuda_setup(comm) if cfg.device == "cuda" else (None, None)
    prov = records.provenance(comm, records.command_line(), device=cfg.device, cuda_aware=aware)
    dcolls = {}
    if dev is not None:
        from hpc.workloads import device

        dcolls = {coll.spec: device.make(coll, aware[0], dtype=cfg.dtype) for coll in colls}
    nodes = len(prov["hosts"])
    own = {coll.spec: comm.Dup() for coll in colls}  # a stray message cannot reach another algorithm
    rows: list[dict[str, Any]] = []
    seed = comm.bcast(random.randrange(2**31) if comm.Get_rank() == 0 else None, root=0)
    order = random.Random(seed)  # the same orders on every rank (every rank draws the same numbers)
    shuffle = order.shuffle
    reference = "mpi" if any(c.name == "mpi" for c in colls) else colls[0].name
    rounds = max(1, cfg.batches) if not cfg.batches_auto else (cfg.max_reps or AUTO_MAX_REPS)
    by_call = interleave(cfg) == "call"
    watch = Watchdog()
    try:
        with Progress(console=out, transient=True, disable=comm.Get_rank() != 0) as progress:
            task = progress.add_task("allreduce", total=len(points) * (len(colls) + rounds))
            for nbytes in points:
                bufs = buffers(comm, nbytes, cfg, dev)
                pts = []
                for coll in colls:
                    progress.update(task, description=f"{coll.name} {nbytes} B: check, warm-up")
                    watch.arm(cfg.case_timeout + 40 * cfg.target_time * (1 + cfg.warmup), f"{coll.name} at {nbytes} B")
                    pts.append(prepare(own[coll.spec], coll, bufs, cfg, dcolls.get(coll.spec)))
                    progress.advance(task)
                if by_call and not cfg.iters:
                    same_iters(pts)
                # batch b of every algorithm (in a shuffled order: no algorithm always follows another),
                # then b+1: the machine's drift (load, where the scheduler put the ranks, which stays
                # for seconds) hits every algorithm alike
                stopped, start = None, time.monotonic()
                for b in range(rounds):
                    progress.update(task, description=f"{nbytes} B: batch {b + 1}")
                    if by_call:
                        watch.arm(cfg.case_timeout + 40 * cfg.target_time * len(pts), f"batch {b + 1} at {nbytes} B")
                        time_round(comm, pts, bufs, order)
                    for pt in shuffled(pts, shuffle) if not by_call else ():
                        watch.arm(cfg.case_timeout + 40 * cfg.target_time, f"{pt.coll.name} at {nbytes} B")
                        pt.batches.append(time_batch(own[pt.coll.spec], pt, bufs))
                        if pt.clobbers:
                            bufs.restore()
                    progress.advance(task)
                    if cfg.batches_auto:
                        stopped = auto_stop(comm, pts, reference, b + 1, time.monotonic() - start,
                                            cfg.max_reps or AUTO_MAX_REPS, cfg.max_time or AUTO_MAX_TIME, AUTO_MIN)
                        if stopped:
                            break
                watch.disarm()
                recs = [record(own[pt.coll.spec], pt, bufs, cfg) for pt in pts]
                for rec in recs:
                    rec.update(provenance=prov, nodes=rec["nodes"] or nodes, order_seed=seed, interleave=interleave(cfg))
                    if cfg.batches_auto:
                        rec["auto"] = {"unit": "batches", "min": AUTO_MIN, "max_reps": rounds,
                                       "max_time_s": cfg.max_time or AUTO_MAX_TIME, "reference": reference,
                                       "stopped": stopped or "max-reps"}
                rows += recs
                if comm.Get_rank() == 0 and cfg.json:  # each size's points kept as soon as measured
                    records.append(cfg.json, recs)
    finally:
        watch.close()
        for c in own.values():
            c.Free()
    if comm.Get_rank() == 0:
        out.print(table(rows, p))
        if cfg.json and cfg.json != "-":
            out.print(f"records: {cfg.json}")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise HpcError(f"{len(failed)} point(s) gave wrong results, first: {failed[0]['algo']} "
                       f"at {failed[0]['size_bytes']} B")
    return 0


def interleave(cfg: BenchConfig) -> str:
    """How the algorithms' timed batches interleave: "batch" (batch b of each in turn) or "call" (their
    calls alternate inside one round; the default of --batches auto)."""
    return cfg.interleave if cfg.interleave != "auto" else ("call" if cfg.batches_auto else "batch")


def _distinct_names(colls: list[Collective]) -> list[Collective]:
    """Two plug-ins with one name (naive.py:f and sub/naive.py:f) keep apart in records and tables:
    those that share a name are named by their SPEC instead."""
    import dataclasses
    from collections import Counter

    seen = Counter(c.name for c in colls)
    return [dataclasses.replace(c, name=c.spec) if seen[c.name] > 1 else c for c in colls]


def _cuda_setup(comm: "MPI.Comm") -> tuple[Any, tuple[bool, str]]:
    """This rank's GPU (local rank modulo the GPUs; ranks may share one) and the agreed CUDA-awareness."""
    import torch

    from hpc.gpu import agreed_cuda_aware, require_cuda
    from hpc.workloads.sync.base import local_layout

    gpus = require_cuda()
    dev = torch.device("cuda", local_layout(comm)[0] % gpus)
    torch.cuda.set_device(dev)
    return dev, agreed_cuda_aware(comm)


def buffers(comm: "MPI.Comm", nbytes: int, cfg: BenchConfig, dev: Any = None) -> Buffers:
    """Send data with a known reduction, a receive buffer, and (with `dev`) their GPU copies."""
    dtype = np.dtype(cfg.dtype)
    count = nbytes // dtype.itemsize
    send, expected = _pattern(count, dtype, comm.Get_rank(), comm.Get_size(), cfg.op)
    bufs = Buffers(count, send, send.copy(), np.empty_like(send), expected)
    if dev is not None:
        import torch

        bufs.dsend = torch.from_numpy(send).to(dev)
        bufs.drecv = torch.empty_like(bufs.dsend)
    return bufs


def prepare(comm: "MPI.Comm", coll: Collective, bufs: Buffers, cfg: BenchConfig, dcoll: Any = None) -> Point:
    """Check one algorithm's result at this size, warm it up and size its batches (collective).
    With `dcoll` (a workloads.device.DeviceCollective) on the GPU buffers."""
    from mpi4py import MPI

    op = getattr(MPI, cfg.op)
    if dcoll is None:
        def call() -> None:
            coll.func(comm, bufs.send, bufs.recv, op)

        def state() -> tuple[np.ndarray, np.ndarray]:
            return bufs.recv, bufs.send
    else:
        import torch

        def call() -> None:  # returns when the result is in device memory
            dcoll.func(comm, bufs.dsend, bufs.drecv, op)
            torch.cuda.synchronize(bufs.dsend.device)

        def state() -> tuple[np.ndarray, np.ndarray]:
            return bufs.drecv.cpu().numpy(), bufs.dsend.cpu().numpy()
    bufs.recv.fill(0)
    if bufs.drecv is not None:
        bufs.drecv.zero_()
    _named(coll, bufs, call)
    result, sent = state()
    clobbers = bool(comm.allreduce(not np.array_equal(sent, bufs.pristine), MPI.LOR))
    correct = bool(comm.allreduce(bool(np.array_equal(result, bufs.expected)), MPI.LAND)) and not clobbers
    for _ in range(cfg.warmup):
        call()
    iters = cfg.iters or iters_for(comm, call, cfg.target_time)
    if clobbers:  # the next algorithm's check needs the input as it was
        bufs.restore()
    return Point(coll, call, iters, correct, clobbers, [], dcoll)


def record(comm: "MPI.Comm", pt: Point, bufs: Buffers, cfg: BenchConfig) -> dict[str, Any]:
    """The point's record, the same on every rank: the slowest rank's time per batch, median over batches."""
    p = comm.Get_size()
    nbytes = bufs.send.nbytes
    per_rank = np.array(comm.allgather(pt.batches))       # [rank, batch] seconds per call
    slowest = per_rank.max(axis=0)                        # a collective ends when its last rank does
    t = statistics.median(slowest.tolist())
    lat = np.median(per_rank, axis=1) * 1e6
    algbw = nbytes / t / 1e9 if t > 0 else 0.0
    where = {"device": "cpu"} if pt.dcoll is None else {"device": "cuda", "cuda_path": pt.dcoll.cuda_path,
                                                        "reduce_on": pt.dcoll.reduce_on}
    error = None if pt.correct else ("it changed its send buffer" if pt.clobbers
                                     else "result differs from the expected reduction")
    return records.new(
        "collective", p,
        algo=pt.coll.name, spec=pt.coll.spec, size_bytes=nbytes, count=bufs.count, dtype=cfg.dtype, op=cfg.op,
        iters=pt.iters, batches=len(pt.batches), time_s=t, times_s=slowest.tolist(),
        lat_min_us=float(lat.min()), lat_avg_us=float(lat.mean()), lat_max_us=float(lat.max()),
        algbw_GBps=algbw, busbw_GBps=algbw * busbw_factor(p), correct=pt.correct,
        status="ok" if pt.correct else "failed", error=error, **where,
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


def table(rows: list[dict[str, Any]], p: int):
    """The OSU-style table; with `mpi` in the run, each algorithm's speed relative to it."""
    from rich.table import Table

    from hpc.units import format_size

    native = {r["size_bytes"]: r["time_s"] for r in rows if r["algo"] == "mpi"}
    where = ""
    if rows and rows[0].get("device") == "cuda":
        where = ", cuda: " + ", ".join(sorted({f"{r['algo']} {r['cuda_path']}, reduced on {r['reduce_on']}"
                                                for r in rows}))
    t = Table(title=f"allreduce on {p} ranks ({rows[0]['dtype']}, {rows[0]['op']}{where})" if rows else "allreduce")
    for col in ("algo", "size", "iters", "batches", "min us", "avg us", "max us", "algbw GB/s", "busbw GB/s",
                "vs mpi", "check"):
        t.add_column(col, justify="left" if col in ("algo", "check") else "right")
    for r in rows:
        ref = native.get(r["size_bytes"])
        ratio = f"{ref / r['time_s']:.2f}x" if ref and r["time_s"] > 0 and r["algo"] != "mpi" else ""
        stop = (r.get("auto") or {}).get("stopped")
        t.add_row(r["algo"], format_size(r["size_bytes"]), str(r["iters"]),
                  f"{r['batches']}" + (f" ({stop})" if stop and stop != "decided" else ""), _us(r["lat_min_us"]),
                  _us(r["lat_avg_us"]), _us(r["lat_max_us"]), f"{r['algbw_GBps']:.3f}",
                  f"{r['busbw_GBps']:.3f}", ratio, "ok" if r["correct"] else "[red]WRONG[/]")
    return t


def _us(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"
