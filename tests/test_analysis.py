"""compare / plot / report on small record sets written by the tests (real files, real CLI)."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from hpc.analysis import compare, ranking
from tests.helpers import hpc, one_error_line
from tests.test_fit import coll_records, train_records, write_records


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep directory: strong + weak training for three sync schemes, collectives for three algos."""
    d = tmp_path_factory.mktemp("sweep")
    write_records(d / "train_strong.jsonl",
                  train_records("mpi", 0.93, "strong", seed=1)
                  + train_records("ring", 0.95, "strong", seed=2)
                  + train_records("ps", 0.80, "strong", seed=3)
                  + train_records("ps", 0.80, "strong", nps=(8,), reps=1, seed=9, status="timeout"))
    write_records(d / "train_weak.jsonl",
                  train_records("mpi", 0.96, "weak", seed=4) + train_records("ring", 0.97, "weak", seed=5))
    write_records(d / "coll" / "allreduce.jsonl",
                  coll_records("mpi", 3e-6, 6.0, seed=6) + coll_records("ring", 5e-6, 5.0, seed=7)
                  + coll_records("recursive_doubling", 4e-6, 3.0, seed=8))
    return d


# ---------------------------------------------------------------- compare: pure functions

def test_compare_samples_verdicts_follow_metric_direction():
    a = [1.00, 1.01, 0.99, 1.02, 0.98]
    slower = [x * 1.2 for x in a]
    r = compare.compare_samples(a, slower, higher_is_better=False)
    assert r["verdict"] == "worse" and r["worse_pct"] == pytest.approx(20.0, rel=1e-6)
    assert r["p_value"] < 0.05
    r = compare.compare_samples(a, slower, higher_is_better=True)  # e.g. busbw went up 20%
    assert r["verdict"] == "better" and r["worse_pct"] < 0
    same = compare.compare_samples(a, [x * 1.01 for x in a], higher_is_better=False)
    assert same["verdict"] == "same"


def test_compare_noise_band_absorbs_noisy_differences():
    a = [1.0, 1.5, 0.7, 1.3, 0.8]
    b = [x * 1.1 for x in a]
    r = compare.compare_samples(a, b, higher_is_better=False)
    assert r["verdict"] == "same" and r["p_value"] >= 0.05
    assert r["ci95"][0] < 1.1 < r["ci95"][1]          # the interval holds the true ratio


def test_compare_too_few_reps_and_p_value_agree_with_verdict():
    r = compare.compare_samples([1.0, 1.01], [2.0, 2.01], higher_is_better=False)
    assert r["verdict"] == "too few reps" and r["p_value"] is None and r["ratio"] == pytest.approx(2, rel=0.01)
    r = compare.compare_samples([1.0, 1.01, 0.99], [2.0, 2.01, 1.99], higher_is_better=False)
    assert r["verdict"] == "worse" and r["p_value"] < 0.05 and r["ci95"][0] > 1.1
    rng = np.random.default_rng(5)
    for _ in range(300):   # p < 0.05 exactly when the verdict is better/worse
        a = np.exp(rng.normal(0, 0.2, 4))
        b = np.exp(rng.normal(rng.uniform(-0.5, 0.5), 0.2, 4))
        r = compare.compare_samples(list(a), list(b), higher_is_better=False)
        assert (r["p_value"] < 0.05) == (r["verdict"] in ("better", "worse")), r
        assert r["verdict"] != "same" or not (r["ci95"][0] > 1.1 or r["ci95"][1] < 1 / 1.1)


def test_compare_drift_makes_verdict_inconclusive():
    a = [1.0, 1.01, 0.99, 1.0]
    b = [1.3, 1.31, 1.29, 1.3]
    assert compare.compare_samples(a, b, False)["verdict"] == "worse"
    assert compare.compare_samples(a, b, False, drift=1.5)["verdict"] == "inconclusive"


@pytest.mark.parametrize("reps,sigma", [(3, 0.05), (3, 0.3), (5, 0.15), (10, 0.5)])
def test_a_a_synthetic_is_same_on_at_least_95_percent(reps, sigma):
    """The A/A standard: the same measurement twice comes out 'same' on >= 95% of points, for the
    repetition counts and log-normal noise levels seen here (sigma 0.05-0.5)."""
    rng = np.random.default_rng(reps * 100 + int(sigma * 100))
    n = 2000
    same = 0
    for _ in range(n):
        a = np.exp(rng.normal(0, sigma, reps))
        b = np.exp(rng.normal(0, sigma, reps))
        same += compare.compare_samples(list(a), list(b), higher_is_better=True)["verdict"] == "same"
    assert same / n >= 0.95, same / n


