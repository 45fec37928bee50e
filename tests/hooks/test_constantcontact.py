"""ConstantContactHook against the sandbox over real HTTP: OAuth2, errors, retries, secrets."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.exceptions import (
    DestinationAuthError,
    DestinationQuotaError,
    ExportConfigurationError,
)
from airflow_provider_ciexport.hooks import constantcontact as constantcontact_module
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.connections import cc_connection
from airflow_provider_ciexport.tools.sandbox.recording import redact_credential
from tests.support import calls, set_connection

VIP = seed.CC_LIST_VIP
NEWSLETTER = seed.CC_LIST_NEWSLETTER


def _cc_conn(monkeypatch: pytest.MonkeyPatch, url: str, conn_id: str = "cc_test", **overrides: Any) -> str:
    fields = cc_connection(url)
    extra = overrides.pop("extra", {})
    fields["extra"].update(extra)
    fields.update(overrides)
    return set_connection(monkeypatch, conn_id, **fields)


def _wait_activity(hook: ConstantContactHook, activity_id: str) -> JobResult:
    for _ in range(100):
        status = hook.import_status(activity_id)
        if status.done:
            return status
        time.sleep(0.2)
    raise AssertionError("activity never finished")


def _import_body(*emails: str, list_id: str = VIP) -> bytes:
    return json.dumps({"import_data": [{"email": e} for e in emails], "list_ids": [list_id]}).encode()


def test_refreshes_a_token_and_imports(cc_conn: str, sandbox: SandboxClient) -> None:
    hook = ConstantContactHook(cc_conn)
    assert hook.get_list(VIP)["name"] == "VIP customers"
    assert hook.get_list("99999999-9999-4999-8999-999999999999") is None
    assert {f["name"] for f in hook.get_custom_fields()} == {"loyalty_tier", "favorite_store", "city"}
    activity_id = hook.json_import(_import_body("ann@example.com", "bob@example.org"))
    assert _wait_activity(hook, activity_id).state == "completed"
    assert {c["email"] for c in sandbox.cc_list_contacts(VIP)} == {"ann@example.com", "bob@example.org"}
    assert calls(sandbox.stats(), "oauth", "POST /oauth2/default/v1/token") == 1


def test_import_contacts_lands_in_the_lists(cc_conn: str, sandbox: SandboxClient) -> None:
    hook = ConstantContactHook(cc_conn)
    contacts = [
        {"email": " Ann@Example.com ", "first_name": "Ann", "cf:loyalty_tier": "gold", "birthday_month": 7},
        {"email": "bob@example.org", "last_name": ""},
        {"email": "cy@example.net", "job_title": "CTO"},
    ]
    status = _wait_activity(hook, hook.import_contacts(contacts, [VIP, NEWSLETTER.upper()]))
    assert (status.state, status.ok, status.accepted, status.rejected, status.total) == (
        "completed",
        True,
        3,
        0,
        3,
    )
    for list_id in (VIP, NEWSLETTER):
        got = {c["email"]: c for c in sandbox.cc_list_contacts(list_id)}
        assert set(got) == {"ann@example.com", "bob@example.org", "cy@example.net"}
    assert got["ann@example.com"]["attributes"]["first_name"] == "Ann"
    assert got["ann@example.com"]["custom_fields"]["loyalty_tier"] == "gold"
    assert got["cy@example.net"]["attributes"]["job_title"] == "CTO"


@pytest.mark.parametrize("style", ["snake", "title"])  # contact_id, email_address / Contact Id, Email address
def test_a_contact_export_is_read_whatever_its_headers_and_quoting(
    cc_conn: str, sandbox: SandboxClient, style: str
) -> None:
    sandbox.configure(cc_export_header_style=style)
    hook = ConstantContactHook(cc_conn)
    people = [
        {"email": "ann@example.com", "first_name": 'Ann "Annie", Jr.', "last_name": "Smith"},
        {"email": "bob@example.org", "first_name": "Bob\non two lines", "last_name": "O'Neil"},
        {"email": "zoe@example.net", "first_name": "Zoë", "last_name": "Ågren, Dr"},
        *({"email": f"member{i}@example.com"} for i in range(500)),
    ]
    assert _wait_activity(hook, hook.import_contacts(people, [VIP])).accepted == len(people)
    sandbox.cc_signup(NEWSLETTER, "elsewhere@example.com")

    rows = list(
        hook.export_contacts(["contact_id", "email_address", "first_name", "last_name"], list_ids=[VIP])
    )

    # Keyed by the API's field names, whatever the file's header says.
    assert {tuple(row) for row in rows} == {("contact_id", "email_address", "first_name", "last_name")}
    got = {row["email_address"]: row for row in rows}
    assert set(got) == {p["email"] for p in people}
    for person in people[:3]:
        assert (got[person["email"]]["first_name"], got[person["email"]]["last_name"]) == (
            person["first_name"],
            person["last_name"],
        )
    members = {c["email"]: c["contact_id"] for c in sandbox.cc_list_contacts(VIP)}
    assert {email: row["contact_id"] for email, row in got.items()} == members
    assert calls(sandbox.stats(), "cc", "GET /v3/contact_exports/{file_id}") == 1


@pytest.fixture
def sandbox_apart(tmp_path: Path) -> Iterator[str]:
    """A sandbox in a process of its own (its URL): memory traced here is then the hook's alone."""
    ready = tmp_path / "ready"
    command = [sys.executable, "-m", "airflow_provider_ciexport.tools.sandbox", "--port", "0", "--ready-file"]
    proc = subprocess.Popen([*command, str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.05)
        yield ready.read_text().strip()
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.integration
def test_a_large_contact_export_is_read_in_pieces_not_held_in_memory(
    sandbox_apart: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = ConstantContactHook(set_connection(monkeypatch, "cc_apart", **cc_connection(sandbox_apart)))
    for start in (0, 30_000):
        people = [{"email": f"member.number{i}@example.com"} for i in range(start, start + 30_000)]
        assert _wait_activity(hook, hook.import_contacts(people, [VIP])).accepted == 30_000

    tracemalloc.start()
    try:
        rows = size = 0
        for row in hook.export_contacts(["contact_id", "email_address"], list_ids=[VIP]):
            rows += 1
            size += len(row["contact_id"]) + len(row["email_address"]) + 3  # a comma and CRLF
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert rows == 60_000
    assert size > 4_000_000
    # The whole file in memory takes its size at least once (six times over as bytes, text and StringIO).
    assert peak < size / 3, (peak, size)


def test_a_contact_export_being_prepared_is_told_in_the_log(
    cc_conn: str, sandbox: SandboxClient, capfd: pytest.CaptureFixture[str]
) -> None:
    sandbox.configure(cc_job_duration_s=3.0)
    hook = ConstantContactHook(cc_conn)
    hook.progress_interval_s = 0.0  # the operator's progress_interval: a line at every poll
    assert [row["email_address"] for row in hook.export_contacts(["email_address"], list_ids=[VIP])] == []
    told = [line for line in capfd.readouterr().out.splitlines() if "preparing a contact export" in line]
    assert told and all("% done" in line for line in told)


@pytest.mark.parametrize(
    ("contacts", "lists", "message"),
    [
        ([{"email": "not-an-email"}], [VIP], r"Contact 1 of 1 has no valid e-mail \(malformed\)"),
        ([{"email": "a@example.com", "first_name": "x" * 51}], [VIP], "longer than"),
        ([{"email": "a@example.com", "nickname": "x"}], [VIP], "nickname"),
        ([{"email": "a@example.com"}], ["vip"], "not a UUID"),
    ],
)
def test_import_contacts_refuses_bad_input_before_sending(
    cc_conn: str, sandbox: SandboxClient, contacts: list, lists: list, message: str
) -> None:
    with pytest.raises(ExportConfigurationError, match=message):
        ConstantContactHook(cc_conn).import_contacts(contacts, lists)
    assert calls(sandbox.stats(), "cc", "POST /v3/activities/contacts_json_import") == 0


def test_expired_access_token_is_refreshed_and_the_call_retried_once(
    cc_conn: str, sandbox: SandboxClient
) -> None:
    hook = ConstantContactHook(cc_conn)
    hook.get_list(VIP)
    sandbox.expire_cc_tokens()
    assert hook.get_list(VIP)["name"] == "VIP customers"
    assert calls(sandbox.stats(), "oauth", "POST /oauth2/default/v1/token") == 2


def test_token_expiring_on_schedule_is_renewed_before_use(cc_conn: str, sandbox: SandboxClient) -> None:
    sandbox.configure(cc_access_token_ttl_s=2)
    hook = ConstantContactHook(cc_conn)
    hook.get_list(VIP)
    time.sleep(2.2)
    hook.get_list(VIP)
    stats = sandbox.stats()
    assert calls(stats, "oauth", "POST /oauth2/default/v1/token") == 2
    assert calls(stats, "cc", "GET /v3/contact_lists/{list_id}") == 2  # no 401 round trip


def test_rotating_refresh_token_survives_across_runs(
    cc_conn: str, sandbox: SandboxClient, airflow_db: str
) -> None:
    from airflow.models import Variable

    sandbox.configure(cc_rotating_refresh_tokens=True)
    first = ConstantContactHook(cc_conn)
    Variable.delete(first.refresh_token_variable)
    first.get_list(VIP)
    stored = Variable.get(first.refresh_token_variable)
    assert stored != seed.CC_REFRESH_TOKEN
    assert sandbox.cc_refresh_tokens() == [stored]
    # The next task run: a new hook, the connection still holds the original (now used) token.
    second = ConstantContactHook(cc_conn)
    assert second.get_list(VIP)["name"] == "VIP customers"
    assert Variable.get(first.refresh_token_variable) == sandbox.cc_refresh_tokens()[0] != stored
    Variable.delete(first.refresh_token_variable)


def test_a_token_rotated_under_our_feet_is_recovered(
    cc_conn: str, sandbox: SandboxClient, airflow_db: str
) -> None:
    from airflow.models import Variable

    sandbox.configure(cc_rotating_refresh_tokens=True)
    runner_a, runner_b = ConstantContactHook(cc_conn), ConstantContactHook(cc_conn)
    Variable.delete(runner_a.refresh_token_variable)
    reads = iter([None])  # B read the store before A saved the rotated token
    real_get = runner_b.token_store.get
    runner_b.token_store.get = lambda: next(reads, None) or real_get()  # type: ignore[method-assign]
    runner_a.get_list(VIP)
    assert runner_b.get_list(VIP)["name"] == "VIP customers"
    assert Variable.get(runner_a.refresh_token_variable) == sandbox.cc_refresh_tokens()[0]
    Variable.delete(runner_a.refresh_token_variable)


def test_refused_refresh_token_says_how_to_get_a_new_one(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    conn = _cc_conn(monkeypatch, sandbox_server.url, extra={"refresh_token": "expired-token"})
    hook = ConstantContactHook(conn)
    with pytest.raises(DestinationAuthError, match="constantcontact_auth"):
        hook.get_list(VIP)
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok and "invalid_grant" in message


def test_bad_client_credentials(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    conn = _cc_conn(monkeypatch, sandbox_server.url, password="wrong-secret")
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok
    assert "client id or client secret" in message


def test_missing_credentials_are_clear_errors(monkeypatch: pytest.MonkeyPatch, sandbox_server) -> None:
    conn = _cc_conn(monkeypatch, sandbox_server.url, extra={"refresh_token": ""})
    with pytest.raises(ExportConfigurationError, match="no refresh token"):
        ConstantContactHook(conn).get_list(VIP)
    conn = _cc_conn(monkeypatch, sandbox_server.url, conn_id="cc_nologin", login="")
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok and "client id" in message
    conn = _cc_conn(
        monkeypatch,
        sandbox_server.url,
        conn_id="cc_http",
        extra={"api_base_url": "http://api.example.com/v3"},
    )
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok and "https://" in message


def test_test_connection_succeeds(cc_conn: str) -> None:
    assert ConstantContactHook(cc_conn).test_connection() == (True, "Connected to Constant Contact.")


ERROR_SHAPES = ["list", "object", "documented"]


@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_daily_quota_fails_at_once_with_the_reset_time(
    cc_conn: str, sandbox: SandboxClient, shape: str
) -> None:
    # Constant Contact documents its 429 bodies as one object, other errors as a list: both are read.
    sandbox.configure(cc_error_shape=shape)
    hook = ConstantContactHook(cc_conn)
    hook.get_list(VIP)
    sandbox.add_fault(api="cc", kind="quota_exceeded")
    before = hook.requests_made
    with pytest.raises(DestinationQuotaError, match="00:00 UTC"):
        hook.get_list(VIP)
    assert hook.requests_made == before + 1
    ok, message = ConstantContactHook(cc_conn).test_connection()
    assert not ok and "daily request quota" in message


@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize(
    "fault", [{"kind": "throttled"}, {"kind": "status", "status": 503}, {"kind": "drop"}]
)
def test_throttling_and_outages_are_retried(
    cc_conn: str, sandbox: SandboxClient, fault: dict, shape: str
) -> None:
    sandbox.configure(cc_error_shape=shape)
    sandbox.add_fault(api="cc", path="/contact_lists/", times=2, **fault)
    hook = ConstantContactHook(cc_conn)
    assert hook.get_list(VIP)["name"] == "VIP customers"


def test_a_server_that_does_not_speak_tls_fails_at_once_naming_the_host(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    https = sandbox_server.url.replace("http://", "https://")
    host = https.removeprefix("https://")
    conn = _cc_conn(monkeypatch, sandbox_server.url, extra={"api_base_url": f"{https}/v3"})
    hook = ConstantContactHook(conn)
    with pytest.raises(ExportConfigurationError, match=rf"TLS\) connection to https://{host} .*api_base_url"):
        hook.get_list(VIP)
    assert hook.requests_made == 2  # the token, then one try: no retries
    conn = _cc_conn(monkeypatch, sandbox_server.url, extra={"oauth_url": f"{https}/oauth2/default/v1/token"})
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok and f"https://{host}" in message and "oauth_url of this connection" in message


def test_no_answer_in_a_test_names_the_host_and_says_nothing_of_tasks(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    conn = _cc_conn(monkeypatch, sandbox_server.url, extra={"oauth_url": "http://127.0.0.1:9/token"})
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok and "127.0.0.1:9" in message and "oauth_url" in message
    assert "task" not in message and conn not in message
    conn = _cc_conn(monkeypatch, sandbox_server.url, extra={"api_base_url": "http://127.0.0.1:9/v3"})
    ok, message = ConstantContactHook(conn).test_connection()
    assert not ok and "127.0.0.1:9" in message and "api_base_url" in message
    assert "task" not in message and conn not in message


def test_the_token_url_extra_of_older_connections_still_works(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    fields = sandbox_server.cc_connection()
    fields["extra"]["token_url"] = fields["extra"].pop("oauth_url")
    conn = set_connection(monkeypatch, "cc_old_extra", **fields)
    assert ConstantContactHook(conn).get_list(VIP)["name"] == "VIP customers"


def test_a_token_endpoint_under_the_api_base_url_gets_no_bearer_token(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    """A gateway (or the sandbox's root) as ``api_base_url``, with the token endpoint below it.

    The token request used to get the API's bearer auth, whose callback waits for the token lock the
    refresh already holds: the first refresh hung for ever.
    """
    fields = sandbox_server.cc_connection()
    fields["extra"]["api_base_url"] = sandbox_server.url
    conn = set_connection(monkeypatch, "cc_gateway", **fields)
    hook = ConstantContactHook(conn)
    got: list[str] = []
    refresh = threading.Thread(target=lambda: got.append(hook.get_access_token()), daemon=True)
    refresh.start()
    refresh.join(60)
    assert not refresh.is_alive(), "the token refresh waited on itself"
    assert got and got[0]


def test_a_variable_named_after_the_connection_id_is_not_read(
    cc_conn: str, sandbox: SandboxClient, airflow_db: str
) -> None:
    """A ``<conn_id>_refresh_token`` Variable (an unreleased version's) never overrides the connection.

    It was read before the connection's own token, so a fresh token put in the connection after
    re-authorizing lost to whatever that Variable held, whichever token endpoint it came from.
    """
    from airflow.models import Variable

    hook = ConstantContactHook(cc_conn)
    Variable.delete(hook.refresh_token_variable)
    Variable.set(f"{cc_conn}_refresh_token", "stale-token-of-another-authorization")
    try:
        assert ConstantContactHook(cc_conn).get_list(VIP)["name"] == "VIP customers"
        # Only the connection's own token was presented: no refused refresh on the way.
        assert sandbox.stats()["counters"].get("oauth.invalid_refresh_token", 0) == 0
    finally:
        Variable.delete(f"{cc_conn}_refresh_token")
        Variable.delete(hook.refresh_token_variable)


def test_secrets_never_reach_the_api_or_the_log(
    cc_conn: str, sandbox: SandboxClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = ConstantContactHook(cc_conn)
    hook.get_list(VIP)
    _wait_activity(hook, hook.json_import(_import_body("secret-test@example.com")))
    token = hook.get_access_token()
    api_requests = [r for r in sandbox.requests_log() if r["path"].startswith("/v3")]
    assert api_requests
    for request in api_requests:
        dumped = json.dumps(request)
        assert seed.CC_CLIENT_SECRET not in dumped
        assert seed.CC_REFRESH_TOKEN not in dumped
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["authorization"] == redact_credential(f"Bearer {token}")
        assert "refresh_token" not in headers and "oauth_url" not in headers
    for secret in (seed.CC_CLIENT_SECRET, seed.CC_REFRESH_TOKEN, token, "secret-test@example.com"):
        assert secret not in caplog.text


def test_testing_a_connection_without_its_refresh_token_says_where_the_field_is(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server
) -> None:
    # The field sits in the connection form's collapsed Extra Fields: the test's message says so.
    fields = sandbox_server.cc_connection()
    del fields["extra"]["refresh_token"]
    ok, message = ConstantContactHook(set_connection(monkeypatch, "cc_no_token", **fields)).test_connection()
    assert not ok and "has no refresh token" in message
    assert "Refresh token field (in the UI's connection form, under Extra Fields" in message
    assert sandbox.stats()["requests"] == {}


class _Answer:
    """What ``hook.call`` returns, for a hook whose requests are faked: a JSON body, or a file's bytes."""

    def __init__(self, body: Any = None, data: bytes = b"") -> None:
        self.body, self.data = body, data

    def json(self) -> Any:
        return self.body

    def iter_content(self, size: int) -> Iterator[bytes]:
        yield self.data

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize(("rate", "first"), [(4, 0.5), (2, 0.5), (20, 0.1), (100, 0.02)])
def test_a_contact_export_is_first_polled_at_the_keys_pace_then_less_and_less_often(
    monkeypatch: pytest.MonkeyPatch, rate: float, first: float
) -> None:
    """As the export's imports are: two of the key's request slots after it starts (never more than
    half a second), each pause then 1.5 times the one before, up to 5 s."""
    conn = _cc_conn(
        monkeypatch,
        "http://127.0.0.1:9",
        f"cc_poll_{rate}",
        login=f"poll-pace-{rate}",
        extra={"requests_per_second": rate},
    )
    hook = ConstantContactHook(conn)
    polls = iter([*({"state": "processing"} for _ in range(8)), {"state": "completed"}])
    done = {"_links": {"results": {"href": "/v3/contact_exports/f1"}}}

    def call(method: str, endpoint: str, **kwargs: Any) -> _Answer:
        if endpoint == "activities/contact_exports":
            return _Answer({"activity_id": "a1", "state": "initialized"})
        if endpoint == "activities/a1":
            return _Answer({**next(polls), **done})
        assert endpoint == "contact_exports/f1" and kwargs.get("stream")
        return _Answer(data=b"email_address\r\nann@example.com\r\n")

    pauses: list[float] = []
    follow = constantcontact_module.poll_until_done
    monkeypatch.setattr(hook, "call", call)
    monkeypatch.setattr(
        constantcontact_module,
        "poll_until_done",
        lambda poll, first_pause, longest: follow(poll, first_pause, longest, pauses.append),
    )

    assert list(hook.export_contacts(["email_address"])) == [{"email_address": "ann@example.com"}]
    assert hook.first_poll_s == pytest.approx(first)
    assert pauses == pytest.approx([min(first * 1.5**n, 5.0) for n in range(9)])
    assert pauses[0] >= min(0.5, 2 / rate)  # never sooner than two of the key's slots
