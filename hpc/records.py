"""Measured points as JSON Lines: appended atomically, loaded back in one call, with provenance."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from hpc.errors import HpcError

if TYPE_CHECKING:
    from mpi4py import MPI

SCHEMA = "hpc.record/1"
SUFFIX = ".jsonl"


def new(kind: str, np: int, **fields: Any) -> dict[str, Any]:
    """A record with the common keys filled in; sweep context comes from the HPC_* environment."""
    from hpc.env import sweep_context

    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": kind,
        "np": np,
        **sweep_context(),
        "status": "ok",
        "error": None,
    }
    rec.update(fields)
    return rec


def check_writable(path: str | os.PathLike, what: str = "output", directory: bool = False) -> None:
    """Refuse, before any work is done, an output path that cannot be written (a directory where a
    file is wanted or the reverse, a path below a regular file, an unwritable folder), in one line.
    `-` (stdout) is always fine."""
    if os.fspath(path) == "-":
        return
    p = Path(path)
    try:
        p.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise HpcError(f"{path}: cannot be resolved ({_why(exc, 'symbolic link loop')}); the {what} "
                       "needs a real path") from None
    if p.is_symlink() and not p.exists():
        raise HpcError(f"{path}: is a symbolic link to a missing target ({os.readlink(p)}); the {what} "
                       "needs a real path")
    if p.exists():
        if directory and not p.is_dir():
            raise HpcError(f"{path}: is a file; the {what} must be a directory")
        if not directory and p.is_dir():
            raise HpcError(f"{path}: is a directory; the {what} must be a file")
        if not os.access(p, os.W_OK):
            raise HpcError(f"{path}: not writable (the {what})")
        if p.is_file():
            _probe(p, what, create=False)
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise HpcError(f"{path}: {parent} is a file, so the {what} cannot be created below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HpcError(f"{path}: cannot create the {what} in {parent} (no write permission)")
    _probe(parent / f".hpc-probe-{os.getpid()}", what, create=True, shown=path)


def _why(exc: BaseException, default: str) -> str:
    return getattr(exc, "strerror", None) or default


def _probe(p: Path, what: str, create: bool, shown: str | os.PathLike | None = None) -> None:
    """Try it: permission bits say yes on /proc, read-only mounts and full quotas, as root anyway."""
    try:
        if create:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(p)
        else:
            os.close(os.open(p, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        where = p.parent if create else p
        raise HpcError(f"{shown or p}: cannot write the {what} there ({where}: "
                       f"{_why(exc, type(exc).__name__)})") from None


def append(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append records as one write + fsync, so a killed run leaves whole lines or nothing."""
    data = "".join(json.dumps(r, default=_jsonable, allow_nan=False) + "\n" for r in records)
    if not data:
        return
    if os.fspath(path) == "-":  # `--json -`: records to stdout (human output then goes to stderr)
        out = _CLAIMED[0] if _CLAIMED else sys.stdout
        out.write(data)
        out.flush()
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise HpcError(f"{path}: cannot write records: {exc.strerror or exc}") from None
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data.encode())
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:  # e.g. a full disk: cut the partial line so the next append starts clean
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise HpcError(f"{path}: cannot write records: {exc.strerror or exc}; "
                       "the file holds every record written before") from None
    finally:
        os.close(fd)


_CLAIMED: list[Any] = []  # the real stdout, once claim_stdout() has set it aside for records


def claim_stdout() -> None:
    """Keep the process's stdout for records alone (`--json -`): file descriptor 1 now goes to
    stderr, so whatever else prints (a plug-in, a model, a library, even from C) never lands among the
    records; `append("-")` writes to the stdout set aside here."""
    if _CLAIMED:
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _CLAIMED.append(os.fdopen(saved, "w", encoding="utf-8", closefd=True))


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, paths: the things a record may hold that json does not know."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def clean_float(x: float | None) -> float | None:
    """NaN/inf are not JSON: store them as null."""
    return None if x is None or not math.isfinite(x) else float(x)


def files(path: str | os.PathLike) -> list[Path]:
    """The records files at `path`: the file itself, or every *.jsonl below a directory."""
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.rglob(f"*{SUFFIX}") if q.is_file())
    if p.is_file():
        return [p]
    raise HpcError(f"no such records file or directory: {p}")


_WARNED: set[tuple[str, int]] = set()
TORN_NOTES = 3  # torn-record notes printed per load; the rest are counted in one line


