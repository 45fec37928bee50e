"""Where the key that authenticates the sync state comes from (see :class:`.StateKeys`).

1. The Airflow connection named by the operator's ``state_key_conn_id`` (default
   ``ciexport_state_key``, any connection type): its password holds the key, or several one a line,
   newest first, each used whole (spaces included) and at least :data:`MIN_KEY_CHARS` characters long.
   Connections come from the secrets backend, the
   environment (``AIRFLOW_CONN_CIEXPORT_STATE_KEY``) or the metadata database; every worker can read
   them, and Airflow masks their password.
2. When that connection does not exist (and ``state_key_conn_id`` was left at its default): Airflow's
   own ``[core] fernet_key`` as the workers see it, every key in it (Airflow's own rotation list,
   newest first). A key is derived from it, so the fernet key itself never signs anything.
3. Neither: the export fails before anything is read or sent.
"""

from __future__ import annotations

import sys

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.state import StateKeys, fernet_secrets

#: The connection whose password holds the state's key(s), unless the operator names another.
DEFAULT_STATE_KEY_CONN_ID = "ciexport_state_key"
#: The shortest key the connection may hold (``secrets.token_urlsafe(32)`` gives 43 characters).
MIN_KEY_CHARS = 32
_GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


def _connection_secrets(conn_id: str) -> list[str] | None:
    """The keys in the connection's password; ``None`` when there is no such connection."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return [line.strip() for line in (conn.password or "").splitlines() if line.strip()]


def _check_lengths(found: list[str], name: str) -> None:
    """Refuse keys too short to resist guessing (never quoting them)."""
    short = [i for i, secret in enumerate(found, 1) if len(secret) < MIN_KEY_CHARS]
    if short:
        which = "its key" if len(found) == 1 else f"key {short[0]} of {len(found)} (one a line)"
        raise ExportConfigurationError(
            f"The connection '{name}' holds a sync state key shorter than {MIN_KEY_CHARS} characters "
            f"({which}), which a copy of a state lets anyone guess. Put a long random key in its password, "
            f"e.g. from `{_GENERATE}`; several keys go one a line, newest first. Nothing was sent."
        )


def _fernet_setting() -> str:
    from airflow.sdk.configuration import conf

    value = str(conf.get("core", "fernet_key", fallback="") or "")
    if fernet_secrets(value):
        return value
    # A brand-new AIRFLOW_HOME: the command running this task (``airflow dags test``) has just
    # generated the key into airflow.cfg and holds it in Airflow core's configuration, while the Task
    # SDK's, read before, shows the template's ``{FERNET_KEY}``. Core is consulted only when this
    # process loaded it already: importing it here could write an airflow.cfg.
    core = getattr(sys.modules.get("airflow.configuration"), "conf", None)
    if core is not None:
        try:
            return str(core.get("core", "fernet_key", fallback="") or "")
        except Exception:  # any configuration error of core's: the SDK's value stands
            return value
    return value


def state_keys(conn_id: str | None = DEFAULT_STATE_KEY_CONN_ID) -> StateKeys:
    """The keys that sign and check this export's sync state, registered with Airflow's secrets masker.

    :param conn_id: the connection holding the key(s); ``None`` or the default falls back to
        ``[core] fernet_key`` when no such connection exists.
    :raises ExportConfigurationError: when there is no key at all, or the connection named has none.
    """
    name = conn_id or DEFAULT_STATE_KEY_CONN_ID
    found = _connection_secrets(name)
    if found is not None:
        if not found:
            raise ExportConfigurationError(
                f"The connection '{name}' holds no key for the sync state: put a long random secret in its "
                f"password (e.g. from `{_GENERATE}`). Nothing was sent."
            )
        for secret in found:
            _mask(secret)
        _check_lengths(found, name)
        return StateKeys(found, f"the connection '{name}'")
    if conn_id and conn_id != DEFAULT_STATE_KEY_CONN_ID:
        raise ExportConfigurationError(
            f"state_key_conn_id names the connection '{conn_id}', which does not exist. Create it with the "
            "sync state's key in its password, or leave state_key_conn_id at its default. Nothing was sent."
        )
    fernet = fernet_secrets(_fernet_setting())
    if fernet:
        return StateKeys(fernet, "Airflow's [core] fernet_key")
    raise ExportConfigurationError(
        "The sync state needs a key that only the workers hold, and there is none: create the connection "
        f"'{DEFAULT_STATE_KEY_CONN_ID}' with a long random secret in its password (every worker must see "
        "it), or give the workers Airflow's [core] fernet_key. Nothing was sent."
    )
