"""Processes × threads calling one shared credential in a loop while the provider fails.

Each worker process runs one :class:`~grantkeeper.Keeper` over a shared
:class:`~grantkeeper.FileStore` (on the real clock, or one the test shifts:
:attr:`Plan.clock_offset`); each of its threads asks for a credential again and again
(``credential()`` on even slots, ``access_token()`` on odd ones) until told to stop, and
tallies what it saw:

- every error, by type, and whether it was a retryable grantkeeper error;
- errors raised while the process still held a valid token (more than
  :data:`VALID_MARGIN` before its expiry, or of unknown expiry): a request that failed
  although the server would have accepted what the Keeper already had;
- tokens served already expired;
- errors that demand a login (``requires_login`` / ``requires_reauthentication``).

The test drives the phases from outside with events: the fleet reports each thread's
first token (:meth:`OutageFleet.wait_ready`), the test breaks and repairs the provider,
then :meth:`OutageFleet.recover` waits (bounded) until every thread has been served again.
:class:`StoreWatch` reads the store meanwhile and remembers any record marked dead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from types import TracebackType
from typing import Any

from grantkeeper import Credential, CredentialKey, FileStore, GrantkeeperError, Keeper
from harness.children import reap

VALID_MARGIN = timedelta(seconds=1)
"""A token counts as still valid when it expires more than this after the call started: a
call in its last second may fairly race its expiry."""

START_TIMEOUT = 60.0
"""Seconds for every worker to import, start and have each thread served once."""

STOP_TIMEOUT = 30.0
"""Seconds for every worker to finish its calls in progress and report."""

SAMPLES = 5
"""Messages kept per kind of problem, to show in a failed assertion."""


@dataclass(frozen=True)
class Plan:
    """What every worker does."""

    home: str
    key: CredentialKey
    threads: int = 4
    pause: float = 0.05
    """Seconds between one thread's calls: 32 threads on 2 cores must leave room for the
    server and the store."""
    call_timeout: float = 5.0
    """The bound every call passes as ``timeout``: no call may block a thread for long."""
    clock_offset: Synchronized[float] | None = None
    """Seconds added to each worker's Keeper clock (``None``: the real clock): a value in
    shared memory, so the test moves every worker into a token's refresh margin at once,
    while the fleet runs. Make it with the spawn context's ``Value("d", 0.0)``."""


def unreported(tallies: list[Tally], processes: int) -> list[str]:
    """The problem, in words, if a worker crashed or never reported; else nothing."""
    crashed = [t.crashed for t in tallies if t.crashed]
    if len(tallies) < processes or crashed:
        return [f"{len(tallies)} of {processes} workers reported: {crashed}"]
    return []


@dataclass
class Tally:
    """What one worker process saw."""

    pid: int
    calls: int = 0
    served: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    not_typed_retryable: list[str] = field(default_factory=list)
    """Errors other than retryable grantkeeper errors (samples)."""
    not_typed_retryable_count: int = 0
    login_demanded: int = 0
    failed_while_valid: int = 0
    failed_while_valid_samples: list[str] = field(default_factory=list)
    served_expired: int = 0
    distinct_tokens: int = 0
    crashed: str | None = None


@dataclass(frozen=True)
class _Controls:
    recovered: multiprocessing.synchronize.Event
    stop: multiprocessing.synchronize.Event
    messages: Any  # multiprocessing.Queue of tuples


def _worker(plan: Plan, controls: _Controls) -> None:
    os.setsid()  # its own session: reap() signals it, and nothing else
    tally = Tally(os.getpid())
    try:
        _run(plan, controls, tally)
    except BaseException as exc:  # reported, never a hang of the parent
        tally.crashed = f"{type(exc).__name__}: {exc}"[:300]
    controls.messages.put(("tally", tally))


