"""Deterministic unified customer profiles in SQLite, and the segment SQL the example DAGs run on them.

``generate_profiles(path, count, seed)`` writes ``count`` rows to the table ``customer_profiles``. The
same seed always yields the same rows, and row *n* does not depend on ``count`` (the first 1,000 rows of
a 1,000,000-row table are the 1,000-row table). The data is shaped like a real customer table, with the
awkward rows an export has to survive:

* about 0.5% invalid e-mails: no ``@``, a space inside, no domain, empty, whitespace only or NULL;
* about 1% repeated e-mails that differ from an earlier row's only in case or surrounding spaces;
* about 10% of each optional field blank (``""``, ``" "``) or NULL;
* a few over-long values (last names and cities over 50 characters, store names over 255).

Every address uses the reserved ``example.com``/``.net``/``.org`` domains and every phone number the
fictional 555-01xx range, so nothing here is anyone's personal data.

Command line::

    python -m airflow_provider_ciexport.tools.sandbox.profiles profiles.db --count 1000000 --refresh-segments
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from airflow_provider_ciexport.tools.sandbox.emails import is_valid_ac_email, is_valid_cc_email

TABLE = "customer_profiles"

#: Segment definitions are relative to this date (not today), so segment membership is reproducible.
REFERENCE_DATE = date(2025, 1, 1)
#: Loyalty tiers that make a customer a VIP.
VIP_TIERS: tuple[str, ...] = ("gold", "platinum")
#: Lifetime value (strictly) above which a customer is a VIP whatever the tier.
VIP_MIN_LIFETIME_VALUE = 1000.0
#: A customer whose last order is older than this many days before ``REFERENCE_DATE`` has lapsed.
LAPSED_AFTER_DAYS = 180
#: The segments the example DAGs know about.
SEGMENTS: tuple[str, ...] = ("vip", "lapsed")

#: Columns of ``customer_profiles``, in order.
PROFILE_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "city",
    "loyalty_tier",
    "favorite_store",
    "lifetime_value",
    "last_order_date",
    "signup_date",
    "marketing_opt_in",
)
CREATE_TABLE_SQL = f"""
CREATE TABLE {TABLE} (
    customer_id      INTEGER PRIMARY KEY,
    email            TEXT,
    first_name       TEXT,
    last_name        TEXT,
    phone            TEXT,
    city             TEXT,
    loyalty_tier     TEXT,
    favorite_store   TEXT,
    lifetime_value   REAL,
    last_order_date  TEXT,
    signup_date      TEXT,
    marketing_opt_in INTEGER NOT NULL
)
"""
_INSERT_SQL = (
    f"INSERT INTO {TABLE} ({', '.join(PROFILE_COLUMNS)}) VALUES ({', '.join('?' * len(PROFILE_COLUMNS))})"
)

#: Columns a segment table keeps (everything an export may map, nothing internal).
SEGMENT_COLUMNS: tuple[str, ...] = PROFILE_COLUMNS[: PROFILE_COLUMNS.index("signup_date")]
_LAPSED_BEFORE = (REFERENCE_DATE - timedelta(days=LAPSED_AFTER_DAYS)).isoformat()
#: Who belongs to each segment, as a SQL condition on ``customer_profiles``. Only customers who agreed
#: to marketing e-mails are ever exported.
SEGMENT_CONDITIONS: dict[str, str] = {
    "vip": (
        "marketing_opt_in = 1 AND (loyalty_tier IN ({tiers}) OR lifetime_value > {ltv})".format(
            tiers=", ".join(f"'{tier}'" for tier in VIP_TIERS), ltv=VIP_MIN_LIFETIME_VALUE
        )
    ),
    # ISO dates compare correctly as text; NULL (never ordered) is not lapsed.
    "lapsed": (
        f"marketing_opt_in = 1 AND last_order_date < date('{REFERENCE_DATE.isoformat()}', "
        f"'-{LAPSED_AFTER_DAYS} days')"
    ),
}

_FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
    "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Carlos", "Karen",
    "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Betty", "Mark", "Sandra", "Wei", "Ashley",
    "Steven", "Kimberly", "Andrew", "Emily", "Kenji", "Donna", "Joshua", "Michelle", "Kevin", "Carol",
    "Brian", "Amanda", "George", "Dorothy", "Timothy", "Melissa", "Ronald", "Deborah", "José", "Zoë",
    "Aisha", "Priya", "Mohammed", "Siobhán", "Olga", "Chen", "Fatima", "Lars", "Ana", "Noah",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
    "O'Brien", "Müller", "Núñez", "Kowalski", "Tanaka", "Singh", "Okafor", "Van der Berg", "Dubois", "Rossi",
)  # fmt: skip
_CITIES = (
    "New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Philadelphia", "San Antonio", "San Diego",
    "Dallas", "Austin", "Jacksonville", "Columbus", "Charlotte", "Indianapolis", "Seattle", "Denver",
    "Boston", "Nashville", "Portland", "Las Vegas", "Detroit", "Memphis", "Louisville", "Baltimore",
    "Milwaukee", "Albuquerque", "Tucson", "Fresno", "Sacramento", "Atlanta", "Miami", "Oakland",
    "Minneapolis", "Tulsa", "Cleveland", "New Orleans", "Honolulu", "Anchorage", "Saint Paul", "Boise",
)  # fmt: skip
_STORES = (
    "Downtown", "Riverside Mall", "Airport", "Harbor Point", "Northgate", "Westfield Plaza", "Old Town",
    "Online", "Online", "Online", "Lakeside", "University Ave", "Central Station", "Eastside Outlet",
    "Market Street", "Pine Ridge",
)  # fmt: skip
_AREA_CODES = (
    "212", "213", "312", "415", "503", "512", "602", "617", "702", "206", "305", "404", "615", "720", "808",
)  # fmt: skip
_PHONE_FORMATS = (
    "({a}) 555-01{n:02d}",
    "{a}-555-01{n:02d}",
    "+1 {a} 555 01{n:02d}",
    "{a}.555.01{n:02d}",
    "+1{a}55501{n:02d}",
)
_DOMAINS = (
    "example.com", "example.com", "example.com", "example.net", "example.org", "mail.example.com",
    "shop.example.net", "customers.example.org",
)  # fmt: skip
_LONG_LAST_NAMES = (
    "Featherstonehaugh-Wolfeschlegelsteinhausenbergerdorff",
    "Montgomery-Fitzwilliam-Ashbourne-Cholmondeley-Smythe",
)
_LONG_CITIES = (
    "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    "Krung Thep Maha Nakhon Amon Rattanakosin Mahinthara Ayuthaya",
)
_LONG_STORE = (
    "Pop-up store at the Riverside Mall food court, second floor next to the escalators (temporary "
    "location while the Downtown flagship is being renovated; returns and loyalty card services are "
    "handled at the customer desk on the ground floor, open every day from 9 am to 9 pm, "
    "closed on public holidays)"
)

INVALID_EMAIL_RATE = 0.005
DUPLICATE_EMAIL_RATE = 0.01
BLANK_RATE = 0.10
LONG_VALUE_RATE = 0.002
CAPITALISED_EMAIL_RATE = 0.05
NEVER_ORDERED_RATE = 0.04
OPT_IN_RATE = 0.9
_BLANKS: tuple[str | None, ...] = (None, None, "", " ")
#: Invalid addresses, equally likely: no @, a space inside, no domain, empty, whitespace, NULL.
_INVALID_EMAIL_SHAPES: tuple[str | None, ...] = (
    "{first}.{last}{id}{domain}",
    "{first} {last}{id}@{domain}",
    "{first}.{last}{id}@",
    "",
    "   ",
    None,
)
#: How a planted duplicate spells the earlier address, equally likely.
_DUPLICATE_EMAIL_VARIANTS: tuple[Callable[[str], str], ...] = (
    str.upper,
    str.capitalize,
    lambda earlier: f"  {earlier}",
    lambda earlier: f"{earlier} ",
    lambda earlier: f" {earlier.upper()}\t",
)
#: Local parts of valid addresses, weighted by repetition (4, 2, 2, 1, 1 in 10).
_LOCAL_PARTS = (
    *("{first}.{last}{id}",) * 4,
    *("{first[0]}{last}{id}",) * 2,
    *("{first}_{id}",) * 2,
    "{first}.{last}+shop{id}",
    "{last}.{first}.{id}",
)
#: Loyalty tiers by the upper bound of their share of a uniform roll: half the customers are bronze,
#: three in ten silver, one in twenty platinum.
_TIER_BOUNDS = ((0.5, "bronze"), (0.8, "silver"), (0.95, "gold"))
_CHUNK_ROWS = 20_000


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_name.lower() if c.isalnum())


_FIRST = tuple((name, _slug(name)) for name in _FIRST_NAMES)
_LAST = tuple((name, _slug(name)) for name in _LAST_NAMES)
# ISO dates 0..3500 days before REFERENCE_DATE, computed once instead of once per row.
_DAYS_BEFORE_REFERENCE = tuple((REFERENCE_DATE - timedelta(days=d)).isoformat() for d in range(3501))


@dataclass(frozen=True)
class ProfileStats:
    """What :func:`generate_profiles` wrote.

    :param path: the SQLite file.
    :param count: rows in ``customer_profiles``.
    :param seed: the seed used.
    :param invalid_emails: rows whose e-mail is not a usable address.
    :param duplicate_emails: rows repeating an earlier row's address (case or spaces aside).
    :param blank_values: optional values that are ``""``, whitespace or NULL.
    :param long_values: values deliberately longer than destinations accept.
    """

    path: str
    count: int
    seed: int
    invalid_emails: int
    duplicate_emails: int
    blank_values: int
    long_values: int

    def as_dict(self) -> dict[str, Any]:
        """The stats as a plain dict."""
        return asdict(self)


def _tier(roll: float) -> str:
    """The loyalty tier of a uniform ``roll`` in [0, 1)."""
    return next((tier for bound, tier in _TIER_BOUNDS if roll < bound), "platinum")


class _Generator:
    """Produces rows one at a time from one random stream (so row *n* never depends on ``count``)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.random = self.rng.random
        # Rows already written with a valid address, for planting duplicates; bounded so memory stays flat.
        self.recent: deque[tuple[Any, ...]] = deque(maxlen=5000)
        self.invalid = self.duplicates = self.blanks = self.long = 0

    def _pick(self, values: Sequence[Any]) -> Any:
        # random.choice, minus its overhead: this runs ~10 times per row.
        return values[int(self.random() * len(values))]

    def _optional(self, value: str) -> str | None:
        if self.random() < BLANK_RATE:
            blank: str | None = self._pick(_BLANKS)
            return blank
        return value

    def _email(
        self, customer_id: int, first: str, last: str
    ) -> tuple[str | None, tuple[Any, ...] | None, bool]:
        """``(address, earlier row it repeats or None, whether it is a new valid address)``."""
        roll = self.random()
        domain = self._pick(_DOMAINS)
        if roll < INVALID_EMAIL_RATE:
            self.invalid += 1
            shape = _INVALID_EMAIL_SHAPES[int(self.random() * len(_INVALID_EMAIL_SHAPES))]
            address = shape.format(first=first, last=last, id=customer_id, domain=domain) if shape else shape
            return address, None, False
        if roll < INVALID_EMAIL_RATE + DUPLICATE_EMAIL_RATE and self.recent:
            self.duplicates += 1
            earlier_row: tuple[Any, ...] = self._pick(self.recent)
            variant = _DUPLICATE_EMAIL_VARIANTS[int(self.random() * len(_DUPLICATE_EMAIL_VARIANTS))]
            return variant(earlier_row[1]), earlier_row, False
        # The customer id in the local part keeps every address unique apart from the planted duplicates.
        local = _LOCAL_PARTS[int(self.random() * len(_LOCAL_PARTS))]
        email = f"{local.format(first=first, last=last, id=customer_id)}@{domain}"
        if self.random() < CAPITALISED_EMAIL_RATE:
            # People type their address capitalised; it is still the same address.
            email = email.capitalize()
        return email, None, True

    def _order_history(self) -> tuple[float, str | None, str]:
        """``(lifetime value, last order date or None, signup date)``."""
        rand = self.random
        if rand() < NEVER_ORDERED_RATE:
            # Registered but never ordered.
            return 0.0, None, _DAYS_BEFORE_REFERENCE[1 + int(rand() * 900)]
        lifetime_value = round(self.rng.lognormvariate(5.0, 1.1), 2)
        days_ago = min(int(self.rng.expovariate(1 / 150)), 2000)
        return (
            lifetime_value,
            _DAYS_BEFORE_REFERENCE[days_ago],
            _DAYS_BEFORE_REFERENCE[days_ago + int(rand() * 1500)],
        )

    def row(self, customer_id: int) -> tuple[Any, ...]:
        """The next row, for ``customer_id``."""
        rand = self.random
        pick = self._pick
        optional = self._optional
        first_name, first_slug = pick(_FIRST)
        last_name, last_slug = pick(_LAST)
        email, duplicate_of, fresh = self._email(customer_id, first_slug, last_slug)
        phone = pick(_PHONE_FORMATS).format(a=pick(_AREA_CODES), n=int(rand() * 100))
        tier = _tier(rand())
        lifetime_value, last_order, signup = self._order_history()
        # At most one deliberately over-long value per row; it is never blanked.
        long_field = int(rand() * 3) if rand() < LONG_VALUE_RATE else -1
        first = optional(first_name)
        last = pick(_LONG_LAST_NAMES) if long_field == 0 else optional(last_name)
        phone_or_blank = optional(phone)
        city = pick(_LONG_CITIES) if long_field == 1 else optional(pick(_CITIES))
        tier_or_blank = optional(tier)
        store = _LONG_STORE if long_field == 2 else optional(pick(_STORES))
        opt_in = 1 if rand() < OPT_IN_RATE else 0
        if duplicate_of is not None:
            # A second, unmerged profile of the same customer (say, from the web shop and the tills):
            # same person and history, so same segments; contact details from the other system.
            row = (customer_id, email, *duplicate_of[2:4], phone_or_blank, city, *duplicate_of[6:])
            self._tally(row)
            return row
        row = (
            customer_id,
            email,
            first,
            last,
            phone_or_blank,
            city,
            tier_or_blank,
            store,
            lifetime_value,
            last_order,
            signup,
            opt_in,
        )
        if fresh:
            self.recent.append(row)
        self._tally(row)
        return row

    def _tally(self, row: tuple[Any, ...]) -> None:
        # Counted on the finished row, as duplicates copy values from the row they repeat.
        self.blanks += sum(1 for value in row[2:8] if value is None or not value.strip())
        self.long += (row[3] in _LONG_LAST_NAMES) + (row[5] in _LONG_CITIES) + (row[7] == _LONG_STORE)


