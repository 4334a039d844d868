"""Reliability, round 3 (issue 20): no wrong answer reported as success, no hang, nothing left running,
one clear line for bad input. Each test is one hole the third adversarial sweep found; real mpirun,
real HDF5, the real local Slurm cluster; 2 ranks and tiny sizes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from hpc import records
from tests.helpers import PLUGINS, REPO, hpc, mpirun, one_error_line

ROGUE = PLUGINS / "rogue.py"
ROGUE_NET = REPO / "tests" / "models" / "rogue_net.py"


def _marked(mark: str) -> list[int]:
    """Live processes (not zombies) whose command line holds `mark`."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if mark.encode() in cmd and state != "Z":
            found.append(int(d))
    return found


def _gone(mark: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _marked(mark)
    for pid in left:  # never leave them to the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return not left


# ---------------------------------------------------------------- wrong answers reported as success

def test_training_verifies_the_bucket_sizes_it_reduces_not_their_mirror_image():
    """Buckets are filled in reverse parameter order: with this model and bucket size training reduces
    20502 and 1600 elements (forward order would give 11800 and 10302). A plug-in wrong only between
    20000 and 21000 elements must be caught before training."""
    line = one_error_line(hpc("train", "--np", "2", "--sync", f"{ROGUE}:wrong_between_20000_and_21000",
                              "--model", "mlp", "--features", "16", "--width", "100", "--depth", "3",
                              "--classes", "2", "--bucket-mb", "0.080108642578125", "--steps", "2",
                              timeout=240))
    assert "wrong answer" in line and "n=20502" in line, line


@pytest.mark.parametrize("sync,factory", [("ring", "other_on_rank1"), ("horovod", "other_on_rank1"),
                                          ("ddp", "other_on_rank1"), ("deepspeed-zero3", "other_on_rank1"),
                                          ("ddp", "transposed_on_rank1")])
def test_ranks_that_build_different_models_are_refused_on_every_scheme(sync, factory):
    """Rank 1's factory builds another architecture with the same byte count (or the same names and
    bytes, shapes transposed): one clear line before the scheme starts (no "success", no hang until
    --timeout, no screen of [rank0] tracebacks from inside DDP), whatever the scheme."""
    t0 = time.monotonic()
    line = one_error_line(hpc("train", "--np", "2", "--sync", sync, "--model", f"{ROGUE_NET}:{factory}",
                              "--input-shape", "16", "--classes", "4", "--steps", "2", "--timeout", "150",
                              timeout=240))
    assert "ranks hold different models" in line and "rank 1 has parameter" in line, line
    assert time.monotonic() - t0 < 140


def _vds(tmp_path: Path) -> Path:
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["x"] = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    layout = h5py.VirtualLayout(shape=(128, 8), dtype=np.float32)
    layout[:64] = h5py.VirtualSource(str(tmp_path / "src.h5"), "x", shape=(64, 8))
    layout[64:] = h5py.VirtualSource(str(tmp_path / "gone.h5"), "x", shape=(64, 8))
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("x", layout, fillvalue=0)
        half = h5py.VirtualLayout(shape=(128, 8), dtype=np.float32)
        half[:64] = h5py.VirtualSource(str(tmp_path / "src.h5"), "x", shape=(64, 8))
        half[64:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "not_there", shape=(64, 8))
        f.create_virtual_dataset("x2", half, fillvalue=0)
        f["y"] = np.arange(128) % 4
        f["linked"] = h5py.ExternalLink(str(tmp_path / "missing.h5"), "/x")
    return path


def test_a_virtual_dataset_with_a_missing_source_is_refused_and_inspect_warns(tmp_path):
    path = _vds(tmp_path)
    line = one_error_line(hpc("train", "--np", "2", "--data", str(path), "--steps", "2", "--batch", "8",
                              timeout=240))
    assert "gone.h5" in line and "virtual" in line, line
    shown = hpc("data", "inspect", str(path), timeout=60)
    assert shown.returncode == 0 and "warning" in shown.stdout and "gone.h5" in shown.stdout, shown.stdout
    info = json.loads(hpc("data", "inspect", str(path), "--json", timeout=60).stdout)
    assert any("gone.h5" in m for d in info["datasets"] for m in d["missing"])


@pytest.mark.parametrize("x,says", [("linked", "external link to"), ("x2", "holds no dataset not_there")])
def test_an_external_link_or_virtual_source_that_leads_nowhere_is_named(tmp_path, x, says):
    path = _vds(tmp_path)
    line = one_error_line(hpc("train", "--np", "2", "--data", str(path), "--x-name", x, "--steps", "2",
                              "--batch", "8", timeout=240))
    assert says in line, line


def test_verify_requires_every_rank_to_hold_the_same_bits():
    """Within tolerance of native MPI but one ulp apart across ranks: the ranks would train apart."""
    line = one_error_line(hpc("collectives", "verify", f"{ROGUE}:one_ulp_on_rank1", "--np", "2", "--quick",
                              timeout=120))
    assert "rank 1: holds different bits than rank 0" in line, line


def test_a_factory_that_calls_sys_exit_fails_the_run(tmp_path):
    out = tmp_path / "r.jsonl"
    line = one_error_line(hpc("train", "--np", "2", "--model", f"{ROGUE_NET}:exits", "--input-shape", "16",
                              "--steps", "2", "--json", str(out), timeout=240))
    assert "sys.exit(0)" in line, line


def _run_prog(tmp_path: Path, body: str) -> Path:
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(body))
    return prog


