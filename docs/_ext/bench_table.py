"""The ``bench-table`` directive: the benchmark's goals table, generated from its results file.

``make bench`` writes ``benchmarks/results/latest.json``; the Performance page shows its table with
the same rows and wording the bench prints (``benchmarks/run.py``'s ``goal_rows``), so the page
cannot drift from the last run::

    ```{bench-table} ../benchmarks/results/latest.json
    ```
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def _bench_module(benchmarks: Path) -> ModuleType:
    """``benchmarks/run.py`` (a script, not a package: its folder goes on ``sys.path`` for its imports)."""
    if str(benchmarks) not in sys.path:
        sys.path.append(str(benchmarks))
    spec = importlib.util.spec_from_file_location("ciexport_bench_run", benchmarks / "run.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {benchmarks / 'run.py'}")
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up while being defined.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, code-like names as literals."""
    return text.replace("|", "\\|")


def bench_markdown(summary: dict[str, Any], bench: ModuleType) -> list[str]:
    """The run's one-line context and its goals table, as Markdown lines.

    :param summary: the content of ``latest.json``.
    :param bench: ``benchmarks/run.py`` as a module.
    """
    machine = summary.get("machine") or {}
    when = str(summary.get("generated_at", "?"))[:10]
    lines = [
        f"Latest run ({when}): {summary['profiles']:,} profiles, limits scaled {summary['scale']:g} "
        f"times; {machine.get('cpus', '?')} cores, Python {machine.get('python', '?')}, Airflow "
        f"{machine.get('airflow', '?')}; {summary.get('bench_wall_s', 0) / 60:.0f} minutes for this part.",
        "",
        "| figure | value | goal | | detail |",
        "|---|---|---|---|---|",
    ]
    meanings = {name: goal.get("meaning", "") for name, goal in summary["goals"].items()}
    for name, value, target, verdict, detail in bench.goal_rows(summary):
        figure = f"`{name}`" + (f": {meanings[name]}" if meanings.get(name) else "")
        met = {"PASS": "met", "FAIL": "**not met**"}.get(verdict, "")
        lines.append(f"| {_cell(figure)} | {value} | {_cell(target)} | {met} | {_cell(detail)} |")
    return lines


class BenchTable(SphinxDirective):
    """Render the goals table of a ``latest.json`` (its path relative to the page)."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        """Parse the generated Markdown in place of the directive."""
        relative, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(relative)
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        bench = _bench_module(Path(path).resolve().parents[1])
        container = nodes.container()
        self.state.nested_parse(StringList(bench_markdown(summary, bench)), self.content_offset, container)
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive."""
    app.add_directive("bench-table", BenchTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
