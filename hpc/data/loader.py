"""Per-rank sharded HDF5 reader: each rank reads only its own rows, in chunk-aligned blocks.

Every rank opens its own read-only h5py handle (no parallel HDF5). An epoch is planned as a list of
row pieces, each inside one block of a fixed grid aligned to the file's chunks; shuffling permutes
the pieces and then the rows inside each piece, so reads stay large and contiguous. A background
thread fills a bounded queue of batches, so memory per rank is O(block + batch x prefetch),
independent of the file's size.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Any, Iterator

import numpy as np

from hpc.errors import HpcError

MODES = ("strong", "weak")
BLOCK_BYTES = 4 << 20  # target size of one read: large enough to run at disk/page-cache speed
MAX_CHUNK_CACHE = 256 << 20

# Salts that keep the random streams of the different shuffles apart.
_GLOBAL_SALT, _PIECE_SALT, _ROW_SALT = 0x610B, 0x91EC, 0x50F7


def shard_range(n_samples: int, rank: int, world: int, mode: str = "strong",
                samples_per_rank: int | None = None, drop_last: bool = False,
                wrap: bool = False) -> list[tuple[int, int]]:
    """Row ranges [start, stop) that `rank` of `world` owns (pure; indices are positions 0..n-1).

    strong: n split into `world` contiguous near-equal shards, the remainder going to the first
    ranks (or dropped from the end with drop_last), so total work is fixed as world grows.
    weak: `samples_per_rank` rows per rank, disjoint; if the data is too small, an error unless
    `wrap`, which wraps positions modulo n (shards then overlap).
    """
    _check_rank(rank, world)
    if n_samples < 0:
        raise HpcError(f"number of samples must be >= 0, got {n_samples}")
    if mode == "strong":
        if n_samples < world:
            raise HpcError(f"{n_samples} samples cannot be split over {world} ranks "
                           "(strong scaling needs at least one sample per rank)")
        base, rem = divmod(n_samples, world)
        if drop_last:
            return [(rank * base, (rank + 1) * base)]
        start = rank * base + min(rank, rem)
        return [(start, start + base + (rank < rem))]
    if mode == "weak":
        if samples_per_rank is None or samples_per_rank < 1:
            raise HpcError(f"weak scaling needs samples_per_rank >= 1, got {samples_per_rank}")
        need = world * samples_per_rank
        if need > n_samples and not wrap:
            raise HpcError(f"weak scaling needs {world} x {samples_per_rank} = {need} samples but "
                           f"the dataset has {n_samples}: use fewer samples per rank, a bigger "
                           "file, or wrap")
        start = rank * samples_per_rank
        if need <= n_samples:
            return [(start, start + samples_per_rank)]
        if n_samples == 0:
            raise HpcError("cannot wrap around an empty dataset")
        ranges, pos, left = [], start % n_samples, samples_per_rank
        while left:
            take = min(left, n_samples - pos)
            ranges.append((pos, pos + take))
            left -= take
            pos = 0
        return ranges
    raise HpcError(f"unknown scaling mode {mode!r} (use strong or weak)")


def _check_rank(rank: int, world: int) -> None:
    if world < 1:
        raise HpcError(f"world size must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise HpcError(f"rank {rank} is outside 0..{world - 1}")


def block_rows_for(row_bytes: int, chunk_rows: int | None = None,
                   target_bytes: int = BLOCK_BYTES) -> int:
    """Rows per read block: whole chunks up to about `target_bytes` (a part of one huge chunk)."""
    row_bytes = max(1, row_bytes)
    if not chunk_rows:
        return max(1, target_bytes // row_bytes)
    chunk_bytes = chunk_rows * row_bytes
    if chunk_bytes > 16 * target_bytes:  # huge chunks: read part of one (the chunk cache holds it)
        return max(1, target_bytes // row_bytes)
    return chunk_rows * max(1, target_bytes // chunk_bytes)


def epoch_pieces(n_samples: int, rank: int, world: int, block_rows: int, mode: str = "strong",
                 samples_per_rank: int | None = None, drop_last: bool = False, wrap: bool = False,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True,
                 global_shuffle: bool = False) -> list[tuple[int, int]]:
    """File row pieces [start, stop) this rank reads in one epoch, in read order (pure).

    Each piece lies inside one block of the grid k*block_rows. With global_shuffle the blocks of the
    whole file are permuted (same permutation on every rank: seed and epoch only) before sharding;
    with shuffle the rank's pieces are then put in a per-rank random order.
    """
    if block_rows < 1:
        raise HpcError(f"block_rows must be >= 1, got {block_rows}")
    ranges = shard_range(n_samples, rank, world, mode, samples_per_rank, drop_last, wrap)
    if global_shuffle and n_samples:
        pieces = _map_virtual(ranges, n_samples, block_rows,
                              np.random.default_rng([seed, epoch, _GLOBAL_SALT]))
    else:
        pieces = [piece for a, b in ranges for piece in _split_on_grid(a, b, block_rows)]
    if shuffle and len(pieces) > 1:
        order = np.random.default_rng([seed, epoch, rank, _PIECE_SALT]).permutation(len(pieces))
        pieces = [pieces[i] for i in order]
    return pieces


def _split_on_grid(start: int, stop: int, block_rows: int) -> list[tuple[int, int]]:
    """Cut [start, stop) at multiples of block_rows."""
    out = []
    while start < stop:
        end = min(stop, (start // block_rows + 1) * block_rows)
        out.append((start, end))
        start = end
    return out


def _map_virtual(ranges: list[tuple[int, int]], n: int, block_rows: int,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """Map position ranges in a block-permuted view of the file back to file row pieces."""
    nblocks = -(-n // block_rows)
    order = rng.permutation(nblocks)
    sizes = np.full(nblocks, block_rows, dtype=np.int64)
    sizes[-1] = n - (nblocks - 1) * block_rows
    offsets = np.concatenate([[0], np.cumsum(sizes[order])])  # where each permuted block starts
    pieces = []
    for a, b in ranges:
        i = int(np.searchsorted(offsets, a, side="right")) - 1
        while a < b:
            block_start = int(order[i]) * block_rows
            end = min(b, int(offsets[i + 1]))
            pieces.append((block_start + a - int(offsets[i]), block_start + end - int(offsets[i])))
            a = end
            i += 1
    return pieces


def open_h5(path: str | os.PathLike, rdcc_nbytes: int | None = None) -> Any:
    """Open an HDF5 file read-only, turning every way it can be wrong into a one-line HpcError."""
    import h5py

    p = os.fspath(path)
    if not os.path.exists(p):
        raise HpcError(f"{p}: no such file")
    if os.path.isdir(p):
        raise HpcError(f"{p}: is a directory, not an HDF5 file")
    try:
        is_hdf5 = h5py.is_hdf5(p)
    except OSError as exc:
        raise HpcError(f"{p}: cannot read: {_one_line(exc)}") from None
    if not is_hdf5:
        raise HpcError(f"{p}: not an HDF5 file")
    kwargs: dict[str, Any] = {"locking": False}  # cluster file systems often lack POSIX locks
    if rdcc_nbytes:
        kwargs["rdcc_nbytes"] = int(rdcc_nbytes)
    try:
        return h5py.File(p, "r", **kwargs)
    except OSError as exc:
        raise HpcError(f"{p}: cannot open HDF5 file (truncated or corrupt?): "
                       f"{_one_line(exc)}") from None


def get_dataset(f: Any, name: str) -> Any:
    """The dataset `name` in open file `f`, or a HpcError listing the datasets there are."""
    import h5py

    try:
        obj = f.get(name)
    except (KeyError, OSError, ValueError) as exc:
        raise HpcError(f"{f.filename}: cannot read {name!r}: {_one_line(exc)}") from None
    if not isinstance(obj, h5py.Dataset):
        broken = _broken_link(f, name)
        if broken:
            raise HpcError(f"{f.filename}: {name!r} {broken}")
        names = dataset_names(f)
        raise HpcError(f"{f.filename}: no dataset {name!r} "
                       f"(datasets: {', '.join(names) if names else 'none'})")
    missing = missing_sources(obj)
    if missing:
        raise HpcError(f"{f.filename}: dataset {name!r} {missing[0]}"
                       + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
                       + ": its rows there would not be data (a virtual dataset reads fill values, zeros)")
    return obj


def _broken_link(f: Any, name: str) -> str | None:
    """Why `name` resolves to nothing when a link on its path points outside the file: the external
    link's file or object is missing (h5py then just says there is no such object)."""
    import h5py

    parts = [p for p in name.split("/") if p]
    for i in range(1, len(parts) + 1):
        path = "/".join(parts[:i])
        try:
            link = f.get(path, getlink=True)
        except (KeyError, OSError, ValueError):
            return None
        if isinstance(link, h5py.ExternalLink):
            target = _locate(link.filename, f.filename)
            if target is None:
                return f"is an external link to {link.filename}:{link.path}, and {link.filename} is missing"
            try:
                ok = f.get(path) is not None
            except (KeyError, OSError, ValueError):
                ok = False
            if not ok:
                return f"is an external link to {link.filename}:{link.path}, which does not hold {link.path}"
        elif link is None:
            return None
    return None


