"""One small table type rendered three ways (rich, markdown, CSV) so fit/compare/report agree."""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO


@dataclass
class Table:
    """A titled grid of already-formatted cells, plus optional notes printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        """Append one row; cells are turned into strings (None -> em dash)."""
        self.rows.append([_cell(c) for c in cells])

    def to_markdown(self) -> str:
        """GitHub-flavoured markdown: bold title line, pipe table, notes as a list."""
        out = [f"**{self.title}**", ""] if self.title else []
        out.append("| " + " | ".join(_md(c) for c in self.columns) + " |")
        out.append("|" + "|".join("---" for _ in self.columns) + "|")
        out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        """Header row then data rows; title and notes are left out (machine-readable)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(self.rows)
        return buf.getvalue()

    def to_rich(self):  # -> rich.table.Table
        """A rich Table; numbers right-aligned, notes as the caption."""
        from rich.table import Table as RichTable

        t = RichTable(title=self.title or None, caption="\n".join(self.notes) or None,
                      caption_justify="left", title_justify="left")
        for i, c in enumerate(self.columns):
            numeric = any(_looks_numeric(r[i]) for r in self.rows if i < len(r))
            t.add_column(c, justify="right" if numeric else "left", overflow="fold")
        for r in self.rows:
            t.add_row(*r)
        return t


def print_tables(tables: Iterable[Table], fmt: str = "rich", file: TextIO | None = None) -> None:
    """Print tables as `rich`, `markdown` or `csv` (CSV tables separated by a blank line)."""
    file = file or sys.stdout
    tables = list(tables)
    if fmt == "rich":
        from rich.console import Console

        from hpc.env import get

        # a rank's stdout is Open MPI's pty even when the user's is a pipe: the launcher says which
        forced = get("HPC_TTY")
        tty = forced == "1" if forced is not None else hasattr(file, "isatty") and file.isatty()
        console = Console(file=file, width=None if tty else 120, soft_wrap=False, force_terminal=tty,
                          no_color=not tty)
        for t in tables:
            console.print(t.to_rich())
            console.print()
        return
    render = {"markdown": Table.to_markdown, "csv": Table.to_csv}[fmt]
    file.write("\n".join(render(t) for t in tables))


def _cell(c: Any) -> str:
    if c is None:
        return "—"
    if isinstance(c, float):
        return fmt_num(c)
    return str(c)


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _looks_numeric(s: str) -> bool:
    s = s.strip().rstrip("%×x").split(" ")[0]
    try:
        float(s.replace("[", "").replace("]", "").replace(",", "").lstrip("+"))
        return True
    except ValueError:
        return False


def fmt_num(x: float | None, digits: int = 4) -> str:
    """Compact number: `digits` significant figures, em dash for None/NaN, ∞ for infinity."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if 1e3 <= abs(x) < 1e12:  # 56,290 rather than 5.629e+04
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_time(s: float | None) -> str:
    """Seconds as a readable duration with a unit (ns, µs, ms, s)."""
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "—"
    a = abs(s)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if a >= scale:
            return f"{s / scale:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


def fmt_bytes(n: float | None) -> str:
    """Bytes the way `hpc bench` prints them (binary units): 1048576 -> '1MiB'."""
    if n is None:
        return "—"
    from hpc.units import format_size

    return format_size(int(n))
