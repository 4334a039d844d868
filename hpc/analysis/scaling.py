"""Scaling fits of records or a CSV: Amdahl / Gustafson with honest uncertainty, per curve.

Builds on `laws` (the fit itself) and `choice` (model comparison): speedups, Karp–Flatt e(N),
superlinear and fit-quality flags, predictions, and a 95% CI of P from the covariance of the
two-parameter fit (Student-t), optionally also from a bootstrap over repetitions within each N.

    >>> [r.p for r in fit_path("runs/s1")]      # one FitResult per curve
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hpc.analysis.choice import choose_model
from hpc.analysis.groups import GROUP_FIELDS, group_label, group_records, json_safe, load_records
from hpc.analysis.laws import (_DEFAULT_LAW, AMDAHL, GUSTAFSON, POOR_R2, PREDICT_FACTORS, CoreFit, bootstrap_p,
                               fit_core, law_speedup, law_time, normalize_law, poor_fit)
from hpc.errors import HpcError

# --------------------------------------------------------------------------- full analysis

@dataclass
class FitResult:
    """Everything `hpc fit` reports for one group of measurements (JSON-ready via to_dict)."""

    law: str
    scaling: str
    group: dict[str, Any]
    label: str
    p: float
    serial_fraction: float
    ci95: list[float] | None
    ci_method: str
    ci95_bootstrap: list[float] | None
    p_se: float
    p_unconstrained: float
    at_bound: str | None
    t1: float
    t1_ci95: list[float] | None
    r2: float
    smape: float
    ceiling: float | None
    n_obs: int
    n_points: int
    points: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    model_choice: dict[str, Any]
    flags: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict: NaN and ±inf become null."""
        return json_safe(asdict(self))


def validate_points(n, t) -> None:
    """Raise HpcError for input a fit cannot use (one N, missing N=1, non-positive times...)."""
    import numpy as np

    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    if n.size == 0:
        raise HpcError("no measurements to fit")
    if n.shape != t.shape:
        raise HpcError("np and time_s have different lengths")
    if not np.all(np.isfinite(n)) or np.any(n < 1) or np.any(n != np.round(n)):
        raise HpcError("rank counts (np) must be integers ≥ 1")
    if not np.all(np.isfinite(t)):
        raise HpcError("times must be finite numbers")
    if np.any(t <= 0):
        bad = sorted({int(v) for v in n[t <= 0]})
        raise HpcError(f"non-positive time_s at np={bad}: times must be > 0")
    uniq = np.unique(n)
    if len(uniq) < 2:
        raise HpcError(f"only one rank count (np={int(uniq[0])}): a scaling fit needs at least two")
    if 1 not in uniq:
        raise HpcError("T(1) missing: a scaling fit needs measurements at np=1")


