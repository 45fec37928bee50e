"""Turning rows into contacts: e-mail validation, mapping checks, value cleaning and deduplication."""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_ciexport.core.contacts import (
    ContactBuilder,
    ContactSchema,
    EmailIndex,
    EmailSet,
    normalize_email,
    to_text,
)
from airflow_provider_ciexport.exceptions import ExportConfigurationError

AC = ContactSchema(
    destination="ActiveCampaign",
    standard={"email": 255, "first_name": 255, "last_name": 255, "phone": 20},
    custom_prefix="field:",
    custom_max_length=30,
    max_custom_fields=2,
)
CC = ContactSchema(
    destination="Constant Contact",
    standard={"email": 80, "first_name": 50, "last_name": 50},
    custom_prefix="cf:",
    custom_max_length=50,
    email_max_length=80,
)
COLUMNS = ["email", "fname", "lname", "phone", "tier"]
MAPPING = {
    "email": "email",
    "first_name": "fname",
    "last_name": "lname",
    "phone": "phone",
    "field:TIER": "tier",
}


def builder(
    mapping: dict[str, str] | None = None, columns: list[str] | None = None, schema: ContactSchema = AC
) -> ContactBuilder:
    return ContactBuilder(
        MAPPING if mapping is None else mapping, schema, COLUMNS if columns is None else columns
    )


# -- e-mail validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("x@ex-ample.museum", "x@ex-ample.museum"),
        ("UPPER@EXAMPLE.COM", "upper@example.com"),
        ("  padded@example.com  ", "padded@example.com"),
        ("\tpadded@example.com\r\n", "padded@example.com"),
        ("a_b-c=d@example.travel", "a_b-c=d@example.travel"),
        ("!#$%&'*+/=?^_`{|}~-@example.org", "!#$%&'*+/=?^_`{|}~-@example.org"),
        ("user@xn--80ak6aa92e.xn--p1ai", "user@xn--80ak6aa92e.xn--p1ai"),
        ("user@a1.b-2.example.com", "user@a1.b-2.example.com"),
        ("1234@123.example.com", "1234@123.example.com"),
        ("l" * 64 + "@example.com", "l" * 64 + "@example.com"),
        ("a@" + "d" * 63 + ".com", "a@" + "d" * 63 + ".com"),
    ],
)
def test_odd_but_valid_addresses_are_accepted_and_normalised(raw: str, expected: str) -> None:
    assert normalize_email(raw) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("plainaddress", "malformed"),
        ("@example.com", "malformed"),
        ("a@b", "malformed"),
        ("a@@b.com", "malformed"),
        ("a..b@example.com", "malformed"),
        (".a@example.com", "malformed"),
        ("a.@example.com", "malformed"),
        ("a@-example.com", "malformed"),
        ("a@example-.com", "malformed"),
        ("a@example..com", "malformed"),
        ("a@.example.com", "malformed"),
        ("a@example.com.", "malformed"),
        ("a b@example.com", "malformed"),
        ('"quoted"@example.com', "malformed"),
        ('"a b"@example.com', "malformed"),
        ("a@[127.0.0.1]", "malformed"),
        ("a@127.0.0.1", "malformed"),
        ("a@example.c0m", "malformed"),
        ("a@example.c", "malformed"),
        ("a@example.xn--", "malformed"),
        ("a(comment)@example.com", "malformed"),
        ("a,b@example.com", "malformed"),
        ("a@exa_mple.com", "malformed"),
        ("a\nb@example.com", "malformed"),
        ("a@exam\tple.com", "malformed"),
        ("a@" + "d" * 64 + ".com", "malformed"),
        ("jöhn@example.com", "non_ascii"),
        ("john@exämple.com", "non_ascii"),
        ("l" * 65 + "@example.com", "too_long"),
        ("a@" + ("d" * 62 + ".") * 4 + "com", "too_long"),
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        (4155550100, "not_text"),
        (1.5, "not_text"),
        (True, "not_text"),
    ],
)
def test_invalid_addresses_are_rejected_with_a_reason(raw: Any, reason: str) -> None:
    assert normalize_email(raw) == (None, reason)


def test_the_254_character_limit_and_a_lower_destination_limit() -> None:
    at_limit = "ab@" + ".".join(["d" * 61] * 4) + ".com"
    assert len(at_limit) == 254
    assert normalize_email(at_limit) == (at_limit, None)
    assert normalize_email("b" + at_limit) == (None, "too_long")
    assert normalize_email("a" * 30 + "@example.com", max_length=40) == (None, "too_long")
    assert normalize_email("a" * 20 + "@example.com", max_length=40)[1] is None


