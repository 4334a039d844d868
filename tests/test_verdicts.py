"""The robust verdict estimator (hpc.analysis.stats): outliers named and set aside, known ratios found
at several noise levels, A/A kept "same", the detectable change and the repetitions a verdict needs;
rankings that name what they leave out; drift said the right way round."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from hpc.analysis import compare, ranking, stats
from tests.test_fit import coll_records, train_records


def _paired(rng, n: int, ratio: float, sigma: float, outlier: float | None = None):
    """n interleaved batches of A and B (B = ratio × A in time) with a shared machine swing per batch
    and independent noise; `outlier`: batch 3's B is that much slower again (a descheduled batch)."""
    swing = np.exp(rng.normal(0, 0.5, n))          # the machine, shared by both in a batch
    a = swing * np.exp(rng.normal(0, sigma, n))
    b = swing * ratio * np.exp(rng.normal(0, sigma, n))
    if outlier is not None:
        b[2] *= outlier
    return list(a), list(b)


@pytest.mark.parametrize("outlier", [8.0, 1 / 2.5])
def test_one_outlier_batch_does_not_swing_the_verdict(outlier):
    """Seen on 2 ranks: a 2×-work plug-in (0.39–0.54× busbw) called 'same' because one batch of five
    widened a t-interval to [0.09, 1.03]. The trimmed estimate keeps it 'worse' and names the batch."""
    a = [1.00, 1.02, 0.97, 1.05, 0.99]
    b = [2.10, 2.05, 1.95 * outlier, 2.20, 1.98]      # time: B is about 2× slower, batch 3 stands apart
    r = compare.compare_samples(a, b, higher_is_better=False, paired=True)
    assert r["verdict"] == "worse", r
    assert r["ci95"][0] > 1.1 and 1.8 < r["ratio"] < 2.3, r
    assert [o["index"] for o in r["outliers"]] == [3] and r["outliers"][0]["set_aside"]
    la, lb = np.log(a), np.log(b)                      # what the untrimmed paired t-interval said
    d = lb - la
    half = 2.776 * d.std(ddof=1) / math.sqrt(5)
    assert math.exp(d.mean() - half) < 1.1             # ... not beyond the band: it would read "same"


def test_an_outlier_among_fewer_than_five_is_named_not_set_aside():
    r = compare.compare_samples([1.0, 1.01, 0.99, 1.0], [2.03, 2.0, 2.01, 9.0], False, paired=True)
    assert [o["index"] for o in r["outliers"]] == [4] and not r["outliers"][0]["set_aside"]
    assert r["verdict"] == "same" and r["needs_reps"] and r["needs_reps"] > 0
    table = compare.comparison_table([dict(r, point="p", name="x", metric="time", unit="s",
                                           higher_is_better=False)], "t").to_markdown()
    assert "outliers that still widen" in table and "needs ≈" in table


@pytest.mark.parametrize("ratio,sigma,n,want", [
    (2.0, 0.05, 5, 0.95), (2.0, 0.2, 10, 0.95), (2.0, 0.5, 30, 0.95),
    (1.25, 0.05, 10, 0.90), (1.25, 0.1, 20, 0.85),
])
def test_known_ratios_are_found_at_several_noise_levels(ratio, sigma, n, want):
    """Synthetic A/B with a known slowdown, shared swing per batch, 5% of batches descheduled
    (×3 on one side): called worse at least `want` of the time, and the interval holds the truth."""
    rng = np.random.default_rng(int(ratio * 100 + sigma * 1000 + n))
    worse = covered = 0
    trials = 400
    for _ in range(trials):
        a, b = _paired(rng, n, ratio, sigma)
        hit = rng.random(n) < 0.05
        b = [x * (3.0 if h else 1.0) for x, h in zip(b, hit)]
        r = compare.compare_samples(a, b, higher_is_better=False, paired=True)
        worse += r["verdict"] == "worse"
        covered += r["ci95"][0] <= ratio <= r["ci95"][1]
    assert worse / trials >= want, worse / trials
    assert covered / trials >= 0.85, covered / trials


@pytest.mark.parametrize("ratio,sigma,want", [(2.0, 0.3, 0.95), (1.25, 0.1, 0.8), (1.25, 0.2, 0.8),
                                               (1.0, 0.1, 0.95), (1.0, 0.2, 0.95)])
