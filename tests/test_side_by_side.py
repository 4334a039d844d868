"""`hpc train --sync a,b --reps R`: every scheme R times in rounds of shuffled, recorded order, then a ranking."""

from __future__ import annotations

import random

from hpc import records
from tests.helpers import hpc


def test_schemes_side_by_side_interleaved_and_ranked(tmp_path):
    out = tmp_path / "sbs.jsonl"
    proc = hpc("train", "--np", "2", "--sync", "ring,mpi", "--reps", "2", "--steps", "4", "--warmup", "1",
               "--order-seed", "7", "--json", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    recs = records.load(out)
    assert len(recs) == 4 and all(r["order_seed"] == 7 and r["status"] == "ok" for r in recs)
    shuffle, expected = random.Random(7).shuffle, []
    for rep in range(2):  # rounds: each scheme once per round, the round's order shuffled
        names = ["ring", "mpi"]
        shuffle(names)
        expected += [(n, rep) for n in names]
    assert [(r["sync"], r["rep_in_run"]) for r in sorted(recs, key=lambda r: r["run_index"])] == expected
    assert "Which is fastest" in proc.stdout and "seed 7" in proc.stdout
    assert "\x1b[" not in proc.stdout


def test_a_sweep_point_can_hold_a_scheme_list(tmp_path):
    out = tmp_path / "sw"
    proc = hpc("sweep", "strong", "--np", "2", "--out", str(out), "train", "--sync", "ring,mpi", "--reps",
               "2", "--steps", "3", "--warmup", "1", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = records.load(out / "points")
    assert sorted(r["sync"] for r in recs) == ["mpi", "mpi", "ring", "ring"]
    ranked = hpc("compare", str(out), "--json", timeout=120)
    assert ranked.returncode == 0 and '"ranking"' in ranked.stdout
