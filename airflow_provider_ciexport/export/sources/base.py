"""What every segment source shares: one read yielding a header then rows in chunks, and the helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from types import TracebackType
from typing import Any

from airflow_provider_ciexport.core.contacts import column_key
from airflow_provider_ciexport.core.redaction import looks_like_a_header
from airflow_provider_ciexport.exceptions import SegmentSourceError

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Header:
    """What a file source's read yields first.

    :param columns: the columns its rows hold, in row order (only the wanted ones, if asked).
    :param width: how many columns the source has.
    :param names: all its column names when they are known to be names, ``None`` when they may be a
        data row (a CSV file's first line).
    """

    columns: list[str]
    width: int
    names: list[str] | None


class SegmentRows:
    """One pass over a segment: its column names, then its rows in chunks. Close it (or use ``with``).

    :param columns: the column names of the rows, in row order.
    :param chunks: the rows as tuples in ``columns`` order, at most ``chunk_size`` per list.
    :param count: the number of rows when the source knows it without reading them (in-memory
        records, a Parquet file's metadata), else ``None``.
    :param width: how many columns the source has (more than ``columns`` when only the wanted ones
        are kept); by default ``len(columns)``.
    :param names: all the source's column names when known to be names, ``None`` when they may be
        data; by default ``columns``.
    """

    def __init__(
        self,
        columns: list[str],
        chunks: Iterator[list[Row]],
        count: int | None = None,
        *,
        width: int | None = None,
        names: list[str] | tuple[()] | None = (),
    ) -> None:
        self.columns = columns
        self.count = count
        self.width = len(columns) if width is None else width
        self.names: list[str] | None = list(columns) if isinstance(names, tuple) else names
        self._chunks = chunks

    def __iter__(self) -> Iterator[list[Row]]:
        return self._chunks

    def close(self) -> None:
        """Release the cursor or file, even in the middle of the rows."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> SegmentRows:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SegmentSource(ABC):
    """Where a segment's rows come from.

    ``description`` says what the source is for logs and messages, without secrets or personal data
    (``"SQL query on conn 'profiles_db'"``, ``"CSV file vip.csv"``).
    """

    description: str
    _wanted: Callable[[str], bool] | None = None

    def read(self, wanted: Iterable[Any] | None = None) -> SegmentRows:
        """Open the source and read its column names; the rows follow from the same pass.

        :param wanted: the column names the rows are read for (``field_mapping``'s values): a file
            source keeps only the columns that match one exactly or ignoring case and surrounding
            spaces, as each row is read. ``None``: every column.
        :raises SegmentSourceError: if the source cannot be opened or its columns cannot be read.
        """
        self._wanted = None if wanted is None else _WantedColumns(wanted)
        generator = self._read()
        try:
            first = next(generator)
        except BaseException:
            generator.close()
            raise
        if isinstance(first, Header):
            return SegmentRows(first.columns, generator, self._count(), width=first.width, names=first.names)
        return SegmentRows(first, generator, self._count())

    @abstractmethod
    def _read(self) -> Generator[Any, None, None]:
        """Yield the column names (one ``list[str]``), then the rows in chunks (``list[Row]`` each)."""

    def _count(self) -> int | None:
        """The number of rows if known without reading them; called once :meth:`_read` has begun."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"


class _WantedColumns:
    """Whether a column is one of the wanted names, exactly or ignoring case and surrounding spaces."""

    def __init__(self, names: Iterable[Any]) -> None:
        # Not-a-string names are left to the mapping's own check, which says what is wrong.
        self.exact = frozenset(name for name in names if isinstance(name, str))
        self.loose = frozenset(map(column_key, self.exact))
        # JSON Lines asks for the same keys line after line; bounded, as a hostile file's keys are not.
        self._seen: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        found = self._seen.get(name)
        if found is None:
            found = name in self.exact or column_key(name) in self.loose
            if len(self._seen) < 1024:
                self._seen[name] = found
        return found


def column_picker(keep: Sequence[int]) -> Callable[[Sequence[Any]], Row]:
    """A function that takes the values at ``keep`` of a row at least ``keep[-1] + 1`` long, as a tuple."""
    if len(keep) > 1:
        return itemgetter(*keep)
    if keep:
        index = keep[0]
        return lambda row: (row[index],)
    return lambda row: ()


def chunked(rows: Iterator[tuple[Row, int]], size: int, budget: int) -> Iterator[list[Row]]:
    """Rows (each with its size in bytes) in lists of at most ``size`` rows, a list ending once it
    holds ``budget`` bytes: a few huge rows never make a chunk of thousands."""
    while True:
        chunk: list[Row] = []
        held = 0
        for row, nbytes in rows:
            chunk.append(row)
            held += nbytes
            if len(chunk) >= size or held >= budget:
                break
        if not chunk:
            return
        yield chunk


def check_unique_names(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            shown = (
                repr(name)
                if looks_like_a_header(names)
                else "name (not shown: the names look like data; is the first line a data row instead of a header row?)"
            )
            raise SegmentSourceError(
                f"{where} has the column {shown} more than once, so rows cannot be read by name. "
                "Rename or drop the duplicate column."
            )
        seen.add(name)
