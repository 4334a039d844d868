"""Memory per rank: what a sync scheme keeps (model states, counted from its tensors), the rank's peak
resident memory during the timed steps, and what the ZeRO accounting expects it to keep.

ZeRO exists to trade speed for memory, so a training record says both. Model states are counted
from the tensors each scheme holds (Trainer.memory_tensors): every distinct storage once (views into
flat buffers, DeepSpeed's flat groups, own sync's and DDP's buckets are counted as the buffer they
live in), first as parameters, then gradients, optimizer state, other buffers. A step holds the most
at different moments per scheme (DeepSpeed frees full gradients before the update, Adam's state
exists from the first update on, ZeRO-3 may keep gathered parameters live from forward into
backward, ZeRO-1 holds whole gradients only until DeepSpeed reduces them), so one early step is looked
at several times: after forward, once every local gradient exists and at the end of backward (schemes
whose states change inside the step mark these), just before the optimizer update (a global optimizer
pre-step hook) and at the end of the step; the largest total is kept. Peak resident memory is the
kernel's high-water mark (VmHWM), reset through /proc/self/clear_refs at the first timed step (Linux)
and read when the last one ends; nothing is sampled inside a timed step. The counting itself and the
accounting live in memory_count.

Expected (the ZeRO paper's accounting, Rajbhandari et al. 2020, §3-5): a rank holds the share
Trainer.memory_layout() declares of parameters, gradients and optimizer state (stage 1 shards the
optimizer state over N data ranks, 2 also the gradients, 3 also the parameters), at this run's
dtype and optimizer (Adam: 2 values per parameter, SGD with momentum: 1) plus DeepSpeed's fp32
master copy. A measured/expected gap above GAP_FLAG_PCT is flagged in the record.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hpc.workloads.memory_count import (CATEGORIES, Layout, count_bytes, expected_bytes, optimizer_tensors,
                                        optimizer_values_per_param, peak_mark, peak_rss_bytes, reset_peak_rss)

if TYPE_CHECKING:
    from mpi4py import MPI

GAP_FLAG_PCT = 20.0  # the threshold: a measured/expected gap above it is flagged, never hidden

HOW = {
    "model_states_bytes": "params + grads + optimizer + buffers: every distinct tensor storage the scheme "
                          "keeps, counted once, at the moment of one early step when the most is live (after "
                          "forward, end of backward, just before the optimizer update, or end of step: `seen_at`)",
    "params_bytes": "the parameters this rank holds (views into DeepSpeed's flat groups count as the group; "
                    "ZeRO-3: its partition)",
    "grads_bytes": "the gradients as held: .grad tensors, the bucket buffers they are views into (own sync, "
                   "DDP's gradient_as_bucket_view), DeepSpeed's gradient partitions",
    "optimizer_bytes": "optimizer state (Adam's two moments, SGD momentum) and the optimizer's own parameter "
                       "copies (DeepSpeed's flat fp32 master partitions)",
    "buffers_bytes": "other communication buffers: own sync's host staging buffer, Horovod's fusion buffer "
                     "(allocated in C++: counted at the size Horovod allocates), ps-async's push/pull "
                     "buffers, DeepSpeed's other internal tensors",
    "peak_rss_bytes": "the rank's peak resident set (VmHWM of /proc/self/status), reset through "
                      "/proc/self/clear_refs at the first timed step and read after the last (before the parameters are "
                      "read back whole)",
    "peak_rss_phase": "which phase of the timed steps first came within 2% of the peak (VmHWM read where "
                      "each step enters and leaves the optimizer update, and at its end), on the rank with "
                      "the largest peak",
    "peak_device_bytes": "torch.cuda.max_memory_allocated, its peak reset at the first timed step",
    "expected": f"ZeRO paper accounting at this run's dtype and optimizer: params·share_p + grads·share_g + "
                f"(optimizer state + fp32 master copy)·share_o per rank; compared with params + grads + "
                f"optimizer (buffers are not in the accounting); gaps above {GAP_FLAG_PCT:g}% are flagged",
}


# -- on every rank during `hpc train` ---------------------------------------------------------------

@dataclass
class Probe:
    """One rank's memory measurement for one run. The driver calls before_step/after_step outside
    the timed region; the snapshots of step `look_at` (the second: Adam's state exists from the
    first update on) are usually in the untimed warm-up."""

    trainer: Any
    warm: int                  # first timed step
    steps: int
    cuda: bool = False
    best: dict[str, int] | None = None
    seen_at: str | None = None
    rss_reset: bool = False
    spent_s: float = 0.0       # time spent counting (the snapshot step only)
    peak_rss: int | None = None  # both read after the last step
    peak_device: int | None = None
    start_mark: int | None = None  # the peak mark as the timed steps begin, then each rise of it:
    rises: list[tuple[int, int]] = field(default_factory=list)  # (phase: index into PHASES, mark)
    saw_update: bool = False
    _in_update: bool = False
    final_mark: int | None = None
    _hook: Any = field(default=None, repr=False)
    _phase_hooks: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.look_at = min(1, self.steps - 1)
        self._reset_peaks()  # ranks that run no steps (parameter servers): the peak of the whole run

    def _reset_peaks(self) -> None:
        self.rss_reset = reset_peak_rss()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def before_step(self, s: int) -> None:
        if s == self.warm:
            self._reset_peaks()
            self._watch_phases()
        if s == self.look_at:
            from torch.optim.optimizer import register_optimizer_step_pre_hook

            self._hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: self.mark("update"))
            self.trainer.memory_mark = self.mark

    def _watch_phases(self) -> None:
        """Read the peak mark where each timed step enters and leaves the optimizer update (torch's
        global optimizer hooks; 2 getrusage calls inside the step, 0.5 µs each here) and at its end
        (outside): which phase set the peak (phase_of)."""
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.start_mark = peak_mark()
        self.rises = []

        def pre(opt, args, kwargs):
            if not self._in_update:  # the first update of the step (DeepSpeed may step an inner one)
                self._in_update = self.saw_update = True
                self._rise(0)

        def post(opt, args, kwargs):
            self._rise(1)

        self._phase_hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]

    def _rise(self, phase: int) -> None:
        """Keep the mark if it rose RISE_STEP above the last one kept: the mark only grows, so the
        rises say where it crossed any level, in at most (rise / RISE_STEP) entries however long the run."""
        m = peak_mark()
        if m > (self.rises[-1][1] if self.rises else self.start_mark or 0) + RISE_STEP:
            self.rises.append((phase, m))

    def _unwatch(self) -> None:
        for h in self._phase_hooks:
            h.remove()
        self._phase_hooks = []

    def after_step(self, s: int) -> None:
        if s >= self.warm and self.start_mark is not None:
            self._rise(2)
            self._in_update = False
            if s == self.steps - 1:
                self._unwatch()
                self.final_mark = peak_mark()
        if s == self.look_at:
            self.mark("step end")
            self._disarm()
        if s == self.steps - 1:  # before anything after training (reading the parameters whole) adds to it
            self.peak_rss = peak_rss_bytes()
            if self.cuda:
                import torch

                self.peak_device = int(torch.cuda.max_memory_allocated())

    def _disarm(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.trainer.memory_mark = None

    def mark(self, moment: str) -> None:
        """Count what the scheme keeps now; keep it if it is the most seen so far."""
        t0 = time.perf_counter()
        counts = count_bytes(self.trainer.memory_tensors())
        if self.best is None or sum(counts.values()) > sum(self.best.values()):
            self.best, self.seen_at = counts, moment
        self.spent_s += time.perf_counter() - t0

    def finish(self) -> dict[str, Any]:
        """This rank's figures (after the last step, or after serving on a server rank)."""
        self._disarm()
        self._unwatch()
        if self.best is None:
            self.mark("end of run")
        out: dict[str, Any] = {f"{c}_bytes": v for c, v in self.best.items()}
        out["model_states_bytes"] = sum(self.best.values())
        out["seen_at"] = self.seen_at
        out["peak_rss_bytes"] = self.peak_rss if self.peak_rss is not None else peak_rss_bytes()
        if self.rss_reset and self.final_mark is not None:
            out["peak_rss_phase"] = phase_of(self.start_mark, self.rises, self.final_mark, self.saw_update)
        if self.cuda:
            import torch

            out["peak_device_bytes"] = self.peak_device if self.peak_device is not None \
                else int(torch.cuda.max_memory_allocated())
        out["probe_s"] = self.spent_s
        return out


