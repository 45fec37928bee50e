"""The sandbox's list membership and consent model over real HTTP: statuses per list, who set them,
exclusion, member reads by status, contact exports, removals, and the violations it records."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import (
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


def _violations(sb: SandboxServer) -> dict[str, int]:
    counters = ctl(sb).stats()["counters"]
    return {k: v for k, v in counters.items() if ".violation." in k}


def _ac_get(sb: SandboxServer, path: str, **params: Any) -> dict[str, Any]:
    r = requests.get(f"{sb.url}/api/3/{path}", headers=AC_H, params=params, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _ac_status(sb: SandboxServer, contact_id: str, list_id: int, status: int) -> requests.Response:
    return requests.post(
        f"{sb.url}/api/3/contactLists",
        headers=AC_H,
        json={"contactList": {"list": list_id, "contact": int(contact_id), "status": status}},
        timeout=TIMEOUT,
    )


def test_ac_status_per_list_and_who_set_it(sb: SandboxServer) -> None:
    client = ctl(sb)
    ac_wait(sb, ac_import(sb, contacts(4, subscribe=[{"listid": AC_LIST_VIP}])).json()["batchId"])
    # user0 leaves by their own action; user1 is removed through the bulk import's unsubscribe list.
    client.ac_unsubscribe(AC_LIST_VIP, "user0@example.com")
    removal = [{"email": "user1@example.com", "unsubscribe": [{"listid": AC_LIST_VIP}]}]
    ac_wait(sb, ac_import(sb, removal).json()["batchId"])
    assert client.ac_contact("user0@example.com")["unsubscribed_by"] == {str(AC_LIST_VIP): "person"}
    assert client.ac_contact("user1@example.com")["unsubscribed_by"] == {str(AC_LIST_VIP): "api"}

    active = _ac_get(sb, "contacts", listid=AC_LIST_VIP, status=1, limit=1)
    assert active["meta"]["total"] == "2" and len(active["contacts"]) == 1
    gone = _ac_get(sb, "contacts", listid=AC_LIST_VIP, status=2)
    assert {c["email"] for c in gone["contacts"]} == {"user0@example.com", "user1@example.com"}
    assert _ac_get(sb, "contacts", listid=AC_LIST_VIP)["meta"]["total"] == "4"  # any status

    # Neither comes back through an import.
    again = contacts(2, subscribe=[{"listid": AC_LIST_VIP}])
    ac_wait(sb, ac_import(sb, again).json()["batchId"])
    assert _ac_get(sb, "contacts", listid=AC_LIST_VIP, status=2)["meta"]["total"] == "2"

    # contactLists status 1 does bring them back: fine for the API's own status 2, a recorded
    # consent violation for the person's.
    ids = {c["email"]: c["id"] for c in gone["contacts"]}
    assert _ac_status(sb, ids["user1@example.com"], AC_LIST_VIP, 1).status_code == 200
    assert _violations(sb) == {}
    assert _ac_status(sb, ids["user0@example.com"], AC_LIST_VIP, 1).status_code == 200
    assert _violations(sb) == {"ac.violation.resubscribed_person_unsubscribe": 1}

    lists = _ac_get(sb, f"contacts/{ids['user1@example.com']}/contactLists")["contactLists"]
    assert [(x["list"], x["status"]) for x in lists] == [(str(AC_LIST_VIP), "1")]
    r = requests.get(f"{sb.url}/api/3/contacts/999/contactLists", headers=AC_H, timeout=TIMEOUT)
    assert r.status_code == 404


def test_ac_person_status_stays_theirs_and_unsubscribe_from_all(sb: SandboxServer) -> None:
    client = ctl(sb)
    both = [{"listid": AC_LIST_VIP}, {"listid": AC_LIST_NEWSLETTER}]
    ac_wait(sb, ac_import(sb, contacts(2, subscribe=both)).json()["batchId"])
    client.ac_unsubscribe(None, "user0@example.com")  # from all email
    assert client.ac_contact("user0@example.com")["unsubscribed_by"] == {
        str(AC_LIST_NEWSLETTER): "person",
        str(AC_LIST_VIP): "person",
    }
    # A later removal by the API does not make the person's unsubscribe the API's.
    removal = [{"email": "user0@example.com", "unsubscribe": [{"listid": AC_LIST_VIP}]}]
    ac_wait(sb, ac_import(sb, removal).json()["batchId"])
    assert client.ac_contact("user0@example.com")["unsubscribed_by"][str(AC_LIST_VIP)] == "person"


def test_ac_exclusion_and_signup(sb: SandboxServer) -> None:
    client = ctl(sb)
    client.ac_exclude("Blocked@example.com")
    job = ac_wait(
        sb, ac_import(sb, [{"email": "blocked@example.com", "subscribe": [{"listid": 2}]}]).json()["batchId"]
    )
    assert job["failure"] == ["blocked@example.com"]
    contact = client.ac_contact("blocked@example.com")
    assert contact["excluded"] is True and contact["lists"] == {}
    assert _ac_status(sb, str(contact["id"]), AC_LIST_VIP, 1).status_code == 200
    assert _violations(sb) == {"ac.violation.subscribed_excluded_contact": 1}

    # A person who unsubscribed may sign up again by a form: theirs to decide, no violation.
    client.ac_unsubscribe(AC_LIST_NEWSLETTER, "back@example.com")
    signed = client.ac_signup(AC_LIST_NEWSLETTER, "back@example.com")
    assert signed["lists"] == {str(AC_LIST_NEWSLETTER): "subscribed"}
    assert _violations(sb) == {"ac.violation.subscribed_excluded_contact": 1}


def _export(sb: SandboxServer, token: str, body: dict[str, Any]) -> list[dict[str, str]]:
    r = requests.post(
        f"{sb.cc_api_base_url}/activities/contact_exports", headers=cc_h(token), json=body, timeout=TIMEOUT
    )
    assert r.status_code == 201, r.text
    activity = cc_wait(sb, token, r.json()["activity_id"])
    assert activity["state"] == "completed"
    href = activity["_links"]["results"]["href"]
    f = requests.get(f"{sb.url}{href}", headers=cc_h(token), timeout=TIMEOUT)
    assert f.status_code == 200 and f.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(f.text)))


@pytest.mark.parametrize(
    ("style", "id_header", "email_header"),
    [("snake", "contact_id", "email_address"), ("title", "Contact Id", "Email address")],
)
def test_cc_contact_export_of_a_list(
    sb: SandboxServer, style: str, id_header: str, email_header: str
) -> None:
    client = ctl(sb)
    client.configure(cc_export_header_style=style)
    token = cc_token(sb)
    cc_wait(sb, token, cc_import(sb, token, contacts(5), [CC_LIST_VIP]).json()["activity_id"])
    cc_wait(
        sb, token, cc_import(sb, token, contacts(2, start=10), [CC_LIST_NEWSLETTER]).json()["activity_id"]
    )
    client.cc_unsubscribe(None, "user4@example.com")
    rows = _export(sb, token, {"list_ids": [CC_LIST_VIP], "fields": ["contact_id", "email_address"]})
    assert list(rows[0]) == [id_header, email_header]
    assert sorted(r[email_header] for r in rows) == [f"user{i}@example.com" for i in range(4)]
    member = client.cc_contact("user2@example.com")
    assert {r[id_header] for r in rows} >= {member["contact_id"]}

    unsubscribed = _export(sb, token, {"fields": ["email_address"], "status": "unsubscribed"})
    assert [r[email_header] for r in unsubscribed] == ["user4@example.com"]


def test_cc_unsubscribed_paging_and_import_resubscribe_warning(sb: SandboxServer) -> None:
    client = ctl(sb)
    token = cc_token(sb)
    cc_wait(sb, token, cc_import(sb, token, contacts(6), [CC_LIST_VIP]).json()["activity_id"])
    for i in (1, 3, 5):
        client.cc_unsubscribe(None, f"user{i}@example.com")
    seen: list[str] = []
    url: str | None = f"{sb.cc_api_base_url}/contacts?status=unsubscribed&limit=2"
    while url:
        page = requests.get(url, headers=cc_h(token), timeout=TIMEOUT).json()
        seen += [c["email_address"]["address"] for c in page["contacts"]]
        assert all(c["email_address"]["permission_to_send"] == "unsubscribed" for c in page["contacts"])
        href = page["_links"].get("next", {}).get("href")
        url = f"{sb.url}{href}" if href else None
    assert seen == ["user1@example.com", "user3@example.com", "user5@example.com"]

    # The documented behaviour: an import does not add them back.
    act = cc_wait(sb, token, cc_import(sb, token, contacts(2, start=1), [CC_LIST_VIP]).json()["activity_id"])
    assert act["status"]["cannot_add_to_list_count"] == 1
    # The vendor guide's warning: it may. The sandbox can behave so, and records the violation.
    client.configure(cc_import_resubscribes=True)
    act = cc_wait(sb, token, cc_import(sb, token, contacts(1, start=3), [CC_LIST_VIP]).json()["activity_id"])
    assert act["status"]["cannot_add_to_list_count"] == 0
    assert _violations(sb) == {"cc.violation.resubscribed_unsubscribed_contact": 1}
    assert client.cc_contact("user3@example.com")["lists"] == [CC_LIST_VIP]


def test_cc_signup_and_removal_leave_other_lists(sb: SandboxServer) -> None:
    client = ctl(sb)
    token = cc_token(sb)
    cc_wait(
        sb, token, cc_import(sb, token, contacts(2), [CC_LIST_VIP, CC_LIST_NEWSLETTER]).json()["activity_id"]
    )
    client.cc_signup(CC_LIST_VIP, "form@example.com")
    ids = [client.cc_contact("user0@example.com")["contact_id"]]
    body = {"source": {"contact_ids": ids}, "list_ids": [CC_LIST_VIP]}
    r = requests.post(
        f"{sb.cc_api_base_url}/activities/remove_list_memberships",
        headers=cc_h(token),
        json=body,
        timeout=TIMEOUT,
    )
    assert cc_wait(sb, token, r.json()["activity_id"])["state"] == "completed"
    assert {c["email"] for c in client.cc_list_contacts(CC_LIST_VIP)} == {
        "user1@example.com",
        "form@example.com",
    }
    user0 = client.cc_contact("user0@example.com")
    assert user0["lists"] == [CC_LIST_NEWSLETTER] and user0["unsubscribed"] is False


def test_ac_a_membership_record_tells_when_and_how_it_last_changed(sb: SandboxServer) -> None:
    from datetime import datetime

    client = ctl(sb)
    ac_wait(sb, ac_import(sb, contacts(4, subscribe=[{"listid": AC_LIST_VIP}])).json()["batchId"])
    before = time.time()
    removal = [{"email": "user0@example.com", "unsubscribe": [{"listid": AC_LIST_VIP}]}]
    ac_wait(sb, ac_import(sb, removal).json()["batchId"])  # the API's removal
    client.ac_unsubscribe(AC_LIST_VIP, "user1@example.com")  # a campaign's unsubscribe link
    client.ac_unsubscribe(AC_LIST_VIP, "user2@example.com", by="automation")
    client.ac_unsubscribe(AC_LIST_VIP, "user3@example.com", by="app", at=before + 3600)  # another app, later
    ids = {c["email"]: c["id"] for c in _ac_get(sb, "contacts", listid=AC_LIST_VIP, status=2)["contacts"]}

    def record(email: str) -> dict[str, Any]:
        items: list[dict[str, Any]] = _ac_get(sb, f"contacts/{ids[email]}/contactLists")["contactLists"]
        (item,) = items
        return item

    api, link, automation, app = (record(f"user{i}@example.com") for i in range(4))
    for item in (api, link, automation, app):
        assert item["status"] == "2" and item["udate"].endswith("-06:00")  # the account's time zone
    assert before - 1 <= datetime.fromisoformat(api["udate"]).timestamp() <= time.time() + 1
    assert (api["campaign"], api["message"], api["unsubscribeAutomation"], api["unsubreason"]) == (None,) * 4
    assert link["campaign"] and link["message"] and link["unsubscribeAutomation"] is None
    assert automation["unsubscribeAutomation"] and automation["campaign"] is None
    # Another app's removal looks like the API's own: only the time tells them apart.
    assert {k: v for k, v in app.items() if k not in ("udate", "contact", "id")} == {
        k: v for k, v in api.items() if k not in ("udate", "contact", "id")
    }
    assert datetime.fromisoformat(app["udate"]).timestamp() == int(before + 3600)
    # A sign-up brings them back and changes the record; re-subscribing another app's or an
    # automation's status 2 through the API is a recorded violation, as the person's is.
    assert _ac_status(sb, ids["user3@example.com"], AC_LIST_VIP, 1).status_code == 200
    assert _ac_status(sb, ids["user2@example.com"], AC_LIST_VIP, 1).status_code == 200
    assert _violations(sb) == {
        "ac.violation.resubscribed_other_app_unsubscribe": 1,
        "ac.violation.resubscribed_automation_unsubscribe": 1,
    }
