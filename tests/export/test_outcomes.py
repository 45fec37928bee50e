"""The outcome log: one row a source row, and its counts always the report's, on messy data."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError, ExportIncompleteError
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.outcome_files import OUTCOME_COLUMNS
from airflow_provider_ciexport.export.outcomes import OutcomeSettings, hashed_row_ids
from airflow_provider_ciexport.export.sources.records import RecordsSegmentSource
from airflow_provider_ciexport.export.state import StateKeys
from airflow_provider_ciexport.export.sync import SyncSettings
from tests.core.fakes import MemoryStore
from tests.export.fakes import FakeDestination, MemoryListDestination
from tests.export.outcome_checks import check_counts, messy

KEYS = StateKeys(["the workers' secret, long enough to be a key"], "a test")
MAPPING = {"email": "email", "first_name": "first"}
IDENTITY = {"dag_id": "d", "task_id": "t", "run_id": "r1", "map_index": -1, "try_number": 1}


def read_log(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".jsonl":
        return [_text(json.loads(line)) for line in path.read_text().splitlines()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [_text(row) for row in pq.read_table(path).to_pylist()]
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def first_occurrence(rows: list[dict[str, str]], duplicate: dict[str, str]) -> dict[str, str]:
    """The row a duplicate's ``duplicate_of=<row_number>`` points to (a self-join of the log)."""
    assert duplicate["status"] == "duplicate" and duplicate["reason"].startswith("duplicate_of=")
    number = duplicate["reason"].removeprefix("duplicate_of=")
    return next(row for row in rows if row["row_number"] == number)


def _text(row: dict[str, Any]) -> dict[str, str]:
    """A row as CSV gives it back: text, empty for none."""
    return {k: "" if v is None else str(v) for k, v in row.items()}


def export(
    destination: FakeDestination,
    path: Path,
    *,
    key: tuple[str, ...] = ("id",),
    sync: SyncSettings | None = None,
    records: list[dict[str, Any]] | None = None,
    settings: ExportSettings | None = None,
    progress: MemoryStore | None = None,
    include_values: bool = False,
) -> dict[str, Any]:
    outcomes = OutcomeSettings(f"file://{path}", key, KEYS, IDENTITY, include_values=include_values)
    exporter = SegmentExporter(
        RecordsSegmentSource(records if records is not None else messy()),
        destination,
        MAPPING,
        settings,
        sync=sync,
        outcomes=outcomes,
        progress=progress,
    )
    return exporter.run().as_dict()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_row_has_an_outcome_whose_counts_are_the_reports(tmp_path: Path, suffix: str) -> None:
    destination = MemoryListDestination(refuse=["refused@example.com"])
    path = tmp_path / f"log{suffix}"
    report = export(destination, path)
    rows = read_log(path)
    check_counts(rows, report, named=True)
    assert list(rows[0]) == list(OUTCOME_COLUMNS)
    by_id = {row["row_id"]: row for row in rows}
    assert by_id["108"]["status"] == "refused"
    assert first_occurrence(rows, by_id["101"])["row_id"] == "1"
    assert by_id["105"]["reason"] == "invalid.malformed"
    assert by_id["103"]["reason"] == "invalid.missing"
    assert by_id["106"]["reason"] == "invalid.non_ascii"
    assert by_id["107"]["status"] == "accepted"
    assert by_id["107"]["reason"] == "omitted_too_long.first_name"
    assert by_id["1"]["job_id"] and by_id["1"]["batch"] == "1"
    assert {row["run_id"] for row in rows} == {"r1"}
    assert {row["destination"] for row in rows} == {"Fake"}


