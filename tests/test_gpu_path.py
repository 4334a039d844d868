"""The GPU path as far as a CPU can check it: CUDA-aware MPI detection, backend and path choice, the
up-front refusals, GPU facts in provenance, Horovod's GPU build decision, the device ring's arithmetic
(on CPU tensors) and the prepared GPU check script. The GPU run itself: results/gpu/check.sh."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from hpc import gpu
from hpc.errors import HpcError
from tests.helpers import REPO, hpc, mpirun, one_error_line

torch = pytest.importorskip("torch")
HAVE_CUDA = torch.cuda.is_available()
no_gpu_here = pytest.mark.skipif(HAVE_CUDA, reason="this machine has a GPU: the refusal does not apply")

OMPI4_CUDA = """\
mca:mpi:base:param:mpi_built_with_cuda_support:value:true
mca:mpi:base:param:mpi_built_with_cuda_support:source:default
mca:mpi:base:param:mpi_built_with_cuda_support:status:read-only
"""
OMPI5_NO_CUDA = """\
config:cli: '--without-cuda' '--without-rocm'
options:mpi_ext:affinity, cuda, ftmpi, rocm, shortfloat
mca:opal:base:param:opal_built_with_cuda_support:value:false
mca:opal:base:param:opal_built_with_cuda_support:enumerator:value:1:true
mca:opal:base:param:opal_built_with_cuda_support:help:Whether CUDA GPU buffer support is built into library or not
"""
OMPI5_CUDA = OMPI5_NO_CUDA.replace("opal_built_with_cuda_support:value:false", "opal_built_with_cuda_support:value:true")


# -- CUDA-aware MPI detection ---------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    (OMPI4_CUDA, True), (OMPI5_CUDA, True), (OMPI5_NO_CUDA, False),
    ("", None), ("MPICH Version: 4.2\n", None),
    ("mca:opal:base:param:opal_built_with_cuda_support:enumerator:value:1:true\n", None),  # not the value line
])
def test_ompi_info_parsing(text: str, want: bool | None) -> None:
    assert gpu.parse_ompi_info(text) is want


def test_override_and_detection_here(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu.parse_override(None) is None and gpu.parse_override("1") is True
    assert gpu.parse_override("no") is False
    with pytest.raises(HpcError, match="HPC_CUDA_AWARE"):
        gpu.parse_override("maybe")
    monkeypatch.setenv("HPC_CUDA_AWARE", "1")
    assert gpu.cuda_aware_mpi() == (True, "HPC_CUDA_AWARE")
    monkeypatch.setenv("HPC_CUDA_AWARE", "0")
    assert gpu.cuda_aware_mpi() == (False, "HPC_CUDA_AWARE")
    monkeypatch.delenv("HPC_CUDA_AWARE")
    aware, how = gpu.cuda_aware_mpi()
    if shutil.which("ompi_info") and "--without-cuda" in subprocess.run(
            ["ompi_info", "--parsable", "--all"], capture_output=True, text=True, timeout=60).stdout:
        assert aware is False and how in ("ompi_info", "MPIX_Query_cuda_support")


def test_cuda_path_choice() -> None:
    from hpc.workloads import device

    assert gpu.cuda_path("cpu", True, True) is None
    assert gpu.cuda_path("cuda", True, True) == gpu.CUDA_AWARE
    assert gpu.cuda_path("cuda", False, True) == gpu.HOST_STAGING
    assert gpu.cuda_path("cuda", True, False) == gpu.HOST_STAGING         # the collective needs host buffers
    assert gpu.cuda_path("cuda", True, True, host_staging=True) == gpu.HOST_STAGING
    assert device.plan("ring", True) == (gpu.CUDA_AWARE, "device")
    assert device.plan("ring", False) == (gpu.HOST_STAGING, "device")    # still reduced on the GPU
    assert device.plan("mpi", True) == (gpu.CUDA_AWARE, "mpi")
    assert device.plan("mpi", True, dtype="float16") == (gpu.HOST_STAGING, "mpi")  # no MPI float16
    assert device.plan("rabenseifner", True) == (gpu.HOST_STAGING, "host")
    assert device.plan("ring", True, builtin=False) == (gpu.HOST_STAGING, "host")  # a plug-in named ring


def test_backend_choice() -> None:
    assert gpu.dist_backend("cuda") == "nccl" and gpu.dist_backend("cpu") == "gloo"


# -- refusals ---------------------------------------------------------------------------------------

def test_gpu_sharing_check() -> None:
    gpu.check_gpu_sharing("ddp", 1, 1)
    gpu.check_gpu_sharing("ddp", 8, 8)
    with pytest.raises(HpcError) as err:
        gpu.check_gpu_sharing("ddp", 2, 1)
    msg = str(err.value)
    assert "NCCL" in msg and "Duplicate GPU detected" in msg and "2 ranks on this node, 1 GPU visible" in msg
    assert "--sync ring" in msg
    with pytest.raises(HpcError, match="no CUDA GPU"):
        gpu.check_gpu_sharing("deepspeed-zero2", 1, 0)


def test_precheck_cuda_by_facts() -> None:
    from hpc.workloads import sync
    from hpc.workloads.train_plan import precheck_cuda

    for name in ("ddp", "deepspeed-zero1", "deepspeed-zero3"):
        facts = sync.facts(sync.resolve(name))
        precheck_cuda(name, facts, 1, 1)
        with pytest.raises(HpcError, match="Duplicate GPU detected"):
            precheck_cuda(name, facts, 2, 1)
    for name in ("ring", "mpi", "ps-async"):  # MPI (or host staging) shares one GPU between ranks
        precheck_cuda(name, sync.facts(sync.resolve(name)), 2, 1)


def test_horovod_without_gpu_ops_is_refused_up_front() -> None:
    """The Horovod built on a CPU machine has no GPU operations: --device cuda says so before mpirun."""
    import importlib.util

    from hpc.workloads import sync
    from hpc.workloads.train_plan import precheck_cuda

    if importlib.util.find_spec("horovod") is None:
        pytest.skip("horovod is not installed (python -m hpc.horovod_build)")
    import horovod.torch as hvd

    facts = sync.facts(sync.resolve("horovod"))
    if hvd.cuda_built():
        precheck_cuda("horovod", facts, 1, 1)
        return
    with pytest.raises(HpcError, match="built without GPU operations"):
        precheck_cuda("horovod", facts, 1, 1)


def test_horovod_gpu_ops_check() -> None:
    from hpc.workloads.sync.horovod import check_gpu_ops, gpu_ops

    cpu_build = types.SimpleNamespace(cuda_built=lambda: False, nccl_built=lambda: 0)
    gpu_build = types.SimpleNamespace(cuda_built=lambda: True, nccl_built=lambda: 22105)
    assert gpu_ops(cpu_build) == {"cuda_built": False, "nccl_built": 0}
    assert gpu_ops(gpu_build) == {"cuda_built": True, "nccl_built": 22105}
    check_gpu_ops(gpu_ops(gpu_build))
    with pytest.raises(HpcError, match="built without GPU operations.*hpc.horovod_build --force"):
        check_gpu_ops(gpu_ops(cpu_build))


@no_gpu_here
@pytest.mark.parametrize("argv", [
    ["train", "--np", "2", "--device", "cuda", "--steps", "1"],
    ["train", "--np", "2", "--sync", "ddp", "--device", "cuda", "--steps", "1"],
    ["train", "--device", "cuda", "--steps", "1"],                       # no --np: the rank itself says it
    ["bench", "collective", "--np", "2", "--device", "cuda", "--sizes", "1KB"],
    ["bench", "collective", "--device", "cuda", "--sizes", "1KB"],
])
def test_cuda_on_a_cpu_machine_is_one_line(argv: list[str]) -> None:
    line = one_error_line(hpc(*argv, timeout=120))
    assert "--device cuda: no CUDA GPU is visible to torch" in line, line


# -- records --------------------------------------------------------------------------------------

def test_no_gpu_block_on_cpu() -> None:
    from hpc import records

    assert "gpu" not in records.provenance(None, ["x"])
    if not HAVE_CUDA:
        assert gpu.facts() is None and records.provenance(None, ["x"], device="cuda")["gpu"] is None
    # provenance on CPU never imports torch (nor initialises CUDA)
    code = "import sys; from hpc import records; records.provenance(None, []); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_env_variable_documented() -> None:
    from hpc import env

    assert "HPC_CUDA_AWARE" in env.VARIABLES


# -- Horovod build decision -------------------------------------------------------------------------

def test_horovod_build_gpu_decision(tmp_path: Path) -> None:
    from hpc import horovod_build as hb

    assert hb.gpu_operations("/usr/local/cuda/bin/nvcc", "12.8") == "NCCL"
    assert hb.gpu_operations(None, "12.8") is None             # CUDA torch, no toolkit
    assert hb.gpu_operations("/usr/local/cuda/bin/nvcc", None) is None  # toolkit, CPU torch
    assert hb.gpu_operations(None, None) is None
    cpu_env = hb.build_env(tmp_path, 2)
    assert "HOROVOD_GPU_OPERATIONS" not in cpu_env and cpu_env["HOROVOD_CPU_OPERATIONS"] == "MPI"
    fake = tmp_path / "cuda" / "bin"
    fake.mkdir(parents=True)
    (fake / "nvcc").write_text("#!/bin/sh\n")
    (fake / "nvcc").chmod(0o755)
    assert hb.find_nvcc({"PATH": "/nonexistent", "CUDA_HOME": str(tmp_path / "cuda")}) == str(fake / "nvcc")
    gpu_env = hb.build_env(tmp_path, 2, "NCCL", str(fake / "nvcc"))
    assert gpu_env["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    assert gpu_env["HOROVOD_CUDA_HOME"] == str((tmp_path / "cuda").resolve())


# -- the device ring's arithmetic (CPU tensors stand in for device buffers) ---------------------------

RING_CHECK = """
import numpy as np, torch
from mpi4py import MPI
from hpc.workloads.device import _Ring
comm = MPI.COMM_WORLD; r = comm.Get_rank()
for direct in (False, True):
    for n in (0, 1, 2, 5, 1001):
        for dt in (torch.float32, torch.int64):
            for name, red in (("SUM", np.sum), ("MAX", np.max)):
                x = (torch.arange(n) % 5 + r).to(dt)
                want = red(comm.allgather(x.numpy()), axis=0)
                out = torch.empty_like(x)
                _Ring(direct).allreduce(comm, x, out, getattr(MPI, name))
                assert np.array_equal(out.numpy(), want), (direct, n, dt, name)
                _Ring(direct).allreduce(comm, x, x, getattr(MPI, name))
                assert np.array_equal(x.numpy(), want), ("in place", direct, n, dt, name)
print("ok", r)
"""


def test_device_ring_arithmetic(tmp_path: Path) -> None:
    script = tmp_path / "ring_check.py"
    script.write_text(RING_CHECK)
    proc = mpirun(3, sys.executable, str(script), timeout=180)
    assert proc.returncode == 0 and proc.stdout.count("ok") == 3, proc.stdout + proc.stderr


# -- the prepared check script --------------------------------------------------------------------

CHECK = REPO / "results" / "gpu" / "check.sh"


def test_check_script_parses() -> None:
    assert CHECK.is_file() and (CHECK.parent / "README.md").is_file()
    proc = subprocess.run(["bash", "-n", str(CHECK)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-S", "warning", str(CHECK)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout


def test_check_script_dry_run(tmp_path: Path) -> None:
    """--dry-run prints every step with its timeout and runs nothing (the plan a GPU session executes)."""
    proc = subprocess.run(["bash", str(CHECK), "--dry-run"], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    for step in ("probe", "train-cuda", "bench-cuda", "sweep-strong", "sweep-weak", "report"):
        assert step in proc.stdout, step
    assert not list(tmp_path.glob("**/*.jsonl"))
