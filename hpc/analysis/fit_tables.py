"""Human tables of `hpc fit`: one summary row per curve, and per curve its points, its predictions
(the chosen model of the family, with 95 % prediction intervals) and the model choice behind them.

A forecast that refuses (poor fit, failed backtest) shows no predicted time anywhere, the model
table included: only the reason.
"""

from __future__ import annotations

from typing import Any, Callable

from hpc.analysis.laws import AMDAHL, POOR_R2, PREDICT_FACTORS, poor_fit


def _ci(ci: list[float] | None, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else "—"


def _prediction_cell(r: Any) -> str | None:
    """'S @N (model)' at 10× the largest N, or why there is none."""
    from hpc.table import fmt_num

    mc = r.model_choice
    if mc.get("refused"):
        return "poor fit" if poor_fit(r.r2) else "no prediction"
    pr = next((x for x in r.predictions if x.get("factor") == PREDICT_FACTORS[1]), None)
    if pr is None:
        return None
    if pr["time_s"] is None:
        return "too far out"
    s = f"{fmt_num(pr['speedup'], 3)} @{pr['np']}" if pr.get("speedup") is not None else "—"
    return s if pr["model"] == r.law else f"{s} ({pr['model']})"


def summary_table(results: list, wide: bool = False):
    """One row per fitted curve (`wide`: also 1−P, SMAPE, the Amdahl ceiling and the chosen model)."""
    from hpc.table import Table, fmt_bytes, fmt_num

    cols = ["kind", "algo/sync", "size/model", "law", "N", "P [95% CI]", "R²",
            f"S @ {PREDICT_FACTORS[1]}×N", "flags"]
    if wide:
        cols[7:7] = ["1−P", "SMAPE %", "ceiling", "model"]
    tab = Table("Scaling fits: P = parallel fraction, 95% CI from all repetitions", cols)
    for r in results:
        g = r.group
        v = g.get("variant")
        v = fmt_bytes(v) if g.get("kind") == "collective" and isinstance(v, (int, float)) else v
        if g.get("nodes") is not None:
            v = f"{v if v is not None else ''} ({g['nodes']} node{'s' if g['nodes'] > 1 else ''})"
        cells = [g.get("kind", "csv"), g.get("name", r.label), v if v is not None else "",
                 r.law, f"{r.points[0]['np']}–{r.points[-1]['np']}", f"{r.p:.4f} {_ci(r.ci95, 3)}",
                 fmt_num(r.r2, 3), _prediction_cell(r), " ".join(f["code"] for f in r.flags)]
        if wide:
            cells[7:7] = [f"{r.serial_fraction:.4f}", fmt_num(r.smape, 3),
                          fmt_num(r.ceiling, 3) if r.law == AMDAHL else "none",
                          r.model_choice.get("chosen") or "—"]
        tab.add(*cells)
    if any(poor_fit(r.r2) for r in results):
        tab.notes.append(f"R² < {POOR_R2}: the law does not describe these points (poor_fit); a "
                         "prediction is still given when another model of the family fits and "
                         "predicts its own left-out largest N (the model is named)")
    if any(r.model_choice.get("refused") for r in results):
        tab.notes.append("no prediction: no model fits, or none predicted its own largest N "
                         "(hpc predict PATH says why)")
    if any(r.group.get("kind") == "collective" for r in results):
        tab.notes.append("collective records: the α–β cost model is usually the apt fit "
                         "(hpc fit PATH --law alpha-beta)")
    if any(r.flags for r in results):
        tab.notes.append("flags are explained in --json output and with -v")
    return tab


def shown(unit: str | None, weak: bool) -> Callable[[float, float], str]:
    """How a (predicted) time is shown: as a time, or for a throughput curve (`run --higher-better`,
    time_s = work/figure) as the figure itself in its unit, work = N for weak scaling, else 1."""
    from hpc.table import fmt_time

    if not unit:
        return lambda t, n: fmt_time(t)
    return lambda t, n: f"{(n if weak else 1) / t:.4g} {unit}"


def prediction_table(title: str, rows: list[dict[str, Any]], weak: bool = False, unit: str | None = None):
    """Predicted time (or figure) with its 95% prediction interval, speedup, efficiency and model per N."""
    from hpc.table import Table, fmt_num

    show = shown(unit, weak)
    tab = Table(title, ["N", unit or "time", "95% prediction interval", "scaled speedup" if weak else "speedup",
                        "efficiency", "model", "note"])
    for p in rows:
        n = f"{p['np']}" + (f" ({p['factor']:g}×)" if p.get("factor") else "")
        if p["time_s"] is None:
            tab.add(n, "—", "—", "—", "—", p.get("model") or "—", f"no prediction: {p['reason']}")
            continue
        lo, hi = sorted(p["pi95"], reverse=bool(unit))  # a figure's interval runs the other way
        tab.add(n, show(p["time_s"], p["np"]), f"[{show(lo, p['np'])}, {show(hi, p['np'])}]",
                fmt_num(p["speedup"]), fmt_num(p["efficiency"], 3), p["model"], "; ".join(p["flags"]))
    return tab


def model_table(mc: dict[str, Any], unit: str | None = None, weak: bool = False):
    """Every candidate of the family: AICc, backtest, weight (and predicted times unless refused)."""
    from hpc.table import Table, fmt_num

    show = shown(unit, weak)

    at = next((list(m.get("predicted_time_s", {})) for m in mc["models"]
               if m.get("predicted_time_s")), []) if not mc.get("refused") else []
    tab = Table("Model choice (log-space least squares; backtest = refit without the largest N, "
                "then the 2 largest)",
                ["model", "form", "k", "AICc", "ΔAICc", "backtest error", "max |z|", "R²", "weight",
                 *[f"{unit or 'time'} @ N={q}" for q in at]])
    for m in mc["models"]:
        err = m.get("backtest_rmse_log")
        pt = m.get("predicted_time_s") or {}
        tab.add(m["name"] + (" ←" if m.get("chosen") else ""), m["form"], m["k"], fmt_num(m["aicc"]),
                fmt_num(m["delta_aicc"], 3),
                "—" if err is None else f"{100 * err:.1f}%",
                fmt_num(m.get("backtest_max_z"), 2), fmt_num(m.get("r2"), 4), f"{m['weight']:.2f}",
                *[show(pt[q], float(q)) if q in pt else "—" for q in at])
    tab.notes.append(mc["verdict"])
    tab.notes += mc.get("notes", [])
    return tab


def detail_tables(r: Any) -> list:
    """Per-point, prediction and model-choice tables for one fitted curve."""
    from hpc.table import Table, fmt_num, fmt_time

    head = (f"{r.label}: {r.law}, P = {r.p:.4f} {_ci(r.ci95)}"
            + (f", bootstrap {_ci(r.ci95_bootstrap)}" if r.ci95_bootstrap else "")
            + f", serial fraction {r.serial_fraction:.4f}, R² {fmt_num(r.r2)}, SMAPE "
            f"{fmt_num(r.smape, 3)}%")
    unit = getattr(r, "figure_unit", None)
    weak = r.law != AMDAHL
    if unit:  # a throughput: show the figure as printed (time_s is work/figure, e.g. "1.659 ns")
        cols = [f"median ({unit})", "min", "max"]

        def cells(p: dict) -> list[str]:
            work = p["np"] if weak else 1
            return [f"{work / p[k]:.4g}" for k in ("time_median_s", "time_max_s", "time_min_s")]
    else:
        cols = ["median time", "min", "max"]

        def cells(p: dict) -> list[str]:
            return [fmt_time(p["time_median_s"]), fmt_time(p["time_min_s"]), fmt_time(p["time_max_s"])]
    pts = Table(head, ["N", "reps", *cols, "speedup", "fit", "efficiency", "Karp–Flatt e", "serial (law)", "note"])
    for p in r.points:
        pts.add(p["np"], p["reps"], *cells(p), fmt_num(p["speedup"]), fmt_num(p["speedup_fit"]),
                fmt_num(p["efficiency"], 3), fmt_num(p["karp_flatt"], 3),
                fmt_num(p["serial_fraction_point"], 3), "superlinear" if p["superlinear"] else "")
    if unit:
        pts.notes.append(f"a throughput in {unit}: the fits and predicted times use the equivalent time "
                         f"{'N' if weak else '1'}/figure (seconds per unit of work)")
    if r.law == AMDAHL:
        pts.notes.append(f"Amdahl ceiling 1/(1−P) = {fmt_num(r.ceiling)}")
    pts.notes += [f"{f['code']}: {f['message']}" for f in r.flags]
    tables = [pts]
    if r.predictions:  # none when the forecast refuses: the no_prediction flag above says why
        tables.append(prediction_table("Predictions (chosen model, 95% prediction intervals; "
                                       "same as hpc predict)", r.predictions, weak, unit))
    return [*tables, model_table(r.model_choice, unit, weak)]