PHASES = ("forward, backward and gradient sync", "optimizer update", "after the update (parameter sync)")
PHASE_TOL, PHASE_TOL_BYTES = 0.02, 1 << 20
RISE_STEP = 256 << 10


def phase_of(start: int, rises: list[tuple[int, int]], final: int, saw_update: bool = True) -> str:
    """Where the peak was set: the phase in which the mark first came within PHASE_TOL of the final
    peak (`rises`: (phase, mark) each time it rose, read entering the update, leaving it, and at the
    step's end). The tolerance: later steps creep up by pages of Python objects and heap growth,
    which is no phase's doing."""
    tol = max(PHASE_TOL_BYTES, PHASE_TOL * final)
    if start >= final - tol:
        return "steady (no phase rose 2% above what was resident when the timed steps began)"
    if not saw_update:  # no optimizer update on this rank: the step is all there is to name
        return "the step"
    return next((PHASES[ph] for ph, m in rises if m >= final - tol), "the step")


def block(comm: "MPI.Comm", mine: dict[str, Any], layout: Layout, n_params: int,
          values_per_param: float | None, itemsize: int = 4,
          peak_how: str | None = None) -> dict[str, Any] | None:
    """The record's `memory` block (collective; returned on rank 0, None elsewhere): every figure as
    the max over ranks, `per_rank`, the expected accounting beside the measurement, and how each was
    measured."""
    exp = expected_bytes(n_params, layout, values_per_param, itemsize)
    mine = dict(mine, rank=comm.Get_rank())
    if exp is not None:
        core = mine["params_bytes"] + mine["grads_bytes"] + mine["optimizer_bytes"]
        mine["expected_bytes"] = exp["model_states_bytes"]
        mine["gap_pct"] = 100.0 * (core - exp["model_states_bytes"]) / exp["model_states_bytes"] \
            if exp["model_states_bytes"] else None
    mine["layout"] = asdict(layout)
    everyone = comm.gather(mine, root=0)
    if comm.Get_rank() != 0:
        return None
    return summarize(everyone, itemsize, peak_how)


