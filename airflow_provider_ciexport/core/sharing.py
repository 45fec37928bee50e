"""How many exports share one account right now, through something every worker sees.

Each running export holds a *lease* in one Airflow Variable per account (``ciexport_share_<hash>``):
a JSON document ``{"leases": {"<lease id>": <expiry, epoch seconds>}, "holders": {"<lease id>":
<who holds it>}}``. Every ``heartbeat_s`` it reads the document, drops expired leases, re-asserts its
own and writes it back; the number of live leases is how many exports divide the account's rate. The
read-modify-write is not atomic, so two exports writing at once can drop each other's lease: each
re-reads after writing and writes again if its own lease is missing, and the learning pacing absorbs
the rest. A killed export's lease expires after ``ttl_s``; before that, an export on the same machine
(its own retry, typically) drops it as soon as it sees that its process is gone
(:func:`~airflow_provider_ciexport.core.liveness.dead_here`: same host name, boot id, machine id and
pid namespace, and no such pid). A lease from another host, or without a holder (an earlier version
wrote it), is only ever dropped by its expiry. No coordination server: the Variable goes through
Airflow's execution API from a task, so it works with every executor and across workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from airflow_provider_ciexport.core.liveness import dead_here, holder
from airflow_provider_ciexport.core.ratelimit import RateLimiter

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
TTL_S = 15.0
#: Exports of one DAG run start within a few seconds of each other: renew more often at first, so
#: that they find each other before their first imports overlap.
EARLY_HEARTBEAT_S = 0.2
EARLY_S = 5.0
#: An export that joins others waits until each of them has renewed its lease since (and so counted
#: the newcomer and moved to its lane) before it sends, at most this many heartbeats: until then they
#: would use the newcomer's slots too, a burst a strict window refuses.
JOIN_WAIT_HEARTBEATS = 1.5
#: How often the newcomer looks while it waits.
JOIN_POLL_S = 0.05


class DocumentStore(Protocol):
    """A JSON document every worker can read and write (``variables.JsonVariable``)."""

    def load(self) -> Any:
        """The stored document, or ``None``."""

    def save(self, document: Any) -> None:
        """Replace the stored document."""


def share_variable_key(destination: str, account: str) -> str:
    """The Variable holding the leases of ``account`` (hashed: the key shows no account detail)."""
    digest = hashlib.sha256(f"{destination}|{account}".encode()).hexdigest()[:16]
    return f"ciexport_share_{destination}_{digest}"


class AccountShare:
    """This export's lease on an account, kept alive in the background while the export runs.

    :param store: the account's lease document.
    :param on_change: called with the number of live exports and this one's position among them
        (``0 <= lane < exports``, by lease id) whenever either changes, and at start.
    :param heartbeat_s: seconds between renewals (with +-20% jitter, so writers drift apart).
    :param ttl_s: a lease not renewed for this long is dropped by the others (sooner by those on its
        machine once its process is gone).
    :param clock: wall-clock seconds (leases are compared across machines).
    """

    def __init__(
        self,
        store: DocumentStore,
        on_change: Callable[[int, int], None],
        heartbeat_s: float = HEARTBEAT_S,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.on_change = on_change
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.clock = clock
        self.lease_id = uuid.uuid4().hex[:12]
        self.exports = 1
        self.lane = 0
        self.peak_exports = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._here = holder()
        #: When this lease was first written (wall clock), for :meth:`wait_until_seen`.
        self._joined = 0.0

    def __enter__(self) -> AccountShare:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Take a lease now and renew it in a daemon thread."""
        self.renew()
        self._joined = self.clock()
        self._thread = threading.Thread(target=self._run, name="ciexport-share", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Give the lease back so the others speed up at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            leases, holders = self._live(self.store.load())
            if leases.pop(self.lease_id, None) is not None:
                holders.pop(self.lease_id, None)
                self.store.save({"leases": leases, "holders": holders})
        except Exception as exc:  # the lease expires by itself anyway
            self._warn(exc)

    def wait_until_seen(self, timeout_s: float) -> bool:
        """Wait until every other live lease has been renewed since this one was written, so that
        each of those exports counts this one and keeps to its own lane; at most ``timeout_s``.

        :return: whether they all have (``False``: timed out, or the store could not be read).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                leases, _ = self._live(self.store.load())
            except Exception:  # the heartbeat warns about it; pace by what is known
                return False
            renewed_since = self._joined + self.ttl_s
            if all(expiry >= renewed_since for key, expiry in leases.items() if key != self.lease_id):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(JOIN_POLL_S)

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            early = time.monotonic() - started < EARLY_S
            interval = min(self.heartbeat_s, EARLY_HEARTBEAT_S) if early else self.heartbeat_s
            if self._stop.wait(interval * random.uniform(0.8, 1.2)):
                return
            self.renew()

    def _live(self, document: Any) -> tuple[dict[str, float], dict[str, Any]]:
        """The document's live leases (not expired, their process not known dead) and their holders."""
        now = self.clock()
        raw = document.get("leases") if isinstance(document, dict) else None
        if not isinstance(raw, dict):
            return {}, {}
        known = document.get("holders")
        known = known if isinstance(known, dict) else {}
        leases: dict[str, float] = {}
        holders: dict[str, Any] = {}
        for key, expiry in raw.items():
            if not isinstance(expiry, (int, float)) or float(expiry) <= now:
                continue
            held = known.get(key)
            if key != self.lease_id and dead_here(held, self._here):
                continue
            leases[str(key)] = float(expiry)
            if isinstance(held, dict):
                holders[str(key)] = held
        return leases, holders

    def renew(self) -> int:
        """Renew this lease, drop expired ones; return how many exports share the account now."""
        try:
            for _ in range(3):
                leases, holders = self._live(self.store.load())
                leases[self.lease_id] = self.clock() + self.ttl_s
                holders[self.lease_id] = {**self._here, "pid": os.getpid()}
                self.store.save({"leases": leases, "holders": holders})
                # Another export may have written its own copy at the same moment, without ours.
                check, _ = self._live(self.store.load())
                if self.lease_id in check:
                    leases = check
                    break
        except Exception as exc:  # the Variable is unreachable: pace as if alone, learning does the rest
            self._warn(exc)
            return self.exports
        count = max(1, len(leases))
        lane = sorted(leases).index(self.lease_id) if self.lease_id in leases else 0
        if count != self.exports or lane != self.lane or self._thread is None:
            if count != self.exports:
                log.info("%d export(s) now share this account's rate limits.", count)
            self.exports, self.lane = count, lane
            self.peak_exports = max(self.peak_exports, count)
            self.on_change(count, lane)
        return count

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "Cannot share the account's rate limits with other exports (%s); pacing alone.",
                type(exc).__name__,
            )


