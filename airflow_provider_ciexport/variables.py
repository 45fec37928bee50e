"""Airflow Variables from wherever the provider runs: inside a task, or beside the metadata database.

Connections are read-only from tasks in Airflow 3, so state that must outlive a task run (a rotated
refresh token, an export's progress) is kept in Variables. Inside a task the Task SDK reaches them
through the execution API, so any worker sees them; elsewhere (the API server's connection test, a
CLI, tests) the metadata database is used directly.
"""

from __future__ import annotations

import json
from typing import Any


def _in_task() -> bool:
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover - the task SDK ships with Airflow 3
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def get_variable(key: str) -> str | None:
    """The Variable's value, or ``None`` when it is not set (or no metadata database is reachable)."""
    try:
        if _in_task():
            from airflow.sdk import Variable

            value = Variable.get(key, default=None)
        else:
            from airflow.models import Variable as DbVariable

            value = DbVariable.get(key, default_var=None)
    except Exception:
        return None
    return None if value is None else str(value)


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
