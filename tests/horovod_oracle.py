"""Run Horovod's own PyTorch test suite (test/parallel/test_torch.py of Horovod 0.28.1) against real
Horovod or against hpc.torch, on 2 MPI ranks, and count the outcome of every test.

Horovod's code is not part of this repository: point HPC_HOROVOD_TESTS (or --tests) at a checkout's
`test/parallel/test_torch.py` (its `test/utils/common.py` is used too), e.g.

    git --git-dir=HOROVOD.git archive v0.28.1 test/parallel/test_torch.py test/utils | tar x -C /tmp/hvd
    HPC_HOROVOD_TESTS=/tmp/hvd/test/parallel/test_torch.py python tests/horovod_oracle.py --impl hpc

The only edit for `--impl hpc` is the one a user makes: `import horovod.torch as hvd` becomes
`import hpc.torch as hvd`. The hpc run also puts a stand-in `horovod` package first on the path that
holds only `horovod.runner.util.threads.in_thread` (all that common.py imports), so nothing of real
Horovod can be used by accident; PyPI `mock` (imported by common.py) is `unittest.mock`.

A hanging or crashing test ends the whole mpirun (pytest-timeout ends the rank): its outcome is
recorded as `timeout`/`crash` and the run restarts with the tests after it. `--isolate` runs every
test in its own mpirun (slower, no test can disturb the next).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPORT_LINE = "import horovod.torch as hvd\n"
HPC_IMPORT = "import hpc.torch as hvd\n"
_TEST_DEF = re.compile(r"^    def (test_\w+)\(self\)", re.M)
# Tests that leave state behind for the rest of the process: this one registers two process sets and
# never removes them, so a later add_process_set of the same ranks is refused (by Horovod too). The
# runner starts a fresh mpirun after it.
LEAKY = ("test_process_set_barrier_op",)

# pytest plugin written next to the copied suite: one JSON line per test phase and rank, flushed at
# once, so a rank killed mid-test still leaves what finished before.
_PLUGIN = '''
import json, os

_out = None


def _write(rec):
    global _out
    if _out is None:
        rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or "0"
        _out = open(os.path.join(os.environ["ORACLE_OUT"], f"rank{rank}.jsonl"), "a")
    _out.write(json.dumps(rec) + "\\n")
    _out.flush()


def pytest_runtest_logstart(nodeid, location):
    _write({"test": nodeid.split("::")[-1], "event": "start"})


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        msg = ""
        if report.outcome != "passed":
            msg = str(report.longrepr)[-1500:] if report.longrepr else ""
        _write({"test": report.nodeid.split("::")[-1], "event": report.when, "outcome": report.outcome,
                "message": msg})
'''

_IN_THREAD = '''
import threading


def in_thread(target, args=(), name=None, daemon=True, silent=False):
    """Stand-in for horovod.runner.util.threads.in_thread (same behaviour)."""
    if silent:
        def fn(*a):
            try:
                target(*a)
            except Exception:
                pass
    else:
        fn = target
    bg = threading.Thread(target=fn, args=args, name=name, daemon=daemon)
    bg.start()
    return bg
'''


def locate(path: str | None = None) -> Path | None:
    """The suite file from `path` or HPC_HOROVOD_TESTS, or None when neither names an existing file."""
    path = path or os.environ.get("HPC_HOROVOD_TESTS")
    if not path:
        return None
    p = Path(path)
    return p if p.is_file() and (p.parent.parent / "utils" / "common.py").is_file() else None


def test_names(suite: Path) -> list[str]:
    return _TEST_DEF.findall(suite.read_text())


def prepare(suite: Path, impl: str, work: Path) -> Path:
    """Copy the suite into `work` (layout test/parallel + test/utils), changed only as a user would."""
    text = suite.read_text()
    if text.count(IMPORT_LINE) != 1:
        raise SystemExit(f"{suite}: expected exactly one line {IMPORT_LINE.strip()!r}")
    if impl == "hpc":
        text = text.replace(IMPORT_LINE, HPC_IMPORT)
    (work / "parallel").mkdir(parents=True)
    (work / "utils").mkdir()
    (work / "parallel" / "test_torch.py").write_text(text)
    shutil.copy(suite.parent.parent / "utils" / "common.py", work / "utils" / "common.py")
    shim = work / "shim"
    shim.mkdir()
    (shim / "oracle_plugin.py").write_text(_PLUGIN)
    (shim / "mock.py").write_text("from unittest.mock import *  # noqa: F401,F403  (PyPI mock's API)\n")
    if impl == "hpc":
        pkg = shim / "horovod" / "runner" / "util"
        pkg.mkdir(parents=True)
        for d in (shim / "horovod", shim / "horovod" / "runner", pkg):
            (d / "__init__.py").write_text("")
        (pkg / "threads.py").write_text(_IN_THREAD)
    return work / "parallel" / "test_torch.py"


def _mpirun(np: int) -> list[str]:
    from hpc.launch.mpirun import find_mpiexec, mpirun_argv

    extra = ["--bind-to", "none"] if find_mpiexec().flavour == "openmpi" else []
    return mpirun_argv(np, [], extra=extra)


def _run_batch(script: Path, tests: list[str], out: Path, np: int, timeout: float, env: dict) -> None:
    ids = [f"{script}::TorchTests::{t}" for t in tests]
    cmd = _mpirun(np) + [sys.executable, "-m", "pytest", "-q", "-p", "oracle_plugin", "-p", "no:cacheprovider",
                         "--timeout", str(int(timeout)), "-o", "timeout_method=thread", *ids]
    budget = timeout * len(tests) + 120
    with open(out / "mpirun.log", "w") as log:
        try:
            subprocess.run(cmd, cwd=script.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                           timeout=budget, start_new_session=True)
        except subprocess.TimeoutExpired:
            pass


def _read(out: Path, np: int) -> dict[str, dict[int, dict]]:
    """test -> rank -> {"started": bool, "outcome": ..., "message": ...} from the ranks' JSON lines."""
    seen: dict[str, dict[int, dict]] = {}
    for r in range(np):
        f = out / f"rank{r}.jsonl"
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            slot = seen.setdefault(rec["test"], {}).setdefault(r, {"started": True})
            if rec["event"] != "start":
                if slot.get("outcome") in (None, "passed"):  # a failed phase wins over a passed one
                    slot["outcome"], slot["message"] = rec["outcome"], rec["message"]
    return seen


