"""`hpc sweep strong|weak ... WORKLOAD`: a workload over rank counts, locally or through Slurm, resumably.

A sweep directory holds `sweep.json` (what the sweep is), `points/<point>.jsonl` (one file per
finished point, moved into place atomically, so a killed sweep loses and duplicates nothing),
`logs/` and, for Slurm, `slurm/<point>.sbatch`. Running the same command again skips the points
that finished ok and retries the rest.

WORKLOAD is an hpc command (`bench collective ...`, `train ...`) or any program:
`run [--metric REGEX] [--higher-better] [--unit UNIT] [--name NAME] -- COMMAND ARGS...`.
"""

from __future__ import annotations

import argparse

from hpc.cli.args import count_or_auto, float_pos, positive_int
from hpc.errors import HpcError
from hpc.sweep import LAUNCHERS
from hpc.sweep.command import RunSpec


WORKLOAD_HELP = """\
WORKLOAD (everything after the sweep's own options) is one of:
  bench collective --algo A[,B...] --sizes 8B:4MB [--batches K] ...   (hpc bench collective --help)
  train --sync S[,S...] --model M [--batch B] [--steps K] ...        (hpc train --help)
  run [--metric REGEX] [--higher-better] [--unit U] [--name N] -- COMMAND ARGS...
        any program on N ranks; its figure is the first group of REGEX in its last matching output
        line (else the wall time); it can read HPC_SCALING (strong|weak) to size its problem.
The workload never takes --np or --json (the sweep sets them per point); its --timeout, if given,
bounds each point as --point-timeout does. Examples:
  hpc sweep strong --np 1,2,4 --reps 3 --out runs/s1 bench collective --algo ring,mpi --sizes 1MB:4MB
  hpc sweep weak --np 1,2,4 --out runs/w1 train --sync ring,ddp --model mlp --batch 64
  hpc sweep strong --np 1,2,4,8 --out runs/pi run --metric 'time: (\\S+) s' -- ./pi 100000000
  hpc sweep strong --np 4,8 --nodes 1,2 --launcher slurm --partition debug --out runs/c1 train --sync ring
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="strong/weak scaling sweep of a workload over rank counts",
                       usage="hpc sweep {strong,weak} --np N,N,... --out DIR [options] WORKLOAD ...",
                       description="Run WORKLOAD (an hpc command line without --np, e.g. `bench "
                       "collective --algo ring,mpi --sizes 1MB:4MB` or `train --sync ring --model mlp`, "
                       "or any program: `run [--metric REGEX] [--higher-better] [--unit UNIT] -- COMMAND "
                       "ARGS...`) at every rank count, locally with mpirun or through Slurm.",
                       epilog=WORKLOAD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scaling", choices=("strong", "weak"),
                   help="strong: fixed global problem split over N ranks; weak: fixed problem per rank")
    p.add_argument("--np", required=True, metavar="N,N,...", help="rank counts, increasing (e.g. 1,2,4)")
    p.add_argument("--nodes", metavar="K,K,...", help="node counts (Slurm only; default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (resumable)")
    p.add_argument("--reps", type=count_or_auto(1), default=1,
                   help="repetitions of every point (default 1); 'auto': 3, then more for each rank count "
                        "whose verdicts are not clear yet, within --max-reps/--max-time")
    p.add_argument("--max-reps", type=positive_int, default=None, metavar="K",
                   help="--reps auto: at most K repetitions of a point (default 10)")
    p.add_argument("--max-time", type=float_pos, default=None, metavar="S",
                   help="--reps auto: no new repetition after S seconds (default: no limit)")
    p.add_argument("--launcher", choices=tuple(LAUNCHERS), default="local")
    p.add_argument("--point-timeout", type=float_pos, default=900.0, metavar="S",
                   help="a point running longer is killed and recorded as timeout (default 900)")
    p.add_argument("--dry-run", action="store_true",
                   help="slurm: write the sbatch scripts and stop; submit them by hand with sbatch")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--account", help="slurm account")
    p.add_argument("--time", help="slurm time limit per point (default 00:30:00)")
    p.add_argument("--slurm-launcher", choices=("mpirun", "srun"), default="mpirun",
                   help="how a Slurm job starts its ranks (default mpirun)")
    p.add_argument("--no-chain", action="store_true",
                   help="slurm: let points run concurrently (default: one after another, afterany)")
    p.add_argument("--sbatch-line", action="append", default=[], metavar="LINE",
                   help="slurm: an extra line for every script, e.g. '#SBATCH --gres=gpu:4' (repeatable)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="slurm: an extra sbatch option, e.g. --sbatch-arg=--gres=gpu:4 (repeatable)")
    p.add_argument("--before", action="append", default=[], metavar="CMD",
                   help="slurm: a shell command run before the launch, e.g. 'module load openmpi' "
                   "(repeatable; the job stops if it fails)")
    p.add_argument("--mpirun-arg", action="append", default=[], metavar="ARG",
                   help="an extra mpirun argument, e.g. --mpirun-arg=--map-by=ppr:2:node (repeatable)")
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
    argv = list(argv)
    i, seen_scaling = 1, False
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1:]
        if tok in takes_value:
            if i + 1 < len(argv) and argv[i + 1].startswith("-") and tok.startswith("--"):
                argv[i:i + 2] = [f"{tok}={argv[i + 1]}"]  # `--mpirun-arg --foo`: a value, not an option
                i += 1
                continue
            i += 2
        elif tok.startswith("-"):
            i += 1
        elif not seen_scaling:
            seen_scaling, i = True, i + 1
        else:
            return argv[:i], argv[i:]
    return argv, []


class _RunParser(argparse.ArgumentParser):
    """The `run` workload's options; bad usage is an HpcError (one line, nothing run)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise HpcError(f"sweep run: {message}")


