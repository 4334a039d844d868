"""`hpc sweep strong|weak ... WORKLOAD`: a workload over rank counts, locally or through Slurm, resumably.

A sweep directory holds `sweep.json` (what the sweep is), `points/<point>.jsonl` (one file per
finished point, moved into place atomically, so a killed sweep loses and duplicates nothing),
`logs/` and, for Slurm, `slurm/<point>.sbatch`. Running the same command again skips the points
that finished ok and retries the rest.
"""

from __future__ import annotations

import argparse

from hpc.sweep import LAUNCHERS


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="strong/weak scaling sweep of a workload over rank counts",
                       description="Run WORKLOAD (an hpc command line without --np, e.g. `bench "
                       "collective --algo ring,mpi --sizes 1MB:4MB` or `train --sync ring --model mlp`) "
                       "at every rank count, locally with mpirun or through Slurm.")
    p.add_argument("scaling", choices=("strong", "weak"),
                   help="strong: fixed global problem split over N ranks; weak: fixed problem per rank")
    p.add_argument("--np", required=True, metavar="N,N,...", help="rank counts, increasing (e.g. 1,2,4)")
    p.add_argument("--nodes", default="1", metavar="K,K,...", help="node counts (Slurm; default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (resumable)")
    p.add_argument("--reps", type=int, default=1, help="repetitions of every point (default 1)")
    p.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local")
    p.add_argument("--point-timeout", type=float, default=900.0, metavar="S",
                   help="a point running longer is killed and recorded as timeout (default 900)")
    p.add_argument("--dry-run", action="store_true",
                   help="slurm: write the sbatch scripts and stop; submit them by hand with sbatch")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--account", help="slurm account")
    p.add_argument("--time", default="00:30:00", help="slurm time limit per point (default 00:30:00)")
    p.add_argument("--slurm-launcher", choices=("mpirun", "srun"), default="mpirun",
                   help="how a Slurm job starts its ranks (default mpirun)")
    p.add_argument("--no-chain", action="store_true",
                   help="slurm: let points run concurrently (default: one after another, afterany)")
    p.add_argument("workload", nargs="*", metavar="WORKLOAD",
                   help="the hpc command to run at every point, without --np")
    p.set_defaults(func=run)
    return p


def value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The sweep's options that take a value (so `split_argv` can step over their values)."""
    return {s for a in parser._actions for s in a.option_strings if a.nargs != 0}


def split_argv(argv: list[str], takes_value: set[str]) -> tuple[list[str], list[str]]:
    """Split `sweep [options] SCALING [options] WORKLOAD...` before argparse sees it.

    The workload has options of its own (--algo ...), which argparse would take for the sweep's.
    """
    i, seen_scaling = 1, False
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1:]
        if tok in takes_value:
            i += 2
        elif tok.startswith("-"):
            i += 1
        elif not seen_scaling:
            seen_scaling, i = True, i + 1
        else:
            return argv[:i], argv[i:]
    return argv, []


def run(args: argparse.Namespace) -> int:
    from hpc.sweep import run_sweep
    from hpc.sweep.plan import parse_counts

    nodes = parse_counts(args.nodes, "nodes") if args.launcher == "slurm" else [1]
    failed = run_sweep(
        args.scaling, list(args.workload), nps=parse_counts(args.np, "np"), out=args.out,
        validate=args.parse_workload,  # the whole CLI's parser: a typo is one line before anything runs
        nodes=nodes, reps=args.reps, launcher=args.launcher, point_timeout=args.point_timeout,
        dry_run=args.dry_run, partition=args.partition, account=args.account, time=args.time,
        slurm_launcher=args.slurm_launcher, no_chain=args.no_chain)
    return 1 if failed else 0
