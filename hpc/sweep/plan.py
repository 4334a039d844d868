"""What a sweep runs: its points, its directory, and how a finished or failed point is stored.

A sweep directory holds `sweep.json` (what the sweep is), `points/<point>.jsonl` (one file per
finished point, moved into place atomically, so a killed sweep loses and duplicates nothing),
`logs/` and, for Slurm, `slurm/<point>.sbatch`. Running the same command again skips the points
that finished ok and retries the rest.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hpc import records
from hpc.errors import HpcError
from hpc.sweep.command import RunSpec

# first word of a workload -> the kind of record it writes (`run`: any program, see hpc.sweep.command)
WORKLOADS = {"bench": "collective", "train": "train", "run": "run"}
MANIFEST = "sweep.json"


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
    run: RunSpec | None = None  # kind "run": the program and how its figure is read


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
    words = list(workload)
    if words and words[0] == "hpc":
        words = words[1:]
    if not words or words[0] not in WORKLOADS:
        raise HpcError(f"unknown workload '{' '.join(words) or '(none)'}': expected `bench collective "
                       "...`, `train ...` or `run [--metric REGEX] -- COMMAND ...` after the sweep options")
    if words[0] == "run":
        return "run"  # any program: its own options are its business (it may well take --np)
    if any(w == "--np" or w.startswith("--np=") for w in words):
        raise HpcError("the workload must not contain --np: the sweep sets it per point")
    if any(w == "--json" or w.startswith("--json=") for w in words):
        raise HpcError("the workload must not contain --json: the sweep writes the records")
    return WORKLOADS[words[0]]


def workload_timeout(workload: Sequence[str]) -> float | None:
    """The workload's own `--timeout S`, if it has one. Inside a sweep point the workload runs on its
    ranks directly (nothing re-launches it), so the sweep enforces it: the smaller of it and
    --point-timeout bounds the point, locally and in the Slurm job."""
    words = list(workload)
    for i, w in enumerate(words):
        value = words[i + 1] if w == "--timeout" and i + 1 < len(words) else \
            w.split("=", 1)[1] if w.startswith("--timeout=") else None
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None  # the workload's own parser says so, in its words
    return None


@dataclass(frozen=True)
class SweepOptions:
    """Everything a sweep needs besides its workload; the CLI builds it once from its flags."""

    scaling: str
    nps: list[int]
    out: Path
    nodes: list[int] = field(default_factory=lambda: [1])
    reps: int = 1                      # with reps_auto: the first repetitions of every point
    reps_auto: bool = False            # --reps auto: add repetitions where the verdicts are not clear yet
    max_reps: int | None = None        # auto: most repetitions of a point (default AUTO_MAX_REPS)
    max_time: float | None = None      # auto: no new repetition after this many seconds (default: none)
    launcher: str = "local"
    point_timeout: float = 900.0
    dry_run: bool = False
    partition: str | None = None
    account: str | None = None
    time: str | None = None  # Slurm: per point; None = 00:30:00
    slurm_launcher: str = "mpirun"
    no_chain: bool = False
    run: RunSpec | None = None  # the `run` workload, parsed (the workload words are then ignored)
    mpirun_args: tuple[str, ...] = ()  # extra mpirun arguments (local and Slurm)
    sbatch_lines: tuple[str, ...] = ()  # Slurm: extra `#SBATCH ...` lines
    before: tuple[str, ...] = ()  # Slurm: shell commands run before the launch (module load ...)


# `hpc sweep --reps auto`: AUTO_MIN_REPS repetitions of every point, then one more round for each rank and
# node count whose verdicts (hpc.analysis.ranking.undecided) are not clear, up to AUTO_MAX_REPS.
AUTO_MIN_REPS = 3
AUTO_MAX_REPS = 10


# Options that only mean something with --launcher slurm: given with local they are refused, not ignored.
SLURM_ONLY = {"partition": "--partition", "account": "--account", "time": "--time",
              "sbatch_lines": "--sbatch-line/--sbatch-arg", "before": "--before", "dry_run": "--dry-run",
              "no_chain": "--no-chain"}
# Slurm sets these itself from the point; an extra #SBATCH line must not contradict it.
SBATCH_OWN = ("--nodes", "-N", "--ntasks", "-n", "--ntasks-per-node", "--job-name", "-J", "--output", "-o",
              "--error", "-e", "--chdir", "-D")


def check_options(opts: SweepOptions) -> None:
    """Refuse options the chosen launcher would ignore, and malformed Slurm additions."""
    if opts.launcher != "slurm":
        given = [flag for key, flag in SLURM_ONLY.items() if getattr(opts, key)]
        if list(opts.nodes) != [1]:
            given.insert(0, "--nodes")
        if opts.slurm_launcher != "mpirun":
            given.append("--slurm-launcher")
        if given:
            raise HpcError(f"{', '.join(given)} only apply with --launcher slurm; the local launcher "
                           "runs every point on this machine")
    if opts.mpirun_args and opts.slurm_launcher != "mpirun":
        raise HpcError("--mpirun-arg needs --slurm-launcher mpirun (srun starts the ranks itself)")
    for line in opts.sbatch_lines:
        words = line.split()
        if "\n" in line or len(words) < 2 or words[0] != "#SBATCH" or not words[1].startswith("-"):
            raise HpcError(f"--sbatch-line {line!r} must be one line like '#SBATCH --gres=gpu:4'")
        if words[1].split("=", 1)[0] in SBATCH_OWN:
            raise HpcError(f"--sbatch-line {line!r}: the sweep sets {words[1].split('=', 1)[0]} itself "
                           "from --np/--nodes/--out")
    for cmd in opts.before:
        if not cmd.strip() or "\n" in cmd:
            raise HpcError(f"--before {cmd!r} must be one non-empty shell command line")


def make_plan(opts: SweepOptions, workload: Sequence[str],
              validate: Callable[[list[str]], None] | None = None) -> Plan:
    """Validate the workload and the --out directory; return the points to run.

    `validate` (the CLI's parser) may reject a malformed workload before anything runs.
    """
    check_options(opts)
    nodes = opts.nodes if opts.launcher == "slurm" else [1]
    if opts.reps < 1:
        raise HpcError("--reps must be >= 1")
    if not opts.reps_auto and (opts.max_reps is not None or opts.max_time is not None):
        raise HpcError("--max-reps and --max-time bound --reps auto; give --reps auto too")
    if opts.reps_auto and opts.dry_run:
        raise HpcError("--reps auto decides from the results as they come; it cannot write scripts only "
                       "(--dry-run): give a number of --reps")
    if not opts.nps or min(opts.nps) < 1:
        raise HpcError("--np needs rank counts >= 1")
    workload = opts.run.workload() if opts.run is not None else list(workload)
    kind = check_workload(workload)
    workload = workload[1:] if workload[0] == "hpc" else workload
    if kind == "run" and opts.run is None:
        raise HpcError("a run workload is given parsed: SweepOptions(run=RunSpec(command, metric=...))")
    if validate is not None and kind != "run":
        validate(workload)
    out = Path(opts.out)
    nps, reps, scaling = opts.nps, opts.reps, opts.scaling
    identity = {"scaling": scaling, "workload": workload}
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
    # repetitions outermost: rep r of every point runs before rep r+1 of any, so a point's repetitions
    # are spread over the sweep's time and see the machine's drift instead of one moment of it
    points = [Point(n, k, r) for r in range(reps) for k in nodes for n in nps if n >= k and n % k == 0]
    if not points:
        raise HpcError("no rank count splits evenly over the node counts: check --np and --nodes")
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(identity, sweep_id=sweep_id, np=nps, nodes=nodes, reps="auto" if opts.reps_auto else reps,
                launcher=opts.launcher, kind=kind, hpc_argv=records.command_line())
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, manifest)
    return Plan(sweep_id, scaling, workload, kind, points, out, opts.run)


def point_file(plan: Plan, point: Point) -> Path:
    return plan.out / "points" / f"{point.id}{records.SUFFIX}"


def is_done(plan: Plan, point: Point) -> bool:
    """A point is done when its records file exists and every record in it is ok and was measured for
    this very point: this sweep, this rank count, this point id (a file copied in from another point
    or another sweep is not a finished point; it is run again and replaced)."""
    path = point_file(plan, point)
    if not path.exists():
        return False
    try:
        recs = records.load(path)
    except HpcError:  # unusable records: the point is run again (and its file replaced)
        return False
    return bool(recs) and all(r.get("status") == "ok" and r.get("np") == point.np
                              and r.get("point_id") == point.id and r.get("sweep_id") == plan.sweep_id
                              for r in recs)


def point_env(plan: Plan, point: Point) -> dict[str, str]:
    """What a workload reads to tag its records and size its problem (strong vs weak)."""
    return {"HPC_SCALING": plan.scaling, "HPC_SWEEP_ID": plan.sweep_id, "HPC_POINT_ID": point.id,
            "HPC_REP": str(point.rep), "HPC_NODES": str(point.nodes)}


def attempt_file(final: Path) -> Path:
    """A records file of this attempt only: a leftover job of a killed sweep can never write into it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(final.name + ".*.tmp"):
        stale.unlink(missing_ok=True)
    return final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.tmp")


def finish_point(plan: Plan, pt: Point, tmp: Path, bad_status: str, error: str | None) -> tuple[str, str | None]:
    """Move a finished point's records into place, or record why it failed (replacing older tries).

    A failed point keeps what its workload finished before the failure (bench writes each size's
    records as it goes), followed by the failure record: the point is still retried on resume.
    """
    final = point_file(plan, pt)
    kept = records.load(tmp) if tmp.exists() else []
    if error is None and kept:
        os.replace(tmp, final)
        return "ok", None
    error = error or "the workload wrote no records"
    tmp.unlink(missing_ok=True)
    rec = records.new(plan.kind, pt.np, status=bad_status, error=error, time_s=None, times_s=[],
                      workload=plan.workload, provenance=records.provenance(None, records.command_line()))
    rec.update(point_env_fields(plan, pt))
    if plan.run is not None:  # what analysis names a run point by, even when the job left no record
        rec.update(name=plan.run.label, args=plan.run.args, command=list(plan.run.command), unit=plan.run.figure_unit,
                   higher_is_better=plan.run.higher_better)
    part = final.with_name(final.name + ".part")
    part.unlink(missing_ok=True)
    records.append(part, [*kept, rec])
    os.replace(part, final)
    return bad_status, error


def point_env_fields(plan: Plan, pt: Point) -> dict[str, Any]:
    return {"scaling": plan.scaling, "sweep_id": plan.sweep_id, "point_id": pt.id, "rep": pt.rep,
            "nodes": pt.nodes}
