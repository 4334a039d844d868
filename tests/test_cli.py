"""The foundation as a user meets it: plug-in loading and verification, failure handling, the benchmark."""

from __future__ import annotations

import sys
import time

import pandas as pd
import pytest

from hpc import records
from hpc.launch import mpirun as launch
from hpc.plugins import registry
from hpc.errors import HpcError
from tests.helpers import PLUGINS, hpc, mpirun, one_error_line

PLAIN = PLUGINS / "plain_allreduce.py"


def test_help_lists_every_verb_and_usage_errors_are_one_line():
    out = hpc("--help")
    assert out.returncode == 0
    for verb in ("collectives", "bench"):
        assert verb in out.stdout
    line = one_error_line(hpc("bogus-verb"))
    assert "bogus-verb" in line


def test_list_shows_builtins():
    out = hpc("collectives", "list")
    assert out.returncode == 0
    for name in ("ring", "ps", "recursive_doubling", "rabenseifner", "tree", "auto", "mpi"):
        assert name in out.stdout


def test_verify_accepts_a_plain_function_from_a_file():
    out = hpc("collectives", "verify", f"{PLAIN}:allreduce", "--np", "3")
    assert out.returncode == 0, out.stderr
    assert "matches native MPI_Allreduce" in out.stdout
    assert "3/1/2 ranks" in out.stdout  # also checked on sub-communicators


def test_verify_rejects_a_wrong_answer_naming_the_case():
    line = one_error_line(hpc("collectives", "verify", f"{PLAIN}:off_by_one", "--np", "3"))
    assert "wrong answer" in line and "n=4" in line and "rank 1" in line


def test_verify_skips_ops_the_plugin_refuses():
    out = hpc("collectives", "verify", f"{PLAIN}:sum_only", "--np", "2", "--quick")
    assert out.returncode == 0, out.stderr
    assert "refused MAX" in out.stdout


def test_wrong_signature_is_a_clear_error():
    line = one_error_line(hpc("collectives", "verify", f"{PLAIN}:two_args", "--np", "2"))
    assert "signature" in line and "allreduce(comm, sendbuf, recvbuf" in line


@pytest.mark.parametrize("spec, words", [
    ("no_such_algo", "unknown collective"),
    ("/nonexistent/plugin.py:f", "not found"),
    ("no_such_module_xyz:f", "cannot import"),
    (f"{PLAIN}:missing_function", "has no function"),
])
def test_bad_specs(spec, words):
    assert words in one_error_line(hpc("collectives", "verify", spec, "--np", "2"))


def test_module_spec_and_entry_point(tmp_path):
    """`package.module:func` and an installed `hpc.collectives` entry point both resolve."""
    pkg = tmp_path / "myalgos"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "gather.py").write_text(PLAIN.read_text())
    dist = tmp_path / "myalgos-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myalgos\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hpc.collectives]\ngather = myalgos.gather:allreduce\n")
    env = {"PYTHONPATH": f"{tmp_path}:{sys.path[0]}"}
    out = hpc("collectives", "verify", "myalgos.gather:allreduce", "--np", "2", "--quick", env=env)
    assert out.returncode == 0, out.stderr
    listing = hpc("collectives", "list", env=env)
    assert "gather" in listing.stdout and "myalgos.gather:allreduce" in listing.stdout
    out = hpc("collectives", "verify", "gather", "--np", "2", "--quick", env=env)
    assert out.returncode == 0, out.stderr


def test_a_rank_that_raises_ends_the_job_and_is_named():
    start = time.monotonic()
    line = one_error_line(hpc("collectives", "verify", f"{PLAIN}:raises_on_rank2", "--np", "3",
                              timeout=120))
    assert time.monotonic() - start < 60
    assert "rank 2" in line and "injected failure" in line


def test_a_deadlocked_collective_is_ended_by_the_case_watchdog():
    line = one_error_line(hpc("collectives", "verify", f"{PLAIN}:deadlocks", "--np", "2",
                              "--case-timeout", "3", timeout=120))
    assert "did not finish within 3 s" in line


