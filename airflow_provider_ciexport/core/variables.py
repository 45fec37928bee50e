"""Airflow Variables from wherever the provider runs: inside a task, or beside the metadata database.

Connections are read-only from tasks in Airflow 3, so state that must outlive a task run (a rotated
refresh token, an export's progress) is kept in Variables. Inside a task the Task SDK reaches them
through the execution API, so any worker sees them; elsewhere (the API server's connection test, a
CLI, tests) the metadata database is used directly.
"""

from __future__ import annotations

import json
import time
from typing import Any

from airflow_provider_ciexport.exceptions import CiExportError

#: Reads of a Variable that exists but came back empty are tried this many times in all.
READ_ATTEMPTS = 3


def _in_task() -> bool:
    """Whether the Task SDK's supervisor channel is up, so Variables must go through it.

    This is the test the Task SDK makes itself to choose its secrets backends
    (``airflow.sdk.execution_time.supervisor.ensure_secrets_backend_loaded``); a task context alone is
    not enough (a task run in-process without a supervisor has one, but ``Variable.set`` would fail).
    """
    from airflow.sdk.execution_time import task_runner

    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def _read(key: str, in_task: bool) -> str | None:
    if in_task:
        from airflow.sdk import Variable

        value = Variable.get(key, default=None)
    else:
        from airflow.models import Variable as DbVariable

        value = DbVariable.get(key, default_var=None)
    return None if value is None else str(value)


def _exists(key: str, in_task: bool) -> bool:
    """Whether the metadata database holds ``key``; a failure to tell raises."""
    if in_task:
        from airflow.sdk import Variable

        return key in Variable.keys(prefix=key)
    from airflow.models import Variable as DbVariable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DbVariable.key).where(DbVariable.key == key)) is not None


def get_variable(key: str) -> str | None:
    """The Variable's value, or ``None`` when it is not set.

    Airflow's own ``Variable.get`` answers "not set" when a secrets backend or the execution API fails
    to answer too, so an empty answer is checked against the list of stored keys: a Variable that exists
    but could not be read is read again, and never passes for one that is not set.

    :raises CiExportError: when the Variable exists but could not be read.
    """
    in_task = _in_task()
    for attempt in range(READ_ATTEMPTS):
        value = _read(key, in_task)
        if value is not None or not _exists(key, in_task):
            return value
        if attempt + 1 < READ_ATTEMPTS:
            time.sleep(0.5 * 2**attempt)
    raise CiExportError(
        f"The Airflow Variable '{key}' exists but could not be read ({READ_ATTEMPTS} tries): the metadata "
        "database or the API server did not answer. Retry the task; the task log shows Airflow's error."
    )


def set_variable(key: str, value: str, description: str) -> None:
    """Store ``value`` under ``key``."""
    if _in_task():
        from airflow.sdk import Variable

        Variable.set(key, value, description=description)
    else:
        from airflow.models import Variable as DbVariable

        DbVariable.set(key, value, description=description)


def delete_variable(key: str) -> None:
    """Remove the Variable if it exists."""
    if _in_task():
        from airflow.sdk import Variable

        Variable.delete(key)
    else:
        from airflow.models import Variable as DbVariable

        DbVariable.delete(key)


class JsonVariable:
    """A JSON document kept in one Variable.

    :param key: the Variable's key.
    :param description: shown in the Airflow UI next to it.
    """

    def __init__(self, key: str, description: str) -> None:
        self.key = key
        self.description = description

    def load(self) -> Any:
        """The stored document, or ``None``."""
        raw = get_variable(self.key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def save(self, document: Any) -> None:
        """Replace the stored document."""
        set_variable(self.key, json.dumps(document, separators=(",", ":")), self.description)

    def delete(self) -> None:
        """Forget the document."""
        delete_variable(self.key)
