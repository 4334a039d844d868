"""hpc.torch: the part of `horovod.torch` that training scripts use, on hpc's collectives.

A Horovod script runs unchanged after `import horovod.torch as hvd` becomes `import hpc.torch as hvd`,
under `mpirun -n N python script.py` or `srun`:

    hvd.init()                                   # or hvd.init(collective="ring"); env HPC_COLLECTIVE
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.fp16, backward_passes_per_step=1,
                                   op=hvd.Average)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    metric = hvd.allreduce(torch.tensor(loss), name="loss")

Gradients go through the bucketing + backward-overlap engine of `hpc train --sync SPEC`
(hpc.workloads.sync.own); the collective is any SPEC (a built-in name, package.module:func,
path/file.py:func, an entry point), verified against native MPI on first use unless built in.
`comm_hook(spec)` is a DistributedDataParallel communication hook over the same collectives.
HPC_RECORD=path.jsonl appends one `train` record (steps/s) per run at shutdown.
"""

from hpc.torch._basics import (Adasum, Average, Max, Min, NotInitializedError, Product, Sum,
                               collective_spec, cross_rank, cross_size, cuda_built, gloo_built,
                               gloo_enabled, init, is_initialized, local_rank, local_size, mpi_built,
                               mpi_enabled, mpi_threads_supported, nccl_built, rank, rocm_built,
                               shutdown, size)
from hpc.torch._functions import (allgather_object, broadcast_object, broadcast_optimizer_state,
                                  broadcast_parameters)
from hpc.torch._hook import comm_hook
from hpc.torch._ops import (allgather, allreduce, allreduce_, allreduce_async, allreduce_async_,
                            barrier, broadcast, broadcast_, broadcast_async_, join, poll, synchronize)
from hpc.torch._optimizer import DistributedOptimizer
from hpc.workloads.sync.compression import Compression, Compressor

__all__ = [
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size", "cross_rank",
    "cross_size", "allreduce", "allreduce_", "allreduce_async", "allreduce_async_", "synchronize",
    "poll", "broadcast", "broadcast_", "broadcast_async_", "allgather", "barrier", "join",
    "broadcast_parameters", "broadcast_optimizer_state", "broadcast_object", "allgather_object",
    "DistributedOptimizer", "Compression", "Compressor", "Average", "Sum", "Adasum", "Min", "Max",
    "Product", "comm_hook", "collective_spec", "NotInitializedError", "mpi_threads_supported",
    "mpi_built", "mpi_enabled", "gloo_built", "gloo_enabled", "nccl_built", "cuda_built", "rocm_built",
]
