"""Memory per rank: the accounting of every scheme on real ranks (ring, Horovod, DDP, DeepSpeed ZeRO
1/2/3 with Adam on 2 ranks), expected vs measured, the compare table and --max-memory, the speed–
memory plot with its Pareto front, the report section, a sweep's memory against N, hpc.torch's record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc.workloads.memory import GAP_FLAG_PCT
from hpc.workloads.memory_count import (Layout, count_bytes, expected_bytes, optimizer_values_per_param, peak_rss_bytes,
                                        zero_layout)
from tests.helpers import hpc, mpirun, one_error_line

torch = pytest.importorskip("torch")

SCHEMES = ("ring", "horovod", "ddp", "deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3")
REPLICATED = ("ring", "horovod", "ddp")


# -- pure: counting and the accounting --------------------------------------------------------------

def test_each_storage_is_counted_once_in_the_first_category_that_holds_it() -> None:
    flat = torch.zeros(100)
    a, b = flat[:40].view(4, 10), flat[40:]          # two views of one buffer: the buffer, once
    p = torch.ones(10)
    host = np.zeros(50, np.float32)
    got = count_bytes({"params": [p], "grads": [a, b, None], "optimizer": [p, torch.zeros(3)],
                       "buffers": [flat, host[10:], host[:5].reshape(5), 1024, torch.zeros(0)]})
    assert got == {"params": 40, "grads": 400, "optimizer": 12, "buffers": 200 + 1024}


def test_zero_accounting_shards_optimizer_then_gradients_then_parameters() -> None:
    psi, adam = 1000, optimizer_values_per_param("adam")
    assert adam == 2.0 and optimizer_values_per_param("sgd") == 0.0
    assert optimizer_values_per_param("sgd", momentum=0.9) == 1.0 and optimizer_values_per_param("lion") is None

    def total(layout: Layout, vpp: float | None = adam) -> int | None:
        e = expected_bytes(psi, layout, vpp)
        return None if e is None else e["model_states_bytes"]

    # fp32: params 4, grads 4, Adam 8 bytes per parameter; DeepSpeed adds a 4-byte fp32 master copy, sharded
    assert total(Layout()) == 16 * psi
    assert total(zero_layout(1, 2)) == (4 + 4 + 12 / 2) * psi
    assert total(zero_layout(2, 2)) == (4 + 16 / 2) * psi
    assert total(zero_layout(3, 2)) == 20 / 2 * psi
    assert total(zero_layout(3, 4)) == 20 / 4 * psi
    for n in (2, 4, 8):
        stages = [total(Layout())] + [total(zero_layout(s, n)) for s in (1, 2, 3)]
        assert stages == sorted(stages, reverse=True) and len(set(stages)) == 4
    assert total(Layout(), optimizer_values_per_param("sgd")) == 8 * psi
    assert total(Layout(), optimizer_values_per_param("sgd", 0.9)) == 12 * psi
    assert total(Layout(), None) is None  # an optimizer the accounting does not know: nothing expected


def test_a_reduce_bucket_counts_its_waiting_gradients_as_gradients_and_the_rest_as_buffer() -> None:
    from hpc.workloads.memory_count import split_buckets, storage

    bucket = np.zeros(1000, np.float32)  # 4000 bytes, two gradients (100 and 200 values) waiting in it
    g1, g2 = bucket[:100], bucket[100:300]
    part = np.zeros(50, np.float32)      # a gradient partition of its own
    groups = {"params": [np.ones(10, np.float32)], "grads": [g1, g2, g1, part], "optimizer": [],
              "buffers": [bucket, np.zeros(25, np.float32)]}
    out = count_bytes(split_buckets(groups, {storage(bucket)[0]: bucket.nbytes}))
    assert out == {"params": 40, "grads": 1200 + 200, "optimizer": 0, "buffers": 2800 + 100}
    assert count_bytes(split_buckets({"grads": [g1]}, {})) == {"params": 0, "grads": 4000, "optimizer": 0,
                                                               "buffers": 0}


def test_peak_rss_is_read_after_the_last_step_not_after_what_follows() -> None:
    """Reading the parameters back whole after training (ZeRO-3 gathers the model, every scheme copies
    it) is not a training step: the peak is taken when the last step ends."""
    from hpc.workloads.memory import Probe

    class Holder:
        memory_mark = None

        def memory_tensors(self) -> dict:
            return {"params": [np.ones(1000, np.float32)]}

    probe = Probe(Holder(), warm=0, steps=2)
    for s in range(2):
        probe.before_step(s)
        probe.after_step(s)
    after_training = np.ones(64 << 20, np.uint8)  # 64 MiB touched once training is over
    out = probe.finish()
    if probe.rss_reset:  # Linux: the peak was reset at the first step
        assert out["peak_rss_bytes"] + (48 << 20) < peak_rss_bytes(), out
    assert out["params_bytes"] == 4000 and out["seen_at"] == "step end"
    del after_training


def test_the_phase_that_set_the_peak_is_the_first_to_reach_it() -> None:
    from hpc.workloads.memory import PHASES, phase_of

    mib = 1 << 20
    assert phase_of(100 * mib, [(0, 300 * mib)], 300 * mib) == PHASES[0]
    assert phase_of(100 * mib, [(0, 200 * mib), (1, 400 * mib)], 400 * mib) == PHASES[1]
    assert phase_of(100 * mib, [(0, 200 * mib), (1, 400 * mib), (2, 600 * mib)], 600 * mib) == PHASES[2]
    # later steps creep up a few MiB: still the phase that made the big rise
    assert phase_of(100 * mib, [(0, 200 * mib), (1, 600 * mib), (0, 601 * mib), (1, 605 * mib)],
                    605 * mib) == PHASES[1]
    # a later step rises far above the first: the phase of that step
    assert phase_of(100 * mib, [(0, 200 * mib), (1, 300 * mib), (2, 700 * mib)], 700 * mib) == PHASES[2]
    assert phase_of(600 * mib, [], 600 * mib).startswith("steady")
    assert phase_of(100 * mib, [(2, 600 * mib)], 600 * mib, saw_update=False) == "the step"


def test_a_temporary_made_in_the_update_is_named_as_what_set_the_peak() -> None:
    """A real optimizer whose update makes a 96 MiB temporary: the probe's marks around torch's global
    optimizer hooks say the update set the peak."""
    import torch

    from hpc.workloads.memory import PHASES, Probe

    class Fat(torch.optim.SGD):
        def step(self, closure=None):
            tmp = torch.ones(24 << 20)  # 96 MiB, touched, freed before the step returns
            del tmp
            return super().step(closure)

    w = torch.nn.Parameter(torch.zeros(1000))
    opt = Fat([w], lr=0.1)

    class Holder:
        memory_mark = None

        def memory_tensors(self) -> dict:
            return {"params": [w]}

    probe = Probe(Holder(), warm=1, steps=3)
    for s in range(3):
        probe.before_step(s)
        w.grad = torch.ones(1000)
        opt.step()
        probe.after_step(s)
    out = probe.finish()
    if probe.rss_reset:  # Linux
        assert out["peak_rss_phase"] == PHASES[1], (probe.start_mark, probe.rises, out)
        assert len(probe.rises) < 10  # rises, not one entry per step


def test_pareto_front_keeps_only_the_undominated() -> None:
    from hpc.analysis.memory import pareto_front

    pts = [("lean", 1.0, 10.0), ("fast", 4.0, 50.0), ("worse", 4.5, 40.0), ("mid", 2.0, 30.0),
           ("twin", 2.0, 30.0), ("slow-fat", 5.0, 5.0)]
    assert pareto_front(pts) == ["lean", "mid", "twin", "fast"]
    assert pareto_front([("only", 1.0, 1.0)]) == ["only"]


def test_memory_per_rank_fits_a_plus_b_over_n_with_intervals_that_cover() -> None:
    import numpy as np

    from hpc.analysis.memory_predict import fit

    f = fit([1, 2, 4, 8], [100 + 800 / n for n in (1, 2, 4, 8)])
    assert (f.a, f.b) == pytest.approx((100, 800))
    assert f.at(16)[0] == pytest.approx(150) and f.at(16)[1] == pytest.approx((150, 150))  # no scatter
    flat = fit([1, 2, 4], [5.0, 5.0, 5.0])
    assert (flat.a, flat.b) == pytest.approx((5.0, 0.0), abs=1e-9)
    assert fit([2, 4], [300.0, 200.0]).at(8) == (pytest.approx(150.0), None)  # a line through 2 points: no scatter to claim
    assert fit([4, 4, 4], [10.0, 12.0, 11.0]).at(64)[1] is not None  # one N with repetitions: its mean ± scatter
    assert fit([2, 4], [-5.0, -9.0]).at(1000)[0] == 0.0  # memory is never predicted below 0
    # a form that misses (a step at the partition boundary) shows in its own backtest and widens the interval
    bumpy = fit([1, 2, 3, 4], [100 + 800 / n + (30 if n == 4 else 0) for n in (1, 2, 3, 4)])
    assert bumpy.backtest_rms and bumpy.backtest_rms > 10
    lo, hi = bumpy.at(8)[1]
    assert hi - lo > 2 * 1.96 * 10
    # 95% intervals cover a held-out N about 95% of the time on noisy data of this form
    rng = np.random.default_rng(0)
    n = np.repeat([1, 2, 3, 4], 3)
    hits = 0
    for _ in range(400):
        f = fit(n, 1e9 + 4e9 / n + rng.normal(0, 5e7, n.size))
        lo, hi = f.at(8)[1]
        hits += lo <= 1e9 + 4e9 / 8 + rng.normal(0, 5e7) <= hi
    assert 0.91 <= hits / 400 <= 0.99


# -- real ranks -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Every scheme side by side on 2 ranks, Adam, a small MLP of 9 layers (1.9 MB), 256 KiB buckets (a
    layer each: ZeRO-2 reduces gradients a bucket at a time, as it does on large models)."""
    out = tmp_path_factory.mktemp("memory") / "train.jsonl"
    proc = hpc("train", "--np", "2", "--sync", ",".join(SCHEMES), "--optimizer", "adam", "--steps", "3",
               "--width", "256", "--depth", "8", "--bucket-mb", "0.25", "--json", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r["sync"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(recs) == set(SCHEMES)
    return out, recs


def core(m: dict) -> int:
    return m["params_bytes"] + m["grads_bytes"] + m["optimizer_bytes"]


def test_every_scheme_records_its_memory_per_rank(run) -> None:
    _, recs = run
    for name, rec in recs.items():
        m = rec["memory"]
        assert len(m["per_rank"]) == 2, name
        for key in ("model_states_bytes", "params_bytes", "grads_bytes", "optimizer_bytes", "buffers_bytes",
                    "peak_rss_bytes"):
            assert m[key] == max(r[key] for r in m["per_rank"]), (name, key)
            assert key in m["how"]
        assert "peak_device_bytes" not in m  # cpu run
        for r in m["per_rank"]:
            assert r["model_states_bytes"] == core(r) + r["buffers_bytes"]
            assert r["peak_rss_bytes"] > r["model_states_bytes"] > 0
            assert r["seen_at"] in ("forward", "gradients", "backward", "update", "step end")
            assert isinstance(r["peak_rss_phase"], str), (name, r)
        assert m["peak_rss_phase"] == max(m["per_rank"], key=lambda r: r["peak_rss_bytes"])["peak_rss_phase"]
        exp = m["expected"]
        lib = exp.get("library_estimate") or {}
        beyond = [abs(r["gap_pct"]) > GAP_FLAG_PCT for r in m["per_rank"]] + [abs(lib.get("gap_pct") or 0) > GAP_FLAG_PCT]
        assert exp["flagged"] == bool(exp["flags"]) == any(beyond), name  # a gap above 20% is flagged, never hidden
        assert len(exp["flags"]) == sum(beyond)
        assert m["probe_s"] < 1.0


def test_replicated_schemes_hold_what_the_accounting_says(run) -> None:
    _, recs = run
    for name in REPLICATED:
        rec = recs[name]
        psi4 = 4 * rec["n_params"]
        for r in rec["memory"]["per_rank"]:
            assert r["params_bytes"] == psi4 and r["grads_bytes"] == psi4, name
            steps = 4 * 18  # Adam's `step` counter: one float32 scalar per parameter tensor (9 layers)
            assert r["optimizer_bytes"] == 2 * psi4 + steps, name
            assert abs(r["gap_pct"]) < 1 and r["expected_bytes"] == 4 * psi4
        assert not rec["memory"]["expected"]["flagged"], name
    # Horovod's fusion buffer: --bucket-mb rounded up to a multiple of local size (2) · 8 · 64 bytes
    assert recs["horovod"]["memory"]["buffers_bytes"] == 1 << 18
    assert recs["ring"]["memory"]["buffers_bytes"] == 0  # own sync on cpu: the bucket is the gradient memory


def test_zero_stages_shard_what_they_say_and_deepspeed_estimates_beside(run) -> None:
    _, recs = run
    psi4 = 4 * recs["deepspeed-zero1"]["n_params"]
    for stage in (1, 2, 3):
        rec = recs[f"deepspeed-zero{stage}"]
        m = rec["memory"]
        assert f"ZeRO-{stage}" in m["expected"]["accounting"]
        for r in m["per_rank"]:
            # fp32 master partition + Adam's two moments, each half the model, per rank
            assert r["optimizer_bytes"] == pytest.approx(1.5 * psi4, rel=0.01), stage
            assert r["expected_bytes"] == pytest.approx({1: 3.5, 2: 3.0, 3: 2.5}[stage] * psi4, rel=0.001)
            if stage < 3:
                assert r["params_bytes"] == pytest.approx(psi4, rel=0.01), stage
                assert abs(r["gap_pct"]) <= GAP_FLAG_PCT, stage  # stages 1, 2 hold about what the paper says
            if stage == 1:  # looked at once every local gradient exists, before DeepSpeed partitions them
                assert r["seen_at"] == "gradients" and r["grads_bytes"] == pytest.approx(psi4, rel=0.001)
            elif r["seen_at"] in ("forward", "gradients"):  # its partition + the layers gathered then
                # (on a model this small DeepSpeed keeps them all gathered, whatever its live-parameter limit)
                assert psi4 / 2 < r["params_bytes"] <= 1.5 * psi4 * 1.01, r
            else:
                assert r["params_bytes"] == pytest.approx(psi4 / 2, rel=0.01)
    n = recs["deepspeed-zero2"]["n_params"]
    assert "library_estimate" not in recs["deepspeed-zero1"]["memory"]["expected"]  # DeepSpeed has none
    est2 = recs["deepspeed-zero2"]["memory"]["expected"]["library_estimate"]
    assert est2["bytes"] == 2 * n + int(18 * n / 2)  # its formula: 16-bit params + 18 bytes/param sharded
    est3 = recs["deepspeed-zero3"]["memory"]["expected"]["library_estimate"]
    assert est3["bytes"] == 4 * 256 * 256 + 4 * 256 + int(18 * n / 2)  # + its largest layer (256² + bias)
    # the accounting: replicated > ZeRO-1 > ZeRO-2 > ZeRO-3; measured the same down to ZeRO-2 (ZeRO-1 holds
    # its full gradients until backward ends, ZeRO-2 reduces them into partitions a bucket at a time). ZeRO-3
    # holds two gradient partitions (+20% over the accounting, flagged) and the layers gathered at the moment
    expected = [recs[n]["memory"]["expected"]["model_states_bytes"] for n in ("ring", *SCHEMES[3:])]
    assert expected == sorted(expected, reverse=True) and len(set(expected)) == 4
    held = {name: core(recs[name]["memory"]) for name in SCHEMES}
    assert held["ring"] > held["deepspeed-zero1"] > held["deepspeed-zero2"]
    assert held["ring"] == held["ddp"] == held["horovod"]


def test_compare_puts_memory_beside_throughput_and_answers_max_memory(run) -> None:
    path, recs = run
    proc = hpc("compare", str(path), "--max-memory", "100GB", "--wide", "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert "Speed and memory per rank" in proc.stdout and "model states/rank" in proc.stdout
    assert "Fastest within 100GiB per rank" in proc.stdout
    # the record's notes reach the table: ZeRO-3 on cpu says why its peak RSS may stand above what it holds
    assert recs["deepspeed-zero3"]["memory"]["notes"] and "ZeRO-3 on CPU, peak RSS: " in proc.stdout
    assert "MALLOC_MMAP_THRESHOLD_" in proc.stdout
    js = hpc("compare", str(path), "--max-memory", "100GB", "--json")
    pt = json.loads(js.stdout)[0]
    assert pt["max_memory"]["fastest_fitting"] == pt["ranking"][0]["name"]  # everything fits: the fastest
    assert all(r["memory"]["model_states_bytes"] > 0 for r in pt["ranking"])
    peaks = sorted(r["memory"]["peak_rss_bytes"] for r in pt["ranking"])
    mid = (peaks[0] + peaks[-1]) // 2 if peaks[0] < peaks[-1] else peaks[0]
    js = hpc("compare", str(path), "--max-memory", f"{mid}B", "--json")
    ans = json.loads(js.stdout)[0]["max_memory"]
    fitting = [r for r in pt["ranking"] if r["memory"]["peak_rss_bytes"] <= mid]
    assert ans["fastest_fitting"] == (fitting[0]["name"] if fitting else None)
    assert all(b["peak_bytes"] > mid for b in ans["too_big"])
    tiny = hpc("compare", str(path), "--max-memory", "1MB")
    assert tiny.returncode == 0 and "none fits" in tiny.stdout
    assert "--max-memory" in one_error_line(hpc("compare", str(path), "--max-memory", "2", "--baseline", "ring"))
    assert "bad size" in one_error_line(hpc("compare", str(path), "--max-memory", "2XB"))


def test_plot_draws_speed_against_memory_with_the_pareto_front(run, tmp_path) -> None:
    from hpc.analysis.groups import load_records
    from hpc.analysis.memory import speed_memory
    from hpc.analysis.memory_plot import palette, speed_memory_panel

    path, recs = run
    png = tmp_path / "plot.png"
    proc = hpc("plot", str(path), "-o", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 10_000
    pt = speed_memory(load_records(path))[-1]
    _, front = speed_memory_panel(pt, palette(SCHEMES))
    rows = {r["name"]: r for r in pt["ranking"]}
    fastest = max(rows, key=lambda n: rows[n]["value"])
    leanest = min(rows, key=lambda n: (rows[n]["memory"]["peak_bytes"], -rows[n]["value"]))
    assert fastest in front and leanest in front
    for name in front:  # nobody beats a front member on both speed and memory
        m, s = rows[name]["memory"]["peak_bytes"], rows[name]["value"]
        assert not any(o["memory"]["peak_bytes"] < m and o["value"] > s for o in rows.values())


def test_report_has_a_memory_section(run, tmp_path) -> None:
    path, _ = run
    proc = hpc("report", str(path), "-o", str(tmp_path / "REPORT.md"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "REPORT.md").read_text()
    assert "## Memory per rank" in text and "deepspeed-zero3" in text.split("## Memory per rank")[1]
    assert (tmp_path / "report-memory.png").stat().st_size > 10_000


def test_a_sweep_records_memory_against_n_and_predict_forecasts_it(tmp_path) -> None:
    from hpc.analysis.groups import load_records
    from hpc.analysis.memory import memory_vs_n
    from hpc.analysis.memory_predict import n_table

    out = tmp_path / "sweep"
    proc = hpc("sweep", "strong", "--np", "1,2,3", "--out", str(out), "train", "--sync", "ring,deepspeed-zero3",
               "--optimizer", "adam", "--steps", "3", "--width", "128", "--bucket-mb", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = load_records(out)
    (by,) = memory_vs_n(recs).values()
    z3, ring = by["deepspeed-zero3"], by["ring"]
    # ZeRO-3's sharded states fall as 1/N (its gathered parameters do not: see the test above)
    assert z3[2]["optimizer_bytes"] == pytest.approx(z3[1]["optimizer_bytes"] / 2, rel=0.01)
    assert ring[2]["model_states_bytes"] == ring[1]["model_states_bytes"]  # replicated: flat
    assert n_table(recs, [8]) is not None
    # hpc predict, trained on N = 1, 2, forecasts model states per rank at the held-out N = 3
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in recs if r["np"] < 3))
    held.write_text("".join(json.dumps(r) + "\n" for r in recs if r["np"] == 3))
    proc = hpc("predict", str(train), "--check", str(held), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = {(r["curve"].split()[1], r["figure"]): r for r in json.loads(proc.stdout)["memory"]}
    for name in ("ring", "deepspeed-zero3"):
        got = mem[(name, "model_states_bytes")]
        assert got["np"] == 3 and got["error_pct"] == pytest.approx(0, abs=3), got
    assert mem[("deepspeed-zero3", "model_states_bytes")]["predicted_bytes"] < z3[2]["model_states_bytes"]
    proc = hpc("predict", str(out), "--np", "8")
    assert proc.returncode == 0 and "Memory per rank (predicted" in proc.stdout, proc.stderr[-2000:]
    rows = json.loads(hpc("predict", str(out), "--np", "8", "--json").stdout)
    z3_8 = next(r["memory"] for r in rows if "deepspeed-zero3" in r["curve"])
    assert z3_8["model_states_bytes"]["pi95"] is not None  # three rank counts: scatter measured
    png = tmp_path / "sweep.png"
    assert hpc("plot", str(out), "-o", str(png)).returncode == 0 and png.stat().st_size > 10_000


HVD_SCRIPT = """
import torch, hpc.torch as hvd
hvd.init()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
opt = hvd.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3),
                               named_parameters=model.named_parameters())
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
for _ in range(4):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(8, 32)), torch.randint(0, 4, (8,))).backward()
    opt.step()
hvd.shutdown()
"""


def test_hpc_torch_records_carry_the_memory_block(tmp_path) -> None:
    script, record = tmp_path / "train.py", tmp_path / "rec.jsonl"
    script.write_text(HVD_SCRIPT)
    proc = mpirun(2, sys.executable, str(script), env={"HPC_RECORD": str(record)}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(record.read_text().splitlines()[0])
    m, psi4 = rec["memory"], 4 * (32 * 64 + 64 + 64 * 4 + 4)
    assert len(m["per_rank"]) == 2
    assert m["params_bytes"] == psi4 and m["grads_bytes"] == psi4  # gradients: views into the buckets
    assert m["optimizer_bytes"] == 2 * psi4 + 4 * 4
    assert m["expected"]["model_states_bytes"] == 4 * psi4 and not m["expected"]["flagged"]
    assert m["peak_rss_bytes"] > m["model_states_bytes"]
