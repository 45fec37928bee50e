"""Progress of a running export: when a line is due, and what it says (rows, contacts, rate, ETA)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from airflow_provider_ciexport.core.intervals import IntervalGate
from airflow_provider_ciexport.export.report import ExportReport

log = logging.getLogger(__name__)


class ProgressClock:
    """When the next progress line is due: one every ``interval_s`` seconds, whichever thread asks."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._gate = IntervalGate(interval_s)
        self.restart()

    def restart(self) -> None:
        """Start counting now (the export's start)."""
        self.started = time.monotonic()
        self._gate.restart()
        self.sending_started: float | None = None

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started

    def sending(self) -> None:
        """Sending starts now: what came before (reading members, opt-outs) is not in its rate."""
        self.sending_started = time.monotonic()

    def sending_elapsed(self) -> float:
        """Seconds since sending started (since the start, before it)."""
        return time.monotonic() - (self.sending_started or self.started)

    def due(self) -> bool:
        """Whether a line is due now; if so, the next one is due an interval later."""
        return self._gate.due()


def progress_line(report: ExportReport, total: int | None, elapsed: float, resumed: int = 0) -> str:
    """Rows read, contacts submitted and confirmed, the rate of the slowest phase and the ETA.

    The export ends when its last contact is confirmed, so when it waits for its jobs the rate and
    the ETA follow confirmed contacts (the total is estimated from the share of rows read that
    became contacts so far); otherwise they follow rows read. Contacts an earlier try confirmed
    (``resumed``) count as done but not in the rate: the ETA is what is left at this try's pace.

    :param total: the segment's rows (``None``: read without counting first).
    :param elapsed: seconds since sending started (not since the export's start: reading the lists'
        members first would make the rate look slow).
    :param resumed: contacts of batches an earlier try confirmed, not sent again.
    """
    elapsed = max(elapsed, 1e-9)
    if report.waited:
        done = report.accepted + report.rejected
        contacts = report.read - report.invalid - report.duplicates
        expected = contacts * total / report.read if report.read and total is not None else None
        unit = "contacts confirmed"
    else:
        done, expected, unit = report.read, None if total is None else float(total), "rows read"
        resumed = 0  # nothing is resumed without waiting for the jobs
    rate = max(done - resumed, 0) / elapsed
    # Read without counting first (max_profiles=None): no share of the total, no ETA.
    eta = max(expected - done, 0.0) / rate if rate > 0 and expected is not None else float("inf")
    submitted = report.would_submit if report.dry_run else report.submitted
    read = (
        f"{report.read:,} rows read (total not counted)"
        if total is None
        else f"{report.read:,}/{total:,} rows read ({100.0 * report.read / total if total else 100.0:.0f}%)"
    )
    earlier = f" ({resumed:,} resumed from an earlier try)" if resumed else ""
    return (
        f"{read}, "
        f"{submitted:,} contacts {'would be ' if report.dry_run else ''}submitted, "
        f"{report.accepted + report.rejected:,} confirmed{earlier}, {rate:,.0f} {unit}/s, "
        f"ETA {format_duration(eta)}"
    )


def format_duration(seconds: float) -> str:
    """``1h05m`` or ``4m07s``; ``unknown`` for an infinite time."""
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


#: A phase's ETA is shown once it has run this long (a rate measured over less says little).
MIN_ETA_S = 10.0

T = TypeVar("T")


class PhaseProgress:
    """Progress of one long phase of an export (reading members, removals, ...), told in the log at
    least once every ``interval_s``: what it is doing, how far, the rate and (given a total) the ETA.

    Counts come from :meth:`advance` (or :meth:`counted`, which wraps an iterator); used as a context
    manager, a background thread also tells the line when nothing advances (a slow page, a job being
    prepared), so a working phase never looks hung. Lines hold counts and the phase's name only.

    :param what: what the phase does, e.g. ``"Reading the lists' members"``.
    :param total: how many items the phase has, or a callable asked once, when the first line is due
        (so a phase that ends within an interval costs no counting request), or ``None``: unknown.
    :param interval_s: the least time between two lines (0: at every :meth:`advance`).
    :param unit: what is counted, e.g. ``"contacts"``.
    :param clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        what: str,
        total: int | Callable[[], int | None] | None,
        interval_s: float,
        *,
        unit: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.unit = unit
        self.interval_s = interval_s
        self.done = 0
        self._total = total
        self._clock = clock
        self.started = clock()
        self._gate = IntervalGate(interval_s, clock)
        self._lock = threading.Lock()
        self._ticker = Ticker(interval_s, self.tell_if_due)

    @property
    def total(self) -> int | None:
        """The phase's total, asked for the first time it is needed (``None``: unknown)."""
        if callable(self._total):
            try:
                self._total = self._total()
            except Exception:  # a count that failed only leaves the ETA out
                self._total = None
        return self._total

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done; tell the line if one is due."""
        with self._lock:
            self.done += n
        self.tell_if_due()

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, each counted as one done."""
        for item in items:
            yield item
            self.advance()

    def tell_if_due(self) -> bool:
        """Log the line if an interval passed since the last one (or the phase's start)."""
        now = self._clock()
        if not self._gate.due(now):
            return False
        log.info("%s", self.line(now))
        return True

    def line(self, now: float | None = None) -> str:
        """``"<what>: 12,300 of 150,000 contacts (8%) in 0m30s, 410/s, ETA 5m40s"``."""
        elapsed = (self._clock() if now is None else now) - self.started
        done, total = self.done, self.total
        unit = f" {self.unit}" if self.unit else ""
        rate = done / elapsed if elapsed > 0 else 0.0
        if total is None:
            return f"{self.what}: {done:,}{unit} so far in {format_duration(elapsed)}, {rate:,.0f}/s (total unknown)"
        share = 100.0 * done / total if total else 100.0
        eta = ""
        if elapsed >= MIN_ETA_S and rate > 0:
            eta = f", ETA {format_duration(max(total - done, 0) / rate)}"
        return f"{self.what}: {done:,} of {total:,}{unit} ({share:.0f}%) in {format_duration(elapsed)}, {rate:,.0f}/s{eta}"

    def __enter__(self) -> PhaseProgress:
        self._ticker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ticker.__exit__()


class Ticker:
    """A background thread that calls ``tell`` (which logs a line if one is due) about once a second,
    so progress is told on time also while the work it follows is blocked (a slow page, a job still
    being processed). A context manager; does nothing when ``interval_s`` is 0.

    :param interval_s: the progress interval ``tell`` follows.
    :param tell: logs a line when one is due; never raises.
    :param period_s: how often ``tell`` is called (default: a quarter of ``interval_s``, at most a
        second), for other periodic chores of an export.
    :param name: the thread's name.
    """

    def __init__(
        self,
        interval_s: float,
        tell: Callable[[], object],
        *,
        period_s: float | None = None,
        name: str = "ciexport-progress",
    ) -> None:
        self.period = period_s if period_s is not None else max(0.01, min(1.0, interval_s / 4))
        self.interval_s = interval_s
        self._tell = tell
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ticker:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._tell()
            except Exception:  # a progress line or another chore must never end an export
                log.debug("The periodic call of %s failed.", self._name, exc_info=True)
