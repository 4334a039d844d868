"""`hpc train`: every sync scheme against single-process training, on real MPI ranks.

Several runs share one MPI job (tests/mpi/train_matrix.py) so torch/Horovod/DeepSpeed are imported
once per job. Each synchronous run must end with bit-identical parameters on all ranks (the driver
checks; a mismatch fails the run) that match plain single-process SGD/Adam on the concatenated
per-rank batches. Horovod and DeepSpeed are real; their tests skip only when the package is absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, hpc, mpirun, one_error_line

torch = pytest.importorskip("torch")

MATRIX = REPO / "tests" / "mpi" / "train_matrix.py"
PLUGIN = REPO / "tests" / "plugins" / "plain_allreduce.py"
TINY = ["--model", "mlp", "--width", "24", "--depth", "2", "--features", "12", "--classes", "4",
        "--batch", "8", "--steps", "4", "--warmup", "1", "--seed", "3"]
HAVE_HOROVOD = importlib.util.find_spec("horovod") is not None
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
NO_HOROVOD = "horovod is not installed (build it: python -m hpc.horovod_build)"
NO_DEEPSPEED = "deepspeed is not installed (pip install deepspeed==0.19.8)"


# -- helpers ---------------------------------------------------------------------------------------

def run_matrix(tmp: Path, np_: int, cases: dict[str, list[str]], timeout: int = 400) -> dict[str, dict]:
    """Run the cases in one MPI job; return name -> {"record": ..., "params": ...}."""
    spec = tmp / f"cases{np_}.json"
    spec.write_text(json.dumps(cases))
    proc = mpirun(np_, sys.executable, "-m", "mpi4py", str(MATRIX), str(tmp), str(spec), timeout=timeout,
                  env={"PYTHONPATH": str(REPO), "HPC_INSIDE_MPI": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = {}
    for name in cases:
        recs = [json.loads(line) for line in (tmp / f"{name}.jsonl").read_text().splitlines()]
        assert len(recs) == 1 and recs[0]["status"] == "ok", recs
        out[name] = {"record": recs[0], "params": np.load(tmp / f"{name}.npy")}
    return out


def reference(argv: list[str], world: int, workers: int | None = None) -> np.ndarray:
    """Single-process training on the concatenation of every data rank's batches (same code paths)."""
    from hpc.cli.args import options
    from hpc.cli.main import build_parser
    from hpc.workloads.models import build, loss_fn
    from hpc.workloads.sync.base import TrainOptions, flat_params, make_optimizer
    from hpc.workloads.train_plan import TrainConfig, plan
    from hpc.workloads.train_steps import data_source

    args = build_parser().parse_args(["train", *argv])
    args = options(TrainConfig, args, model_args=tuple(args.model_args))
    pl = plan(args, world)
    workers = world if workers is None else workers
    batch = args.batch // workers if pl.scaling == "strong" else args.batch
    first = world - workers
    sources = [data_source(args, pl, first + r, world, workers, batch) for r in range(workers)]
    cfg = sources[0][0]
    model = build(cfg)
    opt = make_optimizer(model.parameters(), TrainOptions(optimizer=args.optimizer, lr=pl.lr,
                                                          momentum=args.momentum))
    for _ in range(args.steps):
        xs, ys = zip(*(next(src) for _, src in sources))
        x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
        opt.zero_grad()
        loss_fn(cfg, model(x), y).backward()
        opt.step()
    return flat_params(model.parameters())


