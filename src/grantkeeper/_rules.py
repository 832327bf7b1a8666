"""Every rule of the credential lifecycle, pure: what to serve, what to do, what it means.

Like h11's ``_state.py``, every rule that affects the lifecycle lives here, and nothing here
does I/O (a probe the Keeper runs is passed in as a fact or a callable). How fresh a record
is, and what a token without a lifetime means, is ``_freshness``'s, also pure.
:class:`~grantkeeper.Keeper` only sequences reads, locks, writes and provider calls around
these functions:

- :func:`serve_from_memory`: what a request gets from memory, and whether to refresh ahead;
- :func:`decide`: what a transaction does with the record it re-read under the lock;
- :func:`note_verdict`: what a record's intent note means for renewing it, the one
  judgement :func:`decide` acts on and :func:`status_verdict` reports;
- :func:`holder_alive`: whether the writer of a note may still hold an unstored answer,
  from the facts the Keeper gathered (its host identity, clock and pid probes);
- :func:`outcome_of` and :func:`after_provider_error`: what a provider's answer (or its
  absence) means, and what to record durably about it;
- :func:`fallback`: whether a failed transaction may still serve a valid token;
- :func:`pending_servable` and :func:`rescue_dropped`: whether a refreshed credential the
  store would not take may still be served, and when a rescue copy of one is dropped;
- :func:`status_verdict`: what ``status`` tells a person;
- :func:`recovery_need`: what a recovery hook (a new login) is asked to fix, and with which
  scope; :func:`recovered`: whether a login elsewhere has fixed it already.

The provider outcome table (:data:`OUTCOME_TABLE`) says what every answer of a token
endpoint, or its absence, means: :func:`answer_outcome` classifies an HTTP answer,
:func:`transport_outcome` a failure to get one, and :func:`outcome_of` the typed error either
became. docs/refresh-transaction.md and docs/guarantees.md show the table, and a test checks
them against it row by row.

Once an outcome is unknown, further retries of the same refresh token add no risk: if the
provider processed the first one, the token is spent and any retry gets ``invalid_grant``,
which is definitive. So an outage of any length ends with the grant alive if the provider
never processed a request, and dead only when the provider says so.
``retry_unknown_outcome=False`` refuses the first retry after an unknown outcome (for
providers whose reuse detection would treat it as theft); it never treats NOT_SENT or
NOT_PROCESSED as unknown.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from ._errors import (
    AccountChanged,
    AuthenticationRequired,
    ClientRegistrationInvalid,
    GrantkeeperError,
    InsufficientScope,
    LoginRequired,
    PersistencePending,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
    ServerRejectsToken,
    WorkloadTokenRejected,
)
from ._freshness import DEFAULT_SKEW, Freshness, freshness
from ._liveness import lease_live
from ._record import Credential, RefreshIntent

BACKOFF_BASE = timedelta(seconds=1)
"""Wait after the first failed attempt with one refresh token; it doubles per attempt."""

BACKOFF_CAP = timedelta(seconds=10)
"""The longest wait between attempts we choose ourselves: short enough that a provider back
from an outage is used within seconds, long enough that a fleet does not hammer it."""

MAX_RETRY_AFTER = timedelta(minutes=5)
"""A provider's ``Retry-After`` is honoured up to this; a longer one is a misconfiguration,
and the token it strands expires either way."""

REJECTION_INTERVAL = timedelta(minutes=1)
"""At most one refresh per credential per this interval is forced by a server's 401. A
server that rejects every fresh token (a wrong audience, a broken introspection) would
otherwise cost a refresh or two on every request, forever."""


class Action(enum.Enum):
    """What the transaction does next."""

    ADOPT = "adopt"
    """Serve the stored record as it is; spend nothing."""
    REFRESH = "refresh"
    """Write ``intent`` into the record, then spend its refresh token."""
    FAIL = "fail"
    """Raise ``error``; if ``mark`` is set, first store the record marked dead."""


class Outcome(enum.Enum):
    """What a provider call's result means for the refresh token it carried
    (:data:`OUTCOME_TABLE`)."""

    ANSWERED = "answered"
    NOT_SENT = "not_sent"
    NOT_PROCESSED = "not_processed"
    UNKNOWN = "unknown"
    REFUSED = "refused"
    DEFINITIVE = "definitive"


DEFINITIVE_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
"""The RFC 6749 §5.2 codes that end a grant: the refresh token or the client is no longer
accepted, and asking again cannot change that."""

NOT_SENT_FAILURES: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)
"""Transport failures before any byte of the request left: no connection, no pooled slot,
or a proxy that refused the tunnel (httpcore raises ProxyError only while setting one up)."""

UNSENDABLE_FAILURES: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.InvalidURL)
"""The token endpoint's URL cannot be sent to at all: nothing left, and trying again cannot
help."""


@dataclass(frozen=True)
class OutcomeRow:
    """One row of the outcome table, in the words the docs show."""

    outcome: Outcome
    produced_by: str
    note: str
    """What the transaction leaves in the record's intent note."""
    callers_get: str
    ends_grant: str


