"""The contract between the export engine and one destination API."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.core.ratelimit import Pacer, RateLimiter
from airflow_provider_ciexport.export.batcher import Batch


class Destination(ABC):
    """One destination's side of an export: checks, encoding, submission and job status.

    The engine owns reading, validation, deduplication, batching, concurrency and the report; a
    destination only knows its API.
    """

    #: Name in messages and the report.
    name: str
    #: Attributes the destination accepts and their limits.
    schema: ContactSchema
    #: Hard limits of one import request: contacts, and serialised bytes (the body must stay below).
    max_batch_contacts: int
    max_batch_bytes: int
    #: How many import requests may be on the wire at once; the hook enforces the rate limits anyway.
    max_in_flight: int = 4
    #: How many batches may be sent but not yet confirmed; each keeps its body in memory so that a
    #: failed job can be sent again, so this bounds memory (and lets the producer run ahead).
    max_unconfirmed: int = 16
    #: Seconds before the first status poll of a job, growing up to ``max_poll_interval``.
    poll_interval: float = 1.0
    max_poll_interval: float = 10.0
    #: Status polls per second across all jobs, leaving the rest of the request budget to imports.
    max_poll_rate: float = 2.0
    #: Segments of at most this many valid contacts go through :meth:`send_small` (0: never).
    small_segment_max: int = 0

    @property
    @abstractmethod
    def list_ids(self) -> Sequence[str]:
        """The target lists, as strings for the report."""

    @abstractmethod
    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        """Check, before any contact is sent, that the lists and custom fields exist.

        :raises ExportConfigurationError: naming the missing list or field.
        """

    @abstractmethod
    def envelope(self) -> tuple[bytes, bytes]:
        """The bytes before and after the comma-joined contacts of an import request body."""

    @abstractmethod
    def encode(self, contact: Mapping[str, str]) -> bytes:
        """Serialise one contact (attribute -> value) as a compact JSON object for the body."""

    @abstractmethod
    def submit(self, batch: Batch) -> str:
        """Send one import request and return the job id."""

    @abstractmethod
    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        """Return the job's final result, or ``None`` while it is still running."""

    def poll_pacer(self) -> Pacer:
        """A new pace for the status polls of one run's jobs: ``max_poll_rate`` by default."""
        return RateLimiter(self.max_poll_rate, 1.0)

    def share_account(self) -> AbstractContextManager[object]:
        """Held while contacts are sent, so exports running at once on one account divide its rate."""
        return nullcontext()

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        """Send a small segment contact by contact; return how many were accepted."""
        raise NotImplementedError

    def set_progress_interval(self, interval_s: float) -> None:  # noqa: B027 (a hook, not abstract)
        """Log what the destination itself tells (throttling) at most once every ``interval_s``, as the
        export's progress lines; a destination that tells nothing ignores it."""

    @property
    @abstractmethod
    def requests_made(self) -> int:
        """API requests made so far (retries and polls included)."""

    # -- keeping lists in sync (``state_path``); a destination without these cannot sync ------------

    #: The destination's own removal looks like an opt-out (ActiveCampaign: status 2 on the list), so
    #: a contact the export removed is re-added explicitly with :meth:`readd` when it comes back.
    removal_unsubscribes: bool = False
    #: A removal names contacts by the destination's id, not by email (Constant Contact): a run with
    #: contacts to remove reads the lists' members (one bulk export) for their ids.
    removal_needs_contact_ids: bool = False
    #: Contacts per removal request.
    max_removal_batch: int = 500

    def account(self) -> str:
        """Which account the export writes to (no secret): part of the sync state's identity."""
        raise NotImplementedError(f"{self.name} exports cannot keep a sync state.")

    def opted_out(self) -> Iterator[str]:
        """Emails the destination shows as unsubscribed by the person's own action (from a target list
        or from all email) or excluded: the export never puts them back on a list."""
        raise NotImplementedError(f"{self.name} exports cannot keep a sync state.")

    def opted_out_count(self) -> int | None:
        """How many :meth:`opted_out` will yield, in a request or one a list (``None``: the destination
        cannot count them). A run compares it with the count at the end of the last run, and reads who
        opted out only when they differ."""
        return None

    def opted_out_since(self, since: float) -> Iterator[str] | None:
        """Emails :meth:`opted_out` yields that changed after ``since`` (Unix seconds; more is
        harmless), or ``None`` if the destination cannot select them by date."""
        return None

    def opt_out_change(self, removed: int, readded: int) -> int:
        """How much a run's own removals and re-adds change :meth:`opted_out_count`."""
        return 0

    def member_count(self) -> int | None:
        """Active members of the target lists now, summed over the lists, in one request a list
        (``None``: the destination cannot count them). A run compares it with the count at the end of
        the last run, and reads the members to repair the lists only when they differ."""
        return None

    def members(self) -> Iterator[tuple[str, str]]:
        """``(email, contact id)`` of every active member of the target lists now."""
        raise NotImplementedError(f"{self.name} exports cannot keep a sync state.")

    def submit_removal(self, contacts: Sequence[tuple[str, str]]) -> str:
        """Start removing ``(email, contact id)`` contacts from every target list; return the job id."""
        raise NotImplementedError(f"{self.name} exports cannot remove contacts.")

    def poll_removal(self, job_id: str, contacts: Sequence[tuple[str, str]]) -> JobResult | None:
        """The removal job's final result (``refused``: emails not removed), or ``None`` while it runs."""
        raise NotImplementedError(f"{self.name} exports cannot remove contacts.")

    def readd(self, emails: Sequence[str], removals: Sequence[Sequence[float] | None]) -> list[str]:
        """Put back on the target lists contacts the export itself removed, now back in the segment and
        already sent again; return the emails that were NOT put back because the person opted out
        since, or because the destination's record does not show the export's removal as the last
        change (they are then skipped). Only called when :attr:`removal_unsubscribes`.

        :param removals: for each email, ``(start, end)`` (Unix seconds) of the run in which this export
            removed it (``None``: not known): a removal at any other time was not the export's.
        """
        return []
