"""How far to trust `hpc predict`: programs with known cost laws, trained on N ≤ 8, checked at N = 12–32.

  python tests/bench_predict.py sweep --out results/predict       # real sweeps of the sleep program
  python tests/bench_predict.py table --data results/predict      # ours vs Extra-P on those sweeps
  python tests/bench_predict.py synth --noise 0.01 --seeds 20     # the same laws, simulated many times

Each case is tests/programs/law_program.py with one law: swept with `hpc sweep strong|weak --np
1,2,3,4,6,8 --reps 5` (training) and `--np 12,16,24,32 --reps 3` (held out). `table` runs `hpc predict
TRAIN --check HELDOUT --json` and Extra-P 4.2.5 (its own venv, EXTRAP_PYTHON, default
/work/extrap-venv/bin/python; skipped when absent) on the same data, and prints a markdown table.
Cases marked * are outside the model family: the tool should refuse or flag them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRAM = REPO / "tests" / "programs" / "law_program.py"
TRAIN_NP, HELD_NP = "1,2,3,4,6,8", "12,16,24,32"
NOISE = 0.01

# name: (scaling, law_program arguments, what it is)
CASES: dict[str, tuple[str, list[str], str]] = {
    "amdahl": ("strong", [], "a + b/N (Amdahl, P = 0.95)"),
    "log": ("strong", ["--log", "0.04"], "a + b/N + c·log2 N (tree collective)"),
    "contention": ("strong", ["--lin", "0.04"], "a + b/N + c·N (optimum N ≈ 7)"),
    "nlogn": ("strong", ["--nlogn", "0.01"], "a + b/N + c·N·log2 N"),
    "quad": ("strong", ["--quad", "0.004"], "a + b/N + c·N² (all pairs over one link)"),
    "ring": ("strong", ["--ring", "0.3"], "a + b/N + c·(N−1)/N (ring β term)"),
    "sqrt*": ("strong", ["--sqrt", "0.1"], "a + b/N + c·√N (not in the family)"),
    "pow0.9*": ("strong", ["--a", "0.04", "--pow", "0.9"], "a + b/N^0.9 (imperfect parallel part; not in the family)"),
    "noisy*": ("strong", ["--noise", "0.3"], "a + b/N with 30% run-to-run noise"),
    "weak-log": ("weak", ["--b", "1", "--log", "0.05"], "weak: a + b + c·log2 N"),
    "weak-gustafson": ("weak", ["--a", "0", "--b", "1", "--gustafson", "0.97"], "weak: Gustafson P = 0.97"),
    "weak-lin": ("weak", ["--b", "1", "--lin", "0.02"], "weak: a + b + c·N"),
}


def _dirs(root: Path, case: str) -> tuple[Path, Path]:
    safe = case.replace("*", "")
    return root / safe / "train", root / safe / "heldout"


def sweep(root: Path, only: list[str]) -> None:
    """Run the missing sweeps (resumable: hpc sweep skips finished points)."""
    hpc = str(Path(sys.executable).parent / "hpc")
    for case, (scaling, extra, _) in CASES.items():
        if only and case not in only:
            continue
        train, held = _dirs(root, case)
        for out, nps, reps in ((train, TRAIN_NP, 5), (held, HELD_NP, 3)):
            args = ["--noise", str(NOISE), *extra] if "--noise" not in extra else extra
            cmd = [hpc, "sweep", scaling, "--np", nps, "--reps", str(reps), "--out", str(out),
                   "run", "--metric", r"time=(\S+)", "--", sys.executable, str(PROGRAM.relative_to(REPO)),
                   *args]
            print("+", " ".join(cmd), flush=True)
            # 32 sleeping ranks on 2 cores are faithful (they sleep): let the sweep oversubscribe
            subprocess.run(cmd, cwd=REPO, check=True, timeout=3600, env=dict(os.environ, HPC_OVERSUBSCRIBE="1"))


def ours(train: Path, held: Path) -> dict:
    hpc = str(Path(sys.executable).parent / "hpc")
    out = subprocess.run([hpc, "predict", str(train), "--check", str(held), "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def _points(path: Path) -> tuple[list[int], list[float]]:
    sys.path.insert(0, str(REPO))
    from hpc.analysis.curves import curves_from_path

    curves, _ = curves_from_path(path)
    return [int(v) for v in curves[0].n], curves[0].t


EXTRAP_SCRIPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from extrap.fileio.file_reader.text_file_reader import TextFileReader
from extrap.modelers.model_generator import ModelGenerator
text, asked, options = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
exp = TextFileReader().read_experiment(text)
mg = ModelGenerator(exp, modeler=options.pop("modeler", "default"))
for k, v in options.items():
    setattr(mg.modeler, k, v)
mg.model_all()
model = next(iter(mg.models.values()))
h = getattr(model, "hypothesis", None)
if h is None or not hasattr(h, "function"):  # a segmented model: beyond the data, its last segment
    segs = getattr(model, "segment_models", None) or getattr(model, "models", None)
    h = segs[-1].hypothesis
f = h.function
print(json.dumps({"model": str(f), "pred": {str(q): float(f.evaluate(q)) for q in asked}}))
"""

