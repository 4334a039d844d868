"""Slurm launcher library: submit sbatch scripts, wait for them, read results (scripts: hpc.launch.sbatch).

Pure library (no CLI verb): `hpc sweep --launcher slurm` calls it. Every call shells out to the
Slurm client tools (sbatch, scontrol, squeue, scancel, sinfo) with a timeout, honours SLURM_CONF
from `env` (or os.environ), and turns any failure into a one-line HpcError.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from hpc.errors import HpcError

CLIENT_TIMEOUT_S = 30.0

# Job states after which a job never runs again (squeue/scontrol long names).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED",
})
@dataclass(frozen=True)
class JobState:
    """What Slurm says about one job: state name, exit code and signal, reason, nodes, output files."""

    job_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    nodes: str | None = None
    stdout: str | None = None
    stderr: str | None = None

    @property
    def done(self) -> bool:
        """True once the job can no longer change (finished, failed, cancelled or forgotten)."""
        return self.state in TERMINAL_STATES or self.state == "UNKNOWN"

    @property
    def ok(self) -> bool:
        """True when the job ran to the end with exit code 0."""
        return self.state == "COMPLETED" and self.exit_code == 0


class ClusterInfo(NamedTuple):
    """Size of the usable part of a cluster, for "more ranks than the cluster has" checks."""

    nodes: int
    cpus_per_node: int
    partitions: list[str]  # default partition first


class SlurmTimeout(HpcError):
    """`wait` ran out of time; `.states` holds the last state seen for every job."""

    def __init__(self, message: str, states: dict[str, JobState]):
        super().__init__(message)
        self.states = states


# ---- talking to Slurm --------------------------------------------------------------------------------

def require_sbatch() -> str:
    """Path of sbatch, or HpcError when Slurm's client tools are not installed."""
    path = shutil.which("sbatch")
    if not path:
        raise HpcError("sbatch not found: Slurm is not installed or not on PATH "
                       "(a local test cluster: slurm/cluster-up.sh)")
    return path


def _run(argv: Sequence[str], env: Mapping[str, str] | None, timeout_s: float = CLIENT_TIMEOUT_S,
         cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run one Slurm client command; HpcError if it cannot start or hangs (non-zero exit is returned)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              env=dict(env) if env is not None else None, cwd=cwd, check=False)
    except FileNotFoundError:
        if argv[0] == "sbatch":
            require_sbatch()
        raise HpcError(f"{argv[0]} not found: Slurm is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise HpcError(f"{shlex.join(argv)} did not answer within {timeout_s:g}s "
                       "(is slurmctld up? is SLURM_CONF right?)") from None


def _first_error_line(proc: subprocess.CompletedProcess) -> str:
    """The most telling line of a failed client command's output."""
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln
    return lines[-1] if lines else f"exit status {proc.returncode}"


def submit(script_path: str | os.PathLike, dependency: str | None = None, array: str | None = None,
           *, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """Submit a batch script with `sbatch --parsable`; return the job id.

    dependency is passed as `--dependency=` (e.g. "afterok:12:13"); a job whose dependency can
    never be met is then cancelled by Slurm (`--kill-on-invalid-dep=yes`). array: e.g. "0-3".
    """
    sbatch = require_sbatch()
    script = Path(script_path).expanduser().resolve()
    if not script.is_file():
        raise HpcError(f"sbatch script not found: {script}")
    argv = [sbatch, "--parsable"]
    if dependency:
        argv += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    if array:
        argv.append(f"--array={array}")
    argv += [*extra_args, str(script)]
    proc = _run(argv, env, cwd=script.parent)
    if proc.returncode != 0:
        raise HpcError(f"sbatch {script.name} failed: {_first_error_line(proc)}")
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0] if proc.stdout.strip() else ""
    if not re.fullmatch(r"\d+", job_id):
        raise HpcError(f"sbatch {script.name} printed no job id: {proc.stdout.strip()!r}")
    return job_id


def _field(line: str, key: str) -> str | None:
    """Value of KEY=VALUE in a one-line `scontrol show job -o` record (None for empty/(null))."""
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", line)
    if not m or m.group(1) in ("", "(null)"):
        return None
    return m.group(1)


def _parse_job_line(line: str) -> JobState:
    """One `scontrol show job -o` line (or a jobcomp/filetxt line) as a JobState."""
    job_id = _field(line, "JobId") or "?"
    task = _field(line, "ArrayTaskId")
    if task is not None:
        job_id = f"{_field(line, 'ArrayJobId')}_{task}"
    code = sig = None
    ec = _field(line, "ExitCode")
    if ec and re.fullmatch(r"\d+:\d+", ec):
        code, sig = (int(x) for x in ec.split(":"))
    reason = _field(line, "Reason")
    return JobState(job_id=job_id, state=(_field(line, "JobState") or "UNKNOWN").split("+")[0],
                    exit_code=code, signal=sig, reason=None if reason == "None" else reason,
                    nodes=_field(line, "NodeList"), stdout=_field(line, "StdOut"),
                    stderr=_field(line, "StdErr"))


