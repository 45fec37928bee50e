"""Throttling is waited out, never a fault; exports on one account divide its rate."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests

from airflow_provider_ciexport.core.ratelimit import DECREASE, SHARED_HEADROOM, RateLimiter
from airflow_provider_ciexport.core.sharing import share_variable_key
from airflow_provider_ciexport.core.variables import JsonVariable
from airflow_provider_ciexport.destinations.activecampaign import ActiveCampaignDestination
from airflow_provider_ciexport.exceptions import DestinationThrottledError, ExportConfigurationError
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.hooks.base import SegmentApiHook
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.hooks.retry import Throttled
from airflow_provider_ciexport.tools.sandbox import seed
from airflow_provider_ciexport.tools.sandbox.client import SandboxClient
from tests.support import calls, set_connection

IMPORT = "POST /api/3/import/bulk_import"


@pytest.fixture
def fast_ac(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server) -> str:
    """An account with 100 times the limits on both sides, so waits take milliseconds."""
    sandbox.configure(rate_scale=100.0)
    return set_connection(
        monkeypatch,
        "ac_fast",
        **sandbox_server.ac_connection(requests_per_second=500, imports_per_minute=10_000),
    )


@pytest.fixture
def fast_cc(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxClient, sandbox_server) -> str:
    """A Constant Contact API key with 100 times the limits on both sides."""
    sandbox.configure(rate_scale=100.0)
    return set_connection(monkeypatch, "cc_fast", **sandbox_server.cc_connection(requests_per_second=400))


def _body(email: str) -> bytes:
    return json.dumps({"contacts": [{"email": email, "subscribe": [{"listid": seed.AC_LIST_VIP}]}]}).encode()


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 429},
        {"kind": "rate_limit_400"},
        {"kind": "status", "status": 503},
    ],
    ids=["429", "400-rate-limit", "503"],
)
def test_throttling_does_not_use_up_the_attempts_meant_for_faults(
    fast_ac: str, sandbox: SandboxClient, fault: dict
) -> None:
    sandbox.add_fault(api="ac", path="/import/bulk_import", times=12, **fault)
    hook = ActiveCampaignHook(fast_ac, max_attempts=3)
    hook.bulk_import(_body("patient@example.com"))
    assert calls(sandbox.stats(), "ac", IMPORT) == 13


def test_constant_contact_throttled_does_not_use_up_attempts(fast_cc: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="cc", path="/contact_lists", kind="throttled", times=10)
    hook = ConstantContactHook(fast_cc, max_attempts=2)
    assert hook.get_list(seed.CC_LIST_VIP)["name"] == "VIP customers"
    assert sandbox.stats()["faults_injected"] == {"throttled": 10}


def test_faults_still_give_up_after_their_attempts(fast_ac: str, sandbox: SandboxClient) -> None:
    sandbox.add_fault(api="ac", path="/import/bulk_import", kind="status", status=500)
    hook = ActiveCampaignHook(fast_ac, max_attempts=3)
    with pytest.raises(Exception, match="after 3 attempts"):
        hook.bulk_import(_body("gives-up@example.com"))
    assert calls(sandbox.stats(), "ac", IMPORT) == 3


def test_endless_throttling_fails_after_throttle_timeout_with_a_clear_message(
    fast_ac: str, sandbox: SandboxClient
) -> None:
    sandbox.add_fault(api="ac", path="/import/bulk_import", kind="status", status=429)
    hook = ActiveCampaignHook(fast_ac, throttle_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DestinationThrottledError) as err:
        hook.bulk_import(_body("never@example.com"))
    assert time.monotonic() - started >= 1.0
    message = str(err.value)
    assert "refused every request for its rate limit" in message
    assert "'throttle_timeout'" in message and "never@example.com" not in message
    assert calls(sandbox.stats(), "ac", IMPORT) > 3


def test_throttle_timeout_comes_from_the_connection(monkeypatch: pytest.MonkeyPatch, sandbox_server) -> None:
    conn = set_connection(monkeypatch, "ac_patient", **sandbox_server.ac_connection(throttle_timeout="3600"))
    assert ActiveCampaignHook(conn).throttle_timeout == 3600
    assert ActiveCampaignHook(conn, throttle_timeout=5).throttle_timeout == 5
    bad = set_connection(
        monkeypatch, "ac_bad_timeout", **sandbox_server.ac_connection(throttle_timeout="soon")
    )
    with pytest.raises(ExportConfigurationError, match=r"'throttle_timeout'.*positive number"):
        _ = ActiveCampaignHook(bad).throttle_timeout


def test_an_export_on_another_worker_halves_this_ones_rate(ac_conn: str) -> None:
    hook = ActiveCampaignHook(ac_conn)
    key = share_variable_key("activecampaign", hook.api_base_url)
    other = JsonVariable(key, "test")
    other.save({"leases": {"other-worker": time.time() + 60}})
    try:
        with hook.share_account():
            # Half of the account's imports, less the shared grid's headroom.
            assert hook._import_limiter.current_rate == pytest.approx(100 / (1 + SHARED_HEADROOM) / 2)
            # Other calls get about one per import while the account is shared.
            assert hook._general_limiter.current_rate == pytest.approx(1.25 * 100 / 60 / 2)
            assert len(other.load()["leases"]) == 2
        assert hook._import_limiter.current_rate == pytest.approx(100)
        assert list(other.load()["leases"]) == ["other-worker"]
    finally:
        other.delete()


def test_the_task_log_says_when_refusals_slow_the_export_down(
    fast_ac: str, sandbox: SandboxClient, capfd: pytest.CaptureFixture[str]
) -> None:
    sandbox.add_fault(api="ac", path="/import/bulk_import", kind="status", status=429, times=4)
    hook = ActiveCampaignHook(fast_ac)
    hook.throttle_summary.interval_s = 0.0  # a line at each refusal: the cut's own line is told
    hook.bulk_import(_body("slowed@example.com"))
    out = "".join(capfd.readouterr())
    lines = [line for line in out.splitlines() if "Pacing at" in line]
    assert len(lines) == 4  # one a refusal here; the first, before any cut, at the full pace
    assert "Pacing at 100% of the documented rate." in lines[0]
    slowed = [line for line in lines if "budget seems shared" in line]
    assert slowed and "Pacing at 100%" not in slowed[-1]
    assert "slowed@example.com" not in out


def test_a_refusal_our_own_bunching_explains_does_not_cut_the_pace() -> None:
    # An import refused by the requests-a-second window: the import limiter's calls were even, but the
    # general one's were bunched (a stall): ours, so neither limiter is cut.
    general, imports = RateLimiter(5, 1.0, 0.4), RateLimiter(100, 60.0)
    for call in range(7, 12):  # all due at once: the send log spaces them, 5 within a second
        general._log_send(call)
    imports._log_send(3)
    answer = Throttled("HTTP 429", 0.0)
    assert SegmentApiHook._slow_down([general, imports], [11, 3], answer) == (False, True)
    assert general.own_bunched == 1 and general.cuts == imports.cuts == 0
    assert [SegmentApiHook._slow_down([general, imports], [11, 3], answer) for _ in range(3)] == [
        (False, True)
    ] * 3
    assert general.factor == imports.factor == 1.0  # repeated, still not cut
    # The same refusals with our calls even: someone else is spending the account, the pace is cut.
    general, imports = RateLimiter(5, 1.0, 0.4), RateLimiter(100, 60.0)
    general._log_send(11)
    general._log_send(12)
    assert SegmentApiHook._slow_down([general, imports], [11, 3], answer) == (False, False)
    assert SegmentApiHook._slow_down([general, imports], [12, 4], answer) == (True, False)
    # A wait of 0 names no window: both windows the import passed learn it.
    assert general.factor < 1.0 and imports.factor < 1.0


def test_the_task_log_tells_own_bunching_from_someone_else(
    ac_conn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    hook = ActiveCampaignHook(ac_conn)
    hook._tell_throttling((5, 0, 5, 31.0), [RateLimiter(5)])
    limiter = RateLimiter(5)
    limiter.factor = 0.85
    hook._tell_throttling((3, 2, 0, 30.0), [limiter])
    lines = [line for line in "".join(capfd.readouterr()).splitlines() if "Pacing at" in line]
    assert "Pacing at 100% of the documented rate; 5 of them this export's own requests bunched" in lines[0]
    assert "budget seems shared" not in lines[0]
    assert "Pacing at 85% of the documented rate (the account's budget seems shared" in lines[1]
    assert "own requests" not in lines[1]


def _refusals_from(
    answer: Callable[[], Throttled], general: RateLimiter, imports: RateLimiter
) -> tuple[float, float]:
    """Two refused imports, our calls even (someone else): the factors each limiter is left with."""
    general._log_send(11)
    general._log_send(12)
    imports._log_send(3)
    imports._log_send(4)
    SegmentApiHook._slow_down([imports, general], [3, 11], answer())
    SegmentApiHook._slow_down([imports, general], [4, 12], answer())
    return general.factor, imports.factor


@pytest.mark.parametrize(
    ("retry_after", "cut"),
    [(1.0, "both"), (0.03, "both"), (None, "both"), (2.0, "imports"), (40.0, "imports")],
)
def test_a_refused_import_cuts_the_pace_of_the_window_whose_wait_it_asks(
    retry_after: float | None, cut: str
) -> None:
    # Only the requests-a-second window asks to wait a second or less (whole seconds: "1"), but so does
    # the imports-a-minute window when another app keeps it full (a slot frees soon): a short or
    # missing wait could be either's, and both learn. A longer wait can only be the minute window's.
    general, imports = RateLimiter(5, 1.0, 0.4), RateLimiter(100, 60.0)
    factors = _refusals_from(lambda: Throttled("HTTP 429", retry_after), general, imports)
    assert factors == ((DECREASE, DECREASE) if cut == "both" else (1.0, DECREASE))


def test_at_scaled_limits_a_wait_longer_than_the_scaled_second_is_the_minute_window() -> None:
    # 20 times the limits: the 5-a-second window is 50 ms long, the imports' 100 calls take 3 s.
    general = RateLimiter(100, 1.0, 0.4, window_calls=5)
    imports = RateLimiter(2000, 60.0)
    assert _refusals_from(lambda: Throttled("HTTP 429", 0.05), general, imports) == (DECREASE, DECREASE)
    general = RateLimiter(100, 1.0, 0.4, window_calls=5)
    imports = RateLimiter(2000, 60.0)
    assert _refusals_from(lambda: Throttled("HTTP 429", 0.4), general, imports) == (1.0, DECREASE)


@pytest.mark.parametrize(
    ("reason", "cut"),
    [
        ("Up to 100 imports may be requested per minute. Please batch contacts", "imports"),
        ("Up to 5 requests may be made per second. Please retry this request in a second.", "requests"),
    ],
)
def test_the_400_rate_limit_body_names_the_window_it_cuts(ac_conn: str, reason: str, cut: str) -> None:
    body = {"success": 0, "message": "Rate limit exceeded.", "failureReasons": [reason]}
    response = requests.Response()
    response.status_code = 400
    response._content = json.dumps(body).encode()
    hook = ActiveCampaignHook(ac_conn)

    def answer() -> Throttled:
        with pytest.raises(Throttled) as raised:
            hook._check_answer(response)
        return raised.value

    general, imports = RateLimiter(5, 1.0, 0.4), RateLimiter(100, 60.0)
    factors = _refusals_from(answer, general, imports)
    assert factors == ((DECREASE, 1.0) if cut == "requests" else (1.0, DECREASE))


@pytest.mark.parametrize("scale", [1, 20])
def test_polls_and_imports_fit_in_the_per_second_pace(monkeypatch: pytest.MonkeyPatch, scale: int) -> None:
    # Alone on the account, imports also pass the requests-a-second pace: the polls' share is taken
    # from what that pace (headroom included) leaves, so imports never queue behind polls.
    conn = set_connection(
        monkeypatch,
        f"ac_polls_{scale}",
        conn_type="activecampaign",
        host=f"https://polls{scale}.api-us1.com",
        password="key",
        extra={"requests_per_second": 5 * scale, "imports_per_minute": 100 * scale},
    )
    hook = ActiveCampaignHook(conn)
    destination = ActiveCampaignDestination(hook, [1])
    imports = 1 / hook._import_limiter.interval
    paced = 1 / hook._general_limiter.interval
    assert imports + destination.max_poll_rate <= paced * (1 + 1e-9)
    assert destination.max_poll_rate >= imports  # a poll an import at least
    assert hook.import_requests_per_second() == pytest.approx(imports)
    pacer = destination.poll_pacer()
    assert imports <= pacer.rate <= paced - imports + 1e-9  # type: ignore[attr-defined]


def test_a_refusal_of_a_known_window_is_read_against_that_window_s_log_only() -> None:
    # The imports-a-minute window refused (a 40 s wait): that our requests-a-second calls were bunched
    # (a stall) does not explain it; someone else spent the imports, so their pace is cut.
    general, imports = RateLimiter(5, 1.0, 0.4), RateLimiter(100, 60.0)
    for call in range(7, 13):
        general._log_send(call)
    imports._log_send(3)
    imports._log_send(4)
    assert SegmentApiHook._slow_down([imports, general], [3, 11], Throttled("HTTP 429", 40.0)) == (
        False,
        False,
    )
    assert SegmentApiHook._slow_down([imports, general], [4, 12], Throttled("HTTP 429", 40.0)) == (
        True,
        False,
    )
    assert imports.factor == DECREASE and general.factor == 1.0
    # A short wait could be either window's: the bunched calls explain it, nothing is cut.
    assert SegmentApiHook._slow_down([imports, general], [4, 12], Throttled("HTTP 429", 0.5)) == (
        False,
        True,
    )
