"""Every error grantkeeper raises, in one tree.

    GrantkeeperError
    ├── AuthenticationRequired            needs_login (and, where a browser login helps,
    │                                     requires_login or requires_reauthentication)
    │   ├── LoginRequired                 nothing stored (never logged in, or logged out)
    │   ├── ReauthenticationRequired      stored but unusable: refresh rejected, no refresh
    │   │                                 token, grant marked dead, outcome unknown too often
    │   ├── ClientRegistrationInvalid     the authorization server no longer knows the client
    │   ├── StaticTokenRejected           401 to a static bearer: save a new one (only
    │   │                                 needs_login: a browser login would not help)
    │   └── InsufficientScope             403 insufficient_scope: log in again with .scope
    ├── AccountChanged                    the store now holds another account's credential
    ├── ServerRejectsToken                the MCP server keeps rejecting freshly issued tokens
    ├── UnsupportedTokenType              the provider issued a token neither Bearer nor
    │                                     DPoP with our key: kept, but cannot be presented
    ├── ProviderError                     the token endpoint misbehaved
    │   ├── ProviderUnavailable           429, 503, connection refused: nothing spent (retryable)
    │   ├── RefreshOutcomeUnknown         timeout, 5xx, lost connection after sending (retryable)
    │   ├── MalformedResponse             not a token response we can trust
    │   └── WorkloadTokenRejected         the workload's identity token was refused: the
    │                                     grant lives, the next renewal reads it again
    ├── ProtocolError                     bad metadata, callback or header from a peer
    │   └── AuthorizationDenied           the callback carried an ``error``: consent refused
    ├── OAuthUnsupported                  the server offers no OAuth we can discover
    ├── LoginFailed                       a browser login could not finish; nothing was stored
    │   ├── CallbackTimeout               no redirect reached the loopback listener in time
    │   └── CallbackUnavailable           the loopback port is in use or cannot be bound
    ├── ServerConfigError                 an unknown server name or a malformed servers file
    ├── WorkloadTokenUnavailable          the workload's identity token is missing, no JWT,
    │                                     or expired: the message says where (retryable)
    ├── MissingExtra                      an optional dependency is not installed: the
    │                                     message names the extra (also an ImportError)
    ├── StoreError
    │   ├── StoreCorrupt                  a stored record does not parse
    │   ├── UnsafeStorePath               symlink or loose permissions on the store
    │   ├── StoreUnavailable              the backend cannot be reached or is locked
    │   ├── StoreConfigError              a bad store spec, setting or encryption key
    │   │   └── SessionLocksUnsupported   the server drops session advisory locks between
    │   │                                 statements (transaction-pooling PgBouncer)
    │   ├── VersionConflict               compare-and-swap lost
    │   ├── LockTimeout                   the credential lock was not free in time (retryable)
    │   └── LockLost                      the lock's session ended while held: nothing was
    │                                     spent, or a newer holder's record was kept (retryable)
    ├── RetryRequired                     a 401 was recovered from, but the request body cannot
    │                                     be replayed: send the request again (retryable)
    ├── PersistencePending                a refreshed token could not be written and the
    │                                     store still holds the spent one: fail closed
    └── DeadlineExceeded                  the caller's deadline passed while a refresh ran
                                          on; its result serves the next call (retryable)

Callers branch on the flags, never on messages: ``needs_login`` (a person must log in, or
log in again, before this can succeed: the one test of "must a person act?"), the two
that say a browser login would help, ``requires_login`` and ``requires_reauthentication``,
and ``retryable``. Messages and reprs never contain a secret: every message is scrubbed of
the process's known secrets when the error is made, since it may repeat a peer's text (see
:mod:`grantkeeper._redact`). :func:`authentication_required` finds the error that needs a
person however deeply the ``mcp`` SDK wrapped it.
"""

from __future__ import annotations

from ._redact import scrub_known

