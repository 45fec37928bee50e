"""Constant Contact account data and bulk-activity semantics, independent of HTTP."""

from __future__ import annotations

import csv
import heapq
import io
import json
import re
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.emails import is_valid_cc_email
from airflow_provider_ciexport.tools.sandbox.packing import Packer
from airflow_provider_ciexport.tools.sandbox.recording import Recorder
from airflow_provider_ciexport.tools.sandbox.seed import CC_CUSTOM_FIELDS, CC_LISTS, CCFieldSeed

MAX_IMPORT_CONTACTS = 40_000  # the import must have fewer
MAX_IMPORT_BODY_BYTES = 4_000_000  # beyond this the body is silently cut
MAX_LISTS_PER_REQUEST = 50
MAX_CUSTOM_FIELDS_PER_CONTACT = 25
MAX_CUSTOM_FIELD_VALUE = 255
MAX_REMOVE_CONTACT_IDS = 500
#: Fields a ``contact_exports`` activity can write, with their CSV headers in each style.
EXPORT_FIELDS = {
    "contact_id": {"snake": "contact_id", "title": "Contact Id"},
    "email_address": {"snake": "email_address", "title": "Email address"},
    "first_name": {"snake": "first_name", "title": "First Name"},
    "last_name": {"snake": "last_name", "title": "Last Name"},
    "permission_to_send": {"snake": "permission_to_send", "title": "Email Permission Status"},
}
EXPORT_STATUSES = ("all", "active", "unsubscribed")
#: ``GET /v3/contacts``'s ``status`` values (one or more, comma-separated); without it, every contact
#: but the deleted ones. The sandbox's contacts are only ever ``active``, ``unsubscribed`` or ``deleted``.
CONTACT_STATUSES = (
    "all",
    "active",
    "deleted",
    "not_set",
    "pending_confirmation",
    "temp_hold",
    "unsubscribed",
)
#: What ``include_membership_count`` takes: ``all`` members of a list, or only the ``active`` (mailable).
MEMBERSHIP_COUNTS = ("all", "active")
SEED_TIME = "2024-01-01T00:00:00.000Z"
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONTACT_ID_PREFIX = "cccccccc-0000-4000-8000-"
_CONTACT_ID_RE = re.compile(re.escape(_CONTACT_ID_PREFIX) + r"([0-9a-f]{12})")

_ADDRESS_LIMITS = {"street": 255, "street2": 255, "city": 50, "state": 50, "zip": 50, "country": 50}
#: JSON-import properties and their maximum lengths (from the V3 spec's JsonImportContact;
#: None where it documents none).
FIELD_LIMITS: dict[str, int | None] = {
    "first_name": 50,
    "last_name": 50,
    "job_title": 50,
    "company_name": 50,
    "phone": 50,
    "home_phone": 50,
    "work_phone": 50,
    "mobile_phone": 50,
    "other_phone": 50,
    "anniversary": None,
    "sms_number": 16,
    "sms_consent_date": 16,
    **_ADDRESS_LIMITS,
    **{f"{kind}_{k}": v for kind in ("home", "work", "other") for k, v in _ADDRESS_LIMITS.items()},
}
INT_FIELDS = {"birthday_month": (1, 12), "birthday_day": (1, 31)}
#: The spec spells this one with a space; accept it and store the underscore form.
KEY_ALIASES = {"home country": "home_country"}
_PACKER = Packer(
    {
        "email": "e",
        "first_name": "f",
        "last_name": "l",
        "phone": "p",
        "job_title": "j",
        "company_name": "c",
        "cf": "C",
    }
)


def contact_id_of(num: int) -> str:
    """The UUID-shaped id of the ``num``-th contact."""
    return f"{_CONTACT_ID_PREFIX}{num:012x}"


def contact_num_of(contact_id: str) -> int | None:
    """Inverse of :func:`contact_id_of` (None for an id this sandbox never issued)."""
    match = _CONTACT_ID_RE.fullmatch(contact_id)
    return int(match.group(1), 16) if match else None


def iso_now() -> str:
    """The current UTC time as the API prints it."""
    return iso_at(time.time())


def iso_at(at: float) -> str:
    """A Unix time as the API prints date-times (``2024-01-01T00:00:00.000Z``); 0 is the seed time."""
    if not at:
        return SEED_TIME
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Joins the values of a contact stored flat; a row whose values contain it is stored as JSON instead.
_SEP = "\x1e"


