"""Where the sync state's key comes from: a connection, else Airflow's fernet key, else a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.state import (
    StateIdentity,
    StateKeys,
    SyncState,
    read_state,
    write_state,
)
from airflow_provider_ciexport.export.state_keys import state_keys
from tests.support import set_connection

IDENTITY = StateIdentity.of("ActiveCampaign", "https://acct.api-us1.com/api/3", [2], {"email": "email"})


def _written_with(tmp_path: Path, keys: StateKeys) -> str:
    uri = f"file://{tmp_path}/vip.state"
    state = SyncState(IDENTITY)
    state.add(1, 2, 0, "a@example.com")
    write_state(uri, state, None, keys)
    return uri


def test_the_connection_holds_the_keys_newest_first_and_they_are_masked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.sdk.log import redact

    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password="new-Key-1 old-Key-0")
    keys = state_keys()
    assert keys.source == "the connection 'ciexport_state_key'"
    uri = _written_with(tmp_path, StateKeys(["old-Key-0"], "the old key"))
    assert read_state(uri, IDENTITY, keys).distrust is None  # the old key still reads
    assert redact("new-Key-1") == "***" and redact("old-Key-0") == "***"


def test_without_the_connection_the_key_comes_from_the_fernet_key_and_follows_its_rotation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", old)
    uri = _written_with(tmp_path, state_keys())
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", f"{new},{old}")  # Airflow's own rotation
    keys = state_keys()
    assert keys.source == "Airflow's [core] fernet_key"
    assert read_state(uri, IDENTITY, keys).distrust is None
    # The fernet key itself never signs: a state signed with it as the secret is another key's.
    assert keys.find(StateKeys([old], "x").signing[0]) is not None
    assert StateKeys([old], "x").signing[1] != old.encode()


@pytest.mark.parametrize("fernet", ["", "{FERNET_KEY}", "not-a-fernet-key"])
def test_without_any_key_the_export_fails_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch, fernet: str
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", fernet)
    with pytest.raises(ExportConfigurationError, match=r"ciexport_state_key.*fernet_key. Nothing was sent"):
        state_keys()


def test_a_named_connection_must_exist_and_hold_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportConfigurationError, match=r"'vip_state_key', which does not exist"):
        state_keys("vip_state_key")
    set_connection(monkeypatch, "vip_state_key", conn_type="generic", login="only a login")
    with pytest.raises(ExportConfigurationError, match=r"holds no key.*Nothing was sent"):
        state_keys("vip_state_key")
