"""What `hpc train` will run, decided before any rank starts: the options (TrainConfig), the model
and scheme they name (Plan), and the checks that refuse a run up front, in the parent process
(`precheck`) and the same on every rank (`plan`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from hpc import env, gpu, records
from hpc.errors import HpcError
from hpc.workloads.models import MODELS, ModelConfig, check_config, parse_model_args, parse_shape

if TYPE_CHECKING:
    from hpc.workloads.sync import Scheme
    from hpc.workloads.sync.base import SchemeFacts

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



def schemes(tc: TrainConfig) -> list[str]:
    """The schemes of `--sync a,b,c` (one or more)."""
    names = [x.strip() for x in tc.sync.split(",") if x.strip()]
    if not names:
        raise HpcError("--sync names no scheme")
    return names


