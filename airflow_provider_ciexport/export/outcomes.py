"""The row-level outcome log: what happened to every row of a run, written to the user's own storage.

One row a source row (see :data:`OUTCOME_COLUMNS`), streamed as the run goes to a file given as a URI
(an Airflow ``ObjectStoragePath``: ``file://``, ``s3://``, ``gs://``...): CSV, JSON Lines, or Parquet
with the ``parquet`` extra; or appended to a table through an Airflow SQL connection. The log names rows by the user's ``outcome_key`` columns, or by
a keyed hash of the normalised e-mail; e-mail addresses and other mapped values are never written.
Nothing of it reaches the task log, XCom or Airflow's database: only its path (or table) and row count
are logged.

The engine calls the hooks of :class:`OutcomeHooks` as rows are read, classified, batched and
confirmed; without a log those hooks do nothing (:data:`NO_OUTCOMES`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from airflow_provider_ciexport.core.contacts import (
    ContactBuilder,
    EmailIndex,
    EmailSet,
    column_key,
    normalize_email,
    to_text,
)
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.outcome_files import (
    OUTCOME_COLUMNS,
    VALUE_COLUMNS,
    OutcomeWriter,
    file_sink,
    outcome_format,
)
from airflow_provider_ciexport.export.outcome_tables import TableSink, check_table_name, outcome_table_hook
from airflow_provider_ciexport.export.report import ExportReport
from airflow_provider_ciexport.export.state import StateKeys
from airflow_provider_ciexport.export.sync import ContactKind

log = logging.getLogger(__name__)

#: The run's identity columns, filled from the task instance (the rest come from the run).
IDENTITY_COLUMNS = OUTCOME_COLUMNS[:6]
#: What the sync state makes of a contact: ``(operation, status)``; status ``None``: it is sent.
_KINDS: dict[ContactKind, tuple[str, str | None]] = {
    ContactKind.NEW: ("add", None),
    ContactKind.CHANGED: ("update", None),
    ContactKind.UNCHANGED: ("unchanged", "unchanged"),
    ContactKind.READD: ("readd", None),
    ContactKind.OPTED_OUT: ("skip", "skipped_unsubscribed"),
    ContactKind.RESTORED: ("restore", None),
}


def hashed_row_ids(keys: StateKeys) -> Callable[[str], str]:
    """The keyed hash that names a row by its normalised e-mail when there is no ``outcome_key``:
    keyed BLAKE2b (a MAC) under a key derived from the workers' state key, 16 hex digits. It cannot
    be reversed or recomputed without that key; rotating the key changes every hash."""
    _, signing = keys.signing
    key = hmac.digest(signing, b"ciexport outcome row id", "sha256")
    keyed = hashlib.blake2b(key=key, digest_size=8)

    def row_id(email: str) -> str:
        mac = keyed.copy()  # the keyed state, computed once
        mac.update(email.encode())
        return mac.hexdigest()

    return row_id


@dataclass(frozen=True)
class OutcomeSettings:
    """Where and how a run writes its outcome log: a file (``path``) or a table (``table``), not both.

    :param path: the file's URI; its extension gives the format.
    :param key_columns: the source columns that name a row (empty: a keyed hash of the e-mail).
    :param keys: the workers' keys, for the hash (needed when ``key_columns`` is empty).
    :param identity: the run's identity columns (:data:`IDENTITY_COLUMNS`), from the task instance.
    :param table: the table the rows are appended to, ``table`` or ``schema.table``.
    :param conn_id: the Airflow SQL connection of ``table``'s database.
    """

    path: str = ""
    key_columns: tuple[str, ...] = ()
    keys: StateKeys | None = None
    identity: Mapping[str, Any] = field(default_factory=dict)
    table: str = ""
    conn_id: str = ""
    include_values: bool = False

    def __post_init__(self) -> None:
        if self.path and self.table:
            raise ExportConfigurationError(
                "outcomes_path and outcomes_table are both set: the outcome log goes to a file or to a "
                "table, not both. Keep one of them. Nothing was sent."
            )
        if self.table:
            check_table_name(self.table)
            outcome_table_hook(self.conn_id)
        else:
            outcome_format(self.path)
        if not self.key_columns and self.keys is None:
            raise ExportConfigurationError(
                f"{'outcomes_table' if self.table else 'outcomes_path'} needs outcome_key (the source "
                "column(s) that name a row, e.g. 'customer_id') or the workers' key to hash the e-mail "
                "with (see the Security page). Nothing was sent."
            )

    @property
    def columns(self) -> tuple[str, ...]:
        """The log's columns: :data:`OUTCOME_COLUMNS`, and :data:`VALUE_COLUMNS` with values."""
        return (*OUTCOME_COLUMNS, *VALUE_COLUMNS) if self.include_values else OUTCOME_COLUMNS

    def writer(self) -> OutcomeWriter:
        """A writer to the log's file or table, opened now (a missing table is created)."""
        if self.table:
            hook = outcome_table_hook(self.conn_id)
            return OutcomeWriter(TableSink(hook, self.table, self.columns), f"table {self.table}")
        return OutcomeWriter(file_sink(self.path, self.columns), self.path)


