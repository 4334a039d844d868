"""The verdict tables of `hpc compare`: A vs B or against a baseline, as rich/markdown (the verdict
reads "same within ±X%", with the outliers named and the points more repetitions would decide in the
notes), as CSV of plain numbers, and the per-algorithm summary against a baseline."""

from __future__ import annotations

import math
from typing import Any, Iterable

from hpc.analysis.stats import MIN_REPS, NOISE_BAND_PCT


def _fmt_value(v: float, unit: str) -> str:
    from hpc.table import fmt_num, fmt_time

    return fmt_time(v) if unit == "s" else f"{fmt_num(v)} {unit}"


def _ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def verdict_text(r: dict[str, Any]) -> str:
    """The verdict as a table shows it: "same within ±X%" (X: the smallest change the point's scatter
    would have called), "inconclusive (≈K more reps)" when repetitions ran out, else the verdict."""
    v, more = r["verdict"], r.get("needs_reps")
    if v == "same" and r.get("detectable_pct") is not None:
        x = r["detectable_pct"]
        return f"same within ±{x:.0f}%" if math.isfinite(x) and x < 1000 else "same (scatter too wide to say)"
    if v == "inconclusive" and r.get("inconclusive_why") == "budget":
        return f"inconclusive (≈{more} more reps)" if more else "inconclusive"
    if v == "too few reps" and more:
        return f"too few reps ({more} more)"
    return v


def verdict_notes(rows: list[dict[str, Any]], rep_word: str = "reps") -> list[str]:
    """Notes under a verdict table: the outliers each estimate named (and whether the trimmed mean set
    them aside), and the points a few more repetitions would decide."""
    notes = []
    aside, kept = [], []
    for r in rows:
        outl = r.get("outliers") or []
        if not outl:
            continue
        word = r.get("rep_word", "rep")
        what = ", ".join(f"{o['index']} ({o['ratio']:.2f}×)" if "ratio" in o else
                         f"{o['side']} {o['index']} ({_fmt_value(o['value'], r['unit'])})" for o in outl[:4])
        line = f"{r['point']} {r['name']}: {word}{'es' if word == 'batch' and len(outl) > 1 else ''}" \
               f"{'s' if word == 'rep' and len(outl) > 1 else ''} {what}{' …' if len(outl) > 4 else ''}"
        (aside if outl[0]["set_aside"] else kept).append(line)
    if aside:
        notes.append("outliers (modified z-score beyond what normal noise reaches), set aside by the trimmed mean — "
                     + "; ".join(aside[:6]) + (" …" if len(aside) > 6 else ""))
    if kept:
        notes.append(f"outliers that still widen their interval (under 5 {rep_word} nothing is trimmed; "
                     "20% per side from 5) — "
                     + "; ".join(kept[:6]) + (" …" if len(kept) > 6 else ""))
    open_ = [r for r in rows if r["verdict"] == "same" and not r.get("decided") and r.get("needs_reps")
             and abs(math.log(r["ratio"])) > math.log1p(r["band_pct"] / 100)]
    if open_:
        shown = "; ".join(f"{r['point']} {r['name']} at {r['ratio']:.2f}× needs ≈{r['needs_reps']} more"
                          for r in open_[:4])
        notes.append(f"{len(open_)} point(s) read 'same' only because their interval is wide (the estimate "
                     f"lies beyond the band): {shown}{' …' if len(open_) > 4 else ''} {rep_word} "
                     "(`--batches auto` / `--reps auto` add them until every verdict is clear)")
    return notes


