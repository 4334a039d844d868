"""What a rank holds, counted (every tensor storage once, by category), its peak resident memory, and
what the ZeRO accounting expects it to hold: the parts of hpc.workloads.memory a sync scheme calls."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

CATEGORIES = ("params", "grads", "optimizer", "buffers")


# -- counting ---------------------------------------------------------------------------------------

def storage(x: Any) -> tuple[tuple, int] | None:
    """(key, bytes) of the memory block a torch tensor or numpy array lives in; None for empty/meta."""
    if isinstance(x, np.ndarray):
        root = x
        while isinstance(root.base, np.ndarray):
            root = root.base
        ptr = root.__array_interface__["data"][0]
        return (("host", ptr), int(root.nbytes)) if root.nbytes else None
    try:
        st = x.untyped_storage()
    except (AttributeError, RuntimeError, NotImplementedError):  # not a tensor, sparse, ...
        return None
    ptr = st.data_ptr()
    if not ptr or x.device.type == "meta":
        return None
    return ((x.device.type, x.device.index, ptr), int(st.nbytes()))


def count_bytes(groups: Mapping[str, Iterable[Any]]) -> dict[str, int]:
    """Bytes per category, every storage counted once, in CATEGORIES order (a gradient that is a view
    into a parameter's storage is not counted again). Plain ints are bytes held where Python cannot
    see them (Horovod's C++ fusion buffer) and are added as given."""
    seen: set[tuple] = set()
    out = {c: 0 for c in CATEGORIES}
    for cat in CATEGORIES:
        for x in groups.get(cat, ()):
            if x is None:
                continue
            if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
                out[cat] += int(x)
                continue
            found = storage(x)
            if found is not None and found[0] not in seen:
                seen.add(found[0])
                out[cat] += found[1]
    return out


def optimizer_tensors(opt: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(its parameters, their gradients, its state tensors) of a torch optimizer (empty for None)."""
    if opt is None:
        return [], [], []
    params = [p for g in getattr(opt, "param_groups", []) for p in g["params"]]
    state = [v for st in getattr(opt, "state", {}).values() for v in (st.values() if isinstance(st, dict) else ())]
    return params, [p.grad for p in params], state


def module_tensors(model: "torch.nn.Module", opt: Any = None) -> dict[str, list[Any]]:
    """What plain data parallelism keeps: the model's parameters and gradients, the optimizer's
    parameters (its own copies, when it has any) and state."""
    params = list(model.parameters())
    o_params, o_grads, o_state = optimizer_tensors(opt)
    return {"params": params, "grads": [p.grad for p in params] + o_grads,
            "optimizer": o_params + o_state, "buffers": []}


def tensors_in(obj: Any, owner: str = "", depth: int = 4, limit: int = 200_000) -> list[tuple[str, Any]]:
    """(attribute path, tensor) of every tensor reachable from `obj` through attributes, lists, tuples
    and dicts, entering objects only of `owner`'s package (e.g. DeepSpeed's) and never a Module or
    an Optimizer (those are counted on their own). For engines that keep their buffers internally."""
    import torch

    owner = owner or type(obj).__module__.split(".")[0]
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    while stack and len(seen) < limit:
        path, x, d = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            out.append((path, x))
            if x.grad is not None:
                out.append((path + ".grad", x.grad))
            continue
        if d >= depth or isinstance(x, (torch.nn.Module, torch.optim.Optimizer, str, bytes, int, float)):
            continue
        if isinstance(x, dict):
            stack += [(f"{path}[{str(k)[:40]}]", v, d + 1) for k, v in x.items()]
        elif isinstance(x, (list, tuple, set)):
            stack += [(f"{path}[{i}]", v, d + 1) for i, v in enumerate(x)]
        elif type(x).__module__.split(".")[0] == owner and hasattr(x, "__dict__"):
            stack += [(f"{path}.{k}", v, d + 1) for k, v in vars(x).items()]
    return out


def split_buckets(groups: dict[str, list[Any]], buckets: Mapping[tuple, int]) -> dict[str, list[Any]]:
    """A reduce bucket (storage key -> bytes) is a buffer of fixed size whatever the model; the gradients
    waiting in it as views are gradients. So each view counts its own bytes as gradients and the rest of
    the bucket counts as buffers, instead of the whole bucket landing in one category."""
    if not buckets:
        return groups
    views: dict[int, int] = {}  # data pointer -> bytes of the distinct gradient views into a bucket
    for kind in ("params", "grads", "optimizer"):
        kept = []
        for t in groups.get(kind, []):
            found = storage(t) if t is not None and not isinstance(t, (int, np.integer)) else None
            if found is None or found[0] not in buckets:
                kept.append(t)
            elif kind == "grads":
                ptr, size = ((t.__array_interface__["data"][0], t.nbytes) if isinstance(t, np.ndarray)
                             else (t.data_ptr(), t.numel() * t.element_size()))
                views[ptr] = size
        groups[kind] = kept
    in_use = min(sum(views.values()), sum(buckets.values()))
    groups["grads"].append(in_use)
    groups["buffers"] = [t for t in groups.get("buffers", []) if t is None or isinstance(t, (int, np.integer))
                         or (storage(t) or (None,))[0] not in buckets] + [sum(buckets.values()) - in_use]
    return groups


# -- peak resident and device memory ---------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0: "5" to /proc/self/clear_refs).
    Memory freed before (set-up, ZeRO-3's full model before partitioning) is handed back to the
    kernel first (glibc malloc_trim), else it stays resident and the peak starts above what is held."""
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """glibc's malloc_trim(0): return free heap pages to the kernel (no-op elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_bytes() -> int:
    """Peak resident set since the last reset: VmHWM, else getrusage's ru_maxrss (Linux: KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_mark() -> int:
    """The same high-water mark as peak_rss_bytes, through getrusage (0.5 µs against 13 µs for
    /proc/self/status): cheap enough to read inside a timed step. On Linux ru_maxrss is the mm's
    hiwater_rss (KiB), which /proc/self/clear_refs resets like VmHWM; marks compare only with marks."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# -- the expected accounting ------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The share of the whole model's states one rank holds (1 = all, 1/N = a partition), for the
    expected accounting; `master`: an fp32 master copy of the parameters (DeepSpeed keeps one in its
    optimizer). `estimate`: the library's own estimate of model-state bytes per rank, when it has one."""

    params: float = 1.0
    grads: float = 1.0
    optimizer: float = 1.0
    master: float = 0.0
    scheme: str = "replicated (every rank holds all parameters, gradients and optimizer state)"
    note: str = ""
    estimate: dict[str, Any] | None = None


def zero_layout(stage: int, n: int, estimate: dict[str, Any] | None = None) -> Layout:
    """ZeRO stage 1/2/3 over n data ranks: 1 shards optimizer state (and DeepSpeed's fp32 master
    copy), 2 also gradients, 3 also parameters."""
    part = 1.0 / max(1, n)
    shares = {1: (1.0, 1.0), 2: (1.0, part), 3: (part, part)}[stage]
    what = {1: "optimizer state", 2: "optimizer state and gradients", 3: "parameters, gradients and "
            "optimizer state"}[stage]
    return Layout(params=shares[0], grads=shares[1], optimizer=part, master=part,
                  scheme=f"ZeRO-{stage} ({what} partitioned over {n} ranks; fp32 master copy partitioned)",
                  estimate=estimate)


def optimizer_values_per_param(name: str, momentum: float = 0.0, amsgrad: bool = False) -> float | None:
    """State values an optimizer keeps per parameter: Adam/AdamW 2 (3 with amsgrad), SGD 1 with
    momentum else 0, RMSprop 1, Adagrad 1; None when not known (no expectation then)."""
    key = name.lower().replace("_", "")
    if key in ("adam", "adamw"):
        return 3.0 if amsgrad else 2.0
    if key == "sgd":
        return 1.0 if momentum else 0.0
    if key in ("rmsprop", "adagrad"):
        return 1.0
    return None


def expected_bytes(n_params: int, layout: Layout, values_per_param: float | None,
                   itemsize: int = 4) -> dict[str, int] | None:
    """Model-state bytes the accounting expects on one rank (params, grads, optimizer, total)."""
    if values_per_param is None:
        return None
    psi = float(n_params) * itemsize
    out = {"params_bytes": psi * layout.params, "grads_bytes": psi * layout.grads,
           "optimizer_bytes": psi * (values_per_param * layout.optimizer + layout.master)}
    out["model_states_bytes"] = sum(out.values())
    return {k: int(round(v)) for k, v in out.items()}
