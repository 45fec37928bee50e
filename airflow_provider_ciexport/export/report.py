"""The export report: what happened to every row, as a small flat dict for XCom and the log."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExportReport:
    """Counts of one export.

    ``read = invalid + duplicates + submitted`` always holds (``too_large`` rows count as invalid), and
    once every job is confirmed ``submitted = accepted + rejected``. A dry run sends nothing: its
    ``submitted`` and ``batches`` stay 0 and ``would_submit``/``would_batches`` count what a real run
    would send, so that ``read = invalid + duplicates + would_submit``.
    """

    destination: str
    lists: list[str]
    dry_run: bool = False
    read: int = 0
    invalid: int = 0
    duplicates: int = 0
    submitted: int = 0
    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    would_submit: int = 0
    would_batches: int = 0
    resubmitted_batches: int = 0
    resumed_batches: int = 0
    failed_batches: int = 0
    jobs: list[str] = field(default_factory=list)
    requests: int = 0
    duration_s: float = 0.0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    omitted_too_long: dict[str, int] = field(default_factory=dict)
    waited: bool = True
    #: Keeping lists in sync (``state_path``): ``sync_mode``, ``unchanged``, ``new``, ``changed``,
    #: ``readded``, ``skipped_unsubscribed``, ``to_remove``, ``removed``, ``removal_refused``,
    #: ``full_refresh_reason``; empty without a state.
    sync: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_job(self, job_id: str) -> None:
        """Note an import job that was started."""
        with self._lock:
            self.jobs.append(job_id)

    def record_outcome(self, accepted: int, rejected: int) -> None:
        """Add a confirmed batch's counts."""
        with self._lock:
            self.accepted += accepted
            self.rejected += rejected

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-safe flat dict (nested counts flattened to ``invalid.<reason>``)."""
        out: dict[str, Any] = {
            "destination": self.destination,
            "lists": list(self.lists),
            "dry_run": self.dry_run,
            "read": self.read,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "submitted": self.submitted,
            "accepted": self.accepted if self.waited else None,
            "rejected": self.rejected if self.waited else None,
            "batches": self.batches,
            **(
                {"would_submit": self.would_submit, "would_batches": self.would_batches}
                if self.dry_run
                else {}
            ),
            "resubmitted_batches": self.resubmitted_batches,
            "resumed_batches": self.resumed_batches,
            "failed_batches": self.failed_batches,
            "jobs": list(self.jobs),
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
        }
        out.update(self.sync)
        out.update({f"invalid.{k}": v for k, v in sorted(self.invalid_reasons.items())})
        out.update({f"omitted_too_long.{k}": v for k, v in sorted(self.omitted_too_long.items())})
        return out

    def table(self) -> list[str]:
        """The report as the task log shows it: one figure a line, names aligned.

        Everything the XCom holds but the job ids; counts, never personal data.
        """
        shown = {k: v for k, v in self.as_dict().items() if k not in ("destination", "jobs")}
        shown["lists"] = ", ".join(self.lists)
        width = max(map(len, shown))
        return [f"  {key.ljust(width)}  {_figure(value)}" for key, value in shown.items()]


def _figure(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
