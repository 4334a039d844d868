"""Speedup and efficiency panels of `hpc plot`: measured points, and the chosen model of the family
(the one `hpc predict` uses) with its 95% prediction band, out to the asked N.

A curve with no prediction (poor fit, failed backtest) is drawn as points only, and its axis ends at
the measured N: nothing is extrapolated that the tool would refuse to predict.
"""

from __future__ import annotations

from typing import Any, Callable

MARKERS = "osD^v<>ph*"
DEFAULT_REACH = 8  # without an asked N, curves are drawn to 8× the largest measured N


def legend(ax, **kw: Any) -> None:
    """A legend when the panel has labelled lines (a panel of failed or unlabelled points has none:
    matplotlib would warn on the user's terminal)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def axis_n(ax, ns: list[int]) -> None:
    """log2 x axis with ticks at the given rank counts."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(ns))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ranks N")


def name(fit) -> str:
    """Colour key: the algorithm/sync name, so one scheme has one colour in every panel."""
    return str(fit.group.get("name", fit.label))


def short(fit) -> str:
    g = fit.group
    if "name" not in g:
        return fit.label
    v = g.get("variant")
    out = f"{g['name']} ({v})" if v is not None and g.get("kind") != "collective" else str(g["name"])
    return out + (f" [{g['nodes']} node{'s' if g['nodes'] > 1 else ''}]" if g.get("nodes") else "")


def _ticks(hi: float) -> list[int]:
    q, out = 1, []
    while q <= hi:
        out.append(q)
        q *= 2
    return out


def prediction_curve(fit, reach: float):
    """(N grid, speedup, band lo, band hi) of the forecast from N = 1 to the largest N ≤ reach where
    it predicts; None when it predicts nothing (refused, or no T(1) to take speedups from)."""
    import numpy as np

    fc = getattr(fit, "forecast", None)
    if fc is None or fc.refused or fc.t1 is None:
        return None
    nmax = float(fc.n.max())
    grid = np.unique(np.concatenate([np.geomspace(1, max(reach, nmax), 80), fc.n]))
    ns, s, lo, hi = [], [], [], []
    for q in grid:
        row = fc.row(float(q))
        if row["time_s"] is None:
            if q > nmax:
                break  # too far out from here on
            continue
        k = q * fc.t1 if fc.weak else fc.t1
        ns.append(q)
        s.append(k / row["time_s"])
        lo.append(k / row["pi95"][1])
        hi.append(k / row["pi95"][0])
    if len(ns) < 2:
        return None
    return np.array(ns), np.array(s), np.array(lo), np.array(hi)


def _draw(ax, fit, curve, c, per_rank: bool) -> None:
    """Model (solid over the measured N, dashed beyond) and its 95% prediction band."""
    ns, s, lo, hi = curve
    scale = ns if per_rank else 1.0
    inside = ns <= max(p["np"] for p in fit.points)
    ax.fill_between(ns, lo / scale, hi / scale, color=c, alpha=0.15, lw=0)
    ax.plot(ns[inside], (s / scale)[inside], color=c, lw=1.8)
    if (~inside).any():
        j = max(int(inside.sum()) - 1, 0)
        ax.plot(ns[j:], (s / scale)[j:], color=c, lw=1.4, ls="--")


def _label(fit, curve) -> str:
    fc = fit.forecast
    ci = f" [{fit.ci95[0]:.3f}, {fit.ci95[1]:.3f}]" if fit.ci95 else ""
    head = f"{short(fit)}: P = {fit.p:.3f}{ci}"
    if curve is None:
        why = fc.refused if fc is not None and fc.refused else "no T(1)"
        return f"{head} — no prediction: {why[:60]}{'…' if len(why) > 60 else ''}"
    return f"{head}, model {fc.chosen}" if fc.chosen != fit.law else head


