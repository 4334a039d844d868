"""Every HPC_* environment variable hpc reads or sets, in one place: name, meaning, who sets it.

The sweep layer passes a point's context to the ranks through these (a rank cannot be handed Python
objects), and users set a few to steer hpc without flags.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Callable, Mapping

# name -> what it means (who sets it)
VARIABLES: dict[str, str] = {
    "HPC_ARGV": "the user's own hpc command line, JSON, recorded in provenance (set by the launcher)",
    "HPC_INSIDE_MPI": "1 in ranks started by hpc's mpirun launcher: never re-launch (set by the launcher)",
    "HPC_TTY": "1 when the user's stdout is a terminal: ranks may colour their output (set by the launcher)",
    "HPC_MPIEXEC": "path of the mpirun/mpiexec to use (user)",
    "HPC_SCALING": "strong | weak | none: how a point sizes its problem (set by the sweep)",
    "HPC_SWEEP_ID": "the sweep a record belongs to (set by the sweep)",
    "HPC_POINT_ID": "the sweep point a record belongs to (set by the sweep)",
    "HPC_REP": "repetition number of the point (set by the sweep)",
    "HPC_NODES": "node count of the point (set by the sweep)",
    "HPC_COLLECTIVE": "collective SPEC that hpc.torch reduces gradients with (user; default auto)",
    "HPC_RECORD": "records file that hpc.torch appends a train record to at shutdown (user)",
    "HPC_TORCH_DEADLOCK_S": "seconds every rank may be blocked on hpc.torch collectives no other rank "
                            "submitted before those waits end with an error (user; default 2; 0 = never)",
    "HPC_TORCH_STEP_CHECK": "0 turns off DistributedOptimizer's per-step cross-rank agreement, to measure "
                            "its cost (user; default 1)",
    "HPC_DEBUG": "print the full traceback of an unexpected error (user)",
    "HPC_HIER_GROUP": "shared | host: what the hier kernel calls a node (kernels/_shm.py; user)",
    "HPC_HIER_NODES": "k: testing knob, split ranks into k contiguous 'nodes' for hier (user)",
    "HPC_PROGRESS_S": "seconds between progress lines of `hpc train` (stderr) and of a Slurm sweep (user; default 15)",
    "HPC_OVERSUBSCRIBE": "1: allow more than 8 ranks per core on one machine (user)",
    "HPC_CUDA_AWARE": "1 | 0: treat the MPI as CUDA-aware (device buffers into MPI) or not (pinned host "
                      "staging), overriding the detection in hpc/gpu.py (user)",
    "HPC_LAUNCH_ID": "tags every process of one local launch, so all of them end with it "
                     "(hpc/launch/reaper.py; set by the launcher)",
}


def _integer(lo: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            ok = int(value) >= lo
        except ValueError:
            ok = False
        return None if ok else f"an integer >= {lo}"
    return check


def _seconds(value: str) -> str | None:
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except ValueError:
        ok = False
    return None if ok else "a positive number of seconds"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda value: None if value.strip().lower() in choices else " or ".join(choices)


def _seconds_or_zero(value: str) -> str | None:
    return None if value.strip() in ("0", "0.0") else _seconds(value)


def _program(value: str) -> str | None:
    path = shutil.which(value) if os.sep not in value else value
    return None if path and os.path.isfile(path) and os.access(path, os.X_OK) else "an executable program"


def _json_list(value: str) -> str | None:
    try:
        return None if isinstance(json.loads(value), list) else "a JSON list"
    except ValueError:
        return "a JSON list"


# name -> check(value) -> None when fine, else what the value must be. Checked once, up front
# (hpc.cli.main), so that a typo is one line naming the variable instead of a traceback later.
CHECKS: dict[str, Callable[[str], str | None]] = {
    "HPC_INSIDE_MPI": _one_of("0", "1"), "HPC_TTY": _one_of("0", "1"),
    "HPC_OVERSUBSCRIBE": _one_of("0", "1"),
    "HPC_CUDA_AWARE": _one_of("1", "0", "true", "false", "yes", "no", "on", "off"),
    "HPC_MPIEXEC": _program, "HPC_ARGV": _json_list,
    "HPC_SCALING": _one_of("strong", "weak", "none"),
    "HPC_REP": _integer(0), "HPC_NODES": _integer(1), "HPC_HIER_NODES": _integer(1),
    "HPC_PROGRESS_S": _seconds, "HPC_HIER_GROUP": _one_of("shared", "host"),
    "HPC_TORCH_DEADLOCK_S": _seconds_or_zero, "HPC_TORCH_STEP_CHECK": _one_of("0", "1"),
}


def check(environ: Mapping[str, str] | None = None) -> None:
    """Raise HpcError naming the first HPC_* variable whose value cannot be used."""
    from hpc.errors import HpcError

    environ = os.environ if environ is None else environ
    for name, test in CHECKS.items():
        value = environ.get(name)
        if value in (None, ""):
            continue
        want = test(value)
        if want:
            raise HpcError(f"environment variable {name}={value!r} must be {want}")


def get(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of a documented HPC_* variable (KeyError for an undocumented name: a typo)."""
    if name not in VARIABLES:
        raise KeyError(f"undocumented hpc environment variable {name}")
    value = (os.environ if environ is None else environ).get(name)
    return default if value in (None, "") else value


def sweep_context(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The record fields a sweep point hands its ranks (nodes, scaling, sweep/point id, rep)."""
    check({k: v for k, v in (os.environ if environ is None else environ).items() if k in ("HPC_NODES", "HPC_REP")})
    nodes = get("HPC_NODES", "", environ) or ""
    return {
        "nodes": int(nodes) if nodes.isdigit() else None,
        "scaling": get("HPC_SCALING", "none", environ),
        "sweep_id": get("HPC_SWEEP_ID", None, environ),
        "point_id": get("HPC_POINT_ID", None, environ),
        "rep": int(get("HPC_REP", "0", environ) or 0),
    }
