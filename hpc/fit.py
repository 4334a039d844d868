"""`hpc fit`: Amdahl / Gustafson fits with honest uncertainty, from records or a plain CSV.

The fit is on the time model, not on speedups, so that the noise in T(1) is not hidden:
strong  T(N) = T1·((1 − P) + P/N)      Amdahl:    S(N) = T(1)/T(N) = 1/((1 − P) + P/N)
weak    T(N) = T1·N/(1 + (N − 1)·P)    Gustafson: S(N) = N·T(1)/T(N) = N − (N − 1)(1 − P)
with T1 and P both free, by least squares in log space (timing noise is multiplicative) on every
repetition. T1 is profiled out in closed form, so the fit is a 1-D minimisation over P. The 95% CI
of P comes from the covariance of the two-parameter fit with a Student-t quantile, and optionally
from a bootstrap that resamples repetitions within each N.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hpc.errors import HpcError

AMDAHL = "amdahl"
GUSTAFSON = "gustafson"
LAWS = (AMDAHL, GUSTAFSON)
_LAW_ALIASES = {"amdahl": AMDAHL, "strong": AMDAHL, "gustafson": GUSTAFSON, "weak": GUSTAFSON}
_DEFAULT_LAW = {"strong": AMDAHL, "weak": GUSTAFSON}
PREDICT_FACTORS = (2, 10, 100)


# --------------------------------------------------------------------------- the two laws

def amdahl_speedup(n: Any, p: Any) -> Any:
    """Amdahl speedup S(N) = 1 / ((1 − P) + P/N) (fixed total work)."""
    return 1.0 / ((1.0 - p) + p / n)


def gustafson_speedup(n: Any, p: Any) -> Any:
    """Gustafson scaled speedup S(N) = N − (N − 1)(1 − P) (fixed work per rank)."""
    return n - (n - 1.0) * (1.0 - p)


def law_speedup(law: str, n: Any, p: Any) -> Any:
    """Speedup predicted by `law` ('amdahl' or 'gustafson') at rank count(s) n."""
    return amdahl_speedup(n, p) if law == AMDAHL else gustafson_speedup(n, p)


def law_time(law: str, n: Any, t1: Any, p: Any) -> Any:
    """Time per unit of work at N ranks implied by the law: T1/S for strong, N·T1/S for weak."""
    s = law_speedup(law, n, p)
    return t1 / s if law == AMDAHL else n * t1 / s


def normalize_law(law: str | None) -> str | None:
    """Map 'amdahl'/'strong'/'gustafson'/'weak' (any case) to a law name; None stays None."""
    if law is None:
        return None
    key = str(law).strip().lower()
    if key not in _LAW_ALIASES:
        raise HpcError(f"unknown law {law!r}: use amdahl (strong scaling), gustafson (weak scaling) "
                       "or alpha-beta (collective cost model)")
    return _LAW_ALIASES[key]


# --------------------------------------------------------------------------- core fit (pure)

def _log_g(law: str, n, p):
    """log of T(N)/T1 under the law; broadcasts n against p."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        if law == AMDAHL:
            return np.log((1.0 - p) + p / n)
        return np.log(n) - np.log1p((n - 1.0) * p)


def _dlog_g_dp(law: str, n, p):
    """d log(T(N)/T1) / dP, the P column of the Jacobian."""
    if law == AMDAHL:
        return (1.0 / n - 1.0) / ((1.0 - p) + p / n)
    return -(n - 1.0) / (1.0 + (n - 1.0) * p)


def _domain(law: str, nmax: float) -> tuple[float, float]:
    """Values of P for which the time model stays positive at every measured N (open interval)."""
    if law == AMDAHL:
        return -50.0, nmax / (nmax - 1.0) - 1e-9
    return -1.0 / (nmax - 1.0) + 1e-9, 50.0


def _profile(law: str, n, y, ps):
    """Residual sum of squares and best log T1 for each candidate P (T1 profiled out)."""
    import numpy as np

    r = y[None, :] - _log_g(law, n[None, :], np.asarray(ps, dtype=float)[:, None])
    m = r.mean(axis=1)
    rss = ((r - m[:, None]) ** 2).sum(axis=1)
    return np.where(np.isfinite(rss), rss, np.inf), m