def summarize(ranks: list[dict[str, Any]], itemsize: int = 4, peak_how: str | None = None) -> dict[str, Any]:
    """Max over ranks, per rank, expected vs measured with flags (pure: rank 0 builds the block)."""
    keys = ["model_states_bytes", *(f"{c}_bytes" for c in CATEGORIES), "peak_rss_bytes", "peak_device_bytes"]
    out: dict[str, Any] = {k: max(int(r[k]) for r in ranks) for k in keys if all(k in r for r in ranks)}
    per_rank = [{k: r[k] for k in ("rank", *keys, "peak_rss_phase", "seen_at", "expected_bytes", "gap_pct")
                 if k in r} for r in ranks]
    out["per_rank"] = per_rank
    top = max(ranks, key=lambda r: int(r.get("peak_rss_bytes") or 0))
    if top.get("peak_rss_phase"):
        out["peak_rss_phase"] = top["peak_rss_phase"]  # of the rank with the largest peak
    layouts = {r["rank"]: r["layout"] for r in ranks}
    first = layouts[ranks[0]["rank"]]
    expected: dict[str, Any] = {"accounting": "; ".join(dict.fromkeys(lay["scheme"] for lay in layouts.values()))}
    flags: list[str] = []
    if all("expected_bytes" in r for r in ranks):
        expected["model_states_bytes"] = max(r["expected_bytes"] for r in ranks)
        gaps = [r["gap_pct"] for r in ranks if r.get("gap_pct") is not None]
        expected["gap_pct"] = max(gaps, key=abs) if gaps else None
        for r in ranks:
            if r.get("gap_pct") is not None and abs(r["gap_pct"]) > GAP_FLAG_PCT:
                flags.append(f"rank {r['rank']}: params+grads+optimizer {r['gap_pct']:+.0f}% vs the accounting")
    else:
        expected["model_states_bytes"] = None
        flags.append("no accounting for this optimizer: nothing expected")
    est = first.get("estimate")
    if est:
        core = max(r["params_bytes"] + r["grads_bytes"] + r["optimizer_bytes"] for r in ranks)
        gap = 100.0 * (core - est["bytes"]) / est["bytes"] if est["bytes"] else None
        expected["library_estimate"] = dict(est, gap_pct=gap)
        if gap is not None and abs(gap) > GAP_FLAG_PCT:
            flags.append(f"{est['source']}: params+grads+optimizer {gap:+.0f}% vs its estimate")
    expected["flagged"] = bool(flags)
    expected["flags"] = flags
    out["expected"] = expected
    notes = [n for n in dict.fromkeys(lay.get("note") or "" for lay in layouts.values()) if n]
    how = dict(HOW)
    if peak_how:
        how["peak_rss_bytes"] = peak_how
    for k in ("peak_device_bytes", "peak_rss_phase"):
        if k not in out:
            how.pop(k)
    out["how"] = how
    if notes:
        out["notes"] = notes
    out["probe_s"] = max(float(r.get("probe_s") or 0.0) for r in ranks)
    return out


