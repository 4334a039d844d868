"""Sweeps as a user runs them: local mpirun and a real local Slurm cluster; failures, resume, dry-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hpc import records
from tests.helpers import PLUGINS, hpc, one_error_line

PLAIN = PLUGINS / "plain_allreduce.py"
TINY = ["bench", "collective", "--algo", "ring,mpi", "--sizes", "4KB", "--batches", "1", "--iters", "5"]


def points(out: Path) -> pd.DataFrame:
    """All records of a sweep directory."""
    return pd.DataFrame(records.load(out / "points"))


def test_local_strong_sweep_then_rerun_skips_everything(tmp_path):
    out = tmp_path / "s"
    proc = hpc("sweep", "strong", "--np", "1,2,3", "--out", str(out), *TINY, timeout=300)
    assert proc.returncode == 0, proc.stderr
    df = points(out)
    assert sorted(df.np.unique()) == [1, 2, 3] and len(df) == 6
    assert (df.scaling == "strong").all() and df.sweep_id.nunique() == 1
    assert (df.status == "ok").all() and df.point_id.nunique() == 3
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    again = hpc("sweep", "strong", "--np", "1,2,3", "--out", str(out), *TINY, timeout=300)
    assert again.returncode == 0 and "3 of 3 points already done" in again.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "points").iterdir()}


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "f"
    proc = hpc("sweep", "weak", "--np", "1,2,3", "--out", str(out), "bench", "collective", "--algo",
               f"{PLAIN}:fails_with_two_ranks", "--sizes", "1KB", "--batches", "1", timeout=300)
    assert proc.returncode == 1
    df = points(out).set_index("np")
    assert df.loc[1, "status"] == "ok" and df.loc[3, "status"] == "ok"
    assert df.loc[2, "status"] == "failed" and "two ranks are not supported" in df.loc[2, "error"]
    assert (df.scaling == "weak").all()


def test_a_hung_point_times_out_and_is_recorded(tmp_path):
    out = tmp_path / "t"
    proc = hpc("sweep", "strong", "--np", "2", "--out", str(out), "--point-timeout", "4", "bench",
               "collective", "--algo", f"{PLAIN}:deadlocks", "--sizes", "1KB", timeout=120)
    assert proc.returncode == 1
    (rec,) = records.load(out / "points")
    assert rec["status"] == "timeout" and "4 s" in rec["error"]


def test_a_killed_sweep_resumes_with_every_point_exactly_once(tmp_path):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "hpc", "sweep", "strong", "--np", "1,2,3,4", "--reps", "2", "--out",
           str(out), *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "points").glob("*.jsonl"))) < 3:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the point running now die mid-way
    proc.wait(timeout=30)
    before = {p.name: p.read_text() for p in (out / "points").glob("*.jsonl")}
    assert 3 <= len(before) < 8
    again = hpc("sweep", "strong", "--np", "1,2,3,4", "--reps", "2", "--out", str(out), *TINY, timeout=300)
    assert again.returncode == 0, again.stderr
    after = {p.name: p.read_text() for p in (out / "points").glob("*.jsonl")}
    assert len(after) == 8 and all(after[k] == v for k, v in before.items())
    df = points(out)
    assert len(df) == 16 and not df.duplicated(["point_id", "algo"]).any()


@pytest.mark.parametrize("args, words", [
    (["--np", "", "--out", "X"], "empty"),
    (["--np", "1,4,2", "--out", "X"], "strictly increasing"),
    (["--np", "0,1", "--out", "X"], ">= 1"),
    (["--np", "1,2", "--out", "X", "frobnicate"], "unknown workload"),
    (["--np", "1,2", "--out", "X", "bench", "collective", "--np", "2"], "must not contain --np"),
    (["--np", "1,2", "--nodes", "1,2", "--out", "X", *TINY], "--nodes only apply with --launcher slurm"),
    (["--np", "1,2", "--partition", "gpu", "--time", "1:00", "--out", "X", *TINY],
     "--partition, --time only apply with --launcher slurm"),
    (["--np", "1,2", "--dry-run", "--out", "X", *TINY], "--dry-run only apply with --launcher slurm"),
])
def test_bad_sweep_input(tmp_path, args, words):
    args = [str(tmp_path / "o") if a == "X" else a for a in args]
    assert words in one_error_line(hpc("sweep", "strong", *args))
    assert not (tmp_path / "o" / "points").exists()


def test_an_out_dir_of_another_sweep_is_refused_untouched(tmp_path):
    out = tmp_path / "s"
    assert hpc("sweep", "strong", "--np", "1", "--out", str(out), *TINY).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_error_line(hpc("sweep", "weak", "--np", "1", "--out", str(out), *TINY))
    assert "holds a different sweep" in line
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_slurm_missing_is_a_clear_error(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin/nonexistent"}
    line = one_error_line(hpc("sweep", "strong", "--np", "1", "--launcher", "slurm", "--out",
                              str(tmp_path / "o"), *TINY, env=env))
    assert "sbatch not found" in line


def test_slurm_dry_run_needs_no_controller(tmp_path):
    """--dry-run writes the scripts on a machine with no Slurm at all, and says how to submit them."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin/nonexistent",
           "SLURM_CONF": str(tmp_path / "no-such-slurm.conf")}
    out = tmp_path / "o"
    proc = hpc("sweep", "strong", "--np", "1,2,4", "--launcher", "slurm", "--dry-run", "--out", str(out), *TINY,
               env=env)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 scripts, submit with:" in proc.stdout and "points ok" not in proc.stdout
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 3
    for script in scripts:
        text = script.read_text()
        assert f"sbatch {script}" in proc.stdout
        # Oversubscription is decided by the script on the node, never hard-coded.
        assert "-n \"$SLURM_NTASKS\")" in text and "--oversubscribe --bind-to none); fi" in text
    again = hpc("sweep", "strong", "--np", "1,2,4", "--launcher", "slurm", "--dry-run", "--out", str(out), *TINY,
                env=env)
    assert again.returncode == 0 and "wrote 3 scripts" in again.stdout


