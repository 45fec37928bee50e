"""Where a 1M-profile export's memory goes: the sync state's read and write, on local disk and on S3.

``python benchmarks/memory.py [--profiles N] [--s3]`` writes a first-sync state of N contacts, reads it
back, diffs N contacts against it and writes it again, each phase in this process with its peak RSS
reset before it (Linux ``clear_refs``) and read after it (``VmHWM``). With ``--s3`` the state is on a
moto S3 server started for the run (a separate process, as ``make prod-test`` runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sync import bench_identity_and_keys, churn_diff, first_sync_diff

BUCKET = "ciexport-memory"
KEYS = {"login": "memory-key-id", "password": "memory-secret-key"}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def phase(name: str, run: Callable[[], Any]) -> Any:
    """Run ``run`` with the peak RSS reset before it; print its peak over the RSS at its start."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_kb("VmRSS")
    began = time.monotonic()
    result = run()
    peak, end = _status_kb("VmHWM"), _status_kb("VmRSS")
    print(
        f"{name:<34} peak +{(peak - start) / 1024:6.1f} MB  held after +{(end - start) / 1024:6.1f} MB  "
        f"({time.monotonic() - began:.1f} s)",
        flush=True,
    )
    return result


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server with the bucket; yields the state's folder URI."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=KEYS["login"],
            aws_secret_access_key=KEYS["password"],
        ).create_bucket(Bucket=BUCKET)
        conn = {
            "conn_type": "aws",
            "login": KEYS["login"],
            "password": KEYS["password"],
            "extra": {"endpoint_url": url, "region_name": "us-east-1"},
        }
        os.environ["AIRFLOW_CONN_CIEXPORT_MEMORY"] = json.dumps(conn)
        yield f"s3://ciexport_memory@{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(30)


def measure(folder: str, count: int) -> None:
    """The state's phases at ``count`` contacts, in ``folder``."""
    from airflow_provider_ciexport.export.state import (
        SyncState,
        email_key,
        read_state,
        storage_path,
        write_state,
    )

    identity, keys = bench_identity_and_keys()
    uri = f"{folder}/memory.state"

    # An object store's client (botocore's models, the event loop): once per task, whatever its state.
    phase("the store's client (a lookup)", lambda: storage_path(uri).exists())
    written = phase("first sync: diff", partial(first_sync_diff, SyncState(identity), count)).state
    phase("first sync: write the state", partial(write_state, uri, written, None, keys))
    del written  # the re-export reads its own
    loaded = phase("re-export: read the state", lambda: read_state(uri, identity, keys))
    assert loaded.distrust is None, loaded.distrust

    phase("re-export: diff (2% churn)", lambda: churn_diff(loaded.state, count))

    def retry() -> Any:
        # A retry finds a partial state: 30% more contacts claimed by the try that died, folded in.
        state = loaded.state
        for i in range(0, count, 3):
            email = f"claimed.{i}@example.com"
            state.add(email_key(email), 0, 1, email)
        return state.folded()

    phase("retry: fold a 30% partial state", retry)
    phase(
        "re-export: write the state",
        lambda: write_state(uri, loaded.state, loaded.stored_generation, keys),
    )
    loaded.state = SyncState(identity)  # free it before the retry
    retry_of_first_sync(folder, count, identity, keys)


def retry_of_first_sync(folder: str, count: int, identity: Any, keys: Any) -> None:
    """What ``make prod-test --memory``'s retry does: a mirror first sync killed at 30% left its
    claims in partial states (no state yet); the retry folds them, diffs the segment, writes the state."""
    from airflow_provider_ciexport.export.claims import PART_CLAIMS, ClaimJournal
    from airflow_provider_ciexport.export.state import SyncState, email_key, write_state

    uri = f"{folder}/retry.state"
    journal = ClaimJournal(uri, identity, 0, keys)
    claimed = int(count * 0.3)
    for start in range(0, claimed, PART_CLAIMS):
        emails = (f"person.{i}@example.com" for i in range(start, min(start + PART_CLAIMS, claimed)))
        journal.wait(journal.add([(email_key(e), e) for e in emails]))
    del journal
    retry = ClaimJournal(uri, identity, 0, keys)
    state = phase("retry: fold 30% claims (no state)", lambda: retry.fold_into(SyncState(identity), False)[0])
    diff = phase("retry: diff (the whole segment)", partial(first_sync_diff, state, count))
    del state
    phase("retry: write the state", partial(write_state, uri, diff.state, None, keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--s3", action="store_true", help="the state on a moto S3 server")
    args = parser.parse_args()
    import airflow_provider_ciexport.export.state  # noqa: F401  (imports outside the phases)

    with contextlib.ExitStack() as stack:
        if args.s3:
            folder = stack.enter_context(s3_server())
        else:
            folder = "file://" + stack.enter_context(tempfile.TemporaryDirectory(prefix="ciexport-memory-"))
        print(f"{args.profiles:,} contacts, state in {'S3 (moto server)' if args.s3 else 'a local file'}")
        measure(folder, args.profiles)


if __name__ == "__main__":
    main()
