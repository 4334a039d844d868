"""Find a collective by SPEC: a registered name, `pkg.module:func`, `path/file.py:func`, or an entry point.

A plug-in is a plain function `allreduce(comm, sendbuf, recvbuf, op=MPI.SUM) -> None`; it needs
no decorator and no import of hpc.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from hpc.errors import HpcError

ENTRY_POINT_GROUP = "hpc.collectives"


@dataclass(frozen=True)
class Collective:
    """A loaded allreduce: what the user named, where it came from, and the function itself."""

    name: str
    spec: str
    func: Callable = field(repr=False)
    builtin: bool = False
    description: str = ""


def builtins() -> dict[str, tuple[str, str]]:
    """Registered name -> (module:func target, one-line description) for the algorithms in kernels/."""
    from hpc.kernels import BUILTINS

    return dict(BUILTINS)


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Collectives that installed packages declare in the `hpc.collectives` entry-point group."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[tuple[str, str, str]]:
    """(name, target, description) of every collective a SPEC can name, built-ins first."""
    rows = [(n, t, d) for n, (t, d) in builtins().items()]
    rows += [(n, ep.value, f"entry point from {ep.dist.name if ep.dist else '?'}")
             for n, ep in sorted(entry_points().items()) if n not in builtins()]
    return rows


def load(spec: str, servers: int = 0) -> Collective:
    """Resolve SPEC to a checked allreduce; `servers` is bound for algorithms that take it (ps)."""
    spec = spec.strip()
    if not spec:
        raise HpcError("empty collective spec")
    table = builtins()
    if spec in table:
        target, desc = table[spec]
        func = _resolve_target(target, spec)
        coll = Collective(spec, spec, func, builtin=True, description=desc)
    elif ":" in spec:
        coll = Collective(_short_name(spec), spec, _resolve_target(spec, spec))
    elif spec in entry_points():
        try:
            func = entry_points()[spec].load()
        except Exception as exc:  # a broken third-party package: say which and why
            raise HpcError(f"cannot load entry point '{spec}': {type(exc).__name__}: {exc}") from None
        coll = Collective(spec, spec, func)
    else:
        names = ", ".join(n for n, _, _ in available())
        raise HpcError(f"unknown collective '{spec}': use a registered name ({names}), "
                       "package.module:func, path/to/file.py:func, or an hpc.collectives entry point")
    check_signature(coll.func, spec)
    if servers:
        if "servers" not in inspect.signature(coll.func).parameters:
            raise HpcError(f"collective '{spec}' takes no 'servers' option (--servers is for ps)")
        coll = Collective(coll.name, coll.spec, functools.partial(coll.func, servers=servers),
                          coll.builtin, coll.description)
    return coll


def precheck(spec: str) -> None:
    """Catch a SPEC that cannot resolve, without importing anything (the launching parent runs this:
    importing a plug-in there could touch MPI before MPI_Init)."""
    spec = spec.strip()
    if spec in builtins() or spec in entry_points():
        return
    if ":" not in spec:
        load(spec)  # raises the "unknown collective" error
    precheck_callable(spec, "collective")


def _short_name(spec: str) -> str:
    left, func = spec.rsplit(":", 1)
    return f"{Path(left).stem if left.endswith('.py') else left.rsplit('.', 1)[-1]}:{func}"


def _resolve_target(target: str, spec: str) -> Callable:
    """Import `module:func` or `file.py:func` for collective `spec` and return the function."""
    return resolve_callable(target, what="collective", spec=spec)


def resolve_callable(target: str, what: str = "collective", spec: str | None = None) -> Callable:
    """The callable that `package.module:func` or `path/to/file.py:func` names, or a one-line HpcError.

    Shared by every SPEC the suite accepts (collectives, model factories): `what` names the kind in
    error messages, `spec` is what the user typed when `target` is what it resolved to. A file is
    imported once per process under a name derived from its path, so every rank loads the same code.
    """
    spec = target if spec is None else spec
    left, _, attr = target.rpartition(":")
    if not left or not attr:
        raise HpcError(f"bad {what} spec '{spec}': expected module:func or file.py:func")
    path = Path(left)
    try:
        if left.endswith(".py") or "/" in left or path.is_file():
            module = _import_file(path, spec, what)
        else:
            _cwd_on_path()
            module = importlib.import_module(left)
    except HpcError:
        raise
    except ModuleNotFoundError as exc:
        raise HpcError(f"cannot import '{left}' for {what} '{spec}': {exc}") from None
    except Exception as exc:  # the user's module raised while importing
        raise HpcError(f"importing '{left}' for {what} '{spec}' failed: "
                       f"{type(exc).__name__}: {_one_line(exc)}") from None
    func = getattr(module, attr, None)
    if func is None:
        raise HpcError(f"'{left}' has no function '{attr}' ({what} '{spec}')")
    if not callable(func):
        raise HpcError(f"'{left}:{attr}' is not a function ({what} '{spec}')")
    return func


def precheck_callable(target: str, what: str = "collective", spec: str | None = None) -> None:
    """Catch a `module:func` / `file.py:func` that cannot resolve, without importing anything
    (the launching parent runs this: importing user code there could touch MPI before MPI_Init)."""
    spec = target if spec is None else spec
    left, sep, attr = target.rpartition(":")
    if not sep or not left or not attr:
        raise HpcError(f"bad {what} spec '{spec}': expected module:func or file.py:func")
    _cwd_on_path()
    if left.endswith(".py") or "/" in left:
        if not Path(left).is_file():
            raise HpcError(f"{_FILE_KIND.get(what, what + ' file')} not found: {left} ({what} '{spec}')")
        try:  # compile, not import: a syntax error is caught here, nothing of the file runs
            compile(Path(left).read_bytes(), left, "exec")
        except (SyntaxError, ValueError) as exc:
            where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
            raise HpcError(f"cannot load {what} '{spec}': {type(exc).__name__} in {left}{where}: "
                           f"{getattr(exc, 'msg', None) or exc}") from None
    elif importlib.util.find_spec(left.split(".")[0]) is None:
        raise HpcError(f"cannot import '{left}' for {what} '{spec}': no module named "
                       f"'{left.split('.')[0]}'")


_FILE_KIND = {"collective": "plug-in file"}


def _cwd_on_path() -> None:
    """`mymodel:factory` run from mymodel.py's folder resolves, as `python -m` would there (the
    `hpc` script's sys.path does not hold the working directory)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file never shadows one of them


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _import_file(path: Path, spec: str, what: str = "collective"):
    if not path.is_file():
        raise HpcError(f"{_FILE_KIND.get(what, what + ' file')} not found: {path} ({what} '{spec}')")
    resolved = path.resolve()
    name = "hpc_plugin_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    mod_spec = importlib.util.spec_from_file_location(name, resolved)
    if mod_spec is None or mod_spec.loader is None:
        raise HpcError(f"cannot load {path} as Python ({what} '{spec}')")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def check_signature(func: Callable, spec: str) -> None:
    """The plug-in must accept (comm, sendbuf, recvbuf, op) positionally."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins / C functions: cannot inspect, verification will tell
    try:
        sig.bind(None, None, None, None)
    except TypeError:
        raise HpcError(f"collective '{spec}' has signature {sig}; expected "
                       "allreduce(comm, sendbuf, recvbuf, op=MPI.SUM)") from None
