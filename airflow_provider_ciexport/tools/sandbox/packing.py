"""Compact per-contact storage: attributes as JSON bytes with short keys.

A million contacts have to fit in memory, so each contact's attributes are one ``bytes`` object
(about 100 bytes) instead of a dict of strings (about 600), long attribute names are stored as
one or two letters, and the email is left out when it equals the (lower-case) lookup key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Packer:
    """Packs and unpacks attribute dicts.

    :param short_names: attribute name -> short code; codes must not be attribute names.
    """

    def __init__(self, short_names: Mapping[str, str]) -> None:
        self._short = dict(short_names)
        self._long = {code: name for name, code in short_names.items()}

    def pack(self, attrs: Mapping[str, Any], key: str) -> bytes:
        """``attrs`` as bytes; an ``email`` equal to ``key`` is implied, not stored."""
        short = self._short
        return _ENCODER.encode(
            {short.get(k, k): v for k, v in attrs.items() if not (k == "email" and v == key)}
        ).encode()

    def unpack(self, blob: bytes, key: str) -> dict[str, Any]:
        """The attributes packed in ``blob`` for the contact looked up by ``key``."""
        long = self._long
        attrs = {"email": key}
        attrs.update({long.get(k, k): v for k, v in json.loads(blob).items()})
        return attrs
