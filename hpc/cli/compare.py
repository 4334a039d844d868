"""`hpc compare A B` (a regression gate) and `hpc compare A --baseline NAME`."""

from __future__ import annotations

import argparse
import json
import sys

from hpc.analysis.compare import (METRICS, baseline_summary, compare_baseline, compare_records,
                                  comparison_table)
from hpc.errors import HpcError


_HELP = """\
Compare two record sets point by point (a regression gate), or every algorithm in one set
against a baseline.

  hpc compare runs/before runs/after --fail-if-worse 10
  hpc compare runs/sweep --baseline mpi --markdown

Metric (auto): busbw for collectives with np > 1 (higher is better), samples/s for training
(higher is better), time otherwise (lower is better). Verdict 'same' when the change is inside
the noise band: the larger of --threshold and the inter-quartile spread of the repetitions
(in log space, so B/A within a factor 1 ± band of 1), or when a Mann–Whitney U test
(where the sample sizes allow one) gives p ≥ 0.05.
Exit 1 with --fail-if-worse PCT when any point is 'worse' by more than PCT percent.
"""


def register(sub) -> None:
    """Add the `compare` verb."""
    p = sub.add_parser("compare", help="compare two record sets, or algorithms against a baseline",
                       description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A", help="records file or directory (the reference)")
    p.add_argument("b", metavar="B", nargs="?", help="records file or directory (the candidate)")
    p.add_argument("--baseline", metavar="NAME",
                   help="compare every algo/sync in A against NAME (e.g. mpi) instead of A vs B")
    p.add_argument("--metric", default="auto", choices=["auto", *METRICS],
                   help="what to compare (default auto)")
    p.add_argument("--threshold", type=float, default=3.0, metavar="PCT",
                   help="smallest change in percent that can count (default 3)")
    p.add_argument("--fail-if-worse", type=float, default=None, metavar="PCT",
                   help="exit 1 when any point is worse by more than PCT percent")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="markdown tables")
    fmt.add_argument("--csv", action="store_true", help="CSV (one table)")
    fmt.add_argument("--json", action="store_true", help="JSON list of rows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc compare`."""
    from hpc.analysis.groups import load_records
    from hpc.table import print_tables

    if args.threshold < 0 or (args.fail_if_worse is not None and args.fail_if_worse < 0):
        raise HpcError("--threshold and --fail-if-worse must be ≥ 0")
    if args.baseline and args.b:
        raise HpcError("give either B or --baseline NAME, not both")
    if not args.baseline and not args.b:
        raise HpcError("nothing to compare: give B, or --baseline NAME to compare within A")
    if args.baseline:
        rows, notes = compare_baseline(load_records(args.a), args.baseline, args.metric,
                                       args.threshold)
        tables = [comparison_table(rows, f"{args.a}: each algorithm against {args.baseline}",
                                   args.baseline, "algo", notes), baseline_summary(rows)]
    else:
        rows, notes = compare_records(load_records(args.a), load_records(args.b), args.metric,
                                      args.threshold)
        tables = [comparison_table(rows, f"A = {args.a}  vs  B = {args.b}", notes=notes)]
    if args.json:
        from hpc.analysis.groups import json_safe

        json.dump(json_safe(rows), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print_tables(tables[:1] if args.csv else tables,
                     "csv" if args.csv else "markdown" if args.markdown else "rich")
    if args.fail_if_worse is not None:
        bad = [r for r in rows if r["verdict"] == "worse" and r["worse_pct"] > args.fail_if_worse]
        if bad:
            worst = max(bad, key=lambda r: r["worse_pct"])
            print(f"hpc: {len(bad)} point(s) worse by more than {args.fail_if_worse:g}% "
                  f"(worst: {worst['label']}, {worst['worse_pct']:.1f}% worse {worst['metric']})",
                  file=sys.stderr)
            return 1
    return 0