@dataclass(frozen=True, slots=True)
class RowLayout:
    """The properties of import rows sent with the same keys in the same order, worked out once.

    Rows with a layout take the fast path: their values are checked together and stored flat, as
    ``_SEP``-joined text in key order, instead of being parsed key by key and packed as JSON.

    :param keys: the row's keys, as sent.
    :param email_at: the position of ``email`` in ``keys``.
    :param shortest_limit: the smallest length limit among the keys; rows whose values are all at
        most this long cannot break any limit.
    :param sent: the properties a contact sent this way was given (``cf:`` names for custom fields).
    """

    keys: tuple[str, ...]
    email_at: int
    shortest_limit: int
    sent: frozenset[str]

    def split(self, flat: str) -> tuple[dict[str, str], dict[str, str]]:
        """The standard values (email included) and custom-field values stored in ``flat``."""
        values: dict[str, str] = {}
        custom: dict[str, str] = {}
        for key, value in zip(self.keys, flat.split(_SEP), strict=True):
            if key.startswith("cf:"):
                custom[key[3:]] = value
            else:
                values[key] = value
        return values, custom


class CCContact:
    """One contact, kept small: attributes as flat text with a shared layout, or as a JSON blob."""

    __slots__ = ("blob", "keys", "layout", "num", "unsubscribed")

    def __init__(
        self, num: int, blob: bytes | str, keys: frozenset[str], layout: RowLayout | None = None
    ) -> None:
        self.num = num
        self.blob = blob
        self.keys = keys
        self.layout = layout
        self.unsubscribed = False


@dataclass(slots=True)
class ImportRow:
    """One contact of a JSON import, checked at POST time and applied at completion."""

    index: int
    email: str | None
    values: dict[str, Any]
    custom: dict[str, str]
    sent: frozenset[str]
    problem: str | None = None
    correctable: bool = False


#: A fast-path import row: its layout, its email and its values joined (see :class:`RowLayout`).
FlatRow = tuple[RowLayout, str, str]


@dataclass(slots=True)
class ParsedImport:
    """The rows of a JSON import, checked at POST time and applied at completion.

    :param rows: in the order sent: flat rows (valid, all text) and :class:`ImportRow` for the rest.
    :param flat_blanks: empty values among the flat rows.
    """

    rows: list[FlatRow | ImportRow]
    flat_blanks: int = 0

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class CCActivity:
    """A bulk activity (JSON import or list-membership removal)."""

    activity_id: str
    kind: str
    created: float
    due: float
    created_at: str
    list_ids: list[str]
    rows: ParsedImport | None = None
    contact_nums: list[int] | None = None
    #: A contact export's request (``fields``, ``status``) and, once completed, its CSV file id.
    export: dict[str, Any] | None = None
    file_id: str | None = None
    fault: str | None = None
    state: str = "pending"
    completed_at: str | None = None
    items_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class ImportRejected(ValueError):
    """The whole import request is refused with a 400."""


