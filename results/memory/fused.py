"""The update kernel's share of speed and memory: `hpc train`'s steps with torch's fused Adam (what
every scheme uses) and with torch's default CPU update (a for-loop over the parameters), interleaved
on the same ranks (run on a quiet machine):

    .venv/bin/mpirun -n 2 --allow-run-as-root .venv/bin/python results/memory/fused.py --reps 5

Prints, per scheme, the median step time and peak RSS per rank of each kernel and their ratios.
"""

from __future__ import annotations

import argparse
import statistics

from hpc.workloads import train
from hpc.workloads.sync import base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sync", default="ring,deepspeed-zero1")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=9)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    fused = base.fused_update
    got: dict[tuple[str, bool], list[tuple[float, int]]] = {}
    for sync in args.sync.split(","):  # untimed: first runs pay for imports, process groups, thread pools
        train.run_one(train.TrainConfig(sync=sync, model="mlp", width=args.width, depth=args.depth,
                                        optimizer="adam", batch=16, steps=3, warmup=2), brief=True)
    for rep in range(args.reps):
        for sync in args.sync.split(","):
            for on in ((True, False) if rep % 2 == 0 else (False, True)):  # alternate the order
                base.fused_update = fused if on else (lambda params: False)
                tc = train.TrainConfig(sync=sync, model="mlp", width=args.width, depth=args.depth,
                                       optimizer="adam", batch=16, steps=args.steps, warmup=2)
                rec = train.run_one(tc, brief=True)
                if rec is not None:
                    got.setdefault((sync, on), []).append((rec["time_s"], rec["memory"]["peak_rss_bytes"]))
    base.fused_update = fused
    for sync in args.sync.split(","):
        if (sync, True) in got:
            (ta, ma), (tb, mb) = ([statistics.median(x) for x in zip(*got[(sync, on)])] for on in (True, False))
            spread = [round(b[0] / a[0], 2) for a, b in zip(got[(sync, True)], got[(sync, False)])]
            print(f"{sync:16} step {ta * 1e3:7.1f} ms fused, {tb * 1e3:7.1f} ms for-loop: for-loop ×{tb / ta:.2f} "
                  f"(pairs {min(spread)}–{max(spread)}); peak RSS {ma / 2**20:.0f} vs {mb / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
