"""A launch that fails before any rank starts (Open MPI's "PMIx server's listener thread failed to
start", seen now and then on a busy machine) is tried again; any other failure is not. The launcher
here is a real program that prints what prterun prints and exits as prterun does."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

from hpc.launch import mpirun

BANNER = ("--------------------------------------------------------------------------\n"
          "The PMIx server's listener thread failed to start. We cannot\n"
          "continue.\n"
          "--------------------------------------------------------------------------\n")


def launcher(tmp_path: Path, fail_times: int, other: bool = False) -> list[str]:
    """A program that fails like prterun's start-up the first `fail_times` calls, then runs."""
    count = tmp_path / "calls"
    prog = tmp_path / "launcher.py"
    prog.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        p = Path({str(count)!r})
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        if n <= {fail_times}:
            sys.stderr.write({("some other failure of the job" + chr(10)) if other else BANNER!r})
            sys.exit(213)
        print("ranks ran")
    """))
    return [sys.executable, str(prog)]


def calls(tmp_path: Path) -> int:
    return int((tmp_path / "calls").read_text())


def test_a_launch_that_failed_to_start_is_tried_again(tmp_path) -> None:
    log_path = tmp_path / "log"
    with log_path.open("w") as log:
        result = mpirun.run_argv(launcher(tmp_path, 1), timeout=60, log=log)
    assert result.returncode == 0 and calls(tmp_path) == 2
    text = log_path.read_text()
    assert "trying again" in text and text.rstrip().endswith("ranks ran")


def test_a_launch_that_never_starts_ends_with_one_line_saying_so(tmp_path) -> None:
    with (tmp_path / "log").open("w") as log:
        result = mpirun.run_argv(launcher(tmp_path, 99), timeout=60, log=log)
    assert result.returncode == 213 and calls(tmp_path) == mpirun.START_RETRIES + 1
    line = mpirun.describe_failure(result, 2, 60)
    assert line.startswith("the MPI launcher failed to start the job 3 times: The PMIx server's listener")


def test_any_other_failure_is_not_tried_again(tmp_path) -> None:
    with (tmp_path / "log").open("w") as log:
        result = mpirun.run_argv(launcher(tmp_path, 1, other=True), timeout=60, log=log)
    assert result.returncode == 213 and calls(tmp_path) == 1


def test_the_rank_stderr_filter_names_a_start_failure_instead_of_printing_its_banner() -> None:
    out = io.StringIO()
    filt = mpirun._StderrFilter(out)
    filt.pump(io.StringIO(BANNER + "a rank's own line\n"))
    assert filt.start_failure == mpirun.START_FAILURES[0]
    assert out.getvalue() == "a rank's own line\n"
