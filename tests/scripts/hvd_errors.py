"""What a Horovod script relies on when ranks disagree, run with `import hpc.torch as hvd` on 2 ranks.

    mpirun -n 2 python hvd_errors.py mismatch OUT.json   # every case: the same error on every rank
    mpirun -n 2 python hvd_errors.py skip                # rank 1 leaves; rank 0's allreduce must fail
    mpirun -n 2 python hvd_errors.py skip-step           # rank 1 takes one optimizer step fewer
    mpirun -n 2 python hvd_errors.py kill                # rank 1 is killed while rank 0 waits
    mpirun -n 2 python hvd_errors.py train OUT.pt        # a few optimizer steps (plug-in checks)
    mpirun -n 2 python hvd_errors.py syncbn OUT.json     # hvd.SyncBatchNorm vs BatchNorm on the global batch
    mpirun -n 2 python hvd_errors.py join OUT.json       # uneven steps, hvd.join(), then training goes on
    mpirun -n 2 python hvd_errors.py diverge             # rank-specific learning rates: warned at the end

`mismatch` writes, per rank, {case: [exception type, message, seconds]} to OUT.json.rank<R>.
"""

import json
import os
import signal
import sys
import time

import torch

import hpc.torch as hvd


def catch(fn):
    t0 = time.monotonic()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
        return [type(exc).__name__, str(exc), time.monotonic() - t0, isinstance(exc, RuntimeError)]
    return ["none", "", time.monotonic() - t0, False]


def mismatch(out: str) -> None:
    r = hvd.rank()
    res = {}
    res["shape"] = catch(lambda: hvd.allreduce(torch.ones([2, 3] if r == 0 else [3, 2]), name="s"))
    res["dtype"] = catch(lambda: hvd.allreduce(torch.ones(4, dtype=torch.float32 if r == 0 else torch.int32)))
    res["broadcast_dtype"] = catch(lambda: hvd.broadcast_(
        torch.full((3,), 1.5) if r == 0 else torch.zeros(3, dtype=torch.int32), root_rank=0))
    res["root"] = catch(lambda: hvd.broadcast(torch.ones(3), root_rank=r))
    res["name"] = catch(lambda: hvd.allreduce(torch.ones(3), name=f"loss_{r}"))
    res["op"] = catch(lambda: hvd.allreduce(torch.ones(3), op=hvd.Sum if r == 0 else hvd.Average))
    torch.manual_seed(r)
    model = torch.nn.Linear(3, 2, bias=False) if r == 0 else torch.nn.Linear(2, 3, bias=False)  # same bytes
    res["architecture"] = catch(lambda: hvd.broadcast_parameters(model.state_dict(), root_rank=0))
    res["optimizer_model"] = catch(lambda: hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters()))
    c = torch.ones(3, dtype=torch.complex64)
    res["complex_allreduce"] = catch(lambda: hvd.allreduce(c))
    res["complex_broadcast"] = catch(lambda: hvd.broadcast(c, 0))
    res["complex_allgather"] = catch(lambda: hvd.allgather(c))
    # afterwards the ranks still work together
    total = hvd.allreduce(torch.tensor([float(r + 1)]), op=hvd.Sum, name="after")
    res["after"] = ["ok" if total.item() == 3.0 else f"wrong {total.item()}", "", 0.0, False]
    with open(f"{out}.rank{r}", "w") as f:
        json.dump(res, f)


def skip() -> None:
    if hvd.rank() == 1:
        sys.exit(0)  # leaves without the allreduce rank 0 is about to run
    hvd.allreduce(torch.ones(3), name="metric")  # must raise on rank 0, naming rank 1


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    return model, opt


def _steps(model, opt, n: int) -> None:
    g = torch.Generator().manual_seed(hvd.rank())
    for _ in range(n):
        x = torch.randn(4, 8, generator=g)
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()


def skip_step() -> None:
    model, opt = _model()
    _steps(model, opt, 3 if hvd.rank() == 0 else 2)  # rank 1 leaves one step early


def train(out: str) -> None:
    model, opt = _model()
    _steps(model, opt, 3)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if hvd.rank() == 0:
        torch.save(flat, out)


def syncbn(out: str) -> None:
    """Each rank normalizes its half of a batch with hvd.SyncBatchNorm; every rank also runs a plain
    BatchNorm2d on the whole batch: outputs, running statistics and (allreduced) gradients must match."""
    r, n = hvd.rank(), hvd.size()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4 * n, 3, 5, 5, generator=g) * 3 + 1
    sync, plain = hvd.SyncBatchNorm(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        for m in (sync, plain):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    mine = x[4 * r:4 * (r + 1)].clone().requires_grad_()
    full = x.clone().requires_grad_()
    y_sync, y_plain = sync(mine), plain(full)
    (y_sync * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).sum().backward()
    (y_plain * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).sum().backward()
    res = {"out": (y_sync - y_plain[4 * r:4 * (r + 1)]).abs().max().item(),
           "running_mean": (sync.running_mean - plain.running_mean).abs().max().item(),
           "running_var": (sync.running_var - plain.running_var).abs().max().item(),
           "grad_x": (mine.grad - full.grad[4 * r:4 * (r + 1)]).abs().max().item(),
           "grad_w": (hvd.allreduce(sync.weight.grad, op=hvd.Sum) - plain.weight.grad).abs().max().item(),
           "grad_b": (hvd.allreduce(sync.bias.grad, op=hvd.Sum) - plain.bias.grad).abs().max().item()}
    with open(f"{out}.rank{r}", "w") as f:
        json.dump(res, f)


def join(out: str) -> None:
    """Rank 0 takes one step more than rank 1, which waits in hvd.join() meanwhile and takes part with
    zero gradients: rank 0's last update is its own gradient averaged with zeros (Horovod's join). Then
    both realign (broadcast) and train on."""
    model, opt = _model()
    r = hvd.rank()
    _steps(model, opt, 2)
    res = {}
    if r == 0:
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(9))
        params = list(model.parameters())
        local = torch.autograd.grad(model(x).sum(), params)
        before = [p.detach().clone() for p in params]
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        res["zero_averaged"] = max((b - p.detach() - 0.1 * g / 2).abs().max().item()
                                   for b, p, g in zip(before, params, local))
    res["last"] = hvd.join()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    _steps(model, opt, 1)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    rows = hvd.allgather(flat[None])
    res["same"] = bool(torch.equal(rows[0], rows[1]))
    with open(f"{out}.rank{r}", "w") as f:
        json.dump(res, f)


def diverge() -> None:
    """Each rank steps with its own learning rate: the parameters drift apart (legal, but worth a word)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1 * (hvd.rank() + 1)),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(3, 4)).sum().backward()
        opt.step()


def kill() -> None:
    if hvd.rank() == 1:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    hvd.allreduce(torch.ones(3), name="never")


if __name__ == "__main__":
    hvd.init()
    case = sys.argv[1]
    {"mismatch": lambda: mismatch(sys.argv[2]), "skip": skip, "skip-step": skip_step, "kill": kill,
     "train": lambda: train(sys.argv[2]), "syncbn": lambda: syncbn(sys.argv[2]),
     "join": lambda: join(sys.argv[2]), "diverge": diverge}[case]()
    print(f"rank {hvd.rank()}: {case} done", flush=True)
