"""Asynchronous parameter servers with bounded staleness (stale-synchronous parallel).

Ranks 0..k-1 are servers (like `kernels.parameter_server` with servers=k); each owns a contiguous
shard of the flat parameter vector and its optimizer state. Workers (the other ranks) compute a
gradient on their own data, push each shard to its server and pull the shard back. A server applies
every gradient as it arrives (no averaging, no barrier) and answers a worker only when that worker is
at most `--staleness` steps ahead of the slowest one (0 = lock-step). Observed staleness is recorded:
the clock gap at each answer (<= the bound) and the delay, in updates, between a worker's pull and
the application of its next gradient. A non-finite loss on any worker is flagged through the servers,
so every rank stops with the same error. At the end every worker pulls the final parameters.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from hpc.errors import HpcError
from hpc.kernels import blocks
from hpc.workloads.models import loss_fn
from hpc.workloads.sync.base import (SchemeFacts, StepResult, TrainContext, Trainer, TrainOptions,
                                    broadcast_params, flat_params, make_optimizer, set_flat_params)

if TYPE_CHECKING:
    import torch

PUSH, PULL, FINAL = 7601, 7602, 7603
HEADER = 2  # push: [clock, nonfinite flag]; reply: [aborting rank + 1 (0 = none), its step]


def check_layout(world: int, servers: int) -> None:
    """ps-async needs at least one server and one worker (pure: runs before any collective)."""
    if servers < 1:
        raise HpcError(f"ps-async needs --servers >= 1, got {servers}")
    if world < servers + 1:
        raise HpcError(f"ps-async with --servers {servers} needs --np >= {servers + 1} "
                       f"(servers + at least one worker), got {world}")


def _check_options(world: int | None, opts: TrainOptions, sync: str) -> None:
    """SchemeFacts.check_layout: servers and workers fit the world; the staleness bound is valid."""
    if world is not None:
        check_layout(world, opts.servers)
    elif opts.servers < 1:
        raise HpcError(f"ps-async needs --servers >= 1, got {opts.servers}")
    if opts.staleness < 0:
        raise HpcError(f"--staleness must be >= 0, got {opts.staleness}")


FACTS = SchemeFacts(lockstep=False, cuda=True, server_ranks=True, default_servers=1,
                    check_layout=_check_options)


def _abort_error(header: np.ndarray) -> HpcError:
    return HpcError(f"non-finite loss on rank {int(header[0]) - 1} at step {int(header[1])}: "
                    "training stopped on every rank (lower --lr?)")


class PSAsyncTrainer(Trainer):
    name = "ps-async"

    def __init__(self, ctx: TrainContext) -> None:
        super().__init__(ctx)
        self.k = ctx.opts.servers
        self.bound = ctx.opts.staleness
        world, rank = ctx.comm.Get_size(), ctx.comm.Get_rank()
        check_layout(world, self.k)
        if self.bound < 0:
            raise HpcError(f"--staleness must be >= 0, got {self.bound}")
        self.workers = list(range(self.k, world))
        self.is_worker = rank >= self.k
        self.params_list = [p for p in ctx.model.parameters() if p.requires_grad]
        broadcast_params(ctx.comm, self.params_list)
        flat = flat_params(self.params_list)
        self.n = flat.size
        self.off = blocks(self.n, self.k)
        self.clock = 0
        self.stats: dict[str, Any] = {}
        if self.is_worker:
            self.push = [np.empty(self.off[j + 1] - self.off[j] + HEADER, np.float32) for j in range(self.k)]
            self.pull = [np.empty(self.off[j + 1] - self.off[j] + HEADER, np.float32) for j in range(self.k)]
        else:
            import torch

            a, b = self.off[rank], self.off[rank + 1]
            self.shard = torch.nn.Parameter(torch.from_numpy(flat[a:b].copy()))
            self.optimizer = make_optimizer([self.shard], ctx.opts)

    @property
    def data_rank(self) -> int:
        return self.comm.Get_rank() - self.k

    @property
    def data_world(self) -> int:
        return self.comm.Get_size() - self.k

    # -- worker --------------------------------------------------------------------------------------
    def step(self, x: "torch.Tensor", y: "torch.Tensor") -> StepResult:
        from mpi4py import MPI

        t0 = time.perf_counter()
        model = self.ctx.model
        model.zero_grad(set_to_none=True)
        loss = loss_fn(self.ctx.cfg, model(x), y)
        loss.backward()
        value = float(loss.detach())
        grads = self._flat_grads()
        self.clock += 1
        for j, buf in enumerate(self.push):
            m = buf.size - HEADER
            buf[:m] = grads[self.off[j]:self.off[j + 1]]
            buf[m] = self.clock
            buf[m + 1] = 0.0 if np.isfinite(value) else 1.0
        t1 = time.perf_counter()
        reqs = [self.comm.Irecv(buf, j, PULL) for j, buf in enumerate(self.pull)]
        reqs += [self.comm.Isend(buf, j, PUSH) for j, buf in enumerate(self.push)]
        MPI.Request.Waitall(reqs)
        t2 = time.perf_counter()
        self._take_pulled()
        t3 = time.perf_counter()
        return StepResult(value, (t1 - t0) + (t3 - t2), t2 - t1)

    def _flat_grads(self) -> np.ndarray:
        import torch

        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params_list]
        return torch.cat(parts).to("cpu", torch.float32).numpy()

    def _take_pulled(self) -> None:
        """Check the servers' abort flag, then load the pulled shards into the model."""
        for buf in self.pull:
            header = buf[buf.size - HEADER:]
            if header[0]:
                raise _abort_error(header)
        flat = np.concatenate([buf[:buf.size - HEADER] for buf in self.pull])
        set_flat_params(self.params_list, flat)

    def finish_worker(self) -> None:
        """Pull the final parameters (servers answer once every worker has pushed its last step)."""
        from mpi4py import MPI

        hdr = np.array([self.clock, 0], np.float32)
        reqs = [self.comm.Irecv(buf, j, PULL) for j, buf in enumerate(self.pull)]
        reqs += [self.comm.Isend(hdr, j, FINAL) for j in range(self.k)]
        MPI.Request.Waitall(reqs)
        self._take_pulled()

    # -- server --------------------------------------------------------------------------------------
    def run_server(self, steps: int) -> None:
        """Apply pushed gradients as they come, answer within the staleness bound, until done."""
        import torch
        from mpi4py import MPI

        comm, rank = self.comm, self.comm.Get_rank()
        m = self.shard.numel()
        inbox = np.empty(m + HEADER, np.float32)
        reply = np.empty(m + HEADER, np.float32)
        small = np.empty(HEADER, np.float32)
        clocks = {w: 0 for w in self.workers}
        pulled_at = {w: 0 for w in self.workers}  # server version each worker last pulled
        waiting: list[int] = []
        finals: list[int] = []
        told: set[int] = set()
        version, abort = 0, None
        gaps: list[int] = []
        delays: list[int] = []
        status = MPI.Status()
        idle_s = 0.0

        def answer(w: int) -> None:
            with torch.no_grad():
                reply[:m] = self.shard.detach().numpy()
            reply[m:] = (abort[0] + 1, abort[1]) if abort else (0, 0)
            comm.Send(reply, w, PULL)
            if abort:
                told.add(w)

        while True:
            t_idle = time.perf_counter()
            spins = 0
            while not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
                spins += 1
                if spins > 100:  # leave the core to workers on oversubscribed nodes
                    time.sleep(0.0002)
            idle_s += time.perf_counter() - t_idle
            src, tag = status.Get_source(), status.Get_tag()
            if tag == PUSH:
                comm.Recv(inbox, src, PUSH)
                clock, flag = int(inbox[m]), inbox[m + 1]
                if flag and abort is None:
                    abort = (src, clock)
                if abort is None:
                    delays.append(version - pulled_at[src])
                    self.shard.grad = torch.from_numpy(inbox[:m])
                    self.optimizer.step()
                    version += 1
                clocks[src] = clock
                waiting.append(src)
            elif tag == FINAL:
                comm.Recv(small, src, FINAL)
                finals.append(src)
            else:
                raise HpcError(f"parameter server {rank}: unexpected message tag {tag} from rank {src}")
            slowest = min(clocks.values())
            for w in list(waiting):
                if abort or clocks[w] - slowest <= self.bound:
                    gaps.append(clocks[w] - slowest)
                    answer(w)
                    pulled_at[w] = version
                    waiting.remove(w)
            if abort:
                for w in finals:
                    answer(w)
                finals = []
                if told >= set(self.workers):
                    raise _abort_error(np.array([abort[0] + 1, abort[1]], np.float32))
            elif len(finals) == len(self.workers) and slowest >= steps:
                for w in finals:
                    answer(w)
                break
        self.stats = {"updates": version, "gaps": gaps, "delays": delays, "idle_s": idle_s}

    # -- results -------------------------------------------------------------------------------------
    def params(self) -> np.ndarray | None:
        return flat_params(self.params_list) if self.is_worker else None

    def bytes_per_step(self) -> int:
        return 2 * self.n * 4 if self.is_worker else 0  # push gradients + pull parameters

    def summary(self) -> dict[str, Any]:
        """Observed staleness over all servers (collective: call on every rank)."""
        everyone = self.comm.allgather(self.stats if not self.is_worker else None)
        gaps = [g for s in everyone if s for g in s["gaps"]]
        delays = [d for s in everyone if s for d in s["delays"]]
        return {
            "servers": self.k, "staleness_bound": self.bound,
            "staleness_max": max(gaps) if gaps else 0,
            "staleness_mean": float(np.mean(gaps)) if gaps else 0.0,
            "delay_updates_max": max(delays) if delays else 0,
            "delay_updates_mean": float(np.mean(delays)) if delays else 0.0,
            "server_idle_s": max((s["idle_s"] for s in everyone if s), default=0.0),
        }


    def memory_tensors(self) -> dict[str, list[Any]]:
        """Workers: the model, its gradients, the push/pull buffers. Servers: also their shard, its
        gradient (the received message) and optimizer state."""
        from hpc.workloads.memory_count import module_tensors

        if self.is_worker:
            out = module_tensors(self.ctx.model)
            out["buffers"] += self.push + self.pull
            return out
        out = module_tensors(self.ctx.model, self.optimizer)
        out["params"].append(self.shard)
        out["grads"].append(self.shard.grad)
        return out

    def memory_layout(self) -> Any:
        from hpc.workloads.memory_count import Layout

        if self.is_worker:
            return Layout(optimizer=0.0, scheme="ps-async worker (all parameters and gradients, no "
                                               "optimizer state)")
        k = 1.0 / self.k
        return Layout(params=1.0 + k, grads=k, optimizer=k,
                      scheme=f"ps-async server (a 1/{self.k} shard of parameters, gradients and optimizer "
                             "state, plus the full model every rank builds)")


def make(ctx: TrainContext) -> Trainer:
    return PSAsyncTrainer(ctx)
