"""The sandbox over real HTTP: limits, error shapes, jobs, OAuth, rate limits, faults, recording."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxClient, SandboxConfig, SandboxServer
from airflow_provider_ciexport.tools.sandbox.emails import is_valid_ac_email, is_valid_cc_email
from airflow_provider_ciexport.tools.sandbox.recording import redact_credential
from airflow_provider_ciexport.tools.sandbox.seed import (
    AC_LIST_NEWSLETTER,
    AC_LIST_VIP,
    CC_LIST_NEWSLETTER,
    CC_LIST_VIP,
)

pytestmark = pytest.mark.integration

AC_H = {"Api-Token": SEED.ac_api_key}
TIMEOUT = 30
BASIC = (SEED.cc_client_id, SEED.cc_client_secret)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    # A high rate_scale keeps ordinary tests clear of the limits and makes jobs finish at once.
    with SandboxServer(SandboxConfig(rate_scale=1000.0)) as srv:
        yield srv


@pytest.fixture
def sb(server: SandboxServer) -> SandboxServer:
    server.client.reset()
    server.client.clear_faults()
    return server


def ctl(sb: SandboxServer) -> SandboxClient:
    return sb.client


# -- helpers ------------------------------------------------------------------------------------


def contacts(n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    return [{"email": f"user{i}@example.com", **extra} for i in range(start, start + n)]


def ac_import(sb: SandboxServer, items: list[dict[str, Any]], **kwargs: Any) -> requests.Response:
    return requests.post(
        f"{sb.url}/api/3/import/bulk_import",
        headers=AC_H,
        json={"contacts": items},
        timeout=TIMEOUT,
        **kwargs,
    )


def ac_wait(sb: SandboxServer, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = requests.get(
            f"{sb.url}/api/3/import/info", headers=AC_H, params={"batchId": batch_id}, timeout=TIMEOUT
        )
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "failed", "interrupted"):
            return body
        time.sleep(0.01)
    raise AssertionError("AC job did not finish")


def cc_token(sb: SandboxServer) -> str:
    r = requests.post(
        sb.cc_token_url,
        auth=BASIC,
        data={"grant_type": "refresh_token", "refresh_token": SEED.cc_refresh_token},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def cc_h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cc_import(
    sb: SandboxServer, token: str, rows: list[dict[str, Any]], list_ids: list[str] | None = None
) -> requests.Response:
    body = {"import_data": rows, "list_ids": list_ids if list_ids is not None else [CC_LIST_NEWSLETTER]}
    return requests.post(
        f"{sb.cc_api_base_url}/activities/contacts_json_import",
        headers=cc_h(token),
        json=body,
        timeout=TIMEOUT,
    )


def cc_wait(sb: SandboxServer, token: str, activity_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = requests.get(
            f"{sb.cc_api_base_url}/activities/{activity_id}", headers=cc_h(token), timeout=TIMEOUT
        )
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        if body["state"] not in ("initialized", "processing"):
            return body
        time.sleep(0.01)
    raise AssertionError("CC activity did not finish")


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(os.urandom(40)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


# -- emails -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("ann@example.com", True),
        ("Ann.Lee+news@mail.example.co.uk", True),
        ("o'brien@example.org", True),
        ("a-b@xn--bcher-kva.example", True),
        ("ann@example", False),  # no dot in the domain
        ("ann@@example.com", False),
        (".ann@example.com", False),
        ("ann.@example.com", False),
        ("an..n@example.com", False),
        ('"ann"@example.com', False),  # quoted local part
        ("ann@[127.0.0.1]", False),  # IP literal
        ("ann@-example.com", False),
        ("ann@example.1com", False),  # top-level label must start with a letter
        ("ann@exa_mple.com", False),
        ("jörg@example.com", False),  # ASCII only
        ("ann @example.com", False),
        ("a" * 65 + "@example.com", False),
        ("a" * 64 + "@example.com", True),
        ("ann@" + "a" * 64 + ".com", False),
        ("a@" + ".".join(["b" * 60] * 4) + ".com", True),
        ("a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".commmm", True),  # 254 characters
        ("a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".commmmm", False),  # 255 characters
    ],
)
def test_ac_email_rules_follow_php_filter_validate_email(email: str, valid: bool) -> None:
    assert len("a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".commmm") == 254
    assert is_valid_ac_email(email) is valid


def test_cc_email_rules_are_lenient_but_need_a_domain() -> None:
    assert is_valid_cc_email("ann@example.com")
    assert not is_valid_cc_email("ann@example")
    assert not is_valid_cc_email("ann example.com")
    assert not is_valid_cc_email("ann@exa mple.com")


# -- ActiveCampaign -----------------------------------------------------------------------------


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


# -- Constant Contact -----------------------------------------------------------------------------


def test_cc_auth_and_token_expiry(sb: SandboxServer) -> None:
    url = f"{sb.cc_api_base_url}/contact_lists"
    r = requests.get(url, timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.json() == [{"error_key": "unauthorized", "error_message": "Unauthorized"}]
    token = cc_token(sb)
    assert requests.get(url, headers=cc_h(token), timeout=TIMEOUT).status_code == 200
    assert ctl(sb).expire_cc_tokens() == 1
    r = requests.get(url, headers=cc_h(token), timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()[0]["error_key"] == "unauthorized"
    assert requests.get(url, headers=cc_h(cc_token(sb)), timeout=TIMEOUT).status_code == 200


def test_cc_access_token_ttl_is_scaled(sb: SandboxServer) -> None:
    ctl(sb).reset(cc_access_token_ttl_s=100.0)  # 0.1 s at rate_scale 1000
    token = cc_token(sb)
    time.sleep(0.3)
    r = requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=cc_h(token), timeout=TIMEOUT)
    assert r.status_code == 401
    assert ctl(sb).stats()["counters"]["cc.access_token_expired"] == 1


def test_cc_access_token_expires_after_a_few_requests(sb: SandboxServer) -> None:
    ctl(sb).reset(cc_access_token_max_requests=3)
    url = f"{sb.cc_api_base_url}/contact_lists"
    token = cc_token(sb)
    answers = [requests.get(url, headers=cc_h(token), timeout=TIMEOUT).status_code for _ in range(5)]
    assert answers == [200, 200, 200, 401, 401]
    assert ctl(sb).stats()["counters"]["cc.access_token_expired"] == 2
    fresh = cc_token(sb)  # a new token answers its own three requests
    assert requests.get(url, headers=cc_h(fresh), timeout=TIMEOUT).status_code == 200


def test_cc_lists_and_custom_fields(sb: SandboxServer) -> None:
    h = cc_h(cc_token(sb))
    base = sb.cc_api_base_url
    r = requests.get(f"{base}/contact_lists/{CC_LIST_VIP}", headers=h, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["list_id"] == CC_LIST_VIP and r.json()["name"] == "VIP customers"
    r = requests.get(f"{base}/contact_lists/44444444-4444-4444-8444-444444444444", headers=h, timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()[0]["error_key"]
    r = requests.get(f"{base}/contact_lists/7", headers=h, timeout=TIMEOUT)
    assert r.status_code == 400 and set(r.json()[0]) == {"error_key", "error_message"}
    r = requests.get(f"{base}/contact_lists", headers=h, params={"include_count": "true"}, timeout=TIMEOUT)
    assert r.json()["lists_count"] == 3 and len(r.json()["lists"]) == 3

    assert (
        requests.get(f"{base}/contact_custom_fields?limit=0", headers=h, timeout=TIMEOUT).status_code == 400
    )
    assert (
        requests.get(f"{base}/contact_custom_fields?limit=101", headers=h, timeout=TIMEOUT).status_code == 400
    )
    names = []
    next_url: str | None = f"{base}/contact_custom_fields?limit=2"
    while next_url:
        page = requests.get(next_url, headers=h, timeout=TIMEOUT).json()
        for f in page["custom_fields"]:
            assert set(f) >= {"custom_field_id", "label", "name", "type"}
            names.append(f["name"])
        href = page["_links"].get("next", {}).get("href")
        next_url = f"{sb.url}{href}" if href else None
    assert names == ["loyalty_tier", "favorite_store", "city"]


def test_cc_import_lifecycle_and_counts(sb: SandboxServer) -> None:
    client = ctl(sb)
    client.reset(cc_job_duration_s=400.0)  # 0.4 s at rate_scale 1000
    token = cc_token(sb)
    client.cc_unsubscribe(None, "left@example.com")
    rows = [
        {"email": "Ann@Example.com", "first_name": "Ann", "cf:loyalty_tier": "Gold"},
        {"email": "bob@example.com", "last_name": "Bo", "phone": "555-0101"},
        {"email": "not an email"},
        {"first_name": "No email"},
        {"email": "left@example.com", "first_name": "Left"},
    ]
    r = cc_import(sb, token, rows, [CC_LIST_NEWSLETTER, CC_LIST_VIP])
    assert r.status_code == 201
    created = r.json()
    assert created["state"] == "initialized" and created["activity_errors"] == []
    assert created["_links"]["self"]["href"] == f"/v3/activities/{created['activity_id']}"
    states = []
    while True:
        before = client.cc_list_contacts(CC_LIST_NEWSLETTER)
        act = requests.get(
            f"{sb.cc_api_base_url}/activities/{created['activity_id']}", headers=cc_h(token), timeout=TIMEOUT
        ).json()
        states.append(act["state"])
        if act["state"] == "completed":
            break
        assert before == []
        time.sleep(0.02)
    assert states[0] == "initialized" and "processing" in states
    assert act["percent_done"] == 100
    assert act["status"] == {
        "items_total_count": 5,
        "items_completed_count": 5,
        "person_count": 5,
        "error_count": 2,
        "correctable_count": 2,
        "cannot_add_to_list_count": 1,
        "list_count": 2,
    }
    members = client.cc_list_contacts(CC_LIST_VIP)
    assert sorted(m["email"] for m in members) == ["Ann@Example.com", "bob@example.com"]
    ann = next(m for m in members if m["email"] == "Ann@Example.com")
    assert ann["custom_fields"] == {"loyalty_tier": "Gold"}
    assert ann["custom_fields_by_id"] == {SEED.cc_custom_fields[0].custom_field_id: "Gold"}
    assert ann["sent_keys"] == ["cf:loyalty_tier", "email", "first_name"]

    # An update touches only what is sent.
    act = cc_wait(
        sb,
        token,
        cc_import(sb, token, [{"email": "ann@example.com", "job_title": "CTO"}]).json()["activity_id"],
    )
    ann = client.cc_contact("ann@example.com")
    assert ann is not None
    assert ann["attributes"] == {"first_name": "Ann", "job_title": "CTO"}
    assert ann["custom_fields"] == {"loyalty_tier": "Gold"}

    r = requests.get(
        f"{sb.cc_api_base_url}/activities/{'0' * 8}-0000-4000-8000-{'0' * 12}",
        headers=cc_h(token),
        timeout=TIMEOUT,
    )
    assert r.status_code == 404


def test_cc_import_reports_a_contact_it_could_not_add_with_or_without_saying_which(
    sb: SandboxServer,
) -> None:
    client = ctl(sb)
    client.reset(cc_email_max_length=50)  # the import's own limit in the spec (80 elsewhere)
    token = cc_token(sb)
    client.cc_unsubscribe(None, "gone@example.com")
    rows = [{"email": "ok@example.com"}, {"email": f"{'x' * 50}@example.com"}, {"email": "gone@example.com"}]
    act = cc_wait(sb, token, cc_import(sb, token, rows).json()["activity_id"])
    assert (act["status"]["error_count"], act["status"]["cannot_add_to_list_count"]) == (1, 1)
    # The over-long address is named by its place in the body; the unsubscribed one has no message.
    assert act["activity_errors"] == ["import_data[1]: email exceeds the maximum length"]
    client.configure(cc_activity_errors_name_rows=False)
    act = cc_wait(sb, token, cc_import(sb, token, rows).json()["activity_id"])
    assert act["status"]["error_count"] == 1
    assert act["activity_errors"] == ["email exceeds the maximum length"]
    members = {c["email"] for c in client.cc_list_contacts(CC_LIST_NEWSLETTER)}
    assert "ok@example.com" in members and "gone@example.com" not in members


def test_cc_import_stores_every_row_shape_alike(sb: SandboxServer) -> None:
    # Plain text rows take the sandbox's fast path, the others its key-by-key checks: same results.
    client = ctl(sb)
    token = cc_token(sb)
    rows: list[dict[str, Any]] = [
        {"email": "Flat@Example.com", "first_name": "Flat", "cf:city": "Oslo"},
        {"email": "sep@example.com", "first_name": "a\x1eb"},
        {"email": "num@example.com", "phone": 5550100},
        {"email": "bday@example.com", "first_name": "B", "birthday_month": 7},
        {"email": "blank@example.com", "first_name": "", "last_name": "L"},
        {"email": "flat@example.com", "last_name": "Later"},
        {"email": "O'Brien+vip@sub.example.co.uk", "job_title": "x" * 50},
        {"email": "long@example.com", "job_title": "x" * 51},
    ]
    act = cc_wait(sb, token, cc_import(sb, token, rows).json()["activity_id"])
    assert act["status"]["error_count"] == 1
    assert act["activity_errors"] == ["import_data[7]: job_title exceeds 50 characters"]

    def stored(email: str) -> tuple[str, dict[str, Any], dict[str, str], list[str]]:
        contact = client.cc_contact(email)
        assert contact is not None, email
        return contact["email"], contact["attributes"], contact["custom_fields"], contact["lists"]

    assert stored("flat@example.com") == (
        "Flat@Example.com",
        {"first_name": "Flat", "last_name": "Later"},
        {"city": "Oslo"},
        [CC_LIST_NEWSLETTER],
    )
    assert stored("sep@example.com")[1] == {"first_name": "a\x1eb"}
    assert stored("num@example.com")[1] == {"phone": "5550100"}
    assert stored("bday@example.com")[1] == {"first_name": "B", "birthday_month": 7}
    assert stored("blank@example.com")[1] == {"first_name": "", "last_name": "L"}
    assert stored("o'brien+vip@sub.example.co.uk")[1] == {"job_title": "x" * 50}
    assert client.cc_contact("long@example.com") is None
    listed = {m["email"] for m in client.cc_list_contacts(CC_LIST_NEWSLETTER)}
    assert listed == {
        "Flat@Example.com",
        "sep@example.com",
        "num@example.com",
        "bday@example.com",
        "blank@example.com",
        "O'Brien+vip@sub.example.co.uk",
    }
    assert client.stats()["counters"]["cc.blank_values_sent"] == 1


def test_cc_import_request_limits(sb: SandboxServer) -> None:
    token = cc_token(sb)
    big = [{"email": f"u{i}@example.com"} for i in range(40_000)]
    r = cc_import(sb, token, big)
    assert r.status_code == 400 and r.json()[0]["error_key"]
    assert cc_import(sb, token, big[:39_999]).status_code == 201

    assert cc_import(sb, token, contacts(2), []).status_code == 400
    many_lists = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(51)]
    assert cc_import(sb, token, contacts(2), many_lists).status_code == 400
    assert cc_import(sb, token, contacts(2), ["44444444-4444-4444-8444-444444444444"]).status_code == 400
    assert cc_import(sb, token, contacts(2, **{"cf:nope": "x"})).status_code == 400
    assert cc_import(sb, token, contacts(2, email_address="x")).status_code == 400
    too_many_cf = {f"cf:field{i}": "x" for i in range(26)}
    assert cc_import(sb, token, contacts(1, **too_many_cf)).status_code == 400

    stats = ctl(sb).stats()
    kinds = [v["kind"] for v in stats["limit_violations"]]
    assert kinds == ["too_many_contacts", "too_many_lists", "too_many_custom_fields"]
    assert stats["imports"]["cc"]["largest_batch"] == 40_000


CC_PREFIX = '{"list_ids":["' + CC_LIST_NEWSLETTER + '"],"import_data":['


def _cc_rows(n: int) -> list[dict[str, str]]:
    return [
        {"email": f"t{i:06d}@example.com", "first_name": "F" * 40, "last_name": "L" * 40, "street": "S" * 40}
        for i in range(n)
    ]


def _cc_items(rows: list[dict[str, str]]) -> list[str]:
    return [json.dumps(row, separators=(",", ":")) for row in rows]


def _pad_streets(rows: list[dict[str, str]], gap: int) -> None:
    for row in rows:
        add = min(gap, 255 - len(row["street"]))
        row["street"] += "S" * add
        gap -= add
    assert gap == 0


def _truncation_body(limit: int) -> tuple[bytes, int, int]:
    """A body over ``limit`` bytes whose ``kept``-th row ends exactly at byte ``limit``."""
    rows = _cc_rows(30_000)
    end, kept = len(CC_PREFIX), 0
    for index, item in enumerate(_cc_items(rows)):
        if end + (1 if index else 0) + len(item) > limit:
            break
        end += (1 if index else 0) + len(item)
        kept += 1
    _pad_streets(rows, limit - end)
    items = _cc_items(rows)
    body = (CC_PREFIX + ",".join(items) + "]}").encode()
    assert len((CC_PREFIX + ",".join(items[:kept])).encode()) == limit
    return body, kept, len(rows)


def test_cc_body_over_4mb_is_silently_truncated(sb: SandboxServer) -> None:
    token = cc_token(sb)
    body, kept, sent = _truncation_body(4_000_000)
    assert len(body) > 4_000_000 and 0 < kept < sent
    r = requests.post(
        f"{sb.cc_api_base_url}/activities/contacts_json_import",
        headers={**cc_h(token), "Content-Type": "application/json"},
        data=body,
        timeout=TIMEOUT,
    )
    assert r.status_code == 201  # no error
    act = cc_wait(sb, token, r.json()["activity_id"])
    assert act["status"]["person_count"] == kept and act["status"]["error_count"] == 0
    stats = ctl(sb).stats()
    assert stats["store"]["cc"]["list_members"][CC_LIST_NEWSLETTER] == kept
    assert stats["limit_violations"] == [
        {
            "api": "cc",
            "kind": "body_truncated",
            "limit": 4_000_000,
            "actual": len(body),
            "contacts_sent": sent,
            "contacts_kept": kept,
        }
    ]
    assert stats["imports"]["cc"]["largest_body_bytes"] == len(body)


def test_cc_body_of_exactly_4mb_is_whole(sb: SandboxServer) -> None:
    token = cc_token(sb)
    rows = _cc_rows(20_000)
    size = len((CC_PREFIX + ",".join(_cc_items(rows)) + "]}").encode())
    _pad_streets(rows, 4_000_000 - size)
    body = (CC_PREFIX + ",".join(_cc_items(rows)) + "]}").encode()
    assert len(body) == 4_000_000
    r = requests.post(
        f"{sb.cc_api_base_url}/activities/contacts_json_import",
        headers={**cc_h(token), "Content-Type": "application/json"},
        data=body,
        timeout=TIMEOUT,
    )
    assert r.status_code == 201
    act = cc_wait(sb, token, r.json()["activity_id"])
    assert act["status"]["person_count"] == len(rows)
    assert ctl(sb).stats()["limit_violations"] == []


@pytest.mark.parametrize("mode", ["reject_contact", "truncate", "reject_request"])
def test_cc_overlong_values(sb: SandboxServer, mode: str) -> None:
    ctl(sb).reset(cc_overlong_values=mode)
    token = cc_token(sb)
    rows = [
        {"email": "long@example.com", "first_name": "N" * 51},
        {"email": "ok@example.com", "first_name": "Ok"},
    ]
    r = cc_import(sb, token, rows)
    stats = ctl(sb).stats()
    assert stats["limit_violations"][0]["kind"] == "value_too_long"
    assert stats["limit_violations"][0]["fields"] == ["first_name"]
    if mode == "reject_request":
        assert r.status_code == 400
        return
    act = cc_wait(sb, token, r.json()["activity_id"])
    long_contact = ctl(sb).cc_contact("long@example.com")
    if mode == "reject_contact":
        assert act["status"]["error_count"] == 1 and long_contact is None
        assert act["activity_errors"] == ["import_data[0]: first_name exceeds 50 characters"]
    else:
        assert act["status"]["error_count"] == 0
        assert long_contact is not None and long_contact["attributes"]["first_name"] == "N" * 50


def test_cc_email_length_limit_is_configurable(sb: SandboxServer) -> None:
    token = cc_token(sb)
    email = "a" * 60 + "@example.com"  # 72 characters: over the import schema's 50, under 80
    act = cc_wait(sb, token, cc_import(sb, token, [{"email": email}]).json()["activity_id"])
    assert act["status"]["error_count"] == 0
    ctl(sb).configure(cc_email_max_length=50)
    act = cc_wait(sb, token, cc_import(sb, token, [{"email": "b" + email}]).json()["activity_id"])
    assert act["status"]["error_count"] == 1


def test_cc_contact_lookup_paging_and_removal(sb: SandboxServer) -> None:
    token = cc_token(sb)
    h = cc_h(token)
    cc_wait(sb, token, cc_import(sb, token, contacts(7)).json()["activity_id"])
    found = requests.get(
        f"{sb.cc_api_base_url}/contacts", headers=h, params={"email": "USER3@example.com"}, timeout=TIMEOUT
    ).json()["contacts"]
    assert [c["email_address"]["address"] for c in found] == ["user3@example.com"]

    ids: list[str] = []
    next_url: str | None = f"{sb.cc_api_base_url}/contacts?lists={CC_LIST_NEWSLETTER}&limit=3"
    while next_url:
        page = requests.get(next_url, headers=h, timeout=TIMEOUT).json()
        ids += [c["contact_id"] for c in page["contacts"]]
        href = page["_links"].get("next", {}).get("href")
        next_url = f"{sb.url}{href}" if href else None
    assert len(ids) == len(set(ids)) == 7
    assert (
        requests.get(f"{sb.cc_api_base_url}/contacts?limit=501", headers=h, timeout=TIMEOUT).status_code
        == 400
    )

    body = {"source": {"contact_ids": ids[:3]}, "list_ids": [CC_LIST_NEWSLETTER]}
    r = requests.post(
        f"{sb.cc_api_base_url}/activities/remove_list_memberships", headers=h, json=body, timeout=TIMEOUT
    )
    assert r.status_code == 201
    act = cc_wait(sb, token, r.json()["activity_id"])
    assert act["state"] == "completed" and act["status"]["list_count"] == 1
    assert len(ctl(sb).cc_list_contacts(CC_LIST_NEWSLETTER)) == 4
    body = {"source": {"contact_ids": ids[:1] * 501}, "list_ids": [CC_LIST_NEWSLETTER]}
    r = requests.post(
        f"{sb.cc_api_base_url}/activities/remove_list_memberships", headers=h, json=body, timeout=TIMEOUT
    )
    assert r.status_code == 400


def test_cc_rate_limits(sb: SandboxServer) -> None:
    client = ctl(sb)
    client.reset(rate_scale=1.0)
    token = cc_token(sb)
    results = [
        requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=cc_h(token), timeout=TIMEOUT)
        for _ in range(8)
    ]
    throttled = [r for r in results if r.status_code == 429]
    assert throttled and {r.status_code for r in results} == {200, 429}
    # As documented: a 429 body is one error object (other errors are lists).
    assert throttled[0].json() == {
        "error_key": "throttled",
        "error_message": throttled[0].json()["error_message"],
    }
    assert "Retry-After" not in throttled[0].headers
    # The token endpoint is never limited.
    assert all(cc_token(sb) for _ in range(8))
    assert client.stats()["rate_limit_rejections"] == {"cc_per_second": len(throttled)}

    client.reset(cc_daily_quota=3)
    token = cc_token(sb)
    codes = [
        requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=cc_h(token), timeout=TIMEOUT)
        for _ in range(4)
    ]
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    assert codes[3].json()["error_key"] == "quota_exceeded"
    assert client.stats()["rate_limit_rejections"] == {"cc_daily_quota": 1}


# -- OAuth ----------------------------------------------------------------------------------------


def test_oauth_refresh_long_lived(sb: SandboxServer) -> None:
    for _ in range(2):
        r = requests.post(
            sb.cc_token_url,
            auth=BASIC,
            data={"grant_type": "refresh_token", "refresh_token": SEED.cc_refresh_token},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token", "id_token"}
        assert body["token_type"] == "Bearer" and body["expires_in"] == 86  # 86400 s / 1000
        assert body["refresh_token"] == SEED.cc_refresh_token
        assert body["scope"] == "contact_data offline_access"
        assert r.headers["Cache-Control"] == "no-store"
    assert ctl(sb).cc_refresh_tokens() == [SEED.cc_refresh_token]


def test_oauth_rotating_refresh_tokens(sb: SandboxServer) -> None:
    ctl(sb).reset(cc_rotating_refresh_tokens=True)

    def refresh(token: str) -> requests.Response:
        return requests.post(
            sb.cc_token_url,
            auth=BASIC,
            data={"grant_type": "refresh_token", "refresh_token": token},
            timeout=TIMEOUT,
        )

    first = refresh(SEED.cc_refresh_token)
    assert first.status_code == 200
    new = first.json()["refresh_token"]
    assert new != SEED.cc_refresh_token
    assert ctl(sb).cc_refresh_tokens() == [new]
    reused = refresh(SEED.cc_refresh_token)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant" and reused.json()["error_description"]
    assert refresh(new).status_code == 200


def test_oauth_client_errors(sb: SandboxServer) -> None:
    data = {"grant_type": "refresh_token", "refresh_token": SEED.cc_refresh_token}
    r = requests.post(sb.cc_token_url, auth=(SEED.cc_client_id, "wrong"), data=data, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = requests.post(
        sb.cc_token_url,
        data={**data, "client_id": SEED.cc_client_id, "client_secret": SEED.cc_client_secret},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401  # the secret belongs in the Basic header
    r = requests.post(sb.cc_token_url, data={**data, "client_id": SEED.cc_client_id}, timeout=TIMEOUT)
    assert r.status_code == 401  # the seeded (confidential) grant needs the client secret
    r = requests.post(sb.cc_token_url, auth=BASIC, data={**data, "refresh_token": "nope"}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = requests.post(sb.cc_token_url, auth=BASIC, json=data, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = requests.post(sb.cc_token_url, auth=BASIC, data={"grant_type": "password"}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def _authorize(sb: SandboxServer, scope: str, challenge: str, redirect: str) -> requests.Response:
    return requests.get(
        f"{sb.url}/oauth2/default/v1/authorize",
        params={
            "client_id": SEED.cc_client_id,
            "redirect_uri": redirect,
            "response_type": "code",
            "scope": scope,
            "state": "st-123",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )


def test_oauth_authorization_code_with_pkce(sb: SandboxServer) -> None:
    redirect = "http://localhost:8765/callback"
    verifier, challenge = pkce_pair()
    r = _authorize(sb, "contact_data offline_access", challenge, redirect)
    assert r.status_code == 302
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    query = parse_qs(location.query)
    assert query["state"] == ["st-123"]

    def exchange(code: str, code_verifier: str) -> requests.Response:
        return requests.post(
            sb.cc_token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "code_verifier": code_verifier,
                "client_id": SEED.cc_client_id,
            },
            timeout=TIMEOUT,
        )

    bad = exchange(query["code"][0], pkce_pair()[0])
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    code = parse_qs(
        urlsplit(_authorize(sb, "contact_data offline_access", challenge, redirect).headers["Location"]).query
    )
    good = exchange(code["code"][0], verifier)
    assert good.status_code == 200
    assert good.json()["refresh_token"] in ctl(sb).cc_refresh_tokens()
    public_refresh = requests.post(
        sb.cc_token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": good.json()["refresh_token"],
            "client_id": SEED.cc_client_id,
        },
        timeout=TIMEOUT,
    )
    assert public_refresh.status_code == 200  # PKCE grants refresh without a secret
    assert exchange(code["code"][0], verifier).status_code == 400  # single use

    code = parse_qs(urlsplit(_authorize(sb, "contact_data", challenge, redirect).headers["Location"]).query)
    no_offline = exchange(code["code"][0], verifier)
    assert no_offline.status_code == 200 and "refresh_token" not in no_offline.json()

    assert _authorize(sb, "contact_data", challenge, "https://evil.example.com/cb").status_code == 400


def test_oauth_device_flow(sb: SandboxServer) -> None:
    r = requests.post(
        f"{sb.url}/oauth2/default/v1/device/authorize",
        data={"client_id": SEED.cc_client_id, "scope": "contact_data offline_access"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    grant = r.json()
    assert set(grant) >= {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "interval",
    }
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": grant["device_code"]}
    poll["client_id"] = SEED.cc_client_id
    first = requests.post(sb.cc_token_url, data=poll, timeout=TIMEOUT)
    assert first.status_code == 400 and first.json()["error"] == "authorization_pending"
    second = requests.post(sb.cc_token_url, data=poll, timeout=TIMEOUT)
    assert second.status_code == 200 and second.json()["refresh_token"]
    h = cc_h(second.json()["access_token"])
    assert requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=h, timeout=TIMEOUT).status_code == 200


# -- faults -----------------------------------------------------------------------------------------


def test_fault_status_every_and_times(sb: SandboxServer) -> None:
    ctl(sb).add_fault(
        api="ac", path=r"^/api/3/lists$", method="GET", kind="status", every=2, times=1, retry_after=3
    )
    results = [requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT) for _ in range(5)]
    assert [r.status_code for r in results] == [200, 503, 200, 200, 200]
    assert results[1].headers["Retry-After"] == "3"
    rule = ctl(sb).faults()[0]
    assert rule["fired"] == 1 and rule["matched"] == 2
    assert ctl(sb).stats()["faults_injected"] == {"status": 1}


def test_fault_drop_closes_the_connection(sb: SandboxServer) -> None:
    ctl(sb).add_fault(api="cc", kind="drop", times=1)
    ctl(sb).add_fault(api="oauth", kind="drop", times=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sb.cc_api_base_url}/contact_lists", timeout=TIMEOUT)
    with pytest.raises(requests.ConnectionError):
        cc_token(sb)
    token = cc_token(sb)
    assert requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=cc_h(token), timeout=TIMEOUT).ok
    log = ctl(sb).requests_log()
    assert [e["status"] for e in log][:2] == ["dropped", "dropped"]


def test_fault_drop_after_processing(sb: SandboxServer) -> None:
    ctl(sb).add_fault(api="ac", kind="drop_after", path="bulk_import", times=1)
    with pytest.raises(requests.ConnectionError):
        ac_import(sb, contacts(10))
    assert ctl(sb).stats()["jobs"]["ac"] in ({"pending": 1}, {"completed": 1})


def test_fault_slow_still_answers(sb: SandboxServer) -> None:
    ctl(sb).add_fault(api="ac", kind="slow", delay_s=0.2, times=1)
    assert requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT).status_code == 200
    assert ctl(sb).stats()["faults_injected"] == {"slow": 1}


@pytest.mark.parametrize(("kind", "status"), [("job_failed", "failed"), ("job_interrupted", "interrupted")])
def test_fault_ac_job_ends_badly_without_effect(sb: SandboxServer, kind: str, status: str) -> None:
    ctl(sb).add_fault(api="ac", kind=kind, times=1)
    requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT)  # not a job: not counted
    failed = ac_wait(sb, ac_import(sb, contacts(10, subscribe=[{"listid": 1}])).json()["batchId"])
    assert failed["status"] == status and failed["success"] == []
    assert ctl(sb).ac_list_contacts(AC_LIST_NEWSLETTER) == []
    ok = ac_wait(sb, ac_import(sb, contacts(10, subscribe=[{"listid": 1}])).json()["batchId"])
    assert ok["status"] == "completed"
    assert len(ctl(sb).ac_list_contacts(AC_LIST_NEWSLETTER)) == 10


@pytest.mark.parametrize("state", ["failed", "cancelled", "timed_out"])
def test_fault_cc_activity_ends_badly_without_effect(sb: SandboxServer, state: str) -> None:
    ctl(sb).add_fault(api="cc", kind=f"activity_{state}", times=1)
    token = cc_token(sb)
    act = cc_wait(sb, token, cc_import(sb, token, contacts(3)).json()["activity_id"])
    assert act["state"] == state and act["activity_errors"]
    assert ctl(sb).cc_list_contacts(CC_LIST_NEWSLETTER) == []


def test_fault_limit_shaped_answers(sb: SandboxServer) -> None:
    client = ctl(sb)
    client.add_fault(api="cc", kind="quota_exceeded", times=1)
    client.add_fault(api="cc", kind="throttled", times=1)  # sees only the 2nd request
    client.add_fault(api="ac", kind="rate_limit_400", times=1)
    client.add_fault(api="ac", kind="throttled", times=1)
    h = cc_h(cc_token(sb))
    first = requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=h, timeout=TIMEOUT)
    second = requests.get(f"{sb.cc_api_base_url}/contact_lists", headers=h, timeout=TIMEOUT)
    assert (first.status_code, first.json()["error_key"]) == (429, "quota_exceeded")
    assert (second.status_code, second.json()["error_key"]) == (429, "throttled")
    r = requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["message"] == "Rate limit exceeded."
    r = requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    stats = client.stats()
    assert stats["rate_limit_rejections_total"] == 0  # injected, not real limits
    assert stats["faults_injected"] == {"quota_exceeded": 1, "throttled": 2, "rate_limit_400": 1}


def test_fault_quoting_error_quotes_the_first_contact_in_each_shape(sb: SandboxServer) -> None:
    client = ctl(sb)
    person = {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "phone": "+1 415 555 0100"}
    quote = "Contact ann@example.com (Ann Lee, +1 415 555 0100) is invalid"
    client.add_fault(api="ac", kind="quoting_error", path="bulk_import", times=1)
    client.add_fault(api="ac", kind="quoting_error", path="contact/sync", status=422, times=1)
    client.add_fault(api="cc", kind="quoting_error", times=1)
    bulk = ac_import(sb, [person, *contacts(3)])
    assert bulk.status_code == 400 and bulk.json()["success"] == 0
    assert bulk.json()["message"].startswith(quote)
    assert bulk.json()["failureReasons"] == [
        {"contact": 0, "failureReason": "Field' email' incorrect format: ann@example.com"}
    ]
    sync = requests.post(
        f"{sb.url}/api/3/contact/sync",
        headers=AC_H,
        json={"contact": {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"}},
        timeout=TIMEOUT,
    )
    (error,) = sync.json()["errors"]
    assert sync.status_code == 422 and error["title"] == "Contact ann@example.com (Ann Lee) is invalid"
    assert error["code"] == "field_invalid" and error["source"] == {"pointer": "/data/attributes/email"}
    cc = cc_import(sb, cc_token(sb), [person])
    assert cc.status_code == 400
    assert cc.json() == [{"error_key": "contacts.api.validation.error", "error_message": quote}]
    # Refused before anything was stored.
    assert client.ac_contact("ann@example.com") is None and client.cc_contact("ann@example.com") is None
    assert client.stats()["faults_injected"] == {"quoting_error": 3}


def test_fault_redirect_answers_a_location_and_follows_nothing(sb: SandboxServer) -> None:
    ctl(sb).add_fault(api="ac", kind="redirect", path="/lists$", location="http://127.0.0.1:9/api/3/lists")
    ctl(sb).add_fault(
        api="oauth", kind="redirect", status=307, location="https://elsewhere.example/t", times=1
    )
    r = requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT, allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (302, "http://127.0.0.1:9/api/3/lists")
    r = requests.post(f"{sb.url}/oauth2/default/v1/token", timeout=TIMEOUT, allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (307, "https://elsewhere.example/t")
    assert ctl(sb).stats()["faults_injected"] == {"redirect": 2}
    assert cc_token(sb)  # times=1: the token endpoint answers again


def test_fault_rules_are_validated(sb: SandboxServer) -> None:
    for rule in (
        {"api": "ac", "kind": "explode"},
        {"api": "oauth", "kind": "job_failed"},
        {"api": "cc", "kind": "status", "path": "("},
        {"api": "cc", "kind": "status", "every": 0},
        {"api": "ac", "kind": "redirect"},
        {"api": "ac", "kind": "redirect", "location": "http://127.0.0.1:9/", "status": 200},
        {"api": "cc", "kind": "status", "location": "http://127.0.0.1:9/"},
    ):
        r = requests.post(f"{sb.url}/_sandbox/faults", json=rule, timeout=TIMEOUT)
        assert r.status_code == 400, rule
    assert ctl(sb).clear_faults() == 0


# -- latency, recording, control ------------------------------------------------------------------


def test_slow_import_does_not_block_other_requests(sb: SandboxServer) -> None:
    ctl(sb).reset(import_latency_s=1.0)
    result: dict[str, int] = {}

    def slow() -> None:
        result["import"] = ac_import(sb, contacts(10)).status_code

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.1)
    assert requests.get(f"{sb.url}/api/3/lists", headers=AC_H, timeout=TIMEOUT).status_code == 200
    assert worker.is_alive()  # the import is still sleeping while the GET has been answered
    worker.join()
    assert result["import"] == 200


def test_request_log_keeps_no_credential_and_no_body_by_default(sb: SandboxServer) -> None:
    token = cc_token(sb)
    cc_import(sb, token, contacts(2))
    requests.get(f"{sb.url}/api/3/lists", headers=AC_H, params={"limit": 5}, timeout=TIMEOUT)
    log = ctl(sb).requests_log()
    assert [e["api"] for e in log] == ["oauth", "cc", "ac"]
    token_call, cc_call, ac_call = log
    basic = base64.b64encode(f"{SEED.cc_client_id}:{SEED.cc_client_secret}".encode()).decode()
    # Which credential arrived is still visible, as a fingerprint; the credential itself is not.
    assert token_call["headers"]["authorization"] == redact_credential(f"Basic {basic}")
    assert token_call["headers"]["authorization"].startswith("Basic <redacted sha256:")
    assert cc_call["headers"]["authorization"] == redact_credential(f"Bearer {token}")
    assert ac_call["headers"]["api-token"] == redact_credential(SEED.ac_api_key)
    assert ac_call["query"] == "limit=5"
    assert all(e["body"] is None for e in log) and cc_call["body_bytes"] > 0
    text = json.dumps(log)
    for secret in (SEED.cc_client_secret, SEED.cc_refresh_token, SEED.ac_api_key, basic, token):
        assert secret not in text
    assert "user0@example.com" not in text
    assert [e["api"] for e in ctl(sb).requests_log(api="cc")] == ["cc"]


def test_request_log_bodies_only_when_asked(sb: SandboxServer) -> None:
    ctl(sb).reset(record_bodies=True)
    token = cc_token(sb)
    cc_import(sb, token, contacts(2))
    token_call, cc_call = ctl(sb).requests_log()
    assert "refresh_token=sandbox-refresh-token" in token_call["body"]
    assert json.loads(cc_call["body"])["import_data"][0]["email"] == "user0@example.com"
    assert token not in json.dumps(cc_call)  # bodies on, credential headers still redacted


def test_request_log_bodies_truncated_or_off(sb: SandboxServer) -> None:
    ctl(sb).reset(record_bodies=True)
    ac_import(sb, contacts(250, first_name="x" * 300))
    entry = ctl(sb).requests_log(limit=1)[0]
    assert entry["body_truncated"] and len(entry["body"].encode()) == 64 * 1024
    assert entry["body_bytes"] > 64 * 1024
    ctl(sb).configure(record_bodies=False)
    ac_import(sb, contacts(10))
    entry = ctl(sb).requests_log(limit=1)[0]
    assert entry["body"] is None and entry["body_bytes"] > 0


def test_stats_count_requests_by_endpoint(sb: SandboxServer) -> None:
    for list_id in (1, 2, 99):
        requests.get(f"{sb.url}/api/3/lists/{list_id}", headers=AC_H, timeout=TIMEOUT)
    requests.get(f"{sb.url}/api/3/nowhere", headers=AC_H, timeout=TIMEOUT)
    stats = ctl(sb).stats()
    by_endpoint = stats["requests"]["ac"]["by_endpoint"]
    assert by_endpoint["GET /api/3/lists/{list_id}"] == {"count": 3, "statuses": {"200": 2, "404": 1}}
    assert by_endpoint["GET (unmatched)"]["statuses"] == {"404": 1}
    assert stats["requests"]["ac"]["total"] == 4
    assert stats["rate_limit_rejections_total"] == 0 and stats["limit_violation_count"] == 0


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


def test_command_line_writes_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_ciexport.tools.sandbox",
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.05)
        url = ready.read_text().strip()
        assert SandboxClient(url).health()
        assert requests.get(f"{url}/api/3/lists/1", headers=AC_H, timeout=TIMEOUT).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert f"{url}/v3" in out and f"{url}/oauth2/default/v1/token" in out
    assert not ready.exists()


@pytest.mark.parametrize("shape", ["list", "object", "documented"])
def test_cc_error_bodies_come_in_the_configured_shape(sb: SandboxServer, shape: str) -> None:
    """The real API answers some errors as a list of objects and others (429) as one object."""
    client = ctl(sb)
    client.reset(cc_error_shape=shape)
    h = cc_h(cc_token(sb))
    client.add_fault(api="cc", kind="throttled", times=1)
    client.add_fault(api="cc", kind="status", status=503, times=1)
    base = sb.cc_api_base_url
    unknown_list = f"{'0' * 8}-0000-4000-8000-{'0' * 12}"
    answers = {
        "throttled": requests.get(f"{base}/contact_lists", headers=h, timeout=TIMEOUT),
        "http.503": requests.get(f"{base}/contact_lists", headers=h, timeout=TIMEOUT),
        "unauthorized": requests.get(f"{base}/contact_lists", headers=cc_h("nope"), timeout=TIMEOUT),
        "not.found": requests.get(f"{base}/contact_lists/{unknown_list}", headers=h, timeout=TIMEOUT),
        "contacts.api.validation.error": requests.get(
            f"{base}/contact_lists/nope", headers=h, timeout=TIMEOUT
        ),
    }
    client.configure(cc_daily_quota=1)  # spent already
    answers["quota_exceeded"] = requests.get(f"{base}/contact_lists", headers=h, timeout=TIMEOUT)
    for key, r in answers.items():
        body = r.json()
        as_object = shape == "object" or (shape == "documented" and r.status_code == 429)
        assert isinstance(body, dict if as_object else list), (key, r.status_code, body)
        error = body if as_object else body[0]
        assert error["error_key"] == key and error["error_message"], (key, body)
    assert answers["quota_exceeded"].status_code == answers["throttled"].status_code == 429


# -- what a web page may send --------------------------------------------------------------------


def test_a_request_for_another_host_name_is_refused(sb: SandboxServer) -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example.
    for path in ("/_sandbox/config", f"/_sandbox/ac/lists/{AC_LIST_VIP}/contacts", "/api/3/lists"):
        r = requests.get(f"{sb.url}{path}", headers={"Host": "evil.example:8025", **AC_H}, timeout=TIMEOUT)
        assert r.status_code == 403 and "loopback" in r.json()["error"], path
    r = requests.post(
        f"{sb.url}/_sandbox/reset",
        headers={"Host": "evil.example"},
        json={"latency_s": 0.25},
        timeout=TIMEOUT,
    )
    assert r.status_code == 403 and ctl(sb).config()["latency_s"] != 0.25
    for host in ("127.0.0.1", "localhost:1", "[::1]:8025", "127.0.0.2"):
        r = requests.get(f"{sb.url}/_sandbox/health", headers={"Host": host}, timeout=TIMEOUT)
        assert r.status_code == 200, host


def test_a_control_call_without_a_json_body_is_refused(sb: SandboxServer) -> None:
    # What a cross-site form or a text/plain fetch can send without a CORS preflight.
    ctl(sb).add_fault(api="cc", kind="drop", times=1)
    for headers, body in (
        ({"Content-Type": "text/plain"}, '{"latency_s": 0.25}'),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "latency_s=0.25"),
        ({}, ""),
    ):
        r = requests.post(f"{sb.url}/_sandbox/reset", headers=headers, data=body, timeout=TIMEOUT)
        assert r.status_code == 415 and "application/json" in r.json()["error"], headers
    assert ctl(sb).config()["latency_s"] != 0.25 and ctl(sb).faults()
    r = requests.post(f"{sb.url}/_sandbox/reset", json={}, timeout=TIMEOUT)
    assert r.status_code == 200 and ctl(sb).faults() == []
    # DELETE needs a CORS preflight, which a page cannot pass here: it takes no body.
    ctl(sb).add_fault(api="cc", kind="drop", times=1)
    assert requests.delete(f"{sb.url}/_sandbox/faults", timeout=TIMEOUT).json() == {"removed": 1}


def test_a_busy_port_is_answered_with_a_port_that_is_free() -> None:
    import re
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "airflow_provider_ciexport.tools.sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    suggested = re.search(r"make sandbox PORT=(\d+)", done.stderr)
    assert suggested and int(suggested.group(1)) != port, done.stderr