def iter_profiles(count: int, seed: int = 42) -> Iterator[tuple[Any, ...]]:
    """Yield ``count`` profile rows (in :data:`PROFILE_COLUMNS` order) without touching a database.

    :param count: how many rows.
    :param seed: the random seed; the same seed yields the same rows.
    """
    generator = _Generator(seed)
    for customer_id in range(1, count + 1):
        yield generator.row(customer_id)


def generate_profiles(db_path: str | Path, count: int = 10_000, seed: int = 42) -> ProfileStats:
    """Create (or replace) ``customer_profiles`` in the SQLite file ``db_path`` with ``count`` rows.

    Other tables in the file are left alone. Rows are inserted in chunks inside one transaction.

    :param db_path: the SQLite file; created if missing.
    :param count: how many profiles to write.
    :param seed: the random seed; the same seed yields the same rows.
    :return: counts of what was written, including the planted awkward rows.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    generator = _Generator(seed)
    conn = sqlite3.connect(db_path)
    try:
        # Bulk-load settings: nothing else reads the file while it is generated.
        conn.execute("PRAGMA journal_mode = MEMORY")
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(CREATE_TABLE_SQL)
            row = generator.row
            for start in range(1, count + 1, _CHUNK_ROWS):
                stop = min(start + _CHUNK_ROWS, count + 1)
                conn.executemany(_INSERT_SQL, [row(i) for i in range(start, stop)])
    finally:
        conn.close()
    return ProfileStats(
        path=str(db_path),
        count=count,
        seed=seed,
        invalid_emails=generator.invalid,
        duplicate_emails=generator.duplicates,
        blank_values=generator.blanks,
        long_values=generator.long,
    )


def _check_segment(segment: str) -> str:
    if segment not in SEGMENT_CONDITIONS:
        raise ValueError(f"unknown segment {segment!r}; choose one of {', '.join(SEGMENTS)}")
    return segment


def segment_table(segment: str) -> str:
    """The table holding a segment's members, e.g. ``segment_vip``.

    :param segment: ``vip`` or ``lapsed``.
    """
    return f"segment_{_check_segment(segment)}"


def segment_refresh_sql(segment: str) -> list[str]:
    """The statements that rebuild one segment's table from ``customer_profiles``.

    :param segment: ``vip`` or ``lapsed``.
    """
    table = segment_table(segment)
    return [
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} AS SELECT {', '.join(SEGMENT_COLUMNS)} FROM {TABLE} "
        f"WHERE {SEGMENT_CONDITIONS[segment]} ORDER BY customer_id",
    ]


#: Every segment's refresh statements, in order: what the example DAG's refresh task runs.
REFRESH_SEGMENTS_SQL: list[str] = [stmt for segment in SEGMENTS for stmt in segment_refresh_sql(segment)]


def refresh_segments(db_path: str | Path, segments: Sequence[str] = SEGMENTS) -> dict[str, int]:
    """Rebuild segment tables in one transaction, as the example DAG's refresh task does.

    :param db_path: the SQLite file holding ``customer_profiles``.
    :param segments: which segments to rebuild.
    :return: segment -> number of member rows.
    """
    sizes: dict[str, int] = {}
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            for segment in segments:
                for statement in segment_refresh_sql(segment):
                    conn.execute(statement)
                sizes[segment] = conn.execute(f"SELECT count(*) FROM {segment_table(segment)}").fetchone()[0]
    finally:
        conn.close()
    return sizes


def in_segment(segment: str, tier: Any, lifetime_value: Any, last_order: Any, opt_in: Any) -> bool:
    """Whether a profile with these values belongs to ``segment``.

    The segment rules again, in Python: a check on the SQL, not a copy of it.

    :param segment: ``vip`` or ``lapsed``.
    """
    if opt_in != 1:
        return False
    if segment == "vip":
        return tier in VIP_TIERS or (lifetime_value is not None and lifetime_value > VIP_MIN_LIFETIME_VALUE)
    return last_order is not None and last_order < _LAPSED_BEFORE


def expected_segment_emails(db_path: str | Path, segment: str) -> set[str]:
    """The addresses a correct export of ``segment`` leaves in a destination list.

    Computed from ``customer_profiles`` (not from the segment tables), with the sandbox's own e-mail
    rules: trimmed, lowercased, valid for both ActiveCampaign and Constant Contact, each once.

    :param db_path: the SQLite file written by :func:`generate_profiles`.
    :param segment: ``vip`` or ``lapsed``.
    """
    _check_segment(segment)
    emails: set[str] = set()
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            f"SELECT email, loyalty_tier, lifetime_value, last_order_date, marketing_opt_in FROM {TABLE}"
        )
        for raw, tier, lifetime_value, last_order, opt_in in rows:
            if not isinstance(raw, str) or not in_segment(segment, tier, lifetime_value, last_order, opt_in):
                continue
            email = raw.strip().lower()
            if email and is_valid_ac_email(email) and is_valid_cc_email(email):
                emails.add(email)
    finally:
        conn.close()
    return emails


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: generate profiles into a SQLite file."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_ciexport.tools.sandbox.profiles",
        description="Write deterministic customer profiles to a SQLite file (table customer_profiles).",
    )
    parser.add_argument("path", type=Path, help="SQLite file to create or update")
    parser.add_argument("--count", type=int, default=10_000, help="number of profiles (default 10,000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--refresh-segments", action="store_true", help="also build the segment_vip and segment_lapsed tables"
    )
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")
    stats = generate_profiles(args.path, count=args.count, seed=args.seed)
    print(
        f"Wrote {stats.count:,} profiles to {stats.path} (seed {stats.seed}): "
        f"{stats.invalid_emails:,} invalid e-mails, {stats.duplicate_emails:,} duplicate e-mails, "
        f"{stats.blank_values:,} blank values, {stats.long_values:,} long values."
    )
    if args.refresh_segments:
        for segment, size in refresh_segments(args.path).items():
            print(f"{segment_table(segment)}: {size:,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
