"""Sliding-window request limits."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """At most ``limit`` events in any window of ``window_s`` seconds.

    The window length is read at every check, so a config change (``rate_scale``) applies at once.
    Only admitted events are remembered: a rejected request does not use up the allowance.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._events: deque[float] = deque()

    def wait_time(self, now: float) -> float:
        """Seconds until one more event would be admitted (0.0 when it would be now)."""
        events = self._events
        horizon = now - self.window_s
        while events and events[0] <= horizon:
            events.popleft()
        if len(events) < self.limit:
            return 0.0
        # The (len - limit + 1)th oldest has to leave the window first.
        return max(events[len(events) - self.limit] - horizon, 1e-6)

    def add(self, now: float) -> None:
        """Record an admitted event."""
        self._events.append(now)

    def clear(self) -> None:
        """Forget every event."""
        self._events.clear()
