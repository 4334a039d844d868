"""Predictions at rank counts nobody measured: choose among the model family, average where the data
cannot tell models apart, give 95 % prediction intervals, and refuse where nothing fits.

Selection predicts: each candidate is refitted without the largest N (then the two largest) and must
predict what it did not see (leave-largest-N-out, the extrapolation a prediction is); candidates that
fail that backtest are out, so are extra terms not distinguishable from 0; the rest are weighted by
AICc (Akaike weights, under a dilution prior over look-alike terms). When the weighted models
disagree at the asked N the interval is the mixture of their intervals (model averaging), flagged;
the point prediction is the mixture's median.

    >>> fc = forecast(n, t, "strong")            # one curve: every repetition's (N, time)
    >>> fc.at([16, 24, 512])                     # rows: np, time_s, pi95, speedup, model, flags
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from hpc.analysis.laws import POOR_R2
from hpc.analysis.models import (STRONG, WEAK, Model, ModelFit, describe, fit_model, r2_speedup,
                                r2_time, screen_outliers)

BACKTEST_MAX_Z = 4.0     # a held-out N further than this many predictive SDs away fails the backtest
PI_MAX_RATIO = 10.0      # an interval spanning more than an order of magnitude says nothing: no number
MIN_WEIGHT = 0.02        # models below this Akaike weight do not join the average
DISAGREE_WEIGHT = 0.10   # a model this heavy predicting outside the chosen one's interval: flagged
WIDEN_FLAG = 1.5         # intervals widened by more than this after the backtest are flagged
BIAS_FLAG = 1.5          # |mean z| of the backtest beyond this: the model errs one way when it extrapolates
MIN_TERM_Z = 1.0         # an extra term must be this many standard errors above 0 to be used
LOF_FLAG_P = 0.01        # lack-of-fit F test below this: the measured means themselves miss the model


@dataclass
class Backtest:
    """Leave-largest-N-out result of one candidate: log errors and z-scores of the held-out N."""

    held_out: list[int]
    log_err: list[float]
    z: list[float]

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.log_err)))) if self.log_err else math.nan

    @property
    def bias(self) -> float:
        """Mean z-score: near 0 when errors are noise, far from it when the form errs one way."""
        return float(np.mean(self.z)) if self.z else 0.0

    @property
    def passed(self) -> bool:
        return all(abs(z) <= BACKTEST_MAX_Z for z in self.z)


def backtest(full: ModelFit, n: np.ndarray, t: np.ndarray, drops: int = 2) -> Backtest | None:
    """Refit without the largest N (then the 2 largest) and score the held-out N's mean log time;
    the noise (run-to-run and per-N) is the full fit's, estimated from every N."""
    model = full.model
    noise = (full.s2_pe, full.s2_between, full.dof)
    uniq = np.unique(n)
    held, errs, zs = [], [], []
    for h in range(1, drops + 1):
        if uniq.size - h < model.k + 1:
            break
        cut = uniq[-h]
        tr = n < cut
        try:
            f = fit_model(model, n[tr], t[tr], noise)
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - degenerate subset
            return None
        for v in uniq[-h:]:
            y = np.log(t[n == v])
            mu = float(f.log_mean([v])[0])
            sd = float(f.log_sd([v], reps=y.size)[0])
            e = float(y.mean()) - mu
            if not math.isfinite(e):
                e = math.inf
            held.append(int(v))
            errs.append(e)
            zs.append(_normal_score(e, sd, f.dof))
    return Backtest(held, errs, zs) if held else None


def _normal_score(err: float, sd: float, dof: int) -> float:
    """err/sd as the normal z of equal tail probability under Student t(dof): a refit on few N has
    few degrees of freedom, and its raw ratio would overstate how surprising the error is."""
    from scipy.stats import norm, t as tdist

    if not (sd > 0) or not math.isfinite(err):
        return 0.0 if err == 0 else math.copysign(math.inf, err)
    z = err / sd
    return float(np.clip(norm.isf(tdist.sf(abs(z), max(dof, 1))), 0.0, 40.0)) * (1 if z >= 0 else -1)


