"""``grantkeeper login | logout | status | token | headers | list``: thin commands over the
public API.

Human output goes to stderr (prompts, progress) and stdout (results); ``--json`` makes
stdout one JSON document. Only ``token`` and ``headers`` ever print a secret, because that
is their job.
rich is imported only by the commands that draw tables or spinners.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from ._output import print_json, print_table
from ._policy import (
    EXIT_AUTH,
    EXIT_OK,
    callback_options,
    fail,
    handle_errors,
    json_option,
    keeper_for,
    nothing_stored,
    open_store_for,
    optional_server_argument,
    profile_option,
    retry_option,
    server_argument,
    store_option,
    verbose_option,
)

if TYPE_CHECKING:
    from .._oauth.callback_server import CallbackServer
    from .._oauth.code_flow import Authorize
    from .._record import Credential
    from .._servers import ServerConfig
    from .._status import AuthStatus
    from .._stores.base import Store


def _store(spec: str | None) -> Store:
    return open_store_for(spec)


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


def one_callback_port(callback_port: int | None, port: int | None) -> int | None:
    """The port of ``--callback-port`` or its old name ``--port``; both must agree."""
    if callback_port is not None and port is not None and callback_port != port:
        raise click.UsageError("--port is the old name of --callback-port: give one of them")
    return callback_port if callback_port is not None else port


def _paste_reader(listener: CallbackServer) -> None:
    """Feed a pasted redirect URL to ``listener`` (``--manual``, for remote shells)."""

    def read() -> None:
        line = sys.stdin.readline()
        if line.strip():
            listener.deliver(line.strip())

    threading.Thread(target=read, name="grantkeeper paste", daemon=True).start()


def _authorizer(
    listener: CallbackServer, *, browser: bool, manual: bool, timeout: float
) -> Authorize:
    """The library's loopback authorizer, presenting the URL for a person at a terminal."""
    import contextlib

    from .._login import loopback_authorizer

    waiting = contextlib.ExitStack()

    def present(url: str) -> None:
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

            # Shown while the library's authorizer waits; closed when it returns.
            waiting.enter_context(
                Console(stderr=True).status("Waiting for the authorization redirect…")
            )

    inner = loopback_authorizer(listener, present, timeout=timeout)

    def authorize(url: str) -> str:
        with waiting:
            return inner(url)

    return authorize


def _read_token() -> str:
    """The static token piped on stdin (``--with-token``), as ``gh auth login`` reads it."""
    if sys.stdin.isatty():
        _say("Paste the token, then press Enter:")
    token = sys.stdin.readline().strip()
    if not token or any(c.isspace() for c in token):
        raise click.UsageError("--with-token reads one token (no spaces) from standard input")
    return token


def _saved_under(config: ServerConfig) -> ServerConfig:
    """``config`` as login saves it: a profile never overwrites the entry it was derived from.

    ``login demo --profile work`` keeps ``demo`` (no profile) as it is, and saves the work
    credential's settings as an entry of its own, ``demo-work``: a name made of what the
    user typed, which ``status`` and the hints then show. When that name is not free (or not
    a valid name) the entry gets a name derived from the URL, as an unnamed login does.
    """
    import dataclasses

    from .._servers import NAME_PATTERN, load_servers

    servers = {c.name: c for c in load_servers() if c.name}
    named = servers.get(config.name) if config.name else None
    if named is None or named.profile == config.profile:
        return config
    derived = f"{config.name}-{config.profile}"
    taken = servers.get(derived)
    free = taken is None or (taken.url == config.url and taken.profile == config.profile)
    return dataclasses.replace(
        config, name=derived if free and NAME_PATTERN.match(derived) else None
    )


