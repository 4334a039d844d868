"""`hpc compare A B` (a regression gate), `hpc compare A --baseline NAME`, `hpc compare A` (ranking)."""

from __future__ import annotations

import argparse
import json
import sys

from hpc.analysis.compare import (METRICS, NOISE_BAND_PCT, baseline_summary, compare_baseline,
                                  compare_records, comparison_table, csv_table)
from hpc.analysis.ranking import rank_schemes, ranking_csv, ranking_tables, unranked
from hpc.cli.args import float_min
from hpc.errors import HpcError

_HELP = f"""\
Compare two record sets point by point (a regression gate), every algorithm in one set against a
baseline, or (A alone) rank the algorithms/schemes measured at each point, fastest first.

  hpc compare runs/before runs/after --fail-if-worse 10
  hpc compare runs/sweep --baseline mpi --markdown
  hpc compare runs/sync                       # which scheme is fastest, with 95% CIs

Metric (auto): busbw for collectives with np > 1 (higher is better), samples/s for training
(higher is better), time otherwise (lower is better). The verdict comes from a robust 95%
interval of the ratio (t on log values, pair by pair when measured together; where a value stands
apart it is named and the 20%-trimmed mean sets it aside): 'worse'/'better' only when the whole
interval lies beyond the noise band (--threshold, default {NOISE_BAND_PCT:g}%, calibrated on A/A
runs of this kind of machine), else 'same within ±X%' (X: the smallest change it could have
detected), 'too few reps' with fewer than 3 repetitions, 'inconclusive' when the machine itself
drifted between A and B by more than the change, or when a --batches/--reps auto run ran out of
budget with its estimate beyond the band. Between runs, points are compared relative to native
`mpi` measured in the same run when both runs have it (--reference). Exit 1 with --fail-if-worse
PCT when any point is 'worse' by more than PCT percent.
"""


def register(sub) -> None:
    """Add the `compare` verb."""
    p = sub.add_parser("compare", help="compare record sets, against a baseline, or rank schemes",
                       description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A", help="records file or directory (the reference)")
    p.add_argument("b", metavar="B", nargs="?", help="records file or directory (the candidate)")
    p.add_argument("--baseline", metavar="NAME",
                   help="compare every algo/sync in A against NAME (e.g. mpi) instead of A vs B")
    p.add_argument("--reference", default="auto", metavar="NAME",
                   help="A vs B: compare each point relative to NAME measured in the same run "
                        "(default: mpi when both runs have it; 'none' to compare raw values)")
    p.add_argument("--metric", default="auto", choices=["auto", *METRICS],
                   help="what to compare (default auto)")
    p.add_argument("--threshold", type=float_min(0), default=NOISE_BAND_PCT, metavar="PCT",
                   help=f"noise band: smallest change in percent that can count (default {NOISE_BAND_PCT:g})")
    p.add_argument("--fail-if-worse", type=float_min(0), default=None, metavar="PCT",
                   help="exit 1 when any point is worse by more than PCT percent")
    p.add_argument("--wide", action="store_true", help="all columns (medians, change, band, reps)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="ranking: also answer 'the fastest scheme that fits in SIZE per rank' (e.g. 2GB; "
                        "peak resident memory per rank, peak GPU memory with --device cuda)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="markdown tables")
    fmt.add_argument("--csv", action="store_true", help="CSV: plain numbers, units in the header")
    fmt.add_argument("--json", action="store_true", help="JSON list of rows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc compare` (after the tables, a note on the failed records they left out)."""
    from hpc.cli.args import note_failures

    if not args.threshold >= 0 or (args.fail_if_worse is not None and not args.fail_if_worse >= 0):
        raise HpcError("--threshold and --fail-if-worse must be ≥ 0")
    if args.baseline and args.b:
        raise HpcError("give either B or --baseline NAME, not both")
    if args.max_memory is not None:
        from hpc.units import parse_size

        if args.b or args.baseline:
            raise HpcError("--max-memory answers a ranking: give one record set, without B or --baseline")
        args.max_memory_bytes = parse_size(args.max_memory)
    code = _run(args)
    for path in filter(None, (args.a, args.b)):  # after the tables: what they left out
        note_failures(path)
    return code


def _run(args: argparse.Namespace) -> int:
    from hpc.analysis.groups import json_safe, load_records
    from hpc.table import print_tables

    fmt = "csv" if args.csv else "markdown" if args.markdown else "rich"
    if not args.baseline and not args.b:
        records = load_records(args.a)
        ranked = rank_schemes(records, args.metric, args.threshold)
        if not ranked:
            alone = unranked(load_records(args.a))
            why = f" (left out: {'; '.join(alone[:3])})" if alone else ""
            raise HpcError(f"{args.a}: no point was measured by two or more algorithms/schemes{why}; "
                           "give B, or --baseline NAME")
        memory = _memory_tables(ranked, records, getattr(args, "max_memory_bytes", None), args.csv, args.wide)
        if args.json:
            json.dump(json_safe(ranked), sys.stdout, indent=2, allow_nan=False)
            sys.stdout.write("\n")
        else:
            print_tables(([ranking_csv(ranked)] if args.csv else ranking_tables(ranked)) + memory, fmt)
        return 0
    if args.baseline:
        rows, notes = compare_baseline(load_records(args.a), args.baseline, args.metric,
                                       args.threshold)
        tables = [comparison_table(rows, f"{args.a}: each algorithm against {args.baseline}",
                                   args.baseline, "algo", notes, wide=args.wide), baseline_summary(rows)]
    else:
        reference = None if args.reference.lower() == "none" else args.reference
        rows, notes = compare_records(load_records(args.a), load_records(args.b), args.metric,
                                      args.threshold, reference)
        tables = [comparison_table(rows, f"A = {args.a}  vs  B = {args.b}", notes=notes, wide=args.wide)]
    if args.json:
        json.dump(json_safe(rows), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print_tables([csv_table(rows)] if args.csv else tables, fmt)
    if args.fail_if_worse is not None:
        bad = [r for r in rows if r["verdict"] == "worse" and r["worse_pct"] > args.fail_if_worse]
        if bad:
            worst = max(bad, key=lambda r: r["worse_pct"])
            print(f"hpc: {len(bad)} point(s) worse by more than {args.fail_if_worse:g}% "
                  f"(worst: {worst['label']}, {worst['worse_pct']:.1f}% worse {worst['metric']})",
                  file=sys.stderr)
            return 1
    return 0


def _memory_tables(ranked: list, records: list, max_memory: int | None, csv: bool, wide: bool) -> list:
    """Speed and memory per rank beside the ranking (each ranked row gets its `memory`), and with
    --max-memory the fastest scheme that fits (each point gets `max_memory`)."""
    from hpc.analysis import memory

    memory.annotate(ranked, records)
    if not memory.has_memory(ranked) and max_memory is None:
        return []
    tabs = [memory.memory_csv(ranked)] if csv else memory.memory_tables(ranked, wide)
    if max_memory is not None:
        tabs.append(memory.fits_table(memory.fits(ranked, max_memory)))
    return tabs
