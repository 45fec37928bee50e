"""OpenLineage for an export: the segment it read, the lists it wrote to, and how many rows went where.

Optional: it needs the ``openlineage`` extra (``apache-airflow-providers-openlineage``) and is imported
lazily, so the operators work without it. Every input is built only from what the task already knows
(no extra query runs; the SQL is parsed, not executed).

* Input: the tables the segment query reads (common-sql's lineage helpers where the connection's hook
  has them; otherwise the query is parsed and the tables named in the connection's own namespace), the
  file's URI, or the upstream task whose output gave ``records``.
* Outputs: one dataset per target list, e.g. namespace ``activecampaign://youraccount.api-us1.com``,
  name ``list/3``, with the report's ``accepted`` contacts as its row count.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_ciexport.export.sources.base import SegmentSource

log = logging.getLogger(__name__)


def file_dataset_name(path: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a file: ``("s3://bucket", "key")``, ``("file", "/abs/path")``.

    :param path: a local path or an object-storage URI.
    """
    if "://" not in path:
        return "file", os.path.abspath(path)
    parts = urlsplit(path)
    if parts.scheme == "file":
        return "file", parts.path
    # Credentials never go into lineage: keep only the host part of the authority.
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}", parts.path.lstrip("/")


def _sql_inputs(sql: str, conn_id: str, hook: Any) -> list[tuple[str, str]]:
    """Tables read by ``sql``: through common-sql's lineage helpers when the hook has them, else parsed."""
    from airflow.providers.openlineage.sqlparser import SQLParser, get_openlineage_facets_with_sql

    # use_connection=False: parse only; never query the database for its tables' columns.
    lineage = get_openlineage_facets_with_sql(
        hook=hook, sql=sql, conn_id=conn_id, database=None, use_connection=False
    )
    if lineage is not None and lineage.inputs:
        return [(dataset.namespace, dataset.name) for dataset in lineage.inputs]
    # Hooks without lineage support (SQLite, ...): name the tables in the connection's namespace.
    meta = SQLParser(dialect="generic").parse(sql)
    if meta is None:
        return []
    conn = hook.get_connection(conn_id)
    authority = conn.host or ""
    if conn.port:
        authority = f"{authority}:{conn.port}"
    namespace = f"{conn.conn_type}://{authority}"
    return [(namespace, table.qualified_name) for table in meta.in_tables]


def segment_inputs(source: SegmentSource, upstream: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """``(namespace, name)`` of what the segment was read from.

    :param source: the export's source.
    :param upstream: ``(dag_id, task_id)`` of the tasks whose output gave ``records``.
    """
    from airflow_provider_ciexport.export.sources.files import FileSegmentSource
    from airflow_provider_ciexport.export.sources.sql import SqlSegmentSource

    if isinstance(source, SqlSegmentSource):
        return _sql_inputs(source.sql, source.conn_id, source.get_db_hook())
    if isinstance(source, FileSegmentSource):
        return [file_dataset_name(source.path)]
    return [(f"airflow://{dag_id}", f"task/{task_id}") for dag_id, task_id in upstream]


def export_lineage(
    *,
    inputs: Sequence[tuple[str, str]],
    namespace: str,
    list_ids: Sequence[str],
    report: Mapping[str, Any] | None,
) -> OperatorLineage:
    """The lineage of one export.

    :param inputs: ``(namespace, name)`` of the segment's datasets (see :func:`segment_inputs`).
    :param namespace: the destination account, e.g. ``activecampaign://youraccount.api-us1.com``.
    :param list_ids: the target lists; each is one output dataset named ``list/<id>``.
    :param report: the export's report (row counts), or ``None`` if it did not finish.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.generated.base import InputDataset, OutputDataset
    from openlineage.client.generated.input_statistics_input_dataset import (
        InputStatisticsInputDatasetFacet,
    )
    from openlineage.client.generated.output_statistics_output_dataset import (
        OutputStatisticsOutputDatasetFacet,
    )

    report = report or {}
    read = report.get("read")
    accepted = report.get("accepted")
    if accepted is None and not report.get("dry_run"):
        # Not waited for: the contacts sent are the best count there is.
        accepted = report.get("submitted")
    input_facets: dict[str, Any] = {}
    if isinstance(read, int) and len(inputs) == 1:
        input_facets["inputStatistics"] = InputStatisticsInputDatasetFacet(rowCount=read)
    output_facets: dict[str, Any] = {}
    if isinstance(accepted, int) and not report.get("dry_run"):
        output_facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(rowCount=accepted)
    return OperatorLineage(
        inputs=[InputDataset(namespace=ns, name=name, inputFacets=input_facets) for ns, name in inputs],
        outputs=[
            OutputDataset(namespace=namespace, name=f"list/{list_id}", outputFacets=dict(output_facets))
            for list_id in list_ids
        ],
    )


def lineage_or_none(build: Any, *args: Any, **kwargs: Any) -> OperatorLineage | None:
    """Call a lineage builder; without the OpenLineage provider, or if it fails, log why and return None.

    Lineage must never fail the export it describes.
    """
    try:
        return build(*args, **kwargs)
    except ImportError:
        log.debug(
            "OpenLineage is not installed; no lineage for this export. "
            "pip install 'airflow-provider-ciexport[openlineage]' to emit it."
        )
    except Exception:
        log.warning("Could not build the OpenLineage lineage of this export.", exc_info=True)
    return None
