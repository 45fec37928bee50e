"""Export a segment to Constant Contact lists through JSON bulk imports."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.contacts import ContactSchema
from airflow_provider_ciexport.export.destination import Destination, JobResult, encode_json
from airflow_provider_ciexport.hooks.constantcontact import ConstantContactHook
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator

log = logging.getLogger(__name__)

_NAME_50 = (
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "phone",
    "home_phone",
    "work_phone",
    "mobile_phone",
    "other_phone",
)
_ADDRESS = ("city", "state", "zip", "country")
_STREET = ("street", "street2")
# The import's own attributes and their maximum lengths (the V3 schema's JsonImportContact).
CC_ATTRIBUTES: dict[str, int | None] = {
    # The import schema says 50 for email, the rest of the API 80; over-long addresses in between are
    # counted as rejected by the API itself, never lost silently.
    "email": 80,
    **dict.fromkeys(_NAME_50, 50),
    "birthday_month": 2,
    "birthday_day": 2,
    "anniversary": 10,
    **dict.fromkeys(_STREET, 255),
    **dict.fromkeys(_ADDRESS, 50),
    **{f"{kind}_{part}": 255 for kind in ("home", "work", "other") for part in _STREET},
    **{f"{kind}_{part}": 50 for kind in ("home", "work", "other") for part in _ADDRESS},
}
CC_SCHEMA = ContactSchema(
    destination="Constant Contact",
    standard=CC_ATTRIBUTES,
    custom_prefix="cf:",
    custom_max_length=255,
    max_custom_fields=25,
    email_max_length=80,
)
_INTEGER_ATTRIBUTES = ("birthday_month", "birthday_day")
_FAILED = {"failed", "cancelled", "timed_out"}
MAX_LISTS = 50


def parse_cc_list_ids(values: Sequence[Any]) -> list[str]:
    """Check list ids are UUIDs (1 to 50 of them) and return them in canonical form."""
    ids: list[str] = []
    for value in values:
        try:
            list_id = str(uuid.UUID(str(value).strip()))
        except ValueError:
            raise ExportConfigurationError(
                f"Constant Contact list id {value!r} is not a UUID. Copy the list's id from its URL in "
                "Constant Contact (e.g. 1f2e3d4c-5b6a-4789-8abc-def012345678)."
            ) from None
        if list_id not in ids:
            ids.append(list_id)
    if len(ids) > MAX_LISTS:
        raise ExportConfigurationError(
            f"{len(ids)} Constant Contact lists were given; one import accepts at most {MAX_LISTS}. "
            "Split the export into several tasks."
        )
    return ids


class ConstantContactDestination(Destination):
    """Constant Contact's side of an export: JSON imports sized by bytes, followed to the end.

    :param hook: the hook to talk through.
    :param list_ids: lists every contact is added to (UUIDs).
    """

    name = "Constant Contact"
    schema = CC_SCHEMA
    max_batch_contacts = 39_999
    # The API silently drops whatever lies past 4 MB of a body, so batches are sized by their bytes.
    max_batch_bytes = 4_000_000
    # Reading and serialising is the bottleneck here, so never make it wait: a 4 MB body takes about
    # 0.2 s to build and an import about 1 s to answer, so up to 8 on the wire, and a few more awaiting
    # their activities (their bodies are kept to be resent if one fails: 48 MB at most).
    max_in_flight = 8
    max_unconfirmed = 12
    poll_interval = 0.5
    max_poll_interval = 5.0

    def __init__(self, hook: ConstantContactHook, list_ids: Sequence[str]) -> None:
        self.hook = hook
        # Imports come no faster than their bodies are built (a few a second), so polls may have half
        # the request budget: each finished activity is seen at once, not one a second. The hook's
        # limiter keeps imports and polls together under the account's limit.
        self.max_poll_rate = hook.requests_per_second / 2
        self._list_ids = list(list_ids)
        self._suffix = ('],"list_ids":' + json.dumps(self._list_ids) + "}").encode()
        self._integer_keys = frozenset(_INTEGER_ATTRIBUTES)

    @property
    def list_ids(self) -> Sequence[str]:
        return self._list_ids

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        for list_id in self._list_ids:
            if self.hook.get_list(list_id) is None:
                raise ExportConfigurationError(
                    f"Constant Contact has no list {list_id} in this account. Nothing was sent. Copy the "
                    "list's id from its URL in Constant Contact."
                )
        names = [key[len("cf:") :] for key in field_mapping if key.startswith("cf:")]
        if not names:
            return
        existing = {str(f.get("name")) for f in self.hook.get_custom_fields()}
        missing = [name for name in names if name not in existing]
        if missing:
            raise ExportConfigurationError(
                f"Constant Contact has no custom field named {', '.join(repr(m) for m in missing)}. Nothing "
                "was sent. Create the field in Constant Contact first (imports cannot create fields), or "
                f"map an existing one; the account has: {', '.join(sorted(existing)) or 'none'}."
            )

    def envelope(self) -> tuple[bytes, bytes]:
        return b'{"import_data":[', self._suffix

    def encode(self, contact: Mapping[str, str]) -> bytes:
        if not self._integer_keys.isdisjoint(contact):
            body: dict[str, Any] = dict(contact)
            for key in _INTEGER_ATTRIBUTES:
                if key in body and body[key].isdigit():
                    body[key] = int(body[key])
            return encode_json(body)
        return encode_json(contact)

    def submit(self, batch: Batch) -> str:
        return str(self.hook.json_import(batch.body)["activity_id"])

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        activity = self.hook.get_activity(job_id)
        state = activity.get("state")
        if state in _FAILED:
            return JobResult(ok=False, state=str(state))
        if state != "completed":
            return None
        status = activity.get("status") or {}
        rejected = int(status.get("error_count") or 0) + int(status.get("cannot_add_to_list_count") or 0)
        total = status.get("items_total_count")
        if total is not None and int(total) < batch.contacts:
            # Contacts the API never saw (a truncated body) must not pass as exported.
            missing = batch.contacts - int(total)
            log.error(
                "Constant Contact received %d of the %d contacts of batch %d; %d are counted as rejected.",
                int(total),
                batch.contacts,
                batch.number,
                missing,
            )
            rejected += missing
        rejected = min(rejected, batch.contacts)
        return JobResult(ok=True, accepted=batch.contacts - rejected, rejected=rejected)

    @property
    def requests_made(self) -> int:
        return self.hook.requests_made


class ConstantContactSegmentExportOperator(BaseSegmentExportOperator):
    """Export a segment to one or more Constant Contact lists.

    Contacts are validated and deduplicated, then sent in JSON imports of fewer than 40,000 contacts
    and under 4 MB each, every import followed to its end. Before anything is sent, every list and
    custom field is checked.

    :param list_id: the list's UUID, or a list of up to 50. Templated.
    :param field_mapping: Constant Contact attribute -> source column: ``email`` (required),
        ``first_name``, ``last_name``, ``phone``, ``job_title``, ``company_name`` and the API's other
        import attributes, and custom fields as ``cf:<name>`` (at most 25). Templated.
    :param constantcontact_conn_id: the ``constantcontact`` connection.

    The source and run parameters are those of :class:`BaseSegmentExportOperator`.
    """

    ui_color = "#ffe2c6"

    def __init__(
        self,
        *,
        constantcontact_conn_id: str = ConstantContactHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.constantcontact_conn_id = constantcontact_conn_id

    @cached_property
    def hook(self) -> ConstantContactHook:
        """The hook of ``constantcontact_conn_id``."""
        return ConstantContactHook(self.constantcontact_conn_id)

    def get_destination(self) -> ConstantContactDestination:
        """Validate list ids and build the destination."""
        return ConstantContactDestination(self.hook, parse_cc_list_ids(self.list_ids()))
