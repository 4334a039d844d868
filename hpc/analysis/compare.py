"""`hpc compare`: two record sets side by side (a regression gate), or algorithms against a baseline.

A point is (kind, algo/sync, np, size_bytes/model, dtype+op or global_batch, scaling). Its samples are the
repetitions (one value per record); a point with a single record uses that record's timed batches
(`times_s`). A difference counts only when it is larger than the noise band (the larger of
--threshold and the relative inter-quartile spread of either side) and, where the sample sizes allow
a verdict, a two-sided Mann–Whitney U test agrees at 5%. Ratios and spreads are taken in log space
(×2 and ×0.5 are equally far from 1), so the band reads as "a factor of 1 + band".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import comb
from typing import Any, Iterable

from hpc.errors import HpcError

METRICS = {  # name -> (record field, higher is better, unit)
    "time": ("time_s", False, "s"),
    "busbw": ("busbw_GBps", True, "GB/s"),
    "throughput": ("samples_per_s", True, "samples/s"),
}
ALPHA = 0.05


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
            raise HpcError(f"unknown metric {metric!r}: use auto, time, busbw or throughput")
        return metric
    r = recs[0]
    if r.get("kind") == "collective" and int(r.get("np") or 1) > 1 and \
            all(isinstance(x.get("busbw_GBps"), (int, float)) and x["busbw_GBps"] > 0 for x in recs):
        return "busbw"
    if r.get("kind") == "train" and all(isinstance(x.get("samples_per_s"), (int, float)) and
                                        x["samples_per_s"] > 0 for x in recs):
        return "throughput"
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


@dataclass
class _Stats:
    median: float
    spread: float  # inter-quartile range of log(values): a relative spread, symmetric in up/down
    n: int


def _stats(v: list[float]) -> _Stats:
    import numpy as np

    a = np.asarray(v, dtype=float)
    med = float(np.median(a))
    if np.all(a > 0):
        q25, q75 = np.percentile(np.log(a), [25, 75])
        spread = float(q75 - q25)
    else:
        spread = math.inf
    return _Stats(med, spread, a.size)


def _mw_usable(m: int, n: int) -> bool:
    """Whether a two-sided Mann–Whitney test on m and n samples can reach p < ALPHA at all."""
    return m >= 2 and n >= 2 and 2.0 / comb(m + n, m) < ALPHA


def compare_samples(a: list[float], b: list[float], higher_is_better: bool,
                    threshold_pct: float = 3.0) -> dict[str, Any]:
    """Median ratio B/A, the noise band, a Mann–Whitney p-value and a better/worse/same verdict."""
    from scipy.stats import mannwhitneyu

    sa, sb = _stats(a), _stats(b)
    ratio = sb.median / sa.median if sa.median else math.inf
    change = 100.0 * (ratio - 1.0)
    worse_pct = -change if higher_is_better else change
    band_log = max(math.log1p(threshold_pct / 100.0), sa.spread, sb.spread)
    band = 100.0 * math.expm1(band_log)
    pval = None
    if _mw_usable(sa.n, sb.n):
        pval = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    inside = not (ratio > 0 and math.isfinite(ratio)) or abs(math.log(ratio)) <= band_log
    if inside or (pval is not None and pval >= ALPHA):
        verdict = "same"
    else:
        verdict = "worse" if worse_pct > 0 else "better"
    return {"a_median": sa.median, "b_median": sb.median, "a_n": sa.n, "b_n": sb.n,
            "ratio": ratio, "change_pct": change, "worse_pct": worse_pct, "band_pct": band,
            "p_value": pval, "verdict": verdict}


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


def _row(key: tuple, ra: list[dict], rb: list[dict], metric: str, threshold: float) -> dict:
    m = choose_metric(ra + rb, metric)
    field, higher, unit = METRICS[m]
    row = {"kind": key[1], "name": key[0], "np": key[2], "variant": key[3],
           "label": _label(key), "point": _point(key), "metric": m, "field": field, "unit": unit,
           "higher_is_better": higher}
    row.update(compare_samples(samples(ra, m), samples(rb, m), higher, threshold))
    return row


def compare_records(a: Iterable[dict[str, Any]], b: Iterable[dict[str, Any]], metric: str = "auto",
                    threshold_pct: float = 3.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for every point present (ok) in both A and B, plus notes on unmatched points."""
    from hpc.analysis.groups import sort_key

    ia, ib = _index(a), _index(b)
    common = sorted(set(ia) & set(ib), key=lambda k: sort_key((k[1], k[5], k[2], k[3], k[4], k[0])))
    if not common:
        raise HpcError(f"no matching points between A ({len(ia)} points) and B ({len(ib)} points)")
    rows = [_row(k, ia[k], ib[k], metric, threshold_pct) for k in common]
    notes = []
    for side, only in (("A", set(ia) - set(ib)), ("B", set(ib) - set(ia))):
        if only:
            names = ", ".join(_label(k) for k in sorted(only, key=sort_key)[:5])
            notes.append(f"only in {side}: {len(only)} point(s) ({names}{', …' if len(only) > 5 else ''})")
    return rows, notes


def compare_baseline(records: Iterable[dict[str, Any]], baseline: str, metric: str = "auto",
                     threshold_pct: float = 3.0) -> tuple[list[dict[str, Any]], list[str]]:
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
        row = _row(key, idx[bkey], idx[key], metric, threshold_pct)
        row["baseline"] = baseline
        rows.append(row)
    if not rows:
        raise HpcError(f"nothing to compare against {baseline!r}: no other algorithm shares a point")
    return rows, notes


def _fmt_value(v: float, unit: str) -> str:
    from hpc.table import fmt_num, fmt_time

    return fmt_time(v) if unit == "s" else f"{fmt_num(v)} {unit}"


def comparison_table(rows: list[dict[str, Any]], title: str, a_name: str = "A",
                     b_name: str = "B", notes: Iterable[str] = ()):
    """One row per point: medians, ratio, change, noise band, p-value, verdict."""
    from hpc.table import Table

    tab = Table(title, ["point", "algo", "metric", f"{a_name} median", f"{b_name} median",
                        f"{b_name}/{a_name}", "change", "noise band", "MW p", "verdict"])
    for r in rows:
        direction = "higher better" if r["higher_is_better"] else "lower better"
        tab.add(r["point"], r["name"], f"{r['metric']} ({direction})", _fmt_value(r["a_median"], r["unit"]),
                _fmt_value(r["b_median"], r["unit"]), f"{r['ratio']:.3f}×",
                f"{r['change_pct']:+.1f}%", f"±{r['band_pct']:.1f}%" if r["band_pct"] < 100
                else f"×/÷{1 + r['band_pct'] / 100:.2f}",
                "—" if r["p_value"] is None else f"{r['p_value']:.3g}", r["verdict"])
    tab.notes += list(notes)
    tab.notes.append("verdict 'same' when B/A is within a factor 1 ± band of 1 (band: the larger of "
                     "--threshold and the reps' inter-quartile spread, in log space) or "
                     "Mann–Whitney p ≥ 0.05")
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
