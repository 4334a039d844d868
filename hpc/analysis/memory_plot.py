"""Speed against memory per rank (one point per scheme, the Pareto front marked) and memory per rank
against N, as painters for `hpc plot`'s figure, and the "Memory per rank" section of `hpc report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from hpc.analysis.memory import has_memory, memory_tables, memory_vs_n, pareto_front, speed_memory
from hpc.analysis.memory_predict import n_table
from hpc.analysis.plot_scaling import legend

_MIB = float(1 << 20)


def _unit(max_bytes: float) -> tuple[float, str]:
    return (float(1 << 30), "GiB") if max_bytes >= 2 * (1 << 30) else (_MIB, "MiB")


def speed_memory_panel(pt: dict[str, Any], color: Callable[[str], Any]) -> tuple[Callable, list[str]]:
    """Painter of one ranked point (annotated with memory): throughput against peak memory per rank,
    hollow markers at the model states, the Pareto front (less memory and more speed) as a step line.
    Returns (painter, the front's scheme names)."""
    rows = [r for r in pt["ranking"] if r.get("memory") and r["memory"].get("peak_bytes") is not None]
    front = pareto_front([(r["name"], r["memory"]["peak_bytes"], r["value"]) for r in rows])
    higher = pt["higher_is_better"]

    def paint(ax):
        scale, unit = _unit(max(r["memory"]["peak_bytes"] for r in rows))
        for r in rows:
            m, c = r["memory"], color(r["name"])
            x, y = m["peak_bytes"] / scale, r["value"]
            on = r["name"] in front
            ax.plot([x], [y], "o", color=c, ms=9 if on else 6, mec="k" if on else c, mew=1.6 if on else 0.5,
                    zorder=3)
            if m.get("model_states_bytes") is not None:  # how much of the peak the model states are
                xs = m["model_states_bytes"] / scale
                ax.plot([xs, x], [y, y], "-", color=c, lw=0.8, alpha=0.6)
                ax.plot([xs], [y], "o", mfc="none", mec=c, ms=6, mew=1.2)
            ax.annotate(f" {r['name']}" + (" ★" if on else ""), (x, y), xytext=(5, 4), textcoords="offset points",
                        fontsize=7.5)
        pts = sorted((r["memory"]["peak_bytes"] / scale, r["value"]) for r in rows if r["name"] in front)
        if len(pts) > 1:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post" if higher else "pre", color="0.25",
                    ls="--", lw=1.0, label="Pareto front (★)")
            legend(ax, fontsize=7.5, loc="lower right")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"memory per rank ({unit}): ● peak ({'GPU' if rows[0]['memory']['device'] == 'cuda' else 'RSS'})"
                      f", ○ model states")
        ax.set_ylabel(f"{pt['metric']} ({pt['unit']}), {'higher' if higher else 'lower'} is better")
        ax.set_title(f"Speed vs memory per rank — {pt['point']}", fontsize=10)
        ax.grid(True, alpha=0.3)
    return paint, front


def memory_n_panel(records: list[dict[str, Any]], color: Callable[[str], Any]) -> Callable | None:
    """Painter: model states (solid) and peak RSS (dashed) per rank against N, per scheme, with a 1/N
    guide; None without two or more N."""
    data = memory_vs_n(records)
    if not data:
        return None
    key = max(data, key=lambda k: sum(len(v) for v in data[k].values()))
    by = data[key]
    nps = sorted({n for per in by.values() for n in per})
    if len(nps) < 2:
        return None

    def paint(ax):
        top = max(m["model_states_bytes"] for per in by.values() for m in per.values() if m)
        scale, unit = _unit(top)
        for name, per in sorted(by.items()):
            ns = [n for n, m in per.items() if m]
            c = color(name)
            ax.plot(ns, [per[n]["model_states_bytes"] / scale for n in ns], "o-", color=c, label=name, lw=1.5)
            rss = [n for n in ns if per[n].get("peak_rss_bytes") is not None]
            ax.plot(rss, [per[n]["peak_rss_bytes"] / scale for n in rss], "--", color=c, lw=0.9, alpha=0.7)
        ax.plot(nps, [top / scale * nps[0] / n for n in nps], ":", color="0.4", label="∝ 1/N")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(nps, [str(n) for n in nps])
        ax.set_xlabel("ranks N")
        ax.set_ylabel(f"per rank ({unit}): — model states, -- peak RSS")
        ax.set_title(f"Memory per rank vs N — {key[0]} ({key[1]})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        legend(ax, fontsize=7.5)
    return paint


def memory_panels(records: list[dict[str, Any]], color: Callable[[str], Any]) -> list[Callable]:
    """The speed–memory chart of the largest-N train point measured by several schemes (with memory),
    and memory per rank against N when the records span two or more N."""
    train = [r for r in records if r.get("kind") == "train"]
    if not any(isinstance(r.get("memory"), dict) for r in train):
        return []
    panels = []
    points = [pt for pt in speed_memory(train) if sum(1 for r in pt["ranking"] if r.get("memory")) >= 2]
    if points:
        panels.append(speed_memory_panel(points[-1], color)[0])  # sorted by point: the last has the largest N
    per_n = memory_n_panel(train, color)
    if per_n is not None:
        panels.append(per_n)
    return panels


def report_section(records: list[dict[str, Any]], out_dir: Path, stem: str) -> list[str]:
    """Markdown lines of `hpc report`'s "Memory per rank" section (empty when no record has memory);
    its figure is written next to the report."""
    train = [r for r in records if r.get("kind") == "train" and isinstance(r.get("memory"), dict)]
    if not train:
        return []
    md = ["## Memory per rank", "",
          "What each scheme costs in memory beside what it costs in time. Model states per rank are counted "
          "from the tensors each scheme keeps (parameters, gradients, optimizer state, sync buffers; every "
          "storage once); peak RSS is the rank's peak resident memory during the timed steps; expected is the "
          "ZeRO paper's accounting (stage 1 shards optimizer state over N ranks, 2 also gradients, 3 also "
          "parameters), a gap above 20% is flagged (⚑). Throughput here: the median over repetitions.", ""]
    points = speed_memory(train)
    if has_memory(points):
        md += [t.to_markdown() for t in memory_tables(points, wide=True)]
    nps = sorted({int(r["np"]) for r in train})
    tab = n_table(train, [2 * nps[-1], 8 * nps[-1]]) if len(nps) > 1 else None
    if tab is not None:
        md += [tab.to_markdown()]
    panels = memory_panels(train, palette(str(r.get("sync")) for r in train))
    if panels:
        path = _figure(out_dir / f"{stem}-memory.png", panels)
        md += [f"![speed and memory per rank]({path.name})", ""]
    return md


def palette(names) -> Callable[[str], Any]:
    """Stable colour per scheme (tab10 in sorted order, as hpc plot colours them)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    order = {n: i for i, n in enumerate(sorted(set(names)))}
    return lambda n: cmap(order.get(n, 0) % 10)


def _figure(out: Path, panels: list[Callable]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4 * len(panels), 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, paint in zip(fig.subplots(1, len(panels), squeeze=False).ravel(), panels):
        paint(ax)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
