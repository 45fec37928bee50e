"""The process's memory housekeeping while an export runs: the garbage collector and the C heap."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Callable, Iterator
from functools import partial

from airflow_provider_ciexport.export.progress import Ticker

_frozen = 0
_frozen_lock = threading.Lock()
#: How often an export gives the C heap's free pages back to the OS (each time takes about a
#: millisecond).
TRIM_INTERVAL_S = 2.0


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


def malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or ``None`` where it has none (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def returning_free_memory(interval_s: float = TRIM_INTERVAL_S) -> Iterator[None]:
    """Give the C heap's free pages back to the OS every ``interval_s`` while an export runs.

    An export grows large arrays (the state's new entries, its address sets) while thousands of
    request bodies come and go. glibc keeps what such growth frees inside its heap, in holes between
    live blocks that it never hands back by itself: at a million contacts some 45 MB more of the
    worker's memory than the export uses. ``malloc_trim`` hands those pages back; elsewhere (no glibc)
    this does nothing.
    """
    trim = malloc_trim()
    if trim is None:
        yield
        return
    try:
        with Ticker(interval_s, partial(trim, 0), period_s=interval_s, name="ciexport-heap-trim"):
            yield
    finally:
        trim(0)
