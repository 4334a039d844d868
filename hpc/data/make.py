"""Synthetic (or imported) HDF5 datasets that a model can learn (`hpc data make|inspect`).

Files are written in blocks (a file larger than memory is fine) into a temporary name and renamed
when complete, so a crash never leaves a half-written dataset under the final name. Data depends
only on the seed and the row index (generated in fixed units of rows), never on --chunk.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from hpc import signals
from hpc.errors import HpcError

if TYPE_CHECKING:
    import numpy as np

KINDS = ("tabular", "image", "tokens")
COMPRESSIONS = ("none", "gzip", "lzf")
DEFAULT_SHAPE = {"tabular": (64,), "image": (3, 32, 32), "tokens": (128,)}
DEFAULT_CLASSES = {"tabular": 10, "image": 10, "tokens": 256}
DEFAULT_SAMPLES = 10_000
CHUNK_BYTES = 1 << 20    # default chunk: about 1 MiB of x
WRITE_BYTES = 32 << 20   # rows written per h5py call: about 32 MiB of x
GEN_ROWS = 256           # rows per independently seeded generation unit
PROGRESS_BYTES = 32 << 20
_KIND_TAG = {"tabular": 1, "image": 2, "tokens": 3}


# -- synthetic data -----------------------------------------------------------------------------
def parse_shape(text: str | tuple[int, ...] | list[int] | None, kind: str) -> tuple[int, ...]:
    """'64' / '3x32x32' / '32x32' (one channel) -> a row shape that fits `kind`."""
    if text is None:
        return DEFAULT_SHAPE[kind]
    if isinstance(text, str):
        try:
            dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
        except ValueError:
            raise HpcError(f"bad --shape {text!r}: expected numbers joined by 'x', "
                           "e.g. 64 or 3x32x32") from None
    else:
        dims = tuple(int(d) for d in text)
    if not dims or any(d < 1 for d in dims):
        raise HpcError(f"bad --shape {text!r}: every dimension must be >= 1")
    if kind == "image":
        if len(dims) == 2:
            dims = (1, *dims)
        if len(dims) != 3:
            raise HpcError(f"bad --shape {text!r} for image: expected CxHxW, e.g. 3x32x32")
    elif len(dims) != 1:
        what = "number of features" if kind == "tabular" else "sequence length"
        raise HpcError(f"bad --shape {text!r} for {kind}: expected one number, the {what}")
    return dims


def make_synthetic(path: str | os.PathLike, kind: str = "tabular", samples: int | None = None,
                   shape: str | tuple[int, ...] | None = None, classes: int | None = None,
                   seed: int = 0, chunk: int | None = None, compression: str = "none",
                   force: bool = False, command: str | None = None, progress: bool | None = None,
                   x_name: str = "x", y_name: str = "y") -> dict[str, Any]:
    """Write a learnable synthetic dataset; return a summary (path, kind, datasets, size, time)."""
    import numpy as np

    if kind not in KINDS:
        raise HpcError(f"unknown kind {kind!r} (use {', '.join(KINDS)})")
    samples = DEFAULT_SAMPLES if samples is None else samples
    if samples < 1:
        raise HpcError(f"--samples must be >= 1, got {samples}")
    dims = parse_shape(shape, kind)
    classes = DEFAULT_CLASSES[kind] if classes is None else classes
    if classes < 2:
        raise HpcError(f"--classes must be >= 2, got {classes}")
    gen = _generator(kind, dims, classes, seed)
    x_dtype = np.int64 if kind == "tokens" else np.float32
    y_row = dims if kind == "tokens" else ()
    layout = {x_name: (dims, x_dtype), y_name: (y_row, np.int64)}
    attrs = {"kind": kind, "samples": samples, "shape": list(dims), "classes": classes,
             "seed": seed}
    return _write(path, samples, layout, _RowStream(gen, seed, _KIND_TAG[kind], samples).take,
                  attrs, chunk, compression, force, command, progress, kind)


def _generator(kind: str, dims: tuple[int, ...], classes: int,
               seed: int) -> Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]:
    """A function (rng, rows) -> (x, y) for `kind`; the teacher comes from the seed alone."""
    import numpy as np

    teacher = np.random.default_rng([seed, _KIND_TAG[kind], 0x7EAC])
    if kind == "tabular":
        return _tabular(teacher, dims[0], classes)
    if kind == "image":
        return _image(teacher, dims, classes)
    return _tokens(teacher, dims[0], classes)


def _tabular(teacher: np.random.Generator, features: int, classes: int) -> Callable:
    """x ~ N(0, 1); y = argmax of a fixed random 2-layer tanh net, biased to balance classes."""
    import numpy as np

    hidden = 32
    w1 = (teacher.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (teacher.standard_normal((hidden, classes)) * 3 / np.sqrt(hidden)).astype(np.float32)
    logits = np.tanh(teacher.standard_normal((8192, features), dtype=np.float32) @ w1) @ w2
    bias = np.zeros(classes, np.float32)
    for _ in range(100):  # nudge the bias until every class is about equally frequent
        freq = np.bincount(np.argmax(logits + bias, axis=1), minlength=classes) / len(logits)
        bias -= 0.3 * np.log((freq + 0.5 / len(logits)) * classes).astype(np.float32)

    def gen(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((rows, features), dtype=np.float32)
        y = np.argmax(np.tanh(x @ w1) @ w2 + bias, axis=1).astype(np.int64)
        return x, y

    return gen


def _image(teacher: np.random.Generator, dims: tuple[int, ...], classes: int) -> Callable:
    """x = a class template (smooth random pattern), shifted by up to 2 pixels, plus noise."""
    import numpy as np

    c, h, w = dims
    gh, gw = max(2, -(-h // 4)), max(2, -(-w // 4))
    coarse = teacher.standard_normal((classes, c, gh, gw))
    templates = coarse.repeat(-(-h // gh), axis=2).repeat(-(-w // gw), axis=3)[:, :, :h, :w]
    templates -= templates.mean(axis=(1, 2, 3), keepdims=True)
    templates /= templates.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    templates = (0.3 * templates).astype(np.float32)
    ci = np.arange(c)[None, :, None, None]

    def gen(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, rows)
        dy, dx = rng.integers(-2, 3, (2, rows))
        hi = (np.arange(h)[None, :] - dy[:, None]) % h
        wi = (np.arange(w)[None, :] - dx[:, None]) % w
        x = templates[y[:, None, None, None], ci, hi[:, None, :, None], wi[:, None, None, :]]
        x += rng.standard_normal(x.shape, dtype=np.float32)
        return x, y.astype(np.int64)

    return gen


def _tokens(teacher: np.random.Generator, length: int, vocab: int) -> Callable:
    """Markov chain: each token has 4 likely successors (fixed by the seed), 5% uniform noise."""
    import numpy as np

    successors = teacher.integers(0, vocab, (vocab, 4))
    cum = np.cumsum([0.55, 0.25, 0.12, 0.08])

    def gen(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
        seq = np.empty((rows, length + 1), np.int64)
        seq[:, 0] = rng.integers(0, vocab, rows)
        pick = np.minimum(np.searchsorted(cum, rng.random((rows, length))), 3)
        noise = rng.random((rows, length)) < 0.05
        uniform = rng.integers(0, vocab, (rows, length))
        for t in range(length):
            nxt = successors[seq[:, t], pick[:, t]]
            seq[:, t + 1] = np.where(noise[:, t], uniform[:, t], nxt)
        return seq[:, :-1].copy(), seq[:, 1:].copy()

    return gen


class _RowStream:
    """Rows handed out in order, generated in units of GEN_ROWS rows each seeded by its index."""

    def __init__(self, gen: Callable, seed: int, tag: int, total: int) -> None:
        self.gen, self.seed, self.tag, self.total = gen, seed, tag, total
        self.unit, self.left = 0, None  # next unit to generate; unused rows of the last one

    def take(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        import numpy as np

        parts, need = [], stop - start
        while need:
            if self.left is None or len(self.left[0]) == 0:
                rows = min(GEN_ROWS, self.total - self.unit * GEN_ROWS)
                rng = np.random.default_rng([self.seed, self.tag, self.unit])
                self.left, self.unit = self.gen(rng, rows), self.unit + 1
            got = min(need, len(self.left[0]))
            parts.append(tuple(a[:got] for a in self.left))
            self.left = tuple(a[got:] for a in self.left)
            need -= got
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(cols) for cols in zip(*parts))


# -- import -------------------------------------------------------------------------------------
def import_npy(path: str | os.PathLike, x_npy: str | os.PathLike,
               y_npy: str | os.PathLike | None = None, samples: int | None = None,
               chunk: int | None = None, compression: str = "none", force: bool = False,
               command: str | None = None, progress: bool | None = None, x_name: str = "x",
               y_name: str = "y") -> dict[str, Any]:
    """Copy .npy arrays (memory-mapped, block by block) into the same layout as `make`."""
    import numpy as np

    x = _load_npy(x_npy, "--from-npy")
    y = _load_npy(y_npy, "--labels") if y_npy is not None else None
    if y is not None and len(y) != len(x):
        raise HpcError(f"{x_npy} has {len(x)} rows but {y_npy} has {len(y)}")
    n = len(x) if samples is None else samples
    if not 1 <= n <= len(x):
        raise HpcError(f"--samples must be between 1 and {len(x)} (rows in {x_npy}), got {n}")
    layout = {x_name: (x.shape[1:], x.dtype)}
    if y is not None:
        layout[y_name] = (y.shape[1:], y.dtype)
    label_max = [-1]

    def take(start: int, stop: int) -> tuple[np.ndarray, ...]:
        if y is None:
            return (np.asarray(x[start:stop]),)
        yb = np.asarray(y[start:stop])
        if yb.dtype.kind in "iu" and yb.size:
            label_max[0] = max(label_max[0], int(yb.max()))
        return np.asarray(x[start:stop]), yb

    attrs: dict[str, Any] = {"kind": "npy", "samples": n, "shape": list(x.shape[1:]),
                             "source_x": os.path.abspath(x_npy)}
    if y_npy is not None:
        attrs["source_y"] = os.path.abspath(y_npy)
    late = lambda: {"classes": label_max[0] + 1} if label_max[0] >= 0 else {}
    return _write(path, n, layout, take, attrs, chunk, compression, force, command, progress,
                  "npy", late_attrs=late)


def _load_npy(path: str | os.PathLike, flag: str) -> np.ndarray:
    """A memory-mapped .npy array with at least one dimension, or a one-line HpcError."""
    import numpy as np

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise HpcError(f"{flag} {p}: no such file")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise HpcError(f"{flag} {p}: not a readable .npy array: {' '.join(str(exc).split())}") \
            from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise HpcError(f"{flag} {p}: expected one .npy array, not an archive")
    if arr.ndim == 0:
        raise HpcError(f"{flag} {p}: a scalar, not rows of samples")
    if arr.dtype.hasobject:
        raise HpcError(f"{flag} {p}: object arrays cannot be stored")
    return arr


# -- writing ------------------------------------------------------------------------------------
def _write(path: str | os.PathLike, n: int, layout: dict[str, tuple[tuple[int, ...], Any]],
           take: Callable[[int, int], tuple], attrs: dict[str, Any], chunk: int | None,
           compression: str, force: bool, command: str | None, progress: bool | None,
           kind: str, late_attrs: Callable[[], dict] | None = None) -> dict[str, Any]:
    """Create the datasets in a temporary file, fill them block by block, rename into place."""
    import h5py
    import numpy as np

    from hpc import __version__

    path = os.fspath(path)
    _check_target(path, force)
    if compression not in COMPRESSIONS:
        raise HpcError(f"unknown compression {compression!r} (use {', '.join(COMPRESSIONS)})")
    if len(set(layout)) != len(layout) or "" in layout:
        raise HpcError("dataset names must be distinct and non-empty")
    row_bytes = max(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
                    for s, d in layout.values()) or 1
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // row_bytes)
    if chunk < 1:
        raise HpcError(f"--chunk must be >= 1, got {chunk}")
    chunk = min(chunk, n)
    write_rows = chunk * max(1, WRITE_BYTES // (chunk * row_bytes))
    total_bytes = n * sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
                          for s, d in layout.values())
    filters: dict[str, Any] = {}
    if compression != "none":
        filters = {"compression": compression, "shuffle": True}
        if compression == "gzip":
            filters["compression_opts"] = 4
    _check_space(path, total_bytes, compression)
    remove_stale_temps(path)
    tmp = _temp_name(path, os.getpid())
    t0 = time.perf_counter()
    try:
        with h5py.File(tmp, "w") as f, _progress_bar(total_bytes, progress, path) as advance:
            dsets = [f.create_dataset(name, shape=(n, *shape), dtype=dtype,
                                      chunks=(chunk, *shape), **filters)
                     for name, (shape, dtype) in layout.items()]
            for start in range(0, n, write_rows):
                stop = min(n, start + write_rows)
                for ds, block in zip(dsets, take(start, stop)):
                    ds[start:stop] = block
                advance(total_bytes * (stop - start) // n)
                signals.check()  # a SIGTERM whose KeyboardInterrupt a finaliser swallowed
            f.attrs.update(attrs)
            f.attrs.update(late_attrs() if late_attrs else {})
            f.attrs.update({"hpc_version": __version__,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": command or "hpc.data (python API)"})
        signals.check()  # never commit a file after SIGTERM, even one that looks complete
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # h5py reports some I/O failures as RuntimeError
        raise HpcError(f"{path}: cannot write: {' '.join(str(exc).split())}") from None
    finally:  # also on Ctrl-C / SIGTERM (the CLI turns SIGTERM into KeyboardInterrupt)
        if os.path.exists(tmp):
            os.unlink(tmp)
    seconds = time.perf_counter() - t0
    datasets = {name: {"shape": [n, *shape], "dtype": str(np.dtype(dtype))}
                for name, (shape, dtype) in layout.items()}
    return {"path": path, "kind": kind, "datasets": datasets,
            "size_bytes": os.path.getsize(path), "seconds": seconds}


def _temp_name(path: str, pid: int) -> str:
    """The hidden file `path` is written into by process `pid` before it is renamed into place."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{pid}")


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temp files of earlier writes of `path` whose writer is gone (killed with SIGKILL,
    or the machine went down: nothing could clean up then); a live writer's file is left alone."""
    import glob

    prefix = _temp_name(path, 0)[:-1]
    removed = []
    for tmp in glob.glob(glob.escape(prefix) + "*"):
        pid = tmp[len(prefix):]
        if not pid.isdigit() or _writer_alive(int(pid)):
            continue
        try:
            os.unlink(tmp)
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _writer_alive(pid: int) -> bool:
    """Whether process `pid` is still an hpc writer (not a dead one, nor a reused pid)."""
    if pid == os.getpid():
        return False
    if not os.path.isdir("/proc/self"):  # no procfs: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"hpc" in f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell (another user's process?): leave its file alone


