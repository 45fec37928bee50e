"""The provider registers with Airflow and everything its metadata names exists."""

from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_ciexport.get_provider_info import get_provider_info

AIRFLOW_DIR = Path(airflow.__file__).parent


def _import(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_entry_point_points_at_get_provider_info() -> None:
    (ep,) = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_ciexport")
    ]
    assert ep.load() is get_provider_info


def test_provider_info_is_valid_against_airflows_own_schema() -> None:
    schema = json.loads((AIRFLOW_DIR / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_forms_are_valid_declarative_fields() -> None:
    """conn-fields and ui-field-behaviour follow the provider.yaml schema that defines them."""
    yaml_schema = json.loads((AIRFLOW_DIR / "provider.yaml.schema.json").read_text())
    item_schema = yaml_schema["properties"]["connection-types"]["items"]
    for conn_type in get_provider_info()["connection-types"]:
        jsonschema.validate(conn_type, item_schema)


def test_package_name_matches_the_installed_distribution() -> None:
    from importlib.metadata import distribution

    assert distribution(get_provider_info()["package-name"]).metadata["Name"] == "airflow-provider-ciexport"


def test_every_named_module_and_class_imports() -> None:
    info = get_provider_info()
    for section in ("hooks", "operators"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for conn_type in info["connection-types"]:
        hook = _import(conn_type["hook-class-name"])
        assert hook.conn_type == conn_type["connection-type"]
        assert hook.hook_name == conn_type["hook-name"]


@pytest.mark.parametrize(
    ("conn_type", "default_conn", "secret_fields"),
    [
        ("activecampaign", "activecampaign_default", set()),
        ("constantcontact", "constantcontact_default", {"refresh_token"}),
    ],
)
def test_connection_types_have_defaults_and_mask_secrets(
    conn_type: str, default_conn: str, secret_fields: set[str]
) -> None:
    (entry,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == conn_type]
    hook = _import(entry["hook-class-name"])
    assert hook.default_conn_name == default_conn
    passwords = {
        name for name, f in entry.get("conn-fields", {}).items() if f["schema"].get("format") == "password"
    }
    assert passwords == secret_fields


def test_airflow_lists_the_provider_and_its_connection_types() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "airflow-provider-ciexport" in manager.providers
    # Where tasks (and BaseHook.get_hook) look hooks up in Airflow 3.
    hooks = ProvidersManagerTaskRuntime().hooks
    assert hooks["activecampaign"] is not None
    assert hooks["constantcontact"] is not None
    widgets = manager.connection_form_widgets
    assert any(key.endswith("refresh_token") for key in widgets)


def test_airflow_registers_the_extra_links() -> None:
    from airflow.providers_manager import ProvidersManager

    links = set(ProvidersManager().extra_links_class_names)
    assert {
        "airflow_provider_ciexport.links.ActiveCampaignListLink",
        "airflow_provider_ciexport.links.ConstantContactListLink",
    } <= links
    for name in get_provider_info()["extra-links"]:
        assert _import(name)().name
