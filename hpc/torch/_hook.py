"""comm_hook(spec): a DistributedDataParallel communication hook that reduces with an hpc collective.

    model = DDP(model)                       # any process group (gloo) for DDP's own start-up
    model.register_comm_hook(None, hpc.torch.comm_hook("ring"))

Each GradBucket is averaged with the collective over MPI.COMM_WORLD (the same ranks as the process
group) on a communication thread, in the order DDP hands buckets over (the same on every rank), so
reduction overlaps the rest of backward; the returned Future completes when the bucket is reduced.
A codec (`compression=Compression.fp16`) sends the bucket compressed, like DDP's fp16 hook.
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Any

from hpc.workloads.sync.compression import Compression, check_codec, wire_dtype


class _CommHook:
    """The hook object: state (communicator, collective, thread) lives here, not in DDP's `state`."""

    def __init__(self, spec: str, compression: Any) -> None:
        import torch
        from mpi4py import MPI

        from hpc.plugins import registry
        from hpc.plugins.verify import verify
        from hpc.torch._basics import check_dtype

        check_codec(compression)
        self.__name__ = self.__qualname__ = f"hpc_comm_hook[{spec}]"  # DDP logs the hook by name
        self.codec = compression
        self.coll = registry.load(spec)
        self.comm = MPI.COMM_WORLD.Dup()
        self.world = self.comm.Get_size()
        if not self.coll.builtin:  # verified (collectively) before it touches a gradient
            verify(self.comm, self.coll, ops=("SUM",), quick=True, sub_comms=False)
            dtype = str(wire_dtype(compression, torch.zeros(1))).replace("torch.", "")
            if dtype not in ("float32", "int64"):
                check_dtype(self.comm, self.coll, dtype)
        self.sum = MPI.SUM
        self.jobs: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = threading.Thread(target=self._serve, name="hpc-ddp-hook",
                                                                daemon=True)
        self.thread.start()
        # Stop the thread before interpreter shutdown: a daemon thread still inside torch's C++ (the
        # tail of Future.set_result) when Python finalises is ended through C++ frames and the process
        # aborts ("terminate called without an active exception"; seen 1 run in ~8 without this).
        atexit.register(self.close)

    def __call__(self, state, bucket):
        import torch

        fut: torch.futures.Future = torch.futures.Future()
        self.jobs.put((bucket.buffer(), fut))
        return fut

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            buf, fut = job
            try:
                fut.set_result(self._reduce(buf))
            except BaseException as exc:  # handed to DDP, which raises it in backward
                fut.set_exception(exc)

    def _reduce(self, buf):
        buf.div_(self.world)
        wire, ctx = self.codec.compress(buf)
        host = wire.detach().to("cpu").contiguous()
        arr = host.reshape(-1).numpy()
        self.coll.func(self.comm, arr, arr, self.sum)
        if host.data_ptr() != wire.data_ptr():
            wire.copy_(host)
        out = self.codec.decompress(wire, ctx)
        if out.data_ptr() != buf.data_ptr() or out.dtype != buf.dtype:
            buf.copy_(out)
        return buf

    def close(self) -> None:
        """Stop the communication thread and free the communicator (idempotent; also at exit)."""
        if self.thread is None:
            return
        self.jobs.put(None)
        self.thread.join(timeout=30)
        self.thread = None
        from hpc.comm import mpi_active

        if mpi_active():
            self.comm.Free()


def comm_hook(spec: str = "auto", compression: Any = Compression.none) -> _CommHook:
    """A hook for `DistributedDataParallel.register_comm_hook(state, hook)` reducing with SPEC.

    Collective over MPI.COMM_WORLD: call it on every rank (a plug-in is verified here).
    """
    return _CommHook(spec, compression)
