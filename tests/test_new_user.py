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


def test_a_throughput_sweep_is_shown_in_its_own_unit(tmp_path):
    """`run --higher-better` records store time_s = work/figure; tables showed '1.659 ns' for 6e8 items/s."""
    import json

    d = tmp_path / "runs" / "points"
    d.mkdir(parents=True)
    rows = []
    for rep in range(3):
        for n, rate in ((1, 6.0e8), (2, 1.1e9), (4, 2.0e9), (8, 3.3e9)):
            value = rate * (1 + 0.01 * rep)
            rows.append({"schema": "hpc.record/1", "kind": "run", "np": n, "nodes": 1, "scaling": "strong",
                         "sweep_id": "s", "point_id": f"np{n}-{rep}", "rep": rep, "status": "ok", "error": None,
                         "name": "pi", "workload": ["run", "--", "./pi"], "value": value, "unit": "items/s",
                         "higher_is_better": True, "time_s": 1 / value,
                         "provenance": {"hosts": ["vm"], "timestamp": "2026-12-03T09:00:00+00:00"}})
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = hpc("fit", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    assert "(items/s)" in proc.stdout and "6.06e+08" in proc.stdout, proc.stdout
    assert " ns" not in proc.stdout
    pred = hpc("predict", str(tmp_path / "runs"), "--np", "16", "-v")
    assert pred.returncode == 0 and " ns" not in pred.stdout and "items/s" in pred.stdout, pred.stdout


def test_deepspeed_says_nothing_into_the_tables():
    """DeepSpeed warned about its accelerator from every rank, in the middle of the demo's tables."""
    proc = hpc("train", "--np", "2", "--sync", "deepspeed-zero1,ring", "--model", "mlp", "--width", "16",
               "--depth", "1", "--steps", "3", "--batch", "8", timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "[WARNING]" not in out and "real_accelerator" not in out, out
