"""Waiting for an asynchronous job: poll with pauses that grow, until it answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How much longer each pause is than the one before it.
GROWTH = 1.5


def poll_until_done(
    poll: Callable[[], T | None],
    first_pause: float,
    longest_pause: float,
    pause: Callable[[float], None] = time.sleep,
) -> T:
    """Pause, then ``poll``, again and again with pauses growing 1.5 times up to ``longest_pause``.

    :param poll: asks once; returns the job's result, or ``None`` while the job is not done (it
        raises to give up).
    :param first_pause: seconds before the first poll.
    :param longest_pause: the longest pause between two polls.
    :param pause: waits that long (it may raise to stop early, e.g. when the task is stopped).
    :return: the first result ``poll`` returns.
    """
    interval = first_pause
    while True:
        pause(interval)
        result = poll()
        if result is not None:
            return result
        interval = min(interval * GROWTH, longest_pause)
