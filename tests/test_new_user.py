"""What a new user meets first: help that explains the command line, records that say where they ran."""

from __future__ import annotations

from tests.helpers import hpc


def test_sweep_help_explains_the_workload_part():
    proc = hpc("sweep", "strong", "--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert "WORKLOAD" in text and "bench collective --algo" in text and "train --sync" in text
    assert "run [--metric REGEX]" in text and "never takes --np or --json" in text


def test_batch_sizing_is_not_fooled_by_one_slow_call():
    """A descheduled first call once sized a batch at 2 iterations where its neighbours got 194."""
    import time

    from mpi4py import MPI

    from hpc.workloads.bench import _iters_for

    delays = iter([0.04] + [0.0005] * 10_000)
    iters = _iters_for(MPI.COMM_SELF, lambda: time.sleep(next(delays)), target=0.05)
    assert iters >= 40, iters


def test_side_by_side_records_number_their_repetitions(tmp_path):
    """Outside a sweep, `rep` is the repetition within the interleaved run (it was 0 on every record)."""
    from hpc import records

    out = tmp_path / "s.jsonl"
    proc = hpc("train", "--np", "2", "--sync", "ring,mpi", "--reps", "2", "--model", "mlp", "--width", "16",
               "--depth", "1", "--steps", "3", "--batch", "8", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = records.load(out)
    assert sorted((r["sync"], r["rep"]) for r in recs) == [("mpi", 0), ("mpi", 1), ("ring", 0), ("ring", 1)]
    assert all(r["rep"] == r["rep_in_run"] for r in recs)
