"""Kernels in kernels/ against native MPI_Allreduce under real mpirun (1, 2, 3, 4 and 6 ranks).

Each launch runs tests/mpi/kernel_check.py: a fixed grid (sizes 0, 1, p-1, p+1, 17, 100003, 1e6;
float32/float64/int32/int64; SUM/MAX, MIN/PROD on small sizes; in place and not) and then
hypothesis-drawn cases, derandomized so every rank draws the same ones.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "kernel_check.py"
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")


def run_check(p: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Launch the MPI-side checker on p ranks and return the finished process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-n", str(p),
           sys.executable, "-m", "mpi4py", str(SCRIPT), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("p,sizes", [(1, "full"), (2, "full"), (3, "full"), (4, "full"), (6, "small")])
def test_kernels_match_native(p: int, sizes: str) -> None:
    proc = run_check(p, "--sizes", sizes, "--examples", "40")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"p={p}: checked" in out and " 0 failed" in out, out[-4000:]
    ran = re.search(rf"p={p}: (\d+) hypothesis examples passed", out)
    assert ran and int(ran.group(1)) >= 20, out[-4000:]
