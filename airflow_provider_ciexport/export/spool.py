"""A segment's rows kept on local disk, so the segment is read once and still counted before sending.

``max_profiles`` must stop an export before anything is sent, which needs the row count first. Counting
with a second read of the source would cost another warehouse scan (and could disagree with the rows
read after it); holding the rows in memory would grow with the segment. The spool writes the chunks
of the one read to an anonymous temporary file (deleted when closed, even if the process dies) and
replays them: memory stays flat, the count is exact, and a segment over the limit stops the read as
soon as it passes the limit.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any

from airflow_provider_ciexport.export.sources.base import Row


class SegmentTooLargeError(Exception):
    """The segment has more rows than allowed; raised by :meth:`RowSpool.fill` as soon as it knows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit:,} rows")
        self.limit = limit


class RowSpool:
    """Chunks of rows written to a temporary file, then read back in the same order.

    :param directory: where the temporary file goes (default: the system's temporary directory).
    """

    def __init__(self, directory: str | None = None) -> None:
        # Closed (and so deleted) by close(); anonymous, so never left behind.
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="ciexport-segment-", dir=directory)  # noqa: SIM115
        self.rows = 0
        self.bytes = 0

    def fill(
        self,
        chunks: Iterable[list[Row]],
        limit: int | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> int:
        """Write every chunk; return the number of rows.

        :param chunks: the rows, in chunks.
        :param limit: raise :class:`SegmentTooLargeError` as soon as more rows than this arrive.
        :param on_chunk: called with the rows spooled so far after each chunk (progress, stop checks).
        """
        dump = pickle.Pickler(self._file, protocol=pickle.HIGHEST_PROTOCOL)
        for chunk in chunks:
            self.rows += len(chunk)
            if limit is not None and self.rows > limit:
                raise SegmentTooLargeError(limit)
            dump.dump(chunk)
            # The memo would otherwise keep every pickled chunk alive.
            dump.clear_memo()
            if on_chunk is not None:
                on_chunk(self.rows)
        self._file.flush()
        self.bytes = self._file.tell()
        return self.rows

    def __iter__(self) -> Iterator[list[Row]]:
        """Read the chunks back, in the order they were written."""
        self._file.seek(0)
        while True:
            # A fresh unpickler per chunk, as the writer clears its memo after each one: from protocol 4
            # on, each object a chunk memoizes takes the next free slot of the reader's memo, so a memo
            # kept from the chunks before would point the next one's back-references at other objects.
            # Only this process's own anonymous file is unpickled: nobody else can write to it.
            try:
                chunk: Any = pickle.Unpickler(self._file).load()  # noqa: S301
            except EOFError:
                return
            yield chunk

    def close(self) -> None:
        """Delete the file."""
        self._file.close()

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
