"""hpc.torch as a drop-in for horovod.torch, on real MPI ranks.

tests/scripts/hvd_train.py is a Horovod training script (conv net with a buffer, DistributedOptimizer,
broadcast_parameters/optimizer_state/object, allreduce of the loss, allgather to check the ranks). It
runs once as written (real Horovod) and once with only its import line changed to
`import hpc.torch as hvd`; both must end with the same parameters, equal to single-process training on
the global batch (tests/scripts/toy.py:reference). One job runs every variant (none, fp16 compression,
backward_passes_per_step=2, op=Sum) so torch is imported once per job.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import PLUGINS, REPO, mpirun

torch = pytest.importorskip("torch")

SCRIPTS = REPO / "tests" / "scripts"
HVD_SCRIPT = SCRIPTS / "hvd_train.py"
VARIANTS = ("none", "fp16", "passes2", "sum")
STEPS, GLOBAL_BATCH = 4, 16
HAVE_HOROVOD = importlib.util.find_spec("horovod") is not None
NO_HOROVOD = "horovod is not importable (build it: python -m hpc.horovod_build)"
ENV = {"PYTHONPATH": f"{SCRIPTS}:{REPO}"}


def hpc_copy(tmp: Path) -> Path:
    """The user's edit: the Horovod import line becomes `import hpc.torch as hvd`, nothing else."""
    text = HVD_SCRIPT.read_text()
    assert text.count("import horovod.torch as hvd\n") == 1
    out = tmp / "hpc_train.py"
    out.write_text(text.replace("import horovod.torch as hvd\n", "import hpc.torch as hvd\n"))
    return out


def run_script(script: Path, out: Path, variants: tuple[str, ...] = VARIANTS, env: dict | None = None):
    proc = mpirun(2, sys.executable, str(script), "--variants", ",".join(variants), "--steps", str(STEPS),
                  "--global-batch", str(GLOBAL_BATCH), "--out", str(out), timeout=420,
                  env={**ENV, **(env or {})})
    return proc


def load(proc, out: Path) -> dict[str, np.ndarray]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import toy
    finally:
        sys.path.remove(str(SCRIPTS))
    params, losses = toy.reference(STEPS, GLOBAL_BATCH)
    return params.numpy(), np.array(losses)


