"""Verdicts on measurements: two record sets side by side (a regression gate) and every scheme
against a baseline (the ranked "which is fastest" per point is hpc.analysis.ranking).

A point is (kind, algo/sync, np, size_bytes/model, dtype+op or global_batch, scaling). Its samples
are the repetitions (one value per record); a point with a single record uses that record's timed
batches (`times_s`) but counts as one repetition. The verdict comes from a robust 95% interval of
the ratio B/A (hpc.analysis.stats: t on log values, Yuen's trimmed mean where a value stands apart,
so one outlier does not swing it; ×2 and ×0.5 are equally far from 1) against the noise band: "worse"/"better" only when the whole
interval lies beyond the band, "same" otherwise, "too few reps" below MIN_REPS on either side. Each
row says the smallest change it could have detected (`detectable_pct`), so "same" reads "same within
±X%", and how many repetitions would decide it (`needs_reps`). Two schemes measured together (the
same sweep launches, or the interleaved batches of one `hpc bench` run) are compared pair by pair
(`paired_samples`), so the machine's swing between launches cancels instead of hiding a steady gap.
The p-value is that of the same question (is the change larger than the band?), so it agrees with
the verdict: p < 0.05 exactly when the verdict is better or worse. Records of a run that added
repetitions until the answer was clear (`--batches auto`, `--reps auto`) and still ran out of budget
are "inconclusive", never "same".

Between runs the whole machine drifts (see NOISE_BAND_PCT); an in-run reference (native `mpi`
measured in both runs) cancels most of it, and the machine probe recorded in each run's provenance
shows the rest: a change the drift could explain is "inconclusive", never "worse".
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hpc.analysis import stats
from hpc.analysis.drift import drift_note, probe_drift, reference_drift
from hpc.analysis.stats import ALPHA, MIN_REPS, NOISE_BAND_PCT
from hpc.analysis.verdict_tables import (baseline_summary, comparison_table, csv_table, verdict_notes,
                                         verdict_text)
from hpc.errors import HpcError

__all__ = ["METRICS", "NOISE_BAND_PCT", "ALPHA", "MIN_REPS", "compare_samples", "compare_records",
           "compare_baseline", "comparison_table", "csv_table", "baseline_summary", "choose_metric",
           "samples", "paired_samples", "point_key", "probe_drift", "log_interval", "verdict_notes",
           "verdict_text", "drift_note", "reference_drift"]

METRICS = {  # name -> (record field, higher is better, unit)
    "time": ("time_s", False, "s"),
    "busbw": ("busbw_GBps", True, "GB/s"),
    "throughput": ("samples_per_s", True, "samples/s"),
    "figure": ("value", True, ""),  # `hpc sweep ... run --higher-better`: the program's own throughput
}


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
    """Which launch measured a record: a round of a side-by-side training run (each scheme once), a
    sweep point (all its algorithms in one job), else the run's provenance (one `hpc bench` or
    `hpc train` invocation)."""
    prov = rec.get("provenance") or {}
    if rec.get("order") == "rounds" and rec.get("order_seed") is not None:  # `train --sync a,b`: one round
        return ("round", rec.get("sweep_id"), rec.get("point_id"), rec.get("order_seed"),
                tuple(prov.get("argv") or ()), rec.get("rep_in_run"))
    if rec.get("point_id"):
        return ("point", rec.get("sweep_id"), rec.get("point_id"))
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


def log_interval(values: list[float]) -> tuple[float, float, float]:
    """(typical value, lo, hi): the geometric mean with its 95% interval (Student's t on log values;
    from 5 values, where one stands apart, the 20%-trimmed mean instead: hpc.analysis.stats)."""
    import numpy as np

    centre, se, df, _ = stats.one_sample(np.log(np.asarray(values, dtype=float)))
    if len(values) < 2 or not math.isfinite(se):
        return math.exp(centre), math.nan, math.nan
    half = stats.t_quantile(df) * se
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def compare_samples(a: list[float], b: list[float], higher_is_better: bool,
                    threshold_pct: float = NOISE_BAND_PCT, drift: float = 1.0,
                    paired: bool = False) -> dict[str, Any]:
    """Ratio B/A with its robust 95% CI, the p-value of "the change exceeds the band", the verdict,
    the smallest change it could have detected and the repetitions that would decide it.

    `drift` is how much the machine itself moved between the runs (B/A of a probe or reference):
    a change within it is "inconclusive" rather than better/worse. `paired`: a[i] and b[i] were
    measured together (the same launch, or adjacent interleaved batches), so the interval is that
    of the per-pair log ratios: drift shared by a pair cancels instead of widening the CI, and a pair
    that stands apart (an outlier batch) is named and set aside rather than deciding the verdict.
    """
    import numpy as np

    la, lb = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    if not (la.size and lb.size and np.all(np.isfinite(la)) and np.all(np.isfinite(lb))):
        raise HpcError("values to compare must be positive numbers")
    a_med, b_med = float(np.median(np.exp(la))), float(np.median(np.exp(lb)))
    band_log = math.log1p(threshold_pct / 100.0)
    est = stats.estimate(a, b, paired and la.size == lb.size)
    # shown: paired, the robust per-pair ratio the interval is about; else the ratio of medians
    # (it agrees with the medians next to it)
    ratio = math.exp(est.d) if est.paired else b_med / a_med
    row = {"a_median": a_med, "b_median": b_med, "a_n": int(la.size), "b_n": int(lb.size),
           "ratio": ratio, "change_pct": 100.0 * (ratio - 1.0), "band_pct": threshold_pct,
           "ci95": None, "p_value": None, "drift": drift, "detectable_pct": None, "needs_reps": None,
           "decided": False, "outliers": _outliers(est, a, b)}
    row["worse_pct"] = -row["change_pct"] if higher_is_better else row["change_pct"]
    if est.paired:
        row["paired"] = True
    if la.size < MIN_REPS or lb.size < MIN_REPS:
        row["verdict"] = "too few reps"
        return row
    row["ci95"] = list(est.interval())
    row["_fit"] = (est, higher_is_better)  # kept to judge again against a wider band
    judge(row, band_log, drift)
    return row


def _outliers(est: "stats.Estimate", a: list[float], b: list[float]) -> list[dict[str, Any]]:
    """The values the estimate named as outliers: paired, batch/rep i+1 and its ratio B/A; else the
    side, the repetition and its value. `set_aside`: the trimmed mean left it out."""
    trimmed = est.trimmed > 0
    if est.paired:
        aside = stats.trimmed_away([b[i] / a[i] for i in range(len(a))], trimmed)
        return [{"index": i + 1, "ratio": b[i] / a[i], "set_aside": i in aside} for i in est.outliers]
    aa, ab = stats.trimmed_away(a, trimmed), stats.trimmed_away(b, trimmed)
    return ([{"side": "A", "index": i + 1, "value": a[i], "set_aside": i in aa} for i in est.outliers_a]
            + [{"side": "B", "index": i + 1, "value": b[i], "set_aside": i in ab} for i in est.outliers])


def judge(row: dict[str, Any], band_log: float, drift: float = 1.0) -> None:
    """Set the row's p-value, verdict, detectable change and repetitions needed against a noise band
    of ±band_log (log space)."""
    est, higher_is_better = row["_fit"]
    row["band_pct"] = 100.0 * math.expm1(band_log)
    row["p_value"] = stats.p_beyond(est.d, est.se, est.df, band_log)
    row["detectable_pct"] = 100.0 * math.expm1(stats.detectable(est, band_log))
    row["decided"] = stats.decided(est, band_log)
    need = stats.reps_needed(est, band_log)
    row["needs_reps"] = None if need is None else max(0, need - min(est.n_a, est.n_b))
    if row["p_value"] >= ALPHA:
        row["verdict"] = "same"
    elif stats.p_beyond(est.d, est.se, est.df, band_log + abs(math.log(drift))) >= ALPHA:
        row["verdict"] = "inconclusive"
    else:
        row["verdict"] = "worse" if (est.d > 0) != higher_is_better else "better"


def auto_undecided(row: dict[str, Any], recs: Iterable[dict[str, Any]]) -> None:
    """A run that added repetitions until the answer was clear (`--batches auto`, `--reps auto`) and
    ran out of budget first is "inconclusive" where its estimate lies beyond the band but its interval
    still reaches into it (a 2× regression seen through too much noise), never "same". An estimate
    inside the band stays "same", with the (large) change it could have detected said beside it."""
    fit = row.get("_fit")
    d = fit[0].d if fit else math.log(row["ratio"])
    if row.get("verdict") == "same" and not row.get("decided") and any(r.get("auto") for r in recs) \
            and abs(d) > math.log1p(row["band_pct"] / 100):
        row["verdict"] = "inconclusive"
        row["inconclusive_why"] = "budget"


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
    d = np.array([r["_fit"][0].d for r in judged])
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
        res.update(verdict="too few reps", ci95=None, p_value=None, detectable_pct=None, decided=False,
                   needs_reps=MIN_REPS - min(reps_a, reps_b))
        res.pop("_fit", None)
    if ref is not None:  # report medians in the metric's own unit, the ratio relative to the reference
        res["a_median"] = float(np.median(samples(ra, m)))
        res["b_median"] = float(np.median(samples(rb, m)))
    res["a_n"], res["b_n"] = reps_a, reps_b
    res["rep_word"] = "batch" if len(ra) == 1 and len(rb) == 1 else "rep"  # what the outliers' numbers count
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
    note = drift_note(drift, reference_drift(rows, ref), ref, threshold_pct, relative > 0)
    if note:
        notes.append(note)
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
        auto_undecided(row, idx[bkey] + idx[key])
        row["baseline"] = baseline
        rows.append(row)
    if not rows:
        raise HpcError(f"nothing to compare against {baseline!r}: no other algorithm shares a point")
    for r in rows:
        r.pop("_fit", None)
    return rows, notes


