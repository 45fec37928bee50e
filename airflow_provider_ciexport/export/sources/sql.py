"""The SQL segment source: a query's rows, streamed with a server-side cursor where the driver needs one."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_ciexport.core.redaction import driver_error
from airflow_provider_ciexport.exceptions import ExportConfigurationError, SegmentSourceError
from airflow_provider_ciexport.export.sources.base import Row, SegmentSource, check_unique_names

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

_DRIVER_TEXT_HIDDEN = "(The driver's own message is not shown: it can quote row values.)"


class SqlSegmentSource(SegmentSource):
    """The rows of a SQL query on any Airflow SQL connection (a ``DbApiHook``).

    Rows are read with ``cursor.execute`` and ``cursor.fetchmany(chunk_size)``. For PostgreSQL
    (psycopg2, psycopg) and MySQL (mysqlclient, PyMySQL) a server-side cursor is used, because their
    ordinary cursors load the whole result into memory on ``execute``.

    :param sql: the query; a trailing ``;`` is ignored.
    :param conn_id: the Airflow connection to run it on.
    :param chunk_size: rows per chunk.
    """

    def __init__(self, sql: str, conn_id: str, chunk_size: int = 5000) -> None:
        self.sql = sql.strip().rstrip(";").rstrip()
        self.conn_id = conn_id
        self.chunk_size = chunk_size
        self.description = f"SQL query on conn {conn_id!r}"
        self._hook: DbApiHook | None = None

    def _get_hook(self) -> DbApiHook:
        if self._hook is None:
            self._hook = sql_hook(self.conn_id, "sql_conn_id")
        return self._hook

    def _query_error(self, err: Exception) -> SegmentSourceError:
        # Raised `from None`: drivers quote row values in their messages, also in a chained traceback.
        return SegmentSourceError(
            f"The segment query failed on connection {self.conn_id!r}: {driver_error(err)}. "
            f"{_DRIVER_TEXT_HIDDEN} Fix the SQL (run it in a SQL client against the same database to "
            "see the driver's message)."
        )

    def get_db_hook(self) -> DbApiHook:
        """The SQL hook of ``conn_id`` (also used for lineage)."""
        return self._get_hook()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        hook = self._get_hook()
        with contextlib.ExitStack() as stack:
            try:
                conn = hook.get_conn()
                stack.callback(conn.close)
                cursor = _server_side_cursor(conn)
                if cursor is None:
                    cursor = conn.cursor()
                stack.callback(cursor.close)
            except Exception as err:
                raise SegmentSourceError(
                    f"Could not connect to the database of connection {self.conn_id!r} for the segment "
                    f"query: {driver_error(err)}. {_DRIVER_TEXT_HIDDEN} Check the connection's host, "
                    "credentials and network access from this worker (e.g. with the connection's Test "
                    "button)."
                ) from None
            yield cursor

    def _column_names(self, cursor: Any) -> list[str]:
        names = [str(column[0]) for column in cursor.description or ()]
        check_unique_names(names, f"The result of the {self.description}")
        return names

    def _read(self) -> Generator[Any, None, None]:
        """Run the query once: its columns from ``cursor.description``, its rows with ``fetchmany``."""
        size = self.chunk_size
        with self._cursor() as cursor:
            try:
                cursor.execute(self.sql)
                rows = cursor.fetchmany(size)
            except Exception as err:
                raise self._query_error(err) from None
            # Read after the first fetch: server-side cursors only describe their columns then.
            yield self._column_names(cursor)
            while rows:
                # Most drivers return tuples already; others (sqlite3.Row, dict-like rows) are converted.
                yield rows if type(rows[0]) is tuple else _as_tuples(rows)
                try:
                    rows = cursor.fetchmany(size)
                except Exception as err:
                    raise self._query_error(err) from None


def _as_tuples(rows: Sequence[Any]) -> list[Row]:
    return [tuple(row.values()) if isinstance(row, Mapping) else tuple(row) for row in rows]


def _server_side_cursor(conn: Any) -> Any | None:
    """A cursor that streams results from the server, for drivers whose default cursor does not."""
    module = type(conn).__module__.split(".")[0]
    if module in ("psycopg2", "psycopg"):
        # Outside a transaction (autocommit) PostgreSQL only allows WITH HOLD cursors.
        return conn.cursor(name="ciexport_segment", withhold=bool(getattr(conn, "autocommit", False)))
    if module == "MySQLdb":
        import MySQLdb.cursors

        return conn.cursor(MySQLdb.cursors.SSCursor)
    if module == "pymysql":
        import pymysql.cursors

        return conn.cursor(pymysql.cursors.SSCursor)
    return None


def sql_hook(conn_id: str, parameter: str) -> DbApiHook:
    """The SQL hook of the Airflow connection ``conn_id``, or a clear error naming ``parameter`` (the
    operator parameter that gives it) and the fix.

    :raises ExportConfigurationError: no such connection, or its hook cannot run SQL.
    """
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as err:
        # Not chained: a secrets backend's error may quote what it read.
        raise ExportConfigurationError(
            f"The Airflow connection {conn_id!r} given as {parameter} could not be loaded "
            f"({type(err).__name__}). Create it (UI, `airflow connections add` or an "
            f"AIRFLOW_CONN_{conn_id.upper()} variable) or fix {parameter}. Nothing was sent."
        ) from None
    hook = conn.get_hook()
    if not isinstance(hook, DbApiHook):
        raise ExportConfigurationError(
            f"{parameter} {conn_id!r} has type {conn.conn_type!r}, whose hook {type(hook).__name__} "
            f"cannot run SQL. Use a SQL connection (postgres, mysql, sqlite, snowflake, ...) as "
            f"{parameter}, or install its provider package. Nothing was sent."
        )
    return hook
