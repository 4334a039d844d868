"""hpc.torch when ranks disagree: the same catchable error on every rank, never a hang or a silently
reinterpreted tensor; a rank that leaves ends the others within seconds, naming it.

The coordinator's matching rules are checked directly (pure logic); everything else on real
`mpirun -n 2` jobs of tests/scripts/hvd_errors.py (a Horovod-style script on hpc.torch).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from hpc.torch._negotiate import JOIN, SHUTDOWN, WAITING, Coordinator, Request, mismatch
from tests.helpers import PLUGINS, REPO, mpirun

SCRIPT = REPO / "tests" / "scripts" / "hvd_errors.py"
ENV = {"PYTHONPATH": str(REPO)}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def coordinator(world: int = 2, sets: dict | None = None, clock: Clock | None = None) -> Coordinator:
    sets = sets or {0: list(range(world))}
    return Coordinator(world, sets.get, grace=2.0, stall_warn=0, clock=clock or Clock())


def req(rank: int, name: str = "allreduce.x", sig: tuple = (("shape", (2, 3)),), kind: str = "allreduce",
        set_id: int = 0, info=None) -> Request:
    return Request(kind, name, set_id, sig, info, rank)


# -- the coordinator (no MPI) -----------------------------------------------------------------------

def test_ready_only_when_every_member_asked_and_in_arrival_order() -> None:
    c = coordinator()
    c.add(req(0, "allreduce.a"))
    c.add(req(0, "allreduce.b"))
    assert c.ready() == []
    c.add(req(1, "allreduce.b"))
    c.add(req(1, "allreduce.a"))
    assert [r.name for r in c.ready()] == ["allreduce.a", "allreduce.b"]  # rank 0's order, for every rank
    assert c.ready() == [] and not c.table


def test_mismatch_is_one_error_for_every_rank_naming_field_and_ranks() -> None:
    c = coordinator()
    c.add(req(0, sig=(("dtype", "float32"), ("shape", (2, 3)))))
    c.add(req(1, sig=(("dtype", "float32"), ("shape", (3, 2)))))
    (resp,) = c.ready()
    assert resp.error == ("Mismatched allreduce 'x': the ranks disagree on shape (rank 0: [2, 3]; rank 1: "
                          "[3, 2]); every rank must pass the same")
    assert mismatch("broadcast", "broadcast.w", {0: (("root rank", 0),), 1: (("root rank", 1),)})
    assert mismatch("broadcast", "broadcast.w", {0: (("root rank", 0),), 1: (("root rank", 0),)}) is None


def test_a_repeated_name_is_matched_by_its_fingerprint_alone() -> None:
    """The response cache: the second time rank 1 sends 'x' with the same signature it sends only the
    fingerprint; a changed signature travels in full again and is compared in full."""
    from hpc.torch._negotiate import fingerprint

    c = coordinator()
    sig = (("dtype", "float32"), ("shape", (2, 3)))
    other = (("dtype", "float32"), ("shape", (3, 2)))
    for r in (0, 1):
        c.add(Request("allreduce", "allreduce.x", 0, sig, None, r, fingerprint(sig)))
    assert c.ready()[0].error is None
    c.add(Request("allreduce", "allreduce.x", 0, sig, None, 0, fingerprint(sig)))
    c.add(Request("allreduce", "allreduce.x", 0, (), None, 1, fingerprint(sig)))  # elided
    (resp,) = c.ready()
    assert resp.error is None and resp.sig == sig
    c.add(Request("allreduce", "allreduce.x", 0, sig, None, 0, fingerprint(sig)))
    c.add(Request("allreduce", "allreduce.x", 0, other, None, 1, fingerprint(other)))
    assert "rank 0: [2, 3]; rank 1: [3, 2]" in c.ready()[0].error


def test_process_sets_match_on_their_members_only() -> None:
    c = coordinator(3, {0: [0, 1, 2], 1: [1, 2]})
    c.add(req(1, set_id=1))
    assert c.ready() == []
    c.add(req(2, set_id=1))
    (resp,) = c.ready()
    assert resp.set_id == 1 and resp.error is None and sorted(resp.infos) == [1, 2]


def test_join_lets_the_others_allreduce_and_returns_the_last_rank() -> None:
    c = coordinator()
    c.add(Request(JOIN, rank=1))
    c.add(req(0))
    (resp,) = c.ready()
    assert resp.error is None and resp.joined == (1,)
    c.add(req(0, "allgather.y", kind="allgather"))
    (resp,) = c.ready()
    assert "join" in resp.error
    c.add(Request(JOIN, rank=0))
    (resp,) = c.ready()
    assert resp.kind == JOIN and resp.value == 0 and not c.joined


def test_ranks_blocked_on_different_names_end_with_an_error_after_the_grace_time() -> None:
    clock = Clock()
    c = coordinator(clock=clock)
    c.add(req(0, "allreduce.loss_0"))
    c.add(req(1, "allreduce.loss_1"))
    c.add(Request(WAITING, info=(0, "allreduce.loss_0"), rank=0))
    c.add(Request(WAITING, info=(0, "allreduce.loss_1"), rank=1))
    clock.t = 1.0
    assert c.ready() == []
    clock.t = 2.5
    out = c.ready()
    assert {r.name for r in out} == {"allreduce.loss_0", "allreduce.loss_1"}
    assert all("rank 0 in allreduce 'loss_0'" in r.error and "rank 1 in allreduce 'loss_1'" in r.error
               for r in out)


def test_a_rank_still_computing_is_not_a_deadlock() -> None:
    clock = Clock()
    c = coordinator(clock=clock)
    c.add(req(0, "allreduce.a"))
    c.add(Request(WAITING, info=(0, "allreduce.a"), rank=0))
    clock.t = 100.0
    assert c.ready() == []  # rank 1 has not said it waits: it may still be on its way


def test_shutdown_of_one_rank_is_announced_to_all() -> None:
    c = coordinator()
    c.add(req(0))
    c.add(Request(SHUTDOWN, rank=1))
    (resp,) = c.ready()
    assert resp.kind == SHUTDOWN and resp.value == 1
    assert c.ready() == []


# -- real ranks -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mismatch_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("agree") / "res.json"
    proc = mpirun(2, sys.executable, str(SCRIPT), "mismatch", str(out), timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2)]


@pytest.mark.parametrize("case, words", [
    ("shape", "shape (rank 0: [2, 3]; rank 1: [3, 2])"),
    ("dtype", "dtype (rank 0: float32; rank 1: int32)"),
    ("broadcast_dtype", "dtype (rank 0: float32; rank 1: int32)"),
    ("root", "root rank (rank 0: 0; rank 1: 1)"),
    ("op", "reduce op"),
    ("name", "rank 0 in allreduce 'loss_0'"),
    ("architecture", "'weight' shape (rank 0: [2, 3]; rank 1: [3, 2])"),
    ("optimizer_model", "holds different parameters"),
])
def test_disagreement_is_the_same_catchable_error_on_every_rank(mismatch_results, case: str, words: str) -> None:
    """[2,3] vs [3,2], float vs int32 (also into a broadcast), roots, ops, names, and a model with the
    same byte count but another shape: HorovodInternalError (a RuntimeError) on both ranks, same text."""
    got = [res[case] for res in mismatch_results]
    for kind, msg, seconds, is_runtime in got:
        assert kind == "HorovodInternalError" and is_runtime, got
        assert words in msg, msg
        assert seconds < 30
    if case != "optimizer_model":
        assert got[0][1] == got[1][1]


@pytest.mark.parametrize("case", ["complex_allreduce", "complex_broadcast", "complex_allgather"])
def test_complex_tensors_are_refused_not_truncated(mismatch_results, case: str) -> None:
    for kind, msg, _, _ in (res[case] for res in mismatch_results):
        assert kind == "ValueError" and "complex" in msg and "ComplexFloatTensor" in msg


def test_ranks_still_work_together_after_the_errors(mismatch_results) -> None:
    assert [res["after"][0] for res in mismatch_results] == ["ok", "ok"]


@pytest.mark.parametrize("case, words", [
    ("skip", "rank 1 has shut down"),            # rank 1 exits instead of the allreduce rank 0 runs
    ("skip-step", "rank(s) [1] shut down"),       # rank 1 takes one optimizer step fewer, then exits
    ("kill", ""),                                 # rank 1 is SIGKILLed while rank 0 waits
])
def test_a_rank_that_leaves_ends_the_job_within_seconds(case: str, words: str) -> None:
    t0 = time.monotonic()
    proc = mpirun(2, sys.executable, str(SCRIPT), case, timeout=180, env=ENV)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert elapsed < 90, elapsed
    assert "rank 0: " + case + " done" not in proc.stdout
    if words:
        assert "hpc: error: rank 0: " in proc.stderr and words in proc.stderr, proc.stderr[-3000:]


def test_plugin_whose_ranks_differ_by_one_ulp_is_stopped(tmp_path: Path) -> None:
    """Verification's tolerance cannot see a 1-ulp difference between ranks; the models would drift
    apart. hpc.torch stops it (verification's cross-rank check, or the step checksum) with one line."""
    spec = f"{PLUGINS / 'ulp_apart.py'}:allreduce"
    proc = mpirun(2, sys.executable, str(SCRIPT), "train", str(tmp_path / "p.pt"), timeout=300,
                  env={**ENV, "HPC_COLLECTIVE": spec})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "hpc: error: rank" in proc.stderr and "different" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "p.pt").exists()


