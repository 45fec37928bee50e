"""The learning pacing: even spacing, the account share, slowing down after refusals, creeping back."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pytest

from airflow_provider_ciexport.core import ratelimit
from airflow_provider_ciexport.core.ratelimit import DECREASE, MAX_POLL_YIELDS, PollPacer, RateLimiter
from airflow_provider_ciexport.tools.sandbox.ratelimit import SlidingWindow


class FakeTime:
    """A clock that ``sleep`` advances, so pacing can be checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + 1_700_000_000.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(ratelimit, "time", fake)
    return fake


def test_calls_are_spaced_evenly_with_headroom(clock: FakeTime) -> None:
    limiter = RateLimiter(100, 60.0, headroom=0.02)
    limiter.acquire()
    start = clock.now
    for _ in range(100):
        limiter.acquire()
    assert clock.now - start == pytest.approx(100 * 0.6 * 1.02)


def test_exports_sharing_an_account_take_turns_on_one_grid(clock: FakeTime) -> None:
    # Three exports (three processes: each its own limiter) on one account of 5 calls a second.
    limiters = [RateLimiter(5, 1.0, headroom=0.0) for _ in range(3)]
    for lane, limiter in enumerate(limiters):
        limiter.set_lanes(3, lane)
    assert limiters[0].current_rate == pytest.approx(5 / (1 + ratelimit.SHARED_HEADROOM) / 3)
    starts: list[float] = []
    for _ in range(20):
        for limiter in limiters:
            limiter.acquire()
            starts.append(round(clock.time(), 6))
    # Together they start one call every 0.2 s and a little more (the shared grid's headroom), never
    # two in the same slot: no one-second window ever holds more than 5, however their timings fall.
    merged = sorted(starts)
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(merged)}
    assert gaps == {round(0.2 * (1 + ratelimit.SHARED_HEADROOM), 6)}
    assert all(sum(1 for t in merged if s <= t < s + 1.0) <= 5 for s in merged)


def test_exports_sharing_an_account_leave_more_room_in_its_window_than_one_alone(clock: FakeTime) -> None:
    # ActiveCampaign's 100 imports a minute: one process paces 98 a minute, but three processes, each
    # waking late by its own few milliseconds, would overrun a strict window at that pace together.
    alone = RateLimiter(100, 60.0, headroom=0.02)
    shared = [RateLimiter(100, 60.0, headroom=0.02) for _ in range(3)]
    for lane, limiter in enumerate(shared):
        limiter.set_lanes(3, lane)
    assert 60.0 / alone.step == pytest.approx(98.04, abs=0.01)
    assert 60.0 / shared[0].step == pytest.approx(95.2, abs=0.1)
    assert sum(60.0 / (limiter.step * limiter.lanes) for limiter in shared) == pytest.approx(95.2, abs=0.1)


def test_a_lone_refusal_only_waits_as_asked(clock: FakeTime) -> None:
    limiter = RateLimiter(100, 60.0)
    call = limiter.acquire()
    assert limiter.throttled(call, retry_after=2.0) is False
    assert limiter.factor == 1.0
    before = clock.now
    limiter.acquire()
    # From the next slot of the grid but one: the refused call spent a slot of the server's window.
    assert 2.0 < clock.now - before <= 2.0 + 2 * limiter.step


def test_a_refused_call_gives_its_slot_in_the_window_back(clock: FakeTime) -> None:
    # A strict window counts refused requests too: the refused call spent a slot of it, so the next
    # call skips one; exports refused in turn then drain the window instead of keeping it full.
    limiter = RateLimiter(100, 60.0)
    calls = [limiter.acquire() for _ in range(3)]
    assert limiter.throttled(calls[-1], own=True) is False
    before = clock.now
    limiter.acquire()
    assert clock.now - before == pytest.approx(2 * limiter.step)
    before = clock.now
    limiter.acquire()
    assert clock.now - before == pytest.approx(limiter.step)


