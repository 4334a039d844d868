"""Verdicts on measurements: two record sets side by side (a regression gate), every scheme
against a baseline, and a ranked "which scheme is fastest" per point.

A point is (kind, algo/sync, np, size_bytes/model, dtype+op or global_batch, scaling). Its samples
are the repetitions (one value per record); a point with a single record uses that record's timed
batches (`times_s`) but counts as one repetition. The verdict comes from a 95% confidence interval
of the ratio B/A (Welch t-interval on log values, so ×2 and ×0.5 are equally far from 1) against
the noise band: "worse"/"better" only when the whole interval lies beyond the band, "same"
otherwise, "too few reps" below MIN_REPS on either side. Two schemes measured together (the same
sweep launches, or the interleaved batches of one `hpc bench` run) are compared pair by pair
(`paired_samples`), so the machine's swing between launches cancels instead of hiding a steady gap.
The p-value is that of the same question (is the change larger than the band?), so it agrees with
the verdict: p < 0.05 exactly when the verdict is better or worse.

Between runs the whole machine drifts (see NOISE_BAND_PCT); an in-run reference (native `mpi`
measured in both runs) cancels most of it, and the machine probe recorded in each run's provenance
shows the rest: a change the drift could explain is "inconclusive", never "worse".
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hpc.errors import HpcError

METRICS = {  # name -> (record field, higher is better, unit)
    "time": ("time_s", False, "s"),
    "busbw": ("busbw_GBps", True, "GB/s"),
    "throughput": ("samples_per_s", True, "samples/s"),
    "figure": ("value", True, ""),  # `hpc sweep ... run --higher-better`: the program's own throughput
}
ALPHA = 0.05
MIN_REPS = 3
# Smallest change a verdict may call real. On this kind of 2-core shared machine the same command
# run twice, back to back, gave ring/mpi ratios 0.83-1.30x apart (raw medians 0.99-4.4x), so a
# 3% band called A/A points "worse"; with 10% and the whole-CI rule the synthetic A/A test
# (tests/test_analysis.py) stays "same" on >= 95% of points at noise sigma 0.05-0.5, and so does
# the real A/A sweep (tests/test_aa.py).
NOISE_BAND_PCT = 10.0


def point_key(rec: dict[str, Any], with_name: bool = True) -> tuple:
    """What must match for two records to be the same measurement point."""
    from hpc.analysis.groups import record_name, record_variant

    kind = str(rec.get("kind", "?"))
    extra = ((rec.get("dtype"), rec.get("op")) if kind == "collective"
             else (rec.get("global_batch"),))
    key = (kind, int(rec.get("np") or 0), record_variant(rec), extra,
           str(rec.get("scaling") or "none"))
    return ((record_name(rec),) + key) if with_name else key


def choose_metric(recs: list[dict[str, Any]], metric: str = "auto") -> str:
    """auto: busbw for multi-rank collectives, throughput for training, time otherwise."""
    if metric != "auto":
        if metric not in METRICS:
            raise HpcError(f"unknown metric {metric!r}: use auto, {', '.join(METRICS)}")
        return metric
    r = recs[0]
    if r.get("kind") == "collective" and int(r.get("np") or 1) > 1 and \
            all(isinstance(x.get("busbw_GBps"), (int, float)) and x["busbw_GBps"] > 0 for x in recs):
        return "busbw"
    if r.get("kind") == "train" and all(isinstance(x.get("samples_per_s"), (int, float)) and
                                        x["samples_per_s"] > 0 for x in recs):
        return "throughput"
    if r.get("kind") == "run" and all(x.get("higher_is_better") and isinstance(x.get("value"), (int, float))
                                      and x["value"] > 0 for x in recs):
        return "figure"
    return "time"


def samples(recs: list[dict[str, Any]], metric: str) -> list[float]:
    """Repetition values of `metric`; one record → its timed batches, converted to the metric."""
    field, higher, _ = METRICS[metric]
    vals = [float(r[field]) for r in recs if isinstance(r.get(field), (int, float))]
    if len(recs) == 1 and len(vals) == 1:
        r = recs[0]
        ts = [float(x) for x in (r.get("times_s") or []) if isinstance(x, (int, float)) and x > 0]
        t0 = r.get("time_s")
        if len(ts) > 1 and isinstance(t0, (int, float)) and t0 > 0:
            return ts if metric == "time" else [vals[0] * t0 / x for x in ts]
    if not vals:
        raise HpcError(f"records lack {field!r}: choose another --metric")
    return vals


def _run_key(rec: dict[str, Any]) -> tuple:
    """Which launch measured a record: a sweep point (all its algorithms in one job), else the run's
    provenance (one `hpc bench` or `hpc train` invocation)."""
    if rec.get("point_id"):
        return ("point", rec.get("sweep_id"), rec.get("point_id"))
    prov = rec.get("provenance") or {}
    return ("run", prov.get("timestamp"), tuple(prov.get("argv") or ()))


def paired_samples(ra: list[dict[str, Any]], rb: list[dict[str, Any]],
                   metric: str) -> tuple[list[float], list[float]] | None:
    """Aligned samples of two schemes at one point when each of A's values has its partner in B,
    measured together: records from the same launches (one per launch on each side), or the
    interleaved batches of one record each from the same run. None when they cannot be paired."""
    field = METRICS[metric][0]
    if len(ra) == 1 and len(rb) == 1:  # `hpc bench` interleaves batches; training runs do not
        if _run_key(ra[0]) != _run_key(rb[0]) or ra[0].get("kind") != "collective":
            return None
        sa, sb = samples(ra, metric), samples(rb, metric)
        return (sa, sb) if len(sa) == len(sb) > 1 else None
    ka, kb = {_run_key(r): r for r in ra}, {_run_key(r): r for r in rb}
    if len(ka) != len(ra) or len(kb) != len(rb) or set(ka) != set(kb):
        return None
    try:
        keys = sorted(ka, key=repr)
        return [float(ka[k][field]) for k in keys], [float(kb[k][field]) for k in keys]
    except (KeyError, TypeError, ValueError):
        return None


def probe_drift(a: Iterable[dict[str, Any]], b: Iterable[dict[str, Any]]) -> float:
    """How much slower the machine was in B than in A: ratio of the median machine probes recorded
    in provenance (1.0 when either side has none)."""
    import numpy as np

    def probe(recs):
        v = [r.get("provenance", {}).get("probe_s") for r in recs]
        v = [x for x in v if isinstance(x, (int, float)) and x > 0]
        return float(np.median(v)) if v else None

    pa, pb = probe(a), probe(b)
    return pb / pa if pa and pb else 1.0


def log_interval(values: list[float]) -> tuple[float, float, float]:
    """(geometric mean, lo, hi): a 95% t-interval of the typical value, from log values."""
    import numpy as np
    from scipy import stats

    v = np.log(np.asarray(values, dtype=float))
    m = float(v.mean())
    if v.size < 2:
        return math.exp(m), math.nan, math.nan
    half = float(stats.t.ppf(1 - ALPHA / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def compare_samples(a: list[float], b: list[float], higher_is_better: bool,
                    threshold_pct: float = NOISE_BAND_PCT, drift: float = 1.0,
                    paired: bool = False) -> dict[str, Any]:
    """Ratio B/A with its 95% CI, the p-value of "the change exceeds the band", and the verdict.

    `drift` is how much the machine itself moved between the runs (B/A of a probe or reference):
    a change within it is "inconclusive" rather than better/worse. `paired`: a[i] and b[i] were
    measured together (the same launch, or adjacent interleaved batches), so the interval is that
    of the mean per-pair log ratio: drift shared by a pair cancels instead of widening the CI.
    """
    import numpy as np
    from scipy import stats

    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    if not (la.size and lb.size and np.all(np.isfinite(la)) and np.all(np.isfinite(lb))):
        raise HpcError("values to compare must be positive numbers")
    a_med, b_med = float(np.median(np.exp(la))), float(np.median(np.exp(lb)))
    d = float(lb.mean() - la.mean())  # the CI and p-value are about the mean log ratio
    band_log = math.log1p(threshold_pct / 100.0)
    ratio = b_med / a_med  # shown: the ratio of medians (agrees with the medians next to it)
    row = {"a_median": a_med, "b_median": b_med, "a_n": int(la.size), "b_n": int(lb.size),
           "ratio": ratio, "change_pct": 100.0 * (ratio - 1.0), "band_pct": threshold_pct,
           "ci95": None, "p_value": None, "drift": drift}
    row["worse_pct"] = -row["change_pct"] if higher_is_better else row["change_pct"]
    if la.size < MIN_REPS or lb.size < MIN_REPS:
        row["verdict"] = "too few reps"
        return row
    if paired and la.size == lb.size:
        dd = lb - la
        se, df = float(dd.std(ddof=1)) / math.sqrt(dd.size), float(dd.size - 1)
        row["paired"] = True
    else:
        va, vb = la.var(ddof=1) / la.size, lb.var(ddof=1) / lb.size
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (la.size - 1) + vb**2 / (lb.size - 1)) if se > 0 else 1.0
    tq = float(stats.t.ppf(1 - ALPHA / 2, df))
    row["ci95"] = [math.exp(d - tq * se), math.exp(d + tq * se)]
    row["_fit"] = (d, se, df, higher_is_better)  # kept to judge again against a wider band
    judge(row, band_log, drift)
    return row


def _p_beyond(d: float, se: float, df: float, band: float) -> float:
    """Two-sided p-value of "|mean log ratio| > band" (so it agrees with the 95% CI)."""
    from scipy import stats

    excess = abs(d) - band
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return float(min(1.0, 2.0 * stats.t.sf(excess / se, df)))


def judge(row: dict[str, Any], band_log: float, drift: float = 1.0) -> None:
    """Set the row's p-value and verdict against a noise band of ±band_log (log space)."""
    d, se, df, higher_is_better = row["_fit"]
    row["band_pct"] = 100.0 * math.expm1(band_log)
    row["p_value"] = _p_beyond(d, se, df, band_log)
    if row["p_value"] >= ALPHA:
        row["verdict"] = "same"
    elif _p_beyond(d, se, df, band_log + abs(math.log(drift))) >= ALPHA:
        row["verdict"] = "inconclusive"
    else:
        row["verdict"] = "worse" if (d > 0) != higher_is_better else "better"


