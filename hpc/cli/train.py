"""`hpc train --sync S --model M --np N --steps K`: data-parallel training, timed per step.

M is a built-in model or the user's factory: `package.module:factory`, `path/to/file.py:factory` or
`torchvision:NAME`, called as `factory(**model_args)` and fed `--input-shape` float samples with
`--classes` labels, `--vocab/--seq-len` token ids, or the samples of `--data FILE.h5`.
"""

from __future__ import annotations

import argparse

from hpc.cli.args import add_np_argument, count_or_auto, float_min, float_pos, int_min, options
from hpc.workloads import train_plan
from hpc.workloads.models import MODELS
from hpc.workloads.train_plan import SCALINGS


def register(sub: argparse._SubParsersAction) -> None:
    from hpc.workloads import sync

    epilog = "sync schemes:\n" + "\n".join(f"  {n:<20} {d}" for n, d in sync.names())
    epilog += ("\n\nAfter training, parameters must be bit-identical on all ranks. Floating-point buffers\n"
               "(BatchNorm running statistics) follow each rank's data during training, as under DDP and\n"
               "Horovod; they are averaged over the data ranks at the end and then compared too.")
    p = sub.add_parser("train", help="train a model with own gradient sync or Horovod/DeepSpeed/DDP",
                       description=__doc__.splitlines()[0], epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sync", default="ring", metavar="S[,S...]",
                   help="ring|ps|ps-async|auto|mpi|horovod|ddp|deepspeed-zero1|2|3, or any collective "
                        "SPEC (module:func, file.py:func, entry point) for own bucketed sync (default ring); "
                        "a list runs side by side, interleaved, and ends with a 'which is fastest' table")
    p.add_argument("--reps", type=count_or_auto(1), default=1,
                   help="runs of every scheme, in rounds of shuffled order (default 1); 'auto': from 3 rounds, "
                        "add rounds until every scheme's verdict against the fastest is clear, within "
                        "--max-reps/--max-time")
    p.add_argument("--max-reps", type=int_min(3), default=None, metavar="K",
                   help=f"--reps auto: at most K rounds (default {train_plan.AUTO_MAX_REPS})")
    p.add_argument("--max-time", type=float_pos, default=None, metavar="S",
                   help=f"--reps auto: no new round after S seconds (default {train_plan.AUTO_MAX_TIME:g})")
    p.add_argument("--order-seed", type=int, default=None, metavar="SEED",
                   help="seed of the shuffled run order (default random; printed and recorded)")
    p.add_argument("--model", default="mlp", metavar="SPEC",
                   help=f"built-in ({', '.join(MODELS)}) or a factory returning a torch.nn.Module: "
                        "package.module:factory, path/to/file.py:factory, torchvision:NAME (default mlp)")
    p.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model factory (repeatable; int/float/true/false/none/str)")
    p.add_argument("--input-shape", metavar="CxHxW",
                   help="one float sample's shape, e.g. 3x32x32 or 512 (with --classes K); "
                        "for token models give --vocab and --seq-len instead")
    p.add_argument("--steps", type=int_min(1), default=20, help="optimizer steps (default 20)")
    p.add_argument("--warmup", type=int_min(0), default=2,
                   help="first steps left out of the timing (default 2; at least one step is timed)")
    p.add_argument("--batch", type=int_min(1), default=32,
                   help="samples per rank per step; with --scaling strong the global batch (default 32)")
    p.add_argument("--data", metavar="FILE.h5", help="train on this HDF5 file (x, y) instead of synthetic data")
    p.add_argument("--x-name", default="x", metavar="NAME",
                   help="--data: the features dataset (a path such as train/images works; default x)")
    p.add_argument("--y-name", default="y", metavar="NAME", help="--data: the labels dataset (default y)")
    p.add_argument("--scaling", choices=SCALINGS, default=None,
                   help="strong: --batch is global, split over ranks; weak/none: --batch per rank "
                        "(default $HPC_SCALING or none)")
    p.add_argument("--json", metavar="FILE", help="append the run's `train` record to FILE")
    g = p.add_argument_group("gradient sync")
    g.add_argument("--bucket-mb", type=float_pos, default=25.0, help="fusion bucket size in MiB (default 25)")
    g.add_argument("--fp16-compress", action="store_true", help="send gradients as float16")
    g.add_argument("--ddp-find-unused", action="store_true",
                   help="ddp: find_unused_parameters=True, for models with parameters that get no gradient "
                        "(other schemes need nothing)")
    g.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                   help="own sync: reduce buckets during backward (on) or after it (off); auto = on "
                        "when each rank has a spare core for the communication thread or uses a GPU")
    g.add_argument("--no-overlap", dest="overlap", action="store_const", const="off",
                   help="same as --overlap off")
    g.add_argument("--host-staging", action="store_true",
                   help="own sync: copy buckets through separate host buffers (always on with cuda)")
    g.add_argument("--servers", type=int_min(0), default=None,
                   help="parameter-server ranks for ps-async (default 1) or ps (default 0 = sharded)")
    g.add_argument("--staleness", type=int_min(0), default=2,
                   help="ps-async: how many steps a worker may run ahead of the slowest (default 2)")
    o = p.add_argument_group("optimisation and model")
    o.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default sgd (no momentum)")
    o.add_argument("--lr", type=float_pos, default=None, help="learning rate (default 0.05 sgd, 1e-3 adam)")
    o.add_argument("--momentum", type=float_min(0), default=0.0, help="SGD momentum (default 0)")
    o.add_argument("--seed", type=int_min(0), default=0, help="model init and data seed (default 0)")
    o.add_argument("--width", type=int_min(1), default=None,
                   help="mlp hidden size / cnn channels / transformer d_model (default 256/16/64)")
    o.add_argument("--depth", type=int_min(0), default=None, help="hidden layers / conv blocks / layers (default 2)")
    o.add_argument("--features", type=int_min(1), default=None, help="mlp input features (default 64)")
    o.add_argument("--classes", type=int_min(2), default=None,
                   help="classes (default 10, or the data file's)")
    o.add_argument("--image", type=int_min(1), default=None, help="cnn/resnet image side (default 16, 3 channels)")
    o.add_argument("--vocab", type=int_min(2), default=None,
                   help="token vocabulary (default 64, or the data file's)")
    o.add_argument("--seq-len", type=int_min(1), default=None,
                   help="tokens per sample (default 32, or the data file's)")
    o.add_argument("--heads", type=int_min(1), default=None, help="transformer heads (default 4)")
    r = p.add_argument_group("run")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    r.add_argument("--threads", type=int_min(1), default=None,
                   help="torch threads per rank (default: cores / ranks on the node)")
    r.add_argument("--per-step", action="store_true", help="also print one row per step")
    r.add_argument("--step-timeout", type=float_pos, default=300.0, metavar="S",
                   help="end the job when a step hangs (a stopped or stuck rank) for max(S, 50 × the "
                        "median step) seconds (default 300)")
    r.add_argument("--save-params", metavar="FILE.npy", help="save the final flat float32 parameters (np.save; written by the first rank holding them)")
    add_np_argument(p, default_timeout=3600)
    p.set_defaults(func=_run, precheck=lambda a, here=True: train_plan.precheck(_config(a), here))


def _run(args: argparse.Namespace) -> int:
    from hpc.workloads import train

    return train.run(_config(args))


def _config(args: argparse.Namespace) -> train_plan.TrainConfig:
    auto = args.reps == "auto"
    if not auto and (args.max_reps is not None or args.max_time is not None):
        from hpc.errors import HpcError

        raise HpcError("--max-reps and --max-time bound --reps auto; give --reps auto too")
    return options(train_plan.TrainConfig, args, model_args=tuple(args.model_args or ()),
                   reps=train_plan.MIN_AUTO_REPS if auto else args.reps, reps_auto=auto)
