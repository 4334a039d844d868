"""The background thread behind hpc.torch's collectives: negotiation, then execution, off the main thread.

`submit()` records an operation under its name and returns a handle at once (Horovod's *_async);
the background thread sends the request to the coordinator (world rank 0, _negotiate.Coordinator)
and, when the answer comes, runs the collective on the process set's own communicator and completes
the handle; `poll()` says whether that happened, `wait()` blocks for it. Messages are small pickled
lists on a communicator of their own; the thread polls with a short back-off while it waits for an
answer (MPI's blocking calls would spin a core) and sleeps when there is nothing to do.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from hpc.torch._errors import HorovodInternalError
from hpc.torch._negotiate import JOIN, SHUTDOWN, WAITING, Coordinator, Key, Request, Response, fingerprint

if TYPE_CHECKING:
    from mpi4py import MPI

REQ, RESP = 11, 12
BUSY_MAX_S = 1e-3      # longest sleep while an answer is due (latency of a small collective)
IDLE_COORD_S = 5e-3    # rank 0's poll period with nothing pending while a process set excludes it
IDLE_S = 0.05          # otherwise, with nothing pending: another rank's request can only complete once
#                        this rank submits its part too, and submitting wakes the thread at once
REPORT_WAIT_S = 0.2    # a main thread blocked this long tells the coordinator what it waits for


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Handle:
    """What *_async returns a number for: done once the background thread set a result or an error."""

    def __init__(self, key: Key | None) -> None:
        self.key = key
        self.event = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.event.set()


@dataclass
class Entry:
    """A submitted operation: its request, and how to run it here once every rank agreed."""

    request: Request
    run: Callable[[Response], Any]
    handle: Handle
    payload: dict = field(default_factory=dict)


class Runtime:
    """One per hpc.torch session (created by init, ended by shutdown)."""

    def __init__(self, comm: "MPI.Comm", sets: dict, zero_run: Callable[[Response], None]) -> None:
        self.ctl = comm.Dup()
        self.rank, self.world = comm.Get_rank(), comm.Get_size()
        self.sets = sets                      # set id -> SetInfo (shared with _process_sets)
        self.zero_run = zero_run              # how a joined rank takes part in an allreduce/barrier
        self.coordinator = None
        if self.rank == 0:
            from hpc.env import get

            self.coordinator = Coordinator(
                self.world, self._members, grace=float(get("HPC_TORCH_DEADLOCK_S", "2")),
                stall_warn=_env_float("HOROVOD_STALL_CHECK_TIME_SECONDS", 60.0),
                stall_end=_env_float("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", 0.0))
        self.queue: collections.deque = collections.deque()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.pending: dict[Key, Entry] = {}
        self.handles: dict[int, Handle] = {}
        self.join_handle: Handle | None = None
        self.ids = itertools.count(1)
        self.unnamed: dict[tuple[int, str], int] = collections.defaultdict(int)
        self.sends: list = []
        self.sent_sigs: dict[Key, int] = {}   # what the coordinator already holds for each name
        self.down: str | None = None          # why collectives are over (set once)
        self.stop = False
        self.thread = threading.Thread(target=self._loop, name="hpc-torch-collectives", daemon=True)
        self.thread.start()

    # -- main-thread side ----------------------------------------------------------------------------
    def name_for(self, kind: str, name: str | None, set_id: int) -> str:
        """Horovod's naming: `kind.name`, or `kind.noname.N` for the N-th unnamed one of that kind."""
        if name is None:
            n = self.unnamed[(set_id, kind)]
            self.unnamed[(set_id, kind)] = n + 1
            return f"{kind}.noname.{n}"
        return f"{kind}.{name}"

    def submit(self, req: Request, run: Callable[[Response], Any], payload: dict | None = None) -> int:
        """Queue an operation; its handle number (for poll/synchronize). Duplicate names: ValueError."""
        if self.down:
            raise HorovodInternalError(self.down)
        req.rank = self.rank
        req.sig_id = fingerprint(req.sig)
        handle = Handle(req.key)
        with self.lock:
            if req.key in self.pending:
                raise ValueError(f"Requested to {req.kind} a tensor with the same name as another tensor that "
                                 f"is currently being processed ('{req.name}'). If you want to request "
                                 "another tensor, use a different tensor name.")
            self.pending[req.key] = Entry(req, run, handle, payload or {})
            hid = next(self.ids)
            self.handles[hid] = handle
        self.queue.append(req)
        self.wake.set()
        return hid

    def join(self) -> Handle:
        if self.down:
            raise HorovodInternalError(self.down)
        self.join_handle = Handle(None)
        self.queue.append(Request(JOIN, rank=self.rank))
        self.wake.set()
        return self.join_handle

    def poll(self, hid: int) -> bool:
        handle = self.handles.get(hid)
        if handle is None:
            raise ValueError(f"invalid handle {hid!r}")
        return handle.event.is_set()

    def wait(self, handle: Handle) -> Any:
        """Block until the handle is done; raise its error. Long waits are reported to the coordinator
        (deadlock detection) once."""
        if not handle.event.wait(REPORT_WAIT_S):
            if handle.key is not None and not self.down:
                self.queue.append(Request(WAITING, info=handle.key, rank=self.rank))
                self.wake.set()
            while not handle.event.wait(1.0):
                if not self.thread.is_alive() and not handle.event.is_set():
                    raise HorovodInternalError(self.down or "hpc.torch's background thread has stopped")
        if handle.error is not None:
            raise handle.error
        return handle.result

    def take(self, hid: int) -> Handle | None:
        return self.handles.pop(hid, None)

    def drain(self, set_id: int) -> None:
        """Wait until no operation of this set is pending here."""
        while any(k[0] == set_id for k in list(self.pending)) and not self.down:
            time.sleep(0.001)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Tell the coordinator (which ends every rank's pending collectives, naming this rank), wait
        for its answer, stop the thread."""
        if self.thread.is_alive() and not self.down:
            self.queue.append(Request(SHUTDOWN, rank=self.rank))
            self.wake.set()
            self.thread.join(timeout)
        self.stop = True
        self.wake.set()
        self.thread.join(5.0)

    # -- background thread ---------------------------------------------------------------------------
    def _members(self, set_id: int) -> list[int] | None:
        info = self.sets.get(set_id)
        return None if info is None else info.ranks

    def _loop(self) -> None:
        delay = 0.0
        while not self.stop:
            self.wake.clear()
            try:
                worked = self._cycle()
            except BaseException as exc:  # a bug here must not leave the main thread waiting forever
                self._end(f"hpc.torch's background thread failed on rank {self.rank}: "
                          f"{type(exc).__name__}: {exc}")
                return
            if self.down:
                self._flush_sends(2.0)
                return
            if worked:
                delay = 0.0
                continue
            if self._expecting():
                delay = min(max(2 * delay, 5e-5), BUSY_MAX_S)
            else:
                foreign = self.rank == 0 and any(0 not in info.ranks for info in list(self.sets.values()))
                delay = IDLE_COORD_S if foreign else IDLE_S
            self.wake.wait(delay)

    def _expecting(self) -> bool:
        coord = self.coordinator
        return bool(self.pending or self.join_handle or self.queue or
                    (coord is not None and (coord.table or coord.waiting or coord.joined)))

    def _cycle(self) -> bool:
        from mpi4py import MPI

        worked = False
        responses: list[Response] = []
        status = MPI.Status()
        if self.coordinator is not None:  # what already arrived from others first: join order is arrival order
            while self.ctl.iprobe(source=MPI.ANY_SOURCE, tag=REQ, status=status):
                for req in self.ctl.recv(source=status.Get_source(), tag=REQ):
                    self.coordinator.add(req)
                worked = True
        batch: list[Request] = []
        while self.queue:
            batch.append(self.queue.popleft())
        if batch:
            worked = True
            if self.coordinator is not None:
                for req in batch:
                    self.coordinator.add(req)
            else:
                self.sends.append(self.ctl.isend([self._compact(r) for r in batch], dest=0, tag=REQ))
        if self.coordinator is not None:
            out = self.coordinator.ready()
            if out:
                for dest in range(1, self.world):
                    mine = [r for r in out if self._for(r, dest)]
                    if mine:
                        self.sends.append(self.ctl.isend(mine, dest=dest, tag=RESP))
                responses = [r for r in out if self._for(r, 0)]
        else:
            while self.ctl.iprobe(source=0, tag=RESP, status=status):
                responses += self.ctl.recv(source=0, tag=RESP)
        for resp in responses:
            worked = True
            self._execute(resp)
            if self.down:
                break
        if self.sends:
            self.sends = [s for s in self.sends if not s.Test()]
        return worked

    def _compact(self, req: Request) -> Request:
        """Send a name's signature only when it changed since this rank last sent that name."""
        if not req.sig_id or req.kind in (SHUTDOWN, JOIN, WAITING):
            return req
        if self.sent_sigs.get(req.key) == req.sig_id:
            return Request(req.kind, req.name, req.set_id, (), req.info, req.rank, req.sig_id)
        self.sent_sigs[req.key] = req.sig_id
        return req

    def _for(self, resp: Response, rank: int) -> bool:
        if resp.kind in (SHUTDOWN, JOIN):
            return True
        members = self._members(resp.set_id)
        return members is not None and rank in members

    def _execute(self, resp: Response) -> None:
        if resp.kind == SHUTDOWN:
            who = resp.value
            if who == self.rank:
                self._end("hpc.torch was shut down on this rank (hvd.shutdown() or the end of the script)")
            else:
                self._end(f"rank {who} has shut down (it finished or called hvd.shutdown()), so this rank's "
                          "collectives cannot complete: every rank must run the same collectives")
            return
        if resp.kind == JOIN:
            handle, self.join_handle = self.join_handle, None
            if handle is not None:
                handle.finish(resp.value, HorovodInternalError(resp.error) if resp.error else None)
            return
        with self.lock:
            entry = self.pending.pop(resp.key, None)
        if entry is None:
            if resp.error is None and self.rank in resp.joined:
                self.zero_run(resp)  # joined: take part with zeros
            return
        if resp.error is not None:
            entry.handle.finish(error=HorovodInternalError(resp.error))
            return
        try:
            result = entry.run(resp)
        except (HorovodInternalError, ValueError) as exc:
            entry.handle.finish(error=exc)
        except Exception as exc:  # noqa: BLE001 - handed to the caller of synchronize()
            entry.handle.finish(error=HorovodInternalError(
                f"{resp.kind} '{resp.name}' failed on rank {self.rank}: {type(exc).__name__}: {exc}"))
        else:
            entry.handle.finish(result)

    def _end(self, why: str) -> None:
        """No collective can complete any more: fail everything pending, refuse what comes."""
        self.down = why
        with self.lock:
            entries, self.pending = list(self.pending.values()), {}
        for e in entries:
            e.handle.finish(error=HorovodInternalError(f"{e.request.kind} '{e.request.name}': {why}"))
        if self.join_handle is not None:
            self.join_handle.finish(error=HorovodInternalError(why))
            self.join_handle = None

    def _flush_sends(self, timeout: float) -> None:
        t0 = time.monotonic()
        while self.sends and time.monotonic() - t0 < timeout:
            self.sends = [s for s in self.sends if not s.Test()]
            time.sleep(0.001)
