"""HPC_RECORD=path.jsonl: one `train` record per run of a hpc.torch script, so it can be swept.

Written at shutdown() (or interpreter exit) from the times at which DistributedOptimizer.step() ran:
a step's time is the interval between two steps, the slowest rank's (ranks move in lockstep), the
first interval is warm-up. hpc.torch does not know the batch size, so the figure is steps_per_s.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np


def check_writable(comm: Any) -> None:
    """At init: refuse an HPC_RECORD path rank 0 cannot write, on every rank with the same one line
    (at shutdown the record would be lost while the script exits 0)."""
    from hpc import records
    from hpc.env import get
    from hpc.errors import HpcError

    path = get("HPC_RECORD")
    if not path:
        return
    problem = None
    if comm.Get_rank() == 0:
        try:
            records.check_writable(path, "HPC_RECORD record")
        except HpcError as exc:
            problem = str(exc)
    problem = comm.bcast(problem, root=0)
    if problem:
        raise HpcError(f"HPC_RECORD={problem}")


def write_record(st: Any) -> None:
    """Gather every rank's step times (st: hpc.torch._basics._State) and append the record on rank 0
    (collective; a no-op without HPC_RECORD)."""
    from hpc import records
    from hpc.env import get

    path = get("HPC_RECORD")
    if not path:
        return
    comm = st.comm
    mine = np.diff(np.asarray(st.step_times, dtype=float))[1:]  # drop the first (warm-up) interval
    gathered = comm.gather(mine.tolist(), root=0)
    prov = records.provenance(comm, list(sys.argv))
    memory = _memory(st)  # collective
    if comm.Get_rank() != 0:
        return
    n = min(len(g) for g in gathered)
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    base = {"sync": f"hpc.torch:{st.coll.spec}", "model": script, "steps": len(st.step_times),
            "nodes": len(prov["hosts"]), "provenance": prov, **st.info, "memory": memory}
    if n == 0:
        rec = records.new("train", comm.Get_size(), **base, status="failed", time_s=None, times_s=[],
                          error="fewer than 3 optimizer steps: nothing to time")
    else:
        step = np.max(np.array([g[:n] for g in gathered], dtype=float), axis=0)
        time_s = float(np.median(step))
        rec = records.new("train", comm.Get_size(), **base, time_s=time_s, times_s=step.tolist(),
                          steps_per_s=1.0 / time_s if time_s > 0 else None, warmup=1,
                          timed_steps=int(n))
    records.append(path, [rec])


def _memory(st: Any) -> dict[str, Any] | None:
    """The `memory` block (hpc.workloads.memory): model states of the live DistributedOptimizers and
    their buckets, peak resident memory; collective, rank 0 gets it."""
    from hpc.workloads.memory import live_optimizers, torch_block

    return torch_block(st.comm, st.engines, live_optimizers("hpc.torch._optimizer._DistributedOptimizer"))