def assert_close(name: str, got: np.ndarray, want: np.ndarray, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = np.abs(got - want)
    worst = int(np.argmax(err - atol - rtol * np.abs(want)))
    assert np.allclose(got, want, rtol=rtol, atol=atol), \
        f"{name}: differs from single-process training, worst index {worst}: {got[worst]} vs {want[worst]}"


# -- pure pieces -----------------------------------------------------------------------------------

def test_buckets_keep_order_and_size() -> None:
    from hpc.workloads.sync.own import plan_buckets

    sizes = [10, 10, 30, 5, 5, 5, 100]
    groups = plan_buckets(sizes, bucket_bytes=20 * 4)
    assert [i for g in groups for i in g] == list(range(len(sizes)))  # every parameter once, in order
    assert groups == [[0, 1], [2], [3, 4, 5], [6]]  # a too-big parameter gets its own bucket
    assert plan_buckets(sizes, 1 << 30) == [list(range(len(sizes)))]


def test_synthetic_streams_are_per_rank_and_reproducible() -> None:
    from hpc.workloads.models import ModelConfig, SyntheticData

    for name in ("mlp", "cnn", "transformer"):
        cfg = ModelConfig(name=name, seed=5)
        a, b, c = SyntheticData(cfg, 0, 4), SyntheticData(cfg, 0, 4), SyntheticData(cfg, 1, 4)
        xa, ya = next(a)
        xb, yb = next(b)
        xc, _ = next(c)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert not np.array_equal(xa, xc)
        assert xa.shape == (4, *cfg.sample_shape())


def test_models_are_seeded() -> None:
    from hpc.workloads.models import ModelConfig, build
    from hpc.workloads.sync.base import flat_params

    for name in ("mlp", "cnn", "transformer"):
        one = flat_params(build(ModelConfig(name=name, seed=1)).parameters())
        again = flat_params(build(ModelConfig(name=name, seed=1)).parameters())
        other = flat_params(build(ModelConfig(name=name, seed=2)).parameters())
        assert np.array_equal(one, again) and not np.array_equal(one, other)


def test_driver_asks_scheme_facts_not_names() -> None:
    """train.py never branches on a scheme's name: each sync module declares FACTS."""
    import ast

    from hpc.workloads import sync

    src = (REPO / "hpc" / "workloads" / "train.py").read_text()
    strings = {n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for name in ("ps-async", "ps_async", "horovod", "ddp", "deepspeed", "own"):
        assert name not in strings, f"train.py compares against scheme name {name!r}"
    assert ".module" not in src and "trainer.name !=" not in src and "trainer.name ==" not in src
    facts = {s: sync.facts(sync.resolve(s)) for s in ("ring", "ps-async", "ddp", "horovod", "deepspeed-zero3")}
    assert facts["ring"].collective and facts["ring"].cuda and facts["ring"].lockstep
    assert not facts["ps-async"].lockstep and facts["ps-async"].server_ranks
    assert facts["ps-async"].data_ranks(4, 2) == 2 and facts["ring"].data_ranks(4, 2) == 4
    assert not any(facts[s].collective for s in ("ddp", "horovod", "deepspeed-zero3"))
    # the baselines run on GPUs as their users run them (NCCL: a GPU per rank; tests/test_gpu_path.py)
    assert all(facts[s].cuda and facts[s].gpu_exclusive for s in ("ddp", "horovod", "deepspeed-zero3"))
    assert not facts["ring"].gpu_exclusive


# -- every scheme on 2 ranks -----------------------------------------------------------------------

def test_schemes_on_two_ranks_match_single_process(tmp_path: Path) -> None:
    data = tmp_path / "tab.h5"
    made = hpc("data", "make", str(data), "--kind", "tabular", "--samples", "200", "--shape", "12",
               "--classes", "4", "--seed", "9", "--no-progress", timeout=120)
    assert made.returncode == 0, made.stderr
    cases = {
        "ring": ["--sync", "ring"],
        "mpi": ["--sync", "mpi"],
        "ps": ["--sync", "ps"],
        "ps_server": ["--sync", "ps", "--servers", "1"],
        "auto": ["--sync", "auto"],
        "recursive_doubling": ["--sync", "recursive_doubling"],
        "rabenseifner": ["--sync", "rabenseifner"],
        "tree": ["--sync", "tree"],
        "plugin_file": ["--sync", f"{PLUGIN}:allreduce"],
        "no_overlap": ["--sync", "ring", "--no-overlap"],
        "overlap": ["--sync", "ring", "--overlap", "on", "--bucket-mb", "0.001"],
        "staging": ["--sync", "ring", "--host-staging"],
        "many_buckets": ["--sync", "ring", "--bucket-mb", "0.0005"],
        "adam": ["--sync", "ring", "--optimizer", "adam"],
        "momentum": ["--sync", "mpi", "--momentum", "0.9", "--bucket-mb", "0.001"],
        "cnn": ["--sync", "ring", "--model", "cnn", "--width", "4", "--image", "8"],
        "transformer": ["--sync", "ring", "--model", "transformer", "--width", "16", "--depth", "1",
                        "--heads", "2", "--vocab", "16", "--seq-len", "8"],
        "file_weak": ["--sync", "ring", "--data", str(data), "--scaling", "weak", "--steps", "6"],
        "file_strong": ["--sync", "ring", "--data", str(data), "--scaling", "strong", "--batch", "16",
                        "--steps", "8"],
        "ddp": ["--sync", "ddp"],
        "ps_async_1worker": ["--sync", "ps-async", "--servers", "1"],
        "fp16": ["--sync", "ring", "--fp16-compress"],
        "fp16_staging": ["--sync", "ring", "--fp16-compress", "--host-staging", "--bucket-mb", "0.001",
                         "--overlap", "on"],
        "ddp_fp16": ["--sync", "ddp", "--fp16-compress"],
    }
    if HAVE_HOROVOD:
        cases["horovod"] = ["--sync", "horovod"]
        cases["horovod_fp16"] = ["--sync", "horovod", "--fp16-compress"]
    cases = {k: TINY + v for k, v in cases.items()}
    runs = run_matrix(tmp_path, 2, cases)
    refs: dict[str, np.ndarray] = {}
    for name, argv in cases.items():
        rec, params = runs[name]["record"], runs[name]["params"]
        key = json.dumps(_model_flags(argv))
        if name == "ps_async_1worker":  # one worker: asynchronous SGD is plain sequential SGD
            want = reference(argv, 2, workers=1)
        else:
            want = refs.setdefault(key, reference(argv, 2))
        loose = "fp16" in name
        assert_close(name, params, want, rtol=1e-2 if loose else 1e-4, atol=2e-3 if loose else 1e-5)
        assert rec["np"] == 2 and rec["kind"] == "train" and rec["sync"] == argv[argv.index("--sync") + 1]
        assert len(rec["loss"]) == rec["steps"] and all(np.isfinite(rec["loss"]))
        assert rec["timed_steps"] == rec["steps"] - 1 and len(rec["times_s"]) == rec["timed_steps"]
        for key_ in ("compute_s", "comm_s", "data_s", "time_s", "steps_per_s", "samples_per_s"):
            assert rec[key_] >= 0, (name, key_, rec[key_])
        assert rec["bytes_per_step"] == rec["n_params"] * (2 if "fp16" in name else 4) * (
            2 if name.startswith("ps_async") else 1), name
    assert runs["many_buckets"]["record"]["buckets"] > 3 and runs["ring"]["record"]["buckets"] == 1
    assert runs["no_overlap"]["record"]["overlap"] is False and runs["overlap"]["record"]["overlap"] is True
    assert runs["staging"]["record"]["host_staging"] is True
    assert runs["file_strong"]["record"]["batch_per_rank"] == 8
    assert runs["file_strong"]["record"]["global_batch"] == 16
    assert runs["ps_async_1worker"]["record"]["staleness_max"] == 0


def _model_flags(argv: list[str]) -> list[str]:
    """The flags that decide the reference run (everything except how gradients are synchronised)."""
    skip_with_value = {"--sync", "--bucket-mb", "--servers"}
    skip = {"--no-overlap", "--host-staging", "--fp16-compress"}
    skip_with_value.add("--overlap")
    out, it = [], iter(argv)
    for a in it:
        if a in skip_with_value:
            next(it)
        elif a not in skip:
            out.append(a)
    return out


@pytest.mark.skipif(not HAVE_DEEPSPEED, reason=NO_DEEPSPEED)
def test_deepspeed_zero_stages_match_single_process(tmp_path: Path) -> None:
    cases = {f"zero{s}": TINY + ["--sync", f"deepspeed-zero{s}"] for s in (1, 2, 3)}
    cases["zero2_adam"] = TINY + ["--sync", "deepspeed-zero2", "--optimizer", "adam"]
    runs = run_matrix(tmp_path, 2, cases, timeout=500)
    for name, argv in cases.items():
        assert_close(name, runs[name]["params"], reference(argv, 2))
        assert runs[name]["record"]["zero_stage"] == int(name[4])
        assert runs[name]["record"]["bytes_per_step"] == runs[name]["record"]["n_params"] * 4


# -- 4 ranks -----------------------------------------------------------------------------------------

def test_schemes_on_four_ranks(tmp_path: Path) -> None:
    sync_cases = {"ring": ["--sync", "ring", "--bucket-mb", "0.001", "--overlap", "on"],
                  "ring_off": ["--sync", "ring", "--overlap", "off"], "ps_server": ["--sync", "ps", "--servers", "1"],
                  "rabenseifner": ["--sync", "rabenseifner"], "ddp": ["--sync", "ddp"]}
    if HAVE_HOROVOD:
        sync_cases["horovod"] = ["--sync", "horovod"]
    cases = {k: TINY + v for k, v in sync_cases.items()}
    # asynchronous: 2 servers, 2 workers, more steps; it must learn and keep within the bound
    cases["ps_async"] = TINY + ["--sync", "ps-async", "--servers", "2", "--staleness", "1", "--steps", "40",
                                "--lr", "0.2"]
    cases["ps_async_lockstep"] = TINY + ["--sync", "ps-async", "--servers", "1", "--staleness", "0",
                                         "--steps", "10"]
    runs = run_matrix(tmp_path, 4, cases, timeout=500)
    want = reference(TINY + ["--sync", "ring"], 4)
    for name in sync_cases:
        assert_close(name, runs[name]["params"], want)
    rec = runs["ps_async"]["record"]
    assert rec["workers"] == 2 and rec["servers"] == 2 and rec["global_batch"] == 16
    assert 0 <= rec["staleness_max"] <= 1
    assert np.mean(rec["loss"][-5:]) < 0.6 * np.mean(rec["loss"][:3]), rec["loss"]
    lock = runs["ps_async_lockstep"]["record"]
    assert lock["staleness_max"] == 0 and lock["workers"] == 3


# -- the command as users run it ---------------------------------------------------------------------

def test_cli_run_prints_breakdown_and_appends_record(tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "train.jsonl"
    for _ in range(2):
        proc = hpc("train", "--np", "2", *TINY, "--sync", "ring", "--json", str(out), "--per-step", timeout=240)
        assert proc.returncode == 0, proc.stderr
    assert "exposed communication" in proc.stdout and "parameters identical on all ranks" in proc.stdout
    frame = pd.read_json(out, lines=True)
    assert len(frame) == 2 and set(frame["kind"]) == {"train"} and set(frame["status"]) == {"ok"}
    for col in ("sync", "model", "device", "batch_per_rank", "global_batch", "steps", "steps_per_s",
                "samples_per_s", "compute_s", "comm_s", "data_s", "loss", "bytes_per_step",
                "param_checksum", "provenance", "time_s", "times_s", "np", "nodes", "scaling"):
        assert col in frame.columns, col
    assert frame["param_checksum"].nunique() == 1  # deterministic: same data, same seed, same result


@pytest.mark.parametrize("argv, message", [
    (["--sync", "nosuch"], "unknown collective 'nosuch'"),
    (["--sync", "deepspeed-zero9"], "unknown DeepSpeed scheme"),
    (["--model", "resnet900"], "unknown model 'resnet900'"),
    (["--sync", "ps-async", "--np", "1"], "needs --np >= 2"),
    (["--sync", "ps-async", "--servers", "2", "--np", "2"], "needs --np >= 3"),
    (["--sync", "ring", "--servers", "1"], "--servers is for --sync ps or ps-async"),
    (["--model", "transformer", "--width", "30", "--heads", "4"], "not divisible by --heads"),
    (["--data", "/nonexistent/x.h5"], "no such file"),
])
def test_bad_input_is_one_line(argv: list[str], message: str) -> None:
    if "--np" not in argv:
        argv = [*argv, "--np", "2"]
    line = one_error_line(hpc("train", *argv, "--steps", "1", timeout=120))
    assert message in line, line


def test_model_that_does_not_fit_the_data_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tok.h5"
    made = hpc("data", "make", str(tokens), "--kind", "tokens", "--samples", "64", "--shape", "8",
               "--classes", "16", "--no-progress", timeout=120)
    assert made.returncode == 0, made.stderr
    line = one_error_line(hpc("train", "--np", "2", "--model", "mlp", "--data", str(tokens), "--steps", "1",
                              timeout=120))
    assert "needs floating-point samples" in line and "--model transformer" in line, line
    ok = hpc("train", "--np", "2", "--model", "transformer", "--width", "16", "--depth", "1", "--heads", "2",
             "--data", str(tokens), "--steps", "2", "--batch", "4", timeout=180)
    assert ok.returncode == 0, ok.stderr


def test_float64_and_uint8_image_files_train(tmp_path: Path) -> None:
    """Images as numpy writes them by default (float64) or as stored datasets keep them (uint8) train
    like float32 ones, on a built-in model and on a user's factory that only knows the file."""
    import h5py

    rng = np.random.default_rng(0)
    f64, u8 = tmp_path / "f64.h5", tmp_path / "u8.h5"
    with h5py.File(f64, "w") as f:
        f["x"], f["y"] = rng.standard_normal((32, 3, 8, 8)), rng.integers(0, 4, 32)
    with h5py.File(u8, "w") as f:
        f["x"], f["y"] = rng.integers(0, 256, (32, 3, 8, 8)).astype(np.uint8), rng.integers(0, 4, 32)
    named = tmp_path / "named.h5"
    with h5py.File(named, "w") as f:
        f["train/images"], f["train/labels"] = rng.standard_normal((32, 3, 8, 8)), rng.integers(0, 4, 32)
    proc = hpc("train", "--np", "2", "--model", "cnn", "--data", str(named), "--steps", "1", timeout=120)
    assert "--x-name/--y-name" in one_error_line(proc)
    proc = hpc("train", "--np", "2", "--model", "cnn", "--data", str(named), "--x-name", "train/images",
               "--y-name", "train/labels", "--steps", "2", "--batch", "4", "--classes", "4", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    net = f"{REPO / 'tests' / 'models' / 'user_net.py'}:net"
    for data, model in ((f64, "cnn"), (u8, "cnn"), (u8, net), (f64, net)):  # 4 classes: from the labels
        proc = hpc("train", "--np", "2", "--model", model, "--data", str(data), "--steps", "2", "--batch", "4",
                   "--sync", "ring", timeout=180)
        assert proc.returncode == 0, (data.name, model, proc.stderr[-2000:])


def test_uneven_strong_batch_is_said(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    proc = hpc("train", "--np", "2", "--model", "mlp", "--batch", "7", "--scaling", "strong", "--steps", "2",
               "--json", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "--batch 7 does not split evenly over 2 data ranks: 3 per rank, global batch 6" in proc.stderr
    assert json.loads(out.read_text())["global_batch"] == 6


def test_a_file_smaller_than_a_global_batch_is_said(tmp_path: Path) -> None:
    import h5py

    tiny = tmp_path / "tiny.h5"
    with h5py.File(tiny, "w") as f:
        f["x"], f["y"] = np.random.default_rng(0).random((3, 4)).astype(np.float32), np.array([0, 1, 2])
    proc = hpc("train", "--np", "2", "--model", "mlp", "--data", str(tiny), "--batch", "8", "--steps", "2",
               "--sync", "ring,mpi", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("holds 3 samples, fewer than one global batch of 16") == 1, proc.stderr


def test_ddp_with_unused_parameters_needs_the_flag_and_works_with_it() -> None:
    model = f"{REPO / 'tests' / 'models' / 'user_net.py'}:with_unused"
    args = ("train", "--np", "2", "--model", model, "--input-shape", "3x6x6", "--classes", "4", "--steps", "3",
            "--batch", "4")
    line = one_error_line(hpc(*args, "--sync", "ring,ddp", "--order-seed", "1", timeout=180))
    assert "--sync ddp" in line and "find_unused_parameters" in line, line
    ok = hpc(*args, "--sync", "ddp", "--ddp-find-unused", timeout=180)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_sys_exit_on_one_rank_ends_the_job_in_one_line() -> None:
    model = f"{REPO / 'tests' / 'models' / 'user_net.py'}:exits_on_rank1"
    line = one_error_line(hpc("train", "--np", "2", "--model", model, "--input-shape", "3x8x8", "--classes", "4",
                              "--steps", "2", timeout=120))
    assert "rank 1: the workload called sys.exit(5)" in line, line


def test_nonfinite_loss_stops_every_rank(tmp_path: Path) -> None:
    for sync, np_ in (("ring", "2"), ("ps-async", "3")):
        out = tmp_path / f"{sync}.jsonl"
        proc = hpc("train", "--np", np_, *TINY, "--sync", sync, "--lr", "1e30", "--steps", "6",
                   "--json", str(out), timeout=240)
        line = one_error_line(proc)
        assert "non-finite loss" in line, line
        if sync == "ring":  # rank 0 holds the data and writes a failed record before stopping
            rec = json.loads(out.read_text().splitlines()[-1])
            assert rec["status"] == "failed" and "non-finite" in rec["error"]


def _hide(tmp_path: Path, package: str) -> dict[str, str]:
    """An environment in which `package` cannot be found, as in a venv where it is not installed."""
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        class _Hide:
            def find_spec(self, name, path=None, target=None):
                if name == {package!r} or name.startswith({package!r} + "."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, _Hide())
    """))
    return {"PYTHONPATH": f"{site}:{REPO}"}


@pytest.mark.parametrize("sync, package, hint", [
    ("horovod", "horovod", "python -m hpc.horovod_build"),
    ("deepspeed-zero2", "deepspeed", "pip install deepspeed"),
])
def test_missing_package_fails_fast_on_every_rank(tmp_path: Path, sync: str, package: str, hint: str) -> None:
    env = _hide(tmp_path, package)
    line = one_error_line(hpc("train", "--np", "2", "--sync", sync, "--steps", "1", env=env, timeout=120))
    assert f"{package} is not installed" in line and hint in line, line
    # started by hand under mpirun (no parent-side check): every rank fails the same way, no hang
    proc = mpirun(2, sys.executable, "-m", "mpi4py", "-m", "hpc", "train", "--sync", sync, "--steps", "1",
                  env={**env, "HPC_INSIDE_MPI": "1"}, timeout=120)
    assert proc.returncode != 0
    assert f"hpc: error: rank 0: {package} is not installed" in proc.stderr or \
        f"hpc: error: rank 1: {package} is not installed" in proc.stderr, proc.stderr


def test_cuda_device(tmp_path: Path) -> None:
    argv = TINY + ["--sync", "ring", "--device", "cuda"]
    if not torch.cuda.is_available():
        line = one_error_line(hpc("train", "--np", "2", *argv, timeout=120))
        assert "--device cuda: no CUDA GPU" in line, line
        return
    runs = run_matrix(tmp_path, 2, {"cuda": argv, "cuda_fp16": argv + ["--fp16-compress", "--bucket-mb", "0.001"]})
    want = reference(argv[:-2], 2)
    assert_close("cuda", runs["cuda"]["params"], want, rtol=1e-3, atol=1e-4)
    assert_close("cuda_fp16", runs["cuda_fp16"]["params"], want, rtol=1e-2, atol=2e-3)
    rec = runs["cuda"]["record"]
    assert rec["device"] == "cuda" and rec["cuda_path"] in ("cuda-aware-mpi", "host-staging")
    assert rec["host_staging"] is (rec["cuda_path"] == "host-staging")
    assert rec["provenance"]["gpu"]["count"] >= 1


def test_horovod_build_wrapper_and_skip(tmp_path: Path) -> None:
    from hpc.horovod_build import build_env

    env = build_env(tmp_path, jobs=2)
    probe = subprocess.run([env["CXX"], "-std=c++14", "-dM", "-E", "-x", "c++", "/dev/null"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert "#define __cplusplus 201703L" in probe.stdout  # C++14 was rewritten to C++17
    assert env["CMAKE_POLICY_VERSION_MINIMUM"] == "3.5" and env["HOROVOD_WITH_PYTORCH"] == "1"
    if HAVE_HOROVOD:  # installed: the script notices and does nothing
        proc = subprocess.run([sys.executable, "-m", "hpc.horovod_build"], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert proc.returncode == 0 and "already works" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(HAVE_HOROVOD, reason="horovod is installed: the missing-package path is tested above")
def test_horovod_absent_really() -> None:
    line = one_error_line(hpc("train", "--np", "2", "--sync", "horovod", "--steps", "1", timeout=120))
    assert "python -m hpc.horovod_build" in line
