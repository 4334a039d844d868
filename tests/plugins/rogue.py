"""Plug-ins that misbehave the ways the third reliability sweep found (each a plain user function)."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
from mpi4py import MPI


def _ok(comm, sendbuf, recvbuf, op):
    comm.Allreduce(sendbuf if sendbuf is not recvbuf else MPI.IN_PLACE, recvbuf, op)


def wrong_between_20000_and_21000(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right everywhere except for 20000 < n < 21000 elements (one of a model's bucket sizes)."""
    _ok(comm, sendbuf, recvbuf, op)
    if 20000 < recvbuf.size < 21000:
        recvbuf[0] += 1


def one_ulp_on_rank1(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Within any tolerance of the right answer, but rank 1's floats are one ulp off rank 0's."""
    _ok(comm, sendbuf, recvbuf, op)
    if comm.Get_rank() == 1 and recvbuf.dtype.kind == "f" and recvbuf.size:
        recvbuf[...] = np.nextafter(recvbuf, np.inf)


_STARTED = []


def starts_thread(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right answer, but the first call starts a (non-daemon) helper thread that never ends."""
    if not _STARTED:
        t = threading.Thread(target=time.sleep, args=(600,), name="rogue-progress")
        t.start()
        _STARTED.append(t)
    _ok(comm, sendbuf, recvbuf, op)


def prints(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right answer, and chatty: a line on stdout per call, from Python and below it."""
    print(f"rogue: allreduce of {recvbuf.size}", flush=True)
    os.write(1, b"rogue: raw write\n")
    _ok(comm, sendbuf, recvbuf, op)


def starts_subprocess(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right answer, but the first call starts a helper process (marked by ROGUE_MARK) it never ends."""
    if not _STARTED:
        mark = os.environ.get("ROGUE_MARK", "rogue")
        _STARTED.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", mark],
                                         start_new_session=True))
    _ok(comm, sendbuf, recvbuf, op)


def reads_stdin(comm, sendbuf, recvbuf, op=MPI.SUM):
    """Right answer, but the first call reads its standard input to the end (a config it expects)."""
    if not _STARTED:
        _STARTED.append(sys.stdin.read())
    _ok(comm, sendbuf, recvbuf, op)
