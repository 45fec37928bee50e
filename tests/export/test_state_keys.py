"""Where the sync state's key comes from: a connection, else Airflow's fernet key, else a clear error."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

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
from tests.export.forgery import hkdf_v1_state
from tests.support import set_connection

NEW_KEY = "kN3w-0f8f1d0Q2c7a9e4b6d8f0a1c3e5b7d9f"
OLD_KEY = "kOld-7a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d"
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

    new, old = NEW_KEY, OLD_KEY
    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password=f"{new}\n {old} \n")
    keys = state_keys()
    assert keys.source == "the connection 'ciexport_state_key'"
    assert keys.signing == StateKeys([new], "new").signing
    uri = _written_with(tmp_path, StateKeys([old], "the old key"))
    assert read_state(uri, IDENTITY, keys).distrust is None  # the old key still reads
    assert redact(new) == "***" and redact(old) == "***"


@pytest.mark.parametrize("password", ["x", "1234", "correct horse battery staple", f"{NEW_KEY}\nqZ7 wV9"])
def test_a_key_too_short_to_resist_guessing_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password=password)
    with pytest.raises(ExportConfigurationError, match=r"shorter than 32 characters") as refused:
        state_keys()
    message = str(refused.value)
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in message
    assert "Nothing was sent" in message
    for line in password.splitlines():
        assert len(line) == 1 or line not in message  # "x": a letter any message holds


def test_a_passphrase_is_one_key_used_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    passphrase = "correct horse battery staple, and a mule"
    set_connection(monkeypatch, "ciexport_state_key", conn_type="generic", password=passphrase)
    keys = state_keys()
    assert keys.signing == StateKeys([passphrase], "whole").signing
    assert keys.find(StateKeys(["correct"], "first word").signing[0]) is None


def test_a_state_signed_under_the_old_derivation_is_distrusted_once_and_replaced(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/vip.state"
    Path(f"{tmp_path}/vip.state").write_bytes(hkdf_v1_state(["a@example.com"], NEW_KEY))
    keys = StateKeys([NEW_KEY], "the same secret")
    loaded = read_state(uri, IDENTITY, keys)
    assert (len(loaded.state), loaded.authenticated, loaded.stored_generation) == (0, False, 5)
    assert loaded.distrust == (
        "the stored state has format 2, not 3 (it does not say which file it is; this run replaces it)"
    )
    state = SyncState(IDENTITY)
    state.add(1, 2, 0, "a@example.com")
    assert write_state(uri, state, loaded.stored_generation, keys) == 6
    assert read_state(uri, IDENTITY, keys).distrust is None


def test_a_guess_costs_a_scrypt_and_each_key_is_derived_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hashlib

    import airflow_provider_ciexport.export.state as state_module

    calls: list[int] = []
    real = hashlib.scrypt

    def scrypt(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(state_module.hashlib, "scrypt", scrypt)
    secret = secrets.token_urlsafe(32)
    first = state_module.derive_state_key(secret)
    assert state_module.derive_state_key(secret) == first and StateKeys([secret], "again").signing[1] == first
    assert calls == [2**15]


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


_FIRST_COMMAND = """
import airflow.configuration as core

core.write_default_airflow_configuration_if_needed()  # what the `airflow` command does first
from airflow_provider_ciexport.export.state_keys import state_keys

print(state_keys().source)
"""


def test_the_first_command_in_a_new_airflow_home_uses_the_fernet_key_it_generated(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__CORE__FERNET", "AIRFLOW_CONN_"))
    }
    env["AIRFLOW_HOME"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_COMMAND], env=env, capture_output=True, text=True, timeout=300
    )
    assert (tmp_path / "airflow.cfg").exists()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("Airflow's [core] fernet_key")


def test_airflow_cores_key_is_read_only_when_the_sdks_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    generated, configured = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    core = types.ModuleType("airflow.configuration")
    core.conf = types.SimpleNamespace(get=lambda *args, **kwargs: generated)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow.configuration", core)
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "{FERNET_KEY}")
    assert state_keys().signing == StateKeys([generated], "generated").signing
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", configured)
    assert state_keys().signing == StateKeys([configured], "configured").signing
