"""The `run` workload: any program on N ranks, its figure read from its own output, one `kind: run` record.

    hpc sweep strong --np 1,2,4 --out runs/c run --metric 'time: ([0-9.eE+-]+) s' -- ./pi 100000000

The figure is the first group of `--metric` in the last line of the program's output (stdout and
stderr together) that matches; without `--metric` it is the wall time of the launch. The scaling
laws want a time, so every record has `time_s`:

- a time figure (the default; `--unit` s, ms, us, ns, min or h) is converted to seconds;
- a throughput X (`--higher-better`) is stored as it was printed (`value`, `unit`) and as the
  equivalent time of the point's work, `time_s = work / X` with work = 1 (strong: the fixed total
  problem) or N (weak: N ranks' worth), so that T(1)/T(N) = X(N)/X(1) for strong scaling and
  N·T(1)/T(N) = X(N)/X(1) for weak scaling: Amdahl, Gustafson, compare and plot apply unchanged.
  The record says so in `time_s_is`.

Locally the sweep calls `run_local`; on Slurm the sbatch script runs `python -m hpc.sweep.command
SPEC.json -- LAUNCH... PROGRAM...`, which does the same inside the job and writes the point's record.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hpc import records
from hpc.errors import HpcError

# Units a lower-is-better figure may be given in, and their size in seconds.
TIME_UNITS = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
TAIL_LINES = 20  # output lines kept in a failed record's `output_tail`
ERROR_LINES = 5  # of which the last few also go into its one-line `error`
INTERPRETERS = ("python", "python3", "pypy", "pypy3", "bash", "sh", "julia", "Rscript", "node", "perl", "env")


@dataclass(frozen=True)
class RunSpec:
    """What `run` starts on every point and how it reads the figure; checked when built."""

    command: tuple[str, ...]
    metric: str | None = None
    higher_better: bool = False
    unit: str | None = None
    name: str | None = None
    pattern: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(str(c) for c in self.command))
        if not self.command or not self.command[0]:
            raise HpcError("run needs a command after --, e.g. "
                           "`run --metric 'time: ([0-9.eE+-]+)' -- ./a.out ARGS`")
        if self.higher_better and self.metric is None:
            raise HpcError("--higher-better needs --metric: without it the figure is the wall time")
        if self.unit is not None and self.metric is None:
            raise HpcError("--unit needs --metric: without it the figure is the wall time in s")
        if self.metric is not None:
            object.__setattr__(self, "pattern", compile_metric(self.metric))
        if self.unit is not None and (not self.unit.strip() or "\n" in self.unit):
            raise HpcError(f"--unit {self.unit!r} is not a unit name")

    @property
    def figure_unit(self) -> str:
        """The unit the figure is printed in: --unit, else s for times and 1/s for throughputs."""
        return self.unit or ("1/s" if self.higher_better else "s")

    def _program_index(self) -> int:
        """Index of the word that names the program: the script after an interpreter, else the first."""
        if re.sub(r"[\d.]+$", "", os.path.basename(self.command[0])) in INTERPRETERS:
            for i, w in enumerate(self.command[1:], 1):
                if not w.startswith("-") and "=" not in w:
                    return i
        return 0

    @property
    def label(self) -> str:
        """Short name of the program for tables: --name, else the program (or script) file name."""
        return self.name or os.path.basename(self.command[self._program_index()])

    @property
    def args(self) -> str:
        """The program's own arguments (what else must match for points to be one curve)."""
        return shlex.join(self.command[self._program_index() + 1:])

    def workload(self) -> list[str]:
        """The canonical `run ... -- COMMAND` words: a sweep's identity in sweep.json."""
        words = ["run"]
        if self.metric is not None:
            words += ["--metric", self.metric]
        if self.higher_better:
            words.append("--higher-better")
        if self.unit is not None:
            words += ["--unit", self.unit]
        if self.name is not None:
            words += ["--name", self.name]
        return [*words, "--", *self.command]

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "pattern"} | {"command": list(self.command)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSpec":
        return cls(tuple(data["command"]), data.get("metric"), bool(data.get("higher_better")),
                   data.get("unit"), data.get("name"))


def compile_metric(regex: str) -> re.Pattern:
    """The --metric pattern; an invalid one, or one without a group, is one clear error now."""
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise HpcError(f"--metric {regex!r} is not a valid regular expression: {exc}") from None
    if pattern.groups < 1:
        raise HpcError(f"--metric {regex!r} has no group: put the number in parentheses, "
                       "e.g. 'time: ([0-9.eE+-]+)'")
    return pattern


def find_figure(output: str, pattern: re.Pattern) -> tuple[float | None, str | None, str | None]:
    """(value, matching line, problem): the first group of the last line that matches."""
    for line in reversed(output.splitlines()):
        m = pattern.search(line)
        if m is None or m.group(1) is None:
            continue
        text = m.group(1).strip()
        try:
            value = float(text)
        except ValueError:
            return None, line.strip(), f"--metric matched {line.strip()!r} but {text!r} is not a number"
        if not math.isfinite(value) or value <= 0:
            return None, line.strip(), f"the figure in {line.strip()!r} is {text}, not a positive number"
        return value, line.strip(), None
    return None, None, f"no output line matches --metric {pattern.pattern!r}"


def output_tail(output: str, n: int = TAIL_LINES) -> list[str]:
    """The last n non-empty lines of the program's output (launcher banners' dashes dropped)."""
    lines = [ln.replace("\x00", "").rstrip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not re.fullmatch(r"\s*-{10,}\s*", ln)]
    return lines[-n:]


_LAUNCHER_LINE = re.compile(r"^\[[\w.-]+:\d+\] |PMIX ERROR|^prterun |^mpirun |^srun: ")


def summary_lines(output: str, n: int = ERROR_LINES) -> list[str]:
    """The last lines that say what went wrong: the program's own, else the launcher's message.

    Open MPI wraps its messages in dashed blocks and adds `[host:pid]` lines after a rank fails;
    those would push the program's last words out of a short summary.
    """
    own, launcher, block = [], [], False
    for raw in output.splitlines():
        line = raw.replace("\x00", "").rstrip()
        if re.fullmatch(r"\s*-{10,}\s*", line):
            block = not block
            continue
        if not line.strip():
            continue
        (launcher if block or _LAUNCHER_LINE.search(line) else own).append(line.strip())
    return (own or launcher)[-n:]


def measure(spec: RunSpec, *, np: int, scaling: str, seconds: float, returncode: int | None,
            timed_out: bool, timeout: float | None, output: str) -> dict[str, Any]:
    """The figure fields of one point's record (status ok, failed or timeout, with `error`)."""
    tail = output_tail(output)
    fields: dict[str, Any] = {
        "name": spec.label, "args": spec.args, "command": list(spec.command), "metric": spec.metric,
        "figure": "metric" if spec.metric else "wall time", "unit": spec.figure_unit,
        "higher_is_better": spec.higher_better, "wall_s": seconds, "exit_code": returncode,
        "value": None, "time_s": None, "times_s": [], "metric_line": None,
    }

    def bad(status: str, why: str) -> dict[str, Any]:
        last = " | ".join(summary_lines(output)) or "(no output)"
        return dict(fields, status=status, error=f"{why}; last output: {last}", output_tail=tail)

    if timed_out:
        return bad("timeout", f"{spec.label} on {np} ranks did not finish within {timeout:g} s and was killed")
    if returncode != 0:
        return bad("failed", f"{spec.label} on {np} ranks exited with code {returncode}")
    if spec.pattern is None:
        value = seconds
    else:
        value, line, problem = find_figure(output, spec.pattern)
        fields["metric_line"] = line
        if problem:
            return bad("failed", problem)
    assert value is not None
    time_s, meaning = equivalent_time(spec, value, np, scaling)
    fields.update(value=value, time_s=time_s, times_s=[time_s], time_s_is=meaning, status="ok", error=None)
    return fields


def equivalent_time(spec: RunSpec, value: float, np: int, scaling: str) -> tuple[float, str]:
    """The figure as the time the scaling laws use, and a sentence saying what that time is."""
    unit = spec.figure_unit
    if spec.higher_better:
        work = np if scaling == "weak" else 1
        what = (f"np/value (np={np}): seconds for np units of work, one per rank, at the measured rate "
                "(weak: N·T(1)/T(N) = X(N)/X(1))" if scaling == "weak" else
                "1/value: seconds per unit of the fixed total work at the measured rate "
                "(strong: T(1)/T(N) = X(N)/X(1))")
        return work / value, f"{what}; value in {unit}"
    if spec.pattern is None:
        return value, "wall time of the launch (mpirun/srun start to end), s"
    factor = TIME_UNITS.get(unit)
    if factor is None:
        return value, f"the figure in {unit} (lower is better; taken as proportional to time)"
    return value * factor, f"the figure converted from {unit} to s"


def record(spec: RunSpec, context: dict[str, Any], figure: dict[str, Any], workload: Sequence[str],
           argv: Sequence[str], launcher_version: str | None) -> dict[str, Any]:
    """A whole `kind: run` record: context (scaling, sweep/point id, rep, nodes) + figure + provenance."""
    rec = records.new("run", int(context["np"]), workload=list(workload))
    rec.update({k: v for k, v in context.items() if k != "np"})
    rec.update(figure)
    prov = records.provenance(None, list(argv))
    prov["mpi_library"] = launcher_version
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if nodelist:  # the ranks ran on the job's nodes, not (only) on the batch host writing this record
        prov["slurm_nodelist"] = nodelist
        prov["hosts"] = _allocation_hosts(nodelist) or prov["hosts"]
        prov["hosts_are"] = "the Slurm job's nodes, where its launcher placed the ranks"
    rec["provenance"] = prov
    return rec


def _allocation_hosts(nodelist: str) -> list[str]:
    """The node names of a Slurm node list ("c[1-2]"), [] when scontrol cannot expand it."""
    from hpc.launch import slurm

    try:
        return sorted(set(slurm.hostnames(nodelist)))
    except HpcError:
        return []


def write_point(final: Path, recs: list[dict[str, Any]]) -> None:
    """Replace a point's records file atomically (a part file renamed over it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f"{final.name}.{os.getpid()}.part")
    part.unlink(missing_ok=True)
    records.append(part, recs)
    os.replace(part, final)


# ---- inside a Slurm job: python -m hpc.sweep.command SPEC.json -- LAUNCH... ---------------------------

def job_main(argv: Sequence[str]) -> int:
    """Run the launch command line after `--`, write the point's record, exit 0 only when it is ok."""
    from hpc.launch.mpirun import run_argv, version_line

    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m hpc.sweep.command SPEC.json -- LAUNCH... PROGRAM...\n")
        return 2
    try:
        job = json.loads(Path(argv[0]).read_text())
        spec = RunSpec.from_json(job["run"])
    except (OSError, ValueError, KeyError, HpcError) as exc:
        sys.stderr.write(f"hpc: error: cannot read point spec {argv[0]}: {exc}\n")
        return 2
    launch = list(argv[2:])
    log_path = Path(job["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    timeout = job.get("timeout")
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            result = run_argv(launch, timeout=timeout, log=log)
            code, timed_out = result.returncode, result.timed_out
        except HpcError as exc:
            log.write(f"{exc}\n")
            code, timed_out = 127, False
    seconds = time.monotonic() - start
    output = log_path.read_text(errors="replace")
    figure = measure(spec, np=int(job["context"]["np"]), scaling=job["context"]["scaling"], seconds=seconds,
                     returncode=code, timed_out=timed_out, timeout=timeout, output=output)
    mpirun = launch[0] if os.path.basename(launch[0]).startswith(("mpirun", "mpiexec")) else None
    rec = record(spec, job["context"], figure, job["workload"], job["argv"],
                 version_line(mpirun) if mpirun else None)
    write_point(Path(job["final"]), [rec])
    sys.stderr.write(f"hpc: point {job['context'].get('point_id')}: {rec['status']}"
                     + (f": {rec['error']}" if rec["error"] else "") + "\n")
    return 0 if rec["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]))
