"""The README's demo runs (small) and reports success only when the guarantees held."""

from __future__ import annotations

import pytest

from harness import demo

pytestmark = pytest.mark.slow


def test_demo_passes_on_a_small_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--processes", "2", "--threads", "2", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "replays" in out and "refreshed silently, once" in out
