"""Data-parallel training (`hpc train`) with own gradient sync or a real baseline, timed per step.

Every rank builds the same model (a built-in, a zoo architecture or the user's factory SPEC, seeded),
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
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from hpc import env, gpu, records
from hpc.errors import HpcError
from hpc.workloads.models import MODELS, ModelConfig, check_config, parse_model_args, parse_shape

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

    from hpc.workloads.memory import Probe
    from hpc.workloads.sync import Scheme
    from hpc.workloads.sync.base import SchemeFacts, Trainer

SCALINGS = ("strong", "weak", "none")


@dataclass(frozen=True)
class TrainConfig:
    """One `hpc train` run, as the CLI (or a Python caller) describes it; checked by `plan`."""

    sync: str = "ring"
    model: str = "mlp"
    model_args: tuple[str, ...] | dict[str, Any] = ()   # factory keyword arguments, "key=value" each
    input_shape: str | tuple[int, ...] | None = None  # one float sample, e.g. "3x32x32"
    steps: int = 20
    warmup: int = 2
    batch: int = 32
    data: str | None = None
    x_name: str = "x"  # datasets of --data
    y_name: str = "y"
    scaling: str | None = None
    json: str | None = None
    bucket_mb: float = 25.0
    fp16_compress: bool = False
    ddp_find_unused: bool = False
    overlap: str = "auto"
    host_staging: bool = False
    servers: int | None = None
    staleness: int = 2
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    seed: int = 0
    # sizes: None = not given (defaults below); a given one that contradicts --data is an error
    width: int | None = None
    depth: int | None = None
    features: int | None = None
    classes: int | None = None
    image: int | None = None
    vocab: int | None = None
    seq_len: int | None = None
    heads: int | None = None
    device: str = "cpu"
    threads: int | None = None
    per_step: bool = False
    save_params: str | None = None
    np: int | None = None
    step_timeout: float = 300.0     # a step (or the first, with set-up) hanging this long ends the job
    reps: int = 1                   # with a list of schemes: runs of each, interleaved (auto: the first rounds)
    order_seed: int | None = None   # seed of the shuffled run order (random when None; recorded)
    reps_auto: bool = False         # --reps auto: add rounds until the ranking is clear (or the budget ends)
    max_reps: int | None = None     # auto: most rounds (default AUTO_MAX_REPS)
    max_time: float | None = None   # auto: no new round after this many seconds (default AUTO_MAX_TIME)


# `--reps auto`: MIN_REPS rounds, then one more while any scheme's verdict against the fastest is unclear
# (hpc.analysis.ranking.undecided), at most AUTO_MAX_REPS rounds and no new round after AUTO_MAX_TIME s.
MIN_AUTO_REPS = 3
AUTO_MAX_REPS = 10
AUTO_MAX_TIME = 900.0


# -- validation (no MPI, no torch: runs in the parent before mpirun and again on every rank) ------

SIZE_DEFAULTS = {"depth": 2, "features": 64, "classes": 10, "image": 16, "vocab": 64, "seq_len": 32,
                 "heads": 4}
WIDTH_DEFAULTS = {"mlp": 256, "cnn": 16, "transformer": 64}
# the flags a data file can contradict: TrainConfig field -> flag
FILE_FLAGS = {"classes": "--classes", "vocab": "--vocab", "seq_len": "--seq-len", "features": "--features",
              "image": "--image", "input_shape": "--input-shape"}


@dataclass
class Plan:
    """The checked run: scheme and its facts, model config, batch sizes, scaling, flags given."""

    scheme: "Scheme"
    cfg: ModelConfig
    scaling: str
    servers: int
    lr: float
    facts: "SchemeFacts" = None  # type: ignore[assignment]
    explicit: dict[str, Any] = field(default_factory=dict)  # size flags the user set: flag -> value


def model_config(tc: TrainConfig) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config from the flags (defaults filled in), and the size flags given explicitly."""
    name = tc.model.strip()
    shape = parse_shape(tc.input_shape)
    args = parse_model_args(tc.model_args)
    explicit = {flag: (shape if key == "input_shape" else getattr(tc, key))
                for key, flag in FILE_FLAGS.items() if getattr(tc, key) is not None}
    size = {k: (getattr(tc, k) if getattr(tc, k) is not None else v) for k, v in SIZE_DEFAULTS.items()}
    spec = MODELS.get(name)
    kw: dict[str, Any] = {}
    if spec is not None and spec.flags:  # mlp / cnn / transformer: sized by flags
        kw["width"] = tc.width or WIDTH_DEFAULTS.get(name, 256)
    else:
        for key in ("width", "depth", "heads"):
            if getattr(tc, key) is not None:
                raise HpcError(f"--{key} sizes the built-in mlp/cnn/transformer; give '{name}' its sizes "
                               "with --model-arg key=value")
    if spec is not None and shape is not None:
        if spec.kind == "tokens":
            raise HpcError(f"--input-shape is for float inputs; '{name}' takes token ids (--vocab, --seq-len)")
        if spec.kind == "tabular":
            if len(shape) != 1:
                raise HpcError(f"model '{name}' takes 1-D samples, --input-shape {tc.input_shape} has "
                               f"{len(shape)} dimensions")
            if tc.features is not None and tc.features != shape[0]:
                raise HpcError(f"--features {tc.features} contradicts --input-shape {tc.input_shape}")
            size["features"] = shape[0]
        else:
            if len(shape) != 3 or shape[1] != shape[2]:
                raise HpcError(f"model '{name}' takes square images CxHxH, got --input-shape {tc.input_shape}")
            if tc.image is not None and tc.image != shape[1]:
                raise HpcError(f"--image {tc.image} contradicts --input-shape {tc.input_shape}")
            size["image"] = shape[1]
            kw["channels"] = shape[0]
    elif spec is None:
        for key in ("features", "image"):
            if getattr(tc, key) is not None:
                raise HpcError(f"--{key} sizes the built-in mlp/cnn; give '{name}' --input-shape")
        tokens = tc.vocab is not None or tc.seq_len is not None
        if shape is not None and tokens:
            raise HpcError("give --input-shape (float samples) or --vocab/--seq-len (token ids), not both")
        kw["input_kind"] = "tensor" if shape is not None else "tokens" if tokens else None
        kw["input_shape"] = shape
        if kw["input_kind"] is None and not tc.data and ":" in name:
            raise HpcError(f"model '{name}' needs its input described: --input-shape 3x32x32 (float "
                           "samples, with --classes K), --vocab V --seq-len L (token ids), or --data FILE.h5")
    cfg = ModelConfig(name=name, seed=tc.seed, args=args, **size, **kw)
    check_config(cfg)
    return cfg, explicit


