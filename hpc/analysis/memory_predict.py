"""Memory per rank at rank counts nobody measured: what `hpc predict` prints beside time for training
curves whose records carry a `memory` block.

Per scheme and model, each figure (model states, peak RSS, peak GPU memory) is fitted over every
repetition as bytes per rank = a + b/N: a is what every rank keeps whole (a replicated scheme's
whole model states, the libraries), b what is split over the N ranks (ZeRO-3's shards; in strong
scaling also the activations of a batch split N ways). The ZeRO accounting has exactly this form,
so the fit is the accounting with its constants measured. The 95% prediction interval is the
least-squares one (run-to-run scatter + the fit's own uncertainty, Student t) widened by what the
form itself misses: refitted without the largest N (then the two largest, with four or more), the
fit predicts what it did not see, and the RMS of those errors joins the interval (ZeRO-2's
gradient moment holds a layer straddling its partition boundary, which is not exactly 1/N). With
two rank counts and no repetitions there is nothing to measure either from, and no interval is
claimed.

    >>> fits = memory_fits(records)                  # {(name, variant, scaling): {field: MemoryFit}}
    >>> fits[key]["model_states_bytes"].at(64)       # (bytes, (lo, hi) or None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

FIGURES = ("model_states_bytes", "peak_rss_bytes", "peak_device_bytes")
SHOWN = {"model_states_bytes": "model states", "peak_rss_bytes": "peak RSS", "peak_device_bytes": "peak GPU"}


@dataclass
class MemoryFit:
    """bytes per rank = a + b/N over the measured (N, bytes), with what a prediction interval needs."""

    n: np.ndarray
    y: np.ndarray
    a: float
    b: float
    s2: float | None          # residual variance; None: nothing left to estimate it from
    dof: int
    xtx_inv: np.ndarray | None
    backtest_rms: float | None = None  # bytes: leave-largest-N-out errors of the form

    @property
    def form(self) -> str:
        from hpc.analysis.memory import _size

        flat = self.xtx_inv is None or abs(self.b) < 1024  # under 1 KiB split N ways: nothing is
        split = "" if flat else f" {'+' if self.b >= 0 else '−'} {_size(abs(self.b))}/N"
        return f"{'−' if self.a < 0 else ''}{_size(abs(self.a))}{split}"

    def at(self, n: float) -> tuple[float, tuple[float, float] | None]:
        """The predicted bytes per rank at `n` ranks and its 95% prediction interval (None: no scatter
        could be measured). Never below 0: memory is not negative whatever the line says."""
        if self.xtx_inv is None:  # one rank count: the mean, an interval only from repetitions
            x0 = np.array([1.0])
            mu = self.a
        else:
            x0 = np.array([1.0, 1.0 / n])
            mu = self.a + self.b / n
        if self.s2 is None and self.backtest_rms is None:
            return max(mu, 0.0), None
        from scipy.stats import t as student

        inv = self.xtx_inv if self.xtx_inv is not None else np.array([[1.0 / self.n.size]])
        noise = float(student.ppf(0.975, self.dof)) * math.sqrt(self.s2 * (1.0 + float(x0 @ inv @ x0))) \
            if self.s2 is not None else 0.0
        form = 1.96 * (self.backtest_rms or 0.0)
        half = math.hypot(noise, form)
        return max(mu, 0.0), (max(mu - half, 0.0), mu + half)


def fit(n: Iterable[float], y: Iterable[float]) -> MemoryFit:
    """Least squares of y = a + b/N over every (N, bytes), with its leave-largest-N-out backtest;
    a constant where only one N was measured."""
    n, y = np.asarray(list(n), dtype=float), np.asarray(list(y), dtype=float)
    out = _ols(n, y)
    uniq = np.unique(n)
    errs = []
    for h in range(1, 3 if uniq.size >= 4 else 2):
        if uniq.size - h < 2:
            break
        tr = n < uniq[-h]
        part = _ols(n[tr], y[tr])
        errs += [part.at(v)[0] - float(y[n == v].mean()) for v in uniq[-h:]]
    if errs:
        out.backtest_rms = float(np.sqrt(np.mean(np.square(errs))))
    return out


def _ols(n: np.ndarray, y: np.ndarray) -> MemoryFit:
    if np.unique(n).size < 2:
        dof = n.size - 1
        s2 = float(np.var(y, ddof=1)) if dof > 0 else None
        return MemoryFit(n, y, float(y.mean()), 0.0, s2, dof, None)
    x = np.column_stack([np.ones(n.size), 1.0 / n])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = n.size - 2
    resid = y - x @ coef
    s2 = float(resid @ resid / dof) if dof > 0 else None
    return MemoryFit(n, y, float(coef[0]), float(coef[1]), s2, dof, np.linalg.inv(x.T @ x))


def memory_fits(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, MemoryFit]]:
    """Per (scheme, model, scaling) of ok train records with memory: a MemoryFit per figure they carry."""
    from hpc.analysis.groups import ok_records, record_name, record_variant
    from hpc.analysis.memory import memory_of

    points: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for r in ok_records(records):
        m = memory_of(r) if r.get("kind") == "train" else None
        if m is None:
            continue
        key = (record_name(r), str(record_variant(r)), str(r.get("scaling") or "none"))
        for f in FIGURES:
            v = m.get(f)
            if isinstance(v, (int, float)) and math.isfinite(v):
                points.setdefault(key, {}).setdefault(f, []).append((float(r["np"]), float(v)))
    return {key: {f: fit([p[0] for p in pts], [p[1] for p in pts]) for f, pts in by.items()}
            for key, by in points.items()}


def curve_key(group: dict[str, Any]) -> tuple:
    """The memory_fits key of a time curve's group (train curves only match)."""
    return (str(group.get("name")), str(group.get("variant")), str(group.get("scaling") or "none"))


