"""Where the APIs live and which URLs may be used, without importing Airflow.

The hooks and the ``constantcontact_auth`` command share these; keeping Airflow out lets the command
start at once instead of after Airflow's several seconds of imports.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urljoin, urlsplit

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


def base_url_problem(url: str, what: str, conn_id: str | None) -> str | None:
    """What is wrong with an absolute API URL, or ``None``: HTTPS, or plain HTTP only to a loopback host.

    :param url: the URL to check.
    :param what: which setting it came from, for the message.
    :param conn_id: the connection it came from, for the message; ``None`` says "this connection" (a
        connection test, which Airflow runs under a random temporary id).
    """
    where = "this connection" if conn_id is None else f"connection '{conn_id}'"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url.strip():
        return (
            f"The {what} of {where} is not a valid URL. "
            "Set it to an absolute https:// URL, e.g. https://api.cc.email/v3."
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return (
            f"The {what} of {where} uses plain http:// to a non-local host. "
            "Use https:// (plain http is only allowed to a local sandbox such as http://127.0.0.1:8025)."
        )
    return None


def redirect_target(request_url: str | None, location: str | None) -> str:
    """Where a redirect answered to ``request_url`` points, as ``scheme://host[:port]``.

    The path and query are left out of messages: they may carry data. ``location`` may be relative.
    """
    parts = urlsplit(urljoin(request_url or "", location or ""))
    return f"{parts.scheme}://{parts.netloc}" if location and parts.netloc else "an address it did not give"
