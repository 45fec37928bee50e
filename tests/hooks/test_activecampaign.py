"""ActiveCampaignHook against the sandbox over real HTTP."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.exceptions import (
    DestinationApiError,
    DestinationAuthError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.recording import redact_credential
from tests.support import calls, set_connection


def _wait_completed(hook: ActiveCampaignHook, batch_id: str) -> JobResult:
    for _ in range(100):
        status = hook.import_status(batch_id)
        if status.done:
            return status
        time.sleep(0.2)
    raise AssertionError("import never finished")


def _import_body(*emails: str, list_id: int = seed.AC_LIST_NEWSLETTER) -> bytes:
    contacts = [{"email": e, "first_name": "Ann", "subscribe": [{"listid": list_id}]} for e in emails]
    return json.dumps({"contacts": contacts}).encode()


def test_lists_and_fields(ac_conn: str) -> None:
    hook = ActiveCampaignHook(ac_conn)
    assert hook.get_list(seed.AC_LIST_VIP)["name"] == "VIP customers"
    assert hook.get_list(999) is None
    assert {f["perstag"] for f in hook.get_fields()} == {"LOYALTY_TIER", "FAVORITE_STORE", "CITY"}
    assert {lst["name"] for lst in hook.get_lists()} >= {"Newsletter", "VIP customers", "Lapsed customers"}


def test_import_contacts_lands_in_the_lists_with_fields_and_tags(
    ac_conn: str, sandbox: SandboxClient
) -> None:
    hook = ActiveCampaignHook(ac_conn)
    contacts = [
        {"email": " Ann@Example.com ", "first_name": "Ann", "field:LOYALTY_TIER": "gold"},
        {"email": "bob@example.org", "last_name": "", "phone": 4155550100},
        {"email": "cy@example.net"},
    ]
    batch_id = hook.import_contacts(contacts, [seed.AC_LIST_NEWSLETTER, str(seed.AC_LIST_VIP)], tags=["vip"])
    status = _wait_completed(hook, batch_id)
    assert (status.state, status.ok, status.accepted, status.rejected) == ("completed", True, 3, 0)
    for list_id in (seed.AC_LIST_NEWSLETTER, seed.AC_LIST_VIP):
        got = {c["email"]: c for c in sandbox.ac_list_contacts(list_id)}
        assert set(got) == {"ann@example.com", "bob@example.org", "cy@example.net"}
    assert got["ann@example.com"]["first_name"] == "Ann"
    assert got["ann@example.com"]["fields_by_perstag"]["LOYALTY_TIER"] == "gold"
    assert got["bob@example.org"]["phone"] == "4155550100"
    assert got["cy@example.net"]["tags"] == ["vip"]


@pytest.mark.parametrize(
    ("contacts", "lists", "message"),
    [
        ([{"email": "not-an-email"}], [1], r"Contact 1 of 1 has no valid e-mail \(malformed\)"),
        ([{"first_name": "Ann"}], [1], "'email'"),
        ([{"email": "a@example.com"}, {"email": "A@example.com"}], [1], "Contact 2 of 2 repeats"),
        ([{"email": "a@example.com", "nickname": "x"}], [1], "nickname"),
        ([{"email": "a@example.com", "field:SHOE_SIZE": "x"}], [1], "SHOE_SIZE"),
        ([{"email": f"c{i}@example.com"} for i in range(251)], [1], "at most 250"),
        ([{"email": "a@example.com"}], ["vip"], "not a positive whole number"),
        ([], [1], "No contacts"),
    ],
)
def test_import_contacts_refuses_bad_input_before_sending(
    ac_conn: str, sandbox: SandboxClient, contacts: list, lists: list, message: str
) -> None:
    with pytest.raises(ExportConfigurationError, match=message):
        ActiveCampaignHook(ac_conn).import_contacts(contacts, lists)
    assert calls(sandbox.stats(), "ac", "POST /api/3/import/bulk_import") == 0


def test_failed_import_reads_as_done_but_not_ok(ac_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="ac", kind="job_failed", times=1)
    hook = ActiveCampaignHook(ac_conn)
    status = _wait_completed(hook, hook.import_contacts([{"email": "f@example.com"}], [1]))
    assert (status.state, status.done, status.ok) == ("failed", True, False)


def test_bulk_import_of_a_ready_body_lands_in_the_list(ac_conn: str, sandbox: SandboxClient) -> None:
    hook = ActiveCampaignHook(ac_conn)
    batch_id = hook.bulk_import(_import_body("ann@example.com", "bob@example.org"))
    assert _wait_completed(hook, batch_id).ok
    emails = {c["email"] for c in sandbox.ac_list_contacts(seed.AC_LIST_NEWSLETTER)}
    assert emails == {"ann@example.com", "bob@example.org"}


def test_contact_sync_and_list_membership(ac_conn: str, sandbox: SandboxClient) -> None:
    hook = ActiveCampaignHook(ac_conn)
    contact_id = hook.sync_contact({"email": "solo@example.com", "first_name": "Solo"})
    hook.add_to_list(contact_id, seed.AC_LIST_LAPSED)
    (contact,) = sandbox.ac_list_contacts(seed.AC_LIST_LAPSED)
    assert contact["email"] == "solo@example.com"
    assert contact["first_name"] == "Solo"


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_fails_at_once_with_advice(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server, status: int
) -> None:
    sandbox.configure(ac_auth_error_status=status)
    conn = set_connection(
        monkeypatch, "ac_bad", conn_type="activecampaign", host=sandbox_server.url, password="nope"
    )
    hook = ActiveCampaignHook(conn)
    with pytest.raises(DestinationAuthError, match="API key"):
        hook.get_list(1)
    assert hook.requests_made == 1
    ok, message = hook.test_connection()
    assert not ok
    assert "API key" in message and "Settings > Developer" in message


def test_test_connection(ac_conn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ActiveCampaignHook(ac_conn).test_connection() == (True, "Connected to ActiveCampaign.")
    unreachable = set_connection(
        monkeypatch, "ac_nohost", conn_type="activecampaign", host="http://127.0.0.1:9", password="k"
    )
    ok, message = ActiveCampaignHook(unreachable).test_connection()
    assert not ok
    assert "API URL" in message
    empty = set_connection(monkeypatch, "ac_empty", conn_type="activecampaign", host="", password="k")
    ok, message = ActiveCampaignHook(empty).test_connection()
    assert not ok
    assert "no API URL" in message


def test_test_messages_speak_of_this_connection(
    sandbox: SandboxClient, sandbox_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The UI tests a copy under a random id: naming it would only confuse.
    bad_key = set_connection(
        monkeypatch, "Ad7K48Hy", **{**sandbox_server.ac_connection(), "password": "nope"}
    )
    ok, message = ActiveCampaignHook(bad_key).test_connection()
    assert not ok and "API key of this connection" in message and "Ad7K48Hy" not in message
    unreachable = set_connection(
        monkeypatch, "Zq3W9xYv", conn_type="activecampaign", host="http://127.0.0.1:9", password="k"
    )
    ok, message = ActiveCampaignHook(unreachable).test_connection()
    assert not ok and "127.0.0.1:9" in message and "API URL (host)" in message
    assert "Zq3W9xYv" not in message and "task" not in message
    # Outside a test, a message names the connection.
    with pytest.raises(DestinationAuthError, match="connection 'Ad7K48Hy'"):
        ActiveCampaignHook(bad_key).get_list(seed.AC_LIST_VIP)


def test_a_server_that_does_not_speak_tls_fails_at_once_naming_the_host(
    sandbox: SandboxClient, sandbox_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    https = sandbox_server.url.replace("http://", "https://")
    conn = set_connection(monkeypatch, "ac_tls", **{**sandbox_server.ac_connection(), "host": https})
    hook = ActiveCampaignHook(conn)
    with pytest.raises(
        ExportConfigurationError, match=rf"TLS\) connection to {https} for connection 'ac_tls'"
    ):
        hook.get_list(seed.AC_LIST_VIP)
    assert hook.requests_made == 1  # not retried
    ok, message = ActiveCampaignHook(conn).test_connection()
    assert not ok and https in message and "API URL (host) of this connection" in message


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, sandbox_server) -> None:
    conn = set_connection(monkeypatch, "ac_nokey", conn_type="activecampaign", host=sandbox_server.url)
    ok, message = ActiveCampaignHook(conn).test_connection()
    assert not ok
    assert "no API key" in message


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 429, "retry_after": 1},
        {"kind": "rate_limit_400"},
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 500},
        {"kind": "drop"},
        {"kind": "throttled"},
    ],
)
def test_throttles_errors_and_dropped_connections_are_retried(
    ac_conn: str, sandbox: SandboxClient, fault: dict
) -> None:
    sandbox.add_fault(api="ac", path="/import/bulk_import", times=2, **fault)
    hook = ActiveCampaignHook(ac_conn)
    batch_id = hook.bulk_import(_import_body("retry@example.com"))
    assert _wait_completed(hook, batch_id).state == "completed"
    assert [c["email"] for c in sandbox.ac_list_contacts(seed.AC_LIST_NEWSLETTER)] == ["retry@example.com"]
    assert calls(sandbox.stats(), "ac", "POST /api/3/import/bulk_import") == 3


def test_answers_slower_than_the_read_timeout_are_retried(ac_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="ac", path="/lists/", kind="slow", delay_s=2.0, times=1)
    hook = ActiveCampaignHook(ac_conn, timeout=(2.0, 0.5))
    assert hook.get_list(seed.AC_LIST_VIP)["name"] == "VIP customers"
    assert hook.requests_made == 2


def test_persistent_5xx_gives_up_with_a_clear_error(ac_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="ac", path="/lists/", kind="status", status=502)
    hook = ActiveCampaignHook(ac_conn, max_attempts=3)
    with pytest.raises(DestinationApiError, match="kept failing"):
        hook.get_list(1)
    assert hook.requests_made == 3


@pytest.mark.slow
def test_a_normal_burst_sees_no_rate_limit(ac_conn: str, sandbox: SandboxClient) -> None:
    """At the real limits (5/s, 100 imports/min) a tight loop of calls draws no 429 at all."""
    hook = ActiveCampaignHook(ac_conn)
    for _ in range(20):
        hook.get_list(1)
    for i in range(15):
        hook.bulk_import(_import_body(f"burst{i}@example.com"))
    assert sandbox.stats()["rate_limit_rejections_total"] == 0
    assert hook.requests_made == 35


def test_secrets_reach_only_their_own_header(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server, caplog: pytest.LogCaptureFixture
) -> None:
    """HttpHook would send extras as headers and login/password as Basic auth; this hook must not."""
    conn = set_connection(
        monkeypatch,
        "ac_leaky",
        conn_type="activecampaign",
        host=sandbox_server.url,
        login="someone@example.com",
        password=seed.AC_API_KEY,
        extra={"requests_per_second": 5, "note": "s3cr3t-extra-value"},
    )
    caplog.set_level(logging.DEBUG)
    hook = ActiveCampaignHook(conn)
    hook.get_list(1)
    hook.bulk_import(_import_body("p@example.com"))
    for request in sandbox.requests_log():
        if not request["path"].startswith("/api/3"):
            continue
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert "authorization" not in headers
        assert "note" not in headers and "requests_per_second" not in headers
        assert headers["api-token"] == redact_credential(seed.AC_API_KEY)
        assert "s3cr3t-extra-value" not in json.dumps(request)
    assert seed.AC_API_KEY not in caplog.text
    assert "p@example.com" not in caplog.text


def _membership(udate: str | None, **fields: Any) -> dict[str, Any]:
    return {"status": "2", "udate": udate, "campaign": None, "message": None, **fields}


# The export removed contacts between 12:00:00 and 12:10:00 UTC on 2026-03-02 (Unix seconds).
_WINDOW = (1772452800.0, 1772453400.0)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (_membership("2026-03-02T06:05:00-06:00"), True),  # during the removal, in the account's zone
        (_membership("2026-03-02T12:14:00+00:00"), True),  # within the clock skew allowed
        (_membership("2026-03-02T13:05:00+00:00"), False),  # an hour later: someone else's change
        (_membership("2026-03-02T11:50:00+00:00"), False),  # before the export's removal
        (_membership("2026-03-02T06:05:00-06:00", campaign="7", message="11"), False),  # a link
        (_membership("2026-03-02T06:05:00-06:00", unsubscribeAutomation="3"), False),  # an automation
        (_membership("2026-03-02T06:05:00-06:00", unsubreason="Too many emails"), False),
        ({**_membership("2026-03-02T06:05:00-06:00"), "status": "1"}, False),
        (_membership("2026-03-02 12:05:00"), False),  # no time zone: cannot tell
        (_membership(None), False),
        (None, False),
    ],
)
def test_a_resubscribe_needs_the_destinations_record_to_show_the_exports_removal_last(
    record: dict[str, Any] | None, expected: bool
) -> None:
    from airflow_provider_ciexport.destinations.activecampaign import removed_by_export

    assert removed_by_export(record, _WINDOW) is expected
    assert removed_by_export(record, None) is False  # the run that removed it is not known: never
    # Another of the export's removal runs, a day later: a change in this one is not its removal.
    assert removed_by_export(record, (_WINDOW[0] + 86400, _WINDOW[1] + 86400)) is False
