"""``grantkeeper login | logout | status | token | list``: thin commands over the public API.

Human output goes to stderr (prompts, progress) and stdout (results); ``--json`` makes
stdout one JSON document. Only ``token`` ever prints a secret, because that is its job.
rich is imported only by the commands that draw tables or spinners.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from ._cli import EXIT_AUTH, EXIT_OK, fail, handle_errors, json_option, store_option

if TYPE_CHECKING:
    from ._callback_server import CallbackServer
    from ._servers import ServerConfig
    from ._status import AuthStatus
    from ._store import Store


def _store(spec: str | None) -> Store:
    from ._errors import StoreConfigError
    from ._open_store import open_store

    try:
        return open_store(spec)
    except StoreConfigError as exc:
        raise click.UsageError(exc.message) from None


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _expires_in(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = int((moment - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "expired"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _say(message: str) -> None:
    click.echo(message, err=True)


# -- login --------------------------------------------------------------------------------


def _paste_reader(listener: CallbackServer) -> None:
    """Feed a pasted redirect URL to ``listener`` (``--manual``, for remote shells)."""

    def read() -> None:
        line = sys.stdin.readline()
        if line.strip():
            listener.deliver(line.strip())

    threading.Thread(target=read, name="grantkeeper paste", daemon=True).start()


def _authorizer(listener: CallbackServer, *, browser: bool, manual: bool, timeout: float) -> Any:
    from urllib.parse import parse_qs, urlsplit

    def authorize(url: str) -> str:
        listener.rearm(parse_qs(urlsplit(url).query).get("state", [None])[0])
        _say("Open this URL in a browser to log in:")
        _say(url)  # on its own line, so scripts and terminals can pick it out
        if browser:
            import webbrowser

            webbrowser.open(url)
        if manual:
            _say(
                "Then paste here the full URL your browser was sent to "
                "(it is fine if that page failed to load):"
            )
            _paste_reader(listener)
        if sys.stderr.isatty():
            from rich.console import Console

            with Console(stderr=True).status("Waiting for the authorization redirect…"):
                return listener.wait(timeout)
        return listener.wait(timeout)

    return authorize


@click.command()
@click.argument("server", metavar="URL|NAME")
@click.option("--name", help="Name to save the server under (default: its host).")
@click.option("--profile", help="A second credential for the same server, e.g. another account.")
@click.option("--scope", "scopes", multiple=True, help="Scope to ask for (repeatable).")
@click.option("--client-id", help="A pre-registered client id (default: register dynamically).")
@click.option(
    "--client-secret",
    envvar="GRANTKEEPER_CLIENT_SECRET",
    help="The pre-registered client's secret. Default: $GRANTKEEPER_CLIENT_SECRET.",
)
@click.option(
    "--client-metadata-url",
    help="This client's ID metadata document URL, used as client id where the server takes it.",
)
@click.option(
    "--client-credentials",
    is_flag=True,
    help="Log in as a machine client (client_credentials grant): no browser.",
)
@click.option(
    "--client-auth-method",
    type=click.Choice(["client_secret_basic", "client_secret_post", "private_key_jwt"]),
    help="How the machine client authenticates (default: from the secret or key given).",
)
@click.option("--client-key-file", help="PEM private key file for private_key_jwt.")
@click.option("--client-key-env", help="Environment variable holding that PEM private key.")
@click.option("--port", type=click.IntRange(0, 65535), help="Loopback port for the redirect.")
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--manual", is_flag=True, help="Paste the redirect URL yourself (remote shells).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the browser.",
)
@store_option
@json_option
@handle_errors
def login(
    server: str,
    name: str | None,
    profile: str | None,
    scopes: tuple[str, ...],
    client_id: str | None,
    client_secret: str | None,
    client_metadata_url: str | None,
    client_credentials: bool,
    client_auth_method: str | None,
    client_key_file: str | None,
    client_key_env: str | None,
    port: int | None,
    no_browser: bool,
    manual: bool,
    timeout: float,
    store_spec: str | None,
    as_json: bool,
) -> None:
    """Log in to an MCP server with OAuth and store the credential."""
    import dataclasses

    from ._discovery import discover
    from ._login_flow import callback_ports, listen_first_free
    from ._login_flow import login as run_login
    from ._servers import resolve_server, save_server

    config = resolve_server(server, profile=profile)
    changes: dict[str, Any] = {}
    if name:
        changes["name"] = name
    if scopes:
        changes["scope"] = " ".join(s for scope in scopes for s in scope.split())
    if client_id:
        changes.update(client_id=client_id, client_secret=client_secret)
    if port is not None:
        changes["callback_port"] = port
    if client_metadata_url:
        changes["client_metadata_url"] = client_metadata_url
    if client_credentials:
        changes["grant"] = "client_credentials"
    for field, value in (
        ("client_auth_method", client_auth_method),
        ("client_key_file", client_key_file),
        ("client_key_env", client_key_env),
    ):
        if value:
            changes[field] = value
    config = dataclasses.replace(config, **changes)
    store = _store(store_spec)
    if config.grant == "client_credentials":
        record = run_login(config, store=store)
    else:
        # Discovered once, here: the issuer says which kept registration's port to listen on,
        # so a second login reuses its client instead of registering another.
        # A configured port is bound first: a taken one is reported before any network.
        found = None if config.callback_port else discover(config.url)
        issuer = found.metadata.issuer if found is not None else ""
        ports = callback_ports(config, store, issuer, dynamic=not config.client_id)
        with listen_first_free(ports) as listener:
            authorize = _authorizer(
                listener, browser=not (no_browser or manual), manual=manual, timeout=timeout
            )
            record = run_login(
                config,
                store=store,
                authorize=authorize,
                redirect_uri=listener.redirect_uri,
                discovery=found,
            )
    saved = save_server(config)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": saved.name,
                    "url": saved.url,
                    "profile": saved.profile,
                    "state": "oauth",
                    "expires_at": _iso(record.expires_at),
                    "scope": record.scope,
                    "account": record.subject,
                    "issuer": record.issuer,
                    "store": store.name,
                    "refreshable": record.renewable,
                }
            )
        )
        return
    who = f" as {record.subject}" if record.subject else ""
    click.echo(
        f"Logged in to {saved.name} ({saved.url}){who}; "
        f"token expires in {_expires_in(record.expires_at)}; stored in {store.name}."
    )
    if not record.renewable:
        _say("warning: the server issued no refresh token; you will need to log in again soon")


# -- logout -------------------------------------------------------------------------------


@click.command()
@click.argument("server", metavar="URL|NAME")
@click.option("--profile", help="The profile to log out of.")
@click.option("--no-revoke", is_flag=True, help="Only delete locally; do not revoke the tokens.")
@store_option
@json_option
@handle_errors
def logout(
    server: str, profile: str | None, no_revoke: bool, store_spec: str | None, as_json: bool
) -> None:
    """Delete a server's credential and revoke its tokens at the server."""
    from ._logout import logout as run_logout
    from ._servers import resolve_server

    config = resolve_server(server, profile=profile)
    result = run_logout(_store(store_spec), config.key, revoke=not no_revoke)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "name": config.name,
                    "url": config.url,
                    "removed": result.removed,
                    "revoked": list(result.revoked),
                    "revocation_supported": result.revocation_supported,
                    "problems": list(result.problems),
                }
            )
        )
        return
    if not result.removed:
        click.echo(f"Not logged in to {config.label}; nothing to do.")
        return
    if result.revoked:
        revoked = f"; revoked the {' and '.join(k.replace('_', ' ') for k in result.revoked)}"
    elif no_revoke:
        revoked = "; tokens not revoked (--no-revoke)"
    elif not result.revocation_supported:
        revoked = "; the server offers no revocation endpoint"
    else:
        revoked = ""
    click.echo(f"Logged out of {config.label}{revoked}.")
    for problem in result.problems:
        _say(f"warning: {problem}")