def _widen_by_scatter(rows: list[dict[str, Any]], band_log: float) -> float | None:
    """Between two runs each point relative to its in-run reference still moves by a run-to-run
    amount that repetitions inside one run cannot see (measured here: one point of an A/A pair at
    0.24x while its reps agreed). Its size shows in how much the points' ratios scatter: the band
    becomes at least twice their robust spread (1.4826 x MAD of the log ratios), so an A/A pair stays
    'same' while a change that stands out from the scatter is still called. Returns the new band."""
    import numpy as np

    judged = [r for r in rows if r.get("_fit") and r.get("relative_to")]
    if len(judged) < 2:
        return None
    d = np.array([r["_fit"][0] for r in judged])
    scatter = 2.0 * 1.4826 * float(np.median(np.abs(d - np.median(d))))
    if scatter <= band_log:
        return None
    for r in judged:
        judge(r, scatter, r.get("drift", 1.0))
    return scatter


def _index(records: Iterable[dict[str, Any]], with_name: bool = True) -> dict[tuple, list[dict]]:
    from hpc.analysis.groups import ok_records

    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok_records(records):
        out.setdefault(point_key(r, with_name), []).append(r)
    return out


def _point(key: tuple) -> str:
    """'collective np=4 1MB' / 'train np=2 mlp' (the point without the algorithm name)."""
    from hpc.table import fmt_bytes

    name, kind, np_, variant, extra, scaling = key
    v = fmt_bytes(variant) if kind == "collective" and isinstance(variant, (int, float)) else variant
    return f"{kind} np={np_} {v}" + (f" ({scaling})" if scaling != "none" else "")


