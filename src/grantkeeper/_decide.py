"""The refresh decision, pure: given what is stored and what this process knows, what now?

This is the heart of grantkeeper and does no I/O. The caller holds the credential's lock,
has just re-read the store, and acts on the returned :class:`Decision`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._errors import (
    AccountChanged,
    GrantkeeperError,
    LoginRequired,
    PersistencePending,
    ReauthenticationRequired,
)
from ._freshness import Freshness, freshness
from ._record import Credential, RefreshIntent

MAX_UNKNOWN_ATTEMPTS = 2
"""Refresh attempts allowed with one refresh token whose earlier outcome is unknown: the
original and one retry. Providers with a reuse grace period accept the retry; the rest
answer ``invalid_grant``. Either way the outcome is then known, so we never loop."""


class Action(enum.Enum):
    """What the transaction does next."""

    ADOPT = "adopt"
    """Serve the stored record as it is; spend nothing."""
    REFRESH = "refresh"
    """Write ``intent`` into the record, then spend its refresh token."""
    FAIL = "fail"
    """Raise ``error``; if ``mark`` is set, first store the record marked dead."""


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`."""

    action: Action
    record: Credential | None = None
    intent: RefreshIntent | None = None
    error: GrantkeeperError | None = None
    mark: str | None = None
    """Reason to record durably as ``reauth_reason`` before failing."""
    outcome_unknown: bool = False
    """An earlier attempt's outcome is unknown; this decision accounts for it."""


@dataclass(frozen=True)
class Context:
    """What the process knows beside the stored record."""

    now: datetime
    skew: timedelta
    pid: int
    host: str
    holder: str = ""
    """This ``Keeper`` instance's identifier."""
    known: Credential | None = None
    """The credential this lifecycle serves (its identity must not silently change)."""
    rejected: str | None = None
    """The access token a server rejected with 401, if that is why we are here."""
    max_unknown_attempts: int = MAX_UNKNOWN_ATTEMPTS
    """Attempts allowed with a refresh token whose earlier outcome is unknown; 1 means never
    retry it (for providers without a reuse grace period, where a retry after a lost answer
    is a replay that revokes the grant and raises a reuse alert)."""


def identity_error(known: Credential | None, stored: Credential, key: str) -> AccountChanged | None:
    """Refuse to adopt a record for another issuer, resource or account mid-lifecycle."""
    if known is None:
        return None
    if not known.same_identity(stored):
        return AccountChanged(
            "the stored credential is for another issuer or resource; restart to use it",
            key=key,
        )
    if known.subject and stored.subject and known.subject != stored.subject:
        return AccountChanged(
            "the stored credential belongs to another account; restart to use it", key=key
        )
    return None


def decide(
    stored: Credential | None, ctx: Context, *, key: str, holder_alive: bool = False
) -> Decision:
    """Decide between adopting ``stored``, refreshing it, or failing.

    ``holder_alive`` says whether the process named in ``stored.intent`` still runs on
    this host (the caller checks; this function does no I/O).
    """
    if stored is None:
        return Decision(Action.FAIL, error=LoginRequired("not logged in", key=key))
    if (err := identity_error(ctx.known, stored, key)) is not None:
        return Decision(Action.FAIL, error=err)
    if stored.reauth_reason:
        return Decision(
            Action.FAIL,
            error=ReauthenticationRequired(f"log in again: {stored.reauth_reason}", key=key),
        )
    state = freshness(stored, ctx.now, ctx.skew)
    not_rejected = ctx.rejected is None or stored.access_token != ctx.rejected
    if state is Freshness.FRESH and not_rejected:
        return Decision(Action.ADOPT, record=stored)
    if ctx.rejected is not None and not_rejected and state is not Freshness.EXPIRED:
        # A late 401 for a token that was already replaced: retry with the new one.
        return Decision(Action.ADOPT, record=stored)
    if not stored.renewable:
        if state is Freshness.STALE and not_rejected:
            return Decision(Action.ADOPT, record=stored)  # still valid; nothing to refresh with
        reason = "the token was rejected" if not not_rejected else "the token expired"
        return Decision(
            Action.FAIL,
            error=ReauthenticationRequired(
                f"log in again: {reason} and no refresh token is stored", key=key
            ),
        )
    fingerprint = stored.refresh_fingerprint
    assert fingerprint is not None
    attempts = 1
    unknown = False
    intent = stored.intent
    if intent is not None and intent.token_fingerprint == fingerprint:
        ours = intent.host == ctx.host and intent.pid == ctx.pid and intent.holder == ctx.holder
        if intent.state == "in_flight" and holder_alive and not ours:
            return Decision(
                Action.FAIL,
                error=PersistencePending(
                    f"process {intent.pid} refreshed this credential but has not stored the "
                    "result yet; not spending the old refresh token",
                    key=key,
                ),
            )
        unknown = True
        if intent.attempts >= ctx.max_unknown_attempts:
            reason = (
                f"the outcome of {intent.attempts} refresh attempt"
                f"{'s' if intent.attempts > 1 else ''} is unknown "
                "(a process died or lost the answer)"
            )
            return Decision(
                Action.FAIL,
                error=ReauthenticationRequired(f"log in again: {reason}", key=key),
                mark=reason,
                outcome_unknown=True,
            )
        attempts = intent.attempts + 1
    return Decision(
        Action.REFRESH,
        record=stored,
        intent=RefreshIntent(
            token_fingerprint=fingerprint,
            pid=ctx.pid,
            host=ctx.host,
            started_at=ctx.now,
            attempts=attempts,
            holder=ctx.holder,
        ),
        outcome_unknown=unknown,
    )
