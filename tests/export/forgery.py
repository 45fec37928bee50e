"""What someone who can write the bucket, but holds no key, can do to a sync state file.

They know the file's layout (it is open source): they can change any entry and recompute any unkeyed
checksum. Only the HMAC under the workers' key stops them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from array import array
from pathlib import Path
from typing import Any

from airflow_provider_ciexport.export.state import MAGIC, MANAGED, email_key


def _sections(data: bytes) -> tuple[int, int, int]:
    """``(header end, entries, section bytes)``."""
    size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    header = json.loads(data[start : start + size])
    n = int(header["count"])
    return start + size, n, 18 * n + int(header["blob_bytes"])


def forge_flags(path: Path, changes: dict[str, int]) -> None:
    """Set the flags of the entries of these emails, and recompute the checksum without a key: the
    unkeyed checksum of the old format, or the best guess (an unkeyed SHA-256) in place of an HMAC."""
    data = bytearray(path.read_bytes())
    end, n, body = _sections(bytes(data))
    keys: array[int] = array("Q")
    keys.frombytes(bytes(data[end : end + 8 * n]))
    flags_at = end + 16 * n
    for email, flags in changes.items():
        data[flags_at + list(keys).index(email_key(email))] = flags
    trailer = len(data) - end - body
    if trailer == 16:
        data[end + body :] = hashlib.blake2b(bytes(data[end : end + body]), digest_size=16).digest()
    else:
        data[end + body :] = hashlib.sha256(bytes(data[: end + body])).digest()
    path.write_bytes(bytes(data))


def format_1_state(emails: list[str], flags: int, identity: dict[str, Any] | None = None) -> bytes:
    """A state as the provider wrote it before states were authenticated (format 1, generation 3)."""
    identity = identity or {
        "destination": "ActiveCampaign",
        "account": "https://acct.api-us1.com/api/3",
        "lists": ["2"],
        "mapping": {"email": "email"},
    }
    entries = sorted((email_key(e), e.encode()) for e in emails)
    keys = array("Q", [k for k, _ in entries])
    digests = array("Q", [1] * len(entries))
    body = (
        keys.tobytes()
        + digests.tobytes()
        + bytes([flags] * len(entries))
        + bytes(len(e) for _, e in entries)
        + b"".join(e for _, e in entries)
    )
    header = json.dumps(
        {
            "format": 1,
            "identity": identity,
            "generation": 3,
            "count": len(entries),
            "blob_bytes": sum(len(e) for _, e in entries),
        }
    ).encode()
    checksum = hashlib.blake2b(body, digest_size=16).digest()
    return MAGIC + len(header).to_bytes(8, "little") + header + body + checksum


def hkdf_v1_state(emails: list[str], secret: str, generation: int = 5) -> bytes:
    """A state as the provider signed it before its keys were derived with scrypt (HKDF-SHA256, no
    ``kdf`` in the header), under ``secret``."""
    prk = hmac.new(b"airflow-provider-ciexport sync state", secret.encode(), hashlib.sha256).digest()
    key = hmac.new(prk, b"sync-state hmac-sha256 v1\x01", hashlib.sha256).digest()
    entries = sorted((email_key(e), e.encode()) for e in emails)
    body = (
        array("Q", [k for k, _ in entries]).tobytes()
        + array("Q", [1] * len(entries)).tobytes()
        + bytes([MANAGED] * len(entries))
        + bytes(len(e) for _, e in entries)
        + b"".join(e for _, e in entries)
    )
    header = json.dumps(
        {
            "format": 2,
            "key_id": hmac.new(key, b"key id", hashlib.sha256).hexdigest()[:16],
            "identity": {
                "destination": "ActiveCampaign",
                "account": "https://acct.api-us1.com/api/3",
                "lists": ["2"],
                "mapping": {"email": "email"},
            },
            "generation": generation,
            "count": len(entries),
            "blob_bytes": sum(len(e) for _, e in entries),
        }
    ).encode()
    data = MAGIC + len(header).to_bytes(8, "little") + header + body
    return data + hmac.new(key, data, hashlib.sha256).digest()
