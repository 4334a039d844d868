"""`hpc plot PATH -o FILE.png`."""

from __future__ import annotations

import argparse

from hpc.errors import HpcError


def register(sub) -> None:
    """Add the `plot` verb."""
    p = sub.add_parser("plot", help="PNG of speedup/efficiency with the chosen model, and busbw vs size",
                       description="Plot speedup and efficiency vs N with the ideal line and the model "
                                   "hpc predict chooses (95%% prediction band, dashed beyond the "
                                   "measured N, out to --np; a curve with no prediction is drawn as "
                                   "points only), and for collective records busbw/time vs message "
                                   "size per algorithm.")
    p.add_argument("path", help="records file/dir, or CSV with columns np,time_s")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="PNG to write")
    p.add_argument("--law", help="amdahl | gustafson (default: from the records' scaling)")
    p.add_argument("--np", dest="nps", metavar="N[,N...]",
                   help="draw predictions out to the largest of these rank counts "
                        "(default: 8× the largest measured)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc plot`."""
    if not str(args.output).lower().endswith(".png"):
        raise HpcError(f"{args.output}: the output must be a .png file")
    from hpc import records
    from hpc.analysis.plot import plot_path
    from hpc.cli.args import note_failures
    from hpc.cli.predict import parse_nps

    nps = parse_nps(args.nps)
    records.check_writable(args.output, "plot")
    out = plot_path(args.path, args.output, args.law, nps or None)
    print(f"wrote {out}")
    note_failures(args.path)
    return 0
