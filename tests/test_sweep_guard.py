"""Sweeps that are killed or started twice: one runner per --out, and a killed Slurm sweep's queued jobs
are adopted by the rerun, never submitted twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from hpc import records
from tests.helpers import PLUGINS, hpc, one_error_line


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    full = dict(os.environ, **(env or {}))
    for var in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "HPC_INSIDE_MPI"):
        full.pop(var, None)
    return subprocess.Popen([sys.executable, "-m", "hpc", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)


def test_a_second_sweep_on_the_same_out_is_refused(tmp_path):
    out = tmp_path / "s"
    work = ["bench", "collective", "--algo", f"{PLUGINS / 'plain_allreduce.py'}:deadlocks", "--no-verify",
            "--sizes", "1KiB"]
    first = _start("sweep", "strong", "--np", "2", "--point-timeout", "60", "--out", str(out), *work)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / ".lock").exists():
            time.sleep(0.1)
        time.sleep(0.5)
        line = one_error_line(hpc("sweep", "strong", "--np", "2", "--out", str(out), *work, timeout=60))
        assert "another hpc sweep" in line and str(first.pid) in line
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


def test_rerun_adopts_the_jobs_of_a_killed_slurm_sweep(slurm_cluster, tmp_path):
    out = tmp_path / "k"
    env = slurm_cluster.env
    # each point sleeps a little before it runs, so the first sweep is killed with jobs still queued
    args = ["sweep", "strong", "--np", "1,2", "--launcher", "slurm", "--out", str(out),
            "--before", "sleep 3", "bench", "collective", "--algo", "mpi", "--sizes", "1KiB",
            "--batches", "1", "--iters", "2"]
    first = _start(*args, env=env)
    deadline = time.monotonic() + 60
    submitted = ""
    while time.monotonic() < deadline and "submitted" not in submitted:
        line = first.stdout.readline()
        submitted += line
    assert "submitted 2 job(s)" in submitted, submitted
    first.kill()                                   # kill -9: no chance to cancel its jobs
    first.communicate(timeout=30)
    again = hpc(*args, env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "left queued" in again.stdout and "submitted 0 job(s)" in again.stdout, again.stdout
    recs = records.load(out / "points")
    assert sorted(r["np"] for r in recs) == [1, 2] and all(r["status"] == "ok" for r in recs)
    jobs = {r["provenance"]["slurm_job_id"] for r in recs}
    assert len(jobs) == 2, json.dumps(recs)[:500]


def test_sigterm_cancels_a_slurm_sweeps_jobs(slurm_cluster, tmp_path):
    out = tmp_path / "t"
    env = slurm_cluster.env
    args = ["sweep", "strong", "--np", "1,2", "--launcher", "slurm", "--out", str(out), "--before", "sleep 30",
            "bench", "collective", "--algo", "mpi", "--sizes", "1KiB", "--batches", "1", "--iters", "2"]
    proc = _start(*args, env=env)
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline and "submitted" not in seen:
        seen += proc.stdout.readline()
    jobs = seen.split("submitted 2 job(s): ")[-1].split()[0].replace(",", " ").split() if "submitted 2" in seen else []
    assert len(jobs) >= 1, seen
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    err += slurm_cluster.run("squeue", "-h", "-o", "%i %j %T").stdout
    assert proc.returncode != 0, rest + err
    deadline = time.monotonic() + 30
    left = None
    while time.monotonic() < deadline:
        q = slurm_cluster.run("squeue", "-h", "-o", "%i %j %T")
        left = [ln for ln in q.stdout.splitlines() if "hpc-" in ln]
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"jobs left queued after SIGTERM: {left}\n{seen}{rest}{err}"


def test_a_failed_jobs_error_is_the_ranks_own_line_without_nul(tmp_path):
    from hpc.launch.slurm import JobState, error_line

    err = tmp_path / "job.err"
    err.write_bytes(b"some warning\nhpc: error: rank 1: ValueError: bad buffer\n"
                    b"--------------------------------------\nprterun noticed that process rank 1 exited\n\x00")
    line = error_line(JobState("42", "FAILED", exit_code=1, stderr=str(err)))
    assert line.endswith("rank 1: ValueError: bad buffer") and "\x00" not in line


def test_a_workload_that_cannot_run_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "never"
    line = one_error_line(hpc("sweep", "strong", "--np", "1,2", "--out", str(out), "train", "--sync",
                              "nosuch_pkg:func", timeout=60))
    assert "nosuch_pkg" in line and not out.exists()
    # on Slurm the nodes' GPUs are not this machine's: a cuda workload is written, not refused
    dry = hpc("sweep", "strong", "--np", "1,2", "--launcher", "slurm", "--dry-run", "--out", str(out),
              "train", "--sync", "ring", "--device", "cuda", timeout=60)
    assert dry.returncode == 0 and "wrote 2 scripts" in dry.stdout, dry.stdout + dry.stderr
