"""``grantkeeper proxy URL|NAME``: the stdio MCP server a desktop host starts, bridged to a
remote MCP server with grantkeeper's auth. The bridge is ``_proxy.streamable_http``.

``--transport auto`` (the default) starts on streamable HTTP and, as mcp-remote's
http-first strategy, switches to HTTP+SSE for the whole run when the server answers the
first deciding POST with 404 or 405 (a 5xx, 408, 429 or no answer decides nothing: the
next POST asks again) (``_proxy.sse.AutoProxy``); later 404s are forgotten sessions.
``streamable-http`` and ``sse`` fix the transport.

stdout carries JSON-RPC only, from the first byte: descriptor 1 is taken over before
anything else runs. Everything for people goes to stderr (and ``--log-file``), one line
per event; header values and tokens are never written.

Exit codes: 0 the host closed stdin (or sent SIGTERM); 1 error; 2 bad usage; 3 a person
must log in (only before the proxy starts serving; afterwards requests get JSON-RPC errors).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

import click

from ._policy import (
    callback_options,
    fail,
    handle_errors,
    nothing_stored,
    open_store_for,
    profile_option,
    server_argument,
    store_option,
)

if TYPE_CHECKING:
    from .._keeper import Keeper, Recovery
    from .._proxy.stdio import ProtocolOut
    from .._servers import ServerConfig
    from .._stores.base import Store

FROM_SOURCE = "grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper"
"""Where uvx takes grantkeeper from until the first release is on PyPI."""

MISSING_EXTRA = (
    "grantkeeper proxy needs the mcp extra: pip install 'grantkeeper[mcp]' here, "
    f"or in a host's config: uvx --from '{FROM_SOURCE}' grantkeeper proxy URL"
)

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


class _Scrub(logging.Filter):
    """Hides configured header values and every secret the process knows (a token, a
    client secret), should any reach a message: a server may have echoed it."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        from .._redact import scrub, scrub_known

        text = scrub_known(record.getMessage())
        record.msg = scrub(text, self.secrets, 10_000) if self.secrets else text
        record.args = None
        return True