class OutcomeHooks:
    """What the engine tells the outcome log; this base does nothing (there is no log)."""

    def columns(self, mapped: Iterable[str]) -> list[str]:
        """The source columns to read: the mapped ones, and the key's."""
        return list(mapped)

    def seen(self, capacity: int) -> EmailSet:
        """The set the builder finds repeated addresses in."""
        return EmailSet(capacity)

    def building(self, builder: ContactBuilder) -> Callable[[Sequence[Any]], dict[str, str] | None]:
        """The function that turns a row into a contact (``builder.build``, noting each row's fate)."""
        return builder.build

    def classified(self, kind: ContactKind) -> None:
        """The sync state's verdict on the contact just built."""

    def queued(self, items: Iterator[Any]) -> Iterator[Any]:
        """The contacts handed to the batcher, in order."""
        return items

    def too_large(self, position: int) -> None:
        """The contact at ``position`` of those queued and not yet batched is too large to send."""

    def batched(self, batch: Batch, *, sent: bool) -> None:
        """The next ``batch.contacts`` queued contacts make ``batch`` (``sent``: not a dry run)."""

    def submitted(self, number: int, job_id: str) -> None:
        """Batch ``number`` was sent as job ``job_id``."""

    def confirmed(self, number: int, result: JobResult, reason: str = "") -> None:
        """Batch ``number``'s job ended with ``result`` (also a resumed batch, or a small segment's 0)."""

    def failed(self, number: int, result: JobResult) -> None:
        """Batch ``number``'s job ended failed for good."""

    def small(self, accepted: int, total: int) -> None:
        """The whole (small) segment was sent by single calls; ``accepted`` of ``total`` taken."""

    def removals(self, emails: Sequence[str], result: JobResult, job_id: str | None = None) -> None:
        """A removal job (``job_id``) for ``emails`` ended with ``result``."""

    def readds_refused(self, reasons: Mapping[str, str]) -> None:
        """Contacts the export removed that came back were not re-subscribed: email -> reason."""

    def close(self) -> None:
        """The run ended (or stopped): write what is known and close the file."""


#: The hooks of a run without an outcome log.
NO_OUTCOMES = OutcomeHooks()


def _key_text(positions: Sequence[int]) -> Callable[[Sequence[Any]], str]:
    """The function that gives a row's ``outcome_key`` text (its columns joined with ``|``)."""

    def text(value: Any) -> str:
        return "" if value is None else to_text(value)

    if not positions:
        return lambda row: ""
    if len(positions) == 1:
        (at,) = positions
        return lambda row: text(row[at])
    return lambda row: "|".join(text(row[i]) for i in positions)


