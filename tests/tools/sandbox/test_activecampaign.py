"""The ActiveCampaign routes over real HTTP: auth, lists and fields, bulk imports, contact sync and rate limits."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.ac_store import ACCOUNT_TZ
from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_NEWSLETTER, AC_LIST_VIP
from tests.tools.sandbox.helpers import AC_H, TIMEOUT, ac_import, ac_wait, contacts, ctl

pytestmark = pytest.mark.integration


def test_ac_auth_errors(sb: SandboxServer) -> None:
    for headers in ({}, {"Api-Token": "wrong"}):
        r = requests.get(f"{sb.url}/api/3/lists/1", headers=headers, timeout=TIMEOUT)
        assert r.status_code == 403
        error = r.json()["errors"][0]
        assert error["status"] == 403 and error["title"] == "Forbidden" and error["detail"]
    ctl(sb).configure(ac_auth_error_status=401)
    r = requests.get(f"{sb.url}/api/3/lists/1", timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.json()["errors"][0]["status"] == 401
    assert ctl(sb).stats()["auth_failures"]["ac"] == 3


def test_ac_lists_and_fields(sb: SandboxServer) -> None:
    r = requests.get(f"{sb.url}/api/3/lists/2", headers=AC_H, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["list"]["id"] == "2" and r.json()["list"]["name"] == "VIP customers"
    r = requests.get(f"{sb.url}/api/3/lists/7", headers=AC_H, timeout=TIMEOUT)
    assert (r.status_code, r.json()) == (404, {"message": "No Result found for _List with id 7"})
    r = requests.get(f"{sb.url}/api/3/lists", headers=AC_H, params={"limit": 2, "offset": 1}, timeout=TIMEOUT)
    assert [lst["id"] for lst in r.json()["lists"]] == ["2", "3"]
    assert r.json()["meta"]["total"] == "3"

    r = requests.get(f"{sb.url}/api/3/fields", headers=AC_H, params={"limit": 500}, timeout=TIMEOUT)
    body = r.json()
    assert body["meta"] == {"total": "3"}
    assert {(f["id"], f["perstag"], f["title"]) for f in body["fields"]} == {
        ("1", "LOYALTY_TIER", "Loyalty tier"),
        ("2", "FAVORITE_STORE", "Favorite store"),
        ("3", "CITY", "City"),
    }
    r = requests.get(
        f"{sb.url}/api/3/fields",
        headers=AC_H,
        params={"filters[perstag]": "CITY", "limit": 100},
        timeout=TIMEOUT,
    )
    assert [f["id"] for f in r.json()["fields"]] == ["3"]
    assert r.json()["meta"]["total"] == "1"


def test_ac_import_lifecycle_applies_at_completion(sb: SandboxServer) -> None:
    # 0.3 s of "status false", then 0.3 s of waiting/active (rate_scale 1000).
    ctl(sb).reset(ac_info_false_s=300.0, ac_job_duration_s=300.0)
    r = ac_import(sb, contacts(12, subscribe=[{"listid": 1}]))
    assert r.status_code == 200
    body = r.json()
    assert (
        body["Success"] == 1 and body["queued_contacts"] == 12 and body["message"] == "Contact import queued"
    )
    assert "success" not in body
    statuses = []
    while True:
        before = ctl(sb).ac_list_contacts(AC_LIST_NEWSLETTER)
        info = requests.get(
            f"{sb.url}/api/3/import/info", headers=AC_H, params={"batchId": body["batchId"]}, timeout=TIMEOUT
        ).json()
        statuses.append(info["status"])
        if info["status"] == "completed":
            break
        assert before == []  # nothing applied before completion
        time.sleep(0.02)
    assert statuses[0] is False
    assert {"waiting", "active"} & set(statuses)
    assert len(info["success"]) == 12 and info["failure"] == []
    assert len(ctl(sb).ac_list_contacts(AC_LIST_NEWSLETTER)) == 12

    r = requests.get(f"{sb.url}/api/3/import/info", headers=AC_H, timeout=TIMEOUT)
    assert (r.status_code, r.json()) == (400, {"success": 0, "message": "'batchId' is a required field."})
    r = requests.get(f"{sb.url}/api/3/import/info", headers=AC_H, params={"batchId": "nope"}, timeout=TIMEOUT)
    assert r.status_code == 404


def _padded_ac_body(target: int) -> bytes:
    base = {"contacts": [{"email": "pad@example.com", "first_name": ""}]}
    size = len(json.dumps(base).encode())
    base["contacts"][0]["first_name"] = "x" * (target - size)
    body = json.dumps(base).encode()
    assert len(body) == target
    return body


def test_ac_import_size_limits(sb: SandboxServer) -> None:
    url = f"{sb.url}/api/3/import/bulk_import"
    headers = {**AC_H, "Content-Type": "application/json"}
    r = requests.post(url, headers=headers, data=_padded_ac_body(399_999), timeout=TIMEOUT)
    assert r.status_code == 200
    r = requests.post(url, headers=headers, data=_padded_ac_body(400_000), timeout=TIMEOUT)
    assert r.status_code == 413
    assert r.json()["success"] == 0 and r.json()["failureReasons"]

    assert ac_import(sb, contacts(250)).status_code == 200
    r = ac_import(sb, contacts(251))
    assert r.status_code == 400
    assert r.json()["success"] == 0 and "250" in r.json()["failureReasons"][0]

    stats = ctl(sb).stats()
    kinds = [(v["api"], v["kind"]) for v in stats["limit_violations"]]
    assert kinds == [("ac", "body_too_large"), ("ac", "too_many_contacts")]
    assert stats["limit_violations"][0]["actual"] == 400_000
    assert stats["limit_violations"][1]["actual"] == 251
    assert stats["imports"]["ac"]["largest_batch"] == 251
    assert stats["imports"]["ac"]["largest_body_bytes"] == 400_000
    assert stats["imports"]["ac"]["requests"] == 4


def test_ac_one_bad_contact_rejects_the_batch(sb: SandboxServer) -> None:
    items = contacts(20)
    items[5]["email"] = "not-an-email"
    items[9]["email"] = "ann@example"
    r = ac_import(sb, items)
    assert r.status_code == 400
    body = r.json()
    assert body["success"] == 0 and "not queued" in body["message"]
    assert body["failureReasons"] == [
        {"contact": 5, "failureReason": "Field' email' incorrect format"},
        {"contact": 9, "failureReason": "Field' email' incorrect format"},
    ]
    r = ac_import(sb, contacts(12, fields=[{"id": 9, "value": "x"}]))
    assert r.status_code == 400
    r = ac_import(sb, contacts(12, subscribe=[{"listid": 99}]))
    assert r.status_code == 400
    stats = ctl(sb).stats()
    assert stats["jobs"]["ac"] == {} and stats["store"]["ac"]["contacts"] == 0


def test_ac_import_semantics(sb: SandboxServer) -> None:
    client = ctl(sb)
    client.reset(ac_exclusion_list=["Blocked@Example.com"])
    first = [
        {
            "email": "Ann@Example.com",
            "first_name": "Ann",
            "last_name": "Lee",
            "phone": "555-0100",
            "tags": ["vip"],
            "fields": [{"id": 1, "value": "Gold"}, {"id": 3, "value": "Oslo"}],
            "subscribe": [{"listid": 1}, {"listid": 2}],
        },
        {"email": "blocked@example.com", "first_name": "B", "subscribe": [{"listid": 1}]},
        {"email": "gone@example.com", "first_name": "G", "subscribe": [{"listid": 1}]},
    ]
    client.ac_unsubscribe(AC_LIST_NEWSLETTER, "gone@example.com")
    result = ac_wait(sb, ac_import(sb, first).json()["batchId"])
    assert result["failure"] == ["blocked@example.com"]
    assert len(result["success"]) == 2

    second = [
        {
            "email": "ann@example.com",
            "last_name": "",
            "tags": ["spring"],
            "fields": [{"id": "2", "value": "Downtown"}],
            "subscribe": [{"listid": 1}],
        }
    ]
    ac_wait(sb, ac_import(sb, second).json()["batchId"])
    ann = client.ac_contact("ANN@example.com")
    assert ann is not None
    assert ann["email"] == "Ann@Example.com"  # matched case-insensitively, original kept
    assert ann["first_name"] == "Ann" and ann["phone"] == "555-0100"  # absent keys untouched
    assert ann["last_name"] == ""  # the blank was sent and is visible
    assert ann["fields"] == {"1": "Gold", "3": "Oslo", "2": "Downtown"}
    assert ann["fields_by_perstag"]["FAVORITE_STORE"] == "Downtown"
    assert ann["tags"] == ["vip", "spring"]
    assert ann["sent_keys"] == [
        "email",
        "field:1",
        "field:2",
        "field:3",
        "first_name",
        "last_name",
        "phone",
        "tags",
    ]
    assert ann["lists"] == {"1": "subscribed", "2": "subscribed"}
    newsletter = {c["email"] for c in client.ac_list_contacts(AC_LIST_NEWSLETTER)}
    assert newsletter == {"Ann@Example.com"}  # unsubscribed one not brought back, excluded skipped
    assert client.ac_contact("blocked@example.com") is None
    unsub = client.ac_list_contacts(AC_LIST_NEWSLETTER, include_unsubscribed=True)
    assert {c["email"] for c in unsub} == {"Ann@Example.com", "gone@example.com"}
    counters = client.stats()["counters"]
    assert counters["ac.not_resubscribed"] == 1
    assert counters["ac.excluded_skipped"] == 1
    assert counters["ac.blank_values_sent"] == 1
    assert counters["ac.imports_under_10_contacts"] == 2


def test_ac_sync_contact_lists_and_lookups(sb: SandboxServer) -> None:
    url = sb.url
    r = requests.post(
        f"{url}/api/3/contact/sync",
        headers=AC_H,
        json={
            "contact": {
                "email": "sam@example.com",
                "firstName": "Sam",
                "fieldValues": [{"field": "1", "value": "X"}],
            }
        },
        timeout=TIMEOUT,
    )
    assert r.status_code == 201
    contact_id = r.json()["contact"]["id"]
    assert r.json()["contact"]["firstName"] == "Sam"
    r = requests.post(
        f"{url}/api/3/contact/sync", headers=AC_H, json={"contact": {"email": "bad@"}}, timeout=TIMEOUT
    )
    assert r.status_code == 422 and r.json()["errors"]

    for status in (1, 2, 1):
        r = requests.post(
            f"{url}/api/3/contactLists",
            headers=AC_H,
            json={"contactList": {"list": 2, "contact": int(contact_id), "status": status}},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200
        assert r.json()["contactList"]["status"] == status
    assert [c["email"] for c in ctl(sb).ac_list_contacts(AC_LIST_VIP)] == ["sam@example.com"]
    r = requests.post(
        f"{url}/api/3/contactLists",
        headers=AC_H,
        json={"contactList": {"list": 2, "contact": 999, "status": 1}},
        timeout=TIMEOUT,
    )
    assert r.status_code == 404

    found = requests.get(
        f"{url}/api/3/contacts", headers=AC_H, params={"email": "SAM@example.com"}, timeout=TIMEOUT
    )
    assert [c["id"] for c in found.json()["contacts"]] == [contact_id]

    ac_wait(sb, ac_import(sb, contacts(25, subscribe=[{"listid": 2}])).json()["batchId"])
    seen: list[str] = []
    offset = 0
    while True:
        page = requests.get(
            f"{url}/api/3/contacts",
            headers=AC_H,
            params={"listid": 2, "limit": 10, "offset": offset},
            timeout=TIMEOUT,
        ).json()
        assert page["meta"]["total"] == "26"
        if not page["contacts"]:
            break
        seen += [c["email"] for c in page["contacts"]]
        offset += 10
    assert len(seen) == len(set(seen)) == 26


def test_ac_rate_limit_per_second_sliding_window(sb: SandboxServer) -> None:
    ctl(sb).reset(rate_scale=1.0)
    statuses = []
    retry_after = []
    for _ in range(9):
        r = requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT)
        statuses.append(r.status_code)
        if r.status_code == 429:
            retry_after.append(r.headers["Retry-After"])
    assert statuses.count(429) >= 1
    assert set(statuses) == {200, 429}
    assert all(int(v) >= 1 for v in retry_after)
    rejections = ctl(sb).stats()["rate_limit_rejections"]
    assert rejections == {"ac_per_second": statuses.count(429)}


@pytest.mark.parametrize(
    ("style", "status"),
    [("400", 400), ("503", 503)],
)
def test_ac_rate_limit_styles(sb: SandboxServer, style: str, status: int) -> None:
    ctl(sb).reset(
        rate_scale=1.0, ac_rate_limit_style=style, ac_imports_per_minute=2, ac_requests_per_second=100
    )
    results = [ac_import(sb, contacts(10)) for _ in range(3)]
    assert [r.status_code for r in results] == [200, 200, status]
    assert "Retry-After" not in results[2].headers
    if style == "400":
        assert results[2].json() == {
            "success": 0,
            "message": "Rate limit exceeded.",
            "failureReasons": [
                "Up to 100 imports may be requested per minute.Please batch contacts into larger requests, "
                "or retry this request in a minute."
            ],
        }
    assert ctl(sb).stats()["rate_limit_rejections"] == {"ac_imports_per_minute": 1}


def test_ac_imports_per_minute_window_slides(sb: SandboxServer) -> None:
    # 2 imports per 60/600 = 0.1 s.
    ctl(sb).reset(rate_scale=600.0, ac_imports_per_minute=2)
    assert [ac_import(sb, contacts(10)).status_code for _ in range(2)] == [200, 200]
    rejected = ac_import(sb, contacts(10))
    assert rejected.status_code == 429 and float(rejected.headers["Retry-After"]) > 0
    time.sleep(0.3)
    assert ac_import(sb, contacts(10)).status_code == 200
    assert ctl(sb).stats()["rate_limit_rejections"] == {"ac_imports_per_minute": 1}


def _ac_page(sb: SandboxServer, params: list[tuple[str, object]]) -> tuple[list[int], int]:
    r = requests.get(f"{sb.url}/api/3/contacts", headers=AC_H, params=params, timeout=TIMEOUT)
    assert r.status_code == 200
    return [int(c["id"]) for c in r.json()["contacts"]], int(r.json()["meta"]["total"])


def test_ac_contacts_id_filters_and_order(sb: SandboxServer) -> None:
    ac_wait(sb, ac_import(sb, contacts(12, subscribe=[{"listid": 1}])).json()["batchId"])
    ctl(sb).ac_delete_contact("user4@example.com")  # id 5: a gap, as deletions leave
    assert _ac_page(sb, [("ids[]", 2), ("ids[]", 5), ("ids[]", 9)]) == ([2, 9], 2)
    assert _ac_page(sb, [("ids", "3,4")]) == ([3, 4], 2)
    assert _ac_page(sb, [("id_greater", 3), ("id_less", 8)]) == ([4, 6, 7], 3)
    assert _ac_page(sb, [("listid", 1), ("status", 1), ("id_greater", 10)]) == ([11, 12], 2)
    assert _ac_page(sb, [("orders[id]", "desc"), ("limit", 3)]) == ([12, 11, 10], 11)
    # The cheap drift check: one contact a page, the list's active members in meta.total.
    assert _ac_page(sb, [("listid", 1), ("status", 1), ("limit", 1)]) == ([1], 11)


def test_ac_contacts_updated_after_a_day_include_membership_changes(sb: SandboxServer) -> None:
    ac_wait(sb, ac_import(sb, contacts(4, subscribe=[{"listid": 1}])).json()["batchId"])
    day = 86_400.0
    ctl(sb).ac_unsubscribe(1, "user1@example.com", at=time.time() - 3 * day)
    ctl(sb).ac_unsubscribe(1, "user2@example.com")
    today = datetime.now(ACCOUNT_TZ).date()
    status_2 = [("listid", 1), ("status", 2)]
    assert _ac_page(sb, status_2) == ([2, 3], 2)
    yesterday = (today - timedelta(days=1)).isoformat()
    assert _ac_page(sb, [*status_2, ("filters[updated_after]", yesterday)]) == ([3], 1)
    assert _ac_page(sb, [*status_2, ("filters[updated_before]", yesterday)]) == ([2], 1)
    r = requests.get(
        f"{sb.url}/api/3/contacts", headers=AC_H, params={"filters[updated_after]": "soon"}, timeout=TIMEOUT
    )
    assert r.status_code == 422
