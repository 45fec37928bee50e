"""The records segment source: rows given in memory as mappings."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.sources.base import SegmentSource


class RecordsSegmentSource(SegmentSource):
    """Rows given in memory as mappings (e.g. from XCom).

    The columns are the union of the keys of all records, in first-seen order; a missing key reads as
    ``None``.

    :param records: the rows.
    :param chunk_size: rows per chunk.
    :raises ExportConfigurationError: if a record is not a mapping.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], chunk_size: int = 5000) -> None:
        self.records = records
        self.chunk_size = chunk_size
        self.description = f"{len(records)} in-memory records"
        keys: dict[str, None] = {}
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise ExportConfigurationError(
                    f"records[{i}] is a {type(record).__name__}, not a mapping. Pass records as a list "
                    "of dicts, one per contact."
                )
            keys.update(dict.fromkeys(record))
        self._columns = [str(key) for key in keys]
        self._keys = list(keys)

    def _read(self) -> Generator[Any, None, None]:
        """The union of the records' keys, then the records' values in that order."""
        yield list(self._columns)
        keys = self._keys
        size = self.chunk_size
        for start in range(0, len(self.records), size):
            yield [tuple(map(record.get, keys)) for record in self.records[start : start + size]]

    def _count(self) -> int:
        """The number of records."""
        return len(self.records)