OUTCOME_TABLE: tuple[OutcomeRow, ...] = (
    OutcomeRow(
        Outcome.ANSWERED,
        "any 2xx whose body is a JSON object with a usable `access_token` or "
        "`refresh_token`, whatever its `token_type` or other members",
        "cleared: B replaces A",
        "B; without a usable access token, B's refresh token is stored and spent at once "
        "for one; a token that is neither Bearer nor DPoP bound to the record's key "
        "(`MAC`, or DPoP without a key) is stored and keeps rotating, but "
        "`UnsupportedTokenType` is raised instead of serving it",
        "no: B carries it on",
    ),
    OutcomeRow(
        Outcome.NOT_SENT,
        "connect refused, DNS, connect or pool timeout, a proxy refusing the tunnel "
        "(`ProviderUnavailable`, `sent=False`)",
        "`unavailable`, backoff",
        "`ProviderUnavailable` (retryable), or the still-valid token",
        "never",
    ),
    OutcomeRow(
        Outcome.NOT_PROCESSED,
        "429 or 503, whatever the body says (even `invalid_grant`); "
        "`temporarily_unavailable` in another 4xx, or in a 2xx without a token "
        "(`ProviderUnavailable`, `sent=True`, `retry_after`)",
        "`unavailable`, backoff honouring `Retry-After` (up to 5 min)",
        "`ProviderUnavailable` (retryable), or the still-valid token",
        "never",
    ),
    OutcomeRow(
        Outcome.UNKNOWN,
        "any other 5xx, whatever the body says (even `invalid_grant` or "
        "`temporarily_unavailable`); a 1xx or 3xx; a 4xx without an `error` code; a 2xx with "
        "neither a usable token nor an `error` code; a read or write timeout, a reset after "
        "sending, any other failure once the request may have left; the 30 s total deadline "
        "(`RefreshOutcomeUnknown`, `MalformedResponse`)",
        "`unknown`, backoff",
        "`RefreshOutcomeUnknown` (retryable), or the still-valid token",
        "never while retrying is on (the default); with `retry_unknown_outcome=False`, the "
        "next attempt marks the record and asks for a login instead of retrying",
    ),
    OutcomeRow(
        Outcome.REFUSED,
        "any other `error` code (`invalid_request`, `invalid_scope`, "
        "`unsupported_grant_type`) in a 4xx other than 429 or in a 2xx without a token; a "
        "token endpoint URL that cannot be sent to (`InvalidURL`, "
        "`UnsupportedProtocol`) (`ProviderError`)",
        "`unavailable` with `refused`, backoff",
        "`ProviderError`, or the still-valid token",
        "never",
    ),
    OutcomeRow(
        Outcome.DEFINITIVE,
        "`invalid_grant`, `invalid_client` or `unauthorized_client` in a 4xx other than 429, "
        "or in a 2xx without a token",
        "one guarded re-read: a replacement (a login, a peer) is adopted; else marked dead",
        "`ReauthenticationRequired` / `ClientRegistrationInvalid`",
        "yes, unless the guarded re-read finds a replacement",
    ),
)
"""Every answer a token endpoint gives, or its absence, and what it means. Each row is
decided by :func:`answer_outcome`, :func:`transport_outcome` and :func:`after_provider_error`;
the docs repeat these words, checked by ``tests/test_outcome_table.py``."""


