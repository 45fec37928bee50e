"""Polling an asynchronous job with growing pauses (the one loop every wait for a job uses)."""

from __future__ import annotations

import pytest

from airflow_provider_ciexport.core.polling import poll_until_done


def test_pauses_grow_to_the_longest_and_the_first_result_is_returned() -> None:
    answers = iter([None, None, None, None, "done", "never asked"])
    pauses: list[float] = []
    assert poll_until_done(lambda: next(answers), 1.0, 2.0, pauses.append) == "done"
    assert pauses == [1.0, 1.5, 2.0, 2.0, 2.0]


def test_a_pause_that_raises_stops_the_wait_before_the_next_poll() -> None:
    polls: list[int] = []

    def pause(seconds: float) -> None:
        if polls:
            raise InterruptedError

    with pytest.raises(InterruptedError):
        poll_until_done(lambda: polls.append(1), 0.1, 1.0, pause)
    assert polls == [1]
