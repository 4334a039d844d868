"""hpc.torch's exception types: Horovod's, so `except RuntimeError` / `except hvd.HorovodInternalError`
in a user's script catches the same failures under hpc.torch as under Horovod."""

from __future__ import annotations

from hpc.errors import HpcError


class HorovodInternalError(HpcError, RuntimeError):
    """A collective failed on this rank (ranks disagree on a tensor, a rank shut down, ...): raised on
    every rank taking part, as Horovod's HorovodInternalError (a RuntimeError)."""


class NotInitializedError(HpcError, ValueError):
    """hpc.torch used before init() (a ValueError, as Horovod raises)."""
