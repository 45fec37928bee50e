"""The ``strict`` timing model: the documented limits as a second, independent implementation.

The default (``sandbox``) model counts only admitted requests in its windows, checks a request when
its body has been read and answers after a fixed latency. This model reads the documented limits
literally instead: "100 requests/minute", "5 requests/second" and "Up to 100 imports may be
*requested* per minute" count every request that arrives, refused ones too, so a client that
retries too soon pushes its own next slot further away. A request is checked on arrival (before
its body is read) and refused if it would make more than ``limit`` requests in the trailing window,
the request one full window back included (no grace at the edge). Answers come after a latency
drawn afresh for every request (see :class:`StrictLatency`), so a client cannot lean on one fixed
round-trip time either.
"""

from __future__ import annotations

import random
from collections import deque

#: Names of the timing models (``SandboxConfig.timing``).
TIMING_MODELS = ("sandbox", "strict")


class StrictWindow:
    """At most ``limit`` requests, refused ones counted, in any closed window of ``window_s`` seconds.

    Same interface as :class:`~airflow_provider_ciexport.tools.sandbox.ratelimit.SlidingWindow`.
    ``background_rate`` simulates another app on the same budget: that many requests a second on a
    fixed schedule, tried again as soon as there is room when refused (its backlog older than a
    window is given up). Its own refusals are not counted, so that it spends what it spends under the
    sandbox's model and the other-app scenario compares across models. For the gate's requests, a
    refused one's ``Retry-After`` is taken after it is counted, so a client that waits that long is
    admitted.
    """

    #: A refused request is counted in every window it was checked against.
    counts_refused = True

    def __init__(self, limit: int, window_s: float, background_rate: float = 0.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.background_rate = background_rate
        self.background_admitted = 0
        self.background_refused = 0
        self._arrivals: deque[float] = deque()
        self._due: float | None = None
        self._retry_at = 0.0

    def _in_window(self, now: float) -> int:
        """How many requests arrived in ``[now - window_s, now]``, after forgetting older ones."""
        arrivals = self._arrivals
        while arrivals and arrivals[0] < now - self.window_s:
            arrivals.popleft()
        return len(arrivals)

    def _retry_after(self, now: float) -> float:
        """Seconds until a request arriving then would be admitted (0.0 if it would be now)."""
        count = self._in_window(now)
        if count < self.limit:
            return 0.0
        # The request that must leave the window is the (count - limit + 1)th oldest; it leaves just
        # after it is window_s old.
        leaving = self._arrivals[count - self.limit]
        return max(leaving + self.window_s - now, 0.0) + 1e-6

    def wait_time(self, now: float) -> float:
        """Seconds until one more request would be admitted (0.0 when it would be now)."""
        self._run_background(now)
        return self._retry_after(now)

    def add(self, now: float) -> None:
        """Count a request that arrived at ``now``, admitted or refused."""
        self._run_background(now)
        self._arrivals.append(now)

    def clear(self) -> None:
        """Forget every request."""
        self._arrivals.clear()
        self._due = None
        self._retry_at = 0.0
        self.background_admitted = self.background_refused = 0

    def _run_background(self, now: float) -> None:
        """Send every request the simulated other app was due to send up to ``now``."""
        if self.background_rate <= 0:
            self._due = None
            return
        interval = 1.0 / self.background_rate
        due = now if self._due is None else max(self._due, now - self.window_s)
        while max(due, self._retry_at) <= now:
            at = max(due, self._retry_at)
            wait = self._retry_after(at)
            if wait == 0.0:
                self._arrivals.append(at)
                self.background_admitted += 1
                due += interval
            else:  # a refusal it only counts, so both models' other app spends the same
                self.background_refused += 1
                self._retry_at = at + wait
        self._due = due


class StrictLatency:
    """Per-request answer delays of the strict model, drawn from a seeded generator.

    An import's delay is log-normal around the configured one (same mean, about a third of it as
    standard deviation: mostly near it, now and then twice as long); every API call gets a further
    uniform network jitter of 0 to ``jitter_s``.
    """

    #: Shape of the import latency's log-normal distribution.
    SIGMA = 0.33

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)

    def delay(self, base_s: float, import_s: float, jitter_s: float) -> float:
        """Seconds to hold an answer: ``base_s`` plus the drawn import latency and jitter."""
        delay = base_s + self._random.uniform(0.0, jitter_s)
        if import_s > 0:
            sigma = self.SIGMA
            delay += import_s * self._random.lognormvariate(-sigma * sigma / 2, sigma)
        return delay