def plan(tc: TrainConfig, world: int | None) -> Plan:
    """Check every flag that can be checked without MPI or torch; same answer on every rank."""
    from hpc.workloads import sync
    from hpc.workloads.sync.base import TrainOptions

    scheme = sync.resolve(tc.sync)
    facts = sync.facts(scheme)
    cfg, explicit = model_config(tc)
    scaling = tc.scaling or env.get("HPC_SCALING") or "none"
    if scaling not in SCALINGS:
        raise HpcError(f"unknown scaling '{scaling}' (use {', '.join(SCALINGS)})")
    servers = facts.default_servers if tc.servers is None else tc.servers
    facts.check_layout(world, TrainOptions(servers=servers, staleness=tc.staleness), tc.sync)
    if tc.device == "cuda" and not facts.cuda:
        raise HpcError(f"--device cuda: '{tc.sync}' runs on cpu only")
    if tc.host_staging and not facts.collective:
        raise HpcError("--host-staging is an option of own sync (collective SPECs such as ring)")
    if tc.data and not os.path.isfile(tc.data):
        raise HpcError(f"{tc.data}: no such file")
    if world is not None and scaling == "strong":
        workers = facts.data_ranks(world, servers)
        if tc.batch < workers:
            raise HpcError(f"strong scaling splits --batch {tc.batch} over {workers} ranks: "
                           "need at least one sample per rank")
    lr = tc.lr if tc.lr is not None else (1e-3 if tc.optimizer == "adam" else 0.05)
    return Plan(scheme, cfg, scaling, servers, lr, facts, explicit)


def precheck(tc: TrainConfig, here: bool = True) -> None:
    """Parent-side checks before mpirun starts: bad flags, unknown sync/model, missing packages.

    `here`: the ranks will start on this machine, so its GPUs are theirs (False for a Slurm sweep
    prepared on a login node: the nodes' GPUs are checked by the ranks themselves)."""
    from hpc.plugins import registry
    from hpc.workloads import sync

    if tc.reps < 1:
        raise HpcError(f"--reps must be >= 1, got {tc.reps}")
    for path, what in ((tc.json, "--json records file"), (tc.save_params, "--save-params file")):
        if path:
            records.check_writable(path, what)
    gpus = gpu.require_cuda() if tc.device == "cuda" and here else 0
    uneven = set()
    for name in schemes(tc):
        pl = plan(replace(tc, sync=name), tc.np)
        workers = pl.facts.data_ranks(tc.np, pl.servers) if tc.np else 0
        if pl.scaling == "strong" and workers and tc.batch % workers and workers not in uneven:
            uneven.add(workers)
            print(f"hpc: note: --batch {tc.batch} does not split evenly over {workers} data ranks"
                  f"{' (' + name + ')' if len(schemes(tc)) > 1 else ''}: {tc.batch // workers} per rank, "
                  f"global batch {tc.batch // workers * workers}", file=sys.stderr)
        if not sync.installed(pl.scheme):
            raise HpcError(sync.missing_message(pl.scheme))
        if tc.device == "cuda" and here:
            precheck_cuda(name, pl.facts, tc.np or 1, gpus)
        elif tc.device == "cuda":
            pl.facts.check_cuda()
        if pl.facts.collective:
            registry.load(pl.scheme.option, pl.servers)
    if not pl.cfg.builtin:
        from hpc.workloads.models import precheck_factory

        precheck_factory(pl.cfg.name)