def answer_outcome(status: int, error: str | None, usable_token: bool) -> Outcome:
    """What a token endpoint's HTTP answer means (:data:`OUTCOME_TABLE`).

    ``error`` is the body's ``error`` code, if any; ``usable_token`` whether the body is a
    JSON object with an access token that can be sent, or with a refresh token. A 429 or a
    5xx is a failure of the server whatever its body claims (a gateway may relay anything);
    a 2xx or a 4xx that carries a code is the provider's own word.
    """
    own_word = 200 <= status < 300 or 400 <= status < 500
    if 200 <= status < 300 and usable_token:
        return Outcome.ANSWERED  # it may have spent A: B is never thrown away
    if status in (429, 503) or (own_word and error == "temporarily_unavailable"):
        return Outcome.NOT_PROCESSED
    if own_word and error is not None:
        return Outcome.DEFINITIVE if error in DEFINITIVE_ERRORS else Outcome.REFUSED
    return Outcome.UNKNOWN


def transport_outcome(failure: Exception) -> Outcome:
    """What a failure to get an answer means (:data:`OUTCOME_TABLE`)."""
    if isinstance(failure, NOT_SENT_FAILURES):
        return Outcome.NOT_SENT
    if isinstance(failure, UNSENDABLE_FAILURES):
        return Outcome.REFUSED
    return Outcome.UNKNOWN  # the request may be on the wire: it may have been processed


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
    skew: timedelta = DEFAULT_SKEW
    pid: int = 0
    host: str = ""
    holder: str = ""
    """This ``Keeper`` instance's identifier."""
    known: Credential | None = None
    """The identity this lifecycle serves (it must not silently change account)."""
    rejected: str | None = None
    """The access token a server rejected with 401, if that is why we are here."""
    retry_unknown_outcome: bool = True
    """Whether a refresh token whose earlier outcome is unknown may be sent again."""
    default_lifetime: timedelta | None = None
    """The lifetime assumed for a token the provider gave none."""
    rejection_interval: timedelta = REJECTION_INTERVAL


def renewable(record: Credential) -> bool:
    """Whether a new access token can be had for ``record`` without a person: with its
    refresh token, or by asking again (a client-credentials grant)."""
    return record.renewable


def _state(record: Credential, ctx: Context) -> Freshness:
    return freshness(record, ctx.now, ctx.skew, ctx.default_lifetime)


# -- identity -----------------------------------------------------------------------------


def identity_error(known: Credential | None, stored: Credential, key: str) -> AccountChanged | None:
    """Refuse to adopt a record for another issuer, resource or account mid-lifecycle.

    What is unknown on either side (a legacy record without an issuer or subject) cannot
    differ; what is known on both sides must agree.
    """
    if known is None:
        return None
    if known.resource != stored.resource or (
        known.issuer and stored.issuer and known.issuer != stored.issuer
    ):
        return AccountChanged(
            "the stored credential is for another issuer or resource; restart to use it",
            key=key,
        )
    if known.subject and stored.subject and known.subject != stored.subject:
        return AccountChanged(
            "the stored credential belongs to another account; restart to use it", key=key
        )
    return None


def merged_identity(known: Credential | None, adopted: Credential) -> Credential:
    """The lifecycle's identity once ``adopted`` is served: it follows every record, and
    keeps what it already knew where the record does not say (so a legacy record without
    a subject never opens the door to a second account)."""
    if known is None:
        return adopted
    return adopted.replace(
        issuer=adopted.issuer or known.issuer, subject=adopted.subject or known.subject
    )


# -- serving ------------------------------------------------------------------------------


def serve_from_memory(current: Credential | None, ctx: Context) -> tuple[Credential | None, bool]:
    """What a request gets from memory: ``(credential or None, refresh ahead)``.

    A token inside its refresh margin is still valid: it is served at once, and one
    background transaction refreshes ahead (google-auth's non-blocking refresh). Only an
    expired or rejected token makes a request wait.
    """
    if current is None:
        return None, False
    state = _state(current, ctx)
    if state is Freshness.EXPIRED or current.access_token == ctx.rejected:
        return None, False
    return current, state is Freshness.STALE and renewable(current)