def fit_law(n, t, law: str, *, bootstrap: int = 0, seed: int = 0,
            group: dict[str, Any] | None = None, label: str = "",
            predict_factors: Iterable[int] = PREDICT_FACTORS) -> FitResult:
    """Fit `law` to every (N, time) repetition and derive speedups, Karp–Flatt, flags, predictions."""
    import numpy as np

    law = normalize_law(law)
    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    validate_points(n, t)
    order = np.argsort(n, kind="stable")
    n, t = n[order], t[order]
    core = fit_core(n, t, law)
    p = core.p
    uniq = np.unique(n)
    t1_med = float(np.median(t[n == 1]))
    weak = law == GUSTAFSON

    points = []
    for v in uniq:
        reps = t[n == v]
        med = float(np.median(reps))
        s = (v * t1_med / med) if weak else (t1_med / med)
        kf = sf = None
        if v > 1:
            kf = (1.0 / s - 1.0 / v) / (1.0 - 1.0 / v)
            sf = kf if not weak else (v - s) / (v - 1.0)
        points.append({
            "np": int(v), "reps": int(reps.size), "time_median_s": med,
            "time_min_s": float(reps.min()), "time_max_s": float(reps.max()),
            "time_cv": float(reps.std(ddof=1) / reps.mean()) if reps.size > 1 else None,
            "speedup": s, "speedup_fit": float(law_speedup(law, v, p)), "efficiency": s / v,
            "karp_flatt": kf, "serial_fraction_point": sf, "superlinear": bool(s > v * (1 + 1e-9)),
        })

    s_obs = (n * t1_med / t) if weak else (t1_med / t)
    s_fit = law_speedup(law, n, p)
    ss_tot = float(np.sum((s_obs - s_obs.mean()) ** 2))
    r2 = 1.0 - float(np.sum((s_obs - s_fit) ** 2)) / ss_tot if ss_tot > 0 else math.nan
    smape = float(100.0 * np.mean(2.0 * np.abs(s_obs - s_fit) / (np.abs(s_obs) + np.abs(s_fit))))

    nmax = float(uniq.max())
    preds = []
    for f in predict_factors:
        q = nmax * f
        s = float(law_speedup(law, q, p))
        sci = [float(law_speedup(law, q, c)) for c in core.ci95] if core.ci95 else None
        preds.append({"factor": f, "np": int(q), "speedup": s, "speedup_ci95": sci,
                      "efficiency": s / q, "time_s": float(law_time(law, q, core.t1, p))})
    ceiling = (math.inf if p >= 1.0 else 1.0 / (1.0 - p)) if not weak else None

    at_bound = None
    if core.p_unconstrained < 0.0:
        at_bound = "lower"
    elif core.p_unconstrained > 1.0:
        at_bound = "upper"
    boot = bootstrap_p(n, t, law, bootstrap, seed)
    choice = choose_model(n, t, law, [pr["np"] for pr in preds])

    flags = _flags(law, points, core, at_bound, r2, choice)
    return FitResult(
        law=law, scaling="weak" if weak else "strong", group=dict(group or {}), label=label,
        p=p, serial_fraction=1.0 - p, ci95=list(core.ci95) if core.ci95 else None,
        ci_method="t-covariance (log-space least squares, T1 and P free)",
        ci95_bootstrap=list(boot) if boot else None, p_se=core.p_se,
        p_unconstrained=core.p_unconstrained, at_bound=at_bound, t1=core.t1,
        t1_ci95=list(core.t1_ci95) if core.t1_ci95 else None, r2=r2, smape=smape, ceiling=ceiling,
        n_obs=core.n_obs, n_points=len(uniq), points=points,
        predictions=[] if poor_fit(r2) else preds,  # a poor fit predicts nothing
        model_choice=choice, flags=flags)


def _flags(law, points, core: CoreFit, at_bound, r2, choice) -> list[dict[str, str]]:
    """Warnings a reader must see next to the numbers."""
    out = []

    def add(code: str, msg: str) -> None:
        out.append({"code": code, "message": msg})

    if len(points) < 4:
        add("few_points", f"only {len(points)} distinct rank counts: CI and model choice are weak "
                          "(use ≥ 4, e.g. 1,2,4,8)")
    thin = [pt["np"] for pt in points if pt["reps"] < 3]
    if thin:
        add("few_reps", f"fewer than 3 repetitions at np={thin}: use --reps ≥ 3 (5 is better)")
    if core.dof <= 0:
        add("no_dof", "as many parameters as measurements: no confidence interval")
    sup = [f"np={pt['np']} (S={pt['speedup']:.3g})" for pt in points if pt["superlinear"]]
    if sup:
        add("superlinear", "speedup above N at " + ", ".join(sup) +
            " (cache effects or a noisy T(1)); the law cannot follow it")
    if at_bound:
        add("p_at_bound", f"unconstrained fit gives P = {core.p_unconstrained:.4g}, outside [0, 1]; "
                          f"P clipped to {core.p:.4g}" +
            (" (time grows with N: not a scaling regime the law describes)" if at_bound == "lower"
             else ""))
    noisy = [f"np={pt['np']} ({100 * pt['time_cv']:.0f}%)" for pt in points
             if pt["time_cv"] is not None and pt["time_cv"] > 0.10]
    if noisy:
        add("noisy", "repetitions vary by more than 10% (coefficient of variation) at " +
            ", ".join(noisy))
    if math.isfinite(r2) and r2 < POOR_R2:
        add("poor_fit", f"R² = {r2:.3f} < {POOR_R2}: the law describes these speedups poorly")
    if choice.get("best_aicc") and not choice.get("law_supported"):
        add("model", choice["verdict"])
    return out


