"""The local side of a sweep: every point under mpirun on this machine, one after another."""

from __future__ import annotations

import json
import os
import time

from hpc.launch import mpirun
from hpc.sweep.plan import Plan, Point, SweepOptions, attempt_file, finish_point, point_env, point_file


def run_points(plan: Plan, todo: list[Point], opts: SweepOptions, con) -> int:
    """Run points one after another with mpirun; a failed or hung point is recorded and the sweep goes on."""
    from rich.progress import Progress

    failed = 0
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    with Progress(console=con, transient=True) as progress:
        task = progress.add_task("sweep", total=len(todo))
        for pt in todo:
            progress.update(task, description=f"np={pt.np} rep={pt.rep}")
            status, error, seconds = run_point(plan, pt, opts.point_timeout)
            failed += status != "ok"
            note = " (oversubscribed)" if pt.np > cores else ""
            colour = "green" if status == "ok" else "red"
            con.print(f"  np={pt.np:<3} rep={pt.rep} [{colour}]{status}[/] {seconds:6.1f} s{note}"
                      + (f"  {error}" if error else ""))
            progress.advance(task)
    return failed


def run_point(plan: Plan, pt: Point, timeout: float) -> tuple[str, str | None, float]:
    """One point under mpirun: its records land in points/ only if it finished ok."""
    final = point_file(plan, pt)
    tmp = attempt_file(final)
    env = dict(os.environ, **point_env(plan, pt))
    env["HPC_ARGV"] = json.dumps(["hpc", *plan.workload, "--np", str(pt.np)])
    log_path = plan.out / "logs" / f"{pt.id}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        result = mpirun.run(pt.np, [*plan.workload, "--json", str(tmp)], timeout=timeout, log=log, env=env)
    seconds = time.monotonic() - start
    error = mpirun.describe_failure(result, pt.np, timeout)
    return finish_point(plan, pt, tmp, "timeout" if result.timed_out else "failed", error) + (seconds,)
