"""Reading and grouping records for analysis: one public home for what fit, compare, plot, report
and the cost model share (which records form one curve, which are usable, stable ordering).

    >>> recs = load_records("runs/s1")          # a .jsonl file or a sweep directory
    >>> curves = group_records(recs)            # {(kind, algo/sync, size/model, scaling): [records]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from hpc.errors import HpcError

# --------------------------------------------------------------------------- records

def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a JSON Lines file or a directory of *.jsonl files (a sweep directory)."""
    from hpc.records import load

    path = Path(path)
    if not path.exists():
        raise HpcError(f"{path}: no such file or directory")
    try:
        return list(load(path))
    except HpcError:
        raise
    except (OSError, ValueError) as e:
        raise HpcError(f"{path}: cannot read records ({e})") from None


def json_safe(x: Any) -> Any:
    """Plain JSON-safe value: numpy scalars become Python numbers, NaN and ±inf become null."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


GROUP_FIELDS = ("kind", "name", "variant", "scaling")


def record_name(rec: dict[str, Any]) -> str:
    """The algorithm (collective), sync scheme (train) or program name (run) of a record."""
    if rec.get("kind") == "run":
        return str(rec.get("name") or "program")
    return str(rec.get("algo") or rec.get("sync") or "unknown")


def record_variant(rec: dict[str, Any]) -> Any:
    """What else must match for points to be one scaling curve: message size, model, or (run) the
    program's arguments and how its figure was read."""
    if rec.get("kind") == "collective":
        return rec.get("size_bytes")
    if rec.get("kind") == "run":
        return rec.get("args") or "(no args)"
    return rec.get("model")


def group_key(rec: dict[str, Any]) -> tuple:
    """(kind, algo/sync, size_bytes/model, scaling): the records that form one scaling curve."""
    return (str(rec.get("kind", "?")), record_name(rec), record_variant(rec),
            str(rec.get("scaling") or "none"))


def group_label(key: tuple) -> str:
    """Short human label of a group key, e.g. 'train ring mlp (strong)'."""
    from hpc.table import fmt_bytes

    kind, name, variant, scaling = key
    v = fmt_bytes(variant) if kind == "collective" and isinstance(variant, (int, float)) else variant
    return f"{kind} {name} {v} ({scaling})"


def ok_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only records with status ok and a positive finite time_s."""
    out = []
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        ts = r.get("time_s")
        if isinstance(ts, (int, float)) and math.isfinite(ts):
            out.append(r)
    return out


def failure_note(records: Iterable[dict[str, Any]], limit: int = 3) -> str | None:
    """One line naming the failed records that analysis leaves out (None when there are none), so
    a fit or ranking never silently rests on the points that worked: a plug-in wrong at np=3 must
    not come out "fastest" from np=1,2,4 alone."""
    bad = [r for r in records if r.get("status", "ok") != "ok"]
    if not bad:
        return None
    shown = []
    for r in bad[:limit]:
        what = " ".join(str(x) for x in (r.get("algo") or r.get("sync") or r.get("name"),
                                          r.get("size_bytes") and f"{r['size_bytes']} B") if x)
        where = f"np={r.get('np')}" + (f" rep={r['rep']}" if r.get("rep") is not None else "")
        err = " ".join(str(r.get("error") or r.get("status")).split())
        shown.append(f"{where}{' ' + what if what else ''}: {err[:100]}{'…' if len(err) > 100 else ''}")
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} failed record(s) left out — {'; '.join(shown)}{more}"


def group_records(records: Iterable[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Group ok records by group_key, in a stable sorted order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok_records(records):
        groups.setdefault(group_key(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: sort_key(kv[0])))


def sort_key(key: tuple) -> tuple:
    """Order tuples of mixed str/number/None: numbers numerically, then strings."""
    return tuple((0, float(x), "") if isinstance(x, (int, float)) and not isinstance(x, bool)
                 else (1, 0.0, str(x)) for x in key)
