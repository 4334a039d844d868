"""`hpc sweep ... run -- COMMAND`: any program swept over rank counts, locally and on the local Slurm cluster.

Real processes throughout: a small C MPI program compiled here with the venv's mpicc, a Python mpi4py
script, and programs that fail, print no figure or hang. Kept to np 1,2 (the machine has 2 cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpc import records
from tests.helpers import hpc, one_error_line

# Computes pi by the midpoint rule over N intervals (strong: N in all; weak: N per rank, from HPC_SCALING)
# and prints its time and rate on rank 0, as many HPC codes report themselves.
PI_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    const char *scaling = getenv("HPC_SCALING");
    long total = (scaling && strcmp(scaling, "weak") == 0) ? n * size : n;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime(), h = 1.0 / total, s = 0.0, pi = 0.0;
    for (long i = rank; i < total; i += size) { double x = h * (i + 0.5); s += 4.0 / (1.0 + x * x); }
    MPI_Reduce(&s, &pi, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    double t = MPI_Wtime() - t0;
    if (rank == 0) printf("pi = %.10f on %d ranks\ntime: %.9f s\nrate: %.6g items/s\n", pi * h, size, t, total / t);
    MPI_Finalize();
    return 0;
}
"""

# The same idea in Python; it fails on purpose at the rank count named by FAIL_AT (for resume tests).
PI_PY = textwrap.dedent("""\
    import os, sys, time
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if os.environ.get("FAIL_AT") == str(comm.size):
        if comm.rank == 0:
            print(f"refusing to run on {comm.size} ranks", flush=True)
        sys.exit(5)
    n = int(sys.argv[1]) * (comm.size if os.environ.get("HPC_SCALING") == "weak" else 1)
    t0 = time.perf_counter()
    part = sum(4.0 / (1.0 + ((i + 0.5) / n) ** 2) for i in range(comm.rank, n, comm.size))
    total = comm.allreduce(part)
    if comm.rank == 0:
        print(f"pi = {total / n:.8f}")
        print(f"rate: {n / (time.perf_counter() - t0):.6g} items/s")
""")

TIME = "time: ([0-9.eE+-]+) s"
RATE = "rate: ([0-9.eE+-]+) items/s"


@pytest.fixture(scope="module")
def progs(tmp_path_factory) -> Path:
    """A directory with the compiled C program `pi` and the Python script `pi.py`."""
    d = tmp_path_factory.mktemp("progs")
    mpicc = Path(sys.executable).parent / "mpicc"
    if not mpicc.exists():
        mpicc = Path(shutil.which("mpicc") or "mpicc")
    (d / "pi.c").write_text(PI_C)
    cc = subprocess.run([str(mpicc), "-O2", "-o", str(d / "pi"), str(d / "pi.c")], capture_output=True,
                        text=True, timeout=120)
    assert cc.returncode == 0, cc.stderr
    (d / "pi.py").write_text(PI_PY)
    return d


def load(out: Path) -> dict[str, dict]:
    """point_id -> record of a sweep directory (one record per point for `run`)."""
    recs = records.load(out / "points")
    assert len(recs) == len({r["point_id"] for r in recs})
    return {r["point_id"]: r for r in recs}


