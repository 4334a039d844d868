"""Shared test helpers: run the real `hpc` command and real mpirun, with timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hpc.launch.mpirun import mpirun_argv

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "tests" / "plugins"


def hpc(*args: str, timeout: float = 180, env: dict | None = None,
        cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run `python -m hpc ARGS` as a user would (it spawns mpirun itself for --np)."""
    full_env = dict(os.environ)
    for var in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "HPC_INSIDE_MPI"):
        full_env.pop(var, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hpc", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def mpirun(np: int, *command: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `command` under our own mpirun (as a user who starts the job by hand)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(mpirun_argv(np, list(command)), capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The stderr of a failed command must be exactly one `hpc: error:` line: return it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert lines[0].startswith("hpc: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]