@click.command(
    epilog="""\b
Examples:
  grantkeeper login https://mcp.example.com/mcp --name example
  grantkeeper login example --profile work          # a second account
  grantkeeper login example --manual                # over ssh: paste the redirect URL
  echo "$TOKEN" | grantkeeper login https://api.example.com/mcp --name api --with-token
  echo "$TOKEN" | grantkeeper login api --with-token   # replace that server's token
  grantkeeper login https://mcp.example.com/mcp --name example --client-id my-workload \\
      --workload-identity-file /var/run/secrets/tokens/mcp   # a pod, by its own identity
"""
)
@server_argument
@click.option("--name", help="Name to save the server under (default: its host).")
@profile_option
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
@click.option(
    "--workload-identity-file",
    type=click.Path(dir_okay=False),
    help="Log in as a workload with its own identity token (a JWT, e.g. a Kubernetes "
    "projected service-account token) read from this file at every renewal: no browser.",
)
@click.option(
    "--workload-identity-env",
    metavar="VAR",
    help="Environment variable holding the workload's identity token instead.",
)
@click.option(
    "--dpop/--no-dpop",
    default=None,
    help="Bind tokens to a DPoP key (RFC 9449), or never; saved for the server. "
    "Default: where the authorization server offers it.",
)
@click.option(
    "--resource/--no-resource",
    "resource_indicator",
    default=None,
    help="Send the resource parameter (RFC 8707) at login and refresh, or never, for "
    "providers that refuse it next to scope (Microsoft Entra ID v2, AADSTS9010010); "
    "saved for the server. Default: send it.",
)
@callback_options("saved for the server")
# The old name of --callback-port, kept so that scripts written for it still work.
@click.option("--port", type=click.IntRange(0, 65535), hidden=True)
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--manual", is_flag=True, help="Paste the redirect URL yourself (remote shells).")
@click.option(
    "--with-token",
    is_flag=True,
    help="Read a static bearer token from stdin and save it for this server (no OAuth).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the browser.",
)
@store_option
@json_option
@verbose_option
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
    workload_identity_file: str | None,
    workload_identity_env: str | None,
    dpop: bool | None,
    resource_indicator: bool | None,
    callback_host: str | None,
    callback_port: int | None,
    port: int | None,
    no_browser: bool,
    manual: bool,
    with_token: bool,
    timeout: float,
    store_spec: str | None,
    as_json: bool,
) -> None:
    """Log in to an MCP server with OAuth and store the credential.

    With --with-token, save a static bearer token read from stdin instead.
    """
    import dataclasses

    from .._errors import OAuthUnsupported
    from .._login import login as run_login
    from .._servers import resolve_server, save_server

    if with_token:
        if profile:
            raise click.UsageError("a static token has no profiles: drop --profile")
        from .._errors import ServerConfigError

        try:
            config = resolve_server(server)
        except ServerConfigError as exc:
            if "://" in server:
                raise
            # The generic hint would start a browser login; this user has a token to save.
            raise ServerConfigError(
                f"{exc.message.split(';')[0]}; save a token for it with its URL: "
                f"grantkeeper login URL --name {shlex.quote(server)} --with-token",
                key=exc.key,
            ) from None
        token = _read_token()
        config = dataclasses.replace(
            config, name=name or config.name, bearer_token=token, bearer_token_env=None
        )
        saved = save_server(config)
        if as_json:
            print_json({"name": saved.name, "url": saved.url, "profile": None, "state": "bearer"})
            return
        click.echo(
            f"Saved a static token for {saved.name} ({saved.url}); "
            f"try: grantkeeper tools {saved.name}"
        )
        return
    config = resolve_server(server, profile=profile)
    changes: dict[str, Any] = {}
    if name:
        changes["name"] = name
    if scopes:
        changes["scope"] = " ".join(s for scope in scopes for s in scope.split())
    if client_id:
        # A client given now is bound to the issuer this login reaches (below), not to the
        # one an earlier client of this entry was issued by.
        changes.update(client_id=client_id, client_secret=client_secret, client_issuer=None)
    callback_port = one_callback_port(callback_port, port)
    if callback_port is not None:
        changes["callback_port"] = callback_port
    if callback_host is not None:
        changes["callback_host"] = callback_host
    if dpop is not None:
        changes["dpop"] = dpop
    if resource_indicator is not None:
        changes["resource_indicator"] = resource_indicator
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
    if workload_identity_file and workload_identity_env:
        raise click.UsageError("give --workload-identity-file or --workload-identity-env, not both")
    workload = workload_identity_file or workload_identity_env
    if workload and (client_credentials or client_key_file or client_key_env or client_auth_method):
        raise click.UsageError(
            "a workload logs in with its own identity token alone: drop --client-credentials "
            "and the client key and auth method options"
        )
    if workload:
        # The way given now replaces the entry's: the token is read from one place, and a
        # machine client saved before becomes this workload.
        changes.update(
            workload_identity_file=(
                os.path.abspath(workload_identity_file) if workload_identity_file else None
            ),
            workload_identity_env=workload_identity_env or None,
            grant=None,
        )
    elif client_credentials:
        changes.update(workload_identity_file=None, workload_identity_env=None)
    config = dataclasses.replace(config, **changes)
    store = _store(store_spec)
    try:
        record = run_login(
            config,
            store=store,
            # Given now, the client is the operator's choice for wherever the server points:
            # no earlier binding of this entry stands in its way.
            client_id=client_id or None,
            client_secret=client_secret or None,
            authorizer_for=lambda listener: _authorizer(
                listener, browser=not (no_browser or manual), manual=manual, timeout=timeout
            ),
        )
    except OAuthUnsupported as exc:
        # Not a dead end: a public server needs no login, a token server takes --with-token.
        raise OAuthUnsupported(
            f"{exc.message}. If it needs no login, use it as it is: grantkeeper tools "
            f"{server}; if it takes a static token: grantkeeper login {server} --with-token",
            key=exc.key,
        ) from None
    if config.client_id and record.client_id == config.client_id and not config.client_issuer:
        # The client was issued there: bind it, so it never goes to another issuer (SEP-2352).
        config = dataclasses.replace(config, client_issuer=record.issuer)
    saved = save_server(_saved_under(config))
    shown = config.name or saved.name
    if as_json:
        print_json(
            {
                "name": shown,
                "url": saved.url,
                "profile": saved.profile,
                "state": "oauth",
                "expires_at": _iso(record.expires_at),
                "scope": record.scope,
                "account": record.subject,
                "issuer": record.issuer,
                "store": _placed(store, config),
                "refreshable": record.renewable,
            }
        )
        return
    who = f" as {record.subject}" if record.subject else ""
    as_profile = f" (profile {saved.profile})" if saved.profile else ""
    click.echo(
        f"Logged in to {shown}{as_profile} ({saved.url}){who}; "
        f"token expires in {_expires_in(record.expires_at)}; "
        f"stored in {_placed(store, config)}."
    )
    if not record.renewable:
        _say("warning: the server issued no refresh token; you will need to log in again soon")
    if _placed(store, config) == "file" and _keyring_missing(store):
        _say("note: to keep credentials in the OS keyring: pip install 'grantkeeper[keyring]'")


