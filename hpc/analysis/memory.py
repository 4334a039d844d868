"""Memory per rank beside speed: which scheme is fastest, and which fits my model in my memory.

Train records carry a `memory` block (hpc.workloads.memory): model states per rank counted from the
tensors each scheme keeps, the rank's peak resident memory during the timed steps (and the peak GPU
memory with --device cuda), all as the max over ranks, and the ZeRO accounting's expectation. Here:
the per-point table beside throughput, "the fastest scheme that fits in M per rank" (`fits`), the
speed–memory Pareto front, and memory per rank against N in a sweep (fitted a + b/N: replicated
schemes are flat, ZeRO-3 falls as 1/N) with predictions at more ranks (the fit and its intervals:
memory_predict, which `hpc predict` prints beside time).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hpc.errors import HpcError

FIELDS = ("model_states_bytes", "params_bytes", "grads_bytes", "optimizer_bytes", "buffers_bytes",
          "peak_rss_bytes", "peak_device_bytes")


def memory_of(rec: dict[str, Any]) -> dict[str, Any] | None:
    """A record's memory block, or None (records written before it existed, failed runs)."""
    m = rec.get("memory")
    return m if isinstance(m, dict) and isinstance(m.get("model_states_bytes"), (int, float)) else None


def _median(values: list[float]) -> float | None:
    import numpy as np

    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.median(vals)) if vals else None


