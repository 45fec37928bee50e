"""What may be shown of text that came from outside: a vendor's error answer, a driver's error.

Such text is written by someone else and may quote the data it was about ("Contact ann@example.com
(Ann, +1 415 555 0100) is invalid", ``invalid input syntax for type integer: "<value>"``). Messages
and log lines of the provider keep only what is documented and data-free (HTTP status, error codes
and keys, SQLSTATE) and show a vendor's free text only through :func:`scrub`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: How much of one vendor text is shown at most.
MAX_TEXT = 300
#: How much of one vendor text is looked at: values are matched here, before the text is shortened.
_WINDOW = MAX_TEXT * 2
#: The longest stretch of text compared with the values a request carried.
_MAX_VALUE = 120

_EMAIL = re.compile(r"[^\s@<>()\[\]{}\"',;:]*(?:@|%40)[^\s<>()\[\]{}\"',;:]*")
# A run of digits and the separators phone numbers, dates and long numbers are written with.
_NUMBERISH = re.compile(r"\+?\(?\d[\d\s().+\-/]*\d")
_KEY = re.compile(r"[A-Za-z0-9_.:/\[\]\-]{1,100}")
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"\w+")
#: Request headers whose values (credentials) must never come back in a message.
_SECRET_HEADERS = ("api-token", "authorization")


def scrub(text: str, carried: Iterable[str] = ()) -> str:
    """``text`` without anything that may be personal data or a secret, on one line, shortened.

    Removed: what looks like an e-mail address (``<email>``), a phone number, a date or any other
    run of seven or more digits (``<number>``), and every value of ``carried`` (``<value>``),
    compared ignoring case, also word by word for a value of several words.

    :param text: text written by someone else (a vendor's message).
    :param carried: the values the request carried (see :func:`request_values`); read once.
    """
    (shown,) = scrub_many([text], carried)
    return shown


def scrub_many(texts: Sequence[str], carried: Iterable[str] = ()) -> list[str]:
    """:func:`scrub` for several texts, reading ``carried`` (maybe a 4 MB import's values) once."""
    prepared = [
        _NUMBERISH.sub(_long_number, _EMAIL.sub("<email>", shorten(" ".join(str(t).split()), _WINDOW)))
        for t in texts
    ]
    candidates = _candidates(prepared)
    found = _carried_candidates(candidates, carried) if candidates else set()
    spans = sorted(
        (span for value in found for span in candidates[value]), key=lambda span: (span[0], span[1], -span[2])
    )
    return [
        shorten(_replaced(text, (span for span in spans if span[0] == index)), MAX_TEXT)
        for index, text in enumerate(prepared)
    ]


def _candidates(texts: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
    """Every stretch of the texts that starts and ends at a token or word boundary, lowercased, with
    where it is: ``(text index, start, end)``."""
    # The carried values are then streamed past the candidates, never held.
    candidates: dict[str, list[tuple[int, int, int]]] = {}
    for index, text in enumerate(texts):
        bounds = [*_TOKEN.finditer(text), *_WORD.finditer(text)]
        starts = sorted({m.start() for m in bounds})
        ends = sorted({m.end() for m in bounds})
        for start in starts:
            for end in ends:
                if start < end <= start + _MAX_VALUE:
                    candidates.setdefault(text[start:end].lower(), []).append((index, start, end))
    return candidates


def _carried_candidates(candidates: Mapping[str, object], carried: Iterable[str]) -> set[str]:
    """The candidates that are a carried value, or a word (three letters or more) of one."""
    found: set[str] = set()
    for value in carried:
        normal = " ".join(value.split()).lower()
        if len(normal) < 2:
            continue
        if normal in candidates:
            found.add(normal)
        if " " in normal:
            found.update(word for word in normal.split(" ") if len(word) >= 3 and word in candidates)
    return found


def _replaced(text: str, spans: Iterable[tuple[int, int, int]]) -> str:
    """``text`` with each span (sorted, an overlapping one skipped) replaced by ``<value>``."""
    parts: list[str] = []
    position = 0
    for _, start, end in spans:
        if start >= position:
            parts += [text[position:start], "<value>"]
            position = end
    parts.append(text[position:])
    return "".join(parts)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, without the token the cut would go through.

    A value cut in two is no longer the value the request carried, so it would not be recognised;
    the part before the cut is left out instead of shown.
    """
    if len(text) <= limit:
        return text
    return text[: limit + 1].rpartition(" ")[0].rstrip()


def _long_number(match: re.Match[str]) -> str:
    return "<number>" if sum(c.isdigit() for c in match[0]) >= 7 else match[0]


def request_values(request: Any) -> Iterator[str]:
    """Every value a ``requests.PreparedRequest`` carried: query values, credentials, body strings.

    A JSON body is walked for its strings and numbers (not its keys); a form body for its values.
    """
    if request is None:
        return
    for _, value in parse_qsl(urlsplit(str(getattr(request, "url", "") or "")).query):
        yield value
    headers: Mapping[str, str] = getattr(request, "headers", None) or {}
    for name in _SECRET_HEADERS:
        secret = headers.get(name)
        if secret:
            yield str(secret)
            scheme, _, credential = str(secret).partition(" ")
            yield credential
            if scheme.lower() == "basic":
                with contextlib.suppress(ValueError):
                    yield from base64.b64decode(credential).decode("utf-8").split(":", 1)
    body = getattr(request, "body", None)
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or not body:
        return
    try:
        payload = json.loads(body)
    except ValueError:
        for _, value in parse_qsl(body.decode("utf-8", "replace")):
            yield value
        return
    yield from _json_values(payload)


def _json_values(payload: Any) -> Iterator[str]:
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            yield str(item)


def as_key(value: Any) -> str | None:
    """``value`` if it has the form of a documented error code or key (``invalid_grant``,
    ``contacts.api.validation.error``, ``field_invalid``), else ``None``."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if _KEY.fullmatch(text) else None


#: How many errors of one answer are described, and of a bulk import's refused contacts.
_MAX_ERRORS = 5
_MAX_REASONS = 3


def vendor_error_text(payload: Any, carried: Iterable[str] = ()) -> str:
    """A short description of a vendor's error body that holds no personal data or secret.

    Kept: Constant Contact's ``error_key``, ActiveCampaign's ``code`` and ``source`` (field names) and
    the position of a refused contact in a bulk import, each unless it is a value the request
    carried; the free text (``message``, ``title``, ``detail``, ``failureReason``,
    ``error_message``) only through :func:`scrub`.

    :param payload: the answer's JSON body.
    :param carried: the values the request carried.
    """
    # (prefix, text, is a key): gathered first, so that the carried values are read once.
    entries = _error_entries(payload)
    shown = scrub_many([text for _, text, _ in entries], carried)
    texts = [
        f"{prefix}{scrubbed}"
        for (prefix, text, is_key), scrubbed in zip(entries, shown, strict=True)
        if scrubbed and (not is_key or scrubbed == text)  # a key that is a value is not shown at all
    ]
    return shorten("; ".join(dict.fromkeys(texts)), MAX_TEXT) or "no details"


def _error_entries(payload: Any) -> list[tuple[str, str, bool]]:
    """What :func:`vendor_error_text` may show of an error body, as ``(prefix, text, is a key)``."""
    entries: list[tuple[str, str, bool]] = []
    errors: list[Any] = payload if isinstance(payload, list) else [payload]
    for error in errors[:_MAX_ERRORS]:
        if not isinstance(error, dict):
            continue
        _add_key(entries, error.get("error_key"))  # Constant Contact
        _add_free(entries, error.get("error_message"))
        _add_free(entries, error.get("message"))  # ActiveCampaign
        for item in (error.get("errors") or [])[:_MAX_ERRORS]:
            if isinstance(item, dict):
                _add_item(entries, item)
        for reason in (error.get("failureReasons") or [])[:_MAX_REASONS]:
            _add_failure_reason(entries, reason)
    return entries


def _add_key(entries: list[tuple[str, str, bool]], value: Any) -> None:
    text = as_key(value)
    if text:
        entries.append(("", text, True))


def _add_free(entries: list[tuple[str, str, bool]], text: Any, prefix: str = "") -> None:
    if isinstance(text, str) and text.strip():
        entries.append((prefix, text, False))


def _add_item(entries: list[tuple[str, str, bool]], item: dict[str, Any]) -> None:
    """One of ActiveCampaign's ``errors``: its code, the field names of its source, its free text."""
    source = item.get("source")
    _add_key(entries, item.get("code"))
    for value in (source if isinstance(source, dict) else {}).values():
        _add_key(entries, value)
    _add_free(entries, item.get("title"))
    _add_free(entries, item.get("detail"))


def _add_failure_reason(entries: list[tuple[str, str, bool]], reason: Any) -> None:
    """One of a bulk import's ``failureReasons``: the refused contact's position and the reason."""
    if isinstance(reason, dict):
        position = reason.get("contact")
        is_position = isinstance(position, int) and not isinstance(position, bool)
        _add_free(entries, reason.get("failureReason"), f"contact {position}: " if is_position else "")
    else:
        _add_free(entries, reason)


#: What the class (first two characters) of an SQLSTATE means (ISO/IEC 9075, used by PostgreSQL,
#: MySQL, Snowflake, ...): enough to tell where to look, with nothing from the failing row.
_SQLSTATE_CLASSES = {
    "08": "connection exception",
    "0A": "feature not supported",
    "22": "data exception: a value does not fit its type or function",
    "23": "integrity constraint violation",
    "25": "invalid transaction state",
    "28": "invalid authorization",
    "3D": "unknown database",
    "3F": "unknown schema",
    "40": "transaction rolled back",
    "42": "syntax error or access rule violation: a misspelt name or a missing permission",
    "53": "insufficient resources",
    "54": "program limit exceeded",
    "57": "operator intervention: the query was cancelled",
    "58": "system error",
    "XX": "internal error",
}
_CODE = re.compile(r"[A-Za-z0-9_]{1,32}")


def driver_error(err: BaseException) -> str:
    """A database driver's error without its text: the type and the SQLSTATE or driver code.

    Drivers quote values in their messages (PostgreSQL's ``invalid input syntax for type integer:
    "<value>"``, SQLite's ``JSON path error near '<value>'``), so the message is never shown. Read:
    ``sqlstate`` (psycopg 3, mysql-connector, Snowflake), ``pgcode`` (psycopg2), ``sqlite_errorname``
    (sqlite3), a MySQL error number (``args[0]`` of MySQLdb and PyMySQL, ``errno``), also on the
    driver error a wrapper keeps in ``orig`` (SQLAlchemy).

    :return: e.g. ``"DataError, SQLSTATE 22P02 (data exception: ...)"`` or ``"OperationalError
        (SQLITE_ERROR)"``.
    """
    parts = [type(err).__name__]
    for source in (err, getattr(err, "orig", None)):
        if source is None:
            continue
        state = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(state, str) and _CODE.fullmatch(state):
            meaning = _SQLSTATE_CLASSES.get(state[:2].upper())
            parts.append(f"SQLSTATE {state}" + (f" ({meaning})" if meaning else ""))
            break
        name = getattr(source, "sqlite_errorname", None)
        if isinstance(name, str) and _CODE.fullmatch(name):
            parts.append(name)
            break
        number = getattr(source, "errno", None)
        args = getattr(source, "args", ())
        if number is None and args and isinstance(args[0], int) and not isinstance(args[0], bool):
            number = args[0]
        if isinstance(number, int) and not isinstance(number, bool):
            parts.append(f"error {number}")
            break
    return ", ".join(parts)


#: Longest text that passes for a column name, and most words in one.
_MAX_NAME = 64
_MAX_NAME_WORDS = 6


def looks_like_a_name(text: str) -> bool:
    """Whether ``text`` could be a column name rather than a value: short, a letter in it, no ``@``,
    fewer than seven digits ("First Name", "zip_code", "Phone 2"; not "ann@example.com",
    "+1 415 555 0100", "1985-04-12" or a sentence)."""
    return (
        len(text) <= _MAX_NAME
        and len(text.split()) <= _MAX_NAME_WORDS
        and "@" not in text
        and "%40" not in text
        and any(c.isalpha() for c in text)
        and sum(c.isdigit() for c in text) < 7
        and text.isprintable()
    )


def looks_like_a_header(names: Iterable[str]) -> bool:
    """Whether every one of ``names`` could be a column name (see :func:`looks_like_a_name`).

    A file without a header row turns its first data row into "column names"; one value that does not
    look like a name (an address, a phone number) makes the whole line data, so that no value of
    that row (a first name next to the address) is shown either.
    """
    return all(looks_like_a_name(name.strip()) for name in names if name.strip())
