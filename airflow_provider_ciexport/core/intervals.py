"""At most one of something (a log line) every so many seconds, whichever thread asks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class IntervalGate:
    """Opens at most once every ``interval_s`` seconds, counted from its start, whichever thread asks.

    :param interval_s: the least time between two openings (0: every time it is asked).
    :param clock: monotonic seconds (a test's fake clock).
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        """Count the next interval from now."""
        self.last = self._clock()

    def due(self, now: float | None = None) -> bool:
        """Whether an interval has passed since the last opening (or the start); if so, the next one
        is an interval from ``now`` (default: the clock's now)."""
        now = self._clock() if now is None else now
        with self._lock:
            if now - self.last < self.interval_s:
                return False
            self.last = now
            return True
