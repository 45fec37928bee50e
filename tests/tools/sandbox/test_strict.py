"""The sandbox's ``strict`` timing model: every request counted, checked on arrival, latency drawn per request."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxConfig, SandboxServer
from airflow_provider_ciexport.tools.sandbox.config import ConfigError
from airflow_provider_ciexport.tools.sandbox.ratelimit import SlidingWindow
from airflow_provider_ciexport.tools.sandbox.state import SandboxState
from airflow_provider_ciexport.tools.sandbox.strict import StrictLatency, StrictWindow


def attempt(window: StrictWindow, now: float) -> bool:
    """Send one request as the gate does: checked, then counted whether admitted or not."""
    admitted = window.wait_time(now) == 0.0
    window.add(now)
    return admitted


def test_a_refused_request_counts_and_pushes_the_next_slot_away() -> None:
    window = StrictWindow(2, 1.0)
    assert attempt(window, 0.0) and attempt(window, 0.1)
    assert not attempt(window, 0.5)
    # Without the refused one, 1.0+ would be free; with it, the 0.1 and 0.5 requests are still in.
    assert not attempt(window, 1.05)
    assert window.wait_time(1.05) == pytest.approx(0.45, abs=1e-3)  # until the 0.5 one leaves


def test_a_request_one_full_window_back_still_counts() -> None:
    strict, sandbox = StrictWindow(1, 1.0), SlidingWindow(1, 1.0)
    attempt(strict, 0.0)
    sandbox.add(0.0)
    assert strict.wait_time(1.0) > 0  # closed window: no grace at the edge
    assert sandbox.wait_time(1.0) == 0.0
    assert strict.wait_time(1.0 + 1e-6) == 0.0


def test_waiting_the_answered_retry_after_is_admitted_even_with_the_refusal_counted() -> None:
    window = StrictWindow(1, 1.0)
    assert attempt(window, 0.0)
    assert not attempt(window, 0.5)
    retry_at = 0.5 + window.wait_time(0.5)
    assert retry_at == pytest.approx(1.5, abs=1e-3)
    assert attempt(window, retry_at)


def test_even_spacing_at_the_limit_is_admitted() -> None:
    window = StrictWindow(5, 1.0)
    assert all(attempt(window, i * 0.2001) for i in range(50))


def test_other_app_alone_below_the_limit_is_never_refused() -> None:
    window = StrictWindow(10, 1.0, background_rate=5.0)
    for i in range(200):
        window.wait_time(i * 0.5)
    assert window.background_refused == 0 and window.background_admitted == 498


def test_other_app_gets_its_share_against_a_client_that_pushes() -> None:
    window = StrictWindow(100, 60.0, background_rate=30 / 60)
    ours = 0
    for i in range(6000):
        now = 0.001 + i * 0.1
        if window.wait_time(now) == 0.0:  # a polite client that only sends when there is room
            window.add(now)
            ours += 1
    assert 10 * 60 <= ours <= 10 * 75
    assert 10 * 25 <= window.background_admitted <= 10 * 30


def test_latency_is_drawn_per_request_around_the_configured_one() -> None:
    latency = StrictLatency(seed=1)
    imports = [latency.delay(0.0, 1.0, 0.0) for _ in range(2000)]
    assert 0.95 <= sum(imports) / len(imports) <= 1.05
    assert min(imports) < 0.8 and max(imports) > 1.3 and min(imports) > 0
    calls = [latency.delay(0.1, 0.0, 0.02) for _ in range(200)]
    assert all(0.1 <= d <= 0.12 for d in calls) and len(set(calls)) > 100


def test_the_state_builds_the_windows_of_the_configured_model_and_switches() -> None:
    state = SandboxState(SandboxConfig(timing="strict"))
    assert isinstance(state.limiter("ac_per_second"), StrictWindow)
    state.configure({"timing": "sandbox"})
    assert isinstance(state.limiter("ac_per_second"), SlidingWindow)


def test_an_unknown_timing_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="timing"):
        SandboxConfig().with_overrides({"timing": "lenient"})


@pytest.mark.integration
def test_strict_model_over_http_counts_refused_imports_in_both_windows() -> None:
    config = SandboxConfig(rate_scale=600.0, timing="strict", strict_jitter_s=0.0)
    with SandboxServer(config) as server:
        server.client.configure(ac_imports_per_minute=3, ac_requests_per_second=1000)
        session = requests.Session()
        statuses = [
            session.post(
                f"{server.url}/api/3/import/bulk_import",
                headers={"Api-Token": SEED.ac_api_key},
                json={"contacts": [{"email": "someone@example.com"}]},
                timeout=30,
            ).status_code
            for _ in range(10)
        ]
        stats = server.client.stats()
    assert 429 in statuses and 200 in statuses
    assert stats["rate_limit_rejections"]["ac_imports_per_minute"] == statuses.count(429)