@dataclass
class Forecast:
    """One curve's model choice and everything needed to predict it at any N."""

    scaling: str
    n: np.ndarray
    t: np.ndarray
    fits: list[ModelFit]
    tests: dict[str, Backtest | None]
    weights: dict[str, float]
    r2: dict[str, float]
    chosen: str | None
    refused: str | None
    why: str
    label: str = ""
    group: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def weak(self) -> bool:
        return self.scaling == "weak"

    @property
    def t1(self) -> float | None:
        """Median measured time at N = 1 (the speedup reference), None when not measured."""
        ones = self.t[self.n == 1]
        return float(np.median(ones)) if ones.size else None

    def fit(self, name: str | None) -> ModelFit | None:
        return next((f for f in self.fits if f.model.name == name), None)

    def _mixture(self, q: float):
        """Median and 2.5/97.5% quantiles (log space) of the weighted mixture of the models' predictive
        t distributions at N = q, and each member. The median is the point prediction: it is what
        minimises the expected absolute (percentage) error, and it stays with the best-supported model
        instead of being pulled half-way to an unlikely one, as a mean would."""
        from scipy.optimize import brentq
        from scipy.stats import t as tdist

        mem = [(self.weights[f.model.name], f, float(f.log_mean([q])[0]), float(f.log_sd([q])[0]))
               for f in self.fits if self.weights.get(f.model.name, 0.0) > 0]

        def cdf(x):
            return sum(w * tdist.cdf((x - mu) / sd, f.dof) if sd > 0 else w * float(x >= mu)
                       for w, f, mu, sd in mem)

        lo_b = min(mu - 50 * max(sd, 1e-6) for _, _, mu, sd in mem)
        hi_b = max(mu + 50 * max(sd, 1e-6) for _, _, mu, sd in mem)
        mean = brentq(lambda x: cdf(x) - 0.5, lo_b, hi_b)
        lo = brentq(lambda x: cdf(x) - 0.025, lo_b, hi_b)
        hi = brentq(lambda x: cdf(x) - 0.975, lo_b, hi_b)
        return mean, lo, hi, mem

    def row(self, q: int) -> dict[str, Any]:
        """The prediction at N = q: time, 95 % interval, speedup, efficiency, model, flags (or why not)."""
        row: dict[str, Any] = {"np": int(q), "time_s": None, "pi95": None, "speedup": None,
                               "efficiency": None, "model": self.chosen, "flags": [], "reason": None}
        if self.refused:
            row["reason"] = self.refused
            return row
        if not all(math.isfinite(float(f.log_mean([q])[0])) for f in self.fits
                   if self.weights.get(f.model.name, 0.0) > 0):
            row["reason"] = "the model has no positive time there"
            return row
        mean, lo, hi, mem = self._mixture(float(q))
        best = self.fit(self.chosen)
        blo, bhi = (float(v[0]) for v in best.interval([q]))
        others = [(w, f.model.name, mu) for w, f, mu, _ in mem if f.model.name != self.chosen]
        if sum(w for w, _, _ in others) >= DISAGREE_WEIGHT or \
                any(not (blo <= math.exp(mu) <= bhi) for _, _, mu in others):
            row["flags"].append("averaged: " + ", ".join(f"{nm} (w={w:.2f})" for w, nm, _ in others))
        if any(w >= DISAGREE_WEIGHT and not (blo <= math.exp(mu) <= bhi) for w, _, mu in others):
            row["flags"].append("models_disagree")
        bt = self.tests.get(self.chosen)
        if bt and abs(bt.bias) > BIAS_FLAG:
            way = "under" if bt.bias > 0 else "over"
            row["flags"].append(f"backtest_bias: {way}predicted its left-out largest N by "
                                f"{100 * abs(math.expm1(float(np.mean(bt.log_err)))):.1f}% on average")
        if best.lof_p < LOF_FLAG_P:
            row["flags"].append(f"lack_of_fit: the measured means miss the model by more than the "
                                f"run-to-run scatter explains (F test p = {best.lof_p:.2g})")
        if best.widen > WIDEN_FLAG:
            row["flags"].append(f"widened ×{best.widen:.2g}: the model extrapolated worse than its "
                                "interval in the backtest")
        if q > self.n.max():
            row["flags"].append(f"extrapolated ×{q / self.n.max():.3g}")
        elif q < self.n.min():
            row["flags"].append("below the measured N")
        ratio = math.exp(hi - lo)
        if ratio > PI_MAX_RATIO:
            row["reason"] = (f"too far out: the 95% interval would span ×{ratio:.3g} "
                             f"(limit ×{PI_MAX_RATIO:g})")
            return row
        time = math.exp(mean)
        row.update(time_s=time, pi95=[math.exp(lo), math.exp(hi)])
        if self.t1 is not None:
            s = (q * self.t1 / time) if self.weak else (self.t1 / time)
            row.update(speedup=s, efficiency=s / q)
        return row

    def at(self, nps: Iterable[int]) -> list[dict[str, Any]]:
        return [self.row(int(q)) for q in nps]

    def model_table(self) -> list[dict[str, Any]]:
        """Per candidate: form, AICc, ΔAICc, backtest error, weight, R² (speedups)."""
        best = min((f.aicc for f in self.fits), default=math.nan)
        out = []
        for f in self.fits:
            bt = self.tests.get(f.model.name)
            d = describe(f)
            d.update(delta_aicc=f.aicc - best, r2=self.r2.get(f.model.name),
                     backtest_rmse_log=bt.rmse if bt else None,
                     backtest_max_z=max((abs(z) for z in bt.z), default=None) if bt else None,
                     backtest_passed=bt.passed if bt else None,
                     weight=self.weights.get(f.model.name, 0.0), chosen=f.model.name == self.chosen)
            out.append(d)
        return out