def precheck_cuda(sync_name: str, facts: "SchemeFacts", local_ranks: int, gpus: int) -> None:
    """Before mpirun, for --device cuda: a scheme that needs a GPU per rank (NCCL) gets one, and
    Horovod was built with GPU operations."""
    if facts.gpu_exclusive:
        gpu.check_gpu_sharing(sync_name, local_ranks, gpus)
    facts.check_cuda()


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


def schemes(tc: TrainConfig) -> list[str]:
    """The schemes of `--sync a,b,c` (one or more)."""
    names = [x.strip() for x in tc.sync.split(",") if x.strip()]
    if not names:
        raise HpcError("--sync names no scheme")
    return names


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
                                        check_same_model, flat_buffers, local_layout)

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


def check_batch(cfg: ModelConfig, x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Refuse a batch the loss would silently misuse: non-finite inputs, labels that are not integer
    classes in range (a label >= --classes crashes deep inside torch, a float label is cast)."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise HpcError(f"{where}: the input data holds NaN or infinity (not a training divergence)")
    if y.dtype.kind not in "iu":
        raise HpcError(f"{where}: labels must be integers, got {y.dtype}")
    expect = y.shape[:1] if cfg.kind != "tokens" else y.shape[:1] + (cfg.seq_len,)
    if y.shape != expect and not (cfg.kind == "tokens" and y.ndim == 2):
        raise HpcError(f"{where}: labels of shape {list(y.shape[1:])} per sample; expected one class "
                       "per sample")
    top = cfg.vocab if cfg.kind == "tokens" else cfg.classes
    if y.size and (int(y.min()) < 0 or int(y.max()) >= top):
        what = "--vocab" if cfg.kind == "tokens" else "--classes"
        raise HpcError(f"{where}: labels run from {int(y.min())} to {int(y.max())}, outside 0..{top - 1} "
                       f"({what} {top})")


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


def data_source(tc: TrainConfig, pl: Plan, rank: int, p: int, n_workers: int,
                 batch: int) -> tuple[ModelConfig, Iterator[tuple[np.ndarray, np.ndarray]] | None]:
    """Model config adapted to the data, and this rank's batch stream (None on server ranks).

    Synthetic: one seeded stream per data rank. File: ShardedLoader, strong = the file split over the
    data ranks, weak = `batch * steps` rows per rank (wrapping), full batches only, reshuffled per epoch.
    """
    from hpc.workloads.models import SyntheticData, config_from_data

    data_rank = rank - (p - n_workers)  # server ranks (SchemeFacts.server_ranks) come first
    if not tc.data:
        return pl.cfg, (SyntheticData(pl.cfg, data_rank, batch) if data_rank >= 0 else None)
    from hpc.data.loader import ShardedLoader

    mode = "strong" if pl.scaling == "strong" else "weak"
    try:
        loader = ShardedLoader(tc.data, max(data_rank, 0), n_workers, mode=mode, batch_size=batch,
                               samples_per_rank=None if mode == "strong" else batch * tc.steps,
                               seed=tc.seed, shuffle=True, drop_last=True, wrap=True, x=tc.x_name, y=tc.y_name)
    except HpcError as exc:
        if "no dataset" in str(exc):
            raise HpcError(f"{exc}; --x-name/--y-name choose them") from None
        raise
    attrs = loader.attrs  # classes/vocab from the file's attributes, else (no flag) from its largest label
    given = attrs.get("classes") or attrs.get("vocab") or {"--classes", "--vocab"} & set(pl.explicit)
    y_max = None if given else loader.label_max()
    cfg = config_from_data(pl.cfg, loader.sample_shape, loader.x_dtype, attrs, y_max,
                           explicit=pl.explicit, source=tc.data)
    if loader.y_dtype is None:
        raise HpcError(f"{tc.data}: no label dataset '{tc.y_name}' (--y-name)")
    if len(loader) == 0:
        raise HpcError(f"{tc.data}: rank {data_rank}'s shard has {loader.num_samples} samples, "
                       f"fewer than one batch of {batch}")
    if data_rank == 0 and loader.n_total < batch * n_workers and tc.data not in _SAID_SMALL:
        _SAID_SMALL.add(tc.data)  # once per process (side-by-side runs read the file again)
        sys.stderr.write(f"hpc: note: {tc.data} holds {loader.n_total} samples, fewer than one global batch "
                         f"of {batch * n_workers}: every step repeats samples\n")
    return cfg, (_epochs(loader) if data_rank >= 0 else None)


_SAID_SMALL: set[str] = set()


def _epochs(loader) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches forever, epoch after epoch (a new shuffle each)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _train(trainer: "Trainer", comm: "MPI.Comm", source, steps: int, device: "torch.device",
           facts: "SchemeFacts", where: str | None = None,
           step_timeout: float = 300.0, probe: "Probe | None" = None) -> tuple[StepLog, list[float]]:
    """Run the steps; return this rank's timings and the global mean loss per step (sync schemes).

    `where` names a data file whose batches are checked (labels, NaN) as they are read; `probe`
    (hpc.workloads.memory) is called between steps, outside the timed region."""
    import torch
    from mpi4py import MPI

    from hpc.comm import Watchdog

    log = StepLog()
    losses: list[float] = []
    if not trainer.is_worker:
        trainer.run_server(steps)
        return log, losses
    lockstep = facts.lockstep
    progress = _Progress(comm.Get_rank() == 0, steps)
    watchdog, limit = Watchdog(), 4 * step_timeout
    try:
        for s in range(steps):
            if probe is not None:
                probe.before_step(s)
            t0 = time.perf_counter()
            x, y = next(source)
            if where is not None:
                check_batch(trainer.ctx.cfg, x, y, f"{where}, step {s}")
            if x.dtype != np.float32 and trainer.ctx.cfg.kind != "tokens":  # float64/16, uint8 images
                x = x.astype(np.float32)  # the models' parameters are float32
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
            yt = torch.from_numpy(np.ascontiguousarray(y)).to(device, non_blocking=True)
            t1 = time.perf_counter()
            # a rank stopped, hung in a plug-in or dead without a word: the others wait here, so a
            # watchdog of a generous multiple of the usual step time ends the job and says which step
            if s in (1, 10) or s % 100 == 0:
                limit = max(step_timeout, 50 * float(np.median(log.total))) if log.total else 4 * step_timeout
            watchdog.arm(limit, f"training step {s}")
            res = trainer.step(xt, yt)
            t2 = time.perf_counter()
            log.data.append(t1 - t0)
            log.compute.append(res.compute_s)
            log.comm.append(res.comm_s)
            log.total.append(t2 - t0)
            log.comm_total.append(res.extra.get("comm_total_s", float("nan")))
            log.loss.append(res.loss)
            progress.tick(s + 1, res.loss)
            if probe is not None:
                probe.after_step(s)
            if lockstep:  # untimed: the global loss, and the same non-finite verdict on every rank
                # still under the watchdog, and buffer-based: mpi4py's pickled allreduce holds the GIL
                # while it waits, so a stopped peer there would starve the watchdog thread for ever
                total = np.array([res.loss], dtype=np.float64)
                comm.Allreduce(MPI.IN_PLACE, total)
                mean = float(total[0]) / comm.Get_size()
                losses.append(mean)
                if not np.isfinite(mean):
                    bad = comm.allgather(np.isfinite(res.loss))
                    who = ", ".join(str(r) for r, ok in enumerate(bad) if not ok) or "?"
                    raise HpcError(f"non-finite loss at step {s} (rank {who}): training diverged "
                                   "(lower --lr?)")
            watchdog.disarm()
    finally:
        watchdog.close()
    trainer.finish_worker()
    return log, losses


class _Progress:
    """A line on stderr every PROGRESS_S seconds of a long run (rank 0), so a long job shows life."""

    PROGRESS_S = 15.0

    def __init__(self, show: bool, steps: int):
        self.show, self.steps = show, steps
        self.every = float(env.get("HPC_PROGRESS_S") or self.PROGRESS_S)
        self.t0 = self.last = time.monotonic()

    def tick(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if self.show and now - self.last >= self.every and step < self.steps:
            self.last = now
            rate = step / (now - self.t0)
            sys.stderr.write(f"hpc train: step {step}/{self.steps} · {rate:.2f} steps/s · loss {loss:.4f} · "
                             f"about {(self.steps - step) / rate:.0f} s left\n")
            sys.stderr.flush()


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
