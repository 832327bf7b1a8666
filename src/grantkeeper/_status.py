"""Auth status: exactly one state per server, computed from the stored record alone."""

from __future__ import annotations

import dataclasses
import enum
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._decide import MAX_UNKNOWN_ATTEMPTS
from ._freshness import DEFAULT_SKEW, Freshness, freshness
from ._record import Credential, CredentialKey


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

    @property
    def action(self) -> str | None:
        """The command that fixes this state, if one is needed, for this very credential.

        It names the server by URL, the one name a key knows; the CLI, which knows the
        name the user typed, shows that instead.
        """
        if self.state in (AuthState.LOGIN_REQUIRED, AuthState.REAUTHENTICATION_REQUIRED):
            profile = f" --profile {shlex.quote(self.key.profile)}" if self.key.profile else ""
            return f"grantkeeper login {shlex.quote(self.key.server_url)}{profile}"
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
) -> AuthStatus:
    """Classify ``record`` without any network I/O.

    ``retry_unknown_outcome`` is the :class:`~grantkeeper.Keeper`'s option of that name:
    whether a refresh whose outcome was lost is retried once, or needs a new login.
    """
    if bearer:
        return AuthStatus(key, AuthState.BEARER, "a static bearer token is configured", store=store)
    if record is None:
        return AuthStatus(key, AuthState.LOGIN_REQUIRED, "not logged in", store=store)
    state = freshness(record, now, skew)
    ok = AuthStatus(key, AuthState.OAUTH, "", record.expires_at, state, record.subject, store)

    def reauth(detail: str) -> AuthStatus:
        return dataclasses.replace(ok, state=AuthState.REAUTHENTICATION_REQUIRED, detail=detail)

    if record.reauth_reason:
        return reauth(record.reauth_reason)
    if state is Freshness.EXPIRED and not record.refresh_token:
        return reauth("the token expired and no refresh token is stored")
    intent = record.intent
    if intent is not None and intent.token_fingerprint == record.refresh_fingerprint:
        limit = MAX_UNKNOWN_ATTEMPTS if retry_unknown_outcome else 1
        attempts = f"{intent.attempts} refresh attempt{'s' if intent.attempts != 1 else ''}"
        if intent.attempts >= limit and state is not Freshness.FRESH:
            return reauth(f"the outcome of {attempts} is unknown")
        then = (
            "the next refresh retries it once"
            if intent.attempts < limit
            else "it is not retried (a replay could revoke the grant): log in again "
            "when this token expires"
        )
        return dataclasses.replace(
            ok,
            detail=(
                f"a refresh started {intent.started_at:%Y-%m-%d %H:%M:%S}Z by pid {intent.pid} "
                f"on {intent.host} has an unknown outcome; {then}"
            ),
        )
    return ok
