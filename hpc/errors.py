"""The one exception type users see: printed as a single line, never as a traceback."""


class HpcError(Exception):
    """Bad input or a failed job: `hpc` prints `hpc: error: <message>` and exits non-zero."""

    exit_code = 2
