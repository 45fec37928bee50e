"""Asset events that carry an export's counts, so downstream DAGs can react to how many were exported.

When an export task declares ``outlets=[Asset(...)]``, Airflow records an Asset event for each when the
task succeeds. The export puts its report's counts (not its job ids) in every such event's ``extra``;
a DAG scheduled on the Asset reads them from ``triggering_asset_events``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: Report keys not worth an Asset event: a large export has thousands of job ids.
_LEFT_OUT = frozenset({"jobs"})


def report_extra(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's counts and identity (destination, lists, dry run), JSON-safe, without job ids.

    :param report: the export's report (``ExportReport.as_dict()``).
    """
    return {key: value for key, value in report.items() if key not in _LEFT_OUT}


def add_report_to_outlet_events(
    outlets: Iterable[Any], outlet_events: Any, report: Mapping[str, Any]
) -> list[str]:
    """Put the report's counts in the ``extra`` of the event of every Asset among ``outlets``.

    Never fails the export: a problem with an event is logged and the others are still filled in.

    :param outlets: the task's outlets (Assets; aliases and other kinds are left alone).
    :param outlet_events: the task context's ``outlet_events``.
    :param report: the export's report.
    :return: the names of the Assets whose event now carries the counts.
    """
    from airflow.sdk import Asset

    extra = report_extra(report)
    done: list[str] = []
    for outlet in outlets:
        if not isinstance(outlet, Asset):
            continue
        try:
            outlet_events[outlet].extra.update(extra)
        except Exception:
            log.warning(
                "Could not add the export's counts to the event of Asset %r.", outlet.name, exc_info=True
            )
            continue
        done.append(outlet.name)
    return done
