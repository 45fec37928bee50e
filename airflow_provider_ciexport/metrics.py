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


class ThrottlingCount:
    """The answers asking to slow down (429 and the like) a hook receives from now on."""

    def __init__(self, summary: ThrottleSummary) -> None:
        self._summary = summary
        self._start = summary.total

    @property
    def total(self) -> int:
        """How many since this count started."""
        return self._summary.total - self._start


def count_throttling(destination: Destination) -> ThrottlingCount | None:
    """Count the throttling answers ``destination``'s hook receives from now on (``None``: it has no
    hook that tells them)."""
    summary = getattr(getattr(destination, "hook", None), "throttle_summary", None)
    return ThrottlingCount(summary) if isinstance(summary, ThrottleSummary) else None


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