def candidates(scaling: str, extra: Sequence[Model] = ()) -> list[Model]:
    """The model family for a strong, weak or collective curve, plus any extra (e.g. an α–β form)."""
    if scaling == "collective":  # one collective's time vs N at one size: its α–β form, or growth
        return [*extra, *(m for m in WEAK if m.name in ("const+log", "const+N"))]
    return [*(WEAK if scaling == "weak" else STRONG), *extra]


def forecast(n, t, scaling: str = "strong", *, extra: Sequence[Model] = (), label: str = "",
             group: dict[str, Any] | None = None) -> Forecast:
    """Fit the family to one curve, backtest every candidate, weight, and decide whether to predict."""
    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    order = np.argsort(n, kind="stable")
    n, t = n[order], t[order]
    keep, dropped = screen_outliers(n, t)
    n, t = n[keep], t[keep]
    weak = scaling == "weak"
    uniq = np.unique(n)
    fits: list[ModelFit] = []
    for m in candidates(scaling, extra):
        if uniq.size < m.k + 1:  # needs at least one more distinct N than parameters
            continue
        try:
            fits.append(fit_model(m, n, t))
        except (ValueError, np.linalg.LinAlgError):  # pragma: no cover - degenerate data
            continue
    fits = _distinct(fits)
    r2 = {f.model.name: (r2_time(f, n, t) if scaling == "collective" else r2_speedup(f, n, t, weak))
          for f in fits}
    tests = {f.model.name: backtest(f, n, t) for f in fits}
    for f in fits:  # a model that extrapolated worse than its intervals said gets wider ones
        bt = tests[f.model.name]
        if bt and bt.z and all(math.isfinite(z) for z in bt.z):
            f.widen = max(1.0, math.sqrt(float(np.mean(np.square(bt.z)))))
    fc = Forecast(scaling, n, t, fits, tests, {}, r2, None, None, "", label, dict(group or {}),
                  list(dropped))
    if not fits:
        fc.refused = (f"only {uniq.size} distinct rank count(s): need at least 3 to fit and predict")
        return fc
    good = [f for f in fits if not _poor(r2[f.model.name])]
    if not good:
        top = max(r2.values(), key=lambda v: v if math.isfinite(v) else -math.inf)
        fc.refused = (f"poor fit: no model describes these times (best R² = {top:.3f} < {POOR_R2})"
                      if math.isfinite(top) else "poor fit: the speedups cannot be fitted")
        return fc
    passed = [f for f in good if (tests[f.model.name] is None or tests[f.model.name].passed)
              and math.isfinite(f.aicc)]
    if not passed:
        worst = {f.model.name: max(abs(z) for z in tests[f.model.name].z) for f in good
                 if tests[f.model.name] is not None}
        fc.refused = ("no model predicted its own largest N when it was left out "
                      f"(backtest |z| > {BACKTEST_MAX_Z:g}: " +
                      ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items(), key=lambda kv: kv[1])[:3])
                      + ")") if worst else "no model could be fitted to these times"
        return fc
    amin = min(f.aicc for f in passed)
    prior = _dilution_prior(passed)
    w = {f.model.name: prior[f.model.name] * math.exp(-(f.aicc - amin) / 2) for f in passed}
    tot = sum(w.values())
    w = {k: v / tot for k, v in w.items()}
    w = {k: v for k, v in w.items() if v >= MIN_WEIGHT}
    tot = sum(w.values())
    fc.weights = {k: v / tot for k, v in w.items()}
    fc.chosen = max(fc.weights, key=fc.weights.get)
    fc.why = _why(fc, passed, good, fits)
    if all(tests[f.model.name] is None for f in passed):
        fc.notes.append("too few rank counts to backtest (leave-largest-N-out): chosen by AICc only")
    return fc


