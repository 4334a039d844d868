"""hpc.torch: `horovod.torch`'s API on hpc's collectives.

A Horovod script runs unchanged after `import horovod.torch as hvd` becomes `import hpc.torch as hvd`,
under `mpirun -n N python script.py` or `srun`:

    hvd.init()                                   # or hvd.init(collective="ring"); env HPC_COLLECTIVE
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.fp16, backward_passes_per_step=1,
                                   op=hvd.Average)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    metric = hvd.allreduce(torch.tensor(loss), name="loss")

Named collectives (allreduce, allgather, broadcast, alltoall, reducescatter, their grouped and
*_async forms, join, barrier) are negotiated across ranks like Horovod's coordinator does it and run
on a background thread (_negotiate, _runtime, _exec); process sets restrict them to a subset of the
ranks. Gradients go through the bucketing + backward-overlap engine of `hpc train --sync SPEC`
(hpc.workloads.sync.own). The allreduce is any SPEC (a built-in name, package.module:func,
path/file.py:func, an entry point), verified against native MPI before first use unless built in.
`comm_hook(spec)` is a DistributedDataParallel communication hook over the same collectives.
HPC_RECORD=path.jsonl appends one `train` record (steps/s) per run at shutdown.
"""

from hpc.torch._autograd import (allgather, allreduce, alltoall, broadcast, grouped_allgather,
                                 grouped_allreduce, grouped_reducescatter, reducescatter)
from hpc.torch._basics import (Adasum, Average, Max, Min, Product, Sum, ccl_built, collective_spec,
                               cross_rank, cross_size, cuda_built, ddl_built, gloo_built, gloo_enabled,
                               is_homogeneous, is_initialized, local_rank, local_size, mpi_built,
                               mpi_enabled, mpi_threads_supported, nccl_built, rank, rocm_built, size,
                               start_timeline, stop_timeline)
from hpc.torch._errors import HorovodInternalError, NotInitializedError
from hpc.torch._functions import (allgather_object, broadcast_object, broadcast_optimizer_state,
                                  broadcast_parameters)
from hpc.torch._hook import comm_hook
from hpc.torch._ops import (allgather_async, allreduce_, allreduce_async, allreduce_async_, alltoall_async,
                            barrier, broadcast_, broadcast_async, broadcast_async_, grouped_allgather_async,
                            grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_,
                            grouped_reducescatter_async, join, poll, reducescatter_async,
                            sparse_allreduce_async, synchronize)
from hpc.torch._optimizer import DistributedOptimizer
from hpc.torch._process_sets import ProcessSet, add_process_set, global_process_set, remove_process_set
from hpc.torch._session import init, shutdown
from hpc.workloads.sync.compression import Compression, Compressor


def __getattr__(name: str):
    if name == "SyncBatchNorm":  # imports torch.nn: only when asked for
        from hpc.torch._sync_bn import SyncBatchNorm

        return SyncBatchNorm
    raise AttributeError(f"module 'hpc.torch' has no attribute '{name}'")


__all__ = [
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size", "cross_rank",
    "cross_size", "is_homogeneous", "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "sparse_allreduce_async", "allgather", "allgather_async", "grouped_allgather", "grouped_allgather_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "alltoall", "alltoall_async",
    "reducescatter", "reducescatter_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "synchronize", "poll", "join", "barrier", "broadcast_parameters", "broadcast_optimizer_state",
    "broadcast_object", "allgather_object", "DistributedOptimizer", "Compression", "Compressor", "Average",
    "Sum", "Adasum", "Min", "Max", "Product", "ProcessSet", "global_process_set", "add_process_set",
    "remove_process_set", "HorovodInternalError", "NotInitializedError", "comm_hook", "collective_spec",
    "mpi_threads_supported", "mpi_built", "mpi_enabled", "gloo_built", "gloo_enabled", "nccl_built",
    "ddl_built", "ccl_built", "cuda_built", "rocm_built", "start_timeline", "stop_timeline", "SyncBatchNorm",
]
