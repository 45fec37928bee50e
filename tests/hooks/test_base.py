"""What every hook inherits from HttpHook carries the credentials, the rate limits and the retry policy."""

from __future__ import annotations

import pytest

from airflow_provider_ciexport.exceptions import DestinationAuthError
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from airflow_provider_ciexport.tools.sandbox.recording import redact_credential
from tests.support import calls


def _api_token_headers(sandbox: SandboxClient, path: str) -> list[str | None]:
    """The ``Api-Token`` header of every logged request to ``path``."""
    return [
        {k.lower(): v for k, v in r["headers"].items()}.get("api-token")
        for r in sandbox.requests_log()
        if r["path"] == path
    ]


def test_run_carries_the_key_and_retries(ac_conn: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="ac", path="/lists/", kind="status", status=503, times=2)
    hook = ActiveCampaignHook(ac_conn)
    hook.method = "GET"
    assert hook.run(f"lists/{seed.AC_LIST_VIP}").json()["list"]["name"] == "VIP customers"
    assert hook.requests_made == 3
    assert (
        _api_token_headers(sandbox, f"/api/3/lists/{seed.AC_LIST_VIP}")
        == [redact_credential(seed.AC_API_KEY)] * 3
    )


def test_run_posts_json(ac_conn: str, sandbox: SandboxClient) -> None:
    hook = ActiveCampaignHook(ac_conn)
    hook.method = "POST"
    response = hook.run("contact/sync", json={"contact": {"email": "run@example.com", "firstName": "Run"}})
    assert response.json()["contact"]["id"]
    assert (sandbox.ac_contact("run@example.com") or {}).get("first_name") == "Run"


def test_the_session_of_get_conn_carries_the_key_limits_and_retries(
    ac_conn: str, sandbox: SandboxClient
) -> None:
    sandbox.add_fault(api="ac", path="/lists/", kind="throttled", times=1)
    hook = ActiveCampaignHook(ac_conn)
    response = hook.get_conn().get(f"{hook.api_base_url}/lists/{seed.AC_LIST_VIP}")
    assert response.json()["list"]["name"] == "VIP customers"
    assert hook.requests_made == 2
    assert (
        _api_token_headers(sandbox, f"/api/3/lists/{seed.AC_LIST_VIP}")
        == [redact_credential(seed.AC_API_KEY)] * 2
    )


def test_the_key_never_leaves_the_api_base_url(ac_conn: str, sandbox: SandboxClient) -> None:
    hook = ActiveCampaignHook(ac_conn)
    # Same server, but not below the API's base URL: sent as is, without the key.
    hook.get_conn().get(hook.api_base_url.removesuffix("/api/3") + "/v3/contact_lists")
    assert _api_token_headers(sandbox, "/v3/contact_lists") == [None]


def test_advanced_retry_and_extra_options_are_refused_clearly(ac_conn: str) -> None:
    hook = ActiveCampaignHook(ac_conn)
    with pytest.raises(NotImplementedError, match="retries every call itself"):
        hook.run_with_advanced_retry({}, endpoint="lists")
    with pytest.raises(ValueError, match="timeout"):
        hook.get_conn(extra_options={"verify": False})
    with pytest.raises(ValueError, match="stream"):
        hook.run("lists", stream=True)


def test_an_access_token_refused_on_every_attempt_fails_as_refused(
    cc_conn: str, sandbox: SandboxClient
) -> None:
    sandbox.add_fault(api="cc", path="/contact_lists/", kind="status", status=401)
    hook = ConstantContactHook(cc_conn, max_attempts=3)
    with pytest.raises(DestinationAuthError, match="on each of 3 attempts, every time freshly issued"):
        hook.get_list(seed.CC_LIST_VIP)
    stats = sandbox.stats()
    assert calls(stats, "cc", "GET /v3/contact_lists/{list_id}") == 3
    assert calls(stats, "oauth", "POST /oauth2/default/v1/token") == 3  # a new token for every attempt
    # The next call starts afresh: no failure carried over.
    sandbox.reset()
    assert hook.get_list(seed.CC_LIST_VIP) is not None


def test_a_401_again_right_after_a_renewal_is_retried(cc_conn: str, sandbox: SandboxClient) -> None:
    """Two 401s in a row (a revocation racing another worker's refresh) are not a refusal."""
    sandbox.add_fault(api="cc", path="/contact_lists/", kind="status", status=401, times=2)
    hook = ConstantContactHook(cc_conn)
    assert hook.get_list(seed.CC_LIST_VIP) is not None
    stats = sandbox.stats()
    assert calls(stats, "cc", "GET /v3/contact_lists/{list_id}") == 3
    assert calls(stats, "oauth", "POST /oauth2/default/v1/token") == 3
