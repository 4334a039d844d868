"""Where torch.distributed (DDP, DeepSpeed) meets: an address of rank 0 that every rank can reach.

A host name is not enough: on clusters whose node names only the controller knows (the local Slurm
test cluster's c1..c3, sites without DNS for compute nodes) torch's TCPStore retried "c1: Name or
service not known" for its whole 10-minute timeout. So rank 0 offers the addresses it has, listens on
a port, and every rank tries each one; the first that every rank reached is used, or the job ends at
once with one line listing what was tried.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from hpc.errors import HpcError

if TYPE_CHECKING:
    from mpi4py import MPI

LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT_S = 3.0  # a reachable address answers a connect within milliseconds, even across racks


def candidate_addresses() -> list[str]:
    """This host's IPv4 addresses, the one its name resolves to first, loopback last (on another node
    loopback reaches that node, not this one, so it is tried only when nothing else is)."""
    found: list[str] = []
    try:
        found.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            found += [a.address for a in addrs if a.family == socket.AF_INET]
    except Exception:  # psutil missing or the interfaces unreadable: the name (if any) and loopback
        pass
    usable = [a for a in dict.fromkeys(found) if not ipaddress.ip_address(a).is_loopback]
    return usable + [LOOPBACK]


def reachable(addr: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connect to addr:port succeeds."""
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def master_address(comm: "MPI.Comm") -> str:
    """An address of rank 0 every rank reaches (127.0.0.1 when all ranks share one host)."""
    hosts = comm.allgather(socket.gethostname())
    if len(set(hosts)) == 1:
        return LOOPBACK
    listener = None
    if comm.Get_rank() == 0:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("0.0.0.0", 0))
        listener.listen(max(128, comm.Get_size()))  # connects complete in the kernel's backlog
        offer = (candidate_addresses(), listener.getsockname()[1])
    else:
        offer = None
    try:
        addrs, port = comm.bcast(offer, root=0)
        mine = [reachable(a, port) for a in addrs]
        everyone = comm.allgather(mine)
    finally:
        if listener is not None:
            listener.close()
    for i, addr in enumerate(addrs):
        if all(row[i] for row in everyone):
            return addr
    missing = {addr: [r for r, row in enumerate(everyone) if not row[i]] for i, addr in enumerate(addrs)}
    tried = "; ".join(f"{a} (not from rank(s) {', '.join(map(str, rs))})" for a, rs in missing.items())
    raise HpcError(f"no address of rank 0's host {hosts[0]} is reachable from every rank for torch.distributed: "
                   f"tried {tried} (a firewall between the nodes?)")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def torch_dist_env(comm: "MPI.Comm", local_rank: int, local_size: int) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for torch.distributed, agreed over MPI.

    Rank numbers come from MPI itself (the same values OMPI_COMM_WORLD_* or SLURM_PROCID hold); rank 0
    picks a free port, and the address is one every rank reached (`master_address`), so concurrent
    jobs never collide and node names need not resolve.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    addr = master_address(comm)
    port = comm.bcast(free_port() if rank == 0 else None, root=0)
    return {
        "RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_size), "MASTER_ADDR": addr, "MASTER_PORT": str(port),
    }
