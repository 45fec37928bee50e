"""The ``bench-table`` and ``pace-table`` directives: the benchmark's tables, from its results files.

``make bench`` writes ``benchmarks/results/latest.json`` and ``benchmarks/results/pace.json``; the
Performance page shows their tables with the same rows and goals the bench prints
(``benchmarks/run.py``'s ``goal_rows``, ``benchmarks/pace.py``'s ``GOALS``), so the page cannot
drift from the last run::

    ```{bench-table} ../benchmarks/results/latest.json
    ```

    ```{pace-table} ../benchmarks/results/pace.json
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


def _bench_module(benchmarks: Path, script: str = "run") -> ModuleType:
    """``benchmarks/<script>.py`` (a script, not a package: its folder goes on ``sys.path`` for its
    imports)."""
    if str(benchmarks) not in sys.path:
        sys.path.append(str(benchmarks))
    spec = importlib.util.spec_from_file_location(f"ciexport_bench_{script}", benchmarks / f"{script}.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {benchmarks / script}.py")
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


def pace_markdown(summary: dict[str, Any], pace: ModuleType) -> list[str]:
    """The pace runs' context and one table row per timing model and worker, as Markdown lines.

    :param summary: the content of ``pace.json``.
    :param pace: ``benchmarks/pace.py`` as a module.
    """
    machine = summary.get("machine") or {}
    when = str(summary.get("generated_at", "?"))[:10]
    names = list(pace.GOALS)
    lines = [
        f"Latest run ({when}): a lone export of {summary['profiles']:,} profiles and three of "
        f"{summary['concurrent']:,} on one account, limits scaled {summary['scale']:g} times; "
        f"{machine.get('cpus', '?')} cores, Python {machine.get('python', '?')}.",
        "",
        "| timing model | busy cores | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
        "| goal | | " + " | ".join(_cell(f"{op} {target:g}") for op, target, _ in pace.GOALS.values()) + " |",
    ]
    for run in summary["runs"]:
        cells = []
        for name in names:
            value = run["figures"].get(name)
            cells.append(
                "-" if value is None else f"{value:.3f}" + ("" if pace.met(name, value) else " (**not met**)")
            )
        lines.append(f"| {run['timing']} | {run['busy_cores']} | " + " | ".join(cells) + " |")
    return lines


class BenchTable(SphinxDirective):
    """Render the goals table of a ``latest.json`` (its path relative to the page)."""

    required_arguments = 1
    has_content = False
    script = "run"

    def markdown(self, summary: dict[str, Any], module: ModuleType) -> list[str]:
        """The table's Markdown lines."""
        return bench_markdown(summary, module)

    def run(self) -> list[nodes.Node]:
        """Parse the generated Markdown in place of the directive."""
        relative, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(relative)
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        module = _bench_module(Path(path).resolve().parents[1], self.script)
        container = nodes.container()
        self.state.nested_parse(StringList(self.markdown(summary, module)), self.content_offset, container)
        return container.children


class PaceTable(BenchTable):
    """Render the table of a ``pace.json`` (its path relative to the page)."""

    script = "pace"

    def markdown(self, summary: dict[str, Any], module: ModuleType) -> list[str]:
        """The table's Markdown lines."""
        return pace_markdown(summary, module)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives."""
    app.add_directive("bench-table", BenchTable)
    app.add_directive("pace-table", PaceTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