def servable(record: Credential, ctx: Context, key: str) -> bool:
    """Whether ``record``'s access token may be served as it is: valid, not rejected, not
    marked dead, and of this lifecycle's identity."""
    return (
        record.reauth_reason is None
        and identity_error(ctx.known, record, key) is None
        and _state(record, ctx) is not Freshness.EXPIRED
        and record.access_token != ctx.rejected
    )


def fallback(
    record: Credential | None, error: BaseException, ctx: Context, key: str
) -> Credential | None:
    """The token a failed transaction may still serve: a failure that does not end the
    grant (an outage, a busy lock, an unreachable store) never fails a request whose token
    is still valid."""
    if record is None or not isinstance(error, GrantkeeperError):
        return None
    if isinstance(error, AuthenticationRequired | AccountChanged | ServerRejectsToken):
        return None  # the grant is over, or this is not our credential
    if not error.retryable and not isinstance(error, ProviderError):
        return None
    return record if servable(record, ctx, key) else None


# -- the transaction ----------------------------------------------------------------------


def decide(
    stored: Credential | None, ctx: Context, *, key: str, holder_alive: bool = False
) -> Decision:
    """Decide between adopting ``stored``, refreshing it, or failing.

    ``holder_alive`` says whether the process named in ``stored.intent`` may still hold an
    unstored answer (the caller checks; this function does no I/O).
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
    state = _state(stored, ctx)
    rejected_here = ctx.rejected is not None and stored.access_token == ctx.rejected
    valid = state is not Freshness.EXPIRED and not rejected_here
    if state is Freshness.FRESH and not rejected_here:
        return Decision(Action.ADOPT, record=stored)
    if ctx.rejected is not None and valid:
        # A late 401 for a token that was already replaced: retry with the new one.
        return Decision(Action.ADOPT, record=stored)
    if rejected_here and stored.rejected_refresh_at is not None:
        again_at = stored.rejected_refresh_at + ctx.rejection_interval
        if ctx.now < again_at:
            return Decision(
                Action.FAIL,
                error=ServerRejectsToken(
                    f"the server rejected a token that a refresh forced by its previous 401 "
                    f"had just obtained; not refreshing again before {_hms(again_at)}. "
                    "Check the server's resource and audience settings, or log in again",
                    key=key,
                    server=stored.resource,
                ),
            )
    if not renewable(stored):
        if valid:
            return Decision(Action.ADOPT, record=stored)  # nothing to refresh with; still valid
        reason = "the token was rejected" if rejected_here else "the token expired"
        return Decision(
            Action.FAIL,
            error=ReauthenticationRequired(
                f"log in again: {reason} and no refresh token is stored", key=key
            ),
        )
    fingerprint = stored.refresh_fingerprint
    assert fingerprint is not None
    intent = stored.intent if _concerns(stored) else None
    attempts, since, unknown = 1, ctx.now, False
    if intent is not None:
        ours = intent.host == ctx.host and intent.pid == ctx.pid and intent.holder == ctx.holder
        note = note_verdict(stored, retry_unknown_outcome=ctx.retry_unknown_outcome)
        if note is Note.SPENT:
            return Decision(
                Action.FAIL,
                error=ReauthenticationRequired(f"log in again: {ANSWERED_NOT_STORED}", key=key),
            )
        if intent.state == "in_flight" and holder_alive and not ours:
            if valid:
                return Decision(Action.ADOPT, record=stored)
            return Decision(
                Action.FAIL,
                error=PersistencePending(
                    f"process {intent.pid} is refreshing this credential and has not stored "
                    "the result yet; not spending the old refresh token",
                    key=key,
                ),
            )
        unknown = note in (Note.UNKNOWN, Note.UNKNOWN_REFUSED)
        if note is Note.UNKNOWN_REFUSED:
            reason = (
                f"the outcome of a refresh started {_hms(intent.started_at)} is unknown "
                "(a process died or lost the answer), and retrying it is turned off"
            )
            return Decision(
                Action.FAIL,
                error=ReauthenticationRequired(f"log in again: {reason}", key=key),
                mark=reason,
                outcome_unknown=True,
            )
        if intent.retry_at is not None and ctx.now < intent.retry_at:
            if valid:
                return Decision(Action.ADOPT, record=stored, outcome_unknown=unknown)
            return Decision(
                Action.FAIL, error=backoff_error(intent, ctx.now, key), outcome_unknown=unknown
            )
        attempts, since = intent.attempts + 1, intent.since or intent.started_at
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
            since=since,
            last_error=intent.last_error if intent is not None else None,
        ),
        outcome_unknown=unknown,
    )


ANSWERED_NOT_STORED = (
    "a refresh was answered, but its new token could be stored nowhere, so the old refresh "
    "token is spent"
)


class Note(enum.Enum):
    """What a record's intent note means for renewing it (:func:`note_verdict`)."""

    CLEAR = "clear"
    """Nothing in the note stops a renewal: no note about the token held now, an outage or
    a refusal (backed off, never a login), or any note of a credential that asks again."""
    SPENT = "spent"
    """A refresh was answered but its new token stored nowhere: the refresh token held is
    spent, and only a new login renews the credential."""
    UNKNOWN = "unknown"
    """An earlier refresh's outcome is unknown (its process died or lost the answer): the
    same refresh token is sent again."""
    UNKNOWN_REFUSED = "unknown_refused"
    """The same, but ``retry_unknown_outcome=False`` refuses to send it again: only a new
    login renews the credential."""


