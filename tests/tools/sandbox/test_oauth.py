"""Constant Contact's OAuth 2 server over real HTTP: access tokens, refresh tokens, PKCE and the device flow."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxServer
from tests.tools.sandbox.helpers import BASIC, TIMEOUT, cc_h, cc_token, ctl

pytestmark = pytest.mark.integration


def pkce_pair() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(os.urandom(40)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


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
