"""`hpc demo` end to end (its quick form) on a busy machine: sweeps, training, fits, compare, plots and
report all land while a CPU hog keeps every core busy, as users' machines are."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import pandas as pd

from hpc import records
from tests.helpers import hpc


@contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """n busy-looping processes for the duration of the block (killed by pid afterwards)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
        for h in hogs:
            h.wait()


def test_demo_quick_runs_the_whole_pipeline_on_a_busy_machine(tmp_path):
    out = tmp_path / "demo"
    with cpu_hogs(os.cpu_count() or 1):
        proc = hpc("demo", "--quick", "--out", str(out), "--np", "1,2", "--reps", "1", timeout=1500)
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
    assert f"report:  {out / 'REPORT.md'}" in proc.stdout


def test_demo_never_claims_what_a_failed_step_did_not_write(tmp_path, monkeypatch, capsys):
    """Real `hpc` steps that fail (nothing to fit, plot or report): none of their files is pointed to."""
    import argparse

    from hpc.cli import demo

    missing = str(tmp_path / "never-measured")
    monkeypatch.setattr(demo, "steps", lambda out, *a: [
        ("plot", ["plot", missing, "-o", str(out / "x.png")]),
        ("the report", ["report", missing, "-o", str(out / "REPORT.md")])])
    args = argparse.Namespace(out=str(tmp_path / "demo"), np="1,2", reps=1, sync_np=2, quick=True)
    assert demo.run(args) == 1
    shown = capsys.readouterr().out
    assert "0/2 steps ok" in shown and "failed: the report" in shown
    assert "report:  not written" in shown and "plots:   none written" in shown
