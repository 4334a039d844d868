"""`hpc predict`: predictions per curve of a sweep directory or CSV, and their backtest against
measurements held out of the fit (`--check`), as JSON rows and tables.

    >>> fcs, notes = forecast_path("runs/train")                   # [(Curve, Forecast)]
    >>> rows = predict_rows(fcs, [16, 24, 512])                    # np, time_s, pi95, speedup, model, flags
    >>> rows, summary = check_rows(fcs, curves_from_path("runs/heldout")[0])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc.analysis.curves import Curve, check_points, curves_from_path
from hpc.analysis.predict import Forecast, forecast
from hpc.errors import HpcError

DEFAULT_FACTORS = (2, 10)  # without --np: 2× and 10× the largest measured N


def forecast_curves(curves: list[Curve], skipped: list[str]) -> list[tuple[Curve, Forecast]]:
    """A Forecast per curve that has anything to fit (the others are described in `skipped`)."""
    out = []
    for c in curves:
        try:
            check_points(c.n, c.t, c.label)
        except HpcError as e:
            skipped.append(str(e))
            continue
        out.append((c, forecast(c.n, c.t, c.scaling, extra=c.extra, label=c.label, group=c.group)))
    return out


def forecast_path(path: str | Path, scaling: str | None = None, skipped: list[str] | None = None,
                  notes: list[str] | None = None) -> list[tuple[Curve, Forecast]]:
    """Forecasts for every curve under `path` (records file/dir or np,time_s CSV)."""
    skipped = [] if skipped is None else skipped
    curves, split = curves_from_path(path, scaling, skipped)
    if notes is not None:
        notes.extend(split)
    fcs = forecast_curves(curves, skipped)
    if not fcs:
        raise HpcError(f"{path}: nothing to predict: " + ("; ".join(skipped) or "no curves"))
    return fcs


def default_nps(fcs: list[tuple[Curve, Forecast]]) -> list[int]:
    nmax = max(int(max(c.n)) for c, _ in fcs)
    return [f * nmax for f in DEFAULT_FACTORS]


def _row(c: Curve, fc: Forecast, q: int) -> dict[str, Any]:
    row = fc.row(q)
    return {"curve": c.label, "group": c.group, "scaling": c.scaling, **row, "why": fc.why or None}


def predict_rows(fcs: list[tuple[Curve, Forecast]], nps: list[int]) -> list[dict[str, Any]]:
    """One row per curve and asked N (time_s null, with the reason, where there is no prediction)."""
    return [_row(c, fc, int(q)) for c, fc in fcs for q in nps]


def _match(train: list[tuple[Curve, Forecast]], held: list[Curve]) -> list[tuple[Curve, Forecast, Curve]]:
    """Pair held-out curves with the training curves they continue (same group and node count)."""
    if len(train) == 1 and len(held) == 1:
        return [(train[0][0], train[0][1], held[0])]
    by = {c.key: (c, fc) for c, fc in train}
    return [(*by[h.key], h) for h in held if h.key in by]


def check_rows(fcs: list[tuple[Curve, Forecast]], held: list[Curve],
               nps: list[int] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predicted vs measured at every held-out N: error, and whether the 95% interval covered the
    measured median (and what share of the single runs it covered)."""
    import numpy as np

    pairs = _match(fcs, held)
    if not pairs:
        raise HpcError("no held-out curve matches a training curve (same kind, name, size/model, "
                       "scaling and node count)")
    rows = []
    for c, fc, h in pairs:
        hn, ht = np.asarray(h.n, dtype=float), np.asarray(h.t, dtype=float)
        for q in sorted({int(v) for v in hn}):
            if nps and q not in nps:
                continue
            runs = ht[hn == q]
            row = _row(c, fc, q)
            med = float(np.median(runs))
            row.update(measured_s=med, runs=int(runs.size), in_training=bool(q in set(c.n)),
                       error_pct=None, covered=None, runs_covered=None)
            if row["time_s"] is not None:
                lo, hi = row["pi95"]
                row.update(error_pct=100.0 * (row["time_s"] / med - 1.0), covered=bool(lo <= med <= hi),
                           runs_covered=float(np.mean((runs >= lo) & (runs <= hi))))
            rows.append(row)
    return rows, summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MAPE and coverage over the rows that got a prediction; refused and flagged counts."""
    pred = [r for r in rows if r["time_s"] is not None]
    clean = [r for r in pred if not _serious(r["flags"])]

    def mape(rs):
        return sum(abs(r["error_pct"]) for r in rs) / len(rs) if rs else None

    return {"points": len(rows), "predicted": len(pred), "refused": len(rows) - len(pred),
            "flagged": len(pred) - len(clean), "mape_pct": mape(pred), "mape_unflagged_pct": mape(clean),
            "coverage": sum(r["covered"] for r in pred) / len(pred) if pred else None,
            "runs_coverage": (sum(r["runs_covered"] * r["runs"] for r in pred) /
                              sum(r["runs"] for r in pred)) if pred else None}


SERIOUS = ("models_disagree", "backtest_bias", "widened", "lack_of_fit")


def _serious(flags: list[str]) -> bool:
    """Flags that say: do not trust the number, trust the interval."""
    return any(f.startswith(SERIOUS) for f in flags)


# --------------------------------------------------------------------------- tables

def _head(c: Curve, fc: Forecast) -> str:
    if fc.refused:
        return f"{c.label}: no prediction — {fc.refused}"
    return f"{c.label}: {fc.chosen} = {fc.fit(fc.chosen).model.text()} — {fc.why}"


def predict_tables(fcs: list[tuple[Curve, Forecast]], rows: list[dict[str, Any]], detail: bool = False):
    """Per curve: predicted time, 95% prediction interval, speedup, efficiency, model, flags."""
    from hpc.analysis.fit_tables import prediction_table

    out = []
    for c, fc in fcs:
        tab = prediction_table(_head(c, fc), [r for r in rows if r["curve"] == c.label],
                               c.scaling == "weak", c.figure_unit)
        tab.notes += fc.notes
        out.append(tab)
        if detail:
            out.append(_models(fc, c))
    return out


def _models(fc: Forecast, c: Curve):
    from hpc.analysis.fit_tables import model_table

    verdict = f"no prediction: {fc.refused}" if fc.refused else fc.why
    return model_table({"models": fc.model_table(), "verdict": verdict, "refused": fc.refused,
                        "notes": []}, c.figure_unit, c.scaling == "weak")


def check_tables(fcs: list[tuple[Curve, Forecast]], rows: list[dict[str, Any]],
                 summary: dict[str, Any], detail: bool = False):
    """Per curve: predicted vs measured, error, covered; then the overall summary."""
    from hpc.analysis.fit_tables import shown
    from hpc.table import Table

    out = []
    for c, fc in fcs:
        mine = [r for r in rows if r["curve"] == c.label]
        if not mine:
            continue
        tab = Table(_head(c, fc), ["N", "predicted", "95% prediction interval", "measured (median)",
                                   "error", "covered", "runs inside", "note"])
        show = shown(c.figure_unit, c.scaling == "weak")
        for r in mine:
            meas = f"{show(r['measured_s'], r['np'])} ({r['runs']} runs)"
            if r["time_s"] is None:
                tab.add(r["np"], "—", "—", meas, "—", "—", "—", f"no prediction: {r['reason']}")
                continue
            lo, hi = sorted(r["pi95"], reverse=bool(c.figure_unit))
            inside = round(r["runs_covered"] * r["runs"])
            tab.add(r["np"], show(r["time_s"], r["np"]), f"[{show(lo, r['np'])}, {show(hi, r['np'])}]", meas,
                    f"{r['error_pct']:+.1f}%", "yes" if r["covered"] else "NO",
                    f"{inside}/{r['runs']}", "; ".join(([] if not r["in_training"] else ["in training"])
                                                      + r["flags"]))
        out.append(tab)
        if detail:
            out.append(_models(fc, c))
    s = summary
    tot = Table("Backtest summary", ["held-out points", "predicted", "refused", "flagged",
                                     "MAPE", "MAPE unflagged", "intervals covering", "runs inside"])
    pct = lambda v: "—" if v is None else f"{v:.1f}%"  # noqa: E731
    tot.add(s["points"], s["predicted"], s["refused"], s["flagged"], pct(s["mape_pct"]),
            pct(s["mape_unflagged_pct"]), pct(None if s["coverage"] is None else 100 * s["coverage"]),
            pct(None if s["runs_coverage"] is None else 100 * s["runs_coverage"]))
    tot.notes.append("error = predicted/measured − 1 against the median of the held-out runs; covered: "
                     "that median lies in the 95% prediction interval (which is for one run's time); "
                     f"flagged: {', '.join(SERIOUS)}")
    return [*out, tot]