def test_adding_batches_until_decided_finds_changes_and_keeps_a_a_same(ratio, sigma, want):
    """The `--batches auto` rule (stats.decided after every batch from 5, at most 100): a 2× and a
    1.25× slowdown are called worse, an A/A pair 'same', with 5% of batches descheduled (×3, either side)."""
    rng = np.random.default_rng(int(ratio * 10 + sigma * 100))
    band = math.log1p(compare.NOISE_BAND_PCT / 100)
    hits, used = 0, []
    trials = 200
    for _ in range(trials):
        a, b = _paired(rng, 100, ratio, sigma)
        for i in np.flatnonzero(rng.random(100) < 0.05):
            (a if rng.random() < 0.5 else b)[i] *= 3.0
        for n in range(5, 101):
            if stats.decided(stats.estimate(a[:n], b[:n], paired=True), band):
                break
        used.append(n)
        verdict = compare.compare_samples(a[:n], b[:n], False, paired=True)["verdict"]
        hits += verdict == ("same" if ratio == 1.0 else "worse")
    assert hits / trials >= want, (hits / trials, np.mean(used))


@pytest.mark.parametrize("n,sigma,contaminate", [(5, 0.1, 0.0), (5, 0.5, 0.0), (10, 0.3, 0.1),
                                                 (20, 0.5, 0.1), (7, 0.2, 0.1)])
def test_paired_a_a_stays_same(n, sigma, contaminate):
    """A/A inside one interleaved run, with and without 10% descheduled batches: 'same' ≥ 95%."""
    rng = np.random.default_rng(n * 7 + int(sigma * 100))
    same = 0
    trials = 1500
    for _ in range(trials):
        a, b = _paired(rng, n, 1.0, sigma)
        hit = rng.random(n) < contaminate
        side = rng.random(n) < 0.5
        a = [x * (3.0 if h and s else 1.0) for x, h, s in zip(a, hit, side)]
        b = [x * (3.0 if h and not s else 1.0) for x, h, s in zip(b, hit, side)]
        same += compare.compare_samples(a, b, higher_is_better=True, paired=True)["verdict"] == "same"
    assert same / trials >= 0.95, same / trials


def test_trimmed_interval_covers_95_percent_under_normal_noise():
    """The small-sample factors make the interval honest at 5-30 values (t or Yuen by the data: 92.6% without)."""
    rng = np.random.default_rng(11)
    for n in (5, 6, 10, 15):
        x = rng.normal(0, 1, (8000, n))
        cover = 0
        for row in x:
            c, se, df, _ = stats.one_sample(row)
            cover += abs(c) <= stats.t_quantile(df) * se
        assert 0.938 <= cover / len(x) <= 0.965, (n, cover / len(x))


def test_detectable_change_and_reps_needed():
    """'same within ±X%' shrinks with repetitions; the reps it says are needed do decide it."""
    rng = np.random.default_rng(3)
    few = compare.compare_samples(*_paired(rng, 5, 1.3, 0.25), higher_is_better=False, paired=True)
    many = compare.compare_samples(*_paired(rng, 60, 1.3, 0.25), higher_is_better=False, paired=True)
    assert few["detectable_pct"] > many["detectable_pct"] > compare.NOISE_BAND_PCT
    assert many["verdict"] == "worse"
    spread = 0.25 * math.sqrt(2)                       # per-pair scatter of the log ratio
    est = stats.Estimate(math.log(1.3), spread / math.sqrt(6) * stats._small_n(6), 3.0, 6, 6, True, 1)
    need = stats.reps_needed(est, math.log1p(0.1))
    assert need is not None and need > 6
    decided = 0
    for _ in range(200):  # at the true scatter and ratio, that many reps decide about half the time or more
        e = stats.estimate(*_paired(rng, need, 1.3, 0.25), paired=True)
        decided += stats.decided(e, math.log1p(0.1))
    assert decided / 200 >= 0.4, decided / 200
    assert stats.reps_needed(stats.Estimate(0.0, math.inf, 1.0, 2, 2, True), 0.1) is None
    text = compare.verdict_text(dict(few, verdict="same"))
    assert text.startswith("same within ±") and text.endswith("%")