# Room left free after writing: a dataset that fills the disk takes the machine's other writers
# (records, logs) down with it.
RESERVE_BYTES = 256 << 20


def _check_space(path: str, total_bytes: int, compression: str) -> None:
    """Refuse a file that cannot fit (uncompressed size; compression only ever helps) before writing."""
    import shutil

    parent = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(parent).free
    if compression == "none" and total_bytes + RESERVE_BYTES > free:
        raise HpcError(f"{path}: needs {human_bytes(total_bytes)} but {parent} has {human_bytes(free)} "
                       f"free (keeping {human_bytes(RESERVE_BYTES)} spare): fewer --samples or another disk")


def _check_target(path: str, force: bool) -> None:
    if os.path.isdir(path):
        raise HpcError(f"{path}: is a directory")
    if os.path.exists(path) and not force:
        raise HpcError(f"{path} exists (use --force to overwrite)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise HpcError(f"{path}: directory {parent} does not exist")


@contextlib.contextmanager
def _progress_bar(total_bytes: int, show: bool | None, path: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; by default only for large files on a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if show is None:
        show = total_bytes >= PROGRESS_BYTES and console.is_terminal
    if not show:
        yield lambda _n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn,
                               TextColumn, TimeRemainingColumn, TransferSpeedColumn)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"writing {os.path.basename(path)}", total=total_bytes)
        yield lambda nbytes: bar.advance(task, nbytes)