def _locate(file_name: str, relative_to: str) -> str | None:
    """Where HDF5 finds a file named by an external link or virtual source: as given (absolute or from
    the working directory), or next to the file that names it; None when it is nowhere."""
    if file_name in (".", ""):
        return relative_to
    for candidate in (file_name, os.path.join(os.path.dirname(os.path.abspath(relative_to)), file_name)):
        if os.path.exists(candidate):
            return candidate
    return None


def _holds_dataset(path: str, name: str, here: Any) -> bool:
    """Whether the HDF5 file at `path` (or the open file `here`, when it is that file) has dataset `name`."""
    import h5py

    try:
        if os.path.abspath(path) == os.path.abspath(here.filename):
            return isinstance(here.get(name), h5py.Dataset)
        with h5py.File(path, "r", locking=False) as f:
            return isinstance(f.get(name), h5py.Dataset)
    except (OSError, KeyError, ValueError):
        return False


def missing_sources(ds: Any) -> list[str]:
    """What a dataset stored outside its file lacks: each missing source file of a virtual dataset,
    each missing raw file of external storage (described in words; [] when nothing is missing)."""
    out: list[str] = []
    try:
        if ds.is_virtual:
            for src in ds.virtual_sources():
                where = _locate(src.file_name, ds.file.filename)
                if where is None:
                    out.append(f"is virtual and its source file {src.file_name} (dataset {src.dset_name}) is missing")
                elif not _holds_dataset(where, src.dset_name, ds.file):
                    out.append(f"is virtual and its source {src.file_name} holds no dataset {src.dset_name}")
        for raw, _offset, _size in ds.external or ():
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if _locate(name, ds.file.filename) is None:
                out.append(f"is stored in external raw file {name}, which is missing")
    except (OSError, RuntimeError, ValueError) as exc:
        out.append(f"has storage outside the file that cannot be checked ({_one_line(exc)})")
    return out


