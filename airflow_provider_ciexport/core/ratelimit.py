"""Client-side pacing that learns: shared by everything in a process that talks to one account.

A :class:`RateLimiter` spaces calls evenly at the account's documented rate, on slots of a grid of
the wall clock. Exports sharing the account (see :mod:`~airflow_provider_ciexport.core.sharing`:
in other processes, on other workers) take turns on that grid, and each uses its slots as far as a
factor it learns from the API's answers allows: after repeated refusals it slows down, then creeps
back up towards the documented rate (additive increase, multiplicative decrease, as TCP does), so a
budget shared with unknown other apps settles instead of storming. A refusal its own log of sends
explains (its own calls bunched into the server's window by a stall) only spaces the calls out: it
never cuts the learnt rate, which is for someone else spending the account.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Protocol

# Servers count requests by arrival, so network jitter can squeeze an exact schedule into an
# occasional 429. Headroom is a share of the window: 2% of a minute is over a second of tolerance,
# but a one-second window needs a larger share to absorb tens of milliseconds of jitter. There it
# leaves a whole request of the window free (at 5 a second, at most 4 of ours in any second) and
# more: a refusal would take 6 of ours bunched into a window that 6 even slots overrun by 40%.
# Filling the window buys nothing: the per-second budget is never an export's bottleneck (imports
# are), and the requests that would fill it are status polls, which are not in a hurry.
DEFAULT_HEADROOM = 0.02
PER_SECOND_HEADROOM = 0.40
#: While several exports share an account their calls interleave on one grid, but each process wakes
#: with delays of its own, so the union is less even than one process's pace: the account's grid
#: then keeps this much more headroom (of ActiveCampaign's 100 imports a minute, at most 95 of ours).
SHARED_HEADROOM = 0.03
#: After repeated refusals the rate is cut to this share of what it was ...
DECREASE = 0.85
#: ... and regained linearly over this many windows' worth of successful calls, from however low the
#: cuts went: a burst of refusals costs a bounded time at a lower rate, never a ratchet down.
RECOVERY_WINDOWS = 2.0
#: Above the rate at which refusals began last time (someone else's share of the budget, likely still
#: spent), the rate climbs this many times slower: it probes for room rather than storming back into
#: refusals that cost the other app its requests too. A burst at the full rate still recovers fast.
PROBE_SLOWER = 4.0
#: Never slower than this share of the documented rate.
MIN_FACTOR = 0.05
#: Refusals that cut the rate: this many within one window's worth of calls. A lone refusal is
#: network jitter against a strict sliding window (honouring its Retry-After is enough); several
#: mean the budget really is spent by someone else.
REFUSALS_TO_CUT = 2
#: A window's worth of calls is the limit's count, but at most this many: the APIs' windows hold
#: at most 100 calls (ActiveCampaign's 100 imports a minute), and an account with raised limits (or a
#: sandbox that scales time) has more calls per window length, not more per window.
MAX_WINDOW_CALLS = 100.0
#: How many times a call that woke up late takes a new slot before it goes anyway ...
MAX_RESLOTS = 3
#: ... and even then it starts no sooner than half a slot after the last call, and no more than this
#: many calls in any ``SEND_LOG_SLOTS - 0.5`` of its own slot intervals: a log of what it sent (the
#: client's view of the server's window) spaces out the calls a stall bunched up, however many threads
#: were waiting. An even pace is never held back. At the per-second headroom this span is about the
#: server's one-second window.
SEND_LOG_SLOTS = 4
#: A refusal is our own bunching when our own calls in the server's window before it (the refused one
#: included, the window widened by this share of a slot of the account's grid for the network's
#: jitter) reach the limit of that window (our share of it while exports share the account): ours
#: alone could have overrun it. An even pace never does (the headroom leaves the last call of a
#: window out), so a refusal then means someone else spent the budget.
OWN_WINDOW_JITTER_SLOTS = 0.1
#: Status polls never fewer than this many a second, however little the imports leave of the pace.
MIN_POLL_RATE = 0.2
#: A poll waits for the calls queued for the budget at most this many times, then goes anyway: a job
#: is still followed to its end however busy the account is.
MAX_POLL_YIELDS = 8


class RateLimiter:
    """Spaces calls evenly so that at most ``rate`` of them start in any ``per`` seconds, and learns.

    Even spacing (rather than bursts) keeps every sliding window of the server under its limit, so a
    well-behaved export sees no throttling answer at all. Calls start on a grid of the wall clock, one
    slot every ``per / rate`` seconds (plus headroom). When several exports share the account, each
    takes every n-th slot (its *lane*, :meth:`set_lanes`): their calls interleave evenly as if one
    client sent them all, where independently paced exports would bunch up by chance and overrun a
    strict window. Within its lane an export uses a slot only as often as the ``factor`` it learnt
    from refusals allows (:meth:`throttled`, :meth:`succeeded`). Thread-safe.

    :param rate: how many calls the account is allowed per ``per`` seconds (the documented limit).
    :param per: the window, in seconds.
    :param headroom: how much slower than the limit to go, as a share (0.02 = 2%).
    :param shared_rate: a lower rate for the whole account while several exports share it (more
        slack in the server's windows for the timing differences between processes; default: the
        rate less ``SHARED_HEADROOM``).
    :param window_calls: how many calls the server's window holds, if fewer than ``rate``: a raised
        or time-scaled limit of the documented count (5 a second enforced as 5 in every 50 ms at
        100 a second) is read in windows of the documented count. Default: ``rate``, at most
        ``MAX_WINDOW_CALLS``.
    """

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        headroom: float = DEFAULT_HEADROOM,
        shared_rate: float | None = None,
        window_calls: float | None = None,
    ) -> None:
        if rate <= 0 or per <= 0:
            raise ValueError("A rate limit needs a positive rate and window.")
        self.rate = rate
        self.per = per
        self.headroom = headroom
        self.shared_rate = min(rate, shared_rate or rate / (1 + SHARED_HEADROOM))
        self.window_calls = min(window_calls or rate, MAX_WINDOW_CALLS, rate)
        self._steps = (per / rate * (1 + headroom), per / self.shared_rate * (1 + headroom))
        self.lanes = 1
        self.lane = 0
        self.factor = 1.0
        self.cuts = 0
        self._credit = 1.0
        #: Slots of this lane to skip: one per refused call (:meth:`throttled`).
        self._owed = 0
        self._calls = 0
        self._last_cut_call = 0
        self._refusals: deque[int] = deque()
        self._next = 0.0
        #: Bumped when reserved slots stop being valid (a pause, a new share of the account).
        self._epoch = 0
        self._paused_until = 0.0
        #: The send log: ``(call, start)`` of the calls of about the last server window (a start may be
        #: ahead: a reservation; corrected to when the call really left), to space calls a stall
        #: bunched and to explain refusals.
        self._starts: deque[tuple[int, float]] = deque(maxlen=2 * int(MAX_WINDOW_CALLS) + 2)
        #: The factor the last cut left, from which :meth:`succeeded` climbs back in bounded time ...
        self._low = 1.0
        #: ... fast up to the factor at which the last burst of refusals began, slowly beyond it.
        self._cut_at = 1.0
        #: Refusals our own bunching explained (spaced out, the rate not cut).
        self.own_bunched = 0
        self._lock = threading.Lock()

    @property
    def step(self) -> float:
        """Seconds between two slots of the account's grid (all exports together)."""
        return self._steps[self.lanes > 1]

    @property
    def share(self) -> float:
        """The part of the account's rate left to this process by the other exports."""
        return 1.0 / self.lanes

    @property
    def interval(self) -> float:
        """Average seconds between two calls of this process (share and learning included)."""
        return self.step * self.lanes / self.factor

    @property
    def current_rate(self) -> float:
        """Calls per ``per`` seconds this limiter allows now (share and learning included)."""
        return (self.rate if self.lanes == 1 else self.shared_rate) * self.share * self.factor

    @property
    def paced_rate(self) -> float:
        """Calls a second this limiter lets through now (headroom, share and learning included)."""
        return 1.0 / self.interval

    @property
    def backlog(self) -> float:
        """Seconds of slots already reserved ahead of now by calls waiting for them (0.0 when a call
        arriving now would take the next slot of its lane)."""
        with self._lock:
            return max(0.0, self._next - self.step / 2 - time.monotonic())

    @property
    def _window_calls(self) -> float:
        """How many calls this process makes in one of the server's windows at its fair share."""
        return max(1.0, self.window_calls * self.share)

    def acquire(self) -> int:
        """Block until the next call may start; return the call's sequence number for :meth:`throttled`."""
        with self._lock:
            self._calls += 1
            call = self._calls
        late = 0
        while True:
            start, epoch = self._take_slot()
            wait = start - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if epoch != self._epoch:
                # Paused, or the account's share changed, while waiting: the slot was reserved under
                # rules that no longer hold (calls queue seconds ahead at full speed).
                continue
            # Woken a slot or more late (the process stalled: a garbage collection, a busy CPU), every
            # call due meanwhile would go out at once, a burst a strict window refuses: take a new slot.
            if time.monotonic() - start < self.step or late >= MAX_RESLOTS:
                break
            late += 1
        wait = self._log_send(call) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._left(call, time.monotonic())
        return call

    def _left(self, call: int, now: float) -> None:
        """Correct the log of ``call``'s start to when it really left, if its thread woke up late (a
        busy worker): the log must show the bunching the server saw, not the spacing planned."""
        with self._lock:
            starts = self._starts
            for index in range(len(starts) - 1, -1, -1):
                if starts[index][0] == call:
                    if now > starts[index][1]:
                        starts[index] = (call, now)
                    return

    def _log_send(self, call: int = 0) -> float:
        """Record a call's start in the send log and return it: now, unless that is within half a slot
        of the last start, or within ``SEND_LOG_SLOTS - 0.5`` slots of the start that many before."""
        with self._lock:
            starts = self._starts
            own_step = self.step * self.lanes
            start = time.monotonic()
            if starts:
                start = max(start, starts[-1][1] + own_step / 2)
            if len(starts) >= SEND_LOG_SLOTS:
                start = max(start, starts[-SEND_LOG_SLOTS][1] + (SEND_LOG_SLOTS - 0.5) * own_step)
            starts.append((call, start))
            return start

    @property
    def window_span(self) -> float:
        """Seconds of the server's window that holds ``window_calls`` calls."""
        return self.window_calls * self.per / self.rate

    def own_bunching(self, call: int) -> bool:
        """Whether our own calls could have overrun the server's window that refused ``call``: as many
        of them started in the window before it (itself included) as the window allows us.

        :param call: the sequence number :meth:`acquire` gave the refused call.
        :return: ``False`` when the call is not in the log (it cannot tell: someone else).
        """
        with self._lock:
            sent = next((start for number, start in reversed(self._starts) if number == call), None)
            if sent is None:
                return False
            span = self.window_span + OWN_WINDOW_JITTER_SLOTS * self.step
            ours = sum(1 for _, start in self._starts if sent - span < start <= sent)
            return ours >= max(2.0, self.window_calls * self.share)

    def _take_slot(self) -> tuple[float, int]:
        """Reserve this lane's next slot the learnt factor allows; return its start (monotonic) and
        the epoch it belongs to."""
        with self._lock:
            now = time.monotonic()
            wall_offset = time.time() - now
            step, lanes = self.step, self.lanes
            # The first slot of this lane at or after the earliest allowed moment, on the wall clock
            # (the grid every process of the account sees alike).
            slot = math.ceil((max(now, self._next) + wall_offset) / step - 1e-9)
            slot += (self.lane - slot) % lanes
            # Learnt slowness: each call earns ``factor`` of a slot per own slot it waits, and skips
            # slots until it has earned a whole one (at factor 0.9, one slot in ten is skipped). Only a
            # waiting call earns, so idle time saves nothing up: there is never a burst.
            credit = self._credit + self.factor
            while credit < 1.0:
                slot += lanes
                credit += self.factor
            self._credit = credit - 1.0
            slot += lanes * self._owed
            self._owed = 0
            start = slot * step - wall_offset
            self._next = start + step / 2
            return start, self._epoch

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (the server asked us to slow down), the calls already
        waiting for a slot included: they queue again behind the pause."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            self._next = self._paused_until
            self._epoch += 1

    def set_lanes(self, lanes: int, lane: int = 0) -> None:
        """Share the account with ``lanes`` exports in all, this process taking every ``lane``-th slot.

        :param lanes: how many exports (processes) share the account now, at least 1.
        :param lane: this process's position among them, ``0 <= lane < lanes``.
        """
        with self._lock:
            lanes = max(1, int(lanes))
            lane = int(lane) % lanes
            if (lanes, lane) != (self.lanes, self.lane):
                self.lanes, self.lane = lanes, lane
                # Slots reserved for waiting calls were on the old share: queue them again on the new.
                self._next = self._paused_until
                self._epoch += 1

    def succeeded(self) -> None:
        """A call passed: creep back towards the full rate (additive increase): at a pace that covers
        the whole way from the last cut's factor in ``RECOVERY_WINDOWS`` windows' worth of successful
        calls up to where the refusals began, ``PROBE_SLOWER`` times slower above it."""
        if self.factor >= 1.0:
            return
        with self._lock:
            step = (1 - min(self._low, DECREASE)) / (RECOVERY_WINDOWS * self._window_calls)
            if self.factor >= self._cut_at:
                step /= PROBE_SLOWER
            self.factor = min(1.0, self.factor + step)

    def throttled(self, call: int, retry_after: float | None = None, own: bool | None = None) -> bool:
        """A call was refused for the rate: wait as asked, skip one slot (the refused call spent one
        in the server's window) and, if refusals repeat, slow down, unless our own bunching explains
        the refusal (then the calls are only spaced out).

        :param call: the sequence number :meth:`acquire` gave the refused call.
        :param retry_after: how long the server asked us to wait, if it said.
        :param own: whether our own bunching explains it (``None``: ask :meth:`own_bunching`).
        :return: whether the rate was cut.
        """
        if retry_after:
            self.pause(retry_after)
        with self._lock:
            # A strict window counts the refused request too: give its slot back (skip one of ours), so
            # that exports refused in turn drain the window at once instead of keeping it full.
            self._owed += 1
        if own if own is not None else self.own_bunching(call):
            with self._lock:
                self.own_bunched += 1
            return False
        with self._lock:
            refusals = self._refusals
            refusals.append(call)
            while refusals and refusals[0] <= self._calls - self._window_calls:
                refusals.popleft()
            # Calls sent before the last cut were paced at the old rate: their refusals are old news.
            if call <= self._last_cut_call or len(refusals) < REFUSALS_TO_CUT:
                return False
            if self._calls - self._last_cut_call > self._window_calls:
                # The first cut of a burst (later ones come within a window): where refusals begin.
                self._cut_at = self.factor
            self.factor = max(MIN_FACTOR, self.factor * DECREASE)
            self._low = self.factor
            self._last_cut_call = self._calls
            self.cuts += 1
            refusals.clear()
            return True