def comparison_table(rows: list[dict[str, Any]], title: str, a_name: str = "A",
                     b_name: str = "B", notes: Iterable[str] = (), wide: bool = False, rep_word: str = "reps"):
    """One row per point: ratio with its 95% CI, p-value, verdict with the change it could detect
    (`wide`: medians, change, band, reps and the detectable change as columns too)."""
    from hpc.table import Table

    cols = ["point", "algo", f"{b_name}/{a_name}", "95% CI", "p", "verdict"]
    if wide:
        cols[2:2] = ["metric", f"{a_name} median", f"{b_name} median"]
        cols[-2:-2] = ["change", "band", "detects", "reps"]
    tab = Table(title, cols)
    for r in rows:
        cells = [r["point"], r["name"], f"{r['ratio']:.3f}×", _ci(r["ci95"]),
                 "—" if r["p_value"] is None else f"{r['p_value']:.2g}", verdict_text(r)]
        if wide:
            direction = "higher better" if r["higher_is_better"] else "lower better"
            det = r.get("detectable_pct")
            cells[2:2] = [f"{r['metric']} ({direction})", _fmt_value(r["a_median"], r["unit"]),
                          _fmt_value(r["b_median"], r["unit"])]
            cells[-2:-2] = [f"{r['change_pct']:+.1f}%", f"±{r['band_pct']:.0f}%",
                            "—" if det is None or not math.isfinite(det) else f"±{det:.0f}%",
                            f"{r['a_n']}/{r['b_n']}"]
        tab.add(*cells)
    metrics = sorted({f"{r['metric']} ({'higher' if r['higher_is_better'] else 'lower'} is better)"
                      for r in rows})
    tab.notes += list(notes)
    tab.notes += verdict_notes(rows, rep_word)
    bands = sorted({round(r["band_pct"]) for r in rows}) or [NOISE_BAND_PCT]
    shown = "/".join(f"±{b:g}%" for b in bands)
    tab.notes.append(f"ratio of {', '.join(metrics)} (t on log ratios; 20%-trimmed where one stands apart); worse/better "
                     f"only when the whole 95% CI lies beyond the noise band ({shown}; per point with --wide) "
                     "(p < 0.05 means the same); 'same within ±X%': a change of X% or more would have been "
                     f"called; fewer than {MIN_REPS} repetitions: 'too few reps'")
    return tab


def csv_table(rows: list[dict[str, Any]]):
    """The comparison as plain numbers for spreadsheets: one column per quantity, units in headers."""
    from hpc.table import Table

    unit = rows[0]["unit"] if rows and len({r["unit"] for r in rows}) == 1 else "metric units"
    tab = Table("", ["point", "algo", "metric", f"a_median ({unit})", f"b_median ({unit})", "ratio_b_over_a",
                     "ci95_low", "ci95_high", "change (%)", "noise_band (%)", "p_value", "a_reps",
                     "b_reps", "relative_to", "verdict", "detectable (%)", "needs_reps", "outliers"])
    for r in rows:
        ci = r["ci95"] or [None, None]
        det = r.get("detectable_pct")
        out = " ".join(f"{o.get('side', '')}{o['index']}" for o in r.get("outliers") or [])
        tab.rows.append([str(x) if x is not None else "" for x in (
            r["point"], r["name"], r["metric"], r["a_median"], r["b_median"], r["ratio"], ci[0], ci[1],
            r["change_pct"], r["band_pct"], r["p_value"], r["a_n"], r["b_n"], r.get("relative_to"),
            r["verdict"], det if det is not None and math.isfinite(det) else None, r.get("needs_reps"),
            out or None)])
    return tab


def baseline_summary(rows: list[dict[str, Any]]):
    """Per algorithm: geometric-mean ratio to the baseline (metric-direction aware) and tallies."""
    from hpc.table import Table

    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    base = rows[0].get("baseline", "baseline")
    tab = Table(f"Summary against {base} (speed ratio > 1 means faster than {base})",
                ["algorithm", "points", "geomean speed ratio", "min", "max", "better", "same", "worse"])
    for name, rs in sorted(by.items()):
        speed = [r["ratio"] if r["higher_is_better"] else 1.0 / r["ratio"] for r in rs]
        gm = math.exp(sum(math.log(s) for s in speed) / len(speed))
        tab.add(name, len(rs), f"{gm:.3f}×", f"{min(speed):.3f}×", f"{max(speed):.3f}×",
                sum(r["verdict"] == "better" for r in rs), sum(r["verdict"] == "same" for r in rs),
                sum(r["verdict"] == "worse" for r in rs))
    return tab
