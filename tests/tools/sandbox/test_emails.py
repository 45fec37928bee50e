"""The email rules each fake API applies (``emails``), checked without a server."""

from __future__ import annotations

import pytest

from airflow_provider_ciexport.tools.sandbox.emails import is_valid_ac_email, is_valid_cc_email


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("ann@example.com", True),
        ("Ann.Lee+news@mail.example.co.uk", True),
        ("o'brien@example.org", True),
        ("a-b@xn--bcher-kva.example", True),
        ("ann@example", False),  # no dot in the domain
        ("ann@@example.com", False),
        (".ann@example.com", False),
        ("ann.@example.com", False),
        ("an..n@example.com", False),
        ('"ann"@example.com', False),  # quoted local part
        ("ann@[127.0.0.1]", False),  # IP literal
        ("ann@-example.com", False),
        ("ann@example.1com", False),  # top-level label must start with a letter
        ("ann@exa_mple.com", False),
        ("jörg@example.com", False),  # ASCII only
        ("ann @example.com", False),
        ("a" * 65 + "@example.com", False),
        ("a" * 64 + "@example.com", True),
        ("ann@" + "a" * 64 + ".com", False),
        ("a@" + ".".join(["b" * 60] * 4) + ".com", True),
        ("a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".commmm", True),  # 254 characters
        ("a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".commmmm", False),  # 255 characters
    ],
)
def test_ac_email_rules_follow_php_filter_validate_email(email: str, valid: bool) -> None:
    assert len("a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".commmm") == 254
    assert is_valid_ac_email(email) is valid


def test_cc_email_rules_are_lenient_but_need_a_domain() -> None:
    assert is_valid_cc_email("ann@example.com")
    assert not is_valid_cc_email("ann@example")
    assert not is_valid_cc_email("ann example.com")
    assert not is_valid_cc_email("ann@exa mple.com")
