"""The README's demo runs (small) and reports success only when the guarantees held."""

from __future__ import annotations

import pytest

from harness import demo
from harness.demo_cli import walk_through

pytestmark = pytest.mark.slow


def test_demo_passes_on_a_small_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--processes", "2", "--threads", "2", "--rounds", "2", "--seconds", "4"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    # Every part ran and was judged by the servers' counters.
    for part in (
        "1. one login shared by a fleet",
        "2. the same fleet through grantkeeper and through the mcp SDK",
        "3. the CLI a user types",
        "4. an MCP tool call across a real expiry",
    ):
        assert part in out
    assert "forced logins" in out and "mcp SDK" in out
    assert "grantkeeper refreshed once per rotation" in out
    assert "refreshed silently, once" in out and "demo passed" in out


def test_the_cli_walk_through_shows_an_80_column_terminal_and_masks_the_token() -> None:
    steps = walk_through()
    assert [step.command.split()[1] for step in steps] == ["login", "status", "token", "call"]
    assert all(step.exit_code == 0 for step in steps), steps[-1]
    login, status, token, call = steps
    assert "Logged in to demo" in login.output
    assert "demo" in status.output and "oauth" in status.output
    assert all(len(line) <= 80 for line in status.output.splitlines())
    assert "an access token" in token.output  # masked: its first 4 characters only
    assert "hello from the CLI" in call.output
