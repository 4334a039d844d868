"""Run under mpirun: every rank streams its shard of FILE; rank 0 checks the union of rows.

usage: data_shards.py FILE.h5 SAMPLES_PER_RANK_FOR_WEAK
Each row is identified by a hash of its x and y bytes; rank 0 compares the hashes gathered from
all ranks with the hashes of the whole file read directly. Prints "OK <checks>" on success.
"""

import hashlib
import sys

import h5py
import numpy as np
from mpi4py import MPI

from hpc.data.loader import ShardedLoader


def row_hashes(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(xr.tobytes() + yr.tobytes(), digest_size=12).digest()
            for xr, yr in zip(x, y)]


def stream(path: str, comm: MPI.Comm, epoch: int, **kw) -> list[bytes]:
    with ShardedLoader(path, comm.rank, comm.size, batch_size=7, seed=3, block_bytes=4096,
                       **kw) as loader:
        loader.set_epoch(epoch)
        hashes, batches = [], 0
        for x, y in loader:
            assert len(x) == len(y) <= 7
            hashes += row_hashes(x, y)
            batches += 1
        assert batches == len(loader), (batches, len(loader))
        assert len(hashes) == loader.num_samples
    return hashes


def main() -> None:
    comm = MPI.COMM_WORLD
    path, spr = sys.argv[1], int(sys.argv[2])
    with h5py.File(path, "r") as f:
        whole = row_hashes(f["x"][:], f["y"][:]) if comm.rank == 0 else None
    checks = 0
    for epoch in (0, 1):
        for global_shuffle in (False, True):
            got = comm.gather(stream(path, comm, epoch, global_shuffle=global_shuffle), root=0)
            if comm.rank == 0:
                union = [h for part in got for h in part]
                assert sorted(union) == sorted(whole), "strong: rows read != rows in the file"
                checks += 1
            got = comm.gather(stream(path, comm, epoch, mode="weak", samples_per_rank=spr,
                                     global_shuffle=global_shuffle), root=0)
            if comm.rank == 0:
                union = [h for part in got for h in part]
                assert all(len(part) == spr for part in got), "weak: wrong shard size"
                assert len(set(union)) == len(union), "weak: shards overlap"
                assert set(union) <= set(whole), "weak: rows not in the file"
                checks += 1
    if comm.rank == 0:
        print(f"OK {checks}", flush=True)


if __name__ == "__main__":
    main()
