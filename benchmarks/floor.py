"""The Constant Contact floor: read the segment's rows from SQLite and serialise the same JSON bodies.

Nothing else: no HTTP, no Airflow, no rate limits. Which rows become contacts (valid, first occurrence
of an address) is worked out first and is not timed, so the timed part does exactly what any exporter
must do at the very least: fetch the rows, build the contacts' attribute dicts (same attributes, e-mail
trimmed and lowercased, blank and over-long values left out), serialise each as compact JSON and join
them into bodies of the same sizes (fewer than 39,999 contacts and under 4,000,000 bytes each).

Usage: ``python benchmarks/floor.py DB PROFILES REPEATS RESULT_JSON``; run in its own process.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_ciexport.core.contacts import ContactBuilder
from airflow_provider_ciexport.hooks.constantcontact import MAX_IMPORT_BYTES, MAX_IMPORT_CONTACTS
from airflow_provider_ciexport.hooks.constantcontact import SCHEMA as CC_SCHEMA
from airflow_provider_ciexport.tools.sandbox.seed import CC_LIST_VIP

sys.path.insert(0, str(Path(__file__).resolve().parent / "dags"))
from ciexport_bench import CC_MAPPING

SQL = "SELECT * FROM customer_profiles WHERE customer_id <= ?"
CHUNK = 5000
MAX_CONTACTS = MAX_IMPORT_CONTACTS
MAX_BYTES = MAX_IMPORT_BYTES
PREFIX = b'{"import_data":['
SUFFIX = ('],"list_ids":' + json.dumps([CC_LIST_VIP]) + "}").encode()


def exported_rows(db: str, profiles: int) -> tuple[bytearray, list[str]]:
    """Which rows (by position) the export sends, decided by the package's own rules; not timed."""
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute(SQL, (profiles,))
        columns = [d[0] for d in cursor.description]
        builder = ContactBuilder(CC_MAPPING, CC_SCHEMA, columns)
        keep = bytearray()
        while rows := cursor.fetchmany(CHUNK):
            keep.extend(builder.build(row) is not None for row in rows)
    finally:
        conn.close()
    return keep, columns


def serialise(db: str, profiles: int, keep: bytearray, columns: Sequence[str]) -> dict[str, Any]:
    """The timed floor: rows -> contact dicts -> compact JSON -> bodies of the export's sizes."""
    index = {name: i for i, name in enumerate(columns)}
    email_at = index[CC_MAPPING["email"]]
    fields = [
        (attr, index[column], CC_SCHEMA.standard.get(attr, CC_SCHEMA.custom_max_length) or 10**9)
        for attr, column in CC_MAPPING.items()
        if attr != "email"
    ]
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    envelope = len(PREFIX) + len(SUFFIX)
    body_sizes: list[int] = []
    contacts = contact_bytes = 0
    items: list[bytes] = []
    size = envelope
    position = 0
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute(SQL, (profiles,))
        while rows := cursor.fetchmany(CHUNK):
            for row in rows:
                position += 1
                if not keep[position - 1]:
                    continue
                contact = {"email": row[email_at].strip().lower()}
                for attr, i, limit in fields:
                    value = row[i]
                    if value is not None and (text := value.strip()) and len(text) <= limit:
                        contact[attr] = text
                item = dumps(contact).encode()
                contacts += 1
                contact_bytes += len(item)
                if items and size + 1 + len(item) >= MAX_BYTES:
                    body_sizes.append(len(PREFIX + b",".join(items) + SUFFIX))
                    items, size = [], envelope
                size += len(item) + (1 if items else 0)
                items.append(item)
                if len(items) >= MAX_CONTACTS:
                    body_sizes.append(len(PREFIX + b",".join(items) + SUFFIX))
                    items, size = [], envelope
        if items:
            body_sizes.append(len(PREFIX + b",".join(items) + SUFFIX))
    finally:
        conn.close()
    return {
        "seconds": time.perf_counter() - started,
        "rows": position,
        "contacts": contacts,
        "contact_bytes": contact_bytes,
        "body_sizes": body_sizes,
    }


def main(argv: list[str]) -> int:
    """Measure the floor ``REPEATS`` times and write every run (the benchmark uses the fastest)."""
    db, profiles, repeats, result = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    keep, columns = exported_rows(db, profiles)
    runs = [serialise(db, profiles, keep, columns) for _ in range(max(1, repeats))]
    result.write_text(json.dumps({"runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
