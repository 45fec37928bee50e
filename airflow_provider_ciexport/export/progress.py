"""Progress of a running export: when a line is due, and what it says (rows, contacts, rate, ETA)."""

from __future__ import annotations

import threading
import time

from airflow_provider_ciexport.export.report import ExportReport


class ProgressClock:
    """When the next progress line is due: one every ``interval_s`` seconds, whichever thread asks."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        """Start counting now (the export's start)."""
        self.started = self._last = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started

    def due(self) -> bool:
        """Whether a line is due now; if so, the next one is due an interval later."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval_s:
                return False
            self._last = now
            return True


def progress_line(report: ExportReport, total: int | None, elapsed: float) -> str:
    """Rows read, contacts submitted and confirmed, the rate of the slowest phase and the ETA.

    The export ends when its last contact is confirmed, so when it waits for its jobs the rate and
    the ETA follow confirmed contacts (the total is estimated from the share of rows read that
    became contacts so far); otherwise they follow rows read.

    :param total: the segment's rows (``None``: read without counting first).
    """
    elapsed = max(elapsed, 1e-9)
    if report.waited:
        done = report.accepted + report.rejected
        contacts = report.read - report.invalid - report.duplicates
        expected = contacts * total / report.read if report.read and total is not None else None
        unit = "contacts confirmed"
    else:
        done, expected, unit = report.read, None if total is None else float(total), "rows read"
    rate = done / elapsed
    # Read without counting first (max_profiles=None): no share of the total, no ETA.
    eta = max(expected - done, 0.0) / rate if rate > 0 and expected is not None else float("inf")
    submitted = report.would_submit if report.dry_run else report.submitted
    read = (
        f"{report.read:,} rows read (total not counted)"
        if total is None
        else f"{report.read:,}/{total:,} rows read ({100.0 * report.read / total if total else 100.0:.0f}%)"
    )
    return (
        f"{read}, "
        f"{submitted:,} contacts {'would be ' if report.dry_run else ''}submitted, "
        f"{report.accepted + report.rejected:,} confirmed, {rate:,.0f} {unit}/s, ETA {format_duration(eta)}"
    )


def format_duration(seconds: float) -> str:
    """``1h05m`` or ``4m07s``; ``unknown`` for an infinite time."""
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
