"""Log out: delete the credential under its transaction lock, then revoke its tokens.

Taking the lock that refresh takes means a refresh in flight elsewhere either finishes
first (and we delete and revoke what it wrote) or starts after us and finds nothing: it can
never write a logged-out credential back. Revocation happens inside the lock too, so the
next login cannot interleave with the revocation of the previous one.

The delete removes every copy the store holds: in Auto mode a stray copy in the other
backend goes too, even when the read found nothing, so no later read can bring it back.
A rescue copy of an answer that replaced the deleted record goes as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from . import _rescue_copies
from ._errors import GrantkeeperError, StoreError
from ._network import client_options
from ._oauth.revocation import TokenKind, revoke_tokens
from ._observe.log import event
from ._record import Credential, CredentialKey
from ._stores.base import DEFAULT_LOCK_TIMEOUT, Store


@dataclass(frozen=True)
class LogoutResult:
    """What a logout did."""

    removed: bool
    """Whether a credential was stored (and is now gone)."""
    revoked: tuple[TokenKind, ...] = ()
    """Tokens the server confirmed revoked."""
    revocation_supported: bool = False
    """Whether the server advertised a revocation endpoint."""
    problems: tuple[str, ...] = field(default=())
    """Why a revocation failed, one line each; the local logout happened regardless."""


def logout(
    store: Store,
    key: CredentialKey,
    *,
    revoke: bool = True,
    http: httpx.Client | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    checkpoint: Callable[[str], None] | None = None,
) -> LogoutResult:
    """Delete ``key``'s credential and, unless ``revoke`` is false, revoke its tokens.

    ``checkpoint`` is a test seam called with ``lock_wait``, ``locked`` and ``deleted``.
    """
    stage = checkpoint or (lambda name: None)
    stage("lock_wait")
    with store.lock(key, timeout=lock_timeout):
        stage("locked")
        try:
            stored = store.read(key)
        except StoreError as exc:
            # An unreadable record cannot be revoked, but it must still go.
            event(logging.WARNING, "logout.unreadable", key=str(key), error=type(exc).__name__)
            removed = store.delete(key)
            stage("deleted")
            return LogoutResult(removed, problems=(f"the stored record was unreadable: {exc}",))
        if stored is None:
            # Nothing to serve, but a store may still hold a copy its reads ignore (Auto
            # mode's stray copy beside an empty placement): it must not outlive the logout.
            removed = store.delete(key)
            if removed:
                event(logging.INFO, "logout.deleted_stray", key=str(key))
            return LogoutResult(removed)
        store.delete(key, expected_version=stored.version)
        if _rescue_copies.discard(key, stored.record):
            event(logging.INFO, "rescue.superseded", key=str(key))
        stage("deleted")
        event(logging.INFO, "logout.deleted", key=str(key), version=stored.version)
        record = stored.record
        if not revoke or not record.revocation_endpoint:
            return LogoutResult(True, revocation_supported=bool(record.revocation_endpoint))
        revoked, problems = _revoke_all(record, http, str(key))
        return LogoutResult(True, revoked, True, problems)


def _revoke_all(
    record: Credential, http: httpx.Client | None, key: str
) -> tuple[tuple[TokenKind, ...], tuple[str, ...]]:
    own = http is None
    try:
        client = http or httpx.Client(follow_redirects=False, **client_options())
    except GrantkeeperError as exc:
        # A proxy or trust setting no request could use: the local logout stands, and the
        # tokens are reported unrevoked as for any other failure to reach the server.
        kinds = ("refresh_token", "access_token")
        problems = tuple(f"{kind} not revoked: {exc.message}" for kind in kinds)
        event(logging.WARNING, "logout.revoked", key=key, revoked=None, failed=len(problems))
        return (), problems
    try:
        # The refresh token first: most servers then revoke the whole grant with it.
        revoked, problems = revoke_tokens(client, record, ("refresh_token", "access_token"))
    finally:
        if own:
            client.close()
    event(
        logging.INFO if not problems else logging.WARNING,
        "logout.revoked",
        key=key,
        revoked=",".join(revoked) or None,
        failed=len(problems) or None,
    )
    return revoked, problems
