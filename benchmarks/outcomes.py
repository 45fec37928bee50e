"""What the outcome log costs: CPU, peak memory and file size of writing it for a large export.

Each variant exports the same generated segment (messy in the ways that give every status: 1% of
rows invalid, 1% duplicates, 1% refused) through the export engine to an in-memory destination that
answers every job at once, in a fresh process; only the outcome log differs between them. The CPU
(``time.process_time``, every thread) and the peak RSS of the process with a log, minus those of the
same export without one, are the log's cost. Figures are printed (and written to
``results/outcomes.json``), never asserted.

    python benchmarks/outcomes.py --profiles 1000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_ciexport.core.contacts import ContactSchema
from airflow_provider_ciexport.core.jobs import JobResult
from airflow_provider_ciexport.export.batcher import Batch
from airflow_provider_ciexport.export.destination import Destination
from airflow_provider_ciexport.export.engine import ExportSettings, SegmentExporter
from airflow_provider_ciexport.export.outcomes import OutcomeSettings
from airflow_provider_ciexport.export.sources.base import SegmentSource
from airflow_provider_ciexport.export.state import StateKeys

RESULTS = Path(__file__).parent / "results" / "outcomes.json"
#: Variant name -> (outcomes_path suffix or None, outcome_key columns).
VARIANTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "no log": (None, ()),
    "parquet, keyed hash": (".parquet", ()),
    "parquet, customer_id": (".parquet", ("customer_id",)),
    "csv, customer_id": (".csv", ("customer_id",)),
}
GOALS = {"cpu_s_per_1m": 10.0, "rss_mb": 50.0, "parquet_bytes_per_row": 20.0}


class GeneratedSegment(SegmentSource):
    """``n`` customers, generated as they are read: 1% invalid addresses, 1% repeats of an earlier one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.description = f"{n:,} generated customers"

    def _read(self) -> Generator[Any, None, None]:
        yield ["customer_id", "email", "first_name"]
        for start in range(0, self.n, 5000):
            yield [_customer(i) for i in range(start, min(start + 5000, self.n))]

    def _count(self) -> int:
        return self.n


def _customer(i: int) -> tuple[str, str, str]:
    if i % 100 == 7:
        return (f"C{i:08d}", f"not an address {i}", "Invalid")
    if i % 100 == 8 and i > 100:
        return (f"C{i:08d}", f" Customer{i - 100}@Example.com", "Repeat")
    return (f"C{i:08d}", f"customer{i}@example.com", f"First{i}")


class InstantDestination(Destination):
    """Takes batches of 1,000 contacts and answers every job at once, refusing 1% by name."""

    name = "Instant"
    schema = ContactSchema("Instant", {"email": 254, "first_name": 50}, "x:")
    max_batch_contacts = 1000
    max_batch_bytes = 1_000_000
    max_in_flight = 4
    max_unconfirmed = 8
    poll_interval = 0.0
    max_poll_interval = 0.0
    max_poll_rate = 1e9

    def __init__(self) -> None:
        self.jobs = 0

    @property
    def list_ids(self) -> Sequence[str]:
        return ["1"]

    def prepare(self, field_mapping: Mapping[str, str]) -> None:
        """Nothing to prepare."""

    def envelope(self) -> tuple[bytes, bytes]:
        return b"[", b"]"

    def encode(self, contact: Mapping[str, str]) -> bytes:
        return json.dumps(contact).encode()

    def submit(self, batch: Batch) -> str:
        self.jobs += 1
        return f"job-{self.jobs}"

    def poll(self, job_id: str, batch: Batch) -> JobResult | None:
        contacts = json.loads(batch.body)
        refused = tuple(c["email"] for c in contacts[::100])
        return JobResult(
            ok=True, accepted=len(contacts) - len(refused), rejected=len(refused), refused=refused
        )

    def send_small(self, contacts: Sequence[Mapping[str, str]]) -> int:
        return len(contacts)

    @property
    def requests_made(self) -> int:
        return 2 * self.jobs


def run_variant(name: str, n: int, folder: Path) -> dict[str, Any]:
    """One export in this process; its CPU, peak RSS and log size."""
    suffix, key = VARIANTS[name]
    outcomes = None
    if suffix is not None:
        keys = StateKeys(["the benchmark's state key, long enough"], "the benchmark")
        outcomes = OutcomeSettings(f"file://{folder}/log{suffix}", key, keys, {"dag_id": "bench"})
    logging.disable(logging.INFO)
    exporter = SegmentExporter(
        GeneratedSegment(n),
        InstantDestination(),
        {"email": "email", "first_name": "first_name"},
        ExportSettings(),
        outcomes=outcomes,
    )
    start = time.process_time()
    report = exporter.run()
    cpu = time.process_time() - start
    size = (folder / f"log{suffix}").stat().st_size if suffix else 0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"cpu_s": cpu, "peak_rss_mb": peak_kb / 1024, "log_bytes": size, "read": report.read}


def measure(n: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Each variant in a fresh process, ``repeats`` times alternating; the lowest CPU and peak of each."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name in VARIANTS:
            with tempfile.TemporaryDirectory() as folder:
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--profiles",
                    str(n),
                    "--folder",
                    folder,
                ]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout  # noqa: S603
            figures = json.loads(out.strip().splitlines()[-1])
            kept = best.setdefault(name, figures)
            kept["cpu_s"] = min(kept["cpu_s"], figures["cpu_s"])
            kept["peak_rss_mb"] = min(kept["peak_rss_mb"], figures["peak_rss_mb"])
    return best


def summarise(best: dict[str, dict[str, Any]], n: int) -> dict[str, Any]:
    """The log's cost per variant: CPU per 1M rows and peak RSS over the export without a log."""
    base = best["no log"]
    rows: dict[str, Any] = {"profiles": n, "goals": GOALS, "variants": {}}
    for name, figures in best.items():
        if name == "no log":
            continue
        rows["variants"][name] = {
            "cpu_s_per_1m": round((figures["cpu_s"] - base["cpu_s"]) * 1_000_000 / n, 2),
            "rss_mb": round(figures["peak_rss_mb"] - base["peak_rss_mb"], 1),
            "bytes_per_row": round(figures["log_bytes"] / n, 1),
        }
    rows["export_cpu_s_without_log"] = round(base["cpu_s"], 2)
    return rows


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\nOutcome log, {summary['profiles']:,} profiles (export CPU without a log: "
        f"{summary['export_cpu_s_without_log']} s)"
    )
    print(f"{'variant':<24}{'CPU s / 1M':>12}{'peak RSS MB':>13}{'bytes/row':>11}")
    for name, figures in summary["variants"].items():
        print(f"{name:<24}{figures['cpu_s_per_1m']:>12}{figures['rss_mb']:>13}{figures['bytes_per_row']:>11}")
    print(
        f"goals: CPU <= {GOALS['cpu_s_per_1m']} s per 1M, peak RSS <= {GOALS['rss_mb']} MB, Parquet "
        f"<= {GOALS['parquet_bytes_per_row']} bytes a row"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.profiles, Path(args.folder))))
        return
    summary = summarise(measure(args.profiles, args.repeats), args.profiles)
    print_table(summary)
    if args.profiles >= 1_000_000:
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"written to {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()
