"""hpc: collective algorithms from scratch, gradient-sync baselines and scaling sweeps on MPI.

The public Python API (everything in `__all__`) is loaded lazily, so `python -m hpc` on every rank
imports only what its command needs.

    >>> import hpc
    >>> coll = hpc.load_collective("ring")             # or "my_pkg.mod:func", "file.py:func"
    >>> df = hpc.load_records("runs/s1")               # a .jsonl file or a whole sweep directory
    >>> [f.p for f in hpc.fit_path("runs/s1")]         # Amdahl / Gustafson per curve
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    "HpcError": ("hpc.errors", "HpcError"),
    # collectives
    "load_collective": ("hpc.plugins.registry", "load"),
    "list_collectives": ("hpc.plugins.registry", "available"),
    "verify_collective": ("hpc.plugins.verify", "verify"),
    # records
    "load_records": ("hpc.records", "frame"),
    "read_records": ("hpc.records", "load"),
    "append_records": ("hpc.records", "append"),
    # running
    "run_sweep": ("hpc.sweep", "run_sweep"),
    "BenchConfig": ("hpc.workloads.bench", "BenchConfig"),
    "TrainConfig": ("hpc.workloads.train_plan", "TrainConfig"),
    # analysis
    "amdahl_speedup": ("hpc.analysis.laws", "amdahl_speedup"),
    "gustafson_speedup": ("hpc.analysis.laws", "gustafson_speedup"),
    "fit_law": ("hpc.analysis.scaling", "fit_law"),
    "fit_records": ("hpc.analysis.scaling", "fit_records"),
    "fit_path": ("hpc.analysis.scaling", "fit_path"),
    "compare_records": ("hpc.analysis.compare", "compare_records"),
    "compare_baseline": ("hpc.analysis.compare", "compare_baseline"),
    "plot_path": ("hpc.analysis.plot", "plot_path"),
    "write_report": ("hpc.analysis.report", "write_report"),
    # data
    "make_dataset": ("hpc.data.make", "make_synthetic"),
    "ShardedLoader": ("hpc.data.loader", "ShardedLoader"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'hpc' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
