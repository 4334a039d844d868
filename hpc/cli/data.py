"""`hpc data make FILE.h5 ...` and `hpc data inspect FILE.h5`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from hpc.cli.args import int_min, positive_int
from hpc.data.make import (COMPRESSIONS, DEFAULT_SAMPLES, KINDS, human_bytes, import_npy, inspect_file,
                           make_synthetic, plan_shards, print_inspection)
from hpc.errors import HpcError


def register(sub: Any) -> None:
    """Add `data make` and `data inspect` to the top-level subparsers."""
    parser = sub.add_parser("data", help="make and inspect HDF5 datasets",
                            description="Make and inspect HDF5 datasets for `hpc train --data`.")
    dsub = parser.add_subparsers(dest="data_command", metavar="{make,inspect}", required=True)

    make = dsub.add_parser("make", help="write a synthetic dataset (or import .npy arrays)",
                           description="Write a synthetic, learnable dataset (x, y) to an HDF5 "
                                       "file, or import .npy arrays with --from-npy.")
    make.add_argument("file", metavar="FILE.h5")
    make.add_argument("--samples", type=positive_int, metavar="N",
                      help=f"rows to write (default {DEFAULT_SAMPLES}; with --from-npy: all)")
    make.add_argument("--kind", choices=KINDS, help="tabular (default), image or tokens")
    make.add_argument("--shape", metavar="DIMS",
                      help="row shape: features (64), CxHxW (3x32x32) or sequence length (128)")
    make.add_argument("--classes", type=int_min(2), metavar="K",
                      help="classes (default 10); vocabulary size for tokens (default 256)")
    make.add_argument("--seed", type=int_min(0), default=0)
    make.add_argument("--chunk", type=positive_int, metavar="ROWS",
                      help="rows per HDF5 chunk (default: about 1 MiB of x)")
    make.add_argument("--compression", choices=COMPRESSIONS, default="none")
    make.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    make.add_argument("--from-npy", metavar="X.npy", help="import this array as x")
    make.add_argument("--labels", metavar="Y.npy", help="with --from-npy: import this array as y")
    make.add_argument("--x-name", default="x", help="name of the features dataset (default x)")
    make.add_argument("--y-name", default="y", help="name of the labels dataset (default y)")
    make.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    make.set_defaults(func=cmd_make)

    inspect = dsub.add_parser("inspect", help="show datasets, shapes, chunking and attributes",
                              description="Show the datasets, shapes, dtypes, chunking, "
                                          "compression, size on disk and attributes of a file.")
    inspect.add_argument("file", metavar="FILE.h5")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    shards = inspect.add_argument_group("shard plan (check the file can feed P ranks)")
    shards.add_argument("--ranks", type=positive_int, metavar="P",
                        help="also show the rows each of P ranks would read")
    shards.add_argument("--mode", choices=("strong", "weak"), default="strong")
    shards.add_argument("--samples-per-rank", type=positive_int, metavar="S", help="rows per rank (weak)")
    shards.add_argument("--batch-size", type=positive_int, default=32, metavar="B")
    shards.add_argument("--drop-last", action="store_true")
    shards.add_argument("--wrap", action="store_true", help="weak: reuse rows when too few")
    shards.add_argument("--x", default="x", metavar="NAME", help="features dataset (default x)")
    shards.add_argument("--y", default="y", metavar="NAME",
                        help="labels dataset (default y; '' for none)")
    inspect.set_defaults(func=cmd_inspect)


def cmd_make(args: argparse.Namespace) -> int:
    """`hpc data make`: synthesise or import, then print one summary line."""
    command = shlex.join(["hpc", *sys.argv[1:]])
    progress = False if args.no_progress else None
    common = dict(chunk=args.chunk, compression=args.compression, force=args.force,
                  command=command, progress=progress, x_name=args.x_name, y_name=args.y_name)
    if args.from_npy:
        used = [flag for flag, value in (("--kind", args.kind), ("--shape", args.shape),
                                         ("--classes", args.classes)) if value is not None]
        if used:
            raise HpcError(f"{', '.join(used)} cannot be combined with --from-npy")
        info = import_npy(args.file, args.from_npy, args.labels, samples=args.samples, **common)
    else:
        if args.labels:
            raise HpcError("--labels needs --from-npy")
        info = make_synthetic(args.file, kind=args.kind or "tabular", samples=args.samples,
                              shape=args.shape, classes=args.classes, seed=args.seed, **common)
    parts = [f"{name} {d['dtype']} {list(d['shape'])}" for name, d in info["datasets"].items()]
    print(f"wrote {info['path']}: {info['kind']}, {', '.join(parts)}, "
          f"{human_bytes(info['size_bytes'])} in {info['seconds']:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """`hpc data inspect`: a rich table, or JSON with --json."""
    info = inspect_file(args.file)
    if args.ranks is not None:
        info["shards"] = plan_shards(args.file, args.ranks, args.mode, args.batch_size,
                                     args.samples_per_rank, args.drop_last, args.wrap,
                                     args.x, args.y or None)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_inspection(info)
    return 0