def _min_p(law: str, n, y, lo: float, hi: float) -> float:
    """P in [lo, hi] minimising the log-space RSS: coarse grid, then bounded Brent, then endpoints."""
    import numpy as np
    from scipy.optimize import minimize_scalar

    grid = np.unique(np.concatenate([np.linspace(lo, hi, 200),
                                     np.linspace(max(lo, -0.25), min(hi, 1.25), 200)]))
    rss, _ = _profile(law, n, y, grid)
    i = int(np.argmin(rss))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    cands = [lo, hi, float(grid[i])]
    if b > a:
        res = minimize_scalar(lambda q: float(_profile(law, n, y, [q])[0][0]), bounds=(a, b),
                              method="bounded", options={"xatol": 1e-12})
        cands.append(float(res.x))
    crss, _ = _profile(law, n, y, cands)
    return float(cands[int(np.argmin(crss))])


@dataclass
class CoreFit:
    """P and T1 from one least-squares fit, with the covariance-based 95% CI of P."""

    law: str
    p: float
    p_unconstrained: float
    t1: float
    p_se: float
    ci95: tuple[float, float] | None
    t1_ci95: tuple[float, float] | None
    rss_log: float
    n_obs: int
    dof: int


def fit_core(n, t, law: str) -> CoreFit:
    """Fit T(N) = T1·g(N; P) to every (N, time) observation in log space; P constrained to [0, 1]."""
    import numpy as np
    from scipy.special import stdtrit

    n = np.asarray(n, dtype=float)
    y = np.log(np.asarray(t, dtype=float))
    lo, hi = _domain(law, float(n.max()))
    p_unc = _min_p(law, n, y, lo, hi)
    p = p_unc if 0.0 <= p_unc <= 1.0 else _min_p(law, n, y, 0.0, 1.0)
    rss_arr, m = _profile(law, n, y, [p])
    rss, logt1 = float(rss_arr[0]), float(m[0])
    nobs, dof = len(y), len(y) - 2
    p_se = math.nan
    ci = t1ci = None
    if dof > 0:
        jac = np.column_stack([np.ones_like(n), _dlog_g_dp(law, n, p)])
        cov = (rss / dof) * np.linalg.pinv(jac.T @ jac)
        p_se = float(math.sqrt(max(cov[1, 1], 0.0)))
        t1_se = float(math.sqrt(max(cov[0, 0], 0.0)))
        q = float(stdtrit(dof, 0.975))
        ci = (max(0.0, p - q * p_se), min(1.0, p + q * p_se))
        t1ci = (math.exp(logt1 - q * t1_se), math.exp(logt1 + q * t1_se))
    return CoreFit(law, p, p_unc, math.exp(logt1), p_se, ci, t1ci, rss, nobs, dof)


