"""Operator extra links: each export task links to its target list in the vendor's app.

Airflow calls :meth:`BaseOperatorLink.get_link` on the worker when the task ends and stores the URL
(XCom ``_link_<class name>``); the UI reads it from there. An export that got far enough to know its
lists sets ``operator.list_url``; a task that never ran, or failed before that, simply has no link.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

from airflow_provider_ciexport.core.urls import loopback_origin

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

AC_APP_DOMAIN = "activehosted.com"
CC_APP_URL = "https://app.constantcontact.com/pages/contacts/ui"


def activecampaign_list_url(api_url: str, list_ids: Sequence[Any]) -> str | None:
    """The ActiveCampaign app page of the lists: the contacts view filtered by the list.

    The account's app lives at ``https://<account>.activehosted.com`` when its API URL is
    ``https://<account>.api-us1.com``. Several lists link to the account's list overview. Against the
    sandbox (a loopback API URL) the link shows the list's contents in the sandbox.

    :param api_url: the connection's API URL (normalised, without ``/api/3``).
    :param list_ids: the target lists.
    :return: the URL, or ``None`` if the API URL does not tell the account.
    """
    if not list_ids:
        return None
    sandbox = loopback_origin(api_url)
    if sandbox is not None:
        return f"{sandbox}/_sandbox/ac/lists/{quote(str(list_ids[0]))}/contacts"
    host = urlsplit(api_url).hostname or ""
    account, _, rest = host.partition(".")
    if not account or not rest.startswith("api-"):
        return None
    app = f"https://{account}.{AC_APP_DOMAIN}/app"
    if len(list_ids) > 1:
        return f"{app}/lists"
    return f"{app}/contacts/?listid={quote(str(list_ids[0]))}&status=1"


def constantcontact_list_url(api_base_url: str, list_ids: Sequence[Any]) -> str | None:
    """The Constant Contact app page of the list (its contacts); several lists link to the list overview.

    Against the sandbox (a loopback API base URL) the link shows the list's contents in the sandbox.

    :param api_base_url: the connection's API base URL.
    :param list_ids: the target lists' UUIDs.
    """
    if not list_ids:
        return None
    sandbox = loopback_origin(api_base_url)
    if sandbox is not None:
        return f"{sandbox}/_sandbox/cc/lists/{quote(str(list_ids[0]))}/contacts"
    if len(list_ids) > 1:
        return f"{CC_APP_URL}#lists"
    return f"{CC_APP_URL}#contacts/{quote(str(list_ids[0]))}"


class _ListLink(BaseOperatorLink):
    """The target list of an export task, as its operator recorded it while running."""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The URL the export recorded in ``operator.list_url``, or ``""`` (no link)."""
        return getattr(operator, "list_url", None) or ""


class ActiveCampaignListLink(_ListLink):
    """Opens the export's target list in ActiveCampaign."""

    name = "ActiveCampaign list"


class ConstantContactListLink(_ListLink):
    """Opens the export's target list in Constant Contact."""

    name = "Constant Contact list"
