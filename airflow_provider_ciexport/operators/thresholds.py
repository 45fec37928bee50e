"""Alert thresholds: a finished export whose share of refused contacts or invalid rows is too high fails.

The check runs on the report, after the export has finished (every valid contact delivered, the report
logged), so that Airflow's own alerting (``on_failure_callback``, e-mail, notifiers) is the alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_ciexport.exceptions import ExportConfigurationError, ExportThresholdError


def checked_fraction(value: Any, name: str) -> float:
    """``value`` as a share between 0 and 1, or a clear error naming the parameter and what it takes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise ExportConfigurationError(
        f"{name} must be a number between 0 and 1 (a share: 0.05 for 5%), not {value!r}."
    )


def optional_fraction(value: Any, name: str) -> float | None:
    """Like :func:`checked_fraction`, ``None`` (no limit) accepted too."""
    if value is None:
        return None
    try:
        return checked_fraction(value, name)
    except ExportConfigurationError:
        raise ExportConfigurationError(
            f"{name} must be a number between 0 and 1 (a share: 0.05 for 5%) or None (no limit), "
            f"not {value!r}."
        ) from None


def _over(part: Any, whole: Any, limit: float | None) -> bool:
    """Whether ``part / whole`` exceeds ``limit``; never with no limit, no count or nothing to divide."""
    if limit is None or not isinstance(part, int) or not isinstance(whole, int) or whole <= 0:
        return False
    return part / whole > limit


def _share(part: int, whole: int, what: str, name: str, limit: float) -> str:
    """One threshold's line of the message: both counts, the share, the parameter and its value."""
    share = 100 * part / whole
    return (
        f"{part:,} of {whole:,} {what} ({share:.1f}%), more than {name}={limit:g} ({_percent(limit)}) allows"
    )


def _percent(limit: float) -> str:
    text = f"{100 * limit:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def threshold_error(
    report: Mapping[str, Any],
    *,
    max_rejected_fraction: float | None,
    max_invalid_fraction: float | None,
) -> ExportThresholdError | None:
    """The error a finished export's report calls for, or ``None`` when every share is within its limit.

    ``rejected / submitted`` is compared with ``max_rejected_fraction`` and ``invalid / read`` with
    ``max_invalid_fraction``; a share equal to its limit passes. No rows read, no contact sent, or
    ``rejected`` unknown (no wait, a dry run) never fails. The message holds counts only.
    """
    checks = (
        ("rejected", "submitted", "contacts sent were refused by the destination", "max_rejected_fraction"),
        ("invalid", "read", "rows read were invalid", "max_invalid_fraction"),
    )
    limits = {"max_rejected_fraction": max_rejected_fraction, "max_invalid_fraction": max_invalid_fraction}
    reasons = [
        _share(report[part], report[whole], what, name, limit)
        for part, whole, what, name in checks
        if (limit := limits[name]) is not None and _over(report.get(part), report.get(whole), limit)
    ]
    if not reasons:
        return None
    done = "Dry run: nothing was sent" if report.get("dry_run") else "The export finished"
    return ExportThresholdError(
        f"{'; and '.join(reasons)}. {done}; its report is in the task log and its XCom. "
        "The task is not retried, so nothing is sent again. Look at the report's rejected and "
        "invalid.<reason> counts, fix the segment or the lists, or raise the threshold if this share "
        "is expected."
    )
