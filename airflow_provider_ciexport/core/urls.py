"""Where the APIs live and which URLs may be used, without importing Airflow.

The hooks and the ``constantcontact_auth`` command share these; keeping Airflow out lets the command
start at once instead of after Airflow's several seconds of imports.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from urllib.parse import urljoin, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

CC_API_BASE_URL = "https://api.cc.email/v3"
CC_TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"  # noqa: S105


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` (a name or an IP address, no port) is this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_origin(url: str) -> str | None:
    """``scheme://host:port`` of ``url`` when its host is this machine (a local sandbox), else ``None``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.hostname and is_loopback(parts.hostname) else None


def unsafe_character(value: str) -> str | None:
    """The kind of character in ``value`` that no API address contains, or ``None``.

    A backslash is read as a path separator by some URL parsers and as part of the user name by
    others (``http://other-host\\@127.0.0.1/`` names two different hosts), and spaces and control
    characters are read differently again: an address with any of them is refused, not interpreted.
    """
    if "\\" in value:
        return "a backslash (\\)"
    for char in value:
        if char.isspace():
            return "spaces or line breaks"
        if unicodedata.category(char) in ("Cc", "Cf"):
            return "a control character"
    return None


def base_url_problem(url: str, what: str, conn_id: str | None) -> str | None:
    """What is wrong with an absolute API URL, or ``None``: HTTPS, or plain HTTP only to a loopback host.

    The URL is read with urllib3's parser, the one that picks the host ``requests`` connects to, and
    refused when another reading could name a different host: a backslash, a space or control
    character, a user name or password (``user@host``), or any difference between urllib3's host and
    port and those of :func:`urllib.parse.urlsplit`.

    :param url: the URL to check.
    :param what: which setting it came from, for the message.
    :param conn_id: the connection it came from, for the message; ``None`` says "this connection" (a
        connection test, which Airflow runs under a random temporary id).
    """
    where = "this connection" if conn_id is None else f"connection '{conn_id}'"
    value = url.strip()
    fix = (
        "Set it to the absolute https:// address alone, e.g. https://api.cc.email/v3 "
        "(plain http:// only to a local sandbox such as http://127.0.0.1:8025)."
    )
    bad = unsafe_character(value)
    if bad is not None:
        return f"The {what} of {where} contains {bad}. Nothing was sent. {fix}"
    invalid = f"The {what} of {where} is not a valid URL. Nothing was sent. {fix}"
    try:
        parsed = parse_url(value)
        split = urlsplit(value)
        split_port = split.port
    except (LocationParseError, ValueError):
        return invalid
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return invalid
    if parsed.auth is not None or "@" in split.netloc:
        return (
            f"The {what} of {where} contains a user name or password (before '@'); credentials never go "
            f"in an address. Nothing was sent. {fix}"
        )
    host = parsed.host.strip("[]").lower()
    if host != (split.hostname or "").lower() or parsed.port != split_port:
        return f"The {what} of {where} reads as two different hosts. Nothing was sent. {fix}"
    if parsed.scheme == "http" and not is_loopback(host):
        return (
            f"The {what} of {where} uses plain http:// to a non-local host. Nothing was sent. "
            "Use https:// (plain http is only allowed to a local sandbox such as http://127.0.0.1:8025)."
        )
    return None


def redirect_target(request_url: str | None, location: str | None) -> str:
    """Where a redirect answered to ``request_url`` points, as ``scheme://host[:port]``.

    The path and query are left out of messages: they may carry data. ``location`` may be relative.
    """
    parts = urlsplit(urljoin(request_url or "", location or ""))
    return f"{parts.scheme}://{parts.netloc}" if location and parts.netloc else "an address it did not give"
