"""An in-memory export destination for the engine's tests: no HTTP, no Airflow task."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination, JobResult


class FakeDestination(Destination):
    """Takes batches of up to 3 contacts; jobs fail as scripted, otherwise complete at once.

    :param failures: batch number -> how many of its jobs end failed before one completes.
    :param rejected: batch number -> how many of its contacts the job refuses.
    :param batch_contacts: contacts per batch at most.
    """

    name = "Fake"
    schema = ContactSchema("Fake", {"email": 254, "first_name": 50}, "x:")
    max_batch_contacts = 3
    max_batch_bytes = 10_000
    max_in_flight = 2
    max_unconfirmed = 4
    poll_interval = 0.001
    max_poll_interval = 0.005
    max_poll_rate = 10_000.0

    def __init__(
        self,
        failures: Mapping[int, int] | None = None,
        rejected: Mapping[int, int] | None = None,
        batch_contacts: int = 3,
    ):
        self.max_batch_contacts = batch_contacts
        self.failures = dict(failures or {})
        self.rejected = dict(rejected or {})
        self.prepared_with: dict[str, str] | None = None
        self.submitted: list[Batch] = []
        self.small: list[Mapping[str, str]] = []
        self.polls = 0
        self._lock = threading.Lock()

    @property
    def list_ids(self) -> Sequence[str]:
        return ["L1"]

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        self.prepared_with = dict(field_mapping)

    def envelope(self) -> tuple[bytes, bytes]:
        return b"[", b"]"

    def encode(self, contact: Mapping[str, str]) -> bytes:
        return json.dumps(contact).encode()

    def submit(self, batch: Batch) -> str:
        with self._lock:
            self.submitted.append(batch)
            return f"job-{len(self.submitted)}"

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        with self._lock:
            self.polls += 1
            if self.failures.get(batch.number, 0) > 0:
                self.failures[batch.number] -= 1
                return JobResult(ok=False, state="failed")
        refused = self.rejected.get(batch.number, 0)
        return JobResult(ok=True, accepted=batch.contacts - refused, rejected=refused)

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        self.small.extend(contacts)
        return len(contacts)

    @property
    def requests_made(self) -> int:
        return len(self.submitted) + self.polls

    def contacts_sent(self) -> list[dict[str, str]]:
        """Every contact in every body, in order, resubmissions included."""
        return [c for batch in self.submitted for c in json.loads(batch.body)]

    def emails_sent(self) -> list[str]:
        """Every e-mail in every body, in order, resubmissions included."""
        return [c["email"] for c in self.contacts_sent()]
