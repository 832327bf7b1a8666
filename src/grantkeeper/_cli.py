"""The ``grantkeeper`` command line: a group whose commands live in small modules.

Each module in :data:`COMMAND_MODULES` exports ``COMMANDS``; adding a module is a one-line
change. Modules are imported only when one of their commands runs (or for ``--help``),
so ``grantkeeper token`` starts without loading rich, the stores it does not use or the
MCP SDK.

Exit codes: 0 ok; 1 error; 2 bad usage; 3 a person must log in (again).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
"""A person must log in or log in again; scripts branch on this, not on messages."""

COMMAND_MODULES = (
    "grantkeeper._cli_auth",
    "grantkeeper._cli_stores",
    "grantkeeper._cli_tools",
    "grantkeeper._cli_proxy",
)
"""Modules whose ``COMMANDS`` make up the CLI, searched in this order."""

DEBUG_ENV = "GRANTKEEPER_DEBUG"
"""Set to 1 to see tracebacks of unexpected errors (they may show request details)."""

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_ERROR) -> click.exceptions.Exit:
    """Print ``error: message`` on stderr; return the exit to raise."""
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


def handle_errors(command: F) -> F:
    """Turn grantkeeper errors into one clean line and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ._errors import GrantkeeperError

        try:
            return command(*args, **kwargs)
        except GrantkeeperError as exc:
            needs_person = exc.requires_login or exc.requires_reauthentication
            raise fail(str(exc), EXIT_AUTH if needs_person else EXIT_ERROR) from None
        except KeyboardInterrupt:
            raise fail("cancelled", 130) from None
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            # The message of an unexpected error may quote a request; show only its type.
            raise fail(
                f"unexpected {type(exc).__name__}; set {DEBUG_ENV}=1 to see the traceback"
            ) from None

    return wrapper  # type: ignore[return-value]


def store_option(command: F) -> F:
    """``--store SPEC``: which credential store (default ``$GRANTKEEPER_STORE``, else auto)."""
    return click.option(
        "--store",
        "store_spec",
        metavar="SPEC",
        default=None,
        help="auto, file, keyring or postgresql://... Default: $GRANTKEEPER_STORE, else auto.",
    )(command)


def json_option(command: F) -> F:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(command)


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
def cli() -> None:
    """OAuth credentials for MCP servers that never break.

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 (re)authentication required.
    Files live in $GRANTKEEPER_HOME (default: the platform's user data directory).
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``grantkeeper`` script."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="grantkeeper")