def _label(key: tuple) -> str:
    return f"{key[0]} {_point(key)}"


def _row(key: tuple, ra: list[dict], rb: list[dict], metric: str, threshold: float,
         drift: float = 1.0, ref: tuple[list[dict], list[dict]] | None = None,
         ref_name: str | None = None, batches_are_reps: bool = False) -> dict:
    import numpy as np

    m = choose_metric(ra + rb, metric)
    field, higher, unit = METRICS[m]
    unit = unit or str(ra[0].get("unit") or "")
    row = {"kind": key[1], "name": key[0], "np": key[2], "variant": key[3],
           "label": _label(key), "point": _point(key), "metric": m, "field": field, "unit": unit,
           "higher_is_better": higher, "relative_to": None}
    sa, sb = samples(ra, m), samples(rb, m)
    if len(ra) > 1 or len(rb) > 1:  # repetitions are records; batches of one record are not runs
        sa, sb = [float(r[field]) for r in ra], [float(r[field]) for r in rb]
    pairs = paired_samples(ra, rb, m) if batches_are_reps and ref is None else None
    if pairs is not None:
        sa, sb = pairs
    if ref is not None:  # divide out the machine: each run's value relative to its own reference
        fa = float(np.median(samples(ref[0], m)))
        fb = float(np.median(samples(ref[1], m)))
        sa, sb = [x / fa for x in sa], [x / fb for x in sb]
        row["relative_to"] = ref_name
        drift = 1.0
    # Between runs only records are repetitions; within one run (against a baseline measured
    # interleaved with it) the timed batches of a single record are too.
    reps_a = len(sa) if batches_are_reps or len(ra) > 1 else 1
    reps_b = len(sb) if batches_are_reps or len(rb) > 1 else 1
    res = compare_samples(sa, sb, higher, threshold, drift, paired=pairs is not None)
    if min(reps_a, reps_b) < MIN_REPS:
        res.update(verdict="too few reps", ci95=None, p_value=None)
        res.pop("_fit", None)
    if ref is not None:  # report medians in the metric's own unit, the ratio relative to the reference
        res["a_median"] = float(np.median(samples(ra, m)))
        res["b_median"] = float(np.median(samples(rb, m)))
    res["a_n"], res["b_n"] = reps_a, reps_b
    row.update(res)
    return row


