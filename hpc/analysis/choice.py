"""Model choice: do the data support the chosen law, the other one, or a communication-term model?

Compared by AICc, BIC and leave-one-N-out cross-validation in log-time space.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hpc.analysis.laws import AMDAHL, GUSTAFSON, _log_g, fit_core

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