__all__ = [
    "AccountChanged",
    "AuthenticationRequired",
    "AuthorizationDenied",
    "CallbackTimeout",
    "CallbackUnavailable",
    "ClientRegistrationInvalid",
    "DeadlineExceeded",
    "GrantkeeperError",
    "InsufficientScope",
    "LockLost",
    "LockTimeout",
    "LoginFailed",
    "LoginRequired",
    "MalformedResponse",
    "MissingExtra",
    "OAuthUnsupported",
    "PersistencePending",
    "ProtocolError",
    "ProviderError",
    "ProviderUnavailable",
    "ReauthenticationRequired",
    "RefreshOutcomeUnknown",
    "RetryRequired",
    "ServerRejectsToken",
    "UnsupportedTokenType",
    "ServerConfigError",
    "SessionLocksUnsupported",
    "StaticTokenRejected",
    "StoreConfigError",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "UnsafeStorePath",
    "VersionConflict",
    "WorkloadTokenRejected",
    "WorkloadTokenUnavailable",
]


class GrantkeeperError(Exception):
    """Base of every grantkeeper error."""

    requires_login: bool = False
    requires_reauthentication: bool = False
    retryable: bool = False

    def __init__(self, message: str, *, key: str | None = None) -> None:
        message = scrub_known(message)
        super().__init__(message)
        self.message = message
        #: The credential key (server URL and profile) this concerns, when known. Not secret.
        self.key = key

    def __str__(self) -> str:
        return f"{self.message} [{self.key}]" if self.key else self.message

    @property
    def needs_login(self) -> bool:
        """Whether only a person can fix this: a login, a new login, or a new static token.

        The CLI exits 3 on it, the proxy names the command to run. The finer flags,
        ``requires_login`` and ``requires_reauthentication``, are set only where a browser
        login would help; besides them, a rejected static token, a stored record that does
        not parse and a token type grantkeeper cannot present need a person too.
        """
        return self.requires_login or self.requires_reauthentication


class AuthenticationRequired(GrantkeeperError):
    """A person has to log in again before this credential can be used."""


class LoginRequired(AuthenticationRequired):
    """Nothing is stored for this server: run ``grantkeeper login``."""

    requires_login = True


class ReauthenticationRequired(AuthenticationRequired):
    """A credential is stored but can no longer be refreshed: log in again."""

    requires_reauthentication = True


class StaticTokenRejected(AuthenticationRequired):
    """The server answered 401 to a configured static bearer token. Nothing renews a static
    token: a person saves a new one (``grantkeeper login NAME --with-token``).

    Neither ``requires_login`` nor ``requires_reauthentication`` is set: both mean an OAuth
    login would help (a recovery hook would start one), and here it would not;
    :attr:`needs_login` is set, since a person must act."""

    @property
    def needs_login(self) -> bool:
        return True


class ClientRegistrationInvalid(AuthenticationRequired):
    """The authorization server does not know our client any more (``invalid_client``)."""

    requires_login = True


class InsufficientScope(AuthenticationRequired):
    """The server answered 403 ``insufficient_scope``: the token lacks a scope it needs.

    Refreshing cannot add a scope; a new login that asks for :attr:`scope` can.
    """

    requires_reauthentication = True

    def __init__(self, message: str, *, key: str | None = None, scope: str | None = None) -> None:
        super().__init__(message, key=key)
        #: The scope the server asked for (space-separated), when its challenge named one.
        #: A word that repeats a secret is dropped: a login would send it on, and a hint
        #: would print it.
        words = [w for w in scrub_known(scope or "").split() if "…" not in w]
        self.scope = " ".join(words) or None


class AccountChanged(GrantkeeperError):
    """The store now holds a credential for a different account than this process uses."""


class ServerRejectsToken(GrantkeeperError):
    """The MCP server rejected a token that a refresh its own 401 forced had just obtained.

    grantkeeper refreshes for such a server at most once a minute per credential (a wrong
    audience or a broken token check would otherwise cost a refresh per request). The
    message names the server; :attr:`server` is its URL.
    """

    def __init__(self, message: str, *, key: str | None = None, server: str = "") -> None:
        super().__init__(message, key=key)
        #: The MCP server (resource) that rejects the token.
        self.server = server


