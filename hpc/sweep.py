"""`hpc sweep strong|weak`: run a workload over rank counts, locally or through Slurm, resumably.

A sweep directory holds `sweep.json` (what the sweep is), `points/<point>.jsonl` (one file per
finished point, moved into place atomically, so a killed sweep loses and duplicates nothing),
`logs/` and, for Slurm, `slurm/<point>.sbatch`. Running the same command again skips the points
that finished ok and retries the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hpc import launch, records
from hpc.errors import HpcError

WORKLOADS = {"bench": "collective", "train": "train"}
MANIFEST = "sweep.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="strong/weak scaling sweep of a workload over rank counts",
                       description="Run WORKLOAD (an hpc command line without --np, e.g. `bench "
                       "collective --algo ring,mpi --sizes 1MB:4MB` or `train --sync ring --model mlp`) "
                       "at every rank count, locally with mpirun or through Slurm.")
    p.add_argument("scaling", choices=("strong", "weak"),
                   help="strong: fixed global problem split over N ranks; weak: fixed problem per rank")
    p.add_argument("--np", required=True, metavar="N,N,...", help="rank counts, increasing (e.g. 1,2,4)")
    p.add_argument("--nodes", default="1", metavar="K,K,...", help="node counts (Slurm; default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (resumable)")
    p.add_argument("--reps", type=int, default=1, help="repetitions of every point (default 1)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--point-timeout", type=float, default=900.0, metavar="S",
                   help="a point running longer is killed and recorded as timeout (default 900)")
    p.add_argument("--dry-run", action="store_true",
                   help="slurm: write the sbatch scripts and stop; submit them by hand with sbatch")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--account", help="slurm account")
    p.add_argument("--time", default="00:30:00", help="slurm time limit per point (default 00:30:00)")
    p.add_argument("--slurm-launcher", choices=("mpirun", "srun"), default="mpirun",
                   help="how a Slurm job starts its ranks (default mpirun)")
    p.add_argument("--no-chain", action="store_true",
                   help="slurm: let points run concurrently (default: one after another, afterany)")
    p.add_argument("workload", nargs="*", metavar="WORKLOAD",
                   help="the hpc command to run at every point, without --np")
    p.set_defaults(func=run)
    _VALUE_OPTIONS.update(s for a in p._actions for s in a.option_strings if a.nargs != 0)


_VALUE_OPTIONS: set[str] = set()


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `sweep [options] SCALING [options] WORKLOAD...` before argparse sees it.

    The workload has options of its own (--algo ...), which argparse would take for the sweep's.
    """
    i, seen_scaling = 1, False
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1:]
        if tok in _VALUE_OPTIONS:
            i += 2
        elif tok.startswith("-"):
            i += 1
        elif not seen_scaling:
            seen_scaling, i = True, i + 1
        else:
            return argv[:i], argv[i:]
    return argv, []


@dataclass(frozen=True)
class Point:
    """One (rank count, node count, repetition) of a sweep."""

    np: int
    nodes: int
    rep: int

    @property
    def id(self) -> str:
        return f"np{self.np:04d}-nodes{self.nodes:03d}-rep{self.rep:02d}"


@dataclass(frozen=True)
class Plan:
    """What to run: the sweep's identity, its points, and the workload command line."""

    sweep_id: str
    scaling: str
    workload: list[str]
    kind: str
    points: list[Point]
    out: Path


def parse_counts(text: str, what: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4]; empty, non-positive or non-increasing lists are errors."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HpcError(f"--{what} must be comma-separated integers, got '{text}'") from None
    if not counts:
        raise HpcError(f"--{what} is empty")
    if min(counts) < 1:
        raise HpcError(f"--{what} values must be >= 1, got '{text}'")
    if any(b <= a for a, b in zip(counts, counts[1:])):
        raise HpcError(f"--{what} must be strictly increasing, got '{text}'")
    return counts


