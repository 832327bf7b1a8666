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
