"""Gradient-synchronisation schemes for `hpc train`, listed in one place.

A scheme is a module here exposing `make(ctx: TrainContext) -> Trainer` and `FACTS` (a
SchemeFacts: lock-step or not, GPU, server ranks, layout check) that the driver asks instead of
naming schemes. `own` serves every collective
SPEC (ring, ps, auto, mpi, a plug-in ...): fusion buckets reduced with that allreduce, overlapped with
backward. The others are `ps-async` (parameter servers, bounded staleness) and the real baselines
`horovod`, `deepspeed-zero1|2|3` and `ddp`. Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from hpc.errors import HpcError

# name -> (module in hpc.sync, option passed to it, one-line description). Collective SPECs that are
# not listed here (ring, mpi, auto, plug-ins ...) go to `own`.
SCHEMES: dict[str, tuple[str, str, str]] = {
    "ps-async": ("ps_async", "", "asynchronous parameter servers (--servers k) with bounded staleness"),
    "horovod": ("horovod", "", "Horovod DistributedOptimizer (real horovod.torch)"),
    "ddp": ("ddp", "", "torch DistributedDataParallel over gloo"),
    "deepspeed-zero1": ("deepspeed", "1", "DeepSpeed ZeRO stage 1 (optimizer state sharded)"),
    "deepspeed-zero2": ("deepspeed", "2", "DeepSpeed ZeRO stage 2 (+ gradients sharded)"),
    "deepspeed-zero3": ("deepspeed", "3", "DeepSpeed ZeRO stage 3 (+ parameters sharded)"),
}
OWN_DESCRIPTION = "own bucketed sync: gradients fused into buckets, allreduced with this collective"

# module -> (importable package that it needs, how to get it)
REQUIRES: dict[str, tuple[str, str]] = {
    "horovod": ("horovod.torch", "run `python -m hpc.horovod_build`"),
    "deepspeed": ("deepspeed", "run `pip install deepspeed==0.19.8` (or the [deepspeed] extra)"),
    "ddp": ("torch.distributed", "install torch (the [torch] extra)"),
    "own": ("torch", "install torch (the [torch] extra)"),
    "ps_async": ("torch", "install torch (the [torch] extra)"),
}


@dataclass(frozen=True)
class Scheme:
    """A resolved `--sync` value: which module trains, with which option (collective SPEC or stage)."""

    sync: str
    module: str
    option: str

    @property
    def is_own(self) -> bool:
        return self.module == "own"

    @property
    def package(self) -> str:
        """The import this scheme needs (checked before any collective)."""
        return REQUIRES[self.module][0]


def resolve(sync: str) -> Scheme:
    """Map `--sync` to a scheme; anything not named in SCHEMES is a collective SPEC for `own`."""
    sync = sync.strip()
    if not sync:
        raise HpcError("--sync is empty")
    if sync in SCHEMES:
        module, option, _ = SCHEMES[sync]
        return Scheme(sync, module, option)
    if sync.startswith("deepspeed"):
        raise HpcError(f"unknown DeepSpeed scheme '{sync}' (use deepspeed-zero1, -zero2 or -zero3)")
    return Scheme(sync, "own", sync)


def names() -> list[tuple[str, str]]:
    """(name, description) of every `--sync` value that needs no plug-in, for help and listings."""
    from hpc.kernels import BUILTINS

    rows = [(n, f"own buckets + {d}") for n, (_, d) in BUILTINS.items()]
    return rows + [(n, d) for n, (_, _, d) in SCHEMES.items()]


def installed(scheme: Scheme) -> bool:
    """Whether the scheme's package can be found (cheap: no import, no MPI initialisation)."""
    top = scheme.package
    try:
        found = importlib.util.find_spec(top.split(".")[0]) is not None
        if found and "." in top:
            found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    return found


def missing_message(scheme: Scheme) -> str:
    """The one-line error for a scheme whose package is absent."""
    package, hint = REQUIRES[scheme.module]
    return f"{package.split('.')[0]} is not installed: {hint}"


def require(scheme: Scheme, device_type: str = "cpu") -> None:
    """Import the scheme's package or raise the one-line HpcError; same outcome on every rank.

    A scheme module's `before_import(device_type)`, if it has one, runs first (DeepSpeed picks its
    accelerator, and warns about it, at its first import)."""
    package, _ = REQUIRES[scheme.module]
    if not installed(scheme):
        raise HpcError(missing_message(scheme))
    hook = getattr(load(scheme), "before_import", None)
    if hook is not None:
        hook(device_type)
    try:
        importlib.import_module(package)
    except Exception as exc:  # a broken build (e.g. horovod against another torch): say so, one line
        msg = " ".join(str(exc).split())[:300]
        raise HpcError(f"{package} is installed but cannot be imported ({type(exc).__name__}: {msg}); "
                       f"{REQUIRES[scheme.module][1]}") from None


def load(scheme: Scheme):
    """The module implementing the scheme (imports only our own code; packages load in make())."""
    return importlib.import_module(f"hpc.workloads.sync.{scheme.module}")


def facts(scheme: Scheme):
    """The scheme's SchemeFacts (cheap: imports our module, not its package)."""
    found = getattr(load(scheme), "FACTS", None)
    if found is None:
        raise HpcError(f"sync module '{scheme.module}' declares no FACTS")
    return found
