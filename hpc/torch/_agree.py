"""One small exchange per optimizer step for DistributedOptimizer's fused gradient buckets.

Before the first bucket of a step is reduced, the gradient thread allgathers six int64 per rank on
the engine's own communicator: a tag, whether the rank is stepping or leaving (shutdown), its step
number, a fingerprint of the bucket layout (parameter names, shapes, dtypes, op, compression, passes:
agreed once at construction, compared as one number after that), and a checksum of a sample of the
previous step's reduced gradients (plug-in collectives only: every rank must hold the same answer,
a plug-in whose ranks differ by one ulp would otherwise let the models drift apart silently).
A mismatch raises the same HorovodInternalError on every rank. A rank that shuts down posts the same
exchange marked "leaving", so a peer waiting for its step ends with an error naming it, not a hang.
A rank inside hvd.join() posts it marked "joined" and, while others still step, reduces zeros with
them (Horovod's join: uneven data; the average still divides by every rank).
It is a non-blocking MPI_Iallgather tested with a short back-off: no core spins while peers compute.
"""

from __future__ import annotations

import sys
import time
import zlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hpc.torch._errors import HorovodInternalError

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

TAG, STEP, LEAVE, JOINED = 0x68707421, 1, 2, 3
SAMPLE_STRIDE = 61      # every 61st gradient value goes into the checksum (~1.6 % of a pass)
STALL_WARN_S = 60.0


def fingerprint(items: list[Any]) -> int:
    """A 63-bit number for a list of plain values (the same on every rank for the same list)."""
    import hashlib

    digest = hashlib.blake2b(repr(items).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_checksum(flat: "torch.Tensor", stride: int = SAMPLE_STRIDE) -> int:
    """crc32 of every stride-th value's bytes (exact: identical answers give identical sums)."""
    part = flat[::stride].detach().to("cpu").contiguous()
    return zlib.crc32(part.numpy().tobytes())


def wait_request(req: "MPI.Request", what: str, stop: Callable[[], bool] | None = None) -> bool:
    """Test `req` with a back-off from 20 µs to 1 ms until done (True) or `stop()` (False); warn once
    after a minute, like Horovod's stall check."""
    delay, t0, warned = 2e-5, time.monotonic(), False
    while not req.Test():
        if stop is not None and stop():
            return False
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)
        if not warned and time.monotonic() - t0 > STALL_WARN_S:
            warned = True
            sys.stderr.write(f"hpc.torch: warning: {what} has waited {STALL_WARN_S:.0f} s for the other ranks\n")
    return True


class StepAgreement:
    """The per-step exchange of one gradient engine (its communicator, its layout fingerprint)."""

    def __init__(self, comm: "MPI.Comm", layout: int, collective: str, world_ranks: list[int]) -> None:
        self.comm = comm
        self.layout = layout
        self.collective = collective
        self.world_ranks = world_ranks     # set rank -> world rank, for messages
        self.step = 0
        self.checksum = 0                  # of the last reduced gradients (0: not checked)
        self.mine = np.zeros(6, np.int64)
        self.all = np.zeros((comm.Get_size(), 6), np.int64)
        self.peer_left = False             # a peer's "leaving" was matched: no exchange can match any more

    def _post(self, state: int, extra: int = 0) -> "MPI.Request":
        self.mine[:] = (TAG, state, self.step, self.layout, self.checksum, extra)
        return self.comm.Iallgather(self.mine, self.all)

    def before_step(self) -> None:
        """Gradient thread, before bucket 0: agree with every rank or raise (on every rank)."""
        wait_request(self._post(STEP), f"optimizer step {self.step}")
        self._check()
        self.step += 1

    def _common(self, what: str) -> None:
        """Checks for every kind of round: nobody left, everybody has the same buckets."""
        rows, who = self.all, self.world_ranks
        leaving = [who[r] for r in range(len(rows)) if rows[r, 1] == LEAVE]
        if leaving:
            self.peer_left = True
            raise HorovodInternalError(
                f"rank(s) {leaving} shut down (finished or called hvd.shutdown()) while this rank {what}: "
                "every rank must take the same number of optimizer steps (or call hvd.join())")
        if len(set(rows[:, 3].tolist())) > 1:
            raise HorovodInternalError(
                "DistributedOptimizer: the ranks' gradient buckets differ (parameter names, shapes, dtypes, "
                "op, compression or backward_passes_per_step): every rank must build the same model and "
                "optimizer")

    def _check(self) -> None:
        self._common(f"started optimizer step {self.step}")
        rows, who = self.all, self.world_ranks
        stepping = [r for r in range(len(rows)) if rows[r, 1] == STEP]  # joined ranks reduce zeros
        if len({int(rows[r, 2]) for r in stepping}) > 1:
            steps = {who[r]: int(rows[r, 2]) for r in stepping}
            raise HorovodInternalError(f"DistributedOptimizer: the ranks are at different steps {steps}")
        sums = {who[r]: int(rows[r, 4]) for r in stepping}
        if len(set(sums.values())) > 1:
            raise HorovodInternalError(
                f"collective '{self.collective}' gave the ranks different answers in optimizer step "
                f"{self.step - 1} (checksums of the reduced gradients differ: {sums}); the models would "
                "drift apart. A collective must leave the identical result on every rank")

    def post_joined(self) -> "MPI.Request":
        """Main thread inside hvd.join(): offer to take part (with zeros) in the others' next step."""
        return self._post(JOINED)

    def joined_round(self) -> bool:
        """After a 'joined' round completed: True if others stepped (reduce zeros with them, then post
        again), False once every rank has joined (step counts realigned, this engine is done)."""
        self._common("waited in hvd.join()")
        if all(int(s) == JOINED for s in self.all[:, 1]):
            self.step = int(self.all[:, 2].max())
            self.checksum = 0
            return False
        return True

    def leave(self, params_checksum: int = 0) -> Callable[[], None]:
        """Main thread at shutdown (the engine is idle): post 'leaving' with a checksum of this rank's
        parameters; returns the wait for it (done when every peer has left too, or has reached its next
        step). Ranks that end with different parameters are told so: Horovod would not notice."""
        if self.peer_left:
            return lambda: None
        req = self._post(LEAVE, params_checksum)

        def wait() -> None:
            wait_request(req, "hpc.torch shutdown (waiting for the other ranks to finish their steps)")
            rows, who = self.all, self.world_ranks
            stepping = [who[r] for r in range(len(rows)) if rows[r, 1] == STEP]
            if stepping:
                sys.stderr.write(f"hpc.torch: warning: this rank shut down after {self.step} optimizer steps "
                                 f"while rank(s) {stepping} started another one\n")
            elif self.comm.Get_rank() == 0 and len(set(rows[:, 5].tolist())) > 1:
                sys.stderr.write(f"hpc.torch: warning: the ranks end with different parameters after {self.step} "
                                 "optimizer steps (no hvd.broadcast_parameters after a rank-specific change? "
                                 "a collective that gave ranks different answers?)\n")

        return wait