RSS_NOT_RESET = ("the rank's peak resident set over the whole process (VmHWM; /proc/self/clear_refs could "
                 "not reset it at the first timed step)")


def train_block(comm: "MPI.Comm", probe: Probe, n_params: int, optimizer: str,
                momentum: float) -> dict[str, Any] | None:
    """`hpc train`'s memory block from the run's Probe (collective; rank 0 gets it)."""
    from mpi4py import MPI

    trainer = probe.trainer
    mine = probe.finish()
    params = list(trainer.ctx.model.parameters())
    itemsize = params[0].element_size() if params else 4
    reset = comm.allreduce(int(probe.rss_reset), op=MPI.MIN)
    return block(comm, mine, trainer.memory_layout(), n_params,
                 optimizer_values_per_param(optimizer, momentum), itemsize, None if reset else RSS_NOT_RESET)


# -- hpc.torch (HPC_RECORD) -------------------------------------------------------------------------

def live_optimizers(kind: str) -> list[Any]:
    """The objects alive in this process whose class derives from the class named `kind` (module.Name):
    hpc.torch keeps no reference to the user's optimizer, so they are found once, through the garbage
    collector, when the record is written (by name: no import, no cycle)."""
    import gc

    module, _, name = kind.rpartition(".")
    return [o for o in gc.get_objects()  # type(): no proxy __class__ lookups
            if any(c.__name__ == name and c.__module__ == module for c in type(o).__mro__)]


def torch_block(comm: "MPI.Comm", engines: list[Any], optimizers: list[Any]) -> dict[str, Any] | None:
    """The memory block of an hpc.torch run (collective), counted when the record is written: the
    parameters the DistributedOptimizers step, their bucket buffers (the gradients are views into
    them), the optimizers' state. Peak RSS is over the whole process (hpc.torch has no hook at the
    first timed step)."""
    groups: dict[str, list[Any]] = {c: [] for c in CATEGORIES}
    for o in optimizers:
        params, grads, state = optimizer_tensors(o)
        groups["params"] += params
        groups["grads"] += grads
        groups["optimizer"] += state
    groups["grads"] += [e.flat for e in engines]
    groups["buffers"] = [e.wire.host for e in engines]
    counts = count_bytes(groups)
    mine: dict[str, Any] = {f"{c}_bytes": v for c, v in counts.items()}
    mine["model_states_bytes"] = sum(counts.values())
    mine["seen_at"] = "end of run"
    mine["peak_rss_bytes"] = peak_rss_bytes()
    params = list({id(p): p for p in groups["params"]}.values())
    if any(p.is_cuda for p in params):
        import torch

        mine["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    n = sum(p.numel() for p in params)
    itemsize = params[0].element_size() if params else 4
    return block(comm, mine, Layout(), n, _values_of(optimizers), itemsize,
                 "the rank's peak resident set over the whole process (VmHWM)")


def _values_of(opts: list[Any]) -> float | None:
    """State values per parameter of the (one kind of) optimizer in use; None if unknown or mixed."""
    kinds = set()
    for o in opts:
        d = o.defaults
        base = next((c.__name__ for c in type(o).__mro__ if c.__module__.startswith("torch.optim")
                     and c.__name__ != "Optimizer"), type(o).__name__)
        kinds.add(optimizer_values_per_param(base, float(d.get("momentum") or 0.0), bool(d.get("amsgrad"))))
    return kinds.pop() if len(kinds) == 1 else None
