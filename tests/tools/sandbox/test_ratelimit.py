"""The sandbox's strict sliding-window limits and the simulated other app sharing them."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_ciexport.tools.sandbox import SEED, SandboxConfig, SandboxServer
from airflow_provider_ciexport.tools.sandbox.config import ConfigError
from airflow_provider_ciexport.tools.sandbox.ratelimit import SlidingWindow


def admit(window: SlidingWindow, now: float) -> bool:
    if window.wait_time(now) > 0:
        return False
    window.add(now)
    return True


def test_no_burst_gets_through_at_a_window_edge() -> None:
    # A fixed window or a token bucket would take 100 at the end of one minute and 100 more at the
    # start of the next; a strict sliding window takes no more than 100 in ANY 60 seconds.
    window = SlidingWindow(100, 60.0)
    assert all(admit(window, 59.0 + i * 0.001) for i in range(100))
    assert not admit(window, 61.0)
    assert window.wait_time(118.9) == pytest.approx(0.1)
    assert not admit(window, 118.99)
    assert admit(window, 119.0)


def test_even_spacing_at_the_limit_is_admitted_and_any_faster_is_not() -> None:
    window = SlidingWindow(5, 1.0)
    assert all(admit(window, i * 0.2001) for i in range(50))
    window = SlidingWindow(5, 1.0)
    results = [admit(window, i * 0.19) for i in range(50)]
    assert results[:5] == [True] * 5 and not all(results)


def test_a_refused_request_does_not_use_up_the_allowance() -> None:
    window = SlidingWindow(2, 1.0)
    assert admit(window, 0.0) and admit(window, 0.1)
    assert not any(admit(window, 0.2 + i * 0.01) for i in range(50))
    assert admit(window, 1.0)


def test_other_app_spends_its_share_of_the_window() -> None:
    # 100 a minute, the other app takes 30 of them: about 70 a minute are left for us, however hard
    # we push (here 10 a second), because a refused request of the other app is tried again.
    window = SlidingWindow(100, 60.0, background_rate=30 / 60)
    ours = sum(admit(window, 0.001 + i * 0.1) for i in range(6000))
    assert 10 * 60 <= ours <= 10 * 75
    assert 10 * 25 <= window.background_admitted <= 10 * 30
    assert window.background_refused > 0


def test_other_app_alone_is_never_refused_below_the_limit() -> None:
    window = SlidingWindow(10, 1.0, background_rate=5.0)
    for i in range(200):
        admit(window, i * 0.5)
    assert window.background_refused == 0 and window.background_admitted == 498  # 0 to 99.4 s


def test_other_app_after_a_long_idle_does_not_replay_the_past() -> None:
    window = SlidingWindow(100, 1.0, background_rate=10.0)
    window.wait_time(0.0)
    window.wait_time(3600.0)
    assert window.background_admitted <= 12


def test_other_app_rates_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="ac_other_app_imports_per_minute"):
        SandboxConfig().with_overrides({"ac_other_app_imports_per_minute": -1})


@pytest.mark.integration
def test_other_app_over_http_takes_its_share_of_bulk_imports() -> None:
    # 10 imports per 60/600 = 0.1 s; the other app spends 6 of them, set through the control API.
    with SandboxServer(SandboxConfig(rate_scale=600.0, ac_requests_per_second=1000)) as server:
        server.client.configure(ac_imports_per_minute=10, ac_other_app_imports_per_minute=6)
        body = {"contacts": [{"email": "someone@example.com"}]}
        session = requests.Session()
        statuses = [
            session.post(
                f"{server.url}/api/3/import/bulk_import",
                headers={"Api-Token": SEED.ac_api_key},
                json=body,
                timeout=30,
            ).status_code
            for _ in range(40)
        ]
        stats = server.client.stats()
    assert 429 in statuses and 200 in statuses
    assert stats["other_app"]["ac_imports_per_minute"]["admitted"] > 0
    assert stats["rate_limit_rejections"]["ac_imports_per_minute"] == statuses.count(429)
