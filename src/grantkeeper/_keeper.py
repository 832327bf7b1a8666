"""Keep one credential usable: serve it from memory, refresh it once per rotation.

The healthy path reads memory only. Anything else runs one transaction at a time per
``Keeper`` on a worker thread: take the store's lock for the key, re-read the store, let
the pure :func:`decide` choose, then act. Callers join the transaction in flight and may
stop waiting (deadline, cancellation) without stopping it: its result serves the next call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx

from ._decide import MAX_UNKNOWN_ATTEMPTS, Action, Context, decide
from ._errors import (
    ClientRegistrationInvalid,
    DeadlineExceeded,
    GrantkeeperError,
    LoginRequired,
    PersistencePending,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    StoreError,
)
from ._freshness import DEFAULT_SKEW, Clock, Freshness, freshness, stale_at, utc_now
from ._grants import renewal_request
from ._log import event
from ._record import Credential, CredentialKey, RefreshIntent
from ._redact import redact
from ._store import DEFAULT_LOCK_TIMEOUT, Store, Stored
from ._token_client import DEFAULT_TIMEOUT, send_token_request
from ._token_endpoint import apply_response

Checkpoint = Callable[[str], None]
"""Test seam: called with a stage name at each step of a transaction. ``None`` in production."""


_live_holders: weakref.WeakValueDictionary[str, Keeper] = weakref.WeakValueDictionary()
"""Keepers alive in this process, by intent holder id: a sibling's pending refresh is live."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _exiting(pid)


_PF_EXITING = 0x4
"""Linux task flag set as a process starts to exit, before its files (and locks) close."""


