"""The profile generator is deterministic and plants the awkward rows; the segment helpers agree."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path

import pytest

from airflow_provider_ciexport.tools.sandbox import profiles
from airflow_provider_ciexport.tools.sandbox.profiles import (
    PROFILE_COLUMNS,
    REFRESH_SEGMENTS_SQL,
    expected_segment_emails,
    generate_profiles,
    iter_profiles,
    refresh_segments,
    segment_refresh_sql,
)

COUNT = 5_000
# Deliberately simpler than any validator in the package: the generator's addresses are either plainly
# valid or plainly broken, so this is enough to tell them apart.
_PLAIN_EMAIL = re.compile(r"[a-z0-9._+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")


def _rows(db: Path, sql: str = "SELECT * FROM customer_profiles ORDER BY customer_id") -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def _execute(db: Path, *statements: str) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "profiles.db"
    generate_profiles(path, count=COUNT, seed=42)
    return path


def test_same_seed_same_rows_other_seed_other_rows(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.db"
    stats_a = generate_profiles(a, count=1_000, seed=7)
    stats_b = generate_profiles(b, count=1_000, seed=7)
    generate_profiles(c, count=1_000, seed=8)

    assert _rows(a) == _rows(b)
    assert stats_a == dataclasses.replace(stats_b, path=str(a))
    assert _rows(a) != _rows(c)


def test_a_row_does_not_depend_on_the_count() -> None:
    # So a 1,000-row test table is the start of the 1,000,000-row benchmark table.
    assert list(iter_profiles(300, seed=42)) == list(iter_profiles(1_000, seed=42))[:300]


def test_writes_the_requested_count_and_replaces_only_its_table(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    _execute(path, "CREATE TABLE keep_me (x INTEGER)", "INSERT INTO keep_me VALUES (1)")

    assert generate_profiles(path, count=1_234).count == 1_234
    assert _rows(path, "SELECT count(*), min(customer_id), max(customer_id) FROM customer_profiles") == [
        (1_234, 1, 1_234)
    ]
    generate_profiles(path, count=10)
    assert _rows(path, "SELECT count(*) FROM customer_profiles") == [(10,)]
    generate_profiles(path, count=0)
    assert _rows(path, "SELECT count(*) FROM customer_profiles") == [(0,)]
    assert _rows(path, "SELECT x FROM keep_me") == [(1,)]


def test_table_has_the_documented_columns(db: Path) -> None:
    columns = [row[1] for row in _rows(db, "PRAGMA table_info(customer_profiles)")]
    assert tuple(columns) == PROFILE_COLUMNS
    assert {"email", "first_name", "last_name", "phone", "city", "loyalty_tier", "favorite_store"} <= set(
        columns
    )


def test_invalid_emails_are_planted_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    stats = generate_profiles(path, count=COUNT)
    emails = [row[0] for row in _rows(path, "SELECT email FROM customer_profiles")]
    invalid = [e for e in emails if e is None or not _PLAIN_EMAIL.fullmatch(e.strip().lower())]

    assert len(invalid) == stats.invalid_emails
    assert 0.002 * COUNT <= len(invalid) <= 0.01 * COUNT
    assert None in invalid
    assert "" in invalid
    assert any(e and not e.strip() for e in invalid), "whitespace-only address"
    assert any(e and e.strip() and "@" not in e for e in invalid), "address without @"
    assert any(e and " " in e.strip() for e in invalid), "address with a space inside"


def test_duplicates_differ_only_in_case_or_surrounding_spaces(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    stats = generate_profiles(path, count=COUNT)
    emails = [row[0] for row in _rows(path, "SELECT email FROM customer_profiles ORDER BY customer_id")]
    seen: set[str] = set()
    repeats: list[str] = []
    for raw in emails:
        if raw is None or not _PLAIN_EMAIL.fullmatch(raw.strip().lower()):
            continue
        key = raw.strip().lower()
        if key in seen:
            repeats.append(raw)
        seen.add(key)

    assert len(repeats) == stats.duplicate_emails
    assert 0.005 * COUNT <= len(repeats) <= 0.02 * COUNT
    assert any(r != r.strip() for r in repeats), "a repeat with surrounding spaces"
    assert any(r.strip() != r.strip().lower() for r in repeats), "a repeat in another case"
    # Apart from the planted repeats every address is unique.
    assert len(seen) == len(emails) - stats.invalid_emails - stats.duplicate_emails


def test_optional_fields_are_sometimes_blank_or_null(db: Path) -> None:
    for column in ("first_name", "last_name", "phone", "city", "loyalty_tier", "favorite_store"):
        [(null, blank, total)] = _rows(
            db,
            f"SELECT sum({column} IS NULL), sum(trim({column}) = ''), count(*) FROM customer_profiles",
        )
        assert null > 0, column
        assert blank > 0, column
        assert 0.05 < (null + blank) / total < 0.15, column


def test_some_values_are_longer_than_destinations_accept(db: Path) -> None:
    [(long_last, long_city, long_store)] = _rows(
        db,
        "SELECT sum(length(last_name) > 50), sum(length(city) > 50), sum(length(favorite_store) > 255) "
        "FROM customer_profiles",
    )
    assert long_last > 0
    assert long_city > 0
    assert long_store > 0


def test_no_real_personal_data(db: Path) -> None:
    emails = [row[0] for row in _rows(db, "SELECT email FROM customer_profiles WHERE email LIKE '%@%'")]
    domains = {e.strip().lower().rpartition("@")[2] for e in emails}
    assert domains <= {
        "",
        "example.com",
        "example.net",
        "example.org",
        "mail.example.com",
        "shop.example.net",
        "customers.example.org",
    }
    phones = [row[0] for row in _rows(db, "SELECT phone FROM customer_profiles WHERE trim(phone) != ''")]
    assert all(re.sub(r"\D", "", p)[-7:-2] == "55501" for p in phones)


@pytest.mark.parametrize("segment", ["vip", "lapsed"])
def test_expected_emails_match_the_segment_tables(tmp_path: Path, segment: str) -> None:
    path = tmp_path / "p.db"
    generate_profiles(path, count=COUNT)
    # The DAG's refresh statements, run as SQLExecuteQueryOperator would: one after the other.
    _execute(path, *REFRESH_SEGMENTS_SQL)

    members = _rows(path, f"SELECT email FROM segment_{segment}")
    independent = {
        e.strip().lower() for (e,) in members if e is not None and _PLAIN_EMAIL.fullmatch(e.strip().lower())
    }
    expected = expected_segment_emails(path, segment)

    assert expected == independent
    assert len(expected) > 0.1 * COUNT
    assert all(e == e.strip().lower() for e in expected)


def test_segment_rules_hold_for_every_member_and_no_one_else(db: Path) -> None:
    sizes = refresh_segments(db)
    lapsed_before = (date(2025, 1, 1) - timedelta(days=180)).isoformat()
    everyone = _rows(
        db,
        "SELECT customer_id, loyalty_tier, lifetime_value, last_order_date, marketing_opt_in "
        "FROM customer_profiles",
    )
    vip = {
        cid
        for cid, tier, ltv, _, opt in everyone
        if opt == 1 and (tier in ("gold", "platinum") or ltv > 1000)
    }
    lapsed = {
        cid for cid, _, _, last, opt in everyone if opt == 1 and last is not None and last < lapsed_before
    }

    assert {r[0] for r in _rows(db, "SELECT customer_id FROM segment_vip")} == vip
    assert {r[0] for r in _rows(db, "SELECT customer_id FROM segment_lapsed")} == lapsed
    assert sizes == {"vip": len(vip), "lapsed": len(lapsed)}
    # Opted-out customers exist, and are never in a segment.
    assert any(opt == 0 for *_, opt in everyone)


def test_unknown_segment_is_refused(db: Path) -> None:
    with pytest.raises(ValueError, match="unknown segment"):
        expected_segment_emails(db, "everyone")
    with pytest.raises(ValueError, match="unknown segment"):
        segment_refresh_sql("vip; DROP TABLE customer_profiles")


def test_command_line(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    result = subprocess.run(
        [sys.executable, "-m", profiles.__name__, str(path), "--count", "500", "--refresh-segments"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Wrote 500 profiles" in result.stdout
    assert "segment_vip" in result.stdout
    assert _rows(path, "SELECT count(*) FROM customer_profiles") == [(500,)]
    assert _rows(path, "SELECT count(*) FROM segment_vip")[0][0] > 0
