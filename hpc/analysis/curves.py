"""Scaling curves from records or a CSV: what fit, predict and plot treat as one line of (N, time).

A curve is one group of ok records (kind, algo/sync/program, size/model/args, scaling) measured on
one node count: a `--nodes 1,2` sweep is two curves, since 8 ranks on one node and on two are
different machines. Collective curves and training curves also carry the α–β form of the
collective they use, which joins the model family as a candidate.

    >>> curves, notes = curves_from_path("runs/s1")     # [Curve], ["split by node count: ..."]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hpc.analysis.groups import GROUP_FIELDS, group_label, group_records, load_records
from hpc.analysis.models import Model, alpha_beta_model
from hpc.errors import HpcError

SCALINGS = ("strong", "weak")
_SCALING_ALIASES = {"strong": "strong", "amdahl": "strong", "weak": "weak", "gustafson": "weak"}
_TRAIN_FORMS = {"ring": "ring", "mpi": "ring", "ddp": "ring", "horovod": "ring", "auto": "ring",
                "ps": "ring", "shm": "ring", "hier": "ring"}


@dataclass
class Curve:
    """One scaling curve: every repetition's (N, time), how it scales and what it is."""

    label: str
    group: dict[str, Any]
    scaling: str                     # strong | weak | collective
    n: list[float]
    t: list[float]
    extra: list[Model] = field(default_factory=list)
    figure_unit: str | None = None   # a throughput (`run --higher-better`): t is work/figure

    @property
    def key(self) -> tuple:
        """What matches this curve to the same curve in another run (for --check)."""
        return tuple(self.group.get(k) for k in (*GROUP_FIELDS, "nodes"))


def normalize_scaling(text: str | None) -> str | None:
    """strong/amdahl → strong, weak/gustafson → weak (None stays None); anything else is an error."""
    if text is None:
        return None
    key = str(text).strip().lower()
    if key not in _SCALING_ALIASES:
        raise HpcError(f"unknown scaling {text!r}: use strong (Amdahl) or weak (Gustafson)")
    return _SCALING_ALIASES[key]


def split_by_nodes(groups: dict[tuple, list[dict[str, Any]]]
                   ) -> tuple[list[tuple[tuple, int | None, list[dict[str, Any]]]], list[str]]:
    """(key, nodes, records) per curve: a group measured on several node counts becomes one curve
    per count (nodes is None where the group has one count), with a note saying so."""
    out, notes = [], []
    for key, recs in groups.items():
        by: dict[int, list[dict[str, Any]]] = {}
        for r in recs:
            v = r.get("nodes")
            by.setdefault(int(v) if isinstance(v, (int, float)) and v >= 1 else 1, []).append(r)
        if len(by) == 1:
            out.append((key, None, recs))
            continue
        notes.append(f"{group_label(key)}: measured on {', '.join(map(str, sorted(by)))} nodes — "
                     "fitted as one curve per node count (reps are not pooled across node counts; "
                     "one rank runs on one node, so T(1) is every curve's reference)")
        ones = [r for r in recs if r.get("np") == 1]
        for k in sorted(by):
            mine = by[k]
            if ones and not any(r.get("np") == 1 for r in mine):
                mine = ones + mine
            out.append((key, k, mine))
    return out, notes


def curve_label(key: tuple, nodes: int | None) -> str:
    label = group_label(key)
    return label if nodes is None else f"{label[:-1]}, {nodes} node{'s' if nodes > 1 else ''})"


def _extra(kind: str, name: str, variant: Any, scaling: str) -> list[Model]:
    """The α–β candidate for collective and training curves (none for other programs)."""
    from hpc.analysis.costmodel import form_for

    if kind == "collective":
        return [alpha_beta_model(form_for(name))]
    if kind == "train":
        base = name.split("-")[0].lower()
        form = form_for(name) if base not in _TRAIN_FORMS else _TRAIN_FORMS[base]
        return [alpha_beta_model(form, ("1", "1/N") if scaling == "strong" else ("1",))]
    return []


def figure_unit(recs: list[dict[str, Any]]) -> str | None:
    """The unit of a throughput curve (every record a `run --higher-better` one), else None."""
    if recs and all(r.get("kind") == "run" and r.get("higher_is_better") for r in recs):
        return str(recs[0].get("unit") or "1/s")
    return None


