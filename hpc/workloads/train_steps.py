"""The step loop of `hpc train` on every rank: the data each rank reads, the timed steps under a
watchdog, and what a step's timings and losses are kept in.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from hpc import env
from hpc.errors import HpcError
from hpc.workloads.models import ModelConfig
from hpc.workloads.train_plan import Plan, TrainConfig

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

    from hpc.workloads.memory import Probe
    from hpc.workloads.sync.base import SchemeFacts, Trainer

@dataclass
class StepLog:
    """Per-step timings (seconds) and local losses on this rank."""

    data: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    comm: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    comm_total: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


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


