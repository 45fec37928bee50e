"""What both segment export operators share: parameters, the source, the run and ``on_kill``."""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.sources import make_source
from airflow_provider_ciexport.variables import JsonVariable

if TYPE_CHECKING:
    from airflow.sdk import Context


def _as_bool(value: Any, name: str) -> bool:
    """A flag that may arrive rendered from a template as text ("True", "false", "1")."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", ""):
            return False
        raise ExportConfigurationError(f"{name} must be true or false, not {value!r}.")
    return bool(value)


def progress_store(context: Context | Mapping[str, Any]) -> JsonVariable | None:
    """The Variable where this task instance keeps its export's progress across tries.

    Keyed by DAG, task, run and map index, so a retry (on any worker) finds it and a later run
    does not; the export removes it when it completes.
    """
    ti = context.get("ti") if context else None
    if ti is None:
        return None
    identity = f"{ti.dag_id}|{ti.task_id}|{ti.run_id}|{getattr(ti, 'map_index', -1)}"
    key = f"ciexport_progress_{ti.dag_id}.{ti.task_id}_{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    return JsonVariable(
        key[-250:],
        "Confirmed batches of a running export (airflow-provider-ciexport); removed when it completes.",
    )


class BaseSegmentExportOperator(BaseOperator):
    """Exports a segment (rows of customer profiles) to lists of a marketing destination.

    Exactly one source: ``sql`` with ``sql_conn_id``, ``source_path``, or ``records``. The task returns
    its report (counts, job ids, requests, duration) as its XCom value.

    :param list_id: the target list id, or several.
    :param field_mapping: destination attribute -> source column; ``email`` is required.
    :param sql: a query (or a ``.sql`` file) returning the segment's rows. Templated.
    :param sql_conn_id: the Airflow SQL connection to run ``sql`` on.
    :param source_path: a CSV, JSON Lines or Parquet file, local or an object-storage URI. Templated.
    :param records: the segment as a list of dicts, e.g. an upstream task's output. Templated.
    :param file_format: ``csv``, ``jsonl`` or ``parquet`` when the file extension does not say.
    :param max_profiles: fail before sending if the segment has more rows (``None``: no limit).
    :param dry_run: check and prepare everything but send nothing; the report shows what would go.
    :param wait_for_completion: follow every import job to its end and report accepted/rejected.
    :param progress_interval: seconds between progress lines in the task log.
    """

    template_fields: Sequence[str] = ("list_id", "sql", "source_path", "records", "field_mapping", "dry_run")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql", "field_mapping": "json", "records": "json"}

    def __init__(
        self,
        *,
        list_id: Any,
        field_mapping: Mapping[str, str],
        sql: str | None = None,
        sql_conn_id: str | None = None,
        source_path: str | None = None,
        records: Any = None,
        file_format: str | None = None,
        max_profiles: int | None = 1_000_000,
        dry_run: bool = False,
        wait_for_completion: bool = True,
        progress_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.list_id = list_id
        self.field_mapping = field_mapping
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.source_path = source_path
        self.records = records
        self.file_format = file_format
        self.max_profiles = max_profiles
        # Shadows BaseOperator.dry_run(), a legacy template-rendering helper that Airflow 3 never calls;
        # the public parameter name matters more. Templated, so a trigger form's Param can set it.
        self.dry_run = dry_run  # type: ignore[assignment]
        self.wait_for_completion = wait_for_completion
        self.progress_interval = progress_interval
        self._exporter: SegmentExporter | None = None

    @abstractmethod
    def get_destination(self) -> Destination:
        """Build the destination for the (rendered) parameters."""

    def list_ids(self) -> list[Any]:
        """The rendered ``list_id`` as a list (a JSON or comma-separated string is accepted too)."""
        value = self.list_id
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise ExportConfigurationError(
                        f"list_id {text!r} is not a valid JSON list. Give one id or a list of ids."
                    ) from None
            else:
                value = [part.strip() for part in text.split(",")] if text else []
        elif not isinstance(value, (list, tuple, set)):
            value = [value]
        ids = list(value)
        if not ids:
            raise ExportConfigurationError("list_id is empty. Give the id of the target list, or several.")
        return ids

    def _records(self) -> Any:
        if isinstance(self.records, str):
            try:
                return json.loads(self.records)
            except ValueError:
                raise ExportConfigurationError(
                    "records rendered to text that is not JSON. Pass a list of dicts, e.g. an upstream "
                    "task's output (XComArg), or set render_template_as_native_obj=True on the DAG."
                ) from None
        return self.records

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the export and return its report."""
        if not isinstance(self.field_mapping, Mapping):
            raise ExportConfigurationError(
                "field_mapping must be a dict of destination attribute -> source column, "
                'e.g. {"email": "email", "first_name": "given_name"}.'
            )
        source = make_source(
            sql=self.sql,
            sql_conn_id=self.sql_conn_id,
            source_path=self.source_path,
            records=self._records(),
            file_format=self.file_format,
        )
        destination = self.get_destination()
        self._exporter = SegmentExporter(
            source,
            destination,
            self.field_mapping,
            ExportSettings(
                max_profiles=self.max_profiles,
                dry_run=_as_bool(self.dry_run, "dry_run"),
                wait_for_completion=self.wait_for_completion,
                progress_interval_s=self.progress_interval,
            ),
            progress=progress_store(context),
        )
        return self._exporter.run().as_dict()

    def on_kill(self) -> None:
        """Stop sending; batches already on the wire finish, nothing new is sent."""
        if self._exporter is not None:
            self._exporter.stop()
