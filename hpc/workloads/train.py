"""Data-parallel training (`hpc train`) with own gradient sync or a real baseline, timed per step.

Options and up-front checks live in train_plan, the step loop in train_steps; this module runs
them. Every rank builds the same model (a built-in, a zoo architecture or the user's factory SPEC, seeded),
starts from rank 0's parameters and buffers and trains on its own data shard (synthetic per-rank
streams, or `--data FILE.h5` through ShardedLoader). Each step is split into data loading, compute and
*exposed* communication (waiting for reductions once the local gradients are ready).

"Identical on all ranks" after the last step means: parameters bit-identical (the sync scheme's job;
SHA-256 compared across ranks, a mismatch is an error), and buffers identical after one untimed
averaging of floating-point buffers over the data ranks. BatchNorm running statistics follow each
rank's own batches under every scheme (DDP and Horovod do not sync them either, short of
SyncBatchNorm), so they are averaged at the end as timm's `distribute_bn` does; the record says how
many differed (`buffers_averaged`) and carries their digest (`buffer_sha256`). The driver asks each
scheme's FACTS (lock-step, GPU, server ranks, layout) and never branches on a scheme's name. Rank 0
prints a breakdown table and appends a `train` record with `--json`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc import env, gpu, records
from hpc.errors import HpcError
from hpc.workloads.train_plan import AUTO_MAX_REPS, AUTO_MAX_TIME, TrainConfig, plan, schemes
from hpc.workloads.train_steps import StepLog, _train, data_source

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

    from hpc.workloads.sync.base import SchemeFacts, Trainer

# -- on every rank -----------------------------------------------------------------------------------

def run(tc: TrainConfig) -> int:
    """On every rank: one training run, or with several schemes / --reps the side-by-side runs."""
    if tc.reps < 1:
        raise HpcError(f"--reps must be >= 1, got {tc.reps}")
    names = schemes(tc)
    if len(names) == 1 and tc.reps == 1 and not tc.reps_auto:
        run_one(tc)
        return 0
    return run_side_by_side(tc, names)


def run_side_by_side(tc: TrainConfig, names: list[str]) -> int:
    """Every scheme `reps` times, in rounds (each scheme once per round, in a shuffled order, so the
    machine's drift hits all alike and round r of one scheme pairs with round r of another), the
    order's seed recorded; with --reps auto, rounds until the ranking is clear; then the ranked
    "which is fastest" table on rank 0."""
    import random
    import time

    from hpc.analysis.ranking import rank_schemes, ranking_tables
    from hpc.comm import console, world
    from hpc.table import print_tables

    comm = world()
    seed = tc.order_seed if tc.order_seed is not None else comm.bcast(random.randrange(2**31), root=0)
    shuffle = random.Random(seed).shuffle
    rounds = (tc.max_reps or AUTO_MAX_REPS) if tc.reps_auto else tc.reps
    out = console(comm, stderr=tc.json == "-")
    auto = {"unit": "reps", "min": tc.reps, "max_reps": rounds, "max_time_s": tc.max_time or AUTO_MAX_TIME}
    out.print((f"rounds of {', '.join(names)} (--reps auto: from {tc.reps} until the ranking is clear, at most "
               f"{rounds} rounds or {auto['max_time_s']:g} s)" if tc.reps_auto else
               f"{len(names) * tc.reps} runs ({', '.join(names)} × {tc.reps}) in rounds")
              + f", each round in a shuffled order, seed {seed} (--order-seed {seed} repeats it)")
    done: list[dict[str, Any]] = []
    i, total, start = 0, len(names) * rounds, time.monotonic()
    for rep in range(rounds):
        order = list(names)
        shuffle(order)
        for name in order:
            try:
                extra = {"order_seed": seed, "order": "rounds", "run_index": i, "rep_in_run": rep}
                if tc.reps_auto:
                    extra["auto"] = auto
                if env.get("HPC_REP") is None:  # not a sweep point: the repetition is this run's
                    extra["rep"] = rep
                rec = run_one(replace(tc, sync=name, reps=1, reps_auto=False, save_params=None), brief=True,
                              extra=extra)
            except HpcError as exc:  # say which scheme of the list failed (the records so far are kept)
                err = HpcError(f"--sync {name} (run {i + 1} of {total}): {exc}")
                err.exit_code = exc.exit_code
                raise err from None
            except Exception as exc:
                raise HpcError(f"--sync {name} (run {i + 1} of {total}): {type(exc).__name__}: {exc}") from None
            i += 1
            if rec is not None:
                done.append(rec)
                out.print(f"  [{i}/{total}] {name:<16} rep {rep}: {rec['steps_per_s']:.2f} steps/s, "
                          f"{rec['samples_per_s']:.1f} samples/s")
        if tc.reps_auto and rep + 1 >= tc.reps and _auto_stop(comm, out, done, rep + 1, rounds,
                                                               time.monotonic() - start, auto["max_time_s"]):
            break
    if comm.Get_rank() == 0:
        ranked = rank_schemes(done)
        if ranked:
            from hpc.analysis.memory import annotate, memory_tables

            print_tables(ranking_tables(ranked) + memory_tables(annotate(ranked, done)),
                         file=sys.stderr if tc.json == "-" else None)
    return 0


def _auto_stop(comm: "MPI.Comm", out, done: list[dict[str, Any]], rounds: int, most: int, spent: float,
               max_time: float) -> bool:
    """--reps auto, after a round: stop when every verdict is clear or the budget is spent (rank 0
    decides from the records, which only it holds; every rank follows)."""
    from hpc.analysis.ranking import undecided

    why = None
    if comm.Get_rank() == 0:
        left = undecided(done)
        why = ("every verdict is clear" if not left else
               f"{most} rounds done, still unclear: {', '.join(left[:3])}" if rounds >= most else
               f"{max_time:g} s spent, still unclear: {', '.join(left[:3])}" if spent >= max_time else None)
    why = comm.bcast(why, root=0)
    if why:
        out.print(f"--reps auto: stopped after {rounds} rounds ({why})")
    return why is not None


def run_one(tc: TrainConfig, brief: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """One training run on every rank; returns the record on rank 0 (None elsewhere)."""
    from hpc.plugins import registry
    from hpc.workloads import sync
    from hpc.comm import deadline, world

    comm = world()
    p, rank = comm.Get_size(), comm.Get_rank()
    pl = plan(tc, p)                  # bad input: the same HpcError on every rank, before any collective
    coll = registry.load(pl.scheme.option, pl.servers) if pl.facts.collective else None
    torch = _import_torch()
    device = _device(torch, tc.device)
    sync.require(pl.scheme, device.type)  # missing/broken package: likewise
    from hpc.workloads.sync.base import (TrainContext, TrainOptions, average_buffers, broadcast_state,
                                        check_same_model, flat_buffers, fused_update, local_layout)

    local_rank, local_size = local_layout(comm)
    torch.set_num_threads(tc.threads or _threads(local_size))
    cuda_aware = None
    if device.type == "cuda":
        if pl.facts.gpu_exclusive:  # the same refusal as the parent's, for jobs started by mpirun/srun
            gpu.check_gpu_sharing(tc.sync, local_size, torch.cuda.device_count())
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        cuda_aware = gpu.agreed_cuda_aware(comm)
    prov = records.provenance(comm, records.command_line(), device=device.type, cuda_aware=cuda_aware)
    opts = TrainOptions(optimizer=tc.optimizer, lr=pl.lr, momentum=tc.momentum,
                        bucket_mb=tc.bucket_mb, fp16_compress=tc.fp16_compress, find_unused=tc.ddp_find_unused,
                        overlap=_overlap(tc.overlap, device.type, local_size),
                        host_staging=tc.host_staging,
                        servers=pl.servers, staleness=tc.staleness)
    n_workers = pl.facts.data_ranks(p, pl.servers)
    batch = tc.batch // n_workers if pl.scaling == "strong" else tc.batch
    cfg, source = data_source(tc, pl, rank, p, n_workers, batch)
    from hpc.workloads.models import build, check_output, n_params

    model = build(cfg).to(device)
    check_same_model(comm, model)     # names, shapes, dtypes agree on every rank, whatever the scheme
    check_output(cfg, model, device)  # the output fits --classes / --vocab: same verdict on every rank
    model.train()
    if coll is not None and not coll.builtin:
        _verify_for_run(comm, coll, model, tc)
    broadcast_state(comm, model)      # parameters and buffers from rank 0, whatever the scheme
    ctx = TrainContext(comm=comm, cfg=cfg, model=model, device=device, opts=opts, collective=coll,
                       option=pl.scheme.option, batch=batch, local_rank=local_rank, local_size=local_size,
                       sync=tc.sync)
    base = {"sync": tc.sync, "model": cfg.name, "device": device.type, "batch_per_rank": batch,
            "global_batch": batch * n_workers, "steps": tc.steps, "scaling": pl.scaling,
            "n_params": n_params(model), "optimizer": tc.optimizer, "lr": pl.lr,
            "optimizer_kernel": "fused" if fused_update(list(model.parameters())) else "for-loop",
            "sample_shape": list(cfg.sample_shape()), "model_args": dict(cfg.args),
            "nodes": len(prov["hosts"]), "provenance": prov, **(extra or {})}
    try:
        from hpc.workloads import memory

        with deadline(tc.step_timeout, f"setting up --sync {tc.sync}"):  # rendezvous, process groups
            trainer = sync.load(pl.scheme).make(ctx)
        probe = memory.Probe(trainer, min(tc.warmup, tc.steps - 1), tc.steps, device.type == "cuda")
        log, losses = _train(trainer, comm, source, tc.steps, device, pl.facts, tc.data, tc.step_timeout, probe)
        flat = trainer.params()
        averaged = average_buffers(comm, model, trainer.is_worker)  # untimed; see the module docstring
        bufs = flat_buffers(model) if flat is not None else None
        holder = _check_identical(comm, flat, bufs, trainer)
        summary = trainer.summary()
        summary["buffers_averaged"] = averaged
        summary["memory"] = memory.train_block(comm, probe, base["n_params"], tc.optimizer, tc.momentum)
        rec = _record(comm, tc, base, trainer, log, losses, flat, bufs, holder, summary, n_workers, pl.facts)
        trainer.close()
    except HpcError as exc:
        if rank == 0 and tc.json:
            records.append(tc.json, [records.new("train", p, **base, status="failed", error=str(exc),
                                                   time_s=None, times_s=[])])
        raise
    if rank == holder and tc.save_params:
        np.save(tc.save_params, flat)
    comm.Barrier()
    if rank == 0:
        if tc.json:
            records.append(tc.json, [rec])
        if not brief:
            _report(rec, tc)
    return rec if rank == 0 else None


def _verify_for_run(comm: "MPI.Comm", coll, model: "torch.nn.Module", tc: TrainConfig) -> None:
    """Verify a plug-in on what this run will hand it: every bucket size of this model, in float32
    and, with --fp16-compress, float16 (a plug-in wrong only above the quick matrix's sizes or only
    in float16 must not train to a wrong result)."""
    from hpc.plugins.verify import verify
    from hpc.workloads.sync.own import bucket_sizes

    params = [p for p in model.parameters() if p.requires_grad]
    counts = tuple(sorted(set(bucket_sizes(params, int(tc.bucket_mb * (1 << 20))))))  # as BucketEngine
    dtypes = ("float32", "float16") if tc.fp16_compress else ("float32",)
    verify(comm, coll, ops=("SUM",), quick=True, sub_comms=False, dtypes=dtypes, sizes=counts)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise HpcError("torch is not installed: install torch (the [torch] extra)") from None
    return torch


def _device(torch, name: str) -> "torch.device":
    if name == "cuda":
        gpu.require_cuda()
    return torch.device(name)


def _overlap(mode: str, device: str, local_size: int) -> bool:
    """Whether own sync reduces during backward. A communication thread needs a core of its own:
    on a node with fewer than two cores per rank it only slows backward down (MPI polls while it
    waits), so `auto` overlaps there only when the compute runs on a GPU."""
    if mode != "auto":
        return mode == "on"
    return device == "cuda" or (os.cpu_count() or 1) // max(1, local_size) >= 2


def _threads(local_size: int) -> int:
    """Cores this rank may use: the node's cores shared among its ranks, within the rank's binding."""
    cores = os.cpu_count() or 1
    try:
        bound = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        bound = cores
    return max(1, min(bound, cores // max(1, local_size)))


def _check_identical(comm: "MPI.Comm", flat: np.ndarray | None, bufs: np.ndarray | None,
                     trainer: "Trainer") -> int:
    """Every rank that holds the model must hold the same parameter bits and (after averaging) the same
    buffer bits; otherwise an error on all ranks.

    Returns the lowest rank that holds them (rank 0 unless server ranks hold only shards).
    """
    from hpc.workloads.sync.base import digest

    mine = (digest(flat), digest(bufs) if bufs is not None else None) if flat is not None else None
    everyone = comm.allgather(mine)
    held = {r: d for r, d in enumerate(everyone) if d is not None}
    for i, what in enumerate(("parameters", "buffers")):
        if len({d[i] for d in held.values()}) > 1:
            groups: dict[str, list[int]] = {}
            for r, d in held.items():
                groups.setdefault(str(d[i]), []).append(r)
            shown = "; ".join(f"ranks {v} have {k[:12]}" for k, v in groups.items())
            raise HpcError(f"{what} differ across ranks after training with {trainer.name}: {shown}")
    return min(held)


def _record(comm: "MPI.Comm", tc: TrainConfig, base: dict[str, Any], trainer: "Trainer",
            log: StepLog, losses: list[float], flat: np.ndarray | None, bufs: np.ndarray | None,
            holder: int, summary: dict[str, Any], n_workers: int,
            facts: "SchemeFacts") -> dict[str, Any] | None:
    """Gather every rank's timings to rank 0 and build the record there (None elsewhere)."""
    from hpc.workloads.sync.base import checksum, digest

    mine_sums = (checksum(flat), digest(flat), digest(bufs) if bufs is not None else None)
    sums = comm.bcast(mine_sums if comm.Get_rank() == holder else None, root=holder)
    warm = min(tc.warmup, tc.steps - 1)
    mine = None
    if trainer.is_worker:
        mine = {k: getattr(log, k)[warm:] for k in ("data", "compute", "comm", "total", "comm_total")}
        mine["loss"] = log.loss
    gathered = comm.gather(mine, root=0)
    nbytes = max(comm.allgather(trainer.bytes_per_step()))
    if comm.Get_rank() != 0:
        return None
    runs = [g for g in gathered if g is not None]
    arr = {k: np.array([g[k] for g in runs], dtype=float) for k in runs[0]}  # [rank, step]
    if facts.lockstep:
        step_times = arr["total"].max(axis=0)  # a synchronous step ends when its slowest rank does
        time_s = float(np.median(step_times))
        steps_per_s = 1.0 / time_s if time_s > 0 else float("inf")
        loss = losses
    else:  # asynchronous workers: each at its own pace; steps/s in global-batch equivalents
        per_worker = np.median(arr["total"], axis=1)
        steps_per_s = float(np.mean(1.0 / per_worker))
        step_times = np.median(arr["total"], axis=0)
        time_s = 1.0 / steps_per_s
        loss = np.mean(arr["loss"], axis=0).tolist()
    med = {k: float(np.median(np.mean(arr[k], axis=0))) for k in ("data", "compute", "comm")}
    comm_total = float(np.nanmedian(np.mean(arr["comm_total"], axis=0))) if np.isfinite(arr["comm_total"]).any() else None
    extra = {k: v for k, v in summary.items()}
    return records.new(
        "train", comm.Get_size(), **base,
        time_s=time_s, times_s=step_times.tolist(), steps_per_s=steps_per_s,
        samples_per_s=steps_per_s * base["global_batch"], compute_s=med["compute"],
        comm_s=med["comm"], data_s=med["data"], comm_total_s=comm_total, loss=loss,
        bytes_per_step=nbytes, param_checksum=sums[0], param_sha256=sums[1], buffer_sha256=sums[2],
        warmup=warm,
        timed_steps=int(step_times.size), workers=n_workers, **extra,
        breakdown={k: _stats(np.mean(arr[k], axis=0)) for k in ("data", "compute", "comm", "total")},
        per_step={k: np.mean(arr[k], axis=0).tolist() for k in ("data", "compute", "comm", "total")},
    )


def _stats(values: np.ndarray) -> dict[str, float]:
    """mean / median / min / max of per-step values (seconds)."""
    return {"mean": float(np.mean(values)), "median": float(np.median(values)),
            "min": float(np.min(values)), "max": float(np.max(values))}


def _report(rec: dict[str, Any], tc: TrainConfig) -> None:
    """The per-step breakdown table (rank 0)."""
    from rich.table import Table

    from hpc.comm import console

    out = console(stderr=tc.json == "-")  # `--json -`: stdout carries only the record
    b = rec["breakdown"]
    step = b["total"]["mean"] or float("nan")
    t = Table(title=f"hpc train: {rec['sync']} · {rec['model']} ({rec['n_params']:,} params) · "
                    f"np={rec['np']} · batch {rec['batch_per_rank']}/rank · {rec['timed_steps']} timed steps",
              title_justify="left")
    for col in ("per step", "mean ms", "median ms", "min ms", "max ms", "share"):
        t.add_column(col, justify="left" if col == "per step" else "right")
    names = {"data": "data loading", "compute": "compute (fwd+bwd+update)",
             "comm": "exposed communication", "total": "step"}
    for k in ("data", "compute", "comm", "total"):
        share = b[k]["mean"] / step if step and step == step else float("nan")
        t.add_row(names[k], f"{b[k]['mean'] * 1e3:.2f}", f"{b[k]['median'] * 1e3:.2f}", f"{b[k]['min'] * 1e3:.2f}",
                  f"{b[k]['max'] * 1e3:.2f}", f"{share:.0%}" if k != "total" else "")
    out.print(t)
    loss = rec["loss"]
    lines = [f"steps/s {rec['steps_per_s']:.2f} · samples/s {rec['samples_per_s']:.1f} · "
             f"gradient bytes/step {rec['bytes_per_step'] / 2**20:.2f} MiB"
             + (f" · total reduction time {rec['comm_total_s'] * 1e3:.2f} ms (hidden or not)"
                if rec.get("comm_total_s") else ""),
             f"loss {loss[0]:.4f} -> {loss[-1]:.4f} · parameters identical on all ranks "
             f"(sha256 {rec['param_sha256'][:12]}, sum {rec['param_checksum']:.6g})" if loss else ""]
    if rec.get("buffer_sha256"):
        n = rec.get("buffers_averaged", 0)
        lines.append(f"buffers identical on all ranks (sha256 {rec['buffer_sha256'][:12]})"
                     + (f"; {n} running-statistic buffers averaged over the data ranks at the end" if n else ""))
    if "staleness_max" in rec:
        lines.append(f"staleness: bound {rec['staleness_bound']} steps, observed max "
                     f"{rec['staleness_max']} (mean {rec['staleness_mean']:.2f}); update delay max "
                     f"{rec['delay_updates_max']} (mean {rec['delay_updates_mean']:.2f})")
    for line in filter(None, lines):
        out.print(line)
    if tc.per_step:
        ps = Table(title="per step (mean over ranks; first steps are warm-up and untimed)", title_justify="left")
        for col in ("step", "loss", "data ms", "compute ms", "comm ms", "step ms"):
            ps.add_column(col, justify="right")
        first = rec["warmup"]
        for i in range(len(rec["per_step"]["total"])):
            ps.add_row(str(first + i), f"{loss[first + i]:.4f}" if first + i < len(loss) else "",
                       *(f"{rec['per_step'][k][i] * 1e3:.2f}" for k in ("data", "compute", "comm", "total")))
        out.print(ps)
    if tc.json and tc.json != "-":
        out.print(f"record: {tc.json}")
