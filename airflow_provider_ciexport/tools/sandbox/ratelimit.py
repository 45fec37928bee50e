"""Sliding-window request limits, optionally shared with a simulated other app."""

from __future__ import annotations

from collections import deque
from typing import Protocol


class RateWindow(Protocol):
    """What the gate needs of a rate-limit window, whichever timing model implements it."""

    limit: int
    window_s: float
    background_rate: float
    background_admitted: int
    background_refused: int
    #: Whether a refused request is counted in the window too.
    counts_refused: bool

    def wait_time(self, now: float) -> float:
        """Seconds until one more request would be admitted (0.0 when it would be now)."""
        ...

    def add(self, now: float) -> None:
        """Count a request."""
        ...

    def clear(self) -> None:
        """Forget every request."""
        ...


class SlidingWindow:
    """At most ``limit`` events in any window of ``window_s`` seconds: a strict sliding log.

    Every admitted event is remembered with its arrival time, and one more is admitted only if fewer
    than ``limit`` arrived in the ``window_s`` seconds before it, so no burst at a window's edge gets
    through (unlike a fixed window or a token bucket). The window length is read at every check, so a
    config change (``rate_scale``) applies at once. A rejected request does not use up the allowance.

    ``background_rate`` simulates another app spending the same budget: that many events a second,
    evenly spaced, interleaved with the real requests in arrival order. A refused one is tried again
    as soon as the window has room, as a well-behaved app does, so the other app does get its rate
    (up to the limit) however hard the real clients push.
    """

    #: Only admitted requests count.
    counts_refused = False

    def __init__(self, limit: int, window_s: float, background_rate: float = 0.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.background_rate = background_rate
        self.background_admitted = 0
        self.background_refused = 0
        self._events: deque[float] = deque()
        self._background_next: float | None = None
        self._background_ready = 0.0

    def wait_time(self, now: float) -> float:
        """Seconds until one more event would be admitted (0.0 when it would be now)."""
        self._run_background(now)
        return self._wait(now)

    def _wait(self, now: float) -> float:
        events = self._events
        horizon = now - self.window_s
        while events and events[0] <= horizon:
            events.popleft()
        if len(events) < self.limit:
            return 0.0
        # The (len - limit + 1)th oldest has to leave the window first.
        return max(events[len(events) - self.limit] - horizon, 1e-6)

    def _run_background(self, now: float) -> None:
        """Let the simulated other app make every request it was due to make up to ``now``."""
        if self.background_rate <= 0:
            self._background_next = None
            return
        interval = 1.0 / self.background_rate
        if self._background_next is None:
            self._background_next = self._background_ready = now
        # Its requests are due on a fixed schedule; a refused one waits for room and those behind it
        # queue up (a backlog older than a window is given up, so a long idle stretch replays nothing).
        scheduled = max(self._background_next, now - self.window_s)
        ready = self._background_ready
        while max(scheduled, ready) <= now:
            at = max(scheduled, ready)
            wait = self._wait(at)
            if wait == 0.0:
                self._events.append(at)
                self.background_admitted += 1
                scheduled += interval
                ready = at
            else:
                self.background_refused += 1
                ready = at + wait
        self._background_next, self._background_ready = scheduled, ready

    def add(self, now: float) -> None:
        """Record an admitted event."""
        self._events.append(now)

    def clear(self) -> None:
        """Forget every event."""
        self._events.clear()
        self._background_next = None
        self.background_admitted = self.background_refused = 0