def fit_records(records: Iterable[dict[str, Any]], law: str | None = None, *, bootstrap: int = 0,
                seed: int = 0, skipped: list[str] | None = None) -> list[FitResult]:
    """Fit every group of ok records; law defaults from scaling (strong→amdahl, weak→gustafson).

    Groups that cannot be fitted are described in `skipped` (when given); if none can, HpcError.
    """
    records = list(records)
    if not records:
        raise HpcError("no records found")
    groups = group_records(records)
    if not groups:
        raise HpcError(f"no ok records among {len(records)} (all failed or timed out)")
    law = normalize_law(law)
    results, reasons = [], []
    for key, recs in groups.items():
        g_law = law or _DEFAULT_LAW.get(key[3])
        label = group_label(key)
        if g_law is None:
            reasons.append(f"{label}: scaling is {key[3]!r}; pass --law amdahl|gustafson")
            continue
        try:
            results.append(fit_law([r["np"] for r in recs], [r["time_s"] for r in recs], g_law,
                                   bootstrap=bootstrap, seed=seed, label=label,
                                   group=dict(zip(GROUP_FIELDS, key))))
        except HpcError as e:
            reasons.append(f"{label}: {e}")
    if skipped is not None:
        skipped.extend(reasons)
    if not results:
        raise HpcError("nothing to fit: " + "; ".join(reasons))
    return results