def test_runs_that_ran_out_of_repetitions_are_inconclusive_not_same():
    mpi = coll_records("mpi", 3e-6, 6.0, nps=(2,), sizes=(65536,), reps=1, seed=1)
    mine = coll_records("mine", 3e-6, 6.0, nps=(2,), sizes=(65536,), reps=1, seed=2)
    rng = np.random.default_rng(0)
    base = mpi[0]["time_s"]
    mpi[0]["times_s"] = list(base * np.exp(rng.normal(0, 0.3, 6)))
    ratios = np.exp([0.5, -0.2, 0.6, 0.1, 0.45, -0.1])   # about 1.25× slower, seen through much noise
    mine[0]["times_s"] = list(np.array(mpi[0]["times_s"]) * ratios)
    mine[0]["time_s"] = float(np.median(mine[0]["times_s"]))
    mine[0]["provenance"], mine[0]["point_id"] = mpi[0]["provenance"], mpi[0]["point_id"]  # one run
    rows, _ = compare.compare_baseline(mpi + mine, "mpi", "time")
    assert rows[0]["verdict"] == "same" and rows[0]["paired"] and not rows[0]["decided"], rows
    for r in mpi + mine:
        r["auto"] = {"unit": "batches", "max_reps": 6, "stopped": "max-reps"}
    rows, _ = compare.compare_baseline(mpi + mine, "mpi", "time")
    assert rows[0]["verdict"] == "inconclusive" and rows[0]["needs_reps"] > 0, rows
    assert compare.verdict_text(rows[0]).startswith("inconclusive (≈")
    mine[0]["times_s"] = [t * 1.02 for t in mpi[0]["times_s"][::-1]]   # A/A through the same noise
    mine[0]["time_s"] = float(np.median(mine[0]["times_s"]))
    rows, _ = compare.compare_baseline(mpi + mine, "mpi", "time")
    assert rows[0]["verdict"] == "same" and not rows[0]["decided"], rows   # same, within a wide ±X%
    assert rows[0]["detectable_pct"] > 20


# ---------------------------------------------------------------- rankings (issue 19)

def test_ranking_names_the_schemes_it_leaves_out_and_why():
    """ps-async's server rank trains nothing, so its global batch is smaller: not the same work, left
    out of the ranking — and said so in the table notes and on the scheme chart."""
    recs = (train_records("ring", 0.9, "strong", nps=(2,), seed=1)
            + train_records("mpi", 0.9, "strong", nps=(2,), seed=2)
            + train_records("ps-async", 0.9, "strong", nps=(2,), seed=3))
    for r in recs:
        if r["sync"] == "ps-async":
            r["global_batch"] = 128
    (pt,) = ranking.rank_schemes(recs)
    assert [r["name"] for r in pt["ranking"]] != [] and "ps-async" not in [r["name"] for r in pt["ranking"]]
    assert pt["left_out"] == [{"name": "ps-async", "reason": pytest.approx(pt["left_out"][0]["reason"])}]
    assert "global batch 128" in pt["left_out"][0]["reason"]
    notes = ranking.ranking_tables([pt])[0].to_markdown()
    assert "ps-async left out: global batch 128 ≠ 256" in notes
    from matplotlib.figure import Figure

    from hpc.analysis import plot

    (paint,) = plot.scheme_panels(recs, lambda n: "C0")
    ax = Figure().subplots()
    paint(ax)
    assert any("left out: ps-async" in t.get_text() for t in ax.texts)
    alone = ranking.unranked([r for r in recs if r["sync"] != "mpi"][:5] + recs[-5:])
    assert any("ps-async" in line for line in alone)


def test_ranking_says_when_one_outlier_rep_makes_the_interval_wide():
    """horovod at 0.24× with CI 465–41,520 samples/s was 'same as fastest' beside mpi at 0.27× 'slower'.
    With 5 reps its outlier rep is set aside and the verdict is 'slower'; with 3 the note names the rep
    and says how many more reps would decide."""
    fast = train_records("ring", 0.9, "strong", nps=(2,), reps=5, seed=1, t1=0.05)
    slow = train_records("horovod", 0.9, "strong", nps=(2,), reps=5, seed=2, t1=0.2)
    slow[1]["samples_per_s"] *= 40          # one repetition that ran 40× faster than its siblings
    (pt,) = ranking.rank_schemes(fast + slow)
    hv = next(r for r in pt["ranking"] if r["name"] == "horovod")
    assert hv["verdict"] == "slower" and hv["outliers"] and hv["outliers"][0]["set_aside"], hv
    notes = " ".join(ranking.ranking_notes(pt))
    assert "horovod: rep 1" in notes and "set aside by the trimmed mean" in notes
    (pt,) = ranking.rank_schemes(fast[:3] + slow[:3] + [dict(slow[3], samples_per_s=slow[3]["samples_per_s"])])
    hv = next(r for r in pt["ranking"] if r["name"] == "horovod")
    notes = " ".join(ranking.ranking_notes(pt))
    assert hv["verdict"] in ("slower", "same as fastest")
    if hv["verdict"] == "same as fastest":
        assert "more reps would decide" in notes
    assert "stands apart" in notes


