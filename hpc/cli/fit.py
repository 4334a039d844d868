"""`hpc fit PATH`: Amdahl / Gustafson (or the α–β cost model) on records or a CSV."""

from __future__ import annotations

import argparse
import json
import sys

from hpc.cli.args import int_min
from hpc.errors import HpcError

# --------------------------------------------------------------------------- CLI

_HELP = """\
Fit Amdahl (strong scaling) or Gustafson (weak scaling) to every repetition, or the α–β
collective cost model.

PATH is a records file or directory (grouped by kind, algo/sync, size_bytes/model and scaling,
one curve per node count; only status == ok records) or a CSV with columns np,time_s (one row per
repetition). Predictions (2×, 10×, 100× the largest N) are those of `hpc predict`: the model of the
family that passes its backtest, with 95% prediction intervals.
The law defaults to the records' scaling (strong → amdahl, weak → gustafson; CSV → amdahl);
records of collective benchmarks only are fitted with the α–β cost model.

  hpc fit runs/s1                       # rich tables, one row per group
  hpc fit times.csv --law gustafson --json
  hpc fit runs/coll --law alpha-beta --predict-np 64 --predict-size 256MB
"""


def register(sub) -> None:
    """Add the `fit` verb to the CLI's subparsers."""
    p = sub.add_parser("fit", help="fit Amdahl/Gustafson (or the α–β cost model) to records or a CSV",
                       description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="records file/dir, or CSV with columns np,time_s")
    p.add_argument("--law", help="amdahl | gustafson | alpha-beta (collective cost model); "
                                 "default: from the records' scaling")
    p.add_argument("--costmodel", action="store_true", help="same as --law alpha-beta")
    p.add_argument("--json", action="store_true", help="print JSON (an object for one group, "
                                                       "a list for several)")
    p.add_argument("--bootstrap", type=int_min(0), default=1000, metavar="B",
                   help="bootstrap resamples of repetitions within each N for a second CI "
                        "(0 = off; default 1000)")
    p.add_argument("--seed", type=int_min(0), default=0, help="bootstrap seed (default 0)")
    p.add_argument("-v", "--detail", action="store_true",
                   help="per-point, prediction and model tables for every group "
                        "(default: only when there is one group)")
    p.add_argument("--markdown", action="store_true", help="markdown tables instead of rich")
    p.add_argument("--wide", action="store_true", help="all summary columns")
    p.add_argument("--predict-np", default=None, metavar="N[,N...]",
                   help="alpha-beta: rank counts to predict at (default: 2× and 8× the largest)")
    p.add_argument("--predict-size", default=None, metavar="SIZE[,SIZE...]",
                   help="alpha-beta: message sizes to predict at, e.g. 256MB (default: 4× largest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc fit` (after the tables, a note on the failed records it left out)."""
    from hpc.cli.args import note_failures

    code = _run(args)
    note_failures(args.path)
    return code


def _run(args: argparse.Namespace) -> int:
    law = (args.law or "").strip().lower()
    if args.costmodel or law in ("alpha-beta", "alphabeta", "costmodel", "cost"):
        return run_costmodel(args)
    if args.bootstrap < 0:
        raise HpcError("--bootstrap must be ≥ 0")
    if not law and _collective_only(args.path):  # Amdahl/Gustafson do not describe message sizes
        return run_costmodel(args)
    if args.predict_np or args.predict_size:
        raise HpcError("--predict-np/--predict-size belong to --law alpha-beta")
    from hpc.analysis.scaling import fit_path

    skipped: list[str] = []
    notes: list[str] = []  # e.g. a --nodes 1,2 sweep: one curve per node count
    results = fit_path(args.path, law or None, bootstrap=args.bootstrap, seed=args.seed,
                       skipped=skipped, notes=notes)
    for s in skipped:
        print(f"hpc: note: skipped {s}", file=sys.stderr)
    for s in notes:
        print(f"hpc: note: {s}", file=sys.stderr)
    if args.json:
        out = [r.to_dict() for r in results]
        json.dump(out[0] if len(out) == 1 else out, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    from hpc.analysis.scaling import detail_tables, summary_table
    from hpc.table import print_tables

    tables = [summary_table(results, wide=args.wide)]
    if args.detail or len(results) == 1:
        for r in results:
            tables += detail_tables(r)
    print_tables(tables, "markdown" if args.markdown else "rich")
    return 0


def _collective_only(path: str) -> bool:
    """True when PATH holds records and every usable one is a collective benchmark."""
    from pathlib import Path

    from hpc.analysis.groups import load_records, ok_records
    from hpc.analysis.scaling import is_csv

    p = Path(path)
    if not p.exists() or (p.is_file() and (p.stat().st_size == 0 or is_csv(p))):
        return False
    recs = ok_records(load_records(p))
    return bool(recs) and all(r.get("kind") == "collective" for r in recs)


def run_costmodel(args: argparse.Namespace) -> int:
    """`hpc fit PATH --law alpha-beta`: fit α, β per algorithm and predict at larger p and n."""
    from hpc.analysis.costmodel import (fit_collective_records, fit_table, parse_list, prediction_table,
                                       predictions)
    from hpc.analysis.groups import load_records
    from hpc.table import print_tables
    from hpc.units import parse_size

    fits = fit_collective_records(load_records(args.path))
    nps = parse_list(args.predict_np, int) or sorted(
        {2 * max(max(f.nps) for f in fits), 8 * max(max(f.nps) for f in fits)})
    sizes = parse_list(args.predict_size, parse_size) or [
        4 * max(max(f.sizes) for f in fits)]
    preds = predictions(fits, nps, sizes)
    if args.json:
        json.dump({"law": "alpha-beta", "fits": [f.to_dict() for f in fits], "predictions": preds},
                  sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    print_tables([fit_table(fits), prediction_table(fits, preds)],
                 "markdown" if args.markdown else "rich")
    return 0
