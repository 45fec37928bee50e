"""ActiveCampaign account data and import semantics, independent of HTTP."""

from __future__ import annotations

import heapq
import time
import uuid
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_ciexport.tools.sandbox.config import SandboxConfig
from airflow_provider_ciexport.tools.sandbox.emails import is_valid_ac_email
from airflow_provider_ciexport.tools.sandbox.packing import Packer
from airflow_provider_ciexport.tools.sandbox.recording import Recorder
from airflow_provider_ciexport.tools.sandbox.seed import AC_FIELDS, AC_LISTS, ACFieldSeed

MAX_CONTACTS_PER_IMPORT = 250
MAX_IMPORT_BODY_BYTES = 400_000  # the body must be strictly smaller
STRING_KEYS = ("first_name", "last_name", "phone", "customer_acct_name")
BULK_KEYS = frozenset({"email", *STRING_KEYS, "tags", "fields", "subscribe", "unsubscribe"})
#: Bulk keys naming lists of things rather than contact attributes; a custom field counts as sent one by one.
_BULK_LIST_KEYS = ("fields", "subscribe", "unsubscribe")
SYNC_KEY_MAP = {"email": "email", "firstName": "first_name", "lastName": "last_name", "phone": "phone"}
SEED_DATE = "2024-01-01T00:00:00-06:00"
#: The account's time zone: ActiveCampaign shows dates in it, with their offset.
ACCOUNT_TZ = timezone(timedelta(hours=-6))
#: Who set a status 2 (the sandbox's bookkeeping; the API shows only what each leaves on the record):
#: the person (an unsubscribe link of a campaign: ``campaign`` and ``message`` set), an automation's
#: "unsubscribe" action (``unsubscribeAutomation`` set), the API (the export, through the endpoints),
#: or another app through the API (``app``: the same record as ``api``, only ``udate`` tells them apart),
#: or a user of the account in ActiveCampaign's own app (``user``: a removal from the list by hand; v3 has
#: no membership without a status, so a removal is status 2, with the same record as ``api``).
UNSUBSCRIBED_BY = ("person", "automation", "api", "app", "user")
#: Who may set a status 2 that the export may set back to 1 without breaking anyone's consent.
_ACCOUNT_SIDE = ("api", "user")
#: The campaign and message whose unsubscribe link a person used, and the automation that unsubscribed.
UNSUBSCRIBE_CAMPAIGN, UNSUBSCRIBE_MESSAGE, UNSUBSCRIBE_AUTOMATION = "7", "11", "3"
BAD_EMAIL_REASON = "Field' email' incorrect format"
_PACKER = Packer(
    {
        "email": "e",
        "first_name": "f",
        "last_name": "l",
        "phone": "p",
        "customer_acct_name": "a",
        "fields": "F",
        "tags": "t",
    }
)


class ACContact:
    """One contact, kept small: attributes as a JSON blob, sent keys as a shared frozenset."""

    __slots__ = ("blob", "id", "keys")

    def __init__(self, contact_id: int, blob: bytes, keys: frozenset[str]) -> None:
        self.id = contact_id
        self.blob = blob
        self.keys = keys


@dataclass
class ACJob:
    """An accepted bulk import; its contacts are applied when it completes."""

    batch_id: str
    created: float
    false_until: float
    due: float
    contacts: list[ContactInput] | None
    fault: str | None
    state: str = "pending"
    success: array[int] = field(default_factory=lambda: array("I"))
    failure: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ContactInput:
    """A contact in canonical form: attribute values, custom fields, tags and the keys sent."""

    email: str
    values: dict[str, str]
    fields: dict[str, str]
    tags: list[str]
    sent: frozenset[str]
    subscribe: tuple[int, ...] = ()
    unsubscribe: tuple[int, ...] = ()


