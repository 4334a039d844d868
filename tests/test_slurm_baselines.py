"""Points that span Slurm nodes: the torch.distributed baselines meet at an address every node reaches,
every point is held to its limit, and a waiting sweep says what runs."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from hpc import records
from hpc.workloads.sync.rendezvous import LOOPBACK, candidate_addresses
from tests.helpers import PLUGINS, hpc

PLAIN = PLUGINS / "plain_allreduce.py"
TRAIN = ["train", "--model", "mlp", "--width", "32", "--depth", "1", "--steps", "3", "--batch", "8"]


def points(out: Path) -> pd.DataFrame:
    return pd.DataFrame(records.load(out / "points"))


def test_candidate_addresses_put_loopback_last():
    found = candidate_addresses()
    assert found[-1] == LOOPBACK and found.count(LOOPBACK) == 1


def test_ddp_and_deepspeed_train_across_two_slurm_nodes(slurm_cluster, tmp_path):
    """The nodes' names (c1, c2) resolve nowhere: a rendezvous by host name hung for 10 minutes."""
    out = tmp_path / "b"
    start = time.monotonic()
    proc = hpc("sweep", "strong", "--np", "2", "--nodes", "2", "--launcher", "slurm", "--out", str(out),
               *TRAIN, "--sync", "ddp,deepspeed-zero1", "--timeout", "240",
               env=dict(slurm_cluster.env, HPC_PROGRESS_S="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    df = points(out)
    assert set(df.sync) == {"ddp", "deepspeed-zero1"} and (df.status == "ok").all()
    hosts = df.provenance.map(lambda p: tuple(p["hosts"]))
    assert all(len(h) == 2 for h in hosts), hosts
    if slurm_cluster.own_hostnames:
        assert all(set(h) <= set(slurm_cluster.nodes) for h in hosts), hosts
    assert "running: np=2 nodes=2 rep=0" in proc.stdout  # progress while the job runs
    assert time.monotonic() - start < 400


def test_a_slurm_point_is_held_to_the_workloads_timeout(slurm_cluster, tmp_path):
    """Inside the job the workload runs on its ranks directly: its --timeout must still end the point."""
    out = tmp_path / "t"
    start = time.monotonic()
    proc = hpc("sweep", "strong", "--np", "2", "--launcher", "slurm", "--out", str(out), "bench", "collective",
               "--algo", f"{PLAIN}:deadlocks", "--sizes", "1KB", "--case-timeout", "300", "--timeout", "10",
               env=slurm_cluster.env, timeout=300)
    assert proc.returncode == 1
    (rec,) = records.load(out / "points")
    assert rec["status"] == "timeout" and "within 10 s" in rec["error"], rec["error"]
    assert time.monotonic() - start < 120
    script = next((out / "slurm").glob("*.sbatch")).read_text()
    assert script.count("HPC_SCALING=") == 1


def test_a_local_point_is_held_to_the_workloads_timeout(tmp_path):
    out = tmp_path / "l"
    start = time.monotonic()
    proc = hpc("sweep", "strong", "--np", "2", "--out", str(out), "bench", "collective", "--algo",
               f"{PLAIN}:deadlocks", "--sizes", "1KB", "--case-timeout", "300", "--timeout", "6", timeout=200)
    assert proc.returncode == 1
    (rec,) = records.load(out / "points")
    assert rec["status"] == "timeout" and "6 s" in rec["error"], rec["error"]
    assert time.monotonic() - start < 90


def test_a_run_point_on_two_nodes_records_the_jobs_nodes(slurm_cluster, tmp_path):
    """A `run` record is written on the batch host; it must still name every node its ranks ran on."""
    import sys

    out = tmp_path / "r"
    proc = hpc("sweep", "strong", "--np", "2", "--nodes", "2", "--launcher", "slurm", "--out", str(out),
               "run", "--", sys.executable, "-c", "print('hello')", env=slurm_cluster.env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rec,) = records.load(out / "points")
    hosts = rec["provenance"]["hosts"]
    assert len(hosts) == 2, rec["provenance"]
    if slurm_cluster.own_hostnames:
        assert set(hosts) <= set(slurm_cluster.nodes)
