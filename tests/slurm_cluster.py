"""A real local Slurm cluster (3 nodes c1..c3, 8 CPUs each) for tests: slurm/cluster-up.sh once per session.

Use the `slurm_cluster` fixture (made available to every test module by tests/conftest.py); it
yields a `Cluster`. Pass `cluster.env` to subprocesses (or to the hpc.slurm functions' `env=`) so
that they talk to this cluster. Tests are skipped only when Slurm cannot be had at all (not root,
or not installed and no apt-get); any other bring-up failure fails the tests with the daemon logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UP = REPO / "slurm" / "cluster-up.sh"
DOWN = REPO / "slurm" / "cluster-down.sh"


@dataclass
class Cluster:
    """A running cluster: its ROOT, the environment that points clients at it, and its node names."""

    root: Path
    env: dict[str, str]
    nodes: list[str] = field(default_factory=list)
    cpus_per_node: int = 0
    own_hostnames: bool = True  # each node's jobs see hostname cN (False where unshare --uts is refused)

    @property
    def conf(self) -> str:
        """Path of its slurm.conf (the value of SLURM_CONF)."""
        return self.env["SLURM_CONF"]

    def run(self, *argv: str, timeout: float = 30, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, squeue, ...) against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=cwd, check=False)


def skip_reason() -> str | None:
    """Why a local Slurm cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "local Slurm cluster needs root (slurmd, unshare --uts)"
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


def start_cluster(root: Path, timeout: float = 300) -> Cluster:
    """Run cluster-up.sh into ROOT (installing Slurm with apt when needed) and describe the cluster."""
    proc = subprocess.run(["bash", str(UP), str(root)], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"slurm/cluster-up.sh {root} failed (exit {proc.returncode}):\n{proc.stderr}")
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("export SLURM_CONF="), proc.stdout
    env = dict(os.environ, SLURM_CONF=line.split("=", 1)[1])
    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_NTASKS", "SLURM_NNODES", "SLURM_NODELIST",
                "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "HPC_INSIDE_MPI"):
        env.pop(var, None)  # never let a test job think it is already inside an allocation or MPI
    info = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True,
                          timeout=30, env=env, check=True)
    rows = sorted({tuple(ln.split()) for ln in info.stdout.splitlines() if ln.strip()})
    own = (root / "hostnames").read_text().strip() == "per-node"
    return Cluster(root=root, env=env, nodes=[r[0] for r in rows], cpus_per_node=min(int(r[1]) for r in rows),
                   own_hostnames=own)


def stop_cluster(root: Path, timeout: float = 120) -> None:
    """Run cluster-down.sh on ROOT (cancels jobs, stops the daemons, removes ROOT)."""
    subprocess.run(["bash", str(DOWN), str(root)], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One real Slurm cluster for the whole test session; torn down at the end."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_cluster(root)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        stop_cluster(root)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        stop_cluster(root)
