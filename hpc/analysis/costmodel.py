"""α–β (latency–bandwidth) cost model of allreduce algorithms, fitted to collective records.

Each algorithm has its own form, linear in α (seconds per message) and β (seconds per byte):
  ring, mpi, ps, unknown : 2(p−1)·α + 2(p−1)/p · n·β
  recursive_doubling     : ⌈log2 p⌉·(α + n·β)
  rabenseifner           : 2⌈log2 p⌉·α + 2(p−1)/p · n·β
  tree                   : 2⌈log2 p⌉·(α + n·β)
(⌈log2 p⌉: the number of rounds, which equals log2 p for powers of two). The fit is non-negative
least squares on relative residuals (t − model)/t, so 8-byte latencies count as much as 64 MB
transfers; the 95% CIs come from the covariance with a Student-t quantile. Exposed as
`hpc fit PATH --law alpha-beta` (or `--costmodel`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from hpc.analysis.laws import POOR_R2, poor_fit
from hpc.errors import HpcError
from hpc.kernels import busbw as busbw_gbps

FORMS: dict[str, str] = {
    "ring": "2(p−1)·α + 2(p−1)/p·n·β",
    "recursive_doubling": "⌈log2 p⌉·(α + n·β)",
    "rabenseifner": "2⌈log2 p⌉·α + 2(p−1)/p·n·β",
    "tree": "2⌈log2 p⌉·(α + n·β)",
}
_ALIASES = {"rd": "recursive_doubling", "recursive-doubling": "recursive_doubling",
            "recdoubling": "recursive_doubling", "rabenseifner": "rabenseifner",
            "rab": "rabenseifner", "binomial": "tree", "tree": "tree", "ring": "ring"}


def form_for(algo: str) -> str:
    """The cost-model form for an algorithm name or spec (mpi, ps, auto and unknown: the ring form)."""
    key = str(algo).strip().lower()
    if ":" in key:  # a spec: package.module:func or path/to/file.py:func -> the module's name
        key = key.rsplit(":", 1)[0]
        key = key[:-3].replace("\\", "/").rsplit("/", 1)[-1] if key.endswith(".py") else key
    key = key.rsplit(".", 1)[-1]
    key = _ALIASES.get(key, key)
    if key in FORMS:
        return key
    if "recursive" in key or "doubling" in key:
        return "recursive_doubling"
    if "raben" in key:
        return "rabenseifner"
    if "tree" in key:
        return "tree"
    return "ring"


def design(form: str, p, n):
    """Columns (coefficient of α, coefficient of β) of the form at rank counts p and sizes n (bytes)."""
    import numpy as np

    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    rounds = np.ceil(np.log2(np.maximum(p, 1.0)))
    ring_b = 2.0 * (p - 1.0) / p * n
    if form == "recursive_doubling":
        return np.column_stack([rounds, rounds * n])
    if form == "rabenseifner":
        return np.column_stack([2.0 * rounds, ring_b])
    if form == "tree":
        return np.column_stack([2.0 * rounds, 2.0 * rounds * n])
    return np.column_stack([2.0 * (p - 1.0), ring_b])


@dataclass
class CostFit:
    """α and β of one algorithm with their 95% CIs and the quality of the fit."""

    algo: str
    form: str
    formula: str
    alpha_s: float
    beta_s_per_byte: float
    alpha_ci95: list[float] | None
    beta_ci95: list[float] | None
    bandwidth_GBps: float | None
    r2: float
    smape: float
    n_obs: int
    nps: list[int]
    sizes: list[int]
    cov: list[list[float]] | None = None
    dof: int = 0
    flags: list[dict[str, str]] = field(default_factory=list)

    @property
    def poor(self) -> bool:
        """R² below POOR_R2: the form does not describe the data, so it predicts nothing."""
        return poor_fit(self.r2)

    def predict(self, p, n):
        """Predicted time (s) at rank count(s) p and size(s) n, with a 95% CI of the mean."""
        import numpy as np
        from scipy.special import stdtrit

        x = design(self.form, np.atleast_1d(p), np.atleast_1d(n))
        t = x @ np.array([self.alpha_s, self.beta_s_per_byte])
        if self.cov is None or self.dof <= 0:
            return t, None
        se = np.sqrt(np.einsum("ij,jk,ik->i", x, np.array(self.cov), x))
        q = float(stdtrit(self.dof, 0.975))
        return t, np.column_stack([np.maximum(t - q * se, 0.0), t + q * se])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/inf → null)."""
        from hpc.analysis.groups import json_safe

        return json_safe(asdict(self))


