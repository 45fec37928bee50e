"""Everything the running sandbox holds, and how it is reset and reconfigured."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from airflow_provider_ciexport.tools.sandbox.ac_store import ACStore
from airflow_provider_ciexport.tools.sandbox.cc_store import CCStore
from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.faults import FaultInjector
from airflow_provider_ciexport.tools.sandbox.oauth_store import OAuthStore
from airflow_provider_ciexport.tools.sandbox.ratelimit import RateWindow, SlidingWindow
from airflow_provider_ciexport.tools.sandbox.recording import Recorder
from airflow_provider_ciexport.tools.sandbox.strict import StrictLatency, StrictWindow

DAY_S = 86400.0


class SandboxState:
    """Stores, limits, faults and recordings, all touched only from the server's event loop."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.base_config = config or SandboxConfig()
        self.base_config.validate()
        self.config = self.base_config
        self.reset()

    def reset(self, overrides: dict[str, Any] | None = None) -> None:
        """Back to the seeded state, with the startup config plus ``overrides``.

        :raises ConfigError: when an override is invalid (nothing is reset then).
        """
        config = self.base_config.with_overrides(overrides)
        self.config = config
        self.recorder = Recorder(
            config.request_log_size, config.record_bodies, config.request_log_body_budget_bytes
        )
        self.faults = FaultInjector()
        self.ac = ACStore(self.recorder, lambda: self.config)
        self.cc = CCStore(self.recorder, lambda: self.config)
        self.oauth = OAuthStore()
        self.limits: dict[str, RateWindow] = {}
        self.latency = StrictLatency()

    def configure(self, overrides: dict[str, Any]) -> None:
        """Change settings now, keeping all data.

        :raises ConfigError: when an override is invalid.
        """
        self.config = self.config.with_overrides(overrides)
        rec = self.recorder
        rec.record_bodies = self.config.record_bodies
        rec.body_budget = self.config.request_log_body_budget_bytes
        if rec.log.maxlen != self.config.request_log_size:
            rec.log = deque(rec.log, maxlen=self.config.request_log_size)

    def limiter(self, name: str) -> RateWindow:
        """A rate limiter with its limit, (scaled) window and other app taken from the current config."""
        cfg = self.config
        window_type = StrictWindow if cfg.timing == "strict" else SlidingWindow
        window = self.limits.get(name)
        if type(window) is not window_type:  # first use, or the timing model changed
            window = self.limits[name] = window_type(1, 1.0)
        base_limit, base_window, other_app = {
            "ac_per_second": (cfg.ac_requests_per_second, 1.0, cfg.ac_other_app_requests_per_second),
            "ac_imports_per_minute": (cfg.ac_imports_per_minute, 60.0, cfg.ac_other_app_imports_per_minute),
            "cc_per_second": (cfg.cc_requests_per_second, 1.0, cfg.cc_other_app_requests_per_second),
            "cc_daily_quota": (cfg.cc_daily_quota, DAY_S, 0.0),
        }[name]
        window.limit = base_limit
        window.window_s = cfg.scaled(base_window)
        # The other app's rate is given per unscaled window, like the limits, and scaled with them.
        window.background_rate = other_app / base_window * cfg.rate_scale
        return window

    @staticmethod
    def now() -> float:
        """Monotonic time used for jobs, tokens and limits."""
        return time.monotonic()

    def settle(self, now: float | None = None) -> None:
        """Apply every import job that has completed by ``now``."""
        now = self.now() if now is None else now
        self.ac.settle(now)
        self.cc.settle(now)

    def stats(self) -> dict[str, Any]:
        """Recorder counters plus job and store totals."""
        out = self.recorder.snapshot()
        ac_states: dict[str, int] = {}
        for job in self.ac.jobs.values():
            ac_states[job.state] = ac_states.get(job.state, 0) + 1
        cc_states: dict[str, int] = {}
        for activity in self.cc.activities.values():
            cc_states[activity.state] = cc_states.get(activity.state, 0) + 1
        out["jobs"] = {"ac": ac_states, "cc": cc_states}
        out["other_app"] = {
            name: {"admitted": window.background_admitted, "refused": window.background_refused}
            for name, window in self.limits.items()
            if window.background_admitted or window.background_refused
        }
        out["store"] = {
            "ac": {
                "contacts": len(self.ac.contacts),
                "list_members": {str(k): len(v) for k, v in self.ac.members.items()},
            },
            "cc": {
                "contacts": len(self.cc.contacts),
                "list_members": {k: len(v) for k, v in self.cc.members.items()},
            },
        }
        return out
