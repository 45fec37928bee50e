"""Bytes appended in order and read back by range, held on local disk once they grow large.

A sync state collects the addresses of the contacts new to it while the export runs (some 30 bytes
each: 30 MB for a million) and needs them only when the state is written. Kept in memory they are
the largest thing a first sync holds when it peaks; on local disk, like the segment's rows (see
:mod:`.spool`), they cost the export a read per address when the state is written and no memory.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Bytes kept in memory before they move to a temporary file: a small state (a partial state's
#: claims, a small segment) never touches the disk.
IN_MEMORY_MAX = 1 << 20
#: Appended bytes gathered before each write to the file.
WRITE_BUFFER = 256 * 1024


class SpilledBytes:
    """Bytes appended in order, read back by ``(start, stop)``; past ``in_memory_max`` bytes they
    live in an anonymous temporary file (deleted when closed, even if the process dies), closed
    when this object is collected.

    A temporary file that cannot be made or written (a full disk) leaves every byte in memory from
    then on, with a warning: more memory, nothing lost.

    Not thread-safe: the caller serialises appends and reads.

    :param in_memory_max: bytes held in memory before moving to the file (default
        :data:`IN_MEMORY_MAX`).
    """

    def __init__(self, in_memory_max: int | None = None) -> None:
        self._in_memory_max = IN_MEMORY_MAX if in_memory_max is None else in_memory_max
        # In memory: every byte so far; once on file: the bytes not written to it yet.
        self._buffer = bytearray()
        self._fd = -1
        self._written = 0
        self._close: Callable[[], object] = lambda: None

    def __len__(self) -> int:
        return self._written + len(self._buffer)

    @property
    def on_disk(self) -> bool:
        """Whether the bytes moved to the temporary file."""
        return self._fd >= 0

    def append(self, data: bytes) -> None:
        """Add ``data`` at the end."""
        self._buffer += data
        if self._fd < 0:
            if len(self._buffer) > self._in_memory_max:
                self._spill()
        elif len(self._buffer) >= WRITE_BUFFER:
            self._flush()

    def read(self, start: int, stop: int) -> bytes | memoryview:
        """The bytes from ``start`` to ``stop`` (offsets into everything appended)."""
        if self._fd >= 0 and stop > self._written:
            self._flush()
        if self._fd < 0:  # never spilled, or back in memory after a failed write
            return memoryview(self._buffer)[start:stop]
        return os.pread(self._fd, stop - start, start)

    def _spill(self) -> None:
        try:
            file = tempfile.TemporaryFile(prefix="ciexport-new-emails-", buffering=0)  # noqa: SIM115
        except OSError as exc:
            self._stay_in_memory(exc)
            return
        self._fd = file.fileno()
        # Closed with this object (or when its bytes go back to memory).
        self._close = weakref.finalize(self, file.close)
        self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buffer)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            view.release()
            self._stay_in_memory(exc)
            return
        self._written += len(self._buffer)
        self._buffer = bytearray()

    def _stay_in_memory(self, exc: OSError) -> None:
        # The error's text only: a path could name the worker's folders, never the bytes.
        log.warning(
            "Could not keep the new contacts' addresses on local disk (%s); they stay in memory "
            "(some 30 MB a million contacts). Free space in the worker's temporary directory (TMPDIR).",
            exc.strerror or type(exc).__name__,
        )
        if self._fd >= 0:
            # What the file holds before this flush; the buffer still holds the rest.
            self._buffer[:0] = os.pread(self._fd, self._written, 0)
            self._close()
            self._fd, self._written = -1, 0
        self._in_memory_max = sys.maxsize
