"""`hpc plot`: speedup and efficiency vs N with the chosen model and its 95% band; busbw vs size.

One PNG with a panel grid chosen from the data: for each scaling regime (strong/weak) with a fit,
speedup (log-log, with the ideal line) and efficiency; for collective records, busbw and time vs
message size at the largest rank count, and busbw vs rank count at the largest size.
matplotlib's Agg backend is used through the object API (no pyplot state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from hpc.errors import HpcError

from hpc.analysis.plot_scaling import (MARKERS as _MARKERS, axis_n as _axis_n, legend as _legend, name as _name,
                                       scaling_panels)


def _median_by(recs: list[dict], key: str, field: str) -> tuple[list[float], list[float]]:
    import numpy as np

    by: dict[float, list[float]] = {}
    for r in recs:
        v = r.get(field)
        if isinstance(v, (int, float)) and isinstance(r.get(key), (int, float)):
            by.setdefault(float(r[key]), []).append(float(v))
    xs = sorted(by)
    return xs, [float(np.median(by[x])) for x in xs]


def _collective_panels(coll: list[dict], color) -> list[Callable]:
    """Panel painters for collective records: busbw/time vs size at max np, busbw vs np."""
    from hpc.table import fmt_bytes

    algos = sorted({str(r.get("algo")) for r in coll})
    pmax = max(int(r["np"]) for r in coll)
    at_p = [r for r in coll if int(r["np"]) == pmax]
    panels = []

    def size_axis(ax, sizes):
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        ax.set_xscale("log", base=2)
        ticks = sorted(set(sizes))
        if len(ticks) > 8:
            ticks = ticks[:: max(1, len(ticks) // 8)]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_bytes(int(x))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("message size")

    def by_size(field: str, ylabel: str, title: str, logy: bool):
        def paint(ax):
            sizes = []
            for i, a in enumerate(algos):
                xs, ys = _median_by([r for r in at_p if str(r.get("algo")) == a], "size_bytes", field)
                xs, ys = zip(*[(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]) if xs else ((), ())
                if xs:
                    ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], color=color(a), label=a,
                            ms=5, lw=1.5)
                    sizes += list(xs)
            if not sizes:
                ax.text(0.5, 0.5, f"no {field} data", ha="center", transform=ax.transAxes)
                return
            size_axis(ax, sizes)
            if logy:
                from matplotlib.ticker import FuncFormatter

                from hpc.table import fmt_time

                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: fmt_time(y)))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title} — np = {pmax}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            _legend(ax, fontsize=8, framealpha=0.9)
        return paint

    def paint_ratio(ax):
        base = dict(zip(*_median_by([r for r in at_p if str(r.get("algo")) == "mpi"],
                                    "size_bytes", "time_s")))
        sizes = []
        for i, a in enumerate(algos):
            if a == "mpi":
                continue
            xs, ys = _median_by([r for r in at_p if str(r.get("algo")) == a], "size_bytes", "time_s")
            pts = [(x, base[x] / y) for x, y in zip(xs, ys) if x in base and y > 0 and x > 0]
            if pts:
                ax.plot(*zip(*pts), marker=_MARKERS[i % len(_MARKERS)], color=color(a), label=a,
                        ms=5, lw=1.5)
                sizes += [x for x, _ in pts]
        ax.axhline(1.0, color=color("mpi"), lw=1.2, ls="--", label="mpi (native)")
        ax.axhline(0.9, color="0.5", lw=0.8, ls=":", label="0.9× native")
        size_axis(ax, sizes or [1])
        ax.set_yscale("log", base=2)
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.25), max(hi, 2.0))
        ax.set_ylabel("speed vs native MPI (time_mpi / time)")
        ax.set_title(f"Relative to native MPI_Allreduce — np = {pmax}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        _legend(ax, fontsize=8, framealpha=0.9)

    if pmax > 1:
        panels.append(by_size("busbw_GBps", "busbw (GB/s), higher is better",
                              "Allreduce bus bandwidth vs size", False))
    panels.append(by_size("time_s", "time per call, lower is better",
                          "Allreduce time vs size", True))
    if pmax > 1 and "mpi" in algos and len(algos) > 1:
        panels.append(paint_ratio)
    nps = sorted({int(r["np"]) for r in coll if int(r["np"]) > 1})
    if len(nps) >= 2:
        smax = max(int(r["size_bytes"]) for r in coll)

        def paint_np(ax):
            for i, a in enumerate(algos):
                xs, ys = _median_by([r for r in coll if str(r.get("algo")) == a and
                                     int(r["size_bytes"]) == smax and int(r["np"]) > 1],
                                    "np", "busbw_GBps")
                if xs:
                    ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], color=color(a), label=a,
                            ms=5, lw=1.5)
            _axis_n(ax, nps)
            ax.set_ylim(bottom=0)
            ax.set_ylabel("busbw (GB/s), higher is better")
            ax.set_title(f"Bus bandwidth vs ranks — {fmt_bytes(smax)}", fontsize=10)
            ax.grid(True, alpha=0.3)
            _legend(ax, fontsize=8, framealpha=0.9)
        panels.append(paint_np)
    return panels


def _scheme_panel(pt: dict, recs_by_name: dict[str, list[float]], color) -> Callable:
    """Painter: one point's schemes side by side, fastest first — bar = geometric mean, whiskers =
    95% CI, dots = every repetition."""
    def paint(ax):
        from hpc.table import fmt_num, fmt_time

        rank = pt["ranking"]
        ys = list(range(len(rank)))[::-1]
        for y, r in zip(ys, rank):
            c = color(r["name"])
            ax.barh(y, r["value"], color=c, alpha=0.35, height=0.6)
            lo, hi = r["ci95"]
            if lo == lo and hi == hi:
                ax.errorbar(r["value"], y, xerr=[[r["value"] - lo], [hi - r["value"]]], fmt="none",
                            ecolor="0.2", elinewidth=1.2, capsize=4)
            vals = recs_by_name.get(r["name"], [])
            ax.plot(vals, [y] * len(vals), "o", color=c, ms=4, mec="0.2", mew=0.4)
            label = fmt_time(r["value"]) if pt["unit"] == "s" else fmt_num(r["value"])
            ax.annotate(f" {label}  {r['speed_vs_best']:.2f}×  {r['verdict']}", (r["value"], y),
                        xytext=(4, 8), textcoords="offset points", fontsize=7.5, color="0.15")
        ax.set_yticks(ys, [r["name"] for r in rank])
        ax.set_xlim(0, max(max(r["ci95"][1] if r["ci95"][1] == r["ci95"][1] else r["value"],
                               max(recs_by_name.get(r["name"], [r["value"]])), r["value"])
                           for r in rank) * 1.45)
        better = "higher" if pt["higher_is_better"] else "lower"
        ax.set_xlabel(f"{pt['metric']} ({pt['unit']}), {better} is better")
        ax.set_title(f"Which is fastest — {pt['point']}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        gone = pt.get("left_out") or []
        if gone:  # a scheme measured beside these but not comparable is named, never silently dropped
            ax.text(0.99, 0.01, "left out: " + "; ".join(f"{g['name']} ({g['reason']})" for g in gone[:3]),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=6.5, color="0.3", wrap=True)
    return paint


def scheme_panels(records: list[dict], color, limit: int = 2) -> list[Callable]:
    """Ranked-scheme charts for the largest rank count of each kind measured by several schemes."""
    from hpc.analysis.compare import METRICS
    from hpc.analysis.ranking import rank_schemes

    ranked = rank_schemes(records)
    chosen: dict[str, dict] = {}
    for pt in ranked:  # sorted by point: the last of each kind has the largest np
        if pt["kind"] != "collective":
            chosen[pt["kind"]] = pt
    panels = []
    for pt in list(chosen.values())[:limit]:
        field = METRICS[pt["metric"]][0]
        at = [r for r in records if r.get("np") == pt["np"] and r.get("kind") == pt["kind"]]
        by: dict[str, list[float]] = {}
        for r in at:
            if isinstance(r.get(field), (int, float)):
                by.setdefault(str(r.get("algo") or r.get("sync")), []).append(float(r[field]))
        panels.append(_scheme_panel(pt, by, color))
    return panels


def _palette(names: Iterable[str]) -> Callable[[str], Any]:
    """Stable colour per name (tab10 in sorted order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    order = {n: i for i, n in enumerate(sorted(set(names)))}
    return lambda n: cmap(order.get(n, 0) % 10)


def plot_figure(out: str | Path, fits: list | None = None, collective: list[dict] | None = None,
                title: str | None = None, schemes: list[dict] | None = None,
                nps: list[int] | None = None) -> Path:
    """Write one PNG with scaling panels for `fits` (predicted out to the largest of `nps`) and
    collective panels for `collective` records."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fits = [f for f in (fits or []) if f.group.get("kind") != "collective"]
    collective = collective or []
    panels: list[Callable] = []
    schemes = schemes or []
    names = [_name(f) for f in fits] + [str(r.get("algo") or r.get("sync")) for r in collective + schemes]
    color = _palette(names)
    if schemes:
        from hpc.analysis.memory_plot import memory_panels

        panels += scheme_panels(schemes, color)
        panels += memory_panels(schemes, color)  # speed vs memory per rank; memory per rank vs N
    panels += scaling_panels(fits, color, nps)  # the chosen model and its band, to the asked N
    if collective:
        panels += _collective_panels(collective, color)
    if not panels:
        raise HpcError("nothing to plot: need a scaling fit, collective records, or schemes "
                       "measured side by side")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.4 * cols, 4.8 * rows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, paint in zip(axes, panels):
        paint(ax)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_path(path: str | Path, out: str | Path, law: str | None = None,
              nps: list[int] | None = None) -> Path:
    """Fit and plot a records file/dir or an np,time_s CSV into one PNG (predictions to max(nps))."""
    from hpc.analysis.groups import load_records, ok_records
    from hpc.analysis.scaling import fit_path, fit_records, is_csv as _is_csv

    path = Path(path)
    if not path.exists():
        raise HpcError(f"{path}: no such file or directory")
    if path.is_file() and _is_csv(path):
        return plot_figure(out, fits=fit_path(path, law), title=path.name, nps=nps)
    recs = load_records(path)
    ok = ok_records(recs)
    if not ok:
        raise HpcError(f"{path}: no ok records to plot")
    coll = [r for r in ok if r.get("kind") == "collective" and isinstance(r.get("size_bytes"), int)]
    scal = [r for r in ok if r.get("kind") != "collective"]
    fits = []
    if scal and len({r.get("np") for r in scal}) > 1:
        try:
            fits = fit_records(scal, law, skipped=[])
        except HpcError:
            if not coll and len({r.get("sync") or r.get("algo") for r in scal}) < 2:
                raise
    return plot_figure(out, fits=fits, collective=coll, title=str(path), schemes=scal, nps=nps)