# ---- through a real local Slurm cluster (3 nodes) ---------------------------------------------------

def test_slurm_strong_and_weak_sweeps_span_two_nodes(slurm_cluster, tmp_path):
    for scaling in ("strong", "weak"):
        out = tmp_path / scaling
        proc = hpc("sweep", scaling, "--np", "1,2,4", "--nodes", "1,2", "--launcher", "slurm",
                   "--out", str(out), *TINY, env=slurm_cluster.env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        df = points(out)
        assert (df.status == "ok").all() and (df.scaling == scaling).all()
        combos = sorted(set(zip(df.np, df.nodes)))
        assert combos == [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2)]
        two = df[df.nodes == 2]
        assert all(len(h) == 2 for h in two.provenance.map(lambda p: p["hosts"]))
        assert df.provenance.map(lambda p: p["slurm_job_id"]).notna().all()


def test_slurm_failing_point_is_recorded_and_the_chain_goes_on(slurm_cluster, tmp_path):
    out = tmp_path / "f"
    proc = hpc("sweep", "strong", "--np", "1,2,3", "--launcher", "slurm", "--out", str(out), "bench",
               "collective", "--algo", f"{PLAIN}:fails_with_two_ranks", "--sizes", "1KB", "--batches",
               "1", env=slurm_cluster.env, timeout=600)
    assert proc.returncode == 1
    df = points(out).set_index("np")
    assert list(df.status.sort_index()) == ["ok", "failed", "ok"]
    assert "Slurm job" in df.loc[2, "error"]


def test_slurm_dry_run_scripts_submitted_by_hand_complete_the_sweep(slurm_cluster, tmp_path):
    out = tmp_path / "d"
    proc = hpc("sweep", "weak", "--np", "1,2", "--launcher", "slurm", "--dry-run", "--out", str(out),
               *TINY, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stderr
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 2
    assert not list((out / "points").glob("*.jsonl"))
    ids = []
    for script in scripts:
        sub = slurm_cluster.run("sbatch", "--parsable", str(script), cwd=tmp_path)
        assert sub.returncode == 0, sub.stderr
        ids.append(sub.stdout.strip())
    from hpc.launch import slurm

    states = slurm.wait(ids, timeout_s=300, env=slurm_cluster.env)
    assert all(s.ok for s in states.values()), states
    df = points(out)
    assert sorted(df.np.unique()) == [1, 2] and (df.scaling == "weak").all()
    rerun = hpc("sweep", "weak", "--np", "1,2", "--launcher", "slurm", "--out", str(out), *TINY,
                env=slurm_cluster.env)
    assert rerun.returncode == 0 and "2 of 2 points already done" in rerun.stdout


def test_slurm_more_ranks_than_the_cluster_has(slurm_cluster, tmp_path):
    line = one_error_line(hpc("sweep", "strong", "--np", "64", "--launcher", "slurm", "--out",
                              str(tmp_path / "o"), *TINY, env=slurm_cluster.env))
    assert "CPUs per node" in line
