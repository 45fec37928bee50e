"""The sync bench's state measurement still runs against the state's current interface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "sync.py"


def test_the_sync_bench_measures_a_churn_run_of_a_signed_state(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/bench.state"
    for mode in ("first", "churn"):
        out = subprocess.run(
            [sys.executable, str(BENCH), "--state-child", mode, "2000", uri],
            check=True,
            capture_output=True,
            text=True,
        )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    # 0.5% left, 0.5% changed, 1% new, the rest as the first run recorded them.
    assert figures["counts"]["new"] == 19 and figures["counts"]["changed"] == 10
    assert figures["counts"]["unchanged"] == 2000 - 10 - 10
