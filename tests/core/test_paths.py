"""The storage-path check shared by state_path and source_path."""

from __future__ import annotations

import pytest

from airflow_provider_ciexport.core.paths import check_storage_path
from airflow_provider_ciexport.exceptions import ExportConfigurationError


@pytest.mark.parametrize(
    "path",
    [
        "file:///data/segments/../x",
        "file:///data/segments/%2e%2E/etc/passwd",
        "/data/segments/.%2e/x.csv",
        "s3://bucket/segments/../../other/x.csv",
        "file:///data/segments/..\\x.csv",
        "file:///data/segments/x%5c..%5cy.csv",
        "/data/segments/x\n.csv",
        "/data/segments/x\x7f.csv",
    ],
)
@pytest.mark.parametrize("parameter", ["source_path", "state_path"])
def test_a_path_that_could_leave_its_folder_is_refused_naming_the_parameter(
    path: str, parameter: str
) -> None:
    with pytest.raises(ExportConfigurationError) as err:
        check_storage_path(path, parameter)
    message = str(err.value)
    assert message.startswith(f"{parameter} ")
    assert "nothing was read. Nothing was sent." in message
    assert f"if a Param is rendered into {parameter}, give it an 'enum' or a 'pattern'" in message


def test_ordinary_paths_are_accepted() -> None:
    for path in (
        "s3://bucket/segments/vip.csv.gz",
        "file:///data/segments/a..b/vip.v2.jsonl",
        "/tmp/x.parquet",
        "relative/segment.csv",
    ):
        check_storage_path(path, "source_path")
