"""Build Horovod 0.28.1 (CPU, MPI + gloo, PyTorch) into the running venv: `python -m hpc.horovod_build`.

A plain `pip install horovod` fails with torch 2.x and CMake 4: gloo needs
CMAKE_POLICY_VERSION_MINIMUM=3.5 and horovod/torch hard-codes C++14, so CXX points at a wrapper that
rewrites the standard flag to C++17. Build isolation stays off so the venv's own torch is built against.
"""
from __future__ import annotations

import argparse
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
    probe = subprocess.run([python, "-c", "import horovod.torch"], capture_output=True, timeout=120)
    return probe.returncode == 0


def build_env(wrapper_dir: Path, jobs: int) -> dict[str, str]:
    """The environment that makes the 0.28.1 sdist build: CPU ops over MPI, gloo too, PyTorch only."""
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
    return env


def build(jobs: int = 2, tail: int = 60, force: bool = False) -> int:
    """Build and install Horovod into this interpreter's environment; return an exit code."""
    if not force and horovod_works():
        print("horovod_build: `import horovod.torch` already works; nothing to do")
        return 0
    missing = [m for m in BUILD_DEPS if subprocess.run(
        [sys.executable, "-c", f"import {m}"], capture_output=True, timeout=120).returncode != 0]
    if missing:
        print(f"horovod_build: installing build dependencies {missing}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", *missing], check=False, timeout=1800)
    with tempfile.TemporaryDirectory(prefix="hpc-horovod-") as tmp:
        env = build_env(Path(tmp), jobs)
        log_path = Path(tmp) / "build.log"
        cmd = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-build-isolation",
               *(["--force-reinstall", "--no-deps"] if force else []), f"horovod=={HOROVOD_VERSION}"]
        print(f"horovod_build: {' '.join(cmd)} (about 5 minutes on 2 cores)", flush=True)
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
        lines = log_path.read_text(errors="replace").splitlines()
        if proc.returncode != 0 or not horovod_works():
            print("\n".join(lines[-tail:]), file=sys.stderr)
            print(f"horovod_build: build failed (pip exit {proc.returncode})", file=sys.stderr)
            return 1
    print(f"horovod_build: horovod {HOROVOD_VERSION} installed into {sys.prefix}")
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
