"""The package's shape: layers import only downward, no cycles (function-level imports included),
argparse only in the CLI, the public API resolves, and a built wheel works outside the checkout."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path


from tests.helpers import REPO

# Lower number = lower layer. A module may import its own package or any lower layer.
LAYERS = {
    "hpc.errors": -1, "hpc.env": 0, "hpc.signals": 0, "hpc.units": 1, "hpc.gpu": 1, "hpc.table": 2, "hpc.records": 2, "hpc.comm": 2,
    "hpc.kernels": 3, "hpc.plugins": 4, "hpc.data": 4, "hpc.analysis": 4,
    "hpc.workloads": 5, "hpc.torch": 6, "hpc.launch": 6, "hpc.sweep": 7, "hpc.cli": 8,
    "hpc.horovod_build": 8, "hpc.__main__": 9,
}


def _modules() -> dict[str, Path]:
    """Every module of the installed layout: hpc/** plus kernels/ as hpc.kernels, slurm/ as templates."""
    out: dict[str, Path] = {}
    for root, prefix in ((REPO / "hpc", "hpc"), (REPO / "kernels", "hpc.kernels"),
                         (REPO / "slurm", "hpc.launch.templates")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """hpc modules that `name` imports anywhere in its body (relative imports resolved)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != "hpc" and t != name:
                found.add(t)
    return found


def _layer(name: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layout.py")


def test_layers_import_only_downward() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == "hpc":
            continue  # the lazy public facade re-exports from every layer
        pkg, level = _layer(name)
        for dep in _imports(name, path, modules):
            dpkg, dlevel = _layer(dep)
            if dpkg != pkg and dlevel >= level:
                wrong.append(f"{name} (layer {level}) imports {dep} (layer {dlevel})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items() if n != "hpc"}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_argparse_only_in_the_cli() -> None:
    users = [n for n, p in _modules().items()
             if "argparse" in {a.name for node in ast.walk(ast.parse(p.read_text()))
                               if isinstance(node, ast.Import) for a in node.names}
             and not n.startswith(("hpc.cli", "hpc.kernels.tune", "hpc.horovod_build"))]
    assert not users, f"argparse outside hpc.cli: {users}"


def test_public_api_resolves_lazily() -> None:
    code = ("import sys, hpc\n"
            "assert 'hpc.analysis.scaling' not in sys.modules and 'numpy' not in sys.modules\n"
            "missing = [n for n in hpc.__all__ if getattr(hpc, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert hpc.amdahl_speedup(10, 0.9) == 1 / (0.1 + 0.09)\n"
            "print(len(hpc.__all__))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 15


def test_wheel_installs_kernels_and_templates_inside_hpc(tmp_path: Path) -> None:
    """A non-editable install, used from outside the checkout: verify a built-in and write Slurm scripts."""
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("hpc-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "hpc/kernels/ring.py" in names and "hpc/launch/templates/strong.sbatch" in names
    assert not any(n.startswith(("kernels/", "slurm/")) for n in names), "generic top-level packages"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    deps = Path(sysconfig.get_path("purelib"))  # numpy, mpi4py, rich... without their .pth hooks
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "-q", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ, HPC_MPIEXEC=str(Path(sys.executable).parent / "mpirun"), PYTHONPATH="")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import hpc.kernels; print(hpc.kernels.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=60)
    assert str(site) in where.stdout, where.stdout + where.stderr
    hpc_bin = str(venv / "bin" / "hpc")
    ok = subprocess.run([hpc_bin, "collectives", "verify", "ring", "--np", "2", "--quick"], cwd=outside,
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stdout + ok.stderr
    dry = subprocess.run([hpc_bin, "sweep", "strong", "--np", "1,2", "--launcher", "slurm", "--dry-run",
                          "--out", "s", "bench", "collective", "--sizes", "1KB"], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    scripts = sorted((outside / "s" / "slurm").glob("*.sbatch"))
    assert len(scripts) == 2 and "#SBATCH" in scripts[0].read_text()


def test_every_package_is_in_the_wheel() -> None:
    """setup.cfg lists packages explicitly (kernels/ and slurm/ are mapped into hpc): a new
    subpackage missing from that list would be absent from every non-editable install."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "hpc").rglob("__init__.py")}
    found |= {"hpc.kernels", "hpc.launch.templates"}
    assert found == listed, f"missing from setup.cfg: {sorted(found - listed)}; stale: {sorted(listed - found)}"
