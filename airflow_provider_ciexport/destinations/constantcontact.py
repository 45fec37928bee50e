"""Constant Contact as an export destination: the engine's adapter to :class:`ConstantContactHook`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.destinations.base import HookDestination
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.hooks.constantcontact import (
    MAX_IMPORT_BYTES,
    MAX_IMPORT_CONTACTS,
    MAX_REMOVE_CONTACTS,
    SCHEMA,
    ConstantContactHook,
    JsonImportEncoder,
    parse_list_ids,
)

log = logging.getLogger(__name__)


#: How an activity message may name a contact: its place in the request body (``import_data[7]``),
#: or its address. The API documents ``activity_errors`` as free text only.
_POSITION = re.compile(r"import_data\[(\d+)\]")
_ADDRESS = re.compile(r"[^\s\"'<>()\[\],;:]+@[^\s\"'<>()\[\],;:]+")


def named_refusals(messages: Sequence[str], batch: Batch, rejected: int) -> tuple[str, ...] | None:
    """The emails of a batch's refused contacts, when the activity's messages name every one of them.

    A message may name a contact by its position in the import (``import_data[<n>]``) or by quoting its
    address; the API documents neither, and counts contacts who unsubscribed (``cannot_add_to_list``)
    with no message at all. Only when the messages name exactly ``rejected`` distinct contacts of the
    batch are they taken as the refused ones; otherwise ``None``: the batch's refusals are unnamed.
    Nothing of a message is logged or kept.
    """
    if not messages:
        return None
    rows = json.loads(batch.body).get("import_data") or []
    emails = [str(row.get("email", "")).lower() for row in rows if isinstance(row, dict)]
    if len(emails) != batch.contacts:
        return None
    in_batch = set(emails)
    named: set[str] = set()
    for message in messages:
        positions = [int(n) for n in _POSITION.findall(message)]
        if positions:
            if any(p >= len(emails) for p in positions):
                return None  # names something that is not in this batch: do not trust any of it
            named.update(emails[p] for p in positions)
        else:
            named.update(a.lower() for a in _ADDRESS.findall(message) if a.lower() in in_batch)
    return tuple(sorted(named)) if len(named) == rejected else None


#: Status polls may take this share of the request budget: imports come no faster than their bodies
#: are built, so the rest is plenty for them (commit 7ff26f5: capped at one poll a second, 44
#: activities of the 1M benchmark took 44 s to confirm).
_POLL_SHARE = 0.5


class ConstantContactDestination(HookDestination):
    """Constant Contact's side of an export: JSON imports sized by bytes, followed to the end.

    :param hook: the hook to talk through.
    :param list_ids: lists every contact is added to (UUIDs, 1 to 50).
    """

    hook: ConstantContactHook
    name = "Constant Contact"
    schema = SCHEMA
    max_batch_contacts = MAX_IMPORT_CONTACTS
    max_batch_bytes = MAX_IMPORT_BYTES
    # Reading and serialising is the bottleneck here, so never make it wait: a 4 MB body takes about
    # 0.2 s to build and an import about 1 s to answer, so up to 8 on the wire, and a few more awaiting
    # their activities (their bodies are kept to be resent if one fails: 48 MB at most).
    max_in_flight = 8
    max_unconfirmed = 12
    poll_interval = 0.5  # at the documented rate; a key's own pace: ConstantContactHook.first_poll_s
    max_poll_interval = 5.0

    def __init__(self, hook: ConstantContactHook, list_ids: Sequence[Any]) -> None:
        self.hook = hook
        # Imports come no faster than their bodies are built (a few a second), so polls may have half
        # the request budget: each finished activity is seen at once, not one a second. The hook's
        # limiter keeps imports and polls together under the account's limit.
        self.max_poll_rate = hook.requests_per_second * _POLL_SHARE
        # The first poll half a second after an import is answered at the documented 4 requests a
        # second, sooner on a key with raised limits (or a sandbox that scales time): every body is
        # kept until its activity is confirmed, so a late first poll holds memory for nothing.
        self.poll_interval = hook.first_poll_s
        self._list_ids = parse_list_ids(list_ids)
        self._encoder = JsonImportEncoder(self._list_ids)

    @property
    def list_ids(self) -> Sequence[str]:
        return self._list_ids

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        self.hook.require_lists(self._list_ids)
        self.hook.require_custom_fields(field_mapping)

    def submit(self, batch: Batch) -> str:
        return self.hook.json_import(batch.body)

    def completed(self, status: JobResult, batch: Batch) -> JobResult:
        rejected = status.rejected
        if status.total is not None and status.total < batch.contacts:
            # Contacts the API never saw (a truncated body) must not pass as exported.
            missing = batch.contacts - status.total
            log.error(
                "Constant Contact received %d of the %d contacts of batch %d; %d are counted as rejected.",
                status.total,
                batch.contacts,
                batch.number,
                missing,
            )
            rejected += missing
        rejected = min(rejected, batch.contacts)
        refused = named_refusals(status.messages, batch, rejected) if rejected else None
        return JobResult(ok=True, accepted=batch.contacts - rejected, rejected=rejected, refused=refused)

    # -- keeping lists in sync ------------------------------------------------------------------

    # Removal takes contact ids; one contact export lists every member with its id.
    removal_needs_contact_ids = True
    max_removal_batch = MAX_REMOVE_CONTACTS

    def account(self) -> str:
        return f"{self.hook.api_base_url} client {self.hook.connection.login or ''}".strip()

    def opted_out(self) -> Iterator[str]:
        # Unsubscribing is account-wide here; the guide warns that an import may add them back anyway.
        for row in self.hook.export_contacts(["email_address"], status="unsubscribed"):
            yield row["email_address"]

    def opted_out_count(self) -> int | None:
        return self.hook.count_contacts("unsubscribed")

    def opted_out_since(self, since: float) -> Iterator[str] | None:
        return self.hook.contacts_opted_out_since(datetime.fromtimestamp(since, timezone.utc))

    def member_count(self) -> int | None:
        return sum(self.hook.count_list_members(list_id) for list_id in self._list_ids)

    def members(self) -> Iterator[tuple[str, str]]:
        for row in self.hook.export_contacts(["contact_id", "email_address"], list_ids=self._list_ids):
            yield row["email_address"], row["contact_id"]

    def submit_removal(self, contacts: Sequence[tuple[str, str]]) -> str:
        return self.hook.remove_list_memberships([contact_id for _, contact_id in contacts], self._list_ids)

    def poll_removal(self, job_id: str, contacts: Sequence[tuple[str, str]]) -> JobResult | None:
        return self.job_result(job_id, lambda status: JobResult(ok=True, accepted=len(contacts)))