def test_a_a_records_with_drift_and_an_in_run_reference():
    """Two runs of the same sweep, the second on a machine 1.8× slower across the board: relative to
    the native mpi measured in each run every point is 'same'; a real 40% regression still shows."""
    from tests.test_fit import coll_records

    a = coll_records("ring", 5e-6, 5.0, seed=1) + coll_records("mpi", 3e-6, 6.0, seed=2)
    b = coll_records("ring", 5e-6, 5.0, seed=3) + coll_records("mpi", 3e-6, 6.0, seed=4)
    for r in b:
        r["time_s"] *= 1.8
        r["busbw_GBps"] /= 1.8
        r["algbw_GBps"] /= 1.8
        r["times_s"] = [t * 1.8 for t in r["times_s"]]
    rows, notes = compare.compare_records(a, b)
    ring = [r for r in rows if r["name"] == "ring"]
    assert ring and all(r["relative_to"] == "mpi" and r["verdict"] == "same" for r in ring), ring
    assert any("relative to mpi" in n for n in notes)
    worse = coll_records("ring", 5e-6, 3.0, seed=5)          # 40% less bandwidth
    for r in worse:
        r["busbw_GBps"] /= 1.8
        r["time_s"] *= 1.8
    rows, _ = compare.compare_records(a, worse + [r for r in b if r["algo"] == "mpi"])
    big = [r for r in rows if r["name"] == "ring" and r["np"] == 4 and r["variant"] == 1 << 22]
    assert big[0]["verdict"] == "worse", big


def test_schemes_measured_in_the_same_launches_are_compared_pairwise():
    """A plug-in steadily at 0.2x of mpi in each of three sweep launches, while the machine swings
    4x between launches: paired by launch it is 'slower'/'worse' (unpaired the swing hid it)."""
    from tests.test_fit import coll_records

    mpi = coll_records("mpi", 3e-6, 6.0, nps=(2,), sizes=(65536,), seed=1)
    mine = coll_records("mine", 3e-6, 6.0, nps=(2,), sizes=(65536,), seed=1)
    for i, (a, b) in enumerate(zip(mpi, mine)):
        swing = (1.0, 3.8, 1.9)[i]
        a["point_id"] = b["point_id"] = f"np0002-nodes001-rep{i:02d}"
        a["busbw_GBps"] *= swing
        b["busbw_GBps"] = a["busbw_GBps"] * (0.2 + 0.01 * i)
    ranked = ranking.rank_schemes(mpi + mine)
    slow = ranked[0]["ranking"][1]
    assert slow["name"] == "mine" and slow["verdict"] == "slower", ranked
    rows, _ = compare.compare_baseline(mpi + mine, "mpi")
    assert rows[0]["verdict"] == "worse" and rows[0]["paired"], rows
    for r in mine:  # not measured together: no pairing, the swing keeps it undecided
        r["point_id"] = "elsewhere-" + r["point_id"]
    assert ranking.rank_schemes(mpi + mine)[0]["ranking"][1]["verdict"] == "same as fastest"


# ---------------------------------------------------------------- compare: CLI

