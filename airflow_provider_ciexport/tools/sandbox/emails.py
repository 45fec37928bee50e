"""Email checks the two fake APIs apply, written independently of the provider's own validator."""

from __future__ import annotations

import re

# ActiveCampaign is a PHP application: model PHP's filter_var($email, FILTER_VALIDATE_EMAIL)
# without FILTER_FLAG_EMAIL_UNICODE, minus quoted local parts and IP-literal domains.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = rf"{_ATEXT}(?:\.{_ATEXT})*"
_LABEL = r"[a-z0-9]+(?:-+[a-z0-9]+)*"
# PHP wants the top-level label to start with a letter (or be an xn-- label).
_TLD = r"(?:[a-z][a-z0-9]*|xn--[a-z0-9]+)(?:-+[a-z0-9]+)*"
_AC_EMAIL = re.compile(rf"(?:{_LOCAL})@(?:(?:{_LABEL}\.){{1,126}}{_TLD})", re.IGNORECASE | re.ASCII)

_CC_EMAIL = re.compile(r"[^\s@\"(),:;<>\[\]\\]+@[^\s@\"(),:;<>\[\]\\]+\.[^\s@\"(),:;<>\[\]\\.]+")


def is_valid_ac_email(email: str) -> bool:
    """Whether ActiveCampaign's importer accepts ``email``.

    ASCII only, dot-atom local part of at most 64 characters, a domain made of hostname labels
    (each under 64 characters, at least two, the last starting with a letter), 254 characters in
    all.
    """
    if not email.isascii() or len(email) > 254:
        return False
    if _AC_EMAIL.fullmatch(email) is None:
        return False
    local, _, domain = email.rpartition("@")
    return len(local) <= 64 and all(len(label) < 64 for label in domain.split("."))


def is_valid_cc_email(email: str) -> bool:
    """Whether Constant Contact's importer takes ``email`` as an address (length is checked apart).

    Constant Contact is lenient: something@something.tld without spaces or special characters.
    """
    if _CC_EMAIL.fullmatch(email) is None:
        return False
    local = email.rpartition("@")[0]
    return len(local) <= 64 and not local.startswith(".") and not local.endswith(".") and ".." not in email