def curves_from_records(records: Iterable[dict[str, Any]], scaling: str | None = None,
                        skipped: list[str] | None = None,
                        flag: str = "--scaling strong|weak") -> tuple[list[Curve], list[str]]:
    """One Curve per group and node count of ok records; `scaling` overrides the records' own
    (`flag`: how the calling verb lets a user give it, for the skip reason)."""
    records = list(records)
    if not records:
        raise HpcError("no records found")
    groups = group_records(records)
    if not groups:
        raise HpcError(f"no ok records among {len(records)} (all failed or timed out)")
    parts, notes = split_by_nodes(groups)
    curves = []
    for key, nodes, recs in parts:
        kind, name, variant, rec_scaling = key
        sc = scaling or (rec_scaling if rec_scaling in SCALINGS else
                         "collective" if kind == "collective" else None)
        label = curve_label(key, nodes)
        if sc is None:
            if skipped is not None:
                skipped.append(f"{label}: scaling is {rec_scaling!r}; pass {flag}")
            continue
        group = dict(zip(GROUP_FIELDS, key))
        if nodes is not None:
            group["nodes"] = nodes
        if sc == "collective":  # one rank does no communication: the α–β form starts at 2
            recs = [r for r in recs if r["np"] >= 2]
        curves.append(Curve(label, group, sc, [float(r["np"]) for r in recs],
                            [float(r["time_s"]) for r in recs], _extra(kind, name, variant, sc),
                            figure_unit(recs)))
    return curves, notes


def load_csv(path: str | Path) -> tuple[list[float], list[float]]:
    """(np, time_s) columns of a CSV with one row per repetition; other columns are ignored.

    Read with the csv module (quoted fields, a UTF-8 byte-order mark, rows with extra fields) and
    checked value by value: a bad cell is one error line naming the row."""
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    if not text.strip():
        raise HpcError(f"{path}: empty file")
    reader = csv.reader(text.splitlines())
    header = [c.strip().lower() for c in next(reader)]
    missing = [c for c in ("np", "time_s") if c not in header]
    if missing:
        raise HpcError(f"{path}: missing column(s) {', '.join(missing)} (need a header np,time_s)")
    i_np, i_t = header.index("np"), header.index("time_s")
    n, t = [], []
    for line, row in enumerate(reader, 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(i_np, i_t):
            raise HpcError(f"{path}:{line}: {len(row)} field(s), expected at least {len(header)}")
        a, b = row[i_np].strip(), row[i_t].strip()
        try:
            nv, tv = float(a), float(b)
        except ValueError:
            raise HpcError(f"{path}:{line}: np and time_s must be numbers, got {a!r}, {b!r}") from None
        if not (math.isfinite(nv) and nv == int(nv) and 1 <= nv <= 1e7):
            raise HpcError(f"{path}:{line}: np must be a whole number of ranks >= 1, got {a!r}")
        if not (math.isfinite(tv) and tv > 0):
            raise HpcError(f"{path}:{line}: non-positive or non-finite time_s {b!r}: times must be > 0")
        if tv >= 1e12:
            raise HpcError(f"{path}:{line}: time_s {b!r} is over 1e12 s: not a measured time")
        n.append(nv)
        t.append(tv)
    if not n:
        raise HpcError(f"{path}: no data rows under the header")
    return n, t


def is_csv(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.suffix.lower() == ".csv":
        return True
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        head = f.readline().strip()
    return bool(head) and not head.startswith("{")


def curves_from_path(path: str | Path, scaling: str | None = None,
                     skipped: list[str] | None = None) -> tuple[list[Curve], list[str]]:
    """Curves of a CSV (np,time_s; strong unless `scaling` says weak) or a records file/directory."""
    path = Path(path)
    if not path.exists():
        raise HpcError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise HpcError(f"{path}: empty file")
    scaling = normalize_scaling(scaling)
    if is_csv(path):
        n, t = load_csv(path)
        return [Curve(path.name, {"source": str(path)}, scaling or "strong", n, t)], []
    return curves_from_records(load_records(path), scaling, skipped)


def check_points(n: list[float], t: list[float], label: str) -> None:
    """Raise HpcError for a curve that cannot be fitted at all (too few N, bad times)."""
    if not n:
        raise HpcError(f"{label}: no measurements")
    if any(not (math.isfinite(v) and v > 0) for v in t):
        raise HpcError(f"{label}: times must be positive finite numbers")
    if len(set(n)) < 2:
        raise HpcError(f"{label}: only one rank count (np={int(n[0])}): predicting needs several")