def dataset_names(f: Any) -> list[str]:
    """Paths of every dataset in an open file."""
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class ShardedLoader:
    """Batches `(x, y)` of this rank's rows of an HDF5 file, one epoch per iteration.

    mode/samples_per_rank/drop_last/wrap choose the shard (see `shard_range`); shuffle permutes
    the rank's read blocks and the rows inside each, global_shuffle first permutes the blocks of
    the whole file (the same way on every rank); prefetch is how many read blocks (each about
    block_bytes) a background thread keeps ready, 0 reads in the caller's thread; y=None reads
    features only (batches are then `(x, None)`).
    Call `set_epoch(e)` before each epoch (same e on every rank) for a new order. In strong mode
    without drop_last, ranks may differ by one batch: use `steps_per_epoch` (the minimum over
    ranks) when every rank must take the same number of steps.
    """

    def __init__(self, path: str | os.PathLike, rank: int, world: int, mode: str = "strong",
                 batch_size: int = 32, samples_per_rank: int | None = None, seed: int = 0,
                 shuffle: bool = True, global_shuffle: bool = False, drop_last: bool = False,
                 prefetch: int = 2, x: str = "x", y: str | None = "y", wrap: bool = False,
                 block_bytes: int = BLOCK_BYTES) -> None:
        _check_rank(rank, world)
        if mode not in MODES:
            raise HpcError(f"unknown scaling mode {mode!r} (use strong or weak)")
        if batch_size < 1:
            raise HpcError(f"batch size must be >= 1, got {batch_size}")
        if prefetch < 0:
            raise HpcError(f"prefetch must be >= 0, got {prefetch}")
        self.path, self.rank, self.world, self.mode = os.fspath(path), rank, world, mode
        self.batch_size, self.samples_per_rank, self.seed = batch_size, samples_per_rank, seed
        self.shuffle, self.global_shuffle, self.drop_last = shuffle, global_shuffle, drop_last
        self.prefetch, self.wrap, self.epoch = prefetch, wrap, 0
        self._file = open_h5(self.path)
        try:
            self._x = get_dataset(self._file, x)
            self._y = get_dataset(self._file, y) if y is not None else None
            self._check_shapes(x, y)
            n = self.n_total = int(self._x.shape[0])
            row_bytes = int(np.prod(self._x.shape[1:], dtype=np.int64)) * self._x.dtype.itemsize
            chunks = self._x.chunks
            self.block_rows = block_rows_for(row_bytes, chunks[0] if chunks else None, block_bytes)
            self._reopen_with_cache(x, y, chunks, row_bytes)
            try:
                self._ranges = shard_range(n, rank, world, mode, samples_per_rank, drop_last, wrap)
            except HpcError as exc:
                raise HpcError(f"{self.path}: {exc}") from None
        except BaseException:
            self.close()
            raise
        self.num_samples = sum(b - a for a, b in self._ranges)

    def _check_shapes(self, x: str, y: str | None) -> None:
        if self._x.ndim == 0:
            raise HpcError(f"{self.path}: dataset {x!r} is a scalar, not rows of samples")
        if self._y is not None:
            if self._y.ndim == 0:
                raise HpcError(f"{self.path}: dataset {y!r} is a scalar, not rows of labels")
            if self._y.shape[0] != self._x.shape[0]:
                raise HpcError(f"{self.path}: {x!r} has {self._x.shape[0]} rows but {y!r} has "
                               f"{self._y.shape[0]}")

    def _reopen_with_cache(self, x: str, y: str | None, chunks: tuple | None,
                           row_bytes: int) -> None:
        """Reopen with a chunk cache that holds a chunk of x and y when chunks exceed the default."""
        if not chunks:
            return
        need = chunks[0] * row_bytes
        if self._y is not None and self._y.chunks:
            need += int(np.prod(self._y.chunks, dtype=np.int64)) * self._y.dtype.itemsize
        if need <= (1 << 20):
            return
        self._file.close()
        self._file = open_h5(self.path, rdcc_nbytes=min(MAX_CHUNK_CACHE, 2 * need))
        self._x = get_dataset(self._file, x)
        self._y = get_dataset(self._file, y) if y is not None else None

    # -- sizes -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return self._batches_for(self.num_samples)

    def _batches_for(self, rows: int) -> int:
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """The fewest batches any rank yields per epoch (pure arithmetic, no communication)."""
        if self.mode == "weak":
            return len(self)
        return self._batches_for(self.n_total // self.world)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self._x.shape[1:])

    @property
    def x_dtype(self) -> np.dtype:
        return self._x.dtype

    @property
    def y_dtype(self) -> np.dtype | None:
        return self._y.dtype if self._y is not None else None

    def label_max(self, block: int = 1 << 20) -> int | None:
        """The largest label in the whole file (read in blocks), None without integer labels: what
        a file made elsewhere says about its number of classes when its attributes do not."""
        if self._y is None or self._y.dtype.kind not in "iu" or self._y.shape[0] == 0:
            return None
        return max(int(np.max(self._y[i:i + block])) for i in range(0, self._y.shape[0], block))

    @property
    def attrs(self) -> dict[str, Any]:
        """The file's attributes (how it was made: kind, classes, seed, ...), as plain values."""
        return {k: _plain(v) for k, v in self._file.attrs.items()}

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of the next epoch (call with the same value on every rank)."""
        self.epoch = int(epoch)

    def pieces(self) -> list[tuple[int, int]]:
        """The row pieces of the current epoch, in read order."""
        return epoch_pieces(self.n_total, self.rank, self.world, self.block_rows, self.mode,
                            self.samples_per_rank, self.drop_last, self.wrap, self.seed,
                            self.epoch, self.shuffle, self.global_shuffle)

    # -- reading ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        if self._file is None:
            raise HpcError(f"{self.path}: loader is closed")
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, _ROW_SALT])
        groups = self._groups(self.pieces(), rng)
        if self.prefetch:
            groups = _prefetched(groups, self.prefetch)
        return (batch for group in groups for batch in group)

    def _groups(self, pieces: list[tuple[int, int]],
                rng: np.random.Generator) -> Iterator[list[tuple[np.ndarray, np.ndarray | None]]]:
        """Read piece after piece, permute its rows, and yield the batches each one completes.

        Batches are views of one array per piece (only a batch that spans two pieces is copied
        together). Those arrays come from a pool that reuses an array only once nothing else
        references it, so a caller may keep a batch as long as it likes. Handing over all the
        batches of a piece at once keeps the prefetch thread's overhead per read, not per batch.
        """
        bsz, pool = self.batch_size, _Pool(self.prefetch + 4)
        dsets = [ds for ds in (self._x, self._y) if ds is not None]
        scratch = [np.empty((self.block_rows,) + ds.shape[1:], ds.dtype) if self.shuffle else None
                   for ds in dsets]
        carry: list[list[np.ndarray]] = []  # row runs (one array per dataset) of a started batch
        fill = 0
        for a, b in pieces:
            m, pos, group = b - a, 0, []
            perm = rng.permutation(m) if self.shuffle and m > 1 else None
            arrays = [self._load(ds, a, b, perm, buf, pool) for ds, buf in zip(dsets, scratch)]
            if fill:
                pos = min(bsz - fill, m)
                carry.append([arr[:pos] for arr in arrays])
                fill += pos
                if fill == bsz:
                    group.append(self._pair(_join(carry, pool)))
                    carry, fill = [], 0
            while m - pos >= bsz:
                group.append(self._pair([arr[pos:pos + bsz] for arr in arrays]))
                pos += bsz
            if pos < m:
                carry.append([arr[pos:] for arr in arrays])
                fill += m - pos
            if group:
                yield group
            del group, arrays  # let the pool see these arrays as free once the caller is done
        if fill and not self.drop_last:
            yield [self._pair(_join(carry, pool))]

    def _pair(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        return arrays[0], (arrays[1] if self._y is not None else None)

    def _load(self, ds: Any, start: int, stop: int, perm: np.ndarray | None,
              scratch: np.ndarray | None, pool: _Pool) -> np.ndarray:
        """Rows [start, stop) of `ds` in `perm` order, in a pooled array (one hyperslab read)."""
        out = pool.get((self.block_rows,) + ds.shape[1:], ds.dtype)[:stop - start]
        if perm is None:
            self._read(ds, start, stop, out)
        else:
            self._read(ds, start, stop, scratch[:stop - start])
            np.take(scratch[:stop - start], perm, axis=0, out=out, mode="clip")  # no buffering
        return out

    def _read(self, ds: Any, start: int, stop: int, out: np.ndarray) -> None:
        """One hyperslab read of rows [start, stop) into `out`."""
        try:
            ds.read_direct(out, np.s_[start:stop])
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise HpcError(f"{self.path}: failed to read rows {start}:{stop} of {ds.name!r} "
                           f"(corrupt file?): {_one_line(exc)}") from None

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __enter__(self) -> "ShardedLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _join(runs: list[list[np.ndarray]], pool: _Pool) -> list[np.ndarray]:
    """One batch (an array per dataset) from the row runs of consecutive pieces."""
    if len(runs) == 1:
        return runs[0]
    out = []
    for parts in zip(*runs):
        rows = sum(len(p) for p in parts)
        dest = pool.get((rows,) + parts[0].shape[1:], parts[0].dtype)
        out.append(np.concatenate(parts, out=dest))
    return out


class _Pool:
    """Arrays handed out again once nothing else references them (fresh pages cost page faults).

    Safe because every numpy view keeps its base array referenced: an array whose reference
    count is back to the pool's own is in no batch anyone holds. Used by one thread only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.arrays: dict[tuple, list[np.ndarray]] = {}
        probe = [np.empty(0)]
        self.idle = sys.getrefcount(probe[0])
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        self.enabled = gil and hasattr(sys, "getrefcount")  # refcounts are exact with a GIL

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if not self.enabled:
            return np.empty(shape, dtype)
        kept = self.arrays.setdefault((shape, np.dtype(dtype).str), [])
        for i in range(len(kept)):
            if sys.getrefcount(kept[i]) <= self.idle:
                return kept[i]
        arr = np.empty(shape, dtype)
        if len(kept) < self.limit:
            kept.append(arr)
        return arr


class _Raised:
    """Carries an exception from the prefetch thread to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def _prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Iterate `items` in a background thread, at most `depth` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(_Raised(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="hpc-loader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as a JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
