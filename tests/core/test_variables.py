"""Variables: a stored value that cannot be read is an error, never "not set"."""

from __future__ import annotations

import pytest

from airflow_provider_ciexport.core.variables import JsonVariable, get_variable, set_variable
from airflow_provider_ciexport.exceptions import CiExportError


def test_values_round_trip_and_missing_ones_read_as_none(airflow_db: str) -> None:
    set_variable("ciexport_test_round_trip", "value", "a test")
    assert get_variable("ciexport_test_round_trip") == "value"
    assert get_variable("ciexport_test_never_set") is None
    store = JsonVariable("ciexport_test_json", "a test")
    store.save({"done": {"1": ["d", 2, 0]}})
    assert store.load() == {"done": {"1": ["d", 2, 0]}}
    store.delete()
    assert store.load() is None


def test_a_stored_value_that_cannot_be_read_is_an_error(
    airflow_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models import Variable

    set_variable("ciexport_test_unreadable", "rotated-token", "a test")
    reads: list[str] = []

    def failing_get(key: str, default_var: object = None, **kwargs: object) -> object:
        # What Airflow answers when its secrets backend or database fails: the default.
        reads.append(key)
        return default_var

    monkeypatch.setattr(Variable, "get", staticmethod(failing_get))
    monkeypatch.setattr("airflow_provider_ciexport.core.variables.time.sleep", lambda s: None)
    with pytest.raises(CiExportError, match="exists but could not be read"):
        get_variable("ciexport_test_unreadable")
    assert len(reads) == 3