# -- inspect ------------------------------------------------------------------------------------
def inspect_file(path: str | os.PathLike) -> dict[str, Any]:
    """Datasets (shape, dtype, chunks, compression, bytes stored), attributes and file size."""
    from hpc.data.loader import _plain, dataset_names, missing_sources, open_h5

    path = os.fspath(path)
    with open_h5(path) as f:
        try:
            datasets = []
            for name in dataset_names(f):
                ds = f[name]
                datasets.append({
                    "name": name, "shape": list(ds.shape), "dtype": str(ds.dtype),
                    "chunks": list(ds.chunks) if ds.chunks else None,
                    "compression": ds.compression, "compression_opts": _plain(ds.compression_opts),
                    "shuffle": bool(ds.shuffle), "storage_bytes": int(ds.id.get_storage_size()),
                    "nbytes": int(ds.size * ds.dtype.itemsize),
                    "attrs": {k: _plain(v) for k, v in ds.attrs.items()},
                    "missing": missing_sources(ds),
                })
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
        except (OSError, RuntimeError, KeyError) as exc:
            raise HpcError(f"{path}: cannot read (corrupt file?): {' '.join(str(exc).split())}") \
                from None
    return {"path": path, "size_bytes": os.path.getsize(path), "datasets": datasets,
            "attrs": attrs}


