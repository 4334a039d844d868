"""The local side of a sweep: every point under mpirun on this machine, one after another.

`hpc` workloads (bench, train) write their own records; a `run` workload's program is started with
`mpirun.run_command` and its record is made here from its output (hpc.sweep.command).
"""

from __future__ import annotations

import json
import os
import time

from hpc import records
from hpc.errors import HpcError
from hpc.launch import mpirun
from hpc.sweep import command
from hpc.sweep.plan import (Plan, Point, SweepOptions, attempt_file, finish_point, point_env, point_env_fields,
                            point_file)


def run_points(plan: Plan, todo: list[Point], opts: SweepOptions, con) -> int:
    """Run points one after another with mpirun; a failed or hung point is recorded and the sweep goes on."""
    from rich.markup import escape
    from rich.progress import Progress

    failed = 0
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    with Progress(console=con, transient=True) as progress:
        task = progress.add_task("sweep", total=len(todo))
        for pt in todo:
            progress.update(task, description=f"np={pt.np} rep={pt.rep}")
            run = run_program if plan.kind == "run" else run_point
            status, error, seconds = run(plan, pt, opts.point_timeout, opts.mpirun_args)
            failed += status != "ok"
            note = " (oversubscribed)" if pt.np > cores else ""
            colour = "green" if status == "ok" else "red"
            con.print(f"  np={pt.np:<3} rep={pt.rep} [{colour}]{status}[/] {seconds:6.1f} s{note}"
                      + (f"  {escape(error)}" if error else ""))
            progress.advance(task)
    return failed


def run_point(plan: Plan, pt: Point, timeout: float, extra: tuple[str, ...] = ()) -> tuple[str, str | None, float]:
    """One point under mpirun: its records land in points/ only if it finished ok."""
    final = point_file(plan, pt)
    tmp = attempt_file(final)
    env = dict(os.environ, **point_env(plan, pt))
    env["HPC_ARGV"] = json.dumps(["hpc", *plan.workload, "--np", str(pt.np)])
    log_path = plan.out / "logs" / f"{pt.id}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        result = mpirun.run(pt.np, [*plan.workload, "--json", str(tmp)], timeout=timeout, log=log, env=env,
                            extra=extra)
    seconds = time.monotonic() - start
    error = mpirun.describe_failure(result, pt.np, timeout)
    return finish_point(plan, pt, tmp, "timeout" if result.timed_out else "failed", error) + (seconds,)


def run_program(plan: Plan, pt: Point, timeout: float, extra: tuple[str, ...] = ()) -> tuple[str, str | None, float]:
    """One point of a `run` workload: the program under mpirun, its output in logs/, its record in points/."""
    assert plan.run is not None
    env = dict(os.environ, **point_env(plan, pt))
    log_path = plan.out / "logs" / f"{pt.id}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            result = mpirun.run_command(pt.np, plan.run.command, timeout=timeout, log=log, env=env, extra=extra)
            code, timed_out = result.returncode, result.timed_out
        except HpcError as exc:  # mpirun itself could not start: the point failed, the sweep goes on
            log.write(f"{exc}\n")
            code, timed_out = 127, False
    seconds = time.monotonic() - start
    output = log_path.read_text(errors="replace")
    figure = command.measure(plan.run, np=pt.np, scaling=plan.scaling, seconds=seconds, returncode=code,
                             timed_out=timed_out, timeout=timeout, output=output)
    context = dict(point_env_fields(plan, pt), np=pt.np)
    rec = command.record(plan.run, context, figure, plan.workload, records.command_line(), mpirun.version_line())
    command.write_point(point_file(plan, pt), [rec])
    return rec["status"], rec["error"], seconds
