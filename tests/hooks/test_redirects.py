"""Credentials stay on their host: no hook and no token request follows a redirect.

The sandbox answers a redirect to a second local server (:class:`tests.support.ForeignHost`) that
records whatever arrives and answers 200 to everything, as a hostile host would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from airflow_provider_ciexport.exceptions import DestinationApiError, ExportConfigurationError
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.tools.constantcontact_auth import AuthError, Endpoints, exchange_code
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.server import SandboxServer
from tests.support import ForeignHost, set_connection

TOKEN_PATH = "/oauth2/default/v1/token"


@pytest.fixture
def foreign() -> Iterator[ForeignHost]:
    with ForeignHost() as host:
        yield host


def _redirect(sandbox: SandboxClient, api: str, path: str, foreign: ForeignHost, status: int) -> None:
    sandbox.add_fault(api=api, kind="redirect", path=path, status=status, location=f"{foreign.url}{path}")


@pytest.mark.parametrize("status", [302, 307])
def test_the_activecampaign_key_does_not_follow_a_redirect_of_the_session(
    ac_conn: str, sandbox: SandboxClient, foreign: ForeignHost, status: int
) -> None:
    path = f"/api/3/lists/{seed.AC_LIST_VIP}"
    _redirect(sandbox, "ac", path, foreign, status)
    hook = ActiveCampaignHook(ac_conn)
    with pytest.raises(DestinationApiError) as caught:
        # allow_redirects=True is what requests does by default; the session refuses it all the same.
        hook.get_conn().get(f"{hook.api_base_url}/lists/{seed.AC_LIST_VIP}", allow_redirects=True)
    assert foreign.received == []
    message = str(caught.value)
    assert f"HTTP {status}" in message and f"a redirect to {foreign.url}" in message
    assert "API URL (host)" in message and f"connection '{ac_conn}'" in message
    assert seed.AC_API_KEY not in message


def test_a_typed_call_answered_with_a_redirect_fails_and_sends_no_contact_elsewhere(
    ac_conn: str, sandbox: SandboxClient, foreign: ForeignHost
) -> None:
    _redirect(sandbox, "ac", "/api/3/import/bulk_import", foreign, 307)
    hook = ActiveCampaignHook(ac_conn)
    body = json.dumps({"contacts": [{"email": "moved@example.com", "subscribe": [{"listid": 1}]}]}).encode()
    with pytest.raises(DestinationApiError, match="HTTP 307 to POST import/bulk_import, a redirect"):
        hook.bulk_import(body)
    assert foreign.received == []
    assert "moved@example.com" not in json.dumps(sandbox.ac_list_contacts(1))


def test_constant_contact_api_calls_do_not_follow_redirects(
    cc_conn: str, sandbox: SandboxClient, foreign: ForeignHost
) -> None:
    _redirect(sandbox, "cc", "/v3/activities/contacts_json_import", foreign, 307)
    hook = ConstantContactHook(cc_conn)
    body = json.dumps({"import_data": [{"email": "moved@example.com"}], "list_ids": [seed.CC_LIST_VIP]})
    with pytest.raises(DestinationApiError) as caught:
        hook.json_import(body.encode())
    assert foreign.received == []
    assert "api_base_url" in str(caught.value) and "HTTP 307" in str(caught.value)


@pytest.mark.parametrize("status", [302, 307, 308])
def test_the_token_request_does_not_follow_a_redirect(
    cc_conn: str, sandbox: SandboxClient, foreign: ForeignHost, status: int
) -> None:
    _redirect(sandbox, "oauth", TOKEN_PATH, foreign, status)
    hook = ConstantContactHook(cc_conn)
    with pytest.raises(DestinationApiError) as caught:
        hook.get_list(seed.CC_LIST_VIP)
    # Neither the refresh token nor the client credentials went to the other host, and nothing it
    # would have answered was taken as a token.
    assert foreign.received == []
    message = str(caught.value)
    assert f"HTTP {status}, a redirect to {foreign.url}" in message and "oauth_url" in message
    for secret in (seed.CC_REFRESH_TOKEN, seed.CC_CLIENT_SECRET):
        assert secret not in message


def test_the_authorization_command_does_not_follow_a_redirect_of_the_token_endpoint(
    sandbox_server: SandboxServer, sandbox: SandboxClient, foreign: ForeignHost
) -> None:
    _redirect(sandbox, "oauth", TOKEN_PATH, foreign, 307)
    endpoints = Endpoints.sandbox(sandbox_server.url)
    with pytest.raises(AuthError) as caught:
        exchange_code(
            endpoints.token_url, seed.CC_CLIENT_ID, seed.CC_CLIENT_SECRET, "a-code", "http://x/cb", "v" * 43
        )
    assert foreign.received == []
    assert "--token-url" in str(caught.value) and f"redirect to {foreign.url}" in str(caught.value)


def test_a_token_endpoint_read_as_loopback_but_reaching_another_host_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    sandbox_server: SandboxServer,
    sandbox: SandboxClient,
    foreign: ForeignHost,
) -> None:
    # urlsplit reads the host 127.0.0.1 (the sandbox); urllib3 connects to the foreign host's port.
    port = foreign.url.rsplit(":", 1)[1]
    sandbox_netloc = sandbox_server.url.removeprefix("http://")
    fields = sandbox_server.cc_connection()
    fields["extra"]["oauth_url"] = f"http://localhost:{port}\\@{sandbox_netloc}{TOKEN_PATH}"
    conn_id = set_connection(monkeypatch, "cc_ambiguous", **fields)
    with pytest.raises(ExportConfigurationError, match="The oauth_url of connection 'cc_ambiguous' contains"):
        ConstantContactHook(conn_id).get_list(seed.CC_LIST_VIP)
    assert foreign.received == []