class CCStore:
    """Lists, custom fields, contacts and activities of the fake account."""

    def __init__(self, recorder: Recorder, config: Callable[[], SandboxConfig]) -> None:
        self._rec = recorder
        self._config = config
        self.lists: dict[str, str] = dict(CC_LISTS)
        self.custom_fields: dict[str, CCFieldSeed] = {f.name: f for f in CC_CUSTOM_FIELDS}
        self.contacts: dict[str, CCContact] = {}
        self.keys_by_num: list[str] = []
        self.members: dict[str, set[int]] = {lid: set() for lid in self.lists}
        self.activities: dict[str, CCActivity] = {}
        #: Completed contact exports' CSV files by file id.
        self.export_files: dict[str, str] = {}
        self._pending: list[tuple[float, int, str]] = []
        self._seq = 0
        self._keysets: dict[frozenset[str], frozenset[str]] = {}
        self._version: dict[str, int] = dict.fromkeys(self.lists, 0)
        self._sorted: dict[tuple[str, ...], tuple[tuple[int, ...], list[int]]] = {}
        #: When each contact was created and last changed (Unix seconds; 0: the seed time), by number - 1.
        self._created: array[float] = array("d")
        self._updated: array[float] = array("d")
        #: Deleted contacts (kept, as Constant Contact keeps them): number -> when (Unix seconds).
        self.deleted: dict[int, float] = {}
        #: When each unsubscribed contact unsubscribed (Unix seconds), by number (``optout_after``).
        self.opted_out_at: dict[int, float] = {}

    # -- lookups -------------------------------------------------------------------------------

    def list_json(self, list_id: str, count: str | None) -> dict[str, Any]:
        """A contact list as the API shows it, with ``membership_count`` of ``all`` its members or of
        the ``active`` (mailable) ones when ``count`` says so."""
        body: dict[str, Any] = {
            "list_id": list_id,
            "name": self.lists[list_id],
            "description": "",
            "favorite": False,
            "created_at": SEED_TIME,
            "updated_at": SEED_TIME,
        }
        if count == "all":
            body["membership_count"] = len(self.members[list_id])
        elif count == "active":
            body["membership_count"] = sum(
                1 for n in self.members[list_id] if (c := self.by_num(n)) and self.status_of(c) == "active"
            )
        return body

    def status_of(self, contact: CCContact) -> str:
        """The contact's status as ``GET /v3/contacts?status=`` filters it: ``deleted``, ``unsubscribed``
        or ``active``."""
        if contact.num in self.deleted:
            return "deleted"
        return "unsubscribed" if contact.unsubscribed else "active"

    def updated_at(self, num: int) -> float:
        """When the ``num``-th contact last changed (Unix seconds; 0 for the seed time)."""
        return self._updated[num - 1] if num <= len(self._updated) else 0.0

    @staticmethod
    def field_json(f: CCFieldSeed) -> dict[str, Any]:
        """A custom field as the API shows it."""
        return {
            "custom_field_id": f.custom_field_id,
            "label": f.label,
            "name": f.name,
            "type": f.type,
            "updated_at": SEED_TIME,
            "created_at": SEED_TIME,
        }

    def attrs(self, contact: CCContact) -> dict[str, Any]:
        """The stored attributes of a contact."""
        if contact.layout is not None:
            assert isinstance(contact.blob, str)
            values, custom = contact.layout.split(contact.blob)
            attrs: dict[str, Any] = values
            if custom:
                attrs["cf"] = custom
            return attrs
        assert isinstance(contact.blob, bytes)
        return _PACKER.unpack(contact.blob, self.keys_by_num[contact.num - 1])

    def by_email(self, email: str) -> CCContact | None:
        """The contact with this email, matched case-insensitively."""
        return self.contacts.get(email.lower())

    def by_num(self, num: int) -> CCContact | None:
        """The ``num``-th contact."""
        if 1 <= num <= len(self.keys_by_num):
            return self.contacts.get(self.keys_by_num[num - 1])
        return None

    def member_nums(self, list_ids: tuple[str, ...]) -> list[int]:
        """Contacts on any of these lists, in creation order (cached until a list changes)."""
        versions = tuple(self._version[lid] for lid in list_ids)
        cached = self._sorted.get(list_ids)
        if cached is None or cached[0] != versions:
            nums: set[int] = set()
            for lid in list_ids:
                nums |= self.members[lid]
            cached = (versions, sorted(nums))
            self._sorted[list_ids] = cached
        return cached[1]

    def contact_json(self, contact: CCContact, include: set[str]) -> dict[str, Any]:
        """A contact as ``GET /v3/contacts`` shows it."""
        a = self.attrs(contact)
        created, updated = iso_at(self._created[contact.num - 1]), iso_at(self.updated_at(contact.num))
        body: dict[str, Any] = {
            "contact_id": contact_id_of(contact.num),
            "email_address": {
                "address": a["email"],
                "permission_to_send": "unsubscribed" if contact.unsubscribed else "implicit",
                "created_at": created,
                "updated_at": updated,
                "opt_in_source": "Account",
            },
            "create_source": "Account",
            "update_source": "Account",
            "created_at": created,
            "updated_at": updated,
        }
        deleted = self.deleted.get(contact.num)
        if deleted is not None:
            # As the spec describes a deleted contact: ``opt_out_source``/``opt_out_date`` on its
            # address and the day of deletion in ``deleted_at``.
            body["email_address"] |= {"opt_out_source": "Account", "opt_out_date": iso_at(deleted)}
            body["deleted_at"] = iso_at(deleted)[:10]
        for key in ("first_name", "last_name", "job_title", "company_name"):
            if key in a:
                body[key] = a[key]
        if "custom_fields" in include:
            body["custom_fields"] = [
                {"custom_field_id": self.custom_fields[name].custom_field_id, "value": value}
                for name, value in a.get("cf", {}).items()
                if name in self.custom_fields
            ]
        if "list_memberships" in include:
            body["list_memberships"] = [lid for lid in self.lists if contact.num in self.members[lid]]
        if "phone_numbers" in include:
            body["phone_numbers"] = [
                {"phone_number": a[k], "kind": k.split("_")[0] if "_" in k else "other"}
                for k in ("phone", "home_phone", "work_phone", "mobile_phone", "other_phone")
                if k in a
            ]
        return body

    def nums_with_status(self, status: str, list_ids: tuple[str, ...] = ()) -> list[int]:
        """Contact numbers on any of ``list_ids`` (every contact when empty) with an email status:
        ``all``, ``active`` (may be mailed) or ``unsubscribed``."""
        nums: Sequence[int] = self.member_nums(list_ids) if list_ids else range(1, len(self.keys_by_num) + 1)
        if status == "all":
            # Deleted contacts are on no list; without lists, the export leaves them out too.
            return [n for n in nums if n not in self.deleted] if self.deleted else list(nums)
        return [n for n in nums if (c := self.by_num(n)) is not None and self.status_of(c) == status]

    def export_csv(self, nums: Sequence[int], fields: list[str]) -> str:
        """A ``contact_exports`` CSV of these contacts with these fields (quoted as Excel does)."""
        style = self._config().cc_export_header_style
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([EXPORT_FIELDS[f][style] for f in fields])
        for num in nums:
            contact = self.by_num(num)
            if contact is None:
                continue
            a = self.attrs(contact)
            values = {
                "contact_id": contact_id_of(num),
                "email_address": a["email"],
                "first_name": a.get("first_name", ""),
                "last_name": a.get("last_name", ""),
                "permission_to_send": "unsubscribed" if contact.unsubscribed else "implicit",
            }
            writer.writerow([values[f] for f in fields])
        return out.getvalue()

    def control_json(self, contact: CCContact) -> dict[str, Any]:
        """Everything stored about a contact, for tests."""
        a = self.attrs(contact)
        custom = a.pop("cf", {})
        email = a.pop("email")
        return {
            "contact_id": contact_id_of(contact.num),
            "email": email,
            "attributes": a,
            "custom_fields": custom,
            "custom_fields_by_id": {
                self.custom_fields[n].custom_field_id: v for n, v in custom.items() if n in self.custom_fields
            },
            "lists": [lid for lid in self.lists if contact.num in self.members[lid]],
            "unsubscribed": contact.unsubscribed,
            "deleted_at": iso_at(self.deleted[contact.num]) if contact.num in self.deleted else None,
            "updated_at": iso_at(self.updated_at(contact.num)),
            "sent_keys": sorted(contact.keys),
        }

    # -- writes ----------------------------------------------------------------------------------

    def _touch(self, list_id: str) -> None:
        self._version[list_id] += 1

    def upsert(
        self,
        email: str,
        values: dict[str, Any],
        custom: dict[str, str],
        sent: frozenset[str],
        count_blanks: bool = True,
    ) -> CCContact:
        """Create or update a contact; only the properties sent change.

        :param count_blanks: count the empty values sent (False when the caller has counted them).
        """
        key = email.lower()
        contact = self.contacts.get(key)
        blanks = sum(1 for v in (*values.values(), *custom.values()) if v == "") if count_blanks else 0
        if blanks:
            self._rec.counters["cc.blank_values_sent"] += blanks
        if contact is None:
            attrs: dict[str, Any] = {"email": email, **values}
            if custom:
                attrs["cf"] = custom
            self._rec.counters["cc.contacts_created"] += 1
            return self._create(key, _PACKER.pack(attrs, key), sent)
        attrs = self.attrs(contact)
        attrs.update(values)
        if custom:
            attrs.setdefault("cf", {}).update(custom)
        contact.blob = _PACKER.pack(attrs, key)
        contact.layout = None
        self.revive(contact)
        self.touch(contact)
        if not sent <= contact.keys:
            merged = contact.keys | sent
            contact.keys = self._keysets.setdefault(merged, merged)
        self._rec.counters["cc.contacts_updated"] += 1
        return contact

    def _create(
        self, key: str, blob: bytes | str, sent: frozenset[str], layout: RowLayout | None = None
    ) -> CCContact:
        """Store a new contact under ``key`` (its lower-cased email) as the next number."""
        self.keys_by_num.append(key)
        now = time.time()
        self._created.append(now)
        self._updated.append(now)
        contact = CCContact(len(self.keys_by_num), blob, self._keysets.setdefault(sent, sent), layout)
        self.contacts[key] = contact
        return contact

    def touch(self, contact: CCContact) -> None:
        """Record that a contact changed now (its ``updated_at``)."""
        self._updated[contact.num - 1] = time.time()

    def add_member(self, contact: CCContact, list_id: str) -> None:
        """Put a contact on a list."""
        if contact.num not in self.members[list_id]:
            self.members[list_id].add(contact.num)
            self._touch(list_id)
            self.touch(contact)

    def remove_member(self, contact: CCContact, list_id: str) -> None:
        """Take a contact off a list."""
        if contact.num in self.members[list_id]:
            self.members[list_id].discard(contact.num)
            self._touch(list_id)
            self.touch(contact)

    def unsubscribe(self, email: str) -> CCContact:
        """Mark a contact unsubscribed (account-wide, as in Constant Contact) and off every list."""
        contact = self.by_email(email) or self.upsert(email, {}, {}, frozenset())
        contact.unsubscribed = True
        self.opted_out_at[contact.num] = time.time()
        self.touch(contact)
        for lid in self.lists:
            self.remove_member(contact, lid)
        return contact

    def delete(self, contact: CCContact) -> None:
        """Delete a contact as ``DELETE /v3/contacts/{id}`` does: it is kept, with its deletion time,
        off every list; ``GET /v3/contacts`` shows it only for ``status=deleted`` or ``all``."""
        for lid in self.lists:
            self.remove_member(contact, lid)
        self.deleted[contact.num] = time.time()
        self.touch(contact)
        self._rec.counters["cc.contacts_deleted"] += 1

    def delete_all(self) -> int:
        """Delete every contact not deleted yet (lists, fields and activities stay); returns how many."""
        alive = [c for c in self.contacts.values() if c.num not in self.deleted]
        for contact in alive:
            self.delete(contact)
        return len(alive)

    def revive(self, contact: CCContact) -> None:
        """Bring a deleted contact back (an import or a sign-up of its address does), on no list."""
        if self.deleted.pop(contact.num, None) is not None:
            self.touch(contact)
            self._rec.counters["cc.contacts_revived"] += 1

    # -- JSON import -----------------------------------------------------------------------------

    def check_list_ids(self, list_ids: Any) -> list[str]:
        """Validate ``list_ids`` of a bulk activity.

        :raises ImportRejected: when missing, too many, malformed or unknown.
        """
        if not isinstance(list_ids, list) or not list_ids:
            raise ImportRejected("list_ids must contain between 1 and 50 list ids.")
        if len(list_ids) > MAX_LISTS_PER_REQUEST:
            self._rec.violation("cc", "too_many_lists", limit=MAX_LISTS_PER_REQUEST, actual=len(list_ids))
            raise ImportRejected("list_ids must contain between 1 and 50 list ids.")
        for lid in list_ids:
            if not isinstance(lid, str) or not UUID_RE.fullmatch(lid):
                raise ImportRejected("list_ids must contain valid list ids (UUID).")
            if lid not in self.lists:
                raise ImportRejected("list_ids contains a list that does not exist.")
        return list(dict.fromkeys(list_ids))

    def parse_import(self, rows: list[Any]) -> ParsedImport:
        """Check the import rows that the API would read.

        Rows whose keys are all plain properties and whose values are all valid text (nearly every
        row of a real import) are checked in one go per row; the rest go through the key-by-key
        checks of :meth:`_parse_row`, which also finds what is wrong.

        :raises ImportRejected: for what makes the real API refuse the whole request.
        """
        cfg = self._config()
        key_rows = [tuple(raw) if type(raw) is dict else None for raw in rows]
        layouts = self._import_layouts(key_rows, cfg.cc_email_max_length)
        parsed = ParsedImport([])
        overlong: dict[str, int] = {}
        for index, (raw, keys) in enumerate(zip(rows, key_rows, strict=True)):
            layout = layouts.get(keys) if keys else None
            if layout is None or not _append_flat(parsed, layout, raw):
                parsed.rows.append(self._parse_row(index, raw, cfg, overlong))
        self._report_overlong(overlong, cfg)
        return parsed

    def _import_layouts(
        self, key_rows: list[tuple[str, ...] | None], email_max_length: int
    ) -> dict[tuple[str, ...], RowLayout | None]:
        """The layout of each distinct key tuple of an import.

        :raises ImportRejected: when some rows have too many custom fields.
        """
        layouts = {keys: self._layout(keys, email_max_length) for keys in set(key_rows) if keys}
        crowded = {
            keys
            for keys in layouts
            if sum(1 for k in keys if k.startswith("cf:")) > MAX_CUSTOM_FIELDS_PER_CONTACT
        }
        if crowded:
            self._rec.violation(
                "cc",
                "too_many_custom_fields",
                limit=MAX_CUSTOM_FIELDS_PER_CONTACT,
                contacts=sum(1 for keys in key_rows if keys in crowded),
            )
            raise ImportRejected("A contact can have at most 25 custom fields.")
        return layouts

    def _report_overlong(self, overlong: dict[str, int], cfg: SandboxConfig) -> None:
        """Record the over-long values of an import.

        :raises ImportRejected: when the sandbox is set to refuse such imports.
        """
        if not overlong:
            return
        self._rec.counters["cc.overlong_values"] += sum(overlong.values())
        self._rec.violation("cc", "value_too_long", values=sum(overlong.values()), fields=sorted(overlong))
        if cfg.cc_overlong_values == "reject_request":
            raise ImportRejected(f"Values too long for: {', '.join(sorted(overlong))}.")

    def _layout(self, keys: tuple[str, ...], email_max_length: int) -> RowLayout | None:
        """The fast-path layout of rows with these keys, or None if they need key-by-key checks."""
        if "email" not in keys:
            return None
        limits = [email_max_length]
        for key in keys:
            if key.startswith("cf:"):
                if key[3:] not in self.custom_fields:
                    return None
                limits.append(MAX_CUSTOM_FIELD_VALUE)
            elif key != "email":
                if key not in FIELD_LIMITS:
                    return None  # integer fields, aliases and unknown properties
                limits.append(FIELD_LIMITS[key] or MAX_IMPORT_BODY_BYTES)  # None: no limit of its own
        return RowLayout(keys, keys.index("email"), min(limits), frozenset(keys))

    def _parse_row(self, index: int, raw: Any, cfg: SandboxConfig, overlong: dict[str, int]) -> ImportRow:
        """Check one import row key by key, counting over-long values in ``overlong``.

        :raises ImportRejected: for what makes the real API refuse the whole request.
        """
        if not isinstance(raw, dict):
            raise ImportRejected(f"import_data[{index}] must be an object.")
        found = _RowFindings(index)
        for raw_key, value in raw.items():
            key = KEY_ALIASES.get(str(raw_key), str(raw_key))
            if key == "email":
                _check_row_email(found, value, cfg, overlong)
            elif key in INT_FIELDS:
                _check_row_integer(found, key, value)
            elif key.startswith("cf:") or key in FIELD_LIMITS:
                self._check_row_text(found, key, value, cfg, overlong)
            elif key != "sms_permission_to_send":  # accepted and ignored
                raise ImportRejected(f"import_data[{index}] has an unknown property '{key[:60]}'.")
        email = found.email
        if email is None:
            found.problem, found.correctable = "missing email address", True
        elif found.problem is None and not is_valid_cc_email(email):
            found.problem, found.correctable = "invalid email address", True
        sent = frozenset(["email", *found.values, *(f"cf:{n}" for n in found.custom)])
        return ImportRow(index, email, found.values, found.custom, sent, found.problem, found.correctable)

    def _check_row_text(
        self, found: _RowFindings, key: str, value: Any, cfg: SandboxConfig, overlong: dict[str, int]
    ) -> None:
        """Check a text property or custom field (``cf:`` key) of a row and keep its value.

        :raises ImportRejected: for an unknown custom field or a value that is not text.
        """
        name = key[3:] if key.startswith("cf:") else None
        if name is not None and name not in self.custom_fields:
            raise ImportRejected(f"Custom field '{name[:50]}' does not exist.")
        limit = MAX_CUSTOM_FIELD_VALUE if name is not None else FIELD_LIMITS[key]
        text = _text(value)
        if text is None:
            raise ImportRejected(f"import_data[{found.index}].{key[:60]} must be a string.")
        if limit is not None and len(text) > limit:
            _count_overlong(overlong, key)
            if cfg.cc_overlong_values == "truncate":
                text = text[:limit]
            else:
                found.note(f"{key[:60]} exceeds {limit} characters")
        if name is not None:
            found.custom[name] = text
        else:
            found.values[key] = text

    def queue(
        self,
        kind: str,
        list_ids: list[str],
        now: float,
        fault: str | None,
        rows: ParsedImport | None = None,
        contact_nums: list[int] | None = None,
        export: dict[str, Any] | None = None,
    ) -> CCActivity:
        """Accept a bulk activity; it is applied when it completes."""
        cfg = self._config()
        activity = CCActivity(
            activity_id=str(uuid.uuid4()),
            kind=kind,
            created=now,
            due=now + cfg.scaled(cfg.cc_job_duration_s),
            created_at=iso_now(),
            list_ids=list_ids,
            rows=rows,
            contact_nums=contact_nums,
            export=export,
            fault=fault,
            items_total=len(rows) if rows is not None else len(contact_nums or []),
        )
        self.activities[activity.activity_id] = activity
        self._seq += 1
        heapq.heappush(self._pending, (activity.due, self._seq, activity.activity_id))
        self._rec.counters[f"cc.activities_created.{kind}"] += 1
        return activity

    def settle(self, now: float) -> None:
        """Apply every activity whose time has come, oldest first."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, activity_id = heapq.heappop(pending)
            activity = self.activities.get(activity_id)
            if activity is not None and activity.state == "pending":
                self._apply(activity)

    def _apply(self, activity: CCActivity) -> None:
        activity.completed_at = iso_now()
        parsed, nums = activity.rows or ParsedImport([]), activity.contact_nums or []
        activity.rows = activity.contact_nums = None
        counts = {
            "items_total_count": activity.items_total,
            "items_completed_count": 0,
            "person_count": len(parsed),
            "error_count": 0,
            "correctable_count": 0,
            "cannot_add_to_list_count": 0,
            "list_count": len(activity.list_ids),
        }
        activity.counts = counts
        if activity.fault is not None:
            activity.state = activity.fault.removeprefix("activity_")
            activity.errors.append(f"The activity ended as {activity.state}.")
            self._rec.counters[f"cc.activities_{activity.state}"] += 1
            return
        if activity.kind == "export":
            self._complete_export(activity, counts)
            return
        if activity.kind == "remove":
            self._remove_from_lists(activity.list_ids, nums)
        members, created = self._store_import_rows(activity, parsed, counts)
        for lid in activity.list_ids:
            self.members[lid].update(members)
            self._touch(lid)
        if created:
            self._rec.counters["cc.contacts_created"] += created
        if parsed.flat_blanks:
            self._rec.counters["cc.blank_values_sent"] += parsed.flat_blanks
        counts["items_completed_count"] = activity.items_total
        activity.state = "completed"
        self._rec.counters["cc.activities_completed"] += 1
        self._rec.counters["cc.import_errors"] += counts["error_count"]

    def _complete_export(self, activity: CCActivity, counts: dict[str, int]) -> None:
        """Write a contact export's CSV file and complete its activity."""
        spec = activity.export or {}
        found = self.nums_with_status(spec.get("status", "all"), tuple(activity.list_ids))
        activity.file_id = str(uuid.uuid4())
        self.export_files[activity.file_id] = self.export_csv(found, spec.get("fields", []))
        counts["items_total_count"] = counts["items_completed_count"] = len(found)
        counts["person_count"] = len(found)
        activity.state = "completed"
        self._rec.counters["cc.activities_completed"] += 1

    def _remove_from_lists(self, list_ids: list[str], nums: list[int]) -> None:
        for num in nums:
            contact = self.by_num(num)
            if contact is not None:
                for lid in list_ids:
                    self.remove_member(contact, lid)

    def _store_import_rows(
        self, activity: CCActivity, parsed: ParsedImport, counts: dict[str, int]
    ) -> tuple[list[int], int]:
        """Store an import's valid rows, counting the rest in ``counts``.

        :return: the numbers of the contacts to add to the lists, and how many contacts were new.
        """
        cfg = self._config()
        members: list[int] = []
        created = 0
        for row in parsed.rows:
            if type(row) is tuple:
                contact, is_new = self._store_flat_row(row)
                if is_new:  # a new contact cannot be unsubscribed
                    members.append(contact.num)
                    created += 1
                    continue
            else:
                assert isinstance(row, ImportRow)
                if row.problem is not None or row.email is None:
                    _record_row_error(activity, row, counts, cfg.cc_activity_errors_name_rows)
                    continue
                contact = self.upsert(row.email, row.values, row.custom, row.sent)
            if self._may_join_lists(contact, counts, cfg.cc_import_resubscribes):
                members.append(contact.num)
        return members, created

    def _store_flat_row(self, row: FlatRow) -> tuple[CCContact, bool]:
        """Store a fast-path row; also tell whether its contact is new."""
        layout, email, flat = row
        key = email.lower()
        contact = self.contacts.get(key)
        if contact is None:
            # A new contact is stored as sent, flat: by far the commonest case of a big import.
            return self._create(key, flat, layout.sent, layout), True
        values, custom = layout.split(flat)
        del values["email"]  # as on the slow path: the stored address keeps its first spelling
        return self.upsert(email, values, custom, layout.sent, count_blanks=False), False

    def _may_join_lists(self, contact: CCContact, counts: dict[str, int], resubscribes: bool) -> bool:
        """Whether an imported contact goes on the lists (an unsubscribed one only if imports resubscribe)."""
        if not contact.unsubscribed:
            return True
        if not resubscribes:
            counts["cannot_add_to_list_count"] += 1
            self._rec.counters["cc.unsubscribed_not_added"] += 1
            return False
        contact.unsubscribed = False
        self._rec.violation("cc", "resubscribed_unsubscribed_contact")
        return True

    def activity_json(self, activity: CCActivity, now: float) -> dict[str, Any]:
        """An activity at time ``now`` (call :meth:`settle` first)."""
        if activity.state == "pending":
            halfway = activity.created + (activity.due - activity.created) / 2
            state = "initialized" if now < halfway else "processing"
            percent = 0 if state == "initialized" else 50
            status: dict[str, int] = {
                "items_total_count": activity.items_total,
                "items_completed_count": 0 if state == "initialized" else activity.items_total // 2,
                "person_count": 0,
                "error_count": 0,
                "correctable_count": 0,
                "cannot_add_to_list_count": 0,
                "list_count": len(activity.list_ids),
            }
        else:
            state = activity.state
            percent = 100 if state == "completed" else 0
            status = dict(activity.counts)
        body: dict[str, Any] = {
            "activity_id": activity.activity_id,
            "state": state,
            "created_at": activity.created_at,
            "updated_at": activity.completed_at or activity.created_at,
            "percent_done": percent,
            "activity_errors": list(activity.errors),
            "status": status,
            "_links": {"self": {"href": f"/v3/activities/{activity.activity_id}"}},
        }
        if activity.file_id is not None:
            body["_links"]["results"] = {"href": f"/v3/contact_exports/{activity.file_id}"}
        if state != "initialized":
            body["started_at"] = activity.created_at
        if activity.completed_at:
            body["completed_at"] = activity.completed_at
        return body


