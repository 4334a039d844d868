"""The `hpc` command: one parser per verb, each verb in its own module; errors are one line.

Commands that take `--np N` re-launch themselves under mpirun; the same command started by the
user under `mpirun -n N` or `srun` sees it is inside MPI and runs directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from typing import Sequence

from hpc import __version__, env, signals
from hpc.cli import bench, collectives, compare, data, demo, fit, plot, predict, report, sweep, train
from hpc.errors import HpcError

# Top-level verbs, in the order `hpc --help` lists them; each module has register(sub).
VERBS = (demo, collectives, bench, train, data, sweep, fit, predict, compare, plot, report)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one `hpc: error:` line (exit 2) instead of the usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("hpc").strip()
        sys.stderr.write(f"hpc: error: {where + ': ' if where else ''}{message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI's parser (every verb registered)."""
    parser = _Parser(prog="hpc", description="Collective algorithms, gradient-sync baselines and "
                     "scaling sweeps on MPI. `hpc demo` runs the whole pipeline on this machine.")
    parser.add_argument("--version", action="version", version=f"hpc {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for verb in VERBS:
        verb.register(sub)
    return parser


# SIGTERM unwinds like Ctrl-C: temp files are removed and the job's process group is killed (and a
# SIGTERM whose KeyboardInterrupt a finaliser swallowed is still seen: hpc.signals).
_terminate = signals._on_term


def main(argv: Sequence[str] | None = None) -> int:
    program = argv is None  # the process's entry point (not a call from Python): it may end the process
    argv = list(sys.argv[1:] if argv is None else argv)
    signals.install()
    code = _main(argv)
    if signals.received() and code == 0:
        code = _fail("interrupted", 130)
    if program:
        _leave(code)
    return code


def _main(argv: list[str]) -> int:
    running = False  # True once the command itself (not the parser) runs
    try:
        env.check()
        parser = build_parser()
        workload = None
        if argv[:1] == ["sweep"]:
            sweep_parser = parser._subparsers._group_actions[0].choices["sweep"]  # type: ignore[union-attr]
            argv, workload = sweep.split_argv(argv, sweep.value_options(sweep_parser))
        args = parser.parse_args(argv)
        if workload is not None:
            args.workload = workload
            here = getattr(args, "launcher", "local") == "local"
            args.parse_workload = lambda words: _check_workload(parser, words, here)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0 if not argv else 2
        rank = getattr(args, "mpi_command", False) and _inside_mpi()
        if getattr(args, "mpi_command", False) and args.np and not rank:
            return _relaunch(args, argv)
        if rank:
            _become_rank(args)
        if getattr(args, "json", None) == "-":
            from hpc import records

            records.claim_stdout()  # `--json -`: stdout carries the records only, whatever else prints
        running = True
        return int(args.func(args) or 0)
    except HpcError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `hpc ... | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit as exc:  # sys.exit(N) in user code on one rank: end the job, name the rank
        code = exc.code
        if code in (None, 0) and running and (_inside_mpi() or _mpi_used()):  # left "successfully" early
            return _fail(f"the workload called sys.exit({code!r}) before it finished (a plug-in or "
                         "model factory?)", 1)
        if code in (None, 0) or not _in_multirank_job():
            raise
        return _fail(f"the workload called sys.exit({code!r})", code if isinstance(code, int) else 1)
    except BaseException as exc:  # a bug or a user plug-in raising: still one line, naming the rank
        if env.get("HPC_DEBUG"):
            traceback.print_exc()
        return _fail(f"{type(exc).__name__}: {exc}", 1)


def _become_rank(args: argparse.Namespace) -> None:
    """This process is one rank of an MPI job: it ends with its launcher, reads no stdin, ends every
    process it starts when it ends (hpc.launch.reaper), and runs on as many ranks as --np says."""
    import atexit

    from hpc.launch import reaper

    reaper.die_with_parent(signal.SIGKILL)  # whatever it runs, a rank ends with its launcher
    reaper.stdin_from_devnull()
    if reaper.become_subreaper():
        atexit.register(reaper.end_descendants)
    if args.np:
        from hpc.comm import world

        size = world().Get_size()
        if size != args.np:
            raise HpcError(f"--np {args.np} but this job has {size} ranks (started by mpirun/srun with "
                           f"-n {size}): drop --np, or start {args.np} ranks")


def _leave(code: int) -> None:
    """End the process with `code` even when a plug-in left a non-daemon thread running (Python would
    wait for it for ever after printing success): say so, finish MPI, and exit."""
    stray = [t for t in threading.enumerate() if t.is_alive() and not t.daemon
             and t is not threading.main_thread()]
    if not stray:
        return
    from hpc import comm

    names = ", ".join(sorted({t.name for t in stray}))
    sys.stderr.write(f"hpc: note: {comm.rank_prefix()}thread(s) still running at exit ({names}), "
                     "started by a plug-in or model?: ended with the process\n")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if comm.mpi_active():
        from hpc.launch import reaper

        reaper.end_descendants()
        from mpi4py import MPI

        # a stray thread blocked inside MPI could hold up MPI_Finalize: leave anyway after a while
        timer = threading.Timer(10.0, os._exit, args=(code,))
        timer.daemon = True
        timer.start()
        MPI.Finalize()
    os._exit(code)


def _check_workload(parser: argparse.ArgumentParser, words: list[str], here: bool) -> None:
    """A sweep's workload must parse, and pass the checks its own command runs before mpirun
    (unknown scheme, missing package, a model that cannot build on this device...), so that a
    sweep (or a --dry-run's scripts) never starts what cannot run as written."""
    wargs = parser.parse_args(words)
    precheck = getattr(wargs, "precheck", None)
    if precheck:
        precheck(wargs, here)  # here: the points start on this machine (local launcher)


def _in_multirank_job() -> bool:
    from hpc import comm

    return comm.mpi_active() and comm.world().Get_size() > 1


def _mpi_used() -> bool:
    from hpc import comm

    return comm.mpi_active()


def _inside_mpi() -> bool:
    from hpc.launch.mpirun import inside_mpi

    return inside_mpi()


def _relaunch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this very command on `--np` ranks, after checks that need no MPI have passed here."""
    from hpc.launch import mpirun

    precheck = getattr(args, "precheck", None)
    if precheck:
        precheck(args)
    env = dict(os.environ, HPC_ARGV=json.dumps(["hpc", *argv]))
    result = mpirun.run(args.np, mpirun.strip_np(argv), timeout=args.timeout, env=env)
    failure = mpirun.describe_failure(result, args.np, args.timeout)
    if failure:
        return _fail(failure, result.returncode or 1, abort=False)
    return 0


def _fail(message: str, code: int, abort: bool = True) -> int:
    """Print one error line; inside a multi-rank job also end every other rank (no hang)."""
    from hpc import comm

    if threading.current_thread() is threading.main_thread():  # already failing: the launcher's
        signal.signal(signal.SIGTERM, lambda *_: os._exit(code or 1))  # SIGTERM just ends us, no traceback
    message = " ".join(str(message).split())  # one line, whatever a library put in its exception
    sys.stderr.write(f"hpc: error: {comm.rank_prefix()}{message}\n")
    sys.stderr.flush()
    if abort and comm.mpi_active() and comm.world().Get_size() > 1:
        from hpc.launch import reaper

        reaper.end_descendants(grace=0.5)  # MPI_Abort would leave them to PID 1
        comm.abort(code or 1)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
