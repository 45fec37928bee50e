"""Exports on one account find each other through a lease document every worker sees."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_ciexport.core.liveness import holder
from airflow_provider_ciexport.core.sharing import AccountShare, share_variable_key
from tests.core.fakes import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def share(store: MemoryStore, clock: Clock, seen: list[int]) -> AccountShare:
    return AccountShare(
        store, lambda exports, lane: seen.append(exports), heartbeat_s=3600, ttl_s=15, clock=clock
    )


def test_exports_on_one_account_count_each_other_and_speed_up_when_one_ends() -> None:
    store, clock = MemoryStore(), Clock()
    seen_a: list[int] = []
    seen_b: list[int] = []
    a, b = share(store, clock, seen_a), share(store, clock, seen_b)
    a.start()
    b.start()
    assert seen_a == [1] and seen_b == [2]
    assert a.renew() == 2 and seen_a == [1, 2]
    b.stop()
    assert a.renew() == 1 and seen_a == [1, 2, 1]
    a.stop()
    assert store.document == {"leases": {}, "holders": {}}


def test_exports_on_one_account_take_different_lanes() -> None:
    store, clock = MemoryStore(), Clock()
    lanes: dict[str, tuple[int, int]] = {}
    shares = [
        AccountShare(
            store, lambda n, lane, i=i: lanes.__setitem__(str(i), (n, lane)), heartbeat_s=3600, clock=clock
        )
        for i in range(3)
    ]
    for lease in shares:
        lease.start()
    for lease in shares:
        lease.renew()
    assert sorted(lanes.values()) == [(3, 0), (3, 1), (3, 2)]
    for lease in shares:
        lease.stop()


def test_a_killed_exports_lease_expires() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = share(store, clock, []), share(store, clock, [])
    a.start()
    b.start()  # never stopped: its process was killed
    clock.now += 10
    assert a.renew() == 2
    clock.now += 10
    assert a.renew() == 1
    a.stop()


def _dead_pid() -> int:
    """The pid of a process of this machine that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leave_lease(store: MemoryStore, clock: Clock, who: dict[str, Any] | None) -> None:
    """A lease renewed a second ago, as another export (``who``: its holder record) left it."""
    document = store.document or {"leases": {}, "holders": {}}
    document["leases"]["other"] = clock.now + 14
    if who is not None:
        document["holders"]["other"] = who
    store.save(document)


def test_the_lease_of_a_dead_process_on_this_machine_is_not_counted() -> None:
    """A killed try's lease: its retry on the same machine runs at the account's full pace at once."""
    store, clock = MemoryStore(), Clock()
    _leave_lease(store, clock, {**holder(), "pid": _dead_pid()})
    a = share(store, clock, seen := [])
    a.start()
    assert seen == [1] and a.exports == 1
    assert set(store.document["leases"]) == {a.lease_id}  # dropped for every other export too
    assert set(store.document["holders"]) == {a.lease_id}
    a.stop()


@pytest.mark.parametrize(
    "who",
    [
        pytest.param(lambda: holder(), id="alive-here"),
        pytest.param(lambda: {**holder(), "host": "worker-2", "pid": _dead_pid()}, id="another-host"),
        pytest.param(
            lambda: {**holder(), "boot_id": "0" * 32, "pid": _dead_pid()}, id="a-clone-of-this-machine"
        ),
        pytest.param(
            lambda: {**holder(), "pid_namespace": 1, "pid": _dead_pid()}, id="another-pid-namespace"
        ),
        pytest.param(lambda: None, id="no-holder-an-earlier-version"),
    ],
)
def test_a_lease_not_known_dead_here_counts_until_it_expires(who: Any) -> None:
    store, clock = MemoryStore(), Clock()
    _leave_lease(store, clock, who())
    a = share(store, clock, seen := [])
    a.start()
    assert seen == [2] and "other" in store.document["leases"]
    clock.now += 15
    assert a.renew() == 1 and "other" not in store.document["leases"]
    a.stop()


def test_a_lease_lost_to_a_racing_writer_is_written_again() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = share(store, clock, []), share(store, clock, [])
    a.start()
    store.lose_next = 1
    b.start()
    assert b.lease_id in store.document["leases"]
    assert b.exports == 2
    a.stop()
    b.stop()


def test_an_export_joining_others_waits_until_each_has_seen_it() -> None:
    store, clock = MemoryStore(), Clock()
    seen_a: list[int] = []
    a, b = share(store, clock, seen_a), share(store, clock, [])
    a.start()
    clock.now += 1
    b.start()
    # Until ``a`` renews, it still paces as if alone (it would use b's slots too): b must not send yet.
    assert seen_a == [1]
    assert b.wait_until_seen(0.1) is False
    a.renew()
    assert seen_a == [1, 2]
    assert b.wait_until_seen(0.1) is True
    a.stop()
    b.stop()


def test_an_export_alone_or_unable_to_read_the_store_does_not_wait() -> None:
    store, clock = MemoryStore(), Clock()
    a = share(store, clock, [])
    a.start()
    assert a.wait_until_seen(3600) is True
    a.stop()

    class Broken:
        def load(self) -> Any:
            raise ConnectionError("execution API unreachable")

        def save(self, document: Any) -> None:
            raise AssertionError("not reached")

    lease = AccountShare(Broken(), lambda exports, lane: None, heartbeat_s=3600)
    assert lease.wait_until_seen(3600) is False


def test_an_unreachable_store_means_pacing_alone_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def load(self) -> Any:
            raise ConnectionError("execution API unreachable")

        def save(self, document: Any) -> None:
            raise AssertionError("not reached")

    seen: list[int] = []
    lease = AccountShare(Broken(), lambda exports, lane: seen.append(exports), heartbeat_s=3600)
    with caplog.at_level(logging.WARNING):
        lease.start()
        assert lease.renew() == 1
        lease.stop()
    assert lease.exports == 1
    assert [r.getMessage() for r in caplog.records].count(
        "Cannot share the account's rate limits with other exports (ConnectionError); pacing alone."
    ) == 1


def test_the_variable_key_names_the_destination_but_not_the_account() -> None:
    key = share_variable_key("activecampaign", "https://acme.api-us1.com/api/3")
    assert key.startswith("ciexport_share_activecampaign_") and "acme" not in key
    assert key == share_variable_key("activecampaign", "https://acme.api-us1.com/api/3")
    assert key != share_variable_key("activecampaign", "https://other.api-us1.com/api/3")