def check_workload(workload: Sequence[str]) -> str:
    """The record kind the workload writes; an unknown or malformed workload is an error now, not later."""
    from hpc.cli import build_parser

    words = list(workload)
    if words and words[0] == "hpc":
        words = words[1:]
    if not words or words[0] not in WORKLOADS:
        raise HpcError(f"unknown workload '{' '.join(words) or '(none)'}': expected `bench collective "
                       "...` or `train ...` after the sweep options")
    if any(w == "--np" or w.startswith("--np=") for w in words):
        raise HpcError("the workload must not contain --np: the sweep sets it per point")
    if any(w == "--json" or w.startswith("--json=") for w in words):
        raise HpcError("the workload must not contain --json: the sweep writes the records")
    build_parser().parse_args(words)  # a typo exits with one line before anything runs
    return WORKLOADS[words[0]]


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate the command line and the --out directory; return the points to run."""
    nps = parse_counts(args.np, "np")
    nodes = parse_counts(args.nodes, "nodes") if args.launcher == "slurm" else [1]
    if args.reps < 1:
        raise HpcError("--reps must be >= 1")
    workload = list(args.workload)
    kind = check_workload(workload)
    workload = workload[1:] if workload[0] == "hpc" else workload
    out = Path(args.out)
    identity = {"scaling": args.scaling, "workload": workload}
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            raise HpcError(f"{manifest} is unreadable: not an hpc sweep directory") from None
        if {k: old.get(k) for k in identity} != identity:
            raise HpcError(f"{out} holds a different sweep ({old.get('scaling')}: "
                           f"{shlex.join(old.get('workload') or [])}); use another --out")
        sweep_id = old["sweep_id"]
    else:
        if out.exists() and any(out.iterdir()):
            raise HpcError(f"{out} exists and is not an hpc sweep directory; use another --out")
        sweep_id = uuid.uuid4().hex[:12]
    points = [Point(n, k, r) for k in nodes for n in nps for r in range(args.reps) if n >= k and n % k == 0]
    if not points:
        raise HpcError("no rank count splits evenly over the node counts: check --np and --nodes")
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(identity, sweep_id=sweep_id, np=nps, nodes=nodes, reps=args.reps,
                launcher=args.launcher, kind=kind, hpc_argv=records.command_line())
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, manifest)
    return Plan(sweep_id, args.scaling, workload, kind, points, out)


def point_file(plan: Plan, point: Point) -> Path:
    return plan.out / "points" / f"{point.id}{records.SUFFIX}"


def is_done(plan: Plan, point: Point) -> bool:
    """A point is done when its records file exists and every record in it is ok."""
    path = point_file(plan, point)
    if not path.exists():
        return False
    recs = records.load(path)
    return bool(recs) and all(r.get("status") == "ok" for r in recs)


def point_env(plan: Plan, point: Point) -> dict[str, str]:
    """What a workload reads to tag its records and size its problem (strong vs weak)."""
    return {"HPC_SCALING": plan.scaling, "HPC_SWEEP_ID": plan.sweep_id, "HPC_POINT_ID": point.id,
            "HPC_REP": str(point.rep), "HPC_NODES": str(point.nodes)}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    plan = make_plan(args)
    con = Console(highlight=False, soft_wrap=True)
    todo = [pt for pt in plan.points if not is_done(plan, pt)]
    skipped = len(plan.points) - len(todo)
    if skipped:
        con.print(f"resuming {plan.out}: {skipped} of {len(plan.points)} points already done")
    if args.launcher == "slurm":
        from hpc import sweep_slurm

        failed = sweep_slurm.run_points(plan, todo, args, con)
    else:
        failed = run_local(plan, todo, args, con)
    done = len(plan.points) - failed
    con.print(f"sweep {plan.sweep_id}: {done}/{len(plan.points)} points ok; records in "
              f"{plan.out / 'points'}")
    return 1 if failed else 0


def run_local(plan: Plan, todo: list[Point], args: argparse.Namespace, con) -> int:
    """Run points one after another with mpirun; a failed or hung point is recorded and the sweep goes on."""
    from rich.progress import Progress

    failed = 0
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    with Progress(console=con, transient=True) as progress:
        task = progress.add_task("sweep", total=len(todo))
        for pt in todo:
            progress.update(task, description=f"np={pt.np} rep={pt.rep}")
            status, error, seconds = run_point_local(plan, pt, args.point_timeout)
            failed += status != "ok"
            note = " (oversubscribed)" if pt.np > cores else ""
            colour = "green" if status == "ok" else "red"
            con.print(f"  np={pt.np:<3} rep={pt.rep} [{colour}]{status}[/] {seconds:6.1f} s{note}"
                      + (f"  {error}" if error else ""))
            progress.advance(task)
    return failed


def run_point_local(plan: Plan, pt: Point, timeout: float) -> tuple[str, str | None, float]:
    """One point under mpirun: its records land in points/ only if it finished ok."""
    final = point_file(plan, pt)
    tmp = attempt_file(final)
    env = dict(os.environ, **point_env(plan, pt))
    env["HPC_ARGV"] = json.dumps(["hpc", *plan.workload, "--np", str(pt.np)])
    log_path = plan.out / "logs" / f"{pt.id}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        result = launch.run(pt.np, [*plan.workload, "--json", str(tmp)], timeout=timeout, log=log, env=env)
    seconds = time.monotonic() - start
    error = launch.describe_failure(result, pt.np, timeout)
    return finish_point(plan, pt, tmp, "timeout" if result.timed_out else "failed", error) + (seconds,)


def attempt_file(final: Path) -> Path:
    """A records file of this attempt only: a leftover job of a killed sweep can never write into it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(final.name + ".*.tmp"):
        stale.unlink(missing_ok=True)
    return final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.tmp")


def finish_point(plan: Plan, pt: Point, tmp: Path, bad_status: str, error: str | None) -> tuple[str, str | None]:
    """Move a finished point's records into place, or record why it failed (replacing older tries)."""
    final = point_file(plan, pt)
    if error is None and tmp.exists() and records.load(tmp):
        os.replace(tmp, final)
        return "ok", None
    error = error or "the workload wrote no records"
    tmp.unlink(missing_ok=True)
    rec = records.new(plan.kind, pt.np, status=bad_status, error=error, time_s=None, times_s=[],
                      workload=plan.workload, provenance=records.provenance(None, records.command_line()))
    rec.update(point_env_fields(plan, pt))
    part = final.with_name(final.name + ".part")
    part.unlink(missing_ok=True)
    records.append(part, [rec])
    os.replace(part, final)
    return bad_status, error


def point_env_fields(plan: Plan, pt: Point) -> dict[str, Any]:
    return {"scaling": plan.scaling, "sweep_id": plan.sweep_id, "point_id": pt.id, "rep": pt.rep,
            "nodes": pt.nodes}
