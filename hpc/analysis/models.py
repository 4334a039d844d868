"""The time-model family T(N) that predictions choose from, and its fit (pure maths, no I/O).

In the spirit of Extra-P's performance-model normal form, but with few terms and signs fixed by
physics: every coefficient is ≥ 0, so a term can only add time. Strong scaling (fixed total work):
    amdahl         a + b/N                       (serial + parallel part; T1 = a + b, P = b/T1)
    amdahl+log     a + b/N + c·log2 N            (tree / recursive-doubling collectives, α terms)
    amdahl+N       a + b/N + c·N                 (contention, ring α term 2(N−1)α; optimum N)
    amdahl+NlogN   a + b/N + c·N·log2 N          (all-to-all-like growth)
    amdahl+N2      a + b/N + c·N²                (every pair over one shared link)
    amdahl+ring    a + b/N + c·(N−1)/N           (ring / reduce-scatter β term on a fixed buffer)
Weak scaling (fixed work per rank): a constant, Gustafson's T1·N/(1 + (N−1)P) and const+{log, N,
NlogN, ring}.
A collective's own α–β form (hpc.analysis.costmodel) joins as a candidate for collective and
training curves. Fits are least squares on log time (timing noise is multiplicative).

Uncertainty has two parts, both estimated from the repetitions: the run-to-run scatter within each N
(pure error) and, when the per-N means scatter about the model more than that explains (lack of
fit), a per-N systematic part that every new N will also have. The parameter covariance carries
both, so a prediction interval = parameter uncertainty + both noise parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

_BASES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "1": lambda n: np.ones_like(n),
    "1/N": lambda n: 1.0 / n,
    "log2N": np.log2,
    "N": lambda n: n,
    "NlogN": lambda n: n * np.log2(n),
    "N2": lambda n: n * n,
    "ring": lambda n: (n - 1.0) / n,
    "N-1": lambda n: n - 1.0,
    "rounds": lambda n: np.ceil(np.log2(np.maximum(n, 1.0))),
}
_TERM_TEXT = {"1": "a", "1/N": "b/N", "log2N": "c·log2 N", "N": "c·N", "NlogN": "c·N·log2 N", "N2": "c·N²",
              "ring": "c·(N−1)/N", "N-1": "α'·(N−1)", "rounds": "α'·⌈log2 N⌉"}
GUSTAFSON_FORM = "T1·N/(1 + (N−1)·P)"


@dataclass(frozen=True)
class Model:
    """One candidate: a name, its terms (basis functions of N, coefficients ≥ 0) and why it exists."""

    name: str
    terms: tuple[str, ...]
    why: str = ""
    form: str = ""

    @property
    def k(self) -> int:
        return 2 if self.name == "gustafson" else len(self.terms)

    def text(self) -> str:
        if self.form:
            return self.form
        if self.name == "gustafson":
            return GUSTAFSON_FORM
        return " + ".join(_TERM_TEXT.get(t, t) for t in self.terms)


def _m(name: str, terms: tuple[str, ...], why: str) -> Model:
    return Model(name, terms, why)


STRONG = (
    _m("amdahl", ("1", "1/N"), "Amdahl: serial part + perfectly parallel part"),
    _m("amdahl+log", ("1", "1/N", "log2N"), "plus a log2 N term (tree-like collectives)"),
    _m("amdahl+N", ("1", "1/N", "N"), "plus a term linear in N (contention, per-peer messages)"),
    _m("amdahl+NlogN", ("1", "1/N", "NlogN"), "plus an N·log2 N term (all-to-all-like)"),
    _m("amdahl+N2", ("1", "1/N", "N2"), "plus an N² term (every rank talks to every rank over one link)"),
    _m("amdahl+ring", ("1", "1/N", "ring"), "plus a (N−1)/N term (ring β term on a fixed buffer)"),
)
WEAK = (
    _m("const", ("1",), "perfect weak scaling: the same time on every N"),
    Model("gustafson", (), "Gustafson: scaled speedup N − (N−1)(1−P)"),
    _m("const+log", ("1", "log2N"), "constant work per rank + a log2 N term"),
    _m("const+N", ("1", "N"), "constant work per rank + a term linear in N"),
    _m("const+NlogN", ("1", "NlogN"), "constant work per rank + an N·log2 N term"),
    _m("const+ring", ("1", "ring"), "constant work per rank + a (N−1)/N term"),
)
# The α–β forms of hpc.analysis.costmodel at one fixed buffer: α and β terms as functions of N.
_AB_TERMS = {"ring": ("N-1", "ring"), "recursive_doubling": ("rounds",),
             "rabenseifner": ("rounds", "ring"), "tree": ("rounds",)}


def alpha_beta_model(form: str, base: tuple[str, ...] = ()) -> Model:
    """The α–β cost form of collective `form` (costmodel.form_for) as a candidate, after `base` terms."""
    terms = tuple(dict.fromkeys([*base, *_AB_TERMS.get(form, _AB_TERMS["ring"])]))
    return Model(f"alpha-beta({form})", terms, f"α–β cost of the {form} allreduce the scheme uses")


def design(model: Model, n) -> np.ndarray:
    """Basis columns of a linear model at rank counts n."""
    n = np.asarray(n, dtype=float)
    return np.column_stack([_BASES[t](n) for t in model.terms])


# --------------------------------------------------------------------------- fitting


@dataclass
class ModelFit:
    """A fitted model: parameters, their covariance and the two noise variances (log space)."""

    model: Model
    theta: np.ndarray
    cov: np.ndarray
    s2_pe: float           # run-to-run variance of log time within one N
    s2_between: float      # extra per-N systematic variance (lack of fit beyond the run-to-run scatter)
    dof: int               # degrees of freedom of the t quantile
    rss: float
    n_obs: int
    n_distinct: int
    aicc: float
    nmax: float
    flags: list[str] = field(default_factory=list)
    widen: float = 1.0     # factor on the model part of the SD, from its own backtest (≥ 1)
    lof_p: float = math.nan  # p-value of the lack-of-fit F test (per-N means vs run-to-run scatter)

    @property
    def k(self) -> int:
        return self.model.k

    def log_mean(self, n) -> np.ndarray:
        return _log_model(self.model, self.theta, np.asarray(n, dtype=float))

    def time(self, n) -> np.ndarray:
        return np.exp(self.log_mean(n))

    def log_sd(self, n, reps: float = 1.0) -> np.ndarray:
        """SD of log time of the mean of `reps` new runs at n: parameters + per-N part + scatter/reps."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        g = _jac(self.model, self.theta, n)
        model_var = np.einsum("ij,jk,ik->i", g, self.cov, g) + self.s2_between
        var = self.widen**2 * model_var + self.s2_pe / reps
        return np.sqrt(np.maximum(var, 0.0))

    def interval(self, n, level: float = 0.95, reps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Prediction interval on the time of one new run (or the mean of `reps`) at n."""
        from scipy.special import stdtrit

        q = float(stdtrit(max(self.dof, 1), 0.5 + level / 2))
        mu, sd = self.log_mean(n), self.log_sd(n, reps)
        return np.exp(mu - q * sd), np.exp(mu + q * sd)

    def params(self) -> dict[str, float]:
        if self.model.name == "gustafson":
            return {"t1": float(math.exp(self.theta[0])), "p": float(self.theta[1])}
        return {t: float(v) for t, v in zip(self.model.terms, self.theta)}


def _log_model(model: Model, theta: np.ndarray, n: np.ndarray) -> np.ndarray:
    if model.name == "gustafson":
        return theta[0] + np.log(n) - np.log1p((n - 1.0) * theta[1])
    m = design(model, n) @ theta
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, np.log(np.where(m > 0, m, 1.0)), -np.inf)


def _jac(model: Model, theta: np.ndarray, n: np.ndarray) -> np.ndarray:
    """d log T / d θ at n (rows: n; columns: parameters)."""
    if model.name == "gustafson":
        return np.column_stack([np.ones_like(n), -(n - 1.0) / (1.0 + (n - 1.0) * theta[1])])
    x = design(model, n)
    m = x @ theta
    return x / np.where(m > 0, m, np.inf)[:, None]


def _fit_linear(model: Model, n: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Coefficients ≥ 0 minimising Σ(log t − log Xθ)²: NNLS on relative residuals, then refined."""
    from scipy.optimize import least_squares, nnls

    x = design(model, n)
    theta0, _ = nnls(x / t[:, None], np.ones_like(t))
    if not np.any(theta0 > 0):
        theta0 = np.full(x.shape[1], float(np.median(t)) / max(float(np.sum(x.mean(0))), 1e-300))
    y = np.log(t)

    def resid(th):
        m = x @ th
        return y - np.log(np.maximum(m, 1e-300))

    best = theta0
    try:
        scale = np.maximum(theta0, 0.01 * float(np.median(t)) / np.maximum(np.abs(x).max(axis=0), 1e-300))
        res = least_squares(resid, theta0, bounds=(0.0, np.inf), x_scale=scale, max_nfev=400)
        if np.sum(resid(res.x) ** 2) <= np.sum(resid(theta0) ** 2):
            best = res.x
    except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - degenerate design
        pass
    best = np.maximum(best, 0.0)
    # a term adding under 1e-6 of the smallest time anywhere measured is a term at its bound 0
    contrib = best * np.abs(x).max(axis=0)
    best[contrib < 1e-6 * float(np.min(x @ best))] = 0.0
    return best


def _fit_gustafson(n: np.ndarray, t: np.ndarray) -> np.ndarray:
    from hpc.analysis.laws import GUSTAFSON, fit_core

    core = fit_core(n, t, GUSTAFSON)
    return np.array([math.log(core.t1), core.p])


def fit_model(model: Model, n, t, noise: tuple[float, float, int] | None = None) -> ModelFit:
    """Fit one candidate to every repetition; covariance and noise split from the repetitions.

    `noise` = (s2_pe, s2_between, dof) taken from a fit on more data (a backtest's refit on fewer N
    cannot estimate its own noise well) instead of estimating it here."""
    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    theta = _fit_gustafson(n, t) if model.name == "gustafson" else _fit_linear(model, n, t)
    y = np.log(t)
    r = y - _log_model(model, theta, n)
    if not np.all(np.isfinite(r)):  # e.g. an α–β form that came out 0 somewhere: not a candidate
        raise ValueError(f"{model.name}: no positive time at every measured N")
    uniq, inv = np.unique(n, return_inverse=True)
    cnt = np.bincount(inv).astype(float)
    rbar = np.bincount(inv, weights=r) / cnt
    ss_pe = float(np.sum((r - rbar[inv]) ** 2))
    ss_lof = float(np.sum(cnt * rbar**2))
    rss = ss_pe + ss_lof
    free = _free(model, theta)
    flags: list[str] = []
    if noise is not None:
        s2_pe, s2_b, dof = noise
    else:
        s2_pe, s2_b, dof = _noise(ss_pe, ss_lof, n.size, uniq.size, int(free.sum()), flags)
    # covariance of θ under run-to-run scatter plus a shared per-N part (sandwich form)
    j = _jac(model, theta, n)[:, free]
    cov = np.zeros((theta.size, theta.size))
    if free.any():
        a = np.linalg.pinv(j.T @ j)
        z = np.zeros((n.size, uniq.size))
        z[np.arange(n.size), inv] = 1.0
        zj = z.T @ j
        cov[np.ix_(free, free)] = a @ (s2_pe * (j.T @ j) + s2_b * (zj.T @ zj)) @ a
    k, nobs = model.k, n.size
    ll = nobs * math.log(max(rss / nobs, 1e-30))
    aicc = ll + 2 * k + 2 * k * (k + 1) / max(nobs - k - 1, 1)  # (heavily penalised, still finite)
    return ModelFit(model, theta, cov, float(s2_pe), float(s2_b), max(int(dof), 1), rss, nobs,
                    int(uniq.size), aicc, float(uniq.max()), flags,
                    lof_p=_lof_p(ss_pe, ss_lof, nobs, uniq.size, int(free.sum())))


def _lof_p(ss_pe: float, ss_lof: float, nobs: int, ndist: int, k_free: int) -> float:
    """p-value of the lack-of-fit F test: small when the per-N means miss the model by more than
    the repetitions' scatter explains (NaN without repetitions or spare N)."""
    from scipy.stats import f as fdist

    dof_pe, dof_lof = nobs - ndist, ndist - k_free
    if dof_pe <= 0 or dof_lof <= 0:
        return math.nan
    if ss_pe <= 0:
        return 0.0 if ss_lof > 0 else 1.0
    return float(fdist.sf((ss_lof / dof_lof) / (ss_pe / dof_pe), dof_lof, dof_pe))


def _noise(ss_pe: float, ss_lof: float, nobs: int, ndist: int, k_free: int,
           flags: list[str]) -> tuple[float, float, int]:
    """(run-to-run variance, per-N systematic variance, dof) from pure error and lack of fit.

    Lack of fit counts as a per-N part only when the F test says the per-N means scatter more than
    the repetitions explain (at the 75% level, so a borderline case errs towards wider intervals);
    otherwise both sums pool into one run-to-run variance with all its degrees of freedom."""
    from scipy.stats import f as fdist

    dof_pe, dof_lof = nobs - ndist, ndist - k_free
    dof = nobs - k_free
    if dof_pe > 0 and dof_lof > 0:
        s2_pe = ss_pe / dof_pe
        ms_lof = ss_lof / dof_lof
        if ms_lof > s2_pe * float(fdist.ppf(0.75, dof_lof, dof_pe)):
            flags.append("lack_of_fit")
            return s2_pe, max(0.0, (ms_lof - s2_pe) / (nobs / ndist)), dof_lof
        return (ss_pe + ss_lof) / dof, 0.0, dof
    if dof > 0:  # one run per N (or as many parameters as N): the residuals are all there is
        return (ss_pe + ss_lof) / dof, 0.0, dof
    flags.append("no_dof")
    return 0.0, 0.0, 1


def _free(model: Model, theta: np.ndarray) -> np.ndarray:
    """Parameters not pinned at a bound (those carry the covariance)."""
    if model.name == "gustafson":
        return np.array([True, 0.0 < theta[1] < 1.0])
    return theta > 0


OUTLIER_SIGMAS = 6.0     # a run this many robust SDs from its N's median is interference, not noise
OUTLIER_FLOOR = 0.05     # ... and at least 5% away (sleep-precise programs have tiny SDs)
OUTLIER_MAX_SHARE = 0.1  # more outliers than this: the noise is heavy-tailed, keep every run


def screen_outliers(n, t) -> tuple[np.ndarray, list[str]]:
    """Mask of the runs to fit, and a note per run left out: on a shared machine a run now and then
    takes 2× longer (a stalled node, a neighbour's job); one such run in 30 would otherwise inflate
    the noise estimate and hide real terms. Only N with ≥ 3 runs are screened, against the pooled
    median absolute deviation of log time."""
    n = np.asarray(n, dtype=float)
    y = np.log(np.asarray(t, dtype=float))
    keep = np.ones(n.size, dtype=bool)
    dev = np.full(n.size, np.nan)
    for v in np.unique(n):
        g = n == v
        if g.sum() >= 3:
            dev[g] = y[g] - np.median(y[g])
    d = dev[np.isfinite(dev)]
    if d.size < 6:
        return keep, []
    sigma = 1.4826 * float(np.median(np.abs(d)))
    bad = np.isfinite(dev) & (np.abs(dev) > max(OUTLIER_SIGMAS * sigma, OUTLIER_FLOOR))
    if not bad.any() or bad.sum() > OUTLIER_MAX_SHARE * d.size:
        return keep, []
    keep &= ~bad
    notes = [f"left out 1 outlier run at np={int(n[i])}: {math.exp(y[i]):.4g} s against its N's median "
             f"{math.exp(y[i] - dev[i]):.4g} s ({abs(dev[i]) / max(sigma, 1e-12):.0f} robust SDs)"
             for i in np.flatnonzero(bad)]
    return keep, notes


def r2_speedup(fit: ModelFit, n, t, weak: bool) -> float:
    """R² of the model's speedups (scaled for weak) against the measured ones, as `hpc fit` reports
    it for the laws, so 'poor fit' means the same thing in both places. NaN without N = 1."""
    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    if not np.any(n == 1):
        return math.nan
    t1 = float(np.median(t[n == 1]))
    s_obs = (n * t1 / t) if weak else (t1 / t)
    m = fit.time(n)
    m1 = float(fit.time([1.0])[0])
    s_fit = (n * m1 / m) if weak else (m1 / m)
    ss_tot = float(np.sum((s_obs - s_obs.mean()) ** 2))
    return 1.0 - float(np.sum((s_obs - s_fit) ** 2)) / ss_tot if ss_tot > 0 else math.nan


def r2_time(fit: ModelFit, n, t) -> float:
    """R² of log time (for curves without a speedup, such as one collective's time vs N)."""
    y = np.log(np.asarray(t, dtype=float))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - fit.rss / ss_tot if ss_tot > 0 else math.nan


def describe(fit: ModelFit) -> dict[str, Any]:
    """JSON-ready summary of one fitted candidate."""
    return {"name": fit.model.name, "form": fit.model.text(), "k": fit.k, "params": fit.params(),
            "aicc": fit.aicc, "rss_log": fit.rss, "noise_cv": math.sqrt(fit.s2_pe),
            "between_n_cv": math.sqrt(fit.s2_between), "flags": list(fit.flags)}
