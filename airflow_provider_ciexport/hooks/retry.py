"""How one API call is retried: which answers are tried again, how long to wait, when to give up.

:meth:`~airflow_provider_ciexport.hooks.base.SegmentApiHook.send` sends and reads answers; this module
only decides, so a unit test drives every decision without HTTP.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

#: How many times one call is tried on faults (5xx, no answer) before it fails.
DEFAULT_MAX_ATTEMPTS = 8
#: The longest wait between two attempts after a fault.
MAX_BACKOFF_S = 60.0
#: How long a call may go on being refused for the rate limit, with no answer getting through on this
#: hook, before the task fails (connection extra ``throttle_timeout``, seconds).
DEFAULT_THROTTLE_TIMEOUT_S = 900.0
#: Seconds between two lines of the log about throttling (the operators' default ``progress_interval``).
THROTTLE_LOG_INTERVAL_S = 30.0


class RetryableAnswer(Exception):
    """An answer worth trying again (5xx, no answer): it uses up one of the call's attempts.

    :param reason: what happened, without personal data.
    :param retry_after: how long the server asked us to wait, in seconds, if it said.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Unauthorized(RetryableAnswer):
    """A 401 again after the credentials were renewed: a fault worth retrying with a new renewal.

    Tokens expiring under load, or a revocation racing another worker's refresh, make a freshly issued
    token fail once in a while; only a 401 to every attempt of a call is a refusal of the credentials.

    :param response: the 401 answer, for the destination's own error message once attempts run out.
    """

    def __init__(self, response: requests.Response) -> None:
        super().__init__("HTTP 401 after a renewal of the credentials")
        self.response = response


class Throttled(RetryableAnswer):
    """The API asked us to slow down (429, a rate-limit body): not a fault, no attempt is used up.

    The call is sent again after the wait, for as long as the hook keeps getting other answers
    through (see ``throttle_timeout``).

    :param reason: what happened, without personal data.
    :param retry_after: how long the server asked us to wait, in seconds, if it said.
    :param window_s: the length of the window that refused the call, when the answer names it
        (ActiveCampaign's 400 body: "per minute", "per second").
    """

    def __init__(self, reason: str, retry_after: float | None = None, window_s: float | None = None) -> None:
        super().__init__(reason, retry_after)
        self.window_s = window_s


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header given in seconds or as an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(faults: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter after the ``faults``-th fault, or what the server asked."""
    if retry_after is not None:
        return max(retry_after, 0.05)
    return min(MAX_BACKOFF_S, 0.5 * 2 ** (faults - 1)) * (0.5 + random.random() / 2)


@dataclass
class CallRetries:
    """The retry policy of one call, and what it has met so far.

    :param max_attempts: faults (5xx, no answer, a 401 after a renewal) the call may meet; the last
        one fails it.
    :param throttle_timeout: seconds of throttling with nothing getting through before it fails.
    :param started: when the call started (``time.monotonic()``).
    """

    max_attempts: int
    throttle_timeout: float
    started: float = field(default_factory=time.monotonic)
    faults: int = 0
    throttles: int = 0
    unauthorized: int = 0

    def renewed(self, response: requests.Response) -> None:
        """The API refused the credentials and they were renewed: send again at once, the first time.

        :raises Unauthorized: when it happens again in this call (a fault, with backoff).
        """
        self.unauthorized += 1
        if self.unauthorized > 1:
            raise Unauthorized(response)
        self.faults += 1

    def fault(self, answer: RetryableAnswer) -> float | None:
        """Count a fault: the seconds to wait before the next attempt, or ``None`` to give up."""
        self.faults += 1
        if self.faults >= self.max_attempts:
            return None
        return backoff(self.faults, answer.retry_after)

    def refused_every_time(self) -> bool:
        """Whether every fault so far was a 401, each after freshly renewed credentials."""
        return self.unauthorized == self.faults

    def throttled(self, last_progress: float) -> float | None:
        """Count a throttling answer: the seconds stalled when that is too long, else ``None``.

        :param last_progress: when an answer last got through on the hook (``time.monotonic()``).
        """
        self.throttles += 1
        stalled = time.monotonic() - max(self.started, last_progress)
        return stalled if stalled >= self.throttle_timeout else None


class ThrottleSummary:
    """Refusals for the rate limit counted across a hook's calls (and threads), for one log line at
    most every ``interval_s``: the first refusal is told at once, later ones in the next due line.

    :param interval_s: the least time between two lines.
    :param clock: monotonic seconds (a test's fake clock).
    """

    def __init__(
        self, interval_s: float = THROTTLE_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ):
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_line: float | None = None
        #: Refusals, pace cuts and refusals of our own bunching since the last line.
        self.pending = 0
        self._slowdowns = 0
        self._own = 0
        #: Refusals since the summary was made (the export's metrics count them).
        self.total = 0

    def refused(self, slowed: bool, own: bool = False) -> tuple[int, int, int, float] | None:
        """Count one refusal (``slowed``: it cut the pace; ``own``: our own bunching explained it);
        when a line is due, what it says."""
        with self._lock:
            self.pending += 1
            self.total += 1
            self._slowdowns += slowed
            self._own += own
        return self.due()

    def due(self) -> tuple[int, int, int, float] | None:
        """``(refusals, pace cuts, own bunching, seconds)`` since the last line if refusals are untold
        and a line is due, and the counts start again; else ``None``."""
        if not self.pending:
            return None  # read without the lock: every answer asks, and nearly all find nothing
        with self._lock:
            now = self._clock()
            since = None if self._last_line is None else now - self._last_line
            if not self.pending or (since is not None and since < self.interval_s):
                return None
            told = (self.pending, self._slowdowns, self._own, since or 0.0)
            self.pending = self._slowdowns = self._own = 0
            self._last_line = now
            return told