def _keyring_missing(store: Store) -> bool:
    """Auto mode fell back to files because the keyring package is not installed (a plain
    install): worth one line, since the user may expect the OS keyring."""
    from .._stores.admin import installed
    from .._stores.auto import AutoStore

    return isinstance(store, AutoStore) and not installed("keyring")


def _placed(store: Store, config: ServerConfig) -> str:
    """Where the credential went: keyring or file in Auto mode, else the store's name."""
    from .._stores.auto import AutoStore

    if isinstance(store, AutoStore):
        return store.placement(config.key) or store.name
    return store.name


# -- logout -------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  grantkeeper logout example
  grantkeeper logout example --profile work
  grantkeeper logout https://mcp.example.com/mcp --no-revoke
"""
)
@server_argument
@profile_option
@click.option("--no-revoke", is_flag=True, help="Only delete locally; do not revoke the tokens.")
@store_option
@json_option
@verbose_option
@handle_errors
def logout(
    server: str, profile: str | None, no_revoke: bool, store_spec: str | None, as_json: bool
) -> None:
    """Delete a server's credential and revoke its tokens at the server."""
    from .._logout import logout as run_logout
    from .._servers import resolve_server

    config = resolve_server(server, profile=profile)
    if config.static:
        raise click.UsageError(
            f"{server} uses a static token, not a stored credential; "
            "to forget it, edit servers.json"
        )
    result = run_logout(_store(store_spec), config.key, revoke=not no_revoke)
    label = f"{config.label}" + (f" (profile {config.profile})" if config.profile else "")
    if as_json:
        print_json(
            {
                "name": config.name,
                "url": config.url,
                "profile": config.profile,
                "removed": result.removed,
                "revoked": list(result.revoked),
                "revocation_supported": result.revocation_supported,
                "problems": list(result.problems),
            }
        )
        return
    if not result.removed:
        click.echo(f"Not logged in to {label}; nothing to do.")
        return
    if result.revoked:
        revoked = f"; revoked the {' and '.join(k.replace('_', ' ') for k in result.revoked)}"
    elif no_revoke:
        revoked = "; tokens not revoked (--no-revoke)"
    elif not result.revocation_supported:
        revoked = "; the server offers no revocation endpoint"
    else:
        revoked = ""
    click.echo(f"Logged out of {label}{revoked}.")
    for problem in result.problems:
        _say(f"warning: {problem}")


# -- status -------------------------------------------------------------------------------


