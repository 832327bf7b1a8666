"""Keep one credential usable: serve it from memory, refresh it once per rotation.

The healthy path reads memory only. Anything else runs one transaction at a time per
``Keeper`` on a worker thread: take the store's lock for the key, re-read the store, let
the pure rules of ``_rules`` choose, then act. Callers join the transaction in flight and
may stop waiting (deadline, cancellation) without stopping it: its result serves the next
call. A token inside its refresh margin is served while a background transaction refreshes
ahead. This module only sequences I/O: every rule it follows is in ``_rules`` (how fresh a
token is, in ``_freshness``); it gathers the facts those rules take (the clock, this host's
identity, whether a note's writer still runs) and acts on what they decide.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import secrets
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

import httpx

from . import _rescue_copies
from ._errors import (
    AuthenticationRequired,
    DeadlineExceeded,
    GrantkeeperError,
    LockLost,
    LockTimeout,
    LoginFailed,
    LoginRequired,
    PersistencePending,
    StoreError,
    UnsupportedTokenType,
    VersionConflict,
)
from ._freshness import DEFAULT_SKEW, Clock, fresh_until, utc_now
from ._liveness import DEFAULT_LEASE, host_identity, process_alive
from ._network import client_options
from ._oauth.callback_server import DEFAULT_CALLBACK_TIMEOUT
from ._oauth.grants import note_refusal, renewal_request
from ._oauth.token_client import DEFAULT_TIMEOUT, send_token_request
from ._oauth.token_endpoint import apply_response
from ._oauth.workload import WorkloadIdentity
from ._observe import telemetry as _telemetry
from ._observe.log import event
from ._paths import grantkeeper_home
from ._record import Credential, CredentialKey, RefreshIntent
from ._redact import fingerprint
from ._rules import (
    REJECTION_INTERVAL,
    Action,
    Context,
    Outcome,
    after_provider_error,
    backoff,
    decide,
    fallback,
    holder_alive,
    merged_identity,
    pending_servable,
    recovered,
    recovery_need,
    rescue_dropped,
    same_host,
    same_note,
    servable,
    serve_from_memory,
)
from ._stores._fs import PrivateDir, locked_file
from ._stores.base import DEFAULT_LOCK_TIMEOUT, HeldLock, Store, Stored, plaintext_at_rest

Recovery = Callable[[AuthenticationRequired], object]
"""A recovery hook: given what a person must fix (a needed login, a dead grant,
``insufficient_scope`` with the scope to ask for), run a new login that stores the
credential (``grantkeeper.login_recovery`` builds one). The Keeper adopts what the login
stored, under the same lock as a refresh; a hook that returns the stored
:class:`~grantkeeper.Credential` (``login_recovery``'s does) also tells it which record is
that login's, so a record another process stored meanwhile is never taken for it."""

RECOVERY_MARGIN = 30.0
"""What a recovery waiting for another process's login gives it beyond its callback
timeout: time for its code exchange and its write."""

RECOVERY_WAIT = DEFAULT_CALLBACK_TIMEOUT + RECOVERY_MARGIN
"""How long a recovery waits for another process's login to the same credential."""

T = TypeVar("T")

Checkpoint = Callable[[str], None]
"""Test seam: called with a stage name at each step of a transaction. ``None`` in production."""


_live_holders: weakref.WeakValueDictionary[str, Keeper] = weakref.WeakValueDictionary()
"""Keepers alive in this process, by intent holder id: a sibling's pending refresh is live."""

_busy: dict[str, Keeper] = {}
"""Keepers with a transaction in flight or a credential the store has not taken, held
strongly: a Keeper dropped without ``close()`` must neither take B with it when it is
collected nor leave a note its siblings would take for a dead process's."""
_busy_lock = threading.Lock()

_exiting = threading.Event()
"""Set once the process has started to exit: a transaction that ends after that stores
its pending credential itself, since no later exit hook would."""

_exit_waited = threading.Event()
"""Set once the exit hook has waited for the transactions in flight: one that takes the
lock after that spends nothing (nobody would wait for its answer)."""

_mp_finalizer: object | None = None
"""Our hook in ``multiprocessing``'s exit finalizers (see :func:`_register_exit_flush`)."""


FLUSH_LOCK_TIMEOUT = 5.0
"""How long closing (or exiting) waits for the lock to store a pending credential, before
it keeps a rescue copy instead: an exit must not hang for a full lock timeout."""

EXIT_SETTLE_TIMEOUT = 35.0
"""How long an exiting process waits for a transaction that holds the lock (a token request
is bounded by 30 s) so that an answer already on its way is stored, not dropped."""

CLOSE_LOCK_PATIENCE = FLUSH_LOCK_TIMEOUT
"""How long :meth:`Keeper.close` waits for a transaction that is still waiting for the
lock. One that has not taken it by then is abandoned: it has spent nothing, and gives the
lock back untouched if it gets it later. A process must not outlive its work by a whole lock
timeout because a peer holds the lock (a peer frozen mid-refresh holds it indefinitely)."""

WATCH_SLICE = 0.25
"""How long a transaction waiting for a busy lock listens for a write before it tries the
lock again: the longest it misses a holder that let go without writing (one that died, or
found nothing to do). A write wakes it at once."""

JOINS = 3
"""How many transactions a caller joins at most for a usable credential. One it joined may
have begun before the caller's reason to wait (a 401 for the token it then served); one it
started itself serves it, unless that token expired in between: then one more."""


class Ready(NamedTuple):
    """What memory may serve without a question: a fresh credential that can be sent, until
    it turns stale (``Keeper._ready``, read by :meth:`Keeper.cached` and the HTTP driver)."""

    credential: Credential | None
    stale_at: float
    """When it turns stale, as a timestamp of the Keeper's clock."""
    bearer_stale_at: float
    """The same for a Bearer token, ``-inf`` for another: the HTTP driver's one comparison."""
    bearer: str
    """``Bearer <token>``, the Authorization value of a Bearer token (else empty)."""


NEVER = float("-inf")
NOT_READY = Ready(None, NEVER, NEVER, "")


class Keeper:
    """Serve a valid credential for ``key`` from ``store``, refreshing it safely.

    One ``Keeper`` per credential per process is enough; it is thread-safe and may be used
    from sync and async code at once. It never holds a lock while the caller uses a token.

    A token inside its refresh margin is served at once while one background transaction
    refreshes ahead; only an expired or rejected token makes a caller wait. A failure that
    does not end the grant (an outage, a busy lock, an unreachable store) never fails a
    request whose token is still valid: it is logged and retried with backoff.

    Only a definitive answer from the provider (``invalid_grant``, ``invalid_client``)
    ends a grant. When a refresh's outcome is unknown (its process died, or the answer was
    lost after the request was sent), later transactions retry the same refresh token,
    serialized, with capped exponential backoff: if the first attempt was processed the
    retry gets ``invalid_grant``, so retrying again adds no risk. ``retry_unknown_outcome=
    False`` refuses the first retry after an unknown outcome and requires a new login: the
    choice for providers whose reuse detection treats any replay as theft. It never counts
    a request that was not sent, or answered 429/503, as unknown.

    ``default_lifetime`` is assumed for tokens the provider gives no ``expires_in``;
    without it such a token is used until a server rejects it. A server that rejects the
    token a 401-forced refresh just obtained gets no second refresh within
    ``rejection_interval`` (:class:`~grantkeeper.ServerRejectsToken` instead).

    A refreshed credential the store would not take is retried at :meth:`close` and at
    interpreter exit; if the store still refuses it, it is kept as a rescue copy in the
    user's runtime directory, sealed under a key only the store's record yields, which the
    next transaction adopts (and a new login or logout removes).

    ``recover`` is a hook that has a person log in when nothing else can help (see
    :meth:`recover`). Its logins take a login lock shared by every process of this host, so
    however many processes need a login at once, one runs: the others wait up to
    ``recovery_wait`` seconds, then adopt what it stored (or, if it failed, try their own).
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
        default_lifetime: timedelta | None = None,
        rejection_interval: timedelta = REJECTION_INTERVAL,
        lease: timedelta = DEFAULT_LEASE,
        recover: Recovery | None = None,
        recovery_wait: float = RECOVERY_WAIT,
        checkpoint: Checkpoint | None = None,
        workload: WorkloadIdentity | None = None,
    ) -> None:
        self.store = store
        self._workload = workload
        self.key = key
        self._http = http_client
        self._owns_http = http_client is None
        self._http_closer: weakref.finalize[[], Keeper] | None = None
        self._clock = clock
        self._skew = skew
        self._lock_timeout = lock_timeout
        self._token_timeout = token_timeout
        self._retry_unknown = retry_unknown_outcome
        self._default_lifetime = default_lifetime
        self._rejection_interval = rejection_interval
        self._recover = recover
        self._recovery_wait = recovery_wait
        # One recovery (a person's login) at a time; later callers adopt its result.
        self._recovering = threading.Lock()
        self._recoveries = 0
        self._checkpoint = checkpoint
        self._mutex = threading.Lock()
        self._inflight: concurrent.futures.Future[Credential] | None = None
        # The OpenTelemetry span of the transaction in flight (None without the API): the
        # requests that join it are linked to it.
        self._span: _telemetry.Span | None = None
        # Whether the transaction in flight holds the lock (it may spend, or store B).
        self._holding = False
        # A transaction given up while it waited for the lock: it must not take it.
        self._abandoned: concurrent.futures.Future[Credential] | None = None
        # The healthy path's answer, worked out once per credential: the credential, if it
        # can be sent, the moment (a timestamp of ``_now``) it turns stale, and for a Bearer
        # token the Authorization value to send. Read by :meth:`cached`, and by the HTTP
        # auth driver directly, where every request asks it (``_http_auth.driver``). Always
        # of ``_current`` or NOT_READY: setting ``_current`` clears it.
        self._ready: Ready = NOT_READY
        # Makes setting ``_current`` and working out ``_ready`` of it one step each: a
        # request must never leave a rejected token's Ready behind its replacement.
        self._ready_lock = threading.Lock()
        # What we serve; may be ahead of the store when a write failed.
        self._current = None
        # The clock as a float: the default one read as time.time() (a datetime per request
        # costs more than the rest of the check), an injected one converted.
        self._now: Callable[[], float] = (
            time.time if clock is utc_now else lambda: clock().timestamp()
        )
        # The last record we know the store holds, with its version.
        self._durable: Stored | None = None
        # A refreshed credential the store does not hold yet (the provider's answer B).
        self._pending: Credential | None = None
        # The identity this lifecycle serves: its account must not change silently.
        self._identity: Credential | None = None
        # No background refresh before this (backoff after a failed one).
        self._ahead_after: datetime | None = None
        self._ahead_failures = 0
        self._host = socket.gethostname()
        self._host_id = host_identity()
        self._lease = lease
        # The lock of the transaction running now (set only on the transaction's thread).
        self._held: HeldLock | None = None
        # One flush of the pending credential at a time (close, exit, the transaction's end).
        self._flushing = threading.Lock()
        self._holder = secrets.token_hex(8)
        _live_holders[self._holder] = self

    def __repr__(self) -> str:
        return f"Keeper({str(self.key)!r}, store={self.store.name!r})"

    @property
    def _current(self) -> Credential | None:
        return self._serving

    @_current.setter
    def _current(self, credential: Credential | None) -> None:
        with self._ready_lock:
            self._serving = credential
            if credential is not self._ready.credential:
                # Whatever memory served before: the next request works out this one's anew.
                self._ready = NOT_READY

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

        Never waits and does no I/O (beyond starting a background refresh when one is due):
        the healthy path of every request.
        """
        ready = self._ready
        if rejected is None and self._now() < ready.stale_at:
            return ready.credential  # fresh and presentable: one comparison
        hit = self._from_memory(rejected)
        return None if hit is None else self._presentable(hit)

    def _presentable(self, credential: Credential) -> Credential:
        """``credential``, unless it is of a type grantkeeper cannot present.

        Such a token is kept (and its refresh token rotates on), since throwing the answer
        away would replay the spent refresh token; but sent as Bearer it fails at the
        server, or strips its sender constraint. So a request gets a typed error instead.
        """
        if credential.presentable:
            return credential
        raise UnsupportedTokenType.issued(credential.token_type, kept=True, key=str(self.key))

    def credential(
        self, *, rejected: str | None = None, timeout: float | None = None
    ) -> Credential:
        """Return a credential that is valid (and not ``rejected``).

        ``rejected`` is the access token a server just answered 401 for; at most one
        refresh is spent on it, and none if another token has already replaced it.
        ``timeout`` bounds the wait, not the refresh, which runs on and serves later calls.
        When only a person can help and a recovery hook is set, it runs once (see
        :meth:`recover`); without one, the typed error is raised.
        """
        seen = self._recoveries
        try:
            return self._credential(rejected, timeout)
        except AuthenticationRequired as exc:
            if self._recover is None:
                raise
            return self._recover_once(exc, seen)

    def recover(self, error: AuthenticationRequired, *, rejected: str | None = None) -> Credential:
        """Have a person fix ``error`` through the recovery hook, once, and return the new
        credential. Without a hook, raise ``error``. ``rejected`` is the access token the
        failing request carried (default: the one held now): a login stored since it was
        sent answers ``error`` already.

        On ``insufficient_scope`` the login asks for the union of the held and required
        scopes (a step-up); a needed login or a dead grant logs in again as before.
        Concurrent callers share one login, and so do the processes of this host: the
        login lock is taken, the store re-read, and what another process's login stored is
        adopted if it answers ``error`` (:func:`~grantkeeper._rules.recovered`); only
        otherwise is the hook run. Callers of this process that waited for a login that
        failed get their own error, not a second login (a waiting process tries its own).
        """
        return self._recover_once(error, self._recoveries, rejected)

    async def arecover(
        self, error: AuthenticationRequired, *, rejected: str | None = None
    ) -> Credential:
        """Async :meth:`recover`: the login runs on a daemon thread, so a process whose
        caller has gone (cancelled, exiting) never waits for a person to finish."""
        seen = self._recoveries
        work = functools.partial(self._recover_once, error, seen, rejected)
        return await _on_daemon_thread(work)

    def _recover_once(
        self, error: AuthenticationRequired, seen: int, rejected: str | None = None
    ) -> Credential:
        held = self._current
        need = recovery_need(error, held)
        if self._recover is None or need is None:
            raise error
        failed = rejected if rejected is not None else (held.access_token if held else None)
        with self._recovering:
            if self._recoveries == seen:  # nobody recovered since this caller failed
                try:
                    with _login_lock(self.key, self._recovery_wait):
                        logged_in = self._recover_under_lock(need, failed)
                finally:
                    # Failed or not, callers that waited for this one do not start another:
                    # a person who closed the browser is not shown a window per request.
                    self._recoveries += 1
                if logged_in is not None:
                    # This lifecycle's hook had a person log in: what they logged in as is
                    # its identity from now on. At another issuer (the server moved to
                    # another authorization server, SEP-2352) that replaces the old one
                    # whole; at the same issuer it is merged, so a record without a subject
                    # never forgets the account. A login it did not run changes nothing.
                    known = self._identity
                    moved = known is not None and known.issuer != logged_in.issuer
                    self._identity = logged_in if moved else merged_identity(known, logged_in)
                # The store has a new record: memory is no longer the authority.
                self._current = None
        return self._credential(None, None)

    def _recover_under_lock(
        self, need: AuthenticationRequired, failed: str | None
    ) -> Credential | None:
        """Adopt what another login stored, or run the hook; return the record the hook's
        login stored, read under the login lock (``None`` when it adopted, or cannot say)."""
        key = str(self.key)
        try:
            stored = self.store.read(self.key)
        except StoreError as exc:
            # An unreadable record (a corrupt one, say) is what a login replaces.
            event(logging.WARNING, "recovery.store_unreadable", key=key, error=type(exc).__name__)
            stored = None
        record = stored.record if stored is not None else None
        if recovered(need, record, failed, self._context(), key):
            event(logging.WARNING, "recovery.adopted", key=key, need=type(need).__name__)
            return None
        event(logging.WARNING, "recovery.started", key=key, need=type(need).__name__)
        _telemetry.forced_login(self.key, need)
        assert self._recover is not None
        result = self._recover(need)
        try:
            stored = self.store.read(self.key)
        except StoreError:
            return None
        if stored is None:
            return None
        if isinstance(result, Credential) and result.access_token != stored.record.access_token:
            return None  # another login stored since: not the one this lifecycle asked for
        return stored.record

    def _credential(self, rejected: str | None, timeout: float | None) -> Credential:
        hit = self._from_memory(rejected)
        if hit is not None:
            return self._presentable(hit)
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(JOINS):
            future, _ = self._join(rejected)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = future.result(left)
            except concurrent.futures.TimeoutError:
                raise DeadlineExceeded(
                    f"no credential within {timeout:g} s; the refresh continues in the background",
                    key=str(self.key),
                ) from None
            if self._usable(result, rejected):
                self._served(result, rejected)  # starts a refresh ahead if one is due
                return self._presentable(result)
        raise self._unusable()

    def _unusable(self) -> DeadlineExceeded:
        """What a caller gets instead of a token that expired or was rejected: every
        transaction it joined ended with one (each began before its reason to wait, or the
        token expired as it ended). Never the dead token itself."""
        return DeadlineExceeded(
            f"no valid credential after {JOINS} refresh transactions; try again",
            key=str(self.key),
        )

    async def acredential(
        self,
        *,
        rejected: str | None = None,
        # Like credential()'s: asyncio.timeout around the call would bound a login too.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Credential:
        """Async :meth:`credential`. ``timeout`` bounds the wait for a refresh, not a
        person's login through the recovery hook; ``asyncio.timeout`` around the call bounds
        both. Cancelling the caller cancels neither: the result serves the next call."""
        seen = self._recoveries
        try:
            if timeout is None:
                return await self._acredential(rejected)
            try:
                async with asyncio.timeout(timeout):
                    return await self._acredential(rejected)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no credential within {timeout:g} s; the refresh continues in the background",
                    key=str(self.key),
                ) from None
        except AuthenticationRequired as exc:
            if self._recover is None:
                raise
            return await _on_daemon_thread(functools.partial(self._recover_once, exc, seen))

    async def _acredential(self, rejected: str | None) -> Credential:
        hit = self._from_memory(rejected)
        if hit is not None:
            return self._presentable(hit)
        for _ in range(JOINS):
            future, _ = self._join(rejected)
            waiter = asyncio.wrap_future(future)
            # Whoever stops waiting first, the outcome must still be retrieved, or asyncio
            # reports an exception that was never retrieved.
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            result = await asyncio.shield(waiter)
            if self._usable(result, rejected):
                self._served(result, rejected)  # starts a refresh ahead if one is due
                return self._presentable(result)
        raise self._unusable()

    def access_token(self, *, timeout: float | None = None) -> str:
        """Return a valid access token."""
        return self.credential(timeout=timeout).access_token

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the transaction in flight (a refresh ahead, say) to finish; return
        whether none is left running. Its outcome serves later calls and is not raised."""
        with self._mutex:
            inflight = self._inflight
        if inflight is None:
            return True
        done, _ = concurrent.futures.wait([inflight], timeout)
        return bool(done)

    def close(self) -> None:
        """Wait for a transaction in flight, store a pending credential (or keep a rescue
        copy of it), then close the HTTP client we created.

        A transaction that holds the lock is waited for: its answer may be on the way. One
        still waiting for the lock is waited for at most :data:`CLOSE_LOCK_PATIENCE`, then
        abandoned (it has spent nothing, and will not)."""
        self._finish_flight(time.monotonic() + CLOSE_LOCK_PATIENCE, None)
        self._flush_pending()
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None
            self._forget_http_closer()

    def _finish_flight(self, patience_until: float, bound_until: float | None) -> None:
        """Let the transaction in flight end before this Keeper lets go: wait while it may
        spend a refresh token or store an answer (until ``bound_until``, monotonic; ``None``
        for as long as it takes); while it only waits for the lock, wait until
        ``patience_until``, then abandon it. One already abandoned is not waited for again."""
        for _ in range(JOINS):  # one more caller's transaction may begin meanwhile
            with self._mutex:
                flight = self._inflight
                if flight is None or flight is self._abandoned:
                    return
            patience = max(0.0, patience_until - time.monotonic())
            done, _ = concurrent.futures.wait([flight], patience)
            if not done:
                with self._mutex:
                    if flight is self._inflight and not self._holding:
                        self._abandoned = flight
                        event(logging.INFO, "transaction.abandoned", key=str(self.key))
                        return
                left = None if bound_until is None else max(0.0, bound_until - time.monotonic())
                done, _ = concurrent.futures.wait([flight], left)
                if not done:
                    return  # the bound is reached: what is pending is flushed next

    def _take_held(self, flight: concurrent.futures.Future[Credential] | None) -> None:
        """The lock was just taken: go on, unless nobody waits for this transaction any
        more (its Keeper closed, or its process is exiting, before the lock came free).
        Decided under the mutex that :meth:`_finish_flight` reads, so a transaction is
        either waited for or stops here."""
        with self._mutex:
            # After the exit hook's wait nobody would wait for it either: an app thread
            # that starts a transaction then must not spend with its process going away.
            if _exit_waited.is_set() or (flight is not None and flight is self._abandoned):
                raise LockTimeout(
                    "the lock came free after this Keeper stopped waiting; nothing was spent",
                    key=str(self.key),
                )
            self._holding = True

    def __enter__(self) -> Keeper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- in-process coordination --------------------------------------------------------

    def _context(self, rejected: str | None = None) -> Context:
        return Context(
            now=self._clock(),
            skew=self._skew,
            pid=os.getpid(),
            host=self._host,
            holder=self._holder,
            known=self._identity,
            rejected=rejected,
            retry_unknown_outcome=self._retry_unknown,
            default_lifetime=self._default_lifetime,
            rejection_interval=self._rejection_interval,
        )

    def _from_memory(self, rejected: str | None) -> Credential | None:
        """The healthy path: no store, lock or network I/O."""
        current = self._current
        if current is None:
            return None
        if rejected is None and self._ready.credential is not current:
            # Every request asks this; the moment the credential turns stale is worked out
            # once per credential rather than per request (:meth:`cached` compares it).
            stale = self._stale_moment(current)
            if stale is not None and current.presentable:
                stale_at = stale.timestamp()
                if current.dpop:
                    ready = Ready(current, stale_at, NEVER, "")
                else:
                    ready = Ready(current, stale_at, stale_at, "Bearer " + current.access_token)
                with self._ready_lock:
                    if self._serving is current:  # not replaced meanwhile
                        self._ready = ready
            if stale is not None and self._clock() < stale:
                return current
        return self._served(current, rejected)

    def _usable(self, credential: Credential, rejected: str | None) -> bool:
        return serve_from_memory(credential, self._context(rejected))[0] is not None

    def _stale_moment(self, record: Credential) -> datetime | None:
        return fresh_until(record, self._skew, self._default_lifetime)

    def _served(self, credential: Credential, rejected: str | None) -> Credential | None:
        """What memory may serve of ``credential``; starts a refresh ahead when one is due."""
        serve, ahead = serve_from_memory(credential, self._context(rejected))
        if ahead:
            _telemetry.stale_serve(self.key)
            self._refresh_ahead()
        return serve

    def _refresh_ahead(self) -> None:
        """Start one background transaction, unless one runs or a backoff is on."""
        after = self._ahead_after
        if after is not None and self._clock() < after:
            return
        with self._mutex:
            if self._inflight is not None:
                return
        future, _ = self._join(None, background=True)
        future.add_done_callback(self._ahead_done)

    def _ahead_done(self, future: concurrent.futures.Future[Credential]) -> None:
        error = future.exception()
        if error is not None and not isinstance(error, GrantkeeperError):
            self._back_off(error, background=True)  # a bug: _transact saw only ours

    def _back_off(self, error: BaseException, *, background: bool) -> None:
        """A transaction failed: no refresh ahead in this process before a backoff.

        A failed transaction usually still serves the valid token (:func:`fallback`), so
        success of the future says nothing; the failure is counted here. A provider's
        answer also leaves a durable note whose ``retry_at`` binds every process
        (:meth:`_install`); this binds this one for failures that leave no note too (a busy
        lock, an unreachable store, a lost conflict), and for one that could not write it.
        """
        self._ahead_failures += 1
        retry_after = getattr(error, "retry_after", None)
        retry_at = self._clock() + backoff(
            self._ahead_failures, retry_after if isinstance(retry_after, int | float) else None
        )
        if self._ahead_after is None or self._ahead_after < retry_at:
            self._ahead_after = retry_at
        if background:
            event(
                logging.WARNING,
                "refresh.background_failed",
                key=str(self.key),
                error=type(error).__name__,
                failures=self._ahead_failures,
                next_attempt=self._ahead_after.isoformat(),
            )

    def _join(
        self, rejected: str | None, *, background: bool = False
    ) -> tuple[concurrent.futures.Future[Credential], bool]:
        """The transaction in flight, or a new one: ``(future, whether we started it)``."""
        caller = _telemetry.caller()  # the request's span, to link the transaction to
        with self._mutex:
            if self._inflight is not None:
                if not background:
                    _telemetry.add_link(self._span, caller)
                return self._inflight, False
            future: concurrent.futures.Future[Credential] = concurrent.futures.Future()
            # Running futures cannot be cancelled by a waiter that gives up.
            future.set_running_or_notify_cancel()
            self._inflight = future
            # Started here, under the mutex, so that no request joining it goes unlinked.
            span = self._span = _telemetry.start_transaction(
                self.key, self.store.name, background=background, link=caller
            )
        self._track()
        _register_exit_flush()
        # A daemon: a process that ends must not wait for a lock a peer holds (a peer frozen
        # mid-refresh holds it indefinitely). One that holds the lock, whose answer may be
        # on the way, is waited for by close() and by the exit hook (_flush_at_exit).
        thread = threading.Thread(
            target=self._run,
            args=(future, rejected, background, span),
            name=f"grantkeeper {self.key}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException as exc:  # no thread (interpreter shutdown, a thread limit)
            with self._mutex:
                self._inflight = self._span = None
            self._track()
            _telemetry.failed(span, exc)
            _telemetry.end(span)
            future.set_exception(exc)
        return future, True

    def _run(
        self,
        future: concurrent.futures.Future[Credential],
        rejected: str | None,
        background: bool,
        span: _telemetry.Span | None = None,
    ) -> None:
        try:
            with _telemetry.current(span):
                result = self._transact(rejected, background, future)
        except BaseException as exc:
            with self._mutex:
                self._inflight = self._span = None
            _telemetry.end(span)  # after: a request joining until then is linked to it
            self._track()
            future.set_exception(exc)
        else:
            with self._mutex:
                self._inflight = self._span = None
            _telemetry.end(span)
            self._track()
            future.set_result(result)
        if _exiting.is_set():
            # The exit hooks may have run already: B must not leave with the process.
            self._flush_guarded()

    def _forked(self) -> None:
        """In a child just forked: start clean. Nothing the parent had in flight exists
        here (its threads did not come along), and its pending credential is the
        parent's to store: the child keeps only what it may serve from memory."""
        self._mutex = threading.Lock()
        self._recovering = threading.Lock()
        self._flushing = threading.Lock()
        self._ready_lock = threading.Lock()
        self._inflight = None
        self._span = None
        self._holding = False
        self._abandoned = None
        self._pending = None
        self._held = None
        if self._owns_http and self._http is not None:
            # The parent's connections: never ours to use or close.
            self._http = None
            self._forget_http_closer()
        _live_holders.pop(self._holder, None)
        self._holder = secrets.token_hex(8)
        _live_holders[self._holder] = self

    def _track(self) -> None:
        """Hold this Keeper strongly while the process must not drop its work: a
        transaction in flight, or a credential the store has not taken yet."""
        with _busy_lock:
            if self._inflight is not None or self._pending is not None:
                _busy[self._holder] = self
            else:
                _busy.pop(self._holder, None)

    # -- the transaction ----------------------------------------------------------------

    def _stage(self, name: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(name)

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                timeout=self._token_timeout, follow_redirects=False, **client_options()
            )
            # A Keeper dropped without close() still closes the client it made.
            self._http_closer = weakref.finalize(self, self._http.close)
        return self._http

    def _forget_http_closer(self) -> None:
        if self._http_closer is not None:
            self._http_closer.detach()
            self._http_closer = None

    def _install(self, stored: Stored) -> Credential:
        record = stored.record
        self._current = record
        self._durable = stored
        self._pending = None
        self._identity = merged_identity(self._identity, record)
        intent = record.intent
        if intent is not None and intent.retry_at is not None and intent.retry_at > self._clock():
            self._ahead_after = intent.retry_at  # a peer's backoff binds us too
        elif intent is None:
            self._backoff_over()  # a clean record: whatever failed is over
        return record

    def _backoff_over(self) -> None:
        self._ahead_failures = 0
        self._ahead_after = None

    def _transact(
        self,
        rejected: str | None,
        background: bool = False,
        flight: concurrent.futures.Future[Credential] | None = None,
    ) -> Credential:
        key = str(self.key)
        seen = self._current
        stored: Stored | None = None
        try:
            if self._pending is None:
                stored = self.store.read(self.key)
                seen = stored.record if stored else seen
                adopted = self._adopt_unlocked(stored, rejected, background)
                if adopted is not None:
                    return adopted
            self._stage("lock_wait")
            started = time.monotonic()
            with contextlib.ExitStack() as turn:
                try:
                    taken = self._take_turn(turn, stored, rejected, background, flight)
                except BaseException as exc:
                    waited = time.monotonic() - started
                    _telemetry.lock_waited(self.key, self.store.name, waited, "failed", exc)
                    raise
                waited = time.monotonic() - started
                result = "adopted" if isinstance(taken, Credential) else "acquired"
                _telemetry.lock_waited(self.key, self.store.name, waited, result)
                waited_ms = round(waited * 1000, 1)
                if isinstance(taken, Credential):
                    # A peer committed while this one waited: adopted, never locked.
                    event(
                        logging.DEBUG, "transaction.adopted_waiting", key=key, waited_ms=waited_ms
                    )
                    return taken
                event(logging.DEBUG, "transaction.locked", key=key, waited_ms=waited_ms)
                self._held = taken
                try:
                    self._take_held(flight)
                    self._stage("locked")
                    stored = self.store.read(self.key)
                    seen = stored.record if stored else None
                    self._stage("after_read")
                    stored = self._adopt_rescued(stored)
                    self._adopt_sibling_pending(stored)
                    if self._pending is not None:
                        served = self._reconcile_pending(stored, rejected)
                        if isinstance(served, Credential):
                            _telemetry.annotate(self._span, result="pending_reconciled")
                            return served
                        stored = served
                    return self._decide_and_act(stored, rejected)
                finally:
                    self._held = None
                    with self._mutex:
                        self._holding = False
        except GrantkeeperError as exc:
            if flight is None or flight is not self._abandoned:
                # An abandoned transaction failed nothing: its Keeper stopped waiting.
                self._back_off(exc, background=background)
            served = fallback(seen, exc, self._context(rejected), key)
            if served is None:
                raise
            event(
                logging.WARNING,
                "transaction.served_valid_token",
                key=key,
                error=type(exc).__name__,
                background=background,
            )
            _telemetry.annotate(self._span, result="served_valid_token", error=type(exc).__name__)
            if self._current is None or self._current.access_token == served.access_token:
                self._current = served
                self._identity = merged_identity(self._identity, served)
            return served

    def _take_turn(
        self,
        turn: contextlib.ExitStack,
        stored: Stored | None,
        rejected: str | None,
        background: bool,
        flight: concurrent.futures.Future[Credential] | None,
    ) -> HeldLock | None | Credential:
        """Take the lock in ``turn``, or adopt what its holder commits meanwhile.

        Waiters do not queue behind each other for the lock only to read, one by one, what
        its holder wrote: each waits to hear of a write to the record (the store's
        :meth:`~grantkeeper._stores.base.Watchable.wait_for_change`: PostgreSQL's NOTIFY, a
        watch of the file), re-reads it and adopts it as :meth:`_adopt_unlocked` would, and
        takes the lock only if the record still needs a transaction when the lock is free.
        An adopting waiter spends nothing, so fencing and lease rules are untouched. A
        pending credential (B not yet stored) is reconciled under the lock, never adopted
        over; a store that cannot be watched is queued for as before.
        """

        def abandoned() -> bool:  # its Keeper stopped waiting for it (close(), exit)
            return flight is not None and flight is self._abandoned

        # The HTTP client is made by the holder alone, once it holds the lock (_refresh): a
        # waiter mostly adopts, and a storm's every waiter making its first client at once
        # (tens of ms of CPU each) would slow the one refresh they all wait for.
        watch = getattr(self.store, "wait_for_change", None)
        if watch is None or self._pending is not None:
            return turn.enter_context(self.store.lock(self.key, timeout=self._lock_timeout))
        deadline = time.monotonic() + self._lock_timeout
        version = stored.version if stored is not None else None
        while True:
            with contextlib.suppress(LockTimeout):
                return turn.enter_context(self.store.lock(self.key, timeout=0))
            left = deadline - time.monotonic()
            if left <= 0 or abandoned():
                raise LockTimeout(
                    f"the lock of {self.key} was not released within "
                    f"{self._lock_timeout:g} s; another process holds it",
                    key=str(self.key),
                )
            slice_ends = time.monotonic() + min(left, WATCH_SLICE)
            try:
                heard = watch(self.key, version, min(left, WATCH_SLICE))
            except StoreError as exc:
                # Hearing is optional (a connection limit, a keyring that went away):
                # queue for the lock as a store that cannot be watched would.
                event(
                    logging.WARNING,
                    "transaction.watch_failed",
                    key=str(self.key),
                    error=type(exc).__name__,
                )
                return turn.enter_context(self.store.lock(self.key, timeout=left))
            if not heard:
                continue  # no write heard: the lock may be free (a holder that wrote nothing)
            stored = self.store.read(self.key)
            if not abandoned():
                adopted = self._adopt_unlocked(stored, rejected, background)
                if adopted is not None:
                    return adopted
            if stored is None or (version is not None and stored.version <= version):
                # Woken, but the record did not move (a notice that overstated it): wait out
                # the slice rather than ask again at once.
                time.sleep(max(0.0, slice_ends - time.monotonic()))
            version = stored.version if stored is not None else None

    def _adopt_unlocked(
        self, stored: Stored | None, rejected: str | None, background: bool
    ) -> Credential | None:
        """A usable credential already in the store (first use, a peer's refresh, a new login).

        Read without the lock: reading spends nothing, and when one process of a fleet has
        refreshed, the others would otherwise queue for the lock one by one just to read
        its result. A caller with nothing valid to send also takes a stored token that is
        still valid but due (the refresh then runs ahead in the background). Anything else
        (a refresh to spend, an intent to judge, a failure to record) goes through the
        locked path, which reads again.
        """
        if stored is None:
            return None
        key = str(self.key)
        ctx = self._context(rejected)
        decision = decide(stored.record, ctx, key=key)
        plain = stored.record.intent is None and decision.action is Action.ADOPT
        if not plain and (background or not servable(stored.record, ctx, key)):
            return None
        if self._durable is None:
            event(logging.DEBUG, "credential.loaded", key=key, version=stored.version)
            _telemetry.annotate(self._span, result="loaded")
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
            _telemetry.annotate(self._span, result="adopted")
            if changed:
                _telemetry.adoption(self.key, locked=False)
        return self._install(stored)

    def _holder_alive(self, intent: RefreshIntent | None) -> bool:
        """Whether the writer of ``intent`` may still hold an unstored answer
        (:func:`~grantkeeper._rules.holder_alive`, with this process's facts and probes)."""
        return holder_alive(
            intent,
            now=self._clock(),
            pid=os.getpid(),
            holder=self._holder,
            host_id=self._host_id,
            host=self._host,
            sibling_alive=_live_holders.__contains__,
            pid_alive=process_alive,
        )

    def _same_host(self, intent: RefreshIntent) -> bool:
        """Whether ``intent`` was written in this boot and pid namespace (its pid means
        the same process here)."""
        return same_host(intent, host_id=self._host_id, host=self._host)

    def _our_note(self, stored: Stored | None, noted: Stored | None) -> bool:
        """Whether the store's ``stored`` still is ``noted``, an in-flight note of this
        process: unchanged, or with only its lease renewed by a write whose reply was lost.
        Either way no one else has written since, and only the answer to that note's
        refresh (never the spent token it names) may follow it."""
        if stored is None or noted is None:
            return False
        if stored == noted:
            return True
        intent = noted.record.intent
        return (
            intent is not None
            and intent.pid == os.getpid()
            and self._same_host(intent)
            and same_note(stored.record, noted.record)
        )

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
            if self._durable is None:
                _telemetry.annotate(self._span, result="loaded")
            else:
                _telemetry.annotate(self._span, result="adopted")
                if changed:
                    _telemetry.adoption(self.key, locked=True)
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
        return self._refresh(stored, decision.intent, rejected, decision.outcome_unknown)

    def _mark_dead(self, stored: Stored, reason: str) -> None:
        """Record durably that the grant is dead, so no process retries it."""
        marked = stored.record.replace(reauth_reason=reason, intent=None)
        try:
            self.store.write(self.key, marked, expected_version=stored.version)
        except StoreError as exc:
            event(logging.ERROR, "store.mark_failed", key=str(self.key), error=type(exc).__name__)
        self._current = None

    def _refresh(
        self, stored: Stored, intent: RefreshIntent, rejected: str | None, was_unknown: bool
    ) -> Credential:
        key = str(self.key)
        old = stored.record
        request = renewal_request(old, self._clock(), workload=self._workload)
        # Made before the note: a proxy or trust setting no request could use (typed by
        # _network) must fail here, where nothing is noted as in flight, not be taken for
        # a provider call whose outcome was lost.
        client = self._client()
        intent = dataclasses.replace(
            intent, host_id=self._host_id, lease_until=self._clock() + self._lease
        )
        noted = old.replace(intent=intent)
        # Durable note first: if it cannot be written, nothing is spent.
        noted_version = self.store.write(self.key, noted, expected_version=stored.version)
        self._stage("before_provider")
        self._ensure_still_locked(old, Stored(noted, noted_version))
        started = time.monotonic()
        renewer = _LeaseRenewer(self, Stored(noted, noted_version))
        try:
            with renewer:
                response = send_token_request(
                    client, request, now=self._clock, timeouts=self._token_timeout
                )
        except Exception as exc:
            took = time.monotonic() - started
            event(
                logging.WARNING,
                "refresh.provider_call",
                key=key,
                outcome="error",
                error=type(exc).__name__,
                status=getattr(exc, "status", None),
                duration_ms=round(took * 1000, 1),
                token=intent.token_fingerprint,
            )
            if old.workload_source is not None:
                note_refusal(request, exc)
            return self._after_provider_error(
                renewer.noted, exc, rejected, was_unknown, took=(request.url, took)
            )
        took = time.monotonic() - started
        event(
            logging.INFO,
            "refresh.provider_call",
            key=key,
            outcome="ok",
            duration_ms=round(took * 1000, 1),
            token=intent.token_fingerprint,
            rotated=response.refresh_token is not None,
        )
        self._stage("after_provider")
        now = self._clock()
        forced = rejected is not None and rejected == old.access_token
        fresh = apply_response(old, response, now).replace(
            rejected_refresh_at=now if forced else None
        )
        # The provider's answer is authoritative from here on, whatever the store does.
        self._current = fresh
        self._backoff_over()
        self._identity = merged_identity(self._identity, fresh)
        self._durable = renewer.noted
        self._pending = fresh
        self._stage("before_write")
        try:
            version = self._write_over_note(fresh, renewer.noted)
        except Exception as exc:
            # Any failure, not only the store's own: B stays pending and is never lost.
            event(
                logging.ERROR,
                "refresh.persist_failed",
                key=key,
                provider_answered=True,
                error=type(exc).__name__,
                detail=exc.message if isinstance(exc, GrantkeeperError) else "",
                serving=fingerprint(fresh.access_token),
            )
            self._refreshed(request.url, took, persisted=False)
            return fresh
        self._durable = Stored(fresh, version)
        self._pending = None
        event(logging.INFO, "refresh.persisted", key=key, version=version)
        self._refreshed(request.url, took, persisted=True)
        self._stage("after_write")
        return fresh

    def _refreshed(self, endpoint: str, took: float, *, persisted: bool) -> None:
        """Report an answered refresh: after its write, which nothing may delay."""
        _telemetry.refresh(self.key, endpoint, took, Outcome.ANSWERED.value, span=self._span)
        _telemetry.annotate(self._span, result="refreshed", persisted=persisted)

    def _write_over_note(self, record: Credential, noted: Stored) -> int:
        """Write ``record`` in place of our in-flight note ``noted``.

        If the store holds a newer version of the same note (a renewal whose reply was lost,
        and the store could not be read since), the write follows that version instead: the
        note is still ours, and only what our refresh produced may replace it.
        """
        try:
            return self.store.write(self.key, record, expected_version=noted.version)
        except VersionConflict:
            now = self.store.read(self.key)
            if now is None or now == noted or not self._our_note(now, noted):
                raise
            event(
                logging.WARNING,
                "pending.note_renewal_found",
                key=str(self.key),
                version=now.version,
            )
            return self.store.write(self.key, record, expected_version=now.version)

    def _ensure_still_locked(self, old: Credential, noted: Stored) -> None:
        """Spend nothing unless the lock is still ours: a lock held over the network (the
        PostgreSQL store's) may have been lost since it was taken, and a peer that took it
        since may spend the same refresh token. Our note is withdrawn if nobody wrote since."""
        if self._held is None:
            return
        try:
            self._held.ensure_held()
        except LockLost:
            event(logging.ERROR, "refresh.lock_lost", key=str(self.key), spent=False)
            with contextlib.suppress(StoreError):
                self.store.write(self.key, old, expected_version=noted.version)
            raise

    def _after_provider_error(
        self,
        noted: Stored,
        exc: Exception,
        rejected: str | None,
        was_unknown: bool,
        *,
        took: tuple[str, float] | None = None,
    ) -> Credential:
        """Record durably what the provider's failure means, then raise what it means.

        A definitive answer gets one guarded re-read first: a login (or a peer) may have
        replaced the record, and that replacement is adopted, not marked dead.
        """
        key = str(self.key)
        ctx = self._context(rejected)
        plan = after_provider_error(exc, noted.record, ctx, key=key, was_unknown=was_unknown)
        if took is not None:  # (token endpoint, seconds) of the call that failed
            _telemetry.refresh(self.key, took[0], took[1], plan.outcome.value, exc, self._span)
        if plan.mark is not None:
            try:
                now_stored = self.store.read(self.key)
            except StoreError:
                now_stored = noted
            if now_stored is not None and not self._our_note(now_stored, noted):
                event(logging.INFO, "refresh.rejected_but_replaced", key=key)
                return self._decide_and_act(now_stored, rejected)
            # Our note (its lease perhaps renewed by a write whose reply was lost) is marked.
            self._mark_dead(now_stored or noted, plan.mark)
            raise plan.error
        if plan.write is not None:
            try:
                self._write_over_note(plan.write, noted)
            except StoreError as write_exc:
                event(
                    logging.ERROR,
                    "store.note_failed",
                    key=key,
                    outcome=plan.outcome.value,
                    error=type(write_exc).__name__,
                )
            note = plan.write.intent
            if note is not None and note.retry_at is not None:
                self._ahead_after = note.retry_at
        raise plan.error

    # -- a credential the store would not take --------------------------------------------

    def _reconcile_pending(
        self, stored: Stored | None, rejected: str | None
    ) -> Credential | Stored | None:
        """Try again to make the pending credential durable.

        Returns the credential to serve, or the store's state to decide on.
        """
        pending, durable = self._pending, self._durable
        assert pending is not None
        key = str(self.key)
        if stored is not None and stored.record == pending:
            return self._healed(pending, stored)  # B's own write landed; its reply was lost
        if not self._our_note(stored, durable):
            # A login, logout or peer changed the store since: that is authoritative.
            event(logging.WARNING, "pending.discarded_for_changed_store", key=key)
            self._pending = None
            return stored
        assert stored is not None
        if stored != durable:
            # Our own note, its lease renewed by a write whose reply was lost: still ours,
            # and B follows it. (Taken for a stranger's, B would go and A be spent again.)
            event(logging.WARNING, "pending.note_renewal_found", key=key, version=stored.version)
            self._durable = stored
        try:
            version = self.store.write(self.key, pending, expected_version=stored.version)
        except StoreError as exc:
            if pending_servable(pending, self._context(rejected)):
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
        return self._healed(pending, Stored(pending, version))

    def _healed(self, pending: Credential, healed: Stored) -> Stored:
        """The store holds the pending credential now, as ``healed``."""
        event(logging.INFO, "pending.healed", key=str(self.key), version=healed.version)
        self._durable = healed
        self._pending = None
        # Siblings that shared this very credential have nothing left to store.
        for sibling in list(_live_holders.values()):
            if sibling is not self and sibling._pending is pending:
                sibling._stored_by_sibling(pending, healed)
        return healed

    def _adopt_rescued(self, stored: Stored | None) -> Stored | None:
        """Adopt a rescue copy a process left when its store refused a refreshed credential.

        Under the lock, before anything else: the store still holds the spent refresh token
        the copy replaced, so the copy is authoritative (and only that token opens it). If
        the store moved on (a login or a logout, which remove the copy; a peer that had the
        answer after all), no copy is named by what it holds, so none is adopted.
        """
        rescued = _rescue_copies.load(self.key, stored.record) if stored is not None else None
        if rescued is None:
            return stored
        assert stored is not None
        key = str(self.key)
        if rescue_dropped(stored.record, rescued.record, self._identity):
            event(logging.INFO, "rescue.discarded", key=key)
            _rescue_copies.discard_path(rescued.path)
            return stored
        try:
            version = self.store.write(self.key, rescued.record, expected_version=stored.version)
        except StoreError as exc:
            event(logging.WARNING, "rescue.still_unwritable", key=key, error=type(exc).__name__)
            self._current = self._pending = rescued.record
            self._durable = stored
            self._identity = merged_identity(self._identity, rescued.record)
            return stored
        event(logging.WARNING, "rescue.adopted", key=key, version=version)
        _rescue_copies.discard_path(rescued.path)
        return Stored(rescued.record, version)

    def _adopt_sibling_pending(self, stored: Stored | None) -> None:
        """Share the pending credential of another Keeper of this process whose note the
        store holds: only its answer B, never the spent A, may follow that note, and the
        other Keeper may never be asked again (dropped without ``close()``, say). Whoever
        stores B first wins; the other then finds the store changed and adopts it."""
        intent = stored.record.intent if stored is not None else None
        if self._pending is not None or intent is None or intent.pid != os.getpid():
            return
        if not self._same_host(intent):
            return
        sibling = _live_holders.get(intent.holder) if intent.holder else None
        if sibling is None or sibling is self:
            return
        with sibling._mutex:
            if sibling._inflight is not None:
                return  # its own transaction is storing it
            taken, durable = sibling._pending, sibling._durable
        if taken is None or not self._our_note(stored, durable):
            return
        assert stored is not None
        self._pending = self._current = taken
        self._durable = stored
        self._identity = merged_identity(self._identity, taken)
        self._track()
        event(logging.WARNING, "pending.adopted_from_sibling", key=str(self.key))

    def _stored_by_sibling(self, pending: Credential, healed: Stored) -> None:
        """A sibling stored the credential this Keeper held pending: nothing is left to
        do, so a Keeper nobody refers to any more can be let go."""
        if not self._flushing.acquire(blocking=False):
            return  # flushing: it will find the store changed and adopt it
        try:
            with self._mutex:
                if self._inflight is None and self._pending is pending:
                    self._pending = None
                    self._durable = healed
        finally:
            self._flushing.release()
        self._track()

    def _flush_pending(self) -> None:
        """Store the pending credential before this process lets go of it.

        If the store still refuses, keep a rescue copy; if that fails too, leave the
        durable note "answered, not stored", so no process ever retries the spent token.
        """
        with self._flushing:
            try:
                self._flush_pending_once()
            finally:
                self._track()

    def _flush_guarded(self) -> None:
        try:
            self._flush_pending()
        except BaseException:  # noqa: BLE001 - exiting (even on Ctrl-C): each Keeper gets its chance
            event(logging.ERROR, "pending.exit_flush_failed", key=str(self.key))

    def _flush_pending_once(self) -> None:
        if self._pending is None:
            return
        key = str(self.key)
        try:
            with self.store.lock(self.key, timeout=FLUSH_LOCK_TIMEOUT):
                # A transaction still running when we looked may have stored it since.
                if self._pending is not None:
                    self._reconcile_pending(self.store.read(self.key), None)
        except GrantkeeperError as exc:
            event(logging.WARNING, "pending.flush_failed", key=key, error=type(exc).__name__)
        pending, durable = self._pending, self._durable
        if pending is None:
            return
        replaced = durable.record if durable is not None else None
        if replaced is not None and replaced.refresh_fingerprint is not None:
            plaintext_ok = plaintext_at_rest(self.store)
            if not plaintext_ok and not _rescue_copies.sealing_available():
                # A plaintext copy of a record its store keeps sealed would undo the sealing.
                event(logging.ERROR, "rescue.refused_unsealed", key=key, reason="no_cryptography")
            elif _rescue_copies.save(self.key, replaced, pending, plaintext_ok=plaintext_ok):
                event(logging.WARNING, "pending.rescued", key=key)
                return
        event(logging.ERROR, "pending.lost", key=key)
        if durable is None or durable.record.intent is None:
            return
        try:
            with self.store.lock(self.key, timeout=FLUSH_LOCK_TIMEOUT):
                now = self.store.read(self.key)
                if now is not None and now.record.intent and self._our_note(now, durable):
                    answered = now.record.replace(
                        intent=dataclasses.replace(now.record.intent, state="answered")
                    )
                    self.store.write(self.key, answered, expected_version=now.version)
        except GrantkeeperError as exc:
            event(logging.ERROR, "pending.note_failed", key=key, error=type(exc).__name__)


LOGIN_LOCKS = "locks"
"""The directory under ``GRANTKEEPER_HOME`` of the login locks, one per credential."""


@contextlib.contextmanager
def _login_lock(key: CredentialKey, wait: float) -> Iterator[None]:
    """Hold ``key``'s login lock: one person's login at a time among this host's processes.

    An OS file lock (``flock``, ``LockFile``), dropped when its holder exits or is killed:
    the next waiter takes over at once. A waiter gives up after ``wait`` seconds with
    :class:`LoginFailed`.
    """
    name = f"login-{fingerprint(str(key))}.lock"
    what = f"the login lock of {key}"
    with (
        PrivateDir(grantkeeper_home() / LOGIN_LOCKS).open(create=True) as dirh,
        contextlib.ExitStack() as held,
    ):
        assert dirh is not None
        try:
            held.enter_context(locked_file(dirh, name, timeout=0.0, what=what))
        except LockTimeout:
            # Another process is logging in: wait for it, and say so.
            event(logging.WARNING, "recovery.waiting", key=str(key), wait_s=round(wait))
            try:
                held.enter_context(locked_file(dirh, name, timeout=wait, what=what))
            except LockTimeout:
                raise LoginFailed(
                    f"gave up after {wait:g} s waiting for another process to log in",
                    key=str(key),
                ) from None
        yield


def _on_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """Run blocking ``work`` on a daemon thread: a wait for a lock or a person must not keep
    the process alive once its caller has gone (``asyncio.to_thread`` would, at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    # The caller's context goes along: the transaction it may start links to its span.
    context = contextvars.copy_context()

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = context.run(work)
        except BaseException as exc:  # handed to the awaiting task, which decides
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop closed: nobody waits any more

    threading.Thread(target=run, name="grantkeeper recovery", daemon=True).start()
    return future


def _flush_at_exit() -> None:
    """Process exit: every Keeper still holding an unstored credential stores it (or keeps
    a rescue copy), so a short-lived process (the CLI, a worker) never takes B with it.

    A transaction in flight gets a bounded wait first: its answer may be on the way. One
    that ends later flushes on its own thread (see ``_exiting``). One still waiting for the
    lock after :data:`CLOSE_LOCK_PATIENCE` is abandoned: it has spent nothing, and will not
    (``_take_held``), and the process does not wait a lock timeout for it.
    """
    _exiting.set()
    with _busy_lock:
        # items() yields only the living: a Keeper collected meanwhile is skipped.
        keepers = dict(_live_holders.items())
        keepers.update(_busy)
    started = time.monotonic()
    # One patience and one bound for all Keepers, not one each.
    patience_until = started + CLOSE_LOCK_PATIENCE
    bound_until = started + EXIT_SETTLE_TIMEOUT
    for keeper in keepers.values():
        try:
            keeper._finish_flight(patience_until, bound_until)
        except BaseException:  # noqa: BLE001 - a signal cuts the wait short, not the flush
            break
    _exit_waited.set()
    for keeper in keepers.values():
        keeper._flush_guarded()


def _register_exit_flush() -> None:
    """Make sure :func:`_flush_at_exit` runs when this process ends.

    ``atexit`` covers a normal interpreter exit. A ``multiprocessing`` child (fork,
    forkserver) ends in ``os._exit`` once its target returns, after running only the
    finalizers registered with ``multiprocessing`` in that child: so we register there too,
    again in each child (it starts with an empty registry). Nothing is imported for it:
    a process that never loaded ``multiprocessing`` is not one of its children.
    """
    global _mp_finalizer
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    still_active = getattr(_mp_finalizer, "still_active", None)
    if still_active is not None and still_active():
        return
    _mp_finalizer = util.Finalize(None, _flush_at_exit, exitpriority=100)


def _after_fork_in_child() -> None:
    global _busy_lock, _exiting, _exit_waited
    # Locks and events a parent thread held at the fork stay held here: replace them.
    _busy_lock = threading.Lock()
    _exiting = threading.Event()
    _exit_waited = threading.Event()
    # Reset first, then let go: a Keeper only _busy held must not be collected with the
    # parent's HTTP client still its own (its finalizer would close the parent's client).
    for keeper in list(_live_holders.values()):
        keeper._forked()
    _busy.clear()


atexit.register(_flush_at_exit)
if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _LeaseRenewer:
    """Renews the in-flight note's lease while the provider call runs, so a reader on
    another host never takes a live holder for a dead one. ``noted`` is always the note as
    last written, with its version: the next write compares against it."""

    def __init__(self, keeper: Keeper, noted: Stored) -> None:
        self.noted = noted
        self.unsure = False
        """Whether the last renewal's outcome is unknown: its write may have landed with
        its reply lost, so the store may hold a newer version than ``noted``."""
        self._replaced = False
        self._keeper = keeper
        self._stop = threading.Event()
        # Not a daemon: the interpreter's exit joins it, so a provider call in flight (the
        # transaction ends it) is never cut off by the interpreter's own finalization.
        self._thread = threading.Thread(target=self._run, name=f"grantkeeper lease {keeper.key}")

    def __enter__(self) -> _LeaseRenewer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.unsure:
            # The last renewal's reply was lost: what follows the provider's answer (B, or
            # the note of a failure) is written over the note as the store holds it. If the
            # store cannot say now, that write meets a conflict, and it or the next
            # transaction reads again.
            self.settle()

    def _run(self) -> None:
        keeper = self._keeper
        interval = max(keeper._lease.total_seconds() / 3, 0.01)
        while not self._stop.wait(interval):
            if self.unsure and not self.settle():
                continue
            if self._stop.is_set():
                return  # the call ended while we read: the answer's write comes next
            if self._replaced:
                # Someone else wrote over the note (only a lost lock lets them): renewing it
                # could only fail; the answer's write finds the change and keeps B pending.
                event(logging.WARNING, "refresh.note_replaced", key=str(keeper.key))
                return
            intent = self.noted.record.intent
            assert intent is not None
            renewed = self.noted.record.replace(
                intent=dataclasses.replace(intent, lease_until=keeper._clock() + keeper._lease)
            )
            try:
                version = keeper.store.write(
                    keeper.key, renewed, expected_version=self.noted.version
                )
            except StoreError as exc:
                # Whether it landed is unknown (a reply can be lost after the commit): the
                # store is read again before the next write, or the answer's, relies on it.
                self.unsure = True
                event(
                    logging.WARNING,
                    "refresh.lease_not_renewed",
                    key=str(keeper.key),
                    error=type(exc).__name__,
                )
                continue
            self.noted = Stored(renewed, version)

    def settle(self) -> bool:
        """After a renewal of unknown outcome: read what the store holds, and make it
        ``noted`` if it is our note (renewed or not). False if the store cannot say now."""
        keeper = self._keeper
        try:
            stored = keeper.store.read(keeper.key)
        except StoreError as exc:
            event(
                logging.WARNING,
                "refresh.note_unreadable",
                key=str(keeper.key),
                error=type(exc).__name__,
            )
            return False
        if stored is not None and keeper._our_note(stored, self.noted):
            self.noted = stored
        else:
            self._replaced = True
        self.unsure = False
        return True