def test_the_launch_timeout_kills_a_hung_job():
    start = time.monotonic()
    line = one_error_line(hpc("collectives", "verify", f"{PLAIN}:deadlocks", "--np", "2",
                              "--timeout", "4", timeout=120))
    assert "did not finish within 4 s and was killed" in line
    assert time.monotonic() - start < 60


def test_mismatched_buffers_across_ranks_are_refused(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(
        "import numpy as np\n"
        "from mpi4py import MPI\n"
        "from hpc.comm import check_uniform\n"
        "from hpc.errors import HpcError\n"
        "comm = MPI.COMM_WORLD\n"
        "try:\n"
        "    check_uniform(comm, np.zeros(10 + comm.rank, dtype='float32'))\n"
        "except HpcError as e:\n"
        "    print('REFUSED', e, flush=True)\n"
        "check_uniform(comm, np.zeros(5))\n"
        "print('SAME-OK', flush=True)\n")
    out = mpirun(2, sys.executable, "-m", "mpi4py", str(script), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("REFUSED") == 2
    assert "rank 0 has 10 x float32, rank 1 has 11 x float32" in out.stdout
    assert out.stdout.count("SAME-OK") == 2


def test_bench_collective_writes_records_pandas_loads(tmp_path):
    path = tmp_path / "bench.jsonl"
    out = hpc("bench", "collective", "--algo", "ring,mpi", "--np", "2", "--sizes", "1KB:64KB:8",
              "--batches", "2", "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "busbw" in out.stdout and "vs mpi" in out.stdout
    df = pd.read_json(path, lines=True)
    assert len(df) == 2 * 3 and set(df.algo) == {"ring", "mpi"}
    assert (df.status == "ok").all() and df.correct.all()
    assert (df.np == 2).all() and sorted(set(df.size_bytes)) == [1024, 8192, 65536]
    for rec in records.load(path):
        assert len(rec["times_s"]) == 2 and rec["time_s"] > 0
        assert rec["busbw_GBps"] == pytest.approx(rec["algbw_GBps"] * 2 * (2 - 1) / 2)
        assert rec["algbw_GBps"] == pytest.approx(rec["size_bytes"] / rec["time_s"] / 1e9)
        prov = rec["provenance"]
        assert prov["mpi_library"] and prov["argv"][:3] == ["hpc", "bench", "collective"]


def test_a_command_started_by_the_user_under_mpirun_runs_directly(tmp_path):
    path = tmp_path / "direct.jsonl"
    out = mpirun(2, sys.executable, "-m", "mpi4py", "-m", "hpc", "bench", "collective", "--algo",
                 "ring", "--sizes", "4KB", "--batches", "1", "--json", str(path), timeout=120)
    assert out.returncode == 0, out.stderr
    (rec,) = records.load(path)
    assert rec["np"] == 2 and rec["correct"]


def test_bench_verifies_plugins_before_timing():
    line = one_error_line(hpc("bench", "collective", "--algo", f"{PLAIN}:off_by_one", "--np", "2",
                              "--sizes", "4KB"))
    assert "wrong answer" in line


@pytest.mark.parametrize("sizes", ["64XB", "8MB:1KB", "1KB:8KB:1", ""])
def test_bad_sizes(sizes):
    assert "size" in one_error_line(hpc("bench", "collective", "--np", "2", "--sizes", sizes))


def test_strip_np_and_mpirun_argv():
    assert launch.strip_np(["bench", "--np", "4", "--x", "--np=2"]) == ["bench", "--x"]
    ompi = launch.Mpiexec("/x/mpirun", "openmpi")
    argv = launch.mpirun_argv(64, ["prog"], ompi)
    assert argv[:3] == ["/x/mpirun", "-n", "64"] and "--oversubscribe" in argv and argv[-1] == "prog"
    assert launch.mpirun_argv(2, ["prog"], launch.Mpiexec("/y/mpiexec", "mpich")) == ["/y/mpiexec", "-n", "2", "prog"]


def test_registry_errors_without_mpi():
    with pytest.raises(HpcError, match="unknown collective"):
        registry.precheck("nope")
    registry.precheck("ring")