def note_verdict(record: Credential, *, retry_unknown_outcome: bool = True) -> Note:
    """What ``record``'s intent note means for renewing it: the one judgement both
    :func:`decide` acts on and :func:`status_verdict` reports.

    An in-flight note counts as unknown here; whether its writer may still hold the answer
    is for :func:`holder_alive` to say, and :func:`decide` asks that before retrying.
    """
    intent = record.intent if _concerns(record) else None
    # A renewal that asks again (client credentials, workload identity) spends nothing.
    if intent is None or record.asks_again:
        return Note.CLEAR
    if intent.state == "answered":
        return Note.SPENT
    if intent.state in ("in_flight", "unknown"):
        return Note.UNKNOWN if retry_unknown_outcome else Note.UNKNOWN_REFUSED
    return Note.CLEAR


def same_note(now: Credential, noted: Credential) -> bool:
    """Whether ``now`` is the in-flight note ``noted``, its lease perhaps renewed since.

    Only the note's holder renews its lease, so a store holding ``now`` holds the holder's
    own note: what a renewal whose reply was lost (a connection cut after the commit, a
    directory ``fsync`` failing after the rename) may have left behind. Anything else
    changed means somebody else wrote.
    """
    if now.intent is None or noted.intent is None:
        return False
    lease = noted.intent.lease_until
    return now.replace(intent=dataclasses.replace(now.intent, lease_until=lease)) == noted


def _concerns(record: Credential) -> bool:
    """Whether ``record``'s intent is about the refresh token it holds now."""
    intent = record.intent
    return intent is not None and intent.token_fingerprint == record.refresh_fingerprint


def _hms(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}Z"


def backoff(attempts: int, retry_after: float | None = None) -> timedelta:
    """How long to wait after ``attempts`` failed attempts with one refresh token."""
    ours = min(BACKOFF_CAP, BACKOFF_BASE * (1 << min(max(attempts - 1, 0), 16)))
    theirs = timedelta(seconds=retry_after) if retry_after and retry_after > 0 else timedelta(0)
    return min(MAX_RETRY_AFTER, max(ours, theirs))


