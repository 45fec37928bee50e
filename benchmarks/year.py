"""A year of daily mirror runs: what keeping a list in sync costs on day 365 against day 2.

``python benchmarks/year.py`` (run by ``make bench``) runs ``--days`` (default 365) daily mirror exports
of a ``--profiles`` segment (default 10,000) to both destinations of a sandbox at ``--scale`` times the
documented limits, through the operators' engine and hooks over real HTTP. Each day 0.5% of the segment
leaves, 0.5% new people join, 0.5% change a value and 0.1% of the people who left earlier come back.

It prints, for day 1, 2, 30 and the last day, the requests beyond the imports (every request but the
import requests and their status polls; ActiveCampaign's removals go through imports too) and the bytes
downloaded (list reads and contact exports), and the ratio of the last day to day 2 (goal: at most 1.1).
It writes ``benchmarks/results/year.json`` and a plot of the requests per run over the year to
``docs/_static/year.png`` (the Performance page shows it).

The requests beyond imports of a run are a fixed part (lists, fields, counts) plus parts proportional to
that day's churn (re-adds, removals, who opted out since): at 1,000,000 profiles the fixed part is the
same and the proportional parts are 100 times larger (see the budget on the sync page).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "year.json"
PLOT = HERE.parent / "docs" / "_static" / "year.png"
CC_LIST = "22222222-2222-4222-8222-222222222222"
AC_LIST = 2
#: The requests that send contacts (and, on ActiveCampaign, remove them) and follow their jobs.
IMPORT_ENDPOINTS = {
    "ac": ("POST /api/3/import/bulk_import", "GET /api/3/import/info"),
    "cc": ("POST /v3/activities/contacts_json_import",),
}
IMPORT_POLL_COUNTERS = {"ac": (), "cc": ("cc.activity_polls.import",)}
LEAVE, JOIN, CHANGE, RETURN = 0.005, 0.005, 0.005, 0.001


class Segment:
    """The segment, day by day: who is in it and the value each person has today.

    People who return come from those who left earlier; before anyone has left (day 2), from people
    who were in the segment before the first export, so every day has the same four kinds of churn.
    """

    def __init__(self, profiles: int, seed: int = 7) -> None:
        self.random = random.Random(seed)
        self.members: list[int] = list(range(profiles))
        self.version: dict[int, int] = {}
        before = round(profiles * RETURN)
        self.left: list[int] = list(range(profiles, profiles + before))
        self.next_id = profiles + before

    def rows(self) -> list[dict[str, str]]:
        return [
            {"email": f"person.{i:08d}@example.com", "first": f"P{i}v{self.version.get(i, 0)}"}
            for i in self.members
        ]

    def next_day(self, profiles: int) -> None:
        """Apply one day's churn, each part a fixed share of ``profiles``."""
        rnd = self.random
        leaving = set(rnd.sample(self.members, round(profiles * LEAVE)))
        staying = [i for i in self.members if i not in leaving]
        for i in rnd.sample(staying, round(profiles * CHANGE)):
            self.version[i] = self.version.get(i, 0) + 1
        back = rnd.sample(self.left, min(len(self.left), round(profiles * RETURN)))
        self.left = [i for i in self.left if i not in set(back)] + sorted(leaving)
        joined = list(range(self.next_id, self.next_id + round(profiles * JOIN)))
        self.next_id += len(joined)
        self.members = staying + back + joined


def _snapshot(sandbox: Any, dest: str) -> tuple[dict[str, int], dict[str, int]]:
    stats = sandbox.client.stats()
    by = stats["requests"].get(dest, {}).get("by_endpoint", {})
    requests = {k: int(v["count"]) for k, v in by.items()}
    counters = {k: int(v) for k, v in stats["counters"].items() if k.startswith(f"{dest}.")}
    return requests, counters


def _run_figures(dest: str, before: tuple[dict[str, int], dict[str, int]], after: Any) -> dict[str, Any]:
    requests = {k: after[0].get(k, 0) - before[0].get(k, 0) for k in after[0]}
    counters = {k: after[1].get(k, 0) - before[1].get(k, 0) for k in after[1]}
    total = sum(requests.values())
    imports = sum(requests.get(k, 0) for k in IMPORT_ENDPOINTS[dest])
    imports += sum(counters.get(k, 0) for k in IMPORT_POLL_COUNTERS[dest])
    return {
        "requests": total,
        "beyond_imports": total - imports,
        "bytes_downloaded": counters.get(f"{dest}.bytes_downloaded", 0),
        "by_endpoint": {k: v for k, v in requests.items() if v},
    }


