"""DDP on gloo, trained once plainly and once with hpc.torch.comm_hook(SPEC); rank 0 saves both.

Usage: mpirun -n 2 python ddp_hook.py SPEC OUT.npz [FP16_SPEC]
With FP16_SPEC, a third run uses comm_hook(FP16_SPEC, compression=Compression.fp16).
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel as DDP
from toy import Net, flat_state, global_batch

import hpc.torch
from hpc.workloads.sync.base import local_layout
from hpc.workloads.sync.rendezvous import torch_dist_env

STEPS, GLOBAL = 4, 16


def train(hook):
    torch.manual_seed(1000 + dist.get_rank())
    model = DDP(Net())
    if hook is not None:
        model.register_comm_hook(None, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    b, r = GLOBAL // dist.get_world_size(), dist.get_rank()
    for step in range(STEPS):
        x, y = global_batch(step, GLOBAL)
        opt.zero_grad()
        F.cross_entropy(model(x[r * b:(r + 1) * b]), y[r * b:(r + 1) * b]).backward()
        opt.step()
    return flat_state(model.module).numpy()


def main():
    spec, out = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    os.environ.update(torch_dist_env(comm, *local_layout(comm)))
    dist.init_process_group("gloo")
    plain = train(None)
    results = {"plain": plain, "hooked": train(hpc.torch.comm_hook(spec))}
    if sys.argv[3:]:
        results["hooked_fp16"] = train(hpc.torch.comm_hook(sys.argv[3], compression=hpc.torch.Compression.fp16))
    if dist.get_rank() == 0:
        np.savez(out, **results)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
