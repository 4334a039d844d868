"""`hier` across two nodes of the local Slurm cluster (slurm/cluster-up.sh), checked against native MPI.

The cluster's nodes share one machine but each slurmd has its own host name (c1, c2, ...), so the job
groups ranks into nodes by host name (HPC_HIER_GROUP=host): two nodes of two ranks, where `shm` must
refuse and `hier`/`auto` must match MPI_Allreduce (tests/mpi/shm_check.py).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from hpc.launch import sbatch, slurm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "shm_check.py"
JOB_TIMEOUT_S = 300


def test_hier_across_two_slurm_nodes(slurm_cluster, tmp_path: Path) -> None:
    if not slurm_cluster.own_hostnames:
        pytest.skip("the cluster's nodes share a host name here (unshare --uts refused)")
    log = tmp_path / "hier.log"
    argv = [sbatch.default_mpirun(), "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
            "-x", "OMPI_MCA_osc=sm", "-x", "HPC_HIER_GROUP=host", "-x", f"PYTHONPATH={ROOT}",
            sys.executable, "-m", "mpi4py", str(SCRIPT), "--algos", "hier,hier-rails,auto",
            "--refuse", "shm", "--nodes", "2", "--quick"]
    script = tmp_path / "hier.sh"
    script.write_text("\n".join(["#!/bin/bash", "#SBATCH -N 2", "#SBATCH -n 4", f"#SBATCH -o {log}",
                                 f"cd {shlex.quote(str(ROOT))}", shlex.join(argv), ""]))
    job = slurm.submit(script, env=slurm_cluster.env)
    states = slurm.wait([job], timeout_s=JOB_TIMEOUT_S, env=slurm_cluster.env)
    out = log.read_text() if log.exists() else ""
    assert states[job].ok, (states[job], out[-4000:])
    assert "p=4 nodes=2: checked" in out and " 0 failed" in out, out[-4000:]
