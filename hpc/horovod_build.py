"""Build Horovod 0.28.1 (MPI + gloo, PyTorch) into the running venv: `python -m hpc.horovod_build`.

A plain `pip install horovod` fails with torch 2.x and CMake 4: gloo needs
CMAKE_POLICY_VERSION_MINIMUM=3.5 and horovod/torch hard-codes C++14, so CXX points at a wrapper that
rewrites the standard flag to C++17. Build isolation stays off so the venv's own torch is built against.
GPU operations (HOROVOD_GPU_OPERATIONS=NCCL) are built when a CUDA toolkit (nvcc) and a CUDA build of
torch are both present, CPU operations only otherwise; the script says which it built, and a CPU-only
Horovod already installed is rebuilt once a GPU build becomes possible.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HOROVOD_VERSION = "0.28.1"
BUILD_DEPS = ("torch", "numpy", "cmake", "packaging", "wheel")

CXX_WRAPPER = """#!/bin/sh
# Rewrites C++14 to C++17 (torch 2.x headers need it; horovod/torch/CMakeLists.txt hard-codes 14).
real="{cxx}"
for a in "$@"; do
  shift
  case "$a" in
    -std=c++14) a=-std=c++17 ;;
    -std=gnu++14) a=-std=gnu++17 ;;
  esac
  set -- "$@" "$a"
done
exec "$real" "$@"
"""


def horovod_works(python: str = sys.executable) -> bool:
    """True when `import horovod.torch` succeeds in a fresh interpreter (no MPI init in this one)."""
    return horovod_built(python) is not None


def horovod_built(python: str = sys.executable) -> dict[str, object] | None:
    """What the installed horovod.torch was built with ({"cuda": bool, "nccl": int}); None when it
    does not import (asked in a fresh interpreter: no MPI init in this one)."""
    code = ("import horovod.torch as h, json; "
            "print(json.dumps({'cuda': bool(h.cuda_built()), 'nccl': int(h.nccl_built())}))")
    probe = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return None
    try:
        return json.loads(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"cuda": False, "nccl": 0}


def gpu_operations(nvcc: str | None, torch_cuda: str | None) -> str | None:
    """HOROVOD_GPU_OPERATIONS to build with: "NCCL" when a CUDA toolkit (nvcc) and a CUDA torch
    (torch.version.cuda) are both there, else None (CPU operations only). Pure, so it is tested on CPU."""
    return "NCCL" if nvcc and torch_cuda else None


def find_nvcc(environ: dict[str, str] | None = None) -> str | None:
    """nvcc on PATH, under $CUDA_HOME / $CUDA_PATH, or in /usr/local/cuda."""
    environ = dict(os.environ if environ is None else environ)
    found = shutil.which("nvcc", path=environ.get("PATH"))
    if found:
        return found
    for root in (environ.get("CUDA_HOME"), environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return None


def torch_cuda(python: str = sys.executable) -> str | None:
    """torch.version.cuda of the venv's torch (None for a CPU build or no torch)."""
    probe = subprocess.run([python, "-c", "import torch; print(torch.version.cuda or '')"],
                           capture_output=True, text=True, timeout=300)
    out = probe.stdout.strip().splitlines()
    return (out[-1] or None) if probe.returncode == 0 and out else None


def nccl_env(work: Path, python: str = sys.executable) -> dict[str, str]:
    """Where Horovod finds NCCL: the nvidia-nccl wheel that CUDA torch depends on ships the header
    and libnccl.so.2 but no unversioned libnccl.so, so a link to it is made under `work`. Empty when
    that wheel is absent (then CMake looks in the CUDA toolkit and the system paths)."""
    code = ("import importlib.util as u; s = u.find_spec('nvidia.nccl'); "
            "print(list(s.submodule_search_locations)[0] if s else '')")
    probe = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    root = Path(probe.stdout.strip()) if probe.returncode == 0 and probe.stdout.strip() else None
    if root is None or not (root / "include" / "nccl.h").is_file():
        return {}
    libs = sorted((root / "lib").glob("libnccl.so*"))
    if not libs:
        return {}
    lib_dir = work / "nccl-lib"
    lib_dir.mkdir(exist_ok=True)
    link = lib_dir / "libnccl.so"
    if not link.exists():
        link.symlink_to(libs[0])
    return {"HOROVOD_NCCL_INCLUDE": str(root / "include"), "HOROVOD_NCCL_LIB": str(lib_dir),
            "HOROVOD_NCCL_LINK": "SHARED"}


