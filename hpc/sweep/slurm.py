"""The Slurm side of `hpc sweep`: one sbatch job per point, chained, waited for, collected.

Each rendered script moves its point's records into `points/` itself when the job succeeds (a `run`
workload's script writes its record, ok or failed, through `python -m hpc.sweep.command`), so a
script submitted by hand after `--dry-run` completes the sweep directory just the same. Jobs start in
the directory the sweep was started from, so relative paths in the workload mean what they meant there.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path

from hpc import records
from hpc.errors import HpcError
from hpc.launch import reaper, sbatch, slurm
from hpc.sweep.plan import (Plan, Point, SweepOptions, attempt_file, finish_point, point_env, point_env_fields,
                            point_file)

DEFAULT_TIME = "00:30:00"
TIMED_OUT = 124  # coreutils `timeout`'s exit status: the job's launch ran past the point's limit


def script_for(plan: Plan, pt: Point, tmp: Path, opts: SweepOptions) -> Path:
    """Render and write the sbatch script of one point; return its path."""
    final = point_file(plan, pt).resolve()
    logs = (plan.out / "logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in point_env(plan, pt).items() if k != "HPC_SCALING"}  # the template exports it
    # the workload's ranks run directly inside the job: `timeout` holds them to the point's limit
    # (a `run` workload's wrapper does the same itself, from its job spec)
    wrap = f"timeout --kill-after=15 {math.ceil(opts.point_timeout)} "
    if plan.run is not None:
        spec = plan.out.resolve() / "slurm" / f"{pt.id}.json"
        _write_job_spec(spec, plan, pt, opts, final, logs / f"{pt.id}.log")
        wrap = shlex.join([sys.executable, "-m", "hpc.sweep.command", str(spec), "--"]) + " "
        command = shlex.join(reaper.wrap(plan.run.command))  # per rank: stdin /dev/null, leftovers ended
    else:
        ranks = [sys.executable, "-m", "mpi4py", "-m", "hpc", *plan.workload, "--json", str(tmp.resolve())]
        command = f"{shlex.join(ranks)} && mv -f {shlex.quote(str(tmp.resolve()))} {shlex.quote(str(final))}"
        env["HPC_ARGV"] = json.dumps(["hpc", *plan.workload, "--np", str(pt.np)])
    text = sbatch.render(
        plan.scaling, job_name=job_name(plan, pt), nodes=pt.nodes, ntasks_per_node=pt.np // pt.nodes,
        time=opts.time or DEFAULT_TIME, partition=opts.partition, account=opts.account, workdir=Path.cwd(),
        output=str(logs / f"{pt.id}.out"), error=str(logs / f"{pt.id}.err"), env=env,
        launcher=opts.slurm_launcher, command=command, wrap=wrap, mpirun_flags=list(opts.mpirun_args),
        sbatch_lines=list(opts.sbatch_lines), before=list(opts.before))
    return sbatch.write_script(plan.out / "slurm" / f"{pt.id}.sbatch", text)


def _write_job_spec(path: Path, plan: Plan, pt: Point, opts: SweepOptions, final: Path, log: Path) -> None:
    """What `python -m hpc.sweep.command` needs inside the job to time the point and write its record."""
    assert plan.run is not None
    job = {"run": plan.run.to_json(), "context": dict(point_env_fields(plan, pt), np=pt.np),
           "workload": plan.workload, "argv": records.command_line(), "final": str(final), "log": str(log),
           "timeout": opts.point_timeout}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(job, indent=1) + "\n")
    tmp.replace(path)


def _own_record(final: Path, job_id: str) -> dict | None:
    """The record a `run` job wrote for itself (its provenance names this job), if it got that far."""
    if not final.exists():
        return None
    try:
        recs = records.load(final)
    except HpcError:
        return None
    if recs and (recs[0].get("provenance") or {}).get("slurm_job_id") == str(job_id):
        return recs[0]
    return None


def check_fits(plan: Plan, todo: list[Point], partition: str | None) -> None:
    """Refuse points the cluster cannot hold before submitting anything."""
    info = slurm.cluster_info(partition)
    for pt in todo:
        if pt.np % pt.nodes:
            raise HpcError(f"{pt.np} ranks do not split evenly over {pt.nodes} nodes")
        if pt.nodes > info.nodes:
            raise HpcError(f"{pt.nodes} nodes requested but the cluster has {info.nodes} usable nodes")
        if pt.np // pt.nodes > info.cpus_per_node:
            raise HpcError(f"{pt.np} ranks on {pt.nodes} node(s) need {pt.np // pt.nodes} CPUs per node; "
                           f"the cluster's nodes have {info.cpus_per_node}")


def job_name(plan: Plan, pt: Point) -> str:
    """`hpc-<sweep id>-<point id>`: a rerun finds a killed sweep's jobs by it."""
    return f"hpc-{plan.sweep_id}-{pt.id}"