def _key_positions(key_columns: Sequence[str], columns: Sequence[str]) -> list[int]:
    """Where each ``outcome_key`` column is in the rows: exact, or the one matching it loosely."""
    positions = []
    for name in key_columns:
        if name in columns:
            positions.append(list(columns).index(name))
            continue
        loose = [i for i, c in enumerate(columns) if column_key(c) == column_key(name)]
        if len(loose) != 1:
            raise ExportConfigurationError(
                f"outcome_key names the column {name!r}, which the segment does not have "
                f"{'once' if loose else 'at all'}. Name the exact source column. Nothing was sent."
            )
        positions.append(loose[0])
    return positions


#: One contact on its way: ``[row_number, row_id, operation, reason, email, value columns]``.
_Ref = list[Any]


class OutcomeLog(OutcomeHooks):
    """The outcome log of one run: turns the engine's hooks into rows (see :class:`OutcomeHooks`).

    :param settings: where and how.
    :param destination: the destination's name; :param lists: its target lists.
    :param waited: whether the run follows its jobs (else sent rows are ``unconfirmed``).
    """

    def __init__(
        self, settings: OutcomeSettings, destination: str, lists: Sequence[str], *, waited: bool
    ) -> None:
        self.settings = settings
        self.waited = waited
        identity = tuple(settings.identity.get(name) for name in IDENTITY_COLUMNS)
        self._head = (*identity, destination, ",".join(lists))
        self._hash = hashed_row_ids(settings.keys) if settings.keys is not None else None
        self._writer: OutcomeWriter | None = None
        self._built: deque[_Ref] = deque()
        self._pending: deque[_Ref] = deque()
        self._inflight: dict[int, list[_Ref]] = {}
        self._jobs: dict[int, str] = {}
        #: The builder's set of addresses, with the row number of each one's first occurrence.
        self._first = EmailIndex()
        self._reasons: dict[str, int] = {}
        #: The mapped attributes other than the e-mail, and where each is in a row.
        self._mapped: list[tuple[str, int]] = []
        self._second, self._stamp = 0, ""
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------

    def columns(self, mapped: Iterable[str]) -> list[str]:
        """The mapped columns, and the key's (once each)."""
        return list(dict.fromkeys([*mapped, *self.settings.key_columns]))

    def seen(self, capacity: int) -> EmailSet:
        """The builder's set of addresses, which also keeps the row each one first came in."""
        self._first = EmailIndex(capacity)
        return self._first

    def building(self, builder: ContactBuilder) -> Callable[[Sequence[Any]], dict[str, str] | None]:
        """``builder.build``, writing a row for each invalid or duplicate row and noting the others."""
        self._writer = self._writer or self.settings.writer()
        positions = _key_positions(self.settings.key_columns, builder.columns)
        email_at = builder.columns.index(builder.resolved_mapping["email"])
        build, counter, key = builder.build, [0], _key_text(positions)
        self._mapped = [
            (a, builder.columns.index(c)) for a, c in builder.resolved_mapping.items() if a != "email"
        ]

        def build_and_note(row: Sequence[Any]) -> dict[str, str] | None:
            counter[0] += 1
            self._first.number = counter[0]
            before = (builder.invalid, builder.duplicates, sum(builder.omitted_too_long.values()))
            contact = build(row)
            self._note(builder, row, contact, (counter[0], key(row), email_at), before)
            return contact

        return build_and_note

    def _note(
        self,
        builder: ContactBuilder,
        row: Sequence[Any],
        contact: dict[str, str] | None,
        where: tuple[int, str, int],
        before: tuple[int, int, int],
    ) -> None:
        number, row_id, email_at = where
        if contact is not None:
            omitted = ""
            if sum(builder.omitted_too_long.values()) != before[2]:
                omitted = ";".join(f"omitted_too_long.{a}" for a in _omitted(builder, row))
            email = contact["email"]
            values = self._values(email, contact)
            self._built.append([number, self._row_id(row_id, email), "upsert", omitted, email, values])
        elif builder.duplicates != before[1]:
            email = normalize_email(row[email_at])[0] or ""
            first = self._first.first(email)
            values = self._values(email, self._read_values(row))
            self._write(
                number, self._row_id(row_id, email), "skip", "duplicate", f"duplicate_of={first}", values
            )
        else:
            value = row[email_at]
            text = to_text(value).lower() if value is not None else ""
            reason = f"invalid.{self._invalid_reason(builder)}"
            values = self._values(to_text(value) if value is not None else "", self._read_values(row))
            self._write(
                number, self._row_id(row_id, text) if text else row_id, "skip", "invalid", reason, values
            )

    def _invalid_reason(self, builder: ContactBuilder) -> str:
        """The reason the row just built was invalid: the reason whose count grew."""
        before, self._reasons = self._reasons, dict(builder.invalid_reasons)
        for reason, count in self._reasons.items():
            if count != before.get(reason, 0):
                return reason
        return "malformed"

    def _values(self, email: str, fields: Mapping[str, str]) -> tuple[str, ...]:
        """The value columns of a row when the log includes them (else none, at no cost: this runs for
        every row): the e-mail, and ``fields`` but the e-mail as JSON."""
        if not self.settings.include_values:
            return ()
        mapped = {a: v for a, v in fields.items() if a != "email"}
        return (email, json.dumps(mapped, ensure_ascii=False, separators=(",", ":")))

    def _read_values(self, row: Sequence[Any]) -> dict[str, str]:
        """A row's mapped values other than the e-mail, as read (for rows never sent)."""
        return {a: to_text(row[i]) for a, i in self._mapped if row[i] is not None}

    def _row_id(self, from_columns: str, email: str) -> str:
        if self._hash is None or self.settings.key_columns:
            return from_columns
        return self._hash(email)

    # -- classifying and batching ----------------------------------------------------------------

    def classified(self, kind: ContactKind) -> None:
        """Skipped contacts (unchanged, opted out) are written; the others carry their operation."""
        operation, status = _KINDS[kind]
        if status is None:
            self._built[0][2] = operation
            return
        ref = self._built.popleft()
        self._write(ref[0], ref[1], operation, status, ref[3], ref[5])

    def queued(self, items: Iterator[Any]) -> Iterator[Any]:
        """Move each contact's note to the queue of those to batch, as the batcher receives it."""
        built, pending = self._built, self._pending
        for item in items:
            pending.append(built.popleft())
            yield item

    def too_large(self, position: int) -> None:
        """A contact larger than a whole request: invalid, as the report counts it."""
        ref = self._pending[position]
        del self._pending[position]
        self._write(ref[0], ref[1], ref[2], "invalid", _join("invalid.too_large", ref[3]), ref[5])

    def batched(self, batch: Batch, *, sent: bool) -> None:
        """Take the batch's contacts off the queue; a dry run's are written as not sent."""
        refs = [self._pending.popleft() for _ in range(batch.contacts)]
        if not sent:
            for ref in refs:
                self._write(
                    ref[0], ref[1], ref[2], "not_sent", _join("dry_run", ref[3]), ref[5], batch.number
                )
            return
        with self._lock:
            self._inflight[batch.number] = refs

    # -- what the destination said ---------------------------------------------------------------

    def submitted(self, number: int, job_id: str) -> None:
        """Note the batch's job; a run that does not follow its jobs writes its rows now."""
        with self._lock:
            self._jobs[number] = job_id
        if not self.waited:
            self._write_batch(number, lambda ref: ("unconfirmed", "not_waited"))

    def confirmed(self, number: int, result: JobResult, reason: str = "") -> None:
        """Accepted or refused per contact where the destination names the refused e-mails; where it
        does not, the batch's contacts are ``unconfirmed`` with its counts."""
        refused = {e.lower() for e in result.refused or ()}
        named = result.rejected > 0 and len(refused) >= result.rejected
        counts = f"batch_accepted={result.accepted};batch_rejected={result.rejected}"

        def status(ref: _Ref) -> tuple[str, str]:
            if ref[4] in refused:
                return "refused", reason
            if result.rejected == 0 or named:
                return "accepted", reason
            return "unconfirmed", _join(counts, reason)

        self._write_batch(number, status)

    def failed(self, number: int, result: JobResult) -> None:
        """Every contact of a batch whose jobs all ended failed."""
        self._write_batch(number, lambda ref: ("failed", f"job_{result.state}"))

    def small(self, accepted: int, total: int) -> None:
        """A small segment sent by single calls: no batch, no job."""
        with self._lock:
            self._inflight[0] = list(self._pending)
        self._pending.clear()
        self.confirmed(0, JobResult(ok=True, accepted=accepted, rejected=total - accepted))

    def removals(self, emails: Sequence[str], result: JobResult, job_id: str | None = None) -> None:
        """One row a contact removed (or not): named by the keyed hash of its e-mail, the only name the
        sync state knows for a contact no longer in the segment."""
        refused = {e.lower() for e in result.refused or ()}
        for email in emails:
            if not result.ok:
                status, reason = "removal_refused", f"job_{result.state}"
            else:
                status, reason = ("removal_refused", "refused") if email in refused else ("removed", "")
            self._write(
                None, self._name(email), "remove", status, reason, self._values(email, {}), job_id=job_id
            )

    def readds_refused(self, reasons: Mapping[str, str]) -> None:
        """One more row for each contact that came back but was not re-subscribed (its segment row
        says how its import went), named as removal rows are."""
        for email, reason in reasons.items():
            self._write(None, self._name(email), "readd", "readd_refused", reason, self._values(email, {}))

    def _name(self, email: str) -> str:
        """The keyed hash of an e-mail the segment no longer names by its key columns."""
        return self._hash(email) if self._hash is not None else ""

    def close(self) -> None:
        """Write the contacts the run never confirmed (stopped), close the file, log where it is."""
        if self._writer is None:
            return
        for ref in [*self._built, *self._pending]:
            self._write(ref[0], ref[1], ref[2], "not_sent", _join("stopped", ref[3]), ref[5])
        self._built.clear()
        self._pending.clear()
        for number in sorted(self._inflight):
            outcome = ("unconfirmed" if number in self._jobs else "not_sent", "stopped")
            self._write_batch(number, partial(_same, outcome))
        writer, self._writer = self._writer, None
        writer.close()
        log.info("Outcome log: %s rows written to %s.", f"{writer.rows:,}", writer.where)

    # -- writing ---------------------------------------------------------------------------------

    def _now(self) -> str:
        """The time, to the second (formatted once a second: a million rows a run)."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, timezone.utc).isoformat()
        return self._stamp

    def _write_batch(self, number: int, status: Callable[[_Ref], tuple[str, str]]) -> None:
        with self._lock:
            refs = self._inflight.pop(number, [])
            job_id = self._jobs.pop(number, None)
        for ref in refs:
            what, reason = status(ref)
            self._write(ref[0], ref[1], ref[2], what, _join(reason, ref[3]), ref[5], number or None, job_id)

    def _write(
        self,
        number: int | None,
        row_id: str,
        operation: str,
        status: str,
        reason: str,
        values: tuple[str, ...] = (),
        batch: int | None = None,
        job_id: str | None = None,
    ) -> None:
        assert self._writer is not None
        now = self._now()
        row = (*self._head, number, row_id, operation, status, reason, batch, job_id, now, *values)
        self._writer.write(row)


def _same(outcome: tuple[str, str], _ref: _Ref) -> tuple[str, str]:
    return outcome


def _join(*codes: str) -> str:
    return ";".join(code for code in codes if code)


def _omitted(builder: ContactBuilder, row: Sequence[Any]) -> list[str]:
    """The attributes of ``row`` whose value was too long (and so omitted)."""
    columns = builder.columns
    out = []
    for attr, column in builder.resolved_mapping.items():
        limit = builder.schema.standard.get(attr, builder.schema.custom_max_length)
        if attr == "email" or limit is None:
            continue
        value = row[columns.index(column)]
        if value is not None and len(to_text(value)) > limit:
            out.append(attr)
    return out


def outcome_hooks(settings: OutcomeSettings | None, report: ExportReport) -> OutcomeHooks:
    """The outcome log of a run with this report (:data:`NO_OUTCOMES` when ``settings`` is ``None``)."""
    if settings is None:
        return NO_OUTCOMES
    return OutcomeLog(settings, report.destination, report.lists, waited=report.waited)