def _action(config: ServerConfig, status: AuthStatus, given: str | None) -> str | None:
    """The command to run, naming the server as the user did (else by its name or URL)."""
    from .._status import login_command

    if status.action is None:
        return None
    return login_command(given or config.label, config.profile)


def _status_json(config: ServerConfig, status: AuthStatus, given: str | None) -> dict[str, Any]:
    return {
        "name": config.name,
        "url": config.url,
        "profile": config.profile,
        "state": status.state.value,
        "detail": status.detail or None,
        "expires_at": _iso(status.expires_at),
        "store": status.store,
        "account": status.subject,
        "action": _action(config, status, given),
        "warnings": list(status.warnings),
    }


@click.command(
    epilog="""\b
Examples:
  grantkeeper status
  grantkeeper status example --profile work --check
  grantkeeper status --json | jq -r '.[] | select(.action) | .action'
"""
)
@optional_server_argument
@click.option("--profile", help="Only this profile's credentials (with URL|NAME: that one).")
@click.option("--check", is_flag=True, help="Also probe each server (network).")
@retry_option
@store_option
@json_option
@verbose_option
@handle_errors
def status(
    server: str | None,
    profile: str | None,
    check: bool,
    retry_unknown: bool | None,
    store_spec: str | None,
    as_json: bool,
) -> None:
    """Show each server's auth state, from the store alone unless --check.

    Exits 3 when a listed server needs a (re)login.
    """
    from .._servers import resolve_server
    from .._status import AuthState, auth_status, known_servers
    from ._policy import retry_unknown_outcome

    store = _store(store_spec)
    if server:
        servers = [resolve_server(server, profile=profile)]
    else:
        servers = [c for c in known_servers(store) if profile is None or c.profile == profile]
    rows = [
        (
            config,
            auth_status(
                config,
                store,
                check=check,
                retry_unknown_outcome=retry_unknown_outcome(retry_unknown, config),
            ),
        )
        for config in servers
    ]
    needs_person = any(
        s.state in (AuthState.LOGIN_REQUIRED, AuthState.REAUTHENTICATION_REQUIRED) for _, s in rows
    )
    if as_json:
        print_json([_status_json(c, s, server) for c, s in rows])
    elif not rows:
        click.echo("No servers yet: run grantkeeper login URL")
    else:
        print_table(
            (
                "server",
                "URL",
                "profile",
                "state",
                "expires",
                "store",
                "account",
                "detail",
                "action",
            ),
            [
                (
                    config.label,
                    config.url,
                    config.profile or "-",
                    st.state.value,
                    _expires_in(st.expires_at) if st.state is AuthState.OAUTH else "-",
                    st.store or "-",
                    st.subject or "-",
                    st.detail or "-",
                    _action(config, st, server) or "-",
                )
                for config, st in rows
            ],
            styles={"state": {"reauthentication_required": "red", "login_required": "yellow"}},
            whole=("profile", "state", "expires", "store"),
            terminal_drop=("URL", "account"),  # 80 columns are few: see --json
        )
        # Below the table, not in it: a warning changes no state and no action, and a
        # sentence would crowd the detail column out of 80 columns.
        for config, st in rows:
            for warning in st.warnings:
                profile = f" (profile {config.profile})" if config.profile else ""
                _say(f"warning: {config.label}{profile}: {warning}")
    raise click.exceptions.Exit(EXIT_AUTH if needs_person else EXIT_OK)


# -- token and headers --------------------------------------------------------------------

TOKEN_ENV_NAME = "GRANTKEEPER_TOKEN"
"""The variable ``grantkeeper token --format env`` sets, unless ``--env-name`` names another."""