def backoff_error(intent: RefreshIntent, now: datetime, key: str) -> ProviderError:
    """The retryable error for a request that must wait for the next attempt."""
    since = intent.since or intent.started_at
    what = f" ({intent.last_error})" if intent.last_error else ""
    retry_at = intent.retry_at or since
    if intent.state == "unknown":
        trouble = "refreshes with this token have had no usable answer"
    elif intent.refused:
        trouble = "the authorization server has refused refreshes with this token"
    else:
        trouble = "the authorization server has been unavailable"
    message = f"{trouble} since {_hms(since)}{what}; retrying, next attempt after {_hms(retry_at)}"
    if intent.state == "unknown":
        return RefreshOutcomeUnknown(message, key=key)
    if intent.refused:
        return ProviderError(message, key=key)
    wait = max(0.0, (retry_at - now).total_seconds())
    return ProviderUnavailable(message, key=key, retry_after=wait)


# -- who may still hold an answer ---------------------------------------------------------


def same_host(intent: RefreshIntent, *, host_id: str, host: str) -> bool:
    """Whether ``intent`` was written in the boot and pid namespace ``host_id`` (so its pid
    means the same process there). A note from before host identities names its hostname
    only: it is compared with ``host``."""
    if intent.host_id:
        return intent.host_id == host_id
    return intent.host == host


def holder_alive(
    intent: RefreshIntent | None,
    *,
    now: datetime,
    pid: int,
    holder: str,
    host_id: str,
    host: str,
    sibling_alive: Callable[[str], bool],
    pid_alive: Callable[[int], bool],
) -> bool:
    """Whether the writer of ``intent`` may still hold an unstored answer: what
    :func:`decide` takes as ``holder_alive``.

    ``pid``, ``holder``, ``host_id`` and ``host`` name the asking process and Keeper. A
    writer in the same boot and pid namespace is probed: in this very process, it is alive
    if it is another Keeper still alive here (``sibling_alive(its holder id)``); in another
    process, if that process runs (``pid_alive(its pid)``). Each probe is called only when
    needed. A note from anywhere else cannot be probed: it is live while it is in flight
    and its lease runs at ``now`` (the holder renews it during its call).
    """
    if intent is None:
        return False
    if not same_host(intent, host_id=host_id, host=host):
        return intent.state == "in_flight" and lease_live(intent.lease_until, now)
    if intent.pid == pid:
        return intent.holder != holder and sibling_alive(intent.holder)
    return pid_alive(intent.pid)


# -- a credential the store would not take -------------------------------------------------


def pending_servable(pending: Credential, ctx: Context) -> bool:
    """Whether a refreshed credential the store would not take may still be served: like
    any credential in memory (:func:`serve_from_memory`), while it is valid and not
    rejected. After that the store holds only the spent refresh token, never replayed."""
    return serve_from_memory(pending, ctx)[0] is not None


def rescue_dropped(stored: Credential, rescued: Credential, known: Credential | None) -> bool:
    """Whether a rescue copy is dropped rather than adopted: the record it would replace
    is marked dead (only a login revives it), or the copy belongs to another issuer,
    resource or account than this lifecycle serves (:func:`identity_error`)."""
    return stored.reauth_reason is not None or identity_error(known, rescued, "") is not None


# -- what a provider's answer means -------------------------------------------------------


def outcome_of(error: BaseException) -> Outcome:
    """Classify the failure of a provider call: the typed error that :func:`answer_outcome`
    or :func:`transport_outcome` made it into, or anything else raised after sending."""
    if isinstance(error, ReauthenticationRequired | ClientRegistrationInvalid):
        return Outcome.DEFINITIVE
    if isinstance(error, ProviderUnavailable):
        return Outcome.NOT_PROCESSED if getattr(error, "sent", True) else Outcome.NOT_SENT
    if type(error) is ProviderError:
        return Outcome.REFUSED
    return Outcome.UNKNOWN  # RefreshOutcomeUnknown, MalformedResponse, anything unexpected


@dataclass(frozen=True)
class ErrorPlan:
    """What to do after a provider call failed: from :func:`after_provider_error`."""

    outcome: Outcome
    error: GrantkeeperError
    """What to raise (unless :func:`fallback` serves a still-valid token)."""
    write: Credential | None = None
    """The record to put in place of our in-flight note."""
    mark: str | None = None
    """The grant is dead for this reason, unless a guarded re-read finds a replacement."""


