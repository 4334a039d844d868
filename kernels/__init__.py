"""Allreduce algorithms written on mpi4py point-to-point calls, one module each.

Every algorithm is a plain function `allreduce(comm, sendbuf, recvbuf, op=MPI.SUM) -> None` with the
semantics of `comm.Allreduce`. Nothing is imported here, so `import hpc.kernels` stays cheap.
"""

# registered name -> ("module:function", one-line description)
BUILTINS: dict[str, tuple[str, str]] = {
    "mpi": ("hpc.kernels.mpi:allreduce", "native MPI_Allreduce (the baseline)"),
    "ring": ("hpc.kernels.ring:allreduce", "pipelined ring: reduce-scatter + allgather, bandwidth-optimal"),
    "recursive_doubling": ("hpc.kernels.recursive_doubling:allreduce",
                           "recursive doubling, log2(p) full exchanges; small messages"),
    "rabenseifner": ("hpc.kernels.rabenseifner:allreduce",
                     "recursive-halving reduce-scatter + recursive-doubling allgather; medium/large"),
    "tree": ("hpc.kernels.tree:allreduce", "binomial-tree reduce to rank 0 + binomial broadcast"),
    "ps": ("hpc.kernels.parameter_server:allreduce",
           "sharded parameter server: each rank reduces 1/p of the buffer and sends it back"),
    "auto": ("hpc.kernels.auto:allreduce", "picks recursive_doubling / rabenseifner / ring by size and p"),
    "shm": ("hpc.kernels.shm:allreduce",
            "one node: MPI-3 shared window, each rank reduces 1/p of it; no messages"),
    "hier": ("hpc.kernels.hier:allreduce",
             "shm reduce in each node, allreduce between nodes, shm copy-out (HPC_HIER_GROUP=shared|host)"),
}


def busbw_factor(p: int) -> float:
    """Allreduce bus-bandwidth factor 2(p−1)/p (nccl-tests): each rank sends and receives that
    many times the buffer in a bandwidth-optimal allreduce, so busbw is comparable across p."""
    return 2.0 * (p - 1) / p if p > 0 else 0.0


def busbw(nbytes: float, seconds: float, p: int) -> float:
    """Bus bandwidth in GB/s (1e9 B/s) of an allreduce of `nbytes` that took `seconds` on p ranks."""
    return nbytes / seconds / 1e9 * busbw_factor(p) if seconds > 0 else 0.0


def blocks(n: int, p: int) -> list[int]:
    """Offsets of p near-equal contiguous blocks of n items: block i is [off[i], off[i+1]) (the first
    n mod p blocks one item longer). Every partitioning kernel and the parameter servers use it."""
    q, r = divmod(n, p)
    return [i * q + min(i, r) for i in range(p + 1)]