def fit_costmodel(p, n, t, algo: str) -> CostFit:
    """Fit α, β ≥ 0 of `algo`'s form to times t (s) at rank counts p and sizes n (bytes)."""
    import numpy as np
    from scipy.special import stdtrit
    from scipy.optimize import nnls

    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    keep = p >= 2
    p, n, t = p[keep], n[keep], t[keep]
    if t.size == 0:
        raise HpcError(f"{algo}: no records with np ≥ 2 (a single rank does no communication)")
    if np.any(t <= 0) or not np.all(np.isfinite(t)):
        raise HpcError(f"{algo}: times must be positive and finite")
    form = form_for(algo)
    x = design(form, p, n)
    if np.linalg.matrix_rank(x) < 2:
        raise HpcError(f"{algo}: α and β cannot be separated: need ≥ 2 message sizes "
                       "(or ≥ 2 rank counts)")
    xw = x / t[:, None]
    theta, _ = nnls(xw, np.ones_like(t))
    resid = 1.0 - xw @ theta
    dof = t.size - 2
    flags: list[dict[str, str]] = []
    cov = ci_a = ci_b = None
    if dof > 0:
        s2 = float(resid @ resid) / dof
        c = s2 * np.linalg.pinv(xw.T @ xw)
        q = float(stdtrit(dof, 0.975))
        se = np.sqrt(np.maximum(np.diag(c), 0.0))
        ci_a = [max(0.0, float(theta[0] - q * se[0])), float(theta[0] + q * se[0])]
        ci_b = [max(0.0, float(theta[1] - q * se[1])), float(theta[1] + q * se[1])]
        cov = c.tolist()
    else:
        flags.append({"code": "no_dof", "message": "two measurements for two parameters: no CI"})
    for name, v in (("α", theta[0]), ("β", theta[1])):
        if v == 0.0:
            flags.append({"code": "at_zero", "message": f"{name} fitted at its bound 0: the data do "
                                                        f"not show a {name} term"})
    model = x @ theta
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum((t - model) ** 2)) / ss_tot if ss_tot > 0 else math.nan
    smape = float(100.0 * np.mean(2.0 * np.abs(t - model) / (np.abs(t) + np.abs(model))))
    if len(np.unique(p)) < 2:
        flags.append({"code": "one_np", "message": "one rank count only: the p-dependence is the "
                                                   "form's assumption, not measured"})
    if poor_fit(r2):
        flags.append({"code": "poor_fit", "message": f"R² = {r2:.3f} < {POOR_R2}: the α–β form describes "
                                                     "these times poorly; no prediction"})
    return CostFit(algo=algo, form=form, formula=FORMS[form], alpha_s=float(theta[0]),
                   beta_s_per_byte=float(theta[1]), alpha_ci95=ci_a, beta_ci95=ci_b,
                   bandwidth_GBps=(1e-9 / theta[1]) if theta[1] > 0 else None, r2=r2, smape=smape,
                   n_obs=int(t.size), nps=sorted({int(v) for v in p}),
                   sizes=sorted({int(v) for v in n}), cov=cov, dof=dof, flags=flags)


def fit_collective_records(records: Iterable[dict[str, Any]]) -> list[CostFit]:
    """One CostFit per algorithm from ok collective records (time_s vs np and size_bytes)."""
    from hpc.analysis.groups import ok_records

    records = list(records)
    coll = [r for r in ok_records(records) if r.get("kind") == "collective"
            and isinstance(r.get("size_bytes"), (int, float))]
    if not coll:
        raise HpcError("no ok collective records to fit the α–β model to")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in coll:
        by.setdefault(str(r.get("algo") or "unknown"), []).append(r)
    fits, errors = [], []
    for algo in sorted(by):
        rs = by[algo]
        try:
            fits.append(fit_costmodel([r["np"] for r in rs], [r["size_bytes"] for r in rs],
                                      [r["time_s"] for r in rs], algo))
        except HpcError as e:
            errors.append(str(e))
    if not fits:
        raise HpcError("; ".join(errors))
    for e in errors:
        print(f"hpc: note: skipped {e}", file=sys.stderr)
    return fits


