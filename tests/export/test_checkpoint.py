"""The checkpoint on its own: what it saves, how big, how often, and what a retry may skip."""

from __future__ import annotations

import json

from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.checkpoint import (
    MAX_RANGE_BATCHES,
    Admitted,
    Checkpoint,
    batch_digest,
)
from tests.core.fakes import MemoryStore

FINGERPRINT = "f" * 32


def batches(n: int, changed: frozenset[int] = frozenset(), size: int = 100) -> list[Batch]:
    """``n`` batches of ``size``-ish bytes; those in ``changed`` have another body."""
    out = []
    for number in range(1, n + 1):
        tag = b"changed" if number in changed else b"same"
        body = b"%d:%s:" % (number, tag)
        out.append(Batch(number, 2, body + b"x" * (size - len(body))))
    return out


def confirm_all(checkpoint: Checkpoint, sent: list[Batch]) -> None:
    for batch in sent:
        checkpoint.confirm(batch, batch_digest(batch), 2, 0)


def retry(store: MemoryStore, sent: list[Batch]) -> tuple[list[int], list[int]]:
    """Run ``sent`` through a new try's checkpoint: the numbers it skips and those it sends."""
    checkpoint = Checkpoint(store, FINGERPRINT)
    decided: list[Admitted] = []
    for batch in sent:
        decided += checkpoint.admit(batch, batch_digest(batch))
    decided += checkpoint.release()
    assert [a.batch.number for a in decided] == [b.number for b in sent]  # each once, in order
    skipped = [a.batch.number for a in decided if a.resumed is not None]
    return skipped, [a.batch.number for a in decided if a.resumed is None]


def test_the_saved_document_stays_small_for_10_000_batches() -> None:
    store = MemoryStore()
    checkpoint = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    confirm_all(checkpoint, batches(10_000))
    checkpoint.flush()
    size = len(json.dumps(store.document))
    # One digest a batch (the format before) took 37 bytes a batch: about 370 KB here.
    assert size < 3_000, size
    assert len(store.document["ranges"]) == 10_000 // MAX_RANGE_BATCHES


def test_it_saves_only_when_due_and_only_what_changed() -> None:
    store = MemoryStore()
    checkpoint = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    confirm_all(checkpoint, batches(50))
    assert store.saves == 0  # not due yet: nothing written per confirmation
    checkpoint.flush()
    checkpoint.flush()  # nothing changed since
    assert store.saves == 1

    every_time = Checkpoint(MemoryStore(), FINGERPRINT, min_interval_s=0.0)
    confirm_all(every_time, batches(3))
    assert every_time.store.saves == 3  # type: ignore[union-attr]


def test_a_retry_skips_the_confirmed_batches_whose_bodies_are_the_same() -> None:
    store = MemoryStore()
    checkpoint = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    sent = batches(1_200)
    confirm_all(checkpoint, [b for b in sent if b.number not in (7, 1_100)])  # two never confirmed
    checkpoint.flush()

    skipped, resent = retry(store, sent)
    assert resent == [7, 1_100]
    assert len(skipped) == 1_198


def test_a_retry_resends_every_batch_of_a_range_in_which_one_body_differs() -> None:
    store = MemoryStore()
    checkpoint = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    confirm_all(checkpoint, batches(1_200))
    checkpoint.flush()
    ranges = [r[:2] for r in store.document["ranges"]]
    assert ranges == [[1, 500], [501, 1_000], [1_001, 1_200]]

    skipped, resent = retry(store, batches(1_200, changed=frozenset({600})))
    assert 600 in resent  # never skipped: its body is not the one confirmed
    assert resent == list(range(501, 1_001))  # its range is sent again, the others are not
    assert skipped == [*range(1, 501), *range(1_001, 1_201)]


def test_a_larger_body_releases_its_range_at_once_and_a_shorter_segment_sends_the_rest() -> None:
    store = MemoryStore()
    checkpoint = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    confirm_all(checkpoint, batches(20))
    checkpoint.flush()

    again = Checkpoint(store, FINGERPRINT)
    bigger = batches(20, size=5_000)
    assert [a.batch.number for a in again.admit(bigger[0], batch_digest(bigger[0]))] == [1]

    shorter = Checkpoint(store, FINGERPRINT)
    for batch in batches(5):
        assert shorter.admit(batch, batch_digest(batch)) == []  # held: its range is not complete
    assert [a.resumed for a in shorter.release()] == [None] * 5


def test_a_retry_saves_what_it_resumed_and_the_ranges_it_has_not_reached() -> None:
    store = MemoryStore()
    first = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    confirm_all(first, batches(1_200))
    first.flush()
    before = store.document

    second = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    for batch in batches(600):  # killed after its first range
        second.admit(batch, batch_digest(batch))
    second.flush()
    assert store.document == before  # the same ranges: nothing a third try could skip is lost


def test_a_checkpoint_of_the_old_format_still_resumes_batch_by_batch() -> None:
    sent = batches(4, changed=frozenset())
    store = MemoryStore()
    store.document = {
        "fingerprint": FINGERPRINT,
        "done": {str(b.number): [batch_digest(b), 2, 0] for b in sent[:3]},
    }
    skipped, resent = retry(store, batches(4, changed=frozenset({2})))
    assert (skipped, resent) == ([1, 3], [2, 4])


def test_another_exports_checkpoint_is_ignored() -> None:
    store = MemoryStore()
    checkpoint = Checkpoint(store, FINGERPRINT, min_interval_s=3600)
    confirm_all(checkpoint, batches(3))
    checkpoint.flush()
    other = Checkpoint(store, "0" * 32)
    assert not other.resumable