_leases: dict[str, tuple[AccountShare, int]] = {}
_leases_lock = threading.Lock()


@contextmanager
def account_lease(key: str, store: DocumentStore, limiters: Sequence[RateLimiter]) -> Iterator[AccountShare]:
    """Hold this process's lease on an account while the block runs; pace ``limiters`` by it.

    Exports in one process share the account's limiters already, so they share one lease too (the
    first takes it, the last gives it back); ``limiters`` take every ``exports``-th slot of the
    account's grid (:meth:`RateLimiter.set_lanes`). A process that joins exports already running
    returns once they have seen it (:meth:`AccountShare.wait_until_seen`).

    :param key: the account's lease Variable (:func:`share_variable_key`).
    :param store: that Variable's document.
    :param limiters: this process's limiters of the account.
    """

    def on_change(exports: int, lane: int) -> None:
        for limiter in limiters:
            limiter.set_lanes(exports, lane)

    with _leases_lock:
        lease, users = _leases.get(key) or (None, 0)
        joined = lease is None
        if lease is None:
            lease = AccountShare(store, on_change)
            lease.start()
        _leases[key] = (lease, users + 1)
    if joined and lease.exports > 1:
        lease.wait_until_seen(JOIN_WAIT_HEARTBEATS * lease.heartbeat_s)
    try:
        yield lease
    finally:
        with _leases_lock:
            lease, users = _leases[key]
            if users > 1:
                _leases[key] = (lease, users - 1)
            else:
                del _leases[key]
                lease.stop()
                on_change(1, 0)
