"""sbatch scripts from templates: fill the strong/weak templates (shipped as `hpc.launch.templates`, or
a user's own file), quote every value for the shell, drop optional lines left unset, write the script.

Pure text work, no Slurm needed (so `hpc sweep --dry-run` works anywhere); hpc.launch.slurm submits.
"""

from __future__ import annotations

import os
import re
import shlex
import string
import sys
from pathlib import Path
from typing import Mapping

from hpc.errors import HpcError

# Template values that may be left unset: their `#SBATCH` line is then dropped.
OPTIONAL_SBATCH = ("time", "partition", "account", "error", "output")
# Body values that may be empty: a line holding only such a placeholder is then dropped.
OPTIONAL_BODY = ("sbatch_lines", "before", "wrap", "mpirun_flags")


class SbatchTemplate(string.Template):
    """`${lowercase}` placeholders only: `$VAR`, `${VAR}` and `${ARR[@]}` stay shell syntax; `$${x}` escapes."""

    flags = 0
    pattern = r"""
        \$(?:
          (?P<escaped>\$)(?=\{) |
          \{(?P<braced>[a-z_][a-z0-9_]*)\} |
          (?P<named>(?!)) |
          (?P<invalid>(?!))
        )"""


def load_template(name_or_path: str) -> str:
    """Text of a template: `strong` / `weak` (shipped as `hpc.launch.templates`) or a file path."""
    path = Path(name_or_path)
    try:
        if not path.exists() and re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path):
            from importlib.resources import files

            return (files("hpc.launch.templates") / f"{name_or_path}.sbatch").read_text()
        return path.read_text()
    except OSError as exc:
        raise HpcError(f"cannot read sbatch template {name_or_path!r}: {exc.strerror or exc}") from None


def default_mpirun() -> str:
    """Absolute path of the mpirun local runs use too ($HPC_MPIEXEC, this venv's, then PATH)."""
    from hpc.launch.mpirun import find_mpiexec

    try:
        return find_mpiexec().path
    except HpcError:
        return str(Path(sys.executable).parent / "mpirun")


def render(template: str, **values: object) -> str:
    """Fill an sbatch template (text, or a name/path as for `load_template`) and return the script.

    Values: job_name, nodes, ntasks_per_node, command (str or argv list) are required; time,
    partition, account, output, error are optional (their #SBATCH line is dropped when unset);
    workdir (default: cwd), env (mapping -> `export K=V` lines), launcher (mpirun|srun, default
    mpirun), mpirun (default: this venv's), mpirun_flags (extra mpirun arguments, str or list),
    sbatch_lines (extra `#SBATCH ...` lines), before (shell commands run before the launch; the job
    stops if one fails), wrap (a command prefix the launch runs under). Paths are made absolute.
    """
    text = template if "\n" in template else load_template(template)
    if not SbatchTemplate(text).is_valid():
        raise HpcError("sbatch template has a malformed placeholder (use ${lowercase_name}; $${...} for a literal)")
    vals = _template_values(values)
    unknown = sorted(set(values) - set(SbatchTemplate(text).get_identifiers()))
    if unknown:
        raise HpcError(f"sbatch template has no placeholder for: {', '.join(unknown)}")

    kept = []
    for line in text.splitlines(keepends=True):
        names = SbatchTemplate(line).get_identifiers()
        if (len(names) == 1 and names[0] in OPTIONAL_BODY and not vals.get(names[0])
                and line.strip() == f"${{{names[0]}}}"):
            continue  # an empty optional block (no extra #SBATCH lines, no --before commands)
        if line.startswith("#SBATCH"):
            if any(n in OPTIONAL_SBATCH and vals.get(n) in (None, "") for n in names):
                continue  # an optional option left unset: let Slurm's default apply
            for n in names:
                if re.search(r"\s", str(vals.get(n, ""))):
                    raise HpcError(f"sbatch option {n}={vals[n]!r} must not contain spaces")
        kept.append(line)
    script = "".join(kept)
    missing = sorted(n for n in SbatchTemplate(script).get_identifiers()
                     if vals.get(n) in (None, "") and n not in OPTIONAL_BODY)
    if missing:
        raise HpcError(f"sbatch template needs a value for: {', '.join(missing)}")
    return SbatchTemplate(script).substitute({k: str(v) for k, v in vals.items() if v is not None})


def _template_values(values: Mapping[str, object]) -> dict[str, object]:
    """Defaults, checks and shell quoting for `render`'s values."""
    # No --oversubscribe/--bind-to none here: the template adds them at run time, only on nodes that
    # get more ranks than they have cores.
    vals: dict[str, object] = {"launcher": "mpirun", "mpirun_flags": "", "time": None, "partition": None,
                               "account": None, "output": None, "error": None, "sbatch_lines": "",
                               "before": "", "wrap": ""}
    vals.update(values)
    flags = vals.get("mpirun_flags")
    if isinstance(flags, (list, tuple)):
        vals["mpirun_flags"] = shlex.join(str(f) for f in flags)
    lines = vals.get("sbatch_lines")
    if isinstance(lines, (list, tuple)):
        lines = "\n".join(str(ln) for ln in lines)
    for ln in str(lines or "").splitlines():
        if not ln.startswith("#SBATCH "):
            raise HpcError(f"extra sbatch line {ln!r} must start with '#SBATCH '")
    vals["sbatch_lines"] = lines or ""
    before = vals.get("before")
    if isinstance(before, (list, tuple)):
        before = "\n".join(_guarded(str(cmd)) for cmd in before)
    vals["before"] = before or ""
    for key in ("nodes", "ntasks_per_node"):
        if key in values:
            try:
                n = int(values[key])  # type: ignore[call-overload]
            except (TypeError, ValueError):
                n = 0
            if n < 1 or str(values[key]).strip() != str(n):
                raise HpcError(f"{key} must be a positive integer, got {values[key]!r}")
            vals[key] = n
    if vals["launcher"] not in ("mpirun", "srun"):
        raise HpcError(f"launcher must be mpirun or srun, got {vals['launcher']!r}")
    workdir = Path(str(vals.get("workdir") or os.getcwd())).expanduser().resolve()
    vals["workdir"] = str(workdir)
    for key in ("output", "error"):
        if vals.get(key):
            vals[key] = str(workdir / Path(str(vals[key])).expanduser())
    vals["mpirun"] = shlex.quote(str(vals.get("mpirun") or default_mpirun()))
    command = vals.get("command")
    if isinstance(command, (list, tuple)):
        vals["command"] = shlex.join(str(c) for c in command)
    env = vals.get("env") or {}
    if isinstance(env, Mapping):
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise HpcError(f"not a valid environment variable name: {key!r}")
        env = "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in env.items())
    vals["env"] = env or "# (no extra environment)"
    return vals


def _guarded(cmd: str) -> str:
    """A --before command that stops the job with a clear line when it fails (a missing module...)."""
    if "\n" in cmd or not cmd.strip():
        raise HpcError(f"a command before the launch must be one non-empty line, got {cmd!r}")
    msg = shlex.quote(f"hpc: error: command before the launch failed: {cmd}")
    return f"{{ {cmd}\n}} || {{ echo {msg} >&2; exit 1; }}"


def write_script(path: str | os.PathLike, text: str) -> Path:
    """Write a rendered script (mode 755) and return its absolute path."""
    p = Path(path).expanduser().resolve()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o755)
    except OSError as exc:
        raise HpcError(f"cannot write sbatch script {p}: {exc.strerror or exc}") from None
    return p