_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def count_rows_within(body: bytes, limit: int) -> int:
    """How many ``import_data`` items lie entirely within the first ``limit`` bytes of ``body``."""
    # A cut multi-byte character can only belong to the item that is cut anyway.
    text = body[:limit].decode("utf-8", errors="ignore")
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        return 0
    pos += 1
    while True:
        pos = _skip_ws(text, pos)
        try:
            key, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return 0
        pos = _skip_ws(text, pos)
        if not text.startswith(":", pos):
            return 0
        pos = _skip_ws(text, pos + 1)
        if key == "import_data" and text.startswith("[", pos):
            return _count_items(text, pos + 1, decoder)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return 0
        pos = _skip_ws(text, pos)
        if not text.startswith(",", pos):
            return 0
        pos += 1


def _count_items(text: str, pos: int, decoder: json.JSONDecoder) -> int:
    count = 0
    while True:
        pos = _skip_ws(text, pos)
        if text.startswith("]", pos):
            return count
        try:
            _, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return count
        count += 1
        pos = _skip_ws(text, pos)
        if not text.startswith(",", pos):
            return count
        pos += 1


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


#: At most this many errors are listed on an activity.
MAX_ACTIVITY_ERRORS = 100


@dataclass(slots=True)
class _RowFindings:
    """What the key-by-key checks of one import row found so far."""

    index: int
    email: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    correctable: bool = False

    def note(self, problem: str, correctable: bool = False) -> None:
        """Keep the first problem found; any correctable one makes the row correctable."""
        self.problem = self.problem or problem
        self.correctable = self.correctable or correctable


