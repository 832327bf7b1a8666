"""The ``grantkeeper`` command line: a thin layer over the library, as keyring's ``cli.py``
sits on its core.

Each module in :data:`COMMAND_MODULES` exports ``COMMANDS``; adding a module is a one-line
change. Modules are imported only when one of their commands runs (or for ``--help``),
so ``grantkeeper token`` starts without loading rich, the stores it does not use or the
MCP SDK. Options, exit codes and hints are declared once, in :mod:`._policy`; output
(tables, tab-separated lines, JSON) in :mod:`._output`.
"""

from __future__ import annotations

import importlib
import sys

import click

from ._policy import configure_logging, verbose_option

COMMAND_MODULES = (
    "grantkeeper._cli._auth",
    "grantkeeper._cli._stores",
    "grantkeeper._cli._tools",
    "grantkeeper._cli._proxy",
)
"""Modules whose ``COMMANDS`` make up the CLI, searched in this order."""


def _commands(module_name: str) -> list[click.Command]:
    commands: list[click.Command] = importlib.import_module(module_name).COMMANDS
    return commands


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = {c.name for module in COMMAND_MODULES for c in _commands(module) if c.name}
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES:
            for command in _commands(module):
                if command.name == cmd_name:
                    return command
        return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grantkeeper")
@verbose_option
def cli() -> None:
    """OAuth credentials for MCP servers that never break.

    \b
    Examples:
      grantkeeper login https://mcp.example.com/mcp --name example
      grantkeeper status
      grantkeeper token example --profile work
      grantkeeper headers example          # for Claude Code's headersHelper
      grantkeeper call example echo --arg text=hi

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 a person must log in (again).
    Output: a table on a terminal, tab-separated lines when piped, --json for scripts;
    NO_COLOR=1 turns colour off.
    Environment: GRANTKEEPER_HOME (files; default: the platform's user data directory),
    GRANTKEEPER_STORE (default store), GRANTKEEPER_RETRY_UNKNOWN_OUTCOME (0 or 1),
    GRANTKEEPER_DEBUG=1 (tracebacks of unexpected errors; they may show request details).
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``grantkeeper`` script."""
    from .._signals import stop_like_sigint

    stop_like_sigint()
    configure_logging(False)
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="grantkeeper")


__all__ = ["COMMAND_MODULES", "cli", "main"]
