"""The garbage collector's state while an export runs."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_frozen = 0
_frozen_lock = threading.Lock()


@contextlib.contextmanager
def steady_collector() -> Iterator[None]:
    """Keep the garbage collector's full collections short while an export runs.

    A task process holds Airflow's own objects, hundreds of thousands of them, and every full
    collection walks them all with every thread stopped: 300-400 ms, once a minute or so, during which
    no call goes out on time. Objects that exist when the export starts live as long as the process
    anyway, so they are frozen out of collections (as Airflow's own executors freeze theirs) until the
    last export of the process ends.
    """
    global _frozen
    with _frozen_lock:
        if _frozen == 0:
            gc.freeze()
        _frozen += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen -= 1
            if _frozen == 0:
                gc.unfreeze()
