"""Auth status: what a person must do for each server, and the command that does it.

- ``status_of``: exactly one state per server, from its stored record alone;
- ``auth_status``: the configured servers' states, from the store alone or probed with
  ``check``;
- ``login_command``: the one way grantkeeper writes the command a person must run to log in,
  and ``fix_command`` the command that fixes a given error. The CLI's errors, ``status``'s
  action column and the proxy's JSON-RPC errors all print it, so all of them name the
  server as the user did and keep the profile: a hint without ``--profile`` would log in to
  the default credential, not the one that needs it.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from ._errors import (
    InsufficientScope,
    OAuthUnsupported,
    ProtocolError,
    StaticTokenRejected,
    StoreCorrupt,
    WorkloadTokenRejected,
    WorkloadTokenUnavailable,
)
from ._freshness import DEFAULT_SKEW, Clock, Freshness, freshness, utc_now
from ._oauth.workload import WorkloadIdentity
from ._record import Credential, CredentialKey
from ._rules import status_verdict
from ._servers import ServerConfig, load_servers
from ._stores.auto import AutoStore
from ._stores.base import Store

# -- the command a person runs ---------------------------------------------------------


def login_command(
    server: str, profile: str | None = None, *, scope: str | None = None, with_token: bool = False
) -> str:
    """``grantkeeper login URL|NAME [--profile P] [--scope S] [--with-token]``, shell-quoted.

    ``scope``: what a server said the token lacks. ``with_token``: a static token to replace
    (a browser login would not help)."""
    words = ["grantkeeper", "login", server]
    if profile:
        words += ["--profile", profile]
    if scope:
        words += ["--scope", scope]
    if with_token:
        words.append("--with-token")
    return shlex.join(words)


def fix_command(error: BaseException, server: str, profile: str | None = None) -> str:
    """The command that fixes ``error`` (one whose ``needs_login`` is set): a login that asks
    for the scope a server said the token lacks, or a new static token for a rejected one."""
    scope = error.scope if isinstance(error, InsufficientScope) else None
    static = isinstance(error, StaticTokenRejected)
    return login_command(server, profile, scope=scope, with_token=static)


# -- one server, from its record -------------------------------------------------------


class AuthState(enum.Enum):
    """What a person needs to do for a server, if anything."""

    OAUTH = "oauth"
    """Usable, possibly after a silent refresh."""
    LOGIN_REQUIRED = "login_required"
    """Nothing is stored: run ``grantkeeper login``."""
    REAUTHENTICATION_REQUIRED = "reauthentication_required"
    """Stored but unusable: log in again."""
    BEARER = "bearer"
    """A static token is configured; OAuth is off."""
    UNSUPPORTED = "unsupported"
    """The server offers no OAuth (known only from a ``--check`` probe)."""


UNBOUND_WARNING = (
    "its tokens are not bound to this server: logged in without the resource indicator "
    "(RFC 8707, --no-resource), the authorization server picks their audience"
)
"""The warning for a credential whose login opted out of ``resource`` (``--no-resource``):
a token that names no resource may be accepted by other servers of the same provider."""


@dataclass(frozen=True)
class AuthStatus:
    """One server's status. ``detail`` says why, in words a person can act on."""

    key: CredentialKey
    state: AuthState
    detail: str = ""
    expires_at: datetime | None = None
    freshness: Freshness | None = None
    subject: str | None = None
    store: str | None = None
    warnings: tuple[str, ...] = ()
    """What a person should know although nothing needs doing: it changes no state and no
    action."""

    @property
    def action(self) -> str | None:
        """The command that fixes this state, if one is needed, for this very credential.

        It names the server by URL, the one name a key knows; the CLI, which knows the
        name the user typed, shows that instead.
        """
        if self.state in (AuthState.LOGIN_REQUIRED, AuthState.REAUTHENTICATION_REQUIRED):
            return login_command(self.key.server_url, self.key.profile)
        return None


