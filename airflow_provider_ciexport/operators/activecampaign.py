"""Export a segment to ActiveCampaign lists through bulk imports."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_ciexport.destinations.activecampaign import ActiveCampaignDestination
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.links import ActiveCampaignListLink, activecampaign_list_url
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator


class ActiveCampaignSegmentExportOperator(BaseSegmentExportOperator):
    """Export a segment to one or more ActiveCampaign lists.

    Contacts are validated and deduplicated, then sent in bulk imports of up to 250 contacts at the
    rate ActiveCampaign allows (100 imports a minute), each followed to completion. Segments of at most
    10 valid contacts (and no tags) go through contact sync instead. Before anything is sent, every list
    and custom field is checked.

    :param list_id: the list id (the number in the list's URL), or several. Templated.
    :param field_mapping: ActiveCampaign attribute -> source column: ``email`` (required),
        ``first_name``, ``last_name``, ``phone``, ``customer_acct_name``, and custom fields as
        ``field:<id or personalization tag>``. Templated.
    :param tags: tags to add to every exported contact. Templated.
    :param activecampaign_conn_id: the ``activecampaign`` connection.

    The source and run parameters are those of :class:`~airflow_provider_ciexport.operators.base.BaseSegmentExportOperator`.
    """

    template_fields: Sequence[str] = (*BaseSegmentExportOperator.template_fields, "tags")
    ui_color = "#cfe3ff"
    operator_extra_links = (ActiveCampaignListLink(),)

    def __init__(
        self,
        *,
        tags: Sequence[str] | str | None = None,
        activecampaign_conn_id: str = ActiveCampaignHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tags = tags
        self.activecampaign_conn_id = activecampaign_conn_id

    @cached_property
    def hook(self) -> ActiveCampaignHook:
        """The hook of ``activecampaign_conn_id``."""
        return ActiveCampaignHook(self.activecampaign_conn_id)

    def get_destination(self) -> ActiveCampaignDestination:
        """The destination for the rendered ``list_id`` and ``tags`` (a comma-separated string works)."""
        tags = self.tags or []
        return ActiveCampaignDestination(
            self.hook, self.list_ids(), tags.split(",") if isinstance(tags, str) else list(tags)
        )

    def get_list_url(self, destination: Destination) -> str | None:
        """The account's contacts filtered by the target list, at ``<account>.activehosted.com``."""
        return activecampaign_list_url(self.hook.api_base_url, list(destination.list_ids))

    def get_lineage_namespace(self) -> str:
        """``activecampaign://<account API host>``."""
        return f"activecampaign://{urlsplit(self.hook.api_base_url).netloc}"