def _operator(dest: str, rows: list[dict[str, str]], state_path: str) -> Any:
    from airflow_provider_ciexport.operators.activecampaign import ActiveCampaignSegmentExportOperator
    from airflow_provider_ciexport.operators.constantcontact import ConstantContactSegmentExportOperator

    common: dict[str, Any] = {
        "task_id": "year",
        "records": rows,
        "field_mapping": {"email": "email", "first_name": "first"},
        "state_path": state_path,
        "sync_mode": "mirror",
    }
    if dest == "ac":
        return ActiveCampaignSegmentExportOperator(list_id=AC_LIST, **common)
    return ConstantContactSegmentExportOperator(list_id=CC_LIST, **common)


def simulate(profiles: int, days: int, scale: float) -> dict[str, Any]:
    """Run the year against a fresh sandbox; return the figures of every run per destination."""
    from sync import in_process_airflow

    from airflow_provider_ciexport.tools.sandbox import SandboxConfig, SandboxServer

    out: dict[str, Any] = {"profiles": profiles, "days": days, "scale": scale}
    with (
        tempfile.TemporaryDirectory(prefix="ciexport-year-bench-") as tmp,
        SandboxServer(SandboxConfig(rate_scale=scale)) as sandbox,
    ):
        in_process_airflow(tmp, sandbox, scale)
        for dest in ("ac", "cc"):
            segment = Segment(profiles)
            runs = []
            started = time.monotonic()
            for day in range(1, days + 1):
                if day > 1:
                    segment.next_day(profiles)
                before = _snapshot(sandbox, dest)
                report = _operator(dest, segment.rows(), f"file://{tmp}/{dest}.state").execute(context={})
                figures = _run_figures(dest, before, _snapshot(sandbox, dest))
                keys = ("new", "changed", "removed", "readded", "restored", "skipped_unsubscribed")
                runs.append({"day": day, **figures, **{k: report.get(k, 0) for k in keys}})
                if day in (1, 2, 30) or day % 30 == 0 or day == days:
                    print(
                        f"    {dest} day {day:>3}: {figures['beyond_imports']:>4} requests beyond imports, "
                        f"{figures['bytes_downloaded']:>10,} bytes downloaded "
                        f"({time.monotonic() - started:,.0f} s so far)",
                        flush=True,
                    )
            out[dest] = runs
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """Day 1, 2, 3, 30 and the last day per destination, and the last day's cost over day 2's and
    day 3's: day 3 is the first day on which those who return include people the export itself
    removed (ActiveCampaign checks and re-subscribes each of them: 3 requests a person)."""
    days = out["days"]
    marks = sorted({d for d in (1, 2, 3, 30, days) if d <= days})
    result: dict[str, Any] = {}
    for dest in ("ac", "cc"):
        runs = out[dest]
        picked = {d: {k: runs[d - 1][k] for k in ("beyond_imports", "bytes_downloaded")} for d in marks}
        last = runs[-1]["beyond_imports"]
        result[dest] = {
            "days": picked,
            **{
                f"last_over_day_{d}": _ratio(last, runs[d - 1]["beyond_imports"]) for d in (2, 3) if d <= days
            },
        }
    return result


def _ratio(last: int, base: int) -> float | None:
    return round(last / base, 3) if base else None


def _keep_endpoints_of_summary_days(out: dict[str, Any]) -> None:
    """Keep the requests by endpoint of the summary's days only (the results file stays small)."""
    for dest in ("ac", "cc"):
        days = {int(d) for d in out["summary"][dest]["days"]}
        for run in out[dest]:
            if run["day"] not in days:
                run.pop("by_endpoint", None)


def plot(out: dict[str, Any], path: Path) -> None:
    """Requests beyond imports per run over the year, both destinations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    names = {"ac": "ActiveCampaign", "cc": "Constant Contact"}
    for dest in ("ac", "cc"):
        runs = out[dest][1:]  # day 1 is the first sync: every member read once
        ax.plot(
            [r["day"] for r in runs], [r["beyond_imports"] for r in runs], label=names[dest], linewidth=1.2
        )
    ax.set_xlabel("day")
    ax.set_ylabel("requests beyond imports")
    ax.set_title(f"Daily mirror runs of a {out['profiles']:,}-profile segment (day 2 onwards)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("airflow_provider_ciexport").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--scale", type=float, default=50.0, help="times the documented rate limits")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    print(
        f"A year of daily mirror runs: {args.days} days of a {args.profiles:,}-profile segment, "
        f"limits x{args.scale:g}",
        flush=True,
    )
    out = simulate(args.profiles, args.days, args.scale)
    out["summary"] = summary(out)
    _keep_endpoints_of_summary_days(out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, args.plot)
    for dest, figures in out["summary"].items():
        days = ", ".join(
            f"day {d}: {f['beyond_imports']} requests, {f['bytes_downloaded']:,} bytes"
            for d, f in figures["days"].items()
        )
        ratios = ", ".join(
            f"last day / day {k[-1]} = {v}" for k, v in figures.items() if k.startswith("last_over")
        )
        print(f"  {dest}: {days}; {ratios} (goal <= 1.1)")
    print(f"  written: {RESULTS.relative_to(HERE.parent)}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