def combine(per_rank: dict[int, dict], np: int) -> tuple[str, str]:
    """One outcome for a test from every rank's: passed/skipped only when all ranks agree."""
    outs = [per_rank.get(r, {}).get("outcome") for r in range(np)]
    if all(o == "passed" for o in outs):
        return "passed", ""
    if all(o == "skipped" for o in outs):
        return "skipped", _short(per_rank[0].get("message", ""))
    if any(o == "failed" for o in outs):
        r = next(r for r in range(np) if outs[r] == "failed")
        return "failed", f"rank {r}: {_short(per_rank[r].get('message', ''))}"
    return "timeout/crash", f"ranks with no result: {[r for r in range(np) if outs[r] is None]}"


def _short(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    keep = [ln for ln in lines if ln.startswith("E ") or "Error" in ln or "Skipped" in ln]
    return (keep[-1] if keep else (lines[-1] if lines else ""))[:300]


def _tail(log: Path, n: int = 600) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(" ")]
    return " / ".join(lines[-6:])[-n:]


def run(suite: Path, impl: str, np: int = 2, timeout: float = 120, only: list[str] | None = None,
        isolate: bool = False, log=print, keep_logs: bool = True) -> dict[str, tuple[str, str]]:
    """Run the suite (or `only` those tests) with `impl` ("horovod" or "hpc"); test -> (outcome, why)."""
    names = test_names(suite)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise SystemExit(f"not in the suite: {', '.join(unknown)}")
        names = [n for n in names if n in only]
    results: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix=f"hvd-oracle-{impl}-") as tmp:
        work = Path(tmp)
        script = prepare(suite, impl, work / "test")
        shim = work / "test" / "shim"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), str(REPO)]), PYTHONDONTWRITEBYTECODE="1")
        for var in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "HPC_INSIDE_MPI"):
            env.pop(var, None)
        todo = list(names)
        attempt = 0
        while todo:
            attempt += 1
            out = work / f"out{attempt}"
            out.mkdir()
            env["ORACLE_OUT"] = str(out)
            batch = todo[:1] if isolate else todo
            cut = [i for i, t in enumerate(batch) if t in LEAKY]
            if cut:
                batch = batch[:cut[0] + 1]
            t0 = time.monotonic()
            _run_batch(script, batch, out, np, timeout, env)
            seen = _read(out, np)
            done = [t for t in batch if t in seen]
            for t in done:
                results[t] = combine(seen[t], np)
                if results[t][0] == "timeout/crash" and keep_logs:
                    results[t] = (results[t][0], results[t][1] + " | " + _tail(out / "mpirun.log"))
                log(f"{impl}: {t}: {results[t][0]}" + (f" ({results[t][1]})" if results[t][1] and
                                                      results[t][0] != "passed" else ""))
            if not done:  # nothing started: the job could not even start; record and stop
                for t in batch:
                    results[t] = ("timeout/crash", f"the job ended before any test ran ({time.monotonic() - t0:.0f} s)")
                todo = [t for t in todo if t not in batch]
                continue
            last = done[-1]
            todo = todo[todo.index(last) + 1:]
    return results


