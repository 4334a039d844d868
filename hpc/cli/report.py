"""`hpc report DIR`: a markdown report with plots."""

from __future__ import annotations

import argparse

from hpc.cli.args import int_min


def register(sub) -> None:
    """Add the `report` verb."""
    p = sub.add_parser("report", help="markdown report of a sweep directory, with plots",
                       description="Write a markdown report of a records directory: provenance, "
                                   "Amdahl/Gustafson fits, comparisons against a baseline, the α–β "
                                   "cost model, and PNG plots written next to the report.")
    p.add_argument("path", metavar="DIR", help="records directory (or file)")
    p.add_argument("-o", "--output", metavar="REPORT.md", help="report file (default DIR/REPORT.md)")
    p.add_argument("--baseline", metavar="NAME", help="baseline algo/sync for comparisons "
                                                      "(default mpi when present)")
    p.add_argument("--bootstrap", type=int_min(0), default=200, metavar="B",
                   help="bootstrap resamples for the second CI (default 200, 0 = off)")
    p.add_argument("--title", help="report title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc report`."""
    from hpc.analysis.report import write_report

    if args.output:
        from hpc import records

        records.check_writable(args.output, "report")
    out = write_report(args.path, args.output, baseline=args.baseline, bootstrap=args.bootstrap,
                       title=args.title)
    print(f"wrote {out}")
    return 0
