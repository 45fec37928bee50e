"""ActiveCampaign as an export destination: the engine's adapter to :class:`ActiveCampaignHook`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.core.ratelimit import MIN_POLL_RATE, Pacer, PollPacer
from airflow_provider_ciexport.destinations.base import HookDestination
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.hooks.activecampaign import (
    MAX_IMPORT_BYTES,
    MAX_IMPORT_CONTACTS,
    SCHEMA,
    SMALL_IMPORT_MAX,
    ActiveCampaignHook,
    BulkImportEncoder,
    parse_list_ids,
)
from airflow_provider_ciexport.hooks.base import encode_json

# Pacing, from the documented limits (100 bulk imports a minute, 5 requests a second per account) and
# what /import/info does. All but the poll share date from the first adapter (commit 7617285).
#: Imports on the wire: at least this many, else the imports of this many seconds at the import rate
#: (each takes about a second to answer, so the next ones are sent meanwhile).
_MIN_IN_FLIGHT = 4
_IN_FLIGHT_S = 2
#: Batches sent but unconfirmed (their bodies, under 400 kB each, kept to be resent): two per import
#: on the wire, plus a few so the producer can run ahead while polls catch up.
_UNCONFIRMED_PER_IN_FLIGHT = 2
_UNCONFIRMED_SPARE = 8
#: /import/info answers ``false`` for about a second after the import: the first poll waits that long
#: at the documented import rate, less at a faster one (a test sandbox scales time).
_FIRST_POLL_S = 1.0
#: The pause between polls of one job grows up to this many first pauses.
_LONGEST_POLL_INTERVALS = 10
#: How the job ids of removals done by single calls (a handful of contacts) start; never an id of
#: ActiveCampaign's (a UUID).
_SINGLE_CALL_JOB_PREFIX = "direct-"


class ActiveCampaignDestination(HookDestination):
    """ActiveCampaign's side of an export: bulk imports of up to 250 contacts, followed to the end.

    :param hook: the hook to talk through.
    :param list_ids: lists every contact is subscribed to (numbers, or digit strings).
    :param tags: tags added to every contact (created if unknown).
    """

    hook: ActiveCampaignHook
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
        # Removals of a handful of contacts done by single calls: their made-up job id -> the
        # addresses that were refused (not found).
        self._single_call_results: dict[str, tuple[str, ...]] = {}
        imports_per_s = hook.imports_per_minute / 60
        # The import rate sets the pace: enough imports on the wire to hide ~1 s of latency, polls
        # paced to what the per-second budget leaves, and the first poll after the ~1 s that
        # /import/info answers `false` (scaled with the rate, as a test sandbox scales it).
        self.max_in_flight = max(_MIN_IN_FLIGHT, math.ceil(imports_per_s * _IN_FLIGHT_S))
        self.max_unconfirmed = _UNCONFIRMED_PER_IN_FLIGHT * self.max_in_flight + _UNCONFIRMED_SPARE
        # Polls take what the per-second pace (not the documented rate: the pace keeps headroom)
        # leaves after the imports; :meth:`poll_pacer` follows the pace as it learns.
        self.max_poll_rate = max(
            MIN_POLL_RATE, hook.paced_requests_per_second - hook.import_requests_per_second()
        )
        self.poll_interval = min(
            _FIRST_POLL_S,
            _FIRST_POLL_S * ActiveCampaignHook.DEFAULT_IMPORTS_PER_MINUTE / 60 / imports_per_s,
        )
        self.max_poll_interval = _LONGEST_POLL_INTERVALS * self.poll_interval

    def poll_pacer(self) -> Pacer:
        """Polls on their own share of the account's requests a second, behind the imports."""
        return PollPacer(self.hook.requests_limiter, self.hook.import_requests_per_second)

    @property
    def list_ids(self) -> Sequence[str]:
        return [str(i) for i in self._list_ids]

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        self.hook.require_lists(self._list_ids)
        self._encoder = BulkImportEncoder(self._list_ids, self.tags, self.hook.field_ids(field_mapping))

    def submit(self, batch: Batch) -> str:
        return self.hook.bulk_import(batch.body)

    def completed(self, status: JobResult, batch: Batch) -> JobResult:
        # Every contact of the body that is not in the failure list was taken.
        rejected = min(status.rejected, batch.contacts)
        return JobResult(
            ok=True, accepted=batch.contacts - rejected, rejected=rejected, refused=status.refused
        )

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        accepted = 0
        for contact in contacts:
            contact_id = self.hook.sync_contact(contact)
            # contactLists status 1 would bring back someone who unsubscribed (status 2) by their own
            # action, which a bulk import never does: leave those lists alone and count a refusal.
            statuses = self.hook.list_statuses(contact_id)
            refused = False
            for list_id in self._list_ids:
                if statuses.get(list_id) == 2:
                    refused = True
                elif statuses.get(list_id) != 1:
                    self.hook.add_to_list(contact_id, list_id)
            accepted += not refused
        return accepted

    # -- keeping lists in sync ------------------------------------------------------------------

    # Removing is unsubscribing here (status 2), which an import never undoes.
    removal_unsubscribes = True
    max_removal_batch = MAX_IMPORT_CONTACTS

    def account(self) -> str:
        return self.hook.api_base_url

    def opted_out(self) -> Iterator[str]:
        # Status 2 on a target list: the person's own unsubscribe, or the export's own removal (the
        # sync state tells those apart). Excluded addresses are refused by every import.
        for list_id in self._list_ids:
            for contact in self.hook.list_contacts(list_id, 2):
                yield str(contact["email"])

    def opted_out_count(self) -> int | None:
        # One request a list, as many as opted_out() yields (a contact on two lists counts twice there too).
        return sum(self.hook.count_list_contacts(list_id, 2) for list_id in self._list_ids)

    def opted_out_since(self, since: float) -> Iterator[str] | None:
        # The filter is on the contact's last change, by day: the count check in opt_outs tells whether
        # a membership's change made it one (the API reference does not say).
        day = datetime.fromtimestamp(since, timezone.utc).date()
        return (
            str(contact["email"])
            for list_id in self._list_ids
            for contact in self.hook.list_contacts(list_id, 2, updated_after=day)
        )

    def opt_out_change(self, removed: int, readded: int) -> int:
        # A removal sets status 2 on every target list; a re-add sets status 1 on every one again.
        return (removed - readded) * len(self._list_ids)

    def member_count(self) -> int | None:
        return sum(self.hook.count_list_contacts(list_id, 1) for list_id in self._list_ids)

    def members(self) -> Iterator[tuple[str, str]]:
        for list_id in self._list_ids:
            for contact in self.hook.list_contacts(list_id, 1):
                yield str(contact["email"]), str(contact["id"])

    def submit_removal(self, contacts: Sequence[tuple[str, str]]) -> str:
        if len(contacts) <= SMALL_IMPORT_MAX:
            # A handful is not worth a bulk import (ActiveCampaign asks for single calls under 10).
            refused = []
            for email, _ in contacts:
                contact_id = self.hook.find_contact(email)
                if contact_id is None:
                    refused.append(email)
                    continue
                for list_id in self._list_ids:
                    self.hook.set_list_status(contact_id, list_id, 2)
            job_id = f"{_SINGLE_CALL_JOB_PREFIX}{len(self._single_call_results)}"
            self._single_call_results[job_id] = tuple(refused)
            return job_id
        unsubscribe = [{"listid": list_id} for list_id in self._list_ids]
        body = {"contacts": [{"email": email, "unsubscribe": unsubscribe} for email, _ in contacts]}
        return self.hook.bulk_import(encode_json(body))

    def poll_removal(self, job_id: str, contacts: Sequence[tuple[str, str]]) -> JobResult | None:
        def removed(refused: tuple[str, ...]) -> JobResult:
            return JobResult(
                ok=True, accepted=len(contacts) - len(refused), rejected=len(refused), refused=refused
            )

        if job_id in self._single_call_results:
            return removed(self._single_call_results.pop(job_id))
        return self.job_result(job_id, lambda status: removed(status.refused or ()))

    def readd(self, emails: Sequence[str], removals: Sequence[Sequence[float] | None]) -> list[str]:
        skipped: list[str] = []
        targets = set(self._list_ids)
        for email, window in zip(emails, removals, strict=True):
            contact_id = self.hook.find_contact(email)
            if contact_id is None:
                skipped.append(email)
                continue
            records = self.hook.list_memberships(contact_id)
            statuses = {list_id: _status(record) for list_id, record in records.items()}
            # Status 2 on a list this export does not manage: the person unsubscribed themselves (e.g.
            # from all email) after the export removed them. Theirs to decide: never re-subscribe.
            if any(status == 2 for list_id, status in statuses.items() if list_id not in targets):
                skipped.append(email)
                continue
            back = [list_id for list_id in self._list_ids if statuses.get(list_id) != 1]
            # The state says the export removed them; the destination's own record must agree that the
            # export's removal is the last change to each membership, or someone else's is.
            if not all(removed_by_export(records.get(list_id), window) for list_id in back):
                skipped.append(email)
                continue
            for list_id in back:
                self.hook.set_list_status(contact_id, list_id, 1)
        return skipped