def summary(results: dict[str, tuple[str, str]]) -> Counter:
    return Counter(o for o, _ in results.values())


def _tidy(why: str) -> str:
    """A reason as a table cell: no temp paths, no site-packages prefix, no pipes."""
    why = re.sub(r"\('?/tmp/hvd-oracle-[^']*'?, \d+, '?(.*?)'?\)", r"\1", why)
    why = re.sub(r"\S*site-packages/", "", why).replace("|", "/")
    if "_muon.py" in why:
        why += " (torch 2.13's Muon takes 2-D parameters only; the test builds every torch.optim class)"
    return why


def markdown(results: dict[str, dict[str, list[str]]], command: str) -> str:
    """results/horovod-oracle.md: counts per implementation and every test's outcome under each."""
    import platform

    import torch

    impls = [i for i in ("horovod", "hpc") if i in results]
    names = {"horovod": "Horovod 0.28.1", "hpc": "hpc.torch"}
    tests = list(results[impls[0]])
    lines = ["# Horovod's own PyTorch tests: real Horovod vs hpc.torch", "",
             "`test/parallel/test_torch.py` of Horovod 0.28.1 (github:horovod/horovod, tag v0.28.1), "
             f"{len(tests)} tests, 2 ranks under mpirun, every test in its own mpirun unless noted; for "
             "hpc.torch the only change is `import horovod.torch as hvd` -> `import hpc.torch as hvd`.",
             f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
             f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.", "",
             f"    {command}", ""]
    for impl in impls:
        counts = summary({t: tuple(v) for t, v in results[impl].items()})
        lines.append(f"- {names[impl]}: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))
    lines += ["", "| test | " + " | ".join(names[i] for i in impls) + " | why (when not passed) |",
              "|---|" + "---|" * len(impls) + "---|"]
    for t in tests:
        outs = [results[i].get(t, ["missing", ""]) for i in impls]
        why = "; ".join(dict.fromkeys(_tidy(o[1]) for o in outs if o[0] != "passed" and o[1]))
        lines.append(f"| {t} | " + " | ".join(o[0] for o in outs) + f" | {why[:160]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", help="Horovod's test/parallel/test_torch.py (default: $HPC_HOROVOD_TESTS)")
    ap.add_argument("--impl", choices=("hpc", "horovod"), action="append",
                    help="implementation(s) to run (default: both)")
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per test")
    ap.add_argument("--only", help="comma-separated test names")
    ap.add_argument("--isolate", action="store_true", help="one mpirun per test")
    ap.add_argument("--json", help="write {impl: {test: [outcome, why]}} here")
    ap.add_argument("--markdown", help="write a table of every test's outcome per implementation here")
    ap.add_argument("--from-json", help="only turn an earlier --json file into --markdown")
    args = ap.parse_args(argv)
    if args.from_json:
        Path(args.markdown).write_text(markdown(json.loads(Path(args.from_json).read_text()),
                                                "python tests/horovod_oracle.py " + " ".join(argv or sys.argv[1:])))
        return 0
    suite = locate(args.tests)
    if suite is None:
        print("hpc: error: Horovod's test/parallel/test_torch.py not found: set HPC_HOROVOD_TESTS or --tests "
              "(with test/utils/common.py beside it)", file=sys.stderr)
        return 2
    only = [t.strip() for t in args.only.split(",")] if args.only else None
    everything = {}
    for impl in args.impl or ["horovod", "hpc"]:
        t0 = time.monotonic()
        res = run(suite, impl, args.np, args.timeout, only, args.isolate)
        everything[impl] = {t: list(v) for t, v in res.items()}
        print(f"{impl}: {dict(summary(res))} in {time.monotonic() - t0:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, sort_keys=True))
    if args.markdown:
        Path(args.markdown).write_text(markdown(everything, "python tests/horovod_oracle.py " +
                                                " ".join(argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