# -- status -------------------------------------------------------------------------------


def _status_json(config: ServerConfig, status: AuthStatus) -> dict[str, Any]:
    return {
        "name": config.name,
        "url": config.url,
        "profile": config.profile,
        "state": status.state.value,
        "detail": status.detail or None,
        "expires_at": _iso(status.expires_at),
        "store": status.store,
        "account": status.subject,
        "action": status.action,
    }


@click.command()
@click.argument("server", metavar="[URL|NAME]", required=False)
@click.option("--profile", help="With URL|NAME: the profile to show.")
@click.option("--check", is_flag=True, help="Also probe each server (network).")
@store_option
@json_option
@handle_errors
def status(
    server: str | None, profile: str | None, check: bool, store_spec: str | None, as_json: bool
) -> None:
    """Show each server's auth state, from the store alone unless --check.

    Exits 3 when a listed server needs a (re)login.
    """
    from ._server_status import auth_status, known_servers
    from ._servers import resolve_server
    from ._status import AuthState

    store = _store(store_spec)
    servers = [resolve_server(server, profile=profile)] if server else known_servers(store)
    rows = [(config, auth_status(config, store, check=check)) for config in servers]
    needs_person = any(
        s.state in (AuthState.LOGIN_REQUIRED, AuthState.REAUTHENTICATION_REQUIRED) for _, s in rows
    )
    if as_json:
        click.echo(json.dumps([_status_json(c, s) for c, s in rows], indent=2))
    elif not rows:
        click.echo("No servers yet: run grantkeeper login URL")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "URL", "state", "expires in", "store", "account", "detail")
        for config, st in rows:
            table.add_row(
                config.name or "-",
                config.url + (f" #{config.profile}" if config.profile else ""),
                st.state.value,
                _expires_in(st.expires_at) if st.state is AuthState.OAUTH else "-",
                st.store or "-",
                st.subject or "-",
                st.detail + (f" → {st.action}" if st.action else ""),
            )
        Console().print(table)
    raise click.exceptions.Exit(EXIT_AUTH if needs_person else EXIT_OK)


