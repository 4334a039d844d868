"""`hpc demo` end to end (its quick form): sweeps, training, fits, compare, plots and report all land."""

from __future__ import annotations

import pandas as pd

from hpc import records
from tests.helpers import hpc


def test_demo_quick_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    proc = hpc("demo", "--quick", "--out", str(out), "--np", "1,2", "--reps", "1", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "14/14 steps ok" in proc.stdout
    for name in ("collective", "train-strong", "train-weak"):
        df = pd.DataFrame(records.load(out / name))
        assert sorted(df.np.unique()) == [1, 2] and (df.status == "ok").all()
        assert (out / f"{name}.png").stat().st_size > 10_000
    sync = pd.DataFrame(records.load(out / "sync"))
    assert set(sync.sync) == {"ring", "mpi", "ps"} and (sync.np == 2).all()
    assert (sync.groupby("sync").size() == 3).all() and sync.order_seed.nunique() == 1  # interleaved reps
    assert (out / "schemes.png").stat().st_size > 10_000
    assert "Which is fastest" in proc.stdout.split("the answer")[-1]
    report = (out / "REPORT.md").read_text()
    assert "Amdahl" in report or "amdahl" in report
    assert ".png" in report