def memory_at(fits: dict[str, MemoryFit], n: int) -> dict[str, Any]:
    """The JSON entry of one curve at N: per figure the bytes, the interval and the fitted form."""
    out = {}
    for f, mf in fits.items():
        value, pi = mf.at(n)
        out[f] = {"bytes": value, "pi95": list(pi) if pi else None, "form": f"{mf.form} per rank",
                  "measured_np": sorted({int(v) for v in mf.n}), "backtest_rms_bytes": mf.backtest_rms}
    return out


def attach(rows: list[dict[str, Any]], curves: list, fits: dict[tuple, dict[str, MemoryFit]]) -> None:
    """Add `memory` (memory_at) to each prediction row of a train curve that has memory figures."""
    by_label = {c.label: curve_key(c.group) for c in curves if c.group.get("kind") == "train"}
    for r in rows:
        key = by_label.get(r.get("curve"))
        if key in fits:
            r["memory"] = memory_at(fits[key], int(r["np"]))


def _cell(entry: dict[str, Any] | None) -> str:
    from hpc.analysis.memory import _size

    if not entry:
        return "—"
    pi = entry["pi95"]
    return _size(entry["bytes"]) + (f" [{_size(pi[0])}, {_size(pi[1])}]" if pi else " (no interval)")


def memory_table(rows: list[dict[str, Any]]):
    """Predicted memory per rank per train curve and N; None when no row has any."""
    from hpc.table import Table

    mine = [r for r in rows if r.get("memory")]
    if not mine:
        return None
    figs = [f for f in FIGURES if any(f in r["memory"] for r in mine)]
    tab = Table("Memory per rank (predicted, 95% prediction interval)",
                ["curve", "N", *(SHOWN[f] for f in figs), "fit (model states)", "measured at N"])
    for r in mine:
        m = r["memory"]
        states = m.get("model_states_bytes") or {}
        tab.add(r["curve"], r["np"], *(_cell(m.get(f)) for f in figs), states.get("form", "—"),
                ",".join(map(str, states.get("measured_np", []))))
    tab.notes.append("each figure fitted over every repetition as a + b/N bytes per rank (a: kept whole on "
                     "every rank; b: split over the N ranks), the ZeRO accounting's form; the interval holds "
                     "run-to-run scatter and what the form missed when refitted without the largest N; none "
                     "where two rank counts without repetitions leave nothing to measure either from")
    return tab


