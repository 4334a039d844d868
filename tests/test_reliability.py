"""Reliability trials kept as tests: nothing lost, nothing left running, no hang, no wrong answer
recorded as success. Real processes, small sizes, bounded time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hpc import records
from tests.helpers import PLUGINS, hpc, one_error_line

HOSTILE = PLUGINS / "hostile.py"


# ---------------------------------------------------------------- hangs end the job, naming why

@pytest.mark.parametrize("func", ["exits_on_rank1", "finalizes_on_rank1"])
def test_verify_ends_when_a_rank_leaves(func):
    t0 = time.monotonic()
    proc = hpc("collectives", "verify", f"{HOSTILE}:{func}", "--np", "2", "--quick", "--case-timeout", "5",
               timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 90
    assert "Traceback" not in proc.stderr and "hpc: error:" in proc.stderr


def test_stray_message_is_reported_and_never_reaches_another_algorithm():
    line = one_error_line(hpc("collectives", "verify", f"{HOSTILE}:stray_message", "--np", "2", "--quick",
                              timeout=120))
    assert "unreceived message" in line
    # unverified, it runs on a communicator of its own: the built-in ring after it is unharmed
    proc = hpc("bench", "collective", "--algo", f"{HOSTILE}:stray_message,ring", "--no-verify", "--np", "2",
               "--sizes", "1KiB", "--batches", "1", "--iters", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WRONG" not in proc.stdout


def test_bench_verifies_the_sizes_it_will_time():
    line = one_error_line(hpc("bench", "collective", "--algo", f"{HOSTILE}:wrong_above_1mib", "--np", "2",
                              "--sizes", "4MiB", "--batches", "1", timeout=180))
    assert "wrong answer" in line and "1048576" in line


def test_bench_deadlock_above_quick_sizes_ends_in_the_case_timeout():
    t0 = time.monotonic()
    proc = hpc("bench", "collective", "--algo", f"{HOSTILE}:deadlocks_above_1mib", "--np", "2", "--sizes",
               "2MiB", "--case-timeout", "5", timeout=180)
    assert proc.returncode != 0 and "did not finish within 5 s" in proc.stderr
    assert time.monotonic() - t0 < 120


def test_bench_keeps_every_record_measured_before_a_failure(tmp_path):
    out = tmp_path / "b.jsonl"
    proc = hpc("bench", "collective", "--algo", f"{HOSTILE}:deadlocks_above_1mib,mpi", "--no-verify",
               "--np", "2", "--sizes", "1KiB,2MiB", "--batches", "1", "--iters", "2",
               "--case-timeout", "5", "--json", str(out), timeout=180)
    assert proc.returncode != 0
    kept = records.load(out)
    assert [(r["algo"], r["size_bytes"]) for r in kept][:2] == [("hostile:deadlocks_above_1mib", 1024),
                                                                  ("mpi", 1024)]


def test_bench_algorithm_that_writes_its_sendbuf_fails_alone(tmp_path):
    """Algorithms share one size's buffers in the interleaved timing: one that changes its input is
    reported as failed, and the others after it still get (and are checked on) the right input."""
    out = tmp_path / "b.jsonl"
    proc = hpc("bench", "collective", "--algo", f"{HOSTILE}:writes_sendbuf,mpi,ring", "--no-verify",
               "--np", "2", "--sizes", "1KiB,64KiB", "--batches", "2", "--target-time", "0.01", "--json", str(out),
               timeout=180)
    assert proc.returncode != 0 and "wrong results" in proc.stderr
    kept = {(r["algo"], r["size_bytes"]): r for r in records.load(out)}
    assert len(kept) == 6
    for size in (1024, 65536):
        bad = kept[("hostile:writes_sendbuf", size)]
        assert bad["status"] == "failed" and bad["error"] == "it changed its send buffer"
        assert kept[("mpi", size)]["status"] == "ok" and kept[("ring", size)]["status"] == "ok"
        assert kept[("mpi", size)]["batches"] == 2


def test_sweep_point_that_fails_late_keeps_what_it_finished(tmp_path):
    """A point whose workload fails at its second size keeps the first size's records (and says it
    failed); a resume retries it."""
    out = tmp_path / "s"
    proc = hpc("sweep", "strong", "--np", "2", "--out", str(out), "bench", "collective", "--algo",
               f"mpi,{HOSTILE}:raises_above_1kib", "--sizes", "1KiB,4KiB", "--batches", "1", "--iters", "2",
               "--no-verify", timeout=240)
    assert proc.returncode != 0
    kept = records.load(out)
    ok = sorted((r["algo"], r["size_bytes"]) for r in kept if r["status"] == "ok")
    assert ok == [("hostile:raises_above_1kib", 1024), ("mpi", 1024)], kept
    failed = [r for r in kept if r["status"] != "ok"]
    assert len(failed) == 1 and "boom above 1 KiB" in failed[0]["error"]


def test_bench_names_plugins_apart_and_by_their_errors(tmp_path):
    """Two plug-ins with one file name stay apart in records; a plug-in's exception names it; an op
    it refused in verification is refused up front."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "naive.py").write_text(HOSTILE.read_text())
    out = tmp_path / "r.jsonl"
    proc = hpc("bench", "collective", "--algo", f"{tmp_path}/a/naive.py:only_sum,{tmp_path}/b/naive.py:only_sum",
               "--np", "2", "--sizes", "1KiB", "--batches", "1", "--iters", "2", "--json", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert len({r["algo"] for r in records.load(out)}) == 2
    line = one_error_line(hpc("bench", "collective", "--algo", f"{HOSTILE}:only_sum", "--op", "MAX", "--np", "2",
                              "--sizes", "1KiB", timeout=180))
    assert "does not support --op MAX" in line
    line = one_error_line(hpc("bench", "collective", "--algo", f"{HOSTILE}:raises_above_1kib", "--no-verify",
                              "--np", "2", "--sizes", "4KiB", timeout=180))
    assert "raises_above_1kib' raised RuntimeError: boom above 1 KiB on rank 1 (4096 B)" in line


def test_sigterm_while_reporting_an_error_ends_quietly():
    """A rank already failing may be sent SIGTERM by the launcher (another rank aborted the job):
    that ends it with its error code, not a KeyboardInterrupt traceback from inside the report."""
    code = (
        "import os, signal, sys\n"
        "from hpc.cli import main\n"
        "signal.signal(signal.SIGTERM, main._terminate)\n"
        "class Err:\n"
        "    def write(self, s):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sys.__stderr__.write(s)\n"
        "    def flush(self):\n"
        "        pass\n"
        "sys.stderr = Err()\n"
        "sys.exit(main._fail('boom', 2))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- bad input: one line, up front

@pytest.mark.parametrize("argv,msg", [
    (["bench", "collective", "--np", "2", "--sizes", "1KiB", "--json", "{d}"], "is a directory"),
    (["bench", "collective", "--np", "2", "--sizes", "1KiB", "--json", "{f}/x.jsonl"], "is a file, so"),
    (["train", "--np", "2", "--json", "{d}"], "is a directory"),
    (["sweep", "strong", "--np", "1,2", "--out", "{f}", "bench", "collective"], "must be a directory"),
    (["plot", "{d}", "-o", "{f}/p.png"], "is a file, so"),
    (["report", "{d}", "-o", "{d}"], "is a directory"),
    (["bench", "collective", "--np", "2", "--algo", "{syntax}:allreduce"], "SyntaxError in"),
])
def test_unusable_output_paths_and_broken_plugins_are_refused_up_front(tmp_path, argv, msg):
    """Before any work: an output that cannot be written (results would be lost at the end), a
    plug-in file that does not even compile (every sweep point would fail)."""
    d, f, syntax = tmp_path / "adir", tmp_path / "afile", tmp_path / "broken.py"
    d.mkdir()
    f.write_text("x")
    syntax.write_text("def allreduce(comm, s, r, op=None)\n    pass\n")
    t0 = time.monotonic()
    line = one_error_line(hpc(*[a.format(d=d, f=f, syntax=syntax) for a in argv], timeout=120))
    assert msg in line and time.monotonic() - t0 < 60


@pytest.mark.parametrize("args,msg", [
    (["--iters", "-1"], "expected an integer >= 0"),
    (["--sizes", "3B"], "not a whole number of float32 elements"),
    (["--batches", "0"], "expected an integer >= 1"),
    (["--timeout", "0"], "expected a positive number"),
    (["--timeout", "nan"], "expected a positive number"),
    (["--timeout", "-1"], "expected a positive number"),
])
def test_bench_rejects_bad_numbers(args, msg):
    assert msg in one_error_line(hpc("bench", "collective", "--np", "2", *args, timeout=60))


@pytest.mark.parametrize("text,ok", [
    ("\ufeffnp,time_s\n1,1.0\n2,0.55\n4,0.3\n", True),                       # UTF-8 BOM
    ("np,time_s\n1,1.0,extra\n2,0.55\n4,0.3,x,y\n", True),                  # extra fields
    ("np,time_s\n1,1e308\n2,1e308\n", False),                               # absurd values
    ('np,time_s\n"1","1.0"\n"2","0.6"\n"4","0.35"\n', True),                # quoted
])
def test_fit_reads_csv_with_a_real_parser(tmp_path, text, ok):
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    proc = hpc("fit", str(path), "--json", "--bootstrap", "0", timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["law"] == "amdahl"
    else:
        assert "not a measured time" in one_error_line(proc)


# ---------------------------------------------------------------- records: whole lines or nothing

def _rec(i: int) -> dict:
    return records.new("collective", 2, algo="ring", size_bytes=1024, time_s=1e-5 * (i + 1), times_s=[1e-5])


def test_a_failed_append_leaves_no_partial_line(tmp_path):
    path = tmp_path / "r.jsonl"
    records.append(path, [_rec(0)])
    size = path.stat().st_size
    code = (f"import resource, signal, sys\nsys.path.insert(0, {str(tmp_path.parent)!r})\n"
            "from hpc import records\nfrom hpc.errors import HpcError\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 100}, {size + 100}))\n"
            f"try:\n    records.append({str(path)!r}, [records.new('collective', 2, pad='x' * 5000)])\n"
            "except HpcError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "refused:" in proc.stdout, proc.stdout + proc.stderr
    assert path.stat().st_size == size                  # cut back to the last whole record
    records.append(path, [_rec(1)])
    assert [r["time_s"] for r in records.load(path)] == pytest.approx([1e-5, 2e-5])


def test_a_torn_line_is_skipped_and_the_record_glued_to_it_kept(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    good = [json.dumps(_rec(i)) for i in range(3)]
    path.write_text(good[0] + "\n" + good[1][:40] + good[2] + "\n")
    got = records.load(path)
    assert [r["time_s"] for r in got] == pytest.approx([1e-5, 3e-5])
    assert "torn record" in capsys.readouterr().err


# ---------------------------------------------------------------- data make: space and signals

def test_data_make_refuses_what_cannot_fit(tmp_path):
    line = one_error_line(hpc("data", "make", str(tmp_path / "x.h5"), "--samples", "100000000000",
                              timeout=60))
    assert "free" in line and "--samples" in line
    assert not list(tmp_path.iterdir())


def test_data_make_cleans_its_temp_file_on_sigterm(tmp_path):
    target = tmp_path / "big.h5"
    proc = subprocess.Popen([sys.executable, "-m", "hpc", "data", "make", str(target), "--samples",
                             "3000000", "--shape", "256", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".big.h5.tmp-*")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".big.h5.tmp-*")), "the writer never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted" in err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- nothing left running

def test_absurd_rank_counts_are_refused_before_launch():
    line = one_error_line(hpc("bench", "collective", "--np", "1000", "--sizes", "1KiB", timeout=60))
    assert "ranks per core" in line and "HPC_OVERSUBSCRIBE" in line


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] != "Z":
                    out.append(pid)
        except FileNotFoundError:
            pass
    return out


def _ranks_of(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read() and int(d) != os.getpid():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_hpc_leaves_no_rank_running(tmp_path, sig):
    """A rank stuck in a plug-in (a deadlock) must die with the job when hpc is killed."""
    marker = str(tmp_path / "stuck.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "hpc", "bench", "collective", "--algo",
                             f"{PLUGINS / 'plain_allreduce.py'}:deadlocks", "--no-verify", "--np", "2",
                             "--sizes", "1KiB", "--json", marker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_ranks_of(marker)) < 3:  # mpirun + 2 ranks
        time.sleep(0.2)
    time.sleep(2)  # into the deadlock
    ranks = _ranks_of(marker)
    assert len(ranks) >= 3, "the job never started"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(ranks):
        time.sleep(0.2)
    assert not _alive(ranks), f"left running after {sig.name}: {_alive(ranks)}"


def test_killing_mpirun_itself_takes_its_ranks_down(tmp_path):
    """kill -9 of the launcher (not of hpc): each rank's parent-death signal ends it."""
    marker = str(tmp_path / "stuck2.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "hpc", "bench", "collective", "--algo",
                             f"{PLUGINS / 'plain_allreduce.py'}:deadlocks", "--no-verify", "--np", "2",
                             "--sizes", "1KiB", "--json", marker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_ranks_of(marker)) < 3:
        time.sleep(0.2)
    time.sleep(2)
    argv0 = {p: os.path.basename(open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0].decode())
             for p in _ranks_of(marker) if p != proc.pid}
    launcher = [p for p, a in argv0.items() if a in ("mpirun", "mpiexec", "prterun")]
    ranks = [p for p, a in argv0.items() if a.startswith("python")]
    assert launcher and len(ranks) == 2, argv0
    for pid in launcher:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(ranks):
        time.sleep(0.2)
    assert not _alive(ranks), f"ranks left running: {_alive(ranks)}"
    proc.communicate(timeout=60)
    assert proc.returncode != 0


# ---------------------------------------------------------------- training: no wrong answer as success

@pytest.mark.parametrize("func,extra", [("wrong_above_1mib", []), ("wrong_in_float16", ["--fp16-compress"])])
def test_training_verifies_the_buckets_and_dtypes_it_uses(func, extra):
    line = one_error_line(hpc("train", "--np", "2", "--sync", f"{HOSTILE}:{func}", "--model", "mlp",
                              "--width", "1024", "--features", "512", "--steps", "2", *extra, timeout=300))
    assert "wrong answer" in line, line


@pytest.mark.parametrize("y,msg", [
    ("range", "outside 0..9"), ("float", "labels must be integers"), ("2d", "one class per sample"),
    ("nan", "NaN or infinity"),
])
def test_training_refuses_bad_labels_and_nan_inputs(tmp_path, y, msg):
    import h5py
    import numpy as np

    x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    labels = {"range": np.arange(64) % 12, "float": (np.arange(64) % 3).astype(np.float32),
              "2d": np.zeros((64, 2), np.int64), "nan": np.arange(64) % 3}[y]
    if y == "nan":
        x[:, 3] = np.nan
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = x, labels
    line = one_error_line(hpc("train", "--np", "2", "--data", str(path), "--steps", "3", "--batch", "8",
                              "--classes", "10", timeout=300))
    assert msg in line and "rank" in line


def _rank_env(pid: int) -> int | None:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(item.split(b"=", 1)[1])
    return None


def _training_and_its_rank1(marker, *args: str) -> tuple[subprocess.Popen, int, list[str]]:
    """A long 2-rank training run (records to `marker`), the pid of its rank 1 once the training
    loop runs (its first progress line), and the stderr lines read so far."""
    proc = subprocess.Popen([sys.executable, "-m", "hpc", "train", "--np", "2", "--steps", "1000000", *args,
                             "--json", str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HPC_PROGRESS_S="0.5"))
    seen: list[str] = []
    while not any(line.startswith("hpc train: step") for line in seen):
        line = proc.stderr.readline()
        assert line, "the run ended before training started: " + "".join(seen)
        seen.append(line)
    victim = next((p for p in _ranks_of(str(marker)) if _rank_env(p) == 1), None)
    assert victim, "rank 1 not found"
    return proc, victim, seen


@pytest.mark.parametrize("sync", ["ddp"])
def test_a_rank_killed_from_outside_is_named_not_its_peer(tmp_path, sync):
    proc, victim, _ = _training_and_its_rank1(tmp_path / "victim.jsonl", "--sync", sync)
    time.sleep(1)
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    line = [ln for ln in err.splitlines() if ln.startswith("hpc: error:")][0]
    assert line.startswith("hpc: error: rank 1") and "killed (signal 9" in line, err


def test_a_stopped_rank_is_noticed(tmp_path):
    """SIGSTOP on one rank: the others' step watchdog ends the job with a message, no hang."""
    proc, victim, _ = _training_and_its_rank1(tmp_path / "stopped.jsonl", "--sync", "ring", "--step-timeout", "5")
    time.sleep(1)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert time.monotonic() - t0 < 90
    assert proc.returncode != 0 and "did not finish within" in err, err
