"""The user's own model in `hpc train`: factory SPECs, --model-arg, --input-shape, the zoo, bad input.

The matrix runs a user model file with BatchNorm (tests/models/user_net.py) through every sync scheme
in one MPI job on 2 ranks; the driver itself fails a run whose ranks end with different parameters
or buffers. Parameter counts of the zoo are checked on the meta device (nothing allocated).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, hpc, one_error_line
from tests.test_train import (HAVE_DEEPSPEED, HAVE_HOROVOD, PLUGIN, assert_close, run_matrix)

torch = pytest.importorskip("torch")

USER = REPO / "tests" / "models" / "user_net.py"
BN_BUFFERS = 4  # running mean + var of the BatchNorm2d and the BatchNorm1d in user_net.Net


# -- pure pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, count", [
    ("resnet18", {}, 11_689_512),
    ("resnet50", {}, 25_557_032),
    ("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12}, 124_439_808),  # GPT-2 small, tied head
])
def test_zoo_parameter_counts_match_the_reference(name: str, kwargs: dict, count: int) -> None:
    from hpc.workloads import zoo
    from hpc.workloads.models import n_params

    with torch.device("meta"):  # shapes only: each model built once, no memory, no init cost
        model = getattr(zoo, name)(**kwargs)
    assert n_params(model) == count


def test_zoo_models_train_shapes() -> None:
    from hpc.workloads.models import ModelConfig, build, check_output

    for cfg in (ModelConfig(name="resnet18", classes=5, image=16),
                ModelConfig(name="gpt2", vocab=32, seq_len=8, args=(("n_embd", 32), ("n_head", 2)))):
        model = build(cfg)
        check_output(cfg, model)
        assert model.training


def test_torchvision_spec_builds_torchvision_models_name(tmp_path: Path, monkeypatch) -> None:
    """`torchvision:NAME` = torchvision.models.NAME(num_classes=--classes, **model_args); a stand-in
    package here, because the real torchvision wheel does not import with this CPU torch."""
    from hpc.workloads.models import ModelConfig, build, check_output

    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("from hpc.workloads.zoo import resnet18\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = ModelConfig(name="torchvision:resnet18", input_kind="tensor", input_shape=(3, 16, 16), classes=5,
                      args=(("zero_init_residual", True),))
    try:
        model = build(cfg)
    finally:  # the stand-in must not outlive this test
        for name in ("torchvision.models", "torchvision"):
            sys.modules.pop(name, None)
    check_output(cfg, model)
    assert model.fc.out_features == 5 and float(model.layer1[0].bn2.weight.detach().abs().sum()) == 0.0


def test_parse_model_args_and_shapes() -> None:
    from hpc.errors import HpcError
    from hpc.workloads.models import parse_model_args, parse_shape

    got = dict(parse_model_args(["b=2", "a=0.5", "c=true", "d=None", "e=relu", "f='7'", "g=1e-3"]))
    assert got == {"a": 0.5, "b": 2, "c": True, "d": None, "e": "relu", "f": "7", "g": 1e-3}
    assert type(got["b"]) is int
    assert parse_shape("3x32x32") == (3, 32, 32) and parse_shape("512") == (512,)
    for bad in (["novalue"], ["=3"], ["1x=3"], ["a=1", "a=2"]):
        with pytest.raises(HpcError):
            parse_model_args(bad)
    for bad in ("", "3x", "3x0", "axb", "-1"):
        with pytest.raises(HpcError, match="bad --input-shape"):
            parse_shape(bad)


def test_file_flags_that_contradict_the_data_are_errors() -> None:
    from hpc.errors import HpcError
    from hpc.workloads.models import ModelConfig, config_from_data

    user = ModelConfig(name=f"{USER}:net")  # input from the file
    cfg = config_from_data(user, (3, 6, 6), np.dtype("float32"), {"classes": 4}, None)
    assert cfg.kind == "tensor" and cfg.sample_shape() == (3, 6, 6) and cfg.classes == 4
    tok = config_from_data(user, (8,), np.dtype("int64"), {"classes": 16}, None)
    assert tok.kind == "tokens" and tok.seq_len == 8 and tok.vocab == 16
    with pytest.raises(HpcError, match="--classes 7 contradicts f.h5"):
        config_from_data(user, (3, 6, 6), np.dtype("float32"), {"classes": 4}, None, {"--classes": 7}, "f.h5")
    with pytest.raises(HpcError, match="--input-shape 3x8x8 contradicts"):
        config_from_data(user, (3, 6, 6), np.dtype("float32"), {}, None, {"--input-shape": (3, 8, 8)})
    with pytest.raises(HpcError, match="--seq-len 9 contradicts"):
        config_from_data(user, (8,), np.dtype("int64"), {}, None, {"--seq-len": 9})
    same = config_from_data(ModelConfig(name="mlp"), (12,), np.dtype("float32"), {"classes": 4}, None,
                            {"--classes": 4, "--features": 12})
    assert same.features == 12 and same.classes == 4


# -- a user model through every sync scheme, 2 ranks, one MPI job --------------------------------------

def test_user_model_through_every_scheme(tmp_path: Path) -> None:
    images = tmp_path / "img.h5"
    made = hpc("data", "make", str(images), "--kind", "image", "--samples", "64", "--shape", "3x6x6",
               "--classes", "4", "--no-progress", timeout=120)
    assert made.returncode == 0, made.stderr
    base = ["--model", f"{USER}:skewed", "--model-arg", "hidden=8", "--input-shape", "3x6x6",
            "--classes", "4", "--batch", "8", "--steps", "3", "--warmup", "1", "--seed", "2"]
    schemes = {"ring": ["--sync", "ring"], "auto": ["--sync", "auto"], "mpi": ["--sync", "mpi"],
               "ps": ["--sync", "ps"], "plugin": ["--sync", f"{PLUGIN}:allreduce"], "ddp": ["--sync", "ddp"]}
    if HAVE_DEEPSPEED:
        schemes.update({f"zero{s}": ["--sync", f"deepspeed-zero{s}"] for s in (1, 2, 3)})
    if HAVE_HOROVOD:
        schemes["horovod"] = ["--sync", "horovod"]
    cases = {k: base + v for k, v in schemes.items()}
    cases["ps_async"] = base + ["--sync", "ps-async", "--servers", "1"]
    cases["from_file"] = ["--model", f"{USER}:net", "--data", str(images), "--batch", "8", "--steps", "3",
                          "--sync", "ring"]
    cases["tokens"] = ["--model", f"{USER}:tiny_lm", "--model-arg", "vocab=16", "--vocab", "16",
                       "--seq-len", "8", "--batch", "4", "--steps", "3", "--sync", "ring"]
    cases["gpt2"] = ["--model", "gpt2", "--model-arg", "n_embd=16", "--vocab", "16", "--seq-len", "8",
                     "--batch", "4", "--steps", "3", "--sync", "mpi"]
    runs = run_matrix(tmp_path, 2, cases, timeout=560)
    want = runs["ring"]["params"]
    for name in schemes:  # lock-step schemes: the same math, so the same parameters (float tolerance)
        rec = runs[name]["record"]
        assert_close(name, runs[name]["params"], want)
        assert rec["model"] == f"{USER}:skewed" and rec["model_args"] == {"hidden": 8}
        assert rec["sample_shape"] == [3, 6, 6] and rec["buffer_sha256"]
        # every rank started from rank 0's buffers (the `shift` buffer never trains): only the
        # BatchNorm running statistics, which follow each rank's own data, needed averaging
        assert rec["buffers_averaged"] == BN_BUFFERS, (name, rec["buffers_averaged"])
        assert all(np.isfinite(rec["loss"]))
    assert runs["ps_async"]["record"]["buffers_averaged"] == 0  # one data rank: nothing to average
    assert runs["from_file"]["record"]["sample_shape"] == [3, 6, 6]
    assert runs["tokens"]["record"]["sample_shape"] == [8]
    assert runs["gpt2"]["record"]["buffer_sha256"] is None  # no buffers; tied head counted once
    assert runs["gpt2"]["record"]["n_params"] == 16 * 16 + 8 * 16 + 2 * (12 * 16 * 16 + 13 * 16) + 2 * 16


# -- bad input: one line, non-zero exit ---------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--model", f"{USER}:nope", "--input-shape", "3x6x6"], "has no function 'nope'"),
    (["--model", "/nonexistent/net.py:net", "--input-shape", "4"], "model factory file not found"),
    (["--model", "no_such_pkg_xyz.models:net", "--input-shape", "4"], "cannot import 'no_such_pkg_xyz.models'"),
    (["--model", f"{USER}:broken", "--input-shape", "3x6x6"], "raised RuntimeError: this factory is broken"),
    (["--model", f"{USER}:not_a_module", "--input-shape", "3x6x6"], "returned int, not a torch.nn.Module"),
    (["--model", f"{USER}:net", "--input-shape", "3x6x6", "--classes", "5"], "--classes 5 needs (2, 5)"),
    (["--model", f"{USER}:net", "--input-shape", "3x6x6", "--model-arg", "hidden"], "bad --model-arg 'hidden'"),
    (["--model", f"{USER}:net", "--input-shape", "3x6x6", "--model-arg", "depth=2"],
     "unexpected keyword argument 'depth'"),
    (["--model", f"{USER}:net", "--input-shape", "3xx6"], "bad --input-shape '3xx6'"),
    (["--model", f"{USER}:net", "--input-shape", "6"], "fails on input of 6 per sample"),
    (["--model", f"{USER}:net"], "needs its input described"),
    (["--model", f"{USER}:net", "--input-shape", "4", "--vocab", "8"], "not both"),
    (["--model", "mlp", "--model-arg", "width=3"], "--model-arg is for factory models"),
    (["--model", "resnet18", "--model-arg", "num_classes=3"], "takes it from --classes"),
    (["--model", "gpt2", "--width", "8"], "--width sizes the built-in"),
])
def test_bad_model_input_is_one_line(argv: list[str], message: str) -> None:
    line = one_error_line(hpc("train", "--np", "1", *argv, "--steps", "1", timeout=120))
    assert message in line, line


def test_flag_contradicting_the_data_file(tmp_path: Path) -> None:
    data = tmp_path / "tab.h5"
    made = hpc("data", "make", str(data), "--kind", "tabular", "--samples", "32", "--shape", "12",
               "--classes", "4", "--no-progress", timeout=120)
    assert made.returncode == 0, made.stderr
    line = one_error_line(hpc("train", "--np", "1", "--data", str(data), "--classes", "7", "--steps", "1",
                              timeout=120))
    assert f"--classes 7 contradicts {data}" in line and "holds classes 4" in line, line


def test_module_spec_resolves_from_the_working_directory() -> None:
    """`--model user_net:net` from the folder holding user_net.py, as `python -m` would find it."""
    import subprocess

    script = Path(sys.executable).parent / "hpc"  # the console script: its sys.path lacks the cwd
    if not script.exists():
        pytest.skip("no hpc console script beside this interpreter")
    proc = subprocess.run([str(script), "train", "--np", "2", "--model", "user_net:net", "--input-shape", "3x6x6",
                           "--classes", "4", "--steps", "2", "--batch", "4"], cwd=REPO / "tests" / "models",
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