# What an extra term looks like over a handful of N: log-like, power-like (N, N·log N, N² are hard
# to tell apart below N ≈ 8) or saturating.
_TERM_CLASS = {"log2N": "log", "rounds": "log", "N": "power", "NlogN": "power", "N2": "power",
               "N-1": "power", "ring": "saturating"}


def _dilution_prior(fits: list[ModelFit]) -> dict[str, float]:
    """Prior weight 1/(models of the same kind): three power-like terms must not out-vote one log
    term by their number alone (a dilution prior; measured on the bench_predict laws at 1% noise,
    it cut the log case's error from 6.4% to 4.0% and left the others as they were)."""
    def kind(f: ModelFit) -> tuple:
        return tuple(sorted({_TERM_CLASS[t] for t in f.model.terms if t in _TERM_CLASS}))
    count: dict[tuple, int] = {}
    for f in fits:
        count[kind(f)] = count.get(kind(f), 0) + 1
    return {f.model.name: 1.0 / count[kind(f)] for f in fits}


def _distinct(fits: list[ModelFit]) -> list[ModelFit]:
    """Keep the candidates the data support: drop a fit whose extra term (over a simpler candidate
    it contains) is not distinguishable from 0 (|coefficient| < MIN_TERM_Z standard errors: the data
    do not show that term), and a fit that came out the same curve as a simpler one (e.g.
    a + b/N + c·(N−1)/N with b ≥ c, which is Amdahl again)."""
    probe = np.array([1.0, 2.0, 3.0, 5.0, 7.0, 16.0, 100.0, 1e4])
    kept: list[tuple[ModelFit, np.ndarray]] = []
    simpler = [set(f.model.terms) for f in fits if f.model.terms]
    for f in sorted(fits, key=lambda f: f.k):
        terms = set(f.model.terms)
        base = max((b for b in simpler if b < terms), key=len, default=None)
        if base is not None:
            extra = [i for i, t in enumerate(f.model.terms) if t not in base]
            se = np.sqrt(np.maximum(np.diag(f.cov), 0.0))
            if any(not (f.theta[i] > MIN_TERM_Z * se[i]) for i in extra):
                continue
        curve = f.log_mean(probe * max(f.nmax / 8.0, 1.0))
        if not any(np.allclose(curve, c, rtol=0, atol=1e-6) for _, c in kept):
            kept.append((f, curve))
    return sorted((f for f, _ in kept), key=fits.index)


def _poor(r2: float) -> bool:
    return not (isinstance(r2, float) and (math.isnan(r2) or r2 >= POOR_R2))


def _why(fc: Forecast, passed: list[ModelFit], good: list[ModelFit], fits: list[ModelFit]) -> str:
    """One sentence: why this model, what it beat, what was excluded."""
    c = fc.chosen
    bt = fc.tests.get(c)
    parts = [f"{c} has the lowest AICc of the models that passed the leave-largest-N-out backtest"
             + (f" (its error there {100 * (math.exp(bt.rmse) - 1):.1f}%)" if bt else "")]
    failed = [f.model.name for f in good if f not in passed]
    if failed:
        parts.append("failed the backtest: " + ", ".join(failed))
    poor = [f.model.name for f in fits if f not in good]
    if poor:
        parts.append(f"R² < {POOR_R2}: " + ", ".join(poor))
    others = {k: v for k, v in fc.weights.items() if k != c}
    if others:
        parts.append(f"averaged with {', '.join(f'{k} (w={v:.2f})' for k, v in others.items())}")
    return "; ".join(parts)
