"""Busy-loop processes that keep a worker's cores saturated while the bench measures the pace.

``run.py --busy-cores N`` measures the pace on a busy worker, as a production worker running other
tasks is: a stalled or descheduled export bunches its requests. The processes are started by this
module, their pids recorded and printed, and stopped by those pids when the block ends, on an error
too; nothing else is ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: A child that spins until it is told to stop, and stops on its own if the bench dies first (its
#: parent, the bench, is gone: it is re-parented).
SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(100_000): pass\n"


@contextmanager
def busy_cores(count: int) -> Iterator[list[int]]:
    """Run ``count`` busy-loop processes for the block; yield their pids.

    :param count: how many processes (0: none).
    """
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            command = [sys.executable, "-c", SPIN]  # our own interpreter and a fixed loop
            processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))  # noqa: S603
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