def test_resume_reruns_a_point_whose_file_came_from_another_point(tmp_path):
    out = tmp_path / "s"
    prog = _run_prog(tmp_path, "print('time: 0.25 s')\n")
    argv = ("sweep", "strong", "--np", "1,2", "--out", str(out), "run", "--metric", r"time: (\S+) s", "--",
            sys.executable, str(prog))
    assert hpc(*argv, timeout=240).returncode == 0
    points = out / "points"
    one, two = points / "np0001-nodes001-rep00.jsonl", points / "np0002-nodes001-rep00.jsonl"
    two.write_bytes(one.read_bytes())  # an "ok" file of np 1 under np 2's name
    proc = hpc(*argv, timeout=240)
    assert proc.returncode == 0 and "1 of 2 points already done" in proc.stdout, proc.stdout
    assert [r["np"] for r in records.load(two)] == [2]


def test_np_must_match_the_ranks_an_outer_mpirun_started(tmp_path):
    proc = mpirun(2, sys.executable, "-m", "hpc", "bench", "collective", "--np", "4", "--sizes", "1KiB",
                  "--json", str(tmp_path / "b.jsonl"), timeout=120)
    assert proc.returncode != 0 and "--np 4 but this job has 2 ranks" in proc.stderr, proc.stderr
    assert not (tmp_path / "b.jsonl").exists()


def test_an_hpc_mpiexec_that_does_not_exist_is_an_error():
    line = one_error_line(hpc("collectives", "verify", "ring", "--np", "2", "--quick",
                              env={"HPC_MPIEXEC": "/nonexistent/mpirun"}, timeout=60))
    assert "HPC_MPIEXEC" in line and "/nonexistent/mpirun" in line


# ---------------------------------------------------------------- hangs

def test_a_run_program_that_reads_stdin_gets_end_of_file(tmp_path):
    """Open MPI forwards rank 0's stdin; a program reading it waited for the point's timeout."""
    prog = _run_prog(tmp_path, "import sys\nsys.stdin.read()\nprint('time: 0.5 s')\n")
    out = tmp_path / "s"
    t0 = time.monotonic()
    proc = hpc("sweep", "strong", "--np", "2", "--out", str(out), "--point-timeout", "60", "run", "--metric",
               r"time: (\S+) s", "--", sys.executable, str(prog), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["status"] for r in records.load(out)] == ["ok"]
    assert time.monotonic() - t0 < 50


