"""Each benchmark runs once at a tiny size so it cannot rot; figures are not checked here."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.__main__ import BENCHMARKS, render

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_smoke_run_renders_a_table(name: str) -> None:
    section = importlib.import_module(BENCHMARKS[name]).smoke()
    assert section.key == name and section.rows
    assert all(len(row) == len(section.columns) for row in section.rows)
    assert f"## {name}" in render([section], "scripts/bench --smoke")


def test_p7_side_by_side_with_mcp_remote_runs_both_bridges() -> None:
    """P7's fleet through mcp-remote 0.15.1 too, tiny: both bridges really logged in once
    through the fake browser and answered calls, and the table has a column for each."""
    from benchmarks import p7_proxy
    from benchmarks._bridge_fleet import mcp_remote_available

    missing = mcp_remote_available()
    if missing is not None:
        pytest.skip(f"mcp-remote needs Node.js and npm: {missing}")
    section = p7_proxy.smoke(mcp_remote=True)
    assert section.columns == ["measure", "grantkeeper proxy", "mcp-remote 0.15.1"]
    by_measure = {row[0]: row[1:] for row in section.rows}
    first = by_measure["fleet: browser windows for the first login (nothing stored)"]
    assert first == ["1", "1"]
    calls = next(cells for measure, *cells in section.rows if measure.startswith("fleet: calls"))
    assert all(int(cell) > 0 for cell in calls)
