"""HDF5 datasets sharded per rank: shard arithmetic, the loader on real files, real MPI, the CLI."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpc.data.make import import_npy, inspect_file, make_synthetic
from hpc.errors import HpcError
from hpc.data.loader import ShardedLoader, epoch_pieces, shard_range
from tests.helpers import REPO, hpc, mpirun, one_error_line

FAST = settings(max_examples=150, deadline=None)


# -- shard arithmetic (pure) ----------------------------------------------------------------------
def _owned(n: int, world: int, **kw) -> list[list[tuple[int, int]]]:
    return [shard_range(n, r, world, **kw) for r in range(world)]


@FAST
@given(st.integers(1, 5000), st.integers(1, 64), st.booleans())
def test_strong_shards_cover_every_sample_once(n, world, drop_last):
    world = min(world, n)
    shards = _owned(n, world, mode="strong", drop_last=drop_last)
    rows = np.concatenate([np.arange(a, b) for s in shards for a, b in s])
    sizes = [sum(b - a for a, b in s) for s in shards]
    if drop_last:
        assert sizes == [n // world] * world
        np.testing.assert_array_equal(rows, np.arange(world * (n // world)))
    else:
        np.testing.assert_array_equal(rows, np.arange(n))  # contiguous, in rank order, once each
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@FAST
@given(st.integers(1, 2000), st.integers(1, 16), st.integers(1, 300))
def test_weak_shards_are_disjoint_and_sized(n, world, per_rank):
    if world * per_rank > n:
        with pytest.raises(HpcError, match="weak scaling needs"):
            shard_range(n, 0, world, "weak", per_rank)
        shards = _owned(n, world, mode="weak", samples_per_rank=per_rank, wrap=True)
        for s in shards:  # wrapped: right size, inside the data
            assert sum(b - a for a, b in s) == per_rank
            assert all(0 <= a < b <= n for a, b in s)
        return
    shards = _owned(n, world, mode="weak", samples_per_rank=per_rank)
    rows = np.concatenate([np.arange(a, b) for s in shards for a, b in s])
    assert len(rows) == world * per_rank == len(np.unique(rows))
    assert rows.max() < n


@pytest.mark.parametrize("args, words", [
    ((3, 0, 4, "strong"), "3 samples cannot be split over 4 ranks"),
    ((0, 0, 1, "strong"), "0 samples cannot be split"),
    ((10, 0, 2, "weak"), "samples_per_rank"),
    ((10, 2, 2, "strong"), "rank 2 is outside"),
    ((10, 0, 2, "bogus"), "unknown scaling mode"),
])
def test_shard_range_rejects_bad_input(args, words):
    with pytest.raises(HpcError, match=words):
        shard_range(*args)


@FAST
@given(st.integers(1, 3000), st.integers(1, 8), st.integers(1, 200), st.integers(0, 3),
       st.booleans(), st.booleans(), st.booleans())
def test_epoch_pieces_read_every_sample_once(n, world, block, epoch, shuffle, global_shuffle,
                                             drop_last):
    world = min(world, n)
    count = np.zeros(n, np.int64)
    for rank in range(world):
        pieces = epoch_pieces(n, rank, world, block, "strong", drop_last=drop_last, seed=7,
                              epoch=epoch, shuffle=shuffle, global_shuffle=global_shuffle)
        for a, b in pieces:
            assert a // block == (b - 1) // block, "a piece crosses a block boundary"
            count[a:b] += 1
    if drop_last:
        assert count.sum() == world * (n // world) and count.max() <= 1
    else:
        np.testing.assert_array_equal(count, 1)


@FAST
@given(st.integers(1, 3000), st.integers(1, 8), st.integers(1, 100), st.integers(1, 200),
       st.integers(0, 3))
def test_weak_pieces_with_global_shuffle_are_disjoint(n, world, per_rank, block, epoch):
    if world * per_rank > n:
        return
    count = np.zeros(n, np.int64)
    for rank in range(world):
        pieces = epoch_pieces(n, rank, world, block, "weak", per_rank, seed=1, epoch=epoch,
                              global_shuffle=True)
        assert sum(b - a for a, b in pieces) == per_rank
        for a, b in pieces:
            count[a:b] += 1
    assert count.max() <= 1 and count.sum() == world * per_rank


def test_epoch_order_is_seeded():
    args = dict(n_samples=10_000, rank=1, world=3, block_rows=50, global_shuffle=True)
    first = epoch_pieces(**args, seed=5, epoch=0)
    assert first == epoch_pieces(**args, seed=5, epoch=0)
    assert first != epoch_pieces(**args, seed=5, epoch=1)
    assert first != epoch_pieces(**args, seed=6, epoch=0)
    plain = epoch_pieces(**dict(args, global_shuffle=False), shuffle=False)
    assert plain == sorted(plain) and plain[0][0] == 3334  # sequential in the rank's shard


# -- the loader on real files ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> str:
    """1003 rows with x[i] = i (8 features) and y[i] = i: every row names itself."""
    d = tmp_path_factory.mktemp("idx")
    n = 1003
    np.save(d / "x.npy", np.repeat(np.arange(n, dtype=np.float32)[:, None], 8, axis=1))
    np.save(d / "y.npy", np.arange(n, dtype=np.int64))
    path = str(d / "idx.h5")
    import_npy(path, d / "x.npy", d / "y.npy", chunk=16)
    return path


def _epoch(path: str, rank: int, world: int, epoch: int = 0, **kw) -> list[np.ndarray]:
    kw.setdefault("block_bytes", 100)  # a few rows per read: many blocks to shuffle
    with ShardedLoader(path, rank, world, **kw) as loader:
        loader.set_epoch(epoch)
        batches = []
        for x, y in loader:
            np.testing.assert_array_equal(x[:, 0], y)  # features and labels stay paired
            batches.append(y)
        assert len(batches) == len(loader)
        return batches


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("global_shuffle", [False, True])
def test_loader_reads_each_row_once_per_epoch(indexed, world, global_shuffle):
    for epoch in (0, 1):
        seen = [np.concatenate(_epoch(indexed, r, world, epoch, batch_size=10,
                                      global_shuffle=global_shuffle)) for r in range(world)]
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(1003))


def test_loader_batches_and_drop_last(indexed):
    batches = _epoch(indexed, 1, 3, batch_size=32)  # rank 1 of 3 owns 334 rows
    assert [len(b) for b in batches] == [32] * 10 + [14]
    batches = _epoch(indexed, 1, 3, batch_size=32, drop_last=True)
    assert [len(b) for b in batches] == [32] * 10
    with ShardedLoader(indexed, 2, 3, batch_size=32) as loader:
        assert loader.num_samples == 334 and len(loader) == 11 and loader.steps_per_epoch == 11


def test_loader_is_deterministic_and_reshuffles_each_epoch(indexed):
    kw = dict(batch_size=16, seed=11)
    a, b = _epoch(indexed, 0, 2, 0, **kw), _epoch(indexed, 0, 2, 0, **kw)
    assert all(np.array_equal(p, q) for p, q in zip(a, b)) and len(a) == len(b)
    c = np.concatenate(_epoch(indexed, 0, 2, 1, **kw))
    assert not np.array_equal(np.concatenate(a), c)
    assert set(np.concatenate(a)) == set(c)  # same shard, new order
    sequential = np.concatenate(_epoch(indexed, 1, 2, shuffle=False, batch_size=16))
    np.testing.assert_array_equal(sequential, np.arange(502, 1003))


def test_prefetch_gives_the_same_batches_and_stops_early(indexed):
    kw = dict(batch_size=8, seed=2, global_shuffle=True)
    eager = _epoch(indexed, 0, 1, prefetch=0, **kw)
    threaded = _epoch(indexed, 0, 1, prefetch=3, **kw)
    assert all(np.array_equal(p, q) for p, q in zip(eager, threaded)) and len(eager) == len(threaded)
    with ShardedLoader(indexed, 0, 1, batch_size=4, prefetch=2, block_bytes=100) as loader:
        for i, _ in enumerate(loader):  # leaving early must not hang or leak the thread
            if i == 3:
                break
        assert sum(1 for _ in loader) == len(loader)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_kept_by_the_caller_are_never_overwritten(indexed, prefetch):
    """Read buffers are recycled, but only once no batch that uses them is still held."""
    kept, snapshot = [], []
    with ShardedLoader(indexed, 0, 1, batch_size=5, prefetch=prefetch, block_bytes=300) as loader:
        for i, (x, y) in enumerate(loader):
            if i % 3 == 0:
                kept.append((x, y[1:]))  # a view of a view keeps the buffer busy too
                snapshot.append((x.copy(), y[1:].copy()))
        loader.set_epoch(1)
        seen = np.concatenate([y for _, y in loader])  # many buffers recycled meanwhile
    assert sorted(seen) == list(range(1003))
    for (x, y), (x0, y0) in zip(kept, snapshot):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)


def test_weak_loader_shards(indexed):
    seen = [np.concatenate(_epoch(indexed, r, 4, mode="weak", samples_per_rank=200,
                                  batch_size=64, global_shuffle=True)) for r in range(4)]
    rows = np.concatenate(seen)
    assert all(len(s) == 200 for s in seen) and len(np.unique(rows)) == 800
    with pytest.raises(HpcError, match="weak scaling needs 4 x 300 = 1200 samples"):
        ShardedLoader(indexed, 0, 4, mode="weak", samples_per_rank=300)
    wrapped = _epoch(indexed, 3, 4, mode="weak", samples_per_rank=300, wrap=True, batch_size=64)
    assert sum(len(b) for b in wrapped) == 300


def _bad_files(tmp_path, real: str) -> dict[str, str]:
    text = tmp_path / "notes.h5"
    text.write_text("this is not HDF5\n")
    with open(real, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    mismatched = tmp_path / "mismatched.h5"
    with h5py.File(mismatched, "w") as f:
        f["x"] = np.zeros((10, 3), np.float32)
        f["y"] = np.zeros(9, np.int64)
    return {"missing": str(tmp_path / "nope.h5"), "text": str(text),
            "truncated": str(truncated), "mismatched": str(mismatched)}


def test_loader_rejects_bad_files(tmp_path, indexed):
    bad = _bad_files(tmp_path, indexed)
    for key, words in [("missing", "no such file"), ("text", "not an HDF5 file"),
                       ("truncated", "truncated or corrupt"),
                       ("mismatched", "'x' has 10 rows but 'y' has 9")]:
        with pytest.raises(HpcError, match=words):
            ShardedLoader(bad[key], 0, 1)
    with pytest.raises(HpcError, match=r"no dataset 'features' \(datasets: x, y\)"):
        ShardedLoader(indexed, 0, 1, x="features")
    with pytest.raises(HpcError, match="1003 samples cannot be split over 2000 ranks"):
        ShardedLoader(indexed, 0, 2000)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_corrupt_data_is_an_error_not_garbage(tmp_path, prefetch):
    """A damaged compressed chunk surfaces as HpcError from the reading thread, in the caller."""
    path = tmp_path / "c.h5"
    make_synthetic(path, "tabular", 5000, "16", compression="gzip", chunk=100)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 4000)
    with pytest.raises(HpcError, match="corrupt"):
        with ShardedLoader(path, 0, 1, prefetch=prefetch) as loader:
            for _ in loader:
                pass


# -- synthetic data ---------------------------------------------------------------------------------
def test_synthetic_data_is_seeded_and_independent_of_chunking(tmp_path):
    a = make_synthetic(tmp_path / "a.h5", "tokens", 600, "16", classes=50, seed=4, chunk=7)
    make_synthetic(tmp_path / "b.h5", "tokens", 600, "16", classes=50, seed=4, chunk=1000)
    make_synthetic(tmp_path / "c.h5", "tokens", 600, "16", classes=50, seed=5)
    assert a["datasets"]["x"] == {"shape": [600, 16], "dtype": "int64"}
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb, \
            h5py.File(tmp_path / "c.h5") as fc:
        xa, ya = fa["x"][:], fa["y"][:]
        np.testing.assert_array_equal(xa, fb["x"][:])
        assert not np.array_equal(xa, fc["x"][:])
        np.testing.assert_array_equal(xa[:, 1:], ya[:, :-1])  # y is the next token
        assert xa.min() >= 0 and ya.max() < 50
        assert fa["x"].chunks == (7, 16)


def test_synthetic_labels_follow_a_rule(tmp_path):
    """Labels are learnable: class means of tabular x differ, every class occurs."""
    make_synthetic(tmp_path / "t.h5", "tabular", 4000, "16", classes=4, seed=1)
    with h5py.File(tmp_path / "t.h5") as f:
        x, y = f["x"][:], f["y"][:]
    counts = np.bincount(y, minlength=4)
    assert counts.min() > 4000 / 4 / 3  # roughly balanced
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(4)[y], rcond=None)
    accuracy = np.mean(np.argmax(np.c_[x, np.ones(len(x))] @ w, axis=1) == y)
    assert accuracy > 0.5  # a linear probe beats chance (0.25) by far: the rule is planted


def test_progress_bar_and_compression(tmp_path, capsys):
    make_synthetic(tmp_path / "p.h5", "image", 300, "2x8x8", seed=0, compression="lzf",
                   chunk=64, progress=True)
    assert "writing p.h5" in capsys.readouterr().err
    info = inspect_file(tmp_path / "p.h5")
    x = next(d for d in info["datasets"] if d["name"] == "x")
    assert x["compression"] == "lzf" and x["chunks"] == [64, 2, 8, 8] and x["shuffle"]


# -- the CLI -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, shape, classes", [("tabular", "12", 3), ("image", "3x8x8", 5),
                                                  ("tokens", "20", 40)])
def test_cli_make_then_inspect(tmp_path, kind, shape, classes):
    path = tmp_path / f"{kind}.h5"
    out = hpc("data", "make", str(path), "--kind", kind, "--samples", "500", "--shape", shape,
              "--classes", str(classes), "--seed", "3", "--chunk", "64",
              "--compression", "gzip", timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"wrote {path}" in out.stdout
    table = hpc("data", "inspect", str(path), timeout=60)
    assert table.returncode == 0, table.stderr
    assert "gzip" in table.stdout and "500" in table.stdout and kind in table.stdout
    info = json.loads(hpc("data", "inspect", str(path), "--json", timeout=60).stdout)
    x, y = (next(d for d in info["datasets"] if d["name"] == n) for n in ("x", "y"))
    dims = [int(v) for v in shape.split("x")]
    assert x["shape"] == [500, *dims] and x["chunks"] == [64, *dims]
    assert x["dtype"] == ("int64" if kind == "tokens" else "float32") and y["dtype"] == "int64"
    assert y["shape"] == ([500, *dims] if kind == "tokens" else [500])
    attrs = info["attrs"]
    assert attrs["kind"] == kind and attrs["samples"] == 500 and attrs["shape"] == dims
    assert attrs["classes"] == classes and attrs["seed"] == 3 and attrs["hpc_version"]
    assert attrs["command"].startswith("hpc data make") and attrs["created"].endswith("Z")
    assert info["size_bytes"] > 0 and x["storage_bytes"] > 0
    again = hpc("data", "make", str(path), "--samples", "10", timeout=60)
    assert "exists (use --force" in one_error_line(again)
    assert hpc("data", "make", str(path), "--samples", "10", "--force",
               timeout=60).returncode == 0


def test_cli_from_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(300) % 7)
    out = hpc("data", "make", str(tmp_path / "d.h5"), "--from-npy", str(tmp_path / "x.npy"),
              "--labels", str(tmp_path / "y.npy"), "--chunk", "32", timeout=60)
    assert out.returncode == 0, out.stderr
    with h5py.File(tmp_path / "d.h5") as f:
        np.testing.assert_array_equal(f["x"][:], x)
        assert f["x"].dtype == np.float64 and f["x"].chunks == (32, 5)
        assert f.attrs["kind"] == "npy" and f.attrs["classes"] == 7
    plan = json.loads(hpc("data", "inspect", str(tmp_path / "d.h5"), "--json", "--ranks", "4",
                          "--batch-size", "16", timeout=60).stdout)["shards"]
    assert [s["samples"] for s in plan] == [75] * 4 and plan[3]["ranges"] == [[225, 300]]


def test_cli_bad_input_is_one_line(tmp_path, indexed):
    bad = _bad_files(tmp_path, indexed)
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    np.save(tmp_path / "y9.npy", np.zeros(9))
    cases = [
        (("inspect", bad["missing"]), "no such file"),
        (("inspect", bad["text"]), "not an HDF5 file"),
        (("inspect", bad["truncated"]), "truncated or corrupt"),
        (("inspect", indexed, "--ranks", "2", "--x", "features"), "no dataset 'features'"),
        (("inspect", bad["mismatched"], "--ranks", "2"), "'x' has 10 rows but 'y' has 9"),
        (("make", str(tmp_path / "m.h5"), "--from-npy", str(tmp_path / "x.npy"),
          "--labels", str(tmp_path / "y9.npy")), "has 10 rows but"),
        (("inspect", indexed, "--ranks", "2000"), "cannot be split over 2000 ranks"),
        (("make", str(tmp_path / "s.h5"), "--kind", "image", "--shape", "64"), "bad --shape"),
        (("make", str(tmp_path / "t.h5"), "--from-npy", bad["text"]), "not a readable .npy"),
    ]
    for args, words in cases:
        line = one_error_line(hpc("data", *args, timeout=60))
        assert words in line, (args, line)
    assert not (tmp_path / "m.h5").exists()


# -- real MPI ranks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 3])
def test_mpi_ranks_read_the_whole_dataset_once(tmp_path, world):
    path = tmp_path / "d.h5"
    make_synthetic(path, "tabular", 1001, "6", seed=9, chunk=10)
    out = mpirun(world, sys.executable, "-m", "mpi4py", str(REPO / "tests" / "mpi" / "data_shards.py"),
                 str(path), str(1001 // world - 3), timeout=120,
                 env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK 8" in out.stdout
