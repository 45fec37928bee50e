"""Fault injection over real HTTP: statuses, dropped connections, failed jobs, limit-shaped answers, redirects."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SandboxServer
from airflow_provider_ciexport.tools.sandbox.seed import AC_LIST_NEWSLETTER, CC_LIST_NEWSLETTER
from tests.tools.sandbox.helpers import (
    AC_H,
    TIMEOUT,
    ac_import,
    ac_wait,
    cc_h,
    cc_import,
    cc_token,
    cc_wait,
    contacts,
    ctl,
)

pytestmark = pytest.mark.integration


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