def load(path: str | os.PathLike, warn: bool = True) -> list[dict[str, Any]]:
    """Every record under `path`. A torn line (a run killed mid-write, a full disk; possibly with
    a later record glued onto it) is skipped with a note on stderr, never fatal: no finished
    record is lost because of another one's damage. A record whose common fields are unusable
    (`np` missing or not a positive integer, a negative size...) is one clear error naming it."""
    out: list[dict[str, Any]] = []
    torn: list[str] = []
    for f in files(path):
        lines = f.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                recovered = _glued(line)
                if warn and (str(f), i) not in _WARNED:  # once per process: analysis may read twice
                    _WARNED.add((str(f), i))
                    torn.append(f"{f}:{i}: skipped a torn record"
                                + (" (kept the whole one glued to it)" if recovered else ""))
                out += [check(r, f"{f}:{i}") for r in recovered]
                continue
            if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
                raise HpcError(f"{f}:{i}: not an hpc record (schema {SCHEMA} expected)")
            out.append(check(rec, f"{f}:{i}"))
    for note in torn[:TORN_NOTES]:
        sys.stderr.write(f"hpc: note: {note}\n")
    if len(torn) > TORN_NOTES:
        sys.stderr.write(f"hpc: note: ... and {len(torn) - TORN_NOTES} more torn records skipped "
                         f"({len(torn)} in all)\n")
    return out


# Numeric fields a record may carry and the smallest value each may take (None = may be null).
_COUNTS = {"np": 1, "nodes": 1, "rep": 0, "size_bytes": 0, "count": 0, "batches": 0, "iters": 0}
_MEASURES = ("time_s", "steps_per_s", "samples_per_s", "busbw_GBps", "algbw_GBps", "value")


def check(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """The record itself when its common fields are usable; else an HpcError naming `where` and the
    field (analysis would otherwise fail far away with KeyError: 'np' or a comparison of str and int)."""
    if "np" not in rec:
        raise HpcError(f"{where}: record has no 'np' (rank count)")
    for key, lo in _COUNTS.items():
        value = rec.get(key)
        if value is None and key != "np":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise HpcError(f"{where}: record field {key!r} is {value!r}, not an integer >= {lo}")
    for key in _MEASURES:
        value = rec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise HpcError(f"{where}: record field {key!r} is {value!r}, not a number >= 0")
    times = rec.get("times_s")
    if times is not None and (not isinstance(times, list) or any(
            isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0
            for t in times)):
        raise HpcError(f"{where}: record field 'times_s' must be a list of numbers >= 0")
    return rec


def _glued(line: str) -> list[dict[str, Any]]:
    """The whole records in a line that starts with a torn one (`{"schema"...{"schema": ...}`)."""
    out = []
    start = line.find('{"schema"', 1)
    while start > 0:
        try:
            rec = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find('{"schema"', start + 1)
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
            out.append(rec)
        break
    return out


def frame(path: str | os.PathLike):
    """Records as a pandas DataFrame (provenance flattened to provenance.* columns)."""
    import pandas as pd

    return pd.json_normalize(load(path))


@functools.lru_cache(maxsize=None)
def _git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_probe(repeats: int = 5) -> float:
    """Seconds for a fixed memory + arithmetic workload (median of `repeats`, ~5 ms in all).

    Recorded with every run so that `hpc compare` can see the machine itself drift between runs
    (on shared hosts the whole machine slows for minutes at a time; repetitions inside one run
    cannot see that)."""
    import time

    import numpy as np

    a = np.arange(1 << 18, dtype=np.float32)  # 1 MiB: in cache on anything recent
    out = np.empty_like(a)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            np.multiply(a, 1.0001, out=out)
            np.add(out, a, out=out)
        times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


def provenance(comm: "MPI.Comm | None" = None, argv: Sequence[str] | None = None, device: str = "cpu",
               cuda_aware: tuple[bool, str] | None = None) -> dict[str, Any]:
    """Where and how a point was measured. Collective over `comm` (it gathers the host names).

    With device "cuda" it carries a `gpu` block (model, count, driver, CUDA, NCCL, CUDA-aware MPI:
    hpc/gpu.py); CPU runs have none and never touch CUDA."""
    import hpc

    host = socket.gethostname()
    hosts = sorted(set(comm.allgather(host))) if comm is not None else [host]
    mpi_library = None
    if comm is not None:
        from mpi4py import MPI

        mpi_library = MPI.Get_library_version().strip("\x00 \n").splitlines()[0]
    out = {
        "hpc": hpc.__version__,
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "mpi4py": _version("mpi4py"),
        "mpi_library": mpi_library,
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "hosts": hosts,
        "cpus": os.cpu_count(),
        "argv": list(argv if argv is not None else sys.argv),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "probe_s": machine_probe(),
    }
    if device == "cuda":
        from hpc import gpu

        out["gpu"] = gpu.facts(cuda_aware)
    return out


def command_line() -> list[str]:
    """The user's `hpc ...` command line as they typed it (set by the launching parent)."""
    from hpc.env import get

    saved = get("HPC_ARGV")
    if saved:
        try:
            return json.loads(saved)
        except json.JSONDecodeError:
            pass
    return ["hpc", *sys.argv[1:]]