def plan_shards(path: str | os.PathLike, world: int, mode: str = "strong", batch_size: int = 32,
                samples_per_rank: int | None = None, drop_last: bool = False, wrap: bool = False,
                x: str = "x", y: str | None = "y") -> list[dict[str, Any]]:
    """Rows and batches per rank for `world` ranks, after the checks a ShardedLoader makes."""
    from hpc.data.loader import ShardedLoader, shard_range

    with ShardedLoader(path, 0, world, mode, batch_size, samples_per_rank, drop_last=drop_last,
                       prefetch=0, x=x, y=y, wrap=wrap) as loader:
        n = loader.n_total
    plan = []
    for rank in range(world):
        ranges = shard_range(n, rank, world, mode, samples_per_rank, drop_last, wrap)
        rows = sum(b - a for a, b in ranges)
        batches = rows // batch_size if drop_last else -(-rows // batch_size)
        plan.append({"rank": rank, "samples": rows, "batches": batches,
                     "ranges": [list(r) for r in ranges]})
    return plan


def print_inspection(info: dict[str, Any]) -> None:
    """Render `inspect_file`'s result as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))  # logs and pipes: no needless wrapping
    table = Table(title=f"{info['path']}  ({human_bytes(info['size_bytes'])} on disk)",
                  title_justify="left")
    for col in ("dataset", "shape", "dtype", "chunks", "compression", "stored", "ratio"):
        table.add_column(col, justify="right" if col in ("stored", "ratio") else "left")
    for d in info["datasets"]:
        comp = d["compression"] or "none"
        if d["compression_opts"] is not None:
            comp += f" ({d['compression_opts']})"
        if d["shuffle"]:
            comp += " +shuffle"
        ratio = f"{d['nbytes'] / d['storage_bytes']:.2f}" if d["storage_bytes"] else "-"
        table.add_row(d["name"], "x".join(map(str, d["shape"])) or "scalar", d["dtype"],
                      "x".join(map(str, d["chunks"])) if d["chunks"] else "contiguous", comp,
                      human_bytes(d["storage_bytes"]), ratio)
    console.print(table)
    for d in info["datasets"]:
        for why in d.get("missing") or ():
            console.print(f"[bold red]warning:[/] dataset {d['name']!r} {why}: its rows there are not "
                          "data (hpc train refuses it)", soft_wrap=True, markup=True)
    if info["attrs"]:
        attrs = Table(title="attributes", title_justify="left", show_header=False)
        attrs.add_column("key", style="bold")
        attrs.add_column("value", overflow="fold")
        for key, value in info["attrs"].items():
            attrs.add_row(key, str(value))
        console.print(attrs)
    shards = info.get("shards")
    if shards:
        plan = Table(title=f"shards over {len(shards)} ranks", title_justify="left")
        for col in ("rank", "samples", "batches", "rows"):
            plan.add_column(col, justify="left" if col == "rows" else "right")
        shown = shards if len(shards) <= 16 else shards[:8] + [None] + shards[-8:]
        for s in shown:
            if s is None:
                plan.add_row("...", "", "", "")
                continue
            rows = ", ".join(f"{a}:{b}" for a, b in s["ranges"])
            plan.add_row(str(s["rank"]), str(s["samples"]), str(s["batches"]), rows)
        console.print(plan)


def human_bytes(n: float) -> str:
    """Bytes in binary units (KiB = 1024 B), as everywhere in hpc."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