def _jobcomp_states(env: Mapping[str, str] | None) -> dict[str, JobState]:
    """Finished jobs from the jobcomp/filetxt log, for jobs scontrol has already forgotten."""
    proc = _run(["scontrol", "show", "config"], env)
    conf = dict(re.findall(r"^(\S+)\s*=\s*(.*?)\s*$", proc.stdout, flags=re.M))
    if conf.get("JobCompType") != "jobcomp/filetxt" or not conf.get("JobCompLoc"):
        return {}
    try:
        text = Path(conf["JobCompLoc"]).read_text(errors="replace")
    except OSError:
        return {}
    states = {}
    for line in text.splitlines():
        if line.startswith("JobId="):
            st = _parse_job_line(line)
            states[st.job_id] = st
    return states


def query(job_id: str, env: Mapping[str, str] | None = None) -> list[JobState]:
    """Current state of a job (one entry per array task); [] when Slurm no longer knows it."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], env)
    if proc.returncode != 0:
        msg = _first_error_line(proc)
        if "Invalid job id" in msg:
            return []
        raise HpcError(f"scontrol show job {job_id} failed: {msg}")
    found = [_parse_job_line(ln) for ln in proc.stdout.splitlines() if ln.startswith("JobId=")]
    return sorted(found, key=lambda st: [int(x) if x.isdigit() else 0 for x in re.split(r"[_\[\]-]", st.job_id)])


def _queue(job_ids: Sequence[str], env: Mapping[str, str] | None) -> dict[str, list[JobState]] | None:
    """One `squeue` call for many jobs: {job id asked for: its entries}; None when squeue failed."""
    asked = set(job_ids)
    out: dict[str, list[JobState]] = {}
    for i in range(0, len(job_ids), 200):
        chunk = job_ids[i:i + 200]
        proc = _run(["squeue", "-h", "-t", "all", "-j", ",".join(chunk), "-o", "%i|%T|%r|%F|%N"], env)
        if proc.returncode != 0:
            if "Invalid job id" in _first_error_line(proc):
                continue  # none of these jobs is known any more
            return None
        for line in proc.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) != 5:
                continue
            entry, state, reason, array_id, nodes = fields
            owner = entry if entry in asked else array_id if array_id in asked else None
            if owner is not None:
                out.setdefault(owner, []).append(JobState(entry if "_" in entry else owner, state,
                                                          reason=None if reason == "None" else reason,
                                                          nodes=nodes or None))
    return out


def wait(job_ids: Iterable[str], timeout_s: float, poll_s: float = 0.2,
         *, env: Mapping[str, str] | None = None,
         on_poll: Callable[[dict[str, JobState]], None] | None = None) -> dict[str, JobState]:
    """Poll until every job is done; return {job id: JobState} (array jobs give one entry per task).

    One squeue call per poll for all jobs; `scontrol show job` once a job has ended, for its exit
    code. A job Slurm has forgotten (older than MinJobAge) is looked up in the jobcomp log, else
    reported as state UNKNOWN. Raises SlurmTimeout (an HpcError carrying `.states`) after timeout_s.
    `on_poll(states)` is called after every poll (progress lines while jobs run).
    """
    pending = list(dict.fromkeys(str(j) for j in job_ids))
    states: dict[str, JobState] = {}
    keys: dict[str, list[str]] = {}  # job id asked for -> keys of `states` it produced

    def record(job_id: str, found: list[JobState]) -> None:
        for key in keys.pop(job_id, ()):
            states.pop(key, None)  # an array's pending remainder ("12_[3-5]") splits into tasks
        keys[job_id] = [st.job_id if "_" in st.job_id else job_id for st in found]
        states.update(zip(keys[job_id], found))

    deadline = time.monotonic() + timeout_s
    answered = time.monotonic()
    while True:
        queue = _queue(pending, env)
        if queue is None and time.monotonic() - answered > 60:
            raise HpcError("squeue has failed for 60s while waiting for Slurm jobs (is slurmctld up?)")
        still = []
        for job_id in pending:
            if queue is None:
                still.append(job_id)  # squeue failed this time: ask again at the next poll
                continue
            entries = queue.get(job_id, [])
            if entries and not all(st.done and "[" not in st.job_id for st in entries):
                record(job_id, entries)
                still.append(job_id)
                continue
            found = query(job_id, env)
            if not found:
                found = [_jobcomp_states(env).get(job_id, JobState(job_id, "UNKNOWN", reason="vanished"))]
            record(job_id, found)
            if not all(st.done for st in found):
                still.append(job_id)
        if queue is not None:
            answered = time.monotonic()
        pending = still
        if on_poll is not None:
            on_poll(states)
        if not pending:
            return states
        if time.monotonic() >= deadline:
            busy = ", ".join(f"{k} ({v.state}{': ' + v.reason if v.reason else ''})"
                             for k, v in states.items() if not v.done)
            raise SlurmTimeout(f"Slurm jobs not finished after {timeout_s:g}s: {busy}", states)
        time.sleep(poll_s)


def cancel(job_ids: Iterable[str], *, env: Mapping[str, str] | None = None) -> None:
    """scancel the jobs (already finished ones are ignored)."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return
    proc = _run(["scancel", *ids], env)
    if proc.returncode != 0:
        msg = _first_error_line(proc)
        if "Invalid job id" not in msg and "already completed" not in msg.lower():
            raise HpcError(f"scancel {' '.join(ids)} failed: {msg}")


