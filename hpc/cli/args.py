"""Argument types and option groups shared by the verbs."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def int_min(lo: int) -> Callable[[str], int]:
    """argparse type: an integer >= lo, with a message that names the bound."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


positive_int = int_min(1)


def count_or_auto(lo: int) -> Callable[[str], int | str]:
    """argparse type of --reps/--batches: an integer >= lo, or 'auto' (repetitions are added until the
    verdicts are clear, within --max-reps/--max-time)."""
    def parse(text: str) -> int | str:
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return int_min(lo)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo} or 'auto', got {text!r}") from None
    return parse


def float_pos(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def float_min(lo: float) -> Callable[[str], float]:
    """argparse type: a finite number >= lo (NaN and infinity are refused, not taken for "no limit")."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or not v >= lo:
            raise argparse.ArgumentTypeError(f"expected a finite number >= {lo:g}, got {text!r}")
        return v
    return parse


def add_np_argument(parser: argparse.ArgumentParser, default_timeout: float | None = None) -> None:
    """Give a command `--np N` and `--timeout S`; main re-launches such commands under mpirun."""
    parser.add_argument("--np", type=positive_int, metavar="N",
                        help="number of MPI ranks to start (omit when already started by mpirun/srun)")
    parser.add_argument("--timeout", type=float_pos, default=default_timeout, metavar="S",
                        help="kill the whole job after S seconds of wall-clock time")
    parser.set_defaults(mpi_command=True)


def options(cls: type[T], args: argparse.Namespace, **override: Any) -> T:
    """Build the option dataclass `cls` from the parsed flags of the same names (once, in the CLI)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(override)
    return cls(**values)


def note_failures(path: str) -> None:
    """Say on stderr which failed records an analysis verb leaves out (records only; a CSV has none)."""
    import sys
    from pathlib import Path

    from hpc.analysis.groups import failure_note, load_records
    from hpc.analysis.scaling import is_csv

    p = Path(path)
    if not p.exists() or (p.is_file() and (p.stat().st_size == 0 or is_csv(p))):
        return
    recs = load_records(p)
    note = failure_note(recs) if any(r.get("status", "ok") == "ok" for r in recs) else None
    if note:  # (with no ok record at all the verb itself says so, in one error line)
        print(f"hpc: note: {note}", file=sys.stderr)
