"""Contacts go out as standard compact JSON, whatever their text holds."""

from __future__ import annotations

import json

import pytest

from airflow_provider_ciexport.hooks.base import encode_json

AWKWARD = [
    "Siobhán",
    "Zoë 🎉 李",
    'say "hi"',
    "back\\slash",
    "line\nbreak\ttab\r",
    "\x00\x1f\x7f",
    "\u2028\u2029",
    "</script>",
    "x" * 5000,
    "",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_contacts_encode_byte_for_byte_as_compact_json(value: str) -> None:
    contact = {"email": "a@example.com", "first_name": value, "cf:note": value, "birthday_month": 7}
    body = encode_json(contact)
    assert body == json.dumps(contact, separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(body) == contact