def test_repeated_refusals_slow_down_once_per_round(clock: FakeTime) -> None:
    limiter = RateLimiter(100, 60.0)
    calls = [limiter.acquire() for _ in range(10)]
    assert limiter.throttled(calls[3]) is False
    assert limiter.throttled(calls[5]) is True
    assert limiter.factor == pytest.approx(DECREASE)
    # Calls sent before the cut were paced at the old rate: their refusals do not cut again.
    assert limiter.throttled(calls[8]) is False
    assert limiter.throttled(calls[9]) is False
    assert limiter.factor == pytest.approx(DECREASE)


def test_it_creeps_back_to_the_full_rate(clock: FakeTime) -> None:
    limiter = RateLimiter(100, 60.0)
    calls = [limiter.acquire() for _ in range(3)]
    limiter.throttled(calls[0])
    limiter.throttled(calls[1])
    assert limiter.factor < 1.0
    for _ in range(150):
        limiter.succeeded()
    assert DECREASE < limiter.factor < 1.0
    for _ in range(60):
        limiter.succeeded()
    assert limiter.factor == 1.0


def run_against(window: SlidingWindow, limiter: RateLimiter, clock: FakeTime, calls: int) -> dict[str, Any]:
    """Send ``calls`` calls through ``limiter`` to ``window``; refused ones are sent again."""
    accepted = refused = 0
    first = clock.now
    while accepted < calls:
        call = limiter.acquire()
        wait = window.wait_time(clock.now)
        if wait > 0:
            refused += 1
            limiter.throttled(call, retry_after=wait)
        else:
            window.add(clock.now)
            accepted += 1
            limiter.succeeded()
    return {"per_window": accepted / (clock.now - first) * window.window_s, "refused": refused}


def test_alone_on_a_strict_window_it_is_never_refused(clock: FakeTime) -> None:
    window = SlidingWindow(100, 60.0)
    result = run_against(window, RateLimiter(100, 60.0), clock, 2000)
    assert result["refused"] == 0
    assert result["per_window"] >= 97


def test_sharing_with_an_unknown_app_it_settles_near_what_is_left(clock: FakeTime) -> None:
    # Another app spends 30 of the 100 imports a minute; the export learns that 70 are left,
    # without a storm of refusals.
    window = SlidingWindow(100, 60.0, background_rate=30 / 60)
    limiter = RateLimiter(100, 60.0)
    result = run_against(window, limiter, clock, 3000)
    assert 60 <= result["per_window"] <= 70.5
    assert result["refused"] / 3000 < 0.05
    assert limiter.cuts >= 1