def load_csv(path: str | Path) -> tuple[list[float], list[float]]:
    """(np, time_s) columns of a CSV with one row per repetition; other columns are ignored.

    Read with the csv module (quoted fields, a UTF-8 byte-order mark, rows with extra fields) and
    checked value by value: a bad cell is one error line naming the row."""
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    if not text.strip():
        raise HpcError(f"{path}: empty file")
    reader = csv.reader(text.splitlines())
    header = [c.strip().lower() for c in next(reader)]
    missing = [c for c in ("np", "time_s") if c not in header]
    if missing:
        raise HpcError(f"{path}: missing column(s) {', '.join(missing)} (need a header np,time_s)")
    i_np, i_t = header.index("np"), header.index("time_s")
    n, t = [], []
    for line, row in enumerate(reader, 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(i_np, i_t):
            raise HpcError(f"{path}:{line}: {len(row)} field(s), expected at least {len(header)}")
        a, b = row[i_np].strip(), row[i_t].strip()
        try:
            nv, tv = float(a), float(b)
        except ValueError:
            raise HpcError(f"{path}:{line}: np and time_s must be numbers, got {a!r}, {b!r}") from None
        if not (math.isfinite(nv) and nv == int(nv) and 1 <= nv <= 1e7):
            raise HpcError(f"{path}:{line}: np must be a whole number of ranks >= 1, got {a!r}")
        if not (math.isfinite(tv) and tv > 0):
            raise HpcError(f"{path}:{line}: non-positive or non-finite time_s {b!r}: times must be > 0")
        if tv >= 1e12:
            raise HpcError(f"{path}:{line}: time_s {b!r} is over 1e12 s: not a measured time")
        n.append(nv)
        t.append(tv)
    if not n:
        raise HpcError(f"{path}: no data rows under the header")
    return n, t


def is_csv(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.suffix.lower() == ".csv":
        return True
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        head = f.readline().strip()
    return bool(head) and not head.startswith("{")


def fit_path(path: str | Path, law: str | None = None, *, bootstrap: int = 0, seed: int = 0,
             skipped: list[str] | None = None) -> list[FitResult]:
    """Fit a CSV (np,time_s; law defaults to amdahl) or a records file/directory."""
    path = Path(path)
    if not path.exists():
        raise HpcError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise HpcError(f"{path}: empty file")
    if is_csv(path):
        n, t = load_csv(path)
        law = normalize_law(law) or AMDAHL
        try:
            return [fit_law(n, t, law, bootstrap=bootstrap, seed=seed, label=path.name,
                            group={"source": str(path)})]
        except HpcError as e:
            raise HpcError(f"{path}: {e}") from None
    return fit_records(load_records(path), law, bootstrap=bootstrap, seed=seed, skipped=skipped)


# --------------------------------------------------------------------------- human output

def _ci(ci: list[float] | None, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else "—"


def summary_table(results: list[FitResult], wide: bool = False):
    """One row per fitted group (`wide`: also 1−P, SMAPE, the Amdahl ceiling and the best model)."""
    from hpc.table import Table, fmt_bytes, fmt_num

    cols = ["kind", "algo/sync", "size/model", "law", "N", "P [95% CI]", "R²",
            f"S @ {PREDICT_FACTORS[1]}×N", "flags"]
    if wide:
        cols[7:7] = ["1−P", "SMAPE %", "ceiling", "best model"]
    tab = Table("Scaling fits: P = parallel fraction, 95% CI from all repetitions", cols)
    for r in results:
        g = r.group
        v = g.get("variant")
        v = fmt_bytes(v) if g.get("kind") == "collective" and isinstance(v, (int, float)) else v
        pr = next((x for x in r.predictions if x["factor"] == PREDICT_FACTORS[1]), None)
        poor = poor_fit(r.r2)
        cells = [g.get("kind", "csv"), g.get("name", r.label), v if v is not None else "",
                 r.law, f"{r.points[0]['np']}–{r.points[-1]['np']}", f"{r.p:.4f} {_ci(r.ci95, 3)}",
                 fmt_num(r.r2, 3),
                 "poor fit" if poor else (f"{pr['speedup']:.3g} @{pr['np']}" if pr else None),
                 " ".join(f["code"] for f in r.flags)]
        if wide:
            cells[7:7] = [f"{r.serial_fraction:.4f}", fmt_num(r.smape, 3),
                          fmt_num(r.ceiling, 3) if r.law == AMDAHL else "none",
                          r.model_choice.get("best_aicc")]
        tab.add(*cells)
    if any(poor_fit(r.r2) for r in results):
        tab.notes.append(f"poor fit: R² < {POOR_R2}, the law does not describe these points; no prediction")
    if any(r.group.get("kind") == "collective" for r in results):
        tab.notes.append("collective records: the α–β cost model is usually the apt fit "
                         "(hpc fit PATH --law alpha-beta)")
    if any(r.flags for r in results):
        tab.notes.append("flags are explained in --json output and with -v")
    return tab


def detail_tables(r: FitResult) -> list:
    """Per-point, prediction and model-choice tables for one group."""
    from hpc.table import Table, fmt_num, fmt_time

    head = (f"{r.label}: {r.law}, P = {r.p:.4f} {_ci(r.ci95)}"
            + (f", bootstrap {_ci(r.ci95_bootstrap)}" if r.ci95_bootstrap else "")
            + f", serial fraction {r.serial_fraction:.4f}, R² {fmt_num(r.r2)}, SMAPE "
            f"{fmt_num(r.smape, 3)}%")
    pts = Table(head, ["N", "reps", "median time", "min", "max", "speedup", "fit", "efficiency",
                       "Karp–Flatt e", "serial (law)", "note"])
    for p in r.points:
        pts.add(p["np"], p["reps"], fmt_time(p["time_median_s"]), fmt_time(p["time_min_s"]),
                fmt_time(p["time_max_s"]), fmt_num(p["speedup"]), fmt_num(p["speedup_fit"]),
                fmt_num(p["efficiency"], 3), fmt_num(p["karp_flatt"], 3),
                fmt_num(p["serial_fraction_point"], 3), "superlinear" if p["superlinear"] else "")
    if r.law == AMDAHL:
        pts.notes.append(f"Amdahl ceiling 1/(1−P) = {fmt_num(r.ceiling)}")
    pts.notes += [f"{f['code']}: {f['message']}" for f in r.flags]
    tables = [pts]
    if r.predictions:  # none for a poor fit (R² < POOR_R2): the flag above says why
        pred = Table("Predictions (law)", ["N", "speedup", "95% CI", "efficiency", "time"])
        for p in r.predictions:
            pred.add(f"{p['np']} ({p['factor']}×)", fmt_num(p["speedup"]), _ci(p["speedup_ci95"]),
                     fmt_num(p["efficiency"], 3), fmt_time(p["time_s"]))
        tables.append(pred)
    mc = r.model_choice
    at = list(mc["models"][0]["predicted_time_s"]) if mc["models"] else []
    mod = Table("Model choice (log-space least squares)",
                ["model", "form", "k", "AICc", "ΔAICc", "BIC", "leave-one-N-out RMSE (log)",
                 *[f"time @ N={q}" for q in at]])
    for m in mc["models"]:
        mod.add(m["name"], m["form"], m["k"], fmt_num(m["aicc"]), fmt_num(m["delta_aicc"], 3),
                fmt_num(m["bic"]), fmt_num(m["loo_rmse_log"], 3),
                *[fmt_time(v) for v in m["predicted_time_s"].values()])
    mod.notes.append(mc["verdict"] + (f"; BIC prefers {mc['best_bic']}, CV prefers {mc['best_cv']}"
                                      if mc.get("best_bic") else ""))
    return [*tables, mod]
