"""The request log and stats: credentials redacted, bodies only when asked, counts per endpoint."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxServer
from airflow_provider_ciexport.tools.sandbox.recording import redact_credential
from tests.tools.sandbox.helpers import AC_H, TIMEOUT, ac_import, cc_import, cc_token, contacts, ctl

pytestmark = pytest.mark.integration


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