def test_a_plugin_that_reads_stdin_gets_end_of_file():
    proc = hpc("bench", "collective", "--algo", f"{ROGUE}:reads_stdin", "--no-verify", "--np", "2", "--sizes",
               "1KiB", "--batches", "1", "--iters", "2", "--timeout", "60", timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_plugin_thread_never_holds_the_job():
    """A plug-in that starts a non-daemon thread: verify fails naming it (instead of printing ok and
    hanging until --timeout), and an unverified run still ends with a note."""
    t0 = time.monotonic()
    line = one_error_line(hpc("collectives", "verify", f"{ROGUE}:starts_thread", "--np", "2", "--quick",
                              "--timeout", "60", timeout=120))
    assert "left a non-daemon thread running" in line and "rogue-progress" in line, line
    proc = hpc("bench", "collective", "--algo", f"{ROGUE}:starts_thread", "--no-verify", "--np", "2",
               "--sizes", "1KiB", "--batches", "1", "--iters", "2", "--timeout", "60", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rogue-progress" in proc.stderr and "still running at exit" in proc.stderr
    line = one_error_line(hpc("train", "--np", "2", "--sync", f"{ROGUE}:starts_thread", "--steps", "2",
                              "--width", "16", "--timeout", "60", timeout=120))
    assert "left a non-daemon thread running" in line, line
    assert time.monotonic() - t0 < 90


@pytest.mark.parametrize("value", ["nan", "0", "-5", "inf"])
def test_point_timeout_must_be_a_positive_number(tmp_path, value):
    line = one_error_line(hpc("sweep", "strong", "--np", "1", "--out", str(tmp_path / "s"), "--point-timeout",
                              value, "run", "--", "true", timeout=60))
    assert "--point-timeout" in line and not (tmp_path / "s").exists()


def test_sigterm_swallowed_by_a_finaliser_still_stops_data_make(tmp_path):
    """The KeyboardInterrupt of a SIGTERM that lands inside a weakref callback is dropped by Python;
    data make must still stop, remove its temp file and exit non-zero (it renamed the file into place
    and exited 0)."""
    target = tmp_path / "d.h5"
    code = textwrap.dedent(f"""\
        import os, signal, sys, weakref
        import hpc.data.make as mk
        from hpc.cli import main as cli
        mk.WRITE_BYTES = 4096
        orig, calls = mk._RowStream.take, []
        class Obj:
            pass
        def take(self, start, stop):
            calls.append(1)
            if len(calls) == 2:
                def callback(ref):
                    os.kill(os.getpid(), signal.SIGTERM)
                    for _ in range(100000):
                        pass
                obj = Obj()
                keep = weakref.ref(obj, callback)
                del obj
            return orig(self, start, stop)
        mk._RowStream.take = take
        sys.exit(cli.main(["data", "make", {str(target)!r}, "--samples", "20000", "--no-progress"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Exception ignored" in proc.stderr, proc.stderr  # the swallowed KeyboardInterrupt
    assert proc.returncode == 130 and "interrupted" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- nothing left running

def test_a_run_program_leaves_nothing_running(tmp_path):
    """A program that prints its figure and exits 0 while children it started (backgrounded, in their
    own session, under nohup) live on: the point is ok (not a timeout) and none of them survives."""
    mark = f"hpc-rogue-{uuid.uuid4().hex[:8]}"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(300)' {mark}"
    prog = tmp_path / "prog.sh"
    prog.write_text(f"#!/bin/sh\n{sleeper} &\nsetsid {sleeper} &\nnohup {sleeper} >/dev/null 2>&1 &\n"
                    "echo 'time: 0.5 s'\nexit 0\n")
    prog.chmod(0o755)
    out = tmp_path / "s"
    t0 = time.monotonic()
    proc = hpc("sweep", "strong", "--np", "2", "--out", str(out), "--point-timeout", "60", "run", "--metric",
               r"time: (\S+) s", "--", str(prog), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["status"] for r in records.load(out)] == ["ok"]
    assert time.monotonic() - t0 < 50
    assert _gone(mark, within=5)


def test_a_plugin_subprocess_ends_with_its_rank():
    mark = f"hpc-rogue-{uuid.uuid4().hex[:8]}"
    proc = hpc("bench", "collective", "--algo", f"{ROGUE}:starts_subprocess", "--no-verify", "--np", "2",
               "--sizes", "1KiB", "--batches", "1", "--iters", "2", "--timeout", "60", env={"ROGUE_MARK": mark},
               timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _gone(mark, within=5)


def test_a_killed_data_make_leaves_no_temp_file_after_the_next_run(tmp_path):
    target = tmp_path / "big.h5"
    proc = subprocess.Popen([sys.executable, "-m", "hpc", "data", "make", str(target), "--samples", "3000000",
                             "--shape", "256", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".big.h5.tmp-*")):
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    assert list(tmp_path.glob(".big.h5.tmp-*")), "the writer never started"
    done = hpc("data", "make", str(target), "--samples", "100", "--shape", "8", timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.h5"]


# ---------------------------------------------------------------- crashes and unclear messages

def _records_file(tmp_path: Path, **change) -> Path:
    rec = records.new("collective", 2, algo="ring", size_bytes=1024, time_s=1e-5, times_s=[1e-5])
    rec.update(change)
    for key in [k for k, v in change.items() if v is ...]:
        del rec[key]
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    return path


@pytest.mark.parametrize("change,says", [
    ({"size_bytes": -1024}, "'size_bytes' is -1024"),
    ({"np": ...}, "has no 'np'"),
    ({"np": "two"}, "'np' is 'two'"),
])
@pytest.mark.parametrize("verb", ["plot", "report"])
def test_analysis_refuses_an_unusable_record_in_one_line(tmp_path, change, says, verb):
    path = _records_file(tmp_path, **change)
    line = one_error_line(hpc(verb, str(path), "-o", str(tmp_path / ("p.png" if verb == "plot" else "r.md")),
                              timeout=120))
    assert says in line and "r.jsonl:1" in line, line


@pytest.mark.parametrize("value", ["nan", "-5"])
def test_case_timeout_must_be_a_positive_number(value):
    line = one_error_line(hpc("collectives", "verify", "ring", "--np", "2", "--case-timeout", value, timeout=60))
    assert "--case-timeout" in line and "deadlock" not in line


@pytest.mark.parametrize("argv", [["compare", "a.jsonl", "b.jsonl", "--threshold", "nan"],
                                  ["compare", "a.jsonl", "b.jsonl", "--fail-if-worse", "-5"],
                                  ["predict", "a.jsonl", "--check", "b.jsonl", "--max-error", "nan"],
                                  ["data", "make", "x.h5", "--samples", "0"],
                                  ["train", "--np", "2", "--seed", "-1"]])
def test_analysis_and_data_numbers_are_checked_by_name(argv):
    line = one_error_line(hpc(*argv, timeout=60))
    assert argv[-2] in line, line


def test_momentum_must_be_a_finite_number():
    line = one_error_line(hpc("train", "--np", "2", "--momentum", "nan", timeout=60))
    assert "--momentum" in line and "diverged" not in line


@pytest.mark.parametrize("var,argv", [
    ("HPC_REP", ["bench", "collective", "--np", "2", "--sizes", "1KiB"]),
    ("HPC_PROGRESS_S", ["train", "--np", "2", "--steps", "1"]),
    ("HPC_NODES", ["fit", "nothing.jsonl"]),
])
def test_hpc_variables_are_checked_up_front_by_name(var, argv):
    line = one_error_line(hpc(*argv, env={var: "abc"}, timeout=60))
    assert f"{var}='abc'" in line, line


def test_output_paths_that_cannot_be_written_are_refused_in_one_line(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    line = one_error_line(hpc("sweep", "strong", "--np", "1", "--out", str(tmp_path / "loop1"), "run", "--",
                              "true", timeout=60))
    assert "loop1" in line and "symbolic link loop" in line, line
    path = _records_file(tmp_path)
    line = one_error_line(hpc("plot", str(path), "-o", "/proc/hpc-test.png", timeout=60))
    assert "/proc" in line and "cannot write" in line, line


@pytest.mark.parametrize("labels,classes,says", [
    ("ten", None, "attribute 'classes' is 'ten'"),
    ("u64", None, "largest label + 1 is 9223372036854775809"),
])
def test_bad_label_metadata_is_one_line(tmp_path, labels, classes, says):
    import h5py
    import numpy as np

    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
        if labels == "u64":
            y = np.arange(64, dtype=np.uint64) % 3
            y[5] = np.uint64(2**63)
            f["y"] = y
        else:
            f["y"] = np.arange(64) % 3
            f.attrs["classes"] = labels
    line = one_error_line(hpc("train", "--np", "2", "--data", str(path), "--steps", "2", "--batch", "8",
                              timeout=240))
    assert says in line, line


def test_json_dash_carries_only_records(tmp_path):
    """A plug-in that prints (from Python and straight to file descriptor 1) never lands in `--json -`."""
    proc = hpc("bench", "collective", "--algo", f"{ROGUE}:prints,mpi", "--no-verify", "--np", "2",
               "--sizes", "1KiB,2KiB", "--batches", "1", "--iters", "2", "--json", "-", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 4 and all(json.loads(ln)["schema"] == records.SCHEMA for ln in lines), proc.stdout
    assert "rogue: allreduce of" in proc.stderr and "rogue: raw write" in proc.stderr


def test_torn_record_notes_are_capped(tmp_path):
    good = json.dumps(records.new("collective", 2, algo="ring", size_bytes=8, time_s=1e-6, times_s=[1e-6]))
    path = tmp_path / "r.jsonl"
    path.write_text("".join(good[:30] + "\n" for _ in range(500)) + good + "\n")
    code = f"from hpc import records; print(len(records.load({str(path)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "1"
    notes = proc.stderr.strip().splitlines()
    assert len(notes) <= 4 and "500 in all" in notes[-1], proc.stderr


# ---------------------------------------------------------------- the same on Slurm

@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_slurm_run_point_reads_no_stdin_and_leaves_nothing_running(slurm_cluster, tmp_path, launcher):
    mark = f"hpc-rogue-{uuid.uuid4().hex[:8]}"
    prog = tmp_path / "prog.sh"
    prog.write_text(f"#!/bin/sh\nsetsid {sys.executable} -c 'import time; time.sleep(300)' {mark} &\n"
                    "cat > /dev/null\necho 'time: 0.5 s'\nexit 0\n")
    prog.chmod(0o755)
    out = tmp_path / "s"
    proc = hpc("sweep", "strong", "--np", "2", "--launcher", "slurm", "--slurm-launcher", launcher, "--out",
               str(out), "--point-timeout", "90", "run", "--metric", r"time: (\S+) s", "--", str(prog),
               env=slurm_cluster.env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["status"] for r in records.load(out)] == ["ok"]
    assert _gone(mark, within=10)
