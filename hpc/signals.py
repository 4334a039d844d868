"""SIGTERM as Ctrl-C, without ever being lost.

The `hpc` command turns SIGTERM into KeyboardInterrupt so that `finally` blocks remove temp files and
kill launched jobs. But Python runs a signal handler between any two bytecodes, also inside a weakref
or finaliser callback (h5py closes its objects in those), and an exception raised there is printed as
"Exception ignored" and dropped: `hpc data make` then renamed its file into place and exited 0
(2 SIGTERMs in 13 were swallowed that way). So the handler also records the signal, and code about to
commit a result (rename a file into place, exit 0) calls `check()`, which raises again.
"""

from __future__ import annotations

import signal
import threading

_received: list[int] = []


def _on_term(signum: int, frame: object) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """SIGTERM unwinds like Ctrl-C (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_term)


def received() -> bool:
    """True once SIGTERM has arrived in this process (even if its KeyboardInterrupt was swallowed)."""
    return bool(_received)


def check() -> None:
    """Raise KeyboardInterrupt if SIGTERM arrived: call before committing a result."""
    if _received:
        raise KeyboardInterrupt
