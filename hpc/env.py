"""Every HPC_* environment variable hpc reads or sets, in one place: name, meaning, who sets it.

The sweep layer passes a point's context to the ranks through these (a rank cannot be handed Python
objects), and users set a few to steer hpc without flags.
"""

from __future__ import annotations

import os
from typing import Mapping

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
    "HPC_DEBUG": "print the full traceback of an unexpected error (user)",
    "HPC_HIER_GROUP": "shared | host: what the hier kernel calls a node (kernels/_shm.py; user)",
    "HPC_HIER_NODES": "k: testing knob, split ranks into k contiguous 'nodes' for hier (user)",
    "HPC_PROGRESS_S": "seconds between progress lines of `hpc train` (stderr) and of a Slurm sweep (user; default 15)",
    "HPC_OVERSUBSCRIBE": "1: allow more than 8 ranks per core on one machine (user)",
    "HPC_CUDA_AWARE": "1 | 0: treat the MPI as CUDA-aware (device buffers into MPI) or not (pinned host "
                      "staging), overriding the detection in hpc/gpu.py (user)",
}


def get(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of a documented HPC_* variable (KeyError for an undocumented name: a typo)."""
    if name not in VARIABLES:
        raise KeyError(f"undocumented hpc environment variable {name}")
    value = (os.environ if environ is None else environ).get(name)
    return default if value in (None, "") else value


def sweep_context(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The record fields a sweep point hands its ranks (nodes, scaling, sweep/point id, rep)."""
    nodes = get("HPC_NODES", "", environ) or ""
    return {
        "nodes": int(nodes) if nodes.isdigit() else None,
        "scaling": get("HPC_SCALING", "none", environ),
        "sweep_id": get("HPC_SWEEP_ID", None, environ),
        "point_id": get("HPC_POINT_ID", None, environ),
        "rep": int(get("HPC_REP", "0", environ) or 0),
    }
