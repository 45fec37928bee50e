"""Batching serialised contacts into request bodies that respect a destination's limits."""

from __future__ import annotations

import json
import random

import pytest

from airflow_provider_ciexport.exceptions import ExportConfigurationError
from airflow_provider_ciexport.export.batcher import Batch, Batcher

PREFIX = b'{"contacts":['
SUFFIX = b"]}"


def item(n: int, size: int | None = None) -> bytes:
    """A compact JSON object, padded to exactly ``size`` bytes when given."""
    base = json.dumps({"email": f"c{n}@example.com", "pad": ""}, separators=(",", ":")).encode()
    if size is None:
        return base
    assert size >= len(base)
    return base[:-2] + b"x" * (size - len(base)) + b'"}'


def run(batcher: Batcher, items: list[bytes]) -> list[Batch]:
    batches = [b for b in map(batcher.add, items) if b is not None]
    last = batcher.flush()
    return batches + ([last] if last else [])


def emails_of(batch: Batch) -> list[str]:
    return [c["email"] for c in json.loads(batch.body)["contacts"]]


def test_splits_by_contact_count_and_numbers_batches_in_order() -> None:
    batcher = Batcher(max_contacts=3, max_bytes=10_000, prefix=PREFIX, suffix=SUFFIX)
    batches = run(batcher, [item(i) for i in range(7)])

    assert [b.number for b in batches] == [1, 2, 3]
    assert [b.contacts for b in batches] == [3, 3, 1]
    assert emails_of(batches[0]) == ["c0@example.com", "c1@example.com", "c2@example.com"]
    assert emails_of(batches[2]) == ["c6@example.com"]


def test_a_full_batch_is_returned_as_soon_as_it_is_full() -> None:
    batcher = Batcher(max_contacts=2, max_bytes=10_000, prefix=PREFIX, suffix=SUFFIX)

    assert batcher.add(item(0)) is None
    full = batcher.add(item(1))

    assert full is not None and full.contacts == 2
    assert batcher.pending == 0
    assert batcher.flush() is None


def test_body_is_exactly_prefix_joined_items_suffix() -> None:
    batcher = Batcher(max_contacts=10, max_bytes=10_000, prefix=PREFIX, suffix=SUFFIX)
    items = [item(i) for i in range(3)]
    (batch,) = run(batcher, items)

    assert batch.body == PREFIX + b",".join(items) + SUFFIX


def test_body_stays_strictly_under_max_bytes_at_the_exact_boundary() -> None:
    a, b = item(1, 40), item(2, 40)
    envelope = len(PREFIX) + len(SUFFIX)
    two_items = envelope + 40 + 1 + 40

    # A body of exactly max_bytes is refused: the two items go in separate batches.
    at_limit = run(Batcher(max_contacts=10, max_bytes=two_items, prefix=PREFIX, suffix=SUFFIX), [a, b])
    # One byte more and they share a body of max_bytes - 1.
    above = run(Batcher(max_contacts=10, max_bytes=two_items + 1, prefix=PREFIX, suffix=SUFFIX), [a, b])

    assert [x.contacts for x in at_limit] == [1, 1]
    assert [x.contacts for x in above] == [2]
    assert len(above[0].body) == two_items


def test_fits_alone_means_a_body_of_just_that_item_is_under_the_limit() -> None:
    envelope = len(PREFIX) + len(SUFFIX)
    batcher = Batcher(max_contacts=10, max_bytes=envelope + 50, prefix=PREFIX, suffix=SUFFIX)

    assert batcher.fits_alone(item(0, 49))
    assert not batcher.fits_alone(item(0, 50))
    with pytest.raises(ValueError, match="fits_alone"):
        batcher.add(item(0, 50))


def test_an_oversized_item_leaves_the_pending_batch_intact() -> None:
    envelope = len(PREFIX) + len(SUFFIX)
    batcher = Batcher(max_contacts=10, max_bytes=envelope + 50, prefix=PREFIX, suffix=SUFFIX)
    batcher.add(item(1, 40))
    with pytest.raises(ValueError):
        batcher.add(item(2, 60))

    last = batcher.flush()
    assert last is not None and emails_of(last) == ["c1@example.com"]


def test_one_contact_per_batch() -> None:
    batcher = Batcher(max_contacts=1, max_bytes=10_000, prefix=PREFIX, suffix=SUFFIX)
    batches = run(batcher, [item(i) for i in range(3)])

    assert [b.contacts for b in batches] == [1, 1, 1]
    assert [b.number for b in batches] == [1, 2, 3]


def test_nothing_added_means_no_batch() -> None:
    assert Batcher(max_contacts=5, max_bytes=1000, prefix=PREFIX, suffix=SUFFIX).flush() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_contacts": 0, "max_bytes": 1000}, "at least 1 contact"),
        ({"max_contacts": 10, "max_bytes": len(PREFIX) + len(SUFFIX) + 1}, "no room"),
    ],
)
def test_impossible_limits_are_a_configuration_error(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ExportConfigurationError, match=message):
        Batcher(prefix=PREFIX, suffix=SUFFIX, **kwargs)


@pytest.mark.parametrize("seed", range(40))
def test_randomised_every_item_once_in_order_within_limits(seed: int) -> None:
    rng = random.Random(seed)
    max_contacts = rng.choice([1, 2, 3, 7, 50, 500])
    max_size = rng.choice([40, 60, 200, 2000])
    max_bytes = len(PREFIX) + len(SUFFIX) + max_size + rng.randint(1, 3 * max_size)
    batcher = Batcher(max_contacts=max_contacts, max_bytes=max_bytes, prefix=PREFIX, suffix=SUFFIX)
    items = [item(n, rng.randint(len(item(n)), max_size)) for n in range(rng.randint(0, 400))]
    items = [it for it in items if batcher.fits_alone(it)]

    batches = run(batcher, items)

    seen = [email for batch in batches for email in emails_of(batch)]
    assert seen == [f"c{n}@example.com" for n in range(len(items))]
    assert [b.number for b in batches] == list(range(1, len(batches) + 1))
    position = 0
    for index, batch in enumerate(batches):
        assert len(batch.body) < max_bytes
        assert 1 <= batch.contacts <= max_contacts
        assert batch.body == PREFIX + b",".join(items[position : position + batch.contacts]) + SUFFIX
        position += batch.contacts
        if index < len(batches) - 1:
            # Greedy: a batch is only closed when it is full or the next item would not fit.
            assert batch.contacts == max_contacts or len(batch.body) + 1 + len(items[position]) >= max_bytes
    assert position == len(items)