class UnsupportedTokenType(GrantkeeperError):
    """The provider issued a token of a type grantkeeper cannot present: not Bearer, nor
    DPoP bound to the key grantkeeper keeps with the credential (``MAC``; ``DPoP`` to a
    login that sent no proof).

    Its answer is kept all the same: it may carry the only live refresh token, and throwing
    it away would replay the spent one. Requests get this error instead of a token that
    would fail at the server. Log in again (with DPoP on, for a DPoP-only server).
    """

    def __init__(self, message: str, *, key: str | None = None, token_type: str = "") -> None:
        super().__init__(message, key=key)
        #: The token type the provider named.
        self.token_type = token_type

    @property
    def needs_login(self) -> bool:
        return True  # a login after the client is registered for Bearer tokens

    @classmethod
    def issued(cls, token_type: str, *, kept: bool, key: str | None = None) -> UnsupportedTokenType:
        """The error for a ``token_type`` token the provider issued, ``kept`` or not."""
        fate = "the credential is kept" if kept else "nothing was stored"
        return cls(
            f"the authorization server issued a {token_type!r} token, which grantkeeper "
            f"cannot present (it sends Bearer tokens, and DPoP tokens bound to a key of its "
            f"own login); {fate}. Log in again",
            key=key,
            token_type=token_type,
        )


class ProviderError(GrantkeeperError):
    """The authorization server's token endpoint failed."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message, key=key)
        #: HTTP status of the provider's answer, if there was one.
        self.status = status
        #: The OAuth ``error`` code, if the answer carried one.
        self.error = error if error is None else scrub_known(error)


class ProviderUnavailable(ProviderError):
    """The provider did not process the request (429, 503, connection refused): try again later."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        status: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message, key=key, status=status, error=error)
        #: Seconds the provider asked us to wait, from ``Retry-After``.
        self.retry_after = retry_after
        #: Whether the request reached the provider. ``False`` (refused, DNS, connect or
        #: pool timeout): retry freely. ``True`` (429, 503, ``temporarily_unavailable``):
        #: it was seen and not processed, so retry with backoff.
        self.sent = sent


class RefreshOutcomeUnknown(ProviderError):
    """The refresh request was sent but no answer came back: it may have been spent.

    A later, serialized attempt is allowed; grantkeeper records the unknown outcome
    durably so that every process knows.
    """

    retryable = True


class MalformedResponse(ProviderError):
    """The provider answered with something that is not a usable token response."""


class WorkloadTokenRejected(ProviderError):
    """The authorization server refused the workload's own identity token (workload identity
    federation: ``invalid_grant``, ``unauthorized_client``, ``invalid_client``).

    It ends no grant: nothing was spent, and the workload's platform rotates its token. The
    refused token is not sent again from this process for a while (a minute, doubling to
    15); a new one from the source is sent at the next renewal.
    """


class ProtocolError(GrantkeeperError):
    """A peer sent metadata, a header or a callback that breaks the protocol."""


class AuthorizationDenied(ProtocolError):
    """The authorization server redirected back with an ``error`` (the user said no)."""


class OAuthUnsupported(GrantkeeperError):
    """The server asks for no OAuth we can find: no resource or authorization server metadata."""


class LoginFailed(GrantkeeperError):
    """A login could not finish. Nothing was stored; the previous credential, if any, stays."""


class CallbackTimeout(LoginFailed):
    """No authorization redirect reached the loopback listener before the timeout."""

    retryable = True


class CallbackUnavailable(LoginFailed):
    """The loopback redirect listener could not bind its port (in use, or not permitted)."""


class ServerConfigError(GrantkeeperError):
    """A server name is unknown, or the servers file is malformed. The message says what to fix."""


class WorkloadTokenUnavailable(GrantkeeperError):
    """The workload's identity token (workload identity federation) cannot be sent: its file
    or environment variable is missing or empty, it is not a JWT, or it has expired. The
    message says where grantkeeper looked; the token is never in it. Nothing was sent, and
    a later renewal reads the source again (a Kubernetes projected token is rewritten in
    place), so a token still valid is served meanwhile."""

    retryable = True


