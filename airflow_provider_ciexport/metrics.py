"""The metrics of each export, through Airflow's own stats interface.

Whatever the deployment configured under ``[metrics]`` (StatsD, Datadog's DogStatsD, OpenTelemetry,
or nothing) receives them, with Airflow's prefix, allow and block lists applied. Each metric is
sent under its name with the tags ``destination``, ``dag_id`` and ``task_id``, and (unless
``[metrics] legacy_names_on`` is off, as for Airflow's own metrics) also under a name that holds
them, for a StatsD server that drops tags: ``ciexport.contacts.sent.<destination>.<dag_id>.<task_id>``.
Counts only: never a contact.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.hooks.retry import ThrottleSummary

log = logging.getLogger(__name__)

#: The first part of every metric's name (after Airflow's own ``[metrics] statsd_prefix``).
PREFIX = "ciexport"
#: Counters: metric name -> the report key whose value it adds.
COUNTERS: dict[str, str] = {
    "contacts.sent": "submitted",
    "contacts.accepted": "accepted",
    "contacts.refused": "rejected",
    "contacts.invalid": "invalid",
    "contacts.removed": "removed",
    "contacts.restored": "restored",
    "requests": "requests",
    "throttled": "throttled",
}
#: The timer: how long the export took (milliseconds in StatsD).
DURATION = "duration"
#: The tags every metric carries, in the order a name with them holds them.
TAGS = ("destination", "dag_id", "task_id")

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


class ThrottlingCounter(ThrottleSummary):
    """A hook's summary of refusals for the rate limit that also keeps their total for the export."""

    def __init__(self, summary: ThrottleSummary) -> None:
        super().__init__(summary.interval_s)
        #: Answers that asked to slow down (429 and the like), all of the export's.
        self.total = 0
        self._total_lock = threading.Lock()

    def refused(self, slowed: bool) -> tuple[int, int, float] | None:
        """Count one refusal, as the hook's summary does, and in the total."""
        with self._total_lock:
            self.total += 1
        return super().refused(slowed)


def count_throttling(destination: Destination) -> ThrottlingCounter | None:
    """Count the throttling answers ``destination``'s hook receives from now on (``None``: it has no
    hook that tells them)."""
    hook = getattr(destination, "hook", None)
    summary = getattr(hook, "throttle_summary", None)
    if not isinstance(summary, ThrottleSummary):
        return None
    # A fresh total for each export, also when an operator (its hook) runs twice in one process.
    counter = ThrottlingCounter(summary)
    hook.throttle_summary = counter  # type: ignore[union-attr]
    return counter


def _name_part(value: Any) -> str:
    """A tag's value as one part of a dotted name: dots (a task group's) become ``__`` as in
    Airflow's own legacy names, anything else a StatsD name cannot hold becomes ``_``."""
    return _UNSAFE.sub("_", str(value).replace(".", "__"))


def export_tags(destination: str, dag_id: str, task_id: str) -> dict[str, str]:
    """The tags of an export's metrics; the destination as a short lowercase name (``activecampaign``)."""
    return {
        "destination": re.sub(r"[^a-z0-9]", "", destination.lower()),
        "dag_id": dag_id,
        "task_id": task_id,
    }


def _legacy_names_on() -> bool:
    from airflow.sdk.configuration import conf

    return conf.getboolean("metrics", "legacy_names_on", fallback=True)


def emit_export_metrics(
    report: Mapping[str, Any], *, dag_id: str, task_id: str, throttled: int | None
) -> None:
    """Send the metrics of one export's ``report`` (finished or failed); never raises.

    A dry run sends nothing, so it has no metrics; a count the report does not know (``accepted`` and
    ``refused`` without the wait, ``throttled`` for a destination without a hook) is not sent.
    """
    if report.get("dry_run"):
        return
    try:
        _emit(report, export_tags(str(report.get("destination")), dag_id, task_id), throttled)
    except Exception:
        log.warning("The export's metrics could not be sent.", exc_info=True)


def _emit(report: Mapping[str, Any], tags: dict[str, str], throttled: int | None) -> None:
    from airflow.sdk.observability.stats import Stats

    suffix = ".".join(_name_part(tags[tag]) for tag in TAGS) if _legacy_names_on() else None
    values = {"removed": 0, "restored": 0, **report, "throttled": throttled}
    for metric, key in COUNTERS.items():
        value = values.get(key)
        if value is None:
            continue
        Stats.incr(f"{PREFIX}.{metric}", int(value), tags=tags)
        if suffix:
            Stats.incr(f"{PREFIX}.{metric}.{suffix}", int(value))
    duration = timedelta(seconds=float(report.get("duration_s") or 0.0))
    Stats.timing(f"{PREFIX}.{DURATION}", duration, tags=tags)
    if suffix:
        Stats.timing(f"{PREFIX}.{DURATION}.{suffix}", duration)
