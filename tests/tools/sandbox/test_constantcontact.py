"""The Constant Contact routes over real HTTP: lists and fields, JSON imports, the 4 MB truncation,
contact lookups, rate limits and error shapes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import CC_LIST_NEWSLETTER, CC_LIST_VIP
from tests.tools.sandbox.helpers import TIMEOUT, cc_h, cc_import, cc_token, cc_wait, contacts, ctl

pytestmark = pytest.mark.integration


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


def _cc_emails(sb: SandboxServer, token: str, **params: str) -> tuple[list[str], int]:
    r = requests.get(
        f"{sb.cc_api_base_url}/contacts",
        headers=cc_h(token),
        params={"include_count": "true", **params},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    return [c["email_address"]["address"] for c in r.json()["contacts"]], r.json()["contacts_count"]


def _membership_count(sb: SandboxServer, token: str, which: str) -> int:
    r = requests.get(
        f"{sb.cc_api_base_url}/contact_lists/{CC_LIST_NEWSLETTER}",
        headers=cc_h(token),
        params={"include_membership_count": which},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    count: int = r.json()["membership_count"]
    return count


def test_cc_deleted_contacts_are_hidden_by_default_and_found_by_status(sb: SandboxServer) -> None:
    token = cc_token(sb)
    cc_wait(sb, token, cc_import(sb, token, contacts(4)).json()["activity_id"])
    ctl(sb).cc_unsubscribe(None, "user3@example.com")
    assert _membership_count(sb, token, "all") == _membership_count(sb, token, "active") == 3
    ctl(sb).cc_delete_contact("user1@example.com")
    assert _membership_count(sb, token, "all") == _membership_count(sb, token, "active") == 2
    assert _cc_emails(sb, token) == (["user0@example.com", "user2@example.com", "user3@example.com"], 3)
    assert _cc_emails(sb, token, email="USER1@example.com") == ([], 0)
    assert _cc_emails(sb, token, status="deleted") == (["user1@example.com"], 1)
    assert _cc_emails(sb, token, status="all")[1] == 4
    assert _cc_emails(sb, token, status="active") == (["user0@example.com", "user2@example.com"], 2)
    assert _cc_emails(sb, token, status="deleted,unsubscribed")[0] == [
        "user1@example.com",
        "user3@example.com",
    ]
    assert _cc_emails(sb, token, status="temp_hold") == ([], 0)
    r = requests.get(
        f"{sb.cc_api_base_url}/contacts", headers=cc_h(token), params={"status": "gone"}, timeout=TIMEOUT
    )
    assert r.status_code == 400
    found = requests.get(
        f"{sb.cc_api_base_url}/contacts",
        headers=cc_h(token),
        params={"status": "deleted", "include": "list_memberships"},
        timeout=TIMEOUT,
    ).json()["contacts"][0]
    assert found["list_memberships"] == [] and len(found["deleted_at"]) == len("2026-12-07")
    assert found["email_address"]["opt_out_source"] == "Account" and found["email_address"]["opt_out_date"]
    # An import of the address revives the contact (the spec: deleted contacts can be added back).
    cc_wait(sb, token, cc_import(sb, token, contacts(1, start=1)).json()["activity_id"])
    assert _cc_emails(sb, token, status="deleted") == ([], 0)
    assert _membership_count(sb, token, "active") == 3


def test_cc_contacts_updated_after(sb: SandboxServer) -> None:
    token = cc_token(sb)
    cc_wait(sb, token, cc_import(sb, token, contacts(3)).json()["activity_id"])
    time.sleep(0.01)
    since = datetime.now(timezone.utc)
    time.sleep(0.01)
    ctl(sb).cc_remove_from_list(CC_LIST_NEWSLETTER, "user2@example.com")
    after = since.isoformat().replace("+00:00", "Z")
    assert _cc_emails(sb, token, updated_after=after) == (["user2@example.com"], 1)
    assert _cc_emails(sb, token, updated_before=after)[1] == 2
    assert _cc_emails(sb, token, updated_after="2020-01-01T00:00:00Z")[1] == 3
    changed = requests.get(
        f"{sb.cc_api_base_url}/contacts",
        headers=cc_h(token),
        params={"updated_after": after},
        timeout=TIMEOUT,
    ).json()["contacts"][0]
    assert changed["updated_at"] > after > changed["created_at"]
    r = requests.get(
        f"{sb.cc_api_base_url}/contacts",
        headers=cc_h(token),
        params={"updated_after": "yesterday"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 400


def test_cc_contacts_opted_out_after(sb: SandboxServer) -> None:
    token = cc_token(sb)
    cc_wait(sb, token, cc_import(sb, token, contacts(4)).json()["activity_id"])
    ctl(sb).cc_unsubscribe(None, "user0@example.com")
    time.sleep(0.01)
    since = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    time.sleep(0.01)
    ctl(sb).cc_unsubscribe(None, "user2@example.com")
    ctl(sb).cc_remove_from_list(CC_LIST_NEWSLETTER, "user3@example.com")  # a change, not an opt-out
    assert _cc_emails(sb, token, status="unsubscribed") == (["user0@example.com", "user2@example.com"], 2)
    assert _cc_emails(sb, token, status="unsubscribed", optout_after=since) == (["user2@example.com"], 1)
    assert _cc_emails(sb, token, optout_before=since) == (["user0@example.com"], 1)
    r = requests.get(
        f"{sb.cc_api_base_url}/contacts", headers=cc_h(token), params={"optout_after": "x"}, timeout=TIMEOUT
    )
    assert r.status_code == 400
