"""`hpc demo`: the whole pipeline on this machine from embedded defaults, in a few minutes.

It is nothing but a sequence of ordinary `hpc` commands, each printed before it runs, so every
step can be re-run or changed by hand: strong and weak sweeps of the collective benchmark and of a
short training run, every sync scheme on the same model and data, fits, comparisons, plots, a report.
Running it again with the same --out resumes (finished sweep points are kept).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hpc.cli.args import positive_int

# The schemes that need nothing but this package; the others join when their package is installed.
OWN_SCHEMES = ("ring", "mpi", "ps", "auto", "ps-async", "ddp")
SCHEME_REPS = 3  # the fewest repetitions a verdict is given for (hpc.analysis.compare.MIN_REPS)
OPTIONAL_SCHEMES = {"horovod": "horovod", "deepspeed-zero1": "deepspeed",
                    "deepspeed-zero2": "deepspeed", "deepspeed-zero3": "deepspeed"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on this machine (a few minutes)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", default="hpc-demo", metavar="DIR", help="where everything goes (default hpc-demo)")
    p.add_argument("--np", default="1,2,4", metavar="N,N,...", help="rank counts of the sweeps (default 1,2,4)")
    p.add_argument("--reps", type=positive_int, default=2, help="repetitions per sweep point (default 2)")
    p.add_argument("--sync-np", type=positive_int, default=2, help="ranks for the sync-scheme comparison (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer points and schemes (for a smoke test)")
    p.set_defaults(func=run)


def steps(out: Path, nps: str, reps: int, sync_np: int, quick: bool) -> list[tuple[str, list[str]]]:
    """(what, hpc argv) for every step of the demo, in order."""
    sweep = ["--np", nps, "--reps", str(reps)]
    model = ["--model", "mlp", "--width", "512", "--depth", "2", "--steps", "12" if quick else "20"]
    plan: list[tuple[str, list[str]]] = [
        ("allreduce bandwidth vs ranks (strong: the same message on every rank count)",
         ["sweep", "strong", *sweep, "--out", str(out / "collective"), "bench", "collective", "--algo",
          "ring,auto,ps,mpi", "--sizes", "64KB:4MB:4", "--batches", "3"]),
        ("training, strong scaling (global batch 256 split over the ranks)",
         ["sweep", "strong", *sweep, "--out", str(out / "train-strong"), "train", "--sync", "ring",
          *model, "--batch", "256"]),
        ("training, weak scaling (64 samples per rank)",
         ["sweep", "weak", *sweep, "--out", str(out / "train-weak"), "train", "--sync", "ring",
          *model, "--batch", "64"]),
    ]
    schemes = list(OWN_SCHEMES[:3] if quick else OWN_SCHEMES)
    schemes += [s for s, pkg in OPTIONAL_SCHEMES.items()
                if not quick and importlib.util.find_spec(pkg) is not None]
    for name in ("collective", "train-strong", "train-weak"):
        plan.append((f"fit {name}", ["fit", str(out / name)]))
        plan.append((f"plot {name}", ["plot", str(out / name), "-o", str(out / f"{name}.png")]))
    plan.append(("collectives against native MPI", ["compare", str(out / "collective"), "--baseline", "mpi"]))
    plan.append((f"every sync scheme on {sync_np} ranks, {SCHEME_REPS} runs each, interleaved",
                 ["train", "--sync", ",".join(schemes), "--reps", str(SCHEME_REPS), *model, "--batch", "64",
                  "--np", str(sync_np), "--json", str(out / "sync" / "schemes.jsonl")]))
    plan.append(("chart: which scheme is fastest", ["plot", str(out / "sync"), "-o", str(out / "schemes.png")]))
    plan.append(("the report", ["report", str(out), "-o", str(out / "REPORT.md")]))
    plan.append(("the answer: which scheme is fastest here", ["compare", str(out / "sync")]))
    return plan


def _outputs(argv: list[str]) -> list[Path]:
    """The files or sweep directory a step writes (what the closing lines may point to)."""
    if argv[0] == "sweep":
        return [Path(argv[argv.index("--out") + 1])]
    for flag in ("-o", "--json"):
        if flag in argv:
            return [Path(argv[argv.index(flag) + 1])]
    return []


def _sweep_failures(out: Path) -> int:
    """Points of a sweep directory whose record is not ok (what a resumed sweep would retry)."""
    from hpc import records

    try:
        recs = records.load(out / "points")
    except Exception:
        return 0
    return sum(1 for r in recs if r.get("status", "ok") != "ok")


def run(args: argparse.Namespace) -> int:
    """Run every step; a step that fails is said, and what it would have written is never claimed.

    A sweep whose points failed (a busy machine can time a point out) is resumed once, which retries
    just those points; points still failing after that stay in the records and the report's failure
    table, and the steps after it work on what was measured. The demo fails only when a step did not
    run to the end at all."""
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    failed: list[str] = []
    partial: list[str] = []
    plan = steps(out, args.np, args.reps, args.sync_np, args.quick)
    written: list[Path] = []
    for i, (what, argv) in enumerate(plan, 1):
        con.rule(f"[bold]{i}/{len(plan)} {what}")
        con.print(f"$ hpc {shlex.join(argv)}")
        if (Path(argv[-1]).suffix == ".jsonl" and Path(argv[-1]).exists()):
            con.print("  (already measured: kept)")
            written += _outputs(argv)
            continue
        code = subprocess.run([sys.executable, "-m", "hpc", *argv]).returncode
        if code != 0 and argv[0] == "sweep" and _sweep_failures(_outputs(argv)[0]):
            con.print("  some points failed: running the same sweep again retries just those")
            code = subprocess.run([sys.executable, "-m", "hpc", *argv]).returncode
            if code != 0 and _sweep_failures(_outputs(argv)[0]):
                partial.append(f"{what} ({_sweep_failures(_outputs(argv)[0])} point(s) failed; see the report)")
                code = 0
        if code != 0:
            failed.append(what)
        else:
            written += _outputs(argv)
    con.rule("[bold]done")
    con.print(f"{len(plan) - len(failed)}/{len(plan)} steps ok in {time.monotonic() - start:.0f} s")
    for what in partial:
        con.print(f"[yellow]partial[/]: {what}")
    for what in failed:
        con.print(f"[red]failed[/]: {what}")
    report = out / "REPORT.md"
    plots = [p for p in written if p.suffix == ".png" and p.exists()]
    plots += sorted(p for p in out.glob("report-*.png") if report in written)
    con.print(f"report:  {report if report in written and report.exists() else 'not written (its step failed)'}")
    con.print(f"plots:   {', '.join(map(str, plots)) or 'none written'}")
    con.print(f"records: {out}/*/points/*.jsonl and {out}/sync/*.jsonl")
    return 1 if failed else 0
