"""QEMU processes: started in their own session, killed with their parent, never left behind.

The child runs no Python between fork and exec (no ``preexec_fn``: with threads in the
parent, as under xdist, that can deadlock). "Die with the parent" comes from util-linux's
``setpriv --pdeathsig KILL`` as an argv prefix: it sets PR_SET_PDEATHSIG and execs QEMU
(same PID), so even a SIGKILLed xcpimg takes its VMs with it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from typing import Any

from ..run import which

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def die_with_parent_prefix() -> list[str]:
    """The argv prefix that makes a program get SIGKILL when its parent dies."""
    return [which("setpriv"), "--pdeathsig", "KILL", "--"]


def spawn(argv: list[str], stderr: Any) -> subprocess.Popen[bytes]:
    """Start *argv* (QEMU) in its own session (Ctrl-C on the terminal goes to us, not to it),
    killed if we die, tracked so that atexit kills it too. stdout and stderr go to *stderr*."""
    proc = subprocess.Popen([*die_with_parent_prefix(), *argv], stdin=subprocess.DEVNULL, stdout=stderr,
                            stderr=stderr, start_new_session=True)
    _LIVE[proc.pid] = proc
    return proc


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of *proc* (its own session) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    _LIVE.pop(proc.pid, None)


def live() -> list[int]:
    """PIDs of the processes spawned here that were not yet reaped."""
    return list(_LIVE)


@atexit.register
def _kill_all() -> None:
    for proc in list(_LIVE.values()):
        kill_group(proc)