def build_env(wrapper_dir: Path, jobs: int, gpu_ops: str | None = None,
              nvcc: str | None = None) -> dict[str, str]:
    """The environment that makes the 0.28.1 sdist build: CPU ops over MPI, gloo too, PyTorch only;
    with `gpu_ops` ("NCCL") also GPU operations against the toolkit of `nvcc`."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise SystemExit("horovod_build: no C++ compiler (g++) on PATH")
    wrapper = wrapper_dir / "cxx17"
    wrapper.write_text(CXX_WRAPPER.format(cxx=cxx))
    wrapper.chmod(0o755)
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        PATH=venv_bin + os.pathsep + env.get("PATH", ""),
        CXX=str(wrapper),
        HOROVOD_WITH_PYTORCH="1",
        HOROVOD_WITHOUT_TENSORFLOW="1",
        HOROVOD_WITHOUT_MXNET="1",
        HOROVOD_WITH_MPI="1",
        HOROVOD_WITH_GLOO="1",
        HOROVOD_CPU_OPERATIONS="MPI",
        CMAKE_POLICY_VERSION_MINIMUM="3.5",
        MAKEFLAGS=f"-j{jobs}",
    )
    for key in ("HOROVOD_GPU_OPERATIONS", "HOROVOD_GPU_ALLREDUCE", "HOROVOD_GPU_BROADCAST"):
        env.pop(key, None)  # only what this build decided
    if gpu_ops:
        env["HOROVOD_GPU_OPERATIONS"] = gpu_ops
        if nvcc:
            home = str(Path(nvcc).resolve().parent.parent)
            env["HOROVOD_CUDA_HOME"] = home
            env["CUDA_HOME"] = home
        env.update(nccl_env(wrapper_dir))
    return env


def _describe(built: dict[str, object]) -> str:
    if built.get("cuda"):
        return f"GPU operations (NCCL {built.get('nccl') or '?'}) and CPU operations (MPI)"
    return "CPU operations only (MPI + gloo): `hpc train --sync horovod --device cuda` is refused"


def build(jobs: int = 2, tail: int = 60, force: bool = False) -> int:
    """Build and install Horovod into this interpreter's environment; return an exit code."""
    nvcc = find_nvcc()
    tcuda = torch_cuda()
    gpu_ops = gpu_operations(nvcc, tcuda)
    why = (f"nvcc at {nvcc}, torch built for CUDA {tcuda}" if gpu_ops else
           "no CUDA toolkit (nvcc)" if not nvcc else "torch is a CPU build")
    built = None if force else horovod_built()
    if built is not None and (built.get("cuda") or not gpu_ops):
        print(f"horovod_build: `import horovod.torch` already works ({_describe(built)}); nothing to do")
        return 0
    if built is not None:
        print("horovod_build: the installed Horovod has CPU operations only and a GPU build is possible "
              f"here ({why}): rebuilding", flush=True)
        force = True
    print(f"horovod_build: building {'GPU operations (HOROVOD_GPU_OPERATIONS=NCCL)' if gpu_ops else 'CPU operations only'}"
          f" ({why})", flush=True)
    missing = [m for m in BUILD_DEPS if subprocess.run(
        [sys.executable, "-c", f"import {m}"], capture_output=True, timeout=120).returncode != 0]
    if missing:
        print(f"horovod_build: installing build dependencies {missing}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", *missing], check=False, timeout=1800)
    with tempfile.TemporaryDirectory(prefix="hpc-horovod-") as tmp:
        env = build_env(Path(tmp), jobs, gpu_ops, nvcc)
        log_path = Path(tmp) / "build.log"
        cmd = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-build-isolation",
               *(["--force-reinstall", "--no-deps"] if force else []), f"horovod=={HOROVOD_VERSION}"]
        print(f"horovod_build: {' '.join(cmd)} (about 5 minutes on 2 cores)", flush=True)
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
        lines = log_path.read_text(errors="replace").splitlines()
        built = horovod_built() if proc.returncode == 0 else None
        if built is None:
            print("\n".join(lines[-tail:]), file=sys.stderr)
            print(f"horovod_build: build failed (pip exit {proc.returncode})", file=sys.stderr)
            return 1
    print(f"horovod_build: horovod {HOROVOD_VERSION} installed into {sys.prefix} with {_describe(built)}")
    if gpu_ops and not built.get("cuda"):
        print("horovod_build: GPU operations were asked for but the build has none", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m hpc.horovod_build [--jobs N] [--force]`."""
    parser = argparse.ArgumentParser(prog="python -m hpc.horovod_build", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (MAKEFLAGS=-jN)")
    parser.add_argument("--tail", type=int, default=60, help="log lines to print on failure")
    parser.add_argument("--force", action="store_true", help="rebuild even if horovod.torch imports")
    args = parser.parse_args(argv)
    return build(jobs=args.jobs, tail=args.tail, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
