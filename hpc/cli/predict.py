"""`hpc predict PATH --np 16,24,512`: time, 95% prediction interval, speedup and model at rank
counts nobody measured (and memory per rank for training records); `--check HELDOUT` backtests
those predictions against measurements."""

from __future__ import annotations

import argparse
import json
import sys

from hpc.cli.args import float_min
from hpc.errors import HpcError

_HELP = """\
Predict each curve's time at the asked rank counts from a model family (Amdahl / Gustafson plus
communication terms c·log2 N, c·N, c·N·log2 N, c·N², c·(N−1)/N and, for collectives and training,
the α–β form of the collective), chosen by a leave-largest-N-out backtest and AICc. Each number
comes with a 95% prediction interval for one run's time (parameter uncertainty + run-to-run and
per-N scatter); where models disagree the interval is their mixture, and is flagged. No number
(with the reason) where nothing fits, or where the interval would span more than ×10.
Training records that carry memory also get memory per rank at each N (model states, peak RSS),
fitted as a + b/N with a 95% prediction interval.

PATH is a records file or sweep directory (local or Slurm; one curve per group and node count) or
a CSV with columns np,time_s (one row per repetition).

  hpc predict runs/s1 --np 16,24,512
  hpc predict times.csv --np 64 --json
  hpc predict runs/train --check runs/heldout     # predicted vs measured, error, covered
"""


def register(sub) -> None:
    """Add the `predict` verb."""
    p = sub.add_parser("predict", help="predict time at unmeasured rank counts, with 95%% intervals",
                       description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="records file/dir, or CSV with columns np,time_s")
    p.add_argument("--np", dest="nps", metavar="N[,N...]",
                   help="rank counts to predict at (default: 2× and 10× the largest measured; "
                        "with --check: the held-out rank counts)")
    p.add_argument("--scaling", help="strong | weak (default: the records' own; CSV: strong)")
    p.add_argument("--check", metavar="HELDOUT",
                   help="records or CSV measured at rank counts left out of PATH: print predicted vs "
                        "measured, the error and whether each interval covered")
    p.add_argument("--max-error", type=float_min(0), metavar="PCT",
                   help="with --check: exit 1 when the mean absolute error exceeds PCT percent")
    p.add_argument("--min-coverage", type=float_min(0), metavar="PCT",
                   help="with --check: exit 1 when fewer than PCT percent of the intervals cover")
    p.add_argument("--json", action="store_true", help="print JSON rows (one per curve and N)")
    p.add_argument("-v", "--detail", action="store_true", help="also every candidate model per curve")
    p.add_argument("--markdown", action="store_true", help="markdown tables instead of rich")
    p.set_defaults(func=run)


def parse_nps(text: str | None) -> list[int]:
    """'16,24,512' → [16, 24, 512] (sorted, unique); one error line for anything else."""
    if not text:
        return []
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HpcError(f"--np: expected whole numbers like 16,24,512, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise HpcError(f"--np: rank counts must be ≥ 1, got {text!r}")
    return sorted(set(vals))


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc predict`."""
    from hpc.analysis.curves import curves_from_path
    from hpc.analysis.forecasts import (check_rows, check_tables, default_nps, forecast_path,
                                        predict_rows, predict_tables)
    from hpc.analysis.groups import json_safe
    from hpc.cli.args import note_failures
    from hpc.table import print_tables

    nps = parse_nps(args.nps)
    if (args.max_error is not None or args.min_coverage is not None) and not args.check:
        raise HpcError("--max-error/--min-coverage need --check HELDOUT")
    skipped: list[str] = []
    notes: list[str] = []
    fcs = forecast_path(args.path, args.scaling, skipped, notes)
    for s in skipped:
        print(f"hpc: note: skipped {s}", file=sys.stderr)
    for s in notes:
        print(f"hpc: note: {s}", file=sys.stderr)
    style = "markdown" if args.markdown else "rich"
    code = 0
    if args.check:
        held, _ = curves_from_path(args.check, args.scaling)
        rows, summary = check_rows(fcs, held, nps or None)
        mem = _memory(args.path, fcs, rows, args.check)
        if args.json:
            _dump(json_safe({"rows": rows, "summary": summary, "memory": mem}))
        else:
            tabs = check_tables(fcs, rows, summary, args.detail)
            print_tables(tabs + _memory_tables(rows, mem), style)
        code = _gate(summary, args.max_error, args.min_coverage)
    else:
        rows = predict_rows(fcs, nps or default_nps(fcs))
        _memory(args.path, fcs, rows)
        if args.json:
            _dump(json_safe(rows))
        else:
            print_tables(predict_tables(fcs, rows, args.detail) + _memory_tables(rows), style)
    note_failures(args.path)
    return code


def _memory(path: str, fcs: list, rows: list[dict], held: str | None = None) -> list[dict]:
    """Memory per rank beside time: each train row whose records carry memory gets `memory` (a + b/N
    fits, hpc.analysis.memory_predict); with `held`, predicted vs measured memory rows."""
    from pathlib import Path

    from hpc.analysis import memory_predict as mp
    from hpc.analysis.curves import is_csv
    from hpc.analysis.groups import load_records

    if is_csv(Path(path)):
        return []
    mp.attach(rows, [c for c, _ in fcs], mp.memory_fits(load_records(path)))
    return mp.check_memory(rows, load_records(held)) if held and not is_csv(Path(held)) else []


def _memory_tables(rows: list[dict], checked: list[dict] | None = None) -> list:
    from hpc.analysis import memory_predict as mp

    tabs = [mp.check_table(checked) if checked else mp.memory_table(rows)]
    return [t for t in tabs if t is not None]


def _gate(summary: dict, max_error: float | None, min_coverage: float | None) -> int:
    """Exit status of a backtest used as a check (CI): 1 with one line saying what failed."""
    bad = []
    if max_error is not None and (summary["mape_pct"] is None or summary["mape_pct"] > max_error):
        bad.append(f"mean absolute error {summary['mape_pct'] or float('nan'):.1f}% > {max_error:g}%")
    cov = summary["coverage"]
    if min_coverage is not None and (cov is None or 100 * cov < min_coverage):
        bad.append(f"{100 * (cov or 0):.0f}% of intervals covered < {min_coverage:g}%")
    if bad:
        print(f"hpc: error: backtest: {'; '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _dump(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
