"""Turning segment rows into destination contacts: mapping, e-mail validation, value cleaning, dedup."""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from airflow_provider_ciexport.core.redaction import looks_like_a_header
from airflow_provider_ciexport.exceptions import ExportConfigurationError

#: RFC 5321 limit on a whole address, also PHP's ``FILTER_VALIDATE_EMAIL`` limit.
MAX_EMAIL_LENGTH = 254
#: RFC 5321 limit on the local part (before ``@``).
MAX_LOCAL_PART_LENGTH = 64

# At least as strict as PHP's filter_var(FILTER_VALIDATE_EMAIL) without FILTER_FLAG_EMAIL_UNICODE, which
# ActiveCampaign uses: a dot-atom local part (no quoted strings), two or more hostname labels, an
# alphabetic (or punycode) TLD of two or more characters, no IP literals. Applied after lowercasing.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
# Runs of letters/digits joined by hyphens: no leading or trailing hyphen; label lengths (<= 63) are
# checked outside the regex. Every repeated part ends at a character its class excludes ("." "-" "@"),
# so an address splits one way only and a failing match gives up in linear time, without Python
# 3.11's possessive quantifiers (the provider supports 3.10).
_LABEL = r"[a-z0-9]+(?:-+[a-z0-9]+)*"
_EMAIL_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--{_LABEL})")
_email_match = _EMAIL_RE.fullmatch


@dataclass(frozen=True)
class ContactSchema:
    """What a destination accepts.

    :param destination: the destination's name, for messages (``"ActiveCampaign"``).
    :param standard: standard attribute -> maximum length in characters (``None``: no limit); must
        include ``"email"``.
    :param custom_prefix: how custom-field attributes start (``"field:"``, ``"cf:"``).
    :param custom_max_length: maximum length of a custom-field value (``None``: no limit).
    :param max_custom_fields: how many custom fields one export may map (``None``: no limit).
    :param email_max_length: maximum e-mail length; never more than 254 is accepted.
    """

    destination: str
    standard: Mapping[str, int | None]
    custom_prefix: str
    custom_max_length: int | None = None
    max_custom_fields: int | None = None
    email_max_length: int = MAX_EMAIL_LENGTH


def normalize_email(value: Any, max_length: int = MAX_EMAIL_LENGTH) -> tuple[str | None, str | None]:
    """Validate and normalise one e-mail value.

    Surrounding whitespace is trimmed and the address lowercased. Reasons are short codes:
    ``"missing"`` (``None``, empty or whitespace only), ``"not_text"`` (numbers, booleans, ...),
    ``"non_ascii"``, ``"too_long"`` (whole address over ``max_length`` or 254, or local part over 64)
    and ``"malformed"``.

    :param value: the raw value from the source.
    :param max_length: the destination's limit on the whole address.
    :return: ``(email, None)`` when valid, else ``(None, reason)``.
    """
    if type(value) is not str:
        if value is None:
            return None, "missing"
        if isinstance(value, str):
            value = str(value)
        elif isinstance(value, (bytes, bytearray)):
            if not value.isascii():
                return None, "non_ascii"
            value = value.decode("ascii")
        else:
            return None, "not_text"
    email = value.strip().lower()
    if not email:
        return None, "missing"
    reason = _problem(email, min(max_length, MAX_EMAIL_LENGTH))
    return (None, reason) if reason else (email, None)


def _problem(email: str, max_length: int) -> str | None:
    """Why a stripped, lowercased, non-empty address is invalid, or ``None`` if it is valid."""
    if len(email) > max_length:
        return "too_long"
    if not email.isascii():
        return "non_ascii"
    if _email_match(email) is None:
        return "malformed"
    at = email.index("@")
    if at > MAX_LOCAL_PART_LENGTH:
        return "too_long"
    if not _labels_fit(email, at):
        return "malformed"
    return None


def _labels_fit(email: str, at: int) -> bool:
    # A label can only exceed 63 characters if the whole domain does.
    return len(email) - at <= 64 or all(len(label) <= 63 for label in email[at + 1 :].split("."))


def to_text(value: Any) -> str:
    """Convert a non-``None`` source value to the text sent to a destination (stripped, maybe empty).

    Whole floats lose their ``.0`` (a phone number read as ``4155550100.0`` becomes ``"4155550100"``),
    NaN is empty (pandas' missing value), booleans are ``"true"``/``"false"``, dates are ISO 8601,
    bytes are decoded as UTF-8 and JSON arrays/objects are compact JSON.

    :param value: a value from a source row.
    """
    if type(value) is str:
        return value.strip()
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return "" if value.is_nan() else str(value)
        if value == value.to_integral_value():
            return str(int(value))
        return format(value, "f")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace").strip()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value).strip()


