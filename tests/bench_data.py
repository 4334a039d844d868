"""Benchmark of the sharded HDF5 loader (not collected by pytest; run it by hand).

    python tests/bench_data.py [--ranks 4] [--gb 1.0] [--rss-gb 0.2,2.0] [--reps 3] [--dir DIR]

1. throughput: on a --gb file, every rank reads its strong-scaling shard (all ranks at once) with
   the loader (shuffle + global shuffle + prefetch) and with plain sequential h5py slab reads of the
   same rows; reports the per-rank ratio loader / raw (median over reps).
2. memory: peak RSS per rank (ru_maxrss) while streaming one epoch of each --rss-gb file.
Files are written under --dir (default: a temporary directory) and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
FEATURES = 256  # 1 KiB rows of float32
RAW_SLAB_BYTES = 32 << 20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_throughput(path: str, reps: int, batch: int) -> None:
    """On every rank: time loader vs raw reads of this rank's rows; rank 0 prints JSON."""
    import h5py
    import numpy as np
    from mpi4py import MPI

    from hpc.data.loader import ShardedLoader, shard_range

    comm = MPI.COMM_WORLD
    loader_s, raw_s, direct_s = [], [], []
    with h5py.File(path, "r") as f:
        n = f["x"].shape[0]
    (a, b), = shard_range(n, comm.rank, comm.size)
    nbytes = 0
    for rep in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        with ShardedLoader(path, comm.rank, comm.size, batch_size=batch, seed=rep,
                           shuffle=True, global_shuffle=False, prefetch=2) as loader:
            loader.set_epoch(rep)
            rows = 0
            for x, y in loader:
                rows += len(x)
        loader_s.append(time.perf_counter() - t0)
        assert rows == b - a
        comm.Barrier()
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            xd, yd = f["x"], f["y"]
            step = max(1, RAW_SLAB_BYTES // (xd.dtype.itemsize * FEATURES))
            nbytes = 0
            for s in range(a, b, step):
                xs, ys = xd[s:min(b, s + step)], yd[s:min(b, s + step)]
                nbytes += xs.nbytes + ys.nbytes
        raw_s.append(time.perf_counter() - t0)
        comm.Barrier()
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:  # the same, into buffers allocated once (no page faults)
            xd, yd = f["x"], f["y"]
            xb = np.empty((step, FEATURES), xd.dtype)
            yb = np.empty(step, yd.dtype)
            for s in range(a, b, step):
                m = min(b, s + step) - s
                xd.read_direct(xb, np.s_[s:s + m], np.s_[0:m])
                yd.read_direct(yb, np.s_[s:s + m], np.s_[0:m])
        direct_s.append(time.perf_counter() - t0)
    mine = {"rank": comm.rank, "rows": b - a, "bytes": nbytes,
            "loader_s": statistics.median(loader_s), "raw_s": statistics.median(raw_s),
            "direct_s": statistics.median(direct_s), "loader_all": loader_s, "raw_all": raw_s,
            "direct_all": direct_s, "peak_rss_mb": _rss_mb()}
    everyone = comm.gather(mine, root=0)
    if comm.rank == 0:
        print(json.dumps(everyone), flush=True)


def worker_rss(path: str, batch: int) -> None:
    """On every rank: peak RSS before and after streaming one shuffled epoch; rank 0 prints JSON."""
    from mpi4py import MPI

    from hpc.data.loader import ShardedLoader

    comm = MPI.COMM_WORLD
    with ShardedLoader(path, comm.rank, comm.size, batch_size=batch, shuffle=True,
                       global_shuffle=True, prefetch=4) as loader:
        before = _rss_mb()
        rows = sum(len(x) for x, _ in loader)
    everyone = comm.gather({"rank": comm.rank, "rows": rows, "rss_before_mb": before,
                            "peak_rss_mb": _rss_mb()}, root=0)
    if comm.rank == 0:
        print(json.dumps(everyone), flush=True)


def _launch(ranks: int, *args: str, timeout: float = 900) -> list[dict]:
    from hpc.launch.mpirun import mpirun_argv

    argv = mpirun_argv(ranks, [sys.executable, "-m", "mpi4py", os.path.abspath(__file__), *args])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, PYTHONPATH=REPO))
    if out.returncode:
        raise SystemExit(f"benchmark ranks failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _make(path: str, gb: float) -> None:
    from hpc.data.make import make_synthetic

    rows = int(gb * 1e9 / (FEATURES * 4 + 8))
    t0 = time.perf_counter()
    make_synthetic(path, "tabular", rows, str(FEATURES), seed=0, progress=False)
    print(f"  made {path}: {rows} rows, {os.path.getsize(path) / 1e9:.2f} GB "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--gb", type=float, default=1.0, help="throughput file size")
    parser.add_argument("--rss-gb", default="0.2,2.0", help="file sizes for the memory check")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--worker", choices=("throughput", "rss"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "throughput":
        return worker_throughput(args.file, args.reps, args.batch)
    if args.worker == "rss":
        return worker_rss(args.file, args.batch)

    root = tempfile.mkdtemp(prefix="hpc-bench-data-", dir=args.dir)
    try:
        big = os.path.join(root, "throughput.h5")
        _make(big, args.gb)
        ranks = _launch(args.ranks, "--worker", "throughput", "--file", big,
                        "--reps", str(args.reps), "--batch", str(args.batch))
        os.unlink(big)
        print(f"throughput, {args.ranks} ranks, {args.gb} GB file, batch {args.batch}, "
              f"median of {args.reps} (shuffle + prefetch on):")
        ratios = []
        for r in ranks:
            best_raw = min(r["raw_s"], r["direct_s"])
            ratios.append(best_raw / r["loader_s"])
            gbps = {key: r["bytes"] / r[key] / 1e9 for key in ("loader_s", "raw_s", "direct_s")}
            print(f"  rank {r['rank']}: {r['bytes'] / 1e6:.0f} MB  loader {gbps['loader_s']:.2f}"
                  f" GB/s  raw slices {gbps['raw_s']:.2f} GB/s  raw read_direct "
                  f"{gbps['direct_s']:.2f} GB/s  loader/best raw {ratios[-1]:.2f}")
        print(f"  median ratio loader / best raw: {statistics.median(ratios):.2f}"
              "  (target >= 0.8)")
        peaks = {}
        for gb in [float(g) for g in args.rss_gb.split(",")]:
            path = os.path.join(root, f"rss-{gb}.h5")
            _make(path, gb)
            peaks[gb] = _launch(args.ranks, "--worker", "rss", "--file", path,
                                "--batch", str(args.batch))
            os.unlink(path)
        print(f"peak RSS per rank (MB), {args.ranks} ranks streaming one epoch:")
        for gb, ranks in peaks.items():
            print(f"  {gb:>4} GB file: " + "  ".join(
                f"r{r['rank']} {r['peak_rss_mb']:.0f} (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f})"
                for r in ranks))
        sizes = sorted(peaks)
        diff = max(a["peak_rss_mb"] - b["peak_rss_mb"]
                   for a, b in zip(peaks[sizes[-1]], peaks[sizes[0]]))
        print(f"  largest per-rank difference {sizes[-1]} GB vs {sizes[0]} GB: {diff:+.0f} MB "
              "(target: within ~50 MB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
