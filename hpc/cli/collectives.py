"""`hpc collectives list` and `hpc collectives verify SPEC --np N`."""

from __future__ import annotations

import argparse

from hpc.cli.args import add_np_argument, float_pos, int_min
from hpc.plugins import registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collectives", help="list the collectives, or verify one against native MPI")
    verbs = p.add_subparsers(dest="collectives_verb", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    ls = verbs.add_parser("list", help="the registered collectives and installed plug-ins")
    ls.set_defaults(func=run_list)

    v = verbs.add_parser("verify", help="check SPEC against native MPI_Allreduce on many cases")
    v.add_argument("spec", metavar="SPEC",
                   help="a registered name, package.module:func, path/file.py:func, or entry point")
    v.add_argument("--servers", type=int_min(0), default=0, help="dedicated server ranks (ps only)")
    v.add_argument("--ops", default="SUM,MAX", help="MPI ops to check (default SUM,MAX)")
    v.add_argument("--quick", action="store_true", help="the short matrix (no 4 MB, two dtypes)")
    v.add_argument("--case-timeout", type=float_pos, default=120.0, metavar="S",
                   help="end the job if one case takes longer than S seconds (a deadlock)")
    add_np_argument(v, default_timeout=900)
    v.set_defaults(func=run_verify, precheck=lambda a: registry.precheck(a.spec))


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="collectives (SPEC names)")
    for col in ("name", "target", "what"):
        table.add_column(col)
    for name, target, desc in registry.available():
        table.add_row(name, target, desc)
    Console().print(table)
    Console().print("A plug-in SPEC may also be package.module:func or path/to/file.py:func.")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from hpc.comm import console, world
    from hpc.errors import HpcError
    from hpc.plugins.verify import verify

    ops = tuple(o.strip().upper() for o in args.ops.split(",") if o.strip())
    for op in ops:
        if op not in ("SUM", "MAX", "MIN", "PROD"):
            raise HpcError(f"unknown op '{op}': use SUM, MAX, MIN or PROD")
    coll = registry.load(args.spec, args.servers)
    comm = world()
    report = verify(comm, coll, ops=ops, quick=args.quick, case_timeout=args.case_timeout)
    refused = f"; refused {', '.join(sorted(report.refused_ops))}" if report.refused_ops else ""
    console(comm).print(f"[green]ok[/]: {coll.spec} matches native MPI_Allreduce in "
                        f"{report.passed} cases on {'/'.join(map(str, report.rank_counts))} ranks{refused}",
                        soft_wrap=True)
    return 0
