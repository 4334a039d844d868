"""Scaling fits of records or a CSV: Amdahl / Gustafson with honest uncertainty, per curve.

Builds on `laws` (the fit itself) and `predict` (the model family, its choice and the predictions,
the same ones `hpc predict` gives): speedups, Karp–Flatt e(N), superlinear and fit-quality flags, and
a 95% CI of P from the covariance of the two-parameter fit (Student-t), optionally also from a
bootstrap over repetitions within each N. A group measured on several node counts is one curve per
count.

    >>> [r.p for r in fit_path("runs/s1")]      # one FitResult per curve
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from hpc.analysis.curves import curves_from_records, is_csv, load_csv
from hpc.analysis.fit_tables import detail_tables, summary_table
from hpc.analysis.groups import json_safe, load_records
from hpc.analysis.laws import (_DEFAULT_LAW, AMDAHL, GUSTAFSON, POOR_R2, PREDICT_FACTORS, CoreFit, bootstrap_p,
                               fit_core, law_speedup, normalize_law)
from hpc.analysis.models import Model
from hpc.errors import HpcError

__all__ = ["FitResult", "fit_law", "fit_records", "fit_path", "validate_points", "summary_table",
           "detail_tables", "is_csv", "load_csv"]

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
    forecast: Any = field(default=None, repr=False, compare=False)  # predict.Forecast (not in JSON)
    # a throughput curve (`run --higher-better`): the unit its figure was printed in; time_s is then
    # the equivalent time work/figure (hpc.sweep.command), and tables show the figure itself
    figure_unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict: NaN and ±inf become null."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self) if f.name != "forecast"})


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
            predict_factors: Iterable[int] = PREDICT_FACTORS, extra: Iterable[Model] = ()) -> FitResult:
    """Fit `law` to every (N, time) repetition and derive speedups, Karp–Flatt, flags, and the
    predictions of the chosen model of the family (`extra`: more candidates, e.g. an α–β form)."""
    import numpy as np

    from hpc.analysis.predict import forecast

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

    ceiling = (math.inf if p >= 1.0 else 1.0 / (1.0 - p)) if not weak else None
    at_bound = None
    if core.p_unconstrained < 0.0:
        at_bound = "lower"
    elif core.p_unconstrained > 1.0:
        at_bound = "upper"
    boot = bootstrap_p(n, t, law, bootstrap, seed)
    fc = forecast(n, t, "weak" if weak else "strong", extra=extra, label=label, group=group)
    preds = _predictions(fc, [int(uniq.max()) * f for f in predict_factors])
    choice = model_choice(fc, law, [pr["np"] for pr in preds])

    flags = _flags(law, points, core, at_bound, r2, choice)
    return FitResult(
        law=law, scaling="weak" if weak else "strong", group=dict(group or {}), label=label,
        p=p, serial_fraction=1.0 - p, ci95=list(core.ci95) if core.ci95 else None,
        ci_method="t-covariance (log-space least squares, T1 and P free)",
        ci95_bootstrap=list(boot) if boot else None, p_se=core.p_se,
        p_unconstrained=core.p_unconstrained, at_bound=at_bound, t1=core.t1,
        t1_ci95=list(core.t1_ci95) if core.t1_ci95 else None, r2=r2, smape=smape, ceiling=ceiling,
        n_obs=core.n_obs, n_points=len(uniq), points=points,
        predictions=preds, model_choice=choice, flags=flags, forecast=fc)


def _predictions(fc, nps: list[int]) -> list[dict[str, Any]]:
    """The forecast's rows at nps (none at all when it refuses: a poor fit predicts nothing)."""
    if fc.refused:
        return []
    rows = []
    for nq, row in zip(nps, fc.at(nps)):
        row["factor"] = nq / max(fc.n.max(), 1.0)
        if row["time_s"] is not None and fc.t1 is not None:
            lo, hi = row["pi95"]
            row["speedup_pi95"] = ([nq * fc.t1 / hi, nq * fc.t1 / lo] if fc.weak
                                   else [fc.t1 / hi, fc.t1 / lo])
        rows.append(row)
    return rows


def model_choice(fc, law: str, at: list[int]) -> dict[str, Any]:
    """The forecast's candidate table and decision, in the shape `hpc fit` has always reported."""
    table = fc.model_table()
    if not fc.refused:  # predicted times per candidate, only where predictions are given at all
        for m in table:
            f = fc.fit(m["name"])
            m["predicted_time_s"] = {str(q): float(f.time([q])[0]) for q in at} \
                if m["weight"] > 0 else {}
    best_aicc = min(table, key=lambda m: m["aicc"])["name"] if table else None
    law_w = fc.weights.get(law, 0.0)
    supported = bool(fc.chosen == law or law_w >= 0.1)
    if fc.refused:
        verdict = f"no prediction: {fc.refused}"
    elif fc.chosen == law:
        verdict = f"the data support {law}: {fc.why}"
    elif supported:
        verdict = f"{law} and {fc.chosen} are both supported (weights {law_w:.2f}, " \
                  f"{fc.weights[fc.chosen]:.2f}): predictions average them"
    else:
        verdict = f"the data prefer {fc.chosen} over {law}: {fc.why}"
    return {"models": table, "chosen": fc.chosen, "weights": dict(fc.weights), "why": fc.why,
            "refused": fc.refused, "notes": list(fc.notes), "best_aicc": best_aicc,
            "law_supported": supported, "verdict": verdict}


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
    if choice.get("refused"):
        add("no_prediction", choice["refused"])
    elif choice.get("chosen") and not choice.get("law_supported"):
        add("model", choice["verdict"])
    return out


def fit_records(records: Iterable[dict[str, Any]], law: str | None = None, *, bootstrap: int = 0,
                seed: int = 0, skipped: list[str] | None = None,
                notes: list[str] | None = None) -> list[FitResult]:
    """Fit every curve of ok records; law defaults from scaling (strong→amdahl, weak→gustafson).

    A group measured on several node counts is fitted once per count (said in `notes`). Curves
    that cannot be fitted are described in `skipped` (when given); if none can, HpcError.
    """
    law = normalize_law(law)
    reasons: list[str] = []
    hint = "--law amdahl|gustafson"
    curves, split_notes = curves_from_records(records, {AMDAHL: "strong", GUSTAFSON: "weak"}.get(law or ""),
                                              reasons, flag=hint)
    if notes is not None:
        notes.extend(split_notes)
    results = []
    for c in curves:
        if c.scaling not in ("strong", "weak"):  # collective records that say neither
            reasons.append(f"{c.label}: scaling is {c.group.get('scaling')!r}; pass {hint}")
            continue
        try:
            res = fit_law(c.n, c.t, law or _DEFAULT_LAW[c.scaling], bootstrap=bootstrap, seed=seed,
                          label=c.label, group=c.group, extra=c.extra)
            res.figure_unit = c.figure_unit
            results.append(res)
        except HpcError as e:
            reasons.append(f"{c.label}: {e}")
    if skipped is not None:
        skipped.extend(reasons)
    if not results:
        raise HpcError("nothing to fit: " + "; ".join(reasons))
    return results


def fit_path(path: str | Path, law: str | None = None, *, bootstrap: int = 0, seed: int = 0,
             skipped: list[str] | None = None, notes: list[str] | None = None) -> list[FitResult]:
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
    return fit_records(load_records(path), law, bootstrap=bootstrap, seed=seed, skipped=skipped,
                       notes=notes)
