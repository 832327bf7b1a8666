"""``grantkeeper tools`` and ``grantkeeper call``: use an MCP server, authenticated as it needs.

OAuth (the stored credential, refreshed when due, a 401 recovered from once), a static
bearer from servers.json (`login --with-token`), or nothing for a public server.

Exit codes: 0 done; 1 the tool reported an error, or the server or the store failed;
2 bad usage; 3 a person must log in (again): ``grantkeeper login`` fixes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from .._errors import GrantkeeperError, LoginRequired, authentication_required
from .._redact import scrub_known, scrub_known_in
from ._output import print_table
from ._policy import (
    EXIT_ERROR,
    EXIT_OK,
    fail,
    fail_for,
    handle_errors,
    json_option,
    keeper_for,
    open_store_for,
    profile_option,
    retry_option,
    server_argument,
    store_option,
    verbose_option,
)

if TYPE_CHECKING:
    from .._keeper import Keeper
    from .._mcp.sessions import McpSession
    from .._servers import ServerConfig
    from .._stores.base import Store

T = TypeVar("T")

AuthMode = Literal["oauth", "bearer", "none"]


def auth_mode(config: ServerConfig, store: Store) -> AuthMode:
    """How to reach ``config``: a static bearer it configures, the OAuth credential stored
    for it, or no authentication at all (a public server; a protected one answers 401,
    which says to log in)."""
    if config.static or any(name.lower() == "authorization" for name in config.headers):
        return "bearer"
    if store.read(config.key) is not None:  # a corrupt record raises: log in again
        return "oauth"
    return "none"


def _connect(
    config: ServerConfig, mode: AuthMode, keeper: Keeper | None
) -> contextlib.AbstractAsyncContextManager[McpSession]:
    """The one call of ``grantkeeper.mcp.connect``, with the credential ``mode`` chose."""
    from ..mcp import connect  # MissingExtra, naming [mcp], when the SDK is not installed

    headers = config.request_headers()  # ${VAR} from the environment; unset: ServerConfigError
    if mode == "oauth":
        return connect(config.url, keeper=keeper, headers=headers)
    if mode == "bearer":
        return connect(config.url, token=config.bearer(), headers=headers)
    # Nothing stored and no token: no authentication. A public server answers; a protected
    # one answers 401, which connect() raises as LoginRequired (exit 3, with the hint).
    return connect(config.url, headers=headers)


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
    retry: bool | None,
    call: Callable[[McpSession], Awaitable[T]],
) -> T:
    """Open a session with the right credential, run ``call``, map errors to exit codes."""
    from .._servers import resolve_server as resolve

    config = resolve(name_or_url, profile=profile)
    store = open_store_for(spec)
    mode = auth_mode(config, store)

    async def session(keeper: Keeper | None) -> T:
        async with _connect(config, mode, keeper) as opened:
            return await call(opened)

    def run(keeper: Keeper | None) -> T:
        try:
            return asyncio.run(session(keeper))
        except Exception as exc:
            raise _exit_for(exc, config, mode) from None

    if mode != "oauth":
        return run(None)
    with keeper_for(config, store, retry) as keeper:  # closed before the command exits
        return run(keeper)


def _exit_for(exc: BaseException, config: ServerConfig, mode: AuthMode) -> click.exceptions.Exit:
    needed = authentication_required(exc)
    if needed is not None:
        if mode == "none":
            # We sent nothing: the server wants a credential we do not have.
            needed = LoginRequired(f"{config.label} requires a login", key=str(config.key))
        return fail_for(needed)
    if isinstance(exc, GrantkeeperError):
        return fail_for(exc)
    found = _grantkeeper_cause(exc)
    if found is not None:
        return fail_for(found)
    leaf = _leaf(exc)
    status = getattr(getattr(leaf, "response", None), "status_code", None)
    if isinstance(status, int):
        return fail(
            f"{config.label} answered HTTP {status}; is {config.url} an MCP endpoint?", EXIT_ERROR
        )
    # A transport error (connection refused, a timeout): its type and message are plain.
    return fail(f"{type(leaf).__name__}: {leaf}", EXIT_ERROR)


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside ``exc``'s task groups: what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _grantkeeper_cause(exc: BaseException) -> GrantkeeperError | None:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _grantkeeper_cause(inner)
            if found is not None:
                return found
    cause = exc.__cause__
    return cause if isinstance(cause, GrantkeeperError) else None


@click.command(
    epilog="""\b
Examples:
  grantkeeper tools example
  grantkeeper tools https://mcp.example.com/mcp --profile work --json
"""
)
@server_argument
@store_option
@profile_option
@retry_option
@json_option
@verbose_option
@handle_errors
def tools(
    server: str,
    store_spec: str | None,
    profile: str | None,
    retry_unknown: bool | None,
    as_json: bool,
) -> None:
    """List the tools an MCP server offers (OAuth, a static token, or no auth)."""
    result = _run(server, store_spec, profile, retry_unknown, lambda s: s.list_tools())
    # The server's own text, printed: a secret it repeats is hidden, as in errors.
    document = scrub_known_in(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    if as_json:
        click.echo(json.dumps(document))
        return
    rows = []
    for tool in document["tools"]:
        summary = (tool.get("description") or "").strip().splitlines()
        rows.append((tool["name"], summary[0] if summary else "-"))
    print_table(("tool", "description"), rows)


@click.command(
    epilog="""\b
Examples:
  grantkeeper call example echo --arg text=hello
  grantkeeper call example add --json-args '{"a": 1, "b": 2}' --json
"""
)
@server_argument
@click.argument("tool")
@click.option("--arg", "pairs", multiple=True, metavar="KEY=VALUE", help="A tool argument.")
@click.option("--json-args", default=None, metavar="JSON", help="Tool arguments as an object.")
@store_option
@profile_option
@retry_option
@json_option
@verbose_option
@handle_errors
def call(
    server: str,
    tool: str,
    pairs: tuple[str, ...],
    json_args: str | None,
    store_spec: str | None,
    profile: str | None,
    retry_unknown: bool | None,
    as_json: bool,
) -> None:
    """Call TOOL on an MCP server and print its result. Exits 1 if the tool reports an error."""
    arguments = parse_arguments(pairs, json_args)
    result = _run(
        server, store_spec, profile, retry_unknown, lambda s: s.call_tool(tool, arguments)
    )
    # The server's own text, printed: a secret it repeats is hidden, as in errors.
    if as_json:
        document = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        click.echo(json.dumps(scrub_known_in(document)))
    elif result.structured_content is not None:
        click.echo(json.dumps(scrub_known_in(result.structured_content), indent=2))
    else:
        for item in result.content:
            text = getattr(item, "text", None)
            click.echo(scrub_known(text if text is not None else item.model_dump_json()))
    raise click.exceptions.Exit(EXIT_ERROR if result.is_error else EXIT_OK)


COMMANDS: list[click.Command] = [tools, call]
"""The commands this module adds to ``grantkeeper``'s CLI."""