def _grid_min_p(law: str, n, ys, grid):
    """Least-squares P on a grid for many log-time vectors at once (rows of ys share the N vector).

    RSS(P) = Σ(y − L)² − n·(ȳ − L̄)² with L = log g(N; P), expanded so one matrix product serves
    every row; a fine grid around each row's best point and a parabola refine each minimum.
    """
    import numpy as np

    lg = _log_g(law, n[None, :], grid[:, None])                       # (G, n)
    yc = ys - ys.mean()                                                # better conditioning
    m = n.size
    rss = ((yc**2).sum(1)[:, None] - 2.0 * yc @ lg.T + (lg**2).sum(1)[None, :]
           - m * (yc.mean(1)[:, None] - lg.mean(1)[None, :]) ** 2)    # (B, G)
    i = np.argmin(rss, axis=1)
    h = grid[1] - grid[0]
    # second stage: a fine grid of ±1 coarse step around each row's minimum, then a parabola
    a = np.maximum(grid[i] - h, grid[0])
    b = np.minimum(grid[i] + h, grid[-1])
    fine = a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, 41)[None, :]   # (B, F)
    lf = _log_g(law, n[None, None, :], fine[:, :, None])              # (B, F, n)
    r = ys[:, None, :] - lf
    rssf = ((r - r.mean(axis=2, keepdims=True)) ** 2).sum(axis=2)      # (B, F)
    j = np.clip(np.argmin(rssf, axis=1), 1, fine.shape[1] - 2)
    rows = np.arange(ys.shape[0])
    f0, f1, f2 = rssf[rows, j - 1], rssf[rows, j], rssf[rows, j + 1]
    hf = (b - a) / 40
    den = f0 - 2.0 * f1 + f2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(den > 0, 0.5 * hf * (f0 - f2) / den, 0.0)
    p = np.clip(fine[rows, j] + np.clip(shift, -hf, hf), grid[0], grid[-1])
    pb = fine[rows, np.argmin(rssf, axis=1)]                           # best fine-grid point
    rp = ys - _log_g(law, n[None, :], p[:, None])
    rss_p = ((rp - rp.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    return np.where(rss_p <= rssf.min(axis=1), p, pb)


def bootstrap_p(n, t, law: str, resamples: int, seed: int = 0) -> tuple[float, float] | None:
    """Percentile 95% CI of P from refits on repetitions resampled with replacement within each N.

    Resampled deviations from each N's mean are scaled by sqrt(m/(m−1)) so that a handful of
    repetitions does not shrink the spread; even so it covers ≈ 92% (vs 95%) with 5 reps per N,
    so `ci95` (covariance) stays the reported interval and this one is a cross-check.
    """
    import numpy as np

    if resamples <= 0:
        return None
    n = np.asarray(n, dtype=float)
    y = np.log(np.asarray(t, dtype=float))
    order = np.argsort(n, kind="stable")
    n, y = n[order], y[order]
    rng = np.random.default_rng(seed)
    idx = np.empty((resamples, n.size), dtype=int)
    centre = np.empty_like(y)
    scale = np.ones_like(y)
    for v in np.unique(n):
        g = np.flatnonzero(n == v)
        idx[:, g] = rng.choice(g, size=(resamples, g.size), replace=True)
        centre[g] = y[g].mean()
        if g.size > 1:  # undo the (m-1)/m variance shrinkage of resampling m values
            scale[g] = math.sqrt(g.size / (g.size - 1.0))
    ys = centre + scale * (y - centre)[idx]
    ps = []
    for chunk in np.array_split(np.arange(resamples), max(1, resamples // 250)):
        ps.append(_grid_min_p(law, n, ys[chunk], np.linspace(0.0, 1.0, 201)))
    lo, hi = np.percentile(np.concatenate(ps), [2.5, 97.5])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- model choice

def _fit_comm(n, t):
    """T(N) = a + b/N + c·log2 N by least squares in log space (start: relative-error linear fit)."""
    import numpy as np
    from scipy.optimize import least_squares

    x = np.column_stack([np.ones_like(n), 1.0 / n, np.log2(n)])
    theta0, *_ = np.linalg.lstsq(x / t[:, None], np.ones_like(t), rcond=None)
    y = np.log(t)

    def resid(th):
        m = x @ th
        return y - np.log(np.where(m > 0, m, 1e-300))

    try:
        theta = least_squares(resid, theta0, x_scale="jac", max_nfev=200).x
    except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - degenerate start
        theta = theta0
    if np.sum(resid(theta) ** 2) > np.sum(resid(theta0) ** 2):
        theta = theta0
    return theta


def _comm_time(theta, n):
    import numpy as np

    n = np.asarray(n, dtype=float)
    return theta[0] + theta[1] / n + theta[2] * np.log2(n)


def _model_logpred(name: str, n_tr, t_tr, n_te):
    """Fit model `name` on a training subset and return log-time predictions at n_te (and params)."""
    import numpy as np

    if name == "comm":
        th = _fit_comm(n_tr, t_tr)
        m = _comm_time(th, n_te)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(m > 0, np.log(np.where(m > 0, m, 1.0)), np.nan), {
                "a": float(th[0]), "b": float(th[1]), "c": float(th[2])}
    core = fit_core(n_tr, t_tr, name)
    return np.log(core.t1) + _log_g(name, np.asarray(n_te, dtype=float), core.p), {
        "t1": core.t1, "p": core.p}


_MODEL_K = {AMDAHL: 2, GUSTAFSON: 2, "comm": 3}
_MODEL_FORM = {AMDAHL: "T1·((1−P) + P/N)", GUSTAFSON: "T1·N/(1 + (N−1)·P)",
               "comm": "a + b/N + c·log2 N"}


def choose_model(n, t, law: str, predict_n: Iterable[float] = ()) -> dict[str, Any]:
    """Compare the two laws and a communication-term model by AICc, BIC and leave-one-N-out CV."""
    import numpy as np

    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    y = np.log(t)
    uniq = np.unique(n)
    nobs = len(y)
    predict_n = list(predict_n)
    models = []
    for name in (law, GUSTAFSON if law == AMDAHL else AMDAHL, "comm"):
        k = _MODEL_K[name]
        if len(uniq) < k:
            continue
        logpred, params = _model_logpred(name, n, t, n)
        resid = y - logpred
        rss = float(np.sum(resid**2)) if np.all(np.isfinite(resid)) else math.inf
        ll = nobs * math.log(max(rss / nobs, 1e-30)) if math.isfinite(rss) else math.inf
        aic = ll + 2 * k
        aicc = aic + (2 * k * (k + 1) / (nobs - k - 1) if nobs - k - 1 > 0 else math.inf)
        bic = ll + k * math.log(nobs)
        loo = math.nan
        if len(uniq) - 1 >= k:
            errs = []
            for v in uniq:
                tr = n != v
                lp, _ = _model_logpred(name, n[tr], t[tr], n[~tr])
                errs.append(y[~tr] - lp)
            e = np.concatenate(errs)
            loo = float(np.sqrt(np.mean(e**2))) if np.all(np.isfinite(e)) else math.inf
        lp_pred, _ = _model_logpred(name, n, t, np.asarray(predict_n, dtype=float)) if predict_n \
            else (np.array([]), None)
        models.append({"name": name, "form": _MODEL_FORM[name], "k": k, "params": params,
                       "rss_log": rss, "aicc": aicc, "bic": bic, "loo_rmse_log": loo,
                       "predicted_time_s": {str(int(q)): float(np.exp(v)) if np.isfinite(v) else None
                                            for q, v in zip(predict_n, lp_pred)}})

    def best(key: str) -> str | None:
        vals = [(m[key], m["name"]) for m in models if m[key] is not None and math.isfinite(m[key])]
        return min(vals)[1] if vals else None

    best_aicc, best_bic, best_cv = best("aicc"), best("bic"), best("loo_rmse_log")
    by = {m["name"]: m for m in models}
    for m in models:
        m["delta_aicc"] = (m["aicc"] - by[best_aicc]["aicc"]) if best_aicc else None
    law_delta = by[law]["delta_aicc"] if law in by else None
    supported = law_delta is not None and law_delta <= 2.0
    if best_aicc is None:
        verdict = "too few distinct N to compare models"
    elif supported and best_aicc == law:
        verdict = f"the data support {law} (lowest AICc)"
    elif supported:
        verdict = f"{law} is within ΔAICc ≤ 2 of the best model ({best_aicc}): both are supported"
    else:
        verdict = f"the data prefer {best_aicc} over {law} (ΔAICc = {law_delta:.1f})"
    return {"models": models, "best_aicc": best_aicc, "best_bic": best_bic, "best_cv": best_cv,
            "law_supported": supported, "verdict": verdict}


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
        return _json_safe(asdict(self))


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


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
        n_obs=core.n_obs, n_points=len(uniq), points=points, predictions=preds,
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
    if math.isfinite(r2) and r2 < 0.9:
        add("poor_fit", f"R² = {r2:.3f} < 0.9: the law describes these speedups poorly")
    if choice.get("best_aicc") and not choice.get("law_supported"):
        add("model", choice["verdict"])
    return out


# --------------------------------------------------------------------------- records

def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a JSON Lines file or a directory of *.jsonl files (via hpc.records when present)."""
    path = Path(path)
    if not path.exists():
        raise HpcError(f"{path}: no such file or directory")
    try:
        from hpc.records import load
    except ImportError:  # pragma: no cover - until hpc.records exists
        load = _load_jsonl
    try:
        return list(load(path))
    except HpcError:
        raise
    except (OSError, ValueError) as e:
        raise HpcError(f"{path}: cannot read records ({e})") from None


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    out = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise HpcError(f"{f}:{i}: not a JSON record ({e.msg})") from None
    return out


GROUP_FIELDS = ("kind", "name", "variant", "scaling")


def record_name(rec: dict[str, Any]) -> str:
    """The algorithm (collective) or sync scheme (train) of a record."""
    return str(rec.get("algo") or rec.get("sync") or "unknown")


def record_variant(rec: dict[str, Any]) -> Any:
    """What else must match for points to be one scaling curve: message size or model."""
    if rec.get("kind") == "collective":
        return rec.get("size_bytes")
    return rec.get("model")


def group_key(rec: dict[str, Any]) -> tuple:
    """(kind, algo/sync, size_bytes/model, scaling): the records that form one scaling curve."""
    return (str(rec.get("kind", "?")), record_name(rec), record_variant(rec),
            str(rec.get("scaling") or "none"))


def group_label(key: tuple) -> str:
    """Short human label of a group key, e.g. 'train ring mlp (strong)'."""
    from hpc.table import fmt_bytes

    kind, name, variant, scaling = key
    v = fmt_bytes(variant) if kind == "collective" and isinstance(variant, (int, float)) else variant
    return f"{kind} {name} {v} ({scaling})"


def ok_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only records with status ok and a positive finite time_s."""
    out = []
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        ts = r.get("time_s")
        if isinstance(ts, (int, float)) and math.isfinite(ts):
            out.append(r)
    return out


def group_records(records: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Group ok records by group_key, in a stable sorted order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok_records(records):
        groups.setdefault(group_key(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: sort_key(kv[0])))


def sort_key(key: tuple) -> tuple:
    """Order tuples of mixed str/number/None: numbers numerically, then strings."""
    return tuple((0, float(x), "") if isinstance(x, (int, float)) and not isinstance(x, bool)
                 else (1, 0.0, str(x)) for x in key)


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
    """(np, time_s) columns of a CSV with one row per repetition; other columns are ignored."""
    import csv

    path = Path(path)
    text = path.read_text()
    if not text.strip():
        raise HpcError(f"{path}: empty file")
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in ("np", "time_s") if c not in cols]
    if missing:
        raise HpcError(f"{path}: missing column(s) {', '.join(missing)} (need a header np,time_s)")
    n, t = [], []
    for i, row in enumerate(reader, 2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        try:
            n.append(float(row["np"]))
            t.append(float(row["time_s"]))
        except ValueError:
            raise HpcError(f"{path}:{i}: np and time_s must be numbers, got "
                           f"{row['np']!r}, {row['time_s']!r}") from None
    if not n:
        raise HpcError(f"{path}: no data rows under the header")
    return n, t


def _is_csv(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.suffix.lower() == ".csv":
        return True
    with path.open() as f:
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
    if _is_csv(path):
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


def summary_table(results: list[FitResult]):
    """One row per fitted group."""
    from hpc.table import Table, fmt_bytes, fmt_num

    tab = Table("Scaling fits: P = parallel fraction, 95% CI from all repetitions",
                ["kind", "algo/sync", "size/model", "law", "N", "P [95% CI]", "1−P", "R²",
                 "SMAPE %", "ceiling", f"S @ {PREDICT_FACTORS[1]}×N", "best model", "flags"])
    for r in results:
        g = r.group
        v = g.get("variant")
        v = fmt_bytes(v) if g.get("kind") == "collective" and isinstance(v, (int, float)) else v
        pr = next((x for x in r.predictions if x["factor"] == PREDICT_FACTORS[1]), None)
        tab.add(g.get("kind", "csv"), g.get("name", r.label), v if v is not None else "",
                r.law, f"{r.points[0]['np']}–{r.points[-1]['np']}", f"{r.p:.4f} {_ci(r.ci95, 3)}",
                f"{r.serial_fraction:.4f}", fmt_num(r.r2, 3), fmt_num(r.smape, 3),
                fmt_num(r.ceiling, 3) if r.law == AMDAHL else "none",
                f"{pr['speedup']:.3g} @{pr['np']}" if pr else None,
                r.model_choice.get("best_aicc"), " ".join(f["code"] for f in r.flags))
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
    pred = Table("Predictions (law)", ["N", "speedup", "95% CI", "efficiency", "time"])
    for p in r.predictions:
        pred.add(f"{p['np']} ({p['factor']}×)", fmt_num(p["speedup"]), _ci(p["speedup_ci95"]),
                 fmt_num(p["efficiency"], 3), fmt_time(p["time_s"]))
    mc = r.model_choice
    mod = Table("Model choice (log-space least squares)",
                ["model", "form", "k", "AICc", "ΔAICc", "BIC", "leave-one-N-out RMSE (log)",
                 *[f"time @ N={q}" for q in (p["np"] for p in r.predictions)]])
    for m in mc["models"]:
        mod.add(m["name"], m["form"], m["k"], fmt_num(m["aicc"]), fmt_num(m["delta_aicc"], 3),
                fmt_num(m["bic"]), fmt_num(m["loo_rmse_log"], 3),
                *[fmt_time(v) for v in m["predicted_time_s"].values()])
    mod.notes.append(mc["verdict"] + (f"; BIC prefers {mc['best_bic']}, CV prefers {mc['best_cv']}"
                                      if mc.get("best_bic") else ""))
    return [pts, pred, mod]


# --------------------------------------------------------------------------- CLI

_HELP = """\
Fit Amdahl (strong scaling) or Gustafson (weak scaling) to every repetition, or the α–β
collective cost model.

PATH is a records file or directory (grouped by kind, algo/sync, size_bytes/model and scaling;
only status == ok records) or a CSV with columns np,time_s (one row per repetition).
The law defaults to the records' scaling (strong → amdahl, weak → gustafson; CSV → amdahl).

  hpc fit runs/s1                       # rich tables, one row per group
  hpc fit times.csv --law gustafson --json
  hpc fit runs/coll --law alpha-beta --predict-np 64 --predict-size 256MB
"""


def register(sub) -> None:
    """Add the `fit` verb to the CLI's subparsers."""
    p = sub.add_parser("fit", help="fit Amdahl/Gustafson (or the α–β cost model) to records or a CSV",
                       description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="records file/dir, or CSV with columns np,time_s")
    p.add_argument("--law", help="amdahl | gustafson | alpha-beta (collective cost model); "
                                 "default: from the records' scaling")
    p.add_argument("--costmodel", action="store_true", help="same as --law alpha-beta")
    p.add_argument("--json", action="store_true", help="print JSON (an object for one group, "
                                                       "a list for several)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples of repetitions within each N for a second CI "
                        "(0 = off; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("-v", "--detail", action="store_true",
                   help="per-point, prediction and model tables for every group "
                        "(default: only when there is one group)")
    p.add_argument("--markdown", action="store_true", help="markdown tables instead of rich")
    p.add_argument("--predict-np", default=None, metavar="N[,N...]",
                   help="alpha-beta: rank counts to predict at (default: 2× and 8× the largest)")
    p.add_argument("--predict-size", default=None, metavar="SIZE[,SIZE...]",
                   help="alpha-beta: message sizes to predict at, e.g. 256MB (default: 4× largest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hpc fit`."""
    law = (args.law or "").strip().lower()
    if args.costmodel or law in ("alpha-beta", "alphabeta", "costmodel", "cost"):
        from hpc import costmodel

        return costmodel.run(args)
    if args.bootstrap < 0:
        raise HpcError("--bootstrap must be ≥ 0")
    if args.predict_np or args.predict_size:
        raise HpcError("--predict-np/--predict-size belong to --law alpha-beta")
    skipped: list[str] = []
    results = fit_path(args.path, law or None, bootstrap=args.bootstrap, seed=args.seed,
                       skipped=skipped)
    for s in skipped:
        print(f"hpc: note: skipped {s}", file=sys.stderr)
    if args.json:
        out = [r.to_dict() for r in results]
        json.dump(out[0] if len(out) == 1 else out, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    from hpc.table import print_tables

    tables = [summary_table(results)]
    if args.detail or len(results) == 1:
        for r in results:
            tables += detail_tables(r)
    print_tables(tables, "markdown" if args.markdown else "rich")
    return 0