def _append_flat(parsed: ParsedImport, layout: RowLayout, raw: dict[str, Any]) -> bool:
    """Append ``raw`` as a flat row if its values pass the fast path's checks all at once."""
    values = tuple(raw.values())
    try:
        flat = _SEP.join(values)
    except TypeError:  # a value that is not text: checked key by key
        return False
    email = values[layout.email_at]
    if (
        flat
        and email
        and max(map(len, values)) <= layout.shortest_limit
        and flat.count(_SEP) == len(values) - 1
        and is_valid_cc_email(email)
    ):
        parsed.flat_blanks += values.count("")
        parsed.rows.append((layout, email, flat))
        return True
    return False


def _count_overlong(overlong: dict[str, int], key: str) -> None:
    overlong[key] = overlong.get(key, 0) + 1


def _check_row_email(found: _RowFindings, value: Any, cfg: SandboxConfig, overlong: dict[str, int]) -> None:
    """Check a row's ``email`` (left unset when empty).

    :raises ImportRejected: when it is not text.
    """
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise ImportRejected(f"import_data[{found.index}].email must be a string.")
    if len(value) > cfg.cc_email_max_length:
        _count_overlong(overlong, "email")
        found.note("email exceeds the maximum length")
    found.email = value


def _check_row_integer(found: _RowFindings, key: str, value: Any) -> None:
    """Check an integer property (birthday month or day) of a row and keep it if in range."""
    low, high = INT_FIELDS[key]
    number = _integer(value)
    if number is None or not low <= number <= high:
        found.note(f"{key} is not valid", correctable=True)
    else:
        found.values[key] = number


def _record_row_error(activity: CCActivity, row: ImportRow, counts: dict[str, int], name_rows: bool) -> None:
    """Count an invalid import row and list its problem among the activity's first errors."""
    counts["error_count"] += 1
    counts["correctable_count"] += int(row.correctable)
    if len(activity.errors) < MAX_ACTIVITY_ERRORS:
        where = f"import_data[{row.index}]: " if name_rows else ""
        activity.errors.append(f"{where}{row.problem}")