def test_cli_compare_regression_gate(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(a, train_records("ring", 0.95, "strong", seed=1)
                  + train_records("mpi", 0.93, "strong", seed=2))
    write_records(b, train_records("ring", 0.95, "strong", seed=3)
                  + train_records("mpi", 0.93, "strong", seed=4, t1=0.25))   # mpi 25% slower
    proc = hpc("compare", str(a), str(b), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 8
    for r in rows:
        assert r["metric"] == "throughput" and r["higher_is_better"]
        assert r["verdict"] == ("worse" if r["name"] == "mpi" else "same"), r
    gate = hpc("compare", str(a), str(b), "--fail-if-worse", "10", timeout=120)
    assert gate.returncode == 1
    assert "worse by more than 10%" in gate.stderr and "mpi" in gate.stderr
    assert "Traceback" not in gate.stderr
    loose = hpc("compare", str(a), str(b), "--fail-if-worse", "40", timeout=120)
    assert loose.returncode == 0, loose.stderr
    from hpc.records import load

    rows, notes = compare.compare_records(load(a), load(a))
    assert {r["verdict"] for r in rows} == {"same"} and not notes


def test_cli_compare_markdown_and_csv(tmp_path, sweep):
    a = sweep / "train_strong.jsonl"
    b = tmp_path / "b.jsonl"
    write_records(b, train_records("ring", 0.95, "strong", seed=12))
    md = hpc("compare", str(a), str(b), "--markdown", timeout=120)
    assert md.returncode == 0, md.stderr
    assert re.search(r"^\| point \| algo \| B/A \| 95% CI \| p \| verdict \|", md.stdout, re.M)
    assert "only in A" in md.stdout
    out = hpc("compare", str(a), str(b), "--csv", timeout=120)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 4 and {r["algo"] for r in rows} == {"ring"}
    assert all(r["verdict"] in ("better", "worse", "same") for r in rows)
    assert "a_median (samples/s)" in rows[0] and float(rows[0]["ratio_b_over_a"]) > 0
    assert float(rows[0]["ci95_low"]) <= float(rows[0]["ratio_b_over_a"]) <= float(rows[0]["ci95_high"])
    wide = hpc("compare", str(a), str(b), "--wide", "--markdown", timeout=120)
    assert "A median" in wide.stdout and "| reps |" in wide.stdout


def test_cli_compare_collectives_use_busbw(sweep, tmp_path):
    b = tmp_path / "b.jsonl"
    write_records(b, coll_records("ring", 5e-6, 2.5, seed=17))   # half the bandwidth
    proc = hpc("compare", str(sweep / "coll"), str(b), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["np"], r["variant"]): r for r in json.loads(proc.stdout)}
    big = rows[(4, 1 << 22)]
    assert big["metric"] == "busbw" and big["verdict"] == "worse" and 30 < big["worse_pct"] < 60
    assert rows[(1, 1 << 22)]["metric"] == "time"          # busbw is 0 on one rank
    assert rows[(4, 8)]["verdict"] == "same"                # latency-bound: α unchanged


def test_cli_compare_baseline_mode(sweep):
    proc = hpc("compare", str(sweep), "--baseline", "mpi", "--json", "--threshold", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    train = [r for r in rows if r["kind"] == "train" and r["np"] == 8 and r["variant"] == "mlp"]
    verdicts = {(r["name"], r["label"].split("(")[-1]): r["verdict"] for r in train}
    assert verdicts[("ps", "strong)")] == "worse"      # P = 0.80 vs mpi's 0.93
    assert verdicts[("ring", "strong)")] == "better"   # P = 0.95 vs 0.93: 10% faster, 3% band
    assert all(r["baseline"] == "mpi" for r in rows)
    summary = compare.baseline_summary(rows).to_markdown()
    assert "geomean" in summary and "| ps |" in summary and "| recursive_doubling |" in summary


@pytest.mark.parametrize("args,msg", [
    (["--baseline", "nccl"], "not in the records"),
])
def test_cli_compare_bad_input(sweep, args, msg):
    assert msg in one_error_line(hpc("compare", str(sweep), *args, timeout=120))


def test_cli_compare_no_matching_points(tmp_path, sweep):
    b = tmp_path / "b.jsonl"
    write_records(b, train_records("ring", 0.95, "strong", nps=(16, 32)))
    assert "no matching points" in one_error_line(
        hpc("compare", str(sweep / "train_strong.jsonl"), str(b), timeout=120))


# ---------------------------------------------------------------- plot

def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_cli_plot_sweep(tmp_path, sweep):
    out = tmp_path / "figs" / "sweep.png"
    proc = hpc("plot", str(sweep), "-o", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    w, h = _png_size(out)
    assert w >= 1000 and h >= 1500   # 2 columns × 4 rows of panels
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.std() > 0.05          # not a blank canvas


def test_cli_plot_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("np,time_s\n" + "".join(f"{n},{1.0 / n + 0.05 + 0.001 * i}\n"
                                           for n in (1, 2, 4, 8) for i in range(3)))
    out = tmp_path / "t.png"
    proc = hpc("plot", str(path), "-o", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    w, h = _png_size(out)
    assert w > h > 300     # one row: speedup and efficiency side by side


def test_cli_plot_bad_output(tmp_path, sweep):
    assert ".png" in one_error_line(hpc("plot", str(sweep), "-o", str(tmp_path / "x.pdf"), timeout=120))


# ---------------------------------------------------------------- report

def test_cli_report(tmp_path, sweep):
    out = tmp_path / "rep" / "README.md"
    proc = hpc("report", str(sweep), "-o", str(out), "--bootstrap", "50", timeout=240)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    for section in ("## Provenance", "## Scaling fits", "## Plots", "## Comparison against the baseline",
                    "## Collective cost model", "Failed or timed-out points", "Karp–Flatt"):
        assert section in text, section
    assert "Open MPI v5.0.5" in text and "0123456789ab" in text
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(images) == 2
    for name in images:
        _png_size(out.parent / name)
    assert "| train | ring | mlp | amdahl |" in text
    assert "timeout" in text


def test_cli_report_default_location(tmp_path):
    d = tmp_path / "only_failed"
    write_records(d / "r.jsonl", train_records("ring", 0.9, "strong", status="failed"))
    proc = hpc("report", str(d), timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (d / "REPORT.md").read_text()
    assert "No ok records" in text and "rank 1 died" in text


# ---------------------------------------------------------------- which scheme is fastest

def _schemes_at_fixed_n(path, seed=0):
    """Three sync schemes on 2 ranks, 5 reps each: ring 30% faster than ddp, mpi ≈ ring."""
    recs = (train_records("ring", 0.9, "strong", nps=(2,), seed=seed, t1=0.20)
            + train_records("mpi", 0.9, "strong", nps=(2,), seed=seed + 1, t1=0.202)
            + train_records("ddp", 0.9, "strong", nps=(2,), seed=seed + 2, t1=0.26))
    write_records(path, recs)


def test_cli_compare_alone_ranks_schemes(tmp_path):
    _schemes_at_fixed_n(tmp_path / "sync.jsonl")
    proc = hpc("compare", str(tmp_path), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    (pt,) = json.loads(proc.stdout)
    order = [r["name"] for r in pt["ranking"]]
    assert order[-1] == "ddp" and set(order[:2]) == {"ring", "mpi"}
    verdicts = {r["name"]: r["verdict"] for r in pt["ranking"]}
    assert verdicts["ddp"] == "slower" and "same as fastest" in verdicts.values()
    for r in pt["ranking"]:
        assert r["ci95"][0] <= r["value"] <= r["ci95"][1] and r["n"] == 5
    table = hpc("compare", str(tmp_path), timeout=120)
    assert "Which is fastest" in table.stdout and "\x1b[" not in table.stdout  # no ANSI in a pipe
    assert max(len(line) for line in table.stdout.splitlines()) <= 120
    rows = list(csv.DictReader(io.StringIO(hpc("compare", str(tmp_path), "--csv", timeout=120).stdout)))
    assert [r["scheme"] for r in rows] == order and rows[-1]["verdict"] == "slower"
    assert float(rows[0]["value"]) == pytest.approx(pt["ranking"][0]["value"]) and rows[0]["reps"] == "5"


def test_cli_plot_schemes_at_fixed_n(tmp_path):
    _schemes_at_fixed_n(tmp_path / "sync.jsonl")
    out = tmp_path / "schemes.png"
    proc = hpc("plot", str(tmp_path), "-o", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    w, h = _png_size(out)
    assert w > 300 and h > 300
    import matplotlib.image

    assert matplotlib.image.imread(out).std() > 0.05


def test_cli_fit_collective_records_default_to_alpha_beta(sweep):
    proc = hpc("fit", str(sweep / "coll"), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["law"] == "alpha-beta"


def test_between_run_scatter_widens_the_band_of_relative_points():
    """Seen in CI: an A/A pair where one point's ring/mpi moved to 0.24x with tight reps. Relative to
    the scatter of all points' ratios that is noise ('same'); one point far outside a tight scatter
    of many is still a change."""
    from tests.test_fit import coll_records

    def runs(factors: dict[int, float], seed: int) -> tuple[list[dict], list[dict]]:
        a = coll_records("ring", 5e-6, 5.0, nps=(2,), sizes=tuple(factors), seed=seed) + \
            coll_records("mpi", 3e-6, 6.0, nps=(2,), sizes=tuple(factors), seed=seed + 1)
        b = coll_records("ring", 5e-6, 5.0, nps=(2,), sizes=tuple(factors), seed=seed + 2) + \
            coll_records("mpi", 3e-6, 6.0, nps=(2,), sizes=tuple(factors), seed=seed + 3)
        for r in b:
            if r["algo"] == "ring":
                r["busbw_GBps"] *= factors[r["size_bytes"]]
        return a, b

    a, b = runs({1 << 18: 1.31, 1 << 20: 0.24}, 1)
    rows, notes = compare.compare_records(a, b)
    assert {r["verdict"] for r in rows if r["name"] == "ring"} == {"same"}, rows
    assert any("scatter" in n for n in notes)
    sizes = {1 << k: 1.0 for k in range(10, 22)}
    sizes[1 << 21] = 0.4
    a, b = runs(sizes, 7)
    rows, _ = compare.compare_records(a, b)
    verdicts = {r["variant"]: r["verdict"] for r in rows if r["name"] == "ring"}
    assert verdicts[1 << 21] == "worse" and list(verdicts.values()).count("same") == len(sizes) - 1


def test_one_training_run_per_scheme_is_one_repetition():
    """A training record's steps are not repetitions: one run per scheme ranks as 'too few reps'
    (nothing called fastest), with n = 1."""
    from tests.test_fit import train_records

    recs = (train_records("ring", 0.9, "strong", nps=(2,), reps=1, seed=1, t1=0.20)
            + train_records("ddp", 0.9, "strong", nps=(2,), reps=1, seed=2, t1=0.30))
    (pt,) = ranking.rank_schemes(recs)
    assert [r["n"] for r in pt["ranking"]] == [1, 1]
    assert {r["verdict"] for r in pt["ranking"]} == {"too few reps"}
