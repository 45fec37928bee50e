"""The control API: reset and config, and what a user does in the vendor's own app (deleting a
contact, taking it off a list, emptying the account), read back through the vendors' endpoints."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import (
    AC_LIST_LAPSED,
    AC_LIST_NEWSLETTER,
    AC_LIST_VIP,
    CC_LIST_NEWSLETTER,
    CC_LIST_VIP,
)
from tests.tools.sandbox.helpers import (
    AC_H,
    TIMEOUT,
    ac_import,
    ac_wait,
    cc_h,
    cc_import,
    cc_token,
    cc_wait,
    contacts,
    ctl,
)

pytestmark = pytest.mark.integration


def test_reset_and_config(sb: SandboxServer) -> None:
    client = ctl(sb)
    ac_wait(sb, ac_import(sb, contacts(10, subscribe=[{"listid": 1}])).json()["batchId"])
    assert client.configure(latency_s=0.0, ac_exclusion_list=["x@example.com"])["ac_exclusion_list"] == [
        "x@example.com"
    ]
    r = requests.post(f"{sb.url}/_sandbox/config", json={"no_such_setting": 1}, timeout=TIMEOUT)
    assert r.status_code == 400
    r = requests.post(f"{sb.url}/_sandbox/config", json={"rate_scale": "fast"}, timeout=TIMEOUT)
    assert r.status_code == 400
    config = client.reset(cc_daily_quota=5)
    assert (
        config["cc_daily_quota"] == 5 and config["rate_scale"] == 1000.0 and config["ac_exclusion_list"] == []
    )
    assert client.ac_list_contacts(AC_LIST_NEWSLETTER) == []
    assert client.stats()["requests"] == {}
    assert client.config()["cc_daily_quota"] == 5


def _ac_active_total(sb: SandboxServer, list_id: int) -> int:
    r = requests.get(
        f"{sb.url}/api/3/contacts",
        headers=AC_H,
        params={"listid": list_id, "status": 1, "limit": 1},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    return int(r.json()["meta"]["total"])


def _ac_emails(sb: SandboxServer, **params: object) -> list[str]:
    r = requests.get(
        f"{sb.url}/api/3/contacts", headers=AC_H, params={"limit": 100, **params}, timeout=TIMEOUT
    )
    return [c["email"] for c in r.json()["contacts"]]


def test_ac_contact_deleted_in_the_app_is_gone_with_its_memberships(sb: SandboxServer) -> None:
    client = ctl(sb)
    ac_wait(sb, ac_import(sb, contacts(3, subscribe=[{"listid": 1}, {"listid": 2}])).json()["batchId"])
    client.ac_unsubscribe(AC_LIST_VIP, "user2@example.com")
    assert _ac_active_total(sb, AC_LIST_NEWSLETTER) == 3
    # Mixed case and stray spaces, as a person types an address.
    gone = client.ac_delete_contact("  User1@EXAMPLE.com ")
    assert gone == {"id": 2, "email": "user1@example.com"}
    assert _ac_active_total(sb, AC_LIST_NEWSLETTER) == 2 and _ac_active_total(sb, AC_LIST_VIP) == 1
    assert "user1@example.com" not in _ac_emails(sb, listid=AC_LIST_NEWSLETTER, status=1)
    assert _ac_emails(sb, email="user1@example.com") == [] and client.ac_contact("user1@example.com") is None
    r = requests.get(f"{sb.url}/api/3/contacts/2/contactLists", headers=AC_H, timeout=TIMEOUT)
    assert r.status_code == 404
    # A status-2 membership goes with the contact too.
    client.ac_delete_contact("user2@example.com")
    assert client.ac_list_contacts(AC_LIST_VIP, include_unsubscribed=True) == [
        c for c in client.ac_list_contacts(AC_LIST_VIP) if c["email"] == "user0@example.com"
    ]
    # Imported again, the address is a new contact with a new id.
    ac_wait(sb, ac_import(sb, contacts(1, start=1, subscribe=[{"listid": 1}])).json()["batchId"])
    again = client.ac_contact("user1@example.com")
    assert again is not None and again["id"] == 4 and again["lists"] == {"1": "subscribed"}


def test_ac_contact_taken_off_one_list_keeps_the_others(sb: SandboxServer) -> None:
    client = ctl(sb)
    ac_wait(sb, ac_import(sb, contacts(2, subscribe=[{"listid": 1}, {"listid": 2}])).json()["batchId"])
    after = client.ac_remove_from_list(AC_LIST_VIP, "USER0@example.com ")
    assert after["lists"] == {"1": "subscribed", "2": "unsubscribed"}
    assert after["unsubscribed_by"] == {"2": "user"}
    assert _ac_active_total(sb, AC_LIST_VIP) == 1 and _ac_active_total(sb, AC_LIST_NEWSLETTER) == 2
    assert _ac_emails(sb, listid=AC_LIST_VIP, status=2) == ["user0@example.com"]
    # The export may put back what a user of the account removed: no consent was withdrawn.
    r = requests.post(
        f"{sb.url}/api/3/contactLists",
        headers=AC_H,
        json={"contactList": {"list": AC_LIST_VIP, "contact": after["id"], "status": 1}},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and _ac_active_total(sb, AC_LIST_VIP) == 2
    assert client.stats()["limit_violations"] == []
    r = requests.post(
        f"{sb.url}/_sandbox/ac/remove_from_list",
        json={"list_id": AC_LIST_LAPSED, "email": "user0@example.com"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 409 and "not subscribed to list 3" in r.json()["error"]


def test_ac_empty_account_keeps_lists_and_settings(sb: SandboxServer) -> None:
    client = ctl(sb)
    client.configure(ac_exclusion_list=["x@example.com"])
    ac_wait(sb, ac_import(sb, contacts(5, subscribe=[{"listid": 1}])).json()["batchId"])
    assert client.ac_empty_account() == 5
    assert _ac_active_total(sb, AC_LIST_NEWSLETTER) == 0 and _ac_emails(sb) == []
    r = requests.get(f"{sb.url}/api/3/contacts", headers=AC_H, timeout=TIMEOUT)
    assert r.json()["meta"]["total"] == "0"
    assert requests.get(f"{sb.url}/api/3/lists/1", headers=AC_H, timeout=TIMEOUT).status_code == 200
    assert client.config()["ac_exclusion_list"] == ["x@example.com"]
    assert client.ac_empty_account() == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/ac/delete_contact", {"email": "nobody@example.com"}, 404, "no ActiveCampaign contact"),
        ("/ac/delete_contact", {"email": "   "}, 400, '{"email": <str>}'),
        ("/ac/delete_contact", {}, 400, '{"email": <str>}'),
        ("/ac/remove_from_list", {"list_id": 9, "email": "a@example.com"}, 404, "unknown list 9"),
        ("/ac/remove_from_list", {"list_id": "2", "email": "a@example.com"}, 400, '"list_id": <int>'),
        (
            "/ac/remove_from_list",
            {"list_id": 2, "email": "nobody@example.com"},
            404,
            "POST /_sandbox/ac/signup",
        ),
        ("/cc/delete_contact", {"email": "Nobody@Example.com"}, 404, "no Constant Contact contact"),
        ("/cc/remove_from_list", {"list_id": "nope", "email": "a@example.com"}, 404, "unknown list"),
        (
            "/cc/remove_from_list",
            {"list_id": CC_LIST_VIP, "email": "x@example.com"},
            404,
            "/_sandbox/cc/signup",
        ),
    ],
)
def test_drift_routes_refuse_what_they_cannot_do(
    sb: SandboxServer, path: str, body: dict[str, object], status: int, words: str
) -> None:
    r = requests.post(f"{sb.url}/_sandbox{path}", json=body, timeout=TIMEOUT)
    assert r.status_code == status and words in r.json()["error"]


def test_cc_contact_deleted_in_the_app(sb: SandboxServer) -> None:
    client = ctl(sb)
    h = cc_h(cc_token(sb))
    cc_wait(
        sb, h["Authorization"][7:], cc_import(sb, h["Authorization"][7:], contacts(3)).json()["activity_id"]
    )
    deleted = client.cc_delete_contact(" USER1@example.COM")
    assert deleted["email"] == "user1@example.com" and deleted["lists"] == [] and deleted["deleted_at"]
    assert len(client.cc_list_contacts(CC_LIST_NEWSLETTER)) == 2
    r = requests.post(
        f"{sb.url}/_sandbox/cc/delete_contact", json={"email": "user1@example.com"}, timeout=TIMEOUT
    )
    assert r.status_code == 409 and "already deleted" in r.json()["error"]
    # A sign-up form brings the contact back, on the list it signed up to only.
    back = client.cc_signup(CC_LIST_VIP, "user1@example.com")
    assert back["deleted_at"] is None and back["lists"] == [CC_LIST_VIP]


def test_cc_contact_taken_off_one_list_and_account_emptied(sb: SandboxServer) -> None:
    client = ctl(sb)
    token = cc_token(sb)
    cc_wait(
        sb, token, cc_import(sb, token, contacts(3), [CC_LIST_NEWSLETTER, CC_LIST_VIP]).json()["activity_id"]
    )
    after = client.cc_remove_from_list(CC_LIST_VIP, "User0@Example.com ")
    assert after["lists"] == [CC_LIST_NEWSLETTER] and after["unsubscribed"] is False
    assert after["deleted_at"] is None
    r = requests.post(
        f"{sb.url}/_sandbox/cc/remove_from_list",
        json={"list_id": CC_LIST_VIP, "email": "user0@example.com"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 409 and "not a member" in r.json()["error"]
    assert client.cc_empty_account() == 3
    assert client.cc_list_contacts(CC_LIST_NEWSLETTER) == []
    assert client.cc_empty_account() == 0
    # Lists and OAuth stay: the same token still reads the (now empty) list.
    r = requests.get(
        f"{sb.cc_api_base_url}/contact_lists/{CC_LIST_NEWSLETTER}",
        headers=cc_h(token),
        params={"include_membership_count": "all"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and r.json()["membership_count"] == 0
