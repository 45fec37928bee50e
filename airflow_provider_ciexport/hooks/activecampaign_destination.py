"""ActiveCampaign as an export destination: the engine's adapter to :class:`ActiveCampaignHook`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination, JobResult
from airflow_provider_ciexport.hooks.activecampaign import (
    MAX_IMPORT_BYTES,
    MAX_IMPORT_CONTACTS,
    SCHEMA,
    SMALL_IMPORT_MAX,
    ActiveCampaignHook,
    BulkImportEncoder,
    parse_list_ids,
)


class ActiveCampaignDestination(Destination):
    """ActiveCampaign's side of an export: bulk imports of up to 250 contacts, followed to the end.

    :param hook: the hook to talk through.
    :param list_ids: lists every contact is subscribed to (numbers, or digit strings).
    :param tags: tags added to every contact (created if unknown).
    """

    name = "ActiveCampaign"
    schema = SCHEMA
    max_batch_contacts = MAX_IMPORT_CONTACTS
    max_batch_bytes = MAX_IMPORT_BYTES

    def __init__(self, hook: ActiveCampaignHook, list_ids: Sequence[Any], tags: Sequence[str] = ()) -> None:
        self.hook = hook
        self._list_ids = parse_list_ids(list_ids)
        self.tags = [str(t).strip() for t in tags if str(t).strip()]
        # contact/sync cannot tag; a small segment with tags goes through one bulk import instead.
        self.small_segment_max = 0 if self.tags else SMALL_IMPORT_MAX
        self._encoder = BulkImportEncoder(self._list_ids, self.tags)
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

    @property
    def list_ids(self) -> Sequence[str]:
        return [str(i) for i in self._list_ids]

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        self.hook.require_lists(self._list_ids)
        self._encoder = BulkImportEncoder(self._list_ids, self.tags, self.hook.field_ids(field_mapping))

    def envelope(self) -> tuple[bytes, bytes]:
        return self._encoder.prefix, self._encoder.suffix

    def encode(self, contact: Mapping[str, str]) -> bytes:
        return self._encoder.encode(contact)

    def submit(self, batch: Batch) -> str:
        return self.hook.bulk_import(batch.body)

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        status = self.hook.import_status(job_id)
        if not status.done:
            return None
        if not status.ok:
            return JobResult(ok=False, state=status.state)
        # Every contact of the body that is not in the failure list was taken.
        rejected = min(status.rejected, batch.contacts)
        return JobResult(ok=True, accepted=batch.contacts - rejected, rejected=rejected)

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        for contact in contacts:
            contact_id = self.hook.sync_contact(contact)
            for list_id in self._list_ids:
                self.hook.add_to_list(contact_id, list_id)
        return len(contacts)

    def share_account(self) -> AbstractContextManager[object]:
        return self.hook.share_account()

    @property
    def requests_made(self) -> int:
        return self.hook.requests_made