def test_refusals_the_destination_does_not_name_leave_the_batch_unconfirmed(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    report = export(FakeDestination(rejected={2: 1}), path)
    rows = read_log(path)
    check_counts(rows, report, named=False)
    unconfirmed = [row for row in rows if row["status"] == "unconfirmed"]
    assert len(unconfirmed) == 3 and {row["batch"] for row in unconfirmed} == {"2"}
    assert unconfirmed[0]["reason"] == "batch_accepted=2;batch_rejected=1"
    accepted = Counter(row["status"] for row in rows)["accepted"]
    assert accepted + 2 == report["accepted"]


def test_with_a_sync_state_unchanged_and_unsubscribed_rows_are_logged(tmp_path: Path) -> None:
    destination = MemoryListDestination(refuse=["refused@example.com"])
    sync = SyncSettings(state_path=f"file://{tmp_path}/s.state", keys=KEYS)
    first = export(destination, tmp_path / "first.csv", sync=sync)
    check_counts(read_log(tmp_path / "first.csv"), first, named=True)
    assert Counter(row["operation"] for row in read_log(tmp_path / "first.csv"))["add"] == first["submitted"]

    destination.unsubscribe("person.3@example.com")
    records = messy()
    records[4]["first"] = "changed"
    second = export(destination, tmp_path / "second.csv", sync=sync, records=records)
    rows = read_log(tmp_path / "second.csv")
    check_counts(rows, second, named=True)
    by_id = {row["row_id"]: row for row in rows}
    assert by_id["3"]["status"] == "skipped_unsubscribed"
    assert by_id["1"]["status"] == "unchanged"
    assert (by_id["5"]["operation"], by_id["5"]["status"]) == ("update", "accepted")
    assert by_id["108"]["status"] == "refused"  # refused again: sent again each run
    assert second["unchanged"] > 0 and second["skipped_unsubscribed"] == 1


def test_without_a_key_column_rows_carry_a_keyed_hash_never_the_email(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    report = export(MemoryListDestination(), path, key=())
    text = path.read_text()
    assert "@" not in text and "person" not in text.lower()
    rows = read_log(path)
    check_counts(rows, report, named=True)
    row_id = hashed_row_ids(KEYS)
    first = next(row for row in rows if row["row_number"] == "1")  # rows are written as they end
    assert first["row_id"] == row_id("person.1@example.com")
    assert first["row_id"] != hashed_row_ids(StateKeys(["another secret, long enough to be a key"], "x"))(
        "person.1@example.com"
    )
    duplicate = next(row for row in rows if row["status"] == "duplicate")
    assert first_occurrence(rows, duplicate) is first and duplicate["row_id"] == first["row_id"]


def test_a_dry_run_and_a_run_not_waiting_say_what_they_do_not_know(tmp_path: Path) -> None:
    dry = export(FakeDestination(), tmp_path / "dry.csv", settings=ExportSettings(dry_run=True))
    rows = read_log(tmp_path / "dry.csv")
    assert Counter(row["status"] for row in rows)["not_sent"] == dry["would_submit"]
    assert all(row["reason"].startswith("dry_run") for row in rows if row["status"] == "not_sent")

    waitless = export(
        FakeDestination(), tmp_path / "nowait.csv", settings=ExportSettings(wait_for_completion=False)
    )
    rows = read_log(tmp_path / "nowait.csv")
    assert Counter(row["status"] for row in rows)["unconfirmed"] == waitless["submitted"]


def test_a_batch_that_failed_for_good_is_logged_failed(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="NOT exported"):
        export(FakeDestination(failures={1: 9}), tmp_path / "log.csv")
    rows = read_log(tmp_path / "log.csv")
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 3 and failed[0]["reason"] == "job_failed"
    assert len(rows) == len(messy())


def test_the_task_log_names_only_the_path_and_the_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    export(MemoryListDestination(), tmp_path / "log.csv")
    assert "person" not in caplog.text.lower() and "@" not in caplog.text
    assert f"Outcome log: {len(messy())} rows written to file://{tmp_path}/log.csv." in caplog.text


def test_settings_refuse_a_log_they_cannot_write_before_anything_is_read() -> None:
    with pytest.raises(ExportConfigurationError, match=r"\.csv, \.jsonl or \.parquet"):
        OutcomeSettings("file:///tmp/log.txt", ("id",))
    with pytest.raises(ExportConfigurationError, match="outcome_key"):
        OutcomeSettings("file:///tmp/log.csv")
    with pytest.raises(ExportConfigurationError, match=r"'\.\.' segment"):
        OutcomeSettings("file:///tmp/../log.csv", ("id",))


def test_parquet_without_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ExportConfigurationError, match=r"'parquet' extra"):
        OutcomeSettings("file:///tmp/log.parquet", ("id",))


def test_a_missing_key_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportConfigurationError, match="'customer_id'"):
        export(FakeDestination(), tmp_path / "log.csv", key=("customer_id",))


@pytest.mark.parametrize("removal_unsubscribes", [False, True], ids=["removes", "unsubscribes"])
def test_mirror_logs_one_row_per_removal_named_by_the_keyed_hash(
    tmp_path: Path, removal_unsubscribes: bool
) -> None:
    destination = MemoryListDestination(removal_unsubscribes=removal_unsubscribes)
    sync = SyncSettings(state_path=f"file://{tmp_path}/s.state", mode="mirror", keys=KEYS)
    export(destination, tmp_path / "first.csv", sync=sync)
    records = [row for row in messy() if row["id"] not in (11, 12)]
    report = export(destination, tmp_path / "second.csv", sync=sync, records=records)
    rows = read_log(tmp_path / "second.csv")
    removals = [row for row in rows if row["operation"] == "remove"]
    check_counts([row for row in rows if row["operation"] != "remove"], report, named=True)
    assert Counter(row["status"] for row in removals) == {"removed": report["removed"]} == {"removed": 2}
    row_id = hashed_row_ids(KEYS)
    assert {row["row_id"] for row in removals} == {
        row_id("person.11@example.com"),
        row_id("person.12@example.com"),
    }
    assert all(row["row_number"] == "" for row in removals)
    # Each removal row names the removal job that took the contact off.
    assert {row["job_id"] for row in removals} <= set(destination.results) and all(
        r["job_id"] for r in removals
    )