class ACStore:
    """Lists, fields, contacts, tags and import jobs of the fake account."""

    def __init__(self, recorder: Recorder, config: Callable[[], SandboxConfig]) -> None:
        self._rec = recorder
        self._config = config
        self.lists: dict[int, str] = dict(AC_LISTS)
        self.fields: dict[int, ACFieldSeed] = {f.id: f for f in AC_FIELDS}
        self.contacts: dict[str, ACContact] = {}
        self.keys_by_id: list[str] = []
        self.members: dict[int, set[int]] = {lid: set() for lid in self.lists}
        # Status 2 per list: contact id -> who set it (one of UNSUBSCRIBED_BY).
        self.unsubscribed: dict[int, dict[int, str]] = {lid: {} for lid in self.lists}
        # When each membership last changed (its ``udate``), per list, indexed by contact id; 0: never.
        self._udate: dict[int, array[float]] = {lid: array("d") for lid in self.lists}
        #: Addresses put on the exclusion list through the control API (the config holds the rest).
        self.excluded: set[str] = set()
        self.tags: dict[str, str] = {}
        self.jobs: dict[str, ACJob] = {}
        self._pending: list[tuple[float, int, str]] = []
        self._seq = 0
        self._keysets: dict[frozenset[str], frozenset[str]] = {}
        self._version: dict[int, int] = dict.fromkeys(self.lists, 0)
        self._sorted: dict[int, tuple[int, list[int]]] = {}

    # -- lookups -------------------------------------------------------------------------------

    def list_json(self, list_id: int) -> dict[str, Any]:
        """A list as ``GET /lists/{id}`` shows it."""
        return {
            "stringid": self.lists[list_id].lower().replace(" ", "-"),
            "userid": "1",
            "name": self.lists[list_id],
            "cdate": SEED_DATE,
            "udate": SEED_DATE,
            "links": {},
            "id": str(list_id),
            "user": "1",
        }

    def field_json(self, f: ACFieldSeed) -> dict[str, Any]:
        """A custom field as ``GET /fields`` shows it."""
        return {
            "title": f.title,
            "descript": None,
            "type": f.type,
            "isrequired": "0",
            "perstag": f.perstag,
            "defval": None,
            "show_in_list": "0",
            "rows": "0",
            "cols": "0",
            "visible": "1",
            "service": "",
            "ordernum": str(f.id),
            "cdate": SEED_DATE,
            "udate": SEED_DATE,
            "options": [],
            "relations": [],
            "links": {},
            "id": str(f.id),
        }

    def attrs(self, contact: ACContact) -> dict[str, Any]:
        """The stored attributes of a contact."""
        return _PACKER.unpack(contact.blob, self.keys_by_id[contact.id - 1])

    def by_email(self, email: str) -> ACContact | None:
        """The contact with this email, matched case-insensitively."""
        return self.contacts.get(email.lower())

    def by_id(self, contact_id: int) -> ACContact | None:
        """The contact with this id (``None`` once deleted, even if its address came back as a new one)."""
        if 1 <= contact_id <= len(self.keys_by_id):
            contact = self.contacts.get(self.keys_by_id[contact_id - 1])
            if contact is not None and contact.id == contact_id:
                return contact
        return None

    def live_ids(self) -> list[int] | range:
        """The ids of every contact not deleted, ascending."""
        if len(self.contacts) == len(self.keys_by_id):
            return range(1, len(self.keys_by_id) + 1)
        return sorted(c.id for c in self.contacts.values())

    def member_ids(self, list_id: int) -> list[int]:
        """Subscribed contact ids of a list, ascending (cached until the list changes)."""
        version = self._version[list_id]
        cached = self._sorted.get(list_id)
        if cached is None or cached[0] != version:
            cached = (version, sorted(self.members[list_id]))
            self._sorted[list_id] = cached
        return cached[1]

    def contact_json(self, contact: ACContact) -> dict[str, Any]:
        """A contact as the API shows it."""
        a = self.attrs(contact)
        return {
            "email": a["email"],
            "phone": a.get("phone", ""),
            "firstName": a.get("first_name", ""),
            "lastName": a.get("last_name", ""),
            "orgid": "0",
            "deleted": "0",
            "links": {},
            "id": str(contact.id),
        }

    def control_json(self, contact: ACContact) -> dict[str, Any]:
        """Everything stored about a contact, for tests."""
        a = self.attrs(contact)
        fields = a.get("fields", {})
        perstags = {str(f.id): f.perstag for f in self.fields.values()}
        lists = {
            str(lid): "subscribed" if contact.id in self.members[lid] else "unsubscribed"
            for lid in self.lists
            if contact.id in self.members[lid] or contact.id in self.unsubscribed[lid]
        }
        unsubscribed_by = {
            str(lid): self.unsubscribed[lid][contact.id]
            for lid in self.lists
            if contact.id in self.unsubscribed[lid]
        }
        return {
            "id": contact.id,
            "email": a["email"],
            **{k: a.get(k) for k in STRING_KEYS},
            "fields": fields,
            "fields_by_perstag": {perstags.get(k, k): v for k, v in fields.items()},
            "tags": a.get("tags", []),
            "lists": lists,
            "unsubscribed_by": unsubscribed_by,
            "excluded": self.is_excluded(a["email"]),
            "sent_keys": sorted(contact.keys),
        }

    def status_on(self, contact: ACContact, list_id: int) -> int | None:
        """The contact's membership status on a list: 1 active, 2 unsubscribed, ``None`` none."""
        if contact.id in self.members[list_id]:
            return 1
        if contact.id in self.unsubscribed[list_id]:
            return 2
        return None

    def unsubscribed_ids(self, list_id: int) -> list[int]:
        """Contact ids with status 2 on a list, ascending."""
        return sorted(self.unsubscribed[list_id])

    def contact_lists_json(self, contact: ACContact) -> list[dict[str, Any]]:
        """``GET /contacts/{id}/contactLists``: the contact's membership record on every list it has one
        on, with the fields the API shows (``udate`` when it last changed, in the account's time zone;
        what an unsubscribe link or an automation leaves on it)."""
        out: list[dict[str, Any]] = []
        for lid in self.lists:
            status = self.status_on(contact, lid)
            if status is None:
                continue
            who = self.unsubscribed[lid].get(contact.id) if status == 2 else None
            by_link = who == "person"
            out.append(
                {
                    "contact": str(contact.id),
                    "list": str(lid),
                    "form": None,
                    "seriesid": "0",
                    "sdate": SEED_DATE,
                    "udate": self.udate(lid, contact.id),
                    "status": str(status),
                    "responder": "1",
                    "sync": "0",
                    "unsubreason": None,
                    "campaign": UNSUBSCRIBE_CAMPAIGN if by_link else None,
                    "message": UNSUBSCRIBE_MESSAGE if by_link else None,
                    "first_name": "",
                    "last_name": "",
                    "ip4Sub": "0",
                    "sourceid": "0",
                    "autosyncLog": None,
                    "ip4_last": "0",
                    "ip4Unsub": "2130706433" if by_link else "0",
                    "unsubscribeAutomation": UNSUBSCRIBE_AUTOMATION if who == "automation" else None,
                    "links": {},
                    "id": f"{lid}-{contact.id}",
                    "automation": None,
                }
            )
        return out

    def udate(self, list_id: int, contact_id: int) -> str:
        """When a membership last changed, as the API writes dates (``2024-01-01T00:00:00-06:00``)."""
        times = self._udate[list_id]
        at = times[contact_id] if contact_id < len(times) else 0.0
        if not at:
            return SEED_DATE
        return datetime.fromtimestamp(at, ACCOUNT_TZ).isoformat(timespec="seconds")

    def changed_at(self, contact_id: int) -> float:
        """When the contact last changed (Unix seconds; 0: not since the seed): in the sandbox, the last
        change of any of its memberships."""
        times = (self._udate[lid] for lid in self.lists)
        return max((t[contact_id] for t in times if contact_id < len(t)), default=0.0)

    def _changed(self, list_id: int, contact_id: int, at: float | None = None) -> None:
        times = self._udate[list_id]
        if contact_id >= len(times):
            times.extend([0.0] * (contact_id + 1 - len(times)))
        times[contact_id] = time.time() if at is None else at

    def is_excluded(self, email: str) -> bool:
        """Whether the address is on the account's exclusion list."""
        key = email.lower()
        return key in self.excluded or key in {e.lower() for e in self._config().ac_exclusion_list}

    # -- writes ----------------------------------------------------------------------------------

    def _intern(self, keys: frozenset[str]) -> frozenset[str]:
        return self._keysets.setdefault(keys, keys)

    def _touch(self, list_id: int) -> None:
        self._version[list_id] += 1

    def upsert(self, item: ContactInput) -> tuple[ACContact, bool]:
        """Create or update a contact; only the attributes sent change."""
        key = item.email.lower()
        contact = self.contacts.get(key)
        for value in (*item.values.values(), *item.fields.values()):
            if value == "":
                self._rec.counters["ac.blank_values_sent"] += 1
        if contact is None:
            attrs: dict[str, Any] = {"email": item.email, **item.values}
            if item.fields:
                attrs["fields"] = item.fields
            if item.tags:
                attrs["tags"] = list(dict.fromkeys(item.tags))
            self.keys_by_id.append(key)
            contact = ACContact(len(self.keys_by_id), _PACKER.pack(attrs, key), self._intern(item.sent))
            self.contacts[key] = contact
            self._rec.counters["ac.contacts_created"] += 1
            self._note_tags(item.tags)
            return contact, True
        attrs = self.attrs(contact)
        attrs.update(item.values)
        if item.fields:
            attrs.setdefault("fields", {}).update(item.fields)
        if item.tags:
            attrs["tags"] = list(dict.fromkeys([*attrs.get("tags", []), *item.tags]))
            self._note_tags(item.tags)
        contact.blob = _PACKER.pack(attrs, key)
        if not item.sent <= contact.keys:
            contact.keys = self._intern(contact.keys | item.sent)
        self._rec.counters["ac.contacts_updated"] += 1
        return contact, False

    def _note_tags(self, tags: Iterable[str]) -> None:
        for tag in tags:
            if tag.lower() not in self.tags:
                self.tags[tag.lower()] = tag
                self._rec.counters["ac.tags_created"] += 1

    def subscribe(
        self,
        contact: ACContact,
        list_id: int,
        *,
        explicit: bool,
        by_person: bool = False,
        at: float | None = None,
    ) -> bool:
        """Put a contact on a list; an import does not bring back someone who unsubscribed.

        An explicit subscription (``contactLists`` status 1) does, as the real API does; when it brings
        back someone who unsubscribed by their own action, or subscribes an excluded address, that is a
        consent violation the sandbox records (``ac.violation.resubscribed_*``).

        :param by_person: the person did it (a sign-up form): never a violation.
        :param at: when (Unix seconds; default now).
        """
        who = self.unsubscribed[list_id].get(contact.id)
        if who is not None:
            if not explicit:
                self._rec.counters["ac.not_resubscribed"] += 1
                return False
            if who not in _ACCOUNT_SIDE and not by_person:
                # Someone else's unsubscribe: the person's own, an automation's, another app's.
                kind = {"person": "person", "automation": "automation", "app": "other_app"}[who]
                self._rec.violation("ac", f"resubscribed_{kind}_unsubscribe", list_id=list_id)
            self._rec.counters["ac.resubscribed_explicitly"] += 1
            del self.unsubscribed[list_id][contact.id]
            self._changed(list_id, contact.id, at)
        if explicit and not by_person and self.is_excluded(self.keys_by_id[contact.id - 1]):
            self._rec.violation("ac", "subscribed_excluded_contact", list_id=list_id)
        if contact.id not in self.members[list_id]:
            self.members[list_id].add(contact.id)
            self._touch(list_id)
            self._changed(list_id, contact.id, at)
        return True

    def unsubscribe(
        self, contact: ACContact, list_id: int, *, by: str = "api", at: float | None = None
    ) -> None:
        """Set status 2 on a list (imports will not re-subscribe it).

        :param by: who (one of :data:`UNSUBSCRIBED_BY`): ``"person"`` (their own action: an unsubscribe
            link), ``"automation"``, ``"api"`` or ``"app"`` (another app through the API). A status 2
            that the person set stays theirs (its record unchanged) when anything sets it again.
        :param at: when (Unix seconds; default now).
        """
        if contact.id in self.members[list_id]:
            self.members[list_id].discard(contact.id)
            self._touch(list_id)
        if self.unsubscribed[list_id].get(contact.id) != "person":
            self.unsubscribed[list_id][contact.id] = by
            self._changed(list_id, contact.id, at)

    def unsubscribe_everywhere(self, contact: ACContact, at: float | None = None) -> None:
        """The person unsubscribed from all email: status 2 on every list they were subscribed to."""
        for list_id in self.lists:
            if contact.id in self.members[list_id]:
                self.unsubscribe(contact, list_id, by="person", at=at)

    def delete(self, contact: ACContact) -> None:
        """Delete a contact as ``DELETE /contacts/{id}`` does: it and its list memberships (of either
        status) are gone; its id is never given again (the address comes back as a new contact)."""
        for list_id in self.lists:
            if contact.id in self.members[list_id]:
                self.members[list_id].discard(contact.id)
                self._touch(list_id)
            self.unsubscribed[list_id].pop(contact.id, None)
        del self.contacts[self.keys_by_id[contact.id - 1]]
        self._rec.counters["ac.contacts_deleted"] += 1

    def delete_all(self) -> int:
        """Delete every contact (lists, fields, tags, the exclusion list and jobs stay); returns how many."""
        count = len(self.contacts)
        self.contacts.clear()
        for list_id in self.lists:
            self.members[list_id].clear()
            self.unsubscribed[list_id].clear()
            self._touch(list_id)
        self._rec.counters["ac.contacts_deleted"] += count
        return count

    def ensure_contact(self, email: str) -> ACContact:
        """The contact with this email, created bare (no keys sent) when missing."""
        contact = self.by_email(email)
        if contact is None:
            contact, _ = self.upsert(ContactInput(email, {}, {}, [], frozenset()))
        return contact

    # -- bulk import -------------------------------------------------------------------------------

    def validate_bulk(self, contacts: list[Any]) -> tuple[list[ContactInput], list[dict[str, Any]]]:
        """Check every contact; any failure rejects the whole batch (as the real API does)."""
        parsed: list[ContactInput] = []
        reasons: list[dict[str, Any]] = []
        for index, raw in enumerate(contacts):
            problem, item = self._parse_bulk_contact(raw)
            if problem:
                reasons.append({"contact": index, "failureReason": problem})
            elif item is not None:
                parsed.append(item)
        return parsed, reasons

    def _parse_bulk_contact(self, raw: Any) -> tuple[str | None, ContactInput | None]:
        try:
            return None, self._bulk_contact(raw)
        except _Rejected as rejected:
            return rejected.reason, None

    def _bulk_contact(self, raw: Any) -> ContactInput:
        if not isinstance(raw, dict):
            raise _Rejected("Contact must be an object")
        email = _bulk_email(raw.get("email"))
        # Unknown keys are counted even when a later check rejects the contact.
        self._count_ignored_keys([k for k in raw if k not in BULK_KEYS])
        sent = {k for k in raw if k in BULK_KEYS and k not in _BULK_LIST_KEYS}
        values = _bulk_strings(raw)
        tags = _bulk_tags(raw.get("tags", []))
        fields = self._bulk_fields(raw.get("fields", []))
        sent.update(f"field:{field_id}" for field_id in fields)
        subscribe = self._bulk_list_ids(raw, "subscribe")
        unsubscribe = self._bulk_list_ids(raw, "unsubscribe")
        return ContactInput(email, values, fields, tags, frozenset(sent), subscribe, unsubscribe)

    def _count_ignored_keys(self, ignored: list[str]) -> None:
        if ignored:
            self._rec.counters["ac.ignored_contact_keys"] += len(ignored)

    def _bulk_fields(self, raw_fields: Any) -> dict[str, str]:
        if not isinstance(raw_fields, list):
            raise _Rejected("Field' fields' must be a list")
        fields: dict[str, str] = {}
        for entry in raw_fields:
            if not isinstance(entry, dict) or "id" not in entry or "value" not in entry:
                raise _Rejected("Each custom field needs 'id' and 'value'")
            field_id = _as_int(entry["id"])
            if field_id is None or field_id not in self.fields:
                raise _Rejected(f"Custom field with id {entry['id']!s:.20} does not exist")
            fields[str(field_id)] = _text_or_reject(
                entry["value"], f"Custom field {field_id} value must be a string"
            )
        return fields

    def _bulk_list_ids(self, raw: dict[str, Any], action: str) -> tuple[int, ...]:
        entries = raw.get(action, [])
        if not isinstance(entries, list):
            raise _Rejected(f"Field' {action}' must be a list")
        ids = []
        for entry in entries:
            list_id = _as_int(entry.get("listid")) if isinstance(entry, dict) else None
            if list_id is None or list_id not in self.lists:
                raise _Rejected(f"List in '{action}' does not exist")
            ids.append(list_id)
        return tuple(ids)

    def queue_import(self, contacts: list[ContactInput], now: float, fault: str | None) -> ACJob:
        """Accept a validated batch; it is applied when its job completes."""
        cfg = self._config()
        false_until = now + cfg.scaled(cfg.ac_info_false_s)
        job = ACJob(
            batch_id=str(uuid.uuid4()),
            created=now,
            false_until=false_until,
            due=false_until + cfg.scaled(cfg.ac_job_duration_s),
            contacts=contacts,
            fault=fault,
        )
        self.jobs[job.batch_id] = job
        self._seq += 1
        heapq.heappush(self._pending, (job.due, self._seq, job.batch_id))
        self._rec.counters["ac.jobs_created"] += 1
        return job

    def settle(self, now: float) -> None:
        """Apply every job whose time has come, oldest first."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, _, batch_id = heapq.heappop(pending)
            job = self.jobs.get(batch_id)
            if job is not None and job.state == "pending":
                self._apply(job)

    def _apply(self, job: ACJob) -> None:
        contacts = job.contacts or []
        job.contacts = None
        if job.fault is not None:
            job.state = "failed" if job.fault == "job_failed" else "interrupted"
            self._rec.counters[f"ac.jobs_{job.state}"] += 1
            return
        excluded = {e.lower() for e in self._config().ac_exclusion_list} | self.excluded
        seen: set[int] = set()
        for item in contacts:
            if item.email.lower() in excluded:
                job.failure.append(item.email)
                self._rec.counters["ac.excluded_skipped"] += 1
                continue
            contact, _ = self.upsert(item)
            for list_id in item.subscribe:
                self.subscribe(contact, list_id, explicit=False)
            for list_id in item.unsubscribe:
                self.unsubscribe(contact, list_id)
            if contact.id not in seen:
                seen.add(contact.id)
                job.success.append(contact.id)
        job.state = "completed"
        self._rec.counters["ac.jobs_completed"] += 1

    def job_status(self, job: ACJob, now: float) -> dict[str, Any]:
        """``GET /import/info`` for a job at time ``now`` (call :meth:`settle` first)."""
        if now < job.false_until:
            return {"status": False}
        if job.state == "pending":
            halfway = job.false_until + (job.due - job.false_until) / 2
            return {"status": "waiting" if now < halfway else "active", "success": [], "failure": []}
        return {"status": job.state, "success": [str(i) for i in job.success], "failure": list(job.failure)}

    # -- contact/sync ----------------------------------------------------------------------------

    def parse_sync(self, raw: Any) -> tuple[str | None, ContactInput | None]:
        """Check a ``contact/sync`` body's ``contact`` object (camelCase keys)."""
        try:
            return None, self._sync_contact(raw)
        except _Rejected as rejected:
            return rejected.reason, None

    def _sync_contact(self, raw: Any) -> ContactInput:
        if not isinstance(raw, dict):
            raise _Rejected("contact must be an object")
        email = raw.get("email")
        if not isinstance(email, str) or not is_valid_ac_email(email):
            raise _Rejected("Email address is not valid.")
        values = _sync_strings(raw)
        fields = self._sync_fields(raw.get("fieldValues", []))
        sent = {"email", *values, *(f"field:{field_id}" for field_id in fields)}
        self._count_ignored_keys([k for k in raw if k not in SYNC_KEY_MAP and k != "fieldValues"])
        return ContactInput(email, values, fields, [], frozenset(sent))

    def _sync_fields(self, raw_fields: Any) -> dict[str, str]:
        if not isinstance(raw_fields, list):
            raise _Rejected("fieldValues must be a list")
        fields: dict[str, str] = {}
        for entry in raw_fields:
            if not isinstance(entry, dict):
                raise _Rejected("fieldValues entries must be objects")
            field_id = _as_int(entry.get("field"))
            value = _as_text(entry.get("value"))
            if field_id is None or field_id not in self.fields:
                raise _Rejected("Field does not exist")
            if value is None:
                raise _Rejected("Field value must be a string")
            fields[str(field_id)] = value
        return fields


class _Rejected(Exception):
    """A contact's first problem, carrying the reason the API gives for it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _bulk_email(email: Any) -> str:
    if email is None or email == "":
        raise _Rejected("Field' email' is required")
    if not isinstance(email, str) or not is_valid_ac_email(email):
        raise _Rejected(BAD_EMAIL_REASON)
    return email


def _bulk_strings(raw: dict[str, Any]) -> dict[str, str]:
    return {
        key: _text_or_reject(raw[key], f"Field' {key}' must be a string") for key in STRING_KEYS if key in raw
    }


def _bulk_tags(tags: Any) -> list[str]:
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _Rejected("Field' tags' must be a list of strings")
    return tags


def _sync_strings(raw: dict[str, Any]) -> dict[str, str]:
    """The camelCase attributes sent, under their canonical names (``email`` is checked apart)."""
    return {
        canonical: _text_or_reject(raw[key], f"{key} must be a string")
        for key, canonical in SYNC_KEY_MAP.items()
        if key in raw and key != "email"
    }


def _text_or_reject(value: Any, message: str) -> str:
    text = _as_text(value)
    if text is None:
        raise _Rejected(message)
    return text


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