def after_provider_error(
    error: BaseException, noted: Credential, ctx: Context, *, key: str, was_unknown: bool
) -> ErrorPlan:
    """What a failed provider call means, and what to record about it.

    ``noted`` is the record with our in-flight intent; ``was_unknown`` says whether an
    earlier attempt with the same token had an unknown outcome.
    """
    outcome = outcome_of(error)
    intent = noted.intent
    assert intent is not None
    if outcome is Outcome.DEFINITIVE and noted.workload_source is not None:
        # What was refused is the workload's own token, not a grant: nothing was spent, and
        # the workload's platform replaces that token, so this backs off like a refusal and
        # the next renewal sends the token found then. Never AuthenticationRequired: a
        # "login" would send the same token again at once.
        outcome, error = Outcome.REFUSED, workload_rejected(error, noted.workload_source, key)
    if outcome is Outcome.DEFINITIVE:
        assert isinstance(error, GrantkeeperError)
        if isinstance(error, ClientRegistrationInvalid):
            reason = "the authorization server no longer accepts this client registration"
        elif intent.attempts > 1 and was_unknown:
            reason = (
                "an earlier refresh's outcome was lost, and the authorization server "
                "rejected the retry (invalid_grant)"
            )
        else:
            reason = "the authorization server rejected the refresh token (invalid_grant)"
        final = type(error)(f"log in again: {reason}", key=key)
        final.__cause__ = error
        return ErrorPlan(outcome, final, mark=reason)
    if isinstance(error, GrantkeeperError):
        raised = error
    else:
        raised = RefreshOutcomeUnknown(
            f"the refresh failed after it was sent ({type(error).__name__}); "
            "its outcome is unknown",
            key=key,
        )
        raised.__cause__ = error
    # A refusal spends nothing, but the same request would be refused again: it backs off
    # like an outage, so a refusing provider costs the fleet one call per backoff step, not
    # one per request. Unknown stays unknown: a refused retry says nothing of the first.
    unknown = was_unknown or outcome is Outcome.UNKNOWN
    retry_after = getattr(error, "retry_after", None)
    note = dataclasses.replace(
        intent,
        state="unknown" if unknown else "unavailable",
        retry_at=ctx.now + backoff(intent.attempts, retry_after),
        since=intent.since or intent.started_at,
        last_error=_describe(error),
        refused=outcome is Outcome.REFUSED and not unknown,
    )
    return ErrorPlan(outcome, raised, write=noted.replace(intent=note))


def workload_rejected(error: BaseException, source: str, key: str | None) -> WorkloadTokenRejected:
    """The error for a definitive refusal of the workload identity token read from
    ``source`` (a record's ``workload_source``), at login or at a renewal."""
    kind, _, name = source.partition(":")
    where = {"file": name, "env": f"${name}"}.get(kind, "the workload token function")
    detail = error.message if isinstance(error, GrantkeeperError) else type(error).__name__
    rejected = WorkloadTokenRejected(
        f"the authorization server refused the workload identity token from {where} "
        f"({detail}); a new token there is sent at once, this one not again for a while",
        key=key,
        status=getattr(error, "status", None),
        error=getattr(error, "error", None),
    )
    rejected.__cause__ = error
    return rejected


MAX_ERROR_CODE_CHARS = 40
"""How much of a provider's ``error`` code a note keeps: the standard ones are shorter."""


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)
    code = getattr(error, "error", None)
    text = f"{type(error).__name__}, HTTP {status}" if status else type(error).__name__
    # RFC 6749 §5.2 codes are visible ASCII; anything else is not repeated.
    if isinstance(code, str) and code and all("!" <= c <= "~" for c in code):
        text += f" {code[:MAX_ERROR_CODE_CHARS]}"
    return text


# -- what a person's help (a recovery hook) is asked for ---------------------------------


