"""``make bench``, part two: does the pace hold under another model of the limits, and on a busy worker?

The sandbox is one model of the APIs' documented limits; a pace tuned to it alone may not hold on the
real service. So this runs ``benchmarks/run.py`` (ActiveCampaign only) once per combination of

- the timing model: the sandbox's own, and ``strict`` (sliding windows counting refused requests too,
  a latency drawn per request: ``docs/sandbox.md``);
- the worker: quiet, and with its cores saturated by busy-loop processes (``--busy-cores``);

each with a lone export of ``--profiles`` profiles and three exports of ``--concurrent`` profiles at
once on one account under a real scheduler, at the rate-limit scale ``--scale`` (20: a one-second
window lasts 50 ms, so a few milliseconds of a process's wake-up delay weigh 20 times more than at
the real limits). It prints one table and writes ``benchmarks/results/pace.json``; the figures are
printed, never asserted (exit status non-zero only when an export failed).

Usage: ``python benchmarks/pace.py [--profiles N] [--concurrent N] [--busy-cores N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from run import reaches  # this script's folder is on sys.path, as for every benchmark script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "runs"
TIMINGS = ("sandbox", "strict")

#: name -> (comparison, target, what it means): the same targets in every combination.
GOALS: dict[str, tuple[str, float, str]] = {
    "alone_ceiling_ratio": (">=", 0.95, "a lone export's imports/min over the ceiling"),
    "alone_refused_share": ("<=", 0.01, "a lone export's requests answered 'too fast' / all"),
    "together_ceiling_ratio": (">=", 0.9, "three exports on one account: imports/min over the ceiling"),
    "together_refused_share": ("<=", 0.01, "three exports on one account: requests answered 429 / all"),
}


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The goals' values from one ``run.py`` summary."""
    alone = summary.get("by_destination", {}).get("ac", {})
    refused = sum((alone.get("sandbox_rate_limit_rejections") or {}).values())
    total = alone.get("api_requests_total")
    together = summary.get("shared_account", {}).get("ac", {})
    return {
        "alone_ceiling_ratio": alone.get("ceiling_ratio"),
        "alone_refused_share": refused / total if total else None,
        "together_ceiling_ratio": together.get("ceiling_ratio"),
        "together_refused_share": together.get("throttled_share"),
    }


def met(name: str, value: float | None) -> bool:
    """Whether ``value`` reaches the goal ``name`` (not measured: no)."""
    op, target, _ = GOALS[name]
    return reaches(value, op, target) is True


def run_one(args: argparse.Namespace, timing: str, busy: int) -> dict[str, Any]:
    """One combination: ``run.py`` in a child process; its summary, figures and exit status."""
    out = RUNS / f"pace-{timing}-busy{busy}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(HERE / "run.py"),
        "--only=ac",
        f"--profiles={args.profiles}",
        f"--concurrent={args.concurrent}",
        "--other-app=0",
        f"--scale={args.scale:g}",
        f"--timing={timing}",
        f"--busy-cores={busy}",
        f"--out={out}",
    ]
    print(f"== timing model {timing}, {busy} busy core(s) ==", flush=True)
    status = subprocess.run(cmd, check=False).returncode  # noqa: S603 - our own interpreter and script
    summary = json.loads(out.read_text()) if out.exists() else {}
    return {"timing": timing, "busy_cores": busy, "exit_status": status, "figures": figures(summary)}


def print_table(results: list[dict[str, Any]]) -> None:
    """One line per combination, each figure marked against its goal."""
    names = list(GOALS)
    print()
    print(f"{'timing':<8} {'busy':>4}  " + "  ".join(f"{n:>24}" for n in names))
    print(
        f"{'':<8} {'':>4}  " + "  ".join(f"{GOALS[n][0] + ' ' + format(GOALS[n][1], 'g'):>24}" for n in names)
    )
    for result in results:
        cells = []
        for name in names:
            value = result["figures"][name]
            text = "-" if value is None else f"{value:.3f} {'PASS' if met(name, value) else 'FAIL'}"
            cells.append(f"{text:>24}")
        print(f"{result['timing']:<8} {result['busy_cores']:>4}  " + "  ".join(cells))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="benchmarks/pace.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=200_000, help="the lone export's profiles")
    parser.add_argument(
        "--concurrent", type=int, default=100_000, help="profiles of each of the three exports at once"
    )
    parser.add_argument("--scale", type=float, default=20.0, help="rate-limit scale (default 20)")
    parser.add_argument(
        "--busy-cores",
        type=int,
        default=os.cpu_count() or 2,
        help="busy-loop processes of the busy case (default: one per core)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every combination; non-zero exit only if an export failed."""
    args = parse_args(argv)
    RUNS.mkdir(parents=True, exist_ok=True)
    results = [run_one(args, timing, busy) for timing in TIMINGS for busy in (0, args.busy_cores)]
    print_table(results)
    for result in results:
        result["goals_met"] = all(met(name, value) for name, value in result["figures"].items())
    summary = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "profiles": args.profiles,
        "concurrent": args.concurrent,
        "scale": args.scale,
        "goals": {
            name: {"goal": f"{op} {target:g}", "meaning": m} for name, (op, target, m) in GOALS.items()
        },
        "runs": results,
        "all_goals_met": all(r["goals_met"] for r in results),
    }
    (RESULTS / "pace.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"Wrote {(RESULTS / 'pace.json').relative_to(HERE.parent)}")
    return 0 if all(r["exit_status"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