def predictions(fits: list[CostFit], nps: list[int], sizes: list[int]) -> list[dict[str, Any]]:
    """Predicted time, busbw and the fastest algorithm at every (np, size) requested; a poor fit
    (R² < POOR_R2, as for the scaling laws) predicts nothing and cannot be the fastest."""
    out = []
    for p in nps:
        for n in sizes:
            rows = []
            for f in fits:
                if f.poor:
                    rows.append({"algo": f.algo, "time_s": None, "time_ci95": None, "busbw_GBps": None,
                                 "poor_fit": True})
                    continue
                t, ci = f.predict(p, n)
                tt = float(t[0])
                busbw = busbw_gbps(n, tt, p) if tt > 0 else None
                rows.append({"algo": f.algo, "time_s": tt,
                             "time_ci95": [float(ci[0, 0]), float(ci[0, 1])] if ci is not None
                             else None, "busbw_GBps": busbw})
            timed = [r for r in rows if r["time_s"] is not None]
            fastest = min(timed, key=lambda r: r["time_s"])["algo"] if timed else None
            out.append({"np": int(p), "size_bytes": int(n), "algos": rows, "fastest": fastest})
    return out


def parse_list(text: str | None, conv) -> list[int]:
    if not text:
        return []
    try:
        vals = [conv(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise HpcError(f"bad list {text!r}") from None
    if any(v < 1 for v in vals):
        raise HpcError(f"values must be ≥ 1 in {text!r}")
    return vals


def _ci(c, scale: float = 1.0) -> str:
    return f"[{c[0] * scale:.3g}, {c[1] * scale:.3g}]" if c else "—"


def fit_table(fits: list[CostFit]):
    """α, 1/β and fit quality per algorithm."""
    from hpc.table import Table, fmt_bytes, fmt_num

    tab = Table("α–β cost model per algorithm (time_s vs np and size_bytes, relative least squares)",
                ["algo", "form", "α (µs)", "α 95% CI", "1/β (GB/s)", "β 95% CI (ns/B)", "R²",
                 "SMAPE %", "obs", "np", "sizes"])
    for f in fits:
        tab.add(f.algo, f.formula, fmt_num(f.alpha_s * 1e6), _ci(f.alpha_ci95, 1e6),
                fmt_num(f.bandwidth_GBps), _ci(f.beta_ci95, 1e9), fmt_num(f.r2), fmt_num(f.smape, 3),
                f.n_obs, ",".join(map(str, f.nps)), f"{fmt_bytes(f.sizes[0])}–{fmt_bytes(f.sizes[-1])}")
        tab.notes += [f"{f.algo}: {fl['message']}" for fl in f.flags]
    return tab


def prediction_table(fits: list[CostFit], preds: list[dict[str, Any]]):
    """Predicted time and busbw per algorithm at each requested (np, size), and the fastest."""
    from hpc.table import Table, fmt_bytes, fmt_num, fmt_time

    tab = Table("Predicted allreduce time (busbw), extrapolated from the fitted α, β",
                ["np", "size", *[f.algo for f in fits], "fastest"])
    for pr in preds:
        tab.add(pr["np"], fmt_bytes(pr["size_bytes"]),
                *["poor fit" if a["time_s"] is None else f"{fmt_time(a['time_s'])} ({fmt_num(a['busbw_GBps'], 3)} GB/s)"
                  for a in pr["algos"]], pr["fastest"] or "—")
    tab.notes.append("the forms assume one rank per link (no contention, no node hierarchy): "
                     "treat predictions far beyond the measured np as a ranking, not a promise")
    if any(f.poor for f in fits):
        tab.notes.append(f"poor fit: R² < {POOR_R2}, the α–β form does not describe those times; "
                         "no prediction, never 'fastest'")
    return tab
