"""Writing the outcome log to a SQL table through any Airflow SQL connection (a ``DbApiHook``).

The table is created if missing (``TEXT`` and ``BIGINT`` columns in :data:`OUTCOME_COLUMNS` order)
and each run appends its rows, one transaction per buffer of :data:`BUFFER_ROWS` rows. The table's
name is checked strictly (letters, digits and ``_``; at most ``schema.table``) and quoted with the
connection's own quoting, so it can never carry SQL.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_ciexport.core.redaction import driver_error
from airflow_provider_ciexport.exceptions import CiExportError, ExportConfigurationError
from airflow_provider_ciexport.export.outcome_files import OUTCOME_COLUMNS
from airflow_provider_ciexport.export.sources.sql import sql_hook

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

#: The integer columns (``BIGINT``); the others are ``TEXT``.
INTEGER_COLUMNS = frozenset({"map_index", "try_number", "row_number", "batch"})
#: One part of a table name: what every SQL database takes, quoted or not.
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DRIVER_TEXT_HIDDEN = "(The driver's own message is not shown: it can quote row values.)"


def check_table_name(name: str) -> tuple[str, ...]:
    """The parts of an ``outcomes_table`` name (``table`` or ``schema.table``), or a clear error.

    :raises ExportConfigurationError: naming the parameter and what a name may hold.
    """
    parts = tuple(name.split(".")) if isinstance(name, str) else ()
    if not 1 <= len(parts) <= 2 or not all(_PART.fullmatch(part) for part in parts):
        raise ExportConfigurationError(
            f"outcomes_table must be a table name or schema.table of letters, digits and '_' (each "
            f"part starting with a letter or '_', at most 63 characters), e.g. "
            f"'marketing.ciexport_outcomes', not {name!r}. Nothing was sent."
        )
    return parts


def outcome_table_hook(conn_id: str) -> DbApiHook:
    """The SQL hook of ``outcomes_conn_id``, or a clear error naming the parameter and the fix.

    :raises ExportConfigurationError: no such connection, or its hook cannot run SQL.
    """
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ExportConfigurationError(
            "outcomes_table needs outcomes_conn_id: the Airflow SQL connection (postgres, mysql, "
            "sqlite, snowflake, ...) of the database that holds the table. Nothing was sent."
        )
    return sql_hook(conn_id, "outcomes_conn_id")


class TableSink:
    """Appends buffers of outcome rows to a table, creating it first if it is missing.

    Rows go in with ``cursor.executemany`` on one connection, committed per buffer. Not the hook's
    ``insert_rows``: on an error it logs the rows, and the log must never hold them.

    :param hook: the connection's SQL hook (:func:`outcome_table_hook`).
    :param table: the table's name, ``table`` or ``schema.table`` (checked by :func:`check_table_name`).
    :param columns: the log's columns, in row order.
    """

    def __init__(self, hook: DbApiHook, table: str, columns: Sequence[str] = OUTCOME_COLUMNS) -> None:
        quote = getattr(hook, "escape_word_format", None) or '"{}"'
        self.table = table
        self._name = ".".join(quote.format(part) for part in check_table_name(table))
        placeholders = ", ".join([hook.placeholder] * len(columns))
        self._insert = f"INSERT INTO {self._name} ({', '.join(columns)}) VALUES ({placeholders})"
        self._conn = hook.get_conn()
        try:
            self._run(lambda cursor: cursor.execute(create_table_sql(self._name, columns)), "create")
        except BaseException:
            self._conn.close()
            raise

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in one transaction."""
        self._run(lambda cursor: cursor.executemany(self._insert, rows), "append to")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _run(self, action: Callable[[Any], object], what: str) -> None:
        try:
            with contextlib.closing(self._conn.cursor()) as cursor:
                action(cursor)
            self._conn.commit()
        except Exception as err:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            # Raised `from None`: drivers quote row values in their messages, also in a chained traceback.
            raise CiExportError(
                f"Could not {what} the outcome table {self.table}: {driver_error(err)}. "
                f"{_DRIVER_TEXT_HIDDEN} Check that the schema exists and that outcomes_conn_id's user "
                "may create and insert into the table."
            ) from None


def create_table_sql(quoted_name: str, columns: Sequence[str] = OUTCOME_COLUMNS) -> str:
    """The portable ``CREATE TABLE IF NOT EXISTS`` of the outcome table (``quoted_name``: quoted)."""
    typed = ", ".join(f"{c} {'BIGINT' if c in INTEGER_COLUMNS else 'TEXT'}" for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {quoted_name} ({typed})"