VARIANTS = {"default": {}, "negative exponents": {"allow_negative_exponents": True},
            "segmented": {"modeler": "segmented", "allow_negative_exponents": True}}


def extrap(train: Path, asked: list[int], python: str, options: dict) -> dict | None:
    """Extra-P's prediction at `asked` from the training sweep (None when Extra-P is not installed)."""
    if not Path(python).exists():
        return None
    n, t = _points(train)
    by: dict[int, list[float]] = {}
    for a, b in zip(n, t):
        by.setdefault(a, []).append(b)
    lines = ["PARAMETER p", "POINTS " + " ".join(f"( {k} )" for k in sorted(by)), "REGION r",
             "METRIC time"] + ["DATA " + " ".join(f"{v:.9g}" for v in by[k]) for k in sorted(by)]
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    out = subprocess.run([python, "-c", EXTRAP_SCRIPT, f.name, json.dumps(asked), json.dumps(options)],
                         capture_output=True, text=True, timeout=600)
    os.unlink(f.name)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(root: Path, python: str) -> str:
    """Markdown: per case our MAPE, coverage, refused/flagged, model; Extra-P's MAPE per modeler."""
    names = list(VARIANTS)
    rows = ["| case | law | our MAPE (all / unflagged) | intervals covering (median / runs) | refused | "
            "flagged | our model | Extra-P MAPE (" + " / ".join(names) + ") | Extra-P model (negative "
            "exponents) |", "|---|---|---|---|---|---|---|---|---|"]
    from hpc.analysis.forecasts import _serious

    tot: dict[str, list] = {"err": [], "clean": [], "caught": [], "cov": [], "runs": [],
                            **{k: [] for k in names}}
    pct = lambda v: "—" if v is None else f"{v:.1f}%"  # noqa: E731
    for case, (_, _, what) in CASES.items():
        train, held = _dirs(root, case)
        if not (train.exists() and held.exists()):
            continue
        res = ours(train, held)
        s, rs = res["summary"], res["rows"]
        meas = {r["np"]: r["measured_s"] for r in rs}
        asked = sorted(meas)
        xs = {k: extrap(train, asked, python, dict(v)) for k, v in VARIANTS.items()}

        def xmape(x):
            if not x or "pred" not in x:
                return None
            return sum(abs(x["pred"][str(q)] / meas[q] - 1) for q in asked) / len(asked) * 100

        xm = {k: xmape(x) for k, x in xs.items()}
        models = sorted({r["model"] for r in rs if r["model"]})
        if "*" in case:  # outside the family: each held-out N should be refused or flagged
            tot["caught"] += [r["time_s"] is None or _serious(r["flags"]) for r in rs]
        else:
            tot["err"] += [abs(r["error_pct"]) for r in rs if r["error_pct"] is not None]
            tot["clean"] += [abs(r["error_pct"]) for r in rs
                             if r["error_pct"] is not None and not _serious(r["flags"])]
            for k, v in xm.items():
                tot[k] += [] if v is None else [v]
        tot["cov"] += [r["covered"] for r in rs if r["covered"] is not None]
        tot["runs"] += [r["runs_covered"] for r in rs if r["runs_covered"] is not None]
        xmodel = (xs.get("negative exponents") or {}).get("model") or \
            (xs.get("negative exponents") or {}).get("error", "not run")
        xmodel = re.sub(r"-?\d+\.\d{4,}", lambda m: f"{float(m.group()):.4g}", xmodel).replace("+ -", "− ")
        rows.append(f"| {case} | {what} | {pct(s['mape_pct'])} / {pct(s['mape_unflagged_pct'])} | "
                    f"{pct(None if s['coverage'] is None else 100 * s['coverage'])} / "
                    f"{pct(None if s['runs_coverage'] is None else 100 * s['runs_coverage'])} | "
                    f"{s['refused']}/{s['points']} | {s['flagged']}/{s['points']} | {', '.join(models) or '—'} | "
                    + " / ".join(pct(xm[k]) for k in names) + f" | `{xmodel}` |")
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    rows.append(f"\nIn-family cases: our MAPE {mean(tot['err']):.1f}% over every predicted point "
                f"({mean(tot['clean']):.1f}% over the {len(tot['clean'])} unflagged ones); Extra-P "
                + ", ".join(f"{mean(tot[k]):.1f}% ({k})" for k in names) + ". All cases: "
                f"{100 * mean(tot['cov']):.0f}% of intervals cover the held-out median, "
                f"{100 * mean(tot['runs']):.0f}% of single runs fall inside. Cases outside the family "
                f"(*): {sum(tot['caught'])} of {len(tot['caught'])} held-out points refused or flagged.")
    return "\n".join(rows)