def _configure_logging(verbose: int, log_file: str | None, secrets: list[str]) -> None:
    logger = logging.getLogger("grantkeeper")
    logger.setLevel(_LEVELS[min(verbose, len(_LEVELS) - 1)])
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s grantkeeper %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler()]  # stderr
    if log_file:
        binary = getattr(os, "O_BINARY", 0)  # Windows: the text layer writes the newlines
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | binary, 0o600)
        handlers.append(logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8")))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_Scrub(secrets))
        logger.addHandler(handler)


def _parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, colon, content = value.partition(":")
        name = name.strip()
        if not colon or not name or any(c.isspace() for c in name):
            # Nothing of it is echoed: without its colon, a value reads as a name.
            raise click.BadParameter("expected 'Name: value' (not shown: it may hold a secret)")
        headers[name] = content.strip()
    return headers


@click.command(
    epilog="""\b
Examples (each is the command a desktop host runs as its MCP server):
  grantkeeper proxy https://mcp.example.com/mcp
  grantkeeper proxy example --profile work           # a saved server, a second account
  grantkeeper proxy https://mcp.example.com/mcp --no-browser --log-file ~/gk-proxy.log

\b
In a host's config (Claude Desktop, Cursor, VS Code):
  {"command": "uvx", "args": ["--from",
    "grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper",
    "grantkeeper", "proxy", "URL"]}
"""
)
@server_argument
@profile_option
@click.option("--scope", "scopes", multiple=True, help="Scope to ask for at login (repeatable).")
@click.option(
    "--header",
    "header_values",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Extra header for every request (repeatable). An Authorization header turns OAuth off. "
    "${VAR} in VALUE is the environment variable VAR ($${VAR} is a literal ${VAR}).",
)
@click.option(
    "--ignore-tool",
    "ignore_tools",
    multiple=True,
    metavar="GLOB",
    help="Hide the server's tools whose name matches GLOB (fnmatch, case-sensitive; "
    "repeatable) from the host, and refuse its calls to them.",
)
@click.option(
    "--no-browser",
    is_flag=True,
    help="Never open a browser: requests get an error naming `grantkeeper login` instead.",
)
@click.option(
    "--login-timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for a browser login (here or in another proxy).",
)
@callback_options("for this run")
@click.option(
    "--ping-interval",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds between keep-alive pings to the server; 0 turns them off.",
)
@click.option(
    "--transport",
    type=click.Choice(["auto", "streamable-http", "sse"]),
    default="auto",
    show_default=True,
    help="The server's transport. auto: streamable HTTP, switching to HTTP+SSE for the run "
    "if the server answers the first POST with 404 or 405 (a 5xx, 408, 429 or no answer "
    "decides nothing: the next POST asks again). streamable-http or sse: that "
    "transport only (sse: older servers' HTTP+SSE, protocol 2024-11-05).",
)
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Also append the log here.")
@store_option
@handle_errors
def proxy(
    server: str,
    profile: str | None,
    scopes: tuple[str, ...],
    header_values: tuple[str, ...],
    ignore_tools: tuple[str, ...],
    no_browser: bool,
    login_timeout: float,
    callback_host: str | None,
    callback_port: int | None,
    ping_interval: float,
    transport: str,
    verbose: int,
    log_file: str | None,
    store_spec: str | None,
) -> None:
    """Serve MCP on stdio for a desktop host, bridged to the server at URL|NAME.

    \b
    In a host's config:  {"command": "uvx", "args": ["--from",
      "grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper",
      "grantkeeper", "proxy", "https://…/mcp"]}
    """
    from .._proxy.stdio import ProtocolOut
    from .._signals import ignore_stop_signals

    out = ProtocolOut.claim_stdout()  # before anything can print
    if not _has_mcp_extra():
        raise fail(MISSING_EXTRA)
    from .._keeper import RECOVERY_MARGIN, Keeper
    from .._redact import remember
    from .._servers import credential_header_values, expand_headers, resolve_server

    config = login_settings(resolve_server(server, profile=profile), callback_host, callback_port)
    # Expanded here, once, for this process only: the config (saved again by a login)
    # keeps its ${VAR} text. An --header replaces the file's header before its ${VAR} is read.
    put_in: list[str] = []
    headers = expand_headers(
        {**config.headers, **_parse_headers(header_values)}, server=config.label, secrets=put_in
    )
    bearer = config.bearer()
    remember(*credential_header_values(headers), pinned=True)  # --header values a server may echo
    _configure_logging(
        verbose, log_file, [*headers.values(), *put_in, *([bearer] if bearer else [])]
    )
    logging.getLogger("grantkeeper.proxy").info(
        "proxy.start url=%s key=%s headers=%s", config.url, config.key, sorted(headers) or "-"
    )
    oauth = bearer is None and not any(name.lower() == "authorization" for name in headers)
    keeper = None
    store = open_store_for(store_spec) if oauth else None
    if store is not None and nothing_stored(store, config) and _offers_no_oauth(config.url):
        # Nothing stored, and the server wants no login: serve it as it is (a public
        # server), rather than answer every request with "log in", which cannot succeed.
        logging.getLogger("grantkeeper.proxy").info("proxy.no_oauth url=%s", config.url)
        store = None
    if store is not None:
        scope = " ".join(s for value in scopes for s in value.split()) or None
        keeper = Keeper(
            store,
            config.key,
            # Without a browser no person can log in here: requests get the typed error,
            # and the proxy names the command that fixes it. A machine client or a workload
            # logs in with its own credentials, browser or not.
            recover=None
            if no_browser and not _logs_in_alone(config)
            else _browser_login(config, store, scope, login_timeout),
            recovery_wait=login_timeout + RECOVERY_MARGIN,
        )
    try:
        asyncio.run(
            _serve(
                config,
                out=out,
                keeper=keeper,
                headers=headers,
                ignore_tools=ignore_tools,
                bearer=bearer,
                ping_interval=ping_interval,
                transport=transport,
            )
        )
    finally:
        # The loop's signal handlers went with it: a second SIGTERM or SIGHUP must not
        # cut short the refresh that closing waits for.
        ignore_stop_signals()
        if keeper is not None:
            keeper.close()  # stores (or rescues) a refresh still pending
        out.close()


def _has_mcp_extra() -> bool:
    """Whether what the ``mcp`` extra brings is here: httpx2, and ``mcp`` 2.x (the proxy
    takes the 2026-07-28 header rules from it). Looked up, not imported: importing ``mcp``
    costs a proxy's start a good part of a second, and only 2026-era sessions need it."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("httpx2") is None:
        return False
    try:
        major = importlib.metadata.version("mcp").split(".", 1)[0]
    except importlib.metadata.PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 2


def login_settings(
    config: ServerConfig, callback_host: str | None, callback_port: int | None
) -> ServerConfig:
    """``config`` with ``--callback-host`` and ``--callback-port`` for this run's browser
    logins. Never saved: a desktop host's config line is where the operator keeps them,
    and a proxy must not rewrite what ``grantkeeper login`` saved."""
    import dataclasses

    if callback_host is not None:
        config = dataclasses.replace(config, callback_host=callback_host)
    if callback_port is not None:
        config = dataclasses.replace(config, callback_port=callback_port)
    return config


def _offers_no_oauth(url: str) -> bool:
    """Whether discovery says the server offers no OAuth at all: it let the unauthenticated
    probe in (or refused it without a Bearer challenge) and publishes no metadata. Anything
    else (it does, or it cannot be reached now) keeps OAuth on: the first request then says
    what is wrong. The probe carries none of the configured headers: discovery also asks the
    authorization server, another origin, and they may hold an API key."""
    from .._errors import GrantkeeperError, OAuthUnsupported
    from .._oauth.discovery import discover

    try:
        discover(url)
    except OAuthUnsupported:
        return True
    except GrantkeeperError:
        return False
    return False


def _browser_login(
    config: ServerConfig, store: Store, scope: str | None, timeout: float
) -> Recovery:
    """The Keeper's recovery hook: a browser login, for the union of scopes on a step-up.

    The Keeper runs it at most once at a time on this host, under its login lock, and not
    at all when another proxy's login has already stored what is needed."""
    import webbrowser

    from .._relogin import login_recovery

    log = logging.getLogger("grantkeeper.proxy")

    def present(url: str) -> None:
        log.warning("log in to %s in your browser: %s", config.label, url)
        webbrowser.open(url)

    return login_recovery(
        config, store=store, scope=scope, open_browser=present, callback_timeout=timeout
    )


async def _serve(
    config: ServerConfig,
    *,
    out: ProtocolOut,
    keeper: Keeper | None,
    headers: dict[str, str],
    ignore_tools: tuple[str, ...] = (),
    bearer: str | None,
    ping_interval: float,
    transport: str,
) -> None:
    import httpx2

    from .._network import client_options
    from .._platform import current
    from .._proxy.sse import AutoProxy, SseProxy
    from .._proxy.stdio import read_lines
    from .._proxy.streamable_http import HTTP_TIMEOUT, Proxy
    from .._signals import ignore_stop_signals
    from ..mcp import httpx2_auth

    auth = httpx2_auth(config.url, keeper=keeper, token=bearer, headers=headers)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()
    read_lines(loop, lines)
    handled = [
        signum
        for signum in current().stop_signals()
        if signal.getsignal(signum) is not signal.SIG_IGN  # nohup: stays ignored
    ]
    for signum in handled:
        # Hosts stop their servers with SIGTERM: end the session as on a closed stdin.
        loop.add_signal_handler(signum, lines.put_nowait, None)
    try:
        async with httpx2.AsyncClient(
            auth=auth,
            headers=headers,
            timeout=HTTP_TIMEOUT,
            follow_redirects=False,
            **client_options(),
        ) as http:
            bridges: dict[str, type[Proxy]] = {
                "auto": AutoProxy,
                "streamable-http": Proxy,
                "sse": SseProxy,
            }
            bridge = bridges[transport]
            await bridge(
                config,
                http=http,
                out=out,
                keeper=keeper,
                ping_interval=ping_interval,
                ignore_tools=ignore_tools,
            ).run(lines)
    finally:
        # Removing a handler restores the default action (death, for SIGTERM): ignore
        # SIGTERM and SIGHUP at once instead, until closing has stored what it must.
        for signum in handled:
            loop.remove_signal_handler(signum)
        ignore_stop_signals()


COMMANDS = [proxy]


def _logs_in_alone(config: ServerConfig) -> bool:
    """Whether the server's logins need no person: client credentials or a workload's own
    identity token."""
    return config.grant == "client_credentials" or bool(
        config.workload_identity_file or config.workload_identity_env
    )
