"""What the outcome log's tests share: messy rows, and the invariant its counts are the report's."""

from __future__ import annotations

from collections import Counter
from typing import Any


def messy() -> list[dict[str, Any]]:
    """Mixed case, stray spaces, blanks, duplicates, invalid addresses, a value too long."""
    rows: list[dict[str, Any]] = [
        {"id": i, "email": f"Person.{i}@Example.com ", "first": f"P{i}"} for i in range(1, 13)
    ]
    rows += [
        {"id": 101, "email": "  PERSON.1@example.COM", "first": "again"},  # duplicate of 1
        {"id": 102, "email": "person.2@example.com", "first": "again"},  # duplicate of 2
        {"id": 103, "email": "", "first": "blank"},
        {"id": 104, "email": None, "first": "null"},
        {"id": 105, "email": "not-an-email", "first": "nope"},
        {"id": 106, "email": "zoë@example.com", "first": "accent"},
        {"id": 107, "email": "long.value@example.com", "first": "x" * 60},  # first_name limit is 50
        {"id": 108, "email": "refused@example.com", "first": "R"},
    ]
    return rows


def check_counts(rows: list[dict[str, str]], report: dict[str, Any], *, named: bool) -> None:
    """The invariant: the log's counts are the report's, row for row."""
    statuses = Counter(row["status"] for row in rows)
    codes = Counter(code for row in rows for code in row["reason"].split(";") if code)
    assert len(rows) == report["read"]
    assert statuses["invalid"] == report["invalid"]
    assert statuses["duplicate"] == report["duplicates"]
    for key, value in report.items():
        if key.startswith(("invalid.", "omitted_too_long.")):
            assert codes[key] == value, key
    assert sum(1 for c in codes if c.startswith(("invalid.", "omitted_too_long."))) == sum(
        1 for k in report if k.startswith(("invalid.", "omitted_too_long."))
    )
    sent = statuses["accepted"] + statuses["refused"] + statuses["unconfirmed"]
    assert sent == report["submitted"]
    if named:
        assert statuses["accepted"] == report["accepted"]
        assert statuses["refused"] == report["rejected"]
    assert statuses["unchanged"] == report.get("unchanged", 0)
    assert statuses["skipped_unsubscribed"] == report.get("skipped_unsubscribed", 0)
    assert [int(row["row_number"]) for row in rows if row["status"] in ("invalid", "duplicate")] == sorted(
        int(row["row_number"]) for row in rows if row["status"] in ("invalid", "duplicate")
    )
