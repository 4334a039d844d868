"""Cross-rank agreement before a collective runs, as Horovod's coordinator does it (pure logic, no MPI).

Every rank sends a small Request per operation to the coordinator (world rank 0): its kind, its name
(`allreduce.loss`, or `allreduce.noname.N` for the N-th unnamed one), its process set and a signature
(dtype, shape, op, root, scale factors, device) that must be the same on every rank; per-rank facts
that may differ (allgather's first dimension, alltoall's splits) travel as `info`. When every member
of the set has sent it, the coordinator answers every member with one Response, in one global order:
either "run it" (with everyone's info) or the same error for all of them. So a mismatch raises the
same error on every rank, and collectives run in the same order everywhere (no deadlock across sets).

It also answers what Horovod answers: join (a joined rank contributes zeros to allreduces until every
rank has joined), shutdown (the first rank to shut down ends the job's collectives with an error that
names it), stalls (a warning after HOROVOD_STALL_CHECK_TIME_SECONDS), and one thing Horovod cannot: when
every rank is blocked waiting for an operation that some other rank will never submit (different
names, a skipped collective), the waits end with an error on every rank after `grace` seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

SHUTDOWN, JOIN, WAITING = "shutdown", "join", "waiting"
# Kinds a joined rank can take part in (with zeros / by arriving); the others are refused with Join.
JOIN_OK = ("allreduce", "barrier")

Key = tuple[int, str]  # (process set id, full operation name)


@dataclass
class Request:
    """One rank's half of an operation (or a control message: shutdown, join, waiting)."""

    kind: str
    name: str = ""
    set_id: int = 0
    sig: tuple = ()        # ((label, value), ...): must be equal on every rank
    info: Any = None       # per-rank facts (allgather: first dims; alltoall: splits; waiting: the key)
    rank: int = -1         # the sender's world rank
    sig_id: int = 0        # fingerprint of sig; a repeated name with the same sig travels without it

    @property
    def key(self) -> Key:
        return (self.set_id, self.name)


@dataclass
class Response:
    """The coordinator's answer, the same on every rank of the set."""

    kind: str
    name: str = ""
    set_id: int = 0
    sig: tuple = ()
    infos: dict[int, Any] = field(default_factory=dict)  # world rank -> info
    joined: tuple[int, ...] = ()
    error: str | None = None
    value: Any = None      # join: the last rank to join; shutdown: the rank that shut down

    @property
    def key(self) -> Key:
        return (self.set_id, self.name)


def fingerprint(sig: tuple) -> int:
    """A number for a signature that is the same on every rank (Python's hash() of str is not)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(repr(sig).encode(), digest_size=8).digest(), "little") >> 1


def user_name(name: str) -> str:
    """`allreduce.loss` -> `loss`; unnamed operations keep their generated name."""
    return name if ".noname." in name else name.split(".", 1)[-1]


def mismatch(kind: str, name: str, sigs: dict[int, tuple]) -> str | None:
    """The first signature field on which ranks disagree, said with every rank's value; None if none."""
    ranks = sorted(sigs)
    fields = [dict(sigs[r]) for r in ranks]
    labels: list[str] = []
    for sig in (sigs[r] for r in ranks):
        labels += [lab for lab, _ in sig if lab not in labels]
    for label in labels:
        values = [f.get(label, "<none>") for f in fields]
        if any(v != values[0] for v in values):
            groups: dict[str, list[int]] = {}
            for r, v in zip(ranks, values):
                groups.setdefault(_show(v), []).append(r)
            shown = "; ".join(f"{_ranks(rs)}: {v}" for v, rs in groups.items())
            return (f"Mismatched {kind} '{user_name(name)}': the ranks disagree on {label} ({shown}); "
                    "every rank must pass the same")
    return None


def _show(v: Any) -> str:
    return str(list(v)) if isinstance(v, tuple) else str(v)


def _ranks(rs: list[int]) -> str:
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ", ".join(map(str, rs))