def speedup_panel(ax, fits: list, color: Callable[[str], Any], curves: list, top: float) -> None:
    """Measured speedups (medians, whiskers = rep range), ideal line, model and its band."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    law = fits[0].law
    grid = np.geomspace(1, top, 100)
    ax.plot(grid, grid, color="0.55", lw=1, ls=":", label="ideal S = N")
    for i, (f, curve) in enumerate(zip(fits, curves)):
        c = color(name(f))
        if curve is not None:
            _draw(ax, f, curve, c, per_rank=False)
        ns = np.array([p["np"] for p in f.points], dtype=float)
        s = np.array([p["speedup"] for p in f.points])
        lo = np.array([p["speedup"] * p["time_median_s"] / p["time_max_s"] for p in f.points])
        hi = np.array([p["speedup"] * p["time_median_s"] / p["time_min_s"] for p in f.points])
        ax.errorbar(ns, s, yerr=[s - lo, hi - s], fmt=MARKERS[i % len(MARKERS)], color=c, ms=6,
                    mec="white", mew=0.6, elinewidth=1, capsize=2, label=_label(f, curve))
    ax.set_yscale("log", base=2)
    axis_n(ax, _ticks(top))
    ax.set_xlim(0.9, top * 1.1)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    kind = "Amdahl, strong scaling: S = T(1)/T(N)" if law == "amdahl" else \
        "Gustafson, weak scaling: S = N·T(1)/T(N)"
    ax.set_title(f"Speedup — {kind}", fontsize=10)
    ax.set_ylabel("speedup S(N)")
    ax.grid(True, which="major", alpha=0.3)
    legend(ax, fontsize=7, loc="upper left", framealpha=0.9,
              title="median (whiskers: rep range), chosen model (line),\n95% prediction band, "
                    "prediction (dashed)", title_fontsize=7)


def efficiency_panel(ax, fits: list, color: Callable[[str], Any], curves: list, top: float) -> None:
    """Parallel efficiency S(N)/N, measured and predicted."""
    import numpy as np

    ax.axhline(1.0, color="0.55", lw=1, ls=":")
    for i, (f, curve) in enumerate(zip(fits, curves)):
        c = color(name(f))
        if curve is not None:
            _draw(ax, f, curve, c, per_rank=True)
        ns = np.array([p["np"] for p in f.points], dtype=float)
        e = np.array([p["efficiency"] for p in f.points])
        ax.plot(ns, e, MARKERS[i % len(MARKERS)], color=c, ms=6, mec="white", mew=0.6, label=short(f))
    axis_n(ax, _ticks(top))
    ax.set_xlim(0.9, top * 1.1)
    ax.set_ylim(0, max(1.1, min(ax.get_ylim()[1], 4.0)))
    ax.set_ylabel("efficiency S(N)/N")
    ax.set_title("Parallel efficiency — " + ("strong" if fits[0].law == "amdahl" else "weak") +
                 " scaling", fontsize=10)
    ax.grid(True, alpha=0.3)
    legend(ax, fontsize=7.5, loc="lower left", framealpha=0.9)


def scaling_panels(fits: list, color: Callable[[str], Any], nps: list[int] | None = None) -> list[Callable]:
    """Speedup and efficiency painters per law; curves reach the asked N (default 8× the largest
    measured) where a prediction exists, and the axis ends where the last drawn curve or point does."""
    panels: list[Callable] = []
    for law in ("amdahl", "gustafson"):
        fl = [f for f in fits if f.law == law]
        if not fl:
            continue
        nmax = max(f.points[-1]["np"] for f in fl)
        reach = max(nps) if nps else DEFAULT_REACH * nmax
        curves = [prediction_curve(f, reach) for f in fl]
        top = max([nmax, *(float(c[0][-1]) for c in curves if c is not None)])
        panels.append(lambda ax, fl=fl, cv=curves, top=top: speedup_panel(ax, fl, color, cv, top))
        panels.append(lambda ax, fl=fl, cv=curves, top=top: efficiency_panel(ax, fl, color, cv, top))
    return panels