#: How far ActiveCampaign's clock (a membership's ``udate``) may be from the workers' clock.
CLOCK_SKEW_S = 300.0
#: What an unsubscribe that was not the API's leaves on the membership: a campaign's unsubscribe link
#: (``campaign``, ``message``, and ``unsubreason`` when the person gave one), an automation's
#: "unsubscribe" action (``unsubscribeAutomation``).
_NOT_THE_API = ("campaign", "message", "unsubreason", "unsubscribeAutomation")


def _status(record: Mapping[str, Any]) -> int:
    try:
        return int(record.get("status") or 0)
    except (TypeError, ValueError):
        return 0


def removed_by_export(record: Mapping[str, Any] | None, window: Sequence[float] | None) -> bool:
    """Whether a ``contactLists`` record shows the export's own removal as the last change to the
    membership: status 2, nothing a campaign's unsubscribe link or an automation leaves, and last
    changed (``udate``) while the run that removed this contact was removing (``window``: its
    ``(start, end)``, in Unix seconds; ``None``: not known). A record that cannot tell (no such record,
    no date) is not the export's, and neither is a change during another of the export's removal runs.
    """
    if window is None:
        return False
    if record is None or _status(record) != 2:
        return False
    if any(record.get(key) not in (None, "", "0", 0) for key in _NOT_THE_API):
        return False
    try:
        changed = datetime.fromisoformat(str(record.get("udate")))
    except ValueError:
        return False
    if changed.tzinfo is None:
        return False
    at = changed.timestamp()
    start, end = window
    return start - CLOCK_SKEW_S <= at <= end + CLOCK_SKEW_S