def test_a_call_woken_late_by_a_stall_takes_a_fresh_slot(
    clock: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process stalls (a garbage collection, a busy CPU) while calls wait for their slots: woken
    # late, they must not all go out at once (a burst a strict window refuses), but each on a slot of
    # its own again.
    limiter = RateLimiter(100, 60.0, headroom=0.0)
    limiter.acquire()
    stalls = [2.5 * limiter.step]

    def stalled_sleep(seconds: float) -> None:
        clock.now += seconds + (stalls.pop() if stalls else 0.0)

    monkeypatch.setattr(clock, "sleep", stalled_sleep)
    woke = clock.now + limiter.step + 2.5 * limiter.step
    limiter.acquire()
    assert clock.now > woke  # it waited for a new slot, not gone out at once
    slot = clock.time() / limiter.step
    assert slot == pytest.approx(round(slot))  # on the account's grid
    starts = [clock.time()]
    for _ in range(5):
        limiter.acquire()
        starts.append(clock.time())
    assert all(b - a == pytest.approx(limiter.step) for a, b in itertools.pairwise(starts))


def test_a_pause_holds_back_the_calls_already_waiting_for_a_slot() -> None:
    # Retry-After holds every call to the account back, not only the ones that ask for a slot later:
    # calls queue seconds ahead when many threads send (imports in flight).
    import threading

    limiter = RateLimiter(10, 1.0, headroom=0.0)
    limiter.acquire()
    started: list[float] = []

    def call() -> None:
        limiter.acquire()
        started.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    while limiter._next < time.monotonic() + 4 * limiter.step:  # all five hold a slot
        time.sleep(0.001)
    paused_at = time.monotonic()
    limiter.pause(1.0)
    for thread in threads:
        thread.join()
    assert len(started) == 5 and min(started) >= paused_at + 1.0


@pytest.mark.parametrize("limit", [4, 5, 100])
def test_the_per_second_pace_leaves_a_request_of_every_window_free(limit: int) -> None:
    # Even slots at the per-second headroom: the `limit`-th of ours always falls beyond the window
    # that holds the first, and `limit + 1` of them (a refusal) would need bunching by over a step.
    step = RateLimiter(limit, 1.0, ratelimit.PER_SECOND_HEADROOM).step
    if limit <= 5:  # the documented limits (4 and 5 a second)
        assert (limit - 1) * step > 1.0
    assert limit * step >= 1.0 + step


def test_calls_a_stall_bunched_are_spaced_by_the_send_log(clock: FakeTime) -> None:
    # Threads that all waited out a stall go at the same instant (past MAX_RESLOTS a late call goes
    # anyway): the log of what was sent spaces them, half a slot apart at least and no more than
    # SEND_LOG_SLOTS in any SEND_LOG_SLOTS - 0.5 slots, so a strict window sees no burst.
    limiter = RateLimiter(5, 1.0, headroom=ratelimit.PER_SECOND_HEADROOM)
    starts = [limiter._log_send() for _ in range(12)]  # the clock stands still: all due at once
    assert starts[0] == clock.now
    assert all(b - a >= limiter.step / 2 - 1e-9 for a, b in itertools.pairwise(starts))
    span = (ratelimit.SEND_LOG_SLOTS - 0.5) * limiter.step
    assert all(sum(1 for t in starts if s <= t < s + span) <= ratelimit.SEND_LOG_SLOTS for s in starts)
    # At 5 a second, no one-second window ever holds more than 5 of them.
    assert all(sum(1 for t in starts if s <= t <= s + 1.0) <= 5 for s in starts)


def test_the_send_log_never_holds_back_an_even_pace(clock: FakeTime) -> None:
    limiter = RateLimiter(5, 1.0, headroom=ratelimit.PER_SECOND_HEADROOM)
    limiter.acquire()
    start = clock.now
    for _ in range(20):
        limiter.acquire()
    assert clock.now - start == pytest.approx(20 * limiter.step)


def _bunched(limiter: RateLimiter, clock: FakeTime, calls: int) -> list[int]:
    """``calls`` calls released at once (threads that all waited out a stall): only the send log
    spaces them. Returns their sequence numbers."""
    clock.sleep = lambda seconds: None  # type: ignore[method-assign]
    try:
        return [limiter.acquire() for _ in range(calls)]
    finally:
        del clock.sleep


@pytest.mark.parametrize(
    ("rate", "per", "headroom", "lanes", "window"),
    [(5, 1.0, 0.4, 1, None), (4, 1.0, 0.4, 1, None), (100, 1.0, 0.4, 1, None), (100, 1.0, 0.4, 1, 5),
     (80, 1.0, 0.4, 1, 4), (100, 60.0, 0.02, 1, None), (2000, 60.0, 0.02, 1, None), (5, 1.0, 0.4, 3, None),
     (100, 60.0, 0.02, 2, None)],
)  # fmt: skip
def test_an_even_pace_never_passes_for_own_bunching(
    clock: FakeTime, rate: float, per: float, headroom: float, lanes: int, window: float | None
) -> None:
    # Refused at an even pace, our own calls cannot have filled the server's window: someone else spent it.
    limiter = RateLimiter(rate, per, headroom, shared_rate=rate * 0.8, window_calls=window)
    limiter.set_lanes(lanes, 0)
    calls = [limiter.acquire() for _ in range(int(min(rate, ratelimit.MAX_WINDOW_CALLS)) * 2)]
    assert not any(limiter.own_bunching(call) for call in calls)


def test_refusals_of_our_own_bunched_calls_space_out_without_cutting(clock: FakeTime) -> None:
    limiter = RateLimiter(5, 1.0, headroom=ratelimit.PER_SECOND_HEADROOM)
    limiter.acquire()
    calls = _bunched(limiter, clock, 8)
    # The fifth of ours in a second could overrun the 5-a-second window by itself: ours.
    assert [limiter.own_bunching(call) for call in calls[:3]] == [False] * 3
    assert limiter.own_bunching(calls[4])
    before = clock.now
    for call in calls[4:]:
        assert limiter.throttled(call, retry_after=0.5) is False
    assert limiter.factor == 1.0 and limiter.cuts == 0 and limiter.own_bunched == 4
    limiter.acquire()
    assert clock.now >= before + 0.5  # still waits as asked: spaced out


def test_a_scaled_limit_is_read_in_windows_of_the_documented_count(clock: FakeTime) -> None:
    # 100 a second, enforced as 5 in every 50 ms (a time-scaled sandbox): 5 of ours bunched into 50 ms
    # are ours, though far fewer than 100 in the second.
    limiter = RateLimiter(100, 1.0, ratelimit.PER_SECOND_HEADROOM, window_calls=5)
    limiter.acquire()
    calls = _bunched(limiter, clock, 6)
    assert limiter.own_bunching(calls[4])
    assert not RateLimiter(100, 1.0, ratelimit.PER_SECOND_HEADROOM).own_bunching(calls[4])  # not in its log
    unscaled = RateLimiter(100, 1.0, ratelimit.PER_SECOND_HEADROOM)
    unscaled.acquire()
    assert not any(unscaled.own_bunching(call) for call in _bunched(unscaled, clock, 6))


def test_the_log_holds_when_a_call_really_left(clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    # A thread that wakes up late from its wait (a busy worker) leaves later than planned, closer to the
    # next call: the log the refusals are read against records when it left.
    limiter = RateLimiter(5, 1.0, headroom=ratelimit.PER_SECOND_HEADROOM)
    other = limiter._log_send(99)  # another thread just left: this call waits in the send log
    monkeypatch.setattr(clock, "sleep", lambda seconds: setattr(clock, "now", clock.now + seconds + 0.05))
    call = limiter.acquire()
    planned = other + limiter.step * limiter.lanes / 2  # half a slot after the other, as planned
    assert limiter._starts[-1] == (call, clock.now) and clock.now > planned


def test_refusals_our_own_calls_cannot_explain_cut_the_rate(clock: FakeTime) -> None:
    # The same refusals at an even pace: someone else is spending the account.
    limiter = RateLimiter(5, 1.0, headroom=ratelimit.PER_SECOND_HEADROOM)
    calls = [limiter.acquire() for _ in range(8)]
    assert limiter.throttled(calls[4]) is False  # a lone refusal: jitter
    assert limiter.throttled(calls[5]) is True
    assert limiter.factor == pytest.approx(DECREASE) and limiter.own_bunched == 0


def test_a_call_missing_from_the_log_is_not_own_bunching(clock: FakeTime) -> None:
    limiter = RateLimiter(5, 1.0)
    limiter.acquire()
    assert limiter.own_bunching(99) is False


def _burst(limiter: RateLimiter, refusals: int) -> float:
    """Refuse ``refusals`` evenly paced calls in a row (someone else spends the account); the factor
    the burst leaves."""
    for _ in range(refusals):
        limiter.throttled(limiter.acquire())
    return limiter.factor


@pytest.mark.parametrize("refusals", [2, 8, 20])
def test_after_a_burst_of_refusals_the_full_rate_returns_in_bounded_windows(
    clock: FakeTime, refusals: int
) -> None:
    limiter = RateLimiter(100, 60.0)
    low = _burst(limiter, refusals)
    assert low <= DECREASE ** (refusals // 2)  # a cut every second refusal after the last cut
    bound = math.ceil(ratelimit.RECOVERY_WINDOWS * 100) + 1  # RECOVERY_WINDOWS windows of 100
    quiet = 0
    while limiter.factor < 1.0:
        limiter.acquire()
        limiter.succeeded()
        quiet += 1
    assert quiet <= bound
    assert quiet >= bound - 2  # linear, not a jump back: the windows are spent at a lower rate


def test_repeated_bursts_do_not_ratchet_the_rate_down(clock: FakeTime) -> None:
    limiter = RateLimiter(100, 60.0)
    lows = []
    for _ in range(6):
        lows.append(_burst(limiter, 8))
        for _ in range(int(ratelimit.RECOVERY_WINDOWS * 100) + 1):
            limiter.acquire()
            limiter.succeeded()
        assert limiter.factor == 1.0  # quiet gives back the full rate, every time
    assert lows == [pytest.approx(lows[0])] * 6


def test_above_where_refusals_began_the_rate_probes_slowly(clock: FakeTime) -> None:
    # Someone else keeps spending part of the budget: the refusals come back below the full rate.
    limiter = RateLimiter(100, 60.0)
    _burst(limiter, 2)
    for _ in range(150):  # more than a window later, not yet back to the full rate
        limiter.acquire()
        limiter.succeeded()
    began = limiter.factor
    assert DECREASE < began < 1.0
    low = _burst(limiter, 2)

    def successes_until(factor: float) -> int:
        count = 0
        while limiter.factor < factor:
            limiter.acquire()
            limiter.succeeded()
            count += 1
        return count

    fast = successes_until(began) / (began - low)
    slow = successes_until(1.0) / (1.0 - began)
    assert slow == pytest.approx(ratelimit.PROBE_SLOWER * fast, rel=0.1)


def test_a_poll_waits_for_the_calls_already_queued_for_the_per_second_budget(clock: FakeTime) -> None:
    budget = RateLimiter(5, 1.0, 0.4)
    pacer = PollPacer(budget, lambda: 0.0)
    # Three imports waiting for the budget (threads asleep until their slots): the poll goes after them.
    queued = [budget._take_slot()[0] for _ in range(3)]
    assert budget.backlog == pytest.approx(queued[-1] - clock.now)
    pacer.acquire()
    assert clock.now >= queued[-1]
    assert pacer.yields >= 1
    # The poll's next turn is a whole poll interval after it finally went: it backed off.
    before = clock.now
    pacer.acquire()
    assert clock.now - before == pytest.approx(1 / pacer.rate)


def test_a_poll_goes_anyway_after_yielding_a_bounded_number_of_times(clock: FakeTime) -> None:
    class Busy(RateLimiter):
        backlog = 0.5  # imports queued for the budget whenever a poll looks

    pacer = PollPacer(Busy(5, 1.0, 0.4), lambda: 0.0)
    before = clock.now
    pacer.acquire()
    assert pacer.yields == MAX_POLL_YIELDS
    assert clock.now - before == pytest.approx(0.5 * MAX_POLL_YIELDS)


def test_polls_take_what_the_imports_leave_of_the_pace_and_slow_first_when_it_is_cut(
    clock: FakeTime,
) -> None:
    # 20 times the limits: 100 requests a second (paced to about 71), 2,000 imports a minute.
    budget = RateLimiter(100, 1.0, 0.4, window_calls=5)
    imports = RateLimiter(2000, 60.0)
    pacer = PollPacer(budget, lambda: imports.paced_rate)
    assert imports.paced_rate + pacer.rate == pytest.approx(budget.paced_rate)
    assert pacer.rate >= imports.paced_rate  # a poll an import at least: jobs are confirmed as sent
    full = pacer.rate
    budget.factor = DECREASE  # refusals cut the per-second pace: the polls give way, not the imports
    assert pacer.rate < full
    assert imports.paced_rate + pacer.rate == pytest.approx(budget.paced_rate)
    budget.factor = 0.3  # cut below what the imports take: the polls keep their floor
    assert pacer.rate == pacer.floor
    before = clock.now
    pacer.acquire()
    pacer.acquire()
    assert clock.now - before == pytest.approx(1 / pacer.floor)
