"""ConstantContactSegmentExportOperator end to end against the sandbox: list contents and reports."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import (
    DestinationAuthError,
    DestinationQuotaError,
    ExportConfigurationError,
    ExportIncompleteError,
)
from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.operators import segment_data as data
from tests.support import calls, posts, set_connection

VIP = "22222222-2222-4222-8222-222222222222"
LAPSED = "33333333-3333-4333-8333-333333333333"
LISTS = [VIP, LAPSED]
MAPPING = {
    "email": "email",
    "first_name": "first",
    "last_name": "last",
    "phone": "phone",
    "cf:loyalty_tier": "tier",
    "cf:city": "city",
}


def _export(conn_id: str, **kwargs: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "task_id": "export",
        "list_id": LISTS,
        "field_mapping": MAPPING,
        "constantcontact_conn_id": conn_id,
    }
    params.update(kwargs)
    return ConstantContactSegmentExportOperator(**params).execute(context={})  # type: ignore[arg-type]


def _assert_lists_hold_the_segment(sandbox: SandboxClient) -> None:
    for list_id in LISTS:
        contacts = {c["email"]: c for c in sandbox.cc_list_contacts(list_id)}
        assert set(contacts) == set(data.EXPECTED), f"list {list_id}"
        for email, attrs in data.EXPECTED.items():
            got = contacts[email]
            for attr in ("first_name", "last_name", "phone"):
                assert got["attributes"].get(attr) == attrs.get(attr), (email, attr)
            assert got["custom_fields"].get("loyalty_tier") == attrs.get("tier")
            assert got["custom_fields"].get("city") == attrs.get("city")
    assert sandbox.stats()["counters"].get("cc.blank_values_sent", 0) == 0


def _assert_report(report: dict[str, Any]) -> None:
    assert report["read"] == data.READ
    assert report["invalid"] == data.INVALID
    assert report["duplicates"] == data.DUPLICATES
    assert report["submitted"] == len(data.EXPECTED) == report["accepted"]
    assert report["rejected"] == 0
    # Carol's 300-character last name is over Constant Contact's 50: omitted and reported, not cut.
    assert report["omitted_too_long.last_name"] == 1
    assert report["requests"] > 0
    json.dumps(report)


@pytest.mark.parametrize("source", data.SOURCE_KINDS)
def test_every_source_kind_exports_exactly_the_valid_contacts(
    source: str, cc_conn: str, sandbox: SandboxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _export(cc_conn, **data.source_kwargs(source, tmp_path, monkeypatch))
    _assert_lists_hold_the_segment(sandbox)
    _assert_report(report)
    assert report["batches"] == 1 and len(report["jobs"]) == 1


def test_batches_are_sized_by_bytes_so_nothing_is_truncated(cc_conn: str, sandbox: SandboxClient) -> None:
    """12,000 contacts of ~400 bytes: fewer than 40,000 contacts, but far over 4 MB in one body."""
    rows = [
        {
            "email": f"wide.{i}@example.com",
            "first": "F" * 50,
            "last": "L" * 50,
            "phone": "5" * 20,
            "tier": "t" * 250,
        }
        for i in range(12_000)
    ]
    report = _export(
        cc_conn, records=rows, list_id=VIP, field_mapping={k: v for k, v in MAPPING.items() if k != "cf:city"}
    )
    assert report["accepted"] == 12_000 and report["batches"] >= 2
    stats = sandbox.stats()
    assert stats["limit_violations"] == []
    assert stats["imports"]["cc"]["largest_body_bytes"] < 4_000_000
    assert len(sandbox.cc_list_contacts(VIP)) == 12_000


def test_unsubscribed_contacts_are_counted_rejected(cc_conn: str, sandbox: SandboxClient) -> None:
    sandbox.cc_unsubscribe(VIP, "ann.lee@example.com")
    report = _export(cc_conn, records=data.ROWS, list_id=VIP)
    assert report["rejected"] == 1 and report["accepted"] == len(data.EXPECTED) - 1
    assert "ann.lee@example.com" not in {c["email"] for c in sandbox.cc_list_contacts(VIP)}


@pytest.mark.parametrize("named", [True, False], ids=["activity-names-it", "activity-does-not-say"])
def test_the_outcome_log_names_the_refused_contact_only_when_the_activity_does(
    named: bool, cc_conn: str, sandbox: SandboxClient, tmp_path: Path
) -> None:
    sandbox.configure(cc_email_max_length=50, cc_activity_errors_name_rows=named)
    too_long = {"email": f"{'x' * 50}@example.com", "first": "Long", "customer_id": "long"}  # valid here
    records = [*({**row, "customer_id": f"c{i}"} for i, row in enumerate(data.ROWS, 1)), too_long]
    path = tmp_path / "outcomes.csv"
    report = _export(
        cc_conn, records=records, list_id=VIP, outcomes_path=f"file://{path}", outcome_key="customer_id"
    )
    with path.open(newline="") as f:
        rows = {row["row_id"]: row for row in csv.DictReader(f)}
    statuses = Counter(row["status"] for row in rows.values())
    assert len(rows) == report["read"] and (report["rejected"], report["batches"]) == (1, 1)
    assert statuses["invalid"] == report["invalid"] and statuses["duplicate"] == report["duplicates"]
    if named:  # "import_data[i]: ..." names the contact: exact, row by row
        assert rows["long"]["status"] == "refused" and rows["long"]["job_id"] in report["jobs"]
        assert (statuses["accepted"], statuses["refused"]) == (report["accepted"], 1)
    else:  # the activity only counts: the batch's rows say so rather than guess
        unconfirmed = [row for row in rows.values() if row["status"] == "unconfirmed"]
        assert len(unconfirmed) == report["submitted"] and rows["long"] in unconfirmed
        counts = f"batch_accepted={report['accepted']};batch_rejected=1"
        assert all(row["reason"].startswith(counts) for row in unconfirmed)
    assert "@" not in path.read_text()


@pytest.mark.parametrize("kind", ["activity_failed", "activity_cancelled", "activity_timed_out"])
def test_failed_activities_are_sent_again(cc_conn: str, sandbox: SandboxClient, kind: str) -> None:
    sandbox.add_fault(api="cc", kind=kind, times=1)
    report = _export(cc_conn, records=data.ROWS)
    assert report["accepted"] == len(data.EXPECTED) and report["resubmitted_batches"] == 1
    _assert_lists_hold_the_segment(sandbox)


def test_activities_that_keep_failing_fail_the_task(cc_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="cc", kind="activity_failed", times=3)
    with pytest.raises(ExportIncompleteError, match="NOT exported"):
        _export(cc_conn, records=data.ROWS)


def test_token_expiry_mid_export_loses_no_batch(cc_conn: str, sandbox: SandboxClient) -> None:
    rows = [{"email": f"t{i}@example.com", "first": "x" * 40} for i in range(30_000)]
    sandbox.add_fault(
        api="cc", kind="status", status=401, path="/activities/", times=1
    )  # a token dies mid-way
    report = _export(
        cc_conn, records=rows, list_id=VIP, field_mapping={"email": "email", "first_name": "first"}
    )
    assert report["accepted"] == 30_000
    assert len(sandbox.cc_list_contacts(VIP)) == 30_000


def test_quota_spent_fails_at_once_saying_what_was_exported(cc_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="cc", kind="quota_exceeded", path="/activities/contacts_json_import")
    with pytest.raises(DestinationQuotaError, match="00:00 UTC") as err:
        _export(cc_conn, records=data.ROWS)
    assert "0 of 5 contacts" in str(err.value)


def _assert_nothing_sent(sandbox: SandboxClient) -> None:
    assert posts(sandbox.stats(), "cc") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"list_id": "vip-list"}, "not a UUID"),
        ({"list_id": 7}, "not a UUID"),
        ({"list_id": "99999999-9999-4999-8999-999999999999"}, "no list"),
        ({"field_mapping": {"email": "email", "cf:shoe_size": "first"}}, "shoe_size"),
        ({"field_mapping": {"email": "email", **{f"cf:f{i}": "first" for i in range(26)}}}, "25"),
        ({"field_mapping": {"email": "email", "nickname": "first"}}, "nickname"),
        ({"field_mapping": {}}, "email"),
        ({"max_profiles": 3}, "max_profiles"),
    ],
)
def test_bad_input_is_a_clear_error_before_anything_is_sent(
    cc_conn: str, sandbox: SandboxClient, kwargs: dict[str, Any], message: str
) -> None:
    params: dict[str, Any] = {"records": data.ROWS, **kwargs}
    with pytest.raises(ExportConfigurationError, match=message):
        _export(cc_conn, **params)
    _assert_nothing_sent(sandbox)


def test_access_tokens_expiring_during_the_export_are_renewed(cc_conn: str, sandbox: SandboxClient) -> None:
    # The token lives 1 s; the import alone takes 1.5 s, so the polls after it need a new one.
    sandbox.configure(cc_access_token_ttl_s=1, import_latency_s=1.5)
    rows = [{"email": f"ttl{i}@example.com", "first": "y" * 40} for i in range(30_000)]
    report = _export(
        cc_conn, records=rows, list_id=VIP, field_mapping={"email": "email", "first_name": "first"}
    )
    assert report["accepted"] == 30_000
    assert len(sandbox.cc_list_contacts(VIP)) == 30_000
    assert calls(sandbox.stats(), "oauth", "POST /oauth2/default/v1/token") >= 2


def test_bad_client_credentials_fail_before_sending(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server: Any
) -> None:
    conn = set_connection(
        monkeypatch, "cc_badsecret", **{**sandbox_server.cc_connection(), "password": "not-the-secret"}
    )
    with pytest.raises(DestinationAuthError, match="client id or client secret"):
        _export(conn, records=data.ROWS)
    _assert_nothing_sent(sandbox)