def _exiting(pid: int) -> bool:
    """Whether ``pid`` is dying or dead but not reaped yet.

    Both still answer ``kill(pid, 0)``. A killed holder's lock is released while it exits,
    before it turns zombie, and a parent that never reaps would keep a zombie forever: either
    way it would look alive and block the credential.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
    except OSError:
        return False  # no procfs (macOS): kill(pid, 0) is all we have
    if not fields or fields[0] in (b"Z", b"X"):
        return True
    try:
        return bool(int(fields[6]) & _PF_EXITING)
    except (IndexError, ValueError):
        return False


class Keeper:
    """Serve a valid credential for ``key`` from ``store``, refreshing it safely.

    One ``Keeper`` per credential per process is enough; it is thread-safe and may be used
    from sync and async code at once. It never holds a lock while the caller uses a token.

    When a refresh's outcome is unknown (its process died, or the answer was lost after
    the request was sent), the next transaction retries the old refresh token once:
    providers with a reuse grace period accept it. ``retry_unknown_outcome=False`` skips
    that retry and requires re-authentication at once: the right choice for providers
    without a grace period, where the retry is a replay that revokes the grant and looks
    like token theft to the provider's reuse detection.
    """

    def __init__(
        self,
        store: Store,
        key: CredentialKey,
        *,
        http_client: httpx.Client | None = None,
        clock: Clock = utc_now,
        skew: timedelta = DEFAULT_SKEW,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        token_timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry_unknown_outcome: bool = True,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self._http = http_client
        self._owns_http = http_client is None
        self._clock = clock
        self._skew = skew
        self._lock_timeout = lock_timeout
        self._token_timeout = token_timeout
        self._max_unknown_attempts = MAX_UNKNOWN_ATTEMPTS if retry_unknown_outcome else 1
        self._checkpoint = checkpoint
        self._mutex = threading.Lock()
        self._inflight: concurrent.futures.Future[Credential] | None = None
        # What we serve; may be ahead of the store when a write failed.
        self._current: Credential | None = None
        self._fresh_until: tuple[Credential | None, datetime | None] = (None, None)
        # The last record we know the store holds, with its version.
        self._durable: Stored | None = None
        # A refreshed credential the store does not hold yet (the provider's answer B).
        self._pending: Credential | None = None
        # The first credential this lifecycle served: its account must not change silently.
        self._identity: Credential | None = None
        self._host = socket.gethostname()
        self._holder = secrets.token_hex(8)
        _live_holders[self._holder] = self

    def __repr__(self) -> str:
        return f"Keeper({str(self.key)!r}, store={self.store.name!r})"

    # -- public API ---------------------------------------------------------------------

    @property
    def current(self) -> Credential | None:
        """The credential this process would send now, from memory (no I/O)."""
        return self._current

    @property
    def persistence_pending(self) -> bool:
        """Whether the credential being served is not yet durable in the store."""
        return self._pending is not None

    def cached(self, *, rejected: str | None = None) -> Credential | None:
        """The credential :meth:`credential` would return at once from memory, else ``None``.

        Never waits and does no I/O: the healthy path of every request.
        """
        return self._from_memory(rejected)

    def credential(
        self, *, rejected: str | None = None, timeout: float | None = None
    ) -> Credential:
        """Return a credential that is fresh (or at least not ``rejected``).

        ``rejected`` is the access token a server just answered 401 for; at most one
        refresh is spent on it, and none if another token has already replaced it.
        ``timeout`` bounds the wait, not the refresh, which runs on and serves later calls.
        """
        hit = self._from_memory(rejected)
        if hit is not None:
            return hit
        future = self._join(rejected)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise DeadlineExceeded(
                f"no credential within {timeout:g} s; the refresh continues in the background",
                key=str(self.key),
            ) from None

    async def acredential(self, *, rejected: str | None = None) -> Credential:
        """Async :meth:`credential`. Bound the wait with ``asyncio.timeout``: cancelling
        the caller does not cancel the refresh, whose result serves the next call."""
        hit = self._from_memory(rejected)
        if hit is not None:
            return hit
        waiter = asyncio.wrap_future(self._join(rejected))
        # Whoever stops waiting first, the outcome must still be retrieved, or asyncio
        # reports an exception that was never retrieved.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(waiter)

    def access_token(self, *, timeout: float | None = None) -> str:
        """Return a fresh access token."""
        return self.credential(timeout=timeout).access_token

    def close(self) -> None:
        """Wait for a transaction in flight, then close the HTTP client we created."""
        with self._mutex:
            inflight = self._inflight
        if inflight is not None:
            concurrent.futures.wait([inflight])
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Keeper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- in-process coordination --------------------------------------------------------

    def _from_memory(self, rejected: str | None) -> Credential | None:
        """The healthy path: no store, lock or network I/O."""
        current = self._current
        if current is None:
            return None
        now = self._clock()
        if rejected is None:
            # Every request asks this; the moment the credential turns stale is worked out
            # once per credential rather than per request.
            fresh_until = self._fresh_until
            if fresh_until[0] is not current:
                fresh_until = self._fresh_until = (current, stale_at(current, self._skew))
            if fresh_until[1] is not None and now < fresh_until[1]:
                return current
        state = freshness(current, now, self._skew)
        if rejected is None:
            if state is Freshness.FRESH:
                return current
            if state is Freshness.STALE and not current.renewable:
                return current  # nothing to refresh with; still valid
            return None
        if current.access_token != rejected and state is not Freshness.EXPIRED:
            return current  # a late 401 for a token already replaced
        return None

    def _join(self, rejected: str | None) -> concurrent.futures.Future[Credential]:
        with self._mutex:
            if self._inflight is not None:
                return self._inflight
            future: concurrent.futures.Future[Credential] = concurrent.futures.Future()
            # Running futures cannot be cancelled by a waiter that gives up.
            future.set_running_or_notify_cancel()
            self._inflight = future
        # Not a daemon: an interpreter exiting mid-refresh still gets to persist the result.
        threading.Thread(
            target=self._run, args=(future, rejected), name=f"grantkeeper {self.key}"
        ).start()
        return future

    def _run(self, future: concurrent.futures.Future[Credential], rejected: str | None) -> None:
        try:
            result = self._transact(rejected)
        except BaseException as exc:
            with self._mutex:
                self._inflight = None
            future.set_exception(exc)
        else:
            with self._mutex:
                self._inflight = None
            future.set_result(result)

    # -- the transaction ----------------------------------------------------------------

    def _stage(self, name: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(name)

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self._token_timeout, follow_redirects=False)
        return self._http

    def _install(self, stored: Stored) -> Credential:
        self._current = stored.record
        self._durable = stored
        self._pending = None
        if self._identity is None:
            self._identity = stored.record
        return stored.record

    def _transact(self, rejected: str | None) -> Credential:
        key = str(self.key)
        if self._pending is None:
            adopted = self._adopt_unlocked(rejected)
            if adopted is not None:
                return adopted
        self._stage("lock_wait")
        started = time.monotonic()
        with self.store.lock(self.key, timeout=self._lock_timeout):
            event(
                logging.DEBUG,
                "transaction.locked",
                key=key,
                waited_ms=round((time.monotonic() - started) * 1000, 1),
            )
            self._stage("locked")
            stored = self.store.read(self.key)
            self._stage("after_read")
            if self._pending is not None:
                served = self._reconcile_pending(stored, rejected)
                if isinstance(served, Credential):
                    return served
                stored = served
            return self._decide_and_act(stored, rejected)

    def _adopt_unlocked(self, rejected: str | None) -> Credential | None:
        """A usable credential already in the store (first use, a peer's refresh, a new login).

        Read without the lock: reading spends nothing, and when one process of a fleet has
        refreshed, the others would otherwise queue for the lock one by one just to read
        its result. Anything but a plain adoption (a refresh to spend, an intent to judge,
        a failure to record) goes through the locked path, which reads again.
        """
        key = str(self.key)
        stored = self.store.read(self.key)
        if stored is None or stored.record.intent is not None:
            return None
        if decide(stored.record, self._context(rejected), key=key).action is not Action.ADOPT:
            return None
        if self._durable is None:
            event(logging.DEBUG, "credential.loaded", key=key, version=stored.version)
        else:
            changed = stored.record != self._durable.record
            event(
                logging.INFO if changed else logging.DEBUG,
                "transaction.adopted",
                key=key,
                version=stored.version,
                changed=changed,
                locked=False,
            )
        return self._install(stored)

    def _context(self, rejected: str | None) -> Context:
        return Context(
            now=self._clock(),
            skew=self._skew,
            pid=os.getpid(),
            host=self._host,
            holder=self._holder,
            known=self._identity,
            rejected=rejected,
            max_unknown_attempts=self._max_unknown_attempts,
        )

    def _holder_alive(self, intent: RefreshIntent | None) -> bool:
        """Whether the writer of ``intent`` may still hold an unstored answer."""
        if intent is None or intent.host != self._host:
            return False
        if intent.pid == os.getpid():
            return intent.holder != self._holder and intent.holder in _live_holders
        return _process_alive(intent.pid)

    def _decide_and_act(self, stored: Stored | None, rejected: str | None) -> Credential:
        key = str(self.key)
        record = stored.record if stored else None
        decision = decide(
            record,
            self._context(rejected),
            key=key,
            holder_alive=self._holder_alive(record.intent if record else None),
        )
        if decision.outcome_unknown and record is not None and record.intent is not None:
            intent = record.intent
            event(
                logging.WARNING,
                "refresh.outcome_unknown",
                key=key,
                holder_pid=intent.pid,
                holder_host=intent.host,
                started_at=intent.started_at.isoformat(),
                attempts=intent.attempts,
                action=decision.action.value,
            )
        if decision.action is Action.ADOPT:
            assert stored is not None
            changed = self._durable is None or stored.record != self._durable.record
            event(
                logging.INFO if changed and self._durable else logging.DEBUG,
                "transaction.adopted",
                key=key,
                version=stored.version,
                changed=changed,
            )
            return self._install(stored)
        if decision.action is Action.FAIL:
            assert decision.error is not None
            if decision.mark and stored is not None:
                self._mark_dead(stored, decision.mark)
            if isinstance(decision.error, LoginRequired):
                self._current = self._durable = None
            event(
                logging.INFO,
                "transaction.failed_closed",
                key=key,
                error=type(decision.error).__name__,
            )
            raise decision.error
        assert stored is not None and decision.intent is not None
        return self._refresh(stored, decision.intent)

    def _mark_dead(self, stored: Stored, reason: str) -> None:
        """Record durably that the grant is dead, so no process retries it."""
        marked = stored.record.replace(reauth_reason=reason, intent=None)
        try:
            self.store.write(self.key, marked, expected_version=stored.version)
        except StoreError as exc:
            event(logging.ERROR, "store.mark_failed", key=str(self.key), error=type(exc).__name__)
        self._current = None

    def _refresh(self, stored: Stored, intent: RefreshIntent) -> Credential:
        key = str(self.key)
        old = stored.record
        request = renewal_request(old, self._clock())
        noted = old.replace(intent=intent)
        # Durable note first: if it cannot be written, nothing is spent.
        noted_version = self.store.write(self.key, noted, expected_version=stored.version)
        self._stage("before_provider")
        started = time.monotonic()
        try:
            response = send_token_request(
                self._client(), request, now=self._clock, timeouts=self._token_timeout
            )
        except (ProviderError, ReauthenticationRequired, ClientRegistrationInvalid) as exc:
            event(
                logging.WARNING,
                "refresh.provider_call",
                key=key,
                outcome="error",
                error=type(exc).__name__,
                status=getattr(exc, "status", None),
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                token=intent.token_fingerprint,
            )
            raise self._after_provider_error(old, Stored(noted, noted_version), exc) from None
        event(
            logging.INFO,
            "refresh.provider_call",
            key=key,
            outcome="ok",
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            token=intent.token_fingerprint,
            rotated=response.refresh_token is not None,
        )
        self._stage("after_provider")
        fresh = apply_response(old, response, self._clock())
        # The provider's answer is authoritative from here on, whatever the store does.
        self._current = fresh
        if self._identity is None:
            self._identity = fresh
        self._stage("before_write")
        try:
            version = self.store.write(self.key, fresh, expected_version=noted_version)
        except StoreError as exc:
            self._durable = Stored(noted, noted_version)
            self._pending = fresh
            event(
                logging.ERROR,
                "refresh.persist_failed",
                key=key,
                provider_answered=True,
                error=type(exc).__name__,
                detail=exc.message,
                serving=redact(fresh.access_token),
            )
            return fresh
        self._durable = Stored(fresh, version)
        self._pending = None
        event(logging.INFO, "refresh.persisted", key=key, version=version)
        self._stage("after_write")
        return fresh

    def _after_provider_error(
        self, old: Credential, noted: Stored, exc: GrantkeeperError
    ) -> GrantkeeperError:
        """Record durably what the provider's error means; return the error to raise."""
        if isinstance(exc, ReauthenticationRequired | ClientRegistrationInvalid):
            retried = noted.record.intent is not None and noted.record.intent.attempts > 1
            if isinstance(exc, ReauthenticationRequired) and retried:
                reason = (
                    "an earlier refresh's outcome was lost, and the authorization server "
                    "rejected the retry (invalid_grant)"
                )
            elif isinstance(exc, ReauthenticationRequired):
                reason = "the authorization server rejected the refresh token (invalid_grant)"
            else:
                reason = "the authorization server no longer accepts this client registration"
            self._mark_dead(noted, reason)
            error = type(exc)(f"log in again: {reason}", key=str(self.key))
            error.__cause__ = exc
            return error
        if isinstance(exc, ProviderUnavailable) or type(exc) is ProviderError:
            # Nothing was spent: put the record back as it was before our note.
            restored = old
            state = "restored"
        else:
            # Sent, but no usable answer: the token may be spent. Leave a note that says so.
            assert noted.record.intent is not None
            restored = old.replace(intent=dataclasses.replace(noted.record.intent, state="unknown"))
            state = "outcome_unknown"
        try:
            self.store.write(self.key, restored, expected_version=noted.version)
        except StoreError as write_exc:
            event(
                logging.ERROR,
                "store.note_failed",
                key=str(self.key),
                state=state,
                error=type(write_exc).__name__,
            )
        return exc

    def _reconcile_pending(
        self, stored: Stored | None, rejected: str | None
    ) -> Credential | Stored | None:
        """Try again to make the pending credential durable.

        Returns the credential to serve, or the store's state to decide on.
        """
        pending, durable = self._pending, self._durable
        assert pending is not None
        key = str(self.key)
        if stored is None or durable is None or stored != durable:
            # A login, logout or peer changed the store since: that is authoritative.
            event(logging.WARNING, "pending.discarded_for_changed_store", key=key)
            self._pending = None
            return stored
        try:
            version = self.store.write(self.key, pending, expected_version=stored.version)
        except StoreError as exc:
            state = freshness(pending, self._clock(), self._skew)
            if state is not Freshness.EXPIRED and rejected != pending.access_token:
                event(
                    logging.WARNING,
                    "pending.still_unwritable",
                    key=key,
                    error=type(exc).__name__,
                )
                return pending
            event(logging.ERROR, "pending.failed_closed", key=key, error=type(exc).__name__)
            raise PersistencePending(
                "the refreshed credential could not be stored and the store still holds the "
                "spent one; refusing to replay it. Fix the store, or log in again",
                key=key,
            ) from exc
        event(logging.INFO, "pending.healed", key=key, version=version)
        healed = Stored(pending, version)
        self._durable = healed
        self._pending = None
        return healed