def test_bytes_addresses_are_read_as_text() -> None:
    assert normalize_email(b" Bob@Example.com ") == ("bob@example.com", None)
    assert normalize_email("j\u00f6hn@example.com".encode()) == (None, "non_ascii")


# -- mapping validation ----------------------------------------------------------------------------


def config_error(
    mapping: dict[str, str], columns: list[str] | None = None, schema: ContactSchema = AC
) -> str:
    with pytest.raises(ExportConfigurationError) as info:
        builder(mapping, columns, schema)
    return str(info.value)


def test_an_empty_mapping_is_refused() -> None:
    assert "field_mapping is empty" in config_error({})


def test_a_mapping_without_email_is_refused() -> None:
    message = config_error({"first_name": "fname"})
    assert "no 'email'" in message and "Add 'email'" in message


def test_an_unknown_attribute_names_it_and_lists_the_valid_ones() -> None:
    message = config_error({"email": "email", "firstname": "fname"})
    assert "'firstname'" in message
    assert "first_name" in message and "phone" in message
    assert "'field:<name>'" in message


def test_a_custom_prefix_without_a_name_is_refused() -> None:
    message = config_error({"email": "email", "field:": "tier"})
    assert "'field:'" in message and "no field name" in message


def test_too_many_custom_fields_are_refused() -> None:
    mapping = {"email": "email", "field:A": "tier", "field:B": "tier", "field:C": "tier"}
    message = config_error(mapping)
    assert "3 custom fields" in message and "at most 2" in message


def test_missing_columns_are_named_and_the_existing_ones_listed() -> None:
    message = config_error({"email": "e_mail", "first_name": "first", "last_name": "lname"})
    assert "'e_mail'" in message and "'first'" in message
    assert "'email', 'fname', 'lname', 'phone', 'tier'" in message


@pytest.mark.parametrize(
    "first_row",
    [
        ["jane.doe@example.com", "Jane", "Doe"],
        ["Jane", "Doe", "+1 415 555 0100"],
        ["Jane", "Doe", "1985-04-12"],
        ["1043", "Jane", "Doe"],
    ],
)
def test_a_header_less_file_shows_no_value_of_its_first_row(first_row: list[str]) -> None:
    # The first data row became the "header": none of its values may be echoed into logs.
    message = config_error({"email": "email"}, columns=first_row)
    for value in first_row:
        assert value not in message
    assert "Its 3 column names look like data" in message
    assert "is the first line a data row instead of a header row?" in message


def test_real_header_names_are_shown() -> None:
    columns = ["E-mail Address", "First Name", "zip_code", "Phone 2", "Date of birth (YYYY-MM-DD)"]
    message = config_error({"email": "email"}, columns=columns)
    assert "Its columns are: " + ", ".join(repr(c) for c in columns) + "." in message


def test_columns_match_ignoring_case_and_surrounding_spaces_when_unambiguous() -> None:
    b = builder({"email": "Email", "first_name": "First Name"}, columns=["EMAIL ", " first name", "x"])
    assert b.resolved_mapping == {"email": "EMAIL ", "first_name": " first name"}
    assert b.build(["A@Example.com", "Ann", "?"]) == {"email": "a@example.com", "first_name": "Ann"}


def test_an_exact_column_name_wins_over_a_loose_match() -> None:
    b = builder({"email": "Email"}, columns=["email", "Email"])
    assert b.build(["first@example.com", "second@example.com"]) == {"email": "second@example.com"}


def test_an_ambiguous_loose_match_is_refused() -> None:
    message = config_error({"email": "EMAIL"}, columns=["email", "Email "])
    assert "2 columns match" in message and "exact column name" in message


# -- building contacts -----------------------------------------------------------------------------


def test_a_clean_row_becomes_a_contact_with_destination_keys() -> None:
    contact = builder().build(["Ann@Example.com", "Ann", "Lee", "4155550100", "gold"])
    assert contact == {
        "email": "ann@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "phone": "4155550100",
        "field:TIER": "gold",
    }


def test_blank_values_are_omitted_not_sent_as_empty() -> None:
    contact = builder().build(["ann@example.com", None, "", "   ", " gold "])
    assert contact == {"email": "ann@example.com", "field:TIER": "gold"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4155550100.0, "4155550100"),
        (4155550100, "4155550100"),
        (2.5, "2.5"),
        (Decimal("4155550100"), "4155550100"),
        (Decimal("4155550100.00"), "4155550100"),
        (Decimal("12.50"), "12.50"),
        (True, "true"),
        (False, "false"),
        (date(2024, 2, 29), "2024-02-29"),
        (datetime(2024, 2, 29, 13, 5, tzinfo=timezone.utc), "2024-02-29T13:05:00+00:00"),
        (b" caf\xc3\xa9 ", "caf\u00e9"),
        ({"a": [1, "\u00e9"]}, '{"a":[1,"\u00e9"]}'),
        (math.nan, ""),
    ],
)
def test_values_are_converted_to_the_text_a_destination_expects(value: Any, text: str) -> None:
    assert to_text(value) == text