def progress_lines(con, jobs: dict[str, Point], every_s: float | None = None):
    """An `on_poll` for slurm.wait: every HPC_PROGRESS_S seconds (default 15) one line saying which
    points run, how long the sweep has waited and how many jobs are done or still queued."""
    from hpc import env

    every = every_s if every_s is not None else float(env.get("HPC_PROGRESS_S") or 15)
    start = last = time.monotonic()

    def tick(states: dict[str, slurm.JobState]) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every:
            return
        last = now
        seen = {j: states.get(j) for j in jobs}
        running = [f"np={jobs[j].np} nodes={jobs[j].nodes} rep={jobs[j].rep} (job {j})"
                   for j, st in seen.items() if st is not None and st.state == "RUNNING"]
        done = sum(1 for st in seen.values() if st is not None and st.done)
        con.print(f"  … {now - start:.0f} s: {done}/{len(jobs)} jobs done, {len(jobs) - done - len(running)} "
                  f"queued; running: {', '.join(running) or 'none'}", soft_wrap=True)

    return tick


def run_points(plan: Plan, todo: list[Point], opts: SweepOptions, con) -> int:
    """Submit (or with --dry-run only write) one job per point; wait and collect. Returns failures."""
    from rich.markup import escape

    if not opts.dry_run:
        slurm.require_sbatch()
        check_fits(plan, todo, opts.partition)
    adopted: dict[str, Point] = {}
    if not opts.dry_run:  # jobs of an earlier, killed run of this sweep still queued or running
        names = {job_name(plan, pt): pt for pt in todo}
        adopted = {job: names[name] for job, name in slurm.find_jobs(f"hpc-{plan.sweep_id}-").items()
                   if name in names}
        if adopted:
            con.print(f"waiting for {len(adopted)} job(s) an earlier run of this sweep left queued: "
                      f"{', '.join(adopted)}")
    todo = [pt for pt in todo if pt not in adopted.values()]
    tmp_files = {pt: attempt_file(point_file(plan, pt)) for pt in todo}
    scripts = {pt: script_for(plan, pt, tmp_files[pt], opts) for pt in todo}
    if opts.dry_run:
        if not scripts:
            con.print("nothing to write: every point is done")
            return 0
        con.print(f"wrote {len(scripts)} scripts, submit with:")
        for path in scripts.values():
            con.print(f"  sbatch {shlex.quote(str(path))}", soft_wrap=True, markup=False, highlight=False)
        return 0
    jobs: dict[str, Point] = dict(adopted)
    previous = max(adopted, key=int) if adopted and all(j.isdigit() for j in adopted) else None
    try:  # Ctrl-C or SIGTERM at any point from the first submission on cancels what was submitted
        for pt, path in scripts.items():
            dep = None if opts.no_chain or previous is None else f"afterany:{previous}"
            previous = slurm.submit(path, dependency=dep)
            jobs[previous] = pt
        con.print(f"submitted {len(jobs) - len(adopted)} job(s): "
                  f"{', '.join(j for j in jobs if j not in adopted)}")
        states = slurm.wait(jobs, timeout_s=opts.point_timeout * max(1, len(jobs)) + 120,
                            on_poll=progress_lines(con, jobs))
    except KeyboardInterrupt:
        slurm.cancel(jobs)
        raise
    except slurm.SlurmTimeout as exc:
        slurm.cancel(jobs)
        states = exc.states
    failed = 0
    for job_id, pt in jobs.items():
        state = states.get(job_id)
        final = point_file(plan, pt)
        tmp = tmp_files.get(pt) or final.with_name(final.name + ".adopted.tmp")
        own = _own_record(final, job_id) if plan.run is not None else None
        if own is not None:
            status, error = own.get("status", "failed"), own.get("error")
        elif state is not None and state.ok and final.exists() and plan.run is None:
            status, error = "ok", None
        else:
            limit = state is not None and state.exit_code == TIMED_OUT
            why = (f"Slurm job {job_id} did not finish within {opts.point_timeout:g} s (the point's limit)"
                   if limit else slurm.error_line(state) if state is not None else f"Slurm job {job_id} lost")
            late = limit or (state is not None and state.state in ("TIMEOUT", "RUNNING", "PENDING"))
            bad = "timeout" if late else "failed"
            status, error = finish_point(plan, pt, tmp, bad, why)
        failed += status != "ok"
        colour = "green" if status == "ok" else "red"
        con.print(f"  np={pt.np:<3} nodes={pt.nodes} rep={pt.rep} job {job_id} [{colour}]{status}[/]"
                  + (f"  {escape(error)}" if error else ""), soft_wrap=True)
    return failed
