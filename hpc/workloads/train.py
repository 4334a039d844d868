"""Data-parallel training (`hpc train`) with own gradient sync or a real baseline, timed per step.

Every rank builds the same model (seeded), starts from rank 0's parameters and trains on its own data
shard (synthetic per-rank streams, or `--data FILE.h5` through ShardedLoader). Each step is split
into data loading, compute and *exposed* communication (waiting for reductions once the local
gradients are ready). After the last step the ranks' parameters must be bit-identical (SHA-256
compared across ranks); rank 0 prints a breakdown table and appends a `train` record with `--json`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from hpc import env, records
from hpc.errors import HpcError
from hpc.workloads.models import ModelConfig, check_config

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

    from hpc.workloads.sync import Scheme
    from hpc.workloads.sync.base import Trainer

SCALINGS = ("strong", "weak", "none")


@dataclass(frozen=True)
class TrainConfig:
    """One `hpc train` run, as the CLI (or a Python caller) describes it; checked by `plan`."""

    sync: str = "ring"
    model: str = "mlp"
    steps: int = 20
    warmup: int = 2
    batch: int = 32
    data: str | None = None
    scaling: str | None = None
    json: str | None = None
    bucket_mb: float = 25.0
    fp16_compress: bool = False
    overlap: str = "auto"
    host_staging: bool = False
    servers: int | None = None
    staleness: int = 2
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    seed: int = 0
    width: int | None = None
    depth: int = 2
    features: int = 64
    classes: int = 10
    image: int = 16
    vocab: int = 64
    seq_len: int = 32
    heads: int = 4
    device: str = "cpu"
    threads: int | None = None
    per_step: bool = False
    save_params: str | None = None
    np: int | None = None


# -- validation (no MPI, no torch: runs in the parent before mpirun and again on every rank) ------

@dataclass
class Plan:
    """The checked run: scheme, model config, batch sizes, scaling."""

    scheme: "Scheme"
    cfg: ModelConfig
    scaling: str
    servers: int
    lr: float


def plan(tc: TrainConfig, world: int | None) -> Plan:
    """Check every flag that can be checked without MPI or torch; same answer on every rank."""
    from hpc.workloads import sync

    scheme = sync.resolve(tc.sync)
    width = tc.width or {"mlp": 256, "cnn": 16, "transformer": 64}.get(tc.model, 256)
    cfg = ModelConfig(name=tc.model, width=width, depth=tc.depth, features=tc.features,
                      classes=tc.classes, image=tc.image, vocab=tc.vocab, seq_len=tc.seq_len,
                      heads=tc.heads, seed=tc.seed)
    check_config(cfg)
    scaling = tc.scaling or env.get("HPC_SCALING") or "none"
    if scaling not in SCALINGS:
        raise HpcError(f"unknown scaling '{scaling}' (use {', '.join(SCALINGS)})")
    if scheme.module == "ps_async":
        servers = 1 if tc.servers is None else tc.servers
        from hpc.workloads.sync.ps_async import check_layout

        if world is not None:
            check_layout(world, servers)
        elif servers < 1:
            raise HpcError(f"ps-async needs --servers >= 1, got {servers}")
        if tc.staleness < 0:
            raise HpcError(f"--staleness must be >= 0, got {tc.staleness}")
    else:
        servers = tc.servers or 0
        if servers and not (scheme.is_own and scheme.option == "ps"):
            raise HpcError(f"--servers is for --sync ps or ps-async, not '{tc.sync}'")
        if servers < 0:
            raise HpcError(f"--servers must be >= 0, got {servers}")
        if servers and world is not None and world < servers + 1:
            raise HpcError(f"--sync ps with --servers {servers} needs --np >= {servers + 1}, got {world}")
    if tc.device == "cuda" and scheme.module not in ("own", "ps_async"):
        raise HpcError(f"--device cuda works with own sync and ps-async; '{tc.sync}' runs on cpu here")
    if tc.host_staging and not scheme.is_own:
        raise HpcError("--host-staging is an option of own sync (collective SPECs such as ring)")
    if tc.data and not os.path.isfile(tc.data):
        raise HpcError(f"{tc.data}: no such file")
    if world is not None and scaling == "strong":
        workers = world - (servers if scheme.module == "ps_async" else 0)
        if tc.batch < workers:
            raise HpcError(f"strong scaling splits --batch {tc.batch} over {workers} ranks: "
                           "need at least one sample per rank")
    lr = tc.lr if tc.lr is not None else (1e-3 if tc.optimizer == "adam" else 0.05)
    return Plan(scheme, cfg, scaling, servers, lr)


def precheck(tc: TrainConfig) -> None:
    """Parent-side checks before mpirun starts: bad flags, unknown sync/model, missing packages."""
    from hpc.plugins import registry
    from hpc.workloads import sync

    pl = plan(tc, tc.np)
    if not sync.installed(pl.scheme):
        raise HpcError(sync.missing_message(pl.scheme))
    if pl.scheme.is_own:
        registry.load(pl.scheme.option, pl.servers)


# -- on every rank -----------------------------------------------------------------------------------

@dataclass
class StepLog:
    """Per-step timings (seconds) and local losses on this rank."""

    data: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    comm: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    comm_total: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def run(tc: TrainConfig) -> int:
    from hpc.plugins import registry
    from hpc.workloads import sync
    from hpc.comm import world

    comm = world()
    p, rank = comm.Get_size(), comm.Get_rank()
    pl = plan(tc, p)                  # bad input: the same HpcError on every rank, before any collective
    sync.require(pl.scheme)             # missing/broken package: likewise
    coll = registry.load(pl.scheme.option, pl.servers) if pl.scheme.is_own else None
    torch = _import_torch()
    device = _device(torch, tc.device)
    from hpc.workloads.sync.base import TrainContext, TrainOptions, local_layout

    local_rank, local_size = local_layout(comm)
    torch.set_num_threads(tc.threads or _threads(local_size))
    if coll is not None and not coll.builtin:
        from hpc.plugins.verify import verify

        verify(comm, coll, ops=("SUM",), quick=True, sub_comms=False)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    prov = records.provenance(comm, records.command_line())
    opts = TrainOptions(optimizer=tc.optimizer, lr=pl.lr, momentum=tc.momentum,
                        bucket_mb=tc.bucket_mb, fp16_compress=tc.fp16_compress,
                        overlap=_overlap(tc.overlap, device.type, local_size),
                        host_staging=tc.host_staging,
                        servers=pl.servers, staleness=tc.staleness)
    n_workers = p - (pl.servers if pl.scheme.module == "ps_async" else 0)
    batch = tc.batch // n_workers if pl.scaling == "strong" else tc.batch
    cfg, source = data_source(tc, pl, rank, p, n_workers, batch)
    from hpc.workloads.models import build, n_params

    model = build(cfg).to(device)
    ctx = TrainContext(comm=comm, cfg=cfg, model=model, device=device, opts=opts, collective=coll,
                       stage=int(pl.scheme.option) if pl.scheme.module == "deepspeed" else 0,
                       batch=batch, local_rank=local_rank, local_size=local_size)
    base = {"sync": tc.sync, "model": cfg.name, "device": device.type, "batch_per_rank": batch,
            "global_batch": batch * n_workers, "steps": tc.steps, "scaling": pl.scaling,
            "n_params": n_params(model), "optimizer": tc.optimizer, "lr": pl.lr,
            "nodes": len(prov["hosts"]), "provenance": prov}
    try:
        trainer = sync.load(pl.scheme).make(ctx)
        log, losses = _train(trainer, comm, source, tc.steps, device, tc.data is not None)
        flat = trainer.params()
        holder = _check_identical(comm, flat, trainer)
        summary = trainer.summary()
        rec = _record(comm, tc, base, trainer, log, losses, flat, holder, summary, n_workers)
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
        _report(rec, tc)
        if tc.json:
            records.append(tc.json, [rec])
    return 0


def _import_torch():
    try:
        import torch
    except ImportError:
        raise HpcError("torch is not installed: install torch (the [torch] extra)") from None
    return torch


def _device(torch, name: str) -> "torch.device":
    if name == "cuda" and not torch.cuda.is_available():
        raise HpcError("--device cuda: no CUDA GPU is visible to torch on this node "
                       f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
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


def data_source(tc: TrainConfig, pl: Plan, rank: int, p: int, n_workers: int,
                 batch: int) -> tuple[ModelConfig, Iterator[tuple[np.ndarray, np.ndarray]] | None]:
    """Model config adapted to the data, and this rank's batch stream (None on server ranks).

    Synthetic: one seeded stream per data rank. File: ShardedLoader, strong = the file split over the
    data ranks, weak = `batch * steps` rows per rank (wrapping), full batches only, reshuffled per epoch.
    """
    from hpc.workloads.models import SyntheticData, config_from_data

    data_rank = rank - (p - n_workers)  # ps-async servers are the first ranks
    if not tc.data:
        return pl.cfg, (SyntheticData(pl.cfg, data_rank, batch) if data_rank >= 0 else None)
    from hpc.data.loader import ShardedLoader

    mode = "strong" if pl.scaling == "strong" else "weak"
    loader = ShardedLoader(tc.data, max(data_rank, 0), n_workers, mode=mode, batch_size=batch,
                           samples_per_rank=None if mode == "strong" else batch * tc.steps,
                           seed=tc.seed, shuffle=True, drop_last=True, wrap=True)
    cfg = config_from_data(pl.cfg, loader.sample_shape, loader.x_dtype, loader.attrs, None)
    if loader.y_dtype is None:
        raise HpcError(f"{tc.data}: no label dataset 'y'")
    if len(loader) == 0:
        raise HpcError(f"{tc.data}: rank {data_rank}'s shard has {loader.num_samples} samples, "
                       f"fewer than one batch of {batch}")
    return cfg, (_epochs(loader) if data_rank >= 0 else None)


def _epochs(loader) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches forever, epoch after epoch (a new shuffle each)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _train(trainer: "Trainer", comm: "MPI.Comm", source, steps: int, device: "torch.device",
           from_file: bool) -> tuple[StepLog, list[float]]:
    """Run the steps; return this rank's timings and the global mean loss per step (sync schemes)."""
    import torch

    log = StepLog()
    losses: list[float] = []
    if not trainer.is_worker:
        trainer.run_server(steps)
        return log, losses
    lockstep = trainer.name != "ps-async"
    for s in range(steps):
        t0 = time.perf_counter()
        x, y = next(source)
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
        yt = torch.from_numpy(np.ascontiguousarray(y)).to(device, non_blocking=True)
        t1 = time.perf_counter()
        res = trainer.step(xt, yt)
        t2 = time.perf_counter()
        log.data.append(t1 - t0)
        log.compute.append(res.compute_s)
        log.comm.append(res.comm_s)
        log.total.append(t2 - t0)
        log.comm_total.append(res.extra.get("comm_total_s", float("nan")))
        log.loss.append(res.loss)
        if lockstep:  # untimed: the global loss, and the same non-finite verdict on every rank
            total = comm.allreduce(res.loss)
            mean = total / comm.Get_size()
            losses.append(mean)
            if not np.isfinite(mean):
                bad = comm.allgather(np.isfinite(res.loss))
                who = ", ".join(str(r) for r, ok in enumerate(bad) if not ok) or "?"
                raise HpcError(f"non-finite loss at step {s} (rank {who}): training diverged "
                               "(lower --lr?)")
    if not lockstep:
        trainer.finish_worker()
    return log, losses


