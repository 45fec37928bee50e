"""Export a segment to ActiveCampaign lists through bulk imports."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.contacts import ContactSchema
from airflow_provider_ciexport.export.destination import Destination, JobResult, encode_json
from airflow_provider_ciexport.hooks.activecampaign import ActiveCampaignHook
from airflow_provider_ciexport.operators.base import BaseSegmentExportOperator

AC_SCHEMA = ContactSchema(
    destination="ActiveCampaign",
    standard={"email": 254, "first_name": None, "last_name": None, "phone": None, "customer_acct_name": None},
    custom_prefix="field:",
)
_RUNNING = {False, None, "waiting", "claimed", "active", "queued", "processing"}
_FAILED = {"failed", "interrupted"}
# contact/sync speaks camelCase where bulk_import speaks snake_case.
_SYNC_NAMES = {"email": "email", "first_name": "firstName", "last_name": "lastName", "phone": "phone"}


def parse_ac_list_ids(values: Sequence[Any]) -> list[int]:
    """Turn list ids (ints or digit strings) into positive ints, or fail naming the bad one."""
    ids: list[int] = []
    for value in values:
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) <= 0:
            raise ExportConfigurationError(
                f"ActiveCampaign list id {value!r} is not a positive whole number. Use the number in the "
                "list's URL in ActiveCampaign (Contacts > Lists), e.g. list_id=3."
            )
        if int(text) not in ids:
            ids.append(int(text))
    return ids


class ActiveCampaignDestination(Destination):
    """ActiveCampaign's side of an export: bulk imports of up to 250 contacts, followed to the end.

    :param hook: the hook to talk through.
    :param list_ids: lists every contact is subscribed to.
    :param tags: tags added to every contact (created if unknown).
    """

    name = "ActiveCampaign"
    schema = AC_SCHEMA
    max_batch_contacts = 250
    max_batch_bytes = 400_000
    small_segment_max = 10

    def __init__(self, hook: ActiveCampaignHook, list_ids: Sequence[int], tags: Sequence[str] = ()) -> None:
        self.hook = hook
        self._list_ids = list(list_ids)
        self.tags = [str(t).strip() for t in tags if str(t).strip()]
        self._field_ids: dict[str, int] = {}
        # contact/sync cannot tag; a small segment with tags goes through one bulk import instead.
        if self.tags:
            self.small_segment_max = 0
        imports_per_s = hook.imports_per_minute / 60
        requests_per_s = hook.requests_per_second
        # The import rate sets the pace: enough imports on the wire to hide ~1 s of latency, polls
        # paced to what the per-second budget leaves, and the first poll after the ~1 s that
        # /import/info answers `false` (scaled with the rate, as a test sandbox scales it).
        self.max_in_flight = max(4, math.ceil(imports_per_s * 2))
        self.max_unconfirmed = 2 * self.max_in_flight + 8
        self.max_poll_rate = max(0.2, 0.6 * (requests_per_s - imports_per_s))
        self.poll_interval = min(1.0, 100 / 60 / imports_per_s)
        self.max_poll_interval = 10 * self.poll_interval
        tail = {"subscribe": [{"listid": i} for i in self._list_ids]}
        if self.tags:
            tail["tags"] = self.tags  # type: ignore[assignment]
        self._tail = b"," + encode_json(tail)[1:]

    @property
    def list_ids(self) -> Sequence[str]:
        return [str(i) for i in self._list_ids]

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        for list_id in self._list_ids:
            if self.hook.get_list(list_id) is None:
                raise ExportConfigurationError(
                    f"ActiveCampaign has no list with id {list_id} in this account. Nothing was sent. Check "
                    "list_id: it is the number in the list's URL under Contacts > Lists."
                )
        refs = {key: key[len("field:") :].strip() for key in field_mapping if key.startswith("field:")}
        if not refs:
            return
        fields = self.hook.get_fields()
        by_id = {str(f.get("id")): int(f["id"]) for f in fields}
        by_name: dict[str, int] = {}
        for f in fields:
            for name in (f.get("perstag"), f.get("title")):
                if name:
                    by_name.setdefault(str(name).strip("%").upper(), int(f["id"]))
        for key, ref in refs.items():
            field_id = by_id.get(ref) if ref.isdigit() else by_name.get(ref.strip("%").upper())
            if field_id is None:
                known = ", ".join(sorted(str(f.get("perstag")) for f in fields if f.get("perstag"))) or "none"
                raise ExportConfigurationError(
                    f"ActiveCampaign has no custom field '{ref}' (from field_mapping key '{key}'). Nothing was "
                    f"sent. Use a field id or personalization tag; the account's tags are: {known}."
                )
            self._field_ids[key] = field_id

    def envelope(self) -> tuple[bytes, bytes]:
        return b'{"contacts":[', b"]}"

    def encode(self, contact: Mapping[str, str]) -> bytes:
        body: dict[str, Any] = {}
        fields = []
        for key, value in contact.items():
            if key.startswith("field:"):
                fields.append({"id": self._field_ids[key], "value": value})
            else:
                body[key] = value
        if fields:
            body["fields"] = fields
        return encode_json(body)[:-1] + self._tail

    def submit(self, batch: Batch) -> str:
        return self.hook.bulk_import(batch.body)

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        info = self.hook.import_info(job_id)
        status = info.get("status")
        if status == "completed":
            rejected = min(len(info.get("failure") or []), batch.contacts)
            return JobResult(ok=True, accepted=batch.contacts - rejected, rejected=rejected)
        if status in _FAILED:
            return JobResult(ok=False, state=str(status))
        return None

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        for contact in contacts:
            body: dict[str, Any] = {}
            values = []
            for key, value in contact.items():
                if key.startswith("field:"):
                    values.append({"field": str(self._field_ids[key]), "value": value})
                elif key in _SYNC_NAMES:
                    body[_SYNC_NAMES[key]] = value
                else:
                    # customer_acct_name has no contact/sync equivalent; fields it carries go as values.
                    body[key] = value
            if values:
                body["fieldValues"] = values
            contact_id = self.hook.sync_contact(body)
            for list_id in self._list_ids:
                self.hook.add_to_list(contact_id, list_id)
        return len(contacts)

    @property
    def requests_made(self) -> int:
        return self.hook.requests_made


class ActiveCampaignSegmentExportOperator(BaseSegmentExportOperator):
    """Export a segment to one or more ActiveCampaign lists.

    Contacts are validated and deduplicated, then sent in bulk imports of up to 250 contacts at the
    rate ActiveCampaign allows (100 imports a minute), each followed to completion. Segments of at most
    10 valid contacts (and no tags) go through contact sync instead. Before anything is sent, every list
    and custom field is checked.

    :param list_id: the list id (the number in the list's URL), or several. Templated.
    :param field_mapping: ActiveCampaign attribute -> source column: ``email`` (required),
        ``first_name``, ``last_name``, ``phone``, ``customer_acct_name``, and custom fields as
        ``field:<id or personalization tag>``. Templated.
    :param tags: tags to add to every exported contact. Templated.
    :param activecampaign_conn_id: the ``activecampaign`` connection.

    The source and run parameters are those of :class:`BaseSegmentExportOperator`.
    """

    template_fields: Sequence[str] = (*BaseSegmentExportOperator.template_fields, "tags")
    ui_color = "#cfe3ff"

    def __init__(
        self,
        *,
        tags: Sequence[str] | str | None = None,
        activecampaign_conn_id: str = ActiveCampaignHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tags = tags
        self.activecampaign_conn_id = activecampaign_conn_id

    @cached_property
    def hook(self) -> ActiveCampaignHook:
        """The hook of ``activecampaign_conn_id``."""
        return ActiveCampaignHook(self.activecampaign_conn_id)

    def get_destination(self) -> ActiveCampaignDestination:
        """Validate list ids and tags, and build the destination."""
        tags = self.tags or []
        if isinstance(tags, str):
            tags = [t for t in tags.split(",")]
        return ActiveCampaignDestination(self.hook, parse_ac_list_ids(self.list_ids()), list(tags))
