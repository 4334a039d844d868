"""A Horovod training script as users write it (the test runs it as is, and with the import line
changed to `import hpc.torch as hvd`). Variants: none | fp16 | passes2 | sum (comma-separated)."""

import argparse
import time

import horovod.torch as hvd
import numpy as np
import torch
import torch.nn.functional as F
from toy import Net, flat_state, global_batch


def train(variant, args):
    torch.manual_seed(1000 + hvd.rank())  # different on every rank: broadcast_parameters must fix it
    model = Net(args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    compression = hvd.Compression.fp16 if variant == "fp16" else hvd.Compression.none
    passes = 2 if variant == "passes2" else 1
    op = hvd.Sum if variant == "sum" else hvd.Average
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression, backward_passes_per_step=passes, op=op)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    per_rank = args.global_batch // hvd.size()
    micro = per_rank // passes
    losses = []
    t0 = None
    for step in range(args.steps):
        if step == args.warmup:
            t0 = time.perf_counter()
        x, y = global_batch(step, args.global_batch, args.image)
        x, y = x[hvd.rank() * per_rank:(hvd.rank() + 1) * per_rank], y[hvd.rank() * per_rank:(hvd.rank() + 1) * per_rank]
        optimizer.zero_grad()
        total = 0.0
        for k in range(passes):
            loss = F.cross_entropy(model(x[k * micro:(k + 1) * micro]), y[k * micro:(k + 1) * micro]) / passes
            total += float(loss.detach())
            if op == hvd.Sum:
                loss = loss / hvd.size()
            loss.backward()
        optimizer.step()
        losses.append(float(hvd.allreduce(torch.tensor(total), name="avg_loss")))
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    state = flat_state(model)
    everyone = hvd.allgather(state.unsqueeze(0))
    assert all(torch.equal(everyone[0], row) for row in everyone), "parameters differ across ranks"
    timed = args.steps - args.warmup
    return state.numpy(), np.array(losses), args.global_batch * timed / elapsed if timed > 0 else 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="none")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    hvd.init()
    settings = hvd.broadcast_object({"variants": args.variants.split(","), "size": hvd.size()}, root_rank=0)
    results = {}
    for variant in settings["variants"]:
        params, losses, img_s = train(variant, args)
        results[f"{variant}_params"], results[f"{variant}_losses"] = params, losses
        if hvd.rank() == 0:
            print(f"variant {variant}: local {hvd.local_rank()}/{hvd.local_size()} loss {losses[-1]:.5f} "
                  f"img/s: {img_s:.1f}", flush=True)
    if hvd.rank() == 0 and args.out:
        np.savez(args.out, **results)
    hvd.shutdown()


if __name__ == "__main__":
    main()