def synth(noise: float, seeds: int) -> str:
    """The same laws simulated `seeds` times (multiplicative noise), checked at 12–32."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(PROGRAM.parent))
    from law_program import law_time

    from hpc.analysis.forecasts import summarize
    from hpc.analysis.predict import forecast

    out = ["| case | MAPE all | MAPE unflagged | intervals covering (median / runs) | refused | flagged |",
           "|---|---|---|---|---|---|"]
    for case, (scaling, extra, _) in CASES.items():
        kw: dict = {"a": 0.1, "b": 2.0}
        args = dict(zip(extra[::2], extra[1::2]))
        nz = float(args.pop("--noise", noise))
        for k, v in args.items():
            kw[{"--pow": "pow_"}.get(k, k[2:])] = float(v)
        rows = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            n = np.repeat([1, 2, 3, 4, 6, 8], 5)
            t = np.array([law_time(int(v), weak=scaling == "weak", **kw) for v in n])
            t *= np.exp(nz * rng.standard_normal(n.size))
            fc = forecast(n, t, scaling)
            for q in (12, 16, 24, 32):
                runs = law_time(q, weak=scaling == "weak", **kw) * np.exp(nz * rng.standard_normal(3))
                row = fc.row(q)
                med = float(np.median(runs))
                row.update(measured_s=med, runs=3, error_pct=None, covered=None, runs_covered=None)
                if row["time_s"] is not None:
                    lo, hi = row["pi95"]
                    row.update(error_pct=100 * (row["time_s"] / med - 1), covered=lo <= med <= hi,
                               runs_covered=float(np.mean((runs >= lo) & (runs <= hi))))
                rows.append(row)
        s = summarize(rows)
        pct = lambda v: "—" if v is None else f"{v:.1f}%"  # noqa: E731
        out.append(f"| {case} | {pct(s['mape_pct'])} | {pct(s['mape_unflagged_pct'])} | "
                   f"{pct(None if s['coverage'] is None else 100 * s['coverage'])} / "
                   f"{pct(None if s['runs_coverage'] is None else 100 * s['runs_coverage'])} | "
                   f"{s['refused']}/{s['points']} | {s['flagged']}/{s['points']} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--out", type=Path, default=REPO / "results" / "predict")
    s.add_argument("--case", action="append", default=[])
    t = sub.add_parser("table")
    t.add_argument("--data", type=Path, default=REPO / "results" / "predict")
    t.add_argument("--extrap-python", default=os.environ.get("EXTRAP_PYTHON", "/work/extrap-venv/bin/python"))
    y = sub.add_parser("synth")
    y.add_argument("--noise", type=float, default=NOISE)
    y.add_argument("--seeds", type=int, default=20)
    a = p.parse_args()
    if a.cmd == "sweep":
        sweep(a.out, a.case)
    elif a.cmd == "table":
        print(table(a.data, a.extrap_python))
    else:
        print(synth(a.noise, a.seeds))


if __name__ == "__main__":
    main()