# -- token --------------------------------------------------------------------------------


@click.command()
@click.argument("server", metavar="URL|NAME")
@click.option("--profile", help="The profile whose token to print.")
@store_option
@handle_errors
def token(server: str, profile: str | None, store_spec: str | None) -> None:
    """Print a valid access token, refreshing it first if needed. For scripts.

    This is the only command that prints a secret. Exits 3 if a login is needed.
    """
    from ._servers import resolve_server

    config = resolve_server(server, profile=profile)
    bearer = config.bearer()
    if bearer is not None:
        click.echo(bearer)
        return
    from ._errors import AuthenticationRequired
    from ._keeper import Keeper

    with Keeper(_store(store_spec), config.key) as keeper:
        try:
            click.echo(keeper.access_token())
        except AuthenticationRequired as exc:
            again = f" --profile {config.profile}" if config.profile else ""
            raise fail(f"{exc}; run: grantkeeper login {config.label}{again}", EXIT_AUTH) from None


# -- list ---------------------------------------------------------------------------------


@click.command(name="list")
@store_option
@json_option
@handle_errors
def list_servers(store_spec: str | None, as_json: bool) -> None:
    """List configured servers and stored credentials."""
    from ._server_status import known_servers

    servers = known_servers(_store(store_spec))
    entries = [
        {
            "name": c.name,
            "url": c.url,
            "profile": c.profile,
            "auth": "bearer" if (c.bearer_token or c.bearer_token_env) else "oauth",
            "client_id": c.client_id,
            "scope": c.scope,
        }
        for c in servers
    ]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("No servers yet: run grantkeeper login URL")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "URL", "profile", "auth", "client id", "scope")
    for e in entries:
        table.add_row(
            *(str(e[k] or "-") for k in ("name", "url", "profile", "auth")),
            str(e["client_id"] or "dynamic"),
            str(e["scope"] or "-"),
        )
    Console().print(table)


COMMANDS: list[click.Command] = [login, logout, status, token, list_servers]
"""The commands this module adds to ``grantkeeper``'s CLI."""

__all__ = ["COMMANDS", "fail"]
