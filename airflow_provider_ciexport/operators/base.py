"""What both segment export operators share: parameters, the source, the run, ``on_kill``, lineage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseXCom, XComArg

from airflow_provider_ciexport.asset_events import add_report_to_outlet_events
from airflow_provider_ciexport.core.paths import check_storage_path
from airflow_provider_ciexport.core.variables import JsonVariable
from airflow_provider_ciexport.exceptions import CiExportError, ExportConfigurationError, say_nothing_was_sent
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.outcome_files import outcome_format
from airflow_provider_ciexport.export.outcome_tables import check_table_name
from airflow_provider_ciexport.export.outcomes import OutcomeSettings
from airflow_provider_ciexport.export.sources import (
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_LINE_LENGTH,
    SegmentSource,
    make_source,
)
from airflow_provider_ciexport.export.state import check_state_path
from airflow_provider_ciexport.export.state_keys import DEFAULT_STATE_KEY_CONN_ID, state_keys
from airflow_provider_ciexport.export.sync import SyncSettings, check_sync_mode
from airflow_provider_ciexport.lineage import export_lineage, lineage_or_none, segment_inputs
from airflow_provider_ciexport.metrics import (
    ThrottlingCount,
    count_throttling,
    emit_export_metrics,
)
from airflow_provider_ciexport.operators.thresholds import (
    checked_fraction,
    optional_fraction,
    threshold_error,
)

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
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


class _HeldRecords:
    """The ``records`` parameter, out of sight of what serializes an operator's attributes.

    OpenLineage's opt-in ``include_full_task_info`` writes every attribute of the operator into the
    lineage event, a list as its full text: a literal list of profiles would leave with it.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<records>"


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
    its report (counts, job ids, requests, duration) as its XCom value, puts the counts on the events
    of its Asset outlets, links to its target list (extra link) and reports OpenLineage lineage.

    :param list_id: the target list id, or several.
    :param field_mapping: destination attribute -> source column; ``email`` is required.
    :param sql: a query (or a ``.sql`` file) returning the segment's rows. Templated.
    :param sql_conn_id: the Airflow SQL connection to run ``sql`` on.
    :param source_path: a CSV, JSON Lines or Parquet file, local or an object-storage URI. Templated.
    :param records: the segment as a list of dicts, e.g. an upstream task's output (``XComArg``).
        Resolved when the task runs but deliberately not a templated field: Airflow stores rendered
        fields in its database and shows them in the UI, and these rows are personal data.
    :param file_format: ``csv``, ``jsonl`` or ``parquet`` when the file extension does not say.
    :param csv_options: how a CSV file is written: ``delimiter`` (by default found in the header
        line: ``,`` ``;`` tab or ``|``), ``quotechar`` (``"``) and ``encoding`` (``utf-8``). Templated.
    :param max_line_length: the longest line a CSV or JSON Lines file may have, in characters (bytes
        for JSON Lines); a longer one fails the task before it is held in memory. For Parquet, the
        most a row's mapped columns may take on average in a row group, uncompressed, and 256 times
        it a row group's.
    :param max_columns: the most columns a CSV file, keys a JSON Lines object (or the first rows
        together) or fields a Parquet schema may have; more fail the task, naming the line.
    :param max_profiles: fail before sending if the segment has more rows (``None``: no limit).
    :param dry_run: check and prepare everything but send nothing; the report shows what would go.
    :param wait_for_completion: follow every import job to its end and report accepted/rejected.
    :param progress_interval: seconds between progress lines in the task log.
    :param sync_mode: ``"upsert"`` (send new and changed contacts; nobody is removed) or ``"mirror"``
        (also remove the contacts this export added that left the segment; needs ``state_path``).
    :param state_path: where the export keeps its record of what it sent (an ``ObjectStoragePath``
        URI every worker can reach: ``s3://...``, ``gs://...``, ``file:///...``). With it, each run
        sends only new and changed contacts. It holds email addresses. Templated.
    :param full_refresh: send every contact once and rebuild the state; also the way to start over on a
        ``state_path`` whose state was written for other lists, account or field mapping (a run refuses
        to replace such a state otherwise).
    :param state_key_conn_id: the connection whose password holds the key(s) that authenticate the
        state (newest first); without that connection, a key derived from Airflow's
        ``[core] fernet_key`` is used. See the Security page.
    :param max_removal_fraction: mirror fails before sending anything if more than this share of the
        contacts the export added would be removed, or if the segment is empty.
    :param max_rejected_fraction: fail the task, once the export has finished, if the destination
        refused more than this share of the contacts sent (``rejected / submitted``); ``None``: never.
    :param max_invalid_fraction: fail the task, once the export has finished, if more than this share
        of the rows read were invalid (``invalid / read``); ``None``: never.
    :param check_members_every: with a state, also read the lists' members and everyone who opted
        out in full (to repair what changed outside the export) when the last full read is older
        than this ``timedelta``, even if their counts did not change. ``None`` (the default): only
        when a count changed.
    :param outcomes_path: where each run writes its outcome log, one row a source row (what happened
        to it: invalid, duplicate, unchanged, accepted, refused...): an ``ObjectStoragePath`` URI ending
        with ``.csv``, ``.jsonl`` or ``.parquet`` (the ``parquet`` extra), e.g.
        ``s3://bucket/ciexport/{{ dag.dag_id }}/{{ run_id }}.csv``. See the Outcome log page. Templated.
    :param outcome_key: the source column (or columns) that name a row in the outcome log, e.g.
        ``customer_id``; without it, rows carry a keyed hash of the e-mail (the workers' state key).
    :param outcomes_table: instead of a file, the table each run appends its outcome log to, ``table``
        or ``schema.table`` (letters, digits, ``_``), e.g. ``marketing.ciexport_outcomes``; created if
        missing. Needs ``outcomes_conn_id``; not with ``outcomes_path``. Templated.
    :param outcomes_conn_id: the Airflow SQL connection (postgres, mysql, sqlite, snowflake, ...) of
        ``outcomes_table``'s database.
    :param outcome_include_values: also write each row's e-mail and its other mapped values (as
        sent, or as read for rows never sent) into the outcome log, in the columns ``email`` and
        ``mapped_values`` (JSON). The log is then personal data in full; default ``False``.
    """

    # Not "records": rendered fields are stored in the metadata database and shown in the UI.
    template_fields: Sequence[str] = (
        "list_id",
        "sql",
        "source_path",
        "field_mapping",
        "dry_run",
        "state_path",
        "full_refresh",
        "csv_options",
        "outcomes_path",
        "outcomes_table",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql", "field_mapping": "json", "csv_options": "json"}

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
        csv_options: Mapping[str, str] | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_columns: int = DEFAULT_MAX_COLUMNS,
        max_profiles: int | None = 1_000_000,
        dry_run: bool = False,
        wait_for_completion: bool = True,
        progress_interval: float = 30.0,
        sync_mode: str = "upsert",
        state_path: str | None = None,
        full_refresh: bool = False,
        max_removal_fraction: float = 0.2,
        max_rejected_fraction: float | None = None,
        max_invalid_fraction: float | None = None,
        check_members_every: timedelta | None = None,
        state_key_conn_id: str = DEFAULT_STATE_KEY_CONN_ID,
        outcomes_path: str | None = None,
        outcome_key: str | Sequence[str] | None = None,
        outcomes_table: str | None = None,
        outcomes_conn_id: str | None = None,
        outcome_include_values: bool = False,
        **kwargs: Any,
    ) -> None:
        if state_path:
            # Two runs of one export must not share its state at once: one at a time by default (a lease
            # on the state file also stops a second run that gets past this, e.g. from another DAG).
            kwargs.setdefault("max_active_tis_per_dag", 1)
        super().__init__(**kwargs)
        check_sync_mode(sync_mode)
        _check_mirror_has_state(sync_mode, state_path)
        max_removal_fraction = checked_fraction(max_removal_fraction, "max_removal_fraction")
        self.max_rejected_fraction = optional_fraction(max_rejected_fraction, "max_rejected_fraction")
        self.max_invalid_fraction = optional_fraction(max_invalid_fraction, "max_invalid_fraction")
        self.sync_mode = sync_mode
        self.state_path = state_path
        self.full_refresh = full_refresh
        self.max_removal_fraction = max_removal_fraction
        self.check_members_every = _checked_interval(check_members_every)
        self.state_key_conn_id = state_key_conn_id
        self.outcomes_path = outcomes_path
        self.outcome_key = _checked_outcome_key(outcome_key)
        self.outcomes_table = outcomes_table
        self.outcomes_conn_id = outcomes_conn_id
        if not isinstance(outcome_include_values, bool):
            raise ExportConfigurationError(
                f"outcome_include_values must be True or False, not {outcome_include_values!r}: True "
                "writes each row's e-mail and mapped values into the outcome log."
            )
        self.outcome_include_values = outcome_include_values
        _check_outcome_destination(outcomes_path, outcomes_table, outcomes_conn_id)
        self.list_id = list_id
        self.field_mapping = field_mapping
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.source_path = source_path
        self.records = records
        records = self.records
        # Not a templated field, so Airflow would neither wait for the upstream task nor resolve it.
        self._records_from: list[str] = []
        if isinstance(records, XComArg):
            XComArg.apply_upstream_relationship(self, records)
            self._records_from = [operator.task_id for operator, _ in records.iter_references()]
        self.file_format = file_format
        self.csv_options = csv_options
        self.max_line_length = max_line_length
        self.max_columns = max_columns
        self.max_profiles = max_profiles
        # Shadows BaseOperator.dry_run(), a legacy template-rendering helper that Airflow 3 never calls;
        # the public parameter name matters more. Templated, so a trigger form's Param can set it.
        self.dry_run = dry_run  # type: ignore[assignment]
        self.wait_for_completion = wait_for_completion
        self.progress_interval = progress_interval
        self._exporter: SegmentExporter | None = None
        self._source: SegmentSource | None = None
        self._report: dict[str, Any] | None = None
        self._throttling: ThrottlingCount | None = None
        #: The target list in the vendor's app, once known; the extra link shows it.
        self.list_url: str | None = None

    @property
    def records(self) -> Any:
        """The ``records`` parameter, as given."""
        return self._held_records.value

    @records.setter
    def records(self, value: Any) -> None:
        self._held_records = value if isinstance(value, _HeldRecords) else _HeldRecords(value)

    def _hook_apply_defaults(self, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # Airflow calls this before __init__ and keeps the arguments it returns on the operator
        # (``_BaseOperator__init_kwargs``), which OpenLineage providers before 2.20 write into the
        # event with include_full_task_info: the rows are kept there held, as on the operator.
        if isinstance(kwargs.get("records"), (list, tuple)):
            kwargs["records"] = _HeldRecords(kwargs["records"])
        return (), kwargs

    def get_destination(self) -> Destination:
        """Build the destination for the (rendered) parameters; each operator provides it."""
        raise NotImplementedError

    def get_list_url(self, destination: Destination) -> str | None:
        """The target list's page in the vendor's app (the extra link), or ``None``; each operator provides it."""
        raise NotImplementedError

    def get_lineage_namespace(self) -> str:
        """The OpenLineage namespace of the destination account, e.g. ``activecampaign://<host>``."""
        raise NotImplementedError

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

    def _records(self, context: Context) -> Any:
        # Resolved here, not as a template field, so the rows never reach the rendered-fields table.
        # Row values are data, never rendered as Jinja; only a string (an expression) is.
        records = self.records
        if isinstance(records, XComArg):
            records = records.resolve(context)
        elif isinstance(records, str):
            records = self.render_template(records, context)
        if isinstance(records, str):
            try:
                return json.loads(records)
            except ValueError:
                raise ExportConfigurationError(
                    "records rendered to text that is not JSON. Pass a list of dicts, e.g. an upstream "
                    "task's output (XComArg), or set render_template_as_native_obj=True on the DAG."
                ) from None
        return records

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the export and return its report.

        An error raised before any contact was sent or removed says "Nothing was sent." A finished
        export over ``max_rejected_fraction`` or ``max_invalid_fraction`` fails (not retried), its
        report pushed to XCom first as a successful task's would be. An export that started sends its
        metrics (see the Metrics page) whether it succeeds or fails.
        """
        try:
            report = self._execute(context)
        except CiExportError as error:
            exported = self._exporter.report if self._exporter is not None else None
            if exported is None or (exported.submitted == 0 and not exported.jobs):
                say_nothing_was_sent(error)
            raise
        finally:
            self._emit_metrics(context)
        self._fail_over_thresholds(report, context)
        return report

    def _emit_metrics(self, context: Context) -> None:
        """The export's metrics through Airflow's stats interface, once the engine has run."""
        report = getattr(self._exporter, "report", None)
        if report is None:
            return
        ti = context.get("ti") if context else None
        emit_export_metrics(
            report.as_dict(),
            dag_id=ti.dag_id if ti is not None else self.dag_id,
            task_id=ti.task_id if ti is not None else self.task_id,
            throttled=self._throttling.total if self._throttling is not None else None,
        )

    def _fail_over_thresholds(self, report: dict[str, Any], context: Context) -> None:
        """Raise :class:`ExportThresholdError` if the report's shares exceed the thresholds."""
        error = threshold_error(
            report,
            max_rejected_fraction=self.max_rejected_fraction,
            max_invalid_fraction=self.max_invalid_fraction,
        )
        if error is None:
            return
        ti = context.get("ti") if context else None
        if ti is not None and self.do_xcom_push:
            # A failed task's return value is not pushed: push the report as it would be.
            ti.xcom_push(key=BaseXCom.XCOM_RETURN_KEY, value=report)
        raise error

    def _execute(self, context: Context) -> dict[str, Any]:
        if not isinstance(self.field_mapping, Mapping):
            raise ExportConfigurationError(
                "field_mapping must be a dict of destination attribute -> source column, "
                'e.g. {"email": "email", "first_name": "given_name"}.'
            )
        # First, before anything is read: a state_path or source_path that a Param made point
        # elsewhere is refused.
        if self.source_path is not None:
            check_storage_path(str(self.source_path), "source_path")
        sync = self._sync_settings(context)
        outcomes = self._outcome_settings(context, sync)
        source = self._source = make_source(
            sql=self.sql,
            sql_conn_id=self.sql_conn_id,
            source_path=self.source_path,
            records=self._records(context),
            file_format=self.file_format,
            csv_options=self.csv_options,
            max_line_length=self.max_line_length,
            max_columns=self.max_columns,
        )
        destination = self.get_destination()
        self._throttling = count_throttling(destination)
        destination.set_progress_interval(self.progress_interval)  # the throttling line's too
        self.list_url = self.get_list_url(destination)
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
            sync=sync,
            outcomes=outcomes,
        )
        report = self._report = self._exporter.run().as_dict()
        if self.outlets:
            add_report_to_outlet_events(self.outlets, context["outlet_events"], report)
        return report

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """OpenLineage: the segment's tables, file or upstream task in; one dataset per list out.

        Needs the ``openlineage`` extra; without it (or if building the lineage fails) there is none.
        """
        source, exporter = self._source, self._exporter
        if source is None or exporter is None:
            return None
        upstream = [(self.dag_id, task_id) for task_id in self._records_from]
        return lineage_or_none(
            lambda: export_lineage(
                inputs=segment_inputs(source, upstream),
                namespace=self.get_lineage_namespace(),
                list_ids=list(exporter.report.lists),
                report=self._report,
            )
        )

    def _sync_settings(self, context: Context | Mapping[str, Any]) -> SyncSettings | None:
        state_path = (self.state_path or "").strip() if isinstance(self.state_path, str) else self.state_path
        if not state_path:
            _check_mirror_has_state(self.sync_mode, state_path, rendered=True)
            return None
        check_state_path(str(state_path))
        ti = context.get("ti") if context else None
        owner = (
            f"{ti.dag_id}.{ti.task_id} run {ti.run_id} map {getattr(ti, 'map_index', -1)} "
            f"try {getattr(ti, 'try_number', '?')}"
            if ti is not None
            else "an export without a task instance"
        )
        return SyncSettings(
            state_path=str(state_path),
            mode=self.sync_mode,
            full_refresh=_as_bool(self.full_refresh, "full_refresh"),
            max_removal_fraction=self.max_removal_fraction,
            check_members_every_s=(
                None if self.check_members_every is None else self.check_members_every.total_seconds()
            ),
            lease_owner=owner,
            keys=state_keys(self.state_key_conn_id),
        )

    def _outcome_settings(
        self, context: Context | Mapping[str, Any], sync: SyncSettings | None
    ) -> OutcomeSettings | None:
        """Where the run writes its outcome log (``None``: nowhere), checked before anything is read.
        Removals are named by the keyed hash of the e-mail: with a state, its keys are at hand."""
        path, table = _rendered(self.outcomes_path), _rendered(self.outcomes_table)
        if not path and not table:
            return None
        keys = sync.keys if sync is not None else None
        if not self.outcome_key and keys is None:
            try:
                keys = state_keys(self.state_key_conn_id)
            except ExportConfigurationError as error:
                raise ExportConfigurationError(
                    f"{'outcomes_table' if table else 'outcomes_path'} without outcome_key names rows by a keyed hash of the e-mail, which "
                    f"needs the workers' key: {error} Or set outcome_key to the source column(s) that "
                    "name a row, e.g. outcome_key='customer_id'."
                ) from None
        return OutcomeSettings(
            path,
            self.outcome_key,
            keys,
            _run_identity(context),
            table,
            self.outcomes_conn_id or "",
            self.outcome_include_values,
        )

    def on_kill(self) -> None:
        """Stop sending; batches already on the wire finish, nothing new is sent."""
        if self._exporter is not None:
            self._exporter.stop()


def _check_mirror_has_state(sync_mode: str, state_path: Any, rendered: bool = False) -> None:
    """Mirroring removes only the contacts this export added, so it must keep a record of them.

    :param rendered: ``state_path`` is the templated value, rendered (else as the DAG gives it).
    """
    if sync_mode != "mirror" or state_path:
        return
    if rendered:
        raise ExportConfigurationError(
            "sync_mode='mirror' needs state_path, and it rendered empty. Set state_path to a URI "
            "every worker can reach, e.g. 's3://bucket/ciexport/vip.state'."
        )
    raise ExportConfigurationError(
        "sync_mode='mirror' needs state_path: mirroring removes only the contacts this export "
        "added, so it must keep a record of them. Set state_path to a URI every worker can reach, "
        "e.g. 's3://bucket/ciexport/vip.state' or 'file:///shared/ciexport/vip.state'."
    )


def _rendered(value: Any) -> str:
    """A templated text parameter as rendered, stripped (empty: not set)."""
    return value.strip() if isinstance(value, str) else ""


def _check_outcome_destination(path: Any, table: Any, conn_id: Any) -> None:
    """What can be checked of the outcome log's destination when the DAG is parsed (not templates)."""
    path, table = _rendered(path), _rendered(table)
    if path and table:
        raise ExportConfigurationError(
            "outcomes_path and outcomes_table are both set: the outcome log goes to a file or to a "
            "table, not both. Keep one of them."
        )
    if path and "{{" not in path:
        outcome_format(path)  # a wrong extension fails when the DAG is parsed
    if table and "{{" not in table:
        check_table_name(table)
    if table and not (isinstance(conn_id, str) and conn_id.strip()):
        raise ExportConfigurationError(
            "outcomes_table needs outcomes_conn_id: the Airflow SQL connection (postgres, mysql, "
            "sqlite, ...) of the database that holds the table."
        )


def _checked_outcome_key(value: Any) -> tuple[str, ...]:
    """``outcome_key`` as a tuple of column names, or a clear error."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise ExportConfigurationError(
            f"outcome_key must be a source column name or a list of them (e.g. 'customer_id'), not {value!r}."
        )
    return names


def _run_identity(context: Context | Mapping[str, Any]) -> dict[str, Any]:
    """The outcome log's identity columns, from the task instance (empty outside a task)."""
    ti = context.get("ti") if context else None
    if ti is None:
        return {}
    logical_date = context.get("logical_date")
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "map_index": getattr(ti, "map_index", -1),
        "try_number": getattr(ti, "try_number", None),
        "logical_date": logical_date.isoformat() if logical_date is not None else None,
    }


def _checked_interval(value: Any) -> timedelta | None:
    """``check_members_every`` as given, or a clear error naming the parameter and what it takes."""
    if value is None or (isinstance(value, timedelta) and value >= timedelta(0)):
        return value
    raise ExportConfigurationError(
        f"check_members_every must be a datetime.timedelta of zero or more (e.g. timedelta(days=7)) "
        f"or None, not {value!r}."
    )