def cluster_info(partition: str | None = None, *, env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Usable nodes, CPUs per node (the smallest) and partitions, from `sinfo`."""
    argv = ["sinfo", "-h", "-N", "-o", "%N|%c|%P|%t"]
    if partition:
        argv += ["-p", partition]
    proc = _run(argv, env)
    if proc.returncode != 0:
        conf = (env if env is not None else os.environ).get("SLURM_CONF") or "unset (default /etc/slurm/slurm.conf)"
        raise HpcError(f"cannot reach a Slurm controller (is slurmctld running? SLURM_CONF={conf}): "
                       f"sinfo: {_first_error_line(proc)}")
    nodes: dict[str, int] = {}
    parts: list[str] = []
    default = None
    for line in proc.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        node, cpus, part, state = fields
        if part.endswith("*"):
            part = default = part[:-1]
        if part not in parts:
            parts.append(part)
        if not re.match(r"(down|drain|fail|maint|unk|futr|inval)", state) and cpus.isdigit():
            nodes[node] = int(cpus)
    if not nodes:
        where = f" in partition {partition}" if partition else ""
        raise HpcError(f"Slurm reports no usable nodes{where}")
    if default:
        parts.remove(default)
        parts.insert(0, default)
    return ClusterInfo(nodes=len(nodes), cpus_per_node=min(nodes.values()), partitions=parts)


def hostnames(nodelist: str, *, env: Mapping[str, str] | None = None) -> list[str]:
    """Expand a Slurm node list ("c[1-3],d7") into names with `scontrol show hostnames`."""
    proc = _run(["scontrol", "show", "hostnames", nodelist], env)
    if proc.returncode != 0:
        raise HpcError(f"scontrol show hostnames {nodelist} failed: {_first_error_line(proc)}")
    return proc.stdout.split()


def error_line(state: JobState, tail: int = 1) -> str:
    """One line saying why a job did not succeed, with the last line(s) of its stderr when readable."""
    what = f"Slurm job {state.job_id} {state.state}"
    if state.exit_code:
        what += f" (exit {state.exit_code})"
    if state.signal:
        what += f" (signal {state.signal})"
    if state.reason and state.reason != "NonZeroExitCode":
        what += f" [{state.reason}]"
    if state.nodes:
        what += f" on {state.nodes}"
    for path in dict.fromkeys(p for p in (state.stderr, state.stdout) if p):
        try:
            text = Path(path).read_text(errors="replace").replace("\x00", "")
        except OSError:
            continue
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        cause = [ln.split("hpc: error:", 1)[1].strip() for ln in lines if "hpc: error:" in ln]
        if cause:  # the rank's own one-line reason beats whatever the launcher printed after it
            return f"{what}: {cause[0]}"
        lines = [ln for ln in lines if not _launcher_noise(ln)]
        if lines:
            return f"{what}: {' | '.join(lines[-tail:])}"
    return what


def _launcher_noise(line: str) -> bool:
    """Banner rules and mpirun/srun epilogue lines that never say why a job failed."""
    low = line.lower()
    return set(line) <= set("-=*") or any(k in low for k in (
        "prterun", "mpirun noticed", "mpiexec", "srun: error: ", "slurmstepd", "please see the",
        "this may have caused", "exited on signal", "with errorcode"))


def find_jobs(name_prefix: str, *, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """{job id: job name} of this user's queued or running jobs whose name starts with `name_prefix`
    (how a rerun finds the jobs of a killed sweep instead of submitting them twice)."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    argv = ["squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED", "-o", "%i|%j"]
    if user:
        argv += ["-u", user]
    proc = _run(argv, env)
    if proc.returncode != 0:
        raise HpcError(f"squeue failed: {_first_error_line(proc)}")
    out = {}
    for line in proc.stdout.splitlines():
        job, _, name = line.strip().partition("|")
        if name.startswith(name_prefix):
            out[job] = name
    return out