def scheme_memory(recs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One scheme at one point: every memory figure as the median over its repetitions, the expected
    model states, the largest gap and every flag the records raised. `peak_bytes` is what must fit:
    the GPU peak on cuda, else the resident peak."""
    blocks = [b for b in map(memory_of, recs) if b is not None]
    if not blocks:
        return None
    out: dict[str, Any] = {k: _median([b.get(k) for b in blocks]) for k in FIELDS}
    exp = [b.get("expected") or {} for b in blocks]
    out["expected_bytes"] = _median([e.get("model_states_bytes") for e in exp])
    gaps = [e.get("gap_pct") for e in exp if isinstance(e.get("gap_pct"), (int, float))]
    out["gap_pct"] = max(gaps, key=abs) if gaps else None
    out["flags"] = sorted({f for e in exp for f in e.get("flags") or []})
    out["notes"] = list(dict.fromkeys(n for b in blocks for n in b.get("notes") or [] if isinstance(n, str)))
    out["accounting"] = next((e.get("accounting") for e in exp if e.get("accounting")), None)
    lib = [e.get("library_estimate") for e in exp if isinstance(e.get("library_estimate"), dict)]
    out["library_estimate_bytes"] = _median([x.get("bytes") for x in lib])
    out["device"] = "cuda" if out["peak_device_bytes"] is not None else "cpu"
    out["peak_bytes"] = out["peak_device_bytes"] if out["device"] == "cuda" else out["peak_rss_bytes"]
    phases = [b.get("peak_rss_phase") for b in blocks if isinstance(b.get("peak_rss_phase"), str)]
    out["peak_rss_phase"] = max(set(phases), key=phases.count) if phases else None
    out["reps"] = len(blocks)
    return out


def _points(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """ok train records by point label (as the ranking names points), then by scheme."""
    from hpc.analysis.compare import _point, point_key
    from hpc.analysis.groups import ok_records, record_name

    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in ok_records(records):
        if r.get("kind") == "train":
            out.setdefault(_point((None, *point_key(r, with_name=False))), {}).setdefault(
                record_name(r), []).append(r)
    return out


def annotate(ranked: list[dict[str, Any]], records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put each ranked scheme's memory (scheme_memory, or None) beside its speed: `row["memory"]`."""
    points = _points(records)
    for pt in ranked:
        by = points.get(pt["point"], {})
        for row in pt["ranking"]:
            row["memory"] = scheme_memory(by.get(row["name"], []))
    return ranked


def speed_memory(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per train point: its schemes fastest first, each with its median samples/s over repetitions and
    its memory (the ranking's shape, without its statistics; for plots and reports). Sorted by point,
    so the last of a model has the largest N."""
    from hpc.analysis.compare import _point, point_key
    from hpc.analysis.groups import ok_records, sort_key

    records = list(records)
    keys = {point_key(r, with_name=False): None for r in ok_records(records) if r.get("kind") == "train"}
    points = _points(records)
    out = []
    for key in sorted(keys, key=sort_key):
        by = points.get(_point((None, *key)), {})
        rows = [{"name": n, "value": _median([r.get("samples_per_s") for r in rs]), "memory": scheme_memory(rs)}
                for n, rs in by.items()]
        rows = sorted((r for r in rows if r["value"]), key=lambda r: -r["value"])
        if not rows:
            continue
        for i, r in enumerate(rows, 1):
            r.update(rank=i, speed_vs_best=r["value"] / rows[0]["value"])
        out.append({"point": _point((None, *key)), "np": key[1], "metric": "throughput", "unit": "samples/s",
                    "higher_is_better": True, "ranking": rows})
    return out


def has_memory(ranked: list[dict[str, Any]]) -> bool:
    return any(row.get("memory") for pt in ranked for row in pt["ranking"])


def _size(n: float | None) -> str:
    """Memory to three significant figures (2.15GiB, 514.6MiB): schemes a few percent apart stay apart."""
    if n is None:
        return "—"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            v = n / scale
            return f"{v:.{max(0, 2 - int(math.floor(math.log10(v))))}f}{unit}"
    from hpc.table import fmt_bytes

    return fmt_bytes(n)


def _gap(m: dict[str, Any]) -> str:
    g = m.get("gap_pct")
    return "—" if g is None else f"{g:+.0f}%" + (" ⚑" if m.get("flags") else "")


def memory_tables(ranked: list[dict[str, Any]], wide: bool = False) -> list:
    """Per ranked point that has memory figures: speed and memory per rank side by side, fastest first
    (`wide`: also params, grads, optimizer state and buffers apart)."""
    from hpc.table import Table, fmt_num

    tabs = []
    for pt in ranked:
        rows = [r for r in pt["ranking"] if r.get("memory")]
        if not rows:
            continue
        cuda = any(r["memory"]["device"] == "cuda" for r in rows)
        head = f"{pt['metric']} ({pt['unit']})"
        parts = ["params", "grads", "optimizer", "buffers"] if wide else []
        cols = ["#", "scheme", head, "speed vs best", "peak RSS/rank"] + (["peak GPU/rank"] if cuda else []) + \
               ["model states/rank", *parts, "expected", "gap"] + (["peak RSS set in"] if wide else [])
        tab = Table(f"Speed and memory per rank — {pt['point']}", cols)
        for r in pt["ranking"]:
            m = r.get("memory")
            if not m:
                tab.add(r["rank"], r["name"], fmt_num(r["value"]), f"{r['speed_vs_best']:.2f}×",
                        *(["not recorded"] + ["—"] * (len(cols) - 5)))
                continue
            tab.add(r["rank"], r["name"], fmt_num(r["value"]), f"{r['speed_vs_best']:.2f}×",
                    _size(m["peak_rss_bytes"]), *([_size(m["peak_device_bytes"])] if cuda else []),
                    _size(m["model_states_bytes"]), *(_size(m[f"{k}_bytes"]) for k in parts),
                    _size(m["expected_bytes"]), _gap(m), *([m.get("peak_rss_phase") or "—"] if wide else []))
        tab.notes.append("per rank, max over ranks, median over repetitions. model states = params + grads + "
                         f"optimizer state + sync buffers{'' if wide else ' (apart with --wide)'}, counted from "
                         "the tensors each scheme keeps; peak RSS "
                         "= the rank's peak resident memory during the timed steps (it includes the Python, "
                         "torch and library footprint)")
        tab.notes.append("expected = the ZeRO paper's accounting at this run's dtype and optimizer (ZeRO-1 "
                         "shards optimizer state, 2 also gradients, 3 also parameters); gap = params + grads "
                         "+ optimizer against it; ⚑ = a gap above 20% (see the record's memory.expected.flags)")
        for r in rows:
            for f in r["memory"]["flags"]:
                tab.notes.append(f"⚑ {r['name']}: {f}")
            for n in r["memory"].get("notes") or []:  # a scheme's notes name it ("ddp: ...", "ZeRO-3 on CPU: ...")
                if n not in tab.notes:
                    tab.notes.append(n)
        tabs.append(tab)
    return tabs


def memory_csv(ranked: list[dict[str, Any]]):
    """The memory figures of every ranked scheme as plain numbers (bytes) for spreadsheets."""
    from hpc.table import Table

    cols = ["point", "rank", "scheme", "value", "unit", *FIELDS, "expected_bytes", "gap_pct", "flagged"]
    tab = Table("", cols)
    for pt in ranked:
        for r in pt["ranking"]:
            m = r.get("memory") or {}
            cells = [pt["point"], r["rank"], r["name"], r["value"], pt["unit"], *(m.get(k) for k in FIELDS),
                     m.get("expected_bytes"), m.get("gap_pct"), bool(m.get("flags")) if m else None]
            tab.rows.append(["" if x is None else str(x) for x in cells])
    return tab


# -- "the fastest scheme that fits in M per rank" ---------------------------------------------------

def fits(ranked: list[dict[str, Any]], limit_bytes: int) -> list[dict[str, Any]]:
    """Per point: the fastest scheme whose peak memory per rank (GPU peak on cuda, else resident peak;
    max over ranks) is at most `limit_bytes`, and those that do not fit or were not measured."""
    if not has_memory(ranked):
        raise HpcError("--max-memory: these records carry no memory figures (train records written by "
                       "this version of hpc train have them)")
    out = []
    for pt in ranked:
        fit, big, unknown = None, [], []
        for r in pt["ranking"]:  # fastest first
            m = r.get("memory")
            if not m or m.get("peak_bytes") is None:
                unknown.append(r["name"])
            elif m["peak_bytes"] <= limit_bytes:
                fit = fit or r
            else:
                big.append({"name": r["name"], "peak_bytes": m["peak_bytes"]})
        ans = {"point": pt["point"], "limit_bytes": int(limit_bytes), "fastest_fitting": None,
               "too_big": big, "not_measured": unknown}
        if fit is not None:
            m = fit["memory"]
            ans.update(fastest_fitting=fit["name"], value=fit["value"], unit=pt["unit"],
                       speed_vs_best=fit["speed_vs_best"], verdict=fit["verdict"], peak_bytes=m["peak_bytes"],
                       memory=("peak GPU" if m["device"] == "cuda" else "peak RSS"),
                       model_states_bytes=m["model_states_bytes"])
        pt["max_memory"] = ans
        out.append(ans)
    return out


def fits_table(answers: list[dict[str, Any]]):
    """The --max-memory answer, one row per point."""
    from hpc.table import Table, fmt_num

    limit = answers[0]["limit_bytes"] if answers else 0
    tab = Table(f"Fastest within {_size(limit)} per rank",
                ["point", "fastest that fits", "throughput", "speed vs best", "peak/rank", "does not fit"])
    for a in answers:
        big = ", ".join(f"{b['name']} ({_size(b['peak_bytes'])})" for b in a["too_big"]) or "—"
        if a["fastest_fitting"] is None:
            tab.add(a["point"], "none fits", "—", "—", "—", big)
        else:
            tab.add(a["point"], a["fastest_fitting"], f"{fmt_num(a['value'])} {a['unit']}",
                    f"{a['speed_vs_best']:.2f}×", f"{_size(a['peak_bytes'])} ({a['memory']})", big)
        if a["not_measured"]:
            tab.notes.append(f"{a['point']}: no memory recorded for {', '.join(a['not_measured'])}")
    tab.notes.append("peak/rank: the largest rank's peak resident memory during the timed steps (peak GPU "
                     "memory with --device cuda), median over repetitions")
    return tab


# -- Pareto front -----------------------------------------------------------------------------------

def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, memory, speed) points no other point beats on both: less or equal memory
    and more or equal speed, one of them strictly. Ordered by memory."""
    front = []
    for name, mem, speed in points:
        if not any((m2 <= mem and s2 >= speed) and (m2 < mem or s2 > speed) for _, m2, s2 in points):
            front.append((mem, -speed, name))
    return [name for _, _, name in sorted(front)]


# -- memory against N (sweeps) ----------------------------------------------------------------------

def memory_vs_n(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, dict[int, dict[str, Any]]]]:
    """ok train records with memory, by (model, scaling), then scheme, then N: scheme_memory."""
    from hpc.analysis.groups import ok_records, record_name, record_variant

    raw: dict[tuple, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    for r in ok_records(records):
        if r.get("kind") == "train" and memory_of(r) is not None:
            key = (str(record_variant(r)), str(r.get("scaling") or "none"))
            raw.setdefault(key, {}).setdefault(record_name(r), {}).setdefault(int(r["np"]), []).append(r)
    return {k: {name: {n: scheme_memory(rs) for n, rs in sorted(by_n.items())} for name, by_n in v.items()}
            for k, v in raw.items()}