class MissingExtra(GrantkeeperError, ImportError):
    """An optional dependency is not installed; :attr:`extra` names what to install.

    Also an :class:`ImportError`, so code that guards an optional import keeps working.
    """

    def __init__(self, feature: str, extra: str, *, module: str | None = None) -> None:
        super().__init__(f"{feature} needs the {extra} extra: pip install 'grantkeeper[{extra}]'")
        #: The extra to install, e.g. ``"mcp"``.
        self.extra = extra
        #: The module that was missing, e.g. ``"httpx2"``.
        self.module = module


class StoreError(GrantkeeperError):
    """The credential store failed."""


class StoreCorrupt(StoreError):
    """A stored record exists but cannot be parsed. Nothing else in the store is touched."""

    @property
    def needs_login(self) -> bool:
        return True  # nothing but a new login replaces it


class UnsafeStorePath(StoreError):
    """The store path is a symlink or is readable by other users."""


class StoreUnavailable(StoreError):
    """The store cannot be read or written right now (read-only, full, locked keyring)."""

    retryable = True


class StoreConfigError(StoreError):
    """The store is misconfigured: an unknown spec, a bad URL or encryption key. Not retryable:
    the message says what to fix."""


class SessionLocksUnsupported(StoreConfigError):
    """The PostgreSQL endpoint does not keep a session advisory lock from one statement to the
    next: a pooler in transaction mode (PgBouncer ``pool_mode = transaction``) hands each
    statement to another server connection. Use session pooling or a direct connection."""


class VersionConflict(StoreError):
    """A compare-and-swap write lost: the record changed since it was read."""

    retryable = True


class LockTimeout(StoreError):
    """The credential's transaction lock was not acquired in time. Nothing was stolen."""

    retryable = True


class LockLost(StoreError):
    """The credential's lock was lost while held (its database session ended), or a holder
    that acquired it later has written since. The refresh token was not spent, or the write
    was refused so as not to overwrite a newer record. The next transaction starts afresh."""

    retryable = True


class RetryRequired(GrantkeeperError):
    """A 401 was answered by renewing the credential, but the request cannot be replayed.

    Its body was a stream that has been consumed. The renewed credential is in place:
    sending the request again will use it.
    """

    retryable = True


class PersistencePending(GrantkeeperError):
    """A refreshed credential could not be made durable and the store still holds the old one.

    The new token keeps serving while it is valid. grantkeeper refuses to spend or
    reinstall the old refresh token; the next transaction retries the write.
    """

    retryable = True


class DeadlineExceeded(GrantkeeperError):
    """The caller stopped waiting; the refresh it joined keeps running and serves the next call."""

    retryable = True


# -- classification -----------------------------------------------------------------------
# Answer "does this error mean a person must log in?", however deeply it is wrapped.
#
# The ``mcp`` SDK runs its transport in anyio task groups, so our errors reach callers
# inside ``ExceptionGroup``s, as ``__cause__`` or ``__context__`` of other errors, or as an
# HTTP 401 that never went through grantkeeper (httpx or httpx2 ``HTTPStatusError``).

MAX_DEPTH = 32
"""How deep to look; exception graphs can be cyclic and are never legitimately this deep."""


def authentication_required(exc: BaseException) -> AuthenticationRequired | None:
    """The authentication-required error inside ``exc``, or ``None``.

    Check ``.needs_login`` on the result (``.requires_login`` /
    ``.requires_reauthentication`` for whether a browser login would help).
    """
    seen: set[int] = set()
    pending: list[tuple[BaseException, int]] = [(exc, 0)]
    fallback: AuthenticationRequired | None = None
    while pending:
        current, depth = pending.pop(0)
        if id(current) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(current))
        if isinstance(current, AuthenticationRequired):
            return current
        if fallback is None and _is_http_401(current):
            fallback = ReauthenticationRequired(
                "the server rejected the credential (HTTP 401); log in again"
            )
        children: list[BaseException] = []
        if isinstance(current, BaseExceptionGroup):
            children.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                children.append(linked)
        pending.extend((child, depth + 1) for child in children)
    return fallback


def _is_http_401(exc: BaseException) -> bool:
    # Duck-typed, so httpx and httpx2 (distinct classes with the same shape) both count.
    response = getattr(exc, "response", None)
    return type(exc).__name__ == "HTTPStatusError" and getattr(response, "status_code", 0) == 401