def test_returners_the_destination_would_not_resubscribe_get_a_row_saying_why(tmp_path: Path) -> None:
    destination = MemoryListDestination(removal_unsubscribes=True)  # ActiveCampaign-like
    state = f"file://{tmp_path}/s.state"
    sync = SyncSettings(state_path=state, mode="mirror", keys=KEYS, max_removal_fraction=0.5)
    export(destination, tmp_path / "first.csv", sync=sync)
    export(
        destination,
        tmp_path / "second.csv",
        sync=sync,
        records=[r for r in messy() if r["id"] not in (10, 11, 12)],
    )
    destination.unsubscribe("person.11@example.com")  # their own change, after the export's removal
    destination.refuse.add("person.12@example.com")  # the address is excluded now: its import is refused

    report = export(destination, tmp_path / "third.csv", sync=sync)

    rows = read_log(tmp_path / "third.csv")
    extra = [row for row in rows if row["status"] == "readd_refused"]
    check_counts([row for row in rows if row not in extra], report, named=True)
    row_id = hashed_row_ids(KEYS)
    assert {(row["row_id"], row["operation"], row["reason"], row["row_number"]) for row in extra} == {
        (row_id("person.11@example.com"), "readd", "changed_since_removal", ""),
        (row_id("person.12@example.com"), "readd", "import_refused", ""),
    }
    assert len(extra) == report["readd_refused"] == 2 and report["readded"] == 1
    assert destination.readds == ["person.10@example.com"]


def test_a_retried_run_writes_the_whole_log_again_resumed_batches_included(tmp_path: Path) -> None:
    store, path = MemoryStore(), tmp_path / "log.csv"
    with pytest.raises(ExportIncompleteError):
        export(FakeDestination(failures={3: 9}), path, progress=store)
    # The failed try wrote what it knew: a row for every source row, batch 3's failed.
    failed = read_log(path)
    assert len(failed) == len(messy()) and Counter(r["status"] for r in failed)["failed"] == 3

    report = export(FakeDestination(), path, progress=store)

    rows = read_log(path)  # the retry's file replaces the failed try's
    check_counts(rows, report, named=True)
    resumed = [row for row in rows if "resumed" in row["reason"].split(";")]
    # Every batch but the failed one (3) was confirmed by the first try: 11 of the 14 contacts.
    assert len(resumed) == 11 and {row["batch"] for row in resumed} == {"1", "2", "4", "5"}
    assert all(row["status"] == "accepted" for row in resumed) and report["resumed_batches"] == 4


def test_the_log_goes_in_folders_made_for_it_private_on_local_disk(tmp_path: Path) -> None:
    path = tmp_path / "ciexport-outcomes" / "my_dag" / "manual__2026-12-07T18:00:00+00:00" / "ac.csv"
    report = export(FakeDestination(), path)
    check_counts(read_log(path), report, named=False)
    assert (path.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_values_are_written_only_when_asked_as_sent_or_as_read(tmp_path: Path, suffix: str) -> None:
    destination = MemoryListDestination(refuse=["refused@example.com"])
    path = tmp_path / f"log{suffix}"
    report = export(destination, path, include_values=True)
    rows = read_log(path)
    check_counts(rows, report, named=True)
    assert list(rows[0]) == [*OUTCOME_COLUMNS, "email", "mapped_values"]
    by_id = {row["row_id"]: row for row in rows}
    # Sent: the normalised address and the values as sent (the too-long first name left out).
    assert (by_id["1"]["email"], json.loads(by_id["1"]["mapped_values"])) == (
        "person.1@example.com",
        {"first_name": "P1"},
    )
    assert json.loads(by_id["107"]["mapped_values"]) == {}
    # Never sent: the address and values as read, so the source row can be fixed.
    assert (by_id["105"]["email"], by_id["106"]["email"], by_id["104"]["email"]) == (
        "not-an-email",
        "zoë@example.com",
        "",
    )
    assert json.loads(by_id["103"]["mapped_values"]) == {"first_name": "blank"}
    assert by_id["101"]["email"] == "person.1@example.com" and by_id["108"]["status"] == "refused"
    export(destination, tmp_path / "plain.csv")  # not asked: no address anywhere
    assert "@" not in (tmp_path / "plain.csv").read_text()
