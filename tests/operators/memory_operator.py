"""The shared export operator with an in-memory destination: the real engine, no HTTP."""

from __future__ import annotations

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
