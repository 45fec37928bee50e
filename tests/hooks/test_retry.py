"""The retry policy of one call, and ``SegmentApiHook.send`` over it, driven without HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
import requests

from airflow_provider_ciexport.exceptions import DestinationApiError, DestinationAuthError
from airflow_provider_ciexport.hooks import retry
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.hooks.retry import CallRetries, RetryableAnswer, Unauthorized
from tests.support import set_connection


def _answer(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"{}"
    response.headers.update(headers or {})
    return response


def test_faults_are_counted_until_the_last_attempt() -> None:
    retries = CallRetries(max_attempts=3, throttle_timeout=60.0)
    waits = [retries.fault(RetryableAnswer("HTTP 502")) for _ in range(3)]
    assert waits[0] is not None and waits[1] is not None and waits[1] > 0
    assert waits[2] is None  # the third fault of three ends the call


def test_a_server_s_retry_after_is_the_wait() -> None:
    retries = CallRetries(max_attempts=5, throttle_timeout=60.0)
    assert retries.fault(RetryableAnswer("HTTP 502", retry_after=7.0)) == 7.0


def test_a_renewal_is_free_once_then_a_fault() -> None:
    retries = CallRetries(max_attempts=5, throttle_timeout=60.0)
    retries.renewed(_answer(401))
    with pytest.raises(Unauthorized) as again:
        retries.renewed(_answer(401))
    retries.fault(again.value)
    assert retries.refused_every_time() and retries.faults == 2


def test_throttling_fails_only_once_nothing_got_through_for_the_timeout() -> None:
    now = time.monotonic()
    retries = CallRetries(max_attempts=5, throttle_timeout=60.0, started=now - 120)
    assert retries.throttled(last_progress=now - 10) is None  # another call got through lately
    stalled = retries.throttled(last_progress=now - 90)
    assert stalled is not None and stalled >= 60
    assert retries.throttles == 2


# -- send, over a transport that answers from a script -------------------------------------------


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> ActiveCampaignHook:
    monkeypatch.setattr(retry, "backoff", lambda faults, retry_after: 0.0)
    conn = set_connection(
        monkeypatch,
        "ac_scripted",
        conn_type="activecampaign",
        host="https://acct.api-us1.com",
        password="key",
        extra={"requests_per_second": 1000},
    )
    return ActiveCampaignHook(conn, max_attempts=3)


def _send(hook: ActiveCampaignHook, statuses: Iterable[int]) -> tuple[requests.Response, list[str]]:
    script = iter(statuses)
    sent: list[str] = []

    def transport(prepared: requests.PreparedRequest) -> requests.Response:
        sent.append(str(prepared.headers.get("Api-Token")))
        response = _answer(next(script), {"Retry-After": "0", "Location": "https://elsewhere.example/x"})
        response.request = prepared
        return response

    request = requests.Request("GET", hook.url_from_endpoint("lists/1")).prepare()
    return hook.send(request, transport), sent


def test_a_fault_is_sent_again_with_the_credentials(hook: ActiveCampaignHook) -> None:
    response, sent = _send(hook, [502, 500, 200])
    assert response.status_code == 200 and sent == ["key", "key", "key"]


def test_the_last_attempt_s_fault_fails_the_call(hook: ActiveCampaignHook) -> None:
    with pytest.raises(DestinationApiError, match=r"after 3 attempts \(last: HTTP 502\)"):
        _send(hook, [502, 502, 502, 200])


def test_throttling_uses_up_no_attempt(hook: ActiveCampaignHook) -> None:
    response, sent = _send(hook, [429, 503, 429, 429, 502, 200])
    assert response.status_code == 200 and len(sent) == 6


def test_an_error_or_a_redirect_is_final(hook: ActiveCampaignHook) -> None:
    with pytest.raises(DestinationApiError, match="HTTP 404") as error:
        _send(hook, [404, 200])
    assert error.value.status == 404
    with pytest.raises(DestinationApiError, match=r"a redirect to https://elsewhere\.example"):
        _send(hook, [302, 200])


def test_refused_credentials_fail_at_once_when_they_cannot_be_renewed(hook: ActiveCampaignHook) -> None:
    # An API key cannot be renewed: its 401 is the destination's own error, not retried.
    with pytest.raises(DestinationAuthError, match="refused the API key"):
        _send(hook, [401, 200])


# -- the log under throttling: one line an interval, not one a refusal ----------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_summary_tells_the_first_refusal_then_at_most_one_line_an_interval() -> None:
    clock = FakeClock()
    summary = retry.ThrottleSummary(30.0, clock)
    assert summary.refused(slowed=False) == (1, 0, 0, 0.0)  # the first, at once
    assert [summary.refused(slowed=n == 3) for n in range(10)] == [None] * 10
    clock.now += 29.9
    assert summary.refused(slowed=False) is None
    clock.now += 0.2
    assert summary.refused(slowed=False, own=True) == (12, 1, 1, pytest.approx(30.1))
    assert summary.due() is None  # nothing untold
    clock.now += 31
    assert summary.due() is None


def test_a_burst_of_refusals_logs_one_line_an_interval(
    hook: ActiveCampaignHook, capfd: pytest.CaptureFixture[str]
) -> None:
    # The hook logs through Airflow's structlog to the task's output (where caplog does not look).
    clock = FakeClock()
    hook.throttle_summary = retry.ThrottleSummary(30.0, clock)
    out: list[str] = []
    response, sent = _send(hook, [429] * 40 + [200])
    assert response.status_code == 200 and len(sent) == 41

    def lines() -> list[str]:
        out.extend("".join(capfd.readouterr()).splitlines())
        return [line for line in out if "for its rate limit" in line]

    assert len(lines()) == 1  # 40 refusals within one interval: the first one's line only
    assert "refused 1 request(s) for its rate limit so far" in lines()[0]
    assert "Pacing at" in lines()[0]

    clock.now += 30
    _send(hook, [200])  # an answer that gets through once the interval is over tells the rest
    assert len(lines()) == 2
    assert "refused 39 request(s) for its rate limit in the last 30 s" in lines()[1]
    for line in lines():
        assert "acct.api-us1.com" not in line and "key" not in line and "/lists" not in line