HEADERS_PATIENCE = 5.0
"""Seconds ``grantkeeper headers`` waits, by default (``--wait``), for a refresh ahead
before it prints the token it has. A host keeps the headers for its whole session, so a
token inside its refresh margin would expire under it within a minute: its replacement is
worth a short wait, but not a long one, since the host waits for the command. When the
refresh is slower the still-valid token is printed, and the refresh finishes before the
process exits, as in ``token`` (a refresh token must not be spent by a process that then
leaves without its answer)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_ENV_VALUE = re.compile(r"[A-Za-z0-9._+/-][A-Za-z0-9._~+/-]*=*")
"""What ``--format env`` prints as it is: RFC 6750's token characters, never a leading
``~`` (a shell expands it after ``=``). Every reader of ``NAME=value`` (a shell, ``env``,
docker's ``--env-file``, systemd's ``EnvironmentFile``) takes these the same way, and none
strips quotes the same way, so a token outside them is refused rather than quoted."""


def _auth_headers(credential: Credential, url: str) -> dict[str, str]:
    """The headers that present ``credential`` to the MCP server at ``url``.

    A DPoP-bound token goes with a proof (RFC 9449 §7.1) for one request: the ``POST`` that
    every MCP message is, to ``url``. A proof is single-use and dated by design, so a host
    that sends the same headers again relies on a server that checks neither (docs/dpop.md)."""
    token = credential.access_token
    if not credential.dpop:
        return {"Authorization": f"Bearer {token}"}
    from .._oauth.dpop import PROOF_HEADER, load_key

    assert credential.dpop_key is not None  # credential.dpop says there is one
    proof = load_key(credential.dpop_key).proof("POST", url, access_token=token)
    return {"Authorization": f"DPoP {token}", PROOF_HEADER: proof}


def _print_token(
    token: str,
    token_type: str,
    shown: str,
    env_name: str,
    *,
    document: dict[str, str | None],
    headers: dict[str, str],
) -> None:
    """``token`` as ``--format shown`` asks; ``document`` is the JSON form, ``headers`` the
    header lines of ``--format header``."""
    if shown == "json":
        print_json({"token": token, **document, "token_type": token_type})
    elif shown == "header":
        for name, value in headers.items():
            click.echo(f"{name}: {value}")
    elif shown == "env":
        if not _ENV_VALUE.fullmatch(token):
            raise fail(
                "the token holds characters that a NAME=value line cannot carry the same "
                "way for a shell, env, docker and systemd; use --format json"
            )
        click.echo(f"{env_name}={token}")
    else:
        click.echo(token)


@click.command(
    epilog="""\b
Examples:
  curl -H "Authorization: Bearer $(grantkeeper token example)" https://mcp.example.com/mcp
  curl -H "$(grantkeeper token example --format header)" https://mcp.example.com/mcp  # Bearer
  env "$(grantkeeper token example --format env)" my-host    # GRANTKEEPER_TOKEN=...
  grantkeeper token example --profile work --format json     # token, expires_at, scope
"""
)
@server_argument
@profile_option
@retry_option
@store_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["plain", "env", "header", "json"]),
    default=None,
    help="plain: the token (default); env: NAME=token; header: the Authorization header "
    "line (and a DPoP proof's line for a DPoP-bound token); json: token, expires_at, scope, "
    "type and token_type.",
)
@click.option(
    "--env-name",
    metavar="NAME",
    default=None,
    help=f"The variable --format env sets. Default: {TOKEN_ENV_NAME}.",
)
@json_option
@verbose_option
@handle_errors
def token(
    server: str,
    profile: str | None,
    retry_unknown: bool | None,
    store_spec: str | None,
    output_format: str | None,
    env_name: str | None,
    as_json: bool,
) -> None:
    """Print a valid access token, refreshing it first if needed. For scripts.

    This and headers are the only commands that print a secret. Exits 3 if a login is
    needed. --json is --format json.
    """
    from .._servers import resolve_server

    if as_json and output_format not in (None, "json"):
        raise click.UsageError("--json is --format json: give one of them")
    shown = "json" if as_json else output_format or "plain"
    if env_name is not None and shown != "env":
        raise click.UsageError("--env-name names the variable of --format env")
    if env_name is not None and not _ENV_NAME.fullmatch(env_name):
        raise click.UsageError("--env-name takes a variable name: letters, digits and '_'")
    name = env_name or TOKEN_ENV_NAME
    config = resolve_server(server, profile=profile)
    bearer = config.bearer()
    if bearer is not None:
        _print_token(
            bearer,
            "Bearer",
            shown,
            name,
            document={"expires_at": None, "scope": None, "type": "bearer"},
            headers={"Authorization": f"Bearer {bearer}"},
        )
        return
    with keeper_for(config, _store(store_spec), retry_unknown) as keeper:
        credential = keeper.credential()
        # Printed the moment it is known valid, before the Keeper lets go (which may wait
        # a few seconds for a refresh ahead), so what a script gets is what was checked.
        _print_token(
            credential.access_token,
            credential.token_type,
            shown,
            name,
            document={
                "expires_at": _iso(credential.expires_at),
                "scope": credential.scope,
                "type": "oauth",
            },
            headers=_auth_headers(credential, config.url) if shown == "header" else {},
        )


@click.command(
    name="headers",
    epilog="""\b
Examples:
  grantkeeper headers example                  # {"Authorization": "Bearer ..."}
  grantkeeper headers https://mcp.example.com/mcp --profile work