def test_a_phone_read_as_float_is_sent_without_decimal_part() -> None:
    contact = builder().build(["ann@example.com", "Ann", "Lee", 4155550100.0, None])
    assert contact is not None and contact["phone"] == "4155550100"


def test_too_long_values_are_omitted_and_counted_never_cut() -> None:
    b = builder()
    contact = b.build(["ann@example.com", "A" * 255, "L" * 256, "+1 415 555 0100 ext. 99", "t" * 31])
    assert contact == {"email": "ann@example.com", "first_name": "A" * 255}
    assert b.omitted_too_long == {"last_name": 1, "phone": 1, "field:TIER": 1}


def test_the_destination_email_limit_applies() -> None:
    b = builder({"email": "email"}, schema=CC)
    assert b.build(["a" * 70 + "@example.com"]) is None
    assert b.invalid_reasons == {"too_long": 1}


def test_invalid_rows_are_dropped_and_counted_by_reason() -> None:
    b = builder({"email": "email", "first_name": "fname"})
    rows: list[list[Any]] = [
        ["ok@example.com", "Ok"],
        [None, "No email"],
        ["  ", "Blank"],
        [4155550100, "Number"],
        ["not-an-email", "Bad"],
        ["jöhn@example.com", "Accent"],
        ["also.ok@example.com", None],
    ]
    contacts = [b.build(row) for row in rows]

    assert [c["email"] for c in contacts if c] == ["ok@example.com", "also.ok@example.com"]
    assert b.invalid == 5
    assert b.invalid_reasons == {"missing": 2, "not_text": 1, "malformed": 1, "non_ascii": 1}


def test_duplicates_by_normalised_email_keep_the_first_row() -> None:
    b = builder({"email": "email", "first_name": "fname"})
    rows = [["ann@example.com", "First"], [" ANN@example.COM ", "Second"], ["bob@example.com", "Bob"]]
    contacts = [b.build(row) for row in rows]

    assert contacts == [{"email": "ann@example.com", "first_name": "First"}, None, contacts[2]]
    assert b.duplicates == 1 and b.invalid == 0


def test_a_pre_seeded_email_set_skips_addresses_already_exported() -> None:
    seen = EmailSet()
    seen.update(["ann@example.com"])
    b = ContactBuilder({"email": "email"}, AC, ["email"], seen=seen)

    assert b.build(["Ann@example.com"]) is None
    assert b.build(["bob@example.com"]) == {"email": "bob@example.com"}
    assert b.duplicates == 1


# -- EmailSet --------------------------------------------------------------------------------------


def test_email_set_add_reports_new_and_known_addresses() -> None:
    seen = EmailSet()
    assert seen.add("a@example.com") is True
    assert seen.add("a@example.com") is False
    assert "a@example.com" in seen and "b@example.com" not in seen
    assert len(seen) == 1


def test_email_set_stays_exact_and_compact_across_many_growths() -> None:
    seen = EmailSet()
    n = 200_000
    assert all(seen.add(f"user{i}@example.com") for i in range(n))
    assert not any(seen.add(f"user{i}@example.com") for i in range(0, n, 7))
    assert len(seen) == n
    assert all(f"user{i}@example.com" in seen for i in range(0, n, 1000))
    assert f"user{n}@example.com" not in seen
    # At most half full, never more than 4x: 16-32 bytes per address (a set of str is ~100).
    assert 16 <= seen.nbytes / n <= 32


def test_email_index_keeps_the_number_each_address_was_added_with_across_growths() -> None:
    index = EmailIndex()
    n = 100_000
    for i in range(n):
        index.number = i + 1
        assert index.add(f"user{i}@example.com")
    index.number = 0
    # A repeat is refused and keeps the number of its first occurrence.
    assert not index.add("user777@example.com")
    assert [index.first(f"user{i}@example.com") for i in (0, 777, n - 1)] == [1, 778, n]
    assert index.first("new@example.com") is None and len(index) == n
    assert 20 <= index.nbytes / n <= 48  # 12 bytes a slot, at most half full


def test_email_set_can_be_sized_up_front() -> None:
    seen = EmailSet(capacity=100_000)
    size = seen.nbytes
    seen.update(f"user{i}@example.com" for i in range(100_000))
    assert seen.nbytes == size


def test_email_set_update_counts_only_new_addresses() -> None:
    seen = EmailSet()
    assert seen.update(["a@example.com", "b@example.com", "a@example.com"]) == 2
    assert seen.update(["b@example.com", "c@example.com"]) == 1
