"""How much the machine itself moved between two runs, and the one line that says so: from the in-run
reference when both runs measured it (its own slowdown), else from the machine probe in provenance."""

from __future__ import annotations

import math
from typing import Any, Iterable


def probe_drift(a: Iterable[dict[str, Any]], b: Iterable[dict[str, Any]]) -> float:
    """How much slower the machine was in B than in A: ratio of the median machine probes recorded
    in provenance (1.0 when either side has none)."""
    import numpy as np

    def probe(recs):
        v = [r.get("provenance", {}).get("probe_s") for r in recs]
        v = [x for x in v if isinstance(x, (int, float)) and x > 0]
        return float(np.median(v)) if v else None

    pa, pb = probe(a), probe(b)
    return pb / pa if pa and pb else 1.0


def reference_drift(rows: list[dict[str, Any]], ref: str | None) -> float | None:
    """How much slower B ran than A by the in-run reference itself: the median over its points of
    its time ratio B/A (a bandwidth or throughput ratio inverted). None without a reference."""
    import numpy as np

    mine = [r for r in rows if ref is not None and r["name"] == ref and r["a_median"] > 0 and r["b_median"] > 0]
    if not mine:
        return None
    slow = [(r["a_median"] / r["b_median"]) if r["higher_is_better"] else (r["b_median"] / r["a_median"])
            for r in mine]
    return float(np.median(slow))


def _pace(x: float) -> str:
    return f"×{x:.2f} slower" if x >= 1 else f"×{1 / x:.2f} faster"


def drift_note(probe: float, reference: float | None, ref: str | None, threshold_pct: float,
               cancelled: bool) -> str | None:
    """One line on how the machine moved between the runs, from the best evidence: the in-run
    reference when both runs measured it (its own slowdown), else the machine probe. The probe is a
    5 ms check when each run starts: a snapshot that once read ×1.61 faster while the reference ran
    1.65–1.83× slower, so it never overrules the reference, and disagreeing it is said to."""
    band = math.log1p(threshold_pct / 100)
    if reference is not None and abs(math.log(reference)) > band:
        tail = ("compared relative to it, so this drift cancels" if cancelled else
                "changes that drift could explain are 'inconclusive'")
        note = f"the machine drifted: {ref} itself ran {_pace(reference)} in B than in A ({tail})"
        if abs(math.log(probe)) > band and (probe > 1) != (reference > 1):
            note += (f"; the machine probe (a 5 ms check as each run started) read {_pace(probe)}, "
                     "a snapshot that the reference overrules")
        return note
    if reference is None and abs(math.log(probe)) > band:
        return (f"the machine probe (a 5 ms check as each run started) ran {_pace(probe)} in B than "
                "in A: changes that drift could explain are 'inconclusive'")
    return None
