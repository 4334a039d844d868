"""What a GPU run needs to know about the machine: CUDA-aware MPI, NCCL's one-rank-per-GPU rule, and the
facts a GPU record carries. Parsing and decisions are pure functions (tested on CPU); the probes that
touch the system are small and cheap, and none of them initialises CUDA unless asked about a GPU run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Any

from hpc import env
from hpc.errors import HpcError

CUDA_AWARE = "cuda-aware-mpi"
HOST_STAGING = "host-staging"

# Open MPI 4 names it mpi_built_with_cuda_support, Open MPI 5 opal_built_with_cuda_support.
_OMPI_CUDA = re.compile(r"^mca:(?:mpi|opal):base:param:(?:mpi|opal)_built_with_cuda_support:value:(\w+)\s*$",
                        re.MULTILINE)


def parse_ompi_info(text: str) -> bool | None:
    """Whether `ompi_info --parsable --all` says the library was built with CUDA support; None when the
    text does not say (not Open MPI, or an ompi_info that lists no such parameter)."""
    values = [m.group(1).lower() for m in _OMPI_CUDA.finditer(text)]
    if not values:
        return None
    return any(v in ("true", "1", "yes") for v in values)


def parse_override(value: str | None) -> bool | None:
    """HPC_CUDA_AWARE: 1/true/yes forces device buffers into MPI, 0/false/no forces host staging."""
    if value is None or not value.strip():
        return None
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise HpcError(f"HPC_CUDA_AWARE={value!r}: use 1 (device buffers into MPI) or 0 (host staging)")


def _mpix_query() -> bool | None:
    """Open MPI's run-time answer (MPIX_Query_cuda_support from mpi-ext), when the loaded MPI has it."""
    import ctypes

    if "mpi4py.MPI" not in sys.modules:
        return None  # never initialise MPI just to ask
    try:
        fn = ctypes.CDLL(None).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    try:
        return bool(fn())
    except OSError:
        return None


def _ompi_info() -> str:
    exe = shutil.which("ompi_info")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "--parsable", "--all"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout


def cuda_aware_mpi() -> tuple[bool, str]:
    """(whether MPI takes device buffers, how that was decided). Order: HPC_CUDA_AWARE, Open MPI's
    MPIX_Query_cuda_support, `ompi_info`'s build flag; anything else counts as not CUDA-aware (safe:
    host staging always works)."""
    forced = parse_override(env.get("HPC_CUDA_AWARE"))
    if forced is not None:
        return forced, "HPC_CUDA_AWARE"
    runtime = _mpix_query()
    if runtime is not None:
        return runtime, "MPIX_Query_cuda_support"
    built = parse_ompi_info(_ompi_info())
    if built is not None:
        return built, "ompi_info"
    return False, "unknown (not Open MPI): host staging"


def agreed_cuda_aware(comm: Any) -> tuple[bool, str]:
    """cuda_aware_mpi() agreed over `comm`: device buffers only when every rank can take them."""
    from mpi4py import MPI

    mine, how = cuda_aware_mpi()
    return bool(comm.allreduce(bool(mine), MPI.LAND)), how


def cuda_path(device: str, cuda_aware: bool, direct_ok: bool, host_staging: bool = False) -> str | None:
    """How gradients or benchmark buffers on `device` reach MPI: None on cpu, CUDA_AWARE when the MPI
    takes device buffers and the collective can work on them (`direct_ok`) unless staging was asked
    for, else HOST_STAGING (pinned host copies)."""
    if device != "cuda":
        return None
    return CUDA_AWARE if cuda_aware and direct_ok and not host_staging else HOST_STAGING


def dist_backend(device: str) -> str:
    """torch.distributed backend the baselines use as their users do: NCCL on GPUs, gloo on CPUs."""
    return "nccl" if device == "cuda" else "gloo"


def check_gpu_sharing(sync: str, local_ranks: int, gpus: int) -> None:
    """A scheme whose GPU path is NCCL needs one GPU per rank on a node: NCCL refuses two ranks of a
    communicator on one device ("Duplicate GPU detected"). Refuse before anything starts."""
    if gpus < 1:
        raise HpcError(f"--device cuda: no CUDA GPU is visible (needed by '{sync}')")
    if local_ranks > gpus:
        raise HpcError(
            f"'{sync}' on cuda uses NCCL, which cannot put two ranks on one GPU (\"Duplicate GPU "
            f"detected\"): {local_ranks} ranks on this node, {gpus} GPU{'s' if gpus != 1 else ''} visible. "
            f"Use at most {gpus} rank{'s' if gpus != 1 else ''} per node, --device cpu (gloo), or own "
            "sync (e.g. --sync ring), which shares a GPU through MPI")


def require_cuda(what: str = "--device cuda") -> int:
    """The number of GPUs torch sees, or the one-line error when there is none (imports torch)."""
    try:
        import torch
    except ImportError:
        raise HpcError(f"{what}: torch is not installed (the [torch] extra)") from None
    if not torch.cuda.is_available():
        raise HpcError(f"{what}: no CUDA GPU is visible to torch on this machine (torch {torch.__version__}, "
                       "torch.cuda.is_available() is False)")
    return int(torch.cuda.device_count())


def _driver_version() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def facts(cuda_aware: tuple[bool, str] | None = None) -> dict[str, Any] | None:
    """The `gpu` block of a GPU record's provenance; None unless torch is already imported and sees a
    GPU (so CPU runs never pay for CUDA initialisation or a driver query)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    count = int(torch.cuda.device_count())
    names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    nccl = None
    try:
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # a torch built without NCCL
        nccl = None
    aware, how = cuda_aware if cuda_aware is not None else cuda_aware_mpi()
    return {
        "model": names[0] if len(names) == 1 else names,
        "count": count,
        "driver": _driver_version(),
        "cuda": torch.version.cuda,
        "nccl": nccl,
        "cuda_aware_mpi": bool(aware),
        "cuda_aware_source": how,
    }
