"""One browser login for every proxy of a credential, however many start at once.

The instance that takes the login lock (an ``flock`` on a file beside the store) logs in;
the others block on the same lock and, once it is free, find the credential in the store.
The kernel drops the lock when its holder exits or is killed, so a dead leader is replaced
by the next waiter at once, and no lock file ever needs deleting (it is never deleted: a
waiter may hold it open). The login itself is grantkeeper's: listener bound first, then
the browser, then the code exchange written under the store's own lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .._errors import GrantkeeperError, LoginFailed
from .._keeper import Keeper
from .._oauth.callback_server import DEFAULT_CALLBACK_TIMEOUT
from .._paths import grantkeeper_home
from .._redact import fingerprint
from .._servers import ServerConfig
from .._status import login_command
from .._stores.base import Store

log = logging.getLogger("grantkeeper.proxy")

WAIT_MARGIN = 30.0
"""A waiter gives the leader its whole callback timeout plus this before giving up."""

T = TypeVar("T")


def in_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """Run blocking ``work`` on a daemon thread: a wait for a lock or a browser must not
    keep the process alive once the host has gone (``asyncio.to_thread`` would, at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task, which decides
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop closed: nobody waits any more

    threading.Thread(target=run, name="grantkeeper proxy login", daemon=True).start()
    return future


def login_hint(config: ServerConfig) -> str:
    """The command a person runs to log in to ``config``'s server, with its profile."""
    return login_command(config.label, config.profile)


def lock_path(config: ServerConfig) -> Path:
    """The login lock of ``config``'s credential: one per key, named by its fingerprint."""
    return grantkeeper_home() / "locks" / f"login-{fingerprint(str(config.key))}.lock"


class _FileLock:
    """An exclusive ``flock``, taken on a thread so the event loop never blocks on it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_CLOEXEC: the browser we start must not inherit (and so keep) the lock.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self._abandoned = threading.Event()

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire_blocking(self) -> bool:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        if self._abandoned.is_set():  # the waiter gave up meanwhile: let the next one in
            os.close(self._fd)
            return False
        return True

    def abandon(self) -> None:
        """Stop waiting: a blocked thread closes the descriptor once it gets the lock."""
        self._abandoned.set()

    def release(self) -> None:
        os.close(self._fd)  # closing drops the lock


class LoginCoordinator:
    """Make a usable credential appear in the store: log in here, or wait for who does.

    ``ensure()`` runs at most one such job per process at a time; every request that
    needs a credential awaits the same job.
    """

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        keeper: Keeper,
        *,
        browser: bool,
        scope: str | None,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        open_browser: Callable[[str], object] = webbrowser.open,
    ) -> None:
        self.config = config
        self.store = store
        self.keeper = keeper
        self.browser = browser
        self.scope = scope
        self.callback_timeout = callback_timeout
        self.open_browser = open_browser
        self._job: asyncio.Task[None] | None = None
        #: Logins this process ran (browser windows it opened).
        self.logins = 0

    def sent_token(self) -> str | None:
        """The access token requests carry now: the one to name if a server rejects it."""
        current = self.keeper.current
        return current.access_token if current is not None else None

    async def ensure(self, rejected: str | None = None) -> None:
        """Return once the Keeper can serve a token other than ``rejected`` (the one a
        request just failed with); raise the reason it cannot."""
        if self._job is None or self._job.done():
            self._job = asyncio.create_task(self._run(rejected))
        await asyncio.shield(self._job)

    async def _usable(self, rejected: str | None) -> GrantkeeperError | None:
        # ``rejected`` matters: the Keeper still serves a revoked token from memory to a
        # caller that does not name it, until it expires.
        try:
            await self.keeper.acredential(rejected=rejected)
        except GrantkeeperError as exc:
            if exc.requires_login or exc.requires_reauthentication:
                return exc
            raise
        return None

    async def _run(self, rejected: str | None) -> None:
        if await self._usable(rejected) is None:
            return
        if not self.browser:
            raise LoginFailed(
                f"not logged in to {self.config.label}: run `{login_hint(self.config)}`"
            )
        lock = _FileLock(lock_path(self.config))
        if not lock.try_acquire():
            log.warning(
                "another grantkeeper process is logging in to %s; waiting up to %.0f s "
                "for it to finish (or run `%s`)",
                self.config.label,
                self.callback_timeout + WAIT_MARGIN,
                login_hint(self.config),
            )
            waiter = in_daemon_thread(lock.acquire_blocking)
            try:
                async with asyncio.timeout(self.callback_timeout + WAIT_MARGIN):
                    got = await asyncio.shield(waiter)
            except TimeoutError:
                lock.abandon()
                raise LoginFailed(
                    f"gave up waiting for another process to log in to {self.config.label}; "
                    f"run `{login_hint(self.config)}`"
                ) from None
            if not got:
                raise LoginFailed(f"the login to {self.config.label} was abandoned")
        try:
            # The lock is ours: whoever held it before has stored a credential, or died.
            if await self._usable(rejected) is None:
                log.warning("logged in to %s by another grantkeeper process", self.config.label)
                return
            await in_daemon_thread(self._login)
        finally:
            lock.release()
        failure = await self._usable(rejected)
        if failure is not None:
            raise failure

    def _login(self) -> None:
        from .._login import login

        def present(url: str) -> None:
            log.warning("log in to %s in your browser: %s", self.config.label, url)
            self.open_browser(url)

        self.logins += 1
        login(
            self.config,
            store=self.store,
            scope=self.scope,
            open_browser=present,
            callback_timeout=self.callback_timeout,
        )
        log.warning("logged in to %s", self.config.label)
