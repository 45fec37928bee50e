"""Export a segment to Constant Contact lists through JSON imports."""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_ciexport.destinations.constantcontact import ConstantContactDestination
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.links import ConstantContactListLink, constantcontact_list_url
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator


class ConstantContactSegmentExportOperator(BaseSegmentExportOperator):
    """Export a segment to one or more Constant Contact lists.

    Contacts are validated and deduplicated, then sent in JSON imports of fewer than 40,000 contacts
    and under 4 MB each, every import followed to its end. Before anything is sent, every list and
    custom field is checked.

    :param list_id: the list's UUID, or a list of up to 50. Templated.
    :param field_mapping: Constant Contact attribute -> source column: ``email`` (required),
        ``first_name``, ``last_name``, ``phone``, ``job_title``, ``company_name`` and the API's other
        import attributes, and custom fields as ``cf:<name>`` (at most 25). Templated.
    :param constantcontact_conn_id: the ``constantcontact`` connection.

    The source and run parameters are those of :class:`~airflow_provider_ciexport.operators.base.BaseSegmentExportOperator`.
    """

    ui_color = "#ffe2c6"
    operator_extra_links = (ConstantContactListLink(),)

    def __init__(
        self,
        *,
        constantcontact_conn_id: str = ConstantContactHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.constantcontact_conn_id = constantcontact_conn_id

    @cached_property
    def hook(self) -> ConstantContactHook:
        """The hook of ``constantcontact_conn_id``."""
        return ConstantContactHook(self.constantcontact_conn_id)

    def get_destination(self) -> ConstantContactDestination:
        """The destination for the rendered ``list_id``."""
        return ConstantContactDestination(self.hook, self.list_ids())

    def get_list_url(self, destination: Destination) -> str | None:
        """The target list's page in the Constant Contact app."""
        return constantcontact_list_url(self.hook.api_base_url, list(destination.list_ids))

    def get_lineage_namespace(self) -> str:
        """``constantcontact://<API host>`` (list ids are UUIDs, unique across accounts)."""
        return f"constantcontact://{urlsplit(self.hook.api_base_url).netloc}"
