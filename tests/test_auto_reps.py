"""Repetitions until the answer is clear: `bench --batches auto`, `train --sync a,b --reps auto` and
`sweep --reps auto` add interleaved batches / rounds / repetitions while a verdict is unclear, within
--max-reps and --max-time; their records say so, and `compare` calls an unsettled point
"inconclusive", never "same". Real mpirun on 2 ranks, tiny sizes (speed is never asserted)."""

from __future__ import annotations

import json
from collections import Counter

from hpc import records
from tests.helpers import PLUGINS, hpc, one_error_line

SLOW2X = f"{PLUGINS / 'slow2x.py'}:allreduce"
NATIVE = f"{PLUGINS / 'native_copy.py'}:allreduce"


def test_bench_batches_auto_adds_batches_within_the_budget(tmp_path):
    out = tmp_path / "b.jsonl"
    proc = hpc("bench", "collective", "--algo", f"{SLOW2X},mpi", "--np", "2", "--sizes", "64KB",
               "--batches", "auto", "--max-reps", "12", "--max-time", "20", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = records.load(out)
    assert len(recs) == 2 and len({r["order_seed"] for r in recs}) == 1
    for r in recs:
        assert r["auto"]["stopped"] in ("decided", "max-reps", "max-time") and r["auto"]["reference"] == "mpi"
        assert 5 <= r["batches"] == len(r["times_s"]) <= 12
    assert recs[0]["batches"] == recs[1]["batches"]          # interleaved: every algorithm each round
    assert {r["interleave"] for r in recs} == {"call"}         # auto: calls alternate within a round
    assert recs[0]["iters"] == recs[1]["iters"]                # ... one beside the other
    cmp = hpc("compare", str(out), "--baseline", "mpi", "--json", timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    (row,) = json.loads(cmp.stdout)
    assert row["paired"] and row["verdict"] in ("worse", "inconclusive"), row   # twice the work: never "same"
    assert row["detectable_pct"] > 10 and row["a_n"] == recs[0]["batches"]


def test_calls_interleave_on_request(tmp_path):
    """--interleave call with a fixed number of batches: every algorithm's calls alternate in each round
    (a clobbering or wrong plug-in is still caught: the check runs before)."""
    out = tmp_path / "c.jsonl"
    proc = hpc("bench", "collective", "--algo", f"{NATIVE},ring,mpi", "--np", "2", "--sizes", "4KB,64KB",
               "--batches", "3", "--interleave", "call", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = records.load(out)
    assert len(recs) == 6 and all(r["interleave"] == "call" and r["batches"] == 3 and r["correct"] for r in recs)
    assert all(r["time_s"] > 0 and len(r["times_s"]) == 3 for r in recs)


def test_auto_flags_are_checked():
    err = one_error_line(hpc("bench", "collective", "--algo", "mpi", "--np", "2", "--sizes", "8B",
                             "--max-reps", "10", timeout=120))
    assert "--batches auto" in err
    bad = hpc("bench", "collective", "--algo", "mpi", "--np", "2", "--batches", "many", timeout=120)
    assert bad.returncode == 2 and "or 'auto'" in bad.stderr
    err = one_error_line(hpc("train", "--np", "2", "--sync", "ring,mpi", "--max-time", "5", timeout=120))
    assert "--reps auto" in err


def test_train_reps_auto_runs_rounds_and_pairs_them(tmp_path):
    out = tmp_path / "t.jsonl"
    proc = hpc("train", "--np", "2", "--sync", "ring,mpi", "--reps", "auto", "--max-reps", "3", "--steps", "2",
               "--warmup", "1", "--json", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    recs = records.load(out)
    rounds = Counter(r["rep_in_run"] for r in recs)
    assert rounds == {0: 2, 1: 2, 2: 2}, rounds               # each scheme once per round, 3 rounds at most
    assert all(r["order"] == "rounds" and r["auto"]["max_reps"] == 3 for r in recs)
    assert "--reps auto: stopped after 3 rounds" in proc.stdout
    ranked = json.loads(hpc("compare", str(out), "--json", timeout=120).stdout)
    second = ranked[0]["ranking"][1]
    assert second["n"] == 3 and second["verdict"] in ("slower", "same as fastest", "inconclusive")
    assert second["vs_best_ci95"] is not None


def test_sweep_reps_auto_adds_repetitions_where_unclear(tmp_path):
    out = tmp_path / "sw"
    proc = hpc("sweep", "strong", "--np", "2", "--reps", "auto", "--max-reps", "4", "--out", str(out),
               "bench", "collective", "--algo", f"{NATIVE},mpi", "--sizes", "64KB", "--batches", "3", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reps = sorted({r["rep"] for r in records.load(out / "points")})
    assert reps[:3] == [0, 1, 2] and len(reps) <= 4
    assert "--reps auto:" in proc.stdout
    assert json.loads((out / "sweep.json").read_text())["reps"] == "auto"
    err = one_error_line(hpc("sweep", "strong", "--np", "2", "--max-reps", "4", "--out", str(tmp_path / "x"),
                             "bench", "collective", "--algo", "mpi", timeout=120))
    assert "--reps auto" in err