def fit_json(path: Path) -> list[dict]:
    proc = hpc("fit", str(path), "--json", "--bootstrap", "100", timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return data if isinstance(data, list) else data.get("fits", [data])


# ---- locally -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("scaling", ["strong", "weak"])
def test_c_program_time_metric_swept_and_fitted(progs, tmp_path, scaling):
    out = tmp_path / scaling
    proc = hpc("sweep", scaling, "--np", "1,2", "--out", str(out), "run", "--metric", TIME, "--",
               str(progs / "pi"), "2000000", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 points ok" in proc.stdout
    recs = load(out)
    assert len(recs) == 2
    for rec in recs.values():
        assert rec["kind"] == "run" and rec["status"] == "ok" and rec["error"] is None
        assert rec["scaling"] == scaling and rec["name"] == "pi" and rec["args"] == "2000000"
        assert rec["command"] == [str(progs / "pi"), "2000000"] and rec["unit"] == "s"
        assert rec["metric_line"].startswith("time: ") and rec["time_s"] == rec["value"] > 0
        assert rec["times_s"] == [rec["time_s"]] and not rec["higher_is_better"]
        assert rec["wall_s"] >= rec["time_s"] and rec["exit_code"] == 0
        prov = rec["provenance"]
        assert prov["mpi_library"].startswith("mpirun") and prov["argv"][:3] == ["hpc", "sweep", scaling]
    assert "pi = 3.14159" in (out / "logs" / "np0002-nodes001-rep00.log").read_text()
    (fit,) = fit_json(out)
    assert fit["law"] == ("amdahl" if scaling == "strong" else "gustafson")
    assert 0.0 <= fit["p"] <= 1.0
    assert hpc("plot", str(out), "-o", str(tmp_path / f"{scaling}.png"), timeout=120).returncode == 0
    assert (tmp_path / f"{scaling}.png").stat().st_size > 0


def test_throughput_is_stored_as_an_equivalent_time(progs, tmp_path):
    """--higher-better: time_s = work/X (work 1 strong, N weak), so the laws' speedups equal X(N)/X(1)."""
    for scaling in ("strong", "weak"):
        out = tmp_path / scaling
        proc = hpc("sweep", scaling, "--np", "1,2", "--out", str(out), "run", "--metric", RATE,
                   "--higher-better", "--unit", "items/s", "--", str(progs / "pi"), "1000000", timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        recs = sorted(load(out).values(), key=lambda r: r["np"])
        for rec in recs:
            work = rec["np"] if scaling == "weak" else 1
            assert rec["higher_is_better"] and rec["unit"] == "items/s"
            assert rec["time_s"] == pytest.approx(work / rec["value"])
            assert ("N·T(1)/T(N)" if scaling == "weak" else "T(1)/T(N)") in rec["time_s_is"]
        x1, x2 = recs[0]["value"], recs[1]["value"]
        t1, t2 = recs[0]["time_s"], recs[1]["time_s"]
        speedup = t1 / t2 if scaling == "strong" else 2 * t1 / t2
        assert speedup == pytest.approx(x2 / x1)
        (fit,) = fit_json(out)
        assert fit["law"] == ("amdahl" if scaling == "strong" else "gustafson")


def test_python_script_with_wall_time_then_resume(progs, tmp_path):
    """No --metric: the figure is the launch's wall time. A failed point is retried; ok points untouched."""
    out = tmp_path / "py"
    cmd = ["sweep", "strong", "--np", "1,2", "--out", str(out), "run", "--", sys.executable,
           str(progs / "pi.py"), "20000"]
    first = hpc(*cmd, env={"FAIL_AT": "1"}, timeout=180)
    assert first.returncode == 1, first.stdout + first.stderr
    recs = load(out)
    bad, good = recs["np0001-nodes001-rep00"], recs["np0002-nodes001-rep00"]
    assert bad["status"] == "failed" and bad["exit_code"] != 0 and bad["time_s"] is None
    assert "exited with code" in bad["error"] and "refusing to run on 1 ranks" in bad["error"]
    assert any("refusing" in ln for ln in bad["output_tail"])
    assert good["status"] == "ok" and good["figure"] == "wall time" and good["name"] == "pi.py"
    assert good["time_s"] == good["wall_s"] > 0 and good["args"] == "20000"
    kept = (out / "points" / "np0002-nodes001-rep00.jsonl").read_bytes()
    again = hpc(*cmd, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 of 2 points already done" in again.stdout and "2/2 points ok" in again.stdout
    assert (out / "points" / "np0002-nodes001-rep00.jsonl").read_bytes() == kept
    assert all(r["status"] == "ok" for r in load(out).values())
    done = hpc(*cmd, timeout=180)
    assert done.returncode == 0 and "2 of 2 points already done" in done.stdout
    (fit,) = fit_json(out)
    assert fit["law"] == "amdahl"


def test_python_script_throughput_weak(progs, tmp_path):
    out = tmp_path / "pyw"
    proc = hpc("sweep", "weak", "--np", "1,2", "--out", str(out), "run", "--metric", RATE, "--higher-better",
               "--", sys.executable, str(progs / "pi.py"), "20000", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["status"] for r in load(out).values()} == {"ok"}
    report = hpc("report", str(out), "-o", str(tmp_path / "REPORT.md"), "--bootstrap", "50", timeout=180)
    assert report.returncode == 0, report.stderr
    assert "pi.py" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.parametrize("words, status, says", [
    (["--", "./no-such-program"], "failed", "no-such-program"),
    (["--metric", "nothing: (\\d+)", "--", "{pi}", "1000"], "failed", "no output line matches --metric"),
    (["--metric", "(pi) =", "--", "{pi}", "1000"], "failed", "is not a number"),
    (["--", sys.executable, "-c", "import time; print('still working', flush=True); time.sleep(120)"],
     "timeout", "did not finish within 4 s"),
])
def test_bad_programs_are_recorded_and_the_sweep_goes_on(progs, tmp_path, words, status, says):
    out = tmp_path / "bad"
    words = [w.replace("{pi}", str(progs / "pi")) for w in words]
    proc = hpc("sweep", "strong", "--np", "1,2", "--out", str(out), "--point-timeout", "4", "run", *words,
               timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0/2 points ok" in proc.stdout  # both points ran: the first failure did not stop the sweep
    recs = load(out)
    assert len(recs) == 2
    for rec in recs.values():
        assert rec["status"] == status and says in rec["error"] and rec["time_s"] is None, rec["error"]
        assert "last output:" in rec["error"] and "\n" not in rec["error"]
    if status == "timeout":
        assert all("still working" in r["error"] for r in recs.values())
        assert all(r["wall_s"] < 30 for r in recs.values())


@pytest.mark.parametrize("words, says", [
    (["run", "--metric", "time: ([0-9.+", "--", "./x"], "is not a valid regular expression"),
    (["run", "--metric", "time: \\S+", "--", "./x"], "has no group"),
    (["run", "--metric", "t: (\\S+)"], "run needs a command after --"),
    (["run", "--higher-better", "--", "./x"], "--higher-better needs --metric"),
    (["run", "--frobnicate", "--", "./x"], "unrecognized arguments: --frobnicate"),
    (["--nodes", "1,2", "run", "--", "./x"], "--nodes only apply with --launcher slurm"),
    (["--sbatch-arg=--gres=gpu:1", "run", "--", "./x"], "--sbatch-line/--sbatch-arg only apply with --launcher slurm"),
    (["--dry-run", "run", "--", "./x"], "--dry-run only apply with --launcher slurm"),
    (["--launcher", "slurm", "--dry-run", "--sbatch-line", "--gres=gpu:1", "run", "--", "./x"], "must be one line like"),
    (["--launcher", "slurm", "--dry-run", "--sbatch-arg=--nodes=3", "run", "--", "./x"], "sets --nodes itself"),
])
def test_bad_run_input_is_one_line_before_anything_runs(tmp_path, words, says):
    out = tmp_path / "o"
    line = one_error_line(hpc("sweep", "strong", "--np", "1,2", "--out", str(out), *words, timeout=60))
    assert says in line, line
    assert not out.exists()


# ---- Slurm -------------------------------------------------------------------------------------------

def dead_controller(tmp_path: Path) -> dict[str, str]:
    """Environment for a machine whose Slurm controller cannot be reached (or with no Slurm at all)."""
    conf = tmp_path / "dead.conf"
    conf.write_text("ClusterName=dead\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n"
                    "CredType=cred/none\nMessageTimeout=2\nNodeName=d1 CPUs=1\nPartitionName=p Nodes=ALL\n")
    return {"SLURM_CONF": str(conf)}


@pytest.mark.parametrize("no_sbatch", [False, True])
def test_dry_run_without_a_controller_writes_scripts(progs, tmp_path, no_sbatch):
    env = dead_controller(tmp_path)
    if no_sbatch:
        env["PATH"] = str(Path(sys.executable).parent) + ":/usr/bin/nonexistent"
    out = tmp_path / "dry"
    proc = hpc("sweep", "weak", "--np", "1,2,4", "--nodes", "1,2", "--launcher", "slurm", "--dry-run",
               "--out", str(out), "--sbatch-line", "#SBATCH --gres=gpu:4", "--sbatch-arg", "--exclusive",
               "--before", "module load openmpi", "--mpirun-arg=--map-by=ppr:2:node", "run", "--metric", TIME,
               "--", str(progs / "pi"), "1000", env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote 5 scripts, submit with:" in proc.stdout and "points ok" not in proc.stdout
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 5 and all(f"sbatch {s}" in proc.stdout for s in scripts)
    text = scripts[-1].read_text()
    assert "#SBATCH --gres=gpu:4\n#SBATCH --exclusive\n" in text
    assert "{ module load openmpi\n} ||" in text and "--map-by=ppr:2:node" in text
    assert "hpc.sweep.command" in text and f"{progs / 'pi'} 1000" in text
    assert "LAUNCH=(" in text and "--oversubscribe" not in text.split("RANKS_PER_NODE\" -gt")[0]
    bash = subprocess.run(["bash", "-n", str(scripts[-1])], capture_output=True, text=True, timeout=10)
    assert bash.returncode == 0, bash.stderr
    assert not list((out / "points").glob("*.jsonl"))


def test_no_controller_without_dry_run_is_one_clear_line(tmp_path):
    if not shutil.which("sinfo"):
        pytest.skip("Slurm client tools not installed")
    line = one_error_line(hpc("sweep", "strong", "--np", "1", "--launcher", "slurm", "--out",
                              str(tmp_path / "o"), "run", "--", "true", env=dead_controller(tmp_path), timeout=120))
    assert "cannot reach a Slurm controller (is slurmctld running? SLURM_CONF=" in line


def test_slurm_run_sweep_across_nodes_then_fit(slurm_cluster, progs, tmp_path):
    out = tmp_path / "slurm"
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = hpc("sweep", "strong", "--np", "1,2,4", "--nodes", "1,2", "--launcher", "slurm", "--out", str(out),
               "--before", f"touch {marks}/$SLURM_JOB_ID", "--before", "export PI_SITE=ready",
               "--sbatch-arg=--comment=hpc-run-test", "run", "--metric", TIME, "--", str(progs / "pi"), "200000",
               env=slurm_cluster.env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = load(out)
    assert sorted((r["np"], r["nodes"]) for r in recs.values()) == [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2)]
    assert all(r["status"] == "ok" and r["kind"] == "run" and r["time_s"] > 0 for r in recs.values())
    jobs = {r["provenance"]["slurm_job_id"] for r in recs.values()}
    assert None not in jobs and {p.name for p in marks.iterdir()} == jobs  # --before ran in every job
    assert all("#SBATCH --comment=hpc-run-test" in s.read_text() for s in (out / "slurm").glob("*.sbatch"))
    two = [r for r in recs.values() if r["nodes"] == 2]
    assert all("," in r["provenance"]["slurm_nodelist"] or "[" in r["provenance"]["slurm_nodelist"] for r in two)
    fits = fit_json(out)
    assert fits and all(f["law"] == "amdahl" for f in fits)


def test_slurm_run_failure_keeps_the_programs_last_lines(slurm_cluster, progs, tmp_path):
    out = tmp_path / "fail"
    proc = hpc("sweep", "strong", "--np", "1,2", "--launcher", "slurm", "--out", str(out), "run", "--",
               sys.executable, str(progs / "pi.py"), "1000", env=dict(slurm_cluster.env, FAIL_AT="2"), timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recs = load(out)
    assert recs["np0001-nodes001-rep00"]["status"] == "ok"
    bad = recs["np0002-nodes001-rep00"]
    assert bad["status"] == "failed" and "refusing to run on 2 ranks" in bad["error"]
    assert bad["provenance"]["slurm_job_id"]