\b
Claude Code's .mcp.json:
  {"mcpServers": {"example": {"type": "http", "url": "https://mcp.example.com/mcp",
    "headersHelper": "grantkeeper headers example"}}}
""",
)
@server_argument
@profile_option
@retry_option
@store_option
@click.option(
    "--wait",
    type=click.FloatRange(0, 600),
    default=HEADERS_PATIENCE,
    show_default=True,
    metavar="SECONDS",
    help="How long a token inside its refresh margin (under a minute left) waits for its "
    "replacement before the still-valid one is printed; 0 prints at once. Either way the "
    "refresh finishes before the command exits.",
)
@verbose_option
@handle_errors
def headers_command(
    server: str,
    profile: str | None,
    retry_unknown: bool | None,
    store_spec: str | None,
    wait: float,
) -> None:
    """Print the headers that authenticate to a server, as one JSON object.

    For hosts that run a command for their headers (Claude Code's headersHelper): the
    token is valid, refreshed first when due, under the lock every refresh takes. The
    server's own headers from servers.json come too. This and token are the only commands
    that print a secret. Exits 3 if a person must log in: nothing on stdout, and one line
    on stderr naming the command to run.
    """
    import json

    from .._servers import resolve_server

    config = resolve_server(server, profile=profile)
    # The server's configured headers (an API key, its ${VAR}s read now), sent as every
    # other command sends them: a static token replaces a configured Authorization, and
    # an Authorization among them is the server's own credential (no OAuth).
    sent = config.request_headers()
    bearer = config.bearer()
    if bearer is not None:
        sent = {"Authorization": f"Bearer {bearer}", **_without(sent, {"authorization"})}
    if any(name.lower() == "authorization" for name in sent):
        click.echo(json.dumps(sent))
        return
    store = _store(store_spec)
    if sent and nothing_stored(store, config):
        from .._errors import OAuthUnsupported
        from .._oauth.discovery import discover

        try:
            discover(config.url)  # without the configured headers: see _proxy's probe
        except OAuthUnsupported:
            # A server reached with its configured headers alone (an API key), as call and
            # proxy reach it. Discovery's other errors (no answer, bad metadata) say what
            # is wrong (exit 1), where "log in" could not succeed either.
            click.echo(json.dumps(sent))
            return
    with keeper_for(config, store, retry_unknown) as keeper:
        credential = keeper.credential()
        if wait > 0 and keeper.settle(wait):
            # What a refresh ahead left, if one ran: its token, else the same valid one. A
            # refresh that found the grant ended raises here (exit 3): the host would keep
            # a token with under a minute left, and a login is due anyway.
            credential = keeper.credential()
        auth = _auth_headers(credential, config.url)
        # Ours first, and in place of a configured header of the same name (a stray DPoP).
        click.echo(json.dumps({**auth, **_without(sent, {name.lower() for name in auth})}))


def _without(headers: dict[str, str], names: set[str]) -> dict[str, str]:
    """``headers`` less those named in ``names`` (lower case), whatever their case."""
    return {k: v for k, v in headers.items() if k.lower() not in names}


# -- list ---------------------------------------------------------------------------------


@click.command(
    name="list",
    epilog="""\b
Examples:
  grantkeeper list
  grantkeeper list --json
""",
)
@store_option
@json_option
@verbose_option
@handle_errors
def list_servers(store_spec: str | None, as_json: bool) -> None:
    """List configured servers and stored credentials."""
    from .._status import known_servers

    servers = known_servers(_store(store_spec))
    entries = [
        {
            "name": c.name,
            "url": c.url,
            "profile": c.profile,
            "auth": "bearer" if c.static else "oauth",
            "client_id": c.client_id,
            "scope": c.scope,
        }
        for c in servers
    ]
    if as_json:
        print_json(entries)
        return
    if not entries:
        click.echo("No servers yet: run grantkeeper login URL")
        return
    print_table(
        ("name", "URL", "profile", "auth", "client id", "scope"),
        [
            (
                *(str(e[k] or "-") for k in ("name", "url", "profile", "auth")),
                # A static token has no OAuth client; "dynamic" means registered at login.
                str(e["client_id"] or ("-" if e["auth"] == "bearer" else "dynamic")),
                str(e["scope"] or "-"),
            )
            for e in entries
        ],
    )


COMMANDS: list[click.Command] = [login, logout, status, token, headers_command, list_servers]
"""The commands this module adds to ``grantkeeper``'s CLI."""

__all__ = ["COMMANDS"]
