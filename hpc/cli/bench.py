"""`hpc bench collective --algo SPEC[,SPEC...] --np N --sizes 8B:64MB`."""

from __future__ import annotations

import argparse

from hpc.cli.args import add_np_argument, count_or_auto, float_pos, int_min, options
from hpc.workloads import bench
from hpc.workloads.bench import DTYPES, OPS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: `hpc bench collective`")
    kinds = p.add_subparsers(dest="bench_kind", metavar="KIND", parser_class=type(p))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    c = kinds.add_parser("collective", help="time allreduce algorithms against native MPI")
    c.add_argument("--algo", default="ring,mpi", help="comma-separated SPECs (default ring,mpi)")
    c.add_argument("--sizes", default="8B:64MB", help="MIN:MAX[:FACTOR] or a list (default 8B:64MB)")
    c.add_argument("--dtype", default="float32", choices=DTYPES)
    c.add_argument("--op", default="SUM", type=str.upper, choices=OPS)
    c.add_argument("--iters", type=int_min(0), default=0, help="iterations per batch (default: by size)")
    c.add_argument("--batches", type=count_or_auto(1), default=5,
                   help="timed batches per size, each kept (default 5); 'auto': from 5, add batches until "
                        "every algorithm's verdict against mpi (else the first) is clear, within "
                        "--max-reps/--max-time")
    c.add_argument("--interleave", choices=("auto", "batch", "call"), default="auto",
                   help="batch: batch b of every algorithm in turn; call: their calls alternate within "
                        "each round, each timed (pairs see the same moments of a busy machine); "
                        "auto (default): call with --batches auto, else batch")
    c.add_argument("--max-reps", type=int_min(bench.AUTO_MIN), default=None, metavar="K",
                   help=f"--batches auto: at most K batches per size (default {bench.AUTO_MAX_REPS})")
    c.add_argument("--max-time", type=float_pos, default=None, metavar="S",
                   help=f"--batches auto: no new batch after S seconds at a size (default {bench.AUTO_MAX_TIME:g})")
    c.add_argument("--warmup", type=int_min(0), default=3, help="untimed calls per size (default 3)")
    c.add_argument("--target-time", type=float_pos, default=0.05,
                   help="seconds one batch should take when --iters is not given (default 0.05)")
    c.add_argument("--servers", type=int_min(0), default=0, help="dedicated server ranks for ps")
    c.add_argument("--no-verify", action="store_true", help="skip verifying plug-ins before timing")
    c.add_argument("--json", metavar="FILE", help="append one record per (algo, size) to FILE ('-': stdout)")
    c.add_argument("--case-timeout", type=float_pos, default=120.0, metavar="S",
                   help="end the job when one verification case or point hangs this long (default 120)")
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: buffers on the rank's GPU, into a CUDA-aware MPI or through pinned host "
                        "staging; `ring` reduces on the GPU (default cpu)")
    add_np_argument(c, default_timeout=3600)
    c.set_defaults(func=lambda a: bench.run(_config(a)), precheck=lambda a, here=True: bench.precheck(_config(a)))


def _config(args: argparse.Namespace) -> bench.BenchConfig:
    auto = args.batches == "auto"
    return options(bench.BenchConfig, args, batches=bench.AUTO_MIN if auto else args.batches, batches_auto=auto)
