"""Auth status: exactly one state per server, computed from the stored record alone."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._decide import status_verdict
from ._freshness import DEFAULT_SKEW, Freshness, freshness
from ._hints import login_command
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
    """Classify ``record`` without any network I/O.

    ``retry_unknown_outcome`` is the :class:`~grantkeeper.Keeper`'s option of that name:
    whether a refresh whose outcome was lost is retried, or needs a new login. The rules
    live in :func:`grantkeeper._decide.status_verdict`, beside the ones the Keeper follows.
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
    state_now = AuthState.REAUTHENTICATION_REQUIRED if needs_login else AuthState.OAUTH
    return dataclasses.replace(ok, state=state_now, detail=detail)