class Pacer(Protocol):
    """Anything that paces calls: :meth:`acquire` blocks until the next one may start."""

    def acquire(self) -> int:
        """Block until the next call may start; return its sequence number."""
        ...


class PollPacer:
    """Paces status polls on their own share of the per-second budget, behind its other calls.

    A poll held back costs nothing (a job's end is learnt a moment later), an import held back costs
    the export's speed. So polls take at most what the budget's pace leaves after the calls
    ``reserved`` for others (the imports), recomputed at every poll: when the pace is cut after
    refusals, the polls slow down first and the imports keep theirs. Every import needs a poll at
    least (the bench's figures put it near one), so polls get all of what is left, not less. A poll
    that finds calls already waiting for the budget's slots waits until they have gone, and its next
    poll comes as much later: the per-second budget never holds an import back behind polls.

    :param budget: the limiter of the per-second budget that the polls pass too.
    :param reserved: calls a second the budget's other calls (imports) take from it now.
    :param floor: the fewest polls a second, however busy the budget.
    """

    def __init__(
        self,
        budget: RateLimiter,
        reserved: Callable[[], float],
        floor: float = MIN_POLL_RATE,
    ) -> None:
        self.budget = budget
        self.reserved = reserved
        self.floor = floor
        #: How many times a poll waited for calls queued for the budget.
        self.yields = 0
        self._calls = 0
        self._next = 0.0
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """Polls a second allowed now."""
        return max(self.floor, self.budget.paced_rate - self.reserved())

    def acquire(self) -> int:
        """Block until the next poll may start, after every call already waiting for the budget."""
        with self._lock:
            self._calls += 1
            call = self._calls
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
        if start > now:
            time.sleep(start - now)
        for _ in range(MAX_POLL_YIELDS):
            backlog = self.budget.backlog
            if backlog <= 0:
                break
            time.sleep(backlog)
            with self._lock:
                self.yields += 1
                self._next = max(self._next, time.monotonic() + 1.0 / self.rate)
        return call


_registry: dict[Hashable, RateLimiter] = {}
_registry_lock = threading.Lock()


def shared_limiter(
    key: Hashable,
    rate: float,
    per: float = 1.0,
    headroom: float = DEFAULT_HEADROOM,
    shared_rate: float | None = None,
    window_calls: float | None = None,
) -> RateLimiter:
    """Return the process-wide limiter for ``key``, creating it on first use.

    Hooks key their limiters by account and kind of call, so two hooks (or two threads) working on
    the same account share one budget.
    """
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None or (limiter.rate, limiter.per) != (rate, per):
            limiter = _registry[key] = RateLimiter(rate, per, headroom, shared_rate, window_calls)
        return limiter