def recovery_need(error: BaseException, held: Credential | None) -> AuthenticationRequired | None:
    """What a recovery hook is asked to fix, or ``None`` when no login can fix ``error``.

    A needed login, a dead grant or a forgotten client registration ask for a login as it
    was; ``insufficient_scope`` asks for a step-up: the union of the scopes held and the
    ones the server requires, so the new token loses nothing the old one had.
    """
    if not isinstance(error, AuthenticationRequired):
        return None  # an account change, an outage, a server rejecting fresh tokens: no
    if not isinstance(error, InsufficientScope):
        return error
    wanted: list[str] = []
    for scope in ((held.scope if held else None) or "").split() + (error.scope or "").split():
        if scope not in wanted:
            wanted.append(scope)
    union = " ".join(wanted) or None
    stepped = InsufficientScope(error.message, key=error.key, scope=union)
    stepped.__cause__ = error
    return stepped


def recovered(
    need: AuthenticationRequired,
    stored: Credential | None,
    failed: str | None,
    ctx: Context,
    key: str,
) -> bool:
    """Whether the store already answers ``need``, so no person is asked again.

    Asked under the login lock, before a recovery hook runs: while this process waited,
    another one (or a person at a terminal, or this process for another request) may have
    logged in. The record whose access token failed (``failed``: the one the request
    carried) answers nothing; a record marked dead neither. A step-up is answered by a
    record holding every scope it asks for; anything else by a record the Keeper can serve
    or renew without a person.
    """
    if stored is None or stored.reauth_reason is not None:
        return False
    if failed is not None and stored.access_token == failed:
        return False
    if isinstance(need, InsufficientScope):
        return set((need.scope or "").split()) <= set((stored.scope or "").split())
    return not isinstance(decide(stored, ctx, key=key).error, AuthenticationRequired)


# -- what status says ---------------------------------------------------------------------


def status_verdict(
    record: Credential,
    *,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
    default_lifetime: timedelta | None = None,
    retry_unknown_outcome: bool = True,
) -> tuple[bool, str]:
    """``(needs a new login, detail)`` for a stored record, in words a person can act on."""
    state = freshness(record, now, skew, default_lifetime)
    if record.reauth_reason:
        return True, record.reauth_reason
    if not record.presentable:
        return True, (
            f"the authorization server issued a {record.token_type!r} token, which grantkeeper "
            "cannot present (Bearer, or DPoP bound to its own login's key): log in again"
        )
    if state is Freshness.EXPIRED and not renewable(record):
        return True, "the token expired and no refresh token is stored"
    intent = record.intent if _concerns(record) else None
    if intent is None:
        return False, ""
    # What the note forbids needs a login once a renewal is due (as decide finds it then).
    note = note_verdict(record, retry_unknown_outcome=retry_unknown_outcome)
    due = state is not Freshness.FRESH
    if note is Note.SPENT:
        if not due:
            return False, f"{ANSWERED_NOT_STORED}: log in again when this token expires"
        return True, ANSWERED_NOT_STORED
    since = _hms(intent.since or intent.started_at)
    if note is Note.UNKNOWN_REFUSED:
        if not due:
            return False, (
                f"the outcome of a refresh started {since} is unknown; it is not retried "
                "(a replay could revoke the grant): log in again when this token expires"
            )
        return True, f"the outcome of a refresh started {since} is unknown"
    next_at = f"; next attempt after {_hms(intent.retry_at)}" if intent.retry_at else ""
    last = f" ({intent.last_error})" if intent.last_error else ""
    if intent.state == "answered":  # a client-credentials renewal: it spent nothing
        return False, (
            "a renewal was answered, but its new token could be stored nowhere; the next "
            "renewal asks again"
        )
    refused_token = (intent.last_error or "").startswith(WorkloadTokenRejected.__name__)
    if intent.state == "unavailable" and intent.refused and refused_token:
        return False, (
            f"the authorization server refuses the workload identity token since {since}"
            f"{last}; the next renewal reads it again{next_at}"
        )
    if intent.state == "unavailable" and intent.refused:
        return False, f"provider refusing refreshes since {since}{last}; retrying{next_at}"
    if intent.state == "unavailable":
        return False, f"provider unavailable since {since}{last}; retrying{next_at}"
    if intent.state == "in_flight":
        return False, (
            f"a refresh started {_hms(intent.started_at)} by pid {intent.pid} on {intent.host} "
            "has not finished; if that process died, the next refresh retries it"
        )
    return False, (f"the outcome of a refresh started {since} is unknown{last}; retrying{next_at}")