def compare_records(a: Iterable[dict[str, Any]], b: Iterable[dict[str, Any]], metric: str = "auto",
                    threshold_pct: float = NOISE_BAND_PCT,
                    reference: str | None = "auto") -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for every point present (ok) in both A and B, plus notes on unmatched points.

    `reference` (default: `mpi` when both runs measured it) is an in-run baseline: each point is
    compared relative to it, which cancels the machine's drift between the runs.
    """
    from hpc.analysis.groups import sort_key

    a, b = list(a), list(b)
    ia, ib = _index(a), _index(b)
    common = sorted(set(ia) & set(ib), key=lambda k: sort_key((k[1], k[5], k[2], k[3], k[4], k[0])))
    if not common:
        def some(idx):
            return "; ".join(_label(k) for k in sorted(idx, key=repr)[:2]) or "none"
        raise HpcError(f"no matching points between A ({len(ia)} points, e.g. {some(ia)}) and B ({len(ib)} "
                       f"points, e.g. {some(ib)}): points match on kind, name, np, size/model/program "
                       "arguments, dtype and op or global batch, and scaling")
    names = {k[0] for k in common}
    auto = reference == "auto"
    # auto: native MPI_Allreduce, which no hpc change can make slower, is the in-run reference of
    # collective points (for training, `mpi` is hpc's own sync code and may itself regress)
    ref = ("mpi" if "mpi" in names else None) if auto else reference
    if ref is not None and ref not in names:
        raise HpcError(f"reference {ref!r} was not measured in both runs")
    drift = probe_drift(a, b)
    rows, relative = [], 0
    for k in common:
        rk = (ref,) + k[1:]
        usable = ref is not None and k[0] != ref and rk in ia and rk in ib and (not auto or k[1] == "collective")
        row = _row(k, ia[k], ib[k], metric, threshold_pct, drift,
                   (ia[rk], ib[rk]) if usable else None, ref)
        if ref is not None and k[0] == ref and (not auto or k[1] == "collective"):
            row["verdict"] = "reference"  # its change between the runs is the machine's drift
        rows.append(row)
        relative += usable
    notes = []
    if relative:
        notes.append(f"{relative} point(s) compared relative to {ref} measured in the same run "
                     "(machine drift cancelled)")
        wide = _widen_by_scatter(rows, math.log1p(threshold_pct / 100.0))
        if wide is not None:
            notes.append(f"those points' ratios scatter between the runs: their noise band is "
                         f"±{100 * math.expm1(wide):.0f}% (twice the robust spread)")
    for r in rows:
        r.pop("_fit", None)
    if abs(math.log(drift)) > math.log1p(threshold_pct / 100):
        pace = f"×{drift:.2f} slower" if drift > 1 else f"×{1 / drift:.2f} faster"
        notes.append(f"the machine itself ran {pace} in B than in A (its probe): changes that drift could "
                     "explain are 'inconclusive'")
    for side, only in (("A", set(ia) - set(ib)), ("B", set(ib) - set(ia))):
        if only:
            shown = ", ".join(_label(k) for k in sorted(only, key=sort_key)[:5])
            notes.append(f"only in {side}: {len(only)} point(s) ({shown}{', …' if len(only) > 5 else ''})")
    return rows, notes


def compare_baseline(records: Iterable[dict[str, Any]], baseline: str, metric: str = "auto",
                     threshold_pct: float = NOISE_BAND_PCT) -> tuple[list[dict[str, Any]], list[str]]:
    """Every algorithm/sync scheme against `baseline` at each point where both were measured."""
    from hpc.analysis.groups import sort_key

    idx = _index(records)
    names = sorted({k[0] for k in idx})
    if baseline not in names:
        raise HpcError(f"baseline {baseline!r} not in the records (found: {', '.join(names) or 'none'})")
    rows, notes = [], []
    for key in sorted(idx, key=lambda k: sort_key((k[1], k[5], k[2], k[3], k[4], k[0]))):
        if key[0] == baseline:
            continue
        bkey = (baseline,) + key[1:]
        if bkey not in idx:
            notes.append(f"{_label(key)}: no {baseline} measurement at this point")
            continue
        row = _row(key, idx[bkey], idx[key], metric, threshold_pct, batches_are_reps=True)
        row["baseline"] = baseline
        rows.append(row)
    if not rows:
        raise HpcError(f"nothing to compare against {baseline!r}: no other algorithm shares a point")
    for r in rows:
        r.pop("_fit", None)
    return rows, notes


def _fmt_value(v: float, unit: str) -> str:
    from hpc.table import fmt_num, fmt_time

    return fmt_time(v) if unit == "s" else f"{fmt_num(v)} {unit}"


def _ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def comparison_table(rows: list[dict[str, Any]], title: str, a_name: str = "A",
                     b_name: str = "B", notes: Iterable[str] = (), wide: bool = False):
    """One row per point: ratio with its 95% CI, p-value, verdict (`wide`: medians, band, reps too)."""
    from hpc.table import Table

    cols = ["point", "algo", f"{b_name}/{a_name}", "95% CI", "p", "verdict"]
    if wide:
        cols[2:2] = ["metric", f"{a_name} median", f"{b_name} median"]
        cols[-2:-2] = ["change", "band", "reps"]
    tab = Table(title, cols)
    for r in rows:
        cells = [r["point"], r["name"], f"{r['ratio']:.3f}×", _ci(r["ci95"]),
                 "—" if r["p_value"] is None else f"{r['p_value']:.2g}", r["verdict"]]
        if wide:
            direction = "higher better" if r["higher_is_better"] else "lower better"
            cells[2:2] = [f"{r['metric']} ({direction})", _fmt_value(r["a_median"], r["unit"]),
                          _fmt_value(r["b_median"], r["unit"])]
            cells[-2:-2] = [f"{r['change_pct']:+.1f}%", f"±{r['band_pct']:.0f}%", f"{r['a_n']}/{r['b_n']}"]
        tab.add(*cells)
    metrics = sorted({f"{r['metric']} ({'higher' if r['higher_is_better'] else 'lower'} is better)"
                      for r in rows})
    tab.notes += list(notes)
    bands = sorted({round(r["band_pct"]) for r in rows}) or [NOISE_BAND_PCT]
    shown = "/".join(f"±{b:g}%" for b in bands)
    tab.notes.append(f"ratio of {', '.join(metrics)}; worse/better only when the whole 95% CI lies "
                     f"beyond the noise band ({shown}; per point with --wide) (p < 0.05 means the same); "
                     f"fewer than {MIN_REPS} repetitions: 'too few reps'")
    return tab


def csv_table(rows: list[dict[str, Any]]):
    """The comparison as plain numbers for spreadsheets: one column per quantity, units in headers."""
    from hpc.table import Table

    unit = rows[0]["unit"] if rows and len({r["unit"] for r in rows}) == 1 else "metric units"
    tab = Table("", ["point", "algo", "metric", f"a_median ({unit})", f"b_median ({unit})", "ratio_b_over_a",
                     "ci95_low", "ci95_high", "change (%)", "noise_band (%)", "p_value", "a_reps",
                     "b_reps", "relative_to", "verdict"])
    for r in rows:
        ci = r["ci95"] or [None, None]
        tab.rows.append([str(x) if x is not None else "" for x in (
            r["point"], r["name"], r["metric"], r["a_median"], r["b_median"], r["ratio"], ci[0], ci[1],
            r["change_pct"], r["band_pct"], r["p_value"], r["a_n"], r["b_n"], r.get("relative_to"),
            r["verdict"])])
    return tab


def rank_schemes(records: Iterable[dict[str, Any]], metric: str = "auto",
                 threshold_pct: float = NOISE_BAND_PCT) -> list[dict[str, Any]]:
    """Per point measured by several algorithms/schemes: them ranked fastest first, each with its
    typical value (95% CI) and its ratio to the fastest with a verdict ("same" = not distinguishable).

        >>> rank_schemes(load_records("runs/sync"))[0]["ranking"][0]["name"]    # the winner
    """
    import numpy as np

    from hpc.analysis.groups import sort_key

    idx = _index(records)
    points: dict[tuple, dict[str, list[dict]]] = {}
    for key, recs in idx.items():
        points.setdefault(key[1:], {})[key[0]] = recs
    out = []
    for pkey in sorted(points, key=sort_key):
        by = points[pkey]
        if len(by) < 2:
            continue
        m = choose_metric([r for rs in by.values() for r in rs], metric)
        field, higher, unit = METRICS[m]
        unit = unit or str(next(iter(by.values()))[0].get("unit") or "")
        stats_by = {}
        for name, recs in by.items():  # one bench record: its interleaved batches; else one per run
            one_bench = len(recs) == 1 and recs[0].get("kind") == "collective"
            vals = samples(recs, m) if one_bench else [float(r[field]) for r in recs]
            gm, lo, hi = log_interval(vals)
            stats_by[name] = (vals, gm, lo, hi)
        order = sorted(stats_by, key=lambda n: -stats_by[n][1] if higher else stats_by[n][1])
        best = order[0]
        ranking, undecided = [], 0
        for pos, name in enumerate(order, 1):
            vals, gm, lo, hi = stats_by[name]
            cmp = None
            if name != best:  # measured together with the best (same launches): a paired interval
                pairs = paired_samples(by[best], by[name], m)
                a, b = pairs or (stats_by[best][0], vals)
                cmp = compare_samples(a, b, higher, threshold_pct, paired=pairs is not None)
                if len(by[best]) == 1 and len(by[name]) == 1 and pairs is None:
                    cmp.update(verdict="too few reps", ci95=None)  # batches of unrelated runs
                if cmp["verdict"] == "too few reps":
                    undecided += 1
            speed = (gm / stats_by[best][1]) if higher else (stats_by[best][1] / gm)
            ranking.append({"rank": pos, "name": name, "value": gm, "ci95": [lo, hi], "unit": unit,
                            "n": len(vals), "min": float(np.min(vals)), "max": float(np.max(vals)),
                            "speed_vs_best": speed, "vs_best_ci95": cmp["ci95"] if cmp else None,
                            "verdict": "fastest" if cmp is None else
                            {"worse": "slower", "better": "faster", "same": "same as fastest"}
                            .get(cmp["verdict"], cmp["verdict"])})
        if undecided == len(ranking) - 1:  # no comparison could be made: nothing is "fastest" yet
            ranking[0]["verdict"] = "too few reps"
        kind, np_, variant, extra, scaling = pkey
        out.append({"point": _point((None, *pkey)), "kind": kind, "np": np_, "variant": variant,
                    "metric": m, "unit": unit, "higher_is_better": higher, "ranking": ranking})
    return out


def ranking_tables(ranked: list[dict[str, Any]]) -> list:
    """One "which scheme is fastest" table per point."""
    from hpc.table import Table, fmt_num, fmt_time

    tabs = []
    for pt in ranked:
        unit = pt["unit"]
        fmt = (lambda v: fmt_time(v)) if unit == "s" else (lambda v: f"{fmt_num(v)}")
        head = f"{pt['metric']} ({unit})" if unit != "s" else "time"
        tab = Table(f"Which is fastest — {pt['point']} ({pt['metric']}, "
                    f"{'higher' if pt['higher_is_better'] else 'lower'} is better)",
                    ["#", "scheme", head, "95% CI", "reps", "speed vs best", "verdict"])
        for r in pt["ranking"]:
            ci = r["ci95"]
            tab.add(r["rank"], r["name"], fmt(r["value"]),
                    "—" if not ci or ci[0] != ci[0] else f"{fmt(ci[0])} – {fmt(ci[1])}", r["n"],
                    f"{r['speed_vs_best']:.2f}×", r["verdict"])
        tab.notes.append("value: geometric mean of the repetitions; 'same as fastest' when the 95% CI "
                         "of the ratio does not lie entirely beyond the noise band (ratios taken pair by "
                         "pair when both were measured in the same launches)")
        tabs.append(tab)
    return tabs


def ranking_csv(ranked: list[dict[str, Any]]):
    """Every point's ranking as one table of plain numbers (units in the headers) for spreadsheets."""
    from hpc.table import Table

    tab = Table("", ["point", "kind", "np", "variant", "metric", "unit", "higher_is_better", "rank", "scheme",
                     "value", "ci95_low", "ci95_high", "reps", "min", "max", "speed_vs_best",
                     "vs_best_ci95_low", "vs_best_ci95_high", "verdict"])
    for pt in ranked:
        for r in pt["ranking"]:
            ci, vs = r["ci95"] or [None, None], r["vs_best_ci95"] or [None, None]
            tab.rows.append(["" if x is None or x != x else str(x) for x in (
                pt["point"], pt["kind"], pt["np"], pt["variant"], pt["metric"], pt["unit"],
                pt["higher_is_better"], r["rank"], r["name"], r["value"], ci[0], ci[1], r["n"], r["min"],
                r["max"], r["speed_vs_best"], vs[0], vs[1], r["verdict"])])
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