def run_parser() -> argparse.ArgumentParser:
    p = _RunParser(prog="hpc sweep strong|weak ... run", description="Any program on N ranks: mpirun "
                   "locally, or inside the sbatch script on Slurm. Its environment has HPC_SCALING "
                   "(strong|weak), so it can size its own problem.")
    p.add_argument("--metric", metavar="REGEX", help="the figure is the first group of REGEX in the last "
                   "output line (stdout+stderr) that matches, e.g. 'time: ([0-9.eE+-]+) s'; default: "
                   "the wall time of the launch")
    p.add_argument("--higher-better", action="store_true",
                   help="the figure is a throughput (e.g. items/s), not a time")
    p.add_argument("--unit", help="the figure's unit: s (default), ms, us, ns, min, h for a time; "
                   "anything (e.g. items/s) for a throughput")
    p.add_argument("--name", help="what tables call the program (default: its file name)")
    return p


def parse_run(words: list[str]) -> RunSpec:
    """`[--metric REGEX] [--higher-better] [--unit U] [--name N] [--] COMMAND ARGS...` -> RunSpec."""
    parser = run_parser()
    if "--" in words:
        cut = words.index("--")
        options, command = words[:cut], words[cut + 1:]
    else:  # no `--`: the command starts at the first word that is neither an option nor its value
        takes_value = value_options(parser)
        i = 0
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in takes_value else 1
        options, command = words[:i], words[i:]
    args = parser.parse_args(options)
    return RunSpec(tuple(command), metric=args.metric, higher_better=args.higher_better, unit=args.unit,
                   name=args.name)


def run(args: argparse.Namespace) -> int:
    from hpc import records
    from hpc.sweep import run_sweep
    from hpc.sweep.plan import AUTO_MIN_REPS, parse_counts

    records.check_writable(args.out, "sweep directory (--out)", directory=True)
    workload = list(args.workload)
    words = workload[1:] if workload[:1] == ["hpc"] else workload
    spec = parse_run(words[1:]) if words[:1] == ["run"] else None
    failed = run_sweep(
        args.scaling, workload, nps=parse_counts(args.np, "np"), out=args.out,
        validate=args.parse_workload,  # the whole CLI's parser: a typo is one line before anything runs
        nodes=parse_counts(args.nodes, "nodes") if args.nodes else [1],
        reps=AUTO_MIN_REPS if args.reps == "auto" else args.reps, reps_auto=args.reps == "auto",
        max_reps=args.max_reps, max_time=args.max_time,
        launcher=args.launcher, point_timeout=args.point_timeout, dry_run=args.dry_run,
        partition=args.partition, account=args.account, time=args.time,
        slurm_launcher=args.slurm_launcher, no_chain=args.no_chain, run=spec,
        mpirun_args=tuple(args.mpirun_arg),
        sbatch_lines=tuple(args.sbatch_line) + tuple(sbatch_arg_line(a) for a in args.sbatch_arg),
        before=tuple(args.before))
    return 1 if failed else 0


def sbatch_arg_line(arg: str) -> str:
    """`--gres=gpu:4` -> `#SBATCH --gres=gpu:4`."""
    if not arg.startswith("-") or "\n" in arg:
        raise HpcError(f"--sbatch-arg {arg!r} must be an sbatch option, e.g. --sbatch-arg=--gres=gpu:4")
    return f"#SBATCH {arg}"