def _run(plan: Plan, controls: _Controls, tally: Tally) -> None:
    offset = plan.clock_offset
    if offset is None:
        keeper = Keeper(FileStore(plan.home), plan.key)
    else:

        def shifted() -> datetime:
            return datetime.now(UTC) + timedelta(seconds=offset.value)

        keeper = Keeper(FileStore(plan.home), plan.key, clock=shifted)
    lock = threading.Lock()
    tokens: set[str] = set()

    def loop(slot: int) -> None:
        first = recovered = False
        while not controls.stop.is_set():
            started = datetime.now(UTC)
            held = keeper.current
            after_recovery = controls.recovered.is_set()
            served: Credential | str
            try:
                if slot % 2 == 0:
                    served = keeper.credential(timeout=plan.call_timeout)
                else:
                    served = keeper.access_token(timeout=plan.call_timeout)
            except Exception as exc:
                with lock:
                    _count_error(tally, exc, held, started)
            else:
                token = served if isinstance(served, str) else served.access_token
                with lock:
                    tally.calls += 1
                    tally.served += 1
                    tokens.add(token)
                    if isinstance(served, Credential) and served.expires_at is not None:
                        tally.served_expired += served.expires_at <= started
                if not first:
                    first = True
                    controls.messages.put(("ready", tally.pid, slot))
                if after_recovery and not recovered:
                    recovered = True
                    credential = served if isinstance(served, Credential) else keeper.current
                    expires_at = None
                    if credential is not None and credential.access_token == token:
                        expires_at = credential.expires_at
                    controls.messages.put(("recovered", tally.pid, slot, token, expires_at))
            controls.stop.wait(plan.pause)

    threads = [
        threading.Thread(target=loop, args=(slot,), name=f"caller {slot}")
        for slot in range(plan.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keeper.close()
    tally.distinct_tokens = len(tokens)


def _count_error(tally: Tally, exc: Exception, held: Credential | None, started: datetime) -> None:
    tally.calls += 1
    name = type(exc).__name__
    tally.errors[name] += 1
    text = f"{name}: {exc}"[:300]
    if not (isinstance(exc, GrantkeeperError) and exc.retryable):
        tally.not_typed_retryable_count += 1
        if len(tally.not_typed_retryable) < SAMPLES:
            tally.not_typed_retryable.append(text)
    if isinstance(exc, GrantkeeperError) and (exc.requires_login or exc.requires_reauthentication):
        tally.login_demanded += 1
    if held is not None and (held.expires_at is None or held.expires_at - started > VALID_MARGIN):
        tally.failed_while_valid += 1
        if len(tally.failed_while_valid_samples) < SAMPLES:
            left = "unknown" if held.expires_at is None else f"{held.expires_at - started}"
            tally.failed_while_valid_samples.append(f"{text} (token valid for {left})")


class OutageFleet:
    """``processes`` worker processes × ``plan.threads`` threads, driven by the test."""

    def __init__(self, plan: Plan, *, processes: int = 8) -> None:
        context = multiprocessing.get_context("spawn")
        self.plan = plan
        self.processes = processes
        self._controls = _Controls(context.Event(), context.Event(), context.Queue())
        self._workers = [
            context.Process(target=_worker, args=(plan, self._controls), daemon=True)
            for _ in range(processes)
        ]
        self._ready: set[tuple[int, int]] = set()
        self._recovered: set[tuple[int, int]] = set()
        #: The first token each caller was served after recovery, with its expiry if known.
        self.recovered_tokens: list[tuple[str, datetime | None]] = []
        self.tallies: list[Tally] = []

    @property
    def callers(self) -> int:
        return self.processes * self.plan.threads

    def __enter__(self) -> OutageFleet:
        try:
            for worker in self._workers:
                worker.start()
        except BaseException:
            for worker in self._workers:
                reap(worker, timeout=STOP_TIMEOUT)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._controls.stop.set()
        try:
            for worker in self._workers:
                worker.join(STOP_TIMEOUT)
        finally:
            # A hung or stopped worker must not outlive the fleet (nor hang the exit).
            for worker in self._workers:
                reap(worker, timeout=STOP_TIMEOUT)

    def _drain(self, until: float, done: Any) -> None:
        """Read messages until ``done()`` or the monotonic deadline ``until``."""
        while not done():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            try:
                message = self._controls.messages.get(timeout=remaining)
            except queue.Empty:
                return
            kind = message[0]
            if kind == "ready":
                self._ready.add((message[1], message[2]))
            elif kind == "recovered":
                self._recovered.add((message[1], message[2]))
                self.recovered_tokens.append((message[3], message[4]))
            elif kind == "tally":
                self.tallies.append(message[1])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> int:
        """Wait until every thread has been served once; return how many were."""
        self._drain(time.monotonic() + timeout, lambda: len(self._ready) >= self.callers)
        return len(self._ready)

    def recover(self, timeout: float) -> int:
        """Tell the workers the provider is back; wait until every thread has been served
        since (see :attr:`recovered_tokens`). Return how many were within ``timeout``."""
        self._controls.recovered.set()
        self._drain(time.monotonic() + timeout, lambda: len(self._recovered) >= self.callers)
        return len(self._recovered)

    def stop(self) -> list[Tally]:
        """Stop every worker and collect its tally (bounded)."""
        self._controls.stop.set()
        self._drain(time.monotonic() + STOP_TIMEOUT, lambda: len(self.tallies) >= self.processes)
        return self.tallies


@dataclass
class StoreWatch:
    """Read the record every ``interval`` seconds on a thread; remember dead marks."""

    home: Path
    key: CredentialKey
    interval: float = 0.2
    reads: int = 0
    dead_reasons: list[str] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="store-watch", daemon=True)

    def _watch(self) -> None:
        store = FileStore(self.home)
        while not self._stop.wait(self.interval):
            try:
                stored = store.read(self.key)
            except GrantkeeperError as exc:  # a read racing a write is still a figure
                self.read_errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            self.reads += 1
            reason = stored.record.reauth_reason if stored is not None else "record missing"
            if reason is not None and reason not in self.dead_reasons:
                self.dead_reasons.append(reason)

    def __enter__(self) -> StoreWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(STOP_TIMEOUT)