class EmailSet:
    """A compact set of e-mail addresses for deduplication: 16 to 32 bytes per address.

    It stores Python's 64-bit ``hash()`` of each address, not the string, in an open-addressing table
    (linear probing) on ``array('q')`` that doubles when more than half full: 16.8 MB for a million
    addresses, where a ``set`` of the strings takes about 115 MB. Two consequences:

    * Two different addresses with the same 64-bit hash would count as one (probability about
      ``n**2 / 2**65``: roughly 3e-8 for a million addresses).
    * ``hash()`` of a string is salted per process, so the table itself cannot be saved and reloaded
      by another process. To resume an export, seed a new set with :meth:`update` from the addresses
      already handled (for instance by re-reading the rows already exported).

    :param capacity: expected number of addresses; sizing the table up front avoids regrowing it.
    """

    __slots__ = ("_len", "_limit", "_mask", "_table")

    _MIN_SLOTS = 1024

    def __init__(self, capacity: int = 0) -> None:
        slots = self._MIN_SLOTS
        while slots // 2 < capacity:
            slots *= 2
        self._table = array("q", [0]) * slots
        self._mask = slots - 1
        self._limit = slots // 2
        self._len = 0

    def add(self, email: str) -> bool:
        """Add an address; return ``True`` if it was not in the set yet.

        :param email: a normalised address.
        """
        return self.add_hash(hash(email) or 1)  # 0 marks an empty slot: the (astronomically rare) hash 0 as 1

    def add_hash(self, h: int) -> bool:
        """Add a value already hashed (a signed, non-zero 64-bit number); ``True`` if it was new."""
        i = self._slot(h)
        if self._table[i]:
            return False
        self._put(i, h)
        return True

    def update(self, emails: Iterable[str]) -> int:
        """Add many addresses (to pre-seed the set); return how many were new.

        :param emails: normalised addresses.
        """
        add = self.add
        return sum(1 for email in emails if add(email))

    def __contains__(self, email: object) -> bool:
        if not isinstance(email, str):
            return False
        return bool(self._table[self._slot(hash(email) or 1)])

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes used by the table."""
        return self._table.itemsize * len(self._table)

    def _slot(self, h: int) -> int:
        """The slot of hash ``h``: where it is, or the empty one where it would go (linear probing)."""
        table = self._table
        mask = self._mask
        i = h & mask
        while (v := table[i]) and v != h:
            i = (i + 1) & mask
        return i

    def _put(self, i: int, h: int) -> None:
        """Store ``h`` in the empty slot ``i``; double the table once it is more than half full."""
        self._table[i] = h
        self._len += 1
        if self._len > self._limit:
            self._grow()

    def _grow(self) -> None:
        old = self._table
        slots = 2 * len(old)
        self._table = array("q", [0]) * slots
        self._mask = slots - 1
        self._limit = slots // 2
        for i, h in enumerate(old):
            if h:
                self._moved(i, self._slot(h), h)

    def _moved(self, old: int, new: int, h: int) -> None:
        """While growing: ``h`` moves from slot ``old`` of the old table to slot ``new``."""
        self._table[new] = h


class EmailIndex(EmailSet):
    """An :class:`EmailSet` that also keeps a number for each address: :attr:`number` as it was when
    the address was added (e.g. the row it came from). 4 more bytes a slot: 25 MB for a million
    addresses, where a ``dict`` takes well over 100 MB.

    :param capacity: expected number of addresses.
    """

    __slots__ = ("_old_values", "_values", "number")

    def __init__(self, capacity: int = 0) -> None:
        super().__init__(capacity)
        self._values = array("i", [0]) * len(self._table)
        self._old_values = self._values
        #: What :meth:`add` keeps for a new address (below 2**31).
        self.number = 0

    def add_hash(self, h: int) -> bool:
        """Add a hashed address with :attr:`number`; return ``True`` if it was not in the set yet."""
        i = self._slot(h)
        if self._table[i]:
            return False
        self._values[i] = self.number
        self._put(i, h)
        return True

    def first(self, email: str) -> int | None:
        """The number kept when ``email`` was added, or ``None`` if it never was."""
        i = self._slot(hash(email) or 1)
        return self._values[i] if self._table[i] else None

    @property
    def nbytes(self) -> int:
        return super().nbytes + self._values.itemsize * len(self._values)

    def _grow(self) -> None:
        self._old_values = self._values
        self._values = array("i", [0]) * (2 * len(self._table))
        super()._grow()
        self._old_values = self._values

    def _moved(self, old: int, new: int, h: int) -> None:
        self._table[new] = h
        self._values[new] = self._old_values[old]


def column_key(name: str) -> str:
    """How a mapped column name matches a source column loosely: ignoring case and surrounding spaces."""
    return name.strip().casefold()


def _describe_columns(
    columns: Sequence[str], names: Sequence[str] | None, width: int | None, mapped: Sequence[str]
) -> str:
    """A sentence naming the source's columns when they are known to be names and look like names, else
    giving only their count and the mapped columns found.

    A file without a header row turns its first data row into "column names": never echo it.
    """
    if names is not None and looks_like_a_header(names):
        return f"Its columns are: {', '.join(repr(name) for name in names) or '(none)'}."
    count = len(names) if names is not None else width if width is not None else len(columns)
    why = (
        "look like data, not names"
        if names is not None
        else "come from the file's first line, which could be a data row"
    )
    found = [name for name in mapped if name in columns]
    has = ", ".join(repr(name) for name in found) if found else "none"
    return (
        f"Its {count} column names {why}, so they are not shown: is the first line a data row instead "
        f"of a header row? Of the mapped columns it has: {has}."
    )


class ContactBuilder:
    """Builds destination contacts from source rows and keeps the counts the report needs.

    ``field_mapping`` maps *destination attribute -> source column*, e.g.
    ``{"email": "Email", "first_name": "fname", "field:LOYALTY_TIER": "tier"}``. Every problem in
    it is reported before any row is read. Columns are matched exactly; when a mapped name is missing
    but exactly one column matches it ignoring case and surrounding spaces (real files have
    ``"Email "`` headers), that column is used.

    Per row: the e-mail is validated and normalised (see :func:`normalize_email`); invalid rows and
    repeated addresses (first occurrence wins) are counted and dropped. Other values go through
    :func:`to_text`; empty ones are omitted rather than sent as blanks that would wipe existing data,
    and values over the attribute's length limit are omitted (never cut) and counted.

    :param field_mapping: destination attribute -> source column.
    :param schema: what the destination accepts.
    :param columns: the source's column names, in row order.
    :param seen: an :class:`EmailSet` to deduplicate against (e.g. pre-seeded); a new one if omitted.
    :param names: all the source's column names when they are known to be names (``columns`` may hold
        only the mapped ones), ``None`` when they may be data (a CSV file's first line), ``()`` for
        ``columns``; only a missing column's message uses them.
    :param width: how many columns the source has, when ``names`` is ``None``.
    :raises ExportConfigurationError: if the mapping does not fit the schema or the columns.
    """

    def __init__(
        self,
        field_mapping: Mapping[str, str],
        schema: ContactSchema,
        columns: Sequence[str],
        *,
        seen: EmailSet | None = None,
        names: Sequence[str] | None = (),
        width: int | None = None,
    ) -> None:
        self.schema = schema
        self.columns = list(columns)
        # For the message on a missing column: the source's own column names when known to be names.
        self._names = list(columns) if names == () else names
        self._width = width
        self.invalid = 0
        self.invalid_reasons: dict[str, int] = {}
        self.duplicates = 0
        self.omitted_too_long: dict[str, int] = {}
        self.seen = seen if seen is not None else EmailSet()

        self._check_attributes(field_mapping, schema)
        resolved = self._resolve_columns(field_mapping, self.columns, self._names, self._width)
        self.resolved_mapping: dict[str, str] = {attr: self.columns[i] for attr, i in resolved.items()}

        standard_limit = schema.standard.get("email")
        self._email_max = min(
            MAX_EMAIL_LENGTH,
            schema.email_max_length,
            MAX_EMAIL_LENGTH if standard_limit is None else standard_limit,
        )
        self._email_index = resolved["email"]
        fields: list[tuple[str, int, int | None]] = []
        for attr, index in resolved.items():
            if attr == "email":
                continue
            limit = schema.standard.get(attr, schema.custom_max_length)
            fields.append((attr, index, limit))
        self._fields = tuple(fields)

    @staticmethod
    def _check_attributes(field_mapping: Mapping[str, str], schema: ContactSchema) -> None:
        dest = schema.destination
        if not field_mapping:
            raise ExportConfigurationError(
                "field_mapping is empty. Map at least the e-mail, e.g. {'email': '<email column>'}."
            )
        if "email" not in field_mapping:
            raise ExportConfigurationError(
                f"field_mapping has no 'email' attribute; {dest} identifies contacts by e-mail. "
                "Add 'email': '<email column>' to field_mapping."
            )
        prefix = schema.custom_prefix
        valid = ", ".join(sorted(schema.standard))
        custom: list[str] = []
        for attr, column in field_mapping.items():
            if not isinstance(attr, str) or not isinstance(column, str) or not column.strip():
                raise ExportConfigurationError(
                    f"field_mapping entry {attr!r} -> {column!r} is not attribute name -> column name. "
                    "Use non-empty strings on both sides, e.g. {'first_name': 'fname'}."
                )
            if attr in schema.standard:
                continue
            if prefix and attr.startswith(prefix):
                if not attr[len(prefix) :].strip():
                    raise ExportConfigurationError(
                        f"field_mapping attribute {attr!r} has the custom-field prefix but no field name. "
                        f"Write the {dest} custom field after the prefix, e.g. '{prefix}TIER'."
                    )
                custom.append(attr)
                continue
            raise ExportConfigurationError(
                f"field_mapping attribute {attr!r} is not a {dest} attribute. Use one of: {valid}; "
                f"or a custom field written as '{prefix}<name>'."
            )
        if schema.max_custom_fields is not None and len(custom) > schema.max_custom_fields:
            raise ExportConfigurationError(
                f"field_mapping maps {len(custom)} custom fields but {dest} accepts at most "
                f"{schema.max_custom_fields} per import. Remove {len(custom) - schema.max_custom_fields} "
                "of them."
            )

    @staticmethod
    def _resolve_columns(
        field_mapping: Mapping[str, str],
        columns: list[str],
        names: Sequence[str] | None,
        width: int | None,
    ) -> dict[str, int]:
        exact = {name: i for i, name in reversed(list(enumerate(columns)))}
        loose: dict[str, list[int]] = {}
        for i, name in enumerate(columns):
            loose.setdefault(column_key(name), []).append(i)
        resolved: dict[str, int] = {}
        missing: list[str] = []
        for attr, column in field_mapping.items():
            if column in exact:
                resolved[attr] = exact[column]
                continue
            candidates = loose.get(column_key(column), [])
            if len(candidates) == 1:
                resolved[attr] = candidates[0]
            elif candidates:
                matching = [columns[i] for i in candidates]
                raise ExportConfigurationError(
                    f"field_mapping column {column!r} (for {attr!r}) is not a column, and "
                    f"{len(candidates)} columns match it ignoring case and spaces: "
                    f"{', '.join(repr(name) for name in matching)}. Use the exact column name."
                )
            else:
                missing.append(column)
        if missing:
            absent = ", ".join(repr(name) for name in dict.fromkeys(missing))
            raise ExportConfigurationError(
                f"field_mapping names column(s) {absent} that the segment does not have. "
                f"{_describe_columns(columns, names, width, list(field_mapping.values()))} Fix "
                "field_mapping or the source."
            )
        # ``email`` first so contacts always start with it.
        return {"email": resolved["email"], **{a: i for a, i in resolved.items() if a != "email"}}

    def build(self, row: Sequence[Any]) -> dict[str, str] | None:
        """Build one contact, or return ``None`` (and count it) if the row is invalid or a duplicate.

        :param row: one source row, in ``columns`` order.
        """
        # Runs once per exported row: the common case (a valid text address) is checked inline, and
        # normalize_email only runs to find the reason of an invalid one. An empty address fails the
        # match, so it needs no test of its own.
        value = row[self._email_index]
        email = value.strip().lower() if type(value) is str else ""
        if not (
            len(email) <= self._email_max
            and email.isascii()
            and _email_match(email) is not None
            and (at := email.index("@")) <= MAX_LOCAL_PART_LENGTH
            and _labels_fit(email, at)
        ):
            checked = self._checked_email(value)
            if checked is None:
                return None
            email = checked
        if not self.seen.add(email):
            self.duplicates += 1
            return None
        contact = {"email": email}
        for attr, index, limit in self._fields:
            value = row[index]
            if value is None:
                continue
            text = value.strip() if type(value) is str else to_text(value)
            if not text:
                continue
            if limit is not None and len(text) > limit:
                self.omitted_too_long[attr] = self.omitted_too_long.get(attr, 0) + 1
                continue
            contact[attr] = text
        return contact

    def _checked_email(self, value: Any) -> str | None:
        """The normalised e-mail of a row that failed :meth:`build`'s quick check, or ``None`` (counted
        with its reason) when it is invalid."""
        checked, reason = normalize_email(value, self._email_max)
        if checked is None:
            self.invalid += 1
            key = reason or "malformed"
            self.invalid_reasons[key] = self.invalid_reasons.get(key, 0) + 1
        return checked