def test_unwritable_hpc_record_fails_at_init_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    import os
    import subprocess

    target = tmp_path / "ro" / "sub" / "rec.jsonl" if os.geteuid() == 0 else tmp_path / "ro" / "rec.jsonl"
    if os.geteuid() == 0:  # root writes anywhere: a path below a regular file cannot be created by anyone
        (tmp_path / "ro").chmod(0o700)
        (tmp_path / "ro" / "sub").write_text("a file")
    proc = subprocess.run([sys.executable, str(SCRIPT), "train", str(tmp_path / "p.pt")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **ENV, "HPC_RECORD": str(target)})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("hpc: error: HPC_RECORD=") and str(target) in lines[0]
    assert not (tmp_path / "p.pt").exists()


def test_sync_batch_norm_equals_batch_norm_on_the_global_batch(tmp_path: Path) -> None:
    """hvd.SyncBatchNorm (on CPU too, unlike Horovod's): each rank's half of the batch, normalized with
    the global statistics, equals BatchNorm2d on the whole batch; running stats and gradients too."""
    out = tmp_path / "bn.json"
    proc = mpirun(2, sys.executable, str(SCRIPT), "syncbn", str(out), timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(2):
        diffs = json.loads(Path(f"{out}.rank{r}").read_text())
        assert max(diffs.values()) < 1e-4, diffs


def test_join_with_distributed_optimizer_takes_part_with_zeros(tmp_path: Path) -> None:
    """Uneven data: rank 1 waits in hvd.join() while rank 0 takes one more optimizer step. Rank 0's update
    is its gradient averaged with rank 1's zeros (Horovod's join), join returns the last rank to join on
    both, and after a broadcast the ranks train on together (no hang, no step-count error)."""
    out = tmp_path / "join.json"
    proc = mpirun(2, sys.executable, str(SCRIPT), "join", str(out), timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2)]
    assert [x["last"] for x in res] == [0, 0] and all(x["same"] for x in res)
    assert res[0]["zero_averaged"] < 1e-6


def test_ranks_ending_with_different_parameters_are_told(tmp_path: Path) -> None:
    """Horovod would not notice: at shutdown the ranks compare a checksum of their parameters (rank-specific
    learning rates here); ranks that trained alike hear nothing."""
    proc = mpirun(2, sys.executable, str(SCRIPT), "diverge", timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hpc.torch: warning: the ranks end with different parameters after 2 optimizer steps" in proc.stderr
    alike = mpirun(2, sys.executable, str(SCRIPT), "train", str(tmp_path / "p.pt"), timeout=180, env=ENV)
    assert alike.returncode == 0 and "warning" not in alike.stderr, alike.stderr[-3000:]
