"""fit, plot, compare and report work on every mix of records a user can have: good and poor fits, one
rank count, all failed, partial sweeps, mixed kinds and node counts, throughput and time figures.

Each verb runs through its own CLI entry (`args.func(args)`, exactly what `hpc VERB ...` runs) on a
generated records directory; it must either succeed or refuse with an HpcError (one `hpc: error:`
line). Any other exception is a crash a user would see as a bug.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc.cli.main import build_parser
from hpc.errors import HpcError

PROV = {"hpc": "0.2.0", "git_sha": "0" * 40, "python": "3.11", "mpi4py": "4.1.2", "mpi_library": "Open MPI",
        "torch": "2.13.0", "hosts": ["vm"], "cpus": 2, "argv": ["hpc", "test"], "slurm_job_id": None}
NPS = (1, 2, 3, 4, 8)


@st.composite
def a_record(draw, kind: str, name: str, np: int, nodes: int, scaling: str, rep: int) -> dict:
    status = draw(st.sampled_from(["ok"] * 6 + ["failed", "timeout"]))
    t = draw(st.floats(1e-7, 50.0)) if status == "ok" else None
    rec = {"schema": "hpc.record/1", "kind": kind, "np": np, "nodes": nodes, "scaling": scaling,
           "sweep_id": "s1", "point_id": f"np{np:04d}-nodes{nodes:03d}-rep{rep:02d}", "rep": rep,
           "status": status, "error": None if status == "ok" else "it broke",
           "time_s": t, "times_s": [t * draw(st.floats(0.5, 2.0)) for _ in range(draw(st.integers(0, 4)))]
           if t else [], "provenance": dict(PROV, timestamp=f"2026-12-03T09:{rep:02d}:00+00:00",
                                            probe_s=draw(st.floats(1e-4, 1e-3)))}
    if kind == "collective":
        size = draw(st.sampled_from([8, 65536, 1 << 20]))
        rec.update(algo=name, spec=name, size_bytes=size, count=size // 4, dtype="float32", op="SUM",
                   iters=10, batches=len(rec["times_s"]))
        if t:
            bw = size / t / 1e9
            rec.update(algbw_GBps=bw, busbw_GBps=bw * (2 * (np - 1) / np), lat_min_us=t * 1e6,
                       lat_avg_us=t * 1e6, lat_max_us=t * 1e6)
    elif kind == "train":
        batch = draw(st.sampled_from([64, 128]))
        rec.update(sync=name, model="mlp", global_batch=batch, batch_per_rank=batch // np, steps=5)
        if t:
            rec.update(steps_per_s=1 / t, samples_per_s=batch / t)
    else:
        higher = draw(st.booleans())
        rec.update(name=name, workload=["run", "--", name])
        if t:
            rec.update(value=(1 / t) if higher else t, unit="items/s" if higher else "s", higher_is_better=higher)
    return rec


@st.composite
def record_sets(draw) -> list[dict]:
    """A directory's worth of records: one or more curves, any statuses, sometimes one N only."""
    kind = draw(st.sampled_from(["collective", "train", "run", "mixed"]))
    scaling = draw(st.sampled_from(["strong", "weak", "none"]))
    nps = sorted(draw(st.sets(st.sampled_from(NPS), min_size=1, max_size=5)))
    nodes = draw(st.sampled_from([[1], [1, 2]]))
    names = draw(st.sets(st.sampled_from(["ring", "mpi", "ps", "ddp"]), min_size=1, max_size=3))
    reps = draw(st.integers(1, 3))
    out = []
    for rep in range(reps):
        for k in nodes:
            for n in nps:
                if n % k:
                    continue
                for name in sorted(names):
                    this = draw(st.sampled_from(["collective", "train", "run"])) if kind == "mixed" else kind
                    out.append(draw(a_record(this, name, n, k, scaling, rep)))
    return out


def run_verb(*argv: str) -> None:
    """Run one verb as `hpc` runs it, minus main's catch-all: HpcError is a refusal, anything else a bug
    (a library's UserWarning too: it would land on the user's terminal, e.g. an empty plot legend)."""
    args = build_parser().parse_args(list(argv))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            args.func(args)
        except HpcError:
            pass


@settings(max_examples=40, deadline=None, derandomize=bool(os.environ.get("CI")),  # CI: the same 40 sets
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recs=record_sets())
def test_every_analysis_verb_survives_any_record_mix(recs):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "runs"
        (d / "points").mkdir(parents=True)
        with open(d / "points" / "all.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps(r, allow_nan=False) + "\n")
        run_verb("fit", str(d))
        run_verb("fit", str(d), "--json")
        run_verb("plot", str(d), "-o", str(Path(tmp) / "p.png"))
        run_verb("compare", str(d))
        for base in ("mpi", "ring"):
            run_verb("compare", str(d), "--baseline", base)
        run_verb("compare", str(d), str(d))
        run_verb("report", str(d), "-o", str(Path(tmp) / "r" / "REPORT.md"), "--bootstrap", "20")
        ok = [r for r in recs if r["status"] == "ok"]
        if ok:  # a report with anything measured must be written, whatever the fits made of it
            assert (Path(tmp) / "r" / "REPORT.md").exists()


@pytest.mark.parametrize("times", [
    [1.0, 1.0, 1.0, 1.0],          # no speedup at all
    [1.0, 2.0, 4.0, 8.0],          # slows down with N
    [1.0, 0.1, 0.01, 0.001],       # superlinear
])
def test_poor_and_odd_fits_still_report(tmp_path, times):
    d = tmp_path / "runs"
    (d / "points").mkdir(parents=True)
    recs = []
    for rep in range(3):
        for n, t in zip((1, 2, 4, 8), times):
            recs.append({"schema": "hpc.record/1", "kind": "train", "np": n, "nodes": 1, "scaling": "strong",
                         "sweep_id": "s", "point_id": f"p{n}-{rep}", "rep": rep, "status": "ok", "error": None,
                         "sync": "ring", "model": "mlp", "global_batch": 64, "time_s": t * (1 + 0.01 * rep),
                         "samples_per_s": 64 / t, "provenance": dict(PROV, timestamp="2026-12-03T09:00:00+00:00",
                                                                     probe_s=1e-4)})
    (d / "points" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for argv in (["fit", str(d)], ["plot", str(d), "-o", str(tmp_path / "p.png")],
                 ["report", str(d), "-o", str(tmp_path / "REPORT.md")]):
        args = build_parser().parse_args(argv)
        assert args.func(args) in (0, None)
    text = (tmp_path / "REPORT.md").read_text()
    assert "Scaling fits" in text and not math.isnan(len(text))
