"""Which scheme is fastest: per point measured by several algorithms/schemes, them ranked with a
robust typical value, each one's ratio to the fastest and a verdict that says how small a difference
it could have seen; the notes name the rows left out (and why), the repetitions that stand apart as
outliers, and the comparisons a few more repetitions would decide.

    >>> ranked = rank_schemes(load_records("runs/sync"))
    >>> ranked[0]["ranking"][0]["name"], ranked[0]["left_out"]      # the winner, what was not ranked
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hpc.analysis import stats
from hpc.analysis.compare import (METRICS, NOISE_BAND_PCT, _index, _point, auto_undecided, compare_samples,
                                  log_interval, paired_samples, samples)

_WORDS = {"worse": "slower", "better": "faster", "same": "same as fastest"}


def rank_schemes(records: Iterable[dict[str, Any]], metric: str = "auto",
                 threshold_pct: float = NOISE_BAND_PCT) -> list[dict[str, Any]]:
    """Per point measured by several algorithms/schemes: them ranked fastest first, each with its
    typical value (95% CI), its ratio to the fastest with a verdict ("same as fastest" = not
    distinguishable, within the change it could detect), and the schemes measured at a neighbouring
    point but left out of this one (`left_out`: name and reason).

        >>> rank_schemes(load_records("runs/sync"))[0]["ranking"][0]["name"]    # the winner
    """
    from hpc.analysis.groups import sort_key

    idx = _index(records)
    points: dict[tuple, dict[str, list[dict]]] = {}
    for key, recs in idx.items():
        points.setdefault(key[1:], {})[key[0]] = recs
    out = []
    for pkey in sorted(points, key=sort_key):
        if len(points[pkey]) >= 2:
            out.append(_rank_point(pkey, points[pkey], metric, threshold_pct))
    for pt in out:
        pt["left_out"] = _left_out(pt.pop("_key"), points)
    return out


def _rank_point(pkey: tuple, by: dict[str, list[dict]], metric: str, threshold_pct: float) -> dict[str, Any]:
    import numpy as np

    from hpc.analysis.compare import choose_metric

    m = choose_metric([r for rs in by.values() for r in rs], metric)
    field, higher, unit = METRICS[m]
    unit = unit or str(next(iter(by.values()))[0].get("unit") or "")
    own = {}
    for name, recs in by.items():  # one bench record: its interleaved batches; else one per run
        one_bench = len(recs) == 1 and recs[0].get("kind") == "collective"
        vals = samples(recs, m) if one_bench else [float(r[field]) for r in recs]
        gm, lo, hi = log_interval(vals)
        names = ([f"batch {i + 1}" for i in range(len(vals))] if one_bench else
                 [f"rep {r.get('rep_in_run', r.get('rep', i))}" for i, r in enumerate(recs)])
        aside = stats.trimmed_away(vals)
        own[name] = (vals, gm, lo, hi, [{"rep": names[i], "value": vals[i], "set_aside": i in aside}
                                        for i in stats.outliers(np.log(vals))])
    order = sorted(own, key=lambda n: -own[n][1] if higher else own[n][1])
    best = order[0]
    ranking, undecided = [], 0
    for pos, name in enumerate(order, 1):
        vals, gm, lo, hi, outl = own[name]
        cmp = None
        if name != best:  # measured together with the best (same launches): a paired interval
            pairs = paired_samples(by[best], by[name], m)
            a, b = pairs or (own[best][0], vals)
            cmp = compare_samples(a, b, higher, threshold_pct, paired=pairs is not None)
            if len(by[best]) == 1 and len(by[name]) == 1 and pairs is None:
                cmp.update(verdict="too few reps", ci95=None, detectable_pct=None)  # batches of unrelated runs
            auto_undecided(cmp, by[best] + by[name])
            undecided += cmp["verdict"] == "too few reps"
        speed = (gm / own[best][1]) if higher else (own[best][1] / gm)
        ranking.append({"rank": pos, "name": name, "value": gm, "ci95": [lo, hi], "unit": unit,
                        "n": len(vals), "min": float(np.min(vals)), "max": float(np.max(vals)),
                        "speed_vs_best": speed, "vs_best_ci95": cmp["ci95"] if cmp else None,
                        "detectable_pct": cmp.get("detectable_pct") if cmp else None,
                        "needs_reps": cmp.get("needs_reps") if cmp else None,
                        "decided": bool(cmp and cmp.get("decided")), "outliers": outl,
                        "vs_best_outliers": cmp.get("outliers", []) if cmp else [],
                        "inconclusive_why": cmp.get("inconclusive_why") if cmp else None,
                        "verdict": "fastest" if cmp is None else _WORDS.get(cmp["verdict"], cmp["verdict"])})
    if undecided == len(ranking) - 1:  # no comparison could be made: nothing is "fastest" yet
        ranking[0]["verdict"] = "too few reps"
    kind, np_, variant, extra, scaling = pkey
    return {"point": _point((None, *pkey)), "kind": kind, "np": np_, "variant": variant, "_key": pkey,
            "metric": m, "unit": unit, "higher_is_better": higher, "band_pct": threshold_pct,
            "ranking": ranking}


def _left_out(pkey: tuple, points: dict[tuple, dict[str, list[dict]]]) -> list[dict[str, str]]:
    """Schemes measured at the same kind, rank count, model/size and scaling as this point but not
    ranked in it, because what else must match (global batch; dtype and op) differs: e.g. ps-async,
    whose server rank trains no samples, has a smaller global batch — it did less work per step."""
    kind, np_, variant, extra, scaling = pkey
    out = []
    for other, by in points.items():
        if other == pkey or (other[0], other[1], other[2], other[4]) != (kind, np_, variant, scaling):
            continue
        if kind == "train":
            why = f"global batch {other[3][0]} ≠ {extra[0]} here (a different amount of work per step)"
        elif kind == "collective":
            why = f"dtype/op {'/'.join(map(str, other[3]))} ≠ {'/'.join(map(str, extra))} here"
        else:
            why = f"{other[3]} ≠ {extra} here"
        out += [{"name": name, "reason": why} for name in sorted(by)]
    return out


def undecided(records: Iterable[dict[str, Any]], threshold_pct: float = NOISE_BAND_PCT) -> list[str]:
    """What more repetitions could still settle: each ranked scheme whose verdict against the fastest
    is not clear yet (stats.decided), and each scheme alone at its point whose own value is not yet
    known within the band. Empty: stop adding repetitions (`--reps auto`, `hpc sweep --reps auto`)."""
    from hpc.analysis.compare import choose_metric

    recs = list(records)
    out = [f"{r['name']} at {pt['point']}" for pt in rank_schemes(recs, threshold_pct=threshold_pct)
           for r in pt["ranking"][1:] if not r["decided"]]
    points: dict[tuple, dict[str, list[dict]]] = {}
    for key, rs in _index(recs).items():
        points.setdefault(key[1:], {})[key[0]] = rs
    band = math.log1p(threshold_pct / 100)
    for pkey, by in points.items():
        if len(by) == 1:
            (name, rs), = by.items()
            field = METRICS[choose_metric(rs)][0]
            if stats.settled({name: [float(r[field]) for r in rs]}, name, band):
                out.append(f"{name} at {_point((None, *pkey))}")
    return out


def unranked(records: Iterable[dict[str, Any]]) -> list[str]:
    """Lines naming the schemes no ranking could hold (each alone at its point) and why: for the
    error that says nothing could be ranked."""
    idx = _index(records)
    points: dict[tuple, dict[str, list[dict]]] = {}
    for key, recs in idx.items():
        points.setdefault(key[1:], {})[key[0]] = recs
    lines = []
    for pkey in points:
        for lo in _left_out(pkey, points):
            lines.append(f"{lo['name']} at {_point((None, *pkey))}: {lo['reason']}")
    return sorted(set(lines))


def _fmt(unit: str):
    from hpc.table import fmt_num, fmt_time

    return (lambda v: fmt_time(v)) if unit == "s" else (lambda v: f"{fmt_num(v)}")


def verdict_cell(r: dict[str, Any]) -> str:
    """'same as fastest within ±X%', 'inconclusive (≈K more reps)', or the verdict."""
    det = r.get("detectable_pct")
    if r["verdict"] == "same as fastest" and det is not None and math.isfinite(det) and det < 1000:
        return f"same as fastest within ±{det:.0f}%"
    if r["verdict"] == "inconclusive" and r.get("inconclusive_why") == "budget" and r.get("needs_reps"):
        return f"inconclusive (≈{r['needs_reps']} more reps)"
    return r["verdict"]


def ranking_notes(pt: dict[str, Any]) -> list[str]:
    """What a reader of one point's ranking must know: rows left out and why, outlier repetitions
    (set aside, or still widening an interval), and 'same' verdicts that more reps would decide."""
    fmt = _fmt(pt["unit"])
    notes = []
    for lo in pt.get("left_out") or []:
        notes.append(f"{lo['name']} left out: {lo['reason']}")
    band = math.log1p(pt.get("band_pct", NOISE_BAND_PCT) / 100)
    for r in pt["ranking"]:
        for o in r.get("outliers") or []:
            tail = ("set aside by the trimmed mean" if o["set_aside"] else
                    "kept (under 5 reps nothing is trimmed; 20% per side from 5), so it widens the CI")
            notes.append(f"{r['name']}: {o['rep']} ({fmt(o['value'])}) stands apart from its other "
                         f"reps (an outlier): {tail}")
        if r["verdict"] == "same as fastest" and not r.get("decided") and r.get("needs_reps") \
                and abs(math.log(r["speed_vs_best"])) > band:
            notes.append(f"{r['name']} at {r['speed_vs_best']:.2f}× is 'same as fastest' only because its "
                         f"interval is wide: ≈{r['needs_reps']} more reps would decide (--reps auto adds "
                         "them until every verdict is clear)")
    return notes


def ranking_tables(ranked: list[dict[str, Any]]) -> list:
    """One "which scheme is fastest" table per point."""
    from hpc.table import Table

    tabs = []
    for pt in ranked:
        unit = pt["unit"]
        fmt = _fmt(unit)
        head = f"{pt['metric']} ({unit})" if unit != "s" else "time"
        tab = Table(f"Which is fastest — {pt['point']} ({pt['metric']}, "
                    f"{'higher' if pt['higher_is_better'] else 'lower'} is better)",
                    ["#", "scheme", head, "95% CI", "reps", "speed vs best", "verdict"])
        for r in pt["ranking"]:
            ci = r["ci95"]
            tab.add(r["rank"], r["name"], fmt(r["value"]),
                    "—" if not ci or ci[0] != ci[0] else f"{fmt(ci[0])} – {fmt(ci[1])}", r["n"],
                    f"{r['speed_vs_best']:.2f}×", verdict_cell(r))
        tab.notes += ranking_notes(pt)
        tab.notes.append("value: geometric mean of the repetitions (20%-trimmed where one stands apart); "
                         "'same as fastest within "
                         "±X%' when the 95% CI of the ratio does not lie entirely beyond the noise band "
                         "(X: the smallest difference its scatter would have called; ratios taken pair by "
                         "pair when both were measured in the same launches)")
        tabs.append(tab)
    return tabs


def ranking_csv(ranked: list[dict[str, Any]]):
    """Every point's ranking as one table of plain numbers (units in the headers) for spreadsheets."""
    from hpc.table import Table

    tab = Table("", ["point", "kind", "np", "variant", "metric", "unit", "higher_is_better", "rank", "scheme",
                     "value", "ci95_low", "ci95_high", "reps", "min", "max", "speed_vs_best",
                     "vs_best_ci95_low", "vs_best_ci95_high", "verdict", "detectable (%)", "needs_reps"])
    for pt in ranked:
        for r in pt["ranking"]:
            ci, vs = r["ci95"] or [None, None], r["vs_best_ci95"] or [None, None]
            tab.rows.append(["" if x is None or (isinstance(x, float) and not math.isfinite(x)) else str(x) for x in (
                pt["point"], pt["kind"], pt["np"], pt["variant"], pt["metric"], pt["unit"],
                pt["higher_is_better"], r["rank"], r["name"], r["value"], ci[0], ci[1], r["n"], r["min"],
                r["max"], r["speed_vs_best"], vs[0], vs[1], r["verdict"], r.get("detectable_pct"),
                r.get("needs_reps"))])
    return tab
