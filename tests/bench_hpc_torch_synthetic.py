"""Benchmark (not a test): Horovod's own examples/pytorch/pytorch_synthetic_benchmark.py, interleaved runs.

    # hpc.torch ÷ Horovod (the example as Horovod ships it vs. a copy with only the import changed)
    python tests/bench_hpc_torch_synthetic.py --script HOROVOD/examples/pytorch/pytorch_synthetic_benchmark.py
    # what DistributedOptimizer's per-step agreement costs (hpc.torch with vs. without it), on the
    # ResNet-18 of results/sync-resnet18-np2 (32x32 images, 8 per rank)
    python tests/bench_hpc_torch_synthetic.py --script ... --compare step-check --image 32

The example is Horovod's code and not part of this repository: --script, else
$HPC_HOROVOD_EXAMPLES/pytorch/pytorch_synthetic_benchmark.py. torchvision does not import with this
CPU torch, so tests/scripts/standin (torchvision.models = hpc's copies of its ResNets) goes on the
path. Runs alternate A, B, A, B, ... (this machine drifts by minutes); prints every run's
"Total img/sec", the medians and the ratio. Arguments after `--` go to the example (default: ResNet-18,
batch 8, 5 warm-up batches, 5 iterations of 5 batches).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import mpirun  # noqa: E402

STANDIN = REPO / "tests" / "scripts" / "standin"
DEFAULT_ARGS = ["--model", "resnet18", "--batch-size", "8", "--num-warmup-batches", "5",
                "--num-batches-per-iter", "5", "--num-iters", "5"]
IMPORT = "import horovod.torch as hvd\n"


def img_s(script: Path, np_: int, args: list[str], env: dict[str, str]) -> float:
    proc = mpirun(np_, sys.executable, str(script), *args, timeout=1800,
                  env={"PYTHONPATH": f"{STANDIN}:{REPO}", **env})
    found = re.findall(r"Total img/sec on \d+ \w+\(s\): ([0-9.]+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(found[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--script", default=os.path.join(os.environ.get("HPC_HOROVOD_EXAMPLES", ""), "pytorch",
                                                     "pytorch_synthetic_benchmark.py"))
    ap.add_argument("--compare", choices=("horovod", "step-check"), default="horovod")
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--collective", default="auto", help="HPC_COLLECTIVE for the hpc.torch runs")
    ap.add_argument("--image", type=int, default=224,
                    help="image side for both arms (the example hard-codes 224; changes both copies alike)")
    ap.add_argument("example_args", nargs="*", help="after --: arguments for the example")
    args = ap.parse_args()
    source = Path(args.script)
    if not source.is_file() or source.read_text().count(IMPORT) != 1:
        raise SystemExit(f"{source}: not Horovod's pytorch_synthetic_benchmark.py (set --script)")
    example_args = args.example_args or DEFAULT_ARGS
    with tempfile.TemporaryDirectory() as tmp:
        text = source.read_text()
        if args.image != 224:
            if text.count("3, 224, 224") != 1:
                raise SystemExit(f"{source}: cannot find the example's image size to change")
            text = text.replace("3, 224, 224", f"3, {args.image}, {args.image}")
            source = Path(tmp) / "horovod" / source.name
            source.parent.mkdir()
            source.write_text(text)
        hpc_script = Path(tmp) / source.name
        hpc_script.write_text(text.replace(IMPORT, "import hpc.torch as hvd\n"))
        hpc_env = {"HPC_COLLECTIVE": args.collective}
        if args.compare == "horovod":
            arms = [("hpc.torch", hpc_script, hpc_env), ("horovod", source, {})]
        else:
            arms = [("check on", hpc_script, {**hpc_env, "HPC_TORCH_STEP_CHECK": "1"}),
                    ("check off", hpc_script, {**hpc_env, "HPC_TORCH_STEP_CHECK": "0"})]
        runs: dict[str, list[float]] = {name: [] for name, _, _ in arms}
        for rep in range(args.reps):
            for name, script, env in (arms if rep % 2 == 0 else arms[::-1]):
                runs[name].append(img_s(script, args.np, example_args, env))
                print(f"rep {rep} {name:10s} {runs[name][-1]:8.2f} img/s", flush=True)
    (a, _, _), (b, _, _) = arms
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median img/s: {a} {med[a]:.2f}, {b} {med[b]:.2f}; ratio {a}/{b} = {med[a] / med[b]:.3f} "
          f"({args.np} ranks, {args.reps} interleaved reps, {' '.join(example_args)})")


if __name__ == "__main__":
    main()
