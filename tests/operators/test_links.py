"""Extra links: each export task opens its target list in the vendor's app."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_ciexport.links import (
    ActiveCampaignListLink,
    ConstantContactListLink,
    activecampaign_list_url,
    constantcontact_list_url,
)


@pytest.mark.parametrize(
    ("api_url", "lists", "expected"),
    [
        (
            "https://youraccount.api-us1.com",
            [3],
            "https://youraccount.activehosted.com/app/contacts/?listid=3&status=1",
        ),
        ("https://acme.api-us2.com", ["2", "3"], "https://acme.activehosted.com/app/lists"),
        ("http://127.0.0.1:8025", [2], "http://127.0.0.1:8025/_sandbox/ac/lists/2/contacts"),
        ("https://api.example.com", [2], None),
        ("https://youraccount.api-us1.com", [], None),
    ],
)
def test_activecampaign_links_open_the_accounts_contacts_filtered_by_list(
    api_url: str, lists: list[Any], expected: str | None
) -> None:
    assert activecampaign_list_url(api_url, lists) == expected


@pytest.mark.parametrize(
    ("base", "lists", "expected"),
    [
        (
            "https://api.cc.email/v3",
            ["22222222-2222-4222-8222-222222222222"],
            "https://app.constantcontact.com/pages/contacts/ui#contacts/22222222-2222-4222-8222-222222222222",
        ),
        ("https://api.cc.email/v3", ["a", "b"], "https://app.constantcontact.com/pages/contacts/ui#lists"),
        ("http://localhost:9000/v3", ["a"], "http://localhost:9000/_sandbox/cc/lists/a/contacts"),
    ],
)
def test_constantcontact_links_open_the_list(base: str, lists: list[str], expected: str) -> None:
    assert constantcontact_list_url(base, lists) == expected


def test_a_task_that_never_got_to_its_lists_has_no_link() -> None:
    link = ActiveCampaignListLink()
    assert link.get_link(SimpleNamespace(), ti_key=None) == ""  # type: ignore[arg-type]
    assert link.get_link(SimpleNamespace(list_url=None), ti_key=None) == ""  # type: ignore[arg-type]


def test_the_link_is_what_the_export_recorded() -> None:
    operator = SimpleNamespace(list_url="https://app.constantcontact.com/pages/contacts/ui#lists")
    assert ConstantContactListLink().get_link(operator, ti_key=None) == operator.list_url  # type: ignore[arg-type]
    assert (ActiveCampaignListLink().name, ConstantContactListLink().name) == (
        "ActiveCampaign list",
        "Constant Contact list",
    )