# ---------------------------------------------------------------- drift wording (issue 19)

def test_drift_note_says_slower_when_the_reference_ran_slower():
    """B's in-run reference ran 1.7× slower while the machine probe (a 5 ms snapshot) read 1.61×
    faster: the note says slower, from the reference, and that the probe disagreed."""
    a = coll_records("ring", 5e-6, 5.0, nps=(2,), seed=1) + coll_records("mpi", 3e-6, 6.0, nps=(2,), seed=2)
    b = coll_records("ring", 5e-6, 5.0, nps=(2,), seed=3) + coll_records("mpi", 3e-6, 6.0, nps=(2,), seed=4)
    for r in b:
        r["time_s"] *= 1.7
        r["busbw_GBps"] /= 1.7
        r["times_s"] = [t * 1.7 for t in r["times_s"]]
        r["provenance"] = dict(r["provenance"], probe_s=1e-3 / 1.61)
    for r in a:
        r["provenance"] = dict(r["provenance"], probe_s=1e-3)
    rows, notes = compare.compare_records(a, b)
    text = " ".join(notes)
    assert re.search(r"mpi itself ran ×1\.[67]\d slower in B", text), notes
    assert "faster in B" not in text and "probe" in text and "read ×1.61 faster" in text
    assert compare.reference_drift(rows, "mpi") == pytest.approx(1.7, rel=0.05)
    # no reference: the probe is all there is, and its direction is said as measured
    rows, notes = compare.compare_records([r for r in a if r["algo"] == "ring"],
                                          [r for r in b if r["algo"] == "ring"])
    assert any("machine probe" in n and "×1.61 faster in B" in n for n in notes), notes
    assert compare.drift_note(1.7, None, None, 10.0, False).count("slower") == 1


# ---------------------------------------------------------------- what `auto` decides from

def test_rounds_of_a_side_by_side_run_are_paired():
    """`train --sync a,b` runs each scheme once per round: round r of one pairs with round r of the
    other, so a machine that swings 3× between rounds cannot hide a steady 0.7×."""
    ring = train_records("ring", 0.9, "strong", nps=(2,), reps=5, seed=1)
    mpi = train_records("mpi", 0.9, "strong", nps=(2,), reps=5, seed=2)
    for i, (a, b) in enumerate(zip(ring, mpi)):
        swing = (1.0, 3.0, 0.4, 2.2, 0.7)[i]
        for r in (a, b):
            r.update(order="rounds", order_seed=9, rep_in_run=i, point_id=None)
            r["provenance"] = dict(r["provenance"], argv=["hpc", "train"], timestamp=f"t{i}{r['sync']}")
        a["samples_per_s"] *= swing
        b["samples_per_s"] = a["samples_per_s"] * 0.7
    (pt,) = ranking.rank_schemes(ring + mpi)
    assert pt["ranking"][1]["name"] == "mpi" and pt["ranking"][1]["verdict"] == "slower", pt
    assert ranking.undecided(ring + mpi) == []
    for r in mpi:
        r.pop("order")                     # not known to be rounds: unpaired, the swing hides it
    (pt,) = ranking.rank_schemes(ring + mpi)
    assert pt["ranking"][1]["verdict"] != "slower"
    assert ranking.undecided(ring + mpi) == ["mpi at train np=2 mlp (strong)"]


def test_settled_is_the_auto_stopping_rule():
    rng = np.random.default_rng(4)
    band = math.log1p(0.1)
    a, b = _paired(rng, 40, 2.0, 0.1)
    assert stats.settled({"mpi": a[:5], "x": b[:5]}, "mpi", band) == []          # 2×: clear at once
    a, b = _paired(rng, 200, 1.0, 0.3)
    assert stats.settled({"mpi": a[:5], "x": b[:5]}, "mpi", band) == ["x"]       # A/A: needs more
    assert stats.settled({"mpi": a, "x": b}, "mpi", band) == []                  # ... and gets there
    assert stats.settled({"mpi": a[:2], "x": b[:2]}, "mpi", band) == ["x"]       # under MIN_REPS: never
    alone = list(np.exp(rng.normal(0, 0.02, 6)))
    assert stats.settled({"mpi": alone}, "mpi", band) == []
    assert stats.settled({"mpi": list(np.exp(rng.normal(0, 0.5, 4)))}, "mpi", band) == ["mpi"]
