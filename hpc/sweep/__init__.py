"""Scaling sweeps: a plan of points (rank count × node count × repetition) run by a launcher.

`LAUNCHERS` maps a launcher name to the module whose `run_points(plan, todo, options, console)` runs
the points that are not done yet; an unknown name is one clear error line.

    >>> from hpc.sweep import run_sweep
    >>> failed = run_sweep("strong", ["bench", "collective", "--sizes", "1MB"], nps=[1, 2], out="runs/s1")

Any program (`kind: run` records; see hpc.sweep.command):

    >>> from hpc.sweep.command import RunSpec
    >>> spec = RunSpec(("./pi", "1000000"), metric=r"time: ([0-9.eE+-]+) s")
    >>> failed = run_sweep("strong", [], nps=[1, 2], out="runs/pi", run=spec)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpc.errors import HpcError

# name -> (module that runs a sweep's points with it, one-line description)
LAUNCHERS: dict[str, tuple[str, str]] = {
    "local": ("hpc.sweep.local", "mpirun on this machine, one point after another"),
    "slurm": ("hpc.sweep.slurm", "one sbatch job per point, chained, waited for and collected"),
}


def launcher(name: str) -> ModuleType:
    """The module that runs points with launcher `name`."""
    if name not in LAUNCHERS:
        raise HpcError(f"unknown launcher '{name}': use {' or '.join(LAUNCHERS)}")
    return importlib.import_module(LAUNCHERS[name][0])


def run_sweep(scaling: str, workload: list[str], *, nps: list[int], out: str, console=None,
              validate=None, **options) -> int:
    """Run (or resume) a sweep of `workload` (an hpc command line without --np); return failed points.

    `options` are the other fields of `SweepOptions` (reps, launcher, nodes, point_timeout, run,
    mpirun_args, sbatch_lines, before, ...); with `run=RunSpec(...)` the workload words are ignored.
    """
    from dataclasses import replace
    from pathlib import Path

    from rich.console import Console

    from hpc.sweep.plan import SweepOptions, is_done, make_plan, workload_timeout

    opts = SweepOptions(scaling=scaling, nps=list(nps), out=Path(out), **options)
    runner = launcher(opts.launcher)
    plan = make_plan(opts, workload, validate)
    own = workload_timeout(plan.workload) if plan.kind != "run" else None
    if own is not None and own < opts.point_timeout:
        opts = replace(opts, point_timeout=own)
    lock = _lock(plan.out)  # held until this function returns (the file object closes with it)
    con = console or Console(highlight=False, soft_wrap=True)
    todo = [pt for pt in plan.points if not is_done(plan, pt)]
    skipped = len(plan.points) - len(todo)
    if skipped:
        con.print(f"resuming {plan.out}: {skipped} of {len(plan.points)} points already done")
    failed = runner.run_points(plan, todo, opts, con)
    if opts.reps_auto:
        plan, more = _more_reps(plan, opts, runner, con)
        failed += more
    lock.close()
    if not (opts.dry_run and opts.launcher == "slurm"):
        con.print(f"sweep {plan.sweep_id}: {len(plan.points) - failed}/{len(plan.points)} points ok; "
                  f"records in {plan.out / 'points'}")
    return failed


def _more_reps(plan, opts, runner, con) -> tuple:
    """--reps auto: while some (rank count, node count)'s verdicts are unclear from its repetitions so
    far, run one more repetition of it (a round at a time, so the rounds still spread over the sweep's
    time), up to --max-reps and --max-time. Returns the plan with the points added, and the failed ones."""
    import time
    from dataclasses import replace

    from hpc import records
    from hpc.analysis.ranking import undecided
    from hpc.sweep.plan import AUTO_MAX_REPS, Point

    most, start, failed = opts.max_reps or AUTO_MAX_REPS, time.monotonic(), 0
    while True:
        recs = records.load(plan.out / "points", warn=False) if (plan.out / "points").exists() else []
        todo, capped = [], []
        for n, k in sorted({(p.np, p.nodes) for p in plan.points}):
            mine = [r for r in recs if r.get("np") == n and int(r.get("nodes") or 1) == k]
            done = 1 + max([int(r.get("rep") or 0) for r in mine] or [-1])
            left = undecided(mine) if mine else []
            if left and done >= most:
                capped.append(f"np={n}: {left[0]}")
            elif left:
                todo.append(Point(n, k, done))
                con.print(f"  --reps auto: np={n} nodes={k}: {left[0]}{' …' if len(left) > 1 else ''} "
                          f"not clear after {done} reps: rep {done}")
        over = opts.max_time is not None and time.monotonic() - start >= opts.max_time
        if not todo or over:
            why = (f"--max-time {opts.max_time:g} s spent" if todo else
                   f"--max-reps {most} reached, still unclear: {'; '.join(capped[:3])}" if capped else
                   "every verdict is clear")
            con.print(f"--reps auto: {why}")
            return plan, failed
        plan = replace(plan, points=plan.points + [p for p in todo if p not in plan.points])
        failed += runner.run_points(plan, todo, opts, con)


def _lock(out):
    """An exclusive lock on the sweep directory: a second sweep on the same --out is refused (two
    would run the same points twice and race on their files)."""
    import fcntl
    import os

    f = open(out / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise HpcError(f"another hpc sweep (pid {holder}) is running in {out}; wait for it or use "
                       "another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
