"""The two scaling laws and their least-squares fit on the time model (pure maths, no I/O).

The fit is on the time model, not on speedups, so that the noise in T(1) is not hidden:
strong  T(N) = T1·((1 − P) + P/N)      Amdahl:    S(N) = T(1)/T(N) = 1/((1 − P) + P/N)
weak    T(N) = T1·N/(1 + (N − 1)·P)    Gustafson: S(N) = N·T(1)/T(N) = N − (N − 1)(1 − P)
with T1 and P both free, by least squares in log space (timing noise is multiplicative) on every
repetition. T1 is profiled out in closed form, so the fit is a 1-D minimisation over P.

    >>> round(float(amdahl_speedup(10, 0.9)), 2), round(float(gustafson_speedup(10, 0.9)), 1)
    (5.26, 9.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hpc.errors import HpcError

AMDAHL = "amdahl"
GUSTAFSON = "gustafson"
LAWS = (AMDAHL, GUSTAFSON)
_LAW_ALIASES = {"amdahl": AMDAHL, "strong": AMDAHL, "gustafson": GUSTAFSON, "weak": GUSTAFSON}
_DEFAULT_LAW = {"strong": AMDAHL, "weak": GUSTAFSON}
PREDICT_FACTORS = (2, 10, 100)
POOR_R2 = 0.9  # a fit (scaling law or α–β) below this R² describes its points poorly: no prediction


def poor_fit(r2: float) -> bool:
    """R² below POOR_R2, or undefined: the fit describes its points poorly and predicts nothing."""
    return not (isinstance(r2, (int, float)) and math.isfinite(r2) and r2 >= POOR_R2)


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
        if math.isfinite(t1_se) and q * t1_se < 700:  # a degenerate covariance gives no interval
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
