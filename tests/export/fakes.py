"""An in-memory export destination for the engine's tests: no HTTP, no Airflow task."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination


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


#: A membership's status on the list, as ActiveCampaign numbers them: active, unsubscribed.
ACTIVE, UNSUBSCRIBED = 1, 2


class MemoryListDestination(FakeDestination):
    """One list of an account, held in memory, that behaves at the :class:`Destination` interface as the
    real adapters do (not as their HTTP): imports add or update members, removals take them off, and
    people act on their own between runs.

    Like Constant Contact by default: unsubscribing is account-wide, a removal takes the membership
    away (by contact id), and the members are read on every mirror run. With
    ``removal_unsubscribes=True``, like ActiveCampaign: a removal sets the membership's status 2 (as a
    person's unsubscribe does, so :meth:`opted_out` lists both), an import never undoes a status 2,
    and :meth:`readd` re-subscribes a contact only if the export's removal is its last change.

    :param removal_unsubscribes: the ActiveCampaign-like mode.
    :param refuse: emails every import refuses (an excluded or undeliverable address), named in
        ``JobResult.refused`` as the adapters name them.
    """

    account_name = "memory://account"

    def __init__(self, *, removal_unsubscribes: bool = False, refuse: Sequence[str] = ()) -> None:
        super().__init__(batch_contacts=3)
        self.removal_unsubscribes = removal_unsubscribes
        self.removal_needs_contact_ids = not removal_unsubscribes
        self.refuse = {e.lower() for e in refuse}
        #: The account's contacts: email -> (contact id, fields).
        self.contacts: dict[str, tuple[str, dict[str, str]]] = {}
        #: The list's memberships: email -> status, and who made the last change ("export", "person").
        self.status: dict[str, int] = {}
        self.changed_by: dict[str, str] = {}
        #: Emails unsubscribed from all email (the account-wide opt-out).
        self.unsubscribed_everywhere: set[str] = set()
        self.results: dict[str, JobResult] = {}
        self.removal_requests: list[list[tuple[str, str]]] = []
        self.readds: list[str] = []
        #: How many times the export counted the members, and read them.
        self.counts = 0
        self.member_reads = 0
        #: When each email last opted out (or, in the ActiveCampaign-like mode, got a status 2).
        self.opted_out_at: dict[str, float] = {}
        #: How many times the export read everyone who opted out, and those since a time.
        self.opt_out_reads = 0
        self.opt_out_reads_since = 0
        #: Whether this destination can select who opted out by date (as both real ones can).
        self.can_read_since = True
        self._ids = 0

    # -- what a test reads ------------------------------------------------------------------------

    def member_emails(self) -> set[str]:
        """The list's active members now."""
        return {email for email, status in self.status.items() if status == ACTIVE}

    def fields(self, email: str) -> dict[str, str]:
        """The contact's fields in the account."""
        return self.contacts[email][1]

    # -- what people do between runs --------------------------------------------------------------

    def signup(self, email: str, **fields: str) -> None:
        """The person joins the list by a form."""
        self._upsert({"email": email, **fields})
        self.unsubscribed_everywhere.discard(email)
        self._set(email, ACTIVE, "person")

    def unsubscribe(self, email: str) -> None:
        """The person unsubscribes by their own action (from the list; account-wide in the default
        mode, where unsubscribing is account-wide)."""
        if not self.removal_unsubscribes:
            self.unsubscribed_everywhere.add(email)
            self.opted_out_at[email] = time.time()
        self._set(email, UNSUBSCRIBED, "person")

    def delete(self, email: str) -> None:
        """Someone deletes the contact from the account (and so from the list)."""
        self.contacts.pop(email, None)
        self.take_off(email)

    def take_off(self, email: str) -> None:
        """Someone takes the contact off the list (it stays in the account)."""
        self.status.pop(email, None)
        self.changed_by.pop(email, None)

    def empty(self) -> None:
        """Someone deletes every contact of the account."""
        for email in list(self.contacts):
            self.delete(email)

    # -- the Destination interface ----------------------------------------------------------------

    def account(self) -> str:
        return self.account_name

    def submit(self, batch: Batch) -> str:
        job_id = super().submit(batch)
        self.results[job_id] = self._import(json.loads(batch.body))
        return job_id

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        with self._lock:
            self.polls += 1
        return self.results[job_id]

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        self.small.extend(contacts)
        return self._import(contacts).accepted

    def opted_out(self) -> Iterator[str]:
        self.opt_out_reads += 1
        return iter(self._opted_out())

    def opted_out_count(self) -> int | None:
        return len(self._opted_out())

    def opted_out_since(self, since: float) -> Iterator[str] | None:
        if not self.can_read_since:
            return None
        self.opt_out_reads_since += 1
        return iter([e for e in self._opted_out() if self.opted_out_at.get(e, 0.0) > since])

    def opt_out_change(self, removed: int, readded: int) -> int:
        return removed - readded if self.removal_unsubscribes else 0

    def _opted_out(self) -> list[str]:
        if self.removal_unsubscribes:
            # Status 2 on the list: the person's unsubscribe or the export's removal alike.
            return sorted(e for e, status in self.status.items() if status == UNSUBSCRIBED)
        return sorted(self.unsubscribed_everywhere)

    def member_count(self) -> int | None:
        self.counts += 1
        return len(self.member_emails())

    def members(self) -> Iterator[tuple[str, str]]:
        self.member_reads += 1
        return iter([(email, self.contacts[email][0]) for email in sorted(self.member_emails())])

    def submit_removal(self, contacts: Sequence[tuple[str, str]]) -> str:
        self.removal_requests.append(list(contacts))
        refused = []
        by_id = {contact_id: email for email, (contact_id, _) in self.contacts.items()}
        for email, contact_id in contacts:
            if self.removal_unsubscribes:
                if email not in self.contacts:  # found by email, as ActiveCampaign's removal is
                    refused.append(email)
                else:
                    self._set(email, UNSUBSCRIBED, "export")
            elif contact_id in by_id:  # by contact id; an unknown id is nothing to remove
                self.status.pop(by_id[contact_id], None)
                self.changed_by.pop(by_id[contact_id], None)
        job_id = f"removal-{len(self.removal_requests)}"
        self.results[job_id] = JobResult(
            ok=True, accepted=len(contacts) - len(refused), rejected=len(refused), refused=tuple(refused)
        )
        return job_id

    def poll_removal(self, job_id: str, contacts: Sequence[tuple[str, str]]) -> JobResult | None:
        return self.results[job_id]

    def readd(self, emails: Sequence[str], removals: Sequence[Sequence[float] | None]) -> list[str]:
        skipped = []
        for email in emails:
            last_is_export_removal = (
                self.status.get(email) == UNSUBSCRIBED and self.changed_by.get(email) == "export"
            )
            if email not in self.contacts or not last_is_export_removal:
                skipped.append(email)
                continue
            self._set(email, ACTIVE, "export")
            self.readds.append(email)
        return skipped

    # -- inside -----------------------------------------------------------------------------------

    def _import(self, contacts: Sequence[Mapping[str, str]]) -> JobResult:
        refused = []
        for contact in contacts:
            email = contact["email"].lower()
            if email in self.refuse:
                refused.append(email)
                continue
            self._upsert(contact)
            # An import never undoes an unsubscribe (ActiveCampaign's status 2; the export never sends
            # one who unsubscribed in the default mode).
            if email not in self.status and email not in self.unsubscribed_everywhere:
                self._set(email, ACTIVE, "export")
        return JobResult(
            ok=True, accepted=len(contacts) - len(refused), rejected=len(refused), refused=tuple(refused)
        )

    def _upsert(self, contact: Mapping[str, str]) -> None:
        email = contact["email"].lower()
        if email not in self.contacts:
            self._ids += 1
            self.contacts[email] = (f"c{self._ids}", {})
        self.contacts[email][1].update({k: v for k, v in contact.items() if k != "email"})

    def _set(self, email: str, status: int, by: str) -> None:
        self.status[email] = status
        self.changed_by[email] = by
        if status == UNSUBSCRIBED and self.removal_unsubscribes:
            self.opted_out_at[email] = time.time()
