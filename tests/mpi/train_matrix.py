"""MPI side of tests/test_train.py: several `hpc train` runs in one MPI job (imports paid once).

Run under mpirun: `python -m mpi4py tests/mpi/train_matrix.py OUT_DIR CASES.json`, where CASES.json maps
a case name to the `hpc train` arguments (without --np). Each case runs through the real CLI parser
and `hpc.train.run`, writing OUT_DIR/<name>.jsonl (--json) and OUT_DIR/<name>.npy (--save-params).
Any failure raises, and `python -m mpi4py` ends the whole job.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from hpc.cli.main import build_parser


def main() -> int:
    out, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    parser = build_parser()
    for name, argv in cases.items():
        args = parser.parse_args(["train", *argv, "--json", str(out / f"{name}.jsonl"),
                                  "--save-params", str(out / f"{name}.npy")])
        rc = args.func(args)
        if rc:
            raise SystemExit(f"case {name} returned {rc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