def _check_identical(comm: "MPI.Comm", flat: np.ndarray | None, trainer: "Trainer") -> int:
    """Every rank that holds the parameters must hold the same bits; otherwise an error on all ranks.

    Returns the lowest rank that holds them (rank 0 except for ps-async, whose servers hold shards).
    """
    from hpc.workloads.sync.base import digest

    mine = digest(flat) if flat is not None else None
    everyone = comm.allgather(mine)
    held = {r: d for r, d in enumerate(everyone) if d is not None}
    if len(set(held.values())) > 1:
        groups: dict[str, list[int]] = {}
        for r, d in held.items():
            groups.setdefault(d, []).append(r)
        shown = "; ".join(f"ranks {v} have {k[:12]}" for k, v in groups.items())
        raise HpcError(f"parameters differ across ranks after training with {trainer.name}: {shown}")
    return min(held)


def _record(comm: "MPI.Comm", tc: TrainConfig, base: dict[str, Any], trainer: "Trainer",
            log: StepLog, losses: list[float], flat: np.ndarray | None, holder: int,
            summary: dict[str, Any], n_workers: int) -> dict[str, Any] | None:
    """Gather every rank's timings to rank 0 and build the record there (None elsewhere)."""
    from hpc.workloads.sync.base import checksum, digest

    sums = comm.bcast((checksum(flat), digest(flat)) if comm.Get_rank() == holder else None, root=holder)
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
    lockstep = trainer.name != "ps-async"
    if lockstep:
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
        bytes_per_step=nbytes, param_checksum=sums[0], param_sha256=sums[1], warmup=warm,
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

    out = console()
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
    if tc.json:
        out.print(f"record: {tc.json}")
