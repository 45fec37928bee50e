"""An awkward little segment, the same in every source format, and what a correct export yields."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support import set_connection

LONG = "x" * 300

ROWS: list[dict[str, Any]] = [
    {
        "email": "ann.lee@example.com",
        "first": "Ann",
        "last": "Lee",
        "phone": "+1 415 555 0100",
        "tier": "gold",
        "city": "Oakland",
    },
    {
        "email": "  Bob.Smith@Example.ORG ",
        "first": " Bob ",
        "last": "Smith",
        "phone": "",
        "tier": "silver",
        "city": None,
    },
    {
        "email": "BOB.SMITH@example.org",
        "first": "Robert",
        "last": "Smith",
        "phone": "555",
        "tier": "gold",
        "city": "Reno",
    },
    {
        "email": "o'brien+vip@sub.example.co.uk",
        "first": "Siobhán",
        "last": "O'Brien",
        "phone": None,
        "tier": "",
        "city": "Cork",
    },
    {"email": "not-an-email", "first": "Nope", "last": "", "phone": "", "tier": "", "city": ""},
    {"email": "", "first": "Blank", "last": "", "phone": "", "tier": "", "city": ""},
    {"email": None, "first": "Null", "last": "", "phone": "", "tier": "", "city": ""},
    {"email": "a..b@example.com", "first": "Dots", "last": "", "phone": "", "tier": "", "city": ""},
    {"email": "zoë@example.com", "first": "Zoe", "last": "", "phone": "", "tier": "", "city": ""},
    {
        "email": "carol_d-e=f@example.travel",
        "first": "Carol",
        "last": LONG,
        "phone": "4155550101",
        "tier": "platinum",
        "city": "Austin",
    },
    {"email": "dave@EXAMPLE.com", "first": "", "last": "", "phone": "", "tier": "", "city": ""},
    {"email": "Dave@example.com", "first": "Second", "last": "Dave", "phone": "", "tier": "", "city": ""},
]
COLUMNS = ["email", "first", "last", "phone", "tier", "city"]

#: What the lists must hold afterwards: first occurrence wins, blanks are not sent.
EXPECTED: dict[str, dict[str, str]] = {
    "ann.lee@example.com": {
        "first_name": "Ann",
        "last_name": "Lee",
        "phone": "+1 415 555 0100",
        "tier": "gold",
        "city": "Oakland",
    },
    "bob.smith@example.org": {"first_name": "Bob", "last_name": "Smith", "tier": "silver"},
    "o'brien+vip@sub.example.co.uk": {"first_name": "Siobhán", "last_name": "O'Brien", "city": "Cork"},
    "carol_d-e=f@example.travel": {
        "first_name": "Carol",
        "phone": "4155550101",
        "tier": "platinum",
        "city": "Austin",
    },
    "dave@example.com": {},
}
READ = len(ROWS)
INVALID = 5  # not-an-email, blank, NULL, a..b, zoë
DUPLICATES = 2  # BOB.SMITH, Dave


def write_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in ROWS:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def write_jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def write_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def write_sqlite(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE segment ({', '.join(f'{c} TEXT' for c in COLUMNS)})")
        db.executemany(
            f"INSERT INTO segment VALUES ({', '.join('?' for _ in COLUMNS)})",
            [tuple(r[c] for c in COLUMNS) for r in ROWS],
        )
    return path


SOURCE_KINDS = ["csv", "jsonl", "parquet", "records", "sqlite"]


def source_kwargs(kind: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The operator arguments that read this segment from a source of ``kind``."""
    if kind == "records":
        return {"records": ROWS}
    if kind == "sqlite":
        db = write_sqlite(tmp / "profiles.db")
        conn_id = set_connection(monkeypatch, "profiles_db", conn_type="sqlite", host=str(db))
        return {"sql": "SELECT * FROM segment", "sql_conn_id": conn_id}
    writer = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}[kind]
    return {"source_path": str(writer(tmp / f"segment.{kind}"))}
