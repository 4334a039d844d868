"""Nothing a rank starts outlives its point, and no rank reads stdin.

Why this is needed (measured with this venv's Open MPI 5 mpirun, as root, 2 ranks): mpirun gives every
rank a process group of its own, so killing mpirun's group misses the ranks' children; a rank running
`sh -c 'echo time: 1; sleep 300 & exit 0'` keeps its stdout pipe open through the `sleep`, mpirun waits
for that pipe, and the point ran into its timeout although the program had printed its figure and
exited 0 — after which one `sleep` per rank stayed behind under PID 1. Rank 0's stdin is a pipe from
mpirun (Open MPI forwards it even when mpirun's own stdin is /dev/null), so a program that reads stdin
blocks for ever.

What was tried:
- a cgroup per point (cgroup v2 `cgroup.kill`): works on this machine as root, but needs root or a
  delegated cgroup, which users on clusters do not have (and slurmd owns the job's cgroup there);
- process groups / sessions per rank: `setsid` or `nohup` children leave them, and Open MPI already
  makes one per rank;
- `prctl(PR_SET_CHILD_SUBREAPER)` per rank (chosen): unprivileged, works under mpirun and srun alike
  (verified under the local Slurm cluster with both launchers). Orphans re-parent to the nearest
  subreaper, whatever session or process group they made for themselves, so a rank that is a
  subreaper finds every process it started, however detached, among its descendants and ends them
  when it ends.

Three pieces use it: `hpc` ranks make themselves subreapers and end their descendants on the way out
(hpc.cli.main); a `run` program is started on each rank through `python -m hpc.launch.reaper -- PROGRAM
ARGS` (`wrap`), a small parent that redirects stdin from /dev/null, runs the program, and when it
exits (or the rank is told to stop) ends everything the program left behind; and the local launcher
tags each job's environment with HPC_LAUNCH_ID and, when the job ends, ends every process still
carrying that tag (what a SIGKILLed rank's orphans escaped to PID 1 with). The wrapper costs about
50 ms of Python start-up per rank (measured here: `python -m hpc.launch.reaper -- true` 0.05 s), once
per point, beside mpirun's own second or so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterable, Sequence

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
LAUNCH_VAR = "HPC_LAUNCH_ID"
GRACE_S = 2.0  # SIGTERM first; what is still there after this gets SIGKILL


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants of this process re-parent to it instead of PID 1 (Linux >= 3.4)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Get `sig` when the parent process dies (kept across exec; a preexec_fn for children)."""
    _prctl(PR_SET_PDEATHSIG, int(sig))


def stdin_from_devnull() -> None:
    """Point file descriptor 0 at /dev/null: a rank never waits on input nobody will type."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)
    if sys.stdin is not None and not sys.stdin.closed:
        try:
            sys.stdin = open(0, closefd=False, encoding=getattr(sys.stdin, "encoding", None) or "utf-8")
        except (OSError, ValueError):
            pass


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process visible in /proc."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and ')'
        if len(rest) >= 2 and rest[1].lstrip("-").isdigit():
            out[int(entry)] = (int(rest[1]), rest[0])
    return out


def descendants(root: int | None = None) -> list[int]:
    """Live (non-zombie) descendants of `root` (default: this process), parents before children."""
    root = os.getpid() if root is None else root
    procs = _processes()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], list(kids.get(root, ()))
    while todo:
        pid = todo.pop(0)
        if procs[pid][1] != "Z":
            out.append(pid)
        todo += kids.get(pid, ())
    return out


def tagged(tag: str) -> list[int]:
    """Processes of this user whose environment carries HPC_LAUNCH_ID=`tag` (a launch's processes,
    wherever they have re-parented to)."""
    needle = f"{LAUNCH_VAR}={tag}".encode()
    me = os.getpid()
    out = []
    for pid, (_, state) in _processes().items():
        if pid == me or state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(pid)
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[:1] != ["Z"]


def _reap() -> None:
    """Collect exited children (orphans re-parented to a subreaper are its children too)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end(pids_now, grace: float = GRACE_S, reap: bool = True) -> list[int]:
    """SIGTERM what `pids_now()` lists, SIGKILL what is left after `grace` s; return what was signalled.

    `pids_now` is asked again each round: a dying process's children re-parent (to us, when we are
    their subreaper) and show up then."""
    ended: list[int] = []
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        if reap:
            _reap()
        pids = [p for p in pids_now() if _alive(p)]
        if not pids:
            return ended
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
            if pid not in ended:
                ended.append(pid)
        if sig == signal.SIGKILL and time.monotonic() > deadline + 5:
            return ended  # unkillable (D state): nothing more to do
        time.sleep(0.05)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL


def end_descendants(grace: float = GRACE_S) -> list[int]:
    """End every live descendant of this process (TERM, then KILL); return their pids."""
    return end(descendants, grace)


def end_launch(tag: str, grace: float = GRACE_S) -> list[int]:
    """End every process still carrying a launch's tag (after the launch itself has ended)."""
    return end(lambda: tagged(tag), grace, reap=False)


def wrap(command: Sequence[str]) -> list[str]:
    """How each rank runs a user program: under the reaper (stdin /dev/null, leftovers ended)."""
    return [sys.executable, "-m", "hpc.launch.reaper", "--", *command]


def main(argv: Iterable[str]) -> int:
    """`python -m hpc.launch.reaper -- PROGRAM ARGS`: run PROGRAM as this rank's only job; when it
    exits (or we are told to stop) end everything it left behind; exit as it did."""
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m hpc.launch.reaper -- PROGRAM ARGS...\n")
        return 2
    become_subreaper()
    stdin_from_devnull()
    die_with_parent(signal.SIGTERM)  # the launcher's daemon died: clean up below, then go
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    except OSError as exc:
        sys.stderr.write(f"hpc: error: cannot start {argv[0]}: {exc.strerror or exc}\n")
        return 127
    told: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        told.append(sig)
        try:
            child.send_signal(sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = None
    while code is None:
        try:
            code = child.wait(timeout=GRACE_S if told else None)
        except subprocess.TimeoutExpired:  # told to stop and it did not: stop it
            child.kill()
    end_descendants()
    if code < 0:  # killed by a signal: die of the same one, so the launcher reports it as such
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
