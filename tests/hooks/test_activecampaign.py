"""ActiveCampaignHook against the sandbox over real HTTP."""

from __future__ import annotations

import json
import logging
import time

import pytest

from airflow_provider_ciexport.exceptions import DestinationApiError, DestinationAuthError
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.sandbox import seed
from airflow_provider_ciexport.sandbox.client import SandboxClient
from tests.support import calls, set_connection


def _wait_completed(hook: ActiveCampaignHook, batch_id: str) -> dict:
    for _ in range(100):
        info = hook.import_info(batch_id)
        if info.get("status") in ("completed", "failed", "interrupted"):
            return info
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


def test_bulk_import_lands_in_the_list(ac_conn: str, sandbox: SandboxClient) -> None:
    hook = ActiveCampaignHook(ac_conn)
    batch_id = hook.bulk_import(_import_body("ann@example.com", "bob@example.org"))
    info = _wait_completed(hook, batch_id)
    assert info["status"] == "completed"
    emails = {c["email"] for c in sandbox.ac_list_contacts(seed.AC_LIST_NEWSLETTER)}
    assert emails == {"ann@example.com", "bob@example.org"}


def test_contact_sync_and_list_membership(ac_conn: str, sandbox: SandboxClient) -> None:
    hook = ActiveCampaignHook(ac_conn)
    contact_id = hook.sync_contact({"email": "solo@example.com", "firstName": "Solo"})
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
    assert _wait_completed(hook, batch_id)["status"] == "completed"
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
        assert headers["api-token"] == seed.AC_API_KEY
        assert "s3cr3t-extra-value" not in json.dumps(request)
    assert seed.AC_API_KEY not in caplog.text
    assert "p@example.com" not in caplog.text
