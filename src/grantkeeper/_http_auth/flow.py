"""Authenticate one request and recover at most once from a 401: the policy, without I/O.

A flow is a generator. It yields :class:`Acquire` when it needs a credential and
:class:`Send` when the request should go out with a bearer token; the driver answers an
``Acquire`` with the access token (from the :class:`~grantkeeper.Keeper`: memory on the
healthy path, the refresh transaction otherwise) and a ``Send`` with a :class:`Reply`.
When only a person can help (the renewed token was rejected too, or the server needs a
scope the credential lacks), the flow yields :class:`Recover`: the driver answers with the
token of a new login (the Keeper's recovery hook, a step-up with the union of the held and
required scopes) or raises the error when there is no hook. One recovery per request.
Errors end the flow by raising; the last reply is the response the caller gets.

The flow remembers the exact token it sent, and names that token as rejected after a 401:
a late 401 for A, after B was installed, is then answered with B and no refresh, and B is
never refreshed because of a 401 for A (the Keeper's attribution). One retry, never a loop.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

from .._errors import (
    AuthenticationRequired,
    InsufficientScope,
    LoginRequired,
    ProtocolError,
    ReauthenticationRequired,
    RetryRequired,
    StaticTokenRejected,
)
from .._oauth.www_authenticate import OAUTH_SCHEMES, Challenge, parse_challenges


@dataclass(frozen=True, slots=True)
class Acquire:
    """Asks the driver for an access token; ``rejected`` is the one a server just refused."""

    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Asks the driver to send the request with ``token``, or its own header when ``None``."""

    token: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the flow needs of a response: its status and ``WWW-Authenticate`` values."""

    status: int
    challenges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Recover:
    """Asks the driver for the token of a new login that fixes ``error``, or to raise it.

    ``sent`` is the token the failing request carried: a login stored since it was sent
    (another request's step-up, say) answers this one too, and no second one runs."""

    error: AuthenticationRequired
    sent: str | None = None


Step = Acquire | Send | Recover
Flow = Generator[Step, "str | Reply", None]

ACTIONABLE = frozenset({401, 403})
"""The only reply statuses a flow acts on. On any other reply a flow ends, so a driver that
has already sent a request with the token from memory may skip running the flow for it;
``tests/test_auth_flow.py`` holds every flow to this."""


def oauth_flow(*, replayable: bool, key: str | None = None) -> Flow:
    """The OAuth policy: send the current token; on 401 renew once and retry once.

    ``replayable`` says whether the request's body can be sent a second time. The flow opens
    with ``Acquire()`` then ``Send(token)``, always: a driver may play that opening itself
    from memory (see :data:`ACTIONABLE`) and hand the flow the reply.
    """
    sent = _token((yield Acquire()))
    reply = _reply((yield Send(sent)))
    if reply.status == 401:
        _refuse_other_schemes(reply, key)
        renewed = _token((yield Acquire(rejected=sent)))
        if renewed == sent:
            raise ReauthenticationRequired(
                "the server rejected the access token (HTTP 401) and no other one is available",
                key=key,
            )
        if not replayable:
            raise RetryRequired(
                "the server rejected the access token (HTTP 401); a renewed one is in place, "
                "but the request body was a stream and cannot be replayed: send it again",
                key=key,
            )
        reply = _reply((yield Send(renewed)))
        sent = renewed
        if reply.status == 401:
            rejected = ReauthenticationRequired(
                "the server rejected the renewed access token too (HTTP 401); log in again",
                key=key,
            )
            reply = _reply((yield Send(_token((yield Recover(rejected, sent))))))
            if reply.status == 401:
                raise rejected
            _check_scope(reply, key)
            return
    needed = _scope_needed(reply, key)
    if needed is not None:
        # Step-up: one new login with the scope the server asked for, then one retry.
        stepped = _token((yield Recover(needed, sent)))
        if not replayable:
            raise RetryRequired(
                "the server needed another scope (HTTP 403); a login with it is in place, "
                "but the request body was a stream and cannot be replayed: send it again",
                key=key,
            )
        _check_scope(_reply((yield Send(stepped))), key)


def static_flow(*, token: str | None, key: str | None = None) -> Flow:
    """A configured bearer token (or ``Authorization`` header): no refresh, 401 is final."""
    reply = _reply((yield Send(token)))
    if reply.status == 401:
        raise StaticTokenRejected(
            "the server rejected the configured bearer token (HTTP 401); "
            "grantkeeper does not refresh a static token",
            key=key,
        )
    _check_scope(reply, key)


def anonymous_flow(*, key: str | None = None) -> Flow:
    """No credential at all: the request goes out as it is, and a 401 says one is needed.

    For servers that need no auth. A 401 is final (there is nothing to renew), and it
    raises :class:`LoginRequired` rather than leaving the caller with a bare HTTP error.
    """
    reply = _reply((yield Send(None)))
    if reply.status == 401:
        raise LoginRequired(
            "the server requires authentication (HTTP 401), and this client connects "
            "without any: log in, or give a bearer token",
            key=key,
        )
    _check_scope(reply, key)


def _token(answer: str | Reply) -> str:
    if not isinstance(answer, str):
        raise TypeError("an Acquire step must be answered with an access token")
    return answer


def _reply(answer: str | Reply) -> Reply:
    if not isinstance(answer, Reply):
        raise TypeError("a Send step must be answered with a Reply")
    return answer


def _challenges(values: Sequence[str]) -> list[Challenge]:
    """Every challenge that parses; each header value on its own, so one malformed value
    does not hide a good one after it."""
    found: list[Challenge] = []
    for value in values:
        try:
            found.extend(parse_challenges(value))
        except ProtocolError:
            continue
    return found


def _refuse_other_schemes(reply: Reply, key: str | None) -> None:
    """A 401 that offers only other schemes (Basic, say) cannot be fixed with an OAuth token
    (Bearer or DPoP).

    A 401 without a usable header is taken at its word: the token was refused.
    """
    challenges = _challenges(reply.challenges)
    if challenges and not any(c.scheme in OAUTH_SCHEMES for c in challenges):
        schemes = ", ".join(sorted({c.scheme for c in challenges}))
        raise AuthenticationRequired(
            f"the server asks for {schemes} authentication, not a bearer token (HTTP 401)",
            key=key,
        )


def _check_scope(reply: Reply, key: str | None) -> None:
    needed = _scope_needed(reply, key)
    if needed is not None:
        raise needed


def _scope_needed(reply: Reply, key: str | None) -> InsufficientScope | None:
    """The 403 ``insufficient_scope`` challenge in ``reply``, as the error it means."""
    if reply.status != 403:
        return None
    for challenge in _challenges(reply.challenges):
        if challenge.scheme in OAUTH_SCHEMES and challenge.error == "insufficient_scope":
            scope = challenge.scope or None
            wanted = f" {scope!r}" if scope else ""
            return InsufficientScope(
                f"the server needs scope{wanted} that this credential lacks (HTTP 403); "
                "log in again asking for it",
                key=key,
                scope=scope,
            )
    return None