def status_of(
    key: CredentialKey,
    record: Credential | None,
    *,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
    store: str | None = None,
    bearer: bool = False,
    retry_unknown_outcome: bool = True,
    default_lifetime: timedelta | None = None,
) -> AuthStatus:
    """Classify ``record`` without any network I/O (a workload identity credential's token
    file is read, to say whether the next renewal will find a token there).

    ``retry_unknown_outcome`` is the :class:`~grantkeeper.Keeper`'s option of that name:
    whether a refresh whose outcome was lost is retried, or needs a new login. The rules
    live in :func:`grantkeeper._rules.status_verdict`, beside the ones the Keeper follows.
    """
    if bearer:
        return AuthStatus(key, AuthState.BEARER, "a static bearer token is configured", store=store)
    if record is None:
        return AuthStatus(key, AuthState.LOGIN_REQUIRED, "not logged in", store=store)
    state = freshness(record, now, skew, default_lifetime)
    ok = AuthStatus(key, AuthState.OAUTH, "", record.expires_at, state, record.subject, store)
    needs_login, detail = status_verdict(
        record,
        now=now,
        skew=skew,
        default_lifetime=default_lifetime,
        retry_unknown_outcome=retry_unknown_outcome,
    )
    if not needs_login and not detail and (record.workload_source or "").startswith("file:"):
        # The next renewal reads the workload's own token: say now if it will find none.
        # A local read, no network; the token is only checked, never shown. (A variable
        # or a function is the renewing process's own: this one cannot see them.)
        try:
            WorkloadIdentity.from_source(str(record.workload_source)).read()
        except (WorkloadTokenUnavailable, WorkloadTokenRejected) as exc:
            detail = f"{exc.message}; the next renewal needs it"
    state_now = AuthState.REAUTHENTICATION_REQUIRED if needs_login else AuthState.OAUTH
    warnings = () if record.resource_indicator else (UNBOUND_WARNING,)
    return dataclasses.replace(ok, state=state_now, detail=detail, warnings=warnings)


# -- configured servers, from the store or probed --------------------------------------


def known_servers(store: Store, home: str | None = None) -> list[ServerConfig]:
    """Configured servers, then any stored credential no configured server names."""
    configured = load_servers(home)
    keys = {config.key for config in configured}
    unnamed = [_settings_for(key, configured) for key in store.keys() if key not in keys]
    return configured + unnamed


def _settings_for(key: CredentialKey, configured: list[ServerConfig]) -> ServerConfig:
    """A stored credential no entry names: another profile of a configured server carries
    that server's name and settings (as ``NAME --profile P`` resolves), else its URL alone."""
    for config in configured:
        if config.profile is None and not config.static and config.key.server_url == key.server_url:
            return dataclasses.replace(config, profile=key.profile)
    return ServerConfig(url=key.server_url, profile=key.profile)


def _holder(store: Store, key: CredentialKey) -> str:
    """The backend that holds ``key``: Auto mode names keyring or file, not itself."""
    if isinstance(store, AutoStore):
        placed = store.placement(key)
        if placed is not None:
            return placed
    return store.name


def auth_status(
    server: ServerConfig,
    store: Store,
    *,
    check: bool = False,
    http: httpx.Client | None = None,
    clock: Clock = utc_now,
    skew: timedelta = DEFAULT_SKEW,
    retry_unknown_outcome: bool = True,
) -> AuthStatus:
    """``server``'s status. Offline it reads only the store; ``check`` also runs discovery,
    which tells ``login_required`` from ``unsupported`` and finds broken metadata.
    ``retry_unknown_outcome`` is the policy of the Keepers that use this credential."""
    key = server.key
    if server.static:
        return status_of(key, None, now=clock(), store=None, bearer=True)
    try:
        stored = store.read(key)
    except StoreCorrupt as exc:
        detail = f"{exc.message}; log in again"
        return AuthStatus(key, AuthState.REAUTHENTICATION_REQUIRED, detail, store=store.name)
    status = status_of(
        key,
        stored.record if stored else None,
        now=clock(),
        skew=skew,
        store=_holder(store, key) if stored else None,
        retry_unknown_outcome=retry_unknown_outcome,
    )
    if not check:
        return status
    from ._oauth.discovery import discover

    try:
        discover(server.url, http=http)
    except OAuthUnsupported as exc:
        return dataclasses.replace(status, state=AuthState.UNSUPPORTED, detail=exc.message)
    except ProtocolError as exc:
        detail = f"check failed: {exc.message}"
        return dataclasses.replace(status, detail=f"{status.detail}; {detail}".lstrip("; "))
    return status
