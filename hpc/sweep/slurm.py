"""The Slurm side of `hpc sweep`: one sbatch job per point, chained, waited for, collected.

Each rendered script moves its point's records into `points/` itself when the job succeeds, so a
script submitted by hand after `--dry-run` completes the sweep directory just the same.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from hpc.launch import slurm
from hpc.errors import HpcError
from hpc.sweep.plan import Plan, Point, SweepOptions, attempt_file, finish_point, point_env, point_file


def script_for(plan: Plan, pt: Point, tmp: Path, opts: SweepOptions) -> Path:
    """Render and write the sbatch script of one point; return its path."""
    final = point_file(plan, pt)
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    ranks = [sys.executable, "-m", "mpi4py", "-m", "hpc", *plan.workload, "--json", str(tmp.resolve())]
    command = f"{shlex.join(ranks)} && mv -f {shlex.quote(str(tmp.resolve()))} {shlex.quote(str(final.resolve()))}"
    env = dict(point_env(plan, pt))
    env["HPC_ARGV"] = json.dumps(["hpc", *plan.workload, "--np", str(pt.np)])
    text = slurm.render(
        plan.scaling, job_name=f"hpc-{pt.id}", nodes=pt.nodes, ntasks_per_node=pt.np // pt.nodes,
        time=opts.time, partition=opts.partition, account=opts.account, workdir=plan.out.resolve(),
        output=f"logs/{pt.id}.out", error=f"logs/{pt.id}.err", env=env,
        launcher=opts.slurm_launcher, command=command)
    return slurm.write_script(plan.out / "slurm" / f"{pt.id}.sbatch", text)


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


def run_points(plan: Plan, todo: list[Point], opts: SweepOptions, con) -> int:
    """Submit (or with --dry-run only write) one job per point; wait and collect. Returns failures."""
    if not opts.dry_run:
        slurm.require_sbatch()
        check_fits(plan, todo, opts.partition)
    tmp_files = {pt: attempt_file(point_file(plan, pt)) for pt in todo}
    scripts = {pt: script_for(plan, pt, tmp_files[pt], opts) for pt in todo}
    if opts.dry_run:
        con.print(f"wrote {len(scripts)} sbatch script(s); submit them with:")
        for path in scripts.values():
            con.print(f"  sbatch {path}", soft_wrap=True)
        return 0
    jobs: dict[str, Point] = {}
    previous = None
    for pt, path in scripts.items():
        dep = None if opts.no_chain or previous is None else f"afterany:{previous}"
        previous = slurm.submit(path, dependency=dep)
        jobs[previous] = pt
    con.print(f"submitted {len(jobs)} job(s): {', '.join(jobs)}")
    try:
        states = slurm.wait(jobs, timeout_s=opts.point_timeout * max(1, len(jobs)) + 120)
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
        tmp = tmp_files[pt]
        if state is not None and state.ok and final.exists():
            status, error = "ok", None
        else:
            why = slurm.error_line(state) if state is not None else f"Slurm job {job_id} lost"
            bad = "timeout" if state is not None and state.state in ("TIMEOUT", "RUNNING", "PENDING") else "failed"
            status, error = finish_point(plan, pt, tmp, bad, why)
        failed += status != "ok"
        colour = "green" if status == "ok" else "red"
        con.print(f"  np={pt.np:<3} nodes={pt.nodes} rep={pt.rep} job {job_id} [{colour}]{status}[/]"
                  + (f"  {error}" if error else ""), soft_wrap=True)
    return failed
