"""`shm`, `hier` and `auto` (which picks them) against native MPI_Allreduce under real mpirun.

Each launch runs tests/mpi/shm_check.py on 1-5 ranks: sizes 0, 1, p-1, p+1, 17, 4097, 100003 and
3 MB; float32/float64/int32/int64/float16; SUM/MAX/MIN/PROD; out of place, same array, MPI.IN_PLACE;
mismatched sizes; split and freed communicators. Two "nodes" on this machine come from the testing
knob HPC_HIER_NODES=2 (contiguous rank groups); there shm must refuse and hier must still be right.
OMPI_MCA_osc=sm keeps Open MPI's UCX one-sided component from printing its query warning (without it
the kernels filter that one line themselves; checked too).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "shm_check.py"
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")


def run_check(p: int, *args: str, env: dict[str, str | None] | None = None,
              timeout: int = 240) -> tuple[int, str]:
    """Launch the MPI-side checker on p ranks; return (exit status, stdout + stderr). None in env unsets."""
    full = dict(os.environ, OMPI_MCA_osc="sm",
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for var in ("HPC_HIER_GROUP", "HPC_HIER_NODES"):
        full.pop(var, None)
    full.update(env or {})
    full = {k: v for k, v in full.items() if v is not None}
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-n", str(p),
           sys.executable, "-m", "mpi4py", str(SCRIPT), *args]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=full, cwd=ROOT)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_one_node(p: int) -> None:
    rc, out = run_check(p, "--algos", "shm,hier,auto", "--nodes", "1")
    assert rc == 0 and f"p={p} nodes=1: checked" in out and " 0 failed" in out, out[-4000:]
    assert "OSC UCX" not in out, "OMPI_MCA_osc=sm should silence the UCX one-sided warning"


@pytest.mark.parametrize("p", [2, 4, 5])
def test_two_simulated_nodes(p: int) -> None:
    rc, out = run_check(p, "--algos", "hier,hier-rails,auto", "--refuse", "shm", "--nodes", "2",
                        env={"HPC_HIER_NODES": "2"})
    assert rc == 0 and f"p={p} nodes=2: checked" in out and " 0 failed" in out, out[-4000:]


def test_group_by_host_name() -> None:
    """One machine has one host name: grouping by it finds one node, and shm works."""
    rc, out = run_check(3, "--algos", "shm,hier", "--nodes", "1", env={"HPC_HIER_GROUP": "host"})
    assert rc == 0 and "p=3 nodes=1: checked" in out and " 0 failed" in out, out[-4000:]


def test_bad_grouping_is_a_clear_error() -> None:
    rc, out = run_check(2, "--algos", "shm", env={"HPC_HIER_GROUP": "rack"})
    assert rc != 0 and "HPC_HIER_GROUP='rack'" in out, out[-4000:]


def test_window_creation_is_quiet_without_osc_setting() -> None:
    """Without OMPI_MCA_osc the kernels drop Open MPI's UCX one-sided query line themselves."""
    rc, out = run_check(2, "--algos", "shm", env={"OMPI_MCA_osc": None})
    assert rc == 0 and " 0 failed" in out, out[-4000:]
    assert "OSC UCX" not in out, out[-4000:]


def test_waiting_for_a_late_rank_sleeps() -> None:
    """A rank 1 s late: the others get the right result and sleep meanwhile (futex), not poll.
    (Polling with short sleeps, as before, cost ~18% of a core here; a futex sleep ~1.5%.)"""
    rc, out = run_check(3, "--algos", "shm,hier,auto", "--idle", "1.0")
    assert rc == 0 and "idle wait checked" in out and " 0 failed" in out, out[-4000:]


def test_futex_wait_returns_on_change_timeout_and_refusal() -> None:
    """The futex primitive itself, in this process: a word that differs returns at once, an equal
    one sleeps until the timeout, and an address the kernel cannot use says so (callers fall back)."""
    import ctypes
    import time

    from hpc.kernels import _futex

    if not _futex.available():
        pytest.skip("no futex on this platform (callers poll)")
    word = ctypes.c_int32(5)
    addr = ctypes.addressof(word)
    t0 = time.perf_counter()
    assert _futex.wait(addr, 6, 1.0) and time.perf_counter() - t0 < 0.5  # differs: EAGAIN at once
    t0 = time.perf_counter()
    assert _futex.wait(addr, 5, 0.05) and time.perf_counter() - t0 >= 0.04  # equal: ETIMEDOUT
    assert not _futex.wait(8, 0, 0.05)  # unmapped page: EFAULT, a refusal
    _futex.wake(addr)  # nobody sleeping: harmless