@pytest.fixture(scope="module")
def hpc_run(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    tmp = tmp_path_factory.mktemp("hpc_torch")
    record = tmp / "rec.jsonl"
    proc = run_script(hpc_copy(tmp), tmp / "hpc.npz", env={"HPC_RECORD": str(record)})
    return load(proc, tmp / "hpc.npz"), record


def close(variant: str) -> dict[str, float]:
    return {"rtol": 2e-3, "atol": 1e-4} if variant == "fp16" else {"rtol": 1e-5, "atol": 1e-6}


# -- the codec -------------------------------------------------------------------------------------

def test_fp16_codec_is_one_object_for_hpc_torch_and_the_wire() -> None:
    import hpc.torch as hvd
    from hpc.workloads.sync import own
    from hpc.workloads.sync.compression import FP16Compressor, wire_dtype

    assert hvd.Compression.fp16 is FP16Compressor and own.FP16Compressor is FP16Compressor
    x = torch.linspace(-3, 3, 11)
    wire, ctx = hvd.Compression.fp16.compress(x)
    assert wire.dtype == torch.float16 and ctx == torch.float32
    back = hvd.Compression.fp16.decompress(wire, ctx)
    assert back.dtype == torch.float32 and torch.allclose(back, x, atol=2e-3)
    ints = torch.arange(5)
    assert hvd.Compression.fp16.compress(ints)[0] is ints  # only floating point is compressed
    assert hvd.Compression.none.compress(x) == (x, None) and hvd.Compression.none.decompress(x, None) is x
    assert wire_dtype(hvd.Compression.fp16, x) == torch.float16 and wire_dtype(hvd.Compression.none, x) == x.dtype


def test_use_before_init_is_horovods_value_error() -> None:
    import hpc.torch as hvd

    assert not hvd.is_initialized()
    with pytest.raises(ValueError, match="use hvd.init"):
        hvd.rank()


# -- the Horovod script, unchanged but for its import ----------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_hpc_torch_equals_single_process_training(hpc_run, reference, variant: str) -> None:
    got, _ = hpc_run
    want_params, want_losses = reference
    np.testing.assert_allclose(got[f"{variant}_params"], want_params, **close(variant))
    np.testing.assert_allclose(got[f"{variant}_losses"], want_losses, rtol=1e-4)


@pytest.mark.skipif(not HAVE_HOROVOD, reason=NO_HOROVOD)
def test_same_script_under_horovod_ends_with_the_same_parameters(hpc_run, reference, tmp_path: Path) -> None:
    got, _ = hpc_run
    hvd = load(run_script(HVD_SCRIPT, tmp_path / "hvd.npz"), tmp_path / "hvd.npz")
    for variant in VARIANTS:
        np.testing.assert_allclose(hvd[f"{variant}_params"], got[f"{variant}_params"], **close(variant),
                                   err_msg=variant)
        np.testing.assert_allclose(hvd[f"{variant}_params"], reference[0], **close(variant), err_msg=variant)
        np.testing.assert_allclose(hvd[f"{variant}_losses"], got[f"{variant}_losses"], rtol=1e-4)


def test_record_per_run_with_hpc_record(hpc_run) -> None:
    _, record = hpc_run
    recs = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(recs) == 1
    rec = recs[0]
    assert rec["kind"] == "train" and rec["status"] == "ok" and rec["np"] == 2
    assert rec["sync"] == "hpc.torch:auto" and rec["model"] == "hpc_train.py"
    assert rec["steps"] == STEPS * len(VARIANTS) and rec["steps_per_s"] > 0
    assert rec["provenance"]["mpi_library"]


def test_plugin_collective_from_hpc_collective(reference, tmp_path: Path) -> None:
    """A plain-function plug-in (file.py:func) is verified, then carries the gradients, fp16 included."""
    spec = f"{PLUGINS / 'plain_allreduce.py'}:allreduce"
    got = load(run_script(hpc_copy(tmp_path), tmp_path / "p.npz", ("none", "fp16"),
                          env={"HPC_COLLECTIVE": spec}), tmp_path / "p.npz")
    for variant in ("none", "fp16"):
        np.testing.assert_allclose(got[f"{variant}_params"], reference[0], **close(variant), err_msg=variant)


def test_wrong_plugin_is_refused_before_training(tmp_path: Path) -> None:
    spec = f"{PLUGINS / 'plain_allreduce.py'}:off_by_one"
    proc = run_script(hpc_copy(tmp_path), tmp_path / "w.npz", ("none",), env={"HPC_COLLECTIVE": spec})
    assert proc.returncode != 0
    assert re.search(rf"hpc: error: rank \d: collective '{re.escape(spec)}' gave a wrong answer on 2 ranks",
                     proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "w.npz").exists()


def test_unknown_collective_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(hpc_copy(tmp_path))], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ENV, "HPC_COLLECTIVE": "no_such_algo"})
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpc: error: unknown collective 'no_such_algo'"), proc.stderr


# -- DDP communication hook ------------------------------------------------------------------------

def test_ddp_comm_hook_equals_plain_ddp(tmp_path: Path) -> None:
    """comm_hook("ring") gives plain DDP's parameters; a plug-in with fp16 compression comes close."""
    out = tmp_path / "ddp.npz"
    plugin = f"{PLUGINS / 'plain_allreduce.py'}:allreduce"
    proc = mpirun(2, sys.executable, str(SCRIPTS / "ddp_hook.py"), "ring", str(out), plugin, timeout=420,
                  env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = np.load(out)
    np.testing.assert_allclose(got["hooked"], got["plain"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["hooked_fp16"], got["plain"], **close("fp16"))


# -- srun ------------------------------------------------------------------------------------------

def test_same_script_under_srun(slurm_cluster, reference, tmp_path: Path) -> None:
    """`srun --mpi=pmix -N 2 -n 2 python script.py` on the local Slurm cluster: the same answer."""
    script, out = hpc_copy(tmp_path), tmp_path / "srun.npz"
    proc = subprocess.run(["srun", "--mpi=pmix", "-N", "2", "-n", "2", "--time", "5", sys.executable,
                           str(script), "--variants", "none", "--steps", str(STEPS), "--global-batch",
                           str(GLOBAL_BATCH), "--out", str(out)], capture_output=True, text=True,
                          timeout=400, env={**os.environ, **slurm_cluster.env, **ENV}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if slurm_cluster.own_hostnames:
        assert "local 0/1" in proc.stdout  # one rank per node: local_rank/local_size from the node split
    np.testing.assert_allclose(np.load(out)["none_params"], reference[0], rtol=1e-5, atol=1e-6)