class Coordinator:
    """Matches the ranks' requests (runs on world rank 0 only); `members(set_id)` gives a set's ranks
    (None while this rank has not registered it yet)."""

    def __init__(self, world: int, members: Callable[[int], list[int] | None], grace: float = 2.0,
                 stall_warn: float = 60.0, stall_end: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.world = world
        self.members = members
        self.grace = grace
        self.stall_warn = stall_warn
        self.stall_end = stall_end
        self.clock = clock
        self.table: dict[Key, dict[int, Request]] = {}
        self.since: dict[Key, float] = {}
        self.warned: set[Key] = set()
        self.joined: list[int] = []
        self.waiting: dict[int, Any] = {}
        self.down: int | None = None
        self.down_sent = False
        self.changed = clock()
        self.cache: dict[tuple[int, Key], tuple[int, tuple]] = {}  # (rank, key) -> (sig_id, sig) last seen

    # -- requests in ---------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        now = self.clock()
        if req.kind == SHUTDOWN:
            if self.down is None:
                self.down = req.rank
            return
        if req.kind == JOIN:
            if req.rank not in self.joined:
                self.joined.append(req.rank)
                self.waiting[req.rank] = JOIN
            self.changed = now
            return
        if req.kind == WAITING:
            self.waiting[req.rank] = req.info
            self.changed = now
            return
        if req.sig_id:  # the response cache: a repeated name's signature is sent once per rank
            seen = self.cache.get((req.rank, req.key))
            if not req.sig and seen is not None and seen[0] == req.sig_id:
                req.sig = seen[1]
            else:
                self.cache[(req.rank, req.key)] = (req.sig_id, req.sig)
        self.table.setdefault(req.key, {})[req.rank] = req
        self.since.setdefault(req.key, now)
        self.changed = now

    # -- responses out -------------------------------------------------------------------------------
    def ready(self) -> list[Response]:
        """Responses for every operation all its ranks have asked for, in the order they arrived."""
        if self.down is not None:
            if self.down_sent:
                return []
            self.down_sent = True
            return [Response(SHUTDOWN, value=self.down)]
        out: list[Response] = []
        for key in list(self.table):
            ranks = self.members(key[0])
            if ranks is None:
                continue  # this rank has not registered the set yet
            entry = self.table[key]
            joined = tuple(r for r in self.joined if r in ranks) if key[0] == 0 else ()
            if all(r in entry or r in joined for r in ranks):
                out.append(self._respond(key, entry, joined))
        if self.joined and len(self.joined) == self.world:
            out.append(Response(JOIN, value=self.joined[-1]))
            self.joined.clear()
        if out:
            done = {r.key for r in out}
            self.waiting = {r: k for r, k in self.waiting.items()
                            if not (k in done or (k == JOIN and not self.joined))}
            self.changed = self.clock()
        else:
            out = self._deadlock() or self._stalls()
        return out

    def _respond(self, key: Key, entry: dict[int, Request], joined: tuple[int, ...]) -> Response:
        del self.table[key]
        self.since.pop(key, None)
        first = entry[min(entry)]
        kind, name = first.kind, first.name
        kinds = {r: q.kind for r, q in entry.items()}
        error = None
        if len(set(kinds.values())) > 1:
            error = mismatch("operation", name, {r: (("operation", k),) for r, k in kinds.items()})
        if error is None and (len({q.sig_id for q in entry.values()}) > 1 or not first.sig_id):
            error = mismatch(kind, name, {r: q.sig for r, q in entry.items()})
        if error is None and joined and kind not in JOIN_OK:
            error = (f"{kind} '{user_name(name)}' cannot run while rank(s) {list(joined)} have called "
                     "hvd.join() (only allreduce and barrier work with join)")
        return Response(kind, name, key[0], first.sig, {r: q.info for r, q in entry.items()}, joined, error)

    def _deadlock(self) -> list[Response]:
        """Every rank blocked on an operation (or join) that cannot complete: end those waits with an
        error on every rank, after `grace` seconds without any change."""
        if self.grace <= 0 or len(self.waiting) < self.world or self.clock() - self.changed < self.grace:
            return []
        waits = {r: k for r, k in self.waiting.items() if k == JOIN or k in self.table}
        if len(waits) < self.world:
            return []
        parts = []
        for r in sorted(waits):
            k = waits[r]
            if k == JOIN:
                parts.append(f"rank {r} in hvd.join()")
            else:
                kind = self.table[k][r].kind if r in self.table[k] else k[1].split(".", 1)[0]
                parts.append(f"rank {r} in {kind} '{user_name(k[1])}' (submitted by ranks "
                             f"{sorted(self.table[k])})")
        msg = ("the ranks wait for different collectives and none can complete: " + ", ".join(parts) +
               "; every rank must submit the same operations (same names) in a compatible order")
        out = []
        for k in sorted({k for k in waits.values() if k != JOIN}):
            out.append(Response(self.table[k][min(self.table[k])].kind, k[1], k[0], error=msg))
            del self.table[k]
            self.since.pop(k, None)
        if any(k == JOIN for k in waits.values()):
            out.append(Response(JOIN, error=msg))
            self.joined.clear()
        self.waiting.clear()
        self.changed = self.clock()
        return out

    def _stalls(self) -> list[Response]:
        now = self.clock()
        out = []
        for key, t0 in list(self.since.items()):
            waited = now - t0
            entry = self.table[key]
            ranks = self.members(key[0]) or []
            missing = [r for r in ranks if r not in entry and r not in self.joined]
            if self.stall_warn > 0 and waited > self.stall_warn and key not in self.warned:
                self.warned.add(key)
                sys.stderr.write(f"hpc.torch: warning: {entry[min(entry)].kind} '{user_name(key[1])}' has "
                                 f"waited {waited:.0f} s for rank(s) {missing} (submitted by {sorted(entry)})\n")
            if self.stall_end > 0 and waited > self.stall_end:
                out.append(Response(entry[min(entry)].kind, key[1], key[0],
                                    error=f"{key[1]} stalled for {waited:.0f} s waiting for rank(s) {missing}"))
                del self.table[key]
                del self.since[key]
        return out
