"""Does measuring memory slow the timed steps? `hpc train`'s steps with the memory probe and with its
per-step calls made no-ops, interleaved, on the same ranks (run on a quiet machine):

    .venv/bin/mpirun -n 2 --allow-run-as-root .venv/bin/python results/memory/overhead.py --reps 10

Prints, per scheme, the median step time of each variant over the repetitions and their ratio (the
issue's bound: measuring may add at most 2%). The probe's work (counting tensors, resetting the
peak-RSS mark) happens between steps, outside the timed region, and mostly in a warm-up step.
"""

from __future__ import annotations

import argparse
import statistics

from hpc.workloads import memory, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--sync", default="ring,ddp,deepspeed-zero3")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    on = (memory.Probe.before_step, memory.Probe.after_step)
    times: dict[tuple[str, bool], list[float]] = {}
    for sync in args.sync.split(","):  # untimed: first runs pay for imports, process groups, thread pools
        train.run_one(train.TrainConfig(sync=sync, model="mlp", width=args.width, depth=args.depth,
                                        optimizer="adam", batch=16, steps=3, warmup=2), brief=True)
    for rep in range(args.reps):
        for sync in args.sync.split(","):
            for measured in ((True, False) if rep % 2 == 0 else (False, True)):  # alternate the order
                memory.Probe.before_step, memory.Probe.after_step = on if measured else (
                    lambda self, s: None, lambda self, s: None)
                tc = train.TrainConfig(sync=sync, model="mlp", width=args.width, depth=args.depth,
                                       optimizer="adam", batch=16, steps=args.steps, warmup=2)
                rec = train.run_one(tc, brief=True)
                if rec is not None:
                    times.setdefault((sync, measured), []).append(rec["time_s"])
    memory.Probe.before_step, memory.Probe.after_step = on
    for sync in args.sync.split(","):
        if (sync, True) in times:
            a, b = statistics.median(times[(sync, True)]), statistics.median(times[(sync, False)])
            print(f"{sync:16} step {a * 1e3:8.2f} ms measured, {b * 1e3:8.2f} ms not: ×{a / b:.3f}")


if __name__ == "__main__":
    main()