def check_memory(rows: list[dict[str, Any]], held: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predicted vs measured memory at the held-out points (median over their repetitions): error and
    whether the interval covered, per curve, N and figure."""
    from hpc.analysis.groups import ok_records, record_name, record_variant
    from hpc.analysis.memory import memory_of

    measured: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok_records(held):
        m = memory_of(r) if r.get("kind") == "train" else None
        if m is not None:
            key = (record_name(r), str(record_variant(r)), str(r.get("scaling") or "none"), int(r["np"]))
            measured.setdefault(key, []).append(m)
    out = []
    for r in rows:
        for f, e in (r.get("memory") or {}).items():
            g = r["group"]
            got = [m[f] for m in measured.get((*curve_key(g), int(r["np"])), []) if isinstance(m.get(f), (int, float))]
            if not got:
                continue
            med = float(np.median(got))
            pi = e["pi95"]
            out.append({"curve": r["curve"], "np": r["np"], "figure": f, "predicted_bytes": e["bytes"],
                        "pi95": pi, "measured_bytes": med, "runs": len(got),
                        "error_pct": 100.0 * (e["bytes"] / med - 1.0) if med else None,
                        "covered": None if pi is None else bool(pi[0] <= med <= pi[1])})
    return out


def check_table(rows: list[dict[str, Any]]):
    from hpc.analysis.memory import _size
    from hpc.table import Table

    if not rows:
        return None
    tab = Table("Memory per rank: predicted vs measured (held out)",
                ["curve", "N", "figure", "predicted", "95% prediction interval", "measured (median)",
                 "error", "covered"])
    for r in rows:
        pi = r["pi95"]
        tab.add(r["curve"], r["np"], SHOWN[r["figure"]], _size(r["predicted_bytes"]),
                f"[{_size(pi[0])}, {_size(pi[1])}]" if pi else "—", f"{_size(r['measured_bytes'])} ({r['runs']} runs)",
                "—" if r["error_pct"] is None else f"{r['error_pct']:+.1f}%",
                "—" if r["covered"] is None else "yes" if r["covered"] else "NO")
    return tab


def n_table(records: Iterable[dict[str, Any]], predict_at: list[int] | None = None):
    """Model states and peak RSS per rank against N for each scheme, the a + b/N fit, and (optional)
    predictions; None without two or more N."""
    from hpc.analysis.memory import _size, memory_vs_n
    from hpc.table import Table

    data = memory_vs_n(records)
    nps = sorted({n for by in data.values() for per in by.values() for n in per})
    if len(nps) < 2:
        return None
    more = predict_at or []
    tab = Table("Memory per rank against N (model states; peak RSS)",
                ["model", "scheme", *(f"N={n}" for n in nps), "fit a + b/N", *(f"N={n} (predicted)" for n in more)])
    for (variant, scaling), by in sorted(data.items()):
        for name, per_n in sorted(by.items()):
            cells = []
            for n in nps:
                m = per_n.get(n)
                cells.append("—" if not m else f"{_size(m['model_states_bytes'])}; {_size(m['peak_rss_bytes'])}")
            pts = [(n, m["model_states_bytes"]) for n, m in per_n.items() if m]
            mf = fit([n for n, _ in pts], [v for _, v in pts])
            tab.add(f"{variant} ({scaling})", name, *cells, mf.form if len(pts) > 1 else "—",
                    *(_size(mf.at(n)[0]) if len(pts) > 1 else "—" for n in more))
    tab.notes.append("a: bytes every rank keeps whole; b: bytes split over the N ranks (replicated schemes: "
                     "b ≈ 0; ZeRO-3: a ≈ 0, per-rank memory falls as 1/N)")
    return tab
