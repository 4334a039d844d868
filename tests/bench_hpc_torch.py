"""Benchmark (not a test): img/s of the Horovod-style script under hpc.torch vs under real Horovod.

Same conv net (tests/scripts/toy.py), same ranks, runs interleaved (hpc, horovod, hpc, ...) because
this machine drifts by minutes; prints every run, the medians and the ratio hpc.torch / Horovod.

    .venv/bin/python tests/bench_hpc_torch.py [--np 2] [--reps 3] [--collective auto]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import mpirun
from tests.test_hpc_torch import HVD_SCRIPT, SCRIPTS, hpc_copy

WORKLOAD = ["--width", "16", "--image", "32", "--global-batch", "64", "--steps", "18", "--warmup", "3"]


def img_s(script: Path, np_: int, env: dict[str, str]) -> float:
    proc = mpirun(np_, sys.executable, str(script), *WORKLOAD, timeout=300,
                  env={"PYTHONPATH": f"{SCRIPTS}:{REPO}", **env})
    found = re.findall(r"img/s: ([0-9.]+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(found[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--collective", default="auto", help="HPC_COLLECTIVE for the hpc.torch runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hpc_script = hpc_copy(Path(tmp))
        runs: dict[str, list[float]] = {"hpc.torch": [], "horovod": []}
        for rep in range(args.reps):
            for name, script, env in (("hpc.torch", hpc_script, {"HPC_COLLECTIVE": args.collective}),
                                      ("horovod", HVD_SCRIPT, {})):
                runs[name].append(img_s(script, args.np, env))
                print(f"rep {rep} {name:9s} {runs[name][-1]:8.1f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median img/s: hpc.torch ({args.collective}) {med['hpc.torch']:.1f}, horovod {med['horovod']:.1f}; "
          f"ratio hpc.torch/horovod = {med['hpc.torch'] / med['horovod']:.2f} "
          f"({args.np} ranks, {args.reps} interleaved reps, {' '.join(WORKLOAD)})")


if __name__ == "__main__":
    main()
