"""Client-side rate limiting shared by everything in a process that talks to one account."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

# Servers count requests by arrival, so network jitter can squeeze an exact schedule into an
# occasional 429. Headroom is a share of the window: 2% of a minute is over a second of tolerance,
# but a one-second window needs a larger share to absorb tens of milliseconds of jitter (and the
# per-second budget is never the bottleneck of an export: imports are).
DEFAULT_HEADROOM = 0.02
PER_SECOND_HEADROOM = 0.20


class RateLimiter:
    """Spaces calls evenly so that at most ``rate`` of them start in any ``per`` seconds.

    Even spacing (rather than bursts) keeps every sliding window of the server under its limit, so a
    well-behaved export sees no throttling answer at all. Thread-safe.

    :param rate: how many calls are allowed per ``per`` seconds.
    :param per: the window, in seconds.
    :param headroom: how much slower than the limit to go, as a share (0.02 = 2%).
    """

    def __init__(self, rate: float, per: float = 1.0, headroom: float = DEFAULT_HEADROOM) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("A rate limit needs a positive rate and window.")
        self.rate = rate
        self.per = per
        self.interval = per / rate * (1 + headroom)
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until the next call may start; return how long it waited, in seconds."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            time.sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (the server asked us to slow down)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


_registry: dict[Hashable, RateLimiter] = {}
_registry_lock = threading.Lock()


def shared_limiter(
    key: Hashable, rate: float, per: float = 1.0, headroom: float = DEFAULT_HEADROOM
) -> RateLimiter:
    """Return the process-wide limiter for ``key``, creating it on first use.

    Hooks key their limiters by account and kind of call, so two hooks (or two threads) working on
    the same account share one budget.
    """
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None or limiter.rate != rate or limiter.per != per:
            limiter = _registry[key] = RateLimiter(rate, per, headroom)
        return limiter
