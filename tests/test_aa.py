"""The A/A standard on real runs: the same small sweep run twice, back to back, compares 'same'."""

from __future__ import annotations

import json

from tests.helpers import hpc

SWEEP = ["--np", "2", "--reps", "5"]
WORK = ["bench", "collective", "--algo", "ring,mpi", "--sizes", "256KB,1MB", "--batches", "3"]


def test_same_sweep_twice_is_same(tmp_path):
    for name in ("a", "b"):
        proc = hpc("sweep", "strong", *SWEEP, "--out", str(tmp_path / name), *WORK, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = hpc("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    judged = [r for r in rows if r["verdict"] != "reference"]
    assert len(judged) == 2 and all(r["relative_to"] == "mpi" for r in judged)
    same = sum(r["verdict"] == "same" for r in judged)
    assert same / len(judged) >= 0.95, [(r["label"], r["ratio"], r["ci95"], r["verdict"]) for r in judged]
