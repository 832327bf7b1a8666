"""``grantkeeper tools`` and ``grantkeeper call``: use an MCP server with the stored credential.

The credential is refreshed silently when it is due, and a 401 is recovered from once.

Exit codes: 0 done; 1 the tool reported an error, or the server or the store failed;
2 bad usage; 3 a person must log in (again): ``grantkeeper login`` fixes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ._classify import authentication_required
from ._errors import GrantkeeperError, StoreError
from ._record import CredentialKey

if TYPE_CHECKING:
    from ._mcp import McpSession

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3

store_option = click.option(
    "--store",
    "spec",
    metavar="SPEC",
    default=None,
    help="Store to use: auto, file, keyring or postgresql://... Default: $GRANTKEEPER_STORE.",
)
profile_option = click.option("--profile", default=None, help="Credential profile (account).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def resolve_server(name_or_url: str, profile: str | None) -> tuple[str, CredentialKey]:
    """The MCP server URL and credential key for ``NAME|URL`` (names from servers.json)."""
    from ._servers import resolve_server as resolve

    config = resolve(name_or_url, profile=profile)
    try:
        return config.url, CredentialKey.for_server(config.url, config.profile)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def parse_arguments(pairs: tuple[str, ...], json_args: str | None) -> dict[str, Any]:
    """``--json-args`` first, then each ``--arg key=value`` over it.

    A value that parses as JSON is taken as such (``n=3`` is a number, ``flag=true`` a
    boolean); anything else is a string (``text=hello``).
    """
    arguments: dict[str, Any] = {}
    if json_args is not None:
        try:
            parsed = json.loads(json_args)
        except ValueError as exc:
            raise click.UsageError(f"--json-args is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise click.UsageError("--json-args must be a JSON object")
        arguments.update(parsed)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--arg wants key=value, not {pair!r}")
        try:
            arguments[name] = json.loads(raw)
        except ValueError:
            arguments[name] = raw
    return arguments


def _run(
    name_or_url: str,
    spec: str | None,
    profile: str | None,
    call: Callable[[McpSession], Awaitable[T]],
) -> T:
    """Open a session with the stored credential, run ``call``, map errors to exit codes."""
    from ._keeper import Keeper
    from ._mcp import connect
    from ._open_store import open_store

    url, key = resolve_server(name_or_url, profile)
    try:
        store = open_store(spec)
    except StoreError as exc:
        raise click.UsageError(exc.message) from None

    async def session() -> T:
        async with connect(url, keeper=keeper) as opened:
            return await call(opened)

    keeper = Keeper(store, key)
    try:
        return asyncio.run(session())
    except Exception as exc:
        _fail(exc, key)
    finally:
        keeper.close()


def _fail(exc: BaseException, key: CredentialKey) -> NoReturn:
    needed = authentication_required(exc)
    if needed is not None:
        click.echo(f"error: {needed}", err=True)
        click.echo(f"run: grantkeeper login {key.server_url}", err=True)
        raise SystemExit(EXIT_AUTH)
    found = exc if isinstance(exc, GrantkeeperError) else None
    detail = str(found) if found else f"{type(exc).__name__}: {exc}"
    click.echo(f"error: {detail}", err=True)
    raise SystemExit(EXIT_FAILED)


@click.command()
@click.argument("server", metavar="NAME|URL")
@store_option
@profile_option
@json_option
def tools(server: str, spec: str | None, profile: str | None, as_json: bool) -> None:
    """List the tools an MCP server offers."""
    result = _run(server, spec, profile, lambda session: session.list_tools())
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True)))
        return
    for tool in result.tools:
        summary = (tool.description or "").strip().splitlines()
        click.echo(f"{tool.name}\t{summary[0] if summary else ''}")


@click.command()
@click.argument("server", metavar="NAME|URL")
@click.argument("tool")
@click.option("--arg", "pairs", multiple=True, metavar="KEY=VALUE", help="A tool argument.")
@click.option("--json-args", default=None, metavar="JSON", help="Tool arguments as an object.")
@store_option
@profile_option
@json_option
def call(
    server: str,
    tool: str,
    pairs: tuple[str, ...],
    json_args: str | None,
    spec: str | None,
    profile: str | None,
    as_json: bool,
) -> None:
    """Call TOOL on an MCP server and print its result."""
    arguments = parse_arguments(pairs, json_args)
    result = _run(server, spec, profile, lambda session: session.call_tool(tool, arguments))
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True)))
    elif result.structured_content is not None:
        click.echo(json.dumps(result.structured_content, indent=2))
    else:
        for item in result.content:
            text = getattr(item, "text", None)
            click.echo(text if text is not None else item.model_dump_json())
    raise SystemExit(EXIT_FAILED if result.is_error else EXIT_OK)


COMMANDS: list[click.Command] = [tools, call]
"""The commands this module adds to ``grantkeeper``'s CLI."""
