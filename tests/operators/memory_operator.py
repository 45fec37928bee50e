"""The shared export operator with an in-memory destination: the real engine, no HTTP."""

from __future__ import annotations

from typing import Any

from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator
from tests.export.fakes import FakeDestination


class MemoryOperator(BaseSegmentExportOperator):
    """:class:`BaseSegmentExportOperator` exporting to ``destination`` (set it before running)."""

    destination: FakeDestination

    def get_destination(self) -> Destination:
        return self.destination

    def get_list_url(self, destination: Destination) -> str | None:
        return None

    def get_lineage_namespace(self) -> str:
        return "fake://account"


#: The source columns the memory operator's tests map.
MAPPING = {"email": "email", "first_name": "first"}


def memory_export(
    records: list[dict[str, Any]], destination: FakeDestination | None = None, **kwargs: Any
) -> MemoryOperator:
    """A :class:`MemoryOperator` for ``records`` (mapped by :data:`MAPPING`) exporting to
    ``destination`` (a fresh :class:`FakeDestination` by default); ``kwargs`` are operator parameters."""
    params: dict[str, Any] = {"task_id": "export", "list_id": "L1", "field_mapping": MAPPING, **kwargs}
    operator = MemoryOperator(records=records, **params)
    operator.destination = destination if destination is not None else FakeDestination()
    return operator
